//! Where tonic and grpc-go answer the same situation differently, answer as
//! grpc-go does: etcd's clients are Go clients and match on its codes.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use tonic::{Code, Status};

/// tonic rejects a request above the decode limit with OutOfRange and its own
/// text; grpc-go (and so etcd) uses ResourceExhausted and
/// "grpc: received message larger than max (N vs. M)".
pub async fn message_size_status(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let rewritten = Status::from_header_map(resp.headers()).and_then(|s| over_limit(&s));
    if let Some(status) = rewritten {
        // Only a status that was already a valid header is rewritten, so
        // re-encoding it cannot fail; if it did, the original stays.
        let _ = status.add_header(resp.headers_mut());
    }
    resp
}

fn over_limit(s: &Status) -> Option<Status> {
    if s.code() != Code::OutOfRange {
        return None;
    }
    let rest = s
        .message()
        .strip_prefix("Error, decoded message length too large: found ")?;
    let (found, rest) = rest.split_once(" bytes, the limit is: ")?;
    let limit = rest.strip_suffix(" bytes")?;
    Some(Status::resource_exhausted(format!(
        "grpc: received message larger than max ({found} vs. {limit})"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_only_the_decode_limit_error() {
        let tonic_err = Status::out_of_range(
            "Error, decoded message length too large: found 2097163 bytes, the limit is: 1572864 bytes",
        );
        let s = over_limit(&tonic_err).unwrap();
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(
            s.message(),
            "grpc: received message larger than max (2097163 vs. 1572864)"
        );
        let compacted =
            Status::out_of_range("etcdserver: mvcc: required revision has been compacted");
        assert!(over_limit(&compacted).is_none());
    }
}

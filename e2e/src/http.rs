//! Plain HTTP/1.1 requests to a member's `/metrics`, `/health` and the like: one
//! request per connection, enough for scraping in tests without an HTTP
//! client dependency.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The body of `GET path` on 127.0.0.1:`port`; an error unless the status is 200.
pub async fn get_text(port: u16, path: &str) -> Result<String> {
    request(port, "GET", path, "").await
}

/// `method path` with `body` on 127.0.0.1:`port` (a fail point set or
/// cleared at runtime: `PUT /debug/failpoints/NAME`); the response body, or
/// an error unless the status is 200.
pub async fn request(port: u16, method: &str, path: &str, body: &str) -> Result<String> {
    let fetch = async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await?;
        anyhow::Ok(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), fetch)
        .await
        .with_context(|| format!("{method} {path} on port {port} timed out"))??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("{method} {path}: no header end in {text:?}"))?;
    let status = head.lines().next().unwrap_or_default();
    if !status.contains(" 200 ") {
        bail!("{method} {path}: {status} {body}");
    }
    if head
        .lines()
        .any(|l| l.eq_ignore_ascii_case("transfer-encoding: chunked"))
    {
        return Ok(dechunk(body));
    }
    Ok(body.to_string())
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// The sum of every sample of the Prometheus counter `name` whose labels
/// contain `label` (e.g. `grpc_service="x"`).
pub fn counter_sum(text: &str, name: &str, label: &str) -> u64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.strip_prefix(name))
        .filter(|rest| rest.starts_with('{') && rest.contains(label))
        .filter_map(|rest| rest.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_matching_samples_only() {
        let text = "# HELP x\n\
            grpc_server_started_total{grpc_method=\"A\",grpc_service=\"p\"} 3\n\
            grpc_server_started_total{grpc_method=\"B\",grpc_service=\"p\"} 4\n\
            grpc_server_started_total{grpc_method=\"C\",grpc_service=\"q\"} 100\n\
            grpc_server_started_totalx{grpc_service=\"p\"} 9\n";
        assert_eq!(
            counter_sum(text, "grpc_server_started_total", "grpc_service=\"p\""),
            7
        );
    }

    #[test]
    fn dechunks() {
        assert_eq!(dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), "abcde");
    }
}

//! Fail points: the faults a test asks the `cairn` binary to inject.
//!
//! Cairn marks its fault-injection points with the `fail` crate (as TiKV
//! does). They exist only in a binary built with the `failpoints` feature,
//! `cargo build --workspace --bins --features cairn-shim/failpoints` (what
//! `scripts/test.sh` runs), which reads them at start from the `FAILPOINTS`
//! environment variable: `name=action`, several joined with ';'.
//!
//! A binary built without the feature ignores `FAILPOINTS`. A build with it
//! logs [`SET_MESSAGE`] at start, and a `Member`
//! given fail points fails at start without that line, naming the missing
//! feature; a `Cluster` also fails when no peer
//! traffic went through its proxies (the `peer_dial` fail point routes it
//! there).

/// The environment variable the `fail` crate reads its configuration from.
pub const ENV: &str = "FAILPOINTS";

/// What a `cairn` built with fail points logs at start when `FAILPOINTS` is set.
pub const SET_MESSAGE: &str = "fail points set";

/// This member answers the peer streaming RPCs (StreamAppend, ProposeStream)
/// with Unimplemented, as a member of an earlier version does.
pub const PEER_REFUSE_STREAMING: &str = "peer_refuse_streaming=return";

/// The applier never loads the previous kv of a write, so every prev_kv
/// watcher reads the revisions it needs from history.
pub const PREV_KV_NEVER_LOAD: &str = "prev_kv_never_load=return";

/// Linearizable reads are answered with the read index of an earlier
/// ReadIndex round, one that started before they arrived: a planted bug.
pub const READ_INDEX_STALE_ROUND: &str = "read_index_stale_round=return";

/// `peer_dial`: for a peer advertising `adv`, this member dials `dial`
/// instead (each pair is `(adv, dial)`), so a test can route each ordered
/// pair of members through its own proxy.
pub fn peer_dial(pairs: &[(String, String)]) -> String {
    let map: Vec<String> = pairs
        .iter()
        .map(|(adv, dial)| format!("{adv}={dial}"))
        .collect();
    format!("peer_dial=return({})", map.join(","))
}

/// The Raft log's fdatasync (a slow disk): `sleep(ms)` before each.
pub const SLOW_FSYNC: &str = "slow_fsync";

/// A Raft log append fails: `return(enospc)` a full disk, `return(eio)`
/// (or any other argument) an I/O error, as a failed fsync reports.
pub const RAFT_LOG_WRITE_ERROR: &str = "raft_log_write_error";

/// Sets fail point `name` to `action` in a running member (a failpoints
/// build's `PUT /debug/failpoints/NAME`), on its client port.
pub async fn set(port: u16, name: &str, action: &str) -> anyhow::Result<()> {
    crate::http::request(port, "PUT", &format!("/debug/failpoints/{name}"), action)
        .await
        .map(drop)
}

/// Clears fail point `name` in a running member.
pub async fn clear(port: u16, name: &str) -> anyhow::Result<()> {
    crate::http::request(port, "DELETE", &format!("/debug/failpoints/{name}"), "")
        .await
        .map(drop)
}

/// The value of [`ENV`] that sets every point in `points`.
pub fn env_value<S: AsRef<str>>(points: &[S]) -> String {
    points
        .iter()
        .map(|p| p.as_ref())
        .collect::<Vec<_>>()
        .join(";")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_dial_maps_each_advertised_url() {
        let pairs = [
            (
                "http://127.0.0.1:1".to_string(),
                "http://127.0.0.1:2".to_string(),
            ),
            (
                "http://127.0.0.1:3".to_string(),
                "http://127.0.0.1:4".to_string(),
            ),
        ];
        assert_eq!(
            peer_dial(&pairs),
            "peer_dial=return(http://127.0.0.1:1=http://127.0.0.1:2,http://127.0.0.1:3=http://127.0.0.1:4)"
        );
    }

    #[test]
    fn several_points_are_joined_with_semicolons() {
        assert_eq!(
            env_value(&[PEER_REFUSE_STREAMING, PREV_KV_NEVER_LOAD]),
            "peer_refuse_streaming=return;prev_kv_never_load=return"
        );
    }
}

//! `--grpc-keepalive-interval` and `--grpc-keepalive-timeout` on the client
//! port, seen from a raw HTTP/2 connection that never answers a ping.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::spawn_single_with;

/// HTTP/2's connection preface and an empty SETTINGS frame.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
const PING: u8 = 6;
const ACK: u8 = 1;

/// How an idle connection ended: when the first PING came, and when the
/// server closed it (both since the preface was sent).
fn watch_idle(addr: &str, limit: Duration) -> (Option<Duration>, Duration) {
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(limit)).unwrap();
    conn.write_all(PREFACE).unwrap();
    let start = Instant::now();
    let mut first_ping = None;
    loop {
        let mut header = [0u8; 9];
        match conn.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("connection still open after {limit:?}; first ping at {first_ping:?}")
            }
            // EOF or reset: the server closed it.
            Err(_) => return (first_ping, start.elapsed()),
        }
        let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let mut payload = vec![0u8; len];
        if conn.read_exact(&mut payload).is_err() {
            return (first_ping, start.elapsed());
        }
        if header[3] == PING && header[4] & ACK == 0 && first_ping.is_none() {
            first_ping = Some(start.elapsed());
        }
        assert!(
            start.elapsed() < limit,
            "connection still open after {limit:?}"
        );
    }
}

#[test]
fn unanswered_pings_close_an_idle_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, addr, _) = spawn_single_with(
        dir.path(),
        &[
            "--grpc-keepalive-interval",
            "1s",
            "--grpc-keepalive-timeout",
            "1s",
        ],
    );
    let (ping, closed) = watch_idle(&addr, Duration::from_secs(15));
    let ping = ping.expect("the server pinged the idle connection");
    assert!(
        ping >= Duration::from_millis(900),
        "pinged at {ping:?}, before the 1s interval"
    );
    assert!(
        closed >= ping + Duration::from_millis(900),
        "closed at {closed:?}, under the 1s timeout after the ping at {ping:?}"
    );
}

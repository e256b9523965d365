//! Free TCP ports on 127.0.0.1.
//!
//! Ports are drawn below the kernel's ephemeral range
//! (`net.ipv4.ip_local_port_range`), checked free by binding them, and
//! remembered so that two members started by concurrently running tests never
//! get the same one. Staying out of the ephemeral range matters for restarts:
//! while a member is down, its ports could otherwise become the local port of
//! some outgoing connection (a client's, a proxy's), and the restarted member
//! would fail to bind them for as long as that connection lives. Where the
//! range cannot be read, the kernel picks (port 0).

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use rand::Rng;

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// The lowest port the kernel hands out for outgoing connections.
fn ephemeral_low() -> Option<u16> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    range.split_whitespace().next()?.parse().ok()
}

/// A currently free port on 127.0.0.1 not previously returned by this process.
pub fn free_port() -> Result<u16> {
    const LOWEST: u16 = 10_000;
    let below = ephemeral_low().filter(|low| *low > LOWEST + 1_000);
    let mut rng = rand::rng();
    for _ in 0..256 {
        let candidate = below.map(|low| rng.random_range(LOWEST..low)).unwrap_or(0);
        let Ok(listener) = TcpListener::bind(("127.0.0.1", candidate)) else {
            continue;
        };
        let port = listener.local_addr().context("local address")?.port();
        drop(listener);
        let mut guard = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if guard.get_or_insert_with(HashSet::new).insert(port) {
            return Ok(port);
        }
    }
    bail!("could not find a fresh free port on 127.0.0.1 in 256 attempts")
}

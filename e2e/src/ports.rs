//! Free TCP ports on 127.0.0.1.
//!
//! A port is found by binding port 0, reading the port the kernel chose and
//! dropping the listener. Ports handed out by this process are remembered so
//! two members started by concurrently running tests never get the same one;
//! the remaining race (another process taking the port between our drop and
//! the server's bind) is handled by `Member::start` retrying with new ports.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::Mutex;

use anyhow::{bail, Context, Result};

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A currently free port on 127.0.0.1 not previously returned by this process.
pub fn free_port() -> Result<u16> {
    for _ in 0..64 {
        let listener = TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        drop(listener);
        let mut guard = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if guard.get_or_insert_with(HashSet::new).insert(port) {
            return Ok(port);
        }
    }
    bail!("could not find a fresh free port on 127.0.0.1 in 64 attempts")
}

//! systemd's readiness notification (`sd_notify(READY=1)`), as etcd sends it.
//!
//! etcd's own unit files say `Type=notify`: systemd waits for this message
//! before it counts the service as started, and kills it when none comes. A
//! unit written for etcd must work for Cairn unchanged, so Cairn sends the
//! same message once it serves clients. The protocol is one datagram on the
//! socket named by `NOTIFY_SOCKET`; outside systemd the variable is unset and
//! nothing is sent.

use std::os::unix::net::UnixDatagram;

/// Tells systemd this member is ready, if systemd asked to be told.
pub fn ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = UnixDatagram::unbound().and_then(|sock| {
        let bytes = path.as_encoded_bytes();
        // A leading '@' names a socket in the abstract namespace.
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(b"READY=1", &addr)
        } else {
            sock.send_to(b"READY=1", &path)
        }
    });
    match sent {
        Ok(_) => tracing::debug!("told systemd the member is ready"),
        Err(e) => tracing::warn!(error = %e, "could not notify systemd (NOTIFY_SOCKET)"),
    }
}

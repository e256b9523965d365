//! Signals to a member's process: SIGTERM for a clean stop, SIGSTOP and
//! SIGCONT for a pause (`kill`, as an operator sends them).

use std::process::Command;

use anyhow::{ensure, Context, Result};

/// Sends `sig` (`-TERM`, `-STOP`, `-CONT`) to `pid`.
pub fn signal(sig: &str, pid: u32) -> Result<()> {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .context("running kill")?;
    ensure!(status.success(), "kill {sig} {pid}: {status}");
    Ok(())
}

/// A process paused with SIGSTOP; SIGCONT when dropped, whatever happened
/// while it was paused.
pub struct Paused(u32);

impl Paused {
    pub fn pause(pid: u32) -> Result<Paused> {
        signal("-STOP", pid)?;
        Ok(Paused(pid))
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        let _ = signal("-CONT", self.0);
    }
}

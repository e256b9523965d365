//! A write, from the member that accepted it: committed through this
//! member's Raft when it leads, else queued for the leader (`forwarder`) and
//! answered when this member applies it (`waiters`).

use std::sync::atomic::Ordering;

use super::codec;
use super::error_map::write_error;
use super::replica::Replica;
use super::types::LogCommand;
use crate::command::{Command, CommandOutput};
use crate::error::{Result, StoreError};

impl Replica {
    /// Proposes `cmd` and resolves with its result once it is applied on
    /// this member, so that a read here afterwards sees it.
    pub async fn propose(&self, cmd: Command) -> Result<CommandOutput> {
        if self.is_leader() {
            let lc = LogCommand {
                origin: self.id,
                request_id: 0,
                cmd,
            };
            return match self.raft.client_write(lc).await {
                Ok(resp) => resp.data.unwrap_or(Err(StoreError::Stopped)),
                Err(e) => Err(write_error(e)),
            };
        }
        if self.leader().is_none() {
            return Err(StoreError::NoLeader);
        }
        let request_id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (registration, rx) = self.waiters.register(request_id);
        let command = codec::command_to_pb(&LogCommand {
            origin: self.id,
            request_id,
            cmd,
        });
        self.forwarder.forward(request_id, command)?;
        let out = tokio::time::timeout(self.request_timeout, rx).await;
        drop(registration);
        match out {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(StoreError::Stopped),
            Err(_) => Err(StoreError::Timeout),
        }
    }
}

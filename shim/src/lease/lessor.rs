//! Lease expiry. Leases themselves (ID, TTL, attached keys) live in the store;
//! the lessor keeps only their deadlines, in memory, and revokes what expires
//! by proposing a revoke command through the log like any other write.
//!
//! Deadlines are not persisted: on start every lease gets its full TTL plus one
//! election timeout, as etcd extends all leases when a member becomes leader,
//! so a restart never expires a lease whose holder had no chance to renew it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_proto::etcdserverpb::{LeaseGrantRequest, LeaseRevokeRequest};
use cairn_raft_backend::{Command, CommandOutput, StoreError};
use tonic::Status;

use crate::errors::{store_status, EtcdError};
use crate::node::SharedNode;

/// etcd's minimum TTL: 1.5 election timeouts (1 s default), rounded up.
pub const MIN_TTL: i64 = 2;
/// etcd's maximum TTL.
pub const MAX_TTL: i64 = 9_000_000_000;
const EXPIRY_CHECK: Duration = Duration::from_millis(500);
/// What etcd adds to every lease on leader promotion: one election timeout.
const EXTEND_ON_START: Duration = Duration::from_secs(1);

struct Deadline {
    ttl: i64,
    expiry: Instant,
}

pub struct Lessor {
    node: SharedNode,
    deadlines: Mutex<HashMap<i64, Deadline>>,
    ids: Mutex<IdGen>,
}

/// etcd's request-ID scheme: the member ID's low 16 bits above a counter
/// seeded from the clock, so IDs differ across members and restarts.
struct IdGen {
    prefix: u64,
    suffix: u64,
}

impl IdGen {
    fn new(member_id: u64) -> Self {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        IdGen {
            prefix: (member_id & 0xffff) << 48,
            suffix: (ms << 8) & ((1 << 48) - 1),
        }
    }

    fn next(&mut self) -> i64 {
        self.suffix = (self.suffix + 1) & ((1 << 48) - 1);
        ((self.prefix | self.suffix) & (i64::MAX as u64)) as i64
    }
}

impl Lessor {
    pub async fn start(node: SharedNode) -> anyhow::Result<Arc<Self>> {
        let now = Instant::now();
        let deadlines = node
            .store
            .leases()
            .await?
            .into_iter()
            .map(|(id, ttl)| {
                (
                    id,
                    Deadline {
                        ttl,
                        expiry: now + Duration::from_secs(ttl.max(0) as u64) + EXTEND_ON_START,
                    },
                )
            })
            .collect();
        let lessor = Arc::new(Lessor {
            ids: Mutex::new(IdGen::new(node.id.member_id)),
            node,
            deadlines: Mutex::new(deadlines),
        });
        tokio::spawn(lessor.clone().expire_loop());
        Ok(lessor)
    }

    fn deadlines(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Deadline>> {
        // A poisoned lock only means another thread panicked mid-update of a
        // plain map; its contents are still usable.
        self.deadlines.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub async fn grant(&self, req: LeaseGrantRequest) -> Result<(i64, i64), Status> {
        if req.ttl > MAX_TTL {
            return Err(EtcdError::LeaseTtlTooLarge.into());
        }
        let ttl = req.ttl.max(MIN_TTL);
        let id = if req.id == 0 {
            self.ids.lock().unwrap_or_else(|e| e.into_inner()).next()
        } else {
            req.id
        };
        let out = self
            .node
            .store
            .propose(Command::LeaseGrant(LeaseGrantRequest { ttl, id }))
            .await
            .map_err(store_status)?;
        if !matches!(out, CommandOutput::LeaseGrant(_)) {
            return Err(Status::internal(
                "etcdserver: unexpected apply result for lease grant",
            ));
        }
        self.deadlines().insert(
            id,
            Deadline {
                ttl,
                expiry: Instant::now() + Duration::from_secs(ttl as u64),
            },
        );
        Ok((id, ttl))
    }

    pub async fn revoke(&self, id: i64) -> Result<CommandOutput, StoreError> {
        let out = self
            .node
            .store
            .propose(Command::LeaseRevoke(LeaseRevokeRequest { id }))
            .await;
        if matches!(out, Ok(_) | Err(StoreError::LeaseNotFound)) {
            self.deadlines().remove(&id);
        }
        out
    }

    /// Extends a live lease by its TTL; None if it is unknown or already expired.
    pub fn renew(&self, id: i64) -> Option<i64> {
        let mut d = self.deadlines();
        let lease = d.get_mut(&id)?;
        let now = Instant::now();
        if lease.expiry <= now {
            return None;
        }
        lease.expiry = now + Duration::from_secs(lease.ttl as u64);
        Some(lease.ttl)
    }

    /// (remaining seconds, granted TTL), as etcd reports them.
    pub fn ttl(&self, id: i64) -> Option<(i64, i64)> {
        let d = self.deadlines();
        let lease = d.get(&id)?;
        let remaining = lease
            .expiry
            .saturating_duration_since(Instant::now())
            .as_secs() as i64;
        Some((remaining, lease.ttl))
    }

    pub fn ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self.deadlines().keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    async fn expire_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(EXPIRY_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = Instant::now();
            let expired: Vec<i64> = self
                .deadlines()
                .iter()
                .filter(|(_, d)| d.expiry <= now)
                .map(|(id, _)| *id)
                .collect();
            for id in expired {
                match self.revoke(id).await {
                    Ok(_) | Err(StoreError::LeaseNotFound) => {
                        tracing::debug!(lease = format_args!("{id:x}"), "lease expired and revoked")
                    }
                    Err(e) => {
                        tracing::warn!(lease = format_args!("{id:x}"), error = %e, "revoking expired lease failed; will retry")
                    }
                }
            }
        }
    }
}

//! Lease expiry. Leases themselves (ID, TTL, attached keys) live in the store;
//! the lessor keeps only their deadlines, in memory, and revokes what expires
//! by proposing a revoke command through the log like any other write.
//!
//! Only the leader keeps deadlines and expires leases. Deadlines are not
//! persisted or replicated: whenever a member becomes leader it gives every
//! lease its full TTL plus one election timeout, as etcd's lessor does on
//! promotion, so neither a restart nor a failover expires a lease whose holder
//! had no chance to renew it. Keep-alives and TTL queries that reach a
//! follower are answered by the leader.

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
/// How long a follower waits for the leader to renew or report a lease.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

struct Deadline {
    ttl: i64,
    expiry: Instant,
}

pub struct Lessor {
    node: SharedNode,
    deadlines: Mutex<HashMap<i64, Deadline>>,
    /// The store's `lease_changes` count the deadlines were last brought in
    /// line with; `reconcile` re-reads the leases only after it moves.
    reconciled_at: Mutex<Option<u64>>,
    ids: Mutex<IdGen>,
    /// Added to every lease on promotion: one election timeout.
    extend: Duration,
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
    pub async fn start(node: SharedNode, extend: Duration) -> anyhow::Result<Arc<Self>> {
        let lessor = Arc::new(Lessor {
            ids: Mutex::new(IdGen::new(node.id.member_id)),
            node,
            deadlines: Mutex::new(HashMap::new()),
            reconciled_at: Mutex::new(None),
            extend,
        });
        tokio::spawn(lessor.clone().expire_loop());
        Ok(lessor)
    }

    fn is_leader(&self) -> bool {
        self.node.store.is_leader()
    }

    /// Brings the deadlines in line with the leases in the store: leases
    /// granted through other members are tracked from when they are seen,
    /// revoked ones are dropped. On promotion every lease starts afresh.
    /// Reads the leases only if a grant or revoke was applied since the last
    /// time (or on promotion).
    async fn reconcile(&self, promoted: bool) -> Result<(), StoreError> {
        let changes = self.node.store.lease_changes();
        let current =
            *self.reconciled_at.lock().unwrap_or_else(|p| p.into_inner()) == Some(changes);
        if current && !promoted {
            return Ok(());
        }
        let leases = self.node.store.leases().await?;
        let now = Instant::now();
        let mut d = self.deadlines();
        if promoted {
            d.clear();
        }
        let live: std::collections::HashSet<i64> = leases.iter().map(|(id, _)| *id).collect();
        d.retain(|id, _| live.contains(id));
        for (id, ttl) in leases {
            d.entry(id).or_insert_with(|| Deadline {
                ttl,
                expiry: now
                    + Duration::from_secs(ttl.max(0) as u64)
                    + if promoted {
                        self.extend
                    } else {
                        Duration::ZERO
                    },
            });
        }
        drop(d);
        *self.reconciled_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(changes);
        Ok(())
    }

    /// The leader, for keep-alives and TTL queries that reach a follower.
    fn leader_peer(&self) -> Result<cairn_raft_backend::Peer, Status> {
        self.node.store.leader_peer().map_err(store_status)
    }

    /// Keep-alive from a client of this member: renewed by the leader.
    pub async fn renew_anywhere(&self, id: i64) -> Result<Option<i64>, Status> {
        if self.is_leader() {
            return self.renew(id).await;
        }
        let peer = self.leader_peer()?;
        let resp = peer
            .client
            .clone()
            .lease_renew(peer.request(
                cairn_proto::peer::LeaseRenewRequest { id },
                Some(FORWARD_TIMEOUT),
            ))
            .await
            .map_err(|_| Status::from(EtcdError::NoLeader))?
            .into_inner();
        Ok((resp.ttl > 0).then_some(resp.ttl))
    }

    /// (remaining seconds, granted TTL) from the leader's deadlines.
    pub async fn ttl_anywhere(&self, id: i64) -> Result<Option<(i64, i64)>, Status> {
        if self.is_leader() {
            return self.ttl(id).await;
        }
        let peer = self.leader_peer()?;
        let resp = peer
            .client
            .clone()
            .lease_time_to_live(peer.request(
                cairn_proto::peer::LeaseTimeToLiveRequest { id },
                Some(FORWARD_TIMEOUT),
            ))
            .await
            .map_err(|_| Status::from(EtcdError::NoLeader))?
            .into_inner();
        Ok((resp.ttl >= 0).then_some((resp.ttl, resp.granted_ttl)))
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
        if self.is_leader() {
            self.deadlines().insert(
                id,
                Deadline {
                    ttl,
                    expiry: Instant::now() + Duration::from_secs(ttl as u64),
                },
            );
        }
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

    /// Makes sure the leader tracks `id` if the store has it. A lease granted
    /// through another member reaches this leader's deadlines only at the
    /// next reconcile, and its store only once its own apply gets there: a
    /// follower may apply the grant first and answer its client, whose
    /// keep-alive (clientv3 sessions send one at once) then reaches this
    /// leader. So the leader first applies what it knows is committed, as
    /// etcd's leader does before a renew. A keep-alive for a lease that is
    /// gone costs no store read.
    async fn track(&self, id: i64) -> Result<(), Status> {
        if !self.deadlines().contains_key(&id) && self.is_leader() {
            self.node
                .store
                .catch_up_apply()
                .await
                .map_err(store_status)?;
            self.reconcile(false).await.map_err(store_status)?;
        }
        Ok(())
    }

    /// On the leader: extends a live lease by its TTL; None if it is unknown
    /// or already expired.
    pub async fn renew(&self, id: i64) -> Result<Option<i64>, Status> {
        self.track(id).await?;
        let mut d = self.deadlines();
        let Some(lease) = d.get_mut(&id) else {
            return Ok(None);
        };
        let now = Instant::now();
        if lease.expiry <= now {
            return Ok(None);
        }
        lease.expiry = now + Duration::from_secs(lease.ttl as u64);
        Ok(Some(lease.ttl))
    }

    /// On the leader: (remaining seconds, granted TTL), as etcd reports them.
    pub async fn ttl(&self, id: i64) -> Result<Option<(i64, i64)>, Status> {
        self.track(id).await?;
        let d = self.deadlines();
        Ok(d.get(&id).map(|lease| {
            let remaining = lease
                .expiry
                .saturating_duration_since(Instant::now())
                .as_secs() as i64;
            (remaining, lease.ttl)
        }))
    }

    async fn expire_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(EXPIRY_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut leading = false;
        loop {
            tick.tick().await;
            if !self.is_leader() {
                if leading {
                    self.deadlines().clear();
                }
                leading = false;
                continue;
            }
            let promoted = !leading;
            if let Err(e) = self.reconcile(promoted).await {
                tracing::warn!(error = %e, "reading leases failed; will retry");
                continue;
            }
            leading = true;
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

/// Serves followers' lease renewals and TTL queries on the peer protocol.
impl cairn_raft_backend::LeaseAuthority for Lessor {
    async fn renew(&self, id: i64) -> Result<Option<i64>, Status> {
        Lessor::renew(self, id).await
    }

    async fn ttl(&self, id: i64) -> Result<Option<(i64, i64)>, Status> {
        Lessor::ttl(self, id).await
    }
}

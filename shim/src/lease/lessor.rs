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
//!
//! While a migration imports into this cluster (or after it was aborted) the
//! lessor expires nothing and refuses grants and keep-alives: the source
//! decides expiry, and its DELETE events arrive as revisions. At cutover the
//! leader takes the deadlines over as on a promotion (full TTL plus one
//! election timeout from then).

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

    /// Whether this lessor keeps deadlines and expires leases: on the
    /// leader, unless a migration is importing (or was aborted).
    fn in_charge(&self) -> bool {
        self.is_leader() && self.node.store.migration_gate().check_write().is_ok()
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

    /// Keep-alive from a client of this member: renewed by the leader.
    pub async fn renew_anywhere(&self, id: i64) -> Result<Option<i64>, Status> {
        self.node.check_writable()?;
        if self.is_leader() {
            return self.renew(id).await;
        }
        self.node
            .store
            .renew_lease_at_leader(id)
            .await
            .map_err(store_status)
    }

    /// (remaining seconds, granted TTL) from the leader's deadlines.
    pub async fn ttl_anywhere(&self, id: i64) -> Result<Option<(i64, i64)>, Status> {
        if self.is_leader() {
            return self.ttl(id).await;
        }
        self.node
            .store
            .lease_ttl_at_leader(id)
            .await
            .map_err(store_status)
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
        self.node.check_writable()?;
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
        if self.in_charge() {
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
        if !self.deadlines().contains_key(&id) && self.in_charge() {
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
        self.node.check_writable()?;
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
        if !self.in_charge() && self.is_leader() {
            // Importing: no deadlines here; the lease as the store has it,
            // its whole TTL left (the source keeps the real deadline).
            let leases = self.node.store.leases().await.map_err(store_status)?;
            return Ok(leases
                .into_iter()
                .find(|(l, _)| *l == id)
                .map(|(_, ttl)| (ttl, ttl)));
        }
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
            if !self.in_charge() {
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

#[cfg(test)]
mod tests {
    use cairn_proto::etcdserverpb::RangeRequest;

    use super::*;
    use crate::testing;

    /// What a promoted lessor adds to every lease; short, so that tests wait
    /// about one TTL.
    const EXTEND: Duration = Duration::from_millis(100);

    async fn grant(lessor: &Lessor, ttl: i64) -> i64 {
        let req = LeaseGrantRequest { ttl, id: 0 };
        let (id, granted) = lessor.grant(req).await.expect("grant");
        assert_eq!(granted, ttl);
        id
    }

    async fn has_key(node: &SharedNode, key: &str) -> bool {
        let req = RangeRequest {
            key: key.into(),
            ..Default::default()
        };
        let resp = node.store.range(req).await.expect("range");
        !resp.kvs.is_empty()
    }

    /// On the leader an expired lease is revoked through the log, and the
    /// keys attached to it go with it.
    #[tokio::test]
    async fn leader_revokes_an_expired_lease_and_its_keys() {
        let t = testing::leader().await;
        let lessor = Lessor::start(t.node.clone(), EXTEND).await.expect("lessor");
        let id = grant(&lessor, MIN_TTL).await;
        testing::put(&t.node, "held", "v", id).await;
        testing::put(&t.node, "free", "v", 0).await;
        let (remaining, granted) = lessor.ttl(id).await.expect("ttl").expect("known");
        assert_eq!(granted, MIN_TTL);
        assert!(remaining <= MIN_TTL, "{remaining}");

        // Gone from the store when the revoke applies, and from the
        // lessor's deadlines when the proposal returns a moment later.
        testing::eventually("the lease is revoked", || async {
            let leases = t.node.store.leases().await.expect("leases");
            let revoked = leases.iter().all(|(l, _)| *l != id);
            (revoked && lessor.ttl(id).await.expect("ttl").is_none()).then_some(())
        })
        .await;
        assert!(
            !has_key(&t.node, "held").await,
            "the lease's key is deleted"
        );
        assert!(has_key(&t.node, "free").await, "other keys stay");
        assert_eq!(lessor.renew(id).await.expect("renew"), None);
    }

    /// A keep-alive gives the lease its whole TTL again.
    #[tokio::test]
    async fn keep_alive_extends_the_deadline() {
        let t = testing::leader().await;
        let lessor = Lessor::start(t.node.clone(), EXTEND).await.expect("lessor");
        let ttl = 10;
        let id = grant(&lessor, ttl).await;
        testing::eventually("a second of the TTL passes", || async {
            let (remaining, _) = lessor.ttl(id).await.expect("ttl").expect("known");
            (remaining < ttl - 1).then_some(())
        })
        .await;
        assert_eq!(lessor.renew_anywhere(id).await.expect("renew"), Some(ttl));
        let (remaining, granted) = lessor.ttl(id).await.expect("ttl").expect("known");
        assert_eq!(granted, ttl);
        assert!(remaining >= ttl - 1, "renewed to the full TTL: {remaining}");
    }

    /// A member that is not leader keeps no deadlines: it does not expire
    /// leases, however old, nor answer keep-alives itself (they go to the
    /// leader, here unknown).
    #[tokio::test]
    async fn a_member_that_is_not_leader_revokes_nothing() {
        let leader = testing::leader().await;
        let id = 0x1ea5e;
        let grant = LeaseGrantRequest { ttl: MIN_TTL, id };
        let granted = leader.node.store.propose(Command::LeaseGrant(grant)).await;
        assert!(
            matches!(granted, Ok(CommandOutput::LeaseGrant(_))),
            "{granted:?}"
        );
        testing::put(&leader.node, "held", "v", id).await;
        let t = testing::follower_of(leader).await;
        let lessor = Lessor::start(t.node.clone(), EXTEND).await.expect("lessor");
        assert!(!lessor.is_leader());
        assert_eq!(lessor.ttl(id).await.expect("ttl"), None);
        let refused = lessor.renew_anywhere(id).await.expect_err("no leader");
        assert_eq!(refused.message(), "etcdserver: no leader");

        // Absence can only be checked after a while: past the lease's TTL
        // and a few of the lessor's expiry checks, it is still there.
        let expired = Instant::now() + Duration::from_secs(MIN_TTL as u64) + EXTEND;
        tokio::time::sleep_until((expired + 3 * EXPIRY_CHECK).into()).await;
        assert!(!lessor.is_leader());
        assert!(lessor.deadlines().is_empty());
        let leases = t.node.store.leases().await.expect("leases");
        assert_eq!(leases, [(id, MIN_TTL)]);
        assert!(has_key(&t.node, "held").await);
    }

    /// While a migration imports, the source decides expiry: an imported
    /// lease outlives its TTL here. At cutover the leader takes over, with
    /// the full TTL from then.
    #[tokio::test]
    async fn an_imported_lease_expires_only_after_cutover() {
        use cairn_proto::migrate::{BeginRequest, CutoverRequest, ImportBaseRequest, ImportLease};
        use cairn_proto::mvccpb::KeyValue;
        let t = testing::leader().await;
        let lessor = Lessor::start(t.node.clone(), EXTEND).await.expect("lessor");
        let store = &t.node.store;
        store
            .migration_begin(BeginRequest {
                source_cluster_id: 1,
                start_revision: 3,
                compact_revision: -1,
                ..Default::default()
            })
            .await
            .expect("begin");
        let id = 0x77;
        store
            .import_base(ImportBaseRequest {
                kvs: vec![KeyValue {
                    key: b"held".to_vec(),
                    value: b"v".to_vec(),
                    create_revision: 3,
                    mod_revision: 3,
                    version: 1,
                    lease: id,
                }],
                leases: vec![ImportLease {
                    id,
                    granted_ttl: 1,
                    remaining_ttl: 1,
                }],
                done: true,
                ..Default::default()
            })
            .await
            .expect("import");
        assert_eq!(lessor.ttl(id).await.expect("ttl"), Some((1, 1)));
        let refused = lessor.renew_anywhere(id).await.expect_err("importing");
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
        tokio::time::sleep(Duration::from_secs(1) + EXTEND + 3 * EXPIRY_CHECK).await;
        assert!(
            has_key(&t.node, "held").await,
            "nothing expires while importing"
        );
        store
            .migration_cutover(CutoverRequest {
                expected_revision: 3,
                unix_ms: 0,
            })
            .await
            .expect("cutover");
        testing::eventually("the lease expires after cutover", || async {
            (!has_key(&t.node, "held").await).then_some(())
        })
        .await;
    }
}

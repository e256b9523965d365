//! Keep-alives and TTL queries that reach a follower, asked of the leader,
//! which alone keeps lease deadlines (etcd's lessor likewise forwards them).
//! The leader's end is `peer_server`'s `LeaseRenew` and `LeaseTimeToLive`.

use std::time::Duration;

use cairn_proto::peer::{LeaseRenewRequest, LeaseTimeToLiveRequest};

use super::replica::Replica;
use crate::error::{Result, StoreError};

/// How long a forwarded lease request may take before the client is told
/// there is no leader (and retries, as etcd's clients do).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

impl Replica {
    /// Renews lease `id` on the leader: its TTL, or `None` when the leader
    /// does not know the lease.
    pub async fn renew_lease_at_leader(&self, id: i64) -> Result<Option<i64>> {
        let peer = self.leader_peer()?;
        let resp = peer
            .client
            .clone()
            .lease_renew(peer.request(LeaseRenewRequest { id }, Some(FORWARD_TIMEOUT)))
            .await
            .map_err(|_| StoreError::NoLeader)?
            .into_inner();
        Ok((resp.ttl > 0).then_some(resp.ttl))
    }

    /// Lease `id`'s (remaining, granted) TTL from the leader's deadlines, or
    /// `None` when the leader does not know the lease.
    pub async fn lease_ttl_at_leader(&self, id: i64) -> Result<Option<(i64, i64)>> {
        let peer = self.leader_peer()?;
        let resp = peer
            .client
            .clone()
            .lease_time_to_live(peer.request(LeaseTimeToLiveRequest { id }, Some(FORWARD_TIMEOUT)))
            .await
            .map_err(|_| StoreError::NoLeader)?
            .into_inner();
        Ok((resp.ttl >= 0).then_some((resp.ttl, resp.granted_ttl)))
    }
}

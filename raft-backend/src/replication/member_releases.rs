//! What release each member runs, asked over the peer protocol as etcd's
//! leader asks each peer's `/version` (`getVersions`).

use std::time::Duration;

use cairn_proto::peer as pb;
use futures::future::join_all;

use super::replica::Replica;
use crate::versions::MinorVersion;

impl Replica {
    /// Each member's release (learners included), in membership order;
    /// `None` for a member that did not answer within `timeout` or runs a
    /// build that does not report one. This member answers without a call.
    pub(crate) async fn member_releases(&self, timeout: Duration) -> Vec<Option<MinorVersion>> {
        let members = self.status().members;
        let asks = members.iter().map(|(id, info, _)| async move {
            if *id == self.id {
                return Some(MinorVersion::this_release());
            }
            let peer = self.locator.transport.client(&info.peer_urls).ok()?;
            let req = peer.request(pb::ClusterInfoRequest {}, Some(timeout));
            let info = peer.client.clone().cluster_info(req).await.ok()?;
            MinorVersion::parse(&info.into_inner().release)
        });
        join_all(asks).await
    }
}

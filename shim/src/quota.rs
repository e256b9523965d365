//! The backend quota: past it, raise the NOSPACE alarm and refuse writes that
//! add data, as etcd does, until space is freed and the alarm is disarmed.

use cairn_proto::etcdserverpb::{alarm_request::AlarmAction, AlarmRequest, AlarmType};
use cairn_raft_backend::Command;
use tonic::Status;

use crate::errors::{store_status, EtcdError};
use crate::node::Node;

/// etcd's rough per-key overhead in its size estimate.
const KV_OVERHEAD: i64 = 256;

/// Checks that a write costing `cost` bytes fits; raises the alarm if not.
pub async fn check(node: &Node, cost: i64) -> Result<(), Status> {
    if cost == 0 {
        return Ok(());
    }
    // The store's size as of its last checkpoint (see `Store::file_size`).
    let size = node.store.file_size();
    if size + cost + KV_OVERHEAD < node.quota_bytes {
        return Ok(());
    }
    tracing::warn!(
        size,
        quota = node.quota_bytes,
        "backend quota exceeded, raising NOSPACE alarm"
    );
    node.store
        .propose(Command::Alarm(AlarmRequest {
            action: AlarmAction::Activate as i32,
            member_id: node.id.member_id,
            alarm: AlarmType::Nospace as i32,
        }))
        .await
        .map_err(store_status)?;
    Err(EtcdError::NoSpace.into())
}

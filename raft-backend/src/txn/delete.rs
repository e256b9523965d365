//! etcd's DeleteRange.

use cairn_proto::etcdserverpb::{DeleteRangeRequest, DeleteRangeResponse, ResponseHeader};

use crate::error::Result;
use crate::mvcc::{KeyRange, WriteTxn};

/// Deletes every live key in range at the next revision. A delete that
/// removes nothing answers with the revision as it stands (the txn's own,
/// if an earlier op of the txn wrote).
pub fn delete_range(txn: &mut WriteTxn<'_>, d: &DeleteRangeRequest) -> Result<DeleteRangeResponse> {
    let kr = KeyRange::new(&d.key, &d.range_end);
    let deleted = txn.delete_keys(&kr)?;
    let revision = if !deleted.is_empty() || txn.has_changes() {
        txn.write_rev()
    } else {
        txn.begin_rev()
    };
    Ok(DeleteRangeResponse {
        header: Some(ResponseHeader {
            revision,
            ..Default::default()
        }),
        deleted: deleted.len() as i64,
        prev_kvs: if d.prev_kv { deleted } else { Vec::new() },
    })
}

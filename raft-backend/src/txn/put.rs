//! etcd's Put: the lease it names must exist, and ignore_value and
//! ignore_lease take the key's current value or lease, so they need the key.

use cairn_proto::etcdserverpb::{PutRequest, PutResponse, ResponseHeader};

use crate::error::{Result, StoreError};
use crate::mvcc::{TxnRead, WriteTxn};

/// A Put outside a txn: lease first, then the ignore_* rules, as etcd orders them.
pub fn put(txn: &mut WriteTxn<'_>, p: &PutRequest) -> Result<PutResponse> {
    if p.lease != 0 && !txn.lease_exists(p.lease)? {
        return Err(StoreError::LeaseNotFound);
    }
    apply_put(txn, p)
}

/// A Put whose lease is known to exist (a txn checks every put first).
pub(super) fn apply_put(txn: &mut WriteTxn<'_>, p: &PutRequest) -> Result<PutResponse> {
    let prev = if p.ignore_value || p.ignore_lease || p.prev_kv {
        txn.get(&p.key)?
    } else {
        None
    };
    if (p.ignore_value || p.ignore_lease) && prev.is_none() {
        return Err(StoreError::KeyNotFound);
    }
    let value = match (&prev, p.ignore_value) {
        (Some(prev), true) => prev.value.clone(),
        _ => p.value.clone(),
    };
    let lease = match (&prev, p.ignore_lease) {
        (Some(prev), true) => prev.lease,
        _ => p.lease,
    };
    txn.put_kv(&p.key, value, lease)?;
    Ok(PutResponse {
        header: Some(ResponseHeader {
            revision: txn.write_rev(),
            ..Default::default()
        }),
        prev_kv: if p.prev_kv { prev } else { None },
    })
}

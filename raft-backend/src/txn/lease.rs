//! What granting and revoking a lease does to the keyspace: a grant only
//! records the lease; a revoke deletes every key attached to it, all at one
//! new revision (none if it had no keys).

use crate::error::{Result, StoreError};
use crate::mvcc::{TxnRead, WriteTxn};

pub fn lease_grant(txn: &mut WriteTxn<'_>, id: i64, ttl: i64) -> Result<()> {
    if txn.lease_exists(id)? {
        return Err(StoreError::LeaseExists);
    }
    txn.insert_lease(id, ttl)
}

pub fn lease_revoke(txn: &mut WriteTxn<'_>, id: i64) -> Result<()> {
    if !txn.lease_exists(id)? {
        return Err(StoreError::LeaseNotFound);
    }
    let rev = txn.write_rev();
    for key in txn.lease_keys(id)? {
        if let Some(prev) = txn.get(&key)? {
            txn.record_delete(prev, rev)?;
        }
    }
    txn.remove_lease(id)
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, CommandOutput};
    use crate::testing::TestStore;
    use cairn_proto::etcdserverpb::{LeaseGrantRequest, LeaseRevokeRequest, PutRequest};

    #[test]
    fn revoking_deletes_the_attached_keys_at_one_revision() {
        let mut s = TestStore::new();
        s.apply(Command::LeaseGrant(LeaseGrantRequest { id: 7, ttl: 10 }))
            .unwrap();
        assert_eq!(
            s.apply(Command::LeaseGrant(LeaseGrantRequest { id: 7, ttl: 10 })),
            Err(StoreError::LeaseExists)
        );
        for k in ["a", "b"] {
            s.apply(Command::Put(PutRequest {
                key: k.into(),
                lease: 7,
                ..Default::default()
            }))
            .unwrap();
        }
        // "b" moves to no lease: it is no longer the lease's.
        s.put("b", "free");
        assert_eq!(s.read(|r| r.lease_keys(7)).unwrap(), vec![b"a".to_vec()]);
        let before = s.state.current_rev;
        let out = s
            .apply(Command::LeaseRevoke(LeaseRevokeRequest { id: 7 }))
            .unwrap();
        let CommandOutput::LeaseRevoke(resp) = out else {
            panic!("{out:?}")
        };
        assert_eq!(resp.header.unwrap().revision, before + 1);
        assert_eq!(s.state.current_rev, before + 1);
        assert!(s.read(|r| r.get(b"a")).unwrap().is_none());
        assert!(s.read(|r| r.get(b"b")).unwrap().is_some());
        assert_eq!(s.read(|r| r.leases()).unwrap(), vec![]);
        assert_eq!(
            s.apply(Command::LeaseRevoke(LeaseRevokeRequest { id: 7 })),
            Err(StoreError::LeaseNotFound)
        );
    }
}

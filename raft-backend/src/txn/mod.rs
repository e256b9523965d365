//! Request semantics on top of the MVCC store, as etcd keeps them in
//! `server/etcdserver/txn/` apart from `storage/mvcc`: range options,
//! compares, txn branches, puts and deletes with their rules, and what
//! granting and revoking a lease does to keys. Each works on a read or a
//! write transaction (`mvcc::ReadTxn`, `mvcc::WriteTxn`).

mod branches;
mod compare;
mod delete;
mod lease;
mod put;
mod range;

pub use branches::{is_txn_readonly, txn, txn_has_put};
pub use compare::compare;
pub use delete::delete_range;
pub use lease::{lease_grant, lease_revoke};
pub use put::put;
pub use range::range;

//! Request checks done before anything is proposed, in etcd's order, so that a
//! bad request is refused with etcd's error and never reaches the log.

use std::collections::HashSet;

use cairn_proto::etcdserverpb::{
    request_op::Request, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};

use crate::errors::EtcdError;

pub fn range(r: &RangeRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    Ok(())
}

pub fn put(r: &PutRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(EtcdError::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(EtcdError::LeaseProvided);
    }
    Ok(())
}

pub fn delete_range(r: &DeleteRangeRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    Ok(())
}

/// Structure first (sizes, keys), then overlapping writes, as etcd checks them.
pub fn txn(r: &TxnRequest, max_ops: usize) -> Result<(), EtcdError> {
    txn_structure(r, max_ops as i64)?;
    write_intervals(&r.success)?;
    write_intervals(&r.failure)?;
    Ok(())
}

fn txn_structure(r: &TxnRequest, max_ops: i64) -> Result<(), EtcdError> {
    let ops = r.compare.len().max(r.success.len()).max(r.failure.len()) as i64;
    if ops > max_ops {
        return Err(EtcdError::TooManyOps);
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(EtcdError::EmptyKey);
    }
    // Nested txns share the budget: each level gets what its parent left.
    for op in r.success.iter().chain(&r.failure) {
        match &op.request {
            Some(Request::RequestRange(x)) => range(x)?,
            Some(Request::RequestPut(x)) => put(x)?,
            Some(Request::RequestDeleteRange(x)) => delete_range(x)?,
            Some(Request::RequestTxn(x)) => txn_structure(x, max_ops - ops)?,
            // etcd answers an empty op this way.
            None => return Err(EtcdError::KeyNotFound),
        }
    }
    Ok(())
}

/// A delete interval as etcd's checker sees it: `end` empty means the single
/// key `start`; otherwise `[start, end)` compared bytewise. Note that "\0" as
/// an end is taken literally here, as etcd takes it, so a from-key delete
/// overlaps nothing in this check.
struct Interval {
    start: Vec<u8>,
    end: Vec<u8>,
}

impl Interval {
    fn contains(&self, k: &[u8]) -> bool {
        if self.end.is_empty() {
            self.start == k
        } else {
            self.start.as_slice() <= k && k < self.end.as_slice()
        }
    }
}

/// etcd's checkIntervals: no key may be put twice, or put and deleted, within
/// one branch (nested txns included; the then/else of one txn may repeat a key).
fn write_intervals(ops: &[RequestOp]) -> Result<(HashSet<Vec<u8>>, Vec<Interval>), EtcdError> {
    let mut dels: Vec<Interval> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(Request::RequestDeleteRange(d)) => Some(Interval {
                start: d.key.clone(),
                end: d.range_end.clone(),
            }),
            _ => None,
        })
        .collect();
    let overlaps = |dels: &[Interval], k: &[u8]| dels.iter().any(|d| d.contains(k));
    let mut puts: HashSet<Vec<u8>> = HashSet::new();
    for op in ops {
        let Some(Request::RequestTxn(t)) = &op.request else {
            continue;
        };
        let (puts_then, dels_then) = write_intervals(&t.success)?;
        let (puts_else, dels_else) = write_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || overlaps(&dels, k) {
                return Err(EtcdError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        for k in puts_else {
            if (puts.contains(&k) && !puts_then.contains(&k)) || overlaps(&dels, &k) {
                return Err(EtcdError::DuplicateKey);
            }
            puts.insert(k);
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let Some(Request::RequestPut(p)) = &op.request else {
            continue;
        };
        if puts.contains(&p.key) || overlaps(&dels, &p.key) {
            return Err(EtcdError::DuplicateKey);
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_op(k: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: k.into(),
                ..Default::default()
            })),
        }
    }

    fn del_op(k: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                key: k.into(),
                range_end: end.into(),
                ..Default::default()
            })),
        }
    }

    fn txn_of(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
        TxnRequest {
            success,
            failure,
            ..Default::default()
        }
    }

    #[test]
    fn duplicate_puts_and_put_delete_overlap_are_refused() {
        assert_eq!(
            txn(&txn_of(vec![put_op("a"), put_op("a")], vec![]), 128),
            Err(EtcdError::DuplicateKey)
        );
        assert_eq!(
            txn(&txn_of(vec![del_op("a", "c"), put_op("b")], vec![]), 128),
            Err(EtcdError::DuplicateKey)
        );
        // then/else of a nested txn are exclusive, so both may put the same key.
        let nested = RequestOp {
            request: Some(Request::RequestTxn(txn_of(
                vec![put_op("k")],
                vec![put_op("k")],
            ))),
        };
        assert_eq!(txn(&txn_of(vec![nested.clone()], vec![]), 128), Ok(()));
        assert_eq!(
            txn(&txn_of(vec![nested, put_op("k")], vec![]), 128),
            Err(EtcdError::DuplicateKey)
        );
        // Success and failure of the top level are checked separately.
        assert_eq!(
            txn(&txn_of(vec![put_op("a")], vec![put_op("a")]), 128),
            Ok(())
        );
    }

    #[test]
    fn op_limits_and_empty_keys() {
        let many: Vec<RequestOp> = (0..129).map(|i| put_op(&format!("k{i}"))).collect();
        assert_eq!(txn(&txn_of(many, vec![]), 128), Err(EtcdError::TooManyOps));
        assert_eq!(
            txn(&txn_of(vec![put_op("")], vec![]), 128),
            Err(EtcdError::EmptyKey)
        );
        assert_eq!(
            txn(&txn_of(vec![RequestOp { request: None }], vec![]), 128),
            Err(EtcdError::KeyNotFound)
        );
    }
}

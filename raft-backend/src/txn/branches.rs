//! etcd's Txn: compares choose a branch at every depth, the chosen ops are
//! checked, and only then run, so that every refusal happens before any write.

use cairn_proto::etcdserverpb::{
    request_op, response_op, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse,
    RequestOp, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};

use crate::error::{Result, StoreError};
use crate::mvcc::{KeyRange, ReadTxn, TxnRead, WriteTxn};
use crate::txn::{compare, delete, put, range};

/// The ops a txn's branches run: reads on any transaction, puts and deletes
/// only on a write transaction.
pub trait TxnOps: TxnRead {
    /// A put whose lease and ignore_* rules the txn has checked.
    fn put(&mut self, p: &PutRequest) -> Result<PutResponse>;
    fn delete_range(&mut self, d: &DeleteRangeRequest) -> Result<DeleteRangeResponse>;
}

impl TxnOps for WriteTxn<'_> {
    fn put(&mut self, p: &PutRequest) -> Result<PutResponse> {
        put::apply_put(self, p)
    }

    fn delete_range(&mut self, d: &DeleteRangeRequest) -> Result<DeleteRangeResponse> {
        delete::delete_range(self, d)
    }
}

/// A read transaction serves only txns that `is_txn_readonly` passes; the
/// others go through the log.
impl TxnOps for ReadTxn<'_> {
    fn put(&mut self, _: &PutRequest) -> Result<PutResponse> {
        Err(refused_write())
    }

    fn delete_range(&mut self, _: &DeleteRangeRequest) -> Result<DeleteRangeResponse> {
        Err(refused_write())
    }
}

fn refused_write() -> StoreError {
    StoreError::Storage("a txn that writes reached a read-only transaction".into())
}

/// Every compare (nested ones included) is evaluated against the state
/// before the txn, the chosen ops are checked, and only then applied.
pub fn txn(t: &mut impl TxnOps, req: &TxnRequest) -> Result<TxnResponse> {
    let mut path = Vec::new();
    compare_path(t, req, &mut path)?;
    // etcd checks the chosen path's puts first (only when the txn writes),
    // then its ranges; the first failure of either pass is the answer.
    if !is_txn_readonly(req) {
        check_ops(t, req, &path, &mut 0, Check::Puts, &mut Vec::new())?;
    }
    check_ops(t, req, &path, &mut 0, Check::Ranges, &mut Vec::new())?;
    let mut cursor = 0;
    let mut resp = apply_txn(t, req, &path, &mut cursor)?;
    resp.header = Some(ResponseHeader {
        revision: t.current_rev(),
        ..Default::default()
    });
    Ok(resp)
}

/// Records, depth first in execution order, which branch each (nested) txn
/// on the chosen path takes.
fn compare_path(t: &impl TxnRead, req: &TxnRequest, path: &mut Vec<bool>) -> Result<()> {
    let mut ok = true;
    for c in &req.compare {
        if !compare(t, c)? {
            ok = false;
            break;
        }
    }
    path.push(ok);
    for op in branch(req, ok) {
        if let Some(request_op::Request::RequestTxn(inner)) = &op.request {
            compare_path(t, inner, path)?;
        }
    }
    Ok(())
}

/// Which ops of a txn's chosen path a checking pass looks at.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Check {
    Puts,
    Ranges,
}

/// `deleted` collects, in execution order, the ranges the txn's own
/// deletes remove: a later put that needs its key's previous value
/// (ignore_value, ignore_lease) must not find it there. etcd's interval
/// check lets a from-key delete followed by such a put through, and etcd
/// then fails mid-apply (3.5.1 and 3.6 panic); refusing it here keeps
/// "every refusal happens before any write" true.
fn check_ops(
    t: &impl TxnRead,
    req: &TxnRequest,
    path: &[bool],
    cursor: &mut usize,
    check: Check,
    deleted: &mut Vec<KeyRange>,
) -> Result<()> {
    let taken = path.get(*cursor).copied().unwrap_or(false);
    *cursor += 1;
    for op in branch(req, taken) {
        match &op.request {
            Some(request_op::Request::RequestTxn(inner)) => {
                check_ops(t, inner, path, cursor, check, deleted)?
            }
            Some(request_op::Request::RequestDeleteRange(d)) if check == Check::Puts => {
                deleted.push(KeyRange::new(&d.key, &d.range_end));
            }
            Some(request_op::Request::RequestPut(p)) if check == Check::Puts => {
                if (p.ignore_value || p.ignore_lease)
                    && (deleted.iter().any(|r| r.contains(&p.key)) || t.get(&p.key)?.is_none())
                {
                    return Err(StoreError::KeyNotFound);
                }
                if p.lease != 0 && !t.lease_exists(p.lease)? {
                    return Err(StoreError::LeaseNotFound);
                }
            }
            Some(request_op::Request::RequestRange(r))
                if check == Check::Ranges && r.revision != 0 =>
            {
                if r.revision > t.current_rev() {
                    return Err(StoreError::FutureRev);
                }
                if r.revision < t.compact_rev() {
                    return Err(StoreError::Compacted);
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn apply_txn(
    t: &mut impl TxnOps,
    req: &TxnRequest,
    path: &[bool],
    cursor: &mut usize,
) -> Result<TxnResponse> {
    let taken = path.get(*cursor).copied().unwrap_or(false);
    *cursor += 1;
    let mut responses = Vec::new();
    for op in branch(req, taken) {
        let response = match &op.request {
            Some(request_op::Request::RequestRange(r)) => {
                response_op::Response::ResponseRange(range(t, r)?)
            }
            Some(request_op::Request::RequestPut(p)) => {
                response_op::Response::ResponsePut(t.put(p)?)
            }
            Some(request_op::Request::RequestDeleteRange(d)) => {
                response_op::Response::ResponseDeleteRange(t.delete_range(d)?)
            }
            Some(request_op::Request::RequestTxn(inner)) => {
                let mut r = apply_txn(t, inner, path, cursor)?;
                r.header = Some(ResponseHeader::default());
                response_op::Response::ResponseTxn(r)
            }
            None => continue,
        };
        responses.push(ResponseOp {
            response: Some(response),
        });
    }
    Ok(TxnResponse {
        header: None,
        succeeded: taken,
        responses,
    })
}

fn branch(t: &TxnRequest, succeeded: bool) -> &[RequestOp] {
    if succeeded {
        &t.success
    } else {
        &t.failure
    }
}

/// True when no branch at any depth writes; such a txn needs no log entry.
pub fn is_txn_readonly(t: &TxnRequest) -> bool {
    t.success
        .iter()
        .chain(&t.failure)
        .all(|op| match &op.request {
            Some(request_op::Request::RequestPut(_))
            | Some(request_op::Request::RequestDeleteRange(_)) => false,
            Some(request_op::Request::RequestTxn(inner)) => is_txn_readonly(inner),
            _ => true,
        })
}

/// True when any branch at any depth puts; such a txn is refused under NOSPACE.
pub fn txn_has_put(t: &TxnRequest) -> bool {
    t.success
        .iter()
        .chain(&t.failure)
        .any(|op| match &op.request {
            Some(request_op::Request::RequestPut(_)) => true,
            Some(request_op::Request::RequestTxn(inner)) => txn_has_put(inner),
            _ => false,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;
    use crate::testing::TestStore;
    use cairn_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
    use cairn_proto::etcdserverpb::{Compare, RangeRequest};

    fn version_is(key: &str, v: i64) -> Compare {
        Compare {
            key: key.into(),
            target: CompareTarget::Version as i32,
            result: CompareResult::Equal as i32,
            target_union: Some(TargetUnion::Version(v)),
            ..Default::default()
        }
    }

    fn put(k: &str, v: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: k.into(),
                value: v.into(),
                ..Default::default()
            })),
        }
    }

    fn get(k: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestRange(RangeRequest {
                key: k.into(),
                ..Default::default()
            })),
        }
    }

    fn nested(t: TxnRequest) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestTxn(t)),
        }
    }

    #[test]
    fn compares_choose_the_branch_at_every_depth_before_any_op_runs() {
        let mut s = TestStore::new();
        s.put("a", "1");
        let t = TxnRequest {
            compare: vec![version_is("a", 1)],
            success: vec![
                put("a", "2"),
                // Judged against the state before the txn: "a" still has version 1.
                nested(TxnRequest {
                    compare: vec![version_is("a", 1)],
                    success: vec![get("a")],
                    failure: vec![put("z", "never")],
                }),
            ],
            failure: vec![put("f", "1")],
        };
        let resp = s.write(|w| txn(w, &t)).unwrap();
        assert!(resp.succeeded);
        assert_eq!(resp.header.unwrap().revision, 3);
        let Some(response_op::Response::ResponseTxn(inner)) = &resp.responses[1].response else {
            panic!("{resp:?}");
        };
        assert!(inner.succeeded);
        // The nested range sees the outer put: later ops see earlier ones.
        let Some(response_op::Response::ResponseRange(r)) = &inner.responses[0].response else {
            panic!("{inner:?}");
        };
        assert_eq!(r.kvs[0].value, b"2");
        // Now version 2: the failure branch.
        let resp = s.write(|w| txn(w, &t)).unwrap();
        assert!(!resp.succeeded);
        assert!(s.read(|r| r.get(b"f")).unwrap().is_some());
        assert!(s.read(|r| r.get(b"z")).unwrap().is_none());
    }

    #[test]
    fn a_put_that_needs_a_key_the_txn_deleted_is_refused_before_any_write() {
        let mut s = TestStore::new();
        s.put("a", "1");
        let t = TxnRequest {
            success: vec![
                RequestOp {
                    request: Some(request_op::Request::RequestDeleteRange(
                        DeleteRangeRequest {
                            key: b"a".to_vec(),
                            ..Default::default()
                        },
                    )),
                },
                RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key: b"a".to_vec(),
                        ignore_value: true,
                        ..Default::default()
                    })),
                },
            ],
            ..Default::default()
        };
        let r = s.write(|w| {
            let r = txn(w, &t);
            assert!(!w.has_changes());
            Ok(r)
        });
        assert_eq!(r.unwrap(), Err(StoreError::KeyNotFound));
        // A put with a lease that does not exist, likewise.
        let t = TxnRequest {
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: b"b".to_vec(),
                    lease: 9,
                    ..Default::default()
                })),
            }],
            ..Default::default()
        };
        assert_eq!(s.apply(Command::Txn(t)), Err(StoreError::LeaseNotFound));
        assert_eq!(s.state.current_rev, 2);
    }

    #[test]
    fn a_read_transaction_runs_read_only_txns_and_refuses_writes() {
        let mut s = TestStore::new();
        s.put("a", "1");
        let read_only = TxnRequest {
            compare: vec![version_is("a", 1)],
            success: vec![get("a")],
            failure: vec![],
        };
        assert!(is_txn_readonly(&read_only));
        let resp = s.read(|r| txn(r, &read_only)).unwrap();
        assert!(resp.succeeded);
        assert_eq!(resp.header.unwrap().revision, 2);
        let writes = TxnRequest {
            success: vec![put("a", "2")],
            ..Default::default()
        };
        assert!(matches!(
            s.read(|r| txn(r, &writes)),
            Err(StoreError::Storage(_))
        ));
    }

    #[test]
    fn readonly_and_has_put_look_at_every_branch_and_depth() {
        let del = RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(Default::default())),
        };
        let deep_put = TxnRequest {
            failure: vec![nested(TxnRequest {
                success: vec![put("a", "1")],
                ..Default::default()
            })],
            ..Default::default()
        };
        assert!(!is_txn_readonly(&deep_put));
        assert!(txn_has_put(&deep_put));
        let deep_delete = TxnRequest {
            success: vec![
                get("a"),
                nested(TxnRequest {
                    failure: vec![del],
                    ..Default::default()
                }),
            ],
            ..Default::default()
        };
        assert!(!is_txn_readonly(&deep_delete));
        assert!(!txn_has_put(&deep_delete));
        let reads = TxnRequest {
            success: vec![get("a")],
            failure: vec![nested(TxnRequest::default())],
            ..Default::default()
        };
        assert!(is_txn_readonly(&reads));
        assert!(!txn_has_put(&reads));
    }
}

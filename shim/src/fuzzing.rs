//! The fuzz target for client requests (`fuzz/`, built with the `fuzzing`
//! feature only): arbitrary bytes decoded as the KV requests a client sends,
//! checked as the services check them, and those that pass applied to a
//! store on a temporary file as the applier applies them.
//!
//! A refused request must be refused with etcd's error; an accepted one
//! may fail only as etcd fails a request (compacted, future revision, no
//! lease...), never with a storage fault, and the store's revision never
//! goes back.

use cairn_proto::etcdserverpb::{
    CompactionRequest, DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest, PutRequest,
    RangeRequest, TxnRequest,
};
use cairn_raft_backend::testing::TestStore;
use cairn_raft_backend::{Command, StoreError};
use prost::Message;

use crate::validate;

/// Requests per input: enough to build state and then hit it.
const MAX_REQUESTS: usize = 64;

/// Frames of `[kind: u8][len: u16 LE][protobuf]`, each one request.
pub fn client_requests(data: &[u8]) {
    let mut store = TestStore::new();
    let mut rest = data;
    for _ in 0..MAX_REQUESTS {
        let Some((&kind, tail)) = rest.split_first() else {
            return;
        };
        let [a, b, tail @ ..] = tail else { return };
        let len = usize::from(u16::from_le_bytes([*a, *b])).min(tail.len());
        let (bytes, tail) = tail.split_at(len);
        rest = tail;
        let before = store.state.current_rev;
        let command = match kind % 7 {
            0 => PutRequest::decode(bytes)
                .ok()
                .filter(|r| validate::put(r).is_ok())
                .map(Command::Put),
            1 => DeleteRangeRequest::decode(bytes)
                .ok()
                .filter(|r| validate::delete_range(r).is_ok())
                .map(Command::DeleteRange),
            2 => TxnRequest::decode(bytes)
                .ok()
                .filter(|r| validate::txn(r, 128).is_ok())
                .map(Command::Txn),
            3 => CompactionRequest::decode(bytes).ok().map(Command::Compact),
            4 => LeaseGrantRequest::decode(bytes)
                .ok()
                .filter(|r| r.ttl > 0)
                .map(Command::LeaseGrant),
            5 => LeaseRevokeRequest::decode(bytes)
                .ok()
                .map(Command::LeaseRevoke),
            _ => {
                if let Ok(r) = RangeRequest::decode(bytes) {
                    if validate::range(&r).is_ok() {
                        check(store.range(&r).map(drop));
                    }
                }
                None
            }
        };
        if let Some(command) = command {
            check(store.apply(command).map(drop));
        }
        assert!(
            store.state.current_rev >= before,
            "the revision went back from {before} to {}",
            store.state.current_rev
        );
    }
}

/// An accepted request may be refused as etcd refuses it, not fault.
fn check(result: Result<(), StoreError>) {
    if let Err(e) = result {
        assert!(
            !e.is_storage_fault() && !matches!(e, StoreError::Corrupt(_)),
            "a valid request faulted the store: {e}"
        );
    }
}

/// Seed inputs for `client_requests`: kube-apiserver's shapes of requests.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    use cairn_proto::etcdserverpb::{compare, request_op, Compare, RequestOp, TxnRequest as Txn};
    let frame = |out: &mut Vec<u8>, kind: u8, m: &dyn Fn(&mut Vec<u8>)| {
        let mut body = Vec::new();
        m(&mut body);
        out.push(kind);
        out.extend_from_slice(&(body.len() as u16).to_le_bytes());
        out.extend_from_slice(&body);
    };
    let key = |k: &str| format!("/registry/pods/default/{k}").into_bytes();
    let put = |k: &str, v: &str| PutRequest {
        key: key(k),
        value: v.as_bytes().to_vec(),
        ..Default::default()
    };
    let mut input = Vec::new();
    frame(&mut input, 4, &|b| {
        LeaseGrantRequest { ttl: 60, id: 7 }.encode(b).ok();
    });
    frame(&mut input, 0, &|b| {
        put("a", "1").encode(b).ok().unwrap_or(())
    });
    frame(&mut input, 0, &|b| {
        PutRequest {
            lease: 7,
            prev_kv: true,
            ..put("b", "2")
        }
        .encode(b)
        .ok();
    });
    // kube-apiserver's create: a put if the key does not exist.
    frame(&mut input, 2, &|b| {
        Txn {
            compare: vec![Compare {
                key: key("c"),
                target: compare::CompareTarget::Mod as i32,
                result: compare::CompareResult::Equal as i32,
                target_union: Some(compare::TargetUnion::ModRevision(0)),
                ..Default::default()
            }],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(put("c", "3"))),
            }],
            failure: vec![RequestOp {
                request: Some(request_op::Request::RequestRange(RangeRequest {
                    key: key("c"),
                    ..Default::default()
                })),
            }],
        }
        .encode(b)
        .ok();
    });
    frame(&mut input, 6, &|b| {
        RangeRequest {
            key: key(""),
            range_end: b"/registry/pods/default0".to_vec(),
            limit: 2,
            ..Default::default()
        }
        .encode(b)
        .ok();
    });
    frame(&mut input, 1, &|b| {
        DeleteRangeRequest {
            key: key("a"),
            prev_kv: true,
            ..Default::default()
        }
        .encode(b)
        .ok();
    });
    frame(&mut input, 3, &|b| {
        CompactionRequest {
            revision: 3,
            physical: false,
        }
        .encode(b)
        .ok();
    });
    frame(&mut input, 5, &|b| {
        LeaseRevokeRequest { id: 7 }.encode(b).ok();
    });
    vec![("client_requests", input)]
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn corpus() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus")
    }

    type Target = fn(&[u8]);

    /// Every fuzz target's entry point, by its corpus directory's name.
    fn targets() -> [(&'static str, Target); 4] {
        [
            ("client_requests", super::client_requests),
            ("peer_messages", cairn_raft_backend::fuzzing::peer_message),
            (
                "raft_log_recovery",
                cairn_raft_backend::fuzzing::raft_log_recovery,
            ),
            ("etcd_snapshot", cairn_raft_backend::fuzzing::etcd_snapshot),
        ]
    }

    /// Every committed corpus input (seeds, and inputs that once failed)
    /// through its target, on stable: the fuzz targets' regression test.
    #[test]
    fn fuzz_corpus_replays_cleanly() {
        let targets = targets();
        for (name, target) in targets {
            let dir = corpus().join(name);
            let mut inputs = 0;
            for entry in
                std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            {
                let path = entry.unwrap().path();
                target(&std::fs::read(&path).unwrap());
                inputs += 1;
            }
            assert!(inputs > 0, "no corpus for {name}");
        }
    }

    /// One mutation of `input`, libFuzzer-style: flip bits, overwrite,
    /// insert or erase bytes, truncate, or splice in a part of `other`.
    fn mutate(rng: &mut StdRng, input: &[u8], other: &[u8]) -> Vec<u8> {
        let mut out = input.to_vec();
        for _ in 0..rng.random_range(1..=4) {
            let at = rng.random_range(0..=out.len());
            match rng.random_range(0..6) {
                0 if !out.is_empty() => {
                    let i = at.min(out.len() - 1);
                    out[i] ^= 1 << rng.random_range(0..8);
                }
                1 if !out.is_empty() => {
                    let i = at.min(out.len() - 1);
                    out[i] = rng.random();
                }
                2 => {
                    let n = rng.random_range(1..=16);
                    let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                    out.splice(at..at, bytes);
                }
                3 if at < out.len() => {
                    let end = (at + rng.random_range(1..=16)).min(out.len());
                    out.drain(at..end);
                }
                4 => out.truncate(at),
                _ if !other.is_empty() => {
                    let from = rng.random_range(0..other.len());
                    let to = (from + rng.random_range(1..=64)).min(other.len());
                    out.splice(at..at, other[from..to].iter().copied());
                }
                _ => {}
            }
        }
        out.truncate(1 << 16);
        out
    }

    /// CI's short fuzzing run, on stable: every target gets mutations of
    /// its corpus (a fixed seed, so a failure reproduces) for a couple of
    /// seconds. No coverage guidance: the long, guided runs are libFuzzer's
    /// (`scripts/fuzz.sh`, docs/reliability.md); this keeps every target
    /// exercised beyond its seeds on every submission.
    #[test]
    fn fuzz_targets_survive_mutated_corpus_inputs() {
        let targets = targets();
        let budget = std::time::Duration::from_secs(2);
        for (name, target) in targets {
            let dir = corpus().join(name);
            let mut inputs: Vec<Vec<u8>> = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .map(|e| std::fs::read(e.unwrap().path()).unwrap())
                .collect();
            inputs.sort();
            let mut rng = StdRng::seed_from_u64(0xf022);
            let started = std::time::Instant::now();
            let mut runs = 0u64;
            while started.elapsed() < budget && runs < 200_000 {
                let a = &inputs[rng.random_range(0..inputs.len())];
                let b = &inputs[rng.random_range(0..inputs.len())];
                let input = mutate(&mut rng, a, b);
                let outcome = std::panic::catch_unwind(|| target(&input));
                assert!(
                    outcome.is_ok(),
                    "{name}: mutated input #{runs} (seed 0xf022) failed: {:02x?}",
                    input
                );
                runs += 1;
            }
            eprintln!("{name}: {runs} mutated inputs in {:?}", started.elapsed());
            assert!(runs > 0, "{name}: no input ran");
        }
    }

    /// Writes the seeds into fuzz/corpus (run by hand when they change:
    /// `cargo test -p cairn-shim --features fuzzing --lib write_fuzz_seeds -- --ignored`).
    #[test]
    #[ignore = "writes the seed corpus into the source tree"]
    fn write_fuzz_seeds() {
        let mut all = super::seeds();
        all.extend(cairn_raft_backend::fuzzing::seeds());
        let mut n = std::collections::HashMap::new();
        for (target, bytes) in all {
            let dir = corpus().join(target);
            std::fs::create_dir_all(&dir).unwrap();
            let i = n.entry(target).or_insert(0);
            *i += 1;
            std::fs::write(dir.join(format!("seed-{i}")), bytes).unwrap();
        }
    }
}

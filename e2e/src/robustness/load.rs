//! The campaign's load: what kube-apiserver sends, plus the plain requests
//! etcdctl and operators send, each recorded for the checks.
//!
//! Key spaces (each op kind keeps to its own, so that every check sees a
//! history it can judge):
//!
//! * `/registry/pods/p<n>`: kube's create, update and delete Txns on
//!   mod_revision, linearizable Gets, paginated lists at a fixed revision.
//!   Recorded for the linearizability check.
//! * `/registry/configmaps/c<n>`: plain Puts, single-key DeleteRanges,
//!   linearizable Gets (recorded), serializable lists.
//! * `/registry/events/`: create Txns under a long lease (the keys must
//!   outlive the run), count_only ranges.
//! * `/registry/leases/`: keys under short leases nobody keeps alive (they
//!   must all be gone at the end).
//! * `/registry/tmp/`: plain Puts and whole-prefix DeleteRanges.
//! * `compact_rev_key`: the compactor (see [`compactor`]).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse,
    TxnResponse,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::events::K;
use crate::linearizability::{Input, Output};
use crate::robustness::acked::Acked;
use crate::robustness::reads::{Got, ReadAt};
use crate::robustness::shared::{connect, Shared, REQUEST_TIMEOUT};

pub const PODS: &str = "/registry/pods/";
pub const CONFIGMAPS: &str = "/registry/configmaps/";
pub const EVENTS: &str = "/registry/events/";
pub const LEASES: &str = "/registry/leases/";
pub const TMP: &str = "/registry/tmp/";
pub const COMPACT_KEY: &str = "compact_rev_key";

/// Every prefix the load writes (the watchers pick among them).
pub const PREFIXES: [&str; 5] = [PODS, CONFIGMAPS, EVENTS, LEASES, TMP];

/// TTL of the short leases (s): above Cairn's minimum at the campaign's
/// election timeout, short enough to expire many times in a run.
pub const SHORT_TTL: i64 = 2;

/// Pod keys: more keys make fewer operations per key, which the
/// linearizability check, exponential per key at worst, needs.
const PODS_KEYS: u32 = 48;

/// Ops one worker sends at most (the stop flag ends it long before).
const MAX_OPS: u64 = 10_000_000;

/// One load client: runs until `shared` says stop. Its op mix is drawn from
/// `seed`; a failed request makes it reconnect to a member at random.
pub async fn worker(id: usize, seed: u64, shared: Arc<Shared>) {
    let mut w = Worker {
        id,
        rng: StdRng::seed_from_u64(seed.wrapping_mul(0x9e37_79b9).wrapping_add(id as u64)),
        shared,
        pods: HashMap::new(),
        short_lease: None,
        n: 0,
    };
    let mut client: Option<Client> = None;
    while w.n < MAX_OPS && !w.shared.stopped() {
        w.n += 1;
        let Some(c) = client.as_mut() else {
            client = match w.shared.pick_endpoint(&mut w.rng) {
                Some(ep) => connect(&ep).await.ok(),
                None => None,
            };
            if client.is_none() {
                // Every member down (a restart of all): retry shortly.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            continue;
        };
        let answered = w.one(c).await;
        w.shared.count(answered);
        if !answered {
            // Back off, then another member: as clientv3 retries, and so that
            // a cluster without a leader is not flooded with requests whose
            // outcome the checks must treat as unknown.
            client = None;
            let ms = w.rng.random_range(100..300);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }
}

struct Worker {
    id: usize,
    rng: StdRng,
    shared: Arc<Shared>,
    /// pod key → the mod_revision this client last saw (0: absent).
    pods: HashMap<String, i64>,
    short_lease: Option<(i64, u32)>,
    n: u64,
}

/// An op with the load's deadline; `None` if it failed or timed out.
async fn timed<T, E>(f: impl Future<Output = Result<T, E>>) -> Option<T> {
    match tokio::time::timeout(REQUEST_TIMEOUT + Duration::from_secs(1), f).await {
        Ok(Ok(v)) => Some(v),
        _ => None,
    }
}

fn rev_of(h: Option<&etcd_client::ResponseHeader>) -> i64 {
    h.map_or(0, |h| h.revision())
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl Worker {
    /// Sends one op; false if the request failed.
    async fn one(&mut self, c: &mut Client) -> bool {
        match self.rng.random_range(0..100) {
            0..30 => self.kube_write(c).await,
            30..45 => {
                let key = self.pod_key();
                self.get(c, key).await
            }
            45..52 => {
                let key = self.configmap_key();
                self.get(c, key).await
            }
            52..60 => self.plain_put(c).await,
            60..63 => self.plain_delete(c).await,
            63..68 => self.paged_list(c).await,
            68..70 => self.count_events(c).await,
            70..75 => self.serializable_list(c).await,
            75..81 => self.event_create(c).await,
            81..88 => self.short_lease_put(c).await,
            88..97 => self.tmp_put(c).await,
            _ => self.tmp_delete_range(c).await,
        }
    }

    fn pod_key(&mut self) -> String {
        format!("{PODS}p{}", self.rng.random_range(0..PODS_KEYS))
    }

    fn configmap_key(&mut self) -> String {
        format!("{CONFIGMAPS}c{}", self.rng.random_range(0..16))
    }

    /// A unique value (the linearizability check tells writes apart by value).
    fn value(&mut self) -> String {
        format!("w{}-{}", self.id, self.n)
    }

    /// kube-apiserver's create (`mod_revision == 0`), update and delete
    /// (`mod_revision == rv`) Txns, with its else branch: a Range of the key.
    async fn kube_write(&mut self, c: &mut Client) -> bool {
        let key = self.pod_key();
        let rv = self.pods.get(&key).copied().unwrap_or(0);
        let delete = rv != 0 && self.rng.random_bool(0.3);
        let value = self.value();
        let (input, then) = if delete {
            (
                Input::Delete { key: key.clone() },
                TxnOp::delete(key.clone(), None),
            )
        } else {
            (
                Input::Put {
                    key: key.clone(),
                    value: value.clone(),
                },
                TxnOp::put(key.clone(), value.clone(), None),
            )
        };
        let txn = Txn::new()
            .when([Compare::mod_revision(key.clone(), CompareOp::Equal, rv)])
            .and_then([then])
            .or_else([TxnOp::get(key.clone(), None)]);
        let op = self.shared.rec.invoke(self.id, input);
        let Some(r) = timed(c.txn(txn)).await else {
            self.pods.remove(&key);
            return false; // dropping `op` records it Unknown
        };
        let rev = rev_of(r.header());
        if r.succeeded() {
            op.complete(Output::Written { revision: rev });
            self.pods.insert(key.clone(), if delete { 0 } else { rev });
            self.shared.push(
                &self.shared.acked,
                Acked {
                    client: self.id,
                    key: key.into_bytes(),
                    value: (!delete).then(|| value.into_bytes()),
                    rev,
                    cond: Some(rv),
                },
            );
        } else {
            let kv = else_kv(&r);
            self.pods
                .insert(key.clone(), kv.as_ref().map_or(0, |kv| kv.modr));
            op.complete_as(
                Input::Get { key },
                Output::Read {
                    value: kv.map(|kv| text(&kv.value)),
                    revision: rev,
                },
            );
        }
        true
    }

    /// A linearizable Get of one key, as kube's `Range key=K limit=1`.
    async fn get(&mut self, c: &mut Client, key: String) -> bool {
        let op = self
            .shared
            .rec
            .invoke(self.id, Input::Get { key: key.clone() });
        let Some(r) = timed(c.get(key.clone(), Some(GetOptions::new().with_limit(1)))).await else {
            return false;
        };
        let kv = r.kvs().first();
        if key.starts_with(PODS) {
            self.pods
                .insert(key.clone(), kv.map_or(0, |kv| kv.mod_revision()));
        }
        op.complete(Output::Read {
            value: kv.map(|kv| text(kv.value())),
            revision: rev_of(r.header()),
        });
        true
    }

    async fn plain_put(&mut self, c: &mut Client) -> bool {
        let (key, value) = (self.configmap_key(), self.value());
        let op = self.shared.rec.invoke(
            self.id,
            Input::Put {
                key: key.clone(),
                value: value.clone(),
            },
        );
        let Some(r) = timed(c.put(key.clone(), value.clone(), None)).await else {
            return false;
        };
        let rev = rev_of(r.header());
        op.complete(Output::Written { revision: rev });
        self.ack(key, Some(value), rev, None);
        true
    }

    async fn plain_delete(&mut self, c: &mut Client) -> bool {
        let key = self.configmap_key();
        let op = self
            .shared
            .rec
            .invoke(self.id, Input::Delete { key: key.clone() });
        let Some(r) = timed(c.delete(key.clone(), None)).await else {
            return false;
        };
        let rev = rev_of(r.header());
        op.complete(Output::Written { revision: rev });
        if r.deleted() > 0 {
            self.ack(key, None, rev, None);
        }
        true
    }

    fn ack(&self, key: String, value: Option<String>, rev: i64, cond: Option<i64>) {
        self.shared.push(
            &self.shared.acked,
            Acked {
                client: self.id,
                key: key.into_bytes(),
                value: value.map(String::into_bytes),
                rev,
                cond,
            },
        );
    }

    /// A list of the pods in pages of 7 at the first page's revision, as
    /// kube-apiserver pages (continuing from the last key + "\0").
    async fn paged_list(&mut self, c: &mut Client) -> bool {
        let end = crate::watch::prefix_end(PODS.as_bytes());
        let mut from = PODS.as_bytes().to_vec();
        let mut rev = 0;
        let mut kvs = Vec::new();
        // Bounded: at most 48 pods, so at most 7 pages (and a margin).
        for _ in 0..12 {
            let mut opts = GetOptions::new().with_range(end.clone()).with_limit(7);
            if rev != 0 {
                opts = opts.with_revision(rev);
            }
            let Some(r) = timed(c.get(from.clone(), Some(opts))).await else {
                // Compacted between pages, or the member went away.
                return false;
            };
            if rev == 0 {
                rev = rev_of(r.header());
            }
            kvs.extend(r.kvs().iter().map(K::from_client));
            let Some(last) = r.kvs().last().filter(|_| r.more()) else {
                self.read(
                    format!("paged list (client {})", self.id),
                    PODS,
                    rev,
                    Got::Kvs(kvs),
                );
                return true;
            };
            from = last.key().to_vec();
            from.push(0);
        }
        true
    }

    async fn count_events(&mut self, c: &mut Client) -> bool {
        let opts = GetOptions::new().with_prefix().with_count_only();
        let Some(r) = timed(c.get(EVENTS, Some(opts))).await else {
            return false;
        };
        self.read(
            format!("count_only (client {})", self.id),
            EVENTS,
            rev_of(r.header()),
            Got::Count(r.count()),
        );
        true
    }

    /// A serializable list: the member's own state at its applied revision.
    async fn serializable_list(&mut self, c: &mut Client) -> bool {
        let opts = GetOptions::new().with_prefix().with_serializable();
        let Some(r) = timed(c.get(CONFIGMAPS, Some(opts))).await else {
            return false;
        };
        self.read(
            format!("serializable list (client {})", self.id),
            CONFIGMAPS,
            rev_of(r.header()),
            Got::Kvs(r.kvs().iter().map(K::from_client).collect()),
        );
        true
    }

    fn read(&self, what: String, prefix: &str, rev: i64, got: Got) {
        self.shared.push(
            &self.shared.reads,
            ReadAt {
                what,
                prefix: prefix.as_bytes().to_vec(),
                rev,
                got,
            },
        );
    }

    /// kube's Event create: `mod_revision == 0` then a Put under the shared
    /// long lease, else nothing.
    async fn event_create(&mut self, c: &mut Client) -> bool {
        let lease = self.shared.long_lease.load(Ordering::Relaxed);
        let key = format!("{EVENTS}e{}-{}", self.id, self.n);
        let value = self.value();
        let txn = Txn::new()
            .when([Compare::mod_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                value.clone(),
                Some(PutOptions::new().with_lease(lease)),
            )]);
        let Some(r) = timed(c.txn(txn)).await else {
            return false;
        };
        if r.succeeded() {
            let rev = rev_of(r.header());
            self.shared.push(
                &self.shared.live_lease_keys,
                (key.clone().into_bytes(), lease),
            );
            self.ack(key, Some(value), rev, Some(0));
        }
        true
    }

    /// A key under this worker's short lease (a new lease every 10 keys, or
    /// once the old one is gone), as kube-apiserver's own lease keys.
    async fn short_lease_put(&mut self, c: &mut Client) -> bool {
        let lease = match self.short_lease {
            Some((id, uses)) if uses < 10 => id,
            _ => {
                let Some(r) = timed(c.lease_grant(SHORT_TTL, None)).await else {
                    return false;
                };
                r.id()
            }
        };
        let uses = self.short_lease.filter(|l| l.0 == lease).map_or(0, |l| l.1);
        self.short_lease = Some((lease, uses + 1));
        let key = format!("{LEASES}l{}-{}", self.id, self.n);
        let opts = PutOptions::new().with_lease(lease);
        match tokio::time::timeout(REQUEST_TIMEOUT, c.put(key, "held", Some(opts))).await {
            Ok(Ok(_)) => true,
            Ok(Err(e)) if e.to_string().contains("lease not found") => {
                // It expired (or was never granted where it applied): a new one.
                self.short_lease = None;
                true
            }
            _ => false,
        }
    }

    async fn tmp_put(&mut self, c: &mut Client) -> bool {
        let key = format!("{TMP}t{}", self.rng.random_range(0..20));
        let value = self.value();
        let Some(r) = timed(c.put(key.clone(), value.clone(), None)).await else {
            return false;
        };
        self.ack(key, Some(value), rev_of(r.header()), None);
        true
    }

    async fn tmp_delete_range(&mut self, c: &mut Client) -> bool {
        let opts = DeleteOptions::new().with_prefix();
        timed(c.delete(TMP, Some(opts))).await.is_some()
    }
}

/// The key-value the else branch (a Range of the key) returned.
fn else_kv(r: &TxnResponse) -> Option<K> {
    r.op_responses().iter().find_map(|op| match op {
        TxnOpResponse::Get(g) => g.kvs().first().map(K::from_client),
        _ => None,
    })
}

/// kube-apiserver's compactor, every `interval`: the compact_rev_key Txn
/// (`version == v` then Put the current revision, else Get), then, when it
/// won, a Compact of the revision the previous round stored. Never above
/// what the reference watcher has been sent, so that it can always resume.
pub async fn compactor(seed: u64, interval: Duration, shared: Arc<Shared>) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xc0c0);
    let mut version = 0;
    let mut previous = 0;
    // Bounded: one round per interval until stopped (and a count).
    for _ in 0..MAX_OPS {
        if shared.stopped() {
            break;
        }
        tokio::time::sleep(interval).await;
        let Some(ep) = shared.pick_endpoint(&mut rng) else {
            continue;
        };
        let Ok(mut c) = connect(&ep).await else {
            continue;
        };
        let Some(now) = timed(c.get(COMPACT_KEY, None)).await else {
            continue;
        };
        let current = rev_of(now.header());
        let txn = Txn::new()
            .when([Compare::version(COMPACT_KEY, CompareOp::Equal, version)])
            .and_then([TxnOp::put(COMPACT_KEY, current.to_string(), None)])
            .or_else([TxnOp::get(COMPACT_KEY, None)]);
        let Some(r) = timed(c.txn(txn)).await else {
            continue;
        };
        if !r.succeeded() {
            version = else_kv(&r).map_or(0, |kv| kv.version);
            continue;
        }
        version += 1;
        let target = previous.min(shared.reference_seen.load(Ordering::SeqCst));
        previous = current;
        if target > 1 && timed(c.compact(target, None)).await.is_some() {
            shared.compactions.fetch_add(1, Ordering::Relaxed);
        }
    }
}

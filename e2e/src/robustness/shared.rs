//! What the campaign's tasks share: the members to talk to (they change
//! with the faults), when to stop, and everything recorded for the checks.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result};
use etcd_client::{Client, ConnectOptions};
use rand::Rng;

use crate::linearizability::Recorder;
use crate::robustness::acked::Acked;
use crate::robustness::reads::ReadAt;
use crate::robustness::watch_check::Stream;

/// Per-request timeout of the load's clients: long enough for a leader
/// election, short enough that a client stuck on a paused member moves on.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Default)]
pub struct Shared {
    /// Client URLs of the members currently in the cluster.
    endpoints: Mutex<Vec<String>>,
    stop: AtomicBool,
    /// Single-key operations, for the linearizability check.
    pub rec: Recorder,
    pub acked: Mutex<Vec<Acked>>,
    pub reads: Mutex<Vec<ReadAt>>,
    pub streams: Mutex<Vec<Stream>>,
    /// Keys written under the long lease (they must outlive the run).
    pub live_lease_keys: Mutex<Vec<(Vec<u8>, i64)>>,
    /// The long lease (3660 s, as kube-apiserver's events use).
    pub long_lease: AtomicI64,
    /// The highest revision the reference watcher has been sent every event
    /// up to: the compactor never compacts above it.
    pub reference_seen: AtomicI64,
    /// Requests sent, and those answered (any answer, not an error).
    pub sent: AtomicU64,
    pub answered: AtomicU64,
    pub compactions: AtomicU64,
}

impl Shared {
    pub fn set_endpoints(&self, eps: Vec<String>) {
        *lock(&self.endpoints) = eps;
    }

    /// One current member's URL, at random.
    pub fn pick_endpoint(&self, rng: &mut impl Rng) -> Option<String> {
        let eps = lock(&self.endpoints);
        (!eps.is_empty()).then(|| eps[rng.random_range(0..eps.len())].clone())
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    pub fn count(&self, answered: bool) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        if answered {
            self.answered.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn push<T>(&self, list: &Mutex<Vec<T>>, item: T) {
        lock(list).push(item);
    }

    pub fn take<T>(&self, list: &Mutex<Vec<T>>) -> Vec<T> {
        std::mem::take(&mut *lock(list))
    }
}

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A client of one member as kube-apiserver connects (`hasleader` on every
/// request), with the load's short timeouts.
pub async fn connect(endpoint: &str) -> Result<Client> {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(1))
        .with_timeout(REQUEST_TIMEOUT)
        .with_require_leader(true);
    tokio::time::timeout(
        Duration::from_secs(2),
        Client::connect([endpoint], Some(opts)),
    )
    .await
    .with_context(|| format!("connecting to {endpoint}: timed out"))?
    .with_context(|| format!("connecting to {endpoint}"))
}

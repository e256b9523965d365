//! Whether any watcher wants previous kvs in the events of new writes.
//!
//! A put's event carries the key's previous version, value included, which
//! only watchers that asked for `prev_kv` receive. Reading it cost every put
//! a row read; etcd looks a previous kv up only when it sends an event to a
//! watcher that wants it. The writer loads previous values while at least
//! one such watcher exists and marks each applied batch with whether it did. A prev_kv watcher handed a batch
//! without them reads those revisions from history instead, where every event
//! has its previous kv, so the moment a watcher registers needs no
//! coordination with the writer.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The count of watchers that want previous kvs.
#[derive(Debug, Clone, Default)]
pub struct PrevKvInterest {
    count: Arc<AtomicUsize>,
}

impl PrevKvInterest {
    /// Counts one more watcher until the returned value is dropped.
    pub fn register(&self) -> PrevKvWanted {
        self.count.fetch_add(1, Ordering::SeqCst);
        PrevKvWanted(self.count.clone())
    }

    pub fn wanted(&self) -> bool {
        // Fail point `prev_kv_never_load` (test builds only): the writer
        // never loads previous kvs, so that every prev_kv watcher takes the
        // history path an unlucky watcher takes when it registers during an
        // apply. The e2e suite runs the watch differential against etcd with it.
        fail::fail_point!("prev_kv_never_load", |_| false);
        self.count.load(Ordering::SeqCst) > 0
    }
}

/// One watcher's want; dropping it withdraws it.
#[derive(Debug)]
pub struct PrevKvWanted(Arc<AtomicUsize>);

impl Drop for PrevKvWanted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wanted_while_any_registration_lives() {
        // The fail point below is process-wide: hold the scenario lock so
        // that it is never set while this test reads `wanted`.
        #[cfg(feature = "failpoints")]
        let _scenario = fail::FailScenario::setup();
        let interest = PrevKvInterest::default();
        assert!(!interest.wanted());
        let a = interest.register();
        let b = interest.register();
        drop(a);
        assert!(interest.wanted());
        drop(b);
        assert!(!interest.wanted());
    }

    #[cfg(feature = "failpoints")]
    #[test]
    fn the_fail_point_withdraws_every_want() {
        let scenario = fail::FailScenario::setup();
        let interest = PrevKvInterest::default();
        let _a = interest.register();
        fail::cfg("prev_kv_never_load", "return").unwrap();
        assert!(!interest.wanted());
        fail::remove("prev_kv_never_load");
        assert!(interest.wanted());
        scenario.teardown();
    }
}

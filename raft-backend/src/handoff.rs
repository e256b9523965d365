//! A thread that owns some state and takes messages in the order they were
//! sent, which its one caller may bypass while the thread is idle: the
//! caller then does the work on its own thread, under the same lock, and
//! skips the two wake-ups of a hand-off and its answer (docs/benchmarks.md).
//! The Raft log's writer and the store's writer are such threads.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, TryLockError};
use std::thread::JoinHandle;

/// What the thread owns, and how it takes its messages.
pub(crate) trait Owner: Send + 'static {
    type Msg: Send + 'static;

    /// Does `msg`, and whatever it folds in from `rx` behind it. Returns how
    /// many messages were done, and one taken from `rx` but not done (it
    /// ended the fold), to be done next.
    fn take(
        &mut self,
        msg: Self::Msg,
        rx: &mpsc::Receiver<Self::Msg>,
    ) -> (usize, Option<Self::Msg>);

    /// Runs on the thread once every sender is gone.
    fn stopped(&mut self) {}
}

/// The thread has stopped: a message sent now would never be done.
#[derive(Debug)]
pub(crate) struct Stopped;

/// The handle: sends to the thread; dropping it ends and joins the thread.
pub(crate) struct Handoff<O: Owner> {
    owner: Arc<Mutex<O>>,
    tx: Option<mpsc::Sender<O::Msg>>,
    /// Messages sent and not yet done: work done on the caller's thread may
    /// not overtake them.
    queued: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

fn lock<O>(m: &Mutex<O>) -> MutexGuard<'_, O> {
    // The owners' state stays consistent through a panic under the lock (a
    // failed SQLite transaction rolls back; a failed log write marks the
    // log failed first), so a poisoned lock is still good.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<O: Owner> Handoff<O> {
    pub(crate) fn start(name: &str, owner: O) -> io::Result<Self> {
        let owner = Arc::new(Mutex::new(owner));
        let queued = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::channel();
        let thread = {
            let (owner, queued) = (owner.clone(), queued.clone());
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || run(&owner, &queued, rx))?
        };
        Ok(Handoff {
            owner,
            tx: Some(tx),
            queued,
            thread: Some(thread),
        })
    }

    pub(crate) fn send(&self, msg: O::Msg) -> Result<(), Stopped> {
        let tx = self.tx.as_ref().ok_or(Stopped)?;
        self.queued.fetch_add(1, Ordering::AcqRel);
        tx.send(msg).map_err(|_| {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            Stopped
        })
    }

    /// The owned state, if the thread has nothing queued and no one holds
    /// it: work done with it then comes after everything sent before. Only
    /// for the one caller that sends (openraft's core, the state machine),
    /// one call at a time, so that nothing can be queued meanwhile; another
    /// sender that took the lock since makes this `None`, never a wait.
    pub(crate) fn idle(&self) -> Option<MutexGuard<'_, O>> {
        if self.queued.load(Ordering::Acquire) != 0 {
            return None;
        }
        match self.owner.try_lock() {
            Ok(g) => Some(g),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }
}

impl<O: Owner> Drop for Handoff<O> {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Takes each message under the lock and counts it done only after.
fn run<O: Owner>(owner: &Mutex<O>, queued: &AtomicUsize, rx: mpsc::Receiver<O::Msg>) {
    let mut next = rx.recv().ok();
    while let Some(msg) = next.take() {
        let (done, after) = lock(owner).take(msg, &rx);
        queued.fetch_sub(done, Ordering::AcqRel);
        next = after.or_else(|| rx.recv().ok());
    }
    lock(owner).stopped();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what it did; a message `Hold` blocks until released.
    struct Log {
        done: Vec<u32>,
        hold: Option<mpsc::Receiver<()>>,
    }

    impl Owner for Log {
        type Msg = u32;
        fn take(&mut self, msg: u32, rx: &mpsc::Receiver<u32>) -> (usize, Option<u32>) {
            if msg == 0 {
                if let Some(h) = self.hold.take() {
                    let _ = h.recv();
                }
            }
            self.done.push(msg);
            // Folds every queued message behind this one.
            let mut n = 1;
            while let Ok(m) = rx.try_recv() {
                self.done.push(m);
                n += 1;
            }
            (n, None)
        }
    }

    #[test]
    fn idle_only_when_nothing_sent_is_undone_and_in_order_after_it() {
        let (release, hold) = mpsc::channel();
        let h = Handoff::start(
            "test-handoff",
            Log {
                done: Vec::new(),
                hold: Some(hold),
            },
        )
        .unwrap();
        h.idle().expect("idle at first").done.push(1);
        // Message 0 holds the thread; 2 queues behind it.
        h.send(0).unwrap();
        h.send(2).unwrap();
        assert!(h.idle().is_none(), "busy with queued messages");
        release.send(()).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut g = loop {
            if let Some(g) = h.idle() {
                break g;
            }
            assert!(std::time::Instant::now() < deadline, "never idle again");
            std::thread::yield_now();
        };
        g.done.push(3);
        assert_eq!(g.done, vec![1, 0, 2, 3]);
    }

    #[test]
    fn a_send_after_the_thread_stopped_is_refused_and_not_counted() {
        struct Panics;
        impl Owner for Panics {
            type Msg = ();
            fn take(&mut self, _: (), _: &mpsc::Receiver<()>) -> (usize, Option<()>) {
                panic!("planted");
            }
        }
        let h = Handoff::start("test-handoff-panic", Panics).unwrap();
        h.send(()).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while h.send(()).is_ok() {
            assert!(std::time::Instant::now() < deadline, "thread never stopped");
            std::thread::yield_now();
        }
        // The panicked message stays counted: nothing runs inline after it.
        assert!(h.idle().is_none());
    }
}

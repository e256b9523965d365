//! Answers owed to clients of this member whose writes were forwarded to the
//! leader: registered by request id before forwarding, resolved when this
//! member applies the entry (or when the leader refused it), and removed
//! however the wait ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

use crate::command::CommandOutput;
use crate::error::Result;

type Answer = oneshot::Sender<Result<CommandOutput>>;

#[derive(Clone, Default)]
pub struct Waiters(Arc<Mutex<HashMap<u64, Answer>>>);

/// Removes its waiter when dropped, whether or not it was answered.
pub struct Registration<'a> {
    waiters: &'a Waiters,
    id: u64,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.waiters.map().remove(&self.id);
    }
}

impl Waiters {
    fn map(&self) -> MutexGuard<'_, HashMap<u64, Answer>> {
        // A panic while holding the lock leaves plain data behind; keep using it.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers request `id`; its answer arrives on the receiver.
    pub fn register(
        &self,
        id: u64,
    ) -> (Registration<'_>, oneshot::Receiver<Result<CommandOutput>>) {
        let (tx, rx) = oneshot::channel();
        self.map().insert(id, tx);
        (Registration { waiters: self, id }, rx)
    }

    /// Answers request `id`, if anyone still waits for it.
    pub fn resolve(&self, id: u64, answer: Result<CommandOutput>) {
        if let Some(w) = self.map().remove(&id) {
            let _ = w.send(answer);
        }
    }
}

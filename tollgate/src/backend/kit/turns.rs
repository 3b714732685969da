//! Turns: this process's waiters for one key queue here, in order, so that only one of them
//! at a time waits on the server. A release then wakes one waiter of this process rather
//! than a stampede of attempts, this process's waiters do not split a majority's votes
//! (RedLock), and waiters that each need a connection of their own to wait (owned
//! PostgreSQL transactions) take two connections per key, the holder's and the first
//! waiter's, however many queue behind them.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};

/// Per key, the queue of this process's waiters.
pub(crate) struct Turns<K> {
    queues: Mutex<HashMap<K, Arc<tokio::sync::Mutex<()>>>>,
}

impl<K> Default for Turns<K> {
    fn default() -> Self {
        Turns {
            queues: Mutex::default(),
        }
    }
}

impl<K> std::fmt::Debug for Turns<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let queued = self.queues.lock().map_or(0, |queues| queues.len());
        f.debug_struct("Turns")
            .field("keys_queued", &queued)
            .finish()
    }
}

impl<K: Hash + Eq + Clone> Turns<K> {
    fn queues(&self) -> MutexGuard<'_, HashMap<K, Arc<tokio::sync::Mutex<()>>>> {
        self.queues
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits for this process's turn to wait for `key` on the server: first come, first
    /// served (tokio's mutex is fair).
    ///
    /// # Cancel safety
    /// Cancel-safe: a dropped future leaves the queue, and the turn goes to the next.
    pub(crate) async fn turn(self: &Arc<Self>, key: K) -> Turn<K> {
        let queue = self.queues().entry(key.clone()).or_default().clone();
        let mut turn = Turn {
            turns: self.clone(),
            key,
            queue: Some(queue.clone()),
            guard: None,
        };
        turn.guard = Some(queue.lock_owned().await);
        turn
    }
}

/// A waiter's turn (see [`Turns::turn`]); dropping it lets the next waiter of this process
/// go to the server, and forgets the queue when nobody else is in it.
pub(crate) struct Turn<K: Hash + Eq + Clone> {
    turns: Arc<Turns<K>>,
    key: K,
    queue: Option<Arc<tokio::sync::Mutex<()>>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl<K: Hash + Eq + Clone> Drop for Turn<K> {
    fn drop(&mut self) {
        self.guard = None;
        let mut queues = self.turns.queues();
        drop(self.queue.take());
        if queues
            .get(&self.key)
            .is_some_and(|queue| Arc::strong_count(queue) == 1)
        {
            queues.remove(&self.key);
        }
    }
}

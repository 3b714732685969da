//! Releases under way after a drop, per key, shared by the server backends: a handle dropped
//! without `release().await` releases on a background task, and this process's next acquire
//! of the same key waits for that release instead of finding the key busy.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

/// Counts of releases under way, by key.
#[derive(Debug)]
pub(crate) struct ReleaseNotes<K> {
    releasing: Mutex<HashMap<K, usize>>,
    released: Notify,
}

impl<K> Default for ReleaseNotes<K> {
    fn default() -> Self {
        ReleaseNotes {
            releasing: Mutex::new(HashMap::new()),
            released: Notify::new(),
        }
    }
}

impl<K: Eq + Hash + Clone> ReleaseNotes<K> {
    /// Notes that releases of `keys` are under way, until the note is dropped.
    pub(crate) fn note(self: &Arc<Self>, keys: Vec<K>) -> Note<K> {
        self.begin(&keys);
        Note {
            notes: self.clone(),
            keys,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<K, usize>> {
        self.releasing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Notes that releases of `keys` are under way.
    fn begin(&self, keys: &[K]) {
        let mut releasing = self.lock();
        for key in keys {
            *releasing.entry(key.clone()).or_default() += 1;
        }
    }

    /// Notes that releases of `keys` are done.
    fn end(&self, keys: &[K]) {
        let mut releasing = self.lock();
        for key in keys {
            if let Some(count) = releasing.get_mut(key) {
                *count -= 1;
                if *count == 0 {
                    releasing.remove(key);
                }
            }
        }
        drop(releasing);
        self.released.notify_waiters();
    }

    /// Waits until no release of `keys` is under way.
    pub(crate) async fn wait(&self, keys: &[K]) {
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if !keys.iter().any(|key| self.lock().contains_key(key)) {
                return;
            }
            released.await;
        }
    }
}

/// A release under way, noted until dropped (when the release ends, however it ends).
#[derive(Debug)]
pub(crate) struct Note<K: Eq + Hash + Clone> {
    notes: Arc<ReleaseNotes<K>>,
    keys: Vec<K>,
}

impl<K: Eq + Hash + Clone> Drop for Note<K> {
    fn drop(&mut self) {
        self.notes.end(&self.keys);
    }
}

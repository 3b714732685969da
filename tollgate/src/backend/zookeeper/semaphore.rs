//! ZooKeeper semaphores: `semaphore-` nodes, held among the first max count.

use super::recipe::Role;
use super::{Target, ZooKeeperHandle};
use crate::{Acquire, Result, Semaphore, Wait};

/// A counting semaphore on ZooKeeper.
#[derive(Clone)]
pub struct ZooKeeperSemaphore {
    pub(super) target: Target,
    pub(super) max_count: u32,
}

impl std::fmt::Debug for ZooKeeperSemaphore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZooKeeperSemaphore")
            .field("name", &self.target.name)
            .field("path", &self.target.path)
            .field("max_count", &self.max_count)
            .finish()
    }
}

impl ZooKeeperSemaphore {
    /// The semaphore's path, under which contenders create their nodes.
    pub fn path(&self) -> &str {
        &self.target.path
    }
}

impl Acquire for ZooKeeperSemaphore {
    type Handle = ZooKeeperHandle;

    fn name(&self) -> &str {
        &self.target.name
    }

    /// Creates this contender's node and waits until it is among the first max count.
    ///
    /// # Cancel safety
    /// Cancel-safe: dropping the future deletes the contender's node (on tollgate's runtime);
    /// nothing is held.
    async fn acquire_wait(&self, wait: Wait) -> Result<Option<ZooKeeperHandle>> {
        self.target
            .acquire(Role::Semaphore(self.max_count), wait)
            .await
    }
}

impl Semaphore for ZooKeeperSemaphore {
    fn max_count(&self) -> u32 {
        self.max_count
    }
}

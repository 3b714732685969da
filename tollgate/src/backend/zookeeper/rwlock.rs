//! ZooKeeper reader-writer locks: `read-` and `write-` nodes in one sequence, writers
//! preferred over later readers.

use super::recipe::Role;
use super::{Target, ZooKeeperHandle};
use crate::{Acquire, Lock, ReadWriteLock, Result, Wait};

/// A reader-writer lock on ZooKeeper.
#[derive(Clone)]
pub struct ZooKeeperReadWriteLock {
    pub(super) target: Target,
}

impl std::fmt::Debug for ZooKeeperReadWriteLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZooKeeperReadWriteLock")
            .field("name", &self.target.name)
            .field("path", &self.target.path)
            .finish()
    }
}

impl ZooKeeperReadWriteLock {
    /// The lock's path, under which contenders create their nodes.
    pub fn path(&self) -> &str {
        &self.target.path
    }
}

impl ReadWriteLock for ZooKeeperReadWriteLock {
    type Read = ZooKeeperReader;
    type Write = ZooKeeperWriter;

    fn name(&self) -> &str {
        &self.target.name
    }

    fn reader(&self) -> ZooKeeperReader {
        ZooKeeperReader {
            target: self.target.clone(),
        }
    }

    fn writer(&self) -> ZooKeeperWriter {
        ZooKeeperWriter {
            target: self.target.clone(),
        }
    }
}

/// The read side of a [`ZooKeeperReadWriteLock`].
#[derive(Clone, Debug)]
pub struct ZooKeeperReader {
    target: Target,
}

impl Acquire for ZooKeeperReader {
    type Handle = ZooKeeperHandle;

    fn name(&self) -> &str {
        &self.target.name
    }

    /// Creates this reader's node and waits, watching the nearest write node ahead, until no
    /// write node is ahead of it.
    ///
    /// # Cancel safety
    /// Cancel-safe: dropping the future deletes the reader's node (on tollgate's runtime);
    /// nothing is held.
    async fn acquire_wait(&self, wait: Wait) -> Result<Option<ZooKeeperHandle>> {
        self.target.acquire(Role::Read, wait).await
    }
}

/// The write side of a [`ZooKeeperReadWriteLock`].
#[derive(Clone, Debug)]
pub struct ZooKeeperWriter {
    target: Target,
}

impl Acquire for ZooKeeperWriter {
    type Handle = ZooKeeperHandle;

    fn name(&self) -> &str {
        &self.target.name
    }

    /// Creates this writer's node and waits, watching the node ahead, until it is first.
    ///
    /// # Cancel safety
    /// Cancel-safe: dropping the future deletes the writer's node (on tollgate's runtime);
    /// nothing is held.
    async fn acquire_wait(&self, wait: Wait) -> Result<Option<ZooKeeperHandle>> {
        self.target.acquire(Role::Write, wait).await
    }
}

impl Lock for ZooKeeperWriter {}

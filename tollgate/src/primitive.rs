//! The contract: what every lock, reader-writer lock, semaphore and provider offers on every
//! backend.
//!
//! Every primitive is reached through [`Acquire`], which has one required method,
//! [`Acquire::acquire_wait`], and the four acquire forms built on it:
//!
//! | method | waits | when busy at the end |
//! |---|---|---|
//! | [`acquire`](Acquire::acquire) | forever | — |
//! | [`acquire_timeout`](Acquire::acquire_timeout) | up to the timeout | `Err(Error::Timeout)` |
//! | [`try_acquire`](Acquire::try_acquire) | no time: one real attempt | `Ok(None)` |
//! | [`try_acquire_timeout`](Acquire::try_acquire_timeout) | up to the timeout | `Ok(None)` |
//!
//! None of them is re-entrant: a second acquire of a held primitive from the same process
//! waits like any other contender.

use std::future::Future;
use std::time::Duration;

use crate::{Error, Handle, Result, UpgradeableHandle};

/// How long an acquire may wait for a busy primitive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Wait {
    /// Wait until acquired.
    Forever,
    /// Wait at most this long. `Duration::ZERO` still makes exactly one real attempt.
    AtMost(Duration),
}

impl Wait {
    /// No waiting: one attempt.
    pub const NO_WAIT: Wait = Wait::AtMost(Duration::ZERO);

    /// `None` means forever, as in DistributedLock's `TimeSpan?` timeouts.
    pub fn from_timeout(timeout: Option<Duration>) -> Self {
        timeout.map_or(Wait::Forever, Wait::AtMost)
    }

    /// The instant the wait ends, if it ends.
    pub fn deadline(self) -> Option<tokio::time::Instant> {
        match self {
            Wait::Forever => None,
            // Durations too large to add are as good as forever.
            Wait::AtMost(timeout) => tokio::time::Instant::now().checked_add(timeout),
        }
    }
}

/// Something that can be acquired by name: a lock, a semaphore, or one side of a
/// reader-writer lock.
pub trait Acquire: Send + Sync {
    /// What a successful acquire holds; dropping it releases.
    type Handle: Handle;

    /// The name the primitive was created with.
    fn name(&self) -> &str;

    /// Acquires, waiting as `wait` says: `Ok(Some(handle))` once held, `Ok(None)` when the
    /// wait ran out (after at least one real attempt).
    ///
    /// # Cancel safety
    /// Cancel-safe: dropping the future before it completes leaves nothing held, locally or
    /// on the server.
    fn acquire_wait(&self, wait: Wait)
        -> impl Future<Output = Result<Option<Self::Handle>>> + Send;

    /// Acquires, waiting as long as it takes.
    ///
    /// # Cancel safety
    /// Cancel-safe: dropping the future before it completes leaves nothing held.
    fn acquire(&self) -> impl Future<Output = Result<Self::Handle>> + Send {
        async move {
            match self.acquire_wait(Wait::Forever).await? {
                Some(handle) => Ok(handle),
                None => Err(Error::Backend {
                    backend: "tollgate",
                    message: format!("an unbounded acquire of {:?} gave up", self.name()),
                    source: None,
                }),
            }
        }
    }

    /// Acquires, failing with [`Error::Timeout`] if `timeout` runs out first.
    /// `Duration::ZERO` makes one attempt.
    ///
    /// # Cancel safety
    /// Cancel-safe: dropping the future before it completes leaves nothing held.
    fn acquire_timeout(
        &self,
        timeout: Duration,
    ) -> impl Future<Output = Result<Self::Handle>> + Send {
        async move {
            match self.acquire_wait(Wait::AtMost(timeout)).await? {
                Some(handle) => Ok(handle),
                None => Err(Error::Timeout {
                    name: self.name().to_owned(),
                    timeout,
                }),
            }
        }
    }

    /// Makes one attempt without waiting; `Ok(None)` when busy.
    ///
    /// # Cancel safety
    /// Cancel-safe: dropping the future before it completes leaves nothing held.
    fn try_acquire(&self) -> impl Future<Output = Result<Option<Self::Handle>>> + Send {
        self.acquire_wait(Wait::NO_WAIT)
    }

    /// Waits up to `timeout`; `Ok(None)` when still busy then.
    ///
    /// # Cancel safety
    /// Cancel-safe: dropping the future before it completes leaves nothing held.
    fn try_acquire_timeout(
        &self,
        timeout: Duration,
    ) -> impl Future<Output = Result<Option<Self::Handle>>> + Send {
        self.acquire_wait(Wait::AtMost(timeout))
    }
}

/// A mutual-exclusion lock: at most one holder at a time.
pub trait Lock: Acquire {}

/// A counting semaphore: at most [`max_count`](Semaphore::max_count) holders at a time.
pub trait Semaphore: Acquire {
    /// How many tickets the semaphore has (at least 1).
    fn max_count(&self) -> u32;
}

/// A reader-writer lock: many readers or one writer. A waiting writer blocks new readers,
/// so a stream of readers cannot starve it.
pub trait ReadWriteLock: Send + Sync {
    /// The shared (read) side.
    type Read: Acquire;
    /// The exclusive (write) side; it is a lock in its own right.
    type Write: Lock;

    /// The name the lock was created with.
    fn name(&self) -> &str;

    /// The read side: `rw.reader().acquire().await`.
    fn reader(&self) -> Self::Read;

    /// The write side: `rw.writer().acquire_timeout(t).await`.
    fn writer(&self) -> Self::Write;
}

/// A reader-writer lock with upgradeable read holds: an upgradeable reader coexists with
/// readers, excludes writers and other upgradeable readers, and can upgrade to a writer
/// without releasing.
pub trait UpgradeableReadWriteLock: ReadWriteLock {
    /// The upgradeable-read side.
    type Upgradeable: Acquire<Handle: UpgradeableHandle>;

    /// The upgradeable-read side: `rw.upgradeable_reader().acquire().await`.
    fn upgradeable_reader(&self) -> Self::Upgradeable;
}

/// Creates locks by name.
pub trait LockProvider: Send + Sync {
    /// The lock type.
    type Lock: Lock;
    /// The lock called `name` ([`Error::InvalidArgument`] if the backend cannot take it).
    fn lock(&self, name: &str) -> Result<Self::Lock>;
}

/// Creates semaphores by name and max count.
pub trait SemaphoreProvider: Send + Sync {
    /// The semaphore type.
    type Semaphore: Semaphore;
    /// The semaphore called `name` with `max_count` tickets; a max count of 0 is an
    /// [`Error::InvalidArgument`].
    fn semaphore(&self, name: &str, max_count: u32) -> Result<Self::Semaphore>;
}

/// Creates reader-writer locks by name.
pub trait ReadWriteLockProvider: Send + Sync {
    /// The reader-writer lock type.
    type ReadWriteLock: ReadWriteLock;
    /// The reader-writer lock called `name`.
    fn read_write_lock(&self, name: &str) -> Result<Self::ReadWriteLock>;
}

/// Creates upgradeable reader-writer locks by name.
pub trait UpgradeableReadWriteLockProvider: Send + Sync {
    /// The upgradeable reader-writer lock type.
    type UpgradeableReadWriteLock: UpgradeableReadWriteLock;
    /// The upgradeable reader-writer lock called `name`.
    fn upgradeable_read_write_lock(&self, name: &str) -> Result<Self::UpgradeableReadWriteLock>;
}

/// Rejects a semaphore max count of 0 with a clear error.
pub fn check_max_count(name: &str, max_count: u32) -> Result<()> {
    if max_count == 0 {
        return Err(Error::invalid(format!(
            "semaphore {name:?}: max count must be at least 1, got 0"
        )));
    }
    Ok(())
}

/// The error for a semaphore used with another max count than the one its tickets are held
/// under, on backends that store the max count.
#[cfg_attr(
    not(any(feature = "local", feature = "redis", feature = "zookeeper")),
    allow(dead_code)
)]
pub(crate) fn max_count_mismatch(
    name: &str,
    stored: impl std::fmt::Display,
    given: impl std::fmt::Display,
) -> Error {
    Error::invalid(format!(
        "semaphore {name:?} is in use with max count {stored}, not {given}; every user of a \
         semaphore must give the same max count while tickets are held"
    ))
}

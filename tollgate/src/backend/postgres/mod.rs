//! The PostgreSQL backend: session-level advisory locks.
//!
//! Locks, reader-writer locks, upgradeable reader-writer locks and semaphores (see
//! [`PostgresSemaphore`]) on pooled, multiplexed connections.
//!
//! - **Keys** are DistributedLock.Postgres's, bit for bit (see [`AdvisoryKey`]), so .NET and
//!   Rust services on one database exclude each other.
//! - **Waiting happens in the server**: `pg_advisory_lock` under `lock_timeout`, on a
//!   connection dedicated to that wait. A `lock_timeout` error (55P03) that raced with the
//!   grant is checked against `pg_locks`; a deadlock (40P01) is [`Error::Deadlock`].
//! - **Cancel-safe**: if the acquire future is dropped mid-wait, the rest of the wait runs on
//!   tollgate's runtime: it cancels the query on the server, waits for its outcome, and
//!   unlocks whatever was granted in the race, so nothing stays held and no connection goes
//!   back to the pool holding a stray lock (the session that was sent a cancel is retired).
//! - **Multiplexing**: held locks share connections (never the same key twice on one
//!   session); at most `pool_size` sessions are opened (default 16).
//! - **Handle loss**: when a session ends (`pg_terminate_backend`, a network failure seen by
//!   the optional keepalive), every handle on it fires its loss signal; handles on other
//!   sessions are unaffected. A killed holder process frees its locks as soon as the server
//!   sees its socket close.
//! - **Faults are ridden out**: a wait whose session is killed, whose connection drops or
//!   whose server restarts starts again on a fresh session and keeps waiting, until its
//!   deadline or `unreachable_timeout` (default 30 s) passes with the server unreachable (see
//!   [`PostgresProviderBuilder::unreachable_timeout`]). The caller-controlled scopes below
//!   run on the caller's connection and are not ridden.
//! - **Caller-controlled scopes** ([`transaction`]): a lock inside the caller's own
//!   transaction (`pg_advisory_xact_lock`, works through PgBouncer's transaction pooling), an
//!   owned-transaction provider, and locks on the caller's own connection.
//! - **Deadlocks**: every wait runs on a session that holds nothing else, so the server never
//!   sees a cycle between handles (it reports 40P01 only for locks taken on a caller's own
//!   session). Two tasks that each hold one lock and wait for the other's wait until their
//!   timeouts, as with any lock service.
//! - **Reader-writer locks** use shared/exclusive advisory locks on one key, as
//!   DistributedLock does; PostgreSQL queues new shared requests behind a waiting exclusive
//!   one, which gives writer preference. Writers and upgradeable readers also take an
//!   exclusive lock on a second key derived from the first (the key XOR a constant),
//!   so that only one upgradeable reader at a time can become a writer.

mod builder;
mod connection;
pub mod key;
mod listener;
mod rwlock;
mod semaphore;
mod tls;
pub mod transaction;
mod wait;

use std::sync::Arc;

use crate::backend::kit::hold::{Release, Shell};
use crate::backend::kit::notes::Note;
use crate::{
    Acquire, Error, Handle, Lock, LockProvider, LossSignal, ReadWriteLockProvider, Result,
    UpgradeableReadWriteLockProvider, Wait,
};
pub use builder::PostgresProviderBuilder;
use builder::Tls;
pub(crate) use connection::transient;
use connection::{Held, Mode, Pool};
pub use key::AdvisoryKey;
use rwlock::upgrade_key;
pub use rwlock::{PostgresReadWriteLock, PostgresUpgradeableHandle};
pub use semaphore::PostgresSemaphore;
use wait::Step;

pub(crate) const BACKEND: &str = "postgres";
/// Creates PostgreSQL locks by name. Cheap to clone: clones share the connection pool.
#[derive(Clone)]
pub struct PostgresProvider {
    pool: Arc<Pool>,
    listener: Arc<listener::Listener>,
    allow_hashing: bool,
}

impl std::fmt::Debug for PostgresProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresProvider")
            .field("connections", &self.pool.session_count())
            .finish()
    }
}

impl PostgresProvider {
    /// A provider from a connection URL or string, with default settings.
    pub fn from_url(url: &str) -> Result<Self> {
        Self::builder(url)?.build()
    }

    /// How many sessions the provider has open.
    pub fn connection_count(&self) -> usize {
        self.pool.session_count()
    }

    /// The lock on an explicit key rather than a name (its name is the key in hex).
    pub fn lock_with_key(&self, key: AdvisoryKey) -> PostgresLock {
        PostgresLock {
            named: self.named_key(key),
        }
    }

    /// The reader-writer lock on an explicit key.
    pub fn read_write_lock_with_key(&self, key: AdvisoryKey) -> PostgresReadWriteLock {
        PostgresReadWriteLock {
            named: self.named_key(key),
        }
    }

    fn named_key(&self, key: AdvisoryKey) -> Arc<Named> {
        Arc::new(Named {
            name: format!("{key:#}"),
            key,
            pool: self.pool.clone(),
            semaphore: None,
        })
    }

    fn key(&self, name: &str) -> Result<AdvisoryKey> {
        AdvisoryKey::from_name(name, self.allow_hashing)
    }

    fn named(&self, name: &str) -> Result<Arc<Named>> {
        Ok(Arc::new(Named {
            name: name.to_owned(),
            key: self.key(name)?,
            pool: self.pool.clone(),
            semaphore: None,
        }))
    }
}

struct Named {
    name: String,
    key: AdvisoryKey,
    pool: Arc<Pool>,
    /// For semaphores: the in-process key that keeps two scans of one semaphore off one
    /// session, and the channel that releases `NOTIFY` for waiters.
    semaphore: Option<(AdvisoryKey, String)>,
}

impl std::fmt::Debug for Named {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Named")
            .field("name", &self.name)
            .field("key", &self.key)
            .finish()
    }
}

/// Advisory locks one handle holds on one session.
struct Hold {
    named: Arc<Named>,
    held: Held,
    steps: Vec<Step>,
    loss: LossSignal,
    /// Serialises this hold's own work on its session (an upgrade, its cleanup, the release).
    operation: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hold")
            .field("name", &self.named.name)
            .field("steps", &self.steps)
            .finish()
    }
}

async fn release_steps(named: &Named, held: Held, steps: &[Step]) -> Result<()> {
    let connection = held.session().clone();
    let mut first_error = None;
    if connection.is_broken() {
        // The session ended with the hold in it, and the server freed the hold then, perhaps
        // long before this release (whether the pool's watch of the session has told the
        // hold yet or not).
        held.found_lost();
    } else {
        for &(key, mode) in steps.iter().rev() {
            let unlocked = match (&named.semaphore, key, mode) {
                // A semaphore ticket: unlocked and its waiters notified in one round trip.
                (Some((_, channel)), AdvisoryKey::Single(ticket), Mode::Exclusive) => {
                    connection.unlock_and_notify(ticket, channel).await
                }
                _ => connection.unlock(key, mode).await,
            };
            match unlocked {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(name = %named.name, "advisory lock was not held at release");
                    held.found_lost();
                }
                // A session that ended has released everything with it, when it ended.
                Err(error) if connection.is_broken() || transient(&error) == Some(true) => {
                    connection.mark_broken();
                    held.found_lost();
                    break;
                }
                Err(error) => {
                    first_error.get_or_insert(Error::backend(
                        BACKEND,
                        format!("cannot release {:?}", named.name),
                        error,
                    ));
                }
            }
        }
    }
    held.released();
    first_error.map_or(Ok(()), Err)
}

impl Release for Hold {
    type Note = Note<AdvisoryKey>;

    fn name(&self) -> &str {
        &self.named.name
    }

    fn note(&self) -> Note<AdvisoryKey> {
        self.named.pool.note(self.named.release_keys(&self.steps))
    }

    async fn release(self) -> Result<()> {
        let _serial = self.operation.clone().lock_owned().await;
        release_steps(&self.named, self.held, &self.steps).await
    }
}

/// A held PostgreSQL lock or read or write hold. Dropping it releases on a background task;
/// [`Handle::release`] waits for the server to confirm.
#[derive(Debug)]
#[must_use = "dropping the handle releases it"]
pub struct PostgresHandle {
    hold: Shell<Hold>,
}

impl Handle for PostgresHandle {
    async fn release(self) -> Result<()> {
        self.hold.release().await
    }

    fn name(&self) -> &str {
        &self.hold.get().named.name
    }

    /// Fires when the session holding the lock ends (terminated, network failure).
    fn loss_signal(&self) -> LossSignal {
        self.hold.get().loss.clone()
    }

    /// Advisory locks carry no counter to draw a token from.
    fn fencing_token(&self) -> Option<u64> {
        None
    }
}

macro_rules! postgres_side {
    ($(#[$doc:meta])* $name:ident, $handle:ident, $steps:expr, $dedicated:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug)]
        pub struct $name {
            named: Arc<Named>,
        }

        impl Acquire for $name {
            type Handle = $handle;

            fn name(&self) -> &str {
                &self.named.name
            }

            /// Acquires, waiting in the server as `wait` says.
            ///
            /// # Cancel safety
            /// Cancel-safe: a dropped future cancels the server-side wait and releases
            /// anything granted in the race, on tollgate's runtime.
            async fn acquire_wait(&self, wait: Wait) -> Result<Option<$handle>> {
                let steps: fn(AdvisoryKey) -> Vec<Step> = $steps;
                let hold = self.named.acquire(steps(self.named.key), wait, $dedicated).await?;
                Ok(hold.map($handle::new))
            }
        }
    };
}

impl PostgresHandle {
    fn new(hold: Shell<Hold>) -> Self {
        PostgresHandle { hold }
    }
}

postgres_side!(
    /// A PostgreSQL lock: an exclusive session-level advisory lock.
    PostgresLock,
    PostgresHandle,
    |key| vec![(key, Mode::Exclusive)],
    false
);
postgres_side!(
    /// The read side of a [`PostgresReadWriteLock`]: a shared advisory lock.
    PostgresReader,
    PostgresHandle,
    |key| vec![(key, Mode::Shared)],
    false
);
postgres_side!(
    /// The write side of a [`PostgresReadWriteLock`].
    PostgresWriter,
    PostgresHandle,
    |key| vec![(upgrade_key(key), Mode::Exclusive), (key, Mode::Exclusive)],
    false
);
postgres_side!(
    /// The upgradeable-read side of a [`PostgresReadWriteLock`]. Each upgradeable hold keeps
    /// a session to itself, so that its upgrade can wait in the server.
    PostgresUpgradeableReader,
    PostgresUpgradeableHandle,
    |key| vec![(upgrade_key(key), Mode::Exclusive), (key, Mode::Shared)],
    true
);

impl Lock for PostgresLock {}
impl Lock for PostgresWriter {}

impl LockProvider for PostgresProvider {
    type Lock = PostgresLock;

    fn lock(&self, name: &str) -> Result<PostgresLock> {
        Ok(PostgresLock {
            named: self.named(name)?,
        })
    }
}

impl ReadWriteLockProvider for PostgresProvider {
    type ReadWriteLock = PostgresReadWriteLock;

    fn read_write_lock(&self, name: &str) -> Result<PostgresReadWriteLock> {
        Ok(PostgresReadWriteLock {
            named: self.named(name)?,
        })
    }
}

impl UpgradeableReadWriteLockProvider for PostgresProvider {
    type UpgradeableReadWriteLock = PostgresReadWriteLock;

    fn upgradeable_read_write_lock(&self, name: &str) -> Result<PostgresReadWriteLock> {
        self.read_write_lock(name)
    }
}

//! The MySQL / MariaDB backend: `GET_LOCK` user locks.
//!
//! - **Names** are DistributedLock.MySql's (see [`lock_name`]); with
//!   [`MySqlProviderBuilder::exact_names`] they are used as they are, and names `GET_LOCK`
//!   cannot take are an [`Error::InvalidArgument`].
//! - **Waiting happens in the server** (`GET_LOCK(name, seconds)`) on a connection dedicated
//!   to that wait. If the acquire future is dropped, that connection is killed on the server
//!   (`KILL`), which ends the wait and frees anything granted in the race; the server frees a
//!   connection's user locks when it goes.
//! - **Multiplexing**: held locks share connections; at most `pool_size` connections
//!   (default 16). `GET_LOCK` is re-entrant per connection and our contract is not, so a
//!   name is *claimed* on a connection (checked and recorded in one step) before its
//!   `GET_LOCK` is sent, and stays claimed until `GET_LOCK` said no or `RELEASE_LOCK` has
//!   run: one connection never takes a name for two handles. The statement itself refuses a
//!   name its connection already holds, as a second line of defence. Every operation on a
//!   connection runs to completion (the rest of a dropped one on tollgate's runtime), so a
//!   dropped future never leaves a connection mid-query; a dropped wait kills its connection.
//! - **Handle loss**: every connection that holds locks is pinged (default every second);
//!   when it fails (`KILL CONNECTION`, network failure), its handles' loss signals fire.
//! - **Faults are ridden out**: a wait whose connection is killed or drops, or whose server
//!   restarts, starts again on a fresh connection and keeps waiting, until its deadline or
//!   `unreachable_timeout` (default 30 s) passes with the server unreachable (see
//!   [`MySqlProviderBuilder::unreachable_timeout`]); locks on a caller's own connection are not
//!   ridden.
//! - **Locks on a caller's own connection**: [`lock_on_connection`], with the same
//!   contract (not re-entrant, cancel-safe).
//! - **Semaphores**: ticket `i` is a user lock of its own; a try takes the first free ticket.
//!   There is no release notification in MySQL: between scans a waiter waits in the server
//!   on one ticket (so a release of that ticket hands it over at once) for a jittered backoff interval
//!   growing from 10 ms to 500 ms, and waiters spread over the tickets.
//! - **Reader-writer locks are not offered**: `GET_LOCK` has no shared mode, and building one
//!   from exclusive locks needs a check-then-write step that a crash can leave half done.

mod builder;
mod connection;
mod connection_lock;
mod name;
mod semaphore;
mod wait;

use std::sync::Arc;

use crate::backend::kit::completion::run_to_completion;
use crate::backend::kit::fault::ride;
use crate::backend::kit::hold::{Release, Shell};
use crate::backend::kit::notes::Note;
use crate::{Acquire, Error, Handle, Lock, LockProvider, LossSignal, Result, Wait};
pub use builder::MySqlProviderBuilder;
pub(crate) use connection::transient;
use connection::{Got, Held, Pool, Reservation, Use};
pub use connection_lock::{lock_on_connection, ConnectionLockHandle, SharedConnection};
pub use name::lock_name;
pub use semaphore::MySqlSemaphore;
use wait::wait_dedicated;

pub(crate) const BACKEND: &str = "mysql";
/// `GET_LOCK` has no "forever", and answers a much larger timeout at once: a long wait waits
/// a year at a time.
const LONG_WAIT_SECONDS: f64 = 365.0 * 24.0 * 3600.0;

/// The timeout of one `GET_LOCK` in a wait until `deadline` (`None`: forever): what is left,
/// at most [`LONG_WAIT_SECONDS`].
fn wait_seconds(deadline: Option<tokio::time::Instant>) -> f64 {
    deadline.map_or(LONG_WAIT_SECONDS, |deadline| {
        deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .as_secs_f64()
            .min(LONG_WAIT_SECONDS)
    })
}

/// Whether a `GET_LOCK` that timed out is only a part of the wait: the caller's deadline (if
/// any) has not passed.
fn waits_on(deadline: Option<tokio::time::Instant>) -> bool {
    deadline.is_none_or(|deadline| tokio::time::Instant::now() < deadline)
}
fn mysql_error(message: impl Into<String>, error: mysql_async::Error) -> Error {
    Error::backend(BACKEND, message, error)
}

/// Creates MySQL / MariaDB locks and semaphores by name. Cheap to clone.
#[derive(Clone, Debug)]
pub struct MySqlProvider {
    pool: Arc<Pool>,
    exact_names: bool,
}

impl MySqlProvider {
    /// A provider from a URL with default settings.
    pub fn from_url(url: &str) -> Result<Self> {
        Self::builder(url)?.build()
    }

    /// How many connections the provider has open.
    pub fn connection_count(&self) -> usize {
        self.pool.session_count()
    }

    fn mapped(&self, name: &str) -> Result<String> {
        if self.exact_names {
            name::exact_name(name)
        } else {
            Ok(lock_name(name))
        }
    }
}

/// A held MySQL lock or semaphore ticket. Dropping it releases on a background task;
/// [`Handle::release`] waits for the server to confirm.
#[must_use = "dropping the handle releases it"]
pub struct MySqlHandle {
    name: Arc<str>,
    hold: Shell<Hold>,
    loss: LossSignal,
}

/// A `GET_LOCK` name held on one connection.
struct Hold {
    name: Arc<str>,
    lock_name: String,
    /// What a release is noted under: the lock name, or the semaphore's prefix.
    release_note: String,
    held: Held,
    pool: Arc<Pool>,
}

impl std::fmt::Debug for MySqlHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MySqlHandle")
            .field("name", &self.name)
            .field("lock_name", &self.hold.get().lock_name)
            .finish()
    }
}

impl MySqlHandle {
    /// The handle of `lock_name`, granted on the reservation's connection (which claims
    /// that name alone).
    fn new(
        name: Arc<str>,
        lock_name: String,
        release_note: String,
        reservation: Reservation,
    ) -> Self {
        let pool = reservation.pool().clone();
        let (held, loss) = reservation.into_held(&lock_name, Use::Shared);
        MySqlHandle {
            hold: Shell::new(Hold {
                name: name.clone(),
                lock_name,
                release_note,
                held,
                pool,
            }),
            name,
            loss,
        }
    }
}

/// `RELEASE_LOCK`, then the claim goes: never before the server has released, so that the
/// connection cannot take the name again for someone else by re-entrancy meanwhile. If the
/// server refused the release, the connection is in doubt and retired (dropping `held`).
async fn release(held: Held, lock_name: &str) -> Result<()> {
    if !held.session().release_lock(lock_name).await? {
        // Taken away (the connection was killed, or the lock released behind our back) and
        // not noticed until now: the holder learns it from its loss signal.
        held.found_lost();
    }
    held.released();
    Ok(())
}

impl Release for Hold {
    type Note = Note<String>;

    fn name(&self) -> &str {
        &self.name
    }

    fn note(&self) -> Note<String> {
        self.pool.note(vec![self.release_note.clone()])
    }

    async fn release(self) -> Result<()> {
        release(self.held, &self.lock_name).await
    }
}

impl Handle for MySqlHandle {
    async fn release(self) -> Result<()> {
        self.hold.release().await
    }

    fn name(&self) -> &str {
        &self.name
    }

    /// Fires when the connection holding the lock fails its keepalive ping.
    fn loss_signal(&self) -> LossSignal {
        self.loss.clone()
    }

    /// `GET_LOCK` has no counter to draw a token from.
    fn fencing_token(&self) -> Option<u64> {
        None
    }
}

/// Gives back what an acquire whose caller went away got: a mysql_async query dropped
/// mid-flight would leave its connection unusable, so acquires run to completion (see
/// [`run_to_completion`]) and their handles are released here.
async fn give_back(outcome: Result<Option<MySqlHandle>>) {
    if let Ok(Some(handle)) = outcome {
        drop(handle.release().await);
    }
}

/// A MySQL / MariaDB lock (`GET_LOCK`).
#[derive(Clone, Debug)]
pub struct MySqlLock {
    name: Arc<str>,
    lock_name: String,
    pool: Arc<Pool>,
}

impl MySqlLock {
    /// The `GET_LOCK` name this lock uses.
    pub fn lock_name(&self) -> &str {
        &self.lock_name
    }

    /// One `GET_LOCK(name, 0)` on a shared connection.
    async fn try_once(&self) -> Result<Option<MySqlHandle>> {
        let names = vec![self.lock_name.clone()];
        let Some(reservation) = self.pool.reserve(names, Use::Shared).await? else {
            return Ok(None);
        };
        let (lock_name, name) = (self.lock_name.clone(), self.name.clone());
        run_to_completion(
            async move {
                match reservation.session().get_lock(&lock_name, 0.0).await {
                    Ok(Got::Taken) => Ok(Some(MySqlHandle::new(
                        name,
                        lock_name.clone(),
                        lock_name,
                        reservation,
                    ))),
                    // Not taken: the reservation goes.
                    other => other.map(|_| None),
                }
            },
            give_back,
        )
        .await
    }

    /// `GET_LOCK(name, seconds)` on a connection of its own; a dropped future kills it.
    async fn wait_dedicated(
        &self,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Option<MySqlHandle>> {
        wait_dedicated(
            &self.pool,
            &self.name,
            &self.lock_name,
            &self.lock_name,
            deadline,
        )
        .await
    }
}

impl Acquire for MySqlLock {
    type Handle = MySqlHandle;

    fn name(&self) -> &str {
        &self.name
    }

    /// Acquires, waiting in the server as `wait` says.
    ///
    /// # Cancel safety
    /// Cancel-safe: a try always runs to completion (the rest of a dropped one on tollgate's
    /// runtime) and gives back what it got if nobody wants it; a dropped wait kills its
    /// dedicated connection on the server.
    async fn acquire_wait(&self, wait: Wait) -> Result<Option<MySqlHandle>> {
        let deadline = wait.deadline();
        // A hold of ours that was just dropped is still being released: wait for that first.
        self.pool
            .wait_for_releases(std::slice::from_ref(&self.lock_name))
            .await;
        // A dropped connection, a killed session or a restarting server is ridden out (see
        // `kit::fault`): the acquire starts again on a fresh connection.
        ride(self.pool.unreachable_timeout(), deadline, || async {
            // A wait for a name this process holds or waits for already goes to the server's
            // queue at once: a try first could only fail.
            let doomed = wait != Wait::NO_WAIT
                && self.pool.is_claimed(std::slice::from_ref(&self.lock_name));
            if !doomed {
                if let Some(handle) = self.try_once().await? {
                    return Ok(Some(handle));
                }
                if wait == Wait::NO_WAIT {
                    return Ok(None);
                }
            }
            self.wait_dedicated(deadline).await
        })
        .await
    }
}

impl Lock for MySqlLock {}

impl LockProvider for MySqlProvider {
    type Lock = MySqlLock;

    fn lock(&self, name: &str) -> Result<MySqlLock> {
        Ok(MySqlLock {
            name: name.into(),
            lock_name: self.mapped(name)?,
            pool: self.pool.clone(),
        })
    }
}

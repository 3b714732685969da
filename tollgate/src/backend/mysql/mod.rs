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
//! - **Locks on a caller's own connection**: [`lock_on_connection`], with the same
//!   contract (not re-entrant, cancel-safe).
//! - **Semaphores**: ticket `i` is a user lock of its own; a try takes the first free ticket.
//!   There is no release notification in MySQL: between scans a waiter waits in the server
//!   on one ticket (so a release of that ticket hands it over at once) for a jittered backoff interval
//!   growing from 10 ms to 500 ms, and waiters spread over the tickets.
//! - **Reader-writer locks are not offered**: `GET_LOCK` has no shared mode, and building one
//!   from exclusive locks needs a check-then-write step that a crash can leave half done.

mod connection;
mod connection_lock;
mod name;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::backend::kit::completion::{run_interruptible, run_to_completion, Caller};
use crate::backend::kit::hold::{Release, Shell};
use crate::backend::kit::notes::Note;
use crate::backend::kit::options::UrlOptions;
use crate::backend::kit::wait::{wait_for, Attempt, Backoff, Contender, NoWake, Paused};
use crate::{
    check_max_count, Acquire, Error, Handle, Lock, LockProvider, LossSignal, Result, Semaphore,
    SemaphoreProvider, Wait,
};
use connection::{Got, Held, Pool, Reservation, Use};
pub use connection_lock::{lock_on_connection, ConnectionLockHandle, SharedConnection};
pub use name::lock_name;

pub(crate) const BACKEND: &str = "mysql";
const DEFAULT_POOL_SIZE: usize = 16;
const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(1);
/// `GET_LOCK` has no "forever"; a wait without timeout waits a year at a time.
const LONG_WAIT_SECONDS: f64 = 365.0 * 24.0 * 3600.0;
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_millis(500);
/// The URL options of mysql_async 0.37 that apply to a single connection, handed on to it.
const PASSED_ON: &[&str] = &[
    "tcp_keepalive",
    "max_allowed_packet",
    "wait_timeout",
    "enable_cleartext_plugin",
    "reset_connection",
    "tcp_nodelay",
    "stmt_cache_size",
    "prefer_socket",
    "secure_auth",
    "client_found_rows",
    "socket",
    "compression",
    "require_ssl",
    "verify_ca",
    "verify_identity",
    "built_in_roots",
];

fn mysql_error(message: impl Into<String>, error: mysql_async::Error) -> Error {
    Error::backend(BACKEND, message, error)
}

/// Configures a [`MySqlProvider`].
#[derive(Clone, Debug)]
pub struct MySqlProviderBuilder {
    opts: mysql_async::Opts,
    pool_size: usize,
    keepalive: Duration,
    exact_names: bool,
}

impl MySqlProviderBuilder {
    /// At most this many connections (default 16).
    pub fn pool_size(mut self, pool_size: usize) -> Self {
        self.pool_size = pool_size;
        self
    }

    /// How often connections that hold locks are pinged, which is how soon a lost
    /// connection is noticed (default 1 s): a ping that fails, or gets no answer within twice
    /// the interval (at least 1 s), fires the loss signals of the connection's handles.
    pub fn keepalive(mut self, interval: Duration) -> Self {
        self.keepalive = interval;
        self
    }

    /// Use names as `GET_LOCK` names without mapping (then case-insensitive, as MySQL is);
    /// empty names and names over 64 characters are rejected.
    pub fn exact_names(mut self, exact_names: bool) -> Self {
        self.exact_names = exact_names;
        self
    }

    /// The provider. Connections are opened when first needed.
    pub fn build(self) -> Result<MySqlProvider> {
        if self.pool_size == 0 {
            return Err(Error::invalid("mysql pool size must be at least 1"));
        }
        if self.keepalive.is_zero() {
            return Err(Error::invalid(
                "mysql keepalive interval must be above zero",
            ));
        }
        let pool = connection::new_pool(self.opts, self.pool_size, self.keepalive);
        Ok(MySqlProvider {
            pool: Arc::new(pool),
            exact_names: self.exact_names,
        })
    }
}

/// Creates MySQL / MariaDB locks and semaphores by name. Cheap to clone.
#[derive(Clone, Debug)]
pub struct MySqlProvider {
    pool: Arc<Pool>,
    exact_names: bool,
}

impl MySqlProvider {
    /// A builder from a URL: `mysql://user:password@host:3306/db` (or `mariadb://`), with
    /// `pool_size=N`, `keepalive=DURATION` (as [`crate::parse_duration`] reads it: `30`,
    /// `250ms`, `5s`) and the options of mysql_async that apply to a connection
    /// (`require_ssl`, `verify_ca`, `compression`, `socket`, `tcp_keepalive`, …; its pool
    /// options do not apply: tollgate pools its own connections). Any other key is an error
    /// that names it.
    pub fn builder(url: &str) -> Result<MySqlProviderBuilder> {
        let rest = url
            .strip_prefix("mysql://")
            .or_else(|| url.strip_prefix("mariadb://"))
            .ok_or_else(|| Error::invalid("a MySQL URL starts with mysql:// or mariadb://"))?;
        let mut parsed = url::Url::parse(&format!("mysql://{rest}"))
            .map_err(|error| Error::invalid(format!("bad mysql URL: {error}")))?;
        let mut options = UrlOptions::new(BACKEND, parsed.query().unwrap_or(""))?;
        let pool_size = options.count("pool_size")?.unwrap_or(DEFAULT_POOL_SIZE);
        let keepalive = options.duration("keepalive")?.unwrap_or(DEFAULT_KEEPALIVE);
        let kept = options.finish(PASSED_ON)?;
        if kept.is_empty() {
            parsed.set_query(None);
        } else {
            parsed.query_pairs_mut().clear().extend_pairs(kept);
        }
        let opts = mysql_async::Opts::from_url(parsed.as_str())
            .map_err(|error| Error::invalid(format!("bad mysql URL: {error}")))?;
        Ok(MySqlProviderBuilder {
            opts,
            pool_size,
            keepalive,
            exact_names: false,
        })
    }

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
    held.session().release_lock(lock_name).await?;
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

/// `GET_LOCK(lock_name, seconds)` on a connection of its own; a dropped future kills it.
async fn wait_dedicated(
    pool: &Arc<Pool>,
    name: &Arc<str>,
    lock_name: &str,
    release_note: &str,
    deadline: Option<tokio::time::Instant>,
) -> Result<Option<MySqlHandle>> {
    let names = vec![lock_name.to_owned()];
    let Some(reservation) = pool.reserve_dedicated(names, deadline).await? else {
        return Ok(None);
    };
    let (lock_name, name) = (lock_name.to_owned(), name.clone());
    let release_note = release_note.to_owned();
    let (pool, noted) = (pool.clone(), vec![release_note.clone()]);
    run_interruptible(
        move |caller| wait_on(reservation, name, lock_name, release_note, deadline, caller),
        move || pool.note(noted),
        give_back,
    )
    .await
}

/// `GET_LOCK(lock_name, seconds)` on the dedicated connection `reservation`, repeated while
/// an unbounded wait times out. If the caller goes, the connection is killed: that ends the
/// wait, and whatever it got, for good.
async fn wait_on(
    reservation: Reservation,
    name: Arc<str>,
    lock_name: String,
    release_note: String,
    deadline: Option<tokio::time::Instant>,
    mut caller: Caller,
) -> Result<Option<MySqlHandle>> {
    let outcome = loop {
        let seconds = match deadline {
            None => LONG_WAIT_SECONDS,
            Some(deadline) => deadline
                .saturating_duration_since(tokio::time::Instant::now())
                .as_secs_f64(),
        };
        let waited = tokio::select! {
            result = reservation.session().get_lock(&lock_name, seconds) => result,
            () = caller.gone() => {
                connection::kill(&reservation).await;
                return Ok(None);
            }
        };
        match waited {
            Ok(Got::TimedOut) if deadline.is_none() => continue,
            other => break other,
        }
    };
    match outcome {
        // Now shared, with the name claimed for the handle.
        Ok(Got::Taken) => Ok(Some(MySqlHandle::new(
            name,
            lock_name,
            release_note,
            reservation,
        ))),
        Ok(Got::HeldHere) => {
            // The connection had nothing claimed, yet holds the name: it is in doubt, and
            // closes (freeing the name) once retired.
            reservation.retire();
            drop(reservation);
            Err(Error::backend(
                BACKEND,
                format!("GET_LOCK({lock_name:?}) on a connection that holds it already"),
                std::io::Error::other("unexpected re-entrant hold"),
            ))
        }
        // Not taken: the reservation goes.
        other => other.map(|_| None),
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
    /// Cancel-safe: a try always completes on its own task and gives back what it got if
    /// nobody wants it; a dropped wait kills its dedicated connection on the server.
    async fn acquire_wait(&self, wait: Wait) -> Result<Option<MySqlHandle>> {
        let deadline = wait.deadline();
        // A hold of ours that was just dropped is still being released: wait for that first.
        self.pool
            .wait_for_releases(std::slice::from_ref(&self.lock_name))
            .await;
        if let Some(handle) = self.try_once().await? {
            return Ok(Some(handle));
        }
        if wait == Wait::NO_WAIT {
            return Ok(None);
        }
        self.wait_dedicated(deadline).await
    }
}

impl Lock for MySqlLock {}

/// A MySQL / MariaDB semaphore: ticket `i` is the user lock `tollgate_s_<hash>_<i>`.
/// Processes that name it with different max counts share the tickets they have in common.
#[derive(Clone, Debug)]
pub struct MySqlSemaphore {
    name: Arc<str>,
    prefix: String,
    max_count: u32,
    pool: Arc<Pool>,
}

impl MySqlSemaphore {
    fn ticket(&self, index: u32) -> String {
        format!("{}{index}", self.prefix)
    }

    /// Scans for a free ticket on one shared connection, 64 tickets per statement (one
    /// round trip for a semaphore of at most 64 tickets). Each ticket is claimed on the
    /// connection before its `GET_LOCK`, so tickets held, tried or being released there
    /// (for any handle) are skipped: `GET_LOCK` is re-entrant and would nest them. The
    /// marker keeps a second scan of this semaphore off the connection meanwhile.
    async fn try_once(&self) -> Result<Option<MySqlHandle>> {
        /// Tickets tried per statement.
        const SCAN_BATCH: u32 = 64;
        let marker = format!("{}scan", self.prefix);
        let Some(mut reservation) = self.pool.reserve(vec![marker], Use::Scan).await? else {
            return Ok(None);
        };
        let semaphore = self.clone();
        run_to_completion(
            async move {
                let mut outcome = Ok(None);
                let mut start = 0;
                while start < semaphore.max_count {
                    let end = start.saturating_add(SCAN_BATCH).min(semaphore.max_count);
                    let mut claimed: Vec<String> = (start..end)
                        .map(|index| semaphore.ticket(index))
                        .filter(|ticket| reservation.claim(ticket.clone()))
                        .collect();
                    start = end;
                    if claimed.is_empty() {
                        continue;
                    }
                    let connection = reservation.session().clone();
                    match connection.take_first_free(&claimed).await {
                        Ok(Some(index)) => {
                            let ticket = claimed.swap_remove(index);
                            reservation.unclaim(&claimed);
                            // Held (still claimed) before the marker's claim goes.
                            outcome = Ok(Some(MySqlHandle::new(
                                semaphore.name.clone(),
                                ticket.clone(),
                                semaphore.prefix.clone(),
                                reservation.split_off(&[ticket]),
                            )));
                            break;
                        }
                        Ok(None) => reservation.unclaim(&claimed),
                        Err(error) => {
                            reservation.unclaim(&claimed);
                            outcome = Err(error);
                            break;
                        }
                    }
                }
                // The marker's claim goes with the reservation.
                drop(reservation);
                outcome
            },
            give_back,
        )
        .await
    }
}

impl Acquire for MySqlSemaphore {
    type Handle = MySqlHandle;

    fn name(&self) -> &str {
        &self.name
    }

    /// Takes a ticket, waiting as `wait` says: between scans of all tickets, it waits in the
    /// server on one ticket (taking that ticket if it frees), for a jittered backoff interval that
    /// grows from 10 ms to 500 ms.
    ///
    /// # Cancel safety
    /// Cancel-safe: each scan completes on its own task and gives back a ticket nobody wants;
    /// a dropped server-side wait kills its dedicated connection.
    async fn acquire_wait(&self, wait: Wait) -> Result<Option<MySqlHandle>> {
        let deadline = wait.deadline();
        self.pool
            .wait_for_releases(std::slice::from_ref(&self.prefix))
            .await;
        // Spread waiters over the tickets (within this process too), and move on each round.
        static WAITERS: AtomicU32 = AtomicU32::new(0);
        let round = std::process::id().wrapping_add(WAITERS.fetch_add(1, Ordering::Relaxed));
        let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
        wait_for(
            &mut TicketWaits {
                semaphore: self,
                round,
            },
            deadline,
            &mut backoff,
        )
        .await
    }
}

/// A wait for a ticket, as the shared wait loop runs it: its pauses wait in the server on
/// one ticket, a different one each round.
struct TicketWaits<'a> {
    semaphore: &'a MySqlSemaphore,
    round: u32,
}

impl Contender for TicketWaits<'_> {
    type Held = MySqlHandle;
    type Wake = NoWake;

    async fn attempt(&mut self) -> Result<Attempt<MySqlHandle>> {
        Ok(match self.semaphore.try_once().await? {
            Some(handle) => Attempt::Taken(handle),
            None => Attempt::Busy { retry_within: None },
        })
    }

    async fn subscribe(&mut self, _deadline: Option<tokio::time::Instant>) -> Option<NoWake> {
        // Releases are not announced; the pause below is the wake-up.
        None
    }

    async fn pause(
        &mut self,
        _wake: Option<&mut NoWake>,
        until: tokio::time::Instant,
    ) -> Result<Paused<MySqlHandle>> {
        let semaphore = self.semaphore;
        let ticket = self.round % semaphore.max_count;
        self.round = self.round.wrapping_add(1);
        let waited = wait_dedicated(
            &semaphore.pool,
            &semaphore.name,
            &semaphore.ticket(ticket),
            &semaphore.prefix,
            Some(until),
        )
        .await?;
        Ok(waited.map_or(Paused::Elapsed, Paused::Taken))
    }
}

impl Semaphore for MySqlSemaphore {
    fn max_count(&self) -> u32 {
        self.max_count
    }
}

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

impl SemaphoreProvider for MySqlProvider {
    type Semaphore = MySqlSemaphore;

    fn semaphore(&self, name: &str, max_count: u32) -> Result<MySqlSemaphore> {
        check_max_count(name, max_count)?;
        let prefix = format!(
            "tollgate_s_{}_",
            crate::backend::kit::names::sha512_base32(name.as_bytes()).to_lowercase()
        );
        Ok(MySqlSemaphore {
            name: name.into(),
            prefix,
            max_count,
            pool: self.pool.clone(),
        })
    }
}

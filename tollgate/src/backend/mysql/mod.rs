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
//!   connection runs to completion on its own task, so a dropped future never leaves a
//!   connection mid-query.
//! - **Handle loss**: every connection that holds locks is pinged (default every second);
//!   when it fails (`KILL CONNECTION`, network failure), its handles' loss signals fire.
//! - **Locks on a caller's own connection**: [`lock_on_connection`], with the same
//!   contract (not re-entrant, cancel-safe).
//! - **Semaphores**: ticket `i` is a user lock of its own; a try takes the first free ticket.
//!   There is no release notification in MySQL: between scans a waiter waits in the server
//!   on one ticket (so a release of that ticket hands it over at once) for a backoff interval
//!   growing from 10 ms to 500 ms, and waiters spread over the tickets.
//! - **Reader-writer locks are not offered**: `GET_LOCK` has no shared mode, and building one
//!   from exclusive locks needs a check-then-write step that a crash can leave half done.

mod connection_lock;
mod name;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use mysql_async::prelude::Queryable;
use tokio::sync::{oneshot, Notify};

use crate::backend::kit::completion::run_to_completion;
use crate::backend::kit::hold::{Release, Shell};
use crate::backend::kit::notes::{Note, ReleaseNotes};
use crate::backend::kit::options::UrlOptions;
use crate::backend::kit::runtime::on_background;
use crate::{
    check_max_count, Acquire, Error, Handle, Lock, LockProvider, LossNotifier, LossSignal, Result,
    Semaphore, SemaphoreProvider, Wait,
};
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
        let pool = Pool {
            opts: self.opts,
            max_connections: self.pool_size,
            keepalive: self.keepalive,
            state: Mutex::default(),
            changed: Notify::new(),
            release_notes: Arc::default(),
        };
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
        let state = self.pool.lock();
        state.connections.len() + state.opening
    }

    fn mapped(&self, name: &str) -> Result<String> {
        if self.exact_names {
            name::exact_name(name)
        } else {
            Ok(lock_name(name))
        }
    }
}

/// One server connection, used by one operation at a time.
struct Connection {
    id: u32,
    conn: tokio::sync::Mutex<mysql_async::Conn>,
    state: Mutex<ConnectionState>,
    broken: AtomicBool,
    /// Whether tollgate's own runtime drives this connection's I/O (see [`on_background`]).
    background: bool,
}

#[derive(Default)]
struct ConnectionState {
    /// Lock names claimed here: held, being tried, or being released (until `RELEASE_LOCK`
    /// has run), with the loss notifier of each hold. Also semaphore scan markers.
    holds: HashMap<String, Option<Arc<LossNotifier>>>,
    /// Taken by one server-side wait, which alone may claim or forget names here.
    dedicated: bool,
}

/// What `GET_LOCK` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Got {
    Taken,
    TimedOut,
    /// This connection holds the name already: refused, not nested.
    HeldHere,
}

impl Connection {
    fn lock(&self) -> MutexGuard<'_, ConnectionState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn is_broken(&self) -> bool {
        self.broken.load(Ordering::SeqCst)
    }

    fn mark_broken(&self) {
        self.broken.store(true, Ordering::SeqCst);
        for notifier in self.lock().holds.values().flatten() {
            notifier.notify_lost();
        }
    }

    /// Claims `names` for one operation, atomically: only if none of them is claimed here
    /// already and nobody has the connection to themselves (and, for a dedicated use, if
    /// nothing at all is claimed here).
    fn claim(&self, names: &[String], usage: Use) -> bool {
        let mut state = self.lock();
        let free = !state.dedicated
            && (usage != Use::Dedicated || state.holds.is_empty())
            && names.iter().all(|name| !state.holds.contains_key(name));
        if free {
            for name in names {
                state.holds.insert(name.clone(), None);
            }
            state.dedicated = usage == Use::Dedicated;
        }
        free
    }

    /// Gives up claims: only once the server does not hold the names here (any more).
    fn forget(&self, names: &[String]) {
        let mut state = self.lock();
        for name in names {
            state.holds.remove(name);
        }
    }

    /// Ends a dedicated use; the name waited for stays claimed if it was taken.
    fn end_dedicated(&self, forget: Option<&str>) {
        let mut state = self.lock();
        if let Some(name) = forget {
            state.holds.remove(name);
        }
        state.dedicated = false;
    }

    fn record_hold(&self, name: &str) -> LossSignal {
        let (notifier, signal) = LossSignal::detectable();
        if self.is_broken() {
            notifier.notify_lost();
        }
        self.lock()
            .holds
            .insert(name.to_owned(), Some(Arc::new(notifier)));
        signal
    }

    /// `GET_LOCK(name, seconds)`, unless this connection holds `name` already (which the
    /// same statement checks, so that re-entrancy can never hand out a second hold).
    /// The caller has claimed `name` here.
    async fn get_lock(&self, name: &str, seconds: f64) -> Result<Got> {
        let mut conn = self.conn.lock().await;
        let result: std::result::Result<Option<Option<i64>>, _> = conn
            .exec_first(
                "SELECT IF(IS_USED_LOCK(?) <=> CONNECTION_ID(), -1, GET_LOCK(?, ?))",
                (name, name, seconds),
            )
            .await;
        match result {
            Ok(Some(Some(1))) => Ok(Got::Taken),
            Ok(Some(Some(-1))) => {
                // With exact names, another spelling of a name claimed here (MySQL compares
                // names case-insensitively); otherwise a claim went missing.
                tracing::debug!(
                    lock_name = name,
                    connection = self.id,
                    "GET_LOCK refused: this connection holds the lock already"
                );
                Ok(Got::HeldHere)
            }
            Ok(Some(Some(_))) => Ok(Got::TimedOut),
            Ok(_) => Err(Error::backend(
                BACKEND,
                format!("GET_LOCK({name:?}) failed"),
                std::io::Error::other("NULL"),
            )),
            Err(mysql_async::Error::Server(error)) if error.code == 3058 || error.code == 1213 => {
                Err(Error::Deadlock {
                    name: name.to_owned(),
                })
            }
            Err(error) => {
                if matches!(
                    error,
                    mysql_async::Error::Io(_) | mysql_async::Error::Driver(_)
                ) {
                    self.mark_broken();
                }
                Err(mysql_error(format!("GET_LOCK({name:?}) failed"), error))
            }
        }
    }

    /// Takes the first of `names` that is free, in one statement: its index, or `None` when
    /// all are busy. A name held anywhere, this connection included, is skipped, so
    /// re-entrancy cannot nest a hold. The caller has claimed `names` here.
    async fn take_first_free(&self, names: &[String]) -> Result<Option<usize>> {
        let mut sql = String::from("SELECT CASE");
        let mut params = Vec::with_capacity(names.len() * 2);
        for (index, name) in names.iter().enumerate() {
            // AND stops at the first false operand: GET_LOCK runs only on a free name.
            sql.push_str(&format!(
                " WHEN IS_USED_LOCK(?) IS NULL AND GET_LOCK(?, 0) = 1 THEN {index}"
            ));
            params.push(mysql_async::Value::from(name.as_str()));
            params.push(mysql_async::Value::from(name.as_str()));
        }
        sql.push_str(" END");
        let mut conn = self.conn.lock().await;
        let result: std::result::Result<Option<Option<u64>>, _> =
            conn.exec_first(sql, params).await;
        match result {
            Ok(Some(Some(index))) => usize::try_from(index)
                .ok()
                .filter(|index| *index < names.len())
                .map(Some)
                .ok_or_else(|| {
                    Error::backend(
                        BACKEND,
                        "a semaphore scan returned no ticket it asked for",
                        std::io::Error::other(format!("index {index}")),
                    )
                }),
            Ok(_) => Ok(None),
            Err(error) => {
                if matches!(
                    error,
                    mysql_async::Error::Io(_) | mysql_async::Error::Driver(_)
                ) {
                    self.mark_broken();
                }
                Err(mysql_error("a semaphore scan failed", error))
            }
        }
    }

    /// `RELEASE_LOCK(name)`; a connection that is gone has released everything already.
    async fn release_lock(&self, name: &str) -> Result<()> {
        if self.is_broken() {
            return Ok(());
        }
        let mut conn = self.conn.lock().await;
        let result: std::result::Result<Option<Option<i64>>, _> =
            conn.exec_first("SELECT RELEASE_LOCK(?)", (name,)).await;
        match result {
            Ok(_) => Ok(()),
            Err(_) if self.is_broken() => Ok(()),
            Err(error) => {
                if matches!(
                    error,
                    mysql_async::Error::Io(_) | mysql_async::Error::Driver(_)
                ) {
                    self.mark_broken();
                    return Ok(());
                }
                Err(mysql_error(format!("RELEASE_LOCK({name:?}) failed"), error))
            }
        }
    }
}

/// Connections and their multiplexing (see the module docs).
struct Pool {
    opts: mysql_async::Opts,
    max_connections: usize,
    keepalive: Duration,
    state: Mutex<PoolState>,
    changed: Notify,
    /// Names whose release after a drop is still on its way to the server, so that this
    /// process's next acquire of the same name waits for it instead of finding it busy.
    release_notes: Arc<ReleaseNotes<String>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

#[derive(Default)]
struct PoolState {
    connections: Vec<Arc<Connection>>,
    opening: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Use {
    /// Beside other holds, for a lock name: if every connection the pool may have claims the
    /// name already, this process holds or tries it, and the name is busy.
    Shared,
    /// Beside other holds, for a semaphore's scan marker: a connection that claims it is
    /// scanning, and the next scan waits for it rather than find the semaphore busy.
    Scan,
    /// Alone, for one server-side wait.
    Dedicated,
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits until no release of `names` after a drop is under way in this process.
    async fn wait_for_releases(&self, names: &[String]) {
        self.release_notes.wait(names).await;
    }

    /// A connection with `names` reserved on it; `None` (shared use only) when every
    /// connection the pool may have already holds one of the names in this process.
    async fn connection_for(
        self: &Arc<Self>,
        names: &[String],
        usage: Use,
    ) -> Result<Option<Arc<Connection>>> {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let open_new = {
                let mut state = self.lock();
                state
                    .connections
                    .retain(|connection| !connection.is_broken());
                // The busiest connection that can take the names; the claim re-checks, as a
                // semaphore scan claims its tickets outside the pool lock. Work on tollgate's
                // runtime uses only connections it drives: the others are served only while
                // their caller's runtime runs.
                let background = on_background();
                let mut candidates: Vec<(usize, &Arc<Connection>)> = state
                    .connections
                    .iter()
                    .filter_map(|connection| {
                        let inner = connection.lock();
                        let fit = (connection.background || !background)
                            && !inner.dedicated
                            && names.iter().all(|name| !inner.holds.contains_key(name))
                            && (usage != Use::Dedicated || inner.holds.is_empty());
                        fit.then_some((inner.holds.len(), connection))
                    })
                    .collect();
                candidates.sort_by_key(|(holds, _)| std::cmp::Reverse(*holds));
                if let Some(connection) = candidates
                    .into_iter()
                    .map(|(_, connection)| connection)
                    .find(|connection| connection.claim(names, usage))
                {
                    return Ok(Some(connection.clone()));
                }
                if state.connections.len() + state.opening < self.max_connections {
                    state.opening += 1;
                    true
                } else if usage == Use::Shared
                    && state.connections.iter().any(|connection| {
                        let inner = connection.lock();
                        names.iter().any(|name| inner.holds.contains_key(name))
                    })
                {
                    return Ok(None);
                } else {
                    false
                }
            };
            if !open_new {
                changed.await;
                continue;
            }
            // Counted as opening until done, even if this future is dropped meanwhile.
            struct Opening<'a> {
                pool: &'a Pool,
                done: bool,
            }
            impl Drop for Opening<'_> {
                fn drop(&mut self) {
                    if !self.done {
                        self.pool.lock().opening -= 1;
                        self.pool.changed.notify_waiters();
                    }
                }
            }
            let mut opening = Opening {
                pool: self,
                done: false,
            };
            let opened = self.open().await;
            let mut state = self.lock();
            state.opening -= 1;
            opening.done = true;
            let connection = match opened {
                Ok(connection) => connection,
                Err(error) => {
                    drop(state);
                    self.changed.notify_waiters();
                    return Err(error);
                }
            };
            // Nobody else knows the new connection yet: the claim cannot fail.
            let claimed = connection.claim(names, usage);
            debug_assert!(claimed);
            state.connections.push(connection.clone());
            return Ok(Some(connection));
        }
    }

    async fn open(self: &Arc<Self>) -> Result<Arc<Connection>> {
        let conn = mysql_async::Conn::new(self.opts.clone())
            .await
            .map_err(|error| mysql_error("cannot connect", error))?;
        let connection = Arc::new(Connection {
            id: conn.id(),
            conn: tokio::sync::Mutex::new(conn),
            state: Mutex::default(),
            broken: AtomicBool::new(false),
            background: on_background(),
        });
        let watched = Arc::downgrade(&connection);
        let pool = Arc::downgrade(self);
        let interval = self.keepalive;
        // The connection's I/O is served by the runtime it was opened on, which also runs
        // this task: when that runtime shuts down, it drops the task, and the connection
        // counts as gone (its server session still ends only when the last user lets go).
        let runtime_ended = RuntimeEnded(Arc::downgrade(&connection));
        tokio::spawn(async move {
            let _runtime_ended = runtime_ended;
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(connection) = watched.upgrade() else {
                    return;
                };
                if connection.is_broken() {
                    return;
                }
                let idle = {
                    let state = connection.lock();
                    state.dedicated || state.holds.is_empty()
                };
                if idle {
                    continue;
                }
                let limit = crate::backend::kit::ping_limit(interval);
                let ping = async { connection.conn.lock().await.ping().await.is_ok() };
                let alive = tokio::time::timeout(limit, ping).await.unwrap_or_else(|_| {
                    tracing::warn!(?limit, "mysql keepalive got no answer");
                    false
                });
                if !alive {
                    connection.mark_broken();
                    if let Some(pool) = pool.upgrade() {
                        pool.changed.notify_waiters();
                    }
                    return;
                }
            }
        });
        Ok(connection)
    }

    /// Ends a dedicated connection's wait the hard way: `KILL` it from another connection.
    async fn kill(&self, connection: &Connection) {
        connection.mark_broken();
        match mysql_async::Conn::new(self.opts.clone()).await {
            Ok(mut killer) => {
                if let Err(error) = killer.query_drop(format!("KILL {}", connection.id)).await {
                    tracing::debug!(%error, "KILL of a waiting connection failed");
                }
                let _ = killer.disconnect().await;
            }
            Err(error) => tracing::warn!(%error, "cannot connect to KILL a waiting connection"),
        }
        self.changed.notify_waiters();
    }
}

/// Marks a connection broken when the task that holds it is dropped by its runtime's
/// shutdown (or ends).
struct RuntimeEnded(std::sync::Weak<Connection>);

impl Drop for RuntimeEnded {
    fn drop(&mut self) {
        if let Some(connection) = self.0.upgrade() {
            connection.mark_broken();
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
    connection: Arc<Connection>,
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
    fn new(
        name: Arc<str>,
        lock_name: String,
        release_note: String,
        connection: Arc<Connection>,
        pool: Arc<Pool>,
    ) -> Self {
        let loss = connection.record_hold(&lock_name);
        MySqlHandle {
            hold: Shell::new(Hold {
                name: name.clone(),
                lock_name,
                release_note,
                connection,
                pool,
            }),
            name,
            loss,
        }
    }
}

/// `RELEASE_LOCK`, then the claim goes: never before the server has released, so that the
/// connection cannot take the name again for someone else by re-entrancy meanwhile. If the
/// server refused the release, the name stays claimed for good.
async fn release(connection: &Connection, pool: &Pool, lock_name: &str) -> Result<()> {
    connection.release_lock(lock_name).await?;
    connection.forget(&[lock_name.to_owned()]);
    pool.changed.notify_waiters();
    Ok(())
}

impl Release for Hold {
    type Note = Note<String>;

    fn name(&self) -> &str {
        &self.name
    }

    fn note(&self) -> Note<String> {
        self.pool
            .release_notes
            .note(vec![self.release_note.clone()])
    }

    async fn release(self) -> Result<()> {
        release(&self.connection, &self.pool, &self.lock_name).await
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
        let names = [self.lock_name.clone()];
        let Some(connection) = self.pool.connection_for(&names, Use::Shared).await? else {
            return Ok(None);
        };
        let (pool, lock_name, name) =
            (self.pool.clone(), self.lock_name.clone(), self.name.clone());
        run_to_completion(
            async move {
                match connection.get_lock(&lock_name, 0.0).await {
                    Ok(Got::Taken) => Ok(Some(MySqlHandle::new(
                        name,
                        lock_name.clone(),
                        lock_name,
                        connection,
                        pool,
                    ))),
                    other => {
                        connection.forget(&[lock_name]);
                        pool.changed.notify_waiters();
                        other.map(|_| None)
                    }
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
    let names = [lock_name.to_owned()];
    let dedicated = pool.connection_for(&names, Use::Dedicated);
    let connection = match deadline {
        None => dedicated.await?,
        Some(deadline) => match tokio::time::timeout_at(deadline, dedicated).await {
            Ok(connection) => connection?,
            Err(_) => return Ok(None),
        },
    };
    let Some(connection) = connection else {
        return Ok(None);
    };
    let (sender, receiver) = oneshot::channel::<Result<Option<MySqlHandle>>>();
    let (pool, lock_name, name) = (pool.clone(), lock_name.to_owned(), name.clone());
    let release_note = release_note.to_owned();
    tokio::spawn(async move {
        let mut sender = sender;
        let outcome = loop {
            let seconds = match deadline {
                None => LONG_WAIT_SECONDS,
                Some(deadline) => deadline
                    .saturating_duration_since(tokio::time::Instant::now())
                    .as_secs_f64(),
            };
            let waited = tokio::select! {
                result = connection.get_lock(&lock_name, seconds) => result,
                () = sender.closed() => {
                    // Nobody waits any more: end the wait, and whatever it got, for good.
                    pool.kill(&connection).await;
                    return;
                }
            };
            match waited {
                Ok(Got::TimedOut) if deadline.is_none() => continue,
                other => break other,
            }
        };
        let message = match outcome {
            Ok(Got::Taken) => {
                // Now shared, with the name claimed for the handle.
                connection.end_dedicated(None);
                Ok(Some(MySqlHandle::new(
                    name,
                    lock_name,
                    release_note,
                    connection,
                    pool.clone(),
                )))
            }
            Ok(Got::HeldHere) => {
                // The connection had nothing claimed, yet holds the name: keep it claimed so
                // that nobody takes it here again, and say so.
                connection.end_dedicated(None);
                Err(Error::backend(
                    BACKEND,
                    format!("GET_LOCK({lock_name:?}) on a connection that holds it already"),
                    std::io::Error::other("unexpected re-entrant hold"),
                ))
            }
            other => {
                connection.end_dedicated(Some(&lock_name));
                other.map(|_| None)
            }
        };
        pool.changed.notify_waiters();
        if let Err(Ok(Some(handle))) = sender.send(message) {
            let _ = handle.release().await;
        }
    });
    receiver.await.unwrap_or_else(|_| {
        Err(Error::backend(
            BACKEND,
            "the wait task ended unexpectedly",
            std::io::Error::other("task lost"),
        ))
    })
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
        let Some(connection) = self
            .pool
            .connection_for(std::slice::from_ref(&marker), Use::Scan)
            .await?
        else {
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
                        .filter(|ticket| {
                            connection.claim(std::slice::from_ref(ticket), Use::Shared)
                        })
                        .collect();
                    start = end;
                    if claimed.is_empty() {
                        continue;
                    }
                    match connection.take_first_free(&claimed).await {
                        Ok(Some(index)) => {
                            let ticket = claimed.swap_remove(index);
                            connection.forget(&claimed);
                            // Recorded (still claimed) before the marker goes.
                            outcome = Ok(Some(MySqlHandle::new(
                                semaphore.name.clone(),
                                ticket,
                                semaphore.prefix.clone(),
                                connection.clone(),
                                semaphore.pool.clone(),
                            )));
                            break;
                        }
                        Ok(None) => connection.forget(&claimed),
                        Err(error) => {
                            connection.forget(&claimed);
                            outcome = Err(error);
                            break;
                        }
                    }
                }
                connection.forget(&[marker]);
                semaphore.pool.changed.notify_waiters();
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
    /// server on one ticket (taking that ticket if it frees), for a backoff interval that
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
        let mut backoff = FIRST_BACKOFF;
        // Spread waiters over the tickets (within this process too), and move on each round.
        static WAITERS: AtomicU32 = AtomicU32::new(0);
        let mut round = std::process::id().wrapping_add(WAITERS.fetch_add(1, Ordering::Relaxed));
        loop {
            if let Some(handle) = self.try_once().await? {
                return Ok(Some(handle));
            }
            let now = tokio::time::Instant::now();
            if deadline.is_some_and(|deadline| now >= deadline) {
                return Ok(None);
            }
            let ticket = round % self.max_count;
            round = round.wrapping_add(1);
            let until = now + backoff;
            let until = deadline.map_or(until, |deadline| deadline.min(until));
            let waited = wait_dedicated(
                &self.pool,
                &self.name,
                &self.ticket(ticket),
                &self.prefix,
                Some(until),
            )
            .await?;
            if let Some(handle) = waited {
                return Ok(Some(handle));
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
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
        let prefix = format!("tollgate_s_{}_", name::hash(name.as_bytes()));
        Ok(MySqlSemaphore {
            name: name.into(),
            prefix,
            max_count,
            pool: self.pool.clone(),
        })
    }
}

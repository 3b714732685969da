//! Connections and multiplexing: many held locks share few connections.
//!
//! A connection is either *shared* (it holds any number of locks, each key at most once, and
//! serves try-acquires and releases, none of which ever blocks in the server) or *dedicated*
//! to one blocking wait (`pg_advisory_lock` under `lock_timeout`), because a query blocked in
//! the server holds up every later query on its connection. Once its wait succeeds, a
//! dedicated connection becomes a shared one holding that lock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_postgres::{CancelToken, Client, SimpleQueryMessage, Statement};

use super::key::AdvisoryKey;
use super::BACKEND;
use crate::backend::kit::notes::{Note, ReleaseNotes};
use crate::backend::kit::runtime::on_background;
use crate::{Error, LossNotifier, LossSignal, Result};

/// How many holds a session takes before the pool opens another (while it may). Every
/// statement on a session costs server time in proportion to the locks it holds (the server
/// walks its lock table at each transaction's end): about 0.8 ms at 10,000, 45 µs at 625.
const HOLDS_PER_SESSION: usize = 625;

/// How a key is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Mode {
    Exclusive,
    Shared,
}

impl Mode {
    fn suffix(self) -> &'static str {
        match self {
            Mode::Exclusive => "",
            Mode::Shared => "_shared",
        }
    }

    fn pg_locks_mode(self) -> &'static str {
        match self {
            Mode::Exclusive => "ExclusiveLock",
            Mode::Shared => "ShareLock",
        }
    }
}

/// The SQL arguments of a key, as literals (integers only: nothing to inject).
pub(crate) fn key_args(key: AdvisoryKey) -> String {
    match key {
        AdvisoryKey::Single(key) => key.to_string(),
        AdvisoryKey::Pair(high, low) => format!("{high}, {low}"),
    }
}

/// The `pg_locks` condition that matches this session's granted hold of `key` in `mode`.
pub(crate) fn granted_condition(key: AdvisoryKey, mode: Mode) -> String {
    let (class_id, object_id, sub_id) = match key {
        AdvisoryKey::Single(key) => ((key as u64 >> 32) as u32, key as u32, 1),
        AdvisoryKey::Pair(high, low) => (high as u32, low as u32, 2),
    };
    format!(
        "locktype = 'advisory' AND pid = pg_backend_pid() AND granted AND mode = '{}' \
         AND classid = {class_id} AND objid = {object_id} AND objsubid = {sub_id}",
        mode.pg_locks_mode()
    )
}

fn postgres_error(message: impl Into<String>, error: tokio_postgres::Error) -> Error {
    Error::backend(BACKEND, message, error)
}

/// The SQLSTATE of a server error, if it is one.
pub(crate) fn sqlstate(error: &tokio_postgres::Error) -> Option<&str> {
    error.as_db_error().map(|db| db.code().code())
}

/// One server session.
pub(crate) struct Connection {
    client: Client,
    cancel: CancelToken,
    tls: super::Tls,
    state: Mutex<ConnectionState>,
    /// Fired (with every hold's notifier) when the session ends under us.
    broken: LossNotifier,
    /// Set once the session was sent a cancel request: it is closed when its last user is
    /// done with it.
    retired: std::sync::atomic::AtomicBool,
    /// Whether tollgate's own runtime drives this session (see [`on_background`]).
    background: bool,
}

#[derive(Default)]
struct ConnectionState {
    /// What this session holds (or is about to try), each key at most once, with the loss
    /// notifier of the hold.
    holds: HashMap<AdvisoryKey, Option<Arc<LossNotifier>>>,
    /// Taken by one blocking wait.
    dedicated: bool,
    /// Since when the session has held and reserved nothing (for closing idle sessions).
    idle_since: Option<tokio::time::Instant>,
    /// Statements prepared on this session, by function, mode and kind of key (pair or not).
    statements: HashMap<(Function, Mode, bool), Statement>,
}

/// The advisory-lock functions the hot path runs as prepared statements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Function {
    TryLock,
    Unlock,
}

impl Connection {
    fn lock(&self) -> MutexGuard<'_, ConnectionState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether the session has ended.
    pub(crate) fn is_broken(&self) -> bool {
        self.broken.is_lost() || self.client.is_closed()
    }

    /// Whether the session was taken out of use (see [`Pool::retire`]).
    fn is_retired(&self) -> bool {
        self.retired.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Runs a statement that must not be lost to a cancel request meant for an earlier one.
    /// A cancel that reaches the server after its statement finished hits whatever runs
    /// next; one request signals the backend at most twice (the process and its group), so
    /// a statement cancelled that way runs again, up to twice.
    async fn query_value_past_cancel(
        &self,
        sql: &str,
    ) -> Result<Option<String>, tokio_postgres::Error> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.query_value(sql).await {
                Err(error) if sqlstate(&error) == Some("57014") && attempts < 3 => {}
                other => return other,
            }
        }
    }

    /// Runs one statement (or several, `;`-separated) and returns the first column of the
    /// first row of the last result, if any.
    pub(crate) async fn query_value(
        &self,
        sql: &str,
    ) -> Result<Option<String>, tokio_postgres::Error> {
        let messages = self.client.simple_query(sql).await?;
        let mut value = None;
        for message in messages {
            if let SimpleQueryMessage::Row(row) = message {
                value = row.get(0).map(str::to_owned);
            }
        }
        Ok(value)
    }

    /// The statement `SELECT function(key)` for this kind of key, prepared on this session
    /// the first time it is needed (the hot path's statements then cost one round trip
    /// each, with no parsing or planning in the server).
    async fn prepared(
        &self,
        function: Function,
        key: AdvisoryKey,
        mode: Mode,
    ) -> Result<Statement, tokio_postgres::Error> {
        let pair = matches!(key, AdvisoryKey::Pair(..));
        if let Some(statement) = self.lock().statements.get(&(function, mode, pair)) {
            return Ok(statement.clone());
        }
        let name = match function {
            Function::TryLock => "pg_try_advisory_lock",
            Function::Unlock => "pg_advisory_unlock",
        };
        let args = if pair {
            "$1::int4, $2::int4"
        } else {
            "$1::int8"
        };
        let sql = format!("SELECT {name}{}({args})", mode.suffix());
        let statement = self.client.prepare(&sql).await?;
        self.lock()
            .statements
            .insert((function, mode, pair), statement.clone());
        Ok(statement)
    }

    /// Runs a prepared advisory-lock function on `key` and returns its boolean.
    async fn call(
        &self,
        function: Function,
        key: AdvisoryKey,
        mode: Mode,
    ) -> Result<bool, tokio_postgres::Error> {
        let statement = self.prepared(function, key, mode).await?;
        let row = match key {
            AdvisoryKey::Single(key) => self.client.query_one(&statement, &[&key]).await?,
            AdvisoryKey::Pair(high, low) => {
                self.client.query_one(&statement, &[&high, &low]).await?
            }
        };
        row.try_get(0)
    }

    /// `pg_try_advisory_lock[_shared]`: whether the lock was granted.
    pub(crate) async fn try_lock(
        &self,
        key: AdvisoryKey,
        mode: Mode,
    ) -> Result<bool, tokio_postgres::Error> {
        self.call(Function::TryLock, key, mode).await
    }

    /// `pg_advisory_unlock[_shared]`: whether the lock was held. Runs again when a cancel
    /// request meant for an earlier statement interrupts it (see `query_value_past_cancel`).
    pub(crate) async fn unlock(
        &self,
        key: AdvisoryKey,
        mode: Mode,
    ) -> Result<bool, tokio_postgres::Error> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.call(Function::Unlock, key, mode).await {
                Err(error) if sqlstate(&error) == Some("57014") && attempts < 3 => {}
                other => return other,
            }
        }
    }

    /// Unlocks `key` in `mode` if this session holds it (cleanup after an interrupted try).
    pub(crate) async fn unlock_if_held(
        &self,
        key: AdvisoryKey,
        mode: Mode,
    ) -> Result<(), tokio_postgres::Error> {
        let sql = format!(
            "SELECT pg_advisory_unlock{}({}) FROM pg_locks WHERE {}",
            mode.suffix(),
            key_args(key),
            granted_condition(key, mode)
        );
        self.query_value_past_cancel(&sql).await.map(drop)
    }

    /// Whether this session holds `key` in `mode` (after an ambiguous error such as a
    /// `lock_timeout` that raced with the grant).
    pub(crate) async fn holds(
        &self,
        key: AdvisoryKey,
        mode: Mode,
    ) -> Result<bool, tokio_postgres::Error> {
        let sql = format!(
            "SELECT count(*) FROM pg_locks WHERE {}",
            granted_condition(key, mode)
        );
        Ok(self
            .query_value_past_cancel(&sql)
            .await?
            .is_some_and(|count| count != "0"))
    }

    /// Asks the server to cancel whatever this session is running.
    pub(crate) async fn cancel_query(&self) {
        let result = match &self.tls {
            super::Tls::Plain => self.cancel.cancel_query(tokio_postgres::NoTls).await,
            super::Tls::Native(connector) => self.cancel.cancel_query(connector.clone()).await,
        };
        if let Err(error) = result {
            tracing::debug!(%error, "cancel request failed");
        }
    }

    /// Records that this session now holds `key`, with a fresh loss signal for the hold.
    pub(crate) fn record_hold(&self, key: AdvisoryKey) -> LossSignal {
        let (notifier, signal) = LossSignal::detectable();
        let notifier = Arc::new(notifier);
        if self.is_broken() {
            notifier.notify_lost();
        }
        self.lock().holds.insert(key, Some(notifier));
        signal
    }

    /// The keys this session holds or has reserved.
    pub(crate) fn held_keys(&self) -> Vec<AdvisoryKey> {
        self.lock().holds.keys().copied().collect()
    }

    /// Reserves more keys on a session already in use.
    pub(crate) fn reserve_more(&self, keys: &[AdvisoryKey]) {
        let mut inner = self.lock();
        for key in keys {
            inner.holds.insert(*key, None);
        }
    }

    fn reserve(&self, keys: &[AdvisoryKey], usage: Use) {
        let mut inner = self.lock();
        for key in keys {
            inner.holds.insert(*key, None);
        }
        inner.dedicated = usage == Use::Dedicated;
        inner.idle_since = None;
    }

    /// Forgets holds (after their unlock, or when a try did not get them), and ends a
    /// dedication.
    pub(crate) fn forget(&self, keys: &[AdvisoryKey]) {
        let mut inner = self.lock();
        for key in keys {
            inner.holds.remove(key);
        }
        inner.dedicated = false;
        if inner.holds.is_empty() {
            inner.idle_since = Some(tokio::time::Instant::now());
        }
    }

    /// Releases a dedicated connection for shared use.
    pub(crate) fn undedicate(&self) {
        let mut inner = self.lock();
        inner.dedicated = false;
        if inner.holds.is_empty() {
            inner.idle_since = Some(tokio::time::Instant::now());
        }
    }

    /// Whether the session has held and reserved nothing since before `limit`.
    fn idle_before(&self, limit: tokio::time::Instant) -> bool {
        let inner = self.lock();
        !inner.dedicated
            && inner.holds.is_empty()
            && inner.idle_since.is_some_and(|since| since <= limit)
    }

    fn mark_broken(&self) {
        self.broken.notify_lost();
        for notifier in self.lock().holds.values().flatten() {
            notifier.notify_lost();
        }
    }
}

/// Opens sessions and hands them out: shared ones for try-acquires, dedicated ones for waits.
pub(crate) struct Pool {
    config: tokio_postgres::Config,
    tls: super::Tls,
    max_connections: usize,
    keepalive: Option<Duration>,
    idle_timeout: Option<Duration>,
    connections: Mutex<PoolState>,
    changed: Notify,
    /// Keys whose release after a drop is still on its way to the server, so that this
    /// process's next acquire of the same key waits for it instead of finding it busy.
    release_notes: Arc<ReleaseNotes<AdvisoryKey>>,
}

#[derive(Default)]
struct PoolState {
    connections: Vec<Arc<Connection>>,
    /// Connections being opened, counted against the maximum.
    opening: usize,
    /// Whether the task that closes idle sessions runs.
    reaping: bool,
}

/// Whether a search wants a connection to share or to dedicate to a wait.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Use {
    /// Holds any number of other keys, but not this one.
    Shared,
    /// Holds nothing and does nothing else until the wait ends.
    Dedicated,
}

impl Pool {
    pub(crate) fn new(
        config: tokio_postgres::Config,
        tls: super::Tls,
        max_connections: usize,
        keepalive: Option<Duration>,
        idle_timeout: Option<Duration>,
    ) -> Self {
        Pool {
            config,
            tls,
            max_connections,
            keepalive,
            idle_timeout,
            connections: Mutex::default(),
            changed: Notify::new(),
            release_notes: Arc::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.connections
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Notes that releases of `keys` are under way, until the note is dropped.
    pub(crate) fn note(&self, keys: Vec<AdvisoryKey>) -> Note<AdvisoryKey> {
        self.release_notes.note(keys)
    }

    /// Notes that releases of `keys` are under way (called from `Drop`).
    pub(crate) fn begin_release(&self, keys: &[AdvisoryKey]) {
        self.release_notes.begin(keys);
    }

    /// Notes that releases of `keys` are done.
    pub(crate) fn end_release(&self, keys: &[AdvisoryKey]) {
        self.release_notes.end(keys);
    }

    /// Waits until no release of `keys` is under way in this process.
    pub(crate) async fn wait_for_releases(&self, keys: &[AdvisoryKey]) {
        self.release_notes.wait(keys).await;
    }

    /// How many sessions are open (or opening), not counting ended ones.
    pub(crate) fn connection_count(&self) -> usize {
        let state = self.lock();
        let live = state
            .connections
            .iter()
            .filter(|connection| !connection.is_broken())
            .count();
        live + state.opening
    }

    /// A connection for `keys`, with the keys reserved on it (so no other task tries the same
    /// key on the same session). The caller must `forget` the keys if it does not get them.
    /// `None` (only for shared use) when no session can be had because this process itself
    /// holds one of the keys on every session the pool may have.
    pub(crate) async fn connection_for(
        self: &Arc<Self>,
        keys: &[AdvisoryKey],
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
                    .retain(|connection| !connection.is_broken() && !connection.is_retired());
                let can_open = state.connections.len() + state.opening < self.max_connections;
                // Work on tollgate's runtime uses only sessions it drives: the others are
                // served only while their caller's runtime runs.
                let background = on_background();
                let candidate = state
                    .connections
                    .iter()
                    .filter_map(|connection| {
                        let inner = connection.lock();
                        let fits = (connection.background || !background)
                            && !inner.dedicated
                            && keys.iter().all(|key| !inner.holds.contains_key(key))
                            && (usage == Use::Shared || inner.holds.is_empty())
                            // A full session takes more only when no other can be opened.
                            && (inner.holds.len() < HOLDS_PER_SESSION || !can_open);
                        fits.then_some((inner.holds.len(), connection))
                    })
                    // Pack holds onto the busiest sessions, so idle ones can be closed.
                    .max_by_key(|(holds, _)| *holds)
                    .map(|(_, connection)| connection.clone());
                if let Some(connection) = candidate {
                    connection.reserve(keys, usage);
                    return Ok(Some(connection));
                }
                let open_new = can_open;
                if open_new {
                    state.opening += 1;
                } else if usage == Use::Shared
                    && state.connections.iter().any(|connection| {
                        let inner = connection.lock();
                        keys.iter().any(|key| inner.holds.contains_key(key))
                    })
                {
                    // Every session is in use and the key is held (or being tried) by this
                    // process: the lock is busy, and waiting for a session would not help.
                    return Ok(None);
                }
                open_new
            };
            if open_new {
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
                connection.reserve(keys, usage);
                state.connections.push(connection.clone());
                if let (Some(idle_timeout), false) = (self.idle_timeout, state.reaping) {
                    state.reaping = true;
                    self.start_reaping(idle_timeout);
                }
                return Ok(Some(connection));
            }
            // Every session is busy and no more may be opened: wait for a change.
            changed.await;
        }
    }

    /// Takes a session that was sent a cancel request out of use for good: a cancel that
    /// reached the server late would otherwise hit a statement of whoever used the session
    /// next. Its current users (a wait's cleanup, a hold) finish normally; the session
    /// closes, releasing anything left on it, when the last of them drops it.
    pub(crate) fn retire(&self, connection: &Arc<Connection>) {
        connection
            .retired
            .store(true, std::sync::atomic::Ordering::Release);
        self.lock()
            .connections
            .retain(|open| !Arc::ptr_eq(open, connection));
        self.changed.notify_waiters();
    }

    /// Closes sessions that have held nothing for `idle_timeout`, from a task that ends with
    /// the pool. A session is chosen for a new hold under the pool's lock, as here, so one
    /// is never closed under a hold that was just given it.
    fn start_reaping(self: &Arc<Self>, idle_timeout: Duration) {
        let pool = Arc::downgrade(self);
        let period = (idle_timeout / 2).max(Duration::from_millis(100));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let Some(pool) = pool.upgrade() else {
                    return;
                };
                let Some(limit) = tokio::time::Instant::now().checked_sub(idle_timeout) else {
                    continue;
                };
                let closed: Vec<Arc<Connection>> = {
                    let mut state = pool.lock();
                    let (idle, kept) = std::mem::take(&mut state.connections)
                        .into_iter()
                        .partition(|connection| connection.idle_before(limit));
                    state.connections = kept;
                    idle
                };
                if !closed.is_empty() {
                    tracing::debug!(count = closed.len(), "closing idle postgres sessions");
                    pool.notify_change();
                }
                // Dropping the last reference closes each session.
                drop(closed);
            }
        });
    }

    /// Tells waiters for a connection that one may have become usable.
    pub(crate) fn notify_change(&self) {
        self.changed.notify_waiters();
    }

    async fn open(self: &Arc<Self>) -> Result<Arc<Connection>> {
        let unreachable = |error| postgres_error("cannot connect", error);
        let (client, broken) = match &self.tls {
            super::Tls::Plain => {
                let (client, connection) = self
                    .config
                    .connect(tokio_postgres::NoTls)
                    .await
                    .map_err(unreachable)?;
                (client, tokio::spawn(connection))
            }
            super::Tls::Native(connector) => {
                let (client, connection) = self
                    .config
                    .connect(connector.clone())
                    .await
                    .map_err(unreachable)?;
                (client, tokio::spawn(connection))
            }
        };
        let driver = broken.abort_handle();
        let connection = Arc::new(Connection {
            cancel: client.cancel_token(),
            client,
            tls: self.tls.clone(),
            state: Mutex::default(),
            broken: LossSignal::detectable().0,
            retired: std::sync::atomic::AtomicBool::new(false),
            background: on_background(),
        });
        // A waiting backend notices a vanished client only when it checks; make it check.
        // (PostgreSQL 14+; older servers reject the setting, which is harmless.)
        let _ = connection
            .client
            .batch_execute("SET client_connection_check_interval = '1s'")
            .await;
        let watched: Weak<Connection> = Arc::downgrade(&connection);
        let pool = Arc::downgrade(self);
        tokio::spawn(async move {
            let ended = broken.await;
            if let Ok(Err(error)) = &ended {
                tracing::warn!(%error, "postgres connection ended");
            }
            if let Some(connection) = watched.upgrade() {
                connection.mark_broken();
            }
            if let Some(pool) = pool.upgrade() {
                pool.notify_change();
            }
        });
        if let Some(interval) = self.keepalive {
            let watched = Arc::downgrade(&connection);
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval(interval);
                ticks.tick().await;
                loop {
                    ticks.tick().await;
                    let Some(connection) = watched.upgrade() else {
                        return;
                    };
                    if connection.is_broken() {
                        return;
                    }
                    // A dedicated session is busy waiting; its wait is its keepalive.
                    if connection.lock().dedicated {
                        continue;
                    }
                    // Unanswered: close the socket too, so that the server ends the session
                    // (and frees its locks) once it can tell.
                    let ping = connection.client.simple_query("SELECT 1");
                    let limit = crate::backend::kit::ping_limit(interval);
                    match tokio::time::timeout(limit, ping).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(_)) => {
                            connection.mark_broken();
                            return;
                        }
                        Err(_) => {
                            tracing::warn!(?limit, "postgres keepalive got no answer; closing");
                            connection.mark_broken();
                            driver.abort();
                            return;
                        }
                    }
                }
            });
        }
        Ok(connection)
    }
}

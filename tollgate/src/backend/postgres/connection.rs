//! PostgreSQL sessions of the shared pool ([`crate::backend::kit::pool`]), which multiplexes
//! many held locks over few sessions: how a session is opened and pinged, and the statements
//! the advisory locks run on it. A blocking wait (`pg_advisory_lock` under `lock_timeout`)
//! has a session dedicated to it; once the wait succeeds, that session is shared again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, MutexGuard};

use tokio_postgres::types::ToSql;
use tokio_postgres::{CancelToken, Client, SimpleQueryMessage, Statement};

use super::key::AdvisoryKey;
use super::BACKEND;
use crate::backend::kit::pool;
pub(crate) use crate::backend::kit::pool::Use;
use crate::{Error, Result};

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

/// Whether a PostgreSQL client error is a transient fault (see [`crate::backend::kit::fault`]):
/// the connection closed, a connection exception (class 08), the server shutting down,
/// crashed, starting up (57P01–57P03) or out of connection slots (53300). Other server errors
/// (wrong password, missing database…) are not; an error without a code defers to its source.
pub(crate) fn transient(link: &(dyn std::error::Error + 'static)) -> Option<bool> {
    let error = link.downcast_ref::<tokio_postgres::Error>()?;
    if error.is_closed() {
        return Some(true);
    }
    let code = sqlstate(error)?;
    Some(code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300"))
}

/// The SQLSTATE of a server error, if it is one.
pub(crate) fn sqlstate(error: &tokio_postgres::Error) -> Option<&str> {
    error.as_db_error().map(|db| db.code().code())
}

/// The PostgreSQL protocol of the session pool.
pub(crate) struct Postgres {
    config: tokio_postgres::Config,
    tls: super::Tls,
}

/// The pool of multiplexed sessions.
pub(crate) type Pool = pool::Pool<Postgres>;
/// One pooled server session.
pub(crate) type Connection = pool::Pooled<Postgres>;
/// Keys claimed on a session for an operation under way.
pub(crate) type Reservation = pool::Reservation<Postgres>;
/// Keys held on a session for a handle.
pub(crate) type Held = pool::Held<Postgres>;

/// Builds the pool as `options` say, each session taking up to
/// [`HOLDS_PER_SESSION`] holds while another may be opened.
pub(crate) fn new_pool(
    config: tokio_postgres::Config,
    tls: super::Tls,
    options: &pool::PoolOptions,
) -> Pool {
    Pool::new(
        Postgres { config, tls },
        options.settings(pool::Pinged::Open, HOLDS_PER_SESSION),
    )
}

/// One server session: the client, and what it needs beside the pool's bookkeeping.
pub(crate) struct Session {
    client: Client,
    cancel: CancelToken,
    tls: super::Tls,
    /// Statements prepared on this session, by function, mode and kind of key (pair or not).
    statements: Mutex<HashMap<(Function, Mode, bool), Statement>>,
    /// The session's `lock_timeout` in ms as the last wait left it, or -1 when unknown (none
    /// yet, or the last one failed, which rolled its setting back, or was dropped).
    lock_timeout: AtomicI64,
    /// Stops the task that drives the connection (after an unanswered keepalive).
    driver: tokio::task::AbortHandle,
}

/// The statements the hot path runs prepared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Function {
    TryLock,
    Unlock,
    /// A semaphore's scan: the first free ticket, taken (see [`Session::scan_tickets`]).
    ScanTickets,
    /// A semaphore ticket's release with its waiters' notification.
    UnlockAndNotify,
    /// A wait in the server under a `lock_timeout` given with it.
    WaitLock,
    /// A wait in the server under the session's `lock_timeout` as it is.
    Lock,
}

impl Function {
    /// The statement's text for `mode` and a key pair (`pair`) or a single key.
    fn sql(self, mode: Mode, pair: bool) -> String {
        let args = if pair {
            "$1::int4, $2::int4"
        } else {
            "$1::int8"
        };
        let suffix = mode.suffix();
        match self {
            Function::TryLock => format!("SELECT pg_try_advisory_lock{suffix}({args})"),
            Function::Unlock => format!("SELECT pg_advisory_unlock{suffix}({args})"),
            Function::Lock => format!("SELECT pg_advisory_lock{suffix}({args})"),
            // Ticket i is key $1 + i, for i below $2; the session's own tickets ($3) are
            // skipped (advisory locks are re-entrant per session). Stops at the first taken.
            Function::ScanTickets => "WITH RECURSIVE scan(ticket, taken) AS ( \
                   SELECT -1::int8, false \
                   UNION ALL \
                   SELECT ticket + 1, CASE WHEN ticket + 1 = ANY($3::int8[]) THEN false \
                     ELSE pg_try_advisory_lock($1::int8 + ticket + 1) END \
                   FROM scan WHERE NOT taken AND ticket + 1 < $2::int8 \
                 ) SELECT ticket FROM scan WHERE taken"
                .to_owned(),
            // The subquery (volatile, so never flattened) runs first: the timeout is set for
            // the session before the wait starts. $3 is the timeout in ms (0: none).
            Function::WaitLock => {
                let timeout = if pair { "$3" } else { "$2" };
                format!(
                    "SELECT pg_advisory_lock{suffix}({args}) FROM \
                     (SELECT set_config('lock_timeout', {timeout}::text, false)) AS timeout"
                )
            }
            // The notification goes out when the statement commits, after the unlock.
            Function::UnlockAndNotify => {
                "SELECT pg_advisory_unlock($1::int8), pg_notify($2::text, '')".to_owned()
            }
        }
    }
}

impl pool::Protocol for Postgres {
    type Key = AdvisoryKey;
    type Session = Session;

    const BACKEND: &'static str = BACKEND;

    async fn open(&self) -> Result<(Session, Option<pool::Ended>)> {
        let unreachable = |error| postgres_error("cannot connect", error);
        let (client, driver) = match &self.tls {
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
        // A waiting backend notices a vanished client only when it checks; make it check.
        // (PostgreSQL 14+; older servers reject the setting, which is harmless.)
        let _ = client
            .batch_execute("SET client_connection_check_interval = '1s'")
            .await;
        let session = Session {
            cancel: client.cancel_token(),
            client,
            tls: self.tls.clone(),
            statements: Mutex::default(),
            lock_timeout: AtomicI64::new(-1),
            driver: driver.abort_handle(),
        };
        let ended: pool::Ended = Box::pin(async move {
            if let Ok(Err(error)) = driver.await {
                tracing::warn!(%error, "postgres connection ended");
            }
        });
        Ok((session, Some(ended)))
    }

    fn is_closed(session: &Session) -> bool {
        session.client.is_closed()
    }

    async fn ping(session: &Session) -> bool {
        session.client.simple_query("SELECT 1").await.is_ok()
    }

    fn abandon(session: &Session) {
        session.driver.abort();
    }
}

impl Session {
    fn statements(&self) -> MutexGuard<'_, HashMap<(Function, Mode, bool), Statement>> {
        self.statements
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
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
        if let Some(statement) = self.statements().get(&(function, mode, pair)) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(&function.sql(mode, pair)).await?;
        self.statements()
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

    /// Takes the first free ticket of the semaphore whose ticket `i` is key `base + i`, for
    /// `i` below `max`, skipping the tickets this session holds already (`skip`): the ticket
    /// taken, if any. One round trip, planned once per session.
    pub(crate) async fn scan_tickets(
        &self,
        base: i64,
        max: u32,
        skip: &[i64],
    ) -> Result<Option<i64>, tokio_postgres::Error> {
        let statement = self
            .prepared(
                Function::ScanTickets,
                AdvisoryKey::Single(base),
                Mode::Exclusive,
            )
            .await?;
        let row = self
            .client
            .query_opt(&statement, &[&base, &i64::from(max), &skip])
            .await?;
        row.map(|row| row.try_get(0)).transpose()
    }

    /// Releases a semaphore ticket and notifies `channel` (its waiters) in one round trip:
    /// whether the ticket was held. Runs again after a stray cancel, as [`Session::unlock`].
    pub(crate) async fn unlock_and_notify(
        &self,
        ticket: i64,
        channel: &str,
    ) -> Result<bool, tokio_postgres::Error> {
        let statement = self
            .prepared(
                Function::UnlockAndNotify,
                AdvisoryKey::Single(ticket),
                Mode::Exclusive,
            )
            .await?;
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self
                .client
                .query_one(&statement, &[&ticket, &channel])
                .await
            {
                Err(error) if sqlstate(&error) == Some("57014") && attempts < 3 => {}
                Err(error) => return Err(error),
                Ok(row) => return row.try_get(0),
            }
        }
    }

    /// `pg_advisory_lock[_shared]` under a `lock_timeout` of `timeout_ms` (0: none), set on
    /// the session in the same prepared statement (one round trip), or left as it is when the
    /// last wait on this session set the same (unbounded waits, one after another).
    pub(crate) async fn wait_lock(
        &self,
        key: AdvisoryKey,
        mode: Mode,
        timeout_ms: i64,
    ) -> Result<(), tokio_postgres::Error> {
        let set = self.lock_timeout.load(Ordering::Relaxed) != timeout_ms;
        let function = if set {
            Function::WaitLock
        } else {
            Function::Lock
        };
        let statement = self.prepared(function, key, mode).await?;
        // Unknown until the statement succeeds: a failed one rolls its setting back.
        self.lock_timeout.store(-1, Ordering::Relaxed);
        let timeout = timeout_ms.to_string();
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(3);
        match &key {
            AdvisoryKey::Single(key) => params.push(key),
            AdvisoryKey::Pair(high, low) => {
                params.push(high);
                params.push(low);
            }
        }
        if set {
            params.push(&timeout);
        }
        self.client.query_one(&statement, &params).await?;
        self.lock_timeout.store(timeout_ms, Ordering::Relaxed);
        Ok(())
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
}

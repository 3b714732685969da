//! Advisory locks under the caller's control: inside the caller's own transaction, in a
//! transaction tollgate owns, and on the caller's own connection.
//!
//! | mode | entry point | held until | PgBouncer transaction pooling |
//! |---|---|---|---|
//! | caller's transaction | [`lock_in_transaction`] | the transaction ends | yes |
//! | owned transaction | [`TransactionLockProvider`] | the handle is released or dropped | yes |
//! | caller's connection | [`lock_on_connection`] | the handle is released or dropped | no |
//!
//! Every mode waits **in the server** (`pg_advisory[_xact]_lock` under `lock_timeout`), never
//! by polling, and takes an advisory lock on the same [`AdvisoryKey`] as the pooled
//! [`PostgresProvider`](super::PostgresProvider) and DistributedLock.Postgres, so all of them
//! exclude each other.
//!
//! # How a wait is cancelled
//!
//! Dropping an acquire future while the server is waiting sends a PostgreSQL cancel request
//! for the session from a background task, and keeps sending one, with growing pauses, until
//! the statement has ended (a request that reaches the server before the statement does is
//! ignored); then it undoes what the mode can undo (see each entry point).
//!
//! A cancel request is addressed to a session, not to a statement, so it can interrupt the
//! wrong one. Two measures keep it on the wait, both checked on the test server by dropping
//! acquire futures at moments from 0 to 53 ms into the statement:
//! - the first request goes out no earlier than 25 ms after the statement was sent, so that
//!   it does not land while the server is still starting the statement, before the `DO`
//!   block that catches it (this failed a caller's transaction several times in ten runs
//!   without the delay);
//! - one request can signal the backend twice (the backend and its process group), the
//!   second time milliseconds later on a busy machine; the statement goes on catching
//!   cancels for 20 ms after the first (without this, most runs had the second signal fail
//!   the caller's next statement).
//!
//! What remains: if the wait ends on its own (granted, timed out) at the very moment the
//! future is dropped, the request can still reach the server after the statement and
//! interrupt whatever that session runs next, which then fails with SQLSTATE 57014
//! ("canceling statement due to user request"), as with any PostgreSQL client that cancels.
//! tollgate never reuses one of its own sessions that was sent a cancel request; on a caller's
//! transaction or connection, the caller's next statement is exposed to this race.
//!
//! # TLS
//!
//! A cancel request travels on a new connection to the server. The functions without `_tls`
//! send it unencrypted, which works with any server that accepts unencrypted connections
//! (PostgreSQL reads a cancel request before it applies `pg_hba.conf`, so `hostssl` rules do
//! not block it), but not when the client's own configuration says `sslmode=require`; pass the
//! TLS connector the connection was made with to the `_with_tls` variants then.
//! [`TransactionLockProvider`] uses the TLS settings of its URL.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use tokio::sync::oneshot;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{
    CancelToken, Client, NoTls, SimpleQueryMessage, SimpleQueryStream, Socket, Transaction,
};

use super::connection::{granted_condition, key_args, sqlstate, Mode};
use super::key::AdvisoryKey;
use super::{PostgresProviderBuilder, Tls, BACKEND};
use crate::backend::kit::completion::interrupt_until_done;
use crate::backend::kit::hold::{Release, Shell};
use crate::backend::kit::notes::{Note, ReleaseNotes};
use crate::backend::kit::pool::{self, Use};
use crate::backend::kit::runtime::{background, spawn_release};
use crate::{Acquire, Error, Handle, Lock, LockProvider, LossSignal, Result, Wait};

/// How often a [`ConnectionLockHandle`] looks whether the caller's connection has closed.
const CONNECTION_WATCH_INTERVAL: Duration = Duration::from_millis(500);
/// How many times a cleanup statement is retried when a stray cancel request interrupts it.
const CLEANUP_ATTEMPTS: usize = 3;
/// How long after sending a statement the first cancel request may go out: a request that
/// arrives while the server is still starting the statement (before its `DO` block can catch
/// it) would fail the statement, and a caller's transaction with it.
const CANCEL_DELAY: Duration = Duration::from_millis(25);
/// How long (in seconds, for `pg_sleep`) a lock statement that caught a cancel request goes
/// on catching cancels before it ends. One cancel request can interrupt a backend twice (the
/// server signals the backend and its process group, which is the backend itself), and on a
/// busy machine the second signal can arrive milliseconds after the first has ended the
/// wait, when the next statement is already running. Observed on the test server
/// (PostgreSQL 15, two busy cores): without this, a cancelled wait's second signal failed
/// the caller's next statement in most runs of the early-drop tests.
const ABSORB_SECONDS: f64 = 0.02;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

fn mode_of(shared: bool) -> Mode {
    if shared {
        Mode::Shared
    } else {
        Mode::Exclusive
    }
}

fn suffix(mode: Mode) -> &'static str {
    match mode {
        Mode::Exclusive => "",
        Mode::Shared => "_shared",
    }
}

fn backend_error(message: impl Into<String>, error: tokio_postgres::Error) -> Error {
    Error::backend(BACKEND, message, error)
}

fn other_error(message: impl Into<String>, detail: &str) -> Error {
    Error::backend(BACKEND, message, std::io::Error::other(detail.to_owned()))
}

/// A failed lock statement: a deadlock is the contract's deadlock error.
fn wait_error(name: &str, error: tokio_postgres::Error) -> Error {
    if sqlstate(&error) == Some("40P01") {
        Error::Deadlock {
            name: name.to_owned(),
        }
    } else {
        backend_error(format!("waiting for {name:?} failed"), error)
    }
}

/// The outcome a lock statement recorded in `tollgate.acquired`, as the caller sees it.
fn recorded_outcome(name: &str, outcome: Option<&str>) -> Result<bool> {
    match outcome {
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some("deadlock") => Err(Error::Deadlock {
            name: name.to_owned(),
        }),
        // Our own cancel is only sent once nobody waits for this answer.
        Some("canceled") => Err(other_error(
            format!("waiting for {name:?} was cancelled in the server"),
            "statement_timeout, or a cancel request from elsewhere (SQLSTATE 57014)",
        )),
        other => Err(other_error(
            format!("locking {name:?} gave no outcome"),
            &format!("unexpected outcome {other:?}"),
        )),
    }
}

/// How long the server may wait, from the caller's [`Wait`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ServerWait {
    /// One attempt (`pg_try_advisory_*`).
    Try,
    /// `lock_timeout` in milliseconds; 0 means no limit.
    Timeout(u64),
}

impl ServerWait {
    fn new(wait: Wait, deadline: Option<tokio::time::Instant>) -> Self {
        match (wait, deadline) {
            (Wait::AtMost(timeout), _) if timeout.is_zero() => ServerWait::Try,
            // Forever, or a timeout too long to add to now.
            (_, None) => ServerWait::Timeout(0),
            (_, Some(deadline)) => {
                let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
                if remaining.is_zero() {
                    ServerWait::Try
                } else {
                    // Rounded up; at least 1 ms (0 would mean no limit), at most i32::MAX.
                    let millis = remaining
                        .as_micros()
                        .div_ceil(1000)
                        .clamp(1, i32::MAX as u128);
                    ServerWait::Timeout(millis as u64)
                }
            }
        }
    }
}

/// Sends PostgreSQL cancel requests for one session.
#[derive(Clone)]
struct Canceller(Arc<dyn Fn() -> BoxFuture<()> + Send + Sync>);

impl Canceller {
    fn new<T>(token: CancelToken, tls: T) -> Self
    where
        T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
        T::Stream: Send,
        T::TlsConnect: Send,
        <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
    {
        Canceller(Arc::new(move || {
            let (token, tls) = (token.clone(), tls.clone());
            Box::pin(async move {
                if let Err(error) = token.cancel_query(tls).await {
                    tracing::debug!(%error, "cancel request failed");
                }
            })
        }))
    }

    fn for_tls(token: CancelToken, tls: &Tls) -> Self {
        match tls {
            Tls::Plain => Canceller::new(token, NoTls),
            Tls::Native(connector) => Canceller::new(token, connector.clone()),
        }
    }

    async fn cancel(&self) {
        (self.0)().await
    }
}

/// A simple-query message in flight. Its results are recorded as they arrive, so that a
/// cleanup after a dropped future knows how far it got.
struct Running {
    stream: Pin<Box<SimpleQueryStream>>,
    /// The first column of every row so far, in order.
    rows: Vec<Option<String>>,
    /// The first error (a server error ends the message; its later statements do not run).
    error: Option<tokio_postgres::Error>,
    done: bool,
    /// Whether a cancel request was sent for it.
    cancelled: bool,
    sent_at: tokio::time::Instant,
}

impl Running {
    /// Sends `sql`. The message is queued on the connection before this returns (the
    /// request goes out in the first poll, which never pends).
    async fn start(client: &Client, sql: &str) -> Result<Running, tokio_postgres::Error> {
        Ok(Running {
            stream: Box::pin(client.simple_query_raw(sql).await?),
            rows: Vec::new(),
            error: None,
            done: false,
            cancelled: false,
            sent_at: tokio::time::Instant::now(),
        })
    }

    /// Reads the rest of the results. Cancel-safe: what was read is kept.
    async fn finish(&mut self) {
        while !self.done {
            match self.stream.next().await {
                None => self.done = true,
                Some(Ok(SimpleQueryMessage::Row(row))) => {
                    self.rows
                        .push(row.try_get(0).ok().flatten().map(str::to_owned));
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => {
                    // A server error is followed by the end of the message; anything else
                    // (the connection closed) ends it here.
                    let from_server = error.as_db_error().is_some();
                    self.error.get_or_insert(error);
                    if !from_server {
                        self.done = true;
                    }
                }
            }
        }
    }

    /// The value of row `index` (in statement order), if it arrived.
    fn row(&self, index: usize) -> Option<&str> {
        self.rows.get(index).and_then(|value| value.as_deref())
    }

    /// Cancels the statement on the server until it has ended. The first request waits
    /// until [`CANCEL_DELAY`] after the statement was sent, unless the statement ends
    /// first; then requests repeat while it runs (see [`interrupt_until_done`]).
    async fn cancel_until_finished(&mut self, canceller: &Canceller) {
        if self.finish().now_or_never().is_some() {
            return;
        }
        let settle = self.sent_at + CANCEL_DELAY;
        if tokio::time::timeout_at(settle, self.finish()).await.is_ok() {
            return;
        }
        self.cancelled = true;
        let finishing = self.finish();
        tokio::pin!(finishing);
        interrupt_until_done(finishing, || canceller.cancel()).await;
    }
}

/// What to do after an acquire future was dropped mid-statement.
trait Cleanup: Send + Sized + 'static {
    /// Called synchronously when the future is dropped: notes a release under way, so that
    /// this process's next acquire of the same lock waits for the cleanup.
    fn note_release(&self) -> Option<PendingRelease>;

    /// Runs once the statement has ended (after any cancel).
    fn after(self, running: Running) -> impl Future<Output = ()> + Send;
}

impl Cleanup for () {
    fn note_release(&self) -> Option<PendingRelease> {
        None
    }

    async fn after(self, _running: Running) {}
}

/// Owns a statement in flight; if dropped before being disarmed, a background task cancels
/// the statement on the server (when `canceller` is set), waits for its end, then runs the
/// cleanup.
struct Guard<C: Cleanup> {
    state: Option<(Running, C)>,
    canceller: Option<Canceller>,
}

impl<C: Cleanup> Guard<C> {
    fn new(running: Running, canceller: Option<Canceller>, cleanup: C) -> Self {
        Guard {
            state: Some((running, cleanup)),
            canceller,
        }
    }

    /// Waits for the statement to end.
    async fn finish(&mut self) {
        if let Some((running, _)) = &mut self.state {
            running.finish().await;
        }
    }

    /// The finished statement and the cleanup, which is now the caller's business.
    fn disarm(mut self) -> (Running, C) {
        self.state.take().expect("a guard is disarmed once")
    }
}

impl<C: Cleanup> Drop for Guard<C> {
    fn drop(&mut self) {
        let Some((mut running, cleanup)) = self.state.take() else {
            return;
        };
        let pending = cleanup.note_release();
        let canceller = self.canceller.take();
        spawn_release(async move {
            let _pending = pending;
            match &canceller {
                Some(canceller) => running.cancel_until_finished(canceller).await,
                None => running.finish().await,
            }
            cleanup.after(running).await;
        });
    }
}

/// A release under way in this process, noted until dropped.
type PendingRelease = Box<dyn Send>;

// ---------------------------------------------------------------------------------------------
// 1. Inside the caller's transaction.
// ---------------------------------------------------------------------------------------------

/// The statement that waits for a transaction-level lock in the server and keeps the caller's
/// transaction usable whatever happens, in one round trip.
///
/// The wait runs in a subtransaction (the inner `BEGIN … EXCEPTION` block): on
/// `lock_timeout`, a cancel or a deadlock it is rolled back, and with it the `lock_timeout`
/// we set and a lock granted in a race with the timeout. On success the caller's
/// `lock_timeout` is put back explicitly. The outer block is a second subtransaction that
/// catches a cancel request landing just outside the wait: it rolls back everything this
/// statement did, the lock included. After a cancel, the statement absorbs a late second
/// signal of the same request (see [`ABSORB_SECONDS`]). The outcome (`true`, `false`,
/// `canceled`, `deadlock`) is left in the placeholder setting `tollgate.acquired`, local to
/// the transaction, and read by the `SELECT` that follows.
fn transaction_wait_sql(key: AdvisoryKey, mode: Mode, timeout_ms: u64) -> String {
    let (suffix, args) = (suffix(mode), key_args(key));
    format!(
        "DO $tollgate$ \
         DECLARE \
           saved text := current_setting('lock_timeout'); \
           outcome text := 'false'; \
         BEGIN \
           BEGIN \
             BEGIN \
               PERFORM set_config('lock_timeout', '{timeout_ms}', true); \
               PERFORM pg_advisory_xact_lock{suffix}({args}); \
               PERFORM set_config('lock_timeout', saved, true); \
               outcome := 'true'; \
             EXCEPTION \
               WHEN lock_not_available THEN outcome := 'false'; \
               WHEN query_canceled THEN outcome := 'canceled'; \
               WHEN deadlock_detected THEN outcome := 'deadlock'; \
             END; \
             IF outcome = 'canceled' THEN PERFORM pg_sleep({ABSORB_SECONDS}); END IF; \
             PERFORM set_config('tollgate.acquired', outcome, true); \
           EXCEPTION WHEN query_canceled THEN \
             BEGIN \
               PERFORM pg_sleep({ABSORB_SECONDS}); \
             EXCEPTION WHEN query_canceled THEN NULL; \
             END; \
             PERFORM set_config('tollgate.acquired', 'canceled', true); \
           END; \
         END $tollgate$; \
         SELECT current_setting('tollgate.acquired')"
    )
}

/// Takes a transaction-level advisory lock on `key` inside the caller's transaction:
/// `pg_advisory_xact_lock` (or its `_shared` form when `shared`), waiting in the server as
/// `wait` says, or `pg_try_advisory_xact_lock` for a zero wait.
///
/// `Ok(true)`: the transaction holds the lock until it commits or rolls back (there is no
/// way to release it earlier). `Ok(false)`: the wait ran out; the transaction holds nothing
/// new. This is the mode that works through PgBouncer in transaction pooling.
///
/// - The caller's transaction stays usable after a timeout, a deadlock
///   ([`Error::Deadlock`]) or a cancel: the wait runs in a subtransaction that catches them.
/// - The caller's `lock_timeout` (say `SET LOCAL lock_timeout = '7s'`) reads back unchanged
///   afterwards, whatever the outcome.
/// - One round trip: a `DO` block and a `SELECT` of its outcome.
/// - PostgreSQL's advisory locks are re-entrant within a session: if the transaction (or its
///   session) already holds the key, this succeeds at once. Both holds end no earlier than
///   the transaction, so nothing is lost, but this is no test of whether someone else holds
///   the lock.
/// - A statement that fails for another reason (the connection broke, the transaction was
///   already aborted) is an [`Error::Backend`]; a `statement_timeout` or someone else's
///   cancel request that ends the wait is an [`Error::Backend`] too, and leaves the
///   transaction usable.
///
/// Cancel requests (see [below](#cancel-safety)) go out unencrypted; see the
/// [module documentation](self#tls) and [`lock_in_transaction_with_tls`].
///
/// # Cancel safety
/// Dropping the future mid-wait sends a cancel request for the session (on a background
/// task, no earlier than 25 ms after the statement was sent, repeated until the statement has
/// ended), so the server stops waiting; the subtransactions catch the cancel, and the
/// transaction stays usable. Statements the caller sends meanwhile run after the cancelled
/// one, which lingers 20 ms after a cancel (see the
/// [module documentation](self#how-a-wait-is-cancelled)). What is left behind depends on
/// when the cancel arrives:
/// - while the statement runs (the usual case: it is waiting): nothing; a lock granted an
///   instant before the cancel is rolled back with the subtransaction;
/// - after the statement has finished (the grant raced with the drop): the transaction holds
///   the lock until it ends, since a transaction-level lock cannot be given back early, and
///   the late cancel request may interrupt the caller's next statement on the connection.
///   Roll back if you must be sure.
///
/// The `lock_timeout` is the caller's again in every case. A zero wait sends no cancel: its
/// single attempt cannot block, and it may have taken the lock if the future was dropped
/// after it was sent.
pub async fn lock_in_transaction(
    transaction: &Transaction<'_>,
    key: AdvisoryKey,
    shared: bool,
    wait: Wait,
) -> Result<bool> {
    lock_in_transaction_with_tls(transaction, key, shared, wait, NoTls).await
}

/// [`lock_in_transaction`] for a lock given by name: the name becomes a key as in
/// [`AdvisoryKey::from_name`] with hashing allowed, the same key the pooled provider and
/// DistributedLock use for that name. Errors name the lock by `name`.
///
/// # Cancel safety
/// As [`lock_in_transaction`].
pub async fn lock_name_in_transaction(
    transaction: &Transaction<'_>,
    name: &str,
    shared: bool,
    wait: Wait,
) -> Result<bool> {
    let key = AdvisoryKey::from_name(name, true)?;
    let canceller = Canceller::new(transaction.cancel_token(), NoTls);
    in_transaction(transaction, name, key, mode_of(shared), wait, canceller).await
}

/// [`lock_in_transaction`], sending its cancel requests with `tls` (the connector the
/// connection was made with), for connections configured with `sslmode=require`.
///
/// # Cancel safety
/// As [`lock_in_transaction`].
pub async fn lock_in_transaction_with_tls<T>(
    transaction: &Transaction<'_>,
    key: AdvisoryKey,
    shared: bool,
    wait: Wait,
    tls: T,
) -> Result<bool>
where
    T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
    T::Stream: Send,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    let canceller = Canceller::new(transaction.cancel_token(), tls);
    let name = format!("{key:#}");
    in_transaction(transaction, &name, key, mode_of(shared), wait, canceller).await
}

async fn in_transaction(
    transaction: &Transaction<'_>,
    name: &str,
    key: AdvisoryKey,
    mode: Mode,
    wait: Wait,
    canceller: Canceller,
) -> Result<bool> {
    let client = transaction.client();
    let timeout_ms = match ServerWait::new(wait, wait.deadline()) {
        ServerWait::Try => {
            let sql = format!(
                "SELECT pg_try_advisory_xact_lock{}({})",
                suffix(mode),
                key_args(key)
            );
            let mut running = Running::start(client, &sql)
                .await
                .map_err(|error| backend_error(format!("cannot try-lock {name:?}"), error))?;
            running.finish().await;
            if let Some(error) = running.error {
                return Err(backend_error(format!("cannot try-lock {name:?}"), error));
            }
            return Ok(running.row(0) == Some("t"));
        }
        ServerWait::Timeout(timeout_ms) => timeout_ms,
    };
    let sql = transaction_wait_sql(key, mode, timeout_ms);
    let running = Running::start(client, &sql)
        .await
        .map_err(|error| backend_error(format!("cannot lock {name:?}"), error))?;
    let mut guard = Guard::new(running, Some(canceller), ());
    guard.finish().await;
    let (running, ()) = guard.disarm();
    match running.error {
        Some(error) => Err(wait_error(name, error)),
        None => recorded_outcome(name, running.row(0)),
    }
}

// ---------------------------------------------------------------------------------------------
// 2. In a transaction tollgate owns.
// ---------------------------------------------------------------------------------------------

/// Creates locks that are held by a transaction of their own: each hold opens (or reuses) a
/// connection, runs `BEGIN`, takes `pg_advisory_xact_lock` and keeps the transaction open
/// until the handle is released (`ROLLBACK`). Cheap to clone: clones share idle connections.
///
/// Because every hold is one transaction on one server connection, this mode works through
/// PgBouncer in **transaction pooling** mode, where session-level advisory locks (the pooled
/// [`PostgresProvider`](super::PostgresProvider)) do not. The price: each held lock keeps a
/// connection (and a transaction) to itself, so N locks held at once need N connections;
/// up to `pool_size` idle connections are kept for reuse.
///
/// When the connection of a held lock ends, the handle's loss signal fires as soon as the
/// client sees it: at once when the server ends it (`pg_terminate_backend`, a restart);
/// after a silent network failure, when TCP notices (see the `keepalives` options of the
/// connection string). The server releases the lock when the session ends.
#[derive(Clone)]
pub struct TransactionLockProvider {
    sessions: Arc<Sessions>,
    allow_hashing: bool,
}

impl std::fmt::Debug for TransactionLockProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransactionLockProvider")
            .field("sessions", &self.sessions)
            .finish()
    }
}

impl TransactionLockProvider {
    /// A provider from a connection URL or `key=value` string, read exactly as
    /// [`PostgresProvider::builder`](super::PostgresProvider::builder) reads it (`sslmode`,
    /// `pool_size`, which here is the number of idle connections kept; `keepalive` is
    /// ignored: an open transaction is watched by its connection).
    pub fn from_url(url: &str) -> Result<Self> {
        Self::from_builder(super::PostgresProvider::builder(url)?)
    }

    /// A provider with the connection settings of a [`PostgresProviderBuilder`] (its
    /// `pool_size` is the number of idle connections kept; keepalive is ignored).
    pub fn from_builder(builder: PostgresProviderBuilder) -> Result<Self> {
        if builder.pool_size == 0 {
            return Err(Error::invalid("postgres pool size must be at least 1"));
        }
        Ok(TransactionLockProvider {
            sessions: Arc::new(sessions(builder.config, builder.tls, builder.pool_size)),
            allow_hashing: builder.allow_hashing,
        })
    }

    /// A provider from a `tokio_postgres` configuration, over unencrypted connections (its
    /// `ssl_mode` must not be `Require`), keeping up to 16 idle connections.
    pub fn new(config: tokio_postgres::Config) -> Self {
        TransactionLockProvider {
            sessions: Arc::new(sessions(config, Tls::Plain, super::DEFAULT_POOL_SIZE)),
            allow_hashing: true,
        }
    }

    /// The lock on an explicit key (its name is the key in hex).
    pub fn lock_with_key(&self, key: AdvisoryKey) -> TransactionLock {
        TransactionLock {
            name: format!("{key:#}"),
            key,
            sessions: self.sessions.clone(),
        }
    }

    /// How many idle connections are kept for the next acquire.
    pub fn idle_connections(&self) -> usize {
        self.sessions.idle_count()
    }
}

impl LockProvider for TransactionLockProvider {
    type Lock = TransactionLock;

    /// The lock called `name` (hashed to a key when it is not a DistributedLock exact form,
    /// unless the builder turned hashing off).
    fn lock(&self, name: &str) -> Result<TransactionLock> {
        Ok(TransactionLock {
            name: name.to_owned(),
            key: AdvisoryKey::from_name(name, self.allow_hashing)?,
            sessions: self.sessions.clone(),
        })
    }
}

/// The protocol of the owned transactions' sessions.
struct Owned {
    config: tokio_postgres::Config,
    tls: Tls,
}

/// Sessions for owned transactions, each dedicated to one transaction at a time.
type Sessions = pool::Pool<Owned>;
type Reservation = pool::Reservation<Owned>;
type Held = pool::Held<Owned>;

/// As many sessions as transactions are held (each holds one), and up to `max_idle` idle ones
/// kept for reuse. No keepalive: an open transaction is watched by its connection.
fn sessions(config: tokio_postgres::Config, tls: Tls, max_idle: usize) -> Sessions {
    Sessions::new(
        Owned { config, tls },
        pool::Settings {
            max_sessions: usize::MAX,
            holds_per_session: usize::MAX,
            max_idle: Some(max_idle),
            keepalive: None,
            idle_timeout: None,
        },
    )
}

/// One connection of a [`TransactionLockProvider`].
struct Session {
    client: Client,
    canceller: Canceller,
}

impl pool::Protocol for Owned {
    type Key = AdvisoryKey;
    type Session = Session;

    const BACKEND: &'static str = BACKEND;

    async fn open(&self) -> Result<(Session, Option<pool::Ended>)> {
        let (client, driver) = match &self.tls {
            Tls::Plain => {
                let (client, connection) = self
                    .config
                    .connect(NoTls)
                    .await
                    .map_err(|error| backend_error("cannot connect", error))?;
                (client, tokio::spawn(connection))
            }
            Tls::Native(connector) => {
                let (client, connection) = self
                    .config
                    .connect(connector.clone())
                    .await
                    .map_err(|error| backend_error("cannot connect", error))?;
                (client, tokio::spawn(connection))
            }
        };
        let ended: pool::Ended = Box::pin(async move {
            if let Ok(Err(error)) = driver.await {
                tracing::debug!(%error, "postgres connection of an owned transaction ended");
            }
        });
        let session = Session {
            canceller: Canceller::for_tls(client.cancel_token(), &self.tls),
            client,
        };
        Ok((session, Some(ended)))
    }

    fn is_closed(session: &Session) -> bool {
        session.client.is_closed()
    }

    async fn ping(session: &Session) -> bool {
        session.client.simple_query("SELECT 1").await.is_ok()
    }

    fn abandon(_session: &Session) {}
}

/// Ends a session's transaction (`ROLLBACK`, retried if a stray cancel request interrupts
/// it). A session that ended has ended its transaction too.
async fn end_transaction(session: &pool::Pooled<Owned>) -> Result<(), tokio_postgres::Error> {
    if session.is_broken() {
        return Ok(());
    }
    let mut attempt = 1;
    loop {
        match session.client.batch_execute("ROLLBACK").await {
            Ok(()) => return Ok(()),
            Err(error) if error.is_closed() => return Ok(()),
            Err(error) if sqlstate(&error) == Some("57014") && attempt < CLEANUP_ATTEMPTS => {
                attempt += 1
            }
            Err(error) => return Err(error),
        }
    }
}

/// Ends the reservation's transaction, and gives the session back for reuse if `reuse`. A
/// session that cannot roll back is closed, which ends its transaction in the server.
async fn end_reserved(reservation: Reservation, reuse: bool) -> Result<(), tokio_postgres::Error> {
    let ended = end_transaction(reservation.session()).await;
    if ended.is_err() || !reuse {
        reservation.retire();
    }
    ended
}

/// An exclusive advisory lock held by a transaction tollgate owns; from
/// [`TransactionLockProvider`].
#[derive(Clone, Debug)]
pub struct TransactionLock {
    name: String,
    key: AdvisoryKey,
    sessions: Arc<Sessions>,
}

impl TransactionLock {
    /// The advisory lock key.
    pub fn key(&self) -> AdvisoryKey {
        self.key
    }
}

/// What a dropped acquire of a [`TransactionLock`] leaves to clean up.
struct OwnedCleanup {
    reservation: Reservation,
    key: AdvisoryKey,
}

impl Cleanup for OwnedCleanup {
    fn note_release(&self) -> Option<PendingRelease> {
        Some(Box::new(self.reservation.pool().note(vec![self.key])))
    }

    async fn after(self, running: Running) {
        // A session that was sent a cancel request is not reused: the request may still be on
        // its way and would interrupt the next user's statement.
        let reuse = !running.cancelled;
        if let Err(error) = end_reserved(self.reservation, reuse).await {
            tracing::warn!(%error, "rollback after an abandoned acquire failed");
        }
    }
}

impl Acquire for TransactionLock {
    type Handle = TransactionLockHandle;

    fn name(&self) -> &str {
        &self.name
    }

    /// Opens (or reuses) a connection, runs `BEGIN` and takes `pg_advisory_xact_lock`
    /// (`pg_try_advisory_xact_lock` for a zero wait), waiting in the server under a local
    /// `lock_timeout`, in one round trip. When the wait runs out the transaction is rolled
    /// back (which also drops a lock granted in a race with the timeout) and the connection
    /// is kept for reuse. Opening a connection is not bounded by `wait` (the configuration's
    /// `connect_timeout` is).
    ///
    /// # Cancel safety
    /// Cancel-safe: a dropped future sends a cancel request for the waiting statement, then
    /// rolls the transaction back, on a background task, so nothing stays held (a lock
    /// granted in the race goes with the rollback). A connection that was sent a cancel
    /// request is closed rather than reused. This process's next acquire of the same lock
    /// waits for that cleanup.
    async fn acquire_wait(&self, wait: Wait) -> Result<Option<TransactionLockHandle>> {
        let deadline = wait.deadline();
        let sessions = &self.sessions;
        sessions
            .wait_for_releases(std::slice::from_ref(&self.key))
            .await;
        let args = key_args(self.key);
        let mut attempt = 1;
        let (reservation, running, server_wait) = loop {
            let reservation = sessions
                .reserve(vec![self.key], Use::Dedicated)
                .await?
                .ok_or_else(|| other_error("no session for a transaction", "pool had none"))?;
            let server_wait = ServerWait::new(wait, deadline);
            let sql = match server_wait {
                ServerWait::Try => format!("BEGIN; SELECT pg_try_advisory_xact_lock({args})"),
                ServerWait::Timeout(ms) => format!(
                    "BEGIN; SET LOCAL lock_timeout = {ms}; SELECT pg_advisory_xact_lock({args})"
                ),
            };
            match Running::start(&reservation.session().client, &sql).await {
                Ok(running) => break (reservation, running, server_wait),
                // An idle connection that closed a moment ago: take another.
                Err(error) if error.is_closed() && attempt < CLEANUP_ATTEMPTS => attempt += 1,
                Err(error) => {
                    return Err(backend_error(format!("cannot lock {:?}", self.name), error))
                }
            }
        };
        let canceller =
            (server_wait != ServerWait::Try).then(|| reservation.session().canceller.clone());
        let cleanup = OwnedCleanup {
            reservation,
            key: self.key,
        };
        let mut guard = Guard::new(running, canceller, cleanup);
        guard.finish().await;
        let (running, OwnedCleanup { reservation, .. }) = guard.disarm();
        let acquired = match running.error {
            None if server_wait == ServerWait::Try => running.row(0) == Some("t"),
            None => true,
            // The transaction is aborted: the rollback below also gives back a lock that
            // was granted in a race with the timeout.
            Some(error) if sqlstate(&error) == Some("55P03") => false,
            Some(error) => {
                let _ = end_reserved(reservation, true).await;
                return Err(wait_error(&self.name, error));
            }
        };
        if !acquired {
            end_reserved(reservation, true)
                .await
                .map_err(|error| backend_error("cannot roll back after a timeout", error))?;
            return Ok(None);
        }
        let (held, loss) = reservation.into_held(&self.key, Use::Dedicated);
        Ok(Some(TransactionLockHandle {
            hold: Shell::new(OwnedHold {
                name: self.name.clone(),
                key: self.key,
                held,
                sessions: sessions.clone(),
            }),
            loss,
        }))
    }
}

impl Lock for TransactionLock {}

/// A lock held by a transaction tollgate owns. Releasing rolls the transaction back (the
/// lock goes with it) and keeps the connection for reuse; dropping does the same on a
/// background task.
#[must_use = "dropping the handle releases it"]
pub struct TransactionLockHandle {
    hold: Shell<OwnedHold>,
    loss: LossSignal,
}

/// A transaction that holds a lock.
struct OwnedHold {
    name: String,
    key: AdvisoryKey,
    held: Held,
    sessions: Arc<Sessions>,
}

impl Release for OwnedHold {
    type Note = Note<AdvisoryKey>;

    fn name(&self) -> &str {
        &self.name
    }

    fn note(&self) -> Note<AdvisoryKey> {
        self.sessions.note(vec![self.key])
    }

    /// A session that cannot roll back is retired (dropping `held`), which closes it.
    async fn release(self) -> Result<()> {
        end_transaction(self.held.session())
            .await
            .map_err(|error| backend_error(format!("cannot release {:?}", self.name), error))?;
        self.held.released();
        Ok(())
    }
}

impl std::fmt::Debug for TransactionLockHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hold = self.hold.get();
        f.debug_struct("TransactionLockHandle")
            .field("name", &hold.name)
            .field("key", &hold.key)
            .finish()
    }
}

impl Handle for TransactionLockHandle {
    /// Rolls the transaction back, which releases the lock.
    ///
    /// # Cancel safety
    /// Dropping the future still releases: the rest runs on tollgate's runtime.
    async fn release(self) -> Result<()> {
        self.hold.release().await
    }

    fn name(&self) -> &str {
        &self.hold.get().name
    }

    /// Fires as soon as the connection holding the transaction ends.
    fn loss_signal(&self) -> LossSignal {
        self.loss.clone()
    }

    /// Advisory locks carry no counter to draw a token from.
    fn fencing_token(&self) -> Option<u64> {
        None
    }
}

// ---------------------------------------------------------------------------------------------
// 3. On the caller's connection.
// ---------------------------------------------------------------------------------------------

/// Cleanups and releases on callers' connections still on their way to the server, by
/// (connection, key).
static CONNECTION_RELEASES: LazyLock<Arc<ReleaseNotes<(usize, AdvisoryKey)>>> =
    LazyLock::new(Arc::default);

/// The identity of a caller's connection (stable while anyone holds the `Arc`).
fn connection_id(client: &Arc<Client>) -> usize {
    Arc::as_ptr(client) as usize
}

/// The message that takes a session-level lock on the caller's connection, in one round trip:
/// 1. whether this session already holds the key, in either mode (`tollgate.held`, also
///    returned as the first row, so that a cleanup knows it even if the rest fails);
/// 2. a `DO` block that, unless it does, takes the lock: a try, or a wait in a
///    subtransaction under a local `lock_timeout` that is put back afterwards (by the
///    subtransaction's rollback on failure). A session-level lock survives that rollback, so
///    after a timeout or a cancel it checks `pg_locks` and reports a lock granted in the race
///    as acquired. An outer subtransaction catches a cancel request that lands just outside
///    the wait, in the same way; after a cancel, the block absorbs a late second signal of
///    the same request (see [`ABSORB_SECONDS`]);
/// 3. the outcome: `held`, `true`, `false`, `canceled` or `deadlock`.
///
/// The settings are local to the (implicit or caller's) transaction; the DO block catches
/// its errors, so a caller's transaction stays usable.
fn connection_sql(key: AdvisoryKey, mode: Mode, server_wait: ServerWait) -> String {
    let (suffix, args) = (suffix(mode), key_args(key));
    let held = format!(
        "({}) OR ({})",
        granted_condition(key, Mode::Exclusive),
        granted_condition(key, Mode::Shared)
    );
    let granted = granted_condition(key, mode);
    let attempt = match server_wait {
        ServerWait::Try => {
            format!("IF pg_try_advisory_lock{suffix}({args}) THEN outcome := 'true'; END IF;")
        }
        ServerWait::Timeout(timeout_ms) => format!(
            "BEGIN \
               PERFORM set_config('lock_timeout', '{timeout_ms}', true); \
               PERFORM pg_advisory_lock{suffix}({args}); \
               PERFORM set_config('lock_timeout', saved, true); \
               outcome := 'true'; \
             EXCEPTION \
               WHEN lock_not_available OR query_canceled THEN \
                 canceled := SQLSTATE = '57014'; \
                 IF EXISTS (SELECT 1 FROM pg_locks WHERE {granted}) THEN \
                   outcome := 'true'; \
                 ELSIF canceled THEN \
                   outcome := 'canceled'; \
                 END IF; \
               WHEN deadlock_detected THEN outcome := 'deadlock'; \
             END;"
        ),
    };
    format!(
        "SELECT set_config('tollgate.held', EXISTS (SELECT 1 FROM pg_locks WHERE {held})::text, true); \
         DO $tollgate$ \
         DECLARE \
           saved text := current_setting('lock_timeout'); \
           outcome text := 'false'; \
           canceled boolean := false; \
         BEGIN \
           BEGIN \
             IF current_setting('tollgate.held') = 'true' THEN \
               outcome := 'held'; \
             ELSE \
               {attempt} \
             END IF; \
             IF canceled THEN PERFORM pg_sleep({ABSORB_SECONDS}); END IF; \
             PERFORM set_config('tollgate.acquired', outcome, true); \
           EXCEPTION WHEN query_canceled THEN \
             BEGIN \
               PERFORM pg_sleep({ABSORB_SECONDS}); \
             EXCEPTION WHEN query_canceled THEN NULL; \
             END; \
             IF current_setting('tollgate.held') = 'true' THEN \
               outcome := 'held'; \
             ELSIF EXISTS (SELECT 1 FROM pg_locks WHERE {granted}) THEN \
               outcome := 'true'; \
             ELSE \
               outcome := 'canceled'; \
             END IF; \
             PERFORM set_config('tollgate.acquired', outcome, true); \
           END; \
         END $tollgate$; \
         SELECT current_setting('tollgate.acquired')"
    )
}

/// Whether the statement may have left the lock taken by this call: the session did not hold
/// it before, and the outcome is not a definite "not taken".
fn may_have_taken(running: &Running) -> bool {
    running.row(0) == Some("false")
        && !(running.error.is_none()
            && matches!(running.row(1), Some("false" | "canceled" | "deadlock")))
}

/// `pg_advisory_unlock` of `key` in `mode` if this session holds it, retried if a stray cancel
/// request interrupts it.
async fn unlock_if_held(
    client: &Client,
    key: AdvisoryKey,
    mode: Mode,
) -> Result<(), tokio_postgres::Error> {
    let sql = format!(
        "SELECT pg_advisory_unlock{}({}) FROM pg_locks WHERE {}",
        suffix(mode),
        key_args(key),
        granted_condition(key, mode)
    );
    let mut attempt = 1;
    loop {
        match client.simple_query(&sql).await {
            Ok(_) => return Ok(()),
            Err(error) if error.is_closed() => return Ok(()),
            Err(error) if sqlstate(&error) == Some("57014") && attempt < CLEANUP_ATTEMPTS => {
                attempt += 1
            }
            Err(error) => return Err(error),
        }
    }
}

/// What a dropped acquire on a caller's connection leaves to clean up.
struct ConnectionCleanup {
    client: Arc<Client>,
    key: AdvisoryKey,
    mode: Mode,
}

impl Cleanup for ConnectionCleanup {
    fn note_release(&self) -> Option<PendingRelease> {
        Some(Box::new(
            CONNECTION_RELEASES.note(vec![(connection_id(&self.client), self.key)]),
        ))
    }

    async fn after(self, running: Running) {
        if may_have_taken(&running) {
            if let Err(error) = unlock_if_held(&self.client, self.key, self.mode).await {
                tracing::warn!(%error, "unlock after an abandoned acquire failed");
            }
        }
    }
}

/// Takes a session-level advisory lock on `key` on the caller's own connection
/// (`pg_advisory_lock`, or its `_shared` form when `shared`), waiting in the server as `wait`
/// says: `Ok(Some(handle))` once held, `Ok(None)` when the wait ran out. The handle unlocks
/// when released or dropped.
///
/// - **Not re-entrant**, unlike PostgreSQL's advisory locks: if this session already holds
///   the key (in either mode, taken by any means), a zero wait is `Ok(None)`, an unbounded
///   wait is [`Error::Deadlock`] (it would wait for itself), and a bounded wait waits out its
///   time (there is nothing the server could wait for), then makes one last attempt, which
///   succeeds only if the session has let go of the key meanwhile.
/// - The session's `lock_timeout` reads back unchanged afterwards. The check and the lock
///   take one round trip (three statements in one message).
/// - The statement catches its own errors, so the connection may be inside a transaction of
///   the caller's, which stays usable; the lock is session-level all the same (it outlives
///   that transaction). Deadlock (40P01) is [`Error::Deadlock`]; a `lock_timeout` that raced
///   with the grant counts as acquired.
/// - The connection is the caller's: a wait blocks every other statement sent on it
///   meanwhile, and [`Handle::loss_signal`] fires only if the caller keeps driving the
///   connection (the `Connection` future) and it closes.
/// - Its socket belongs to the runtime that opened it: a call made through the
///   [blocking API](crate::blocking) from the only thread of that runtime (a current-thread
///   runtime) waits for a connection nothing can drive, and never returns. tollgate cannot
///   see which runtime drives a caller's connection; open such connections on another runtime.
///
/// Cancel requests go out unencrypted; see the [module documentation](self#tls) and
/// [`lock_on_connection_with_tls`].
///
/// # Cancel safety
/// Cancel-safe: dropping the future mid-wait sends a cancel request for the session (on a
/// background task, repeated until the statement has ended), then unlocks the key if the
/// statement took it (a grant that raced with the cancel), with a query queued after the
/// cancelled one. This process's next `lock_on_connection` of the same key on the same
/// connection waits for that cleanup. A cancel request that arrives after the statement has
/// ended may interrupt the connection's next statement (see the
/// [module documentation](self#how-a-wait-is-cancelled)).
pub async fn lock_on_connection(
    client: Arc<Client>,
    key: AdvisoryKey,
    shared: bool,
    wait: Wait,
) -> Result<Option<ConnectionLockHandle>> {
    lock_on_connection_with_tls(client, key, shared, wait, NoTls).await
}

/// [`lock_on_connection`] for a lock given by name (see [`lock_name_in_transaction`]).
///
/// # Cancel safety
/// As [`lock_on_connection`].
pub async fn lock_name_on_connection(
    client: Arc<Client>,
    name: &str,
    shared: bool,
    wait: Wait,
) -> Result<Option<ConnectionLockHandle>> {
    let key = AdvisoryKey::from_name(name, true)?;
    let canceller = Canceller::new(client.cancel_token(), NoTls);
    on_connection(
        client,
        name.to_owned(),
        key,
        mode_of(shared),
        wait,
        canceller,
    )
    .await
}

/// [`lock_on_connection`], sending its cancel requests with `tls` (the connector the
/// connection was made with), for connections configured with `sslmode=require`.
///
/// # Cancel safety
/// As [`lock_on_connection`].
pub async fn lock_on_connection_with_tls<T>(
    client: Arc<Client>,
    key: AdvisoryKey,
    shared: bool,
    wait: Wait,
    tls: T,
) -> Result<Option<ConnectionLockHandle>>
where
    T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
    T::Stream: Send,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    let canceller = Canceller::new(client.cancel_token(), tls);
    let name = format!("{key:#}");
    on_connection(client, name, key, mode_of(shared), wait, canceller).await
}

async fn on_connection(
    client: Arc<Client>,
    name: String,
    key: AdvisoryKey,
    mode: Mode,
    wait: Wait,
    canceller: Canceller,
) -> Result<Option<ConnectionLockHandle>> {
    let deadline = wait.deadline();
    let id = connection_id(&client);
    let mut server_wait = ServerWait::new(wait, deadline);
    loop {
        CONNECTION_RELEASES.wait(&[(id, key)]).await;
        let sql = connection_sql(key, mode, server_wait);
        let running = Running::start(&client, &sql)
            .await
            .map_err(|error| backend_error(format!("cannot lock {name:?}"), error))?;
        let canceller = (server_wait != ServerWait::Try).then(|| canceller.clone());
        let cleanup = ConnectionCleanup {
            client: client.clone(),
            key,
            mode,
        };
        let mut guard = Guard::new(running, canceller, cleanup);
        guard.finish().await;
        let (running, _cleanup) = guard.disarm();
        if running.error.is_some() && may_have_taken(&running) {
            // The statement failed after the check, before reporting its outcome.
            if let Err(error) = unlock_if_held(&client, key, mode).await {
                tracing::warn!(%error, "unlock after a failed lock statement failed");
            }
        }
        if let Some(error) = running.error {
            return Err(wait_error(&name, error));
        }
        match running.row(1) {
            Some("held") => match (wait, deadline) {
                (Wait::Forever, _) | (_, None) => return Err(Error::Deadlock { name }),
                _ if server_wait == ServerWait::Try => return Ok(None),
                (_, Some(deadline)) => {
                    // Nothing to wait for in the server: this session is the holder.
                    tokio::time::sleep_until(deadline).await;
                    server_wait = ServerWait::Try;
                    continue;
                }
            },
            outcome => {
                return Ok(recorded_outcome(&name, outcome)?
                    .then(|| ConnectionLockHandle::new(client, name, key, mode)));
            }
        }
    }
}

/// A session-level advisory lock on a caller's connection, from [`lock_on_connection`].
/// Releasing runs `pg_advisory_unlock`; dropping does the same on a background task (and
/// this process's next [`lock_on_connection`] of the key on that connection waits for it).
#[must_use = "dropping the handle releases it"]
pub struct ConnectionLockHandle {
    hold: Shell<ConnectionHold>,
    loss: LossSignal,
}

/// An advisory lock on a caller's connection.
struct ConnectionHold {
    client: Arc<Client>,
    name: String,
    key: AdvisoryKey,
    mode: Mode,
    /// Dropping it stops the task that watches the connection.
    _watching: oneshot::Sender<()>,
}

impl Release for ConnectionHold {
    type Note = Note<(usize, AdvisoryKey)>;

    fn name(&self) -> &str {
        &self.name
    }

    fn note(&self) -> Self::Note {
        CONNECTION_RELEASES.note(vec![(connection_id(&self.client), self.key)])
    }

    async fn release(self) -> Result<()> {
        unlock(&self.client, self.key, self.mode, &self.name).await
    }
}

impl std::fmt::Debug for ConnectionLockHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hold = self.hold.get();
        f.debug_struct("ConnectionLockHandle")
            .field("name", &hold.name)
            .field("key", &hold.key)
            .field("mode", &hold.mode)
            .finish()
    }
}

impl ConnectionLockHandle {
    fn new(client: Arc<Client>, name: String, key: AdvisoryKey, mode: Mode) -> Self {
        let (notifier, loss) = LossSignal::detectable();
        let (watching, mut stopped) = oneshot::channel::<()>();
        let watched = Arc::downgrade(&client);
        let watch = async move {
            let mut ticks = tokio::time::interval(CONNECTION_WATCH_INTERVAL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = &mut stopped => return,
                    _ = ticks.tick() => {
                        if watched.upgrade().is_none_or(|client| client.is_closed()) {
                            notifier.notify_lost();
                            return;
                        }
                    }
                }
            }
        };
        match background() {
            Ok(runtime) => drop(runtime.spawn(watch)),
            Err(_) => drop(tokio::spawn(watch)),
        }
        ConnectionLockHandle {
            hold: Shell::new(ConnectionHold {
                client,
                name,
                key,
                mode,
                _watching: watching,
            }),
            loss,
        }
    }

    /// The advisory lock key.
    pub fn key(&self) -> AdvisoryKey {
        self.hold.get().key
    }

    /// Whether the lock is shared (`pg_advisory_lock_shared`).
    pub fn is_shared(&self) -> bool {
        self.hold.get().mode == Mode::Shared
    }
}

/// `pg_advisory_unlock`, retried if a stray cancel request interrupts it; a closed
/// connection has released everything.
async fn unlock(client: &Client, key: AdvisoryKey, mode: Mode, name: &str) -> Result<()> {
    let sql = format!(
        "SELECT pg_advisory_unlock{}({})",
        suffix(mode),
        key_args(key)
    );
    let mut attempt = 1;
    loop {
        match client.simple_query(&sql).await {
            Ok(messages) => {
                let unlocked = messages.iter().any(|message| {
                    matches!(message, SimpleQueryMessage::Row(row)
                        if row.try_get(0).ok().flatten() == Some("t"))
                });
                if !unlocked {
                    tracing::warn!(name, "advisory lock was not held at release");
                }
                return Ok(());
            }
            Err(error) if error.is_closed() => return Ok(()),
            Err(error) if sqlstate(&error) == Some("57014") && attempt < CLEANUP_ATTEMPTS => {
                attempt += 1
            }
            Err(error) => return Err(backend_error(format!("cannot release {name:?}"), error)),
        }
    }
}

impl Handle for ConnectionLockHandle {
    /// Runs `pg_advisory_unlock` on the connection.
    ///
    /// # Cancel safety
    /// Dropping the future still releases: the rest runs on tollgate's runtime.
    async fn release(self) -> Result<()> {
        self.hold.release().await
    }

    fn name(&self) -> &str {
        &self.hold.get().name
    }

    /// Fires when the caller's connection closes (looked at twice a second), provided the
    /// caller drives its `Connection` future.
    fn loss_signal(&self) -> LossSignal {
        self.loss.clone()
    }

    /// Advisory locks carry no counter to draw a token from.
    fn fencing_token(&self) -> Option<u64> {
        None
    }
}

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
//! - **Cancel-safe**: a wait runs on its own task. If the acquire future is dropped, the task
//!   cancels the query on the server, waits for its outcome, and unlocks whatever was granted
//!   in the race, so nothing stays held and no connection goes back to the pool holding a
//!   stray lock.
//! - **Multiplexing**: held locks share connections (never the same key twice on one
//!   session); at most `pool_size` sessions are opened (default 16).
//! - **Handle loss**: when a session ends (`pg_terminate_backend`, a network failure seen by
//!   the optional keepalive), every handle on it fires its loss signal; handles on other
//!   sessions are unaffected. A killed holder process frees its locks as soon as the server
//!   sees its socket close.
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

mod connection;
pub mod key;
mod listener;
mod semaphore;
pub mod transaction;

use std::sync::Arc;
use std::time::Duration;

use crate::backend::kit::completion::{interrupt_until_done, run_interruptible, Caller};
use crate::backend::kit::hold::{Release, Shell};
use crate::backend::kit::notes::Note;
use crate::backend::kit::options::UrlOptions;
use crate::backend::kit::runtime::spawn_release;
use crate::{
    Acquire, Error, Handle, Lock, LockProvider, LossSignal, ReadWriteLock, ReadWriteLockProvider,
    Result, UpgradeableHandle, UpgradeableReadWriteLock, UpgradeableReadWriteLockProvider, Wait,
};
use connection::{key_args, sqlstate, Connection, Held, Mode, Pool, Reservation, Use};
pub use key::AdvisoryKey;
pub use semaphore::PostgresSemaphore;

pub(crate) const BACKEND: &str = "postgres";
const DEFAULT_POOL_SIZE: usize = 16;
/// How long a session that holds nothing stays open by default.
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The URL options tokio-postgres reads (0.7.18's `Config::param`), handed on to it;
/// tollgate reads `sslmode` itself.
const PASSED_ON: &[&str] = &[
    "user",
    "password",
    "dbname",
    "options",
    "application_name",
    "sslnegotiation",
    "host",
    "hostaddr",
    "port",
    "connect_timeout",
    "tcp_user_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_retries",
    "target_session_attrs",
    "channel_binding",
    "load_balance_hosts",
];

/// How connections are encrypted.
#[derive(Clone)]
pub(crate) enum Tls {
    Plain,
    Native(postgres_native_tls::MakeTlsConnector),
}

/// Configures a [`PostgresProvider`].
#[derive(Clone)]
pub struct PostgresProviderBuilder {
    config: tokio_postgres::Config,
    tls: Tls,
    pool_size: usize,
    keepalive: Option<Duration>,
    idle_timeout: Option<Duration>,
    allow_hashing: bool,
}

impl std::fmt::Debug for PostgresProviderBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresProviderBuilder")
            .field("hosts", &self.config.get_hosts())
            .field("pool_size", &self.pool_size)
            .field("keepalive", &self.keepalive)
            .field("idle_timeout", &self.idle_timeout)
            .finish()
    }
}

impl PostgresProviderBuilder {
    /// At most this many sessions (default 16). Held locks share sessions; each wait that
    /// cannot be satisfied at once needs a session of its own while it waits.
    pub fn pool_size(mut self, pool_size: usize) -> Self {
        self.pool_size = pool_size;
        self
    }

    /// Runs `SELECT 1` on every idle or holding session this often, so that a silently dead
    /// connection is noticed (and its handles' loss signals fire): a ping that fails, or gets
    /// no answer within twice the interval (at least 1 s), ends the session. Off by default.
    pub fn keepalive(mut self, interval: Duration) -> Self {
        self.keepalive = Some(interval);
        self
    }

    /// Closes a session once it has held nothing for this long (default 60 s); `None` keeps
    /// every session open until the provider is dropped.
    pub fn idle_timeout(mut self, idle_timeout: Option<Duration>) -> Self {
        self.idle_timeout = idle_timeout;
        self
    }

    /// Whether names that are not a packed ASCII name or a hex key are hashed to a key
    /// (default true). Without hashing, such names are an [`Error::InvalidArgument`].
    pub fn allow_hashing(mut self, allow_hashing: bool) -> Self {
        self.allow_hashing = allow_hashing;
        self
    }

    /// The provider. Connections are opened when first needed.
    pub fn build(self) -> Result<PostgresProvider> {
        if self.pool_size == 0 {
            return Err(Error::invalid("postgres pool size must be at least 1"));
        }
        if self.keepalive.is_some_and(|interval| interval.is_zero()) {
            return Err(Error::invalid(
                "postgres keepalive interval must be above zero",
            ));
        }
        let listener = listener::Listener::new(self.config.clone(), self.tls.clone());
        if self.idle_timeout.is_some_and(|timeout| timeout.is_zero()) {
            return Err(Error::invalid("postgres idle timeout must be above zero"));
        }
        let pool = connection::new_pool(
            self.config,
            self.tls,
            self.pool_size,
            self.keepalive,
            self.idle_timeout,
        );
        Ok(PostgresProvider {
            pool: Arc::new(pool),
            listener: Arc::new(listener),
            allow_hashing: self.allow_hashing,
        })
    }
}

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
    /// A builder from a connection URL (`postgres://user:password@host:port/db`, also
    /// `postgresql://`) or a `key=value` connection string.
    ///
    /// Besides libpq's options that tokio-postgres understands, the URL may carry
    /// `sslmode` (`disable`, `prefer` (default), `require`: encrypt without verifying,
    /// `verify-full`: encrypt and verify the certificate and host name), `pool_size=N`,
    /// `keepalive=DURATION` and `idle_timeout=DURATION` (or `never`; see
    /// [`PostgresProviderBuilder::idle_timeout`]); durations as [`crate::parse_duration`]
    /// reads them (`30`, `250ms`, `5s`). Any other key is an error that names it.
    pub fn builder(url: &str) -> Result<PostgresProviderBuilder> {
        let mut pool_size = DEFAULT_POOL_SIZE;
        let mut keepalive = None;
        let mut idle_timeout = Some(DEFAULT_IDLE_TIMEOUT);
        let mut sslmode = String::from("prefer");
        let connection_string =
            if url.starts_with("postgres://") || url.starts_with("postgresql://") {
                let mut parsed = url::Url::parse(url)
                    .map_err(|error| Error::invalid(format!("bad postgres URL: {error}")))?;
                let mut options = UrlOptions::new(BACKEND, parsed.query().unwrap_or(""))?;
                pool_size = options.count("pool_size")?.unwrap_or(pool_size);
                keepalive = options.duration("keepalive")?.or(keepalive);
                idle_timeout = options
                    .duration_or_never("idle_timeout")?
                    .unwrap_or(idle_timeout);
                sslmode = options.take("sslmode").unwrap_or(sslmode);
                let kept = options.finish(PASSED_ON)?;
                if kept.is_empty() {
                    parsed.set_query(None);
                } else {
                    parsed.query_pairs_mut().clear().extend_pairs(kept);
                }
                parsed.to_string()
            } else {
                url.to_owned()
            };
        let mut config: tokio_postgres::Config = connection_string
            .parse()
            .map_err(|error| Error::invalid(format!("bad postgres connection string: {error}")))?;
        let tls = match sslmode.as_str() {
            "disable" => {
                config.ssl_mode(tokio_postgres::config::SslMode::Disable);
                Tls::Plain
            }
            "prefer" | "require" | "verify-ca" | "verify-full" => {
                let verify = sslmode.starts_with("verify");
                let connector = native_tls::TlsConnector::builder()
                    .danger_accept_invalid_certs(!verify)
                    .danger_accept_invalid_hostnames(sslmode != "verify-full")
                    .build()
                    .map_err(|error| Error::backend(BACKEND, "cannot set up TLS", error))?;
                config.ssl_mode(if sslmode == "prefer" {
                    tokio_postgres::config::SslMode::Prefer
                } else {
                    tokio_postgres::config::SslMode::Require
                });
                Tls::Native(postgres_native_tls::MakeTlsConnector::new(connector))
            }
            other => {
                return Err(Error::invalid(format!(
                    "postgres URL option sslmode={other:?}: expected disable, prefer, require, \
                     verify-ca or verify-full"
                )))
            }
        };
        if config.get_application_name().is_none() {
            config.application_name("tollgate");
        }
        Ok(PostgresProviderBuilder {
            config,
            tls,
            pool_size,
            keepalive,
            idle_timeout,
            allow_hashing: true,
        })
    }

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

/// One advisory lock a hold takes, in order.
type Step = (AdvisoryKey, Mode);

/// `SELECT` that tries every step in order and keeps all or none (one round trip).
fn try_all_sql(steps: &[Step]) -> String {
    fn nested(steps: &[Step]) -> String {
        match steps {
            [] => "true".into(),
            [(key, mode), rest @ ..] => {
                let suffix = if *mode == Mode::Shared { "_shared" } else { "" };
                let args = key_args(*key);
                if rest.is_empty() {
                    format!("pg_try_advisory_lock{suffix}({args})")
                } else {
                    format!(
                        "CASE WHEN pg_try_advisory_lock{suffix}({args}) THEN CASE WHEN {} THEN true \
                         ELSE NOT pg_advisory_unlock{suffix}({args}) END ELSE false END",
                        nested(rest)
                    )
                }
            }
        }
    }
    format!("SELECT {}", nested(steps))
}

/// Undoes a try whose future was dropped while the query was in flight: the server may have
/// granted the lock, and nobody would know. The keys stay claimed until that is undone.
struct TryGuard<'a> {
    reservation: Option<Reservation>,
    steps: &'a [Step],
}

impl TryGuard<'_> {
    /// The try's statement has ended: the reservation is the caller's again.
    fn finished(mut self) -> Reservation {
        self.reservation.take().expect("a try finishes once")
    }
}

impl Drop for TryGuard<'_> {
    fn drop(&mut self) {
        let Some(reservation) = self.reservation.take() else {
            return;
        };
        let steps = self.steps.to_vec();
        let note = reservation.pool().note(Named::keys(&steps));
        spawn_release(async move {
            let _note = note;
            // Queries run in order on a session, so this runs after the interrupted try.
            for &(key, mode) in steps.iter().rev() {
                let _ = reservation.session().unlock_if_held(key, mode).await;
            }
            drop(reservation);
        });
    }
}

impl Named {
    fn keys(steps: &[Step]) -> Vec<AdvisoryKey> {
        steps.iter().map(|(key, _)| *key).collect()
    }

    /// Acquires every step, waiting as `wait` says. A hold on a dedicated session stays
    /// dedicated when `keep_dedicated` (upgradeable reads, whose upgrade blocks the session).
    async fn acquire(
        self: &Arc<Self>,
        steps: Vec<Step>,
        wait: Wait,
        keep_dedicated: bool,
    ) -> Result<Option<Shell<Hold>>> {
        let deadline = wait.deadline();
        let keys = Self::keys(&steps);
        // A hold of ours that was just dropped is still being released: wait for that first.
        self.pool.wait_for_releases(&keys).await;
        if !keep_dedicated {
            // The fast path: one try on a shared session.
            let Some(reservation) = self.pool.reserve(keys, Use::Shared).await? else {
                return self
                    .acquire_dedicated(steps, wait, deadline, keep_dedicated)
                    .await;
            };
            let connection = reservation.session().clone();
            let trying = TryGuard {
                reservation: Some(reservation),
                steps: &steps,
            };
            let outcome = match steps.as_slice() {
                &[(key, mode)] => connection.try_lock(key, mode).await,
                _ => connection
                    .query_value(&try_all_sql(&steps))
                    .await
                    .map(|value| value.as_deref() == Some("t")),
            };
            let reservation = trying.finished();
            match outcome {
                Ok(true) => {
                    return Ok(Some(self.hold(reservation, Use::Shared, steps)));
                }
                // Not granted: the reservation goes.
                Ok(false) => {}
                Err(error) => {
                    return Err(Error::backend(
                        BACKEND,
                        format!("cannot try-lock {:?}", self.name),
                        error,
                    ));
                }
            }
            if wait == Wait::NO_WAIT {
                return Ok(None);
            }
        }
        self.acquire_dedicated(steps, wait, deadline, keep_dedicated)
            .await
    }

    /// The slow path: waits in the server on a session of its own. The wait runs as an
    /// interruptible operation: a dropped future cancels it in the server, gives back what
    /// was granted in the race, and counts as a release under way until that is done.
    async fn acquire_dedicated(
        self: &Arc<Self>,
        steps: Vec<Step>,
        wait: Wait,
        deadline: Option<tokio::time::Instant>,
        keep_dedicated: bool,
    ) -> Result<Option<Shell<Hold>>> {
        if wait == Wait::NO_WAIT && !keep_dedicated {
            return Ok(None);
        }
        let keys = Self::keys(&steps);
        let dedicated = self.pool.reserve(keys.clone(), Use::Dedicated);
        let reservation = match deadline {
            None => dedicated.await?,
            Some(deadline) => match tokio::time::timeout_at(deadline, dedicated).await {
                Ok(reservation) => reservation?,
                Err(_) => return Ok(None),
            },
        };
        let Some(reservation) = reservation else {
            return Err(Error::backend(
                BACKEND,
                "no session for a wait",
                std::io::Error::other("pool returned no dedicated session"),
            ));
        };
        let (named, pool) = (self.clone(), self.pool.clone());
        let usage = if keep_dedicated {
            Use::Dedicated
        } else {
            Use::Shared
        };
        run_interruptible(
            move |caller| named.wait_dedicated(reservation, steps, deadline, usage, caller),
            move || pool.note(keys),
            |outcome| async move {
                if let Ok(Some(hold)) = outcome {
                    // Nobody wants it any more: give it back.
                    let _ = hold.release().await;
                }
            },
        )
        .await
    }

    /// Waits in the server on the dedicated session `reservation` for every step; the hold
    /// when all were granted (on a session that stays dedicated to it if `usage` says so).
    async fn wait_dedicated(
        self: Arc<Self>,
        reservation: Reservation,
        steps: Vec<Step>,
        deadline: Option<tokio::time::Instant>,
        usage: Use,
        mut caller: Caller,
    ) -> Result<Option<Shell<Hold>>> {
        let session = reservation.session();
        let outcome = wait_in_server(
            &self.pool,
            session,
            &self.name,
            &steps,
            deadline,
            &mut caller,
        )
        .await;
        match outcome {
            Ok(true) => Ok(Some(self.hold(reservation, usage, steps))),
            // Nothing stays held: the reservation goes.
            other => other.map(|_| None),
        }
    }

    /// The keys a release of `steps` is noted under in this process.
    fn release_keys(&self, steps: &[Step]) -> Vec<AdvisoryKey> {
        let mut keys = Self::keys(steps);
        keys.extend(self.semaphore.as_ref().map(|(marker, _)| *marker));
        keys
    }

    /// The hold of `steps`, granted on the reservation's session, which stays dedicated to
    /// it if `usage` says so.
    fn hold(
        self: &Arc<Self>,
        reservation: Reservation,
        usage: Use,
        steps: Vec<Step>,
    ) -> Shell<Hold> {
        let primary = steps.last().map_or(self.key, |(key, _)| *key);
        let (held, loss) = reservation.into_held(&primary, usage);
        Shell::new(Hold {
            named: self.clone(),
            held,
            steps,
            loss,
            operation: Arc::new(tokio::sync::Mutex::new(())),
        })
    }
}

/// Waits in the server for every step in turn: `Ok(true)` when all are held, `Ok(false)`
/// when the time ran out, an error otherwise; in both of those, nothing stays held. If the
/// caller goes (the acquire future was dropped), the query is cancelled on the server and
/// whatever was granted meanwhile is released: `Ok(false)`. A session that was sent a cancel
/// request is retired (see [`Pool::retire`]).
async fn wait_in_server(
    pool: &Pool,
    connection: &Arc<Connection>,
    name: &str,
    steps: &[Step],
    deadline: Option<tokio::time::Instant>,
    caller: &mut Caller,
) -> Result<bool> {
    let mut cancelled = false;
    let mut taken: Vec<Step> = Vec::new();
    let mut outcome = Ok(true);
    for &(key, mode) in steps {
        match wait_one(
            connection,
            name,
            key,
            mode,
            deadline,
            caller,
            &mut cancelled,
        )
        .await
        {
            Ok(true) => taken.push((key, mode)),
            other => {
                outcome = other;
                break;
            }
        }
    }
    if !matches!(outcome, Ok(true)) || caller.is_gone() {
        for &(key, mode) in taken.iter().rev() {
            let _ = connection.unlock(key, mode).await;
        }
        if matches!(outcome, Ok(true)) {
            outcome = Ok(false);
        }
    }
    if cancelled {
        pool.retire(connection);
    }
    outcome
}

/// One `pg_advisory_lock` under `lock_timeout`: `Ok(true)` when granted (even if the grant
/// raced with the timeout or with our cancel), `Ok(false)` when not.
async fn wait_one(
    connection: &Connection,
    name: &str,
    key: AdvisoryKey,
    mode: Mode,
    deadline: Option<tokio::time::Instant>,
    caller: &mut Caller,
    cancelled: &mut bool,
) -> Result<bool> {
    loop {
        if caller.is_gone() {
            // Nobody waits any more, and nothing was sent: nothing to cancel.
            return Ok(false);
        }
        let timeout_ms = match deadline {
            None => 0,
            Some(deadline) => {
                let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
                // 0 means "no timeout" to PostgreSQL; the smallest real timeout is 1 ms.
                remaining.as_millis().clamp(1, i32::MAX as u128)
            }
        };
        let suffix = if mode == Mode::Shared { "_shared" } else { "" };
        let sql = format!(
            "SET lock_timeout = {timeout_ms}; SELECT pg_advisory_lock{suffix}({})",
            key_args(key)
        );
        let query = connection.query_value(&sql);
        tokio::pin!(query);
        let result = tokio::select! {
            biased;
            result = &mut query => result,
            () = caller.gone() => {
                *cancelled = true;
                interrupt_until_done(query.as_mut(), || connection.cancel_query()).await
            }
        };
        let error = match result {
            Ok(_) => return Ok(true),
            Err(error) => error,
        };
        return match sqlstate(&error) {
            // A cancel we did not send was meant for an earlier statement on this session
            // and landed late: wait again (the session is retired, see `Pool::retire`).
            Some("57014") if !*cancelled => continue,
            // lock_timeout (55P03) or our cancel (57014) may have raced with the grant.
            Some("55P03" | "57014") => connection.holds(key, mode).await.map_err(|error| {
                Error::backend(BACKEND, "cannot check pg_locks after a timeout", error)
            }),
            Some("40P01") => Err(Error::Deadlock {
                name: name.to_owned(),
            }),
            _ => Err(Error::backend(
                BACKEND,
                format!("waiting for {name:?} failed"),
                error,
            )),
        };
    }
}

/// The second key of a reader-writer lock: writers and upgradeable readers hold it
/// exclusively, so at most one of them is ever on its way to the write lock.
fn upgrade_key(key: AdvisoryKey) -> AdvisoryKey {
    const SALT: u64 = 0x746f_6c6c_6761_7465; // "tollgate"
    match key {
        AdvisoryKey::Single(key) => AdvisoryKey::Single((key as u64 ^ SALT) as i64),
        AdvisoryKey::Pair(high, low) => {
            AdvisoryKey::Pair(high ^ (SALT >> 32) as i32, low ^ SALT as i32)
        }
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
    if !connection.is_broken() {
        for &(key, mode) in steps.iter().rev() {
            match connection.unlock(key, mode).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(name = %named.name, "advisory lock was not held at release")
                }
                // A session that ended has released everything with it.
                Err(_) if connection.is_broken() => break,
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
    if let (Some((_, channel)), false) = (&named.semaphore, connection.is_broken()) {
        // Wakes this semaphore's waiters everywhere (LISTEN/NOTIFY).
        if let Err(error) = connection.query_value(&format!("NOTIFY {channel}")).await {
            tracing::debug!(%error, "NOTIFY after release failed");
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
            /// anything granted in the race, on a background task.
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

/// A PostgreSQL reader-writer lock (shared/exclusive advisory locks, writer-preferring),
/// with upgradeable reads.
#[derive(Clone, Debug)]
pub struct PostgresReadWriteLock {
    named: Arc<Named>,
}

impl ReadWriteLock for PostgresReadWriteLock {
    type Read = PostgresReader;
    type Write = PostgresWriter;

    fn name(&self) -> &str {
        &self.named.name
    }

    fn reader(&self) -> PostgresReader {
        PostgresReader {
            named: self.named.clone(),
        }
    }

    fn writer(&self) -> PostgresWriter {
        PostgresWriter {
            named: self.named.clone(),
        }
    }
}

impl UpgradeableReadWriteLock for PostgresReadWriteLock {
    type Upgradeable = PostgresUpgradeableReader;

    fn upgradeable_reader(&self) -> PostgresUpgradeableReader {
        PostgresUpgradeableReader {
            named: self.named.clone(),
        }
    }
}

/// An upgradeable read hold on PostgreSQL; [`UpgradeableHandle::upgrade`] takes the
/// exclusive lock on the same session without letting go of the read hold.
#[derive(Debug)]
#[must_use = "dropping the handle releases it"]
pub struct PostgresUpgradeableHandle {
    hold: Shell<Hold>,
    upgraded: bool,
}

impl PostgresUpgradeableHandle {
    fn new(hold: Shell<Hold>) -> Self {
        PostgresUpgradeableHandle {
            hold,
            upgraded: false,
        }
    }
}

impl Handle for PostgresUpgradeableHandle {
    async fn release(self) -> Result<()> {
        self.hold.release().await
    }

    fn name(&self) -> &str {
        &self.hold.get().named.name
    }

    fn loss_signal(&self) -> LossSignal {
        self.hold.get().loss.clone()
    }

    fn fencing_token(&self) -> Option<u64> {
        None
    }
}

/// An upgrade granted by the server but not yet taken by the handle: if nobody takes it
/// (the upgrade future was dropped at the last moment), the exclusive lock is given back.
struct Grant {
    pool: Arc<Pool>,
    connection: Arc<Connection>,
    key: AdvisoryKey,
    operation: Arc<tokio::sync::Mutex<()>>,
    taken: bool,
}

impl Drop for Grant {
    fn drop(&mut self) {
        if self.taken {
            return;
        }
        let (connection, key, operation) =
            (self.connection.clone(), self.key, self.operation.clone());
        let note = self.pool.note(vec![key]);
        spawn_release(async move {
            let _note = note;
            let _serial = operation.lock_owned().await;
            let _ = connection.unlock_if_held(key, Mode::Exclusive).await;
        });
    }
}

impl UpgradeableHandle for PostgresUpgradeableHandle {
    /// Takes the exclusive lock in the server, waiting as `wait` says for the readers to
    /// leave; new readers queue behind the upgrade.
    ///
    /// # Cancel safety
    /// Cancel-safe: a dropped future cancels the server-side wait, gives back an exclusive
    /// lock granted in the race, and keeps the upgradeable read hold.
    async fn upgrade_wait(&mut self, wait: Wait) -> Result<bool> {
        let hold = self.hold.get();
        if self.upgraded {
            return Err(Error::invalid(format!(
                "{:?} is already upgraded",
                hold.named.name
            )));
        }
        let deadline = wait.deadline();
        let key = hold.named.key;
        let serial = hold.operation.clone().lock_owned().await;
        let connection = hold.held.session().clone();
        let name = hold.named.name.clone();
        let operation = hold.operation.clone();
        let (pool, note_pool) = (hold.named.pool.clone(), hold.named.pool.clone());
        let waiting = move |mut caller: Caller| async move {
            let steps = [(key, Mode::Exclusive)];
            let outcome =
                wait_in_server(&pool, &connection, &name, &steps, deadline, &mut caller).await;
            // Release our turn on the session before a grant's cleanup may need it.
            drop(serial);
            outcome.map(|granted| {
                granted.then(|| Grant {
                    pool,
                    connection: connection.clone(),
                    key,
                    operation,
                    taken: false,
                })
            })
        };
        // A grant nobody took gives the exclusive lock back when it is dropped.
        let grant = run_interruptible(
            waiting,
            move || note_pool.note(vec![key]),
            |grant| async move { drop(grant) },
        )
        .await?;
        let Some(mut grant) = grant else {
            return Ok(false);
        };
        grant.taken = true;
        self.hold.get_mut().steps.push((key, Mode::Exclusive));
        self.upgraded = true;
        Ok(true)
    }

    fn is_upgraded(&self) -> bool {
        self.upgraded
    }
}

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

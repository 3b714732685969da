//! Locks in a transaction tollgate owns: a provider whose holds each keep a transaction open.

use std::sync::Arc;

use tokio_postgres::{Client, NoTls};

use super::super::PostgresProvider;
use super::{
    backend_error, finish, key_args, other_error, sqlstate, wait_error, AdvisoryKey, Canceller,
    Cleanup, PendingRelease, PostgresProviderBuilder, Running, ServerWait, Tls, BACKEND,
    CLEANUP_ATTEMPTS,
};
use crate::backend::kit::fault::ride;
use crate::backend::kit::hold::{Release, Shell};
use crate::backend::kit::notes::Note;
use crate::backend::kit::pool::{self, Use};
use crate::backend::kit::turns::Turns;
use crate::backend::kit::wait::before;
use crate::{Acquire, Handle, Lock, LockProvider, LossSignal, Result, Wait};

/// Creates locks that are held by a transaction of their own: each hold opens (or reuses) a
/// connection, runs `BEGIN`, takes `pg_advisory_xact_lock` and keeps the transaction open
/// until the handle is released (`ROLLBACK`). Cheap to clone: clones share idle connections.
///
/// Because every hold is one transaction on one server connection, this mode works through
/// PgBouncer in **transaction pooling** mode, where session-level advisory locks (the pooled
/// [`PostgresProvider`]) do not. The price: each held lock keeps a
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
    /// This process's waiters per key, one at a time in the server (each waits on a
    /// connection of its own).
    turns: Arc<Turns<AdvisoryKey>>,
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
    /// [`PostgresProvider::builder`](PostgresProvider::builder) reads it (`sslmode`,
    /// `pool_size`, which here is the number of idle connections kept; `keepalive` is
    /// ignored: an open transaction is watched by its connection).
    pub fn from_url(url: &str) -> Result<Self> {
        Self::from_builder(PostgresProvider::builder(url)?)
    }

    /// A provider with the connection settings of a [`PostgresProviderBuilder`] (its
    /// `pool_size` is the number of idle connections kept; keepalive is ignored).
    pub fn from_builder(builder: PostgresProviderBuilder) -> Result<Self> {
        builder.pool.check(crate::backend::postgres::BACKEND)?;
        Ok(TransactionLockProvider {
            sessions: Arc::new(sessions(
                builder.config,
                builder.tls,
                builder.pool.pool_size,
                builder.pool.unreachable_timeout,
            )),
            turns: Arc::default(),
            allow_hashing: builder.allow_hashing,
        })
    }

    /// A provider from a `tokio_postgres` configuration, over unencrypted connections (its
    /// `ssl_mode` must not be `Require`), keeping up to 16 idle connections.
    pub fn new(config: tokio_postgres::Config) -> Self {
        TransactionLockProvider {
            sessions: Arc::new(sessions(
                config,
                Tls::Plain,
                pool::PoolOptions::default().pool_size,
                pool::PoolOptions::default().unreachable_timeout,
            )),
            turns: Arc::default(),
            allow_hashing: true,
        }
    }

    /// The lock on an explicit key (its name is the key in hex).
    pub fn lock_with_key(&self, key: AdvisoryKey) -> TransactionLock {
        TransactionLock {
            name: format!("{key:#}"),
            key,
            sessions: self.sessions.clone(),
            turns: self.turns.clone(),
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
            turns: self.turns.clone(),
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
/// kept for reuse. No keepalive: an open transaction is watched by its connection. Acquires
/// ride out an unreachable server (or one out of connection slots) for `unreachable_timeout`.
fn sessions(
    config: tokio_postgres::Config,
    tls: Tls,
    max_idle: usize,
    unreachable_timeout: Option<std::time::Duration>,
) -> Sessions {
    Sessions::new(
        Owned { config, tls },
        pool::Settings {
            max_sessions: usize::MAX,
            holds_per_session: usize::MAX,
            max_idle: Some(max_idle),
            keepalive: None,
            idle_timeout: None,
            unreachable_timeout,
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
    turns: Arc<Turns<AdvisoryKey>>,
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
    fn noter(&self) -> impl FnOnce() -> Option<PendingRelease> + Send + 'static {
        let (pool, key) = (self.reservation.pool().clone(), self.key);
        move || Some(Box::new(pool.note(vec![key])) as PendingRelease)
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
    /// `connect_timeout` is). A connection that fails or is refused (a server restarting, or
    /// out of connection slots) is ridden out as the provider's `unreachable_timeout` says,
    /// until the wait's deadline (see [`crate::backend::kit::fault`]). This process's waiters
    /// for one lock wait in the server one at a time, the others in order behind it, so N of
    /// them need two connections, not N.
    ///
    /// # Cancel safety
    /// Cancel-safe: a dropped future sends a cancel request for the waiting statement, then
    /// rolls the transaction back, on a background task, so nothing stays held (a lock
    /// granted in the race goes with the rollback). A connection that was sent a cancel
    /// request is closed rather than reused. This process's next acquire of the same lock
    /// waits for that cleanup.
    async fn acquire_wait(&self, wait: Wait) -> Result<Option<TransactionLockHandle>> {
        let deadline = wait.deadline();
        self.sessions
            .wait_for_releases(std::slice::from_ref(&self.key))
            .await;
        // One waiter of this process at a time waits in the server, on its connection; the
        // others queue here, in order (a try does not wait, so it does not queue).
        let _turn = if wait == Wait::NO_WAIT {
            None
        } else {
            match before(deadline, self.turns.turn(self.key)).await {
                Some(turn) => Some(turn),
                None => return Ok(None),
            }
        };
        ride(self.sessions.unreachable_timeout(), deadline, || {
            self.acquire_once(wait, deadline)
        })
        .await
    }
}

impl TransactionLock {
    /// One acquire on one connection (see [`Acquire::acquire_wait`]).
    async fn acquire_once(
        &self,
        wait: Wait,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Option<TransactionLockHandle>> {
        let sessions = &self.sessions;
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
        let (running, OwnedCleanup { reservation, .. }) = finish(running, canceller, cleanup).await;
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

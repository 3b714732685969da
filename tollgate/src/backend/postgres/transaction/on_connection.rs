//! Session-level locks on the caller's own connection.

use std::sync::{Arc, LazyLock};

use tokio::sync::oneshot;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage, Socket};

use super::{
    backend_error, finish, granted_condition, key_args, mode_of, recorded_outcome, sqlstate,
    suffix, wait_error, AdvisoryKey, Canceller, Cleanup, Mode, PendingRelease, Running, ServerWait,
    ABSORB_SECONDS, CLEANUP_ATTEMPTS, CONNECTION_WATCH_INTERVAL,
};
use crate::backend::kit::hold::{Release, Shell};
use crate::backend::kit::notes::{Note, ReleaseNotes};
use crate::backend::kit::runtime::background;
use crate::{Error, Handle, LossSignal, Result, Wait};

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
    fn noter(&self) -> impl FnOnce() -> Option<PendingRelease> + Send + 'static {
        let noted = (connection_id(&self.client), self.key);
        move || Some(Box::new(CONNECTION_RELEASES.note(vec![noted])) as PendingRelease)
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
/// Cancel requests go out unencrypted; see the [module documentation](super#tls) and
/// [`lock_on_connection_with_tls`].
///
/// # Cancel safety
/// Cancel-safe: dropping the future mid-wait sends a cancel request for the session (on a
/// background task, repeated until the statement has ended), then unlocks the key if the
/// statement took it (a grant that raced with the cancel), with a query queued after the
/// cancelled one. This process's next `lock_on_connection` of the same key on the same
/// connection waits for that cleanup. A cancel request that arrives after the statement has
/// ended may interrupt the connection's next statement (see the
/// [module documentation](super#how-a-wait-is-cancelled)).
pub async fn lock_on_connection(
    client: Arc<Client>,
    key: AdvisoryKey,
    shared: bool,
    wait: Wait,
) -> Result<Option<ConnectionLockHandle>> {
    lock_on_connection_with_tls(client, key, shared, wait, NoTls).await
}

/// [`lock_on_connection`] for a lock given by name (see [`lock_name_in_transaction`](super::lock_name_in_transaction)).
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
        let (running, _cleanup) = finish(running, canceller, cleanup).await;
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

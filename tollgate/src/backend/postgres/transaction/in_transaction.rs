//! Locks inside the caller's own transaction (`pg_advisory_xact_lock`).

use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{NoTls, Socket, Transaction};

use super::{
    backend_error, finish, key_args, mode_of, recorded_outcome, suffix, wait_error, AdvisoryKey,
    Canceller, Mode, Running, ServerWait, ABSORB_SECONDS,
};
use crate::{Result, Wait};

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
///   ([`Error::Deadlock`](crate::Error::Deadlock)) or a cancel: the wait runs in a subtransaction that catches them.
/// - The caller's `lock_timeout` (say `SET LOCAL lock_timeout = '7s'`) reads back unchanged
///   afterwards, whatever the outcome.
/// - One round trip: a `DO` block and a `SELECT` of its outcome.
/// - PostgreSQL's advisory locks are re-entrant within a session: if the transaction (or its
///   session) already holds the key, this succeeds at once. Both holds end no earlier than
///   the transaction, so nothing is lost, but this is no test of whether someone else holds
///   the lock.
/// - A statement that fails for another reason (the connection broke, the transaction was
///   already aborted) is an [`Error::Backend`](crate::Error::Backend); a `statement_timeout` or someone else's
///   cancel request that ends the wait is an [`Error::Backend`](crate::Error::Backend) too, and leaves the
///   transaction usable.
///
/// Cancel requests (see [below](#cancel-safety)) go out unencrypted; see the
/// [module documentation](super#tls) and [`lock_in_transaction_with_tls`].
///
/// # Cancel safety
/// Dropping the future mid-wait sends a cancel request for the session (on a background
/// task, no earlier than 25 ms after the statement was sent, repeated until the statement has
/// ended), so the server stops waiting; the subtransactions catch the cancel, and the
/// transaction stays usable. Statements the caller sends meanwhile run after the cancelled
/// one, which lingers 20 ms after a cancel (see the
/// [module documentation](super#how-a-wait-is-cancelled)). What is left behind depends on
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
    let (running, ()) = finish(running, Some(canceller), ()).await;
    match running.error {
        Some(error) => Err(wait_error(name, error)),
        None => recorded_outcome(name, running.row(0)),
    }
}

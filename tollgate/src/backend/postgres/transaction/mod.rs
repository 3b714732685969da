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

mod in_transaction;
mod on_connection;
mod owned;

pub use in_transaction::{
    lock_in_transaction, lock_in_transaction_with_tls, lock_name_in_transaction,
};
pub use on_connection::{
    lock_name_on_connection, lock_on_connection, lock_on_connection_with_tls, ConnectionLockHandle,
};
pub use owned::{TransactionLock, TransactionLockHandle, TransactionLockProvider};

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{CancelToken, Client, NoTls, SimpleQueryMessage, SimpleQueryStream, Socket};

use super::connection::{granted_condition, key_args, sqlstate, Mode};
use super::key::AdvisoryKey;
use super::{PostgresProviderBuilder, Tls, BACKEND};
use crate::backend::kit::completion::{interrupt_until_done, run_interruptible, Caller};
use crate::{Error, Result, Wait};

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
                } else if remaining.as_millis() > i32::MAX as u128 {
                    // Beyond the longest lock_timeout (24.8 days): as good as forever.
                    ServerWait::Timeout(0)
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
    /// What notes a release under way when the future is dropped (called synchronously
    /// then), so that this process's next acquire of the same lock waits for the cleanup.
    fn noter(&self) -> impl FnOnce() -> Option<PendingRelease> + Send + 'static;

    /// Runs once the statement has ended (after any cancel).
    fn after(self, running: Running) -> impl Future<Output = ()> + Send;
}

impl Cleanup for () {
    fn noter(&self) -> impl FnOnce() -> Option<PendingRelease> + Send + 'static {
        || None
    }

    async fn after(self, _running: Running) {}
}

/// Waits for the statement `running` to end: the finished statement and the cleanup, which
/// is then the caller's business. It runs as an interruptible operation: if the acquire
/// future is dropped meanwhile, the rest runs on tollgate's runtime, which cancels the
/// statement on the server (when `canceller` is set), waits for its end, then runs the
/// cleanup.
async fn finish<C: Cleanup>(
    running: Running,
    canceller: Option<Canceller>,
    cleanup: C,
) -> (Running, C) {
    let note = cleanup.noter();
    let finishing = move |mut caller: Caller| async move {
        let mut running = running;
        let gone = tokio::select! {
            biased;
            () = running.finish() => false,
            () = caller.gone() => true,
        };
        if gone {
            match &canceller {
                Some(canceller) => running.cancel_until_finished(canceller).await,
                None => running.finish().await,
            }
        }
        (running, cleanup)
    };
    run_interruptible(finishing, note, |(running, cleanup)| cleanup.after(running)).await
}

/// A release under way in this process, noted until dropped.
type PendingRelease = Box<dyn Send>;

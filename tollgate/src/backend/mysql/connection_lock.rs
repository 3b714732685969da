//! Locks on a connection of the caller's own (for example one taken from the application's
//! pool), so that the lock lives exactly as long as that session.

use std::sync::Arc;

use mysql_async::prelude::Queryable;
use tokio::sync::{Mutex, OwnedMutexGuard};

use super::{lock_name, wait_seconds, waits_on, BACKEND};
use crate::backend::kit::completion::{interrupt_until_done, run_interruptible, Caller};
use crate::backend::kit::hold::{Release, Shell};
use crate::{Error, Handle, LossSignal, Result, Wait};

/// A connection shared between the application and the locks taken on it.
pub type SharedConnection = Arc<Mutex<mysql_async::Conn>>;

/// Takes the lock `name` (mapped as [`lock_name`] does) on the caller's connection, waiting
/// in the server as `wait` says: `Ok(None)` when the wait ran out.
///
/// `GET_LOCK` is re-entrant per connection, but tollgate's contract is not: if this
/// connection already holds the lock, a zero wait answers `None`, an unbounded wait is an
/// [`Error::Deadlock`] (it would wait for itself), and a bounded wait waits out its timeout
/// and answers `None`.
///
/// The connection is locked for the duration of the call. Its socket belongs to the runtime
/// that opened it: a call made through the [blocking API](crate::blocking) from the only
/// thread of that runtime (a current-thread runtime) waits for a socket nothing can drive,
/// and never returns. tollgate cannot see which runtime a caller's connection belongs to;
/// open such connections on another runtime.
///
/// # Cancel safety
/// Cancel-safe: the call runs to completion. If the future is dropped, the rest runs on
/// tollgate's runtime: the wait is ended with `KILL QUERY` from a second connection and a
/// lock granted in the race is released before the connection is handed back.
pub async fn lock_on_connection(
    connection: SharedConnection,
    name: &str,
    wait: Wait,
) -> Result<Option<ConnectionLockHandle>> {
    let deadline = wait.deadline();
    let mapped = lock_name(name);
    let guard = connection.clone().lock_owned().await;
    let task_name = mapped.clone();
    // If the caller goes, the operation gives back what it got itself (on the connection
    // it still has locked): nothing is left for the abandon step.
    let taken = run_interruptible(
        move |caller| take_or_give_back(guard, task_name, wait, deadline, caller),
        || (),
        |_| async {},
    )
    .await?;
    Ok(taken.then(|| ConnectionLockHandle {
        hold: Shell::new(Hold {
            name: name.to_owned(),
            lock_name: mapped,
            connection,
        }),
    }))
}

/// [`take`] on the caller's connection. If the caller goes meanwhile, the statement is
/// interrupted with `KILL QUERY` (repeated while it runs: a request that arrives before the
/// statement has started is lost), and a lock granted in the race is released.
async fn take_or_give_back(
    mut guard: OwnedMutexGuard<mysql_async::Conn>,
    lock_name: String,
    wait: Wait,
    deadline: Option<tokio::time::Instant>,
    mut caller: Caller,
) -> Result<bool> {
    let (id, opts) = (guard.id(), guard.opts().clone());
    let outcome = {
        let taking = take(&mut guard, &lock_name, wait, deadline);
        tokio::pin!(taking);
        tokio::select! {
            outcome = &mut taking => outcome,
            () = caller.gone() => {
                interrupt_until_done(taking, || kill_query(id, opts.clone())).await
            }
        }
    };
    if !caller.is_gone() {
        return outcome;
    }
    // Nobody wants it any more. A `KILL QUERY` sent as the statement ended can interrupt
    // this check too, so it is tried again.
    for _ in 0..3 {
        match held_here(&mut guard, &lock_name).await {
            Ok(true) => {
                let _ = release(&mut guard, &lock_name).await;
                break;
            }
            Ok(false) => break,
            Err(error) => tracing::debug!(%error, "checking a lock after an interrupt failed"),
        }
    }
    Ok(false)
}

async fn held_here(conn: &mut mysql_async::Conn, lock_name: &str) -> Result<bool> {
    let held: Option<Option<i64>> = conn
        .exec_first("SELECT IS_USED_LOCK(?) = CONNECTION_ID()", (lock_name,))
        .await
        .map_err(|error| Error::backend(BACKEND, "IS_USED_LOCK failed", error))?;
    Ok(held.flatten() == Some(1))
}

async fn take(
    guard: &mut OwnedMutexGuard<mysql_async::Conn>,
    lock_name: &str,
    wait: Wait,
    deadline: Option<tokio::time::Instant>,
) -> Result<bool> {
    if held_here(guard, lock_name).await? {
        return match deadline {
            None => Err(Error::Deadlock {
                name: lock_name.to_owned(),
            }),
            Some(deadline) => {
                tokio::time::sleep_until(deadline).await;
                Ok(false)
            }
        };
    }
    loop {
        let seconds = if wait == Wait::NO_WAIT {
            0.0
        } else {
            wait_seconds(deadline)
        };
        let taken: Option<Option<i64>> = match guard
            .exec_first("SELECT GET_LOCK(?, ?)", (lock_name, seconds))
            .await
        {
            Ok(taken) => taken,
            // The server found this connection waiting in a cycle (ER_LOCK_DEADLOCK).
            Err(mysql_async::Error::Server(error)) if error.code == 1213 || error.code == 3058 => {
                return Err(Error::Deadlock {
                    name: lock_name.to_owned(),
                })
            }
            Err(error) => {
                return Err(Error::backend(
                    BACKEND,
                    format!("GET_LOCK({lock_name:?}) failed"),
                    error,
                ))
            }
        };
        match taken.flatten() {
            Some(1) => return Ok(true),
            Some(_) if wait != Wait::NO_WAIT && waits_on(deadline) => continue,
            Some(_) => return Ok(false),
            None => {
                return Err(Error::backend(
                    BACKEND,
                    format!("GET_LOCK({lock_name:?}) failed"),
                    std::io::Error::other("NULL"),
                ))
            }
        }
    }
}

/// Interrupts the statement connection `id` is running (`KILL QUERY` from a second
/// connection).
async fn kill_query(id: u32, opts: mysql_async::Opts) {
    match mysql_async::Conn::new(opts).await {
        Ok(mut killer) => {
            let _ = killer.query_drop(format!("KILL QUERY {id}")).await;
            let _ = killer.disconnect().await;
        }
        Err(error) => tracing::warn!(%error, "cannot connect to interrupt a wait"),
    }
}

async fn release(conn: &mut mysql_async::Conn, lock_name: &str) -> Result<()> {
    conn.exec_drop("DO RELEASE_LOCK(?)", (lock_name,))
        .await
        .map_err(|error| {
            Error::backend(
                BACKEND,
                format!("RELEASE_LOCK({lock_name:?}) failed"),
                error,
            )
        })
}

/// A lock held on the caller's connection. Dropping it releases on a background task
/// (after whatever the connection is doing); the server also releases it when the
/// connection closes.
#[must_use = "dropping the handle releases it"]
pub struct ConnectionLockHandle {
    hold: Shell<Hold>,
}

struct Hold {
    name: String,
    lock_name: String,
    connection: SharedConnection,
}

impl Release for Hold {
    /// No pool: nothing of this process waits for the release.
    type Note = ();

    fn name(&self) -> &str {
        &self.name
    }

    fn note(&self) {}

    async fn release(self) -> Result<()> {
        let mut conn = self.connection.lock().await;
        release(&mut conn, &self.lock_name).await
    }
}

impl std::fmt::Debug for ConnectionLockHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionLockHandle")
            .field("name", &self.hold.get().name)
            .finish()
    }
}

impl Handle for ConnectionLockHandle {
    /// Runs `RELEASE_LOCK` on the connection, after whatever it is doing.
    ///
    /// # Cancel safety
    /// Dropping the future still releases: the rest runs on tollgate's runtime.
    async fn release(self) -> Result<()> {
        self.hold.release().await
    }

    fn name(&self) -> &str {
        &self.hold.get().name
    }

    /// The caller owns the connection, so tollgate does not watch it.
    fn loss_signal(&self) -> LossSignal {
        LossSignal::undetectable()
    }

    fn fencing_token(&self) -> Option<u64> {
        None
    }
}

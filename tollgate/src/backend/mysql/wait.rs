//! Waiting in the server: `GET_LOCK` with a timeout on a connection of its own, which a
//! dropped acquire future kills.

use std::sync::Arc;

use super::connection::{self, Got, Pool, Reservation};
use super::{give_back, wait_seconds, waits_on, MySqlHandle, BACKEND};
use crate::backend::kit::completion::{run_interruptible, Caller};
use crate::{Error, Result};

/// `GET_LOCK(lock_name, seconds)` on a connection of its own; a dropped future kills it.
pub(super) async fn wait_dedicated(
    pool: &Arc<Pool>,
    name: &Arc<str>,
    lock_name: &str,
    release_note: &str,
    deadline: Option<tokio::time::Instant>,
) -> Result<Option<MySqlHandle>> {
    let names = vec![lock_name.to_owned()];
    let Some(reservation) = pool.reserve_dedicated(names, deadline).await? else {
        return Ok(None);
    };
    let (lock_name, name) = (lock_name.to_owned(), name.clone());
    let release_note = release_note.to_owned();
    let (pool, noted) = (pool.clone(), vec![release_note.clone()]);
    run_interruptible(
        move |caller| wait_on(reservation, name, lock_name, release_note, deadline, caller),
        move || pool.note(noted),
        give_back,
    )
    .await
}

/// `GET_LOCK(lock_name, seconds)` on the dedicated connection `reservation`, repeated while
/// an unbounded wait times out. If the caller goes, the connection is killed: that ends the
/// wait, and whatever it got, for good.
async fn wait_on(
    reservation: Reservation,
    name: Arc<str>,
    lock_name: String,
    release_note: String,
    deadline: Option<tokio::time::Instant>,
    mut caller: Caller,
) -> Result<Option<MySqlHandle>> {
    let outcome = loop {
        let seconds = wait_seconds(deadline);
        let waited = tokio::select! {
            result = reservation.session().get_lock(&lock_name, seconds) => result,
            () = caller.gone() => {
                connection::kill(&reservation).await;
                return Ok(None);
            }
        };
        match waited {
            Ok(Got::TimedOut) if waits_on(deadline) => continue,
            other => break other,
        }
    };
    match outcome {
        // Now shared, with the name claimed for the handle.
        Ok(Got::Taken) => Ok(Some(MySqlHandle::new(
            name,
            lock_name,
            release_note,
            reservation,
        ))),
        Ok(Got::HeldHere) => {
            // The connection had nothing claimed, yet holds the name: it is in doubt, and
            // closes (freeing the name) once retired.
            reservation.retire();
            drop(reservation);
            Err(Error::backend(
                BACKEND,
                format!("GET_LOCK({lock_name:?}) on a connection that holds it already"),
                std::io::Error::other("unexpected re-entrant hold"),
            ))
        }
        // Not taken: the reservation goes.
        other => other.map(|_| None),
    }
}

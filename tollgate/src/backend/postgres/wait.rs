//! Taking advisory locks: one try on a shared session (the fast path), else a wait in the
//! server on a session of its own, which a dropped acquire future cancels.

use std::sync::Arc;

use super::connection::{key_args, sqlstate, Connection, Mode, Pool, Reservation, Use};
use super::AdvisoryKey;
use super::{Hold, Named, BACKEND};
use crate::backend::kit::completion::{interrupt_until_done, run_interruptible, Caller};
use crate::backend::kit::fault::ride;
use crate::backend::kit::hold::Shell;
use crate::{Error, Result, Wait};

/// Gives back the hold an acquire got after its caller went away.
async fn give_back(outcome: Result<Option<Shell<Hold>>>) {
    if let Ok(Some(hold)) = outcome {
        let _ = hold.release().await;
    }
}

/// One advisory lock a hold takes, in order.
pub(super) type Step = (AdvisoryKey, Mode);

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

impl Named {
    fn keys(steps: &[Step]) -> Vec<AdvisoryKey> {
        steps.iter().map(|(key, _)| *key).collect()
    }

    /// Acquires every step, waiting as `wait` says. A hold on a dedicated session stays
    /// dedicated when `keep_dedicated` (upgradeable reads, whose upgrade blocks the session).
    /// A dropped connection, a killed session or a restarting server is ridden out (see
    /// [`crate::backend::kit::fault`]): the acquire starts again on a fresh session.
    pub(super) async fn acquire(
        self: &Arc<Self>,
        steps: Vec<Step>,
        wait: Wait,
        keep_dedicated: bool,
    ) -> Result<Option<Shell<Hold>>> {
        let deadline = wait.deadline();
        // A hold of ours that was just dropped is still being released: wait for that first.
        self.pool.wait_for_releases(&Self::keys(&steps)).await;
        ride(self.pool.unreachable_timeout(), deadline, || {
            self.acquire_once(steps.clone(), wait, deadline, keep_dedicated)
        })
        .await
    }

    /// One acquire: a try on a shared session, then, if the wait goes on, a wait in the
    /// server on a session of its own.
    async fn acquire_once(
        self: &Arc<Self>,
        steps: Vec<Step>,
        wait: Wait,
        deadline: Option<tokio::time::Instant>,
        keep_dedicated: bool,
    ) -> Result<Option<Shell<Hold>>> {
        let keys = Self::keys(&steps);
        // A wait for exclusive keys that this process holds or waits for already goes to the
        // server's queue at once: a try first could only fail.
        let doomed = wait != Wait::NO_WAIT
            && steps.iter().all(|(_, mode)| *mode == Mode::Exclusive)
            && self.pool.is_claimed(&keys);
        if !keep_dedicated && !doomed {
            // The fast path: one try on a shared session.
            let Some(reservation) = self.pool.reserve(keys.clone(), Use::Shared).await? else {
                return self
                    .acquire_dedicated(steps, wait, deadline, keep_dedicated)
                    .await;
            };
            // The try runs to completion: a grant nobody waits for any more is given back.
            let (named, pool) = (self.clone(), self.pool.clone());
            let trying = named.try_on(reservation, steps.clone());
            let tried =
                run_interruptible(|_caller| trying, move || pool.note(keys), give_back).await?;
            if let Some(hold) = tried {
                return Ok(Some(hold));
            }
            if wait == Wait::NO_WAIT {
                return Ok(None);
            }
        }
        self.acquire_dedicated(steps, wait, deadline, keep_dedicated)
            .await
    }

    /// One try of every step on the shared session `reservation`: the hold if all were
    /// granted (the try keeps all or none).
    async fn try_on(
        self: Arc<Self>,
        reservation: Reservation,
        steps: Vec<Step>,
    ) -> Result<Option<Shell<Hold>>> {
        let connection = reservation.session();
        let outcome = match steps.as_slice() {
            &[(key, mode)] => connection.try_lock(key, mode).await,
            _ => connection
                .query_value(&try_all_sql(&steps))
                .await
                .map(|value| value.as_deref() == Some("t")),
        };
        match outcome {
            Ok(true) => Ok(Some(self.hold(reservation, Use::Shared, steps))),
            // Not granted: the reservation goes.
            Ok(false) => Ok(None),
            Err(error) => Err(Error::backend(
                BACKEND,
                format!("cannot try-lock {:?}", self.name),
                error,
            )),
        }
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
        let Some(reservation) = self.pool.reserve_dedicated(keys.clone(), deadline).await? else {
            return Ok(None);
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
            give_back,
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
    pub(super) fn release_keys(&self, steps: &[Step]) -> Vec<AdvisoryKey> {
        let mut keys = Self::keys(steps);
        keys.extend(self.semaphore.as_ref().map(|(marker, _)| *marker));
        keys
    }

    /// The hold of `steps`, granted on the reservation's session, which stays dedicated to
    /// it if `usage` says so.
    pub(super) fn hold(
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
pub(super) async fn wait_in_server(
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
        // A lock_timeout is at most i32::MAX ms (24.8 days): a longer wait is made of several.
        let (timeout_ms, partial) = match deadline {
            None => (0, false),
            Some(deadline) => {
                let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
                // Rounded up, so that the server never gives up before the deadline; 0 means
                // "no timeout" to PostgreSQL, so the smallest real timeout is 1 ms.
                let millis = remaining.as_micros().div_ceil(1000);
                (millis.clamp(1, i32::MAX as u128), millis > i32::MAX as u128)
            }
        };
        let query = connection.wait_lock(key, mode, timeout_ms as i64);
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
            Some(state @ ("55P03" | "57014")) => {
                let held = connection.holds(key, mode).await.map_err(|error| {
                    Error::backend(BACKEND, "cannot check pg_locks after a timeout", error)
                })?;
                if !held && partial && state == "55P03" {
                    continue;
                }
                Ok(held)
            }
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

//! Semaphores: one user lock per ticket, a try that takes the first free one, and waits in
//! the server on one ticket at a time between scans.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::connection::{Pool, Use};
use super::wait::wait_dedicated;
use super::{give_back, MySqlHandle, MySqlProvider};
use crate::backend::kit::completion::run_to_completion;
use crate::backend::kit::fault::Outage;
use crate::backend::kit::wait::{wait_for, Attempt, Backoff, Contender, NoWake, Paused};
use crate::{check_max_count, Acquire, Result, Semaphore, SemaphoreProvider, Wait};

/// The first pause between a waiter's scans (jittered, doubling up to [`MAX_BACKOFF`]).
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
/// The longest pause between a waiter's scans.
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// A MySQL / MariaDB semaphore: ticket `i` is the user lock `tollgate_s_<hash>_<i>`.
///
/// The max count is **not stored** (user locks carry no data, and a table would break the
/// no-schema promise): processes that name one semaphore with different max counts are not
/// refused; they share the tickets they have in common, and each keeps to its own ceiling.
/// Give every user of a name the same max count. (The local and Redis backends store it and
/// refuse a mismatch.)
#[derive(Clone, Debug)]
pub struct MySqlSemaphore {
    name: Arc<str>,
    prefix: String,
    max_count: u32,
    pool: Arc<Pool>,
}

impl MySqlSemaphore {
    fn ticket(&self, index: u32) -> String {
        format!("{}{index}", self.prefix)
    }

    /// Scans for a free ticket on one shared connection, 64 tickets per statement (one
    /// round trip for a semaphore of at most 64 tickets). Each ticket is claimed on the
    /// connection before its `GET_LOCK`, so tickets held, tried or being released there
    /// (for any handle) are skipped: `GET_LOCK` is re-entrant and would nest them. The
    /// marker keeps a second scan of this semaphore off the connection meanwhile.
    async fn try_once(&self) -> Result<Option<MySqlHandle>> {
        /// Tickets tried per statement.
        const SCAN_BATCH: u32 = 64;
        let marker = format!("{}scan", self.prefix);
        let Some(mut reservation) = self.pool.reserve(vec![marker], Use::Scan).await? else {
            return Ok(None);
        };
        let semaphore = self.clone();
        run_to_completion(
            async move {
                let mut outcome = Ok(None);
                let mut start = 0;
                while start < semaphore.max_count {
                    let end = start.saturating_add(SCAN_BATCH).min(semaphore.max_count);
                    let mut claimed: Vec<String> = (start..end)
                        .map(|index| semaphore.ticket(index))
                        .filter(|ticket| reservation.claim(ticket.clone()))
                        .collect();
                    start = end;
                    if claimed.is_empty() {
                        continue;
                    }
                    let connection = reservation.session().clone();
                    match connection.take_first_free(&claimed).await {
                        Ok(Some(index)) => {
                            let ticket = claimed.swap_remove(index);
                            reservation.unclaim(&claimed);
                            // Held (still claimed) before the marker's claim goes.
                            outcome = Ok(Some(MySqlHandle::new(
                                semaphore.name.clone(),
                                ticket.clone(),
                                semaphore.prefix.clone(),
                                reservation.split_off(&[ticket]),
                            )));
                            break;
                        }
                        Ok(None) => reservation.unclaim(&claimed),
                        Err(error) => {
                            reservation.unclaim(&claimed);
                            outcome = Err(error);
                            break;
                        }
                    }
                }
                // The marker's claim goes with the reservation.
                drop(reservation);
                outcome
            },
            give_back,
        )
        .await
    }
}

impl Acquire for MySqlSemaphore {
    type Handle = MySqlHandle;

    fn name(&self) -> &str {
        &self.name
    }

    /// Takes a ticket, waiting as `wait` says: between scans of all tickets, it waits in the
    /// server on one ticket (taking that ticket if it frees), for a jittered backoff interval that
    /// grows from 10 ms to 500 ms.
    ///
    /// # Cancel safety
    /// Cancel-safe: each scan runs to completion (the rest of a dropped one on tollgate's
    /// runtime) and gives back a ticket nobody wants; a dropped server-side wait kills its
    /// dedicated connection.
    async fn acquire_wait(&self, wait: Wait) -> Result<Option<MySqlHandle>> {
        let deadline = wait.deadline();
        self.pool
            .wait_for_releases(std::slice::from_ref(&self.prefix))
            .await;
        // Spread waiters over the tickets (within this process too), and move on each round.
        static WAITERS: AtomicU32 = AtomicU32::new(0);
        let round = std::process::id().wrapping_add(WAITERS.fetch_add(1, Ordering::Relaxed));
        let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
        wait_for(
            &mut TicketWaits {
                semaphore: self,
                round,
            },
            deadline,
            &mut backoff,
            &mut Outage::new(self.pool.unreachable_timeout()),
        )
        .await
    }
}

/// A wait for a ticket, as the shared wait loop runs it: its pauses wait in the server on
/// one ticket, a different one each round.
struct TicketWaits<'a> {
    semaphore: &'a MySqlSemaphore,
    round: u32,
}

impl Contender for TicketWaits<'_> {
    type Held = MySqlHandle;
    type Wake = NoWake;

    async fn attempt(&mut self) -> Result<Attempt<MySqlHandle>> {
        Ok(match self.semaphore.try_once().await? {
            Some(handle) => Attempt::Taken(handle),
            None => Attempt::Busy { retry_within: None },
        })
    }

    async fn subscribe(&mut self, _deadline: Option<tokio::time::Instant>) -> Option<NoWake> {
        // Releases are not announced; the pause below is the wake-up.
        None
    }

    async fn pause(
        &mut self,
        _wake: Option<&mut NoWake>,
        until: tokio::time::Instant,
    ) -> Result<Paused<MySqlHandle>> {
        let semaphore = self.semaphore;
        let ticket = self.round % semaphore.max_count;
        self.round = self.round.wrapping_add(1);
        let waited = wait_dedicated(
            &semaphore.pool,
            &semaphore.name,
            &semaphore.ticket(ticket),
            &semaphore.prefix,
            Some(until),
        )
        .await?;
        Ok(waited.map_or(Paused::Elapsed, Paused::Taken))
    }
}

impl Semaphore for MySqlSemaphore {
    fn max_count(&self) -> u32 {
        self.max_count
    }
}

impl SemaphoreProvider for MySqlProvider {
    type Semaphore = MySqlSemaphore;

    fn semaphore(&self, name: &str, max_count: u32) -> Result<MySqlSemaphore> {
        check_max_count(name, max_count)?;
        let prefix = format!(
            "tollgate_s_{}_",
            crate::backend::kit::names::sha512_base32(name.as_bytes()).to_lowercase()
        );
        Ok(MySqlSemaphore {
            name: name.into(),
            prefix,
            max_count,
            pool: self.pool.clone(),
        })
    }
}

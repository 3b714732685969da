//! Semaphores on advisory locks, with no table to create: ticket `i` of a semaphore is the
//! 64-bit advisory lock `base + i`, where `base` comes from a hash of the name.
//!
//! A try scans the tickets in the server in one round trip (a recursive query, prepared once
//! per session, that stops at the first ticket it gets). A release unlocks its ticket and
//! notifies the semaphore's channel in one statement, and a waiter re-scans when it hears it; since a holder whose session dies sends no notification, waiters also re-scan
//! on a jittered backoff (25 ms doubling to 1 s).

use std::sync::Arc;
use std::time::Duration;

use sha1::{Digest, Sha1};

use tokio::time::Instant;

use super::connection::{Connection, Mode, Reservation, Use};
use super::listener::Subscription;
use super::{Named, PostgresHandle, PostgresProvider, BACKEND};
use crate::backend::kit::completion::run_interruptible;
use crate::backend::kit::fault::Outage;
use crate::backend::kit::wait::{wait_for, Attempt, Backoff, Contender};
use crate::{check_max_count, Acquire, Error, Handle, Result, Semaphore, SemaphoreProvider, Wait};

const FIRST_BACKOFF: Duration = Duration::from_millis(25);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// A PostgreSQL counting semaphore: ticket `i` is advisory lock `base + i`.
///
/// The max count is **not stored** (advisory locks carry no data, and a table would break
/// the no-schema promise): processes that name one semaphore with different max counts are
/// not refused; they share the tickets they have in common, and each keeps to its own
/// ceiling. Give every user of a name the same max count. (The local and Redis backends
/// store it and refuse a mismatch.)
#[derive(Clone, Debug)]
pub struct PostgresSemaphore {
    named: Arc<Named>,
    listener: Arc<super::listener::Listener>,
    base: i64,
    max_count: u32,
}

/// The first ticket's key: 62 bits of SHA-1 of the name, so `base + i` never overflows.
fn base_key(name: &str) -> i64 {
    let digest = Sha1::new()
        .chain_update(b"tollgate semaphore\0")
        .chain_update(name.as_bytes())
        .finalize();
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    (u64::from_le_bytes(bytes) >> 2) as i64
}

impl SemaphoreProvider for PostgresProvider {
    type Semaphore = PostgresSemaphore;

    fn semaphore(&self, name: &str, max_count: u32) -> Result<PostgresSemaphore> {
        check_max_count(name, max_count)?;
        let base = base_key(name);
        let named = Named {
            name: name.to_owned(),
            key: super::AdvisoryKey::Single(base),
            pool: self.pool.clone(),
            // Never locked on the server: `base - 1` is below every ticket.
            semaphore: Some((
                super::AdvisoryKey::Single(base - 1),
                format!("tollgate_semaphore_{base:016x}"),
            )),
        };
        Ok(PostgresSemaphore {
            named: Arc::new(named),
            listener: self.listener.clone(),
            base,
            max_count,
        })
    }
}

impl PostgresSemaphore {
    fn marker(&self) -> super::AdvisoryKey {
        self.named
            .semaphore
            .as_ref()
            .map_or(self.named.key, |(marker, _)| *marker)
    }

    /// The tickets of this semaphore this session already holds (a session's advisory locks
    /// are re-entrant, so the scan must skip them).
    fn held_tickets(&self, connection: &Connection) -> Vec<i64> {
        let end = self.base + i64::from(self.max_count);
        connection
            .claimed_keys()
            .into_iter()
            .filter_map(|key| match key {
                super::AdvisoryKey::Single(key) if (self.base..end).contains(&key) => {
                    Some(key - self.base)
                }
                _ => None,
            })
            .collect()
    }

    /// One scan: the first free ticket, taken, or `None`.
    async fn try_once(&self) -> Result<Option<PostgresHandle>> {
        let marker = self.marker();
        let Some(reservation) = self.named.pool.reserve(vec![marker], Use::Shared).await? else {
            // Every session is busy scanning this semaphore: as good as no ticket now.
            return Ok(None);
        };
        let skip = self.held_tickets(reservation.session());
        // The scan runs to completion: a ticket nobody waits for any more is given back.
        let (semaphore, pool) = (self.clone(), self.named.pool.clone());
        run_interruptible(
            |_caller| semaphore.scan(reservation, skip),
            move || pool.note(vec![marker]),
            |outcome| async move {
                if let Ok(Some(handle)) = outcome {
                    let _ = handle.release().await;
                }
            },
        )
        .await
    }

    /// Scans on the session `reservation`, skipping the session's own tickets (`skip`): the
    /// ticket it took, held.
    async fn scan(
        self,
        mut reservation: Reservation,
        skip: Vec<i64>,
    ) -> Result<Option<PostgresHandle>> {
        let outcome = reservation
            .session()
            .scan_tickets(self.base, self.max_count, &skip)
            .await;
        // In every case below, the marker's claim goes with the reservation.
        let ticket = match outcome {
            Ok(Some(ticket)) => ticket,
            Ok(None) => return Ok(None),
            Err(error) => {
                return Err(Error::backend(
                    BACKEND,
                    format!("cannot scan semaphore {:?}", self.named.name),
                    error,
                ));
            }
        };
        let key = super::AdvisoryKey::Single(self.base + ticket);
        // Held before the marker's claim goes.
        reservation.claim(key);
        let ticket = reservation.split_off(&[key]);
        Ok(Some(PostgresHandle::new(self.named.hold(
            ticket,
            Use::Shared,
            vec![(key, Mode::Exclusive)],
        ))))
    }
}

impl Acquire for PostgresSemaphore {
    type Handle = PostgresHandle;

    fn name(&self) -> &str {
        &self.named.name
    }

    /// Takes a ticket, waiting as `wait` says: re-scans on every release anywhere (LISTEN /
    /// NOTIFY) and on a capped backoff for holders that died without releasing.
    ///
    /// # Cancel safety
    /// Cancel-safe: a scan interrupted by a dropped future gives back whatever ticket the
    /// server granted, on a background task.
    async fn acquire_wait(&self, wait: Wait) -> Result<Option<PostgresHandle>> {
        let deadline = wait.deadline();
        self.named.pool.wait_for_releases(&[self.marker()]).await;
        let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
        let mut outage = Outage::new(self.named.pool.unreachable_timeout());
        wait_for(&mut Scans(self), deadline, &mut backoff, &mut outage).await
    }
}

/// A wait for a ticket, as the shared wait loop runs it.
struct Scans<'a>(&'a PostgresSemaphore);

impl Contender for Scans<'_> {
    type Held = PostgresHandle;
    type Wake = Subscription;

    async fn attempt(&mut self) -> Result<Attempt<PostgresHandle>> {
        Ok(match self.0.try_once().await? {
            Some(handle) => Attempt::Taken(handle),
            None => Attempt::Busy { retry_within: None },
        })
    }

    async fn subscribe(&mut self, _deadline: Option<Instant>) -> Option<Subscription> {
        let channel = self
            .0
            .named
            .semaphore
            .as_ref()
            .map(|(_, channel)| channel.as_str())
            .unwrap_or_default();
        match self.0.listener.subscribe(channel).await {
            Ok(subscription) => Some(subscription),
            Err(error) => {
                tracing::warn!(%error, "cannot LISTEN; waiting by re-scanning only");
                None
            }
        }
    }
}

impl Semaphore for PostgresSemaphore {
    fn max_count(&self) -> u32 {
        self.max_count
    }
}

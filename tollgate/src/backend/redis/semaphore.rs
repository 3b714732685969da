//! Semaphores on one server: tickets are members of a sorted set scored by their expiry on
//! the server's clock, with the max count stored beside them.

use std::sync::{Arc, LazyLock};

use redis::Script;

use super::redlock::{self, Kind, Shared, Target};
use super::{RedisHandle, BACKEND};
use crate::{Acquire, Error, Result, Semaphore, Wait};

static ACQUIRE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/semaphore_acquire.lua")));
static EXTEND: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/semaphore_extend.lua")));
static RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/semaphore_release.lua")));
static AVAILABLE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/semaphore_available.lua")));

static TICKET: Kind = Kind {
    label: "ticket",
    acquire: &ACQUIRE,
    extend: &EXTEND,
    release: &RELEASE,
    abandon: None,
    fenced: false,
};

/// A Redis semaphore: at most `max_count` tickets, each with its own lease on the server's
/// clock. Every user of a name must give the same max count while tickets are held; a
/// different one is an [`Error::InvalidArgument`].
#[derive(Clone)]
pub struct RedisSemaphore {
    shared: Arc<Shared>,
    target: Arc<Target>,
    max_count: u32,
}

impl std::fmt::Debug for RedisSemaphore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSemaphore")
            .field("name", &self.target.name)
            .field("max_count", &self.max_count)
            .finish()
    }
}

impl RedisSemaphore {
    pub(crate) fn new(
        shared: Arc<Shared>,
        name: Arc<str>,
        max_count: u32,
        keys: [Vec<u8>; 2],
        channel: Vec<u8>,
    ) -> Self {
        RedisSemaphore {
            shared,
            target: Arc::new(Target {
                name,
                kind: &TICKET,
                keys: keys.into(),
                channel,
                extra: vec![max_count.to_string().into_bytes()],
            }),
            max_count,
        }
    }

    /// How many tickets are free now (on the server's clock; expired tickets count as free).
    pub async fn available(&self) -> Result<u32> {
        let server = &self.shared.servers[0];
        let max = self.max_count.to_string();
        let reply: Vec<i64> = tokio::time::timeout(
            self.shared.lease.expiry,
            server.run(&AVAILABLE, &self.target.keys, &[max.as_bytes()]),
        )
        .await
        .map_err(|_| {
            Error::backend(
                BACKEND,
                format!("counting the tickets of {:?} timed out", self.target.name),
                std::io::Error::from(std::io::ErrorKind::TimedOut),
            )
        })?
        .map_err(|error| {
            Error::backend(
                BACKEND,
                format!("counting the tickets of {:?} failed", self.target.name),
                error,
            )
        })?;
        match reply.as_slice() {
            [1, live] => {
                Ok(u32::try_from(*live).map_or(0, |live| self.max_count.saturating_sub(live)))
            }
            [-1, stored] => Err(crate::primitive::max_count_mismatch(
                &self.target.name,
                stored,
                self.max_count,
            )),
            other => Err(Error::backend(
                BACKEND,
                format!("counting the tickets of {:?}", self.target.name),
                format!("unexpected reply {other:?}"),
            )),
        }
    }
}

impl Acquire for RedisSemaphore {
    type Handle = RedisHandle;

    fn name(&self) -> &str {
        &self.target.name
    }

    /// Takes a ticket, waiting as `wait` says for a release notification between tries.
    ///
    /// # Cancel safety
    /// Cancel-safe: each attempt runs to completion (the rest of a dropped one on tollgate's
    /// runtime) and gives back a ticket nobody is waiting for; nothing is held while waiting
    /// between attempts.
    async fn acquire_wait(&self, wait: Wait) -> Result<Option<RedisHandle>> {
        redlock::acquire_wait(&self.shared, &self.target, wait).await
    }
}

impl Semaphore for RedisSemaphore {
    fn max_count(&self) -> u32 {
        self.max_count
    }
}

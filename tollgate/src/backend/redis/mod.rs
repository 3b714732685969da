//! The Redis backend: leased locks on one server or on several with the RedLock majority
//! rule, reader-writer locks, and semaphores.
//!
//! - **Leases.** Every hold is a key (or a sorted-set member) that expires after the lease's
//!   expiry (default 30 s) unless extended. One task per provider extends every hold each
//!   extension cadence (default a third of the expiry, at most 2.5 s), all holds due at once
//!   together, on a runtime thread of the library's own with connections of its own, so that
//!   user code that blocks or starves its runtime cannot let a lease run out. It fires a
//!   handle's loss signal when the hold is found gone (so within one cadence of a deletion)
//!   or the lease runs out unextended; a hold leaves it when the handle is released or
//!   dropped, and taking or giving back a hold wakes no thread of its own. A crashed holder's
//!   hold is free once its lease expires.
//! - **RedLock.** With several servers, an attempt runs on all of them at once and counts
//!   only when more than half grant it with at least the minimum validity (default 90 % of
//!   the expiry) left; otherwise whatever it took is given back at once. Each server gets at
//!   most expiry − min validity to answer, so a hung server cannot stall an acquire longer;
//!   when more than half fail, the attempt fails with the first server's error.
//! - **Faults are ridden out.** A wait whose servers cannot be reached (a majority of them,
//!   with RedLock), whose connections drop or whose server restarts reconnects and keeps
//!   waiting, until its deadline or `unreachable_timeout` (default 30 s) passes with the
//!   servers unreachable, then fails saying so (see
//!   [`RedisProviderBuilder::unreachable_timeout`]). A release whose connection dropped goes
//!   again once on a fresh one.
//! - **Waiting reacts to releases at once.** Release scripts publish on the primitive's
//!   channel (`tollgate:released:<key>`); a waiter subscribes before trying again, so a
//!   release wakes it immediately. A jittered backoff from 50 ms to 1 s, never sleeping past
//!   the current holder's expiry, is only the fallback for lost notifications and crashed
//!   holders.
//! - **Keys.** A lock's key is the key prefix followed by the name, verbatim (as
//!   DistributedLock does), so any name is accepted. Reader-writer locks and semaphores use
//!   several keys that share a hash tag, `<prefix>{rw:<name>}:…` and
//!   `<prefix>{semaphore:<name>}:…`, and every script gets all its keys in `KEYS`, so the
//!   scripts are Redis Cluster safe. After every hold of a name is released, none of its keys
//!   remain.
//! - **Fencing tokens** are the server's clock (`TIME`, in microseconds) when the hold was
//!   taken, read inside the acquire script — with several servers, the largest among those
//!   that granted it. No counter key is kept, so nothing is left behind; tokens increase
//!   strictly across successive holders as long as the server clock does not step back (with
//!   RedLock: as long as the servers' clocks differ by less than the time between holders).
//! - **Semaphores** need one server (a ticket counted on a majority does not bound the
//!   holders); their tickets expire on the server's clock, and their max count is stored
//!   with them: a semaphore used with another max count while tickets are held is an
//!   [`Error::InvalidArgument`].
//! - **Reader-writer locks** prefer writers: a waiting writer turns new readers away. Each
//!   reader has its own expiry, so a crashed reader does not keep writers out while other
//!   readers renew.
//!
//! URLs: `redis://[user:password@]host[:port][/db]`, `rediss://…` for TLS (`#insecure` skips
//! certificate checks), and for RedLock a comma-separated list of hosts sharing the rest of
//! the URL: `redis://h1:6379,h2:6379,h3:6379/0`. Query options: `expiry`, `min_validity`,
//! `extension_cadence`, `connect_timeout`, `unreachable_timeout` (durations such as `30s`,
//! `250ms`, or seconds; the last also `never`), and `prefix` (the key prefix).

mod builder;
mod listener;
mod redlock;
mod rwlock;
mod semaphore;

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::Script;

use crate::{
    check_max_count, Acquire, Error, Lock, LockProvider, ReadWriteLockProvider, Result,
    SemaphoreProvider, Wait,
};
pub use builder::RedisProviderBuilder;

/// Whether a Redis client error is a transient fault (see [`crate::backend::kit::fault`]): the
/// connection refused, dropped or timed out, or the server loading its data set, asking to
/// try again, without a master, or turned read-only (a failover under way). Wrong credentials and script errors are not.
pub(crate) fn transient(link: &(dyn std::error::Error + 'static)) -> Option<bool> {
    let error = link.downcast_ref::<redis::RedisError>()?;
    Some(
        error.is_io_error()
            || error.is_connection_dropped()
            || error.is_connection_refusal()
            || error.is_timeout()
            || matches!(
                error.kind(),
                redis::ErrorKind::Server(
                    redis::ServerErrorKind::BusyLoading
                        | redis::ServerErrorKind::TryAgain
                        | redis::ServerErrorKind::MasterDown
                        | redis::ServerErrorKind::ClusterDown
                        | redis::ServerErrorKind::ReadOnly
                )
            ),
    )
}
pub use redlock::RedisHandle;
use redlock::{Kind, Shared, Target};
pub use rwlock::{RedisReadWriteLock, RedisReader, RedisWriter};
pub use semaphore::RedisSemaphore;

pub(crate) const BACKEND: &str = "redis";
/// Where releases are published: this, then the primitive's (first) key.
const CHANNEL_PREFIX: &[u8] = b"tollgate:released:";
static LOCK_ACQUIRE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/lock_acquire.lua")));
static LOCK_EXTEND: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/lock_extend.lua")));
static LOCK_RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/lock_release.lua")));

static LOCK: Kind = Kind {
    label: "lock",
    acquire: &LOCK_ACQUIRE,
    extend: &LOCK_EXTEND,
    release: &LOCK_RELEASE,
    abandon: None,
    fenced: true,
};

/// How long holds last and how they are kept alive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Lease {
    pub(crate) expiry: Duration,
    pub(crate) min_validity: Duration,
    pub(crate) extension_cadence: Duration,
}

impl Lease {
    /// Allowance for clock drift between this process and the servers (as RedLock does).
    pub(crate) fn drift(&self) -> Duration {
        self.expiry / 100 + Duration::from_millis(2)
    }

    /// How long an attempt may take and still leave the minimum validity.
    pub(crate) fn attempt_budget(&self) -> Duration {
        self.expiry.saturating_sub(self.min_validity + self.drift())
    }
}

/// Creates Redis locks, reader-writer locks and semaphores by name. Cheap to clone: clones
/// share the connections.
#[derive(Clone)]
pub struct RedisProvider {
    shared: Arc<Shared>,
    prefix: Arc<str>,
}

impl std::fmt::Debug for RedisProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisProvider")
            .field(
                "servers",
                &self
                    .shared
                    .servers
                    .iter()
                    .map(|server| &server.label)
                    .collect::<Vec<_>>(),
            )
            .field("lease", &self.shared.lease)
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl RedisProvider {
    /// A provider from a URL with the options it carries (see [`RedisProvider::builder`]).
    pub fn from_url(url: &str) -> Result<Self> {
        Self::builder(url)?.build()
    }

    /// How many servers the provider uses (more than one: RedLock).
    pub fn server_count(&self) -> usize {
        self.shared.servers.len()
    }

    fn key(&self, name: &str) -> Vec<u8> {
        let mut key = self.prefix.as_bytes().to_vec();
        key.extend_from_slice(name.as_bytes());
        key
    }

    /// `<prefix>{<kind>:<name>}`: the common start of a multi-key primitive's keys, whose hash
    /// tag (never empty: it starts with the kind) puts them all in one cluster slot.
    fn tagged(&self, kind: &str, name: &str) -> Vec<u8> {
        let mut base = self.prefix.as_bytes().to_vec();
        base.push(b'{');
        base.extend_from_slice(kind.as_bytes());
        base.push(b':');
        base.extend_from_slice(name.as_bytes());
        base.push(b'}');
        base
    }
}

fn channel(key: &[u8]) -> Vec<u8> {
    [CHANNEL_PREFIX, key].concat()
}

fn suffixed(base: &[u8], suffix: &str) -> Vec<u8> {
    [base, suffix.as_bytes()].concat()
}

/// A Redis lock: the key `<prefix><name>`, on one server or a majority of several.
#[derive(Clone)]
pub struct RedisLock {
    shared: Arc<Shared>,
    target: Arc<Target>,
}

impl std::fmt::Debug for RedisLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLock")
            .field("name", &self.target.name)
            .finish()
    }
}

impl RedisLock {
    /// The key this lock uses.
    pub fn key(&self) -> &[u8] {
        &self.target.keys[0]
    }
}

impl Acquire for RedisLock {
    type Handle = RedisHandle;

    fn name(&self) -> &str {
        &self.target.name
    }

    /// Acquires, waiting as `wait` says for a release notification between tries.
    ///
    /// # Cancel safety
    /// Cancel-safe: each attempt runs to completion (the rest of a dropped one on tollgate's
    /// runtime) and gives back what it took if the future is gone by then; nothing is held while
    /// waiting between attempts.
    async fn acquire_wait(&self, wait: Wait) -> Result<Option<RedisHandle>> {
        redlock::acquire_wait(&self.shared, &self.target, wait).await
    }
}

impl Lock for RedisLock {}

impl LockProvider for RedisProvider {
    type Lock = RedisLock;

    /// Any name is accepted; the key is the prefix followed by the name.
    /// The lock of `name`, whose key is the prefix and the name verbatim (as
    /// DistributedLock.Redis has it). A name that starts with `{rw:` or `{semaphore:` is
    /// refused: keys of that form are the reader-writer locks' and semaphores' own, and a lock
    /// there would break them.
    fn lock(&self, name: &str) -> Result<RedisLock> {
        if let Some(kind) = ["{rw:", "{semaphore:"]
            .into_iter()
            .find(|start| name.starts_with(start))
        {
            return Err(Error::invalid(format!(
                "redis lock name {name:?}: names that start with {kind:?} are the keys of \
                 tollgate's reader-writer locks and semaphores"
            )));
        }
        let key = self.key(name);
        Ok(RedisLock {
            shared: self.shared.clone(),
            target: Arc::new(Target {
                name: name.into(),
                kind: &LOCK,
                channel: channel(&key),
                keys: vec![key],
                extra: Vec::new(),
            }),
        })
    }
}

impl ReadWriteLockProvider for RedisProvider {
    type ReadWriteLock = RedisReadWriteLock;

    fn read_write_lock(&self, name: &str) -> Result<RedisReadWriteLock> {
        let base = self.tagged("rw", name);
        Ok(RedisReadWriteLock::new(
            self.shared.clone(),
            name.into(),
            [
                suffixed(&base, ":readers"),
                suffixed(&base, ":writer"),
                suffixed(&base, ":waiting"),
            ],
            channel(&base),
        ))
    }
}

impl SemaphoreProvider for RedisProvider {
    type Semaphore = RedisSemaphore;

    /// A semaphore of `max_count` tickets. Semaphores need a provider of one server: with
    /// several, this is [`Error::Unsupported`].
    fn semaphore(&self, name: &str, max_count: u32) -> Result<RedisSemaphore> {
        check_max_count(name, max_count)?;
        if self.shared.servers.len() > 1 {
            return Err(Error::Unsupported {
                backend: BACKEND,
                what: "semaphores over several servers (a ticket held on a majority does not \
                       bound the holders); use a provider of one server",
            });
        }
        let base = self.tagged("semaphore", name);
        Ok(RedisSemaphore::new(
            self.shared.clone(),
            name.into(),
            max_count,
            [suffixed(&base, ":tickets"), suffixed(&base, ":max")],
            channel(&base),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        let provider = RedisProvider::from_url("redis://h/?prefix=p:").unwrap();
        assert_eq!(provider.key("a{b}"), b"p:a{b}");
        assert_eq!(provider.tagged("rw", ""), b"p:{rw:}");
    }
}

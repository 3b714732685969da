//! Reader-writer locks with writer preference: readers are members of a sorted set scored by
//! their own expiry, the writer is a key, and a writer waiting for readers to leave marks
//! itself in a third key, which turns new readers away.

use std::sync::{Arc, LazyLock};

use redis::Script;

use super::redlock::{self, Kind, Shared, Target};
use super::RedisHandle;
use crate::{Acquire, Lock, ReadWriteLock, Result, Wait};

static READ_ACQUIRE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/read_acquire.lua")));
static READ_EXTEND: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/read_extend.lua")));
static READ_RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/read_release.lua")));
static WRITE_ACQUIRE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/write_acquire.lua")));
static WRITE_EXTEND: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/write_extend.lua")));
static WRITE_RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/write_release.lua")));
static WRITE_ABANDON: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/write_abandon.lua")));

static READ: Kind = Kind {
    label: "read",
    acquire: &READ_ACQUIRE,
    extend: &READ_EXTEND,
    release: &READ_RELEASE,
    abandon: None,
    fenced: false,
};

static WRITE: Kind = Kind {
    label: "write",
    acquire: &WRITE_ACQUIRE,
    extend: &WRITE_EXTEND,
    release: &WRITE_RELEASE,
    abandon: Some(&WRITE_ABANDON),
    fenced: true,
};

/// A Redis reader-writer lock (keys `<prefix>{rw:<name>}:readers`, `:writer`, `:waiting`),
/// on one server or a majority of several.
#[derive(Clone)]
pub struct RedisReadWriteLock {
    reader: RedisReader,
    writer: RedisWriter,
}

impl std::fmt::Debug for RedisReadWriteLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisReadWriteLock")
            .field("name", &self.reader.target.name)
            .finish()
    }
}

impl RedisReadWriteLock {
    pub(crate) fn new(
        shared: Arc<Shared>,
        name: Arc<str>,
        keys: [Vec<u8>; 3],
        channel: Vec<u8>,
    ) -> Self {
        let target = |kind| {
            Arc::new(Target {
                name: name.clone(),
                kind,
                keys: keys.to_vec(),
                channel: channel.clone(),
                extra: Vec::new(),
            })
        };
        RedisReadWriteLock {
            reader: RedisReader {
                shared: shared.clone(),
                target: target(&READ),
            },
            writer: RedisWriter {
                shared,
                target: target(&WRITE),
            },
        }
    }
}

/// The read side of a [`RedisReadWriteLock`].
#[derive(Clone)]
pub struct RedisReader {
    shared: Arc<Shared>,
    target: Arc<Target>,
}

impl std::fmt::Debug for RedisReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("RedisReader")
            .field(&self.target.name)
            .finish()
    }
}

/// The write side of a [`RedisReadWriteLock`].
#[derive(Clone)]
pub struct RedisWriter {
    shared: Arc<Shared>,
    target: Arc<Target>,
}

impl std::fmt::Debug for RedisWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("RedisWriter")
            .field(&self.target.name)
            .finish()
    }
}

impl Acquire for RedisReader {
    type Handle = RedisHandle;

    fn name(&self) -> &str {
        &self.target.name
    }

    /// Takes a read hold once no writer holds or waits, waiting as `wait` says.
    ///
    /// # Cancel safety
    /// Cancel-safe: each attempt runs to completion (the rest of a dropped one on tollgate's
    /// runtime) and gives back a hold nobody is waiting for; nothing is held while waiting between
    /// attempts.
    async fn acquire_wait(&self, wait: Wait) -> Result<Option<RedisHandle>> {
        redlock::acquire_wait(&self.shared, &self.target, wait).await
    }
}

impl Acquire for RedisWriter {
    type Handle = RedisHandle;

    fn name(&self) -> &str {
        &self.target.name
    }

    /// Takes the write hold, waiting as `wait` says; while it waits for readers to leave,
    /// new readers are turned away.
    ///
    /// # Cancel safety
    /// Cancel-safe: each attempt runs to completion (the rest of a dropped one on tollgate's
    /// runtime) and gives back a hold nobody is waiting for, and a wait that ends without the hold
    /// (dropped or timed out) withdraws its waiting mark, so readers are admitted again.
    async fn acquire_wait(&self, wait: Wait) -> Result<Option<RedisHandle>> {
        redlock::acquire_wait(&self.shared, &self.target, wait).await
    }
}

impl Lock for RedisWriter {}

impl ReadWriteLock for RedisReadWriteLock {
    type Read = RedisReader;
    type Write = RedisWriter;

    fn name(&self) -> &str {
        &self.reader.target.name
    }

    fn reader(&self) -> RedisReader {
        self.reader.clone()
    }

    fn writer(&self) -> RedisWriter {
        self.writer.clone()
    }
}

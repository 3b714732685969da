//! The shared backend layer: the mechanisms every server backend needs, written once, so
//! that a backend folder holds its protocol only.
//!
//! - [`runtime`]: tollgate's own runtime, where releases after a drop and the rest of
//!   abandoned operations run, and the count of releases under way (flushed at exit).
//! - [`hold`]: the hold shell: release exactly once, on drop or by a cancel-safe `release()`.
//! - [`completion`]: operations that finish even when their caller stops waiting.
//! - [`fault`]: which errors are transient, and how a wait rides them out.
//! - [`ids`]: random ids, unique without coordination.
//! - [`names`]: the name hashing of DistributedLock's name mappings.
//! - [`notes`]: releases under way per key, so this process's next acquire waits for them.
//! - [`options`]: URL options, with one duration grammar and unknown keys named.
//! - [`pool`]: the multiplexed session pool of the SQL backends.
//! - [`turns`]: this process's waiters for one key, queued so that one at a time waits on the
//!   server.
//! - [`wait`]: the one wait loop and its jittered, capped backoff.

pub(crate) mod fault;
#[cfg(any(feature = "redis", feature = "zookeeper"))]
pub(crate) mod ids;
#[cfg(any(feature = "local", feature = "mysql"))]
pub(crate) mod names;
pub(crate) mod options;
pub(crate) mod runtime;
pub(crate) mod wait;

#[cfg(any(
    feature = "postgres",
    feature = "mysql",
    feature = "redis",
    feature = "zookeeper"
))]
pub(crate) mod completion;

#[cfg(any(
    feature = "postgres",
    feature = "mysql",
    feature = "redis",
    feature = "zookeeper"
))]
pub(crate) mod hold;
#[cfg(any(
    feature = "postgres",
    feature = "mysql",
    feature = "redis",
    feature = "zookeeper"
))]
pub(crate) mod notes;
#[cfg(any(feature = "postgres", feature = "mysql"))]
// Each backend uses its own part of the pool (a scan marker, which sessions are pinged).
#[cfg_attr(not(all(feature = "postgres", feature = "mysql")), allow(dead_code))]
pub(crate) mod pool;
#[cfg(any(feature = "postgres", feature = "redis"))]
pub(crate) mod turns;

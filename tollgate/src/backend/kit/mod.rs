//! The shared backend layer: the mechanisms every server backend needs, written once, so
//! that a backend folder holds its protocol only.
//!
//! - [`runtime`]: tollgate's own runtime, where releases after a drop and the rest of
//!   abandoned operations run, and the count of releases under way (flushed at exit).
//! - [`hold`]: the hold shell: release exactly once, on drop or by a cancel-safe `release()`.
//! - [`completion`]: operations that finish even when their caller stops waiting.
//! - [`notes`]: releases under way per key, so this process's next acquire waits for them.
//! - [`options`]: URL options, with one duration grammar and unknown keys named.

pub(crate) mod options;
pub(crate) mod runtime;

#[cfg(any(feature = "postgres", feature = "mysql", feature = "redis"))]
pub(crate) mod completion;
#[cfg(any(feature = "postgres", feature = "mysql", feature = "redis"))]
pub(crate) mod hold;
#[cfg(any(feature = "postgres", feature = "mysql", feature = "redis"))]
pub(crate) mod notes;

/// How long a keepalive ping sent every `interval` may go unanswered before its connection
/// counts as dead: twice the interval, at least a second. A network that silently drops
/// everything would otherwise leave the ping waiting for as long as TCP retransmits.
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub(crate) fn ping_limit(interval: std::time::Duration) -> std::time::Duration {
    (interval * 2).max(std::time::Duration::from_secs(1))
}

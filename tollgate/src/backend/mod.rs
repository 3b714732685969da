//! The backends, each behind its cargo feature.

#[cfg(feature = "local")]
pub mod local;

#[cfg(feature = "postgres")]
pub mod postgres;

#[cfg(feature = "mysql")]
pub mod mysql;

#[cfg(feature = "redis")]
pub mod redis;

#[cfg(any(feature = "postgres", feature = "mysql", feature = "redis"))]
mod release_notes;

#[cfg(any(feature = "mysql", feature = "redis"))]
mod completion;

/// How long a keepalive ping sent every `interval` may go unanswered before its connection
/// counts as dead: twice the interval, at least a second. A network that silently drops
/// everything would otherwise leave the ping waiting for as long as TCP retransmits.
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub(crate) fn ping_limit(interval: std::time::Duration) -> std::time::Duration {
    (interval * 2).max(std::time::Duration::from_secs(1))
}

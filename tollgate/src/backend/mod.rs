//! The backends, each behind its cargo feature, on the shared layer in `kit` (private: the
//! hold shell, the runtime, the session pool, the wait loop, interruptible server-side waits,
//! URL options).
//!
//! Every backend folder has the same layout, as far as the backend has the part: `mod.rs`
//! (the provider, the primitives and handles, their trait impls), `builder.rs` (the builder
//! and the URL that fills one), `connection.rs` (a session on the server's protocol),
//! `wait.rs` (how a primitive waits), `semaphore.rs` and `rwlock.rs`, then what is the
//! backend's own (name mappings, release listeners, RedLock's quorum, the caller-controlled
//! scopes of PostgreSQL).

#[cfg(feature = "local")]
pub mod local;

#[cfg(feature = "postgres")]
pub mod postgres;

#[cfg(feature = "mysql")]
pub mod mysql;

#[cfg(feature = "redis")]
pub mod redis;

#[cfg(feature = "zookeeper")]
pub mod zookeeper;

pub(crate) mod kit;

//! The backends, each behind its cargo feature, on the shared layer in `kit` (private: the
//! hold shell, the runtime, the session pool, the wait loop, URL options).

#[cfg(feature = "local")]
pub mod local;

#[cfg(feature = "postgres")]
pub mod postgres;

#[cfg(feature = "mysql")]
pub mod mysql;

#[cfg(feature = "redis")]
pub mod redis;

pub(crate) mod kit;

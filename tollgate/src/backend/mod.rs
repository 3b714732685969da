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

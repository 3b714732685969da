//! The backends, each behind its cargo feature.

#[cfg(feature = "local")]
pub mod local;

#[cfg(feature = "postgres")]
pub mod postgres;

#[cfg(feature = "mysql")]
pub mod mysql;

#[cfg(any(feature = "postgres", feature = "mysql"))]
mod release_notes;

//! The backends, each behind its cargo feature.

#[cfg(feature = "local")]
pub mod local;

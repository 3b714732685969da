//! Distributed mutexes, reader-writer locks and semaphores with one contract on every
//! backend.
//!
//! ```
//! use std::time::Duration;
//! use tollgate::{Acquire, SemaphoreProvider};
//!
//! # #[cfg(feature = "local")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> tollgate::Result<()> {
//! # let dir = tempfile::tempdir().unwrap();
//! let provider = tollgate::local::LocalProvider::with_directory(dir.path())?; // or ::new()
//! let semaphore = provider.semaphore("reports", 3)?;
//! let ticket = semaphore.acquire_timeout(Duration::from_secs(5)).await?; // Err(Timeout) after 5 s
//! // we hold one of 3 tickets here, shared by every process on this machine
//! drop(ticket); // gives it back
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "local"))]
//! # fn main() {}
//! ```
//!
//! - The contract is in [`primitive`] (what can be acquired, and how) and [`handle`] (what a
//!   hold gives you). Every acquire future is cancel-safe: dropping it leaves nothing held.
//! - Pick a backend at compile time with concrete types (`tollgate::local::LocalProvider`), or
//!   at run time from a URL with [`AnyProvider::from_url`].
//! - [`blocking`] wraps everything for code without an async runtime.

#![warn(missing_docs)]

pub mod any;
pub mod backend;
pub mod blocking;
pub mod composite;
mod error;
pub mod handle;
pub mod primitive;

#[cfg(feature = "local")]
pub use backend::local;

pub use any::{
    AnyAcquire, AnyHandle, AnyLock, AnyProvider, AnyProviderBuilder, AnyReadWriteLock, AnyReader,
    AnySemaphore, AnyUpgradeableHandle, AnyUpgradeableReader,
};
pub use backend::kit::options::parse_duration;
pub use error::{BoxError, Error, Result};
pub use handle::{flush_releases, Handle, LossNotifier, LossSignal, UpgradeableHandle};
pub use primitive::{
    check_max_count, Acquire, Lock, LockProvider, ReadWriteLock, ReadWriteLockProvider, Semaphore,
    SemaphoreProvider, UpgradeableReadWriteLock, UpgradeableReadWriteLockProvider, Wait,
};

/// The README's examples, compiled as doc tests.
#[cfg(all(doctest, feature = "local"))]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;

//! The shared conformance suite: plain async functions generic over a provider (or a
//! [`support::Subject`]), and macros that turn them into one `#[tokio::test]` per case.
//! Every backend's test file runs the parts its primitives support:
//!
//! ```ignore
//! mod conformance;
//! mod lock { use super::*; mutex_suite!(Locks { provider: provider(), url: url() }); }
//! ```
//!
//! Cross-process cases re-run the test binary itself as a holder process; each test file
//! must therefore call `conformance::holder_entry!()` once.
#![allow(dead_code)]

pub mod composite;
pub mod faults;
pub mod mutex;
pub mod rw;
pub mod semaphore;
pub mod support;

/// Defines the test that, started by [`support::Holder`], acts as the holder process.
#[macro_export]
macro_rules! holder_entry {
    () => {
        #[test]
        #[ignore = "the holder process of the cross-process cases, started by the suite"]
        fn conformance_holder_process() {
            $crate::conformance::support::holder_main();
        }
    };
}

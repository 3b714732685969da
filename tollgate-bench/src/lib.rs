//! The harness the benchmarks in `benches/` share: what runs a benchmark binary (its
//! arguments, the partner process it starts, the clocks it reads) and what prints its
//! findings. Each bench file keeps only its cases: the subjects of one backend and how they
//! are measured.
//!
//! - [`args`]: the bench binary's arguments (smoke mode, `--list`, the section filter) and
//!   its environment (server URLs, counts).
//! - [`clock`]: `CLOCK_MONOTONIC`, one clock for every process of the machine, and this
//!   thread's CPU time.
//! - [`partner`]: the partner process (the bench binary run again with
//!   [`partner::PARTNER_ENV`] set), driven line by line, and its side of the conversation.
//! - [`handoff`]: the latencies of a hand-off between two processes.
//! - [`interleave`]: the rotating order in which interleaved rows take turns.
//! - [`placement`]: on which CPU a thread runs, and pinning this one.
//! - [`load`]: the load average, for the notes beside a result.
//! - [`stats`]: medians, criterion's samples.
//! - [`table`]: fixed-width summary tables and the time formats in their cells.
//! - [`cycle`]: one acquire + release of a tollgate primitive.
//! - [`contention`]: tasks of one process taking turns on one name, against the floor.

#![warn(missing_docs)]

pub mod args;
pub mod clock;
pub mod contention;
pub mod cycle;
pub mod handoff;
pub mod interleave;
pub mod load;
pub mod partner;
pub mod placement;
pub mod stats;
pub mod table;

/// The `main` of a bench binary: plays the partner's role if this process is a partner
/// (see [`partner::role`]), else runs `bench` with the command line's arguments.
pub fn run(partner: impl FnOnce(&str), bench: impl FnOnce(args::BenchArgs)) {
    match partner::role() {
        Some(role) => partner(&role),
        None => bench(args::BenchArgs::from_env()),
    }
}

/// A tokio current-thread runtime with I/O and time enabled: what every measured task and
/// every partner runs on.
pub fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

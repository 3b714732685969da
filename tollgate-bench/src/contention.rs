//! Contention: tasks of one process taking turns on one name, tollgate against the floor in
//! alternating rounds, in acquisitions per second.

use std::future::Future;
use std::time::{Duration, Instant};

use tollgate::Acquire;

use crate::cycle::acquire_release;
use crate::load::load_average;
use crate::stats::upper_median;

/// How many tasks contend for the one name.
pub const TASKS: usize = 8;
/// How long each side of one round runs.
pub const SPAN: Duration = Duration::from_secs(3);
/// Rounds, tollgate and the floor alternating.
pub const ROUNDS: usize = 4;

/// The rounds and the span of each side: [`ROUNDS`] and [`SPAN`], or one short round in a
/// smoke run (`testing`).
pub fn rounds_and_span(testing: bool) -> (usize, Duration) {
    if testing {
        (1, Duration::from_millis(200))
    } else {
        (ROUNDS, SPAN)
    }
}

/// Runs `rounds` rounds on a multi-threaded runtime, each `tollgate(round)` and then
/// `floor(round)` (each the acquisitions per second of its side, for `span`), printing every
/// round and then the medians, with the load average at the start and at the end.
pub fn compare<T, TF, F, FF>(rounds: usize, span: Duration, tollgate: T, floor: F)
where
    T: Fn(usize) -> TF,
    TF: Future<Output = f64>,
    F: Fn(usize) -> FF,
    FF: Future<Output = f64>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "\nContention: {TASKS} tasks, one name, {span:?} per side, {rounds} rounds (load \
         average at start: {})",
        load_average()
    );
    let (mut ours, mut floors) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let tollgate = runtime.block_on(tollgate(round));
        let floor = runtime.block_on(floor(round));
        println!(
            "  round {round}: tollgate {tollgate:.0}/s, floor {floor:.0}/s, {:.2}×",
            tollgate / floor
        );
        ours.push(tollgate);
        floors.push(floor);
    }
    let median = |values: &[f64]| upper_median(values).expect("rounds");
    let (ours, floors) = (median(&ours), median(&floors));
    println!(
        "  median: tollgate {ours:.0} acquisitions/s, floor {floors:.0}/s: {:.2}× (load average \
         at end: {})",
        ours / floors,
        load_average()
    );
}

/// One task per subject, each running `cycle` (one acquire + release, handing its subject
/// back) over and over until `span` has passed: the acquisitions per second of all of them
/// (printing the busiest task's share).
/// Runs on the current runtime, which should be multi-threaded.
pub async fn turns<S, C, CF>(subjects: Vec<S>, span: Duration, cycle: C) -> f64
where
    S: Send + 'static,
    C: Fn(S) -> CF + Clone + Send + 'static,
    CF: Future<Output = S> + Send,
{
    let stop = Instant::now() + span;
    let tasks: Vec<_> = subjects
        .into_iter()
        .map(|subject| {
            let cycle = cycle.clone();
            tokio::spawn(async move {
                let (mut subject, mut count) = (subject, 0_u64);
                while Instant::now() < stop {
                    subject = cycle(subject).await;
                    count += 1;
                }
                count
            })
        })
        .collect();
    let mut counts = Vec::with_capacity(tasks.len());
    for task in tasks {
        counts.push(task.await.expect("a contending task"));
    }
    let total: u64 = counts.iter().sum();
    // How evenly the turns went round: a side whose releaser takes the name straight back
    // shows one task far above 1/TASKS.
    let busiest = counts.iter().max().copied().unwrap_or_default();
    println!(
        "    (busiest task: {:.0} % of {total} acquisitions)",
        100.0 * busiest as f64 / total.max(1) as f64
    );
    total as f64 / span.as_secs_f64()
}

/// [`turns`] of tollgate locks (one name, one provider), after one warm acquire + release
/// (a connection opened, its statements prepared): their acquisitions per second.
pub async fn tollgate_turns<A: Acquire + Send + Sync + 'static>(
    locks: Vec<A>,
    span: Duration,
) -> f64 {
    acquire_release(locks.first().expect("a lock")).await;
    turns(locks, span, |lock| async move {
        acquire_release(&lock).await;
        lock
    })
    .await
}

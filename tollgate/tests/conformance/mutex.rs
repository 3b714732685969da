//! The mutex contract, for anything that admits one holder: a lock, a semaphore of max 1,
//! a reader-writer lock's write side.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate::{Acquire, Error, Handle};

use super::support::{unique, Holder, Subject, PROMPT};

const SHORT: Duration = Duration::from_millis(200);
/// A 0.2 s timeout must be over within this.
const SHORT_BOUND: Duration = Duration::from_millis(500);

pub async fn exclusion_between_instances<S: Subject>(subject: S) {
    let name = unique("instances");
    let (first, second) = (subject.make(&name), subject.make(&name));
    let held = first
        .try_acquire()
        .await
        .unwrap()
        .expect("free lock is acquired");
    assert!(
        second.try_acquire().await.unwrap().is_none(),
        "second instance got a held lock"
    );
    held.release().await.unwrap();
    let again = second
        .try_acquire()
        .await
        .unwrap()
        .expect("released lock is free");
    assert!(first.try_acquire().await.unwrap().is_none());
    // Dropping releases without blocking: on a networked backend the release may land a
    // moment later, so the next holder waits for it (promptly), rather than trying once.
    drop(again);
    tokio::time::timeout(PROMPT, first.acquire())
        .await
        .expect("drop released the lock")
        .unwrap();
}

pub async fn exclusion_between_processes<S: Subject>(subject: S) {
    let name = unique("processes");
    let lock = subject.make(&name);
    let mut holder = Holder::start(&subject.url(), &subject.child_kind(), &name).await;
    holder.held().await;
    assert!(
        lock.try_acquire().await.unwrap().is_none(),
        "held by another process"
    );
    let waiter = tokio::spawn({
        let lock = lock.clone();
        async move { lock.acquire().await.map(|handle| handle.fencing_token()) }
    });
    holder.release().await;
    tokio::time::timeout(PROMPT, waiter)
        .await
        .expect("waiter proceeds on release")
        .unwrap()
        .unwrap();
}

pub async fn not_reentrant<S: Subject>(subject: S) {
    let name = unique("reentrant");
    let lock = subject.make(&name);
    let _held = lock.acquire().await.unwrap();
    assert!(
        lock.try_acquire().await.unwrap().is_none(),
        "the holder's own try succeeded"
    );
    let started = Instant::now();
    let error = lock.acquire_timeout(SHORT).await.unwrap_err();
    assert!(error.is_timeout(), "{error}");
    assert!(started.elapsed() >= SHORT);
}

pub async fn names_independent_and_case_sensitive<S: Subject>(subject: S) {
    let base = unique("case");
    let long = format!("{base}{}", "y".repeat(10_000));
    let names = [
        format!("{base}-abc"),
        format!("{base}-ABC"),
        format!("{base}/../.."),
        format!("{base}\0nul"),
        format!("{base}\"'`quotes"),
        format!("{base}😀🔒"),
        long,
    ];
    let mut handles = Vec::new();
    for name in &names {
        let handle = subject.make(name).try_acquire().await.unwrap();
        handles.push(handle.unwrap_or_else(|| panic!("{:.40}… collided with another name", name)));
    }
    for name in &names {
        assert!(
            subject.make(name).try_acquire().await.unwrap().is_none(),
            "{name:.40} not held"
        );
    }
    // The empty name is a name like any other (it is shared by every run, so only a try).
    let empty = subject.make("");
    if let Some(held) = empty.try_acquire().await.unwrap() {
        assert!(subject.make("").try_acquire().await.unwrap().is_none());
        drop(held);
    }
}

pub async fn timeout_versus_not_acquired<S: Subject>(subject: S) {
    let name = unique("timeouts");
    let lock = subject.make(&name);
    let _held = lock.acquire().await.unwrap();
    let contender = subject.make(&name);

    let started = Instant::now();
    match contender.acquire_timeout(SHORT).await {
        Err(Error::Timeout {
            name: reported,
            timeout,
        }) => {
            assert_eq!(reported, name);
            assert_eq!(timeout, SHORT);
        }
        other => panic!("expected a timeout error, got {other:?}"),
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= SHORT && elapsed < SHORT_BOUND,
        "acquire_timeout took {elapsed:?}"
    );

    let started = Instant::now();
    assert!(contender
        .try_acquire_timeout(SHORT)
        .await
        .unwrap()
        .is_none());
    let elapsed = started.elapsed();
    assert!(
        elapsed >= SHORT && elapsed < SHORT_BOUND,
        "try_acquire_timeout took {elapsed:?}"
    );

    let started = Instant::now();
    assert!(contender.try_acquire().await.unwrap().is_none());
    assert!(contender
        .acquire_timeout(Duration::ZERO)
        .await
        .unwrap_err()
        .is_timeout());
    assert!(
        started.elapsed() < SHORT_BOUND,
        "zero waits took {:?}",
        started.elapsed()
    );
}

pub async fn zero_timeout_makes_a_real_attempt<S: Subject>(subject: S) {
    let lock = subject.make(&unique("zero"));
    let held = lock
        .acquire_timeout(Duration::ZERO)
        .await
        .expect("a free lock is acquired at zero timeout");
    held.release().await.unwrap();
    assert!(lock
        .try_acquire_timeout(Duration::ZERO)
        .await
        .unwrap()
        .is_some());
}

pub async fn waits_forever_then_proceeds<S: Subject>(subject: S) {
    let name = unique("forever");
    let held = subject.make(&name).acquire().await.unwrap();
    let waiter = tokio::spawn({
        let lock = subject.make(&name);
        async move { lock.acquire().await.map(drop) }
    });
    // Still waiting well past a short timeout.
    tokio::time::sleep(SHORT).await;
    assert!(
        !waiter.is_finished(),
        "acquire returned while the lock was held"
    );
    let released = Instant::now();
    held.release().await.unwrap();
    tokio::time::timeout(PROMPT, waiter)
        .await
        .expect("waiter proceeds")
        .unwrap()
        .unwrap();
    assert!(
        released.elapsed() < Duration::from_secs(2),
        "hand-off took {:?}",
        released.elapsed()
    );
}

pub async fn dropped_acquire_leaves_nothing_held<S: Subject>(subject: S) {
    let name = unique("cancel");
    let held = subject.make(&name).acquire().await.unwrap();
    let contender = subject.make(&name);
    // Drop the acquire future while it waits...
    assert!(tokio::time::timeout(SHORT, contender.acquire())
        .await
        .is_err());
    // ...and also a spawned one, aborted mid-wait.
    let task = tokio::spawn({
        let contender = contender.clone();
        async move { contender.acquire().await.map(drop) }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    task.abort();
    let _ = task.await;
    held.release().await.unwrap();
    // Nothing the cancelled acquires did may hold the lock now.
    let other = subject.make(&name);
    let again = tokio::time::timeout(PROMPT, other.acquire())
        .await
        .expect("lock is free")
        .unwrap();
    again.release().await.unwrap();
    // Cancelling an acquire that would have succeeded at once also leaves nothing.
    let future = contender.acquire();
    drop(future);
    assert!(other.try_acquire().await.unwrap().is_some());
}

pub async fn contenders_never_overlap<S: Subject>(subject: S) {
    let name = unique("crowd");
    let inside = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (lock, inside, peak) = (subject.make(&name), inside.clone(), peak.clone());
        tasks.push(tokio::spawn(async move {
            let handle = lock.acquire().await.unwrap();
            let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            tokio::task::yield_now().await;
            inside.fetch_sub(1, Ordering::SeqCst);
            handle.release().await.unwrap();
        }));
    }
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("crowd finishes")
            .unwrap();
    }
    assert_eq!(peak.load(Ordering::SeqCst), 1, "two holders at once");
}

pub async fn release_is_final_and_stale_release_harmless<S: Subject>(subject: S) {
    let name = unique("stale");
    let lock = subject.make(&name);
    let first = lock.acquire().await.unwrap();
    let first_token = first.fencing_token();
    first.release().await.unwrap();
    let second = lock.acquire().await.unwrap();
    if let (Some(a), Some(b)) = (first_token, second.fencing_token()) {
        assert!(b > a, "fencing token did not increase: {a} then {b}");
    }
    // The first holder is gone for good: a fresh instance still sees the second's hold.
    assert!(subject.make(&name).try_acquire().await.unwrap().is_none());
    let loss = second.loss_signal();
    drop(second);
    assert!(!loss.is_lost(), "a normal release is not a loss");
    tokio::time::timeout(PROMPT, subject.make(&name).acquire())
        .await
        .expect("drop released the lock")
        .unwrap();
    assert!(!loss.is_lost(), "a normal release is not a loss");
}

pub async fn fencing_tokens_increase_across_processes<S: Subject>(subject: S) {
    let name = unique("fencing");
    let lock = subject.make(&name);
    let mut tokens = Vec::new();
    for round in 0..3 {
        if round == 1 {
            let mut holder = Holder::start(&subject.url(), &subject.child_kind(), &name).await;
            tokens.push(holder.held().await);
            holder.release().await;
        } else {
            tokens.push(lock.acquire().await.unwrap().fencing_token());
        }
    }
    if tokens.iter().all(Option::is_some) {
        assert!(
            tokens.windows(2).all(|pair| pair[0] < pair[1]),
            "tokens {tokens:?}"
        );
    } else {
        assert!(
            tokens.iter().all(Option::is_none),
            "tokens given only sometimes: {tokens:?}"
        );
    }
}

pub async fn loss_never_fires_on_normal_release<S: Subject>(subject: S) {
    let lock = subject.make(&unique("loss"));
    let handle = lock.acquire().await.unwrap();
    let can_detect = handle.can_detect_loss();
    let lost = handle.lost();
    let signal = handle.loss_signal();
    assert_eq!(signal.can_detect(), can_detect);
    handle.release().await.unwrap();
    assert!(
        tokio::time::timeout(SHORT, lost).await.is_err(),
        "loss fired on a normal release"
    );
    assert!(!signal.is_lost());
}

pub async fn leaked_handle_freed_when_process_exits<S: Subject>(subject: S) {
    let name = unique("leak");
    let mut holder = Holder::start(&subject.url(), &subject.child_kind(), &name).await;
    holder.held().await;
    let lock = subject.make(&name);
    assert!(lock.try_acquire().await.unwrap().is_none());
    let waiter = tokio::spawn({
        let lock = lock.clone();
        async move { lock.acquire().await.map(drop) }
    });
    holder.exit_without_release().await;
    tokio::time::timeout(PROMPT, waiter)
        .await
        .expect("leaked hold freed")
        .unwrap()
        .unwrap();
}

pub async fn killed_holder_frees_the_lock<S: Subject>(subject: S) {
    let name = unique("sigkill");
    let mut holder = Holder::start(&subject.url(), &subject.child_kind(), &name).await;
    holder.held().await;
    let lock = subject.make(&name);
    let waiter = tokio::spawn({
        let lock = lock.clone();
        async move { lock.acquire().await.map(drop) }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiter.is_finished());
    holder.kill().await;
    tokio::time::timeout(PROMPT, waiter)
        .await
        .expect("SIGKILLed holder's lock freed")
        .unwrap()
        .unwrap();
}

pub async fn waiting_process_acquires_on_release<S: Subject>(subject: S) {
    let name = unique("child-waits");
    let lock = subject.make(&name);
    let held = lock.acquire().await.unwrap();
    let mut waiter = Holder::start(&subject.url(), &subject.child_kind(), &name).await;
    assert!(
        !waiter.holds_within(SHORT).await,
        "child acquired a held lock"
    );
    held.release().await.unwrap();
    waiter.held().await;
    assert!(lock.try_acquire().await.unwrap().is_none());
    waiter.release().await;
}

/// Runs every case of the mutex suite as its own test.
#[macro_export]
macro_rules! mutex_suite {
    ($subject:expr) => {
        $crate::mutex_suite!(@cases $subject;
            exclusion_between_instances, exclusion_between_processes, not_reentrant,
            names_independent_and_case_sensitive, timeout_versus_not_acquired,
            zero_timeout_makes_a_real_attempt, waits_forever_then_proceeds,
            dropped_acquire_leaves_nothing_held, contenders_never_overlap,
            release_is_final_and_stale_release_harmless, fencing_tokens_increase_across_processes,
            loss_never_fires_on_normal_release, leaked_handle_freed_when_process_exits,
            killed_holder_frees_the_lock, waiting_process_acquires_on_release);
    };
    (@cases $subject:expr; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                $crate::conformance::mutex::$case($subject).await;
            }
        )*
    };
}

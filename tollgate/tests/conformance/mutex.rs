//! The mutex contract, for anything that admits one holder: a lock, a semaphore of max 1,
//! a reader-writer lock's write side.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tollgate::blocking::Blocking;
use tollgate::{Acquire, Error, Handle};

use super::support::{
    abandon, current_thread_runtime, free_within, outcome, unique, Holder, PlainThread, Subject,
    ABANDON_WAYS, PROMPT,
};

const SHORT: Duration = Duration::from_millis(200);
/// A 0.2 s timeout must be over within this.
const SHORT_BOUND: Duration = Duration::from_millis(500);
/// A dropped handle's release takes milliseconds; a fresh instance waits this long for it.
const DROP_BOUND: Duration = Duration::from_secs(2);
/// A blocking call inside a runtime answers (1 s at most, as asked) within this.
const BLOCKING_BOUND: Duration = Duration::from_secs(2);

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

/// Names that differ only after a NUL byte (or by a trailing NUL) are different names: no
/// backend may cut a name at its first NUL.
pub async fn names_differing_after_nul_are_distinct<S: Subject>(subject: S) {
    let base = unique("nul");
    let names = [
        base.clone(),
        format!("{base}\0b"),
        format!("{base}\0c"),
        format!("{base}\0"),
    ];
    let mut handles = Vec::new();
    for name in &names {
        let handle = subject.make(name).try_acquire().await.unwrap();
        handles.push(handle.unwrap_or_else(|| {
            panic!("{name:?} collided with a name held before it, among {names:?}")
        }));
    }
    for name in &names {
        assert!(
            subject.make(name).try_acquire().await.unwrap().is_none(),
            "{name:?} not held"
        );
    }
}

/// A timeout too long for the server's own limit (MySQL's `GET_LOCK` answers a huge one at
/// once; PostgreSQL's `lock_timeout` stops at 24.8 days) waits as forever does.
pub async fn huge_timeout_waits_like_forever<S: Subject>(subject: S) {
    let name = unique("huge-timeout");
    let held = subject.make(&name).acquire().await.unwrap();
    let waiter = subject.make(&name);
    let waiting = tokio::spawn(async move {
        let ages = Duration::from_secs(10_000 * 365 * 24 * 3600);
        waiter.acquire_timeout(ages).await.map(drop)
    });
    // The failure this catches came back within milliseconds.
    tokio::time::sleep(SHORT_BOUND).await;
    assert!(
        !waiting.is_finished(),
        "a 10,000-year wait ended early: {:?}",
        waiting.await
    );
    held.release().await.unwrap();
    tokio::time::timeout(PROMPT, waiting)
        .await
        .expect("the waiter takes the lock once it is free")
        .unwrap()
        .expect("acquired");
}

/// An acquire future dropped at any point of its wait — at its first poll, mid-wait, and
/// in the race with the release that would grant it — leaves nothing held: a storm of drops
/// at random moments around a hand-off, with bounded and unbounded waits.
pub async fn acquire_dropped_at_random_points<S: Subject>(subject: S) {
    let name = unique("acquire-storm");
    let (holding, waiting) = (subject.make(&name), subject.make(&name));
    for round in 0..40 {
        let held = holding
            .acquire_timeout(PROMPT)
            .await
            .unwrap_or_else(|error| panic!("round {round}: acquire: {error}"));
        let pause = Duration::from_micros(rand::random::<u64>() % 4_000);
        let release = async {
            tokio::time::sleep(pause).await;
            held.release().await
        };
        let wait = async {
            if round % 2 == 0 {
                abandon(round / 2, waiting.acquire()).await
            } else {
                abandon(round / 2, waiting.acquire_timeout(PROMPT)).await
            }
        };
        let (released, (how, got)) = tokio::join!(release, wait);
        released.unwrap_or_else(|error| panic!("round {round}: release: {error}"));
        match got {
            Some(Ok(handle)) => handle
                .release()
                .await
                .unwrap_or_else(|error| panic!("round {round}: release of the grant: {error}")),
            Some(Err(error)) => panic!("round {round} ({how}): the acquire failed: {error}"),
            None => {}
        }
        if let Err(why) = free_within(&subject, &name, PROMPT).await {
            panic!("round {round}: after an acquire abandoned at {how}, {pause:?} before the release: {why}");
        }
    }
}

/// Gives up on `handle.release()` part-way, the `round`-th way of a rotation: those of
/// [`abandon`], and a spawned release aborted after a yield. Returns how.
async fn abandon_release<H: Handle>(round: usize, handle: H) -> String {
    let way = round % (ABANDON_WAYS + 1);
    if way == ABANDON_WAYS {
        let task = tokio::spawn(handle.release());
        tokio::task::yield_now().await;
        task.abort();
        match task.await {
            Ok(Err(error)) => panic!("round {round}: the spawned release failed: {error}"),
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Ok(Ok(())) | Err(_) => {}
        }
        return "a spawned release aborted after a yield".into();
    }
    let (how, output) = abandon(way, handle.release()).await;
    if let Some(Err(error)) = output {
        panic!("round {round} ({how}): the release failed: {error}");
    }
    how
}

/// `release()` is cancel-safe: a release future dropped at any point still releases, for
/// this process's later acquires and for other processes.
pub async fn dropped_release_leaves_nothing_held<S: Subject>(subject: S) {
    let name = unique("release-cancel");
    let lock = subject.make(&name);
    for round in 0..40 {
        let handle = lock
            .acquire_timeout(PROMPT)
            .await
            .unwrap_or_else(|error| panic!("round {round}: acquire: {error}"));
        let how = abandon_release(round, handle).await;
        if let Err(why) = free_within(&subject, &name, PROMPT).await {
            panic!("round {round}: after a release abandoned at {how}, a fresh instance: {why}");
        }
    }
    let mut holder = Holder::start(&subject.url(), &subject.child_kind(), &name).await;
    holder.held().await;
    holder.release().await;
}

/// Dropping a handle on a plain thread (no runtime there) releases it promptly, and releases
/// only that hold: another hold of the same provider stays held and is not reported lost.
pub async fn handle_dropped_on_plain_thread_is_released<S: Subject>(subject: S) {
    let (name, other_name) = (unique("thread-drop"), unique("thread-drop-other"));
    let drop_on_thread = |handle: <S::Primitive as Acquire>::Handle| {
        PlainThread::spawn("dropping a handle on a plain thread", move || drop(handle)).join(PROMPT)
    };

    let handle = subject.make(&name).acquire().await.unwrap();
    drop_on_thread(handle).await;
    expect_free_after_drop(&subject, &name, "after a drop on a plain thread").await;

    let other = subject.make(&other_name).acquire().await.unwrap();
    let handle = subject.make(&name).acquire().await.unwrap();
    drop_on_thread(handle).await;
    let after = "beside another hold, after a drop on a plain thread";
    expect_free_after_drop(&subject, &name, after).await;
    assert!(
        !other.loss_signal().is_lost(),
        "dropping one handle on a plain thread lost another hold"
    );
    assert!(
        subject
            .make(&other_name)
            .try_acquire()
            .await
            .unwrap()
            .is_none(),
        "dropping one handle on a plain thread freed another hold"
    );
    other.release().await.unwrap();
}

// Dropping a handle inside a current-thread runtime on another thread releases it promptly,
// whatever that runtime does next. One case per variant, each with a provider of its own,
// so that one variant's failure cannot spill into the next.

/// Panics unless a fresh instance acquires `name` within [`DROP_BOUND`] (`after` says when).
async fn expect_free_after_drop<S: Subject>(subject: &S, name: &str, after: &str) {
    if let Err(why) = free_within(subject, name, DROP_BOUND).await {
        panic!("{after}, a fresh instance: {why}");
    }
}

/// (a) A handle dropped inside `block_on` of a current-thread runtime that keeps running.
pub async fn handle_dropped_in_current_thread_runtime_running<S: Subject>(subject: S) {
    let name = unique("runtime-drop-running");
    let lock = subject.make(&name);
    let (dropped, dropped_signal) = oneshot::channel();
    let (done, done_signal) = oneshot::channel::<()>();
    let mut thread = PlainThread::spawn("a running current-thread runtime", move || {
        current_thread_runtime().block_on(async move {
            drop(lock.acquire_timeout(PROMPT).await.expect("acquire"));
            let _ = dropped.send(());
            let _ = done_signal.await;
        })
    });
    thread.until(dropped_signal, PROMPT).await;
    let outcome = free_within(&subject, &name, DROP_BOUND).await;
    let _ = done.send(());
    thread.join(PROMPT).await;
    if let Err(why) = outcome {
        panic!("after a drop in a runtime that keeps running, a fresh instance: {why}");
    }
}

/// (b) A handle dropped inside `block_on` of a current-thread runtime that is dropped
/// (shut down) right after.
pub async fn handle_dropped_in_current_thread_runtime_shut_down<S: Subject>(subject: S) {
    let name = unique("runtime-drop-shutdown");
    let lock = subject.make(&name);
    PlainThread::spawn("a current-thread runtime dropped at once", move || {
        let runtime = current_thread_runtime();
        runtime.block_on(async move {
            drop(lock.acquire_timeout(PROMPT).await.expect("acquire"));
        });
        drop(runtime);
    })
    .join(PROMPT)
    .await;
    expect_free_after_drop(&subject, &name, "after a drop, then the runtime's shutdown").await;
}

/// (c) A handle held by a task of a current-thread runtime when the runtime is dropped:
/// the shutdown drops the handle.
pub async fn handle_dropped_in_current_thread_runtime_task_at_shutdown<S: Subject>(subject: S) {
    let name = unique("runtime-drop-task");
    let lock = subject.make(&name);
    let (held, held_signal) = oneshot::channel();
    let (go, go_signal) = oneshot::channel::<()>();
    let mut thread = PlainThread::spawn("a task holding at runtime shutdown", move || {
        let runtime = current_thread_runtime();
        let (task_held, task_held_signal) = oneshot::channel();
        runtime.spawn(async move {
            match lock.acquire_timeout(PROMPT).await {
                Ok(handle) => {
                    let _ = task_held.send(Ok(()));
                    std::future::pending::<()>().await;
                    drop(handle);
                }
                Err(error) => drop(task_held.send(Err(error))),
            }
        });
        runtime.block_on(async move {
            let acquired = task_held_signal.await.expect("the task ran");
            acquired.expect("the task's acquire");
            let _ = held.send(());
            let _ = go_signal.await;
        });
        drop(runtime);
    });
    thread.until(held_signal, PROMPT).await;
    assert!(
        subject.make(&name).try_acquire().await.unwrap().is_none(),
        "the task does not hold"
    );
    let _ = go.send(());
    thread.join(PROMPT).await;
    expect_free_after_drop(
        &subject,
        &name,
        "after the runtime shut down with a task holding",
    )
    .await;
}

/// One child that drops its handle and returns from main, through the async or blocking API.
async fn drop_and_return_from_main<S: Subject>(subject: &S, blocking: bool) -> Result<(), String> {
    let name = unique("drop-return");
    let (url, kind) = (subject.url(), subject.child_kind());
    let mut holder = if blocking {
        Holder::start_blocking(&url, &kind, &name).await
    } else {
        Holder::start(&url, &kind, &name).await
    };
    holder.held().await;
    assert!(
        subject.make(&name).try_acquire().await.unwrap().is_none(),
        "the child does not hold"
    );
    holder.drop_and_return().await;
    free_within(subject, &name, DROP_BOUND).await
}

/// A process that drops its handle and at once returns from main (its runtime dropped, the
/// process gone) frees the hold promptly: with the async API, and with the blocking API
/// used on a plain thread without any runtime. Nothing may wait for a lease to run out.
pub async fn dropped_then_process_returns_from_main<S: Subject>(subject: S) {
    let parts = [
        (
            "the async API",
            outcome(drop_and_return_from_main(&subject, false)).await,
        ),
        (
            "the blocking API",
            outcome(drop_and_return_from_main(&subject, true)).await,
        ),
    ];
    let failures: Vec<String> = parts
        .into_iter()
        .filter_map(|(part, result)| result.err().map(|why| format!("{part}: {why}")))
        .collect();
    assert!(
        failures.is_empty(),
        "after a child dropped its handle and returned from main, a fresh instance:\n{}",
        failures.join("\n")
    );
}

/// Runs one blocking call inside a runtime: it must answer within [`BLOCKING_BOUND`] with
/// `Ok`, or with `Error::InvalidArgument` (`None`); anything else fails.
fn answers<T>(what: &str, call: impl FnOnce() -> tollgate::Result<T>) -> Option<T> {
    let started = Instant::now();
    let result = call();
    let took = started.elapsed();
    assert!(
        took < BLOCKING_BOUND,
        "blocking {what} inside a runtime took {took:?}"
    );
    match result {
        Ok(value) => Some(value),
        Err(error) if error.is_invalid_argument() => None,
        Err(error) => panic!("blocking {what} inside a runtime failed: {error}"),
    }
}

/// On a runtime's thread, after the async API opened what it needs there: the blocking API
/// either works or refuses at once.
async fn blocking_calls_answer<A: Acquire + Clone + 'static>(lock: A) {
    let handle = lock.acquire_timeout(PROMPT).await.expect("async acquire");
    handle.release().await.expect("async release");
    let blocking = Blocking::new(lock);
    let Some(held) = answers("try_acquire", || blocking.try_acquire()) else {
        return;
    };
    let held = held.expect("the blocking try_acquire of a free lock acquired nothing");
    answers("release", || held.release());
    let again = answers("acquire_timeout(1 s)", || {
        blocking.acquire_timeout(Duration::from_secs(1))
    });
    if let Some(again) = again {
        answers("release", || again.release());
    }
}

/// The blocking API never hangs inside a current-thread runtime (called on the runtime's
/// own thread, inside `block_on`): it works or returns `Error::InvalidArgument` at once.
pub async fn blocking_api_answers_inside_current_thread_runtime<S: Subject>(subject: S) {
    let name = unique("blocking-current-thread");
    let lock = subject.make(&name);
    PlainThread::spawn(
        "the blocking API inside a current-thread runtime",
        move || current_thread_runtime().block_on(blocking_calls_answer(lock)),
    )
    .join(PROMPT * 2)
    .await;
    expect_free_after_drop(&subject, &name, "after the blocking calls").await;
}

/// As [`blocking_api_answers_inside_current_thread_runtime`], from a task on a
/// multi-thread runtime of one worker (the task blocks that only worker).
pub async fn blocking_api_answers_inside_one_worker_runtime<S: Subject>(subject: S) {
    let name = unique("blocking-one-worker");
    let lock = subject.make(&name);
    PlainThread::spawn(
        "the blocking API in a one-worker runtime's task",
        move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("one-worker runtime");
            runtime.block_on(async move {
                if let Err(error) = tokio::spawn(blocking_calls_answer(lock)).await {
                    std::panic::resume_unwind(error.into_panic());
                }
            })
        },
    )
    .join(PROMPT * 2)
    .await;
    expect_free_after_drop(&subject, &name, "after the blocking calls").await;
}

/// Runs every case of the mutex suite as its own test: the classic cases here, then the
/// edges of a hold's life ([`hold_life_suite!`]).
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
        $crate::hold_life_suite!($subject);
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

/// The edges of a hold's life alone, each case as its own test (part of [`mutex_suite!`]):
/// for subjects on which the classic cases cost too much (a connection per instance) or do
/// not apply.
///
/// `hold_life_suite!(caller_driven SUBJECT)` leaves out
/// [`blocking_api_answers_inside_current_thread_runtime`]: for locks on a connection the
/// caller opened, whose socket belongs to the runtime that opened it. That case opens it on
/// a current-thread runtime and then blocks that runtime's only thread, so nothing can drive
/// the connection, which is the caller's deadlock, not tollgate's (the functions' docs say
/// so); the one-worker case still runs.
#[macro_export]
macro_rules! hold_life_suite {
    ($subject:expr) => {
        $crate::hold_life_suite!(caller_driven $subject);
        $crate::mutex_suite!(@cases $subject;
            blocking_api_answers_inside_current_thread_runtime);
    };
    (caller_driven $subject:expr) => {
        $crate::mutex_suite!(@cases $subject;
            names_differing_after_nul_are_distinct, dropped_release_leaves_nothing_held,
            acquire_dropped_at_random_points, huge_timeout_waits_like_forever,
            handle_dropped_on_plain_thread_is_released,
            handle_dropped_in_current_thread_runtime_running,
            handle_dropped_in_current_thread_runtime_shut_down,
            handle_dropped_in_current_thread_runtime_task_at_shutdown,
            dropped_then_process_returns_from_main,
            blocking_api_answers_inside_one_worker_runtime);
    };
}

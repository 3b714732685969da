//! Transient faults: a waiter rides out a killed connection or a restarting server until its
//! deadline; an unreachable server ends an unbounded wait after the backend's
//! `unreachable_timeout`, with one error saying so; errors a retry cannot mend end a wait at
//! once. Each server backend's test file calls these with what only it can do (kill its own
//! sessions, restart a server of its own, build a provider for a closed port).

use std::future::Future;
use std::time::{Duration, Instant};

use tollgate::{Acquire, Error, Handle, LockProvider};

use super::support::{unique, PROMPT};

/// A free loopback port that refuses connections (nothing listens there).
pub fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// `provider` points at a closed port and has `unreachable_timeout=1s`: an unbounded wait
/// fails after about a second (not at once, not after the 30 s default) naming the outage; a
/// try fails at once; a short timed wait fails at its deadline with the outage named, not as
/// a timeout (the lock was never seen busy).
pub async fn unreachable_server_fails_after_the_limit<P: LockProvider>(provider: P) {
    let lock = provider.lock(&unique("unreachable")).unwrap();

    let started = Instant::now();
    let error = tokio::time::timeout(PROMPT, lock.acquire())
        .await
        .expect("an unbounded wait on an unreachable server ends")
        .expect_err("nothing to acquire on");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "gave up after {waited:?}, before the 1 s limit"
    );
    assert!(error.is_backend() && error.is_transient(), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("unreachable for"), "{message}");
    assert!(message.contains("unreachable_timeout"), "{message}");

    let started = Instant::now();
    let error = lock.try_acquire().await.expect_err("unreachable");
    assert!(error.is_backend(), "{error:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a try is one try"
    );

    let started = Instant::now();
    let error = lock
        .acquire_timeout(Duration::from_millis(400))
        .await
        .expect_err("unreachable");
    assert!(
        !error.is_timeout(),
        "an outage is not a busy lock: {error:?}"
    );
    assert!(error.to_string().contains("deadline"), "{error}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(350) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
}

/// `provider` reaches its server but cannot work there (a missing database, wrong
/// credentials): even an unbounded wait fails at once, with an error that is not transient.
pub async fn errors_a_retry_cannot_mend_fail_at_once<P: LockProvider>(provider: P) {
    let lock = provider.lock(&unique("hopeless")).unwrap();
    let started = Instant::now();
    let error = tokio::time::timeout(PROMPT, lock.acquire())
        .await
        .expect("not ridden for the unreachable_timeout")
        .expect_err("cannot work");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(!error.is_transient(), "{error:?}");
}

/// What a disruption left of the holder's hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Left {
    /// The hold is still on the server: the waiter must still wait.
    HoldKept,
    /// The server came back without it (restarted empty): the waiter may have the lock
    /// already.
    HoldMayBeGone,
}

/// A lock held through `holders` while a waiter of `waiters` waits for it without a
/// deadline; `disrupt` then does its worst to the waiter (kills its session, restarts the
/// server…) and returns once it has seen the waiter wait again, or once the server is back,
/// saying what it left of the hold. The waiter must not fail: it gets the lock once the
/// holder lets go (or, the hold gone with the server, once the server is back).
pub async fn waiter_rides_out<P, D, F>(holders: P, waiters: P, name: &str, disrupt: D)
where
    P: LockProvider<Lock: Send + 'static>,
    <P::Lock as Acquire>::Handle: Send + 'static,
    D: FnOnce() -> F,
    F: Future<Output = Left>,
{
    let held = holders.lock(name).unwrap().acquire().await.unwrap();
    let lock = waiters.lock(name).unwrap();
    let waiter = tokio::spawn(async move { lock.acquire().await });
    let left = disrupt().await;
    if left == Left::HoldKept {
        assert!(
            !waiter.is_finished(),
            "the waiter ended while the hold was kept: {:?}",
            waiter.await.unwrap().map(drop)
        );
    }
    // The holder's hold may have gone with the server; releasing it is never an error then.
    let _ = held.release().await;
    let handle = tokio::time::timeout(PROMPT * 2, waiter)
        .await
        .expect("the waiter gets the lock once it is free")
        .unwrap()
        .unwrap_or_else(|error: Error| panic!("the waiter failed: {error}"));
    assert!(!handle.loss_signal().is_lost());
    handle.release().await.unwrap();
}

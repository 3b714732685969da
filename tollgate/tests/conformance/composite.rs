//! The composite contract: several primitives all-or-nothing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tollgate::composite::Composite;
use tollgate::{Acquire, AnyAcquire, Handle, LockProvider, SemaphoreProvider};

use super::support::{unique, PROMPT};

const SHORT: Duration = Duration::from_millis(200);

fn pair<P: LockProvider>(provider: &P, a: &str, b: &str) -> Composite<P::Lock> {
    Composite::new([provider.lock(a).unwrap(), provider.lock(b).unwrap()]).unwrap()
}

/// A busy part makes the whole composite fail, and the parts taken before it are given back.
pub async fn all_or_nothing<P: LockProvider>(provider: P) {
    let (a, b) = (unique("all-a"), unique("all-b"));
    let composite = pair(&provider, &a, &b);
    let b_held = provider.lock(&b).unwrap().acquire().await.unwrap();
    assert!(
        composite.try_acquire().await.unwrap().is_none(),
        "b is busy"
    );
    let a_alone = provider.lock(&a).unwrap().try_acquire().await.unwrap();
    a_alone
        .expect("a failed try left a held")
        .release()
        .await
        .unwrap();
    let error = composite.acquire_timeout(SHORT).await.unwrap_err();
    assert!(error.is_timeout(), "{error}");
    let a_alone = provider.lock(&a).unwrap().try_acquire().await.unwrap();
    a_alone
        .expect("a timed-out acquire left a held")
        .release()
        .await
        .unwrap();
    b_held.release().await.unwrap();

    let both = composite.try_acquire().await.unwrap().expect("both free");
    assert_eq!(both.handles().len(), 2);
    for name in [&a, &b] {
        assert!(
            provider
                .lock(name)
                .unwrap()
                .try_acquire()
                .await
                .unwrap()
                .is_none(),
            "the composite holds {name}"
        );
    }
    assert!(!both.loss_signal().is_lost());
    let loss = both.lost();
    both.release().await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(50), loss)
            .await
            .is_err(),
        "loss fired on a normal release"
    );
    for name in [&a, &b] {
        let lock = provider.lock(name).unwrap();
        assert!(
            lock.try_acquire().await.unwrap().is_some(),
            "{name} released"
        );
    }
}

/// A composite waits for its last busy part and then holds everything.
pub async fn waits_for_every_part<P: LockProvider>(provider: P)
where
    P::Lock: 'static,
{
    let (a, b) = (unique("wait-a"), unique("wait-b"));
    let b_held = provider.lock(&b).unwrap().acquire().await.unwrap();
    let composite = pair(&provider, &a, &b);
    let mut waiter = tokio::spawn(async move { composite.acquire().await });
    assert!(
        tokio::time::timeout(SHORT, &mut waiter).await.is_err(),
        "the composite got a busy part"
    );
    b_held.release().await.unwrap();
    let both = tokio::time::timeout(PROMPT, waiter)
        .await
        .expect("the composite proceeds once b is free")
        .unwrap()
        .unwrap();
    assert!(provider
        .lock(&a)
        .unwrap()
        .try_acquire()
        .await
        .unwrap()
        .is_none());
    drop(both);
}

/// Dropping a composite's acquire future while it waits leaves none of its parts held.
pub async fn dropped_acquire_leaves_nothing_held<P: LockProvider>(provider: P) {
    let (a, b) = (unique("drop-a"), unique("drop-b"));
    let b_held = provider.lock(&b).unwrap().acquire().await.unwrap();
    let composite = pair(&provider, &a, &b);
    // By then the composite holds a and waits for b.
    assert!(tokio::time::timeout(SHORT, composite.acquire())
        .await
        .is_err());
    b_held.release().await.unwrap();
    for name in [&a, &b] {
        let lock = provider.lock(name).unwrap();
        tokio::time::timeout(PROMPT, lock.acquire())
            .await
            .unwrap_or_else(|_| panic!("{name} was left held"))
            .unwrap();
    }
}

/// Composites over the same names given in opposite orders neither deadlock nor overlap:
/// parts are taken in the order of their names.
pub async fn opposite_orders_neither_deadlock_nor_overlap<P: LockProvider>(provider: P)
where
    P::Lock: 'static,
{
    let (a, b) = (unique("order-a"), unique("order-b"));
    let inside = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for task in 0..4 {
        let (first, second) = if task % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let composite = pair(&provider, first, second);
        let inside = inside.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                let both = composite.acquire().await.unwrap();
                assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two inside");
                tokio::task::yield_now().await;
                inside.fetch_sub(1, Ordering::SeqCst);
                both.release().await.unwrap();
            }
        }));
    }
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("no deadlock")
            .unwrap();
    }
}

/// A lock and a semaphore ticket taken together, as type-erased parts.
pub async fn mixed_parts<P: LockProvider + SemaphoreProvider>(provider: P)
where
    <P as LockProvider>::Lock: 'static,
    <P as SemaphoreProvider>::Semaphore: 'static,
{
    let (lock, semaphore) = (unique("mixed-lock"), unique("mixed-semaphore"));
    let composite = Composite::new([
        AnyAcquire::new(provider.lock(&lock).unwrap()),
        AnyAcquire::new(provider.semaphore(&semaphore, 2).unwrap()),
    ])
    .unwrap();
    let both = composite.acquire().await.unwrap();
    assert!(provider
        .lock(&lock)
        .unwrap()
        .try_acquire()
        .await
        .unwrap()
        .is_none());
    let tickets = provider.semaphore(&semaphore, 2).unwrap();
    let last = tickets
        .try_acquire()
        .await
        .unwrap()
        .expect("one ticket left");
    assert!(tickets.try_acquire().await.unwrap().is_none(), "max 2");
    // With the semaphore full, the composite cannot be taken a second time.
    assert!(composite.try_acquire().await.unwrap().is_none());
    drop(last);
    both.release().await.unwrap();
    assert!(provider
        .lock(&lock)
        .unwrap()
        .try_acquire()
        .await
        .unwrap()
        .is_some());
}

/// No parts, or one name twice, is a clear error.
pub async fn empty_and_duplicate_rejected<P: LockProvider>(provider: P) {
    let empty: Vec<P::Lock> = Vec::new();
    let Err(error) = Composite::new(empty) else {
        panic!("an empty composite was accepted");
    };
    assert!(error.is_invalid_argument(), "{error}");
    let name = unique("twice");
    let Err(error) = Composite::new([provider.lock(&name).unwrap(), provider.lock(&name).unwrap()])
    else {
        panic!("a composite of one name twice was accepted");
    };
    assert!(error.is_invalid_argument(), "{error}");
    assert!(error.to_string().contains(&name), "{error}");
}

#[macro_export]
macro_rules! composite_suite {
    ($provider:expr) => {
        $crate::composite_suite!(@cases $provider;
            all_or_nothing, waits_for_every_part, dropped_acquire_leaves_nothing_held,
            opposite_orders_neither_deadlock_nor_overlap, mixed_parts,
            empty_and_duplicate_rejected);
    };
    (@cases $provider:expr; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                $crate::conformance::composite::$case($provider).await;
            }
        )*
    };
}

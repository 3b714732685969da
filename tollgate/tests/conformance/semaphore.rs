//! The semaphore contract.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tollgate::{Acquire, Error, Handle, Semaphore, SemaphoreProvider};

use super::support::{unique, Holder, PROMPT};

/// Observed concurrency reaches exactly `max_count` and never exceeds it.
pub async fn ceiling_is_reached_and_kept<P>(provider: P, max_count: u32)
where
    P: SemaphoreProvider<Semaphore: Clone + 'static>,
{
    let name = unique("ceiling");
    let inside = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (go, go_signal) = watch::channel(false);
    let mut tasks = Vec::new();
    for _ in 0..max_count * 3 {
        let semaphore = provider.semaphore(&name, max_count).unwrap();
        let (inside, peak, mut go_signal) = (inside.clone(), peak.clone(), go_signal.clone());
        tasks.push(tokio::spawn(async move {
            let ticket = semaphore.acquire().await.unwrap();
            let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            // Hold until the test has seen the ceiling reached.
            go_signal.wait_for(|go| *go).await.unwrap();
            inside.fetch_sub(1, Ordering::SeqCst);
            ticket.release().await.unwrap();
        }));
    }
    let max = max_count as usize;
    tokio::time::timeout(PROMPT, async {
        while inside.load(Ordering::SeqCst) < max {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the ceiling is reached");
    // Give the others every chance to (wrongly) get in.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        inside.load(Ordering::SeqCst),
        max,
        "more holders than tickets"
    );
    let probe = provider.semaphore(&name, max_count).unwrap();
    assert!(
        probe.try_acquire().await.unwrap().is_none(),
        "a ticket beyond the max"
    );
    go.send_replace(true);
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("all finish")
            .unwrap();
    }
    assert_eq!(peak.load(Ordering::SeqCst), max);
}

pub async fn tickets_shared_by_name<P: SemaphoreProvider>(provider: P) {
    let name = unique("shared");
    let (a, b) = (
        provider.semaphore(&name, 2).unwrap(),
        provider.semaphore(&name, 2).unwrap(),
    );
    assert_eq!(a.max_count(), 2);
    let one = a.try_acquire().await.unwrap().expect("first ticket");
    let two = b.try_acquire().await.unwrap().expect("second ticket");
    assert!(a.try_acquire().await.unwrap().is_none());
    assert!(b.try_acquire().await.unwrap().is_none());
    let other = provider.semaphore(&unique("other"), 2).unwrap();
    assert!(
        other.try_acquire().await.unwrap().is_some(),
        "names are independent"
    );
    one.release().await.unwrap();
    let three = b
        .try_acquire()
        .await
        .unwrap()
        .expect("a returned ticket is reused");
    drop((two, three));
}

pub async fn max_count_zero_rejected<P: SemaphoreProvider>(provider: P) {
    match provider.semaphore(&unique("zero"), 0) {
        Err(Error::InvalidArgument(message)) => assert!(message.contains("max count"), "{message}"),
        Err(other) => panic!("wrong error for max 0: {other}"),
        Ok(_) => panic!("max count 0 accepted"),
    }
}

pub async fn huge_max_counts_work<P: SemaphoreProvider>(provider: P) {
    for max_count in [u32::MAX, i32::MAX as u32] {
        let semaphore = provider.semaphore(&unique("huge"), max_count).unwrap();
        let mut tickets = Vec::new();
        for _ in 0..5 {
            tickets.push(
                semaphore
                    .try_acquire()
                    .await
                    .unwrap()
                    .expect("plenty of tickets"),
            );
        }
        for ticket in tickets {
            ticket.release().await.unwrap();
        }
    }
}

/// For backends that store the max count: while tickets are held (here or in another
/// process), a different max count is refused naming both; once every ticket is back, the
/// name takes any max count.
pub async fn max_count_is_stored_and_checked<P: SemaphoreProvider>(provider: P, url: String) {
    fn expect_mismatch<T: std::fmt::Debug>(outcome: tollgate::Result<T>, stored: u32, given: u32) {
        match outcome {
            Err(Error::InvalidArgument(message)) => {
                assert!(
                    message.contains(&format!("max count {stored}")),
                    "{message}"
                );
                assert!(message.contains(&given.to_string()), "{message}");
            }
            other => panic!("expected a max count mismatch, got {other:?}"),
        }
    }
    let name = unique("max-count");
    let three = provider.semaphore(&name, 3).unwrap();
    let five = provider.semaphore(&name, 5).unwrap();
    let ticket = three.acquire().await.unwrap();
    expect_mismatch(five.try_acquire().await, 3, 5);
    // A waiting acquire is refused at once too, not after its timeout.
    let waited = tokio::time::timeout(PROMPT, five.acquire()).await;
    expect_mismatch(waited.expect("refused at once, not left waiting"), 3, 5);
    let second = three
        .try_acquire()
        .await
        .unwrap()
        .expect("the same max count gets in");
    drop(ticket);
    expect_mismatch(five.try_acquire().await, 3, 5);
    second.release().await.unwrap();
    // Once every ticket is back, the name is free for any max count.
    let ticket = five.try_acquire().await.unwrap().expect("free");
    expect_mismatch(three.try_acquire().await, 5, 3);
    drop(ticket);

    // Across processes: a holder's max count binds this process too.
    let name = unique("max-count-processes");
    let mut holder = Holder::start(&url, "semaphore:1", &name).await;
    holder.held().await;
    let two = provider.semaphore(&name, 2).unwrap();
    expect_mismatch(two.try_acquire().await, 1, 2);
    holder.kill().await;
    // Once the killed holder's ticket is back (at once, or when its lease runs out), the
    // name takes any max count.
    let one = provider.semaphore(&name, 1).unwrap();
    let ticket = tokio::time::timeout(PROMPT, one.acquire())
        .await
        .expect("the killed holder's ticket comes back")
        .unwrap();
    ticket.release().await.unwrap();
    let ticket = two
        .try_acquire()
        .await
        .unwrap()
        .expect("free for any max count");
    drop(ticket);
}

pub async fn tickets_shared_across_processes<P: SemaphoreProvider<Semaphore: 'static>>(
    provider: P,
    url: String,
) {
    let name = unique("semaphore-processes");
    let semaphore = provider.semaphore(&name, 2).unwrap();
    let mut first = Holder::start(&url, "semaphore:2", &name).await;
    first.held().await;
    let mine = semaphore
        .try_acquire()
        .await
        .unwrap()
        .expect("one ticket left");
    assert!(
        semaphore.try_acquire().await.unwrap().is_none(),
        "both tickets are taken"
    );
    let waiter = tokio::spawn({
        let semaphore = provider.semaphore(&name, 2).unwrap();
        async move { semaphore.acquire().await.map(drop) }
    });
    first.kill().await;
    tokio::time::timeout(PROMPT, waiter)
        .await
        .expect("killed holder's ticket comes back")
        .unwrap()
        .unwrap();
    drop(mine);
}

/// Runs the semaphore cases, plus the mutex suite on a semaphore of max 1; with
/// `stores_max_count` last, also the stored max count case.
#[macro_export]
macro_rules! semaphore_suite {
    (@max_count stores_max_count $provider:expr, $url:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn max_count_is_stored_and_checked() {
            $crate::conformance::semaphore::max_count_is_stored_and_checked($provider, $url).await;
        }
    };
    (@max_count $provider:expr, $url:expr) => {};
    ($provider:expr, $url:expr $(, $stores:ident)?) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn ceiling_3() {
            $crate::conformance::semaphore::ceiling_is_reached_and_kept($provider, 3).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn ceiling_10() {
            $crate::conformance::semaphore::ceiling_is_reached_and_kept($provider, 10).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn tickets_shared_by_name() {
            $crate::conformance::semaphore::tickets_shared_by_name($provider).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn max_count_zero_rejected() {
            $crate::conformance::semaphore::max_count_zero_rejected($provider).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn huge_max_counts_work() {
            $crate::conformance::semaphore::huge_max_counts_work($provider).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn tickets_shared_across_processes() {
            $crate::conformance::semaphore::tickets_shared_across_processes($provider, $url).await;
        }
        $crate::semaphore_suite!(@max_count $($stores)? $provider, $url);
        mod as_mutex {
            #[allow(unused_imports)]
            use super::*;
            $crate::mutex_suite!($crate::conformance::support::Semaphores {
                provider: $provider,
                url: $url,
                max_count: 1
            });
        }
    };
}

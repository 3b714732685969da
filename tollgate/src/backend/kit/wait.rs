//! The one wait loop: attempt → arm wake-ups → sleep until a wake-up, the schedule's pause
//! or the deadline → attempt again; with one jittered, capped backoff.
//!
//! A backend describes a wait as a [`Contender`] (its attempt, how it subscribes to
//! wake-ups, and, if it can, a pause that waits in the server), and [`wait_for`] runs it. The
//! wake-ups are armed before every attempt, so a release that comes while an attempt is on the
//! wire wakes the next pause at once, and one that came before it does not cause a spurious
//! retry.

// A build with some backends left out does not use every piece.
#![cfg_attr(
    not(all(
        feature = "local",
        feature = "postgres",
        feature = "mysql",
        feature = "redis"
    )),
    allow(dead_code)
)]

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::fault::Outage;
use crate::Result;

/// What one attempt found.
pub(crate) enum Attempt<T> {
    /// Taken: the wait is over.
    Taken(T),
    /// Busy; `retry_within` bounds the next pause (e.g. when the current hold expires).
    Busy { retry_within: Option<Duration> },
}

/// A source of wake-ups: something may have been released.
pub(crate) trait Wake: Send {
    /// Forgets the wake-ups so far: [`Wake::woken`] waits for a newer one.
    fn arm(&mut self);
    /// Completes at the first wake-up since the last [`Wake::arm`]. Cancel-safe.
    fn woken(&mut self) -> impl Future<Output = ()> + Send;
}

/// Every wake-up source in tollgate is a counter that its listener bumps.
impl Wake for watch::Receiver<u64> {
    fn arm(&mut self) {
        self.borrow_and_update();
    }

    async fn woken(&mut self) {
        if self.changed().await.is_err() {
            // The listener is gone: the schedule alone wakes us, never a spin.
            std::future::pending::<()>().await;
        }
    }
}

/// No wake-ups: for contenders that only back off.
pub(crate) struct NoWake;

impl Wake for NoWake {
    fn arm(&mut self) {}

    async fn woken(&mut self) {
        std::future::pending::<()>().await;
    }
}

/// How long to pause between attempts when no wake-up comes.
pub(crate) trait Schedule: Send {
    /// The next pause; `watching` when wake-ups can end it early.
    fn pause(&mut self, watching: bool) -> Duration;
    /// A wake-up ended the last pause early.
    fn woken(&mut self) {}
}

/// A doubling backoff from `first` to `cap`, each pause scaled by a random factor in
/// [0.5, 1.5) so that waiters that started together spread out.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Backoff {
    next: Duration,
    cap: Duration,
}

impl Backoff {
    /// Starts at `first` (at most `cap`).
    pub(crate) fn new(first: Duration, cap: Duration) -> Self {
        Backoff {
            next: first.min(cap),
            cap,
        }
    }
}

impl Schedule for Backoff {
    fn pause(&mut self, _watching: bool) -> Duration {
        let pause = jitter(self.next);
        self.next = (self.next * 2).min(self.cap);
        pause
    }
}

/// `future`'s output, or `None` if `deadline` (if any) comes first.
///
/// # Cancel safety
/// As cancel-safe as `future`.
#[cfg_attr(
    not(any(
        feature = "postgres",
        feature = "mysql",
        feature = "redis",
        feature = "zookeeper"
    )),
    allow(dead_code)
)]
pub(crate) async fn before<T>(
    deadline: Option<Instant>,
    future: impl Future<Output = T>,
) -> Option<T> {
    match deadline {
        None => Some(future.await),
        Some(deadline) => tokio::time::timeout_at(deadline, future).await.ok(),
    }
}

/// `duration` scaled by a random factor in [0.5, 1.5).
pub(crate) fn jitter(duration: Duration) -> Duration {
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    duration.mul_f64(0.5 + (random % 1024) as f64 / 1024.0)
}

/// How a pause ended.
pub(crate) enum Paused<T> {
    /// A wake-up came.
    Woken,
    /// The pause ran its time.
    Elapsed,
    /// The pause waited in the server and took the primitive.
    Taken(T),
}

/// One wait, as the loop sees it.
pub(crate) trait Contender: Send {
    /// What a successful attempt holds.
    type Held: Send;
    /// Where its wake-ups come from.
    type Wake: Wake;

    /// One real attempt.
    fn attempt(&mut self) -> impl Future<Output = Result<Attempt<Self::Held>>> + Send;

    /// Subscribes to wake-ups, after the first busy attempt of a wait that goes on (the loop
    /// attempts again at once after it, so that no release is missed). `None`: none to be had
    /// (the backend says why in its log), so the schedule alone paces the attempts. May
    /// return early at `deadline`.
    fn subscribe(
        &mut self,
        deadline: Option<Instant>,
    ) -> impl Future<Output = Option<Self::Wake>> + Send;

    /// Pauses until `until` or a wake-up. Backends that can wait in the server instead
    /// override it.
    fn pause(
        &mut self,
        wake: Option<&mut Self::Wake>,
        until: Instant,
    ) -> impl Future<Output = Result<Paused<Self::Held>>> + Send {
        async move {
            let Some(wake) = wake else {
                tokio::time::sleep_until(until).await;
                return Ok(Paused::Elapsed);
            };
            tokio::select! {
                biased;
                () = wake.woken() => Ok(Paused::Woken),
                () = tokio::time::sleep_until(until) => Ok(Paused::Elapsed),
            }
        }
    }
}

/// Runs `contender` until it takes the primitive (`Ok(Some)`) or `deadline` (from
/// [`Wait::deadline`](crate::Wait::deadline), taken when the acquire began) passes after at
/// least one attempt (`Ok(None)`). An error of an attempt or a pause that `outage` rides (a
/// transient fault, see [`super::fault`]) is followed by another attempt; any other ends the
/// wait.
///
/// # Cancel safety
/// As cancel-safe as the contender's attempt, subscribe and pause futures: the loop itself
/// holds nothing between them.
pub(crate) async fn wait_for<C: Contender>(
    contender: &mut C,
    deadline: Option<Instant>,
    schedule: &mut impl Schedule,
    outage: &mut Outage,
) -> Result<Option<C::Held>> {
    let mut wake: Option<C::Wake> = None;
    let mut subscribed = false;
    loop {
        if let Some(wake) = wake.as_mut() {
            wake.arm();
        }
        let retry_within = match contender.attempt().await {
            Ok(Attempt::Taken(held)) => return Ok(Some(held)),
            Ok(Attempt::Busy { retry_within }) => retry_within,
            Err(error) => {
                outage.ride(error, deadline).await?;
                continue;
            }
        };
        outage.over();
        let now = Instant::now();
        if deadline.is_some_and(|deadline| now >= deadline) {
            return Ok(None);
        }
        if !subscribed {
            subscribed = true;
            wake = contender.subscribe(deadline).await;
            if wake.is_some() {
                continue;
            }
        }
        let pause = schedule.pause(wake.is_some());
        let pause = retry_within.map_or(pause, |within| pause.min(within));
        let until = now + pause;
        let until = deadline.map_or(until, |deadline| deadline.min(until));
        match contender.pause(wake.as_mut(), until).await {
            Ok(Paused::Taken(held)) => return Ok(Some(held)),
            Ok(Paused::Woken) => schedule.woken(),
            Ok(Paused::Elapsed) => {}
            Err(error) => outage.ride(error, deadline).await?,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Wait;

    /// Busy until `free_at` attempts; counts them.
    struct Counter {
        attempts: u32,
        seen: std::sync::Arc<std::sync::atomic::AtomicU32>,
        free_at: u32,
        wakes: Option<watch::Receiver<u64>>,
        subscribes: u32,
    }

    impl Contender for Counter {
        type Held = u32;
        type Wake = watch::Receiver<u64>;

        async fn attempt(&mut self) -> Result<Attempt<u32>> {
            self.attempts += 1;
            self.seen
                .store(self.attempts, std::sync::atomic::Ordering::SeqCst);
            Ok(if self.attempts >= self.free_at {
                Attempt::Taken(self.attempts)
            } else {
                Attempt::Busy { retry_within: None }
            })
        }

        async fn subscribe(&mut self, _: Option<Instant>) -> Option<watch::Receiver<u64>> {
            self.subscribes += 1;
            self.wakes.take()
        }
    }

    fn counter(free_at: u32, wakes: Option<watch::Receiver<u64>>) -> Counter {
        Counter {
            attempts: 0,
            seen: Default::default(),
            free_at,
            wakes,
            subscribes: 0,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn zero_wait_is_one_attempt() {
        let mut contender = counter(2, None);
        let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
        assert!(wait_for(
            &mut contender,
            Wait::NO_WAIT.deadline(),
            &mut backoff,
            &mut Outage::none()
        )
        .await
        .unwrap()
        .is_none());
        assert_eq!((contender.attempts, contender.subscribes), (1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn without_wake_ups_it_backs_off_and_never_spins() {
        let mut contender = counter(u32::MAX, None);
        let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(100));
        let wait = Wait::AtMost(Duration::from_secs(1));
        assert!(wait_for(
            &mut contender,
            wait.deadline(),
            &mut backoff,
            &mut Outage::none()
        )
        .await
        .unwrap()
        .is_none());
        // 10, 20, 40, 80, then 100 ms pauses (±50 %) in one second: a handful, not thousands.
        assert!(
            (6..=40).contains(&contender.attempts),
            "{} attempts",
            contender.attempts
        );
        assert_eq!(contender.subscribes, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wake_up_ends_the_pause_at_once() {
        let (sender, receiver) = watch::channel(0u64);
        let mut contender = counter(3, Some(receiver));
        let seen = contender.seen.clone();
        let mut backoff = Backoff::new(Duration::from_secs(3600), Duration::from_secs(3600));
        let started = Instant::now();
        let waiter = tokio::spawn(async move {
            wait_for(&mut contender, None, &mut backoff, &mut Outage::none())
                .await
                .unwrap()
        });
        // Attempt 1 busy, subscribe, attempt 2 (armed before it) busy at once, then the
        // pause: wake it.
        while seen.load(std::sync::atomic::Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        sender.send_modify(|count| *count += 1);
        assert_eq!(waiter.await.unwrap(), Some(3));
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let pauses: Vec<Duration> = (0..5).map(|_| backoff.pause(true)).collect();
        let bounds = [100, 200, 400, 400, 400];
        for (pause, bound) in pauses.iter().zip(bounds) {
            let bound = Duration::from_millis(bound);
            assert!(*pause >= bound / 2 && *pause < bound * 3 / 2, "{pauses:?}");
        }
    }
}

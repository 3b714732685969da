//! Waiting for a Redis primitive: the shared wait loop over this backend's attempts, with
//! this process's waiters queued per target and woken by release notifications, and a waiting
//! writer's mark withdrawn however the wait ends.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::RwLock;
use tokio::time::Instant;

use super::super::listener::Subscription;
use super::{attempt, lease_ms, script_args, Attempt, RedisHandle, Shared, Target, Turn, Waiter};
use crate::backend::kit::fault::Outage;
use crate::backend::kit::ids::random_id;
use crate::backend::kit::runtime::spawn_release;
use crate::backend::kit::wait::{
    before, wait_for, Attempt as WaitAttempt, Backoff, Contender, Wake,
};
use crate::{Result, Wait};

/// The first fallback pause between tries while no release notification arrives.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// The longest fallback pause (also bounded by a quarter of the lease, so that a waiting
/// writer renews its mark in time).
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Withdraws a waiting writer's mark on every server (best effort: it expires by itself).
async fn abandon(shared: &Shared, target: &Target, waiter: &str) {
    let Some(script) = target.kind.abandon else {
        return;
    };
    let ttl = lease_ms(shared.lease.expiry);
    let args = script_args(b"", &ttl, target, Some(waiter.as_bytes()));
    let limit = shared.lease.expiry;
    let runs = shared.servers.iter().map(|server| {
        let args = &args;
        async move {
            let _ =
                tokio::time::timeout(limit, server.run::<i64, _>(script, &target.keys, args)).await;
        }
    });
    futures_util::future::join_all(runs).await;
}

/// A waiting writer's mark on the servers.
struct Mark {
    shared: Arc<Shared>,
    target: Arc<Target>,
    waiter: String,
    /// Each attempt holds it for reading until its script has run on every server; the mark
    /// is withdrawn under it for writing, so that no attempt of this wait sets it again after.
    scripts: Arc<RwLock<()>>,
}

impl Mark {
    /// Withdraws the mark once every attempt of this wait has finished on the servers.
    async fn withdraw(&self) {
        let _settled = self.scripts.write().await;
        abandon(&self.shared, &self.target, &self.waiter).await;
    }
}

/// Withdraws the waiting mark, if it still holds one, when a wait ends without the hold,
/// however it ends.
struct WaitingMark(Option<Mark>);

impl Drop for WaitingMark {
    fn drop(&mut self) {
        if let Some(mark) = self.0.take() {
            // Counted as a release under way: this process's next acquire of the lock waits
            // for the mark to be withdrawn rather than be turned away by it.
            let noted = mark.shared.release_notes.note(vec![mark.target.note()]);
            spawn_release(async move {
                mark.withdraw().await;
                drop(noted);
            });
        }
    }
}

impl WaitingMark {
    /// The waiter's id and its attempts' gate, if it has a mark.
    fn waiter(&self) -> Option<(&str, &Arc<RwLock<()>>)> {
        self.0
            .as_ref()
            .map(|mark| (mark.waiter.as_str(), &mark.scripts))
    }

    /// The wait got the hold: its mark is not withdrawn (the acquire script cleared it where
    /// it took the hold).
    fn disarm(&mut self) {
        self.0.take();
    }

    /// A wait that timed out withdraws its waiting mark before returning, so that this
    /// process's next read sees it gone.
    async fn give_up(&mut self) {
        if let Some(mark) = &self.0 {
            mark.withdraw().await;
        }
        self.0.take();
    }
}

/// Acquires `target`, waiting as `wait` says: tries, then waits for a release notification
/// on the target's channel, with a jittered, capped backoff (never past the current hold's
/// expiry) as the fallback for lost notifications and crashed holders.
pub(crate) async fn acquire_wait(
    shared: &Arc<Shared>,
    target: &Arc<Target>,
    wait: Wait,
) -> Result<Option<RedisHandle>> {
    let deadline = wait.deadline();
    // A hold of ours that was just dropped is still being released: wait for that first.
    shared
        .release_notes
        .wait(std::slice::from_ref(&target.note()))
        .await;
    let waits = wait != Wait::NO_WAIT;
    let mut mark = WaitingMark((waits && target.kind.abandon.is_some()).then(|| Mark {
        shared: shared.clone(),
        target: target.clone(),
        waiter: random_id(),
        scripts: Arc::default(),
    }));
    let cap = MAX_BACKOFF.min(shared.lease.expiry / 4);
    let mut backoff = Backoff::new(FIRST_BACKOFF, cap);
    let mut contender = Waiting {
        shared,
        target,
        waiter: mark.waiter(),
    };
    let mut outage = Outage::new(shared.unreachable_timeout);
    match wait_for(&mut contender, deadline, &mut backoff, &mut outage).await? {
        Some(handle) => {
            mark.disarm();
            Ok(Some(handle))
        }
        None => {
            mark.give_up().await;
            Ok(None)
        }
    }
}

/// A wait for `target`, as the shared wait loop runs it.
struct Waiting<'a> {
    shared: &'a Arc<Shared>,
    target: &'a Arc<Target>,
    waiter: Option<(&'a str, &'a Arc<RwLock<()>>)>,
}

/// Wake-ups for a waiter: its turn among this process's waiters for the same target, and the
/// target's release channel.
struct Queued {
    _turn: Turn<Vec<u8>>,
    subscription: Subscription,
}

impl Wake for Queued {
    fn arm(&mut self) {
        self.subscription.arm();
    }

    fn woken(&mut self) -> impl std::future::Future<Output = ()> + Send {
        self.subscription.woken()
    }
}

impl Contender for Waiting<'_> {
    type Held = RedisHandle;
    type Wake = Queued;

    async fn attempt(&mut self) -> Result<WaitAttempt<RedisHandle>> {
        let waiter = match self.waiter {
            Some((id, scripts)) => Some(Waiter {
                id: id.to_owned(),
                scripts: scripts.clone().read_owned().await,
            }),
            None => None,
        };
        Ok(match attempt(self.shared, self.target, waiter).await? {
            Attempt::Taken(handle) => WaitAttempt::Taken(handle),
            // Never sleep past the current hold's expiry: a crashed holder frees it then.
            Attempt::Busy { hint } => WaitAttempt::Busy {
                retry_within: hint.map(|hint| hint + Duration::from_millis(1)),
            },
        })
    }

    /// Subscribes to the target's releases, then queues behind this process's other waiters
    /// for the same thing (bounded by the deadline). Subscribing first keeps the channel
    /// subscribed on the server while any waiter of this process is queued: a hand-off from
    /// one local waiter to the next unsubscribes and subscribes nothing there.
    async fn subscribe(&mut self, deadline: Option<Instant>) -> Option<Queued> {
        let queued = before(deadline, async {
            let subscription = self.shared.listener.subscribe(&self.target.channel).await;
            let turn = self.shared.turn(self.target).await;
            Queued {
                _turn: turn,
                subscription,
            }
        });
        queued.await
    }
}

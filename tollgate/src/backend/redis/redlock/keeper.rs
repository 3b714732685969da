//! The one task per provider that keeps its holds' leases alive: it extends every hold once
//! per extension cadence, all holds that are due at once (their scripts share each server's
//! connection, so they go out pipelined), and fires the loss signal of a hold that a majority
//! says is gone or whose lease ran out unextended.
//!
//! A hold joins with [`Keeper::join`] and leaves with [`Keeper::leave`]. Neither wakes the
//! task unless it must (no task runs, or the new hold is due before the task's alarm), so an
//! acquire and a release cost no thread wake-up of their own; the task ends once it wakes to
//! find no hold left, and the next join starts it again.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{lease_ms, script_args, Hold, Route};
use crate::backend::kit::runtime::spawn_owned;

/// The leases of one provider's holds, and the task that keeps them (see the module docs).
#[derive(Default)]
pub(crate) struct Keeper {
    state: Mutex<State>,
    /// Wakes the task for a hold due before its alarm (a stored permit if it is not waiting).
    wake: Notify,
}

/// A hold's place in its provider's [`Keeper`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Slot(u64);

#[derive(Default)]
struct State {
    holds: HashMap<Slot, Entry>,
    next_slot: u64,
    /// Whether the task runs.
    running: bool,
    /// When the running task wakes next, if it sleeps for a time.
    alarm: Option<Instant>,
}

struct Entry {
    hold: Arc<Hold>,
    /// When to extend next.
    next: Instant,
    /// When the lease runs out unless extended.
    deadline: Instant,
    /// Whether an extension is under way.
    extending: bool,
}

impl Entry {
    /// When the task must look at this hold again.
    fn due(&self) -> Instant {
        self.next.min(self.deadline)
    }
}

/// What one extension of a hold found.
enum Extension {
    /// A majority extended it: the lease now runs until `deadline`.
    Extended { deadline: Instant, next: Instant },
    /// A majority said the hold is gone.
    Gone,
    /// Neither: try again at `next` (while the lease lasts).
    Undecided { next: Instant },
}

type Extending = FuturesUnordered<Pin<Box<dyn Future<Output = (Slot, Extension)> + Send>>>;

impl Keeper {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Keeps `hold`'s lease, which runs until `deadline`, from now until [`Keeper::leave`].
    pub(crate) fn join(self: &Arc<Self>, hold: Arc<Hold>, deadline: Instant) -> Slot {
        let next = Instant::now() + hold.shared.lease.extension_cadence;
        let entry = Entry {
            hold,
            next,
            deadline,
            extending: false,
        };
        let due = entry.due();
        let mut state = self.state();
        let slot = Slot(state.next_slot);
        state.next_slot += 1;
        state.holds.insert(slot, entry);
        if !state.running {
            state.running = true;
            state.alarm = None;
            drop(state);
            self.start();
        } else if state.alarm.is_none_or(|alarm| due < alarm) {
            drop(state);
            self.wake.notify_one();
        }
        slot
    }

    /// Stops keeping the lease of the hold in `slot` (an extension under way still ends,
    /// and finds the hold gone once it is released).
    pub(crate) fn leave(&self, slot: Slot) {
        self.state().holds.remove(&slot);
    }

    /// Starts the task on tollgate's runtime (or, without it, on the caller's).
    fn start(self: &Arc<Self>) {
        if let Err(error) = spawn_owned(run(self.clone())) {
            // Nothing can keep these leases: their holders must know at once.
            tracing::warn!(%error, "no runtime can keep Redis leases");
            let lost: Vec<Entry> = {
                let mut state = self.state();
                state.running = false;
                state.holds.drain().map(|(_, entry)| entry).collect()
            };
            for entry in lost {
                entry.hold.notifier.notify_lost();
            }
        }
    }
}

/// Marks the task stopped if it is dropped part-way (with a runtime that shuts down), so that
/// the next join starts another; the extensions it had under way are gone with it.
struct Running<'a> {
    keeper: &'a Keeper,
    /// Set when the task ends by itself (and has marked itself stopped already: another task
    /// may be running by the time this is dropped).
    ended: bool,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let mut state = self.keeper.state();
        state.running = false;
        state.alarm = None;
        for entry in state.holds.values_mut() {
            entry.extending = false;
        }
    }
}

/// The task: extends the holds that are due, applies what the extensions found, sleeps until
/// the next hold is due (or a join wakes it), and ends when no hold is left.
async fn run(keeper: Arc<Keeper>) {
    let keeper = &*keeper;
    let mut running = Running {
        keeper,
        ended: false,
    };
    let mut extending: Extending = FuturesUnordered::new();
    loop {
        let alarm = {
            let mut state = keeper.state();
            let now = Instant::now();
            let mut lost = Vec::new();
            for (&slot, entry) in state.holds.iter_mut() {
                if entry.extending || entry.due() > now {
                    continue;
                }
                if now >= entry.deadline {
                    lost.push(slot);
                } else {
                    entry.extending = true;
                    extending.push(Box::pin(extend(slot, entry.hold.clone(), entry.deadline)));
                }
            }
            for slot in lost {
                if let Some(entry) = state.holds.remove(&slot) {
                    lose(&entry.hold);
                }
            }
            if state.holds.is_empty() && extending.is_empty() {
                // Under the lock that joins take: a join after this starts a new task.
                state.running = false;
                running.ended = true;
                return;
            }
            state.alarm = state
                .holds
                .values()
                .filter(|entry| !entry.extending)
                .map(Entry::due)
                .min();
            state.alarm
        };
        let sleep = async {
            match alarm {
                Some(alarm) => tokio::time::sleep_until(alarm).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = sleep => {}
            () = keeper.wake.notified() => {}
            Some((slot, found)) = extending.next() => apply(keeper, slot, found),
        }
    }
}

/// Records what an extension of the hold in `slot` found (nothing if it has left since).
fn apply(keeper: &Keeper, slot: Slot, found: Extension) {
    let mut state = keeper.state();
    let Some(entry) = state.holds.get_mut(&slot) else {
        return;
    };
    entry.extending = false;
    match found {
        Extension::Extended { deadline, next } => {
            entry.deadline = deadline;
            entry.next = next;
        }
        Extension::Undecided { next } => entry.next = next,
        Extension::Gone => {
            if let Some(entry) = state.holds.remove(&slot) {
                lose(&entry.hold);
            }
        }
    }
}

fn lose(hold: &Hold) {
    tracing::warn!(name = ?hold.target.name, "a Redis hold was lost");
    hold.notifier.notify_lost();
}

/// Extends `hold`'s lease on every server at once, each bounded by the lease's `deadline`;
/// decided as soon as a majority extended or said the hold is gone, so a hung server does not
/// hold up the others.
async fn extend(slot: Slot, hold: Arc<Hold>, deadline: Instant) -> (Slot, Extension) {
    let shared = &hold.shared;
    let lease = shared.lease;
    let servers = shared.servers.len();
    let quorum = shared.quorum();
    let ttl = lease_ms(lease.expiry);
    let args = script_args(hold.owner.as_bytes(), &ttl, &hold.target, None);
    let started = Instant::now();
    let limit = deadline.saturating_duration_since(started);
    let target = &hold.target;
    let mut runs: FuturesUnordered<_> = shared
        .servers
        .iter()
        .map(|server| {
            tokio::time::timeout(
                limit,
                server.run_on::<i64, _>(Route::Background, target.kind.extend, &target.keys, &args),
            )
        })
        .collect();
    let (mut extended, mut gone) = (0, 0);
    while let Some(result) = runs.next().await {
        match result {
            Ok(Ok(1)) => extended += 1,
            Ok(Ok(_)) => gone += 1,
            _ => {}
        }
        if extended >= quorum || gone > servers - quorum {
            break;
        }
    }
    let found = if extended >= quorum {
        let validity = lease
            .expiry
            .saturating_sub(started.elapsed() + lease.drift());
        Extension::Extended {
            deadline: Instant::now() + validity,
            next: started + lease.extension_cadence,
        }
    } else if gone > servers - quorum {
        Extension::Gone
    } else {
        Extension::Undecided {
            next: Instant::now() + (lease.extension_cadence / 4).max(Duration::from_millis(10)),
        }
    };
    (slot, found)
}

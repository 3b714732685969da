//! The multiplexed session pool of the SQL backends, written once: which session an
//! operation gets, how many there may be, and what happens to a session when its
//! operations end, fail, are dropped, or when it dies.
//!
//! A session is either *shared* (it holds any number of keys, each at most once, and serves
//! operations that never block in the server) or *dedicated* to one operation that does (a
//! server-side wait, a transaction), because a statement blocked in the server holds up every
//! later one on its session. Keys are *claimed* on a session before the statement that takes
//! them is sent, and stay claimed until the server no longer holds them there: a server's
//! locks are re-entrant per session and tollgate's are not, so one session never takes a key
//! for two holds.
//!
//! What an operation gets is a guard:
//! - a [`Reservation`]: keys claimed for an operation under way. Dropping it gives the claims
//!   back and the session to the pool; a backend whose statement may still be running moves
//!   the reservation into its cleanup, so that the claims go only once the server is done.
//! - a [`Held`]: keys held for a handle, made from a reservation. [`Held::released`] gives
//!   them back once the server has released them; a `Held` dropped without that (its release
//!   never ran to the end) leaves the session in doubt, and the session is retired.
//!
//! The pool also owns what every session needs beside its protocol: placement (work on
//! tollgate's own runtime uses only the sessions that runtime drives), the keepalive that
//! fires the loss signal of every hold on a session that died, closing sessions that stayed
//! idle, and retiring a session that was sent a cancel (which may still be on its way and
//! would hit whatever the session runs next).

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::Notify;

mod lease;
mod settings;

use lease::Lease;
pub(crate) use lease::{Held, Reservation};
pub(crate) use settings::{ping_limit, Keepalive, Pinged, PoolOptions, Settings};

use super::notes::{Note, ReleaseNotes};
use super::runtime::{background, on_background};
use super::wait::before;
use crate::{LossNotifier, Result};

/// A future that completes when a session's connection has ended by itself.
pub(crate) type Ended = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A backend's session protocol: how a session is opened and kept alive.
pub(crate) trait Protocol: Send + Sync + 'static {
    /// What a session claims (a lock key, a lock name).
    type Key: Eq + Hash + Clone + Send + Sync + 'static;
    /// One open session, with whatever the backend keeps per session.
    type Session: Send + Sync + 'static;

    /// The backend's name, for log lines.
    const BACKEND: &'static str;

    /// Opens a session, driven by the calling runtime. With it, if the protocol can tell, a
    /// future that completes when the connection ends by itself.
    fn open(&self) -> impl Future<Output = Result<(Self::Session, Option<Ended>)>> + Send;

    /// Whether the client library knows the session to be closed.
    fn is_closed(session: &Self::Session) -> bool;

    /// The keepalive statement: whether the session answered.
    fn ping(session: &Self::Session) -> impl Future<Output = bool> + Send;

    /// Closes the socket of a session whose ping got no answer, so that the server ends the
    /// session (and frees its locks) once it can tell.
    fn abandon(session: &Self::Session);
}

/// What an operation wants a session for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Use {
    /// Beside other holds. If every session the pool may have claims one of the keys
    /// already, this process holds or tries it: the key is busy, and there is no session.
    Shared,
    /// Beside other holds, for a marker that keeps two scans of one semaphore off one
    /// session: if every session claims it, the next scan waits for one that does not.
    Scan,
    /// Alone, for one operation that blocks in the server.
    Dedicated,
}

/// One session of a pool, with what the pool knows of it.
pub(crate) struct Pooled<P: Protocol> {
    session: P::Session,
    claims: Mutex<Claims<P::Key>>,
    broken: AtomicBool,
    /// Set once the session is taken out of use: it closes when its last user lets go.
    retired: AtomicBool,
    /// Whether tollgate's own runtime drives this session (see [`on_background`]).
    background: bool,
}

struct Claims<K> {
    /// Claimed keys, with the loss notifier of the hold for the one a hold is known by.
    keys: HashMap<K, Option<LossNotifier>>,
    /// Taken by one operation that blocks in the server.
    dedicated: bool,
    /// Since when the session has claimed nothing (for closing idle sessions).
    idle_since: Option<tokio::time::Instant>,
}

impl<K: Eq + Hash> Claims<K> {
    fn is_idle(&self) -> bool {
        !self.dedicated && self.keys.is_empty()
    }

    /// Whether `keys` may be claimed here for `usage`, by a session that holds fewer than
    /// `limit` keys if set.
    fn fit(&self, keys: &[K], usage: Use, limit: Option<usize>) -> bool {
        !self.dedicated
            && (usage != Use::Dedicated || self.keys.is_empty())
            && limit.is_none_or(|limit| self.keys.len() < limit)
            && keys.iter().all(|key| !self.keys.contains_key(key))
    }

    fn forget(&mut self, keys: &[K], usage: Use) {
        for key in keys {
            self.keys.remove(key);
        }
        if usage == Use::Dedicated {
            self.dedicated = false;
        }
        if self.is_idle() {
            self.idle_since = Some(tokio::time::Instant::now());
        }
    }
}

impl<P: Protocol> std::ops::Deref for Pooled<P> {
    type Target = P::Session;

    fn deref(&self) -> &P::Session {
        &self.session
    }
}

impl<P: Protocol> Pooled<P> {
    fn claims(&self) -> MutexGuard<'_, Claims<P::Key>> {
        self.claims
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether the session has ended.
    pub(crate) fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Acquire) || P::is_closed(&self.session)
    }

    fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// Marks the session as ended, and fires the loss signal of every hold on it.
    pub(crate) fn mark_broken(&self) {
        self.broken.store(true, Ordering::Release);
        for notifier in self.claims().keys.values().flatten() {
            notifier.notify_lost();
        }
    }

    /// The keys claimed on this session, by anyone.
    pub(crate) fn claimed_keys(&self) -> Vec<P::Key> {
        self.claims().keys.keys().cloned().collect()
    }

    fn idle_before(&self, limit: tokio::time::Instant) -> bool {
        let claims = self.claims();
        claims.is_idle() && claims.idle_since.is_some_and(|since| since <= limit)
    }

    fn is_idle(&self) -> bool {
        self.claims().is_idle()
    }

    /// Claims `keys` for `usage` if they fit here (checked and recorded in one step).
    fn claim(&self, keys: &[P::Key], usage: Use, limit: Option<usize>) -> bool {
        let mut claims = self.claims();
        let fits = claims.fit(keys, usage, limit);
        if fits {
            for key in keys {
                claims.keys.insert(key.clone(), None);
            }
            claims.dedicated = usage == Use::Dedicated;
            claims.idle_since = None;
        }
        fits
    }
}

/// Opens sessions and hands them out (see the module docs).
pub(crate) struct Pool<P: Protocol> {
    protocol: P,
    settings: Settings,
    state: Mutex<State<P>>,
    changed: Notify,
    /// Keys whose release after a drop is still on its way to the server, so that this
    /// process's next acquire of the same key waits for it instead of finding it busy.
    release_notes: Arc<ReleaseNotes<P::Key>>,
}

struct State<P: Protocol> {
    sessions: Vec<Arc<Pooled<P>>>,
    /// Sessions being opened, counted against the maximum.
    opening: usize,
    /// Whether the task that closes idle sessions runs.
    reaping: bool,
}

impl<P: Protocol> std::fmt::Debug for Pool<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("backend", &P::BACKEND)
            .field("settings", &self.settings)
            .field("sessions", &self.session_count())
            .finish()
    }
}

impl<P: Protocol> Pool<P> {
    pub(crate) fn new(protocol: P, settings: Settings) -> Self {
        Pool {
            protocol,
            settings,
            state: Mutex::new(State {
                sessions: Vec::new(),
                opening: 0,
                reaping: false,
            }),
            changed: Notify::new(),
            release_notes: Arc::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<P>> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// How long this pool's waits ride out an unreachable server (see [`super::fault`]).
    pub(crate) fn unreachable_timeout(&self) -> Option<Duration> {
        self.settings.unreachable_timeout
    }

    pub(crate) fn protocol(&self) -> &P {
        &self.protocol
    }

    /// How many sessions are open (or opening), not counting ended ones.
    pub(crate) fn session_count(&self) -> usize {
        let state = self.lock();
        let live = state
            .sessions
            .iter()
            .filter(|session| !session.is_broken())
            .count();
        live + state.opening
    }

    /// How many open sessions claim nothing.
    pub(crate) fn idle_count(&self) -> usize {
        self.lock()
            .sessions
            .iter()
            .filter(|session| !session.is_broken() && session.is_idle())
            .count()
    }

    /// Notes that releases of `keys` are under way, until the note is dropped.
    pub(crate) fn note(&self, keys: Vec<P::Key>) -> Note<P::Key> {
        self.release_notes.note(keys)
    }

    /// Waits until no release of `keys` is under way in this process.
    pub(crate) async fn wait_for_releases(&self, keys: &[P::Key]) {
        self.release_notes.wait(keys).await;
    }

    /// Tells operations waiting for a session that one may have become usable.
    pub(crate) fn notify_change(&self) {
        self.changed.notify_waiters();
    }

    /// Whether one of `keys` is claimed on a session of this pool: held by a hold of this
    /// process, or being taken or waited for by one of its operations. A waiter for an
    /// exclusive key that is claimed goes straight to its wait in the server: a try on another
    /// session could only fail (or race the operation under way).
    pub(crate) fn is_claimed(&self, keys: &[P::Key]) -> bool {
        self.lock().sessions.iter().any(|session| {
            let claims = session.claims();
            keys.iter().any(|key| claims.keys.contains_key(key))
        })
    }

    /// A session of its own (see [`Use::Dedicated`]) with `keys` claimed on it, for a wait
    /// in the server: `None` when `deadline` passes before one is free.
    ///
    /// # Cancel safety
    /// Cancel-safe, as [`Pool::reserve`].
    pub(crate) async fn reserve_dedicated(
        self: &Arc<Self>,
        keys: Vec<P::Key>,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Option<Reservation<P>>> {
        let dedicated = self.reserve(keys, Use::Dedicated);
        before(deadline, dedicated).await.unwrap_or(Ok(None))
    }

    /// A session with `keys` claimed on it for `usage`: the busiest that fits, or a new one
    /// while the pool may open one. `None` only for [`Use::Shared`] (see there); otherwise
    /// waits for a session to become usable.
    ///
    /// # Cancel safety
    /// Cancel-safe: a dropped future has claimed nothing, and a session it was opening is
    /// counted out again.
    pub(crate) async fn reserve(
        self: &Arc<Self>,
        keys: Vec<P::Key>,
        usage: Use,
    ) -> Result<Option<Reservation<P>>> {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match self.claim_or_count_opening(&keys, usage) {
                Found::Session(session) => return Ok(Some(self.reservation(session, keys, usage))),
                Found::Busy => return Ok(None),
                Found::Open => return self.open(keys, usage).await.map(Some),
                Found::Wait => changed.await,
            }
        }
    }

    /// Under the pool's lock, so that a session is never closed (idle) as it is given out.
    fn claim_or_count_opening(&self, keys: &[P::Key], usage: Use) -> Found<P> {
        let mut state = self.lock();
        state
            .sessions
            .retain(|session| !session.is_broken() && !session.is_retired());
        let can_open = state.sessions.len() + state.opening < self.settings.max_sessions;
        // A full session takes more only when no other can be opened.
        let limit = can_open.then_some(self.settings.holds_per_session);
        // Work on tollgate's runtime uses only sessions it drives: the others are served
        // only while their caller's runtime runs.
        let background = on_background();
        loop {
            let candidate = state
                .sessions
                .iter()
                .filter(|session| session.background || !background)
                .filter_map(|session| {
                    let claims = session.claims();
                    let holds = claims.keys.len();
                    claims.fit(keys, usage, limit).then_some((holds, session))
                })
                // Pack holds onto the busiest sessions, so idle ones can be closed.
                .max_by_key(|(holds, _)| *holds)
                .map(|(_, session)| session.clone());
            let Some(session) = candidate else { break };
            // Checked again as it is claimed: a reservation claims more outside this lock.
            if session.claim(keys, usage, limit) {
                return Found::Session(session);
            }
        }
        if can_open {
            state.opening += 1;
            Found::Open
        } else if usage == Use::Shared
            && state.sessions.iter().any(|session| {
                let claims = session.claims();
                keys.iter().any(|key| claims.keys.contains_key(key))
            })
        {
            Found::Busy
        } else {
            Found::Wait
        }
    }

    fn reservation(
        self: &Arc<Self>,
        session: Arc<Pooled<P>>,
        keys: Vec<P::Key>,
        usage: Use,
    ) -> Reservation<P> {
        Reservation::new(Lease {
            pool: self.clone(),
            session,
            keys,
            usage,
        })
    }

    /// Opens a session counted in `opening`, and claims `keys` on it.
    async fn open(self: &Arc<Self>, keys: Vec<P::Key>, usage: Use) -> Result<Reservation<P>> {
        // Counted as opening until done, even if this future is dropped meanwhile.
        struct Opening<'a, P: Protocol>(Option<&'a Pool<P>>);
        impl<P: Protocol> Drop for Opening<'_, P> {
            fn drop(&mut self) {
                if let Some(pool) = self.0 {
                    pool.lock().opening -= 1;
                    pool.notify_change();
                }
            }
        }
        let mut opening = Opening(Some(&**self));
        let opened = self.protocol.open().await;
        let mut state = self.lock();
        state.opening -= 1;
        opening.0 = None;
        let (session, ended) = match opened {
            Ok(opened) => opened,
            Err(error) => {
                drop(state);
                self.notify_change();
                return Err(error);
            }
        };
        let session: Arc<Pooled<P>> = Arc::new(Pooled {
            session,
            claims: Mutex::new(Claims {
                keys: HashMap::new(),
                dedicated: false,
                idle_since: None,
            }),
            broken: AtomicBool::new(false),
            retired: AtomicBool::new(false),
            background: on_background(),
        });
        // Nobody else knows the new session yet: the claim cannot fail.
        let claimed = session.claim(&keys, usage, None);
        debug_assert!(claimed);
        state.sessions.push(session.clone());
        if let (Some(idle_timeout), false) = (self.settings.idle_timeout, state.reaping) {
            state.reaping = true;
            self.start_reaping(idle_timeout);
        }
        drop(state);
        self.watch(&session, ended);
        Ok(self.reservation(session, keys, usage))
    }

    /// Takes a session out of use for good. Its current users finish normally; the session
    /// closes, releasing anything left on it, when the last of them lets go.
    pub(crate) fn retire(&self, session: &Arc<Pooled<P>>) {
        session.retired.store(true, Ordering::Release);
        self.lock()
            .sessions
            .retain(|open| !Arc::ptr_eq(open, session));
        self.notify_change();
    }

    /// After `session` became idle: closes it if more than `max_idle` sessions are.
    fn keep_idle_within_limit(&self, session: &Arc<Pooled<P>>) {
        if let Some(max_idle) = self.settings.max_idle {
            if self.idle_count() > max_idle {
                self.retire(session);
            }
        }
    }

    /// Watches a new session from a task on the runtime that drives it: the session ends
    /// when its connection does, when the keepalive says so, or when that runtime shuts
    /// down (and drops the task); each fires the loss signal of every hold on it.
    fn watch(self: &Arc<Self>, session: &Arc<Pooled<P>>, ended: Option<Ended>) {
        /// Marks the session ended when the watch stops, however it stops.
        struct Watching<P: Protocol> {
            session: Weak<Pooled<P>>,
            pool: Weak<Pool<P>>,
        }
        impl<P: Protocol> Drop for Watching<P> {
            fn drop(&mut self) {
                if let Some(session) = self.session.upgrade() {
                    session.mark_broken();
                }
                if let Some(pool) = self.pool.upgrade() {
                    pool.notify_change();
                }
            }
        }
        let keepalive = self.settings.keepalive;
        if ended.is_none() && keepalive.is_none() {
            return;
        }
        let watching = Watching {
            session: Arc::downgrade(session),
            pool: Arc::downgrade(self),
        };
        tokio::spawn(async move {
            let ended = async {
                match ended {
                    Some(ended) => ended.await,
                    None => std::future::pending().await,
                }
            };
            let pinging = async {
                match keepalive {
                    Some(keepalive) => keep_alive(&watching.session, keepalive).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = ended => {}
                () = pinging => {}
            }
            drop(watching);
        });
    }

    /// Closes sessions that have claimed nothing for `idle_timeout`, from a task on
    /// tollgate's runtime that ends with the pool.
    fn start_reaping(self: &Arc<Self>, idle_timeout: Duration) {
        let pool = Arc::downgrade(self);
        let period = (idle_timeout / 2).max(Duration::from_millis(100));
        let reaping = async move {
            loop {
                tokio::time::sleep(period).await;
                let Some(pool) = pool.upgrade() else {
                    return;
                };
                let Some(limit) = tokio::time::Instant::now().checked_sub(idle_timeout) else {
                    continue;
                };
                let closed: Vec<Arc<Pooled<P>>> = {
                    let mut state = pool.lock();
                    let (idle, kept) = std::mem::take(&mut state.sessions)
                        .into_iter()
                        .partition(|session| session.idle_before(limit));
                    state.sessions = kept;
                    idle
                };
                if !closed.is_empty() {
                    tracing::debug!(
                        backend = P::BACKEND,
                        count = closed.len(),
                        "closing idle sessions"
                    );
                    pool.notify_change();
                }
                // Dropping the last reference closes each session.
                drop(closed);
            }
        };
        match background() {
            Ok(runtime) => drop(runtime.spawn(reaping)),
            Err(_) => drop(tokio::spawn(reaping)),
        }
    }
}

enum Found<P: Protocol> {
    Session(Arc<Pooled<P>>),
    /// See [`Use::Shared`].
    Busy,
    Open,
    Wait,
}

/// Pings `watched` until it fails, goes away, or ends.
async fn keep_alive<P: Protocol>(watched: &Weak<Pooled<P>>, keepalive: Keepalive) {
    let mut ticks = tokio::time::interval(keepalive.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    let limit = ping_limit(keepalive.interval);
    loop {
        ticks.tick().await;
        let Some(session) = watched.upgrade() else {
            return;
        };
        if session.is_broken() {
            return;
        }
        let pinged = {
            let claims = session.claims();
            !claims.dedicated && (keepalive.pinged == Pinged::Open || !claims.keys.is_empty())
        };
        if !pinged {
            continue;
        }
        match tokio::time::timeout(limit, P::ping(&session.session)).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(_) => {
                tracing::warn!(
                    backend = P::BACKEND,
                    ?limit,
                    "keepalive got no answer; closing"
                );
                P::abandon(&session.session);
                return;
            }
        }
    }
}

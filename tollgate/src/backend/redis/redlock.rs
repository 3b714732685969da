//! The majority rule over one or several servers (RedLock), the leases that keep holds alive,
//! the wait loop, and the handle every Redis primitive returns.
//!
//! Every primitive is a [`Target`]: its keys, its release channel and a [`Kind`] (the four
//! scripts that take, extend, release and — for a waiting writer — withdraw a hold). Each
//! attempt uses a fresh owner id, so a late rollback of one attempt can never touch the next.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use redis::aio::MultiplexedConnection;
use redis::Script;
use tokio::time::Instant;

use super::listener::Listener;
use super::listener::Subscription;
use super::{Lease, BACKEND};
use crate::backend::kit::completion::run_to_completion;
use crate::backend::kit::hold::{Release, Shell};
use crate::backend::kit::notes::{Note, ReleaseNotes};
use crate::backend::kit::runtime::{background, on_background, spawn_release};
use crate::backend::kit::wait::{
    wait_for, Attempt as WaitAttempt, Backoff, Contender, Schedule, Wake,
};
use crate::{Error, Handle, LossNotifier, LossSignal, Result, Wait};

/// The first fallback pause between tries while no release notification arrives.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// The longest fallback pause (also bounded by a quarter of the lease, so that a waiting
/// writer renews its mark in time).
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Which of a server's two connections a request goes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// Acquires, releases and reads from a caller's runtime, which drives the connection.
    Caller,
    /// Work on tollgate's own runtime (lease extensions, releases after a drop, the blocking
    /// API), on a connection that runtime drives: user code that blocks or starves its own
    /// runtime cannot let a hold's lease run out or a release stall.
    Background,
}

impl Route {
    /// The connection for work on this thread.
    fn here() -> Route {
        if on_background() {
            Route::Background
        } else {
            Route::Caller
        }
    }
}

/// One Redis server and its multiplexed connections (one per [`Route`]), opened when first
/// needed and reopened after they fail.
pub(crate) struct Server {
    pub(crate) client: redis::Client,
    pub(crate) label: String,
    connect_timeout: Duration,
    connection: tokio::sync::Mutex<Option<Opened>>,
    background_connection: tokio::sync::Mutex<Option<Opened>>,
    generation: AtomicU64,
    /// After a failed connect, further connects wait this long (growing while they fail), so
    /// that a dead server costs nothing to the attempts that include it.
    down: std::sync::Mutex<Option<Down>>,
}

/// A connection in its slot. Its I/O is driven by a task of the runtime it was opened on;
/// when that runtime shuts down, the connection is dead, and `alive` says so.
struct Opened {
    generation: u64,
    connection: MultiplexedConnection,
    alive: Arc<std::sync::atomic::AtomicBool>,
    /// Dropping it ends the task that watches the runtime.
    _watching: tokio::sync::oneshot::Sender<()>,
}

impl Opened {
    fn new(generation: u64, connection: MultiplexedConnection) -> Self {
        /// Clears `alive` when the watching task ends or is dropped with its runtime.
        struct Watch(Arc<std::sync::atomic::AtomicBool>);
        impl Drop for Watch {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let alive = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (watching, stopped) = tokio::sync::oneshot::channel::<()>();
        let watch = Watch(alive.clone());
        tokio::spawn(async move {
            let _watch = watch;
            let _ = stopped.await;
        });
        Opened {
            generation,
            connection,
            alive,
            _watching: watching,
        }
    }

    fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }
}

struct Down {
    until: Instant,
    backoff: Backoff,
    error: String,
}

const FIRST_RECONNECT_PAUSE: Duration = Duration::from_millis(50);
const MAX_RECONNECT_PAUSE: Duration = Duration::from_millis(500);

impl Server {
    pub(crate) fn new(client: redis::Client, label: String, connect_timeout: Duration) -> Self {
        Server {
            client,
            label,
            connect_timeout,
            connection: tokio::sync::Mutex::new(None),
            background_connection: tokio::sync::Mutex::new(None),
            generation: AtomicU64::new(0),
            down: std::sync::Mutex::new(None),
        }
    }

    fn down(&self) -> std::sync::MutexGuard<'_, Option<Down>> {
        self.down
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn slot(&self, route: Route) -> &tokio::sync::Mutex<Option<Opened>> {
        match route {
            Route::Caller => &self.connection,
            Route::Background => &self.background_connection,
        }
    }

    async fn connection(&self, route: Route) -> redis::RedisResult<(u64, MultiplexedConnection)> {
        let mut slot = self.slot(route).lock().await;
        match &*slot {
            Some(opened) if opened.is_alive() => {
                return Ok((opened.generation, opened.connection.clone()));
            }
            // Opened on a runtime that has shut down since: reopen here.
            Some(_) => *slot = None,
            None => {}
        }
        if let Some(down) = &*self.down() {
            if Instant::now() < down.until {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "the server was unreachable moments ago",
                    down.error.clone(),
                )));
            }
        }
        // Our own timeouts bound every request; the crate's default response timeout would
        // only add a second, unrelated limit.
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(None);
        let connection = match self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            Ok(connection) => connection,
            Err(error) => {
                let mut down = self.down();
                let mut backoff = down.as_ref().map_or(
                    Backoff::new(FIRST_RECONNECT_PAUSE, MAX_RECONNECT_PAUSE),
                    |down| down.backoff,
                );
                *down = Some(Down {
                    until: Instant::now() + backoff.pause(false),
                    backoff,
                    error: error.to_string(),
                });
                return Err(error);
            }
        };
        *self.down() = None;
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        *slot = Some(Opened::new(generation, connection.clone()));
        Ok((generation, connection))
    }

    /// Runs `script` on the connection for this thread's runtime; see [`Server::run_on`].
    pub(crate) async fn run<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        keys: &[Vec<u8>],
        args: &[&[u8]],
    ) -> redis::RedisResult<T> {
        self.run_on(Route::here(), script, keys, args).await
    }

    /// Runs `script` on the connection of `route`; a connection that failed is dropped, so
    /// the next call reconnects.
    pub(crate) async fn run_on<T: redis::FromRedisValue>(
        &self,
        route: Route,
        script: &Script,
        keys: &[Vec<u8>],
        args: &[&[u8]],
    ) -> redis::RedisResult<T> {
        let (generation, mut connection) = self.connection(route).await?;
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(key.as_slice());
        }
        for arg in args {
            invocation.arg(*arg);
        }
        let result = invocation.invoke_async(&mut connection).await;
        if let Err(error) = &result {
            if error.is_io_error()
                || error.is_connection_dropped()
                || error.is_unrecoverable_error()
            {
                let mut slot = self.slot(route).lock().await;
                if slot
                    .as_ref()
                    .is_some_and(|opened| opened.generation == generation)
                {
                    *slot = None;
                }
            }
        }
        result
    }
}

/// What a provider's primitives share: the servers, the lease settings, the release
/// notifications, and the releases under way after drops.
pub(crate) struct Shared {
    pub(crate) servers: Box<[Server]>,
    pub(crate) lease: Lease,
    pub(crate) listener: Arc<Listener>,
    release_notes: Arc<ReleaseNotes<Vec<u8>>>,
    /// Per primitive and side, the turn to wait on the servers: one waiter of this process
    /// at a time tries there, the others queue here in order, so a release does not set off
    /// a stampede of attempts (nor split votes between this process's own waiters).
    turns: std::sync::Mutex<HashMap<Vec<u8>, Arc<tokio::sync::Mutex<()>>>>,
}

impl Shared {
    pub(crate) fn new(servers: Vec<Server>, lease: Lease) -> Self {
        let clients = servers.iter().map(|server| server.client.clone()).collect();
        Shared {
            servers: servers.into_boxed_slice(),
            lease,
            listener: Arc::new(Listener::new(clients)),
            release_notes: Arc::default(),
            turns: std::sync::Mutex::default(),
        }
    }

    fn turns(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, Arc<tokio::sync::Mutex<()>>>> {
        self.turns
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits for this process's turn to wait for `target` on the servers.
    async fn turn(self: &Arc<Self>, target: &Target) -> Turn {
        let key = [target.kind.label.as_bytes(), b":", &target.channel].concat();
        let turn = self.turns().entry(key.clone()).or_default().clone();
        let mut queued = Turn {
            shared: self.clone(),
            key,
            turn: Some(turn.clone()),
            guard: None,
        };
        queued.guard = Some(turn.lock_owned().await);
        queued
    }

    /// More than half of the servers.
    pub(crate) fn quorum(&self) -> usize {
        self.servers.len() / 2 + 1
    }
}

/// A waiter's turn (see [`Shared::turn`]); dropping it lets the next waiter of this process
/// try, and forgets the queue when nobody else is in it.
struct Turn {
    shared: Arc<Shared>,
    key: Vec<u8>,
    turn: Option<Arc<tokio::sync::Mutex<()>>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.guard = None;
        let mut turns = self.shared.turns();
        drop(self.turn.take());
        if turns
            .get(&self.key)
            .is_some_and(|turn| Arc::strong_count(turn) == 1)
        {
            turns.remove(&self.key);
        }
    }
}

/// The scripts of one kind of hold (see `scripts/`).
pub(crate) struct Kind {
    /// Tells kinds of one primitive apart (a reader-writer lock's two sides).
    pub(crate) label: &'static str,
    pub(crate) acquire: &'static LazyLock<Script>,
    pub(crate) extend: &'static LazyLock<Script>,
    pub(crate) release: &'static LazyLock<Script>,
    /// Withdraws a waiting writer's mark when its wait ends without the hold.
    pub(crate) abandon: Option<&'static LazyLock<Script>>,
    /// Whether holds of this kind get a fencing token.
    pub(crate) fenced: bool,
}

/// One primitive on the servers.
pub(crate) struct Target {
    pub(crate) name: Arc<str>,
    pub(crate) kind: &'static Kind,
    /// Every key the scripts touch, all in one hash slot.
    pub(crate) keys: Vec<Vec<u8>>,
    /// Where releases are published.
    pub(crate) channel: Vec<u8>,
    /// Arguments after owner, lease and channel (a semaphore's max count).
    pub(crate) extra: Vec<Vec<u8>>,
}

impl Target {
    fn note(&self) -> Vec<u8> {
        self.channel.clone()
    }
}

/// A random 128-bit id in hex, for owners and waiters.
pub(crate) fn random_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let word = || {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        hasher.write_u32(std::process::id());
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos())
            .unwrap_or_default();
        hasher.write_u128(nanos);
        hasher.finish()
    };
    format!("{:016x}{:016x}", word(), word())
}

fn lease_ms(lease: Duration) -> Vec<u8> {
    lease.as_millis().max(1).to_string().into_bytes()
}

/// What one server said to an acquire script.
enum Reply {
    Taken { micros: u64 },
    Busy { hint: Option<Duration> },
    OtherMax(i64),
}

fn parse_reply(values: &[i64]) -> Option<Reply> {
    match values {
        [1, seconds, micros] => Some(Reply::Taken {
            micros: u64::try_from(*seconds)
                .ok()?
                .checked_mul(1_000_000)?
                .checked_add(u64::try_from(*micros).ok()?)?,
        }),
        [0, hint] => Some(Reply::Busy {
            hint: u64::try_from(*hint).ok().map(Duration::from_millis),
        }),
        [-1, stored] => Some(Reply::OtherMax(*stored)),
        _ => None,
    }
}

fn server_error(server: &Server, what: &str, error: impl Into<crate::BoxError>) -> Error {
    Error::backend(BACKEND, format!("{what} on {}", server.label), error)
}

/// The outcome of one attempt.
enum Attempt {
    Taken(RedisHandle),
    Busy { hint: Option<Duration> },
}

/// Arguments of every script: owner, lease, channel, the target's extras, then the waiter's
/// mark flag and id (used by the writer's scripts).
fn script_args<'a>(
    owner: &'a [u8],
    lease: &'a [u8],
    target: &'a Target,
    waiter: Option<&'a [u8]>,
) -> Vec<&'a [u8]> {
    let mut args = vec![owner, lease, target.channel.as_slice()];
    args.extend(target.extra.iter().map(Vec::as_slice));
    match waiter {
        Some(waiter) => args.extend([b"1".as_slice(), waiter]),
        None => args.extend([b"0".as_slice(), b"".as_slice()]),
    }
    args
}

/// One attempt on every server at once, decided by the majority within the validity budget.
/// It always completes (see [`run_to_completion`]): a handle nobody waits for any more
/// releases on drop, so whatever the attempt took is given back.
async fn attempt(
    shared: &Arc<Shared>,
    target: &Arc<Target>,
    waiter: Option<&str>,
) -> Result<Attempt> {
    let (shared, target) = (shared.clone(), target.clone());
    let waiter = waiter.map(str::to_owned);
    run_to_completion(
        async move { attempt_on_servers(&shared, &target, waiter.as_deref()).await },
        |attempt| async move { drop(attempt) },
    )
    .await
}

async fn attempt_on_servers(
    shared: &Arc<Shared>,
    target: &Arc<Target>,
    waiter: Option<&str>,
) -> Result<Attempt> {
    let lease = shared.lease;
    let servers = shared.servers.len();
    let quorum = shared.quorum();
    let owner = random_id();
    let ttl = lease_ms(lease.expiry);
    let args = script_args(owner.as_bytes(), &ttl, target, waiter.map(str::as_bytes));
    let started = Instant::now();
    let budget = lease.attempt_budget();
    let mut pending: FuturesUnordered<_> = shared
        .servers
        .iter()
        .enumerate()
        .map(|(index, server)| {
            let args = &args;
            async move {
                let reply = tokio::time::timeout(
                    budget,
                    server.run::<Vec<i64>>(target.kind.acquire, &target.keys, args),
                )
                .await;
                (index, reply)
            }
        })
        .collect();
    let mut answered = vec![false; servers];
    let (mut taken, mut refused, mut failed) = (0, 0, 0);
    let mut token = 0u64;
    let mut hint: Option<Duration> = None;
    let mut other_max = None;
    let mut first_error = None;
    while let Some((index, reply)) = pending.next().await {
        let server = &shared.servers[index];
        let error = match reply {
            Ok(Ok(values)) => match parse_reply(&values) {
                Some(Reply::Taken { micros }) => {
                    taken += 1;
                    token = token.max(micros);
                    None
                }
                Some(Reply::Busy { hint: busy }) => {
                    answered[index] = true;
                    refused += 1;
                    hint = match (hint, busy) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    None
                }
                Some(Reply::OtherMax(stored)) => {
                    answered[index] = true;
                    refused += 1;
                    other_max = Some(stored);
                    None
                }
                None => Some(server_error(
                    server,
                    "unexpected reply to the acquire script",
                    format!("{values:?}"),
                )),
            },
            Ok(Err(error)) => Some(server_error(server, "acquire failed", error)),
            Err(_) => Some(server_error(
                server,
                "acquire timed out",
                format!("no answer within {budget:?}"),
            )),
        };
        if let Some(error) = error {
            failed += 1;
            first_error.get_or_insert(error);
        }
        // Stop as soon as the outcome is decided. A mix of refusals and failures is not
        // decided yet: whether the failures alone outvote the quorum (an error, which must
        // not pass for "held elsewhere") depends on the servers still to answer.
        let minority = servers - quorum;
        if taken >= quorum || refused > minority || failed > minority {
            break;
        }
    }
    drop(pending);
    let elapsed = started.elapsed();
    let validity = lease
        .expiry
        .checked_sub(elapsed + lease.drift())
        .unwrap_or_default();
    if taken >= quorum && other_max.is_none() && validity >= lease.min_validity {
        let deadline = started + lease.expiry.saturating_sub(lease.drift());
        let token = target.kind.fenced.then_some(token);
        return Ok(Attempt::Taken(RedisHandle::new(
            shared.clone(),
            target.clone(),
            owner,
            token,
            deadline,
        )));
    }
    // Give back whatever this attempt may have taken: everywhere but where it was refused.
    let rollback: Vec<usize> = (0..servers).filter(|&index| !answered[index]).collect();
    if !rollback.is_empty() {
        let (shared, target) = (shared.clone(), target.clone());
        tokio::spawn(async move {
            release_on(&shared, &target, &owner, &rollback, shared.lease.expiry).await;
        });
    }
    if let Some(stored) = other_max {
        return Err(Error::invalid(format!(
            "semaphore {:?} is in use with max count {stored}, not {}; every user of a \
             semaphore must give the same max count",
            target.name,
            String::from_utf8_lossy(target.extra.first().map_or(&[][..], Vec::as_slice)),
        )));
    }
    if failed > servers - quorum {
        let error = first_error.unwrap_or_else(|| Error::invalid("no servers"));
        return Err(match error {
            Error::Backend {
                message, source, ..
            } if servers > 1 => Error::Backend {
                backend: BACKEND,
                message: format!(
                    "{failed} of {servers} servers failed while acquiring {:?}; first: {message}",
                    target.name
                ),
                source,
            },
            other => other,
        });
    }
    Ok(Attempt::Busy { hint })
}

/// Runs the release script on the given servers, each on a task of its own; returns once
/// all answered or a majority of all servers did (stragglers finish in the background), with
/// how many answered and the first error.
async fn release_on(
    shared: &Arc<Shared>,
    target: &Arc<Target>,
    owner: &str,
    servers: &[usize],
    limit: Duration,
) -> (usize, Option<Error>) {
    let quorum = shared.quorum();
    let release_one = |index: usize| {
        let (shared, target, owner) = (shared.clone(), target.clone(), owner.to_owned());
        async move {
            let server = &shared.servers[index];
            let ttl = lease_ms(shared.lease.expiry);
            let args = script_args(owner.as_bytes(), &ttl, &target, None);
            let result = tokio::time::timeout(
                limit,
                server.run::<i64>(target.kind.release, &target.keys, &args),
            )
            .await;
            match result {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(error)) => Err(server_error(server, "release failed", error)),
                Err(_) => Err(server_error(
                    server,
                    "release timed out",
                    format!("no answer within {limit:?}"),
                )),
            }
        }
    };
    if let [index] = servers {
        // One server: no straggler to leave behind, so no task of its own.
        return match release_one(*index).await {
            Ok(()) => (1, None),
            Err(error) => (0, Some(error)),
        };
    }
    let mut runs: FuturesUnordered<_> = servers
        .iter()
        .map(|&index| tokio::spawn(release_one(index)))
        .collect();
    let (mut answered, mut first_error) = (0, None);
    while let Some(result) = runs.next().await {
        match result {
            Ok(Ok(())) => answered += 1,
            Ok(Err(error)) => {
                first_error.get_or_insert(error);
            }
            Err(error) => {
                first_error.get_or_insert(Error::backend(BACKEND, "a release task failed", error));
            }
        }
        if answered >= quorum {
            break;
        }
    }
    (answered, first_error)
}

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
                tokio::time::timeout(limit, server.run::<i64>(script, &target.keys, args)).await;
        }
    });
    futures_util::future::join_all(runs).await;
}

/// Withdraws the waiting mark when a wait ends without the hold, however it ends.
struct WaitingMark {
    shared: Arc<Shared>,
    target: Arc<Target>,
    waiter: String,
    armed: bool,
}

impl Drop for WaitingMark {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (shared, target, waiter) = (
            self.shared.clone(),
            self.target.clone(),
            std::mem::take(&mut self.waiter),
        );
        spawn_release(async move { abandon(&shared, &target, &waiter).await });
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
    let mut mark = (waits && target.kind.abandon.is_some()).then(|| WaitingMark {
        shared: shared.clone(),
        target: target.clone(),
        waiter: random_id(),
        armed: true,
    });
    let waiter = mark.as_ref().map(|mark| mark.waiter.clone());
    let cap = MAX_BACKOFF.min(shared.lease.expiry / 4);
    let mut backoff = Backoff::new(FIRST_BACKOFF, cap);
    let mut contender = Waiting {
        shared,
        target,
        waiter: waiter.as_deref(),
    };
    match wait_for(&mut contender, deadline, &mut backoff).await? {
        Some(handle) => {
            disarm(&mut mark);
            Ok(Some(handle))
        }
        None => {
            give_up(&mut mark).await;
            Ok(None)
        }
    }
}

/// A wait for `target`, as the shared wait loop runs it.
struct Waiting<'a> {
    shared: &'a Arc<Shared>,
    target: &'a Arc<Target>,
    waiter: Option<&'a str>,
}

/// Wake-ups for a waiter: its turn among this process's waiters for the same target, and the
/// target's release channel.
struct Queued {
    _turn: Turn,
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
        Ok(
            match attempt(self.shared, self.target, self.waiter).await? {
                Attempt::Taken(handle) => WaitAttempt::Taken(handle),
                // Never sleep past the current hold's expiry: a crashed holder frees it then.
                Attempt::Busy { hint } => WaitAttempt::Busy {
                    retry_within: hint.map(|hint| hint + Duration::from_millis(1)),
                },
            },
        )
    }

    /// Queues behind this process's other waiters for the same thing, then subscribes to its
    /// releases (bounded by the deadline).
    async fn subscribe(&mut self, deadline: Option<Instant>) -> Option<Queued> {
        let queued = before(deadline, async {
            let turn = self.shared.turn(self.target).await;
            let subscription = self.shared.listener.subscribe(&self.target.channel).await;
            Queued {
                _turn: turn,
                subscription,
            }
        });
        queued.await
    }
}

/// `future`'s output, or `None` if `deadline` comes first.
async fn before<T>(
    deadline: Option<Instant>,
    future: impl std::future::Future<Output = T>,
) -> Option<T> {
    match deadline {
        None => Some(future.await),
        Some(deadline) => tokio::time::timeout_at(deadline, future).await.ok(),
    }
}

/// A wait that timed out withdraws its waiting mark before returning, so that this process's
/// next read sees it gone.
async fn give_up(mark: &mut Option<WaitingMark>) {
    if let Some(mark) = mark {
        abandon(&mark.shared, &mark.target, &mark.waiter).await;
        mark.armed = false;
    }
}

fn disarm(mark: &mut Option<WaitingMark>) {
    if let Some(mark) = mark {
        mark.armed = false;
    }
}

/// What a handle shares with its lease task.
struct Hold {
    shared: Arc<Shared>,
    target: Arc<Target>,
    owner: String,
    notifier: LossNotifier,
}

/// A held Redis lock, read or write hold, or semaphore ticket, kept alive by a lease that a
/// task owned by the handle extends. Dropping it releases on a background task;
/// [`Handle::release`] waits for the servers to confirm.
#[must_use = "dropping the handle releases it"]
pub struct RedisHandle {
    lease: Shell<Leased>,
    loss: LossSignal,
    token: Option<u64>,
}

/// A hold and the task that extends its lease, which ends with it.
struct Leased {
    hold: Arc<Hold>,
    lease_task: tokio::task::AbortHandle,
}

impl std::fmt::Debug for Leased {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leased")
            .field("name", &self.hold.target.name)
            .finish()
    }
}

impl std::fmt::Debug for RedisHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisHandle")
            .field("name", &self.lease.get().hold.target.name)
            .field("fencing_token", &self.token)
            .finish()
    }
}

impl RedisHandle {
    fn new(
        shared: Arc<Shared>,
        target: Arc<Target>,
        owner: String,
        token: Option<u64>,
        deadline: Instant,
    ) -> Self {
        let (notifier, loss) = LossSignal::detectable();
        let hold = Arc::new(Hold {
            shared,
            target,
            owner,
            notifier,
        });
        let keep = keep_alive(hold.clone(), deadline);
        let lease_task = match background() {
            Ok(runtime) => runtime.spawn(keep),
            // Without a thread of its own, the lease is kept by the caller's runtime.
            Err(_) => tokio::spawn(keep),
        };
        RedisHandle {
            lease: Shell::new(Leased {
                hold,
                lease_task: lease_task.abort_handle(),
            }),
            loss,
            token,
        }
    }
}

/// Extends the lease every extension cadence; retries sooner after a failure; fires the
/// loss signal when the majority says the hold is gone or the lease runs out unextended.
async fn keep_alive(hold: Arc<Hold>, mut deadline: Instant) {
    let lease = hold.shared.lease;
    let servers = hold.shared.servers.len();
    let quorum = hold.shared.quorum();
    let ttl = lease_ms(lease.expiry);
    let args = script_args(hold.owner.as_bytes(), &ttl, &hold.target, None);
    let mut next = Instant::now() + lease.extension_cadence;
    loop {
        tokio::time::sleep_until(next.min(deadline)).await;
        let started = Instant::now();
        if started >= deadline {
            break;
        }
        let limit = deadline - started;
        let mut runs: FuturesUnordered<_> = hold
            .shared
            .servers
            .iter()
            .map(|server| {
                let (args, target) = (&args, &hold.target);
                tokio::time::timeout(
                    limit,
                    server.run_on::<i64>(Route::Background, target.kind.extend, &target.keys, args),
                )
            })
            .collect();
        // Decided as soon as a majority extended or said the hold is gone: a hung server
        // does not hold up the others.
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
        drop(runs);
        if extended >= quorum {
            let validity = lease
                .expiry
                .saturating_sub(started.elapsed() + lease.drift());
            deadline = Instant::now() + validity;
            next = started + lease.extension_cadence;
        } else if gone > servers - quorum {
            break;
        } else {
            next = Instant::now() + (lease.extension_cadence / 4).max(Duration::from_millis(10));
        }
    }
    tracing::warn!(name = ?hold.target.name, "a Redis hold was lost");
    hold.notifier.notify_lost();
}

async fn release_hold(hold: &Hold) -> Result<()> {
    let all: Vec<usize> = (0..hold.shared.servers.len()).collect();
    let (answered, error) = release_on(
        &hold.shared,
        &hold.target,
        &hold.owner,
        &all,
        hold.shared.lease.expiry,
    )
    .await;
    match error {
        Some(error) if answered < hold.shared.quorum() && !hold.notifier.is_lost() => Err(error),
        _ => Ok(()),
    }
}

impl Release for Leased {
    type Note = Note<Vec<u8>>;

    fn name(&self) -> &str {
        &self.hold.target.name
    }

    fn note(&self) -> Note<Vec<u8>> {
        self.hold
            .shared
            .release_notes
            .note(vec![self.hold.target.note()])
    }

    fn release(self) -> impl std::future::Future<Output = Result<()>> + Send + 'static {
        self.lease_task.abort();
        async move { release_hold(&self.hold).await }
    }
}

impl Handle for RedisHandle {
    /// Stops the lease and deletes the hold on every server, telling waiters.
    ///
    /// # Cancel safety
    /// Dropping this future still releases: the rest of the release runs on tollgate's
    /// runtime.
    async fn release(self) -> Result<()> {
        self.lease.release().await
    }

    fn name(&self) -> &str {
        &self.lease.get().hold.target.name
    }

    /// Fires when an extension finds the hold gone on a majority of servers, or when the
    /// lease runs out before an extension succeeds.
    fn loss_signal(&self) -> LossSignal {
        self.loss.clone()
    }

    /// The servers' clock in microseconds when the hold was taken (the largest among the
    /// servers that granted it), for locks and write holds; `None` for read holds and
    /// semaphore tickets.
    fn fencing_token(&self) -> Option<u64> {
        self.token
    }
}

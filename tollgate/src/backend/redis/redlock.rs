//! The majority rule over one or several servers (RedLock), the leases that keep holds alive,
//! the wait loop, and the handle every Redis primitive returns.
//!
//! Every primitive is a [`Target`]: its keys, its release channel and a [`Kind`] (the four
//! scripts that take, extend, release and — for a waiting writer — withdraw a hold). Each
//! attempt uses a fresh owner id, so a late rollback of one attempt can never touch the next.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use redis::Script;
use tokio::sync::OwnedRwLockReadGuard;
use tokio::time::Instant;

use super::listener::Listener;
use super::{Lease, BACKEND};
use crate::backend::kit::completion::run_to_completion;
use crate::backend::kit::hold::{Release, Shell};
use crate::backend::kit::ids::random_id;
use crate::backend::kit::notes::{Note, ReleaseNotes};
use crate::backend::kit::runtime::{spawn_owned, spawn_release};
use crate::backend::kit::turns::{Turn, Turns};
use crate::{Error, Handle, LossNotifier, LossSignal, Result};

mod wait;

pub(crate) use wait::acquire_wait;

mod server;

mod keeper;

use keeper::{Keeper, Slot};

pub(crate) use server::{Route, Server};

/// What a provider's primitives share: the servers, the lease settings, the release
/// notifications, and the releases under way after drops.
pub(crate) struct Shared {
    pub(crate) servers: Box<[Server]>,
    pub(crate) lease: Lease,
    /// How long a wait rides out unreachable servers (see [`crate::backend::kit::fault`]).
    pub(crate) unreachable_timeout: Option<std::time::Duration>,
    pub(crate) listener: Arc<Listener>,
    release_notes: Arc<ReleaseNotes<Vec<u8>>>,
    /// Keeps every hold's lease alive.
    keeper: Arc<Keeper>,
    /// Per primitive and side, the turn to wait on the servers (see
    /// [`crate::backend::kit::turns`]).
    turns: Arc<Turns<Vec<u8>>>,
    /// Whether one attempt has heard every server of a RedLock list (each then identified,
    /// or failed): until then attempts wait for every answer rather than decide on the first
    /// majority, so that [`Shared::check_distinct`] knows every reachable server's `run_id`.
    all_heard: AtomicBool,
}

impl Shared {
    pub(crate) fn new(
        servers: Vec<Server>,
        lease: Lease,
        unreachable_timeout: Option<std::time::Duration>,
    ) -> Self {
        let clients = servers.iter().map(|server| server.client.clone()).collect();
        Shared {
            servers: servers.into_boxed_slice(),
            lease,
            unreachable_timeout,
            listener: Arc::new(Listener::new(clients)),
            release_notes: Arc::default(),
            keeper: Arc::default(),
            turns: Arc::default(),
            all_heard: AtomicBool::new(false),
        }
    }

    /// With RedLock: an error if two entries of the server list turned out to be one server
    /// (the same `run_id`, e.g. `localhost` and `127.0.0.1`), whose votes would count twice.
    pub(crate) fn check_distinct(&self) -> Result<()> {
        if self.servers.len() < 2 {
            return Ok(());
        }
        let identities: Vec<(usize, Arc<str>)> = self
            .servers
            .iter()
            .enumerate()
            .filter_map(|(index, server)| Some((index, server.identity()?)))
            .collect();
        for (position, (first, identity)) in identities.iter().enumerate() {
            if let Some((second, _)) = identities[position + 1..]
                .iter()
                .find(|(_, other)| other == identity)
            {
                return Err(Error::invalid(format!(
                    "redis servers {} and {} are one server (the same run_id): RedLock needs                      distinct servers",
                    self.servers[*first].label, self.servers[*second].label
                )));
            }
        }
        Ok(())
    }

    /// Waits for this process's turn to wait for `target` on the servers.
    async fn turn(&self, target: &Target) -> Turn<Vec<u8>> {
        let key = [target.kind.label.as_bytes(), b":", &target.channel].concat();
        self.turns.turn(key).await
    }

    /// More than half of the servers.
    pub(crate) fn quorum(&self) -> usize {
        self.servers.len() / 2 + 1
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

/// A waiting writer, as its attempts see it: the id of its mark, and a read guard of the
/// mark's gate, held until the attempt's script has run on every server or timed out, so that
/// withdrawing the mark (under the gate for writing) cannot be overtaken by a late attempt
/// that sets it again.
struct Waiter {
    id: String,
    scripts: OwnedRwLockReadGuard<()>,
}

/// One attempt on every server at once, decided by the majority within the validity budget.
/// It always completes (see [`run_to_completion`]): a handle nobody waits for any more
/// releases on drop, so whatever the attempt took is given back.
async fn attempt(
    shared: &Arc<Shared>,
    target: &Arc<Target>,
    waiter: Option<Waiter>,
) -> Result<Attempt> {
    let (shared, target) = (shared.clone(), target.clone());
    run_to_completion(
        async move { attempt_on_servers(&shared, &target, waiter).await },
        |attempt| async move { drop(attempt) },
    )
    .await
}

/// One attempt's tries on the servers: a fresh owner id, the acquire script on every server,
/// then a handle if a majority granted it with enough validity left, or else the outcome of
/// the refusals and failures (after giving back whatever was taken).
async fn attempt_on_servers(
    shared: &Arc<Shared>,
    target: &Arc<Target>,
    waiter: Option<Waiter>,
) -> Result<Attempt> {
    let lease = shared.lease;
    let owner = random_id();
    let ttl = lease_ms(lease.expiry);
    let id = waiter.as_ref().map(|waiter| waiter.id.as_bytes());
    let args: Arc<[Vec<u8>]> = script_args(owner.as_bytes(), &ttl, target, id)
        .into_iter()
        .map(<[u8]>::to_vec)
        .collect();
    let scripts = waiter.map(|waiter| waiter.scripts);
    let started = Instant::now();
    let budget = lease.attempt_budget();
    let tally = acquire_on_servers(shared, target, args, budget, scripts).await;
    if let Err(error) = shared.check_distinct() {
        // A majority counted twice is no majority: give back whatever was taken.
        give_back(shared, target, owner, &tally.answered);
        return Err(error);
    }
    let elapsed = started.elapsed();
    let validity = lease
        .expiry
        .checked_sub(elapsed + lease.drift())
        .unwrap_or_default();
    if tally.taken >= shared.quorum() && tally.other_max.is_none() && validity >= lease.min_validity
    {
        let deadline = started + lease.expiry.saturating_sub(lease.drift());
        let token = target.kind.fenced.then_some(tally.token);
        return Ok(Attempt::Taken(RedisHandle::new(
            shared.clone(),
            target.clone(),
            owner,
            token,
            deadline,
        )));
    }
    give_back(shared, target, owner, &tally.answered);
    tally.busy_or_error(target, shared.servers.len(), shared.quorum())
}

/// What the servers said to one attempt, as far as they were heard before the outcome was
/// decided.
#[derive(Default)]
struct Tally {
    /// Per server, whether it refused (so that it holds nothing of this attempt's).
    answered: Vec<bool>,
    taken: usize,
    refused: usize,
    failed: usize,
    /// The largest of the granting servers' clocks, in microseconds.
    token: u64,
    /// The shortest time left on the current hold among the refusals that told it.
    hint: Option<Duration>,
    /// The max count a semaphore is in use with, when a server refused over it.
    other_max: Option<i64>,
    /// Whether a server found one of the keys holding a value of another type.
    wrong_type: bool,
    first_error: Option<Error>,
}

/// Runs the acquire script on every server at once, each bounded by `budget`, and tallies the
/// replies until the outcome is decided. The servers still to answer then finish on a task of
/// their own, which holds a waiting writer's `scripts` until they have (see [`Waiter`]);
/// without it, they are given up on.
async fn acquire_on_servers(
    shared: &Arc<Shared>,
    target: &Arc<Target>,
    args: Arc<[Vec<u8>]>,
    budget: Duration,
    scripts: Option<OwnedRwLockReadGuard<()>>,
) -> Tally {
    let servers = shared.servers.len();
    let quorum = shared.quorum();
    let mut pending: FuturesUnordered<_> = (0..servers)
        .map(|index| {
            let (shared, target, args) = (shared.clone(), target.clone(), args.clone());
            async move {
                let server = &shared.servers[index];
                let reply = tokio::time::timeout(
                    budget,
                    server.run::<Vec<i64>, _>(target.kind.acquire, &target.keys, &args),
                )
                .await;
                (index, reply)
            }
        })
        .collect();
    let mut tally = Tally {
        answered: vec![false; servers],
        ..Tally::default()
    };
    // Two entries of the list may be one server: hear every one once before deciding early.
    let patient = servers > 1 && !shared.all_heard.load(Ordering::Acquire);
    while let Some((index, reply)) = pending.next().await {
        tally.count(&shared.servers[index], index, reply, budget);
        if !patient && tally.decided(servers, quorum) {
            break;
        }
    }
    if patient {
        shared.all_heard.store(true, Ordering::Release);
    }
    if let Some(scripts) = scripts.filter(|_| !pending.is_empty()) {
        // Without a runtime to finish on, the guard goes at once: the mark then lives at most
        // one lease on the servers that had not answered.
        let _ = spawn_owned(async move {
            while pending.next().await.is_some() {}
            drop(scripts);
        });
    }
    tally
}

impl Tally {
    /// Counts the reply of the server at `index`: a grant, a refusal, or a failure (an
    /// unexpected reply, an error, or no answer within `budget`).
    fn count(
        &mut self,
        server: &Server,
        index: usize,
        reply: std::result::Result<redis::RedisResult<Vec<i64>>, tokio::time::error::Elapsed>,
        budget: Duration,
    ) {
        let error = match reply {
            Ok(Ok(values)) => match parse_reply(&values) {
                Some(Reply::Taken { micros }) => {
                    self.taken += 1;
                    self.token = self.token.max(micros);
                    None
                }
                Some(Reply::Busy { hint: busy }) => {
                    self.answered[index] = true;
                    self.refused += 1;
                    self.hint = match (self.hint, busy) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    None
                }
                Some(Reply::OtherMax(stored)) => {
                    self.answered[index] = true;
                    self.refused += 1;
                    self.other_max = Some(stored);
                    None
                }
                None => Some(server_error(
                    server,
                    "unexpected reply to the acquire script",
                    format!("{values:?}"),
                )),
            },
            Ok(Err(error)) => {
                self.wrong_type |= error.to_string().contains("WRONGTYPE");
                Some(server_error(server, "acquire failed", error))
            }
            Err(_) => Some(server_error(
                server,
                "acquire timed out",
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {budget:?}"),
                ),
            )),
        };
        if let Some(error) = error {
            self.failed += 1;
            self.first_error.get_or_insert(error);
        }
    }

    /// Whether the outcome is decided, out of `servers` with a majority of `quorum`.
    fn decided(&self, servers: usize, quorum: usize) -> bool {
        // Stop as soon as the outcome is decided. A mix of refusals and failures is not
        // decided yet: whether the failures alone outvote the quorum (an error, which must
        // not pass for "held elsewhere") depends on the servers still to answer.
        let minority = servers - quorum;
        self.taken >= quorum || self.refused > minority || self.failed > minority
    }

    /// The outcome of an attempt that did not take the hold: an error for a semaphore in use
    /// with another max count, or when failures outvoted the quorum; else busy, with the
    /// shortest hint the refusals gave.
    fn busy_or_error(self, target: &Target, servers: usize, quorum: usize) -> Result<Attempt> {
        let Tally {
            failed,
            hint,
            other_max,
            wrong_type,
            first_error,
            ..
        } = self;
        if wrong_type {
            let keys: Vec<_> = target
                .keys
                .iter()
                .map(|key| String::from_utf8_lossy(key).into_owned())
                .collect();
            return Err(Error::invalid(format!(
                "{} {:?}: its Redis keys {keys:?} hold a value of another type, so another \
                 program (or another kind of tollgate primitive under another prefix) uses them",
                target.kind.label, target.name
            )));
        }
        if let Some(stored) = other_max {
            return Err(crate::primitive::max_count_mismatch(
                &target.name,
                stored,
                String::from_utf8_lossy(target.extra.first().map_or(&[][..], Vec::as_slice)),
            ));
        }
        if failed > servers - quorum {
            let error = first_error.unwrap_or_else(|| Error::invalid("no servers"));
            return Err(match error {
                Error::Backend {
                    message, source, ..
                } if servers > 1 => Error::Backend {
                    backend: BACKEND,
                    message: format!(
                        "{failed} of {servers} servers failed while acquiring {:?}; \
                         first: {message}",
                        target.name
                    ),
                    source,
                },
                other => other,
            });
        }
        Ok(Attempt::Busy { hint })
    }
}

/// Gives back whatever an attempt by `owner` may have taken, on tollgate's runtime and
/// counted as a release under way (flushed at exit): releases everywhere but where it was
/// refused (`answered`).
fn give_back(shared: &Arc<Shared>, target: &Arc<Target>, owner: String, answered: &[bool]) {
    let rollback: Vec<usize> = (0..answered.len())
        .filter(|&index| !answered[index])
        .collect();
    if !rollback.is_empty() {
        let (shared, target) = (shared.clone(), target.clone());
        spawn_release(async move {
            release_on(
                &shared,
                &target,
                &owner,
                &rollback,
                shared.lease.expiry,
                &[],
            )
            .await;
        });
    }
}

/// Runs the release script on the given servers, each on a task of its own; returns once
/// all answered or the answers decide whether the hold was whole (a majority of all servers
/// still held it) or lost (more servers than the hold can spare did not), stragglers
/// finishing in the background; with how many answered, how many of those still held it,
/// and the first error. `incarnations` (each server's `run_id` when the hold was taken, if
/// known) tells apart a release that went again after a dropped connection and found
/// nothing because the first run released (the server is the same) from one whose server
/// restarted without the hold.
async fn release_on(
    shared: &Arc<Shared>,
    target: &Arc<Target>,
    owner: &str,
    servers: &[usize],
    limit: Duration,
    incarnations: &[Option<Arc<str>>],
) -> (usize, usize, Option<Error>) {
    let quorum = shared.quorum();
    let release_one = |index: usize| {
        let (shared, target, owner) = (shared.clone(), target.clone(), owner.to_owned());
        let taken_on = incarnations.get(index).cloned().flatten();
        async move {
            let server = &shared.servers[index];
            let ttl = lease_ms(shared.lease.expiry);
            let args = script_args(owner.as_bytes(), &ttl, &target, None);
            // A release does nothing the second time: it may go again on a fresh connection.
            let result = tokio::time::timeout(
                limit,
                server.run_idempotent::<i64, _>(target.kind.release, &target.keys, &args),
            )
            .await;
            match result {
                // Released; or, after a dropped connection, perhaps by the first run, unless
                // the server is a new one since the hold was taken.
                Ok(Ok((released, retried))) => Ok(released == 1
                    || (retried && taken_on.is_none_or(|taken| server.identity() == Some(taken)))),
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
            Ok(released) => (1, usize::from(released), None),
            Err(error) => (0, 0, Some(error)),
        };
    }
    let minority = shared.servers.len() - quorum;
    let mut runs: FuturesUnordered<_> = servers
        .iter()
        .map(|&index| tokio::spawn(release_one(index)))
        .collect();
    let (mut answered, mut released, mut first_error) = (0, 0, None);
    while let Some(result) = runs.next().await {
        match result {
            Ok(Ok(was_held)) => {
                answered += 1;
                released += usize::from(was_held);
            }
            Ok(Err(error)) => {
                first_error.get_or_insert(error);
            }
            Err(error) => {
                first_error.get_or_insert(Error::backend(BACKEND, "a release task failed", error));
            }
        }
        // A majority of answers is not enough: one release and one "not held" leave open
        // whether the hold still had its majority (a third server's answer decides).
        if released >= quorum || answered - released > minority {
            break;
        }
    }
    (answered, released, first_error)
}

/// What a handle shares with its provider's [`Keeper`].
struct Hold {
    shared: Arc<Shared>,
    target: Arc<Target>,
    owner: String,
    notifier: LossNotifier,
    /// Each server's `run_id` when the hold was taken: a release that finds a server
    /// restarted since, and the hold not there, knows the hold was lost.
    incarnations: Vec<Option<Arc<str>>>,
}

/// A held Redis lock, read or write hold, or semaphore ticket, kept alive by a lease that the
/// provider's lease task extends. Dropping it releases on a background task;
/// [`Handle::release`] waits for the servers to confirm.
#[must_use = "dropping the handle releases it"]
pub struct RedisHandle {
    lease: Shell<Leased>,
    loss: LossSignal,
    token: Option<u64>,
}

/// A hold and its place among the leases its provider keeps, which it leaves at the release.
struct Leased {
    hold: Arc<Hold>,
    slot: Slot,
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
        let incarnations = shared.servers.iter().map(Server::identity).collect();
        let hold = Arc::new(Hold {
            shared,
            target,
            owner,
            notifier,
            incarnations,
        });
        let slot = hold.shared.keeper.join(hold.clone(), deadline);
        RedisHandle {
            lease: Shell::new(Leased { hold, slot }),
            loss,
            token,
        }
    }
}

async fn release_hold(hold: &Hold) -> Result<()> {
    let all: Vec<usize> = (0..hold.shared.servers.len()).collect();
    let (answered, released, error) = release_on(
        &hold.shared,
        &hold.target,
        &hold.owner,
        &all,
        hold.shared.lease.expiry,
        &hold.incarnations,
    )
    .await;
    // Gone from more servers than a hold can spare: it was lost (expired, deleted) before the
    // extensions noticed, and its holder learns it from its loss signal.
    let servers = hold.shared.servers.len();
    if answered - released > servers - hold.shared.quorum() {
        hold.notifier.notify_lost();
    }
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
        self.hold.shared.keeper.leave(self.slot);
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

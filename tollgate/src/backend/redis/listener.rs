//! Release notifications: one pub/sub connection per server, subscribed to the channels that
//! this process's waiters wait on. A release script publishes on its primitive's channel, and
//! every waiter on it here tries again at once.
//!
//! Each server's connection is owned by one task, started on first use and ended when the
//! provider is dropped (or its runtime ends; the next wait starts a new one). As for requests
//! (see [`Route`]), there are two sets of these tasks: waiters on a caller's runtime are woken
//! by tasks on that runtime, so that a release notification reaches them without a hop from
//! another runtime's thread; waiters on tollgate's own runtime (the blocking API) by tasks on
//! that one. While a connection is down, subscriptions are answered at once and waiters fall
//! back on their backoff; after it reconnects every waiter is woken, since releases may have
//! been missed.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot, watch};

use super::redlock::Route;
use crate::backend::kit::runtime::background;
use crate::backend::kit::wait::{Backoff, Schedule, Wake};

/// How long a subscription or a pub/sub connection attempt may take before the connection is
/// given up and opened again.
const PUBSUB_TIMEOUT: Duration = Duration::from_secs(2);
const FIRST_RECONNECT: Duration = Duration::from_millis(100);
const MAX_RECONNECT: Duration = Duration::from_secs(5);

enum Command {
    Subscribe(Vec<u8>, oneshot::Sender<()>),
    Unsubscribe(Vec<u8>),
}

/// Per channel, what wakes its waiters and how many they are.
type ChannelMap = HashMap<Vec<u8>, (watch::Sender<u64>, usize)>;

/// Channels that waiters of this process wait on, with how many wait on each.
#[derive(Default)]
struct Channels(Mutex<ChannelMap>);

impl Channels {
    fn lock(&self) -> MutexGuard<'_, ChannelMap> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn wake(&self, channel: &[u8]) {
        if let Some((wakes, _)) = self.lock().get(channel) {
            wakes.send_modify(|count| *count = count.wrapping_add(1));
        }
    }

    fn wake_all(&self) {
        for (wakes, _) in self.lock().values() {
            wakes.send_modify(|count| *count = count.wrapping_add(1));
        }
    }
}

/// Each server's task of one route, where it is running.
type Tasks = Vec<Option<mpsc::UnboundedSender<Command>>>;

/// The release notifications of one provider.
pub(crate) struct Listener {
    clients: Vec<redis::Client>,
    channels: Arc<Channels>,
    /// The tasks of [`Route::Caller`], then those of [`Route::Background`].
    tasks: Mutex<[Tasks; 2]>,
}

/// Interest in one channel; dropping it unsubscribes when no other waiter needs the channel.
pub(crate) struct Subscription {
    listener: Arc<Listener>,
    route: Route,
    channel: Vec<u8>,
    wakes: watch::Receiver<u64>,
}

/// Wakes on a release published on the channel, or after the listener reconnected (releases
/// may have been missed meanwhile).
impl Wake for Subscription {
    fn arm(&mut self) {
        self.wakes.arm();
    }

    fn woken(&mut self) -> impl std::future::Future<Output = ()> + Send {
        self.wakes.woken()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        {
            let mut channels = self.listener.channels.lock();
            if let Some((_, count)) = channels.get_mut(&self.channel) {
                *count -= 1;
                if *count == 0 {
                    channels.remove(&self.channel);
                }
            }
        }
        // Every subscription told each server's task of its route once; each drop tells it
        // once too. A task that has ended (its runtime shut down) took its counts with it.
        self.listener
            .send_running(self.route, || Command::Unsubscribe(self.channel.clone()));
    }
}

impl Listener {
    pub(crate) fn new(clients: Vec<redis::Client>) -> Self {
        let tasks = || clients.iter().map(|_| None).collect();
        Listener {
            channels: Arc::default(),
            tasks: Mutex::new([tasks(), tasks()]),
            clients,
        }
    }

    fn tasks(&self) -> MutexGuard<'_, [Tasks; 2]> {
        self.tasks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sends a command to every server's task of `route`, starting tasks that are not
    /// running: a caller's on the runtime of this thread, which runs the waiters they wake,
    /// and the background route's on tollgate's own runtime.
    fn send_all(&self, route: Route, mut command: impl FnMut() -> Command) {
        let mut tasks = self.tasks();
        for (index, slot) in tasks[route as usize].iter_mut().enumerate() {
            if slot.as_ref().is_some_and(|sender| sender.is_closed()) {
                *slot = None;
            }
            if slot.is_none() {
                let (sender, receiver) = mpsc::unbounded_channel();
                let task = run(self.clients[index].clone(), self.channels.clone(), receiver);
                match route {
                    Route::Caller => drop(tokio::spawn(task)),
                    Route::Background => {
                        let Ok(runtime) = background() else {
                            continue;
                        };
                        drop(runtime.spawn(task));
                    }
                }
                *slot = Some(sender);
            }
            if let Some(sender) = slot {
                let _ = sender.send(command());
            }
        }
    }

    /// Sends a command to every server's task of `route` that is running (a drop may happen
    /// outside any runtime, where none could be started).
    fn send_running(&self, route: Route, mut command: impl FnMut() -> Command) {
        for sender in self.tasks()[route as usize].iter().flatten() {
            let _ = sender.send(command());
        }
    }

    /// Subscribes to `channel` on every server and waits until half of them (rounded up)
    /// confirm, or a server that cannot be reached answers at once. A hold was granted by a
    /// majority, and its release publishes on each server of that majority, so half the
    /// servers always include one that carries it: no release published after this returns
    /// is missed, and a hung server (which never confirms) holds nothing up while the others
    /// answer.
    pub(crate) async fn subscribe(self: &Arc<Self>, channel: &[u8]) -> Subscription {
        let route = Route::here();
        let wakes = {
            let mut channels = self.channels.lock();
            let entry = channels
                .entry(channel.to_vec())
                .or_insert_with(|| (watch::channel(0).0, 0));
            entry.1 += 1;
            entry.0.subscribe()
        };
        let subscription = Subscription {
            listener: self.clone(),
            route,
            channel: channel.to_vec(),
            wakes,
        };
        // Later waiters on the same channel also wait for confirmation: commands to a task
        // run in order, so theirs is answered after the first subscription is in place.
        let mut acks = Vec::new();
        self.send_all(route, || {
            let (ack, confirmed) = oneshot::channel();
            acks.push(confirmed);
            Command::Subscribe(channel.to_vec(), ack)
        });
        let needed = self.clients.len().div_ceil(2).min(acks.len());
        let mut acks: futures_util::stream::FuturesUnordered<_> = acks.into_iter().collect();
        let _ = tokio::time::timeout(PUBSUB_TIMEOUT, async {
            for _ in 0..needed {
                acks.next().await;
            }
        })
        .await;
        subscription
    }
}

/// One server's pub/sub connection: subscribes and unsubscribes as told, wakes waiters on
/// messages, reconnects with backoff.
async fn run(
    client: redis::Client,
    channels: Arc<Channels>,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    // Subscriptions on this server, counted per channel.
    let mut counts: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut reconnect = Backoff::new(FIRST_RECONNECT, MAX_RECONNECT);
    loop {
        let connected = tokio::time::timeout(PUBSUB_TIMEOUT, client.get_async_pubsub()).await;
        let Ok(Ok(pubsub)) = connected else {
            if while_down(reconnect.pause(false), &mut commands, &mut counts)
                .await
                .is_break()
            {
                return;
            }
            continue;
        };
        reconnect = Backoff::new(FIRST_RECONNECT, MAX_RECONNECT);
        if while_connected(pubsub, &channels, &mut commands, &mut counts)
            .await
            .is_break()
        {
            return;
        }
    }
}

/// While the server is down, for `pause`: applies commands to the counts alone, answering
/// subscriptions at once (waiters poll meanwhile). Breaks when the listener is gone, continues
/// when it is time to retry.
async fn while_down(
    pause: Duration,
    commands: &mut mpsc::UnboundedReceiver<Command>,
    counts: &mut HashMap<Vec<u8>, usize>,
) -> ControlFlow<()> {
    let retry = tokio::time::sleep(pause);
    tokio::pin!(retry);
    loop {
        tokio::select! {
            () = &mut retry => return ControlFlow::Continue(()),
            command = commands.recv() => match command {
                None => return ControlFlow::Break(()),
                Some(command) => count(counts, command),
            },
        }
    }
}

/// On a fresh connection: subscribes to every channel counted, wakes every waiter, then runs
/// commands and wakes waiters on messages until the connection fails (continues, to open it
/// again) or the listener is gone (breaks).
async fn while_connected(
    pubsub: redis::aio::PubSub,
    channels: &Channels,
    commands: &mut mpsc::UnboundedReceiver<Command>,
    counts: &mut HashMap<Vec<u8>, usize>,
) -> ControlFlow<()> {
    let (mut sink, mut stream) = pubsub.split();
    let known: Vec<Vec<u8>> = counts.keys().cloned().collect();
    if !known.is_empty()
        && !matches!(
            tokio::time::timeout(PUBSUB_TIMEOUT, sink.subscribe(known)).await,
            Ok(Ok(()))
        )
    {
        return ControlFlow::Continue(());
    }
    // Releases may have been published while this connection was down.
    channels.wake_all();
    loop {
        tokio::select! {
            command = commands.recv() => {
                let Some(command) = command else { return ControlFlow::Break(()) };
                if !forward(&mut sink, counts, command).await {
                    return ControlFlow::Continue(());
                }
            }
            message = stream.next() => match message {
                Some(message) => {
                    if let Ok(channel) = message.get_channel::<Vec<u8>>() {
                        channels.wake(&channel);
                    }
                }
                None => return ControlFlow::Continue(()),
            },
        }
    }
}

/// Applies a command to the per-channel counts and, for a channel's first subscription or
/// its last unsubscription, to the server (answering a subscription once done); false when
/// the server did not confirm it in time (an error, or no answer), so that the connection is
/// opened again.
async fn forward(
    sink: &mut redis::aio::PubSubSink,
    counts: &mut HashMap<Vec<u8>, usize>,
    command: Command,
) -> bool {
    match command {
        Command::Subscribe(channel, ack) => {
            let count = counts.entry(channel.clone()).or_default();
            *count += 1;
            let ok = *count > 1
                || matches!(
                    tokio::time::timeout(PUBSUB_TIMEOUT, sink.subscribe(&channel)).await,
                    Ok(Ok(()))
                );
            let _ = ack.send(());
            ok
        }
        Command::Unsubscribe(channel) => match counts.get_mut(&channel) {
            Some(count) if *count > 1 => {
                *count -= 1;
                true
            }
            Some(_) => {
                counts.remove(&channel);
                matches!(
                    tokio::time::timeout(PUBSUB_TIMEOUT, sink.unsubscribe(&channel)).await,
                    Ok(Ok(()))
                )
            }
            None => true,
        },
    }
}

/// Applies a command to the per-channel counts (answering a subscription at once).
fn count(counts: &mut HashMap<Vec<u8>, usize>, command: Command) {
    match command {
        Command::Subscribe(channel, ack) => {
            *counts.entry(channel).or_default() += 1;
            let _ = ack.send(());
        }
        Command::Unsubscribe(channel) => {
            if let Some(count) = counts.get_mut(&channel) {
                *count -= 1;
                if *count == 0 {
                    counts.remove(&channel);
                }
            }
        }
    }
}

//! The sequential-node recipes: a contender creates an ephemeral sequential node under the
//! primitive's path, lists the children in creation order, holds when its role's rule says
//! so, and otherwise watches the one node whose change can let it in. The node carries a
//! per-acquire token in its data, so that a create whose reply was lost is found again.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use zookeeper_client as zk;

use super::names::{in_creation_order, sequence};
use super::session::Live;
use super::{error, failure, Shared, BACKEND};
use crate::backend::kit::fault::Outage;
use crate::backend::kit::hold::{Release, Shell};
use crate::backend::kit::notes::Note;
use crate::backend::kit::runtime::spawn_release;
use crate::backend::kit::wait::{wait_for, Attempt, Backoff, Contender, NoWake, Paused};
use crate::primitive::max_count_mismatch;
use crate::{Error, LossSignal, Result, Wait};

/// The data DistributedLock writes into a semaphore node that holds a ticket; later waiters
/// watch for it.
const ACQUIRED: &[u8] = b"ACQUIRED";
/// How a semaphore's node stores its max count: this, then the count in decimal.
const MAX_COUNT: &str = "tollgate:max_count=";
/// The fallback pause between re-checks while a watch is set (only lost events need it).
/// The pause before a release tries its delete again after the connection dropped.
const RELEASE_RETRY: Duration = Duration::from_millis(100);
const FIRST_RECHECK: Duration = Duration::from_secs(1);
const MAX_RECHECK: Duration = Duration::from_secs(5);

/// What a contender is, and so which nodes it queues among and what lets it in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// Holds when first among `lock-` nodes.
    Lock,
    /// Holds when no `write-` node is ahead of it.
    Read,
    /// Holds when first among `read-` and `write-` nodes.
    Write,
    /// Holds when among the first `max_count` `semaphore-` nodes.
    Semaphore(u32),
}

impl Role {
    /// The prefix of its own node.
    pub(crate) fn prefix(self) -> &'static str {
        match self {
            Role::Lock => "lock-",
            Role::Read => "read-",
            Role::Write => "write-",
            Role::Semaphore(_) => "semaphore-",
        }
    }

    /// What the primitive's own node holds when tollgate creates it: a semaphore's max
    /// count.
    fn dir_data(self) -> Vec<u8> {
        match self {
            Role::Semaphore(max) => format!("{MAX_COUNT}{max}").into_bytes(),
            _ => Vec::new(),
        }
    }

    /// The prefixes of the nodes it queues among.
    fn queue(self) -> &'static [&'static str] {
        match self {
            Role::Lock => &["lock-"],
            Role::Read | Role::Write => &["read-", "write-"],
            Role::Semaphore(_) => &["semaphore-"],
        }
    }
}

/// A node this contender created.
#[derive(Clone, Debug)]
struct Created {
    path: String,
    name: String,
    czxid: i64,
}

/// An acquire's node from the create on: deleted (on tollgate's runtime, counted as a release
/// under way) unless it became a hold, however the acquire ends, dropped at any await
/// included.
struct Pending {
    shared: Arc<Shared>,
    name: Arc<str>,
    dir: Arc<str>,
    role: Role,
    /// Written into the node, so that this acquire's node can be told from any other.
    token: String,
    /// The session the create went out on.
    live: Option<Arc<Live>>,
    node: Option<Created>,
    /// A create went out whose reply was not seen: the node may exist.
    sent: bool,
}

impl Pending {
    /// What is left to clean up, taken out: the session, the node if known, and whether a
    /// create went out unanswered. `None` when there is nothing (no create went out, or the
    /// node became a hold).
    fn take(&mut self) -> Option<(Arc<Live>, Option<Created>, bool)> {
        let (live, node, sent) = (self.live.take()?, self.node.take(), self.sent);
        self.sent = false;
        (node.is_some() || sent).then_some((live, node, sent))
    }

    /// Deletes the node now (an acquire that gave up): this process's next look at the
    /// primitive sees it gone.
    async fn give_up(&mut self) {
        if let Some((live, node, sent)) = self.take() {
            remove(&live, &self.dir, self.role, &self.token, node, sent).await;
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let Some((live, node, sent)) = self.take() else {
            return;
        };
        let note = self.shared.notes.note(vec![self.dir.to_string()]);
        let (dir, role, token) = (self.dir.clone(), self.role, std::mem::take(&mut self.token));
        spawn_release(async move {
            let _note = note;
            remove(&live, &dir, role, &token, node, sent).await;
        });
    }
}

/// Deletes an acquire's node: the one known, or the one carrying `token` if a create went out
/// unanswered. Requests of one session are handled in order, so a create sent before this is
/// listed by it. Best effort: a node of a session that ended is gone with it.
async fn remove(
    live: &Live,
    dir: &str,
    role: Role,
    token: &str,
    node: Option<Created>,
    sent: bool,
) {
    let node = match node {
        Some(node) => Some(node),
        None if sent => find(live, dir, role, token).await.ok().flatten(),
        None => None,
    };
    if let Some(node) = node {
        if let Err(failure) = live.client.delete(&node.path, None).await {
            if failure != zk::Error::NoNode {
                tracing::debug!(node = %node.path, %failure, "zookeeper: cannot delete an abandoned node");
            }
        }
    }
}

/// The node of `dir` whose data is `token`, if one exists.
async fn find(live: &Live, dir: &str, role: Role, token: &str) -> Result<Option<Created>> {
    let children = match live.client.list_children(dir).await {
        Ok(children) => children,
        Err(zk::Error::NoNode) => return Ok(None),
        Err(failure) => return Err(error("cannot list the contenders", failure)),
    };
    // Every candidate's data is asked for at once: one round trip.
    let candidates: Vec<String> = children
        .into_iter()
        .filter(|child| sequence(child, role.prefix()).is_some())
        .collect();
    let paths: Vec<String> = candidates
        .iter()
        .map(|child| format!("{dir}/{child}"))
        .collect();
    let reads = futures_util::future::join_all(paths.iter().map(|path| live.client.get_data(path)));
    for ((child, path), read) in candidates.into_iter().zip(paths).zip(reads.await) {
        match read {
            Ok((data, stat)) if data == token.as_bytes() => {
                return Ok(Some(Created {
                    path,
                    name: child,
                    czxid: stat.czxid,
                }))
            }
            Ok(_) | Err(zk::Error::NoNode) => {}
            Err(failure) => return Err(error("cannot read a contender", failure)),
        }
    }
    Ok(None)
}

/// What lets a waiting contender in.
#[derive(Clone, Debug)]
enum Watch {
    /// This node's deletion.
    Gone(String),
    /// The children of the primitive changing, unless one of these is gone already.
    Children(Vec<String>),
    /// This node becoming a holder (its data set to [`ACQUIRED`]) or going.
    Acquired(String),
}

/// One acquire, as the shared wait loop runs it.
struct Entering<'a> {
    pending: &'a mut Pending,
    watch: Option<Watch>,
    /// Whether the contender was turned away at least once (its node may be watched).
    waited: bool,
}

impl Entering<'_> {
    /// The session, after forgetting a node of an earlier session that ended (its nodes are
    /// gone with it).
    async fn live(&mut self) -> Result<Arc<Live>> {
        let shared = self.pending.shared.clone();
        let live = shared.session.live(&shared.settings).await?;
        if let Some(old) = &self.pending.live {
            if !Arc::ptr_eq(old, &live) {
                self.pending.node = None;
                self.pending.sent = false;
            }
        }
        self.pending.live = Some(live.clone());
        Ok(live)
    }

    /// Creates the contender's node (and the primitive's path, if missing), or finds the one
    /// an unanswered create made. The first look at the contenders goes out right behind the
    /// create, so that one round trip answers both (a session's requests are handled in
    /// order: the look sees the new node).
    async fn create(&mut self, live: &Arc<Live>) -> Result<(Created, Option<Look>)> {
        let pending = &mut *self.pending;
        if pending.sent {
            // The path's watch, if the one sent with the lost create failed, goes out before
            // the search, so it covers the node found.
            let watching = live.watch_dir(&pending.dir);
            let ((), found) = futures_util::join!(
                watching,
                find(live, &pending.dir, pending.role, &pending.token)
            );
            if let Some(found) = found? {
                pending.sent = false;
                return Ok((found, None));
            }
            pending.sent = false;
        }
        let shared = &pending.shared;
        let path = format!("{}/{}", pending.dir, pending.role.prefix());
        let options = zk::CreateMode::EphemeralSequential.with_acls(shared.settings.acls());
        for _ in 0..8 {
            pending.sent = true;
            // The path's watch (the first time this session uses it), the create and the first
            // look go out in this order, one round trip for the three.
            let watching = live.watch_dir(&pending.dir);
            let creating = live
                .client
                .create(&path, pending.token.as_bytes(), &options);
            let ((), created, looked) =
                futures_util::join!(watching, creating, look(live, &pending.dir, pending.role));
            match created {
                Ok((stat, sequence)) => {
                    pending.sent = false;
                    let name = format!("{}{sequence}", pending.role.prefix());
                    let created = Created {
                        path: format!("{}/{name}", pending.dir),
                        name,
                        czxid: stat.czxid,
                    };
                    return Ok((created, looked.ok()));
                }
                Err(zk::Error::NoNode) => {
                    pending.sent = false;
                    if shared.settings.assume_path_exists {
                        return Err(failure(format!(
                            "node {:?} does not exist (the provider was told to assume it does)",
                            pending.dir
                        )));
                    }
                    make_dirs(live, shared, &pending.dir, &pending.role.dir_data()).await?;
                }
                Err(failure) => {
                    // Lost replies leave `sent` set: the next attempt looks for the node.
                    if !matches!(failure, zk::Error::ConnectionLoss | zk::Error::Timeout) {
                        pending.sent = false;
                    }
                    return Err(error("cannot create the contender's node", failure));
                }
            }
        }
        Err(failure(format!(
            "node {:?} keeps being deleted under the acquire",
            pending.dir
        )))
    }
}

/// Creates `dir` (with `data`) and whichever of its ancestors are missing, as container
/// nodes.
async fn make_dirs(live: &Live, shared: &Shared, dir: &str, data: &[u8]) -> Result<()> {
    let options = zk::CreateMode::Container.with_acls(shared.settings.acls());
    let mut missing = vec![dir];
    while let Some(path) = missing.last().copied() {
        let data = if path == dir { data } else { &[] };
        match live.client.create(path, data, &options).await {
            Ok(_) | Err(zk::Error::NodeExists) => {
                missing.pop();
            }
            Err(zk::Error::NoNode) => {
                let parent = match path.rfind('/') {
                    Some(0) | None => break,
                    Some(at) => &path[..at],
                };
                missing.push(parent);
            }
            Err(failure) => return Err(error(&format!("cannot create {path:?}"), failure)),
        }
    }
    Ok(())
}

/// What one look at a primitive finds: its children and, for a semaphore, the data of its
/// path (the stored max count).
struct Look {
    children: Vec<String>,
    stored: Option<Vec<u8>>,
}

/// Lists the children of `dir` and, for a semaphore, reads its data, in one round trip.
async fn look(live: &Live, dir: &str, role: Role) -> Result<Look> {
    let listing = live.client.list_children(dir);
    let (children, stored) = match role {
        Role::Semaphore(_) => {
            let (children, stored) = futures_util::join!(listing, live.client.get_data(dir));
            (children, stored.ok().map(|(data, _)| data))
        }
        _ => (listing.await, None),
    };
    let children = children.map_err(|failure| error("cannot list the contenders", failure))?;
    Ok(Look { children, stored })
}

/// The children that `role` queues among, in creation order.
async fn queue(live: &Live, dir: &str, role: Role, children: Vec<String>) -> Vec<String> {
    let mut entries: Vec<(i32, String)> = children
        .into_iter()
        .filter_map(|child| {
            role.queue()
                .iter()
                .find_map(|prefix| sequence(&child, prefix))
                .map(|sequence| (sequence, child))
        })
        .collect();
    if !in_creation_order(&mut entries) {
        // Sequence numbers spread over the whole 32-bit range: order by creation instead.
        let mut dated = Vec::with_capacity(entries.len());
        for (_, child) in entries {
            if let Ok(Some(stat)) = live.client.check_stat(&format!("{dir}/{child}")).await {
                dated.push((stat.czxid, child));
            }
        }
        dated.sort();
        return dated.into_iter().map(|(_, child)| child).collect();
    }
    entries.into_iter().map(|(_, child)| child).collect()
}

impl Contender for Entering<'_> {
    type Held = (Arc<Live>, Created);
    type Wake = NoWake;

    async fn attempt(&mut self) -> Result<Attempt<(Arc<Live>, Created)>> {
        let live = self.live().await?;
        let result = self.attempt_on(&live).await;
        if let Err(failure) = &result {
            if live.is_over() || is_session_end(failure) {
                // Its nodes went with it: the next attempt starts again on a new session.
                self.pending.shared.session.forget(&live).await;
            }
        }
        result
    }

    /// Nothing to subscribe to beforehand: each pause sets a watch on the one node that can
    /// let this contender in, atomically with checking it.
    async fn subscribe(&mut self, _deadline: Option<Instant>) -> Option<NoWake> {
        None
    }

    async fn pause(
        &mut self,
        _wake: Option<&mut NoWake>,
        until: Instant,
    ) -> Result<Paused<(Arc<Live>, Created)>> {
        let (Some(live), Some(watch)) = (self.pending.live.clone(), self.watch.take()) else {
            tokio::time::sleep_until(until).await;
            return Ok(Paused::Elapsed);
        };
        let watcher = match &watch {
            Watch::Gone(path) => match live.client.check_and_watch_stat(path).await {
                Ok((None, _)) => return Ok(Paused::Woken),
                Ok((Some(_), watcher)) => watcher,
                Err(failure) => return Err(error("cannot watch the node ahead", failure)),
            },
            Watch::Acquired(path) => match live.client.get_and_watch_data(path).await {
                Ok((data, _, _)) if data == ACQUIRED => return Ok(Paused::Woken),
                Ok((_, _, watcher)) => watcher,
                Err(zk::Error::NoNode) => return Ok(Paused::Woken),
                Err(failure) => return Err(error("cannot watch the node ahead", failure)),
            },
            Watch::Children(ahead) => {
                let dir = &self.pending.dir;
                match live.client.list_and_watch_children(dir).await {
                    Ok((children, watcher)) => {
                        if ahead.iter().any(|node| !children.contains(node)) {
                            return Ok(Paused::Woken);
                        }
                        watcher
                    }
                    Err(zk::Error::NoNode) => return Ok(Paused::Woken),
                    Err(failure) => return Err(error("cannot watch the contenders", failure)),
                }
            }
        };
        tokio::select! {
            _ = watcher.changed() => Ok(Paused::Woken),
            () = tokio::time::sleep_until(until) => Ok(Paused::Elapsed),
        }
    }
}

impl Entering<'_> {
    async fn attempt_on(&mut self, live: &Arc<Live>) -> Result<Attempt<(Arc<Live>, Created)>> {
        let (node, first_look) = match self.pending.node.clone() {
            Some(node) => (node, None),
            None => {
                let (node, look) = self.create(live).await?;
                self.pending.node = Some(node.clone());
                (node, look)
            }
        };
        let role = self.pending.role;
        let Look { children, stored } = match first_look {
            Some(look) => look,
            None => look(live, &self.pending.dir, role).await?,
        };
        let queue = queue(live, &self.pending.dir, role, children).await;
        if let (Role::Semaphore(max), Some(data)) = (role, stored) {
            let stored = std::str::from_utf8(&data)
                .ok()
                .and_then(|data| data.strip_prefix(MAX_COUNT))
                .and_then(|count| count.parse::<u32>().ok());
            if let Some(stored) = stored.filter(|stored| *stored != max) {
                // The stored count binds while anyone else queues or holds; the path (a
                // container, removed by the server a while after it empties) may outlive its
                // last ticket, and then the first contender's count goes.
                if queue.len() > 1 {
                    return Err(max_count_mismatch(&self.pending.name, stored, max));
                }
                live.client
                    .set_data(&self.pending.dir, &role.dir_data(), None)
                    .await
                    .map_err(|failure| error("cannot store the max count", failure))?;
            }
        }
        let Some(index) = queue.iter().position(|child| *child == node.name) else {
            // Deleted by someone else while it waited: not this process's to recreate.
            self.pending.node = None;
            return Err(failure(format!(
                "the waiting node {:?} was deleted by someone else while it waited",
                node.path
            )));
        };
        let path = |child: &str| format!("{}/{child}", self.pending.dir);
        let watch = match role {
            Role::Lock | Role::Write if index == 0 => None,
            Role::Lock | Role::Write => Some(Watch::Gone(path(&queue[index - 1]))),
            Role::Read => queue[..index]
                .iter()
                .rev()
                .find(|child| child.starts_with(Role::Write.prefix()))
                .map(|writer| Watch::Gone(path(writer))),
            Role::Semaphore(max) => {
                let max = max as usize;
                if index < max {
                    None
                } else if index == max {
                    Some(Watch::Children(queue[..index].to_vec()))
                } else {
                    Some(Watch::Acquired(path(&queue[index - 1])))
                }
            }
        };
        match watch {
            None => {
                // Only a node that waited can be watched for the mark: a waiter watches the node
                // ahead of it only while that node is itself beyond the max count, and a node
                // that held at once never was.
                if let (Role::Semaphore(_), true) = (role, self.waited) {
                    live.client
                        .set_data(&node.path, ACQUIRED, None)
                        .await
                        .map_err(|failure| error("cannot mark the ticket held", failure))?;
                }
                let live = live.clone();
                self.pending.node = None;
                self.pending.live = None;
                Ok(Attempt::Taken((live, node)))
            }
            Some(watch) => {
                self.watch = Some(watch);
                self.waited = true;
                Ok(Attempt::Busy { retry_within: None })
            }
        }
    }
}

/// Whether `failure` means the session is over (its nodes are gone).
fn is_session_end(failure: &Error) -> bool {
    let Error::Backend {
        source: Some(source),
        ..
    } = failure
    else {
        return false;
    };
    matches!(
        source.downcast_ref::<zk::Error>(),
        Some(zk::Error::SessionExpired | zk::Error::ClientClosed | zk::Error::SessionMoved)
    )
}

/// Acquires `dir` as `role`, waiting as `wait` says.
///
/// # Cancel safety
/// Cancel-safe: a node created by an acquire that is dropped is deleted on tollgate's
/// runtime (this process's next acquire of the same path waits for that).
pub(crate) async fn acquire(
    shared: &Arc<Shared>,
    name: &Arc<str>,
    dir: &Arc<str>,
    role: Role,
    wait: Wait,
) -> Result<Option<ZooKeeperHandle>> {
    let deadline = wait.deadline();
    shared.notes.wait(&[dir.to_string()]).await;
    let mut pending = Pending {
        shared: shared.clone(),
        name: name.clone(),
        dir: dir.clone(),
        role,
        token: shared.token(),
        live: None,
        node: None,
        sent: false,
    };
    let mut backoff = Backoff::new(FIRST_RECHECK, MAX_RECHECK);
    let mut outage = Outage::new(shared.settings.unreachable_timeout);
    let won = {
        let mut entering = Entering {
            pending: &mut pending,
            watch: None,
            waited: false,
        };
        wait_for(&mut entering, deadline, &mut backoff, &mut outage).await
    };
    match won {
        Ok(Some((live, node))) => {
            // The attempt that took the node took it out of `pending` too.
            Ok(Some(ZooKeeperHandle::new(
                shared.clone(),
                name.clone(),
                dir.clone(),
                live,
                node,
                role,
            )))
        }
        Ok(None) => {
            pending.give_up().await;
            Ok(None)
        }
        Err(failure) => {
            pending.give_up().await;
            Err(failure)
        }
    }
}

/// A held lock, read or write hold, or semaphore ticket on ZooKeeper: the contender's
/// ephemeral node, deleted on release. Dropping the handle releases it (on tollgate's own
/// runtime); [`Handle::release`](crate::Handle::release) waits for the server to confirm.
#[must_use = "dropping the handle releases it"]
pub struct ZooKeeperHandle {
    hold: Shell<Node>,
    loss: LossSignal,
    token: Option<u64>,
}

/// A held node, in its session's care until released.
struct Node {
    shared: Arc<Shared>,
    name: Arc<str>,
    dir: Arc<str>,
    live: Arc<Live>,
    path: String,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("path", &self.path).finish()
    }
}

impl std::fmt::Debug for ZooKeeperHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZooKeeperHandle")
            .field("node", &self.hold.get().path)
            .field("fencing_token", &self.token)
            .finish()
    }
}

impl ZooKeeperHandle {
    fn new(
        shared: Arc<Shared>,
        name: Arc<str>,
        dir: Arc<str>,
        live: Arc<Live>,
        node: Created,
        role: Role,
    ) -> Self {
        let (notifier, loss) = LossSignal::detectable();
        live.register(node.path.clone(), notifier);
        let token = match role {
            Role::Lock | Role::Write => u64::try_from(node.czxid).ok(),
            Role::Read | Role::Semaphore(_) => None,
        };
        ZooKeeperHandle {
            hold: Shell::new(Node {
                shared,
                name,
                dir,
                live,
                path: node.path,
            }),
            loss,
            token,
        }
    }

    /// The full path of the node this hold is, e.g. `/locks/name/lock-0000000003`.
    pub fn node_path(&self) -> &str {
        &self.hold.get().path
    }
}

impl Release for Node {
    type Note = Note<String>;

    fn name(&self) -> &str {
        &self.name
    }

    fn note(&self) -> Note<String> {
        self.shared.notes.note(vec![self.dir.to_string()])
    }

    fn release(self) -> impl std::future::Future<Output = Result<()>> + Send + 'static {
        self.live.unregister(&self.path);
        async move {
            // While the connection is down, the delete is tried again until the session
            // would have expired (the node is gone with it then).
            let give_up = Instant::now() + self.shared.settings.session_timeout;
            loop {
                let deleting = self.live.client.delete(&self.path, None);
                let deleted = tokio::time::timeout_at(give_up, deleting).await;
                match deleted {
                    // Deleted, or lost already (nothing left to give back). The primitive's
                    // path is a container node, which the server removes once it is empty.
                    Ok(Ok(()) | Err(zk::Error::NoNode)) => return Ok(()),
                    Ok(Err(zk::Error::SessionExpired | zk::Error::ClientClosed)) => return Ok(()),
                    Ok(Err(zk::Error::ConnectionLoss | zk::Error::Timeout))
                        if Instant::now() < give_up && !self.live.is_over() =>
                    {
                        tokio::time::sleep(RELEASE_RETRY).await;
                    }
                    // A session declared lost (a session timeout without the server) that the
                    // server still kept: its node goes when the session ends.
                    _ if self.live.is_over() => return Ok(()),
                    Ok(Err(failure)) => return Err(error("cannot delete the held node", failure)),
                    Err(elapsed) => {
                        return Err(Error::Backend {
                            backend: BACKEND,
                            message: format!(
                                "deleting the held node {:?} got no answer for a session timeout",
                                self.path
                            ),
                            source: Some(Box::new(elapsed)),
                        })
                    }
                }
            }
        }
    }
}

impl crate::Handle for ZooKeeperHandle {
    /// Deletes the node (and the primitive's path, once empty).
    ///
    /// # Cancel safety
    /// Dropping this future still releases: the rest of the release runs on tollgate's
    /// runtime.
    async fn release(self) -> Result<()> {
        self.hold.release().await
    }

    fn name(&self) -> &str {
        &self.hold.get().name
    }

    /// Fires when the node is deleted by anyone but this handle's release, when the session
    /// expires or is closed, and when the connection stays down for a whole session timeout.
    fn loss_signal(&self) -> LossSignal {
        self.loss.clone()
    }

    /// The node's creation zxid, for locks and write holds: ZooKeeper's transaction ids grow
    /// strictly, so the token grows across successive holders of a name, even when its path
    /// was deleted and created again in between. `None` for read holds and semaphore tickets.
    fn fencing_token(&self) -> Option<u64> {
        self.token
    }
}

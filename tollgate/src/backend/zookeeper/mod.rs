//! The ZooKeeper backend: locks on the standard sequential-node recipe, with the paths and
//! node names of DistributedLock.ZooKeeper, so that .NET and Rust processes exclude each other.
//!
//! - **Recipes.** An acquire creates an ephemeral sequential node (`lock-0000000042`) under the
//!   lock's path and holds when its node is first among the `lock-` children, in creation
//!   order (read across the 32-bit sequence wrap). A waiter watches only the node just ahead
//!   of it, so a release wakes one waiter, and waiters are served first come, first served.
//!   A reader-writer lock queues `read-` and `write-` nodes in one sequence: a reader holds
//!   when no write node is ahead of it (and watches the nearest one), a writer when it is
//!   first, so writers get preference over later readers. A semaphore holds when its
//!   `semaphore-` node is among the first max count; a holder marks its node `ACQUIRED`,
//!   the first waiter watches the children and later ones the node ahead of them, as
//!   DistributedLock does. The max count is stored in the semaphore's node when tollgate
//!   creates it, and using the semaphore with another one while it exists is an error.
//! - **Sessions.** One session per provider carries all its holds; it is opened on first use,
//!   on tollgate's own runtime. Its expiry (or closing) fires every hold's loss signal at once;
//!   a disconnection is not a loss until a whole session timeout passes without a reconnect,
//!   and after a reconnect each hold's node is checked again. A killed holder's nodes are
//!   deleted by the server when its session times out (default 10 s).
//! - **Loss.** Each hold watches its own node: its deletion by anyone but the holder fires the
//!   loss signal.
//! - **Found again after a lost reply.** Each acquire writes a token of its own into its node,
//!   so a create whose reply was lost with the connection is found on the retry rather than
//!   left, orphaned, until the session ends (the weakness behind DistributedLock's issue #156).
//!   A dropped acquire deletes its node, on tollgate's runtime.
//! - **Paths.** A name becomes a node under the provider's directory (the URL's path, default
//!   `/`) by DistributedLock's safe-name rules (see [`ZooKeeperProvider::path_of`]). The
//!   primitive's path and any missing ancestor are created as container nodes, which the
//!   server itself removes once they are empty (it looks every minute by default,
//!   `znode.container.checkIntervalMs`), so nothing is left behind and a release costs one
//!   delete; `assume_path_exists` leaves a directory of someone else's untouched.
//! - **Fencing tokens** are the node's creation zxid: strictly increasing across successive
//!   holders of a name.
//!
//! URLs: `zookeeper://[user:password@]host:2181[,host2:2181…][/directory]` (also `zk://`),
//! with options `session_timeout` (default 10 s), `connect_timeout` (default 5 s),
//! `unreachable_timeout` (default 30 s, or `never`), `assume_path_exists` (default false)
//! and `acl` (`open`, the default: anyone may do anything with the nodes, as in
//! DistributedLock; or `creator`: only sessions with the URL's credentials). A user and
//! password are sent as ZooKeeper `digest` authentication.

mod builder;
mod names;
mod recipe;
mod rwlock;
mod semaphore;
mod session;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use zookeeper_client as zk;

use crate::backend::kit::notes::ReleaseNotes;
use crate::{
    check_max_count, Acquire, Error, Lock, LockProvider, ReadWriteLockProvider, Result,
    SemaphoreProvider, Wait,
};
pub use builder::ZooKeeperProviderBuilder;
use recipe::Role;
pub use recipe::ZooKeeperHandle;
pub use rwlock::{ZooKeeperReadWriteLock, ZooKeeperReader, ZooKeeperWriter};
pub use semaphore::ZooKeeperSemaphore;
use session::Session;

pub(crate) const BACKEND: &str = "zookeeper";

/// Whether a ZooKeeper client error is a transient fault (see [`crate::backend::kit::fault`]):
/// the connection lost or timed out, no server reachable, the server throttling, or the
/// session over (a new one is opened). Refused credentials and bad arguments are not.
pub(crate) fn transient(link: &(dyn std::error::Error + 'static)) -> Option<bool> {
    let failure = link.downcast_ref::<zk::Error>()?;
    if let zk::Error::Custom(_) = failure {
        // The client's wrapper of an I/O error (a connection reset), behind an `Arc` that a
        // plain walk of the source chain cannot see through: that error decides.
        type Shared = Arc<dyn std::error::Error + Send + Sync>;
        return std::error::Error::source(failure)
            .and_then(|inner| inner.downcast_ref::<Shared>())
            .and_then(|inner| crate::backend::kit::fault::chain_verdict(inner.as_ref()));
    }
    Some(matches!(
        failure,
        zk::Error::ConnectionLoss
            | zk::Error::Timeout
            | zk::Error::NoHosts
            | zk::Error::Throttled
            | zk::Error::SessionExpired
            | zk::Error::SessionMoved
            | zk::Error::ClientClosed
    ))
}

/// A ZooKeeper failure as tollgate's error, saying what was being done.
pub(crate) fn error(doing: &str, failure: zk::Error) -> Error {
    let hint = match failure {
        zk::Error::NoAuth => {
            " (not authorized: check the URL's user and password and the path's ACL)"
        }
        zk::Error::AuthFailed => " (authentication failed: check the URL's user and password)",
        _ => "",
    };
    Error::Backend {
        backend: BACKEND,
        message: format!("{doing}{hint}"),
        source: Some(Box::new(failure)),
    }
}

/// A failure of this backend that no client error stands behind.
pub(crate) fn failure(message: String) -> Error {
    Error::Backend {
        backend: BACKEND,
        message,
        source: None,
    }
}

/// Who may use the nodes a provider creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZooKeeperAcl {
    /// Anyone may do anything (`world:anyone`, all permissions), as DistributedLock does by
    /// default.
    Open,
    /// Only sessions authenticated as the creator (ZooKeeper's `auth` scheme): needs the
    /// provider's credentials.
    Creator,
}

/// A provider's configuration, fixed when it is built.
pub(crate) struct Settings {
    /// The connect string's hosts, `host:port[,host:port…]`.
    hosts: String,
    directory: String,
    session_timeout: Duration,
    connect_timeout: Duration,
    unreachable_timeout: Option<Duration>,
    credentials: Option<(String, String)>,
    acl: ZooKeeperAcl,
    assume_path_exists: bool,
}

impl Settings {
    fn acls(&self) -> zk::Acls<'static> {
        match self.acl {
            ZooKeeperAcl::Open => zk::Acls::anyone_all(),
            ZooKeeperAcl::Creator => zk::Acls::creator_all(),
        }
    }
}

/// What a provider's primitives share: the settings, the session and the releases under way.
pub(crate) struct Shared {
    settings: Arc<Settings>,
    session: Session,
    notes: Arc<ReleaseNotes<String>>,
    /// Distinguishes this provider's acquires from any other's, in any process.
    process: String,
    acquires: AtomicU64,
}

impl Shared {
    /// A token no other acquire anywhere writes into its node.
    fn token(&self) -> String {
        let count = self.acquires.fetch_add(1, Ordering::Relaxed);
        format!("tollgate:{}:{count}", self.process)
    }
}

/// Locks on a ZooKeeper ensemble, with one session shared by all holds. Cheap to clone.
#[derive(Clone)]
pub struct ZooKeeperProvider {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ZooKeeperProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let settings = &self.shared.settings;
        f.debug_struct("ZooKeeperProvider")
            .field("hosts", &settings.hosts)
            .field("directory", &settings.directory)
            .field("session_timeout", &settings.session_timeout)
            .field("acl", &settings.acl)
            .finish_non_exhaustive()
    }
}

impl ZooKeeperProvider {
    /// A provider from a URL (see the [module docs](self) and
    /// [`ZooKeeperProvider::builder`]). The session is opened at the first acquire.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a malformed URL or option.
    pub fn from_url(url: &str) -> Result<Self> {
        Self::builder(url)?.build()
    }

    /// The path of the primitive called `name`: the directory's child named by
    /// DistributedLock.ZooKeeper's safe-name rules (a name ZooKeeper accepts is used as it
    /// is; one it would reject has its bad characters made `_` and a hash appended).
    pub fn path_of(&self, name: &str) -> String {
        names::child_path(&self.shared.settings.directory, name)
    }

    /// The directory the provider's primitives live under.
    pub fn directory(&self) -> &str {
        &self.shared.settings.directory
    }
}

/// A primitive's place: its name, path and provider.
#[derive(Clone)]
pub(crate) struct Target {
    shared: Arc<Shared>,
    name: Arc<str>,
    path: Arc<str>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("name", &self.name)
            .field("path", &self.path)
            .finish()
    }
}

impl Target {
    async fn acquire(&self, role: Role, wait: Wait) -> Result<Option<ZooKeeperHandle>> {
        recipe::acquire(&self.shared, &self.name, &self.path, role, wait).await
    }
}

impl ZooKeeperProvider {
    fn target(&self, name: &str) -> Target {
        Target {
            shared: self.shared.clone(),
            name: name.into(),
            path: self.path_of(name).into(),
        }
    }
}

/// A mutual-exclusion lock on ZooKeeper.
#[derive(Clone)]
pub struct ZooKeeperLock {
    target: Target,
}

impl std::fmt::Debug for ZooKeeperLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZooKeeperLock")
            .field("name", &self.target.name)
            .field("path", &self.target.path)
            .finish()
    }
}

impl ZooKeeperLock {
    /// The lock's path, under which contenders create their nodes.
    pub fn path(&self) -> &str {
        &self.target.path
    }
}

impl Acquire for ZooKeeperLock {
    type Handle = ZooKeeperHandle;

    fn name(&self) -> &str {
        &self.target.name
    }

    /// Creates this contender's node and waits, watching the node ahead, until it is first.
    ///
    /// # Cancel safety
    /// Cancel-safe: dropping the future deletes the contender's node (on tollgate's runtime);
    /// nothing is held, and this process's next acquire of the lock waits for the deletion.
    async fn acquire_wait(&self, wait: Wait) -> Result<Option<ZooKeeperHandle>> {
        self.target.acquire(Role::Lock, wait).await
    }
}

impl Lock for ZooKeeperLock {}

impl LockProvider for ZooKeeperProvider {
    type Lock = ZooKeeperLock;

    /// The lock called `name` (any string: see [`ZooKeeperProvider::path_of`]).
    fn lock(&self, name: &str) -> Result<ZooKeeperLock> {
        Ok(ZooKeeperLock {
            target: self.target(name),
        })
    }
}

impl SemaphoreProvider for ZooKeeperProvider {
    type Semaphore = ZooKeeperSemaphore;

    /// The semaphore called `name` with `max_count` tickets (the name maps to a path as for
    /// locks).
    fn semaphore(&self, name: &str, max_count: u32) -> Result<ZooKeeperSemaphore> {
        check_max_count(name, max_count)?;
        Ok(ZooKeeperSemaphore {
            target: self.target(name),
            max_count,
        })
    }
}

impl ReadWriteLockProvider for ZooKeeperProvider {
    type ReadWriteLock = ZooKeeperReadWriteLock;

    /// The reader-writer lock called `name` (the name maps to a path as for locks).
    fn read_write_lock(&self, name: &str) -> Result<ZooKeeperReadWriteLock> {
        Ok(ZooKeeperReadWriteLock {
            target: self.target(name),
        })
    }
}

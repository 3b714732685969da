//! One Redis server and its two multiplexed connections (one per [`Route`]), opened when
//! first needed, reopened after they fail or their runtime ends, and not retried for a short,
//! growing pause after the server was unreachable.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::Script;
use tokio::time::Instant;

use crate::backend::kit::runtime::on_background;
use crate::backend::kit::wait::{Backoff, Schedule};

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
    pub(crate) fn here() -> Route {
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
    /// The `run_id` the server reported on the last connection opened: by it two entries of a
    /// RedLock list that are one server (under two names) are found, and a release knows
    /// whether the server restarted since the hold was taken.
    identity: std::sync::Mutex<Option<Arc<str>>>,
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
    /// A server of the list; each new connection asks it for its `run_id` (see
    /// [`Server::identity`]).
    pub(crate) fn new(client: redis::Client, label: String, connect_timeout: Duration) -> Self {
        Server {
            client,
            label,
            connect_timeout,
            connection: tokio::sync::Mutex::new(None),
            background_connection: tokio::sync::Mutex::new(None),
            generation: AtomicU64::new(0),
            down: std::sync::Mutex::new(None),
            identity: std::sync::Mutex::default(),
        }
    }

    /// The `run_id` the server reported when a connection to it was last opened: two entries
    /// with the same one are one server, and a new one means the server restarted.
    pub(crate) fn identity(&self) -> Option<Arc<str>> {
        self.identity
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Asks a new connection for the server's `run_id`. A server that does not tell (a user
    /// without the right to `INFO`) is left unidentified, and is logged.
    async fn identify(&self, connection: &mut MultiplexedConnection) {
        let info: redis::RedisResult<String> = redis::cmd("INFO")
            .arg("server")
            .query_async(connection)
            .await;
        let run_id = match info {
            Ok(info) => info
                .lines()
                .find_map(|line| line.strip_prefix("run_id:"))
                .map(|run_id| Arc::from(run_id.trim())),
            Err(error) => {
                tracing::debug!(server = %self.label, %error, "cannot read the server's run_id");
                None
            }
        };
        *self
            .identity
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = run_id;
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
        let mut connection = connection;
        self.identify(&mut connection).await;
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        *slot = Some(Opened::new(generation, connection.clone()));
        Ok((generation, connection))
    }

    /// Runs `script` on the connection for this thread's runtime; see [`Server::run_on`].
    pub(crate) async fn run<T: redis::FromRedisValue, A: AsRef<[u8]>>(
        &self,
        script: &Script,
        keys: &[Vec<u8>],
        args: &[A],
    ) -> redis::RedisResult<T> {
        self.run_on(Route::here(), script, keys, args).await
    }

    /// [`Server::run`] for a script that may run twice (a release): if the connection was
    /// dropped under it (killed, or the server restarted), it goes again once on a fresh one.
    /// With the reply, whether it went again (then the first run may have done the work, and
    /// the reply of the second tells only what was left).
    pub(crate) async fn run_idempotent<T: redis::FromRedisValue, A: AsRef<[u8]>>(
        &self,
        script: &Script,
        keys: &[Vec<u8>],
        args: &[A],
    ) -> redis::RedisResult<(T, bool)> {
        match self.run(script, keys, args).await {
            Err(error) if error.is_connection_dropped() || error.is_io_error() => {
                Ok((self.run(script, keys, args).await?, true))
            }
            other => other.map(|reply| (reply, false)),
        }
    }

    /// Runs `script` on the connection of `route`; a connection that failed is dropped, so
    /// the next call reconnects.
    pub(crate) async fn run_on<T: redis::FromRedisValue, A: AsRef<[u8]>>(
        &self,
        route: Route,
        script: &Script,
        keys: &[Vec<u8>],
        args: &[A],
    ) -> redis::RedisResult<T> {
        let (generation, mut connection) = self.connection(route).await?;
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(key.as_slice());
        }
        for arg in args {
            invocation.arg(arg.as_ref());
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

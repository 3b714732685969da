//! tollgate's own runtime, for the work that must not depend on the caller's: releases after
//! a drop, the rest of an operation whose caller went away, lease extensions, and the
//! blocking API. It starts on first use and lives as long as the process, so a caller's
//! runtime that is blocked, shutting down or gone cannot stall that work.
//!
//! It also counts the releases under way, so that they can be waited for: explicitly with
//! [`flush_releases`], and for at most [`EXIT_WAIT`] when the program exits normally (returns
//! from `main` or calls `std::process::exit`).

use std::cell::Cell;
use std::future::Future;
use std::sync::{Condvar, Mutex, MutexGuard, Once, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::{Error, Result};

/// How long a normal exit waits for the releases still under way.
#[cfg_attr(
    not(any(
        feature = "postgres",
        feature = "mysql",
        feature = "redis",
        feature = "zookeeper"
    )),
    allow(dead_code)
)]
pub const EXIT_WAIT: Duration = Duration::from_secs(3);

thread_local! {
    /// Set on the threads of tollgate's own runtime.
    static ON_BACKGROUND: Cell<bool> = const { Cell::new(false) };
}

/// tollgate's runtime: one worker thread, I/O and timers enabled.
pub(crate) fn background() -> Result<&'static tokio::runtime::Handle> {
    static RUNTIME: OnceLock<std::result::Result<tokio::runtime::Runtime, String>> =
        OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("tollgate")
                .on_thread_start(|| ON_BACKGROUND.with(|on| on.set(true)))
                .enable_all()
                .build()
                .map_err(|error| error.to_string())
        })
        .as_ref()
        .map(tokio::runtime::Runtime::handle)
        .map_err(|error| Error::Backend {
            backend: "tollgate",
            message: format!("cannot start tollgate's runtime: {error}"),
            source: None,
        })
}

/// Whether this thread belongs to tollgate's runtime. Work that runs there must use
/// connections that runtime drives: a connection opened on a caller's runtime is served only
/// while that runtime runs, and the blocking API may be the very thing stalling it.
pub(crate) fn on_background() -> bool {
    ON_BACKGROUND.try_with(Cell::get).unwrap_or(false)
}

/// The count of releases under way, with ways to wait for it to reach zero from async code
/// and from a plain thread.
struct Pending {
    count: Mutex<usize>,
    idle: Condvar,
    idle_async: Notify,
}

static PENDING: Pending = Pending {
    count: Mutex::new(0),
    idle: Condvar::new(),
    idle_async: Notify::const_new(),
};

impl Pending {
    fn lock(&self) -> MutexGuard<'_, usize> {
        self.count
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One release under way, counted until dropped (when it finishes, or when its task is
/// dropped with a runtime that shuts down).
#[cfg_attr(
    not(any(
        feature = "postgres",
        feature = "mysql",
        feature = "redis",
        feature = "zookeeper"
    )),
    allow(dead_code)
)]
struct Counted(());

#[cfg_attr(
    not(any(
        feature = "postgres",
        feature = "mysql",
        feature = "redis",
        feature = "zookeeper"
    )),
    allow(dead_code)
)]
impl Counted {
    fn new() -> Self {
        *PENDING.lock() += 1;
        Counted(())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut count = PENDING.lock();
        *count -= 1;
        if *count == 0 {
            PENDING.idle.notify_all();
            PENDING.idle_async.notify_waiters();
        }
    }
}

/// Runs `release` on tollgate's runtime, counted as a release under way until it ends. It
/// never blocks the calling thread, and works from any thread, inside a runtime or not.
#[cfg_attr(
    not(any(
        feature = "postgres",
        feature = "mysql",
        feature = "redis",
        feature = "zookeeper"
    )),
    allow(dead_code)
)]
pub(crate) fn spawn_release(release: impl Future<Output = ()> + Send + 'static) {
    let counted = Counted::new();
    wait_at_exit();
    let task = async move {
        let _counted = counted;
        release.await;
    };
    if let Err(error) = spawn_owned(task) {
        tracing::warn!(%error, "a release after drop cannot run");
    }
}

/// Runs `task` on tollgate's runtime or, if that cannot start, on the caller's; the error
/// (why tollgate's runtime could not start) when there is neither.
#[cfg_attr(
    not(any(
        feature = "postgres",
        feature = "mysql",
        feature = "redis",
        feature = "zookeeper"
    )),
    allow(dead_code)
)]
pub(crate) fn spawn_owned(task: impl Future<Output = ()> + Send + 'static) -> Result<()> {
    match background() {
        Ok(runtime) => drop(runtime.spawn(task)),
        Err(error) => match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn(task)),
            Err(_) => return Err(error),
        },
    }
    Ok(())
}

/// Waits until no release started by a dropped handle (or a dropped `release()` future) is
/// still under way in this process.
///
/// A handle dropped without [`Handle::release`](crate::Handle::release) gives its hold back
/// on tollgate's own runtime; a program that wants those releases done before it goes on
/// (or before it exits without returning from `main`) awaits this. A normal exit waits for
/// them by itself, for at most a few seconds.
///
/// # Cancel safety
/// Cancel-safe: it only waits; the releases go on without it.
pub async fn flush_releases() {
    loop {
        let idle = PENDING.idle_async.notified();
        tokio::pin!(idle);
        idle.as_mut().enable();
        if *PENDING.lock() == 0 {
            return;
        }
        idle.await;
    }
}

/// [`flush_releases`] for a plain thread: waits at most `limit`; whether every release
/// finished.
pub fn flush_releases_blocking(limit: Duration) -> bool {
    let deadline = Instant::now().checked_add(limit);
    let mut count = PENDING.lock();
    while *count > 0 {
        let left = match deadline {
            Some(deadline) => deadline.saturating_duration_since(Instant::now()),
            None => Duration::from_secs(3600),
        };
        if left.is_zero() {
            return false;
        }
        count = PENDING
            .idle
            .wait_timeout(count, left)
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .0;
    }
    true
}

/// Makes a normal exit wait (bounded) for the releases under way: a program that drops a
/// handle and returns from `main` at once would otherwise leave a leased hold (Redis) behind
/// until its lease expires.
#[cfg_attr(
    not(any(
        feature = "postgres",
        feature = "mysql",
        feature = "redis",
        feature = "zookeeper"
    )),
    allow(dead_code)
)]
fn wait_at_exit() {
    static REGISTERED: Once = Once::new();
    REGISTERED.call_once(|| {
        extern "C" fn at_exit() {
            // On tollgate's own thread the releases could not run while we wait.
            if !on_background() && !flush_releases_blocking(EXIT_WAIT) {
                tracing::warn!("exiting with releases still under way");
            }
        }
        // SAFETY: `at_exit` is a plain `extern "C"` function that never unwinds (it only
        // waits on a condition variable); registering it has no other requirement.
        if unsafe { libc::atexit(at_exit) } != 0 {
            tracing::debug!("cannot register the exit wait for releases");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_are_counted_until_done_and_run_without_a_runtime() {
        let (sender, receiver) = std::sync::mpsc::channel::<()>();
        let (finish, finished) = tokio::sync::oneshot::channel::<()>();
        spawn_release(async move {
            let _ = finished.await;
            let _ = sender.send(());
        });
        assert!(!flush_releases_blocking(Duration::from_millis(20)));
        finish.send(()).unwrap();
        receiver.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(flush_releases_blocking(Duration::from_secs(10)));
    }
}

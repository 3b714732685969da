//! Release notifications: per tokio runtime, one inotify instance registered with that
//! runtime's own reactor, read by the waiters themselves and fanned out to every waiter of a
//! file through a `tokio::sync::watch` counter.
//!
//! A holder releases by unlocking and closing its descriptor (or by unlocking and touching
//! the file), and the kernel closes the descriptors of a process that dies. Each of those
//! produces an inotify event on the lock file, so waiters retry exactly when something may
//! have changed instead of sleeping and polling. The kernel's event wakes the waiting task
//! through its runtime's reactor, and that task reads the events and bumps the counters of
//! their files (its own among them) before it retries: a hand-off costs one thread wake-up
//! and one task poll. The blocking API waits on tollgate's own runtime and is served the same
//! way there.
//!
//! A watch nobody uses any more is removed a few seconds later, by a keeper task, rather than
//! at once, which keeps `inotify_rm_watch` off the hand-off path and lets a busy lock keep its
//! watch. The keeper ends once no watch is left, and the instance closes with the last
//! registration; both start again when needed.

use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::watch;

use crate::backend::kit::wait::Wake;

const EVENTS: u32 =
    libc::IN_CLOSE_WRITE | libc::IN_CLOSE_NOWRITE | libc::IN_ATTRIB | libc::IN_DONT_FOLLOW;
/// How often the keeper looks for unused watches (and whether it can end).
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// How long an unused watch is kept in case it is needed again.
const UNUSED_WATCH_KEPT: Duration = Duration::from_secs(3);
/// Room for a hundred events per read.
const READ_BUFFER: usize = 4 * 1024;

/// The inotify instance of one runtime, and its watches.
struct Watcher {
    fd: AsyncFd<OwnedFd>,
    shared: Mutex<Shared>,
}

#[derive(Default)]
struct Shared {
    watches: HashMap<i32, Entry>,
    /// Whether the keeper task runs.
    kept: bool,
}

struct Entry {
    registrations: usize,
    events: watch::Sender<u64>,
    /// When the last registration went away.
    unused_since: Option<Instant>,
}

/// A waiter's subscription to the events of one lock file. Dropping it unsubscribes.
pub struct Registration {
    watcher: Arc<Watcher>,
    watch_descriptor: i32,
    events: watch::Receiver<u64>,
}

/// Wakes when an event arrived on the file since the last arm (or since registering). The
/// waiter reads the instance's events itself when the reactor reports them.
impl Wake for Registration {
    fn arm(&mut self) {
        self.events.arm();
    }

    async fn woken(&mut self) {
        loop {
            if self.events.has_changed().unwrap_or(false) {
                return;
            }
            tokio::select! {
                biased;
                changed = self.events.changed() => {
                    if changed.is_err() {
                        // The entry cannot go away while we are registered; if it did, the
                        // schedule alone wakes us (never a spin).
                        std::future::pending::<()>().await;
                    }
                    return;
                }
                ready = self.watcher.fd.readable() => {
                    let Ok(mut ready) = ready else {
                        // The reactor is gone (the runtime shuts down): the schedule alone.
                        std::future::pending::<()>().await;
                        return;
                    };
                    if self.watcher.drain() {
                        ready.clear_ready();
                    } else {
                        std::future::pending::<()>().await;
                    }
                }
            }
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut shared = self.watcher.lock();
        if let Some(entry) = shared.watches.get_mut(&self.watch_descriptor) {
            entry.registrations -= 1;
            if entry.registrations == 0 {
                entry.unused_since = Some(Instant::now());
            }
        }
    }
}

/// Subscribes to the events of the file at `path`, through the current runtime's watcher.
/// Needs a runtime with I/O enabled, as every tokio runtime but a hand-built one without
/// `enable_io` has.
pub fn register(path: &Path) -> io::Result<Registration> {
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|error| io::Error::other(format!("no tokio runtime to watch in: {error}")))?;
    let watcher = watcher(&runtime)?;
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    let mut shared = watcher.lock();
    // Under the lock, so that a concurrent sweep cannot remove the watch we share.
    // SAFETY: valid descriptor and NUL-terminated path.
    let watch_descriptor =
        unsafe { libc::inotify_add_watch(watcher.fd.as_raw_fd(), c_path.as_ptr(), EVENTS) };
    if watch_descriptor < 0 {
        return Err(io::Error::last_os_error());
    }
    let entry = shared
        .watches
        .entry(watch_descriptor)
        .or_insert_with(|| Entry {
            registrations: 0,
            events: watch::channel(0).0,
            unused_since: None,
        });
    entry.registrations += 1;
    entry.unused_since = None;
    let events = entry.events.subscribe();
    if !shared.kept {
        shared.kept = true;
        drop(runtime.spawn(keep(watcher.clone())));
    }
    drop(shared);
    Ok(Registration {
        watcher,
        watch_descriptor,
        events,
    })
}

/// The watcher of `runtime`, made on first use (and again after its last registration went).
fn watcher(runtime: &tokio::runtime::Handle) -> io::Result<Arc<Watcher>> {
    static WATCHERS: Mutex<Option<HashMap<tokio::runtime::Id, Weak<Watcher>>>> = Mutex::new(None);
    let mut watchers = WATCHERS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let watchers = watchers.get_or_insert_with(HashMap::new);
    if let Some(watcher) = watchers.get(&runtime.id()).and_then(Weak::upgrade) {
        return Ok(watcher);
    }
    // Forget the watchers that are gone, with their runtimes or their last registrations.
    watchers.retain(|_, watcher| watcher.strong_count() > 0);
    // SAFETY: plain flags; the result is checked.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let fd = {
        let _context = runtime.enter();
        // SAFETY: the watcher owns the descriptor, which stays open as long as the `AsyncFd`.
        unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .map_err(|error| error.into_parts().1)?
    };
    let watcher = Arc::new(Watcher {
        fd,
        shared: Mutex::default(),
    });
    watchers.insert(runtime.id(), Arc::downgrade(&watcher));
    Ok(watcher)
}

impl Watcher {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        // A panic while holding this lock leaves consistent data (plain counters).
        self.shared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Removes the watches unused for a while; true (and the keeper is marked stopped) when
    /// none are left.
    fn sweep(&self) -> bool {
        let mut shared = self.lock();
        shared.watches.retain(|watch_descriptor, entry| {
            let keep = entry
                .unused_since
                .is_none_or(|since| since.elapsed() < UNUSED_WATCH_KEPT);
            if !keep {
                // SAFETY: removing a watch from our own inotify descriptor; failure (already
                // removed because the file was deleted) is harmless.
                unsafe { libc::inotify_rm_watch(self.fd.as_raw_fd(), *watch_descriptor) };
            }
            keep
        });
        if shared.watches.is_empty() {
            shared.kept = false;
            return true;
        }
        false
    }

    /// Reads every queued event and bumps the counters of their files; false if the
    /// descriptor failed (it never does while the runtime runs).
    fn drain(&self) -> bool {
        let mut buffer = [0u8; READ_BUFFER];
        loop {
            // SAFETY: reading into a buffer we own, of the length we pass.
            let read = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                )
            };
            if read > 0 {
                self.dispatch(&buffer[..read as usize]);
                continue;
            }
            let error = io::Error::last_os_error();
            return match error.kind() {
                io::ErrorKind::WouldBlock => true,
                io::ErrorKind::Interrupted => continue,
                _ => {
                    tracing::warn!(%error, "cannot read lock file events");
                    false
                }
            };
        }
    }

    fn dispatch(&self, mut events: &[u8]) {
        const HEADER: usize = std::mem::size_of::<libc::inotify_event>();
        let shared = self.lock();
        while events.len() >= HEADER {
            // SAFETY: the kernel writes whole events; read_unaligned copes with alignment.
            let event: libc::inotify_event =
                unsafe { std::ptr::read_unaligned(events.as_ptr().cast()) };
            if event.mask & libc::IN_Q_OVERFLOW != 0 {
                // Events were dropped: wake everyone to retry.
                for entry in shared.watches.values() {
                    entry
                        .events
                        .send_modify(|count| *count = count.wrapping_add(1));
                }
            } else if let Some(entry) = shared.watches.get(&event.wd) {
                entry
                    .events
                    .send_modify(|count| *count = count.wrapping_add(1));
            }
            events = &events[(HEADER + event.len as usize).min(events.len())..];
        }
    }
}

/// Marks the keeper stopped if it is dropped part-way (its runtime shuts down), so that a
/// later registration starts another.
struct Keeping<'a> {
    watcher: &'a Watcher,
    ended: bool,
}

impl Drop for Keeping<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.watcher.lock().kept = false;
        }
    }
}

/// The keeper task: keeps the instance (and the watches unused for a moment) alive between
/// waits, sweeps unused watches every [`SWEEP_INTERVAL`], and ends when none is left. It never
/// reads events: the waiters do.
async fn keep(watcher: Arc<Watcher>) {
    let mut keeping = Keeping {
        watcher: &watcher,
        ended: false,
    };
    let mut sweep =
        tokio::time::interval_at(tokio::time::Instant::now() + SWEEP_INTERVAL, SWEEP_INTERVAL);
    loop {
        sweep.tick().await;
        if watcher.sweep() {
            keeping.ended = true;
            return;
        }
    }
}

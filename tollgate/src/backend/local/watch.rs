//! Release notifications: one inotify instance per process, read by one thread, fanned out
//! to every waiter of a file through a `tokio::sync::watch` counter.
//!
//! A holder releases by unlocking and closing its descriptor (or by unlocking and touching
//! the file), and the kernel closes the descriptors of a process that dies. Each of those
//! produces an inotify event on the lock file, so waiters retry exactly when something may
//! have changed instead of sleeping and polling. The thread is runtime-independent, so it
//! serves every tokio runtime of the process and the blocking API alike.
//!
//! A watch nobody uses any more is removed by the thread a few seconds later rather than at
//! once, which keeps `inotify_rm_watch` (and the thread it wakes) off the hand-off path and
//! lets a busy lock keep its watch. The thread exits once it has no watches and is started
//! again when needed.

use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::backend::kit::wait::Wake;

const EVENTS: u32 =
    libc::IN_CLOSE_WRITE | libc::IN_CLOSE_NOWRITE | libc::IN_ATTRIB | libc::IN_DONT_FOLLOW;
/// How often the thread looks for unused watches (and whether it can exit).
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// How long an unused watch is kept in case it is needed again.
const UNUSED_WATCH_KEPT: Duration = Duration::from_secs(3);

struct Watcher {
    fd: OwnedFd,
    shared: Mutex<Shared>,
}

#[derive(Default)]
struct Shared {
    watches: HashMap<i32, Entry>,
    thread_running: bool,
}

struct Entry {
    registrations: usize,
    events: watch::Sender<u64>,
    /// When the last registration went away.
    unused_since: Option<Instant>,
}

/// A waiter's subscription to the events of one lock file. Dropping it unsubscribes.
pub struct Registration {
    watch_descriptor: i32,
    events: watch::Receiver<u64>,
}

/// Wakes when an event arrived on the file since the last arm (or since registering).
impl Wake for Registration {
    fn arm(&mut self) {
        self.events.arm();
    }

    fn woken(&mut self) -> impl std::future::Future<Output = ()> + Send {
        // The entry cannot go away while we are registered; if it did, this never completes
        // (never a spin).
        self.events.woken()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let Ok(watcher) = watcher() else { return };
        let mut shared = watcher.lock();
        if let Some(entry) = shared.watches.get_mut(&self.watch_descriptor) {
            entry.registrations -= 1;
            if entry.registrations == 0 {
                entry.unused_since = Some(Instant::now());
            }
        }
    }
}

/// Subscribes to the events of the file at `path`.
pub fn register(path: &Path) -> io::Result<Registration> {
    let watcher = watcher().map_err(|error| io::Error::new(error.kind(), error.to_string()))?;
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    let mut shared = watcher.lock();
    // Under the lock, so that a concurrent last unsubscribe cannot remove the watch we share.
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
    if !shared.thread_running {
        std::thread::Builder::new()
            .name("tollgate-inotify".into())
            .spawn(move || watcher.run())?;
        shared.thread_running = true;
    }
    Ok(Registration {
        watch_descriptor,
        events,
    })
}

fn watcher() -> Result<&'static Watcher, &'static io::Error> {
    static WATCHER: OnceLock<io::Result<Watcher>> = OnceLock::new();
    WATCHER
        .get_or_init(|| {
            // SAFETY: plain flags; the result is checked.
            let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `fd` was just created and is owned by nobody else.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            Ok(Watcher {
                fd,
                shared: Mutex::default(),
            })
        })
        .as_ref()
}

impl Watcher {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        // A panic while holding this lock leaves consistent data (plain counters).
        self.shared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn run(&self) {
        let mut buffer = [0u8; 16 * 1024];
        let mut last_sweep = Instant::now();
        loop {
            let mut poll = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let timeout = SWEEP_INTERVAL.as_millis() as libc::c_int;
            // SAFETY: one valid pollfd.
            let ready = unsafe { libc::poll(&mut poll, 1, timeout) };
            if ready > 0 {
                // SAFETY: reading into a buffer we own, of the length we pass.
                let read = unsafe {
                    libc::read(
                        self.fd.as_raw_fd(),
                        buffer.as_mut_ptr().cast(),
                        buffer.len(),
                    )
                };
                // Otherwise EINTR / EAGAIN: poll again. Nothing else fails on a valid inotify fd.
                if read > 0 {
                    self.dispatch(&buffer[..read as usize]);
                }
            }
            if last_sweep.elapsed() >= SWEEP_INTERVAL {
                last_sweep = Instant::now();
                if self.sweep() {
                    return;
                }
            }
        }
    }

    /// Removes watches unused for a while; true (and the thread is marked stopped) when none
    /// are left.
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
            shared.thread_running = false;
            return true;
        }
        false
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

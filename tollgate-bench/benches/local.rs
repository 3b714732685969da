//! Benchmarks of the local backend, each beside the raw kernel floor measured in the same run.
//!
//! ```text
//! cargo bench -p tollgate-bench --bench local
//! ```
//!
//! 1. **Uncontended acquire + release** (criterion): a `LocalLock` and a `LocalSemaphore` of
//!    max 3 on a tokio current-thread runtime, beside the raw floors: `open` + `flock` +
//!    `close` of a file (what any `flock(1)`-style named lock needs), and a bare lock + unlock
//!    on a descriptor that is already open. A "syscall replay" row makes, without the library,
//!    exactly the system calls the library makes, which separates their cost from the
//!    library's own overhead. A summary table with the ratios is printed at the end.
//! 2. **Hand-off between two processes** (a custom section that prints a table): this process
//!    (A) holds the lock while a partner process (B, this binary run again with
//!    `TOLLGATE_BENCH_PARTNER` set) is blocked in `acquire()`. A reads a `CLOCK_MONOTONIC`
//!    timestamp right before it releases; B reads one right after its acquire returns and
//!    reports it on its stdout. Before each release A checks in `/proc/<B>/task/<B>/syscall`
//!    that B is asleep in the call it waits in, so every round measures a real wake-up. The
//!    same is done with the raw floor (B blocked in `flock(LOCK_EX)`) and with a raw inotify
//!    waiter (B blocked in `read` on an inotify descriptor, then `flock(LOCK_NB)`), the
//!    mechanism the library is built on, and with that waiter split in two threads (one reads
//!    inotify and wakes the other through an eventfd), the two hops the library makes.
//!
//! The lock files live in a fresh temporary directory (`TMPDIR`, so `TMPDIR=/dev/shm` measures
//! tmpfs). Under `cargo test --benches` every benchmark runs once and the hand-off only a few
//! rounds. A criterion filter (`cargo bench -p tollgate-bench --bench local -- lock`) also skips the
//! hand-off section unless it matches "handoff".
//!
//! For profiling the library alone, `TOLLGATE_BENCH_PARTNER=cycles <bench binary>` runs
//! 100,000 uncontended lock acquire + release cycles (`TOLLGATE_BENCH_CYCLES=n` for another
//! count, `TOLLGATE_BENCH_KIND=semaphore` for a semaphore of max 3) under `strace -c` or `perf`.

use std::ffi::CString;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::Criterion;
use tollgate::local::LocalProvider;
use tollgate::{Acquire, LockProvider, SemaphoreProvider};

/// Set in the partner process: which waiter it plays.
const PARTNER_ENV: &str = "TOLLGATE_BENCH_PARTNER";
/// The lock directory, passed to the partner.
const DIR_ENV: &str = "TOLLGATE_BENCH_DIR";
const HANDOFF_NAME: &str = "handoff";
const RAW_HANDOFF_FILE: &str = "raw-handoff.lock";

const SAMPLE_SIZE: usize = 50;
const HANDOFF_ROUNDS: usize = 2000;
const HANDOFF_WARMUP: usize = 100;

fn main() {
    if let Ok(role) = std::env::var(PARTNER_ENV) {
        partner(&role);
        return;
    }
    let args: Vec<String> = std::env::args().collect();
    let listing = args.iter().any(|arg| arg == "--list");
    let testing =
        !args.iter().any(|arg| arg == "--bench") || args.iter().any(|arg| arg == "--test");

    let dir = tempfile::tempdir().expect("temporary directory");
    if !listing {
        println!(
            "lock directory: {} ({})\n",
            dir.path().display(),
            file_system_name(dir.path())
        );
    }

    let mut criterion = Criterion::default()
        .sample_size(SAMPLE_SIZE)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .nresamples(20_000)
        .without_plots()
        .configure_from_args();
    let rows = uncontended(&mut criterion, dir.path());
    criterion.final_summary();
    if listing {
        println!("handoff: bench");
        return;
    }
    if !testing {
        print_uncontended_summary(&rows);
    }
    if handoff_selected(&args) {
        let (rounds, warmup) = if testing {
            (3, 1)
        } else {
            (HANDOFF_ROUNDS, HANDOFF_WARMUP)
        };
        handoff(dir.path(), rounds, warmup);
    }
}

// ---------------------------------------------------------------------------------------------
// Raw system calls.

fn c_path(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("path without NUL")
}

fn open_raw(path: &CString) -> RawFd {
    // SAFETY: a valid NUL-terminated path and plain flags.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_CREAT | libc::O_CLOEXEC,
            0o600 as libc::c_uint,
        )
    };
    assert!(fd >= 0, "open: {}", std::io::Error::last_os_error());
    fd
}

fn open_owned(path: &Path) -> OwnedFd {
    // SAFETY: the descriptor was just opened and is owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(open_raw(&c_path(path))) }
}

fn flock(fd: RawFd, operation: libc::c_int) {
    // SAFETY: flock on an open descriptor.
    let result = unsafe { libc::flock(fd, operation) };
    assert_eq!(result, 0, "flock: {}", std::io::Error::last_os_error());
}

/// Takes the `flock` on an uncontended file without waiting, or, should it be busy all the
/// same (see [`note_busy`]), waits for it.
fn flock_uncontended(fd: RawFd, path: &Path) {
    // SAFETY: flock on an open descriptor.
    if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let error = std::io::Error::last_os_error();
        assert_eq!(
            error.raw_os_error(),
            Some(libc::EWOULDBLOCK),
            "flock: {error}"
        );
        note_busy(path);
        flock(fd, libc::LOCK_EX);
    }
}

/// Takes byte 0 of an uncontended file with an OFD lock without waiting, or, should it be busy
/// all the same (see [`note_busy`]), waits for it.
fn ofd_lock_uncontended(fd: RawFd, path: &Path) {
    if !ofd_try(fd, libc::F_OFD_SETLK, libc::F_WRLCK, 0, 1) {
        note_busy(path);
        ofd_try(fd, libc::F_OFD_SETLKW, libc::F_WRLCK, 0, 1);
    }
}

/// Takes an uncontended tollgate primitive without waiting, or, should it be busy all the
/// same (see [`note_busy`]), waits for it.
async fn take_uncontended<A: Acquire>(primitive: &A, path: &Path) -> A::Handle {
    match primitive.try_acquire().await.expect("try_acquire") {
        Some(handle) => handle,
        None => {
            note_busy(path);
            primitive.acquire().await.expect("acquire")
        }
    }
}

/// How often an uncontended lock was found busy.
static BUSY: AtomicU64 = AtomicU64::new(0);

/// Counts an uncontended lock found busy, and names its holders the first few times. Nothing
/// in this process holds the lock then; but a process that briefly holds a reference to our
/// open file (reading `/proc/<pid>/fdinfo`, say) delays the release that our `close` makes
/// until it lets go, and benchmark loops notice.
fn note_busy(path: &Path) {
    if BUSY.fetch_add(1, Ordering::Relaxed) >= 3 {
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let inode = std::fs::metadata(path).map_or(0, |metadata| metadata.ino());
    let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    let holders: Vec<String> = locks
        .lines()
        .filter(|line| line.contains(&format!(":{inode} ")))
        .map(|line| {
            let pid = line.split_whitespace().nth(4).unwrap_or("?");
            let command = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            format!("{} ({})", line.trim(), command.trim())
        })
        .collect();
    eprintln!(
        "note: uncontended {} was busy; this process is {}; /proc/locks: {holders:?}",
        path.display(),
        std::process::id()
    );
}

fn ofd_try(fd: RawFd, command: libc::c_int, kind: libc::c_int, start: i64, len: i64) -> bool {
    // SAFETY: all-zero is a valid `struct flock` (l_pid must be 0 for OFD locks).
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = kind as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock.l_start = start as libc::off_t;
    lock.l_len = len as libc::off_t;
    // SAFETY: fcntl with a valid `struct flock` pointer.
    if unsafe { libc::fcntl(fd, command, &lock) } == 0 {
        return true;
    }
    let error = std::io::Error::last_os_error();
    assert!(
        matches!(error.raw_os_error(), Some(libc::EAGAIN | libc::EACCES)),
        "fcntl: {error}"
    );
    false
}

fn ofd_unlock(fd: RawFd, start: i64, len: i64) {
    assert!(ofd_try(fd, libc::F_OFD_SETLK, libc::F_UNLCK, start, len));
}

fn close(fd: RawFd) {
    // SAFETY: closing a descriptor we opened and own.
    unsafe { libc::close(fd) };
}

/// `CLOCK_MONOTONIC` in nanoseconds: one clock for every process of the machine.
fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to write into.
    let result = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    assert_eq!(result, 0, "clock_gettime");
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

fn file_system_name(path: &Path) -> String {
    // SAFETY: all-zero is a valid statfs to write into.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid path and a valid statfs pointer.
    if unsafe { libc::statfs(c_path(path).as_ptr(), &mut stat) } != 0 {
        return "unknown file system".into();
    }
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between targets.
    match stat.f_type as i64 {
        0xEF53 => "ext4".into(),
        0x0102_1994 => "tmpfs".into(),
        0x5846_5342 => "xfs".into(),
        0x9123_683E => "btrfs".into(),
        0x794C_7630 => "overlayfs".into(),
        other => format!("file system type {other:#x}"),
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Uncontended acquire + release.

/// The (iterations, elapsed) pairs criterion asked one benchmark for; the last `SAMPLE_SIZE`
/// are its measurement samples (the warm-up comes first).
#[derive(Clone, Default)]
struct Samples(Arc<Mutex<Vec<(u64, Duration)>>>);

impl Samples {
    fn record(&self, iterations: u64, elapsed: Duration) -> Duration {
        self.0.lock().unwrap().push((iterations, elapsed));
        elapsed
    }

    /// The median of the per-iteration times of the measurement samples (criterion's median).
    fn median_ns(&self) -> Option<f64> {
        let all = self.0.lock().unwrap();
        let samples = &all[all.len().saturating_sub(SAMPLE_SIZE)..];
        let mut per_iteration: Vec<f64> = samples
            .iter()
            .map(|(iterations, elapsed)| elapsed.as_nanos() as f64 / *iterations as f64)
            .collect();
        per_iteration.sort_by(f64::total_cmp);
        let n = per_iteration.len();
        match n {
            0 => None,
            _ if n % 2 == 1 => Some(per_iteration[n / 2]),
            _ => Some((per_iteration[n / 2 - 1] + per_iteration[n / 2]) / 2.0),
        }
    }
}

struct Row {
    group: &'static str,
    name: &'static str,
    samples: Samples,
}

fn uncontended(criterion: &mut Criterion, dir: &Path) -> Vec<Row> {
    let mut rows = Vec::new();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let provider = LocalProvider::with_directory(dir).expect("provider");

    // --- the lock ---
    let group_name = "uncontended lock";
    let mut group = criterion.benchmark_group(group_name);
    let lock = provider.lock("uncontended").expect("lock");

    let samples = Samples::default();
    group.bench_function("tollgate try_acquire+drop", |bencher| {
        bencher.to_async(&runtime).iter_custom(|iterations| {
            let (lock, samples) = (lock.clone(), samples.clone());
            async move {
                let start = Instant::now();
                for _ in 0..iterations {
                    let handle = take_uncontended(&lock, lock.path()).await;
                    drop(handle);
                }
                samples.record(iterations, start.elapsed())
            }
        })
    });
    rows.push(Row {
        group: group_name,
        name: "tollgate try_acquire+drop",
        samples,
    });

    let samples = Samples::default();
    group.bench_function("tollgate acquire+drop", |bencher| {
        bencher.to_async(&runtime).iter_custom(|iterations| {
            let (lock, samples) = (lock.clone(), samples.clone());
            async move {
                let start = Instant::now();
                for _ in 0..iterations {
                    let handle = lock.acquire().await.unwrap();
                    drop(handle);
                }
                samples.record(iterations, start.elapsed())
            }
        })
    });
    rows.push(Row {
        group: group_name,
        name: "tollgate acquire+drop",
        samples,
    });

    let path = dir.join("floor.lock");
    let raw_path = c_path(&path);
    let samples = Samples::default();
    group.bench_function("floor open+flock+close", |bencher| {
        bencher.iter_custom(|iterations| {
            let start = Instant::now();
            for _ in 0..iterations {
                let fd = open_raw(&raw_path);
                flock_uncontended(fd, &path);
                close(fd);
            }
            samples.record(iterations, start.elapsed())
        })
    });
    rows.push(Row {
        group: group_name,
        name: "floor open+flock+close",
        samples,
    });

    let path = dir.join("floor-open.lock");
    let fd = open_owned(&path);
    let samples = Samples::default();
    group.bench_function("floor flock+unlock", |bencher| {
        bencher.iter_custom(|iterations| {
            let start = Instant::now();
            for _ in 0..iterations {
                flock_uncontended(fd.as_raw_fd(), &path);
                flock(fd.as_raw_fd(), libc::LOCK_UN);
            }
            samples.record(iterations, start.elapsed())
        })
    });
    rows.push(Row {
        group: group_name,
        name: "floor flock+unlock",
        samples,
    });

    let replay_path = dir.join("replay.lock");
    let samples = Samples::default();
    group.bench_function("syscall replay", |bencher| {
        bencher.iter_custom(|iterations| {
            let start = Instant::now();
            for _ in 0..iterations {
                replay_lock_syscalls(&replay_path);
            }
            samples.record(iterations, start.elapsed())
        })
    });
    rows.push(Row {
        group: group_name,
        name: "syscall replay",
        samples,
    });
    group.finish();

    // --- the semaphore ---
    let group_name = "uncontended semaphore(3)";
    let mut group = criterion.benchmark_group(group_name);
    let semaphore = provider.semaphore("uncontended", 3).expect("semaphore");
    let semaphore_path = dir
        .join("semaphore")
        .join(tollgate::local::lock_file_name("uncontended"));

    let samples = Samples::default();
    group.bench_function("tollgate try_acquire+drop", |bencher| {
        bencher.to_async(&runtime).iter_custom(|iterations| {
            let (semaphore, samples) = (semaphore.clone(), samples.clone());
            let semaphore_path = semaphore_path.clone();
            async move {
                let start = Instant::now();
                for _ in 0..iterations {
                    let handle = take_uncontended(&semaphore, &semaphore_path).await;
                    drop(handle);
                }
                samples.record(iterations, start.elapsed())
            }
        })
    });
    rows.push(Row {
        group: group_name,
        name: "tollgate try_acquire+drop",
        samples,
    });

    // In the semaphore subdirectory, as the library's semaphore files are.
    let path = dir.join("semaphore").join("floor.lock");
    let raw_path = c_path(&path);
    let samples = Samples::default();
    group.bench_function("floor open+ofd_setlk+close", |bencher| {
        bencher.iter_custom(|iterations| {
            let start = Instant::now();
            for _ in 0..iterations {
                let fd = open_raw(&raw_path);
                ofd_lock_uncontended(fd, &path);
                close(fd);
            }
            samples.record(iterations, start.elapsed())
        })
    });
    rows.push(Row {
        group: group_name,
        name: "floor open+ofd_setlk+close",
        samples,
    });

    let path = dir.join("semaphore").join("floor-open.lock");
    let fd = open_owned(&path);
    let samples = Samples::default();
    group.bench_function("floor ofd_setlk+unlock", |bencher| {
        bencher.iter_custom(|iterations| {
            let start = Instant::now();
            for _ in 0..iterations {
                ofd_lock_uncontended(fd.as_raw_fd(), &path);
                ofd_unlock(fd.as_raw_fd(), 0, 1);
            }
            samples.record(iterations, start.elapsed())
        })
    });
    rows.push(Row {
        group: group_name,
        name: "floor ofd_setlk+unlock",
        samples,
    });
    group.finish();
    rows
}

/// The system calls one uncontended `LocalLock` acquire + release makes at the time of writing
/// (`strace` of the `cycles` partner role), made directly: open, flock, the unlinked-file
/// check (a `statx` of the descriptor for its link count), and the release (flock unlock,
/// then close). The fencing token is drawn only when asked for, so it is not here.
fn replay_lock_syscalls(path: &Path) {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .expect("open");
    let fd = file.as_raw_fd();
    flock_uncontended(fd, path);
    // SAFETY: `statx` is plain data; an empty path with AT_EMPTY_PATH names the descriptor.
    let mut status: libc::statx = unsafe { std::mem::zeroed() };
    let result = unsafe {
        libc::statx(
            fd,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_NLINK,
            &mut status,
        )
    };
    assert!(result == 0 && status.stx_nlink > 0, "statx");
    flock(fd, libc::LOCK_UN);
    drop(file);
}

fn print_uncontended_summary(rows: &[Row]) {
    let busy = BUSY.load(Ordering::Relaxed);
    if busy > 0 {
        println!(
            "\nnote: {busy} uncontended attempts found their lock busy and waited (see above)"
        );
    }
    let medians: Vec<(&Row, f64)> = rows
        .iter()
        .filter_map(|row| Some((row, row.samples.median_ns()?)))
        .collect();
    if medians.is_empty() {
        return;
    }
    println!("\nUncontended acquire + release, median per operation (criterion samples)\n");
    println!(
        "{:<26} {:<28} {:>10} {:>17} {:>16}",
        "group", "benchmark", "median", "× open+lock+close", "× lock+unlock"
    );
    for (row, median) in &medians {
        let floor = |prefix: &str| {
            medians
                .iter()
                .find(|(other, _)| other.group == row.group && other.name.starts_with(prefix))
                .map(|(_, floor)| median / floor)
        };
        let open_floor = floor("floor open");
        let fd_floor = medians
            .iter()
            .find(|(other, _)| {
                other.group == row.group
                    && other.name.starts_with("floor")
                    && !other.name.starts_with("floor open")
            })
            .map(|(_, floor)| median / floor);
        let ratio = |ratio: Option<f64>| ratio.map_or("-".to_owned(), |r| format!("{r:.2}×"));
        println!(
            "{:<26} {:<28} {:>10} {:>17} {:>16}",
            row.group,
            row.name,
            format_ns(*median),
            ratio(open_floor),
            ratio(fd_floor)
        );
    }
    println!();
}

fn format_ns(ns: f64) -> String {
    if ns >= 10_000.0 {
        format!("{:.1} µs", ns / 1000.0)
    } else if ns >= 1_000.0 {
        format!("{:.2} µs", ns / 1000.0)
    } else {
        format!("{ns:.0} ns")
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Hand-off between two processes.

/// What the partner (B) waits in.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// `LocalLock::acquire()`.
    Tollgate,
    /// A blocking `flock(LOCK_EX)`: the kernel's own wake-up.
    RawFlock,
    /// `read` on an inotify descriptor watching the file, then `flock(LOCK_NB)`.
    RawInotify,
    /// As `RawInotify`, but a second thread reads the inotify descriptor and wakes the
    /// waiting thread through an eventfd: the two hops the library's design makes.
    RawInotifyThread,
}

impl Mode {
    const ALL: [Mode; 4] = [
        Mode::Tollgate,
        Mode::RawFlock,
        Mode::RawInotify,
        Mode::RawInotifyThread,
    ];

    fn role(self) -> &'static str {
        match self {
            Mode::Tollgate => "tollgate",
            Mode::RawFlock => "flock",
            Mode::RawInotify => "inotify",
            Mode::RawInotifyThread => "inotify-thread",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Mode::Tollgate => "tollgate LocalLock::acquire",
            Mode::RawFlock => "floor: blocking flock(LOCK_EX)",
            Mode::RawInotify => "raw inotify read + flock(LOCK_NB)",
            Mode::RawInotifyThread => "raw inotify thread → eventfd → waiter",
        }
    }

    /// Whether a line of `/proc/<tid>/syscall` shows B asleep in the call it waits in.
    fn waits_in(self, syscall: &str) -> bool {
        let fields: Vec<&str> = syscall.split_whitespace().collect();
        let Some(Ok(number)) = fields.first().map(|nr| nr.parse::<libc::c_long>()) else {
            return false; // "running"
        };
        match self {
            // The runtime parks in epoll_wait with a timeout (the 1 s quiet re-check), which
            // is never 0 (a 0 timeout is a non-blocking poll of the I/O driver).
            Mode::Tollgate => is_epoll_wait(number) && fields.get(4) != Some(&"0x0"),
            Mode::RawFlock => number == libc::SYS_flock,
            // The inotify descriptor, or the eventfd.
            Mode::RawInotify | Mode::RawInotifyThread => number == libc::SYS_read,
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn is_epoll_wait(number: libc::c_long) -> bool {
    number == libc::SYS_epoll_wait || number == libc::SYS_epoll_pwait
}

#[cfg(not(target_arch = "x86_64"))]
fn is_epoll_wait(number: libc::c_long) -> bool {
    number == libc::SYS_epoll_pwait
}

/// The partner process; killed (by its id) if still running when dropped.
struct Partner {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Partner {
    fn spawn(mode: Mode, dir: &Path) -> Partner {
        let mut child = Command::new(std::env::current_exe().expect("bench binary"))
            .env(PARTNER_ENV, mode.role())
            .env(DIR_ENV, dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the partner process");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut partner = Partner {
            child,
            stdin,
            stdout,
        };
        assert_eq!(partner.read_line(), "ready");
        partner
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("write to partner");
        stdin.flush().expect("flush to partner");
    }

    fn read_line(&mut self) -> String {
        let mut line = String::new();
        let read = self.stdout.read_line(&mut line).expect("read from partner");
        assert!(read > 0, "the partner process exited early");
        line.trim_end().to_owned()
    }

    /// Waits until B's main thread sleeps in the call it waits in. `false` when `/proc`
    /// does not tell.
    fn wait_until_blocked(&self, mode: Mode) -> bool {
        let pid = self.child.id();
        let syscall_path = format!("/proc/{pid}/task/{pid}/syscall");
        let stat_path = format!("/proc/{pid}/task/{pid}/stat");
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut streak = 0;
        loop {
            let (Ok(syscall), Ok(stat)) = (
                std::fs::read_to_string(&syscall_path),
                std::fs::read_to_string(&stat_path),
            ) else {
                return false;
            };
            // The state follows the parenthesised command name.
            let sleeping = stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('S'));
            if sleeping && mode.waits_in(&syscall) {
                streak += 1;
                // Seen asleep in the call twice in a row, 20 µs or more apart.
                if streak == 2 {
                    return true;
                }
            } else {
                streak = 0;
            }
            assert!(
                Instant::now() < deadline,
                "the partner never blocked (last seen in: {})",
                syscall.trim()
            );
            std::thread::sleep(Duration::from_micros(20));
        }
    }
}

impl Drop for Partner {
    fn drop(&mut self) {
        // Closing its stdin ends the partner; kill it if it does not end promptly.
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What process A holds between rounds.
enum Held {
    Tollgate(Option<tollgate::local::LocalHandle>),
    Fd(Option<OwnedFd>),
}

struct Holder {
    mode: Mode,
    runtime: tokio::runtime::Runtime,
    lock: tollgate::local::LocalLock,
    raw_path: PathBuf,
    held: Held,
}

impl Holder {
    fn new(mode: Mode, dir: &Path) -> Holder {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let provider = LocalProvider::with_directory(dir).expect("provider");
        let lock = provider.lock(HANDOFF_NAME).expect("lock");
        let held = match mode {
            Mode::Tollgate => Held::Tollgate(None),
            Mode::RawFlock | Mode::RawInotify | Mode::RawInotifyThread => Held::Fd(None),
        };
        Holder {
            mode,
            runtime,
            lock,
            raw_path: dir.join(RAW_HANDOFF_FILE),
            held,
        }
    }

    /// Takes the lock, waiting for B to let go of it.
    fn acquire(&mut self) {
        match &mut self.held {
            Held::Tollgate(handle) => {
                *handle = Some(self.runtime.block_on(self.lock.acquire()).expect("acquire"));
            }
            Held::Fd(fd) => {
                let owned = fd.get_or_insert_with(|| open_owned(&self.raw_path));
                flock(owned.as_raw_fd(), libc::LOCK_EX);
            }
        }
    }

    /// Reads the clock, then releases; returns the reading.
    fn release(&mut self) -> u64 {
        match &mut self.held {
            Held::Tollgate(handle) => {
                let handle = handle.take().expect("held");
                let now = monotonic_ns();
                drop(handle);
                now
            }
            Held::Fd(fd) => match self.mode {
                Mode::RawInotify | Mode::RawInotifyThread => {
                    // Unlock, then close: the close is what B's inotify watch reports.
                    let fd = fd.take().expect("held");
                    let now = monotonic_ns();
                    flock(fd.as_raw_fd(), libc::LOCK_UN);
                    drop(fd);
                    now
                }
                _ => {
                    let fd = fd.as_ref().expect("held");
                    let now = monotonic_ns();
                    flock(fd.as_raw_fd(), libc::LOCK_UN);
                    now
                }
            },
        }
    }
}

struct Latencies {
    mode: Mode,
    sorted_ns: Vec<u64>,
    observed: bool,
}

impl Latencies {
    fn percentile(&self, percent: usize) -> u64 {
        let index = (self.sorted_ns.len() * percent / 100).min(self.sorted_ns.len() - 1);
        self.sorted_ns[index]
    }
}

fn handoff(dir: &Path, rounds: usize, warmup: usize) {
    println!("Hand-off between two processes: A releases → B (blocked in acquire) holds");
    println!("({rounds} rounds each after {warmup} warm-up rounds; latency = t_B − t_A, CLOCK_MONOTONIC)\n");
    let results: Vec<Latencies> = Mode::ALL
        .into_iter()
        .map(|mode| handoff_rounds(mode, dir, rounds, warmup))
        .collect();
    println!(
        "{:<36} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "waiter (B)", "min", "median", "p90", "p99", "max"
    );
    for result in &results {
        let us = |ns: u64| format!("{:.1} µs", ns as f64 / 1000.0);
        println!(
            "{:<36} {:>10} {:>10} {:>10} {:>10} {:>10}",
            result.mode.label(),
            us(result.sorted_ns[0]),
            us(result.percentile(50)),
            us(result.percentile(90)),
            us(result.percentile(99)),
            us(*result.sorted_ns.last().expect("rounds")),
        );
    }
    if results.iter().any(|result| !result.observed) {
        println!("\n(/proc/<pid>/syscall was unreadable: A slept 5 ms after B's announcement instead of checking that B was blocked)");
    }
    println!();
}

fn handoff_rounds(mode: Mode, dir: &Path, rounds: usize, warmup: usize) -> Latencies {
    let mut holder = Holder::new(mode, dir);
    let mut partner = Partner::spawn(mode, dir);
    let mut latencies = Vec::with_capacity(rounds);
    let mut observed = true;
    holder.acquire();
    for round in 0..warmup + rounds {
        partner.send("go");
        assert_eq!(partner.read_line(), "waiting");
        if !partner.wait_until_blocked(mode) {
            observed = false;
            std::thread::sleep(Duration::from_millis(5));
        }
        let released = holder.release();
        let acquired: u64 = partner.read_line().parse().expect("a timestamp");
        assert!(acquired >= released, "B held the lock before A released it");
        if round >= warmup {
            latencies.push(acquired - released);
        }
        // B lets go right after reporting.
        holder.acquire();
    }
    drop(partner);
    latencies.sort_unstable();
    Latencies {
        mode,
        sorted_ns: latencies,
        observed,
    }
}

/// Whether the criterion filter, if any, lets the hand-off section run.
fn handoff_selected(args: &[String]) -> bool {
    // Criterion options that take a value (so the value is not the filter).
    const WITH_VALUE: &[&str] = &[
        "--color",
        "-c",
        "--save-baseline",
        "-s",
        "--baseline",
        "-b",
        "--baseline-lenient",
        "--load-baseline",
        "--profile-time",
        "--sample-size",
        "--warm-up-time",
        "--measurement-time",
        "--nresamples",
        "--noise-threshold",
        "--confidence-level",
        "--significance-level",
        "--format",
        "--plotting-backend",
        "--output-format",
        "--logfile",
        "--test-threads",
        "--skip",
    ];
    let mut filter = None;
    let mut skip_value = false;
    for arg in args.iter().skip(1) {
        if skip_value {
            skip_value = false;
        } else if arg.starts_with('-') {
            skip_value = WITH_VALUE.contains(&arg.as_str());
        } else {
            filter = Some(arg.as_str());
        }
    }
    filter.is_none_or(|filter| "handoff".contains(filter) || filter.contains("handoff"))
}

// ---------------------------------------------------------------------------------------------
// The partner process (B).

fn partner(role: &str) {
    // Die with the bench process, whatever happens to it.
    // SAFETY: plain prctl arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    if role == "cycles" {
        cycles();
        return;
    }
    let dir = PathBuf::from(std::env::var_os(DIR_ENV).expect("TOLLGATE_BENCH_DIR"));
    let mut out = std::io::stdout().lock();
    let mut say = |line: &str| {
        writeln!(out, "{line}").expect("write to the bench");
        out.flush().expect("flush to the bench");
    };
    let mut wait: Box<dyn FnMut() -> Box<dyn FnOnce()>> = match role {
        "tollgate" => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let provider = LocalProvider::with_directory(&dir).expect("provider");
            let lock = provider.lock(HANDOFF_NAME).expect("lock");
            Box::new(move || {
                let (handle, acquired) = runtime.block_on(async {
                    let handle = lock.acquire().await.expect("acquire");
                    (handle, monotonic_ns())
                });
                report(acquired);
                Box::new(move || drop(handle))
            })
        }
        "flock" => {
            let fd = open_owned(&dir.join(RAW_HANDOFF_FILE));
            Box::new(move || {
                flock(fd.as_raw_fd(), libc::LOCK_EX);
                report(monotonic_ns());
                let fd = fd.as_raw_fd();
                Box::new(move || flock(fd, libc::LOCK_UN))
            })
        }
        "inotify" => {
            let path = dir.join(RAW_HANDOFF_FILE);
            let fd = open_owned(&path);
            let inotify = inotify_watch(&path);
            Box::new(move || {
                let mut buffer = [0u8; 4096];
                loop {
                    // SAFETY: flock on an open descriptor.
                    if unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                        break;
                    }
                    // SAFETY: reading into a buffer we own, of the length we pass.
                    unsafe {
                        libc::read(
                            inotify.as_raw_fd(),
                            buffer.as_mut_ptr().cast(),
                            buffer.len(),
                        )
                    };
                }
                report(monotonic_ns());
                let fd = fd.as_raw_fd();
                Box::new(move || flock(fd, libc::LOCK_UN))
            })
        }
        "inotify-thread" => {
            let path = dir.join(RAW_HANDOFF_FILE);
            let fd = open_owned(&path);
            let inotify = inotify_watch(&path);
            // SAFETY: plain flags; checked below.
            let event = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
            assert!(event >= 0, "eventfd: {}", std::io::Error::last_os_error());
            // SAFETY: the descriptor was just created and is owned by nobody else.
            let event = unsafe { OwnedFd::from_raw_fd(event) };
            let event_raw = event.as_raw_fd();
            std::thread::spawn(move || {
                let mut buffer = [0u8; 4096];
                loop {
                    // SAFETY: reading into a buffer we own, of the length we pass.
                    let read = unsafe {
                        libc::read(
                            inotify.as_raw_fd(),
                            buffer.as_mut_ptr().cast(),
                            buffer.len(),
                        )
                    };
                    if read <= 0 {
                        return;
                    }
                    let one = 1u64;
                    // SAFETY: writing 8 bytes we own to an eventfd that lives as long as
                    // the process (the waiter below owns it and never returns it).
                    unsafe { libc::write(event_raw, (&raw const one).cast(), 8) };
                }
            });
            Box::new(move || {
                loop {
                    // SAFETY: flock on an open descriptor.
                    if unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                        break;
                    }
                    let mut count = 0u64;
                    // SAFETY: reading 8 bytes into a u64 we own.
                    unsafe { libc::read(event.as_raw_fd(), (&raw mut count).cast(), 8) };
                }
                report(monotonic_ns());
                let fd = fd.as_raw_fd();
                Box::new(move || flock(fd, libc::LOCK_UN))
            })
        }
        other => panic!("unknown partner role {other:?}"),
    };
    say("ready");
    for line in std::io::stdin().lock().lines() {
        match line.expect("read from the bench").as_str() {
            "go" => {
                say("waiting");
                let release = wait();
                release();
            }
            _ => break,
        }
    }
}

fn report(acquired: u64) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{acquired}").expect("write to the bench");
    out.flush().expect("flush to the bench");
}

fn inotify_watch(path: &Path) -> OwnedFd {
    // SAFETY: plain flags; checked below.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
    assert!(
        fd >= 0,
        "inotify_init1: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: the descriptor was just created and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mask = libc::IN_CLOSE_WRITE | libc::IN_CLOSE_NOWRITE | libc::IN_ATTRIB;
    // SAFETY: a valid descriptor and NUL-terminated path.
    let watch = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c_path(path).as_ptr(), mask) };
    assert!(
        watch >= 0,
        "inotify_add_watch: {}",
        std::io::Error::last_os_error()
    );
    fd
}

/// `TOLLGATE_BENCH_PARTNER=cycles`: 100,000 (`TOLLGATE_BENCH_CYCLES`) uncontended acquire +
/// release cycles of a lock (or with `TOLLGATE_BENCH_KIND=semaphore`, of a semaphore of max
/// 3), for `strace -c -f` or `perf record` of the library alone.
fn cycles() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let provider = LocalProvider::with_directory(dir.path()).expect("provider");
    let lock = provider.lock("cycles").expect("lock");
    let semaphore = provider.semaphore("cycles", 3).expect("semaphore");
    let semaphores = std::env::var("TOLLGATE_BENCH_KIND").is_ok_and(|kind| kind == "semaphore");
    let count: u64 = std::env::var("TOLLGATE_BENCH_CYCLES")
        .ok()
        .and_then(|count| count.parse().ok())
        .unwrap_or(100_000);
    runtime.block_on(async {
        for _ in 0..count {
            // A handle, or None in the rare case of a busy lock (see `note_busy`).
            if semaphores {
                drop(semaphore.try_acquire().await.expect("try_acquire"));
            } else {
                drop(lock.try_acquire().await.expect("try_acquire"));
            }
        }
    });
}

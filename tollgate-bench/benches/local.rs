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
use std::future::Future;
use std::io::BufRead;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion};
use tokio::runtime::Runtime;
use tollgate::local::LocalProvider;
use tollgate::{Acquire, LockProvider, SemaphoreProvider};
use tollgate_bench::args::{env_number, BenchArgs};
use tollgate_bench::clock::monotonic_ns;
use tollgate_bench::handoff::{latency, Latencies, LATENCY_COLUMNS};
use tollgate_bench::partner::{die_with_parent, say, Partner};
use tollgate_bench::stats::Samples;
use tollgate_bench::table::{format_ns, Table};

/// The lock directory, passed to the partner.
const DIR_ENV: &str = "TOLLGATE_BENCH_DIR";
const HANDOFF_NAME: &str = "handoff";
const RAW_HANDOFF_FILE: &str = "raw-handoff.lock";

const SAMPLE_SIZE: usize = 50;
const HANDOFF_ROUNDS: usize = 2000;
const HANDOFF_WARMUP: usize = 100;

fn main() {
    tollgate_bench::run(partner, bench);
}

/// The benchmarks (this process is A).
fn bench(args: BenchArgs) {
    let (listing, testing) = (args.listing(), args.testing());

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
    if args.answer_list(&["handoff"]) {
        return;
    }
    if !testing {
        print_uncontended_summary(&rows);
    }
    if args.selects("handoff") {
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

/// One criterion benchmark of a group, and the samples it measured.
struct Row {
    group: &'static str,
    name: &'static str,
    samples: Samples,
}

/// The criterion group being measured and the rows measured so far.
struct MeasuredGroup<'a> {
    group_name: &'static str,
    group: BenchmarkGroup<'a, WallTime>,
    rows: &'a mut Vec<Row>,
}

impl MeasuredGroup<'_> {
    /// Measures `cycle` (one acquire + release) as benchmark `name` of the group.
    fn blocking(&mut self, name: &'static str, mut cycle: impl FnMut()) {
        let samples = Samples::default();
        self.group.bench_function(name, |bencher| {
            bencher.iter_custom(|iterations| {
                let start = Instant::now();
                for _ in 0..iterations {
                    cycle();
                }
                samples.record(iterations, start.elapsed())
            })
        });
        self.push(name, samples);
    }

    /// Measures the future `cycle` makes (one acquire + release) as benchmark `name` of the
    /// group, on `runtime`.
    fn on_runtime<F: Future<Output = ()>>(
        &mut self,
        runtime: &Runtime,
        name: &'static str,
        cycle: impl Fn() -> F,
    ) {
        let samples = Samples::default();
        self.group.bench_function(name, |bencher| {
            bencher.to_async(runtime).iter_custom(|iterations| {
                let (cycle, samples) = (&cycle, &samples);
                async move {
                    let start = Instant::now();
                    for _ in 0..iterations {
                        cycle().await;
                    }
                    samples.record(iterations, start.elapsed())
                }
            })
        });
        self.push(name, samples);
    }

    /// Ends the criterion group.
    fn finish(self) {
        self.group.finish();
    }

    /// Keeps the samples of benchmark `name` as a row.
    fn push(&mut self, name: &'static str, samples: Samples) {
        self.rows.push(Row {
            group: self.group_name,
            name,
            samples,
        });
    }
}

fn uncontended(criterion: &mut Criterion, dir: &Path) -> Vec<Row> {
    let mut rows = Vec::new();
    let runtime = tollgate_bench::current_thread();
    let provider = LocalProvider::with_directory(dir).expect("provider");

    // --- the lock ---
    let group_name = "uncontended lock";
    let mut group = MeasuredGroup {
        group_name,
        group: criterion.benchmark_group(group_name),
        rows: &mut rows,
    };
    let lock = provider.lock("uncontended").expect("lock");
    group.on_runtime(&runtime, "tollgate try_acquire+drop", || async {
        drop(take_uncontended(&lock, lock.path()).await);
    });
    group.on_runtime(&runtime, "tollgate acquire+drop", || async {
        drop(lock.acquire().await.unwrap());
    });

    let path = dir.join("floor.lock");
    let raw_path = c_path(&path);
    group.blocking("floor open+flock+close", || {
        let fd = open_raw(&raw_path);
        flock_uncontended(fd, &path);
        close(fd);
    });

    let path = dir.join("floor-open.lock");
    let fd = open_owned(&path);
    group.blocking("floor flock+unlock", || {
        flock_uncontended(fd.as_raw_fd(), &path);
        flock(fd.as_raw_fd(), libc::LOCK_UN);
    });

    let replay_path = dir.join("replay.lock");
    group.blocking("syscall replay", || replay_lock_syscalls(&replay_path));
    group.finish();

    // --- the semaphore ---
    let group_name = "uncontended semaphore(3)";
    let mut group = MeasuredGroup {
        group_name,
        group: criterion.benchmark_group(group_name),
        rows: &mut rows,
    };
    let semaphore = provider.semaphore("uncontended", 3).expect("semaphore");
    let semaphore_path = dir
        .join("semaphore")
        .join(tollgate::local::lock_file_name("uncontended"));
    group.on_runtime(&runtime, "tollgate try_acquire+drop", || async {
        drop(take_uncontended(&semaphore, &semaphore_path).await);
    });

    // In the semaphore subdirectory, as the library's semaphore files are.
    let path = dir.join("semaphore").join("floor.lock");
    let raw_path = c_path(&path);
    group.blocking("floor open+ofd_setlk+close", || {
        let fd = open_raw(&raw_path);
        ofd_lock_uncontended(fd, &path);
        close(fd);
    });

    let path = dir.join("semaphore").join("floor-open.lock");
    let fd = open_owned(&path);
    group.blocking("floor ofd_setlk+unlock", || {
        ofd_lock_uncontended(fd.as_raw_fd(), &path);
        ofd_unlock(fd.as_raw_fd(), 0, 1);
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
        .filter_map(|row| Some((row, row.samples.median_ns(SAMPLE_SIZE)?)))
        .collect();
    if medians.is_empty() {
        return;
    }
    println!("\nUncontended acquire + release, median per operation (criterion samples)\n");
    let table = Table::new(&[26, 28], &[10, 17, 16]);
    table.print(&[
        "group",
        "benchmark",
        "median",
        "× open+lock+close",
        "× lock+unlock",
    ]);
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
        table.print(&[
            row.group.to_owned(),
            row.name.to_owned(),
            format_ns(*median),
            ratio(open_floor),
            ratio(fd_floor),
        ]);
    }
    println!();
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
    /// `read` on an inotify descriptor registered with a tokio current-thread runtime's
    /// reactor (`AsyncFd`), then `flock(LOCK_NB)`: what tokio's wake-up costs alone.
    RawInotifyTokio,
}

impl Mode {
    const ALL: [Mode; 5] = [
        Mode::Tollgate,
        Mode::RawFlock,
        Mode::RawInotify,
        Mode::RawInotifyThread,
        Mode::RawInotifyTokio,
    ];

    fn role(self) -> &'static str {
        match self {
            Mode::Tollgate => "tollgate",
            Mode::RawFlock => "flock",
            Mode::RawInotify => "inotify",
            Mode::RawInotifyThread => "inotify-thread",
            Mode::RawInotifyTokio => "inotify-tokio",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Mode::Tollgate => "tollgate LocalLock::acquire",
            Mode::RawFlock => "floor: blocking flock(LOCK_EX)",
            Mode::RawInotify => "raw inotify read + flock(LOCK_NB)",
            Mode::RawInotifyThread => "raw inotify thread → eventfd → waiter",
            Mode::RawInotifyTokio => "raw inotify in tokio's reactor + flock",
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
            Mode::Tollgate | Mode::RawInotifyTokio => {
                is_epoll_wait(number) && fields.get(4) != Some(&"0x0")
            }
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

/// Waits until the main thread of the partner `pid` sleeps in the call `mode` waits in.
/// `false` when `/proc` does not tell.
fn wait_until_blocked(pid: u32, mode: Mode) -> bool {
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

/// What process A holds between rounds.
enum Held {
    Tollgate(Option<tollgate::local::LocalHandle>),
    Fd(Option<OwnedFd>),
}

struct Holder {
    mode: Mode,
    runtime: Runtime,
    lock: tollgate::local::LocalLock,
    raw_path: PathBuf,
    held: Held,
}

impl Holder {
    fn new(mode: Mode, dir: &Path) -> Holder {
        let runtime = tollgate_bench::current_thread();
        let provider = LocalProvider::with_directory(dir).expect("provider");
        let lock = provider.lock(HANDOFF_NAME).expect("lock");
        let held = match mode {
            Mode::Tollgate => Held::Tollgate(None),
            Mode::RawFlock | Mode::RawInotify | Mode::RawInotifyThread | Mode::RawInotifyTokio => {
                Held::Fd(None)
            }
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
                Mode::RawInotify | Mode::RawInotifyThread | Mode::RawInotifyTokio => {
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

/// What one waiter measured.
struct HandoffResult {
    mode: Mode,
    latencies: Latencies,
    /// Whether `/proc` showed B blocked before every release.
    observed: bool,
}

fn handoff(dir: &Path, rounds: usize, warmup: usize) {
    println!("Hand-off between two processes: A releases → B (blocked in acquire) holds");
    println!("({rounds} rounds each after {warmup} warm-up rounds; latency = t_B − t_A, CLOCK_MONOTONIC)\n");
    let results: Vec<HandoffResult> = Mode::ALL
        .into_iter()
        .map(|mode| handoff_rounds(mode, dir, rounds, warmup))
        .collect();
    let table = Table::new(&[36], &[10; 5]);
    let mut header = vec!["waiter (B)"];
    header.extend(LATENCY_COLUMNS);
    table.print(&header);
    for result in &results {
        let mut cells = vec![result.mode.label().to_owned()];
        cells.extend(result.latencies.cells());
        table.print(&cells);
    }
    if results.iter().any(|result| !result.observed) {
        println!("\n(/proc/<pid>/syscall was unreadable: A slept 5 ms after B's announcement instead of checking that B was blocked)");
    }
    println!();
}

fn handoff_rounds(mode: Mode, dir: &Path, rounds: usize, warmup: usize) -> HandoffResult {
    let mut holder = Holder::new(mode, dir);
    let mut partner = Partner::spawn(mode.role(), [(DIR_ENV, dir)]);
    let mut latencies = Vec::with_capacity(rounds);
    let mut observed = true;
    holder.acquire();
    for round in 0..warmup + rounds {
        partner.start_waiting();
        if !wait_until_blocked(partner.pid(), mode) {
            observed = false;
            std::thread::sleep(Duration::from_millis(5));
        }
        let released = holder.release();
        let acquired = partner.read_timestamp();
        let round_ns = latency(released, acquired);
        if round >= warmup {
            latencies.push(round_ns);
        }
        // B lets go right after reporting.
        holder.acquire();
    }
    drop(partner);
    HandoffResult {
        mode,
        latencies: Latencies::new(latencies),
        observed,
    }
}

// ---------------------------------------------------------------------------------------------
// The partner process (B).

fn partner(role: &str) {
    die_with_parent();
    if role == "cycles" {
        cycles();
        return;
    }
    let dir = PathBuf::from(std::env::var_os(DIR_ENV).expect("TOLLGATE_BENCH_DIR"));
    let mut wait: Box<dyn FnMut() -> Box<dyn FnOnce()>> = match role {
        "tollgate" => {
            let runtime = tollgate_bench::current_thread();
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
        "inotify-tokio" => {
            let path = dir.join(RAW_HANDOFF_FILE);
            let fd = open_owned(&path);
            let runtime = tollgate_bench::current_thread();
            let inotify = {
                let _context = runtime.enter();
                let inotify = inotify_watch(&path);
                // SAFETY: fcntl on a descriptor we own.
                unsafe { libc::fcntl(inotify.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
                // SAFETY: the `AsyncFd` owns the descriptor, open as long as it is registered.
                unsafe {
                    tokio::io::unix::AsyncFd::register_with_interest(
                        inotify,
                        tokio::io::Interest::READABLE,
                    )
                }
                .map_err(|error| error.into_parts().1)
                .expect("register the inotify descriptor")
            };
            Box::new(move || {
                let acquired = runtime.block_on(async {
                    let mut buffer = [0u8; 4096];
                    loop {
                        // SAFETY: flock on an open descriptor.
                        if unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }
                            == 0
                        {
                            return monotonic_ns();
                        }
                        let mut ready = inotify.readable().await.expect("readable");
                        // SAFETY: reading into a buffer we own, of the length we pass.
                        let read = unsafe {
                            libc::read(
                                inotify.as_raw_fd(),
                                buffer.as_mut_ptr().cast(),
                                buffer.len(),
                            )
                        };
                        if read < 0 {
                            ready.clear_ready();
                        }
                    }
                });
                report(acquired);
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

/// Says B's reading right after its acquire returned.
fn report(acquired: u64) {
    say(&acquired.to_string());
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
    let runtime = tollgate_bench::current_thread();
    let provider = LocalProvider::with_directory(dir.path()).expect("provider");
    let lock = provider.lock("cycles").expect("lock");
    let semaphore = provider.semaphore("cycles", 3).expect("semaphore");
    let semaphores = std::env::var("TOLLGATE_BENCH_KIND").is_ok_and(|kind| kind == "semaphore");
    let count: u64 = env_number("TOLLGATE_BENCH_CYCLES").unwrap_or(100_000);
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

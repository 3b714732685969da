//! The torture suite: per backend, K `tollgate run` loops hammer one name while a chaos
//! thread SIGKILLs the holder's command and the holder's tollgate, kills its server
//! connections and restarts servers; every critical section is recorded, and the suite
//! reports acquisitions, kills, overlaps, commands that ran without their lock and recovery
//! times (see RELIABILITY.md at the repository root).
//!
//! Short mode (the default, what CI runs with `cargo test --workspace --all-features`): a
//! few hundred acquisitions per backend, all backends at once, in about two minutes.
//! Long mode, for a release: `TOLLGATE_TORTURE=long` (optionally
//! `TOLLGATE_TORTURE_ACQUISITIONS=N`, default 100000, and `TOLLGATE_TORTURE_MINUTES=M`, a
//! bound per backend, default 600), one backend after another:
//!
//! ```text
//! TOLLGATE_TORTURE=long cargo test -p tollgate-cli --all-features --test torture -- \
//!     --nocapture --test-threads=1
//! ```
//!
//! The critical section is this test binary itself (the ignored `torture_section` test):
//! it takes a POSIX record lock on a referee file outside every lock directory, which the
//! kernel releases exactly when the section's process dies. A section that finds the
//! referee taken has started while an earlier section still lived: an overlap, and
//! `F_GETLK` names the process that still holds it. A section that finds, before it ends,
//! that its parent is no longer the tollgate that started it has run without its lock.
//!
//! The driver is a child subreaper with one reaper thread: orphaned sections are reparented
//! to it and reaped, and every child of this process is started and waited for through
//! [`Reaper`] (so `std::process::Child::wait` is never used here).

#![cfg(target_os = "linux")]

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::io::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

// `common::wait_within` is not for here: its `try_wait` would race the reaper.
#[allow(dead_code, reason = "only block_on is used")]
mod common;

use common::block_on;

/// How many `tollgate run` loops hammer the name.
const WORKERS: usize = 4;

/// The exit status of a section that found the referee taken.
const OVERLAP: i32 = 99;

/// The exit status of a section that outlived its tollgate.
const ORPHAN: i32 = 98;

/// How long a waiter waits before it gives up (exit 75).
const WAIT: &str = "20s";

/// How long past its `--timeout` and hold a `tollgate run` may take before it counts as hung.
const HANG: Duration = Duration::from_secs(90);

/// What a run of the suite aims at.
struct Mode {
    acquisitions: u64,
    /// Each kind of chaos at least this often.
    chaos_each: u64,
    limit: Duration,
    long: bool,
    /// The pause between two faults: at least `.0` ms, plus up to `.1` ms more.
    pause_ms: (u64, u64),
    /// One hold in this many is long (0.3–0.8 s), so that faults find holders mid-section.
    long_hold_one_in: u64,
}

fn mode() -> Mode {
    let variable = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|value| value.parse().ok())
            .unwrap_or(default)
    };
    if std::env::var("TOLLGATE_TORTURE").as_deref() == Ok("long") {
        Mode {
            acquisitions: variable("TOLLGATE_TORTURE_ACQUISITIONS", 100_000),
            chaos_each: 100,
            limit: Duration::from_secs(60 * variable("TOLLGATE_TORTURE_MINUTES", 600)),
            long: true,
            // Sparser faults than short mode's (still hundreds of each kind in a run), so
            // that 100,000 acquisitions fit in about half an hour per backend: on the
            // lease-based backends every SIGKILLed tollgate costs a lease.
            pause_ms: (200, 1_600),
            long_hold_one_in: 50,
        }
    } else {
        Mode {
            acquisitions: 400,
            chaos_each: 6,
            limit: Duration::from_secs(100),
            long: false,
            pause_ms: (50, 400),
            long_hold_one_in: 20,
        }
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the one clock of the driver and of every section.
fn now_ns() -> u64 {
    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut time) };
    time.tv_sec as u64 * 1_000_000_000 + time.tv_nsec as u64
}

/// A small xorshift generator: random enough for intervals and hold times.
struct Random(u64);

impl Random {
    fn new() -> Random {
        Random(now_ns() | 1)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound.max(1)
    }
}

// ---------------------------------------------------------------------------------------
// The critical section.

#[test]
#[ignore = "the critical section that the torture suite runs under tollgate"]
fn torture_section() {
    let Ok(run) = std::env::var("TORTURE_RUN") else {
        return;
    };
    let variable = |name: &str| std::env::var(name).expect(name);
    let log = OpenOptions::new()
        .append(true)
        .open(variable("TORTURE_LOG"))
        .expect("the section log");
    let note = |line: String| {
        (&log)
            .write_all(line.as_bytes())
            .expect("a section log line");
    };
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() };
    let pid = std::process::id();
    note(format!("start {run} {pid} {parent} {}\n", now_ns()));
    let referee = OpenOptions::new()
        .read(true)
        .write(true)
        .open(variable("TORTURE_REFEREE"))
        .expect("the referee");
    if !record_lock(&referee, libc::F_SETLK) {
        let holder = record_lock_holder(&referee);
        let state = if dying(holder) { "dying" } else { "live" };
        note(format!("overlap {run} {holder} {state} {}\n", now_ns()));
        std::process::exit(OVERLAP);
    }
    note(format!("begin {run} {}\n", now_ns()));
    let hold: u64 = variable("TORTURE_HOLD_US").parse().expect("hold time");
    std::thread::sleep(Duration::from_micros(hold));
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } != parent {
        note(format!("orphan {run} {}\n", now_ns()));
        std::process::exit(ORPHAN);
    }
    note(format!("end {run} {}\n", now_ns()));
    std::process::exit(0);
}

/// Whether process `pid` can run no more code of its own: it is exiting (`PF_EXITING`) or
/// has a SIGKILL pending. The kernel frees its record locks only late in its exit, after
/// its memory: a section killed a moment ago may still hold the referee.
fn dying(pid: i32) -> bool {
    const PF_EXITING: u64 = 0x4;
    const SIGKILL_BIT: u64 = 1 << (libc::SIGKILL - 1);
    let exiting = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // The fields after the command name: state, ppid, pgrp, session, tty, tpgid, flags.
            let flags = stat.rsplit_once(')')?.1.split_whitespace().nth(6)?;
            flags.parse::<u64>().ok()
        })
        .is_some_and(|flags| flags & PF_EXITING != 0);
    let killed = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .is_some_and(|status| {
            status.lines().any(|line| {
                let pending = line
                    .strip_prefix("ShdPnd:")
                    .or_else(|| line.strip_prefix("SigPnd:"));
                pending
                    .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
                    .is_some_and(|mask| mask & SIGKILL_BIT != 0)
            })
        });
    exiting || killed
}

fn whole_file(kind: libc::c_int) -> libc::flock {
    // SAFETY: flock is plain data; all zeros is a valid value.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = kind as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock
}

/// Takes a write lock on the whole of `file` (`F_SETLK`: false when taken; `F_SETLKW`: waits).
fn record_lock(file: &File, command: libc::c_int) -> bool {
    let lock = whole_file(libc::F_WRLCK);
    // SAFETY: fcntl on a descriptor we own with a valid flock.
    unsafe { libc::fcntl(file.as_raw_fd(), command, &lock) == 0 }
}

/// The process that holds a lock on `file` (0 if none now).
fn record_lock_holder(file: &File) -> i32 {
    let mut lock = whole_file(libc::F_WRLCK);
    // SAFETY: fcntl on a descriptor we own with a valid flock.
    let found = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut lock) };
    if found == 0 && lock.l_type != libc::F_UNLCK as libc::c_short {
        lock.l_pid
    } else {
        0
    }
}

// ---------------------------------------------------------------------------------------
// Children: started and reaped in one place.

/// Every child of this process: `None` while it runs, its wait status once reaped.
struct Reaper {
    children: Mutex<(HashMap<i32, Option<i32>>, u64)>,
    changed: Condvar,
}

fn reaper() -> &'static Reaper {
    static REAPER: OnceLock<&'static Reaper> = OnceLock::new();
    REAPER.get_or_init(|| {
        // SAFETY: prctl with an integer argument.
        let set = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
        assert_eq!(set, 0, "PR_SET_CHILD_SUBREAPER");
        let reaper: &'static Reaper = Box::leak(Box::new(Reaper {
            children: Mutex::new((HashMap::new(), 0)),
            changed: Condvar::new(),
        }));
        std::thread::spawn(|| reaper.reap());
        reaper
    })
}

impl Reaper {
    /// Starts `command`, its pid registered before the reaper can see it exit.
    fn spawn(&self, command: &mut Command) -> i32 {
        self.try_spawn(command).expect("spawn")
    }

    /// [`Reaper::spawn`], or `None` if the program cannot be run.
    fn try_spawn(&self, command: &mut Command) -> Option<i32> {
        let mut children = self.children.lock().unwrap();
        let pid = command.spawn().ok()?.id() as i32;
        children.0.insert(pid, None);
        children.1 += 1;
        self.changed.notify_all();
        Some(pid)
    }

    /// Reaps every child, orphans reparented to us included (their statuses are dropped).
    fn reap(&self) {
        loop {
            let spawned = self.children.lock().unwrap().1;
            let mut status = 0;
            // SAFETY: waitpid writes the status it is given.
            let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
            let mut children = self.children.lock().unwrap();
            if pid > 0 {
                if let Some(slot) = children.0.get_mut(&pid) {
                    *slot = Some(status);
                    self.changed.notify_all();
                }
            } else if children.1 == spawned {
                // No child at all (ECHILD): wait for the next spawn.
                drop(self.changed.wait(children).unwrap());
            }
        }
    }

    /// The exit status of `pid`, or `None` if it runs longer than `limit`.
    fn wait(&self, pid: i32, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        let mut children = self.children.lock().unwrap();
        loop {
            if let Some(Some(status)) = children.0.get(&pid) {
                let status = ExitStatus::from_raw(*status);
                children.0.remove(&pid);
                return Some(status);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            children = self.changed.wait_timeout(children, left).unwrap().0;
        }
    }

    /// Sends `signal` to our child `pid` unless it has been reaped (its pid may be reused).
    fn signal(&self, pid: i32, signal: libc::c_int) {
        let children = self.children.lock().unwrap();
        if matches!(children.0.get(&pid), Some(None)) {
            // SAFETY: a signal to our own, not yet reaped, child.
            unsafe { libc::kill(pid, signal) };
        }
    }
}

/// SIGKILLs `pid` if it is still a process of run `run` (it is not our child, so its pid
/// may have been reused: a pidfd taken first, then the run checked in its environment).
fn kill_of_run(pid: i32, run: &str) -> bool {
    // SAFETY: pidfd_open takes a pid and flags.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as libc::c_int;
    if pidfd < 0 {
        return false;
    }
    let marker = format!("TORTURE_RUN={run}");
    let ours = std::fs::read(format!("/proc/{pid}/environ"))
        .map(|environ| {
            environ
                .split(|byte| *byte == 0)
                .any(|entry| entry == marker.as_bytes())
        })
        .unwrap_or(false);
    // SAFETY: a signal through a pidfd we own, which we then close.
    let killed = ours
        && unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                pidfd,
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        } == 0;
    // SAFETY: closing the pidfd we opened.
    unsafe { libc::close(pidfd) };
    killed
}

// ---------------------------------------------------------------------------------------
// Servers of the suite's own.

/// `redis-server` processes of the suite's own, on free loopback ports, restartable.
struct RedisServers {
    pids: Vec<i32>,
    ports: Vec<u16>,
}

impl RedisServers {
    fn start(count: usize) -> RedisServers {
        let mut servers = RedisServers {
            pids: Vec::new(),
            ports: Vec::new(),
        };
        for _ in 0..count {
            let (pid, port) = (0..10)
                .find_map(|_| {
                    let port = std::net::TcpListener::bind("127.0.0.1:0")
                        .and_then(|listener| listener.local_addr())
                        .expect("a free port")
                        .port();
                    Some((redis_server_on(port)?, port))
                })
                .expect("a redis-server of our own on a free port");
            servers.pids.push(pid);
            servers.ports.push(port);
        }
        servers
    }

    fn url(&self) -> String {
        let hosts: Vec<String> = self
            .ports
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        format!("redis://{}/?expiry=3s", hosts.join(","))
    }

    /// SIGKILLs server `index` and starts it again on its port, with nothing in it.
    fn restart(&mut self, index: usize) {
        self.stop(index);
        self.pids[index] = redis_server_on(self.ports[index]).unwrap_or_else(|| {
            panic!(
                "redis-server did not come back on port {}",
                self.ports[index]
            )
        });
    }

    fn stop(&self, index: usize) {
        reaper().signal(self.pids[index], libc::SIGKILL);
        reaper()
            .wait(self.pids[index], HANG)
            .expect("redis-server exits");
    }
}

impl Drop for RedisServers {
    fn drop(&mut self) {
        for index in 0..self.pids.len() {
            self.stop(index);
        }
    }
}

/// A `redis-server` of ours serving on `port`, or `None` if another process has the port.
fn redis_server_on(port: u16) -> Option<i32> {
    let mut command = Command::new("redis-server");
    command
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    die_with_this_process(&mut command);
    let pid = reaper().spawn(&mut command);
    let started = Instant::now();
    loop {
        if let Some(answered) = redis_server_pid(port) {
            if answered == pid {
                return Some(pid);
            }
            reaper().signal(pid, libc::SIGKILL);
            reaper().wait(pid, HANG);
            return None;
        }
        if reaper().wait(pid, Duration::from_millis(10)).is_some() {
            return None;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "redis-server on port {port} did not come up"
        );
    }
}

fn die_with_this_process(command: &mut Command) {
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// The `process_id` that the server on `port` reports, if one answers.
fn redis_server_pid(port: u16) -> Option<i32> {
    use std::io::BufRead;

    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    stream.write_all(b"INFO server\r\n").ok()?;
    let mut reader = std::io::BufReader::new(stream);
    let mut header = String::new();
    reader.read_line(&mut header).ok()?;
    let length: usize = header.strip_prefix('$')?.trim().parse().ok()?;
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|line| line.strip_prefix("process_id:")?.trim().parse().ok())
}

/// A PostgreSQL or MariaDB server of the suite's own on a free loopback port, in a
/// directory of its own, restartable (the machine's shared servers are never restarted).
struct SqlServer {
    pid: i32,
    port: u16,
    dir: tempfile::TempDir,
    engine: Engine,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Engine {
    Postgres,
    MariaDb,
}

impl SqlServer {
    /// Prepares a data directory and starts the server; `None` if this machine has no
    /// such server to run.
    fn start(engine: Engine) -> Option<SqlServer> {
        let dir = tempfile::tempdir().expect("a server directory");
        let data = dir.path().join("data");
        let mut prepare = match engine {
            Engine::Postgres => {
                let mut command = Command::new(postgres_program("initdb")?);
                command
                    .arg("-D")
                    .arg(&data)
                    .args(["-A", "trust", "-U", "postgres", "--no-sync"]);
                std::os::unix::fs::chown(dir.path(), Some(postgres_user()?.0), None)
                    .expect("chown the server directory");
                as_postgres(&mut command);
                command
            }
            Engine::MariaDb => {
                let mut command = Command::new("mariadb-install-db");
                command
                    .args(["--no-defaults", "--user=root", "--skip-test-db"])
                    .arg(format!("--datadir={}", data.display()));
                command
            }
        };
        prepare.stdout(Stdio::null()).stderr(Stdio::null());
        let pid = reaper().try_spawn(&mut prepare)?;
        let prepared = reaper()
            .wait(pid, HANG)
            .expect("the data directory is made");
        assert!(prepared.success(), "preparing a data directory failed");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let mut server = SqlServer {
            pid: 0,
            port,
            dir,
            engine,
        };
        server.pid = server.spawn();
        Some(server)
    }

    fn url(&self) -> String {
        match self.engine {
            Engine::Postgres => format!(
                "postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable",
                self.port
            ),
            Engine::MariaDb => format!("mysql://root@127.0.0.1:{}/mysql", self.port),
        }
    }

    /// Starts the server on its directory and port, returned once it takes connections.
    fn spawn(&self) -> i32 {
        let (dir, port) = (self.dir.path(), self.port.to_string());
        let mut command = match self.engine {
            Engine::Postgres => {
                let mut command = Command::new(postgres_program("postgres").expect("postgres"));
                command
                    .arg("-D")
                    .arg(dir.join("data"))
                    .args(["-p", &port, "-k"])
                    .arg(dir)
                    .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
                    .args(["-c", "max_connections=200"]);
                as_postgres(&mut command);
                command
            }
            Engine::MariaDb => {
                let mut command = Command::new("mariadbd");
                command
                    .args(["--no-defaults", "--user=root", "--bind-address=127.0.0.1"])
                    .args(["--skip-grant-tables", "--skip-log-bin"])
                    .args(["--innodb-buffer-pool-size=16M", "--max-connections=200"])
                    .arg(format!("--port={port}"))
                    .arg(format!("--datadir={}", dir.join("data").display()))
                    .arg(format!("--socket={}", dir.join("socket").display()));
                die_with_this_process(&mut command);
                command
            }
        };
        command.stdout(Stdio::null()).stderr(Stdio::null());
        let pid = reaper().spawn(&mut command);
        let started = Instant::now();
        while !block_on(self.answers()) {
            assert!(
                reaper().wait(pid, Duration::from_millis(50)).is_none(),
                "the server on port {port} exited"
            );
            assert!(
                started.elapsed() < HANG,
                "the server on port {port} did not come up"
            );
        }
        pid
    }

    async fn answers(&self) -> bool {
        match self.engine {
            Engine::Postgres => tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
                .await
                .is_ok(),
            Engine::MariaDb => match mysql_async::Conn::from_url(self.url()).await {
                Ok(conn) => conn.disconnect().await.is_ok(),
                Err(_) => false,
            },
        }
    }

    /// Ends the server at once (PostgreSQL: immediate shutdown; MariaDB: SIGKILL, a crash).
    fn stop(&self) {
        let signal = match self.engine {
            Engine::Postgres => libc::SIGQUIT,
            Engine::MariaDb => libc::SIGKILL,
        };
        reaper().signal(self.pid, signal);
        reaper().wait(self.pid, HANG).expect("the server exits");
    }

    fn restart(&mut self) {
        self.stop();
        self.pid = self.spawn();
    }
}

impl Drop for SqlServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A program of this machine's PostgreSQL (`PATH`, else the newest under /usr/lib/postgresql).
fn postgres_program(name: &str) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|program| program.is_file())
    });
    on_path.or_else(|| {
        let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|entry| Some(entry.ok()?.path().join("bin").join(name)))
            .filter(|program| program.is_file())
            .collect();
        versions.sort();
        versions.pop()
    })
}

/// The uid and gid of the `postgres` user (PostgreSQL refuses to run as root).
fn postgres_user() -> Option<(u32, u32)> {
    // SAFETY: getpwnam returns a pointer into static storage or null; read at once.
    unsafe {
        let user = libc::getpwnam(c"postgres".as_ptr());
        (!user.is_null()).then(|| ((*user).pw_uid, (*user).pw_gid))
    }
}

/// Runs `command` as the `postgres` user (when we are root), dying with this process.
fn as_postgres(command: &mut Command) {
    // SAFETY: getuid has no preconditions.
    let root = unsafe { libc::getuid() } == 0;
    let user = postgres_user().filter(|_| root);
    // SAFETY: setgid, setuid and prctl are async-signal-safe; the parent-death signal is
    // set after the change of user, which would clear it.
    unsafe {
        command.pre_exec(move || {
            if let Some((uid, gid)) = user {
                if libc::setgid(gid) != 0 || libc::setuid(uid) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

// ---------------------------------------------------------------------------------------
// Backends and their faults.

/// The kinds of chaos.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Chaos {
    KillCommand,
    KillTollgate,
    KillConnection,
    RestartServer,
}

/// A backend under torture: its URL and the faults it can be given.
enum Backend {
    Files(String),
    /// `own`: a server of the suite's own, which it may restart.
    Postgres {
        url: String,
        application: String,
        own: Option<SqlServer>,
    },
    MySql {
        url: String,
        own: Option<SqlServer>,
    },
    Redis {
        servers: RedisServers,
        next: usize,
    },
}

impl Backend {
    fn url(&self) -> String {
        match self {
            Backend::Files(url) | Backend::Postgres { url, .. } | Backend::MySql { url, .. } => {
                url.clone()
            }
            Backend::Redis { servers, .. } => servers.url(),
        }
    }

    fn chaos(&self) -> Vec<Chaos> {
        let mut kinds = vec![Chaos::KillCommand, Chaos::KillTollgate];
        match self {
            Backend::Files(_) => {}
            Backend::Postgres { own, .. } | Backend::MySql { own, .. } => {
                kinds.push(Chaos::KillConnection);
                if own.is_some() {
                    kinds.push(Chaos::RestartServer);
                }
            }
            Backend::Redis { .. } => kinds.extend([Chaos::KillConnection, Chaos::RestartServer]),
        }
        kinds
    }

    /// Kills the server connection(s) of the holder of `name`; false if none was found.
    fn kill_connection(&mut self, name: &str) -> bool {
        match self {
            Backend::Files(_) => false,
            Backend::Postgres {
                url, application, ..
            } => block_on(terminate_postgres(url, application)),
            Backend::MySql { url, .. } => block_on(kill_mysql(url, name)),
            Backend::Redis { servers, next } => {
                // Every client of one server of ours (waiters too): the holder's among them.
                let index = *next % servers.ports.len();
                *next += 1;
                let url = format!("redis://127.0.0.1:{}", servers.ports[index]);
                block_on(kill_redis_clients(&url))
            }
        }
    }

    fn restart_server(&mut self) -> bool {
        match self {
            Backend::Redis { servers, next } => {
                let index = *next % servers.ports.len();
                *next += 1;
                servers.restart(index);
                true
            }
            Backend::Postgres { own: Some(own), .. } | Backend::MySql { own: Some(own), .. } => {
                own.restart();
                true
            }
            _ => false,
        }
    }
}

/// Ends the sessions of ours (by application name) that hold an advisory lock.
async fn terminate_postgres(url: &str, application: &str) -> bool {
    let Ok((client, connection)) = tokio_postgres::connect(url, tokio_postgres::NoTls).await else {
        return false;
    };
    tokio::spawn(connection);
    let ended = client
        .query(
            "SELECT pg_terminate_backend(l.pid) FROM pg_locks l \
             JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted AND a.application_name = $1",
            &[&application],
        )
        .await
        .map(|rows| rows.len())
        .unwrap_or(0);
    ended > 0
}

/// `KILL`s the connection that holds the `GET_LOCK` of `name`.
async fn kill_mysql(url: &str, name: &str) -> bool {
    use mysql_async::prelude::Queryable;

    let Ok(mut conn) = mysql_async::Conn::from_url(url).await else {
        return false;
    };
    let lock_name = tollgate::backend::mysql::lock_name(name);
    let holder: Option<Option<u64>> = conn
        .exec_first("SELECT IS_USED_LOCK(?)", (lock_name,))
        .await
        .unwrap_or(None);
    let killed = match holder.flatten() {
        Some(holder) => conn.query_drop(format!("KILL {holder}")).await.is_ok(),
        None => false,
    };
    let _ = conn.disconnect().await;
    killed
}

/// `CLIENT KILL TYPE normal` on a server of the suite's own.
async fn kill_redis_clients(url: &str) -> bool {
    let Ok(client) = redis::Client::open(url) else {
        return false;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return false;
    };
    let killed: redis::RedisResult<u64> = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query_async(&mut conn)
        .await;
    killed.map(|count| count > 0).unwrap_or(false)
}

fn postgres_url() -> String {
    std::env::var("TOLLGATE_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test?sslmode=disable".into())
}

fn mysql_url() -> String {
    std::env::var("TOLLGATE_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

// ---------------------------------------------------------------------------------------
// The section log.

/// One line of the section log.
#[derive(Clone, Debug)]
enum Event {
    Start {
        run: String,
        pid: i32,
        parent: i32,
    },
    /// `dying`: the holder could run no more code of its own (see [`dying`]).
    Overlap {
        run: String,
        holder: i32,
        dying: bool,
    },
    Begin {
        run: String,
    },
    Orphan {
        run: String,
    },
    End {
        run: String,
    },
}

/// Reads the lines the sections have appended since the last read.
struct Tail {
    file: File,
    partial: String,
}

impl Tail {
    fn open(path: &Path) -> Tail {
        Tail {
            file: File::open(path).expect("the section log"),
            partial: String::new(),
        }
    }

    fn read(&mut self) -> Vec<(Event, u64)> {
        let mut text = std::mem::take(&mut self.partial);
        self.file.read_to_string(&mut text).expect("read the log");
        let complete = text.rfind('\n').map_or(0, |end| end + 1);
        self.partial = text.split_off(complete);
        text.lines().map(parse_event).collect()
    }
}

fn parse_event(line: &str) -> (Event, u64) {
    let fields: Vec<&str> = line.split(' ').collect();
    let number = |index: usize| -> i64 {
        fields
            .get(index)
            .and_then(|field| field.parse().ok())
            .unwrap_or_else(|| panic!("a malformed section line {line:?}"))
    };
    let run = fields[1].to_string();
    let (event, time) = match fields[0] {
        "start" => (
            Event::Start {
                run,
                pid: number(2) as i32,
                parent: number(3) as i32,
            },
            number(4),
        ),
        "overlap" => (
            Event::Overlap {
                run,
                holder: number(2) as i32,
                dying: fields.get(3) == Some(&"dying"),
            },
            number(4),
        ),
        "begin" => (Event::Begin { run }, number(2)),
        "orphan" => (Event::Orphan { run }, number(2)),
        "end" => (Event::End { run }, number(2)),
        _ => panic!("a malformed section line {line:?}"),
    };
    (event, time as u64)
}

// ---------------------------------------------------------------------------------------
// The driver.

/// A fault the chaos thread caused: its kind, and when it began and ended (ns).
#[derive(Clone, Copy, Debug)]
struct Fault {
    kind: Chaos,
    begun: u64,
    ended: u64,
}

impl Fault {
    /// Whether the server may have freed a hold by it (the other kinds end processes).
    fn on_the_server(&self) -> bool {
        matches!(self.kind, Chaos::KillConnection | Chaos::RestartServer)
    }
}

/// How long before its section starts a hold may have been taken: a server fault this
/// close before an earlier section's start may have freed that section's hold.
const ACQUIRED_BEFORE_START: u64 = 200_000_000;

/// One backend's torture: shared by its workers and its chaos thread.
struct Torture {
    label: &'static str,
    name: String,
    url: String,
    log: PathBuf,
    referee: PathBuf,
    mode: Mode,
    stop: AtomicBool,
    /// The folder of each worker's `stderr-N.log`.
    errors: PathBuf,
    /// Each run's tollgate status (`None`: hung, then killed).
    statuses: Mutex<BTreeMap<String, Option<ExitStatus>>>,
    /// Each successful fault: its kind and when.
    faults: Mutex<Vec<Fault>>,
}

impl Torture {
    fn worker(&self, index: usize) {
        let mut random = Random::new();
        let mut errors = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.errors.join(format!("stderr-{index}.log")))
            .expect("the stderr file");
        for sequence in 1.. {
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            // Unique in this process: every backend's test runs in it at once.
            let run = format!("{}.{index}.{sequence}", self.label);
            // Mostly short holds, now and then a long one that chaos is likelier to hit.
            let hold_us = if random.below(self.mode.long_hold_one_in) == 0 {
                300_000 + random.below(500_000)
            } else {
                random.below(20_000)
            };
            writeln!(errors, "run {run}").expect("the stderr file");
            let mut command = Command::new(env!("CARGO_BIN_EXE_tollgate"));
            command
                .args(["run", &self.name, "--backend", &self.url, "--timeout", WAIT])
                .args(["--kill-after", "1s", "--"])
                .arg(std::env::current_exe().expect("this test binary"))
                .args(["torture_section", "--exact", "--ignored", "--nocapture"])
                .args(["-q", "--test-threads=1"])
                .env("TORTURE_RUN", &run)
                .env("TORTURE_LOG", &self.log)
                .env("TORTURE_REFEREE", &self.referee)
                .env("TORTURE_HOLD_US", hold_us.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(errors.try_clone().expect("the stderr file"));
            let pid = reaper().spawn(&mut command);
            let status = reaper().wait(pid, HANG + Duration::from_micros(hold_us));
            if status.is_none() {
                reaper().signal(pid, libc::SIGKILL);
                reaper().wait(pid, HANG);
            }
            self.statuses.lock().unwrap().insert(run, status);
        }
    }

    /// Faults at random moments until the aims are met or the time is up.
    fn chaos(&self, backend: &mut Backend) {
        let kinds = backend.chaos();
        let mut random = Random::new();
        let mut tail = Tail::open(&self.log);
        let mut faults_log = File::create(self.errors.join("faults.log")).expect("the fault log");
        let mut starts: HashMap<String, (i32, i32)> = HashMap::new();
        let mut holder: Option<(String, i32, i32)> = None;
        let (mut acquisitions, mut next) = (0_u64, random.below(kinds.len() as u64) as usize);
        let began = Instant::now();
        loop {
            // Pacing only: the faults' timing is what is random here.
            let (least, spread) = self.mode.pause_ms;
            std::thread::sleep(Duration::from_millis(least + random.below(spread)));
            for (event, _) in tail.read() {
                match event {
                    Event::Start { run, pid, parent } => {
                        acquisitions += 1;
                        starts.insert(run, (pid, parent));
                    }
                    Event::Begin { run } => {
                        let (pid, parent) = starts[&run];
                        holder = Some((run, pid, parent));
                    }
                    Event::End { run } | Event::Orphan { run } => {
                        if holder.as_ref().is_some_and(|(current, ..)| *current == run) {
                            holder = None;
                        }
                    }
                    Event::Overlap { .. } => {}
                }
            }
            let faults = self.faults.lock().unwrap().clone();
            let each_done = kinds.iter().all(|kind| {
                faults.iter().filter(|fault| fault.kind == *kind).count() as u64
                    >= self.mode.chaos_each
            });
            if (acquisitions >= self.mode.acquisitions && each_done)
                || began.elapsed() > self.mode.limit
            {
                break;
            }
            let kind = kinds[next % kinds.len()];
            let begun = now_ns();
            let done = match (kind, &holder) {
                (Chaos::KillCommand, Some((run, pid, _))) => kill_of_run(*pid, run),
                (Chaos::KillTollgate, Some((run, _, parent))) => kill_of_run(*parent, run),
                (Chaos::KillConnection, Some(_)) => backend.kill_connection(&self.name),
                (Chaos::RestartServer, _) => backend.restart_server(),
                _ => false,
            };
            if done {
                let target = holder.as_ref().map_or("-", |(run, ..)| run.as_str());
                let ended = now_ns();
                writeln!(faults_log, "{kind:?} {target} {begun} {ended}").expect("the fault log");
                let fault = Fault { kind, begun, ended };
                self.faults.lock().unwrap().push(fault);
                next += 1;
            }
        }
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Runs one backend's torture and checks and prints what it found.
fn torture(label: &'static str, mut backend: Backend) {
    let scratch = tempfile::tempdir().expect("a scratch directory");
    let log = scratch.path().join("sections.log");
    let referee = scratch.path().join("referee");
    File::create(&log).expect("the section log");
    File::create(&referee).expect("the referee");
    let torture = Torture {
        label,
        name: unique(label),
        url: backend.url(),
        log,
        referee,
        errors: scratch.path().to_path_buf(),
        mode: mode(),
        stop: AtomicBool::new(false),
        statuses: Mutex::new(BTreeMap::new()),
        faults: Mutex::new(Vec::new()),
    };
    let started = Instant::now();
    std::thread::scope(|scope| {
        for index in 0..WORKERS {
            let torture = &torture;
            scope.spawn(move || torture.worker(index));
        }
        torture.chaos(&mut backend);
    });
    // Sections that outlived their tollgate may still run: the referee is free once they end.
    let referee = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&torture.referee)
        .expect("the referee");
    assert!(record_lock(&referee, libc::F_SETLKW), "the referee");
    drop(backend);
    let report = Report::new(&torture, started.elapsed());
    report.print(&torture);
    if std::env::var_os("TOLLGATE_TORTURE_KEEP").is_some() {
        println!("  section log kept in {}", scratch.keep().display());
    }
    report.check(&torture);
}

fn unique(label: &str) -> String {
    format!("torture-{label}-{}-{}", std::process::id(), now_ns())
}

/// Why a section started while an earlier one lived, as far as the suite can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Cause {
    /// One of the two tollgates reported the loss (exit 79): the server freed its lock at a
    /// fault, before tollgate could stop its command. Usually the earlier one; but a fault
    /// that frees a hold just after its grant lets the next waiter in at once, and whichever
    /// command of the two starts first is the earlier section.
    LossReported,
    /// A server fault freed one of the two holds, and neither tollgate said so (its command
    /// ended, or was killed, first).
    ServerFault,
    /// A server fault freed the hold of a SIGKILLed tollgate whose command still ran (it
    /// shares the hold's connection): no tollgate was left to report it.
    FaultAfterKill,
    /// The earlier tollgate was SIGKILLed and its command was already dying: the kernel
    /// frees the command's resources late in its exit.
    Dying,
    /// The earlier tollgate was SIGKILLed and its command still ran, not yet signalled: the
    /// kernel freed tollgate's lock before it sent the command's parent-death signal.
    KilledTollgate,
    /// Nothing explains it: mutual exclusion failed.
    Unexplained,
}

impl Cause {
    /// In the report's order.
    const ALL: [Cause; 6] = [
        Cause::Unexplained,
        Cause::KilledTollgate,
        Cause::Dying,
        Cause::ServerFault,
        Cause::FaultAfterKill,
        Cause::LossReported,
    ];

    /// The report's row for this cause.
    fn row(self) -> &'static str {
        match self {
            Cause::Unexplained => "OVERLAPS, no server fault (must be 0)",
            Cause::KilledTollgate => "OVERLAPS, tollgate killed, command ran",
            Cause::Dying => "overlaps, tollgate killed, command dying",
            Cause::ServerFault => "OVERLAPS, server fault, loss unreported (must be 0)",
            Cause::FaultAfterKill => "overlaps, server fault after tollgate was killed",
            Cause::LossReported => "overlaps, loss reported (exit 79)",
        }
    }

    fn of(
        earlier: Option<&ExitStatus>,
        later: Option<&ExitStatus>,
        faulted: bool,
        dying: bool,
    ) -> Cause {
        let lost = |status: Option<&ExitStatus>| status.and_then(ExitStatus::code) == Some(79);
        // The later one's loss explains an overlap only with a server fault to free it:
        // a later tollgate that never held at all would report a loss at its release too.
        let killed = earlier.and_then(ExitStatus::signal) == Some(libc::SIGKILL);
        if lost(earlier) || (lost(later) && faulted) {
            Cause::LossReported
        } else if faulted && killed {
            Cause::FaultAfterKill
        } else if faulted {
            Cause::ServerFault
        } else if dying {
            Cause::Dying
        } else if killed {
            Cause::KilledTollgate
        } else {
            Cause::Unexplained
        }
    }
}

/// What a torture found.
struct Report {
    elapsed: Duration,
    acquisitions: u64,
    completed: u64,
    faults: BTreeMap<Chaos, u64>,
    /// Each overlap by its cause: the earlier run, the later run, the earlier run's status.
    overlaps: BTreeMap<Cause, Vec<(String, String, String)>>,
    orphans_after_loss: u64,
    orphans_unreported: Vec<(String, String)>,
    statuses: BTreeMap<String, u64>,
    hung: Vec<String>,
    recovery_ms: Vec<f64>,
    backend_failures: Vec<String>,
}

fn describe(status: Option<&ExitStatus>) -> String {
    match status {
        None => "hung".into(),
        Some(status) => match (status.code(), status.signal()) {
            (Some(code), _) => code.to_string(),
            (None, Some(signal)) => format!("signal {signal}"),
            _ => "?".into(),
        },
    }
}

impl Report {
    fn new(torture: &Torture, elapsed: Duration) -> Report {
        let events = Tail::open(&torture.log).read();
        let statuses = torture.statuses.lock().unwrap().clone();
        let faults = torture.faults.lock().unwrap().clone();
        let mut report = Report {
            elapsed,
            acquisitions: 0,
            completed: 0,
            faults: BTreeMap::new(),
            overlaps: BTreeMap::new(),
            orphans_after_loss: 0,
            orphans_unreported: Vec::new(),
            statuses: BTreeMap::new(),
            hung: Vec::new(),
            recovery_ms: Vec::new(),
            backend_failures: backend_failures(&torture.errors, &statuses),
        };
        for fault in &faults {
            *report.faults.entry(fault.kind).or_default() += 1;
        }
        for (run, status) in &statuses {
            *report
                .statuses
                .entry(describe(status.as_ref()))
                .or_default() += 1;
            if status.is_none() {
                report.hung.push(run.clone());
            }
        }
        let lost = |run: &str| {
            statuses
                .get(run)
                .and_then(|status| status.as_ref())
                .and_then(ExitStatus::code)
                == Some(79)
        };
        // The latest start line of each pid: the run a referee holder's pid belongs to.
        let mut run_of_pid: HashMap<i32, String> = HashMap::new();
        let mut started: HashMap<String, u64> = HashMap::new();
        // Each run's predecessor: the run that started last before it. When the referee's
        // holder is gone before the kernel can name it (`F_GETLK` then says pid 0), the
        // earlier section is that one (sections start one after another, but for overlaps).
        let mut previous: HashMap<String, String> = HashMap::new();
        let mut last_started: Option<String> = None;
        let mut begins = Vec::new();
        for (event, time) in &events {
            match event {
                Event::Start { run, pid, .. } => {
                    report.acquisitions += 1;
                    run_of_pid.insert(*pid, run.clone());
                    started.insert(run.clone(), *time);
                    if let Some(last) = last_started.replace(run.clone()) {
                        previous.insert(run.clone(), last);
                    }
                }
                Event::Begin { .. } => begins.push(*time),
                Event::End { .. } => report.completed += 1,
                Event::Overlap { run, holder, dying } => {
                    let earlier = run_of_pid
                        .get(holder)
                        .or_else(|| previous.get(run))
                        .cloned();
                    let status = earlier
                        .as_ref()
                        .and_then(|earlier| statuses.get(earlier))
                        .and_then(Option::as_ref);
                    // A server fault from about when the earlier hold was taken until now.
                    let since = earlier
                        .as_ref()
                        .map_or(0, |earlier| started[earlier])
                        .saturating_sub(ACQUIRED_BEFORE_START);
                    let faulted = faults.iter().any(|fault| {
                        fault.on_the_server() && fault.ended >= since && fault.begun <= *time
                    });
                    let row = (
                        earlier.unwrap_or_else(|| format!("pid {holder}")),
                        run.clone(),
                        describe(status),
                    );
                    let later = statuses.get(run).and_then(Option::as_ref);
                    let cause = Cause::of(status, later, faulted, *dying);
                    report.overlaps.entry(cause).or_default().push(row);
                }
                Event::Orphan { run } => {
                    if lost(run) {
                        report.orphans_after_loss += 1;
                    } else {
                        let status = describe(statuses.get(run).and_then(Option::as_ref));
                        report.orphans_unreported.push((run.clone(), status));
                    }
                }
            }
        }
        for fault in &faults {
            if let Some(next) = begins.iter().find(|begin| **begin > fault.ended) {
                report.recovery_ms.push((next - fault.ended) as f64 / 1e6);
            }
        }
        report
            .recovery_ms
            .sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
        report
    }

    fn percentile(&self, fraction: f64) -> String {
        if self.recovery_ms.is_empty() {
            return "-".into();
        }
        let index = ((self.recovery_ms.len() - 1) as f64 * fraction).round() as usize;
        format!("{:.0} ms", self.recovery_ms[index])
    }

    fn overlaps(&self, cause: Cause) -> &[(String, String, String)] {
        self.overlaps.get(&cause).map_or(&[], Vec::as_slice)
    }

    fn print(&self, torture: &Torture) {
        let kind = |kind| self.faults.get(&kind).copied().unwrap_or(0);
        let mut out = format!(
            "\n== torture {} ({} mode, {} workers, {:.0} s) {}\n",
            torture.label,
            if torture.mode.long { "long" } else { "short" },
            WORKERS,
            self.elapsed.as_secs_f64(),
            torture.url,
        );
        let exits = |status: &str| self.statuses.get(status).copied().unwrap_or(0);
        let overlaps = Cause::ALL.map(|cause| (cause.row(), count(self.overlaps(cause))));
        let rows = [
            ("acquisitions (sections started)", self.acquisitions),
            ("sections completed", self.completed),
            ("kills: command (SIGKILL)", kind(Chaos::KillCommand)),
            ("kills: tollgate (SIGKILL)", kind(Chaos::KillTollgate)),
            ("kills: server connection", kind(Chaos::KillConnection)),
            ("server restarts", kind(Chaos::RestartServer)),
        ]
        .into_iter()
        .chain(overlaps)
        .chain([
            (
                "COMMANDS WITHOUT LOCK (must be 0)",
                count(&self.orphans_unreported),
            ),
            ("commands on after a reported loss", self.orphans_after_loss),
            ("HUNG tollgate runs (must be 0)", count(&self.hung)),
            ("exits 69 (backend failed)", exits("69")),
            ("exits 75 (not acquired in time)", exits("75")),
            ("exits 79 (hold lost)", exits("79")),
        ])
        .map(|(what, value)| (what, value.to_string()));
        let recovery = [
            (
                "recovery, median (fault to next section)",
                self.percentile(0.5),
            ),
            ("recovery, p99", self.percentile(0.99)),
            ("recovery, max", self.percentile(1.0)),
        ];
        for (what, value) in rows.chain(recovery) {
            out.push_str(&format!("  {what:<52} {value:>8}\n"));
        }
        let statuses: Vec<String> = self
            .statuses
            .iter()
            .map(|(status, count)| format!("{status}: {count}"))
            .collect();
        out.push_str(&format!(
            "  tollgate exit statuses: {}\n",
            statuses.join(", ")
        ));
        for message in &self.backend_failures {
            out.push_str(&format!("  exit 69 said: {message}\n"));
        }
        for cause in Cause::ALL {
            // Every overlap that counts against tollgate, a few of the others.
            let shown = match cause {
                Cause::Unexplained | Cause::KilledTollgate | Cause::ServerFault => usize::MAX,
                Cause::Dying | Cause::FaultAfterKill => 10,
                Cause::LossReported => 0,
            };
            for (earlier, later, status) in self.overlaps(cause).iter().take(shown) {
                out.push_str(&format!(
                    "  {cause:?}: run {later} started while run {earlier} (tollgate status {status}) lived\n"
                ));
            }
        }
        for (run, status) in &self.orphans_unreported {
            out.push_str(&format!(
                "  WITHOUT LOCK: run {run} outlived its tollgate (status {status})\n"
            ));
        }
        print!("{out}");
    }

    fn check(&self, torture: &Torture) {
        let label = torture.label;
        // The command shares the hold's descriptors, so a SIGKILLed tollgate's lock goes only
        // with its command.
        assert!(
            self.overlaps(Cause::KilledTollgate).is_empty()
                && self.overlaps(Cause::Dying).is_empty(),
            "{label}: commands outlived their SIGKILLed tollgate's lock"
        );
        // A server fault that frees a hold is reported by its tollgate, while the command
        // runs or at the release, unless that tollgate was SIGKILLed already.
        assert!(
            self.overlaps(Cause::Unexplained).is_empty()
                && self.overlaps(Cause::ServerFault).is_empty(),
            "{label}: overlaps without a reported loss"
        );
        assert!(
            self.orphans_unreported.is_empty(),
            "{label}: commands ran without their lock"
        );
        assert!(
            self.hung.is_empty(),
            "{label}: tollgate runs hung: {:?}",
            self.hung
        );
        assert!(
            self.acquisitions >= 10,
            "{label}: only {} acquisitions",
            self.acquisitions
        );
    }
}

fn count<T>(items: &[T]) -> u64 {
    items.len() as u64
}

/// The distinct stderr lines of runs that exited 69, a few of them.
fn backend_failures(errors: &Path, statuses: &BTreeMap<String, Option<ExitStatus>>) -> Vec<String> {
    let mut found: BTreeMap<String, u64> = BTreeMap::new();
    for index in 0..WORKERS {
        let path = errors.join(format!("stderr-{index}.log"));
        let text = std::fs::read_to_string(path).unwrap_or_default();
        failures_in(&text, statuses, &mut found);
    }
    found
        .into_iter()
        .take(8)
        .map(|(message, count)| format!("{count} x {message}"))
        .collect()
}

/// Counts in `found` the stderr lines of `text` (one worker's) from runs that exited 69.
fn failures_in(
    text: &str,
    statuses: &BTreeMap<String, Option<ExitStatus>>,
    found: &mut BTreeMap<String, u64>,
) {
    let mut run = "";
    for line in text.lines() {
        if let Some(next) = line.strip_prefix("run ") {
            run = next;
        } else if statuses
            .get(run)
            .and_then(|status| status.as_ref())
            .and_then(ExitStatus::code)
            == Some(69)
        {
            // The lock's name and addresses differ from run to run; the rest says what failed.
            let message = line.replace(&*torture_name_in(line), "NAME");
            *found.entry(message).or_default() += 1;
        }
    }
}

/// The suite's lock name in `line`, if any (so that messages group).
fn torture_name_in(line: &str) -> String {
    line.split(['"', '\'', ' ', '`'])
        .find(|word| word.starts_with("torture-"))
        .unwrap_or("\u{0}")
        .to_string()
}

// ---------------------------------------------------------------------------------------
// One test per backend.

#[cfg(feature = "local")]
#[test]
fn local() {
    torture("local", Backend::Files("local:".into()));
}

#[cfg(feature = "local")]
#[test]
fn file() {
    let locks = tempfile::tempdir().expect("a lock directory");
    let url = format!("file://{}", locks.path().display());
    torture("file", Backend::Files(url));
}

/// PostgreSQL at `url`, its holders' sessions named so that they can be ended.
fn postgres_backend(url: &str, own: Option<SqlServer>) -> Backend {
    let application = unique("pg");
    let separator = if url.contains('?') { '&' } else { '?' };
    Backend::Postgres {
        url: format!("{url}{separator}application_name={application}"),
        application,
        own,
    }
}

#[cfg(feature = "postgres")]
#[test]
fn postgres() {
    torture("postgres", postgres_backend(&postgres_url(), None));
}

/// A PostgreSQL server of the suite's own, restarted too (skipped where none can be run).
#[cfg(feature = "postgres")]
#[test]
fn postgres_restarted() {
    let Some(server) = SqlServer::start(Engine::Postgres) else {
        println!("postgres_restarted: skipped, no PostgreSQL programs here");
        return;
    };
    let url = server.url();
    torture("postgres-restarted", postgres_backend(&url, Some(server)));
}

#[cfg(feature = "mysql")]
#[test]
fn mysql() {
    let url = mysql_url();
    torture("mysql", Backend::MySql { url, own: None });
}

/// A MariaDB server of the suite's own, restarted too (skipped where none can be run).
#[cfg(feature = "mysql")]
#[test]
fn mysql_restarted() {
    let Some(server) = SqlServer::start(Engine::MariaDb) else {
        println!("mysql_restarted: skipped, no MariaDB programs here");
        return;
    };
    let url = server.url();
    let own = Some(server);
    torture("mysql-restarted", Backend::MySql { url, own });
}

#[cfg(feature = "redis")]
#[test]
fn redis() {
    let servers = RedisServers::start(1);
    torture("redis", Backend::Redis { servers, next: 0 });
}

#[cfg(feature = "redis")]
#[test]
fn redlock() {
    let servers = RedisServers::start(3);
    torture("redlock", Backend::Redis { servers, next: 0 });
}

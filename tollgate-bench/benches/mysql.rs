//! Benchmarks of the MySQL / MariaDB backend, each beside the raw floor measured in the same run.
//!
//! ```text
//! cargo bench -p tollgate-bench --features mysql --bench mysql
//! ```
//!
//! The server is `TOLLGATE_MYSQL_URL`, by default `mysql://root@127.0.0.1:3306/test` (as for
//! the tests). mysql_async's default `prefer_socket` applies to every connection here, the
//! library's and the raw ones alike: on this host they all move to the server's Unix socket.
//!
//! 1. **Acquire + release, uncontended** (a tokio current-thread runtime for all): a
//!    `MySqlLock`'s `try_acquire().await` (and `acquire().await`) followed by
//!    `release().await`, so the release's round trip is inside the measurement. Beside it the
//!    raw floor on a warm mysql_async connection: `SELECT GET_LOCK(?, 0)` +
//!    `SELECT RELEASE_LOCK(?)` as prepared statements (`exec_first`, as the library sends
//!    them; mysql_async caches the prepared statement, so each is one round trip) and as text
//!    (`query_first`). A "replay" row sends the library's own two statements on a raw
//!    connection behind a `tokio::sync::Mutex`, with the `GET_LOCK` run on a spawned task
//!    and its result sent back on a oneshot channel, as the library runs every try. Then a
//!    `MySqlSemaphore` of max 3, uncontended, and with tickets 0 and 1 held by another
//!    provider, so that a try scans three tickets; beside that the raw scan, statement by
//!    statement and as one `CASE` statement.
//!
//!    Each round trip to the server wakes the server's thread for the connection and then
//!    this thread. When both run on the same CPU that is a pair of context switches; when
//!    they run on different CPUs, each wake-up reaches an idle CPU, which on a VM without
//!    guest halt-polling is several times dearer. Left alone, the scheduler keeps a
//!    connection in one case or the other for seconds and then moves it, so benchmarks run
//!    one after another (as criterion runs them) compare different machines. Here every row
//!    runs in short batches, interleaved round by round with all other rows, and before
//!    each batch this thread is pinned (`sched_setaffinity`, this thread only) to the CPU
//!    the connection's server thread last ran on, in even rounds, or to another CPU, in odd
//!    ones. Each batch is then classed by where this thread and the server thread
//!    (`information_schema.PROCESSLIST.TID`, `/proc/<mariadbd>/task/<tid>/stat`) were before
//!    and after it: same CPU, different CPUs, or mixed (left out). Medians are given per
//!    class, and the ratios compare rows within a class. Beside them: this thread's CPU
//!    time per operation (`CLOCK_THREAD_CPUTIME_ID`; everything client-side runs on it),
//!    and the server's statements per operation, from its global `Questions` counter around
//!    a separate pass of each row.
//! 2. **Hand-off between two processes**: this process (A) holds the lock while a partner
//!    process (B, this binary run again with `TOLLGATE_BENCH_PARTNER` set) is blocked in
//!    `acquire()`, waiting in the server. Before each release A polls
//!    `information_schema.PROCESSLIST`, pausing 300 µs before each look (so that B reaches its
//!    wait undisturbed and is idle, as a waiter is), until B's connection is in the state `User
//!    lock` (which the server enters only once the request is queued on the lock), so every
//!    round measures a real wake-up. B's connection is the one `IS_USED_LOCK` named as the
//!    holder in the round before (in the first, warm-up round: any connection waiting in
//!    `GET_LOCK`). A reads `CLOCK_MONOTONIC` right before it releases (`release().await`); B
//!    reads it right after its acquire returns and reports it on its stdout. The same is done
//!    with the raw floor: B blocked in a bare `SELECT GET_LOCK(name, 60)` on its own
//!    connection, A runs `SELECT RELEASE_LOCK(name)`, both as prepared statements and as text;
//!    with the library's statement sequence on a bare connection (`GET_LOCK(name, 0)`, then
//!    `GET_LOCK(name, 60)`); and tollgate → raw and raw → tollgate, which tell the holder's
//!    release from the waiter's wake-up. The six pairs run interleaved, round by round, each on
//!    a name of its own. As above, each wake-up costs more when it crosses to the other CPU, so
//!    the rounds are also classed by which of the three wake-ups of a hand-off (A → A's server
//!    thread, A's server thread → B's server thread, B's server thread → B) crossed CPUs, from
//!    the CPUs B and A report and `/proc` gives for the two server threads.
//!
//! 3. **Contention**: 8 tasks of this process on a multi-threaded runtime, each looping
//!    `acquire().await` + `release().await` of one name for 3 s (one provider, its pool),
//!    against the floor: a raw connection per task, each blocking in the server in a prepared
//!    `SELECT GET_LOCK(?, 60)` and then `SELECT RELEASE_LOCK(?)`; four rounds, alternating,
//!    in acquisitions per second.
//!
//! The tables of the first two sections are printed in a summary at the end.
//!
//! Under `cargo test --benches` every row runs once and the hand-off only a few rounds. A
//! filter argument (`cargo bench … -- handoff`, `-- uncontended` or `-- contention`) runs one
//! section.

use std::io::BufRead;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use tokio::runtime::Runtime;
use tollgate::backend::mysql::{MySqlHandle, MySqlLock, MySqlProvider, MySqlSemaphore};
use tollgate::{Acquire, Handle, LockProvider, SemaphoreProvider};
use tollgate_bench::args::BenchArgs;
use tollgate_bench::clock::{monotonic_ns, thread_cpu_ns};
use tollgate_bench::contention;
use tollgate_bench::current_thread;
use tollgate_bench::cycle::{acquire_release, try_acquire_release};
use tollgate_bench::handoff::{latency, Latencies, LATENCY_COLUMNS};
use tollgate_bench::interleave::rotation;
use tollgate_bench::partner::{die_with_parent, say, Partner};
use tollgate_bench::placement::{allowed_cpus, last_cpu, pin_this_thread, this_cpu};
use tollgate_bench::stats::median;
use tollgate_bench::table::{format_ns, format_us, Table};

const URL_ENV: &str = "TOLLGATE_MYSQL_URL";
const DEFAULT_URL: &str = "mysql://root@127.0.0.1:3306/test";

/// Lower case and at most 64 characters, so the library uses these names as they are.
const UNCONTENDED_NAME: &str = "tollgate-bench-uncontended";
const FLOOR_NAME: &str = "tollgate-bench-floor";
const REPLAY_NAME: &str = "tollgate-bench-replay";
const SEMAPHORE_NAME: &str = "tollgate-bench-semaphore";
const BUSY_SEMAPHORE_NAME: &str = "tollgate-bench-semaphore-busy";
const FLOOR_TICKETS: [&str; 3] = [
    "tollgate-bench-ticket-0",
    "tollgate-bench-ticket-1",
    "tollgate-bench-ticket-2",
];
const HANDOFF_NAME: &str = "tollgate-bench-handoff";

/// Operations per batch of the uncontended section.
const BATCH: u64 = 50;
/// Rounds (one batch of every row) run before the measured ones.
const WARMUP_ROUNDS: usize = 5;
/// The measured rounds stop after this long, or after `MAX_ROUNDS`.
const UNCONTENDED_TIME: Duration = Duration::from_secs(30);
const MAX_ROUNDS: usize = 2000;
/// Operations per row in the statement-counting pass.
const COUNTED_OPERATIONS: u64 = 500;
const HANDOFF_ROUNDS: usize = 1000;
const HANDOFF_WARMUP: usize = 100;
/// How long A pauses before each look at the process list.
const POLL_PAUSE: Duration = Duration::from_micros(300);

/// The library's statements (`Connection::get_lock` / `release_lock` in the backend).
const LIBRARY_GET_LOCK: &str = "SELECT GET_LOCK(?, ?)";
const LIBRARY_RELEASE_LOCK: &str = "SELECT RELEASE_LOCK(?)";
const FLOOR_GET_LOCK: &str = "SELECT GET_LOCK(?, 0)";
/// The floor's wait in the server, for the contention section.
const FLOOR_BLOCKING_GET_LOCK: &str = "SELECT GET_LOCK(?, 60)";
/// Takes the first free one of three names in one statement (`CASE` stops at the first
/// `WHEN` that holds): 0, 1 or 2, or -1 when all are busy.
const FLOOR_CASE_SCAN: &str = "SELECT CASE WHEN GET_LOCK(?, 0) = 1 THEN 0 \
     WHEN GET_LOCK(?, 0) = 1 THEN 1 WHEN GET_LOCK(?, 0) = 1 THEN 2 ELSE -1 END";
/// The connections waiting in `GET_LOCK` (the state is `User lock` only while the request
/// is queued on the lock).
const WAITING_SQL: &str = "SELECT ID FROM information_schema.PROCESSLIST \
     WHERE STATE LIKE 'User lock%' AND INFO LIKE '%GET_LOCK%'";

fn main() {
    tollgate_bench::run(partner, bench);
}

/// The benchmarks (this process is A).
fn bench(args: BenchArgs) {
    if args.answer_list(&["uncontended", "handoff", "contention"]) {
        return;
    }
    let testing = args.testing();
    let url = server_url();
    let runtime = current_thread();
    runtime.block_on(print_server(&url));
    let rows = args
        .selects("uncontended")
        .then(|| uncontended(&runtime, &url, testing));
    let (rounds, warmup) = if testing {
        (3, 1)
    } else {
        (HANDOFF_ROUNDS, HANDOFF_WARMUP)
    };
    let results = args
        .selects("handoff")
        .then(|| handoff(&url, rounds, warmup));

    println!("\n==================== Summary ====================\n");
    if let Some(rows) = rows {
        print_uncontended_summary(&rows);
    }
    if let Some(results) = results {
        print_handoff_summary(&results, rounds, warmup);
    }
    if args.selects("contention") {
        let (rounds, span) = contention::rounds_and_span(testing);
        contention(&url, rounds, span);
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Contention: tasks of one process taking turns on one name.

/// [`contention::TASKS`] tasks on a multi-threaded runtime, each looping acquire + release
/// of one name for `span`: acquisitions per second, tollgate (one provider, its pool) against
/// the floor (a raw connection per task, each `SELECT GET_LOCK(?, 60)` blocking in the server
/// + `SELECT RELEASE_LOCK(?)`, prepared), alternating for `rounds` rounds.
fn contention(url: &str, rounds: usize, span: Duration) {
    contention::compare(
        rounds,
        span,
        |round| contend_tollgate(url, round, span),
        |round| contend_floor(url, round, span),
    );
}

/// Acquisitions per second of tollgate tasks contending for one lock.
async fn contend_tollgate(url: &str, round: usize, span: Duration) -> f64 {
    let provider = MySqlProvider::from_url(url).expect("provider");
    let name = format!("tollgate-bench-contention-{round}");
    let locks = (0..contention::TASKS)
        .map(|_| provider.lock(&name).expect("lock"))
        .collect();
    contention::tollgate_turns(locks, span).await
}

/// Acquisitions per second of raw connections contending for one named lock.
async fn contend_floor(url: &str, round: usize, span: Duration) -> f64 {
    let name = format!("tollgate-bench-contention-floor-{round}");
    let mut connections = Vec::new();
    for _ in 0..contention::TASKS {
        let mut conn = raw_conn(url).await;
        // Warm: both statements prepared (mysql_async caches them per connection).
        assert_eq!(
            exec_int(&mut conn, FLOOR_BLOCKING_GET_LOCK, (&name,)).await,
            1
        );
        assert_eq!(exec_int(&mut conn, LIBRARY_RELEASE_LOCK, (&name,)).await, 1);
        connections.push((conn, name.clone()));
    }
    contention::turns(connections, span, |(mut conn, name)| async move {
        assert_eq!(
            exec_int(&mut conn, FLOOR_BLOCKING_GET_LOCK, (&name,)).await,
            1
        );
        assert_eq!(exec_int(&mut conn, LIBRARY_RELEASE_LOCK, (&name,)).await, 1);
        (conn, name)
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Helpers.

fn server_url() -> String {
    tollgate_bench::args::server_url(URL_ENV, DEFAULT_URL)
}

async fn raw_conn(url: &str) -> Conn {
    Conn::from_url(url).await.expect("connect to MySQL")
}

/// A one-column integer result that must not be NULL.
async fn exec_int<P>(conn: &mut Conn, sql: &str, params: P) -> i64
where
    P: Into<mysql_async::Params> + Send,
{
    let value: Option<Option<i64>> = conn.exec_first(sql, params).await.expect(sql);
    value.flatten().unwrap_or_else(|| panic!("{sql}: NULL"))
}

async fn query_int(conn: &mut Conn, sql: &str) -> i64 {
    let value: Option<Option<i64>> = conn.query_first(sql).await.expect(sql);
    value.flatten().unwrap_or_else(|| panic!("{sql}: NULL"))
}

/// The server's count of statements executed, over all sessions.
async fn server_questions(monitor: &mut Conn) -> u64 {
    let row: Option<(String, String)> = monitor
        .query_first("SHOW GLOBAL STATUS LIKE 'Questions'")
        .await
        .expect("SHOW GLOBAL STATUS");
    row.and_then(|(_, value)| value.parse().ok())
        .expect("Questions")
}

async fn print_server(url: &str) {
    let mut conn = raw_conn(url).await;
    let version: Option<String> = conn.query_first("SELECT VERSION()").await.expect("version");
    let host: Option<String> = conn
        .query_first("SELECT HOST FROM information_schema.PROCESSLIST WHERE ID = CONNECTION_ID()")
        .await
        .expect("own host");
    let host = host.unwrap_or_default();
    let transport = if host.starts_with("localhost") {
        "the Unix socket (mysql_async prefer_socket)"
    } else {
        "TCP"
    };
    println!(
        "{} at {url}: connections use {transport} (the server sees host {host:?})",
        version.unwrap_or_default()
    );
    let halt_poll = std::fs::read_to_string("/sys/module/haltpoll/parameters/guest_halt_poll_ns")
        .map_or("-".to_owned(), |value| value.trim().to_owned());
    println!(
        "{} CPUs; cpuidle driver {}; guest_halt_poll_ns {halt_poll}\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/sys/devices/system/cpu/cpuidle/current_driver")
            .map_or("-".to_owned(), |value| value.trim().to_owned()),
    );
    drop(conn.disconnect().await);
}

// ---------------------------------------------------------------------------------------------
// Where threads run.

/// The server process and the thread that serves one connection, to see on which CPU it
/// last ran.
#[derive(Clone)]
struct ServerThread {
    stat_path: Option<String>,
}

impl ServerThread {
    /// The server thread of connection `id` (`None`: this connection), if `/proc` shows it.
    async fn of(monitor: &mut Conn, id: Option<u64>) -> ServerThread {
        let pid_file: Option<String> = monitor
            .query_first("SELECT @@pid_file")
            .await
            .expect("@@pid_file");
        let pid = pid_file
            .and_then(|file| std::fs::read_to_string(file).ok())
            .and_then(|pid| pid.trim().parse::<u32>().ok());
        let tid: Option<Option<u64>> = match id {
            Some(id) => monitor
                .exec_first(
                    "SELECT TID FROM information_schema.PROCESSLIST WHERE ID = ?",
                    (id,),
                )
                .await
                .expect("TID"),
            None => monitor
                .query_first(
                    "SELECT TID FROM information_schema.PROCESSLIST WHERE ID = CONNECTION_ID()",
                )
                .await
                .expect("TID"),
        };
        let stat_path = match (pid, tid.flatten()) {
            (Some(pid), Some(tid)) => Some(format!("/proc/{pid}/task/{tid}/stat")),
            _ => None,
        };
        let thread = ServerThread { stat_path };
        ServerThread {
            stat_path: thread.cpu().and(thread.stat_path),
        }
    }

    /// The CPU the thread last ran on.
    fn cpu(&self) -> Option<usize> {
        last_cpu(self.stat_path.as_ref()?)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Placement {
    /// This thread and the server thread were on the same CPU before and after the batch.
    SameCpu,
    /// On different CPUs before and after.
    CrossCpu,
    /// The one before, the other after.
    Mixed,
    /// `/proc` does not show the server thread (a remote server).
    Unknown,
}

/// Whether this thread and the server thread are on the same CPU.
fn placement(server: &ServerThread) -> Option<bool> {
    let ours = this_cpu();
    server.cpu().map(|theirs| theirs == ours)
}

fn classify(before: Option<bool>, after: Option<bool>) -> Placement {
    match (before, after) {
        (Some(true), Some(true)) => Placement::SameCpu,
        (Some(false), Some(false)) => Placement::CrossCpu,
        (Some(_), Some(_)) => Placement::Mixed,
        _ => Placement::Unknown,
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Acquire + release, uncontended.

/// What one row does per operation.
enum Op {
    TollgateTry(MySqlLock),
    TollgateAcquire(MySqlLock),
    FloorPrepared,
    FloorText,
    Replay,
    SemaphoreFree(MySqlSemaphore),
    SemaphoreBusy(MySqlSemaphore),
    FloorScan,
    FloorCaseScan,
}

struct Row {
    group: &'static str,
    name: &'static str,
    op: Op,
    server: ServerThread,
    /// Time per operation of each measured batch, and where it ran.
    batches: Vec<(f64, Placement)>,
    /// CPU time of this thread per operation, each measured batch, and where it ran.
    client_cpu: Vec<(f64, Placement)>,
    statements: Option<f64>,
}

const FLOOR_PREPARED: &str = "floor: prepared GET_LOCK + RELEASE_LOCK";

impl Row {
    fn medians(&self, class: Option<Placement>) -> (Option<f64>, usize) {
        let values: Vec<f64> = self
            .batches
            .iter()
            .filter(|(_, placement)| class.is_none_or(|class| *placement == class))
            .map(|(ns, _)| *ns)
            .collect();
        (median(&values), values.len())
    }

    /// The median CPU time of this thread per operation, in batches of one class.
    fn client_cpu(&self, class: Placement) -> Option<f64> {
        let values: Vec<f64> = self
            .client_cpu
            .iter()
            .filter(|(_, placement)| *placement == class)
            .map(|(ns, _)| *ns)
            .collect();
        median(&values)
    }
}

/// Runs `iterations` operations of `op`; the time they took.
async fn run(op: &Op, conn: &Arc<tokio::sync::Mutex<Conn>>, iterations: u64) -> Duration {
    match op {
        Op::TollgateTry(lock) | Op::TollgateAcquire(lock) => {
            let wait = matches!(op, Op::TollgateAcquire(_));
            let start = Instant::now();
            for _ in 0..iterations {
                if wait {
                    acquire_release(lock).await;
                } else {
                    try_acquire_release(lock).await;
                }
            }
            start.elapsed()
        }
        Op::SemaphoreFree(semaphore) | Op::SemaphoreBusy(semaphore) => {
            let start = Instant::now();
            for _ in 0..iterations {
                try_acquire_release(semaphore).await;
            }
            start.elapsed()
        }
        Op::FloorPrepared => {
            let mut conn = conn.lock().await;
            let start = Instant::now();
            for _ in 0..iterations {
                let taken = exec_int(&mut conn, FLOOR_GET_LOCK, (FLOOR_NAME,)).await;
                assert_eq!(taken, 1, "the floor's name is free");
                let released = exec_int(&mut conn, LIBRARY_RELEASE_LOCK, (FLOOR_NAME,)).await;
                assert_eq!(released, 1, "the floor's name was held");
            }
            start.elapsed()
        }
        Op::FloorText => {
            let get = format!("SELECT GET_LOCK('{FLOOR_NAME}', 0)");
            let release = format!("SELECT RELEASE_LOCK('{FLOOR_NAME}')");
            let mut conn = conn.lock().await;
            let start = Instant::now();
            for _ in 0..iterations {
                assert_eq!(query_int(&mut conn, &get).await, 1, "free");
                assert_eq!(query_int(&mut conn, &release).await, 1, "held");
            }
            start.elapsed()
        }
        // The library's statements and task structure, without the library: the connection
        // behind a tokio mutex taken per statement, GET_LOCK(name, 0.0) on a spawned task
        // whose result comes back on a oneshot channel, RELEASE_LOCK awaited in place.
        Op::Replay => {
            let start = Instant::now();
            for _ in 0..iterations {
                let (sender, receiver) = tokio::sync::oneshot::channel();
                let task_conn = conn.clone();
                tokio::spawn(async move {
                    let mut conn = task_conn.lock().await;
                    let taken = exec_int(&mut conn, LIBRARY_GET_LOCK, (REPLAY_NAME, 0.0)).await;
                    let _ = sender.send(taken);
                });
                assert_eq!(receiver.await.expect("the task's result"), 1, "free");
                let mut conn = conn.lock().await;
                let released = exec_int(&mut conn, LIBRARY_RELEASE_LOCK, (REPLAY_NAME,)).await;
                assert_eq!(released, 1, "held");
            }
            start.elapsed()
        }
        Op::FloorScan => {
            let mut conn = conn.lock().await;
            let start = Instant::now();
            for _ in 0..iterations {
                let mut taken = None;
                for ticket in FLOOR_TICKETS {
                    if exec_int(&mut conn, FLOOR_GET_LOCK, (ticket,)).await == 1 {
                        taken = Some(ticket);
                        break;
                    }
                }
                assert_eq!(taken, Some(FLOOR_TICKETS[2]), "the third name is free");
                let released = exec_int(&mut conn, LIBRARY_RELEASE_LOCK, (FLOOR_TICKETS[2],)).await;
                assert_eq!(released, 1, "held");
            }
            start.elapsed()
        }
        Op::FloorCaseScan => {
            let tickets = (FLOOR_TICKETS[0], FLOOR_TICKETS[1], FLOOR_TICKETS[2]);
            let mut conn = conn.lock().await;
            let start = Instant::now();
            for _ in 0..iterations {
                let taken = exec_int(&mut conn, FLOOR_CASE_SCAN, tickets).await;
                assert_eq!(taken, 2, "the third name is free");
                let released = exec_int(&mut conn, LIBRARY_RELEASE_LOCK, (FLOOR_TICKETS[2],)).await;
                assert_eq!(released, 1, "held");
            }
            start.elapsed()
        }
    }
}

fn uncontended(runtime: &Runtime, url: &str, testing: bool) -> Vec<Row> {
    let mut monitor = runtime.block_on(raw_conn(url));
    let provider = MySqlProvider::from_url(url).expect("provider");
    let lock = provider.lock(UNCONTENDED_NAME).expect("lock");
    // The raw floors' connection (behind a mutex for the replay's spawned task; the other
    // floors lock it once per batch).
    let raw = runtime.block_on(raw_conn(url));
    let raw_id = u64::from(raw.id());
    let conn = Arc::new(tokio::sync::Mutex::new(raw));

    // The library's connection: the one that holds the lock while it is held.
    let library_server = runtime.block_on(async {
        let handle = lock
            .try_acquire()
            .await
            .expect("try_acquire")
            .expect("free");
        let holder: Option<Option<u64>> = monitor
            .exec_first("SELECT IS_USED_LOCK(?)", (UNCONTENDED_NAME,))
            .await
            .expect("IS_USED_LOCK");
        let server = ServerThread::of(&mut monitor, holder.flatten()).await;
        handle.release().await.expect("release");
        server
    });
    let raw_server = runtime.block_on(ServerThread::of(&mut monitor, Some(raw_id)));

    // Tickets 0 and 1 of the busy semaphore held by another provider (its own connection,
    // no keepalive pings during the run), so that every try of the bench's scans three.
    let holder = MySqlProvider::builder(url)
        .expect("builder")
        .keepalive(Some(Duration::from_secs(3600)))
        .build()
        .expect("provider");
    let held: Vec<MySqlHandle> = runtime.block_on(async {
        let other = holder.semaphore(BUSY_SEMAPHORE_NAME, 3).expect("semaphore");
        let mut held = Vec::new();
        for _ in 0..2 {
            held.push(
                other
                    .try_acquire()
                    .await
                    .expect("try_acquire")
                    .expect("a ticket"),
            );
        }
        held
    });
    // And the floor's first two names, by another raw connection.
    let mut ticket_holder = runtime.block_on(raw_conn(url));
    runtime.block_on(async {
        for ticket in &FLOOR_TICKETS[..2] {
            assert_eq!(
                exec_int(&mut ticket_holder, FLOOR_GET_LOCK, (*ticket,)).await,
                1
            );
        }
    });

    let row = |group, name, op, server: &ServerThread| Row {
        group,
        name,
        op,
        server: server.clone(),
        batches: Vec::new(),
        client_cpu: Vec::new(),
        statements: None,
    };
    let (lock_group, semaphore_group) = ("lock", "semaphore(3)");
    let mut rows = vec![
        row(
            lock_group,
            "tollgate try_acquire + release",
            Op::TollgateTry(lock.clone()),
            &library_server,
        ),
        row(
            lock_group,
            "tollgate acquire + release",
            Op::TollgateAcquire(lock.clone()),
            &library_server,
        ),
        row(lock_group, FLOOR_PREPARED, Op::FloorPrepared, &raw_server),
        row(
            lock_group,
            "floor: text GET_LOCK + RELEASE_LOCK",
            Op::FloorText,
            &raw_server,
        ),
        row(
            lock_group,
            "replay: prepared, GET_LOCK on a spawned task",
            Op::Replay,
            &raw_server,
        ),
        row(
            semaphore_group,
            "tollgate try_acquire + release, all free",
            Op::SemaphoreFree(provider.semaphore(SEMAPHORE_NAME, 3).expect("semaphore")),
            &library_server,
        ),
        row(
            semaphore_group,
            "tollgate try_acquire + release, 2 held",
            Op::SemaphoreBusy(
                provider
                    .semaphore(BUSY_SEMAPHORE_NAME, 3)
                    .expect("semaphore"),
            ),
            &library_server,
        ),
        row(
            semaphore_group,
            "floor: 3 × GET_LOCK + RELEASE_LOCK, 2 held",
            Op::FloorScan,
            &raw_server,
        ),
        row(
            semaphore_group,
            "floor: 1 CASE scan + RELEASE_LOCK, 2 held",
            Op::FloorCaseScan,
            &raw_server,
        ),
    ];

    let (batch, warmup) = if testing {
        (1, 0)
    } else {
        (BATCH, WARMUP_ROUNDS)
    };
    let max_rounds = if testing { 1 } else { MAX_ROUNDS };
    println!(
        "Acquire + release, uncontended: {} rows interleaved in batches of {batch} operations, \
         rotating the order each round, for {} s after {warmup} warm-up rounds",
        rows.len(),
        if testing {
            0
        } else {
            UNCONTENDED_TIME.as_secs()
        }
    );
    println!(
        "Before each batch this thread is pinned to the CPU the connection's server thread \
         last ran on (even rounds) or to another CPU (odd rounds); a batch is then classed by \
         where both were before and after it."
    );
    let cpus = allowed_cpus();
    let start = Instant::now();
    let mut rounds = 0;
    for round in 0..warmup + max_rounds {
        if round == warmup {
            rounds = 0;
        }
        if round >= warmup && start.elapsed() > UNCONTENDED_TIME {
            break;
        }
        let same_cpu = round % 2 == 0;
        for index in rotation(round, rows.len()) {
            let row = &mut rows[index];
            // Move to the server thread's CPU, or off it.
            if let Some(server_cpu) = row.server.cpu() {
                let target = if same_cpu {
                    Some(server_cpu)
                } else {
                    cpus.iter().copied().find(|&cpu| cpu != server_cpu)
                };
                if let Some(target) = target {
                    pin_this_thread(&[target]);
                }
            }
            let before = placement(&row.server);
            let cpu_start = thread_cpu_ns();
            let elapsed = runtime.block_on(run(&row.op, &conn, batch));
            let cpu_time = thread_cpu_ns() - cpu_start;
            let after = placement(&row.server);
            if round >= warmup {
                let per_operation = elapsed.as_nanos() as f64 / batch as f64;
                row.batches.push((per_operation, classify(before, after)));
                row.client_cpu
                    .push((cpu_time as f64 / batch as f64, classify(before, after)));
            }
        }
        rounds += 1;
    }
    pin_this_thread(&cpus);
    if !testing {
        // The statements the server executed per operation, row by row.
        runtime.block_on(async {
            for row in &mut rows {
                let before = server_questions(&mut monitor).await;
                run(&row.op, &conn, COUNTED_OPERATIONS).await;
                let after = server_questions(&mut monitor).await;
                // Less the one `SHOW GLOBAL STATUS` of the "after" reading.
                row.statements =
                    Some(after.saturating_sub(before + 1) as f64 / COUNTED_OPERATIONS as f64);
            }
        });
    }
    println!(
        "{rounds} measured rounds; the library used {} connection(s)\n",
        provider.connection_count()
    );

    runtime.block_on(async {
        for handle in held {
            handle.release().await.expect("release");
        }
        drop(ticket_holder.disconnect().await);
        drop(monitor.disconnect().await);
    });
    rows
}

fn print_uncontended_summary(rows: &[Row]) {
    let floor = rows
        .iter()
        .find(|row| row.name == FLOOR_PREPARED)
        .expect("the prepared floor");
    let classes = [
        ("same CPU", Some(Placement::SameCpu)),
        ("different CPUs", Some(Placement::CrossCpu)),
    ];
    println!(
        "Acquire + release, uncontended: median time per operation by where this thread and \
         the connection's server thread ran; × = ratio to the prepared floor in the same class\n"
    );
    let table = Table::new(&[13, 46], &[22, 22, 14, 14]);
    let mut header = vec!["group", "row"];
    header.extend(classes.iter().map(|(label, _)| *label));
    header.extend(["CPU/op, same", "statements/op"]);
    table.print(&header);
    for row in rows {
        let mut cells = vec![row.group.to_owned(), row.name.to_owned()];
        for (_, class) in &classes {
            let (median, count) = row.medians(*class);
            let (floor_median, _) = floor.medians(*class);
            let cell = match (median, floor_median) {
                (Some(median), Some(floor)) => {
                    format!("{} {:.2}× ({count})", format_ns(median), median / floor)
                }
                (Some(median), None) => format!("{} ({count})", format_ns(median)),
                _ => "-".to_owned(),
            };
            cells.push(cell);
        }
        cells.push(
            row.client_cpu(Placement::SameCpu)
                .map_or("-".to_owned(), format_ns),
        );
        cells.push(row.statements.map_or("-".to_owned(), |n| format!("{n:.2}")));
        table.print(&cells);
    }
    let mixed: usize = rows
        .iter()
        .map(|row| row.medians(Some(Placement::Mixed)).1)
        .sum();
    let unknown: usize = rows
        .iter()
        .map(|row| row.medians(Some(Placement::Unknown)).1)
        .sum();
    println!(
        "\n(in parentheses: batches in the class; {mixed} batches changed placement midway, \
         {unknown} could not be placed; CPU/op, same: this thread's CPU time, user and \
         system, per operation, median over the same-CPU batches; statements/op: the \
         server's global Questions counter over {COUNTED_OPERATIONS} more operations per \
         row, which other sessions' statements would raise)\n"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Hand-off between two processes.

/// How one side of a hand-off takes and gives back the lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `MySqlLock::acquire()` / `release().await`.
    Tollgate,
    /// `SELECT GET_LOCK(?, 60)` / `SELECT RELEASE_LOCK(?)`, prepared (`exec_first`).
    RawPrepared,
    /// The same as text (`query_first`).
    RawText,
    /// The library's sequence on a bare connection: `GET_LOCK(?, ?)` with 0 seconds, then
    /// (busy) with 60 seconds, prepared; released as `RawPrepared`.
    RawTryThenWait,
}

/// A holder (A) and a waiter (B), each pair on a lock name of its own, since the pairs run
/// interleaved.
#[derive(Clone, Copy, Debug)]
struct Mode {
    holder: Kind,
    waiter: Kind,
    role: &'static str,
    label: &'static str,
    lock_name: &'static str,
}

impl Mode {
    const ALL: [Mode; 6] = [
        Mode {
            holder: Kind::Tollgate,
            waiter: Kind::Tollgate,
            role: "tollgate",
            label: "tollgate → tollgate",
            lock_name: HANDOFF_NAME,
        },
        Mode {
            holder: Kind::RawPrepared,
            waiter: Kind::RawPrepared,
            role: "raw-prepared",
            label: "floor: raw → raw, prepared",
            lock_name: "tollgate-bench-handoff-raw-prepared",
        },
        Mode {
            holder: Kind::RawText,
            waiter: Kind::RawText,
            role: "raw-text",
            label: "floor: raw → raw, text",
            lock_name: "tollgate-bench-handoff-raw-text",
        },
        Mode {
            holder: Kind::RawPrepared,
            waiter: Kind::RawTryThenWait,
            role: "raw-try-then-wait",
            label: "raw → raw, B tries first",
            lock_name: "tollgate-bench-handoff-raw-try",
        },
        Mode {
            holder: Kind::Tollgate,
            waiter: Kind::RawPrepared,
            role: "tollgate-to-raw",
            label: "tollgate → raw (prepared)",
            lock_name: "tollgate-bench-handoff-tollgate-raw",
        },
        Mode {
            holder: Kind::RawPrepared,
            waiter: Kind::Tollgate,
            role: "raw-to-tollgate",
            label: "raw (prepared) → tollgate",
            lock_name: "tollgate-bench-handoff-raw-tollgate",
        },
    ];

    fn from_role(role: &str) -> Mode {
        Mode::ALL
            .into_iter()
            .find(|mode| mode.role == role)
            .unwrap_or_else(|| panic!("unknown partner role {role:?}"))
    }
}

/// The lock one process of the hand-off takes and gives back.
enum Side {
    Tollgate {
        lock: MySqlLock,
        held: Option<MySqlHandle>,
        /// Keeps the pool open.
        _provider: MySqlProvider,
    },
    Raw {
        kind: Kind,
        name: &'static str,
        conn: Conn,
    },
}

impl Side {
    async fn new(kind: Kind, name: &'static str, url: &str) -> Side {
        match kind {
            Kind::Tollgate => {
                let provider = MySqlProvider::from_url(url).expect("provider");
                Side::Tollgate {
                    // Lower case and short: the library's GET_LOCK name is the name itself.
                    lock: provider.lock(name).expect("lock"),
                    held: None,
                    _provider: provider,
                }
            }
            Kind::RawPrepared | Kind::RawText | Kind::RawTryThenWait => Side::Raw {
                kind,
                name,
                conn: raw_conn(url).await,
            },
        }
    }

    /// Takes the lock, waiting in the server.
    async fn acquire(&mut self) {
        match self {
            Side::Tollgate { lock, held, .. } => {
                *held = Some(lock.acquire().await.expect("acquire"));
            }
            Side::Raw { kind, name, conn } => {
                let name = *name;
                let taken = match kind {
                    Kind::RawText => {
                        query_int(conn, &format!("SELECT GET_LOCK('{name}', 60)")).await
                    }
                    Kind::RawTryThenWait => {
                        match exec_int(conn, LIBRARY_GET_LOCK, (name, 0.0)).await {
                            1 => 1,
                            _ => exec_int(conn, LIBRARY_GET_LOCK, (name, 60.0)).await,
                        }
                    }
                    _ => exec_int(conn, "SELECT GET_LOCK(?, 60)", (name,)).await,
                };
                assert_eq!(taken, 1, "GET_LOCK timed out");
            }
        }
    }

    /// Reads the clock, then gives the lock back and waits for the server's answer; returns
    /// the reading and the CPU this thread was on.
    async fn release(&mut self) -> (u64, usize) {
        match self {
            Side::Tollgate { held, .. } => {
                let handle = held.take().expect("held");
                let cpu = this_cpu();
                let now = monotonic_ns();
                handle.release().await.expect("release");
                (now, cpu)
            }
            Side::Raw { kind, name, conn } => {
                let name = *name;
                let text = format!("SELECT RELEASE_LOCK('{name}')");
                let cpu = this_cpu();
                let now = monotonic_ns();
                let released = if *kind == Kind::RawText {
                    query_int(conn, &text).await
                } else {
                    exec_int(conn, LIBRARY_RELEASE_LOCK, (name,)).await
                };
                assert_eq!(released, 1, "the raw name was held");
                (now, cpu)
            }
        }
    }
}

/// How A knew that B was waiting before a release.
#[derive(Default)]
struct Confirmations {
    /// Polls of the process list, all rounds together.
    polls: usize,
    /// Rounds in which B's own connection (known from the round before) was seen waiting.
    by_connection: usize,
    /// Rounds in which some connection was seen waiting in `GET_LOCK` but B's was not known,
    /// or was not seen within 2 s (a new connection).
    by_any: usize,
}

/// Polls the process list, pausing before each look, until B's connection (`waiter`, when
/// known) waits in `GET_LOCK`.
async fn wait_until_blocked(
    monitor: &mut Conn,
    waiter: Option<u64>,
    confirmations: &mut Confirmations,
) {
    let start = Instant::now();
    loop {
        // A pause before each look, so that B gets to its wait without A's polling in the
        // way (nothing else runs on this runtime meanwhile that matters to the round).
        std::thread::sleep(POLL_PAUSE);
        confirmations.polls += 1;
        let waiting: Vec<u64> = monitor
            .exec(WAITING_SQL, ())
            .await
            .expect("poll the process list");
        match waiter {
            Some(id) if waiting.contains(&id) => {
                confirmations.by_connection += 1;
                return;
            }
            Some(_) if start.elapsed() < Duration::from_secs(2) => {}
            _ if !waiting.is_empty() => {
                confirmations.by_any += 1;
                return;
            }
            _ => {}
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the partner never waited in GET_LOCK"
        );
    }
}

/// The connection that holds `name`, and its server thread.
async fn holder_thread(
    monitor: &mut Conn,
    name: &str,
    threads: &mut std::collections::HashMap<u64, ServerThread>,
) -> (u64, ServerThread) {
    let holder: Option<Option<u64>> = monitor
        .exec_first("SELECT IS_USED_LOCK(?)", (name,))
        .await
        .expect("IS_USED_LOCK");
    let id = holder.flatten().expect("someone holds the lock");
    if let Some(thread) = threads.get(&id) {
        return (id, thread.clone());
    }
    let thread = ServerThread::of(monitor, Some(id)).await;
    threads.insert(id, thread.clone());
    (id, thread)
}

/// Which wake-ups of a hand-off crossed from one CPU to another: bit 2 A → A's server
/// thread, bit 1 A's server thread → B's server thread, bit 0 B's server thread → B.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Crossings(u8);

impl Crossings {
    fn label(self) -> String {
        if self.0 == 0 {
            return "none (all on one CPU)".to_owned();
        }
        let hops = [
            (4, "A→A's server"),
            (2, "A's server→B's server"),
            (1, "B's server→B"),
        ];
        hops.iter()
            .filter(|(bit, _)| self.0 & bit != 0)
            .map(|(_, hop)| *hop)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// One kind of waiter, its partner process and its results, during the interleaved rounds.
struct Contestant {
    mode: Mode,
    /// A's side.
    side: Side,
    partner: Partner,
    /// B's connection, as `IS_USED_LOCK` named it in the round before.
    waiter: Option<u64>,
    /// The server thread of A's connection that holds the lock.
    holder: ServerThread,
    result: HandoffResult,
}

/// What one pair measured.
struct HandoffResult {
    mode: Mode,
    /// Latency, and which of the three wake-ups (A → A's server thread → B's server
    /// thread → B) crossed from one CPU to another, when `/proc` tells (see [`Crossings`]).
    rounds: Vec<(u64, Option<Crossings>)>,
    confirmations: Confirmations,
}

impl HandoffResult {
    /// The latencies of the rounds with `crossings` (`None`: all rounds).
    fn latencies(&self, crossings: Option<Crossings>) -> Latencies {
        Latencies::new(
            self.rounds
                .iter()
                .filter(|(_, crossed)| crossings.is_none() || *crossed == crossings)
                .map(|(ns, _)| *ns)
                .collect(),
        )
    }
}

fn handoff(url: &str, rounds: usize, warmup: usize) -> Vec<HandoffResult> {
    println!(
        "Hand-off: {} pairs interleaved, {rounds} rounds each after {warmup} warm-up rounds",
        Mode::ALL.len()
    );
    let runtime = current_thread();
    let mut monitor = runtime.block_on(raw_conn(url));
    let mut threads = std::collections::HashMap::new();
    let mut contestants: Vec<Contestant> = Mode::ALL
        .into_iter()
        .map(|mode| {
            let mut side = runtime.block_on(Side::new(mode.holder, mode.lock_name, url));
            let partner = Partner::spawn(mode.role, [(URL_ENV, url)]);
            runtime.block_on(side.acquire());
            let (_, holder) =
                runtime.block_on(holder_thread(&mut monitor, mode.lock_name, &mut threads));
            Contestant {
                mode,
                side,
                partner,
                waiter: None,
                holder,
                result: HandoffResult {
                    mode,
                    rounds: Vec::with_capacity(rounds),
                    confirmations: Confirmations::default(),
                },
            }
        })
        .collect();
    for round in 0..warmup + rounds {
        for index in rotation(round, contestants.len()) {
            let contestant = &mut contestants[index];
            contestant.partner.start_waiting();
            let (released, a_cpu) = runtime.block_on(async {
                wait_until_blocked(
                    &mut monitor,
                    contestant.waiter,
                    &mut contestant.result.confirmations,
                )
                .await;
                contestant.side.release().await
            });
            let line = contestant.partner.read_line();
            let (acquired, b_cpu) = line.split_once(' ').expect("a timestamp and a CPU");
            let acquired: u64 = acquired.parse().expect("a timestamp");
            let b_cpu: usize = b_cpu.parse().expect("a CPU");
            let round_ns = latency(released, acquired);
            // Where the two server threads last ran: A's on the release, B's on the answer
            // to B's GET_LOCK. Neither has run since.
            let a_server_cpu = contestant.holder.cpu();
            let (waiter, b_server) = runtime.block_on(holder_thread(
                &mut monitor,
                contestant.mode.lock_name,
                &mut threads,
            ));
            contestant.waiter = Some(waiter);
            let crossings = match (a_server_cpu, b_server.cpu()) {
                (Some(a_server), Some(b_server)) => Some(Crossings(
                    u8::from(a_cpu != a_server) << 2
                        | u8::from(a_server != b_server) << 1
                        | u8::from(b_server != b_cpu),
                )),
                _ => None,
            };
            if round >= warmup {
                contestant.result.rounds.push((round_ns, crossings));
            }
            // B lets go; A waits for that in the server.
            contestant.partner.send("release");
            runtime.block_on(contestant.side.acquire());
            let (_, holder) = runtime.block_on(holder_thread(
                &mut monitor,
                contestant.mode.lock_name,
                &mut threads,
            ));
            contestant.holder = holder;
        }
    }

    let mut results = Vec::new();
    runtime.block_on(async {
        for mut contestant in contestants {
            drop(contestant.partner);
            contestant.side.release().await;
            results.push(contestant.result);
        }
        drop(monitor.disconnect().await);
    });
    results
}

fn print_handoff_summary(results: &[HandoffResult], rounds: usize, warmup: usize) {
    println!("Hand-off between two processes: A releases → B (waiting in the server) holds");
    println!(
        "({rounds} rounds per pair after {warmup} warm-up rounds, the pairs interleaved \
         round by round; latency = t_B − t_A, CLOCK_MONOTONIC; before each release A saw B's \
         connection in the state 'User lock')\n"
    );
    let floor = results
        .iter()
        .find(|result| result.mode.role == "raw-prepared")
        .map(|result| result.latencies(None).percentile(50));
    let table = Table::new(&[38], &[10, 10, 10, 10, 10, 16, 12]);
    let mut header = vec!["holder (A) → waiter (B)"];
    header.extend(LATENCY_COLUMNS);
    header.extend(["× floor median", "polls/round"]);
    table.print(&header);
    for result in results {
        let latencies = result.latencies(None);
        let median = latencies.percentile(50);
        let mut cells = vec![result.mode.label.to_owned()];
        cells.extend(latencies.cells());
        cells.push(floor.map_or("-".to_owned(), |floor| {
            format!("{:.2}×", median as f64 / floor as f64)
        }));
        cells.push(format!(
            "{:.1}",
            result.confirmations.polls as f64 / (rounds + warmup) as f64
        ));
        table.print(&cells);
    }
    println!(
        "\nMedian by the wake-ups that went from one CPU to another, of the three in a \
         hand-off: A → A's server thread (the release), A's server thread → B's server thread \
         (the lock is granted), B's server thread → B (GET_LOCK returns); rounds in \
         parentheses\n"
    );
    let table = Table::new(&[50], &vec![20; results.len()]);
    let mut header = vec!["CPU crossings"];
    header.extend(results.iter().map(|result| result.mode.role));
    table.print(&header);
    for pattern in 0..8 {
        let latencies: Vec<Latencies> = results
            .iter()
            .map(|result| result.latencies(Some(Crossings(pattern))))
            .collect();
        if latencies.iter().all(Latencies::is_empty) {
            continue;
        }
        let mut cells = vec![Crossings(pattern).label()];
        cells.extend(latencies.iter().map(|latencies| {
            if latencies.is_empty() {
                "-".to_owned()
            } else {
                format!(
                    "{} ({})",
                    format_us(latencies.percentile(50)),
                    latencies.len()
                )
            }
        }));
        table.print(&cells);
    }
    println!();
    for result in results {
        println!(
            "{}: B's own connection seen waiting before {} releases; any GET_LOCK waiter \
             (B's not yet known) before {}",
            result.mode.label, result.confirmations.by_connection, result.confirmations.by_any
        );
    }
    println!();
}

// ---------------------------------------------------------------------------------------------
// The partner process (B).

fn partner(role: &str) {
    die_with_parent();
    let mode = Mode::from_role(role);
    let runtime = current_thread();
    let mut side = runtime.block_on(Side::new(mode.waiter, mode.lock_name, &server_url()));
    say("ready");
    let mut lines = std::io::stdin().lock().lines();
    while let Some(Ok(line)) = lines.next() {
        if line != "go" {
            break;
        }
        say("waiting");
        let (acquired, cpu) = runtime.block_on(async {
            side.acquire().await;
            (monotonic_ns(), this_cpu())
        });
        say(&format!("{acquired} {cpu}"));
        // Hold until A has seen who holds the lock.
        match lines.next() {
            Some(Ok(line)) if line == "release" => {
                runtime.block_on(side.release());
            }
            _ => break,
        }
    }
}

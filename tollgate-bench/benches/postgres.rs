//! Benchmarks of the PostgreSQL backend, each beside the raw floor measured in the same run.
//!
//! ```text
//! cargo bench -p tollgate-bench --features postgres --bench postgres
//! ```
//!
//! The server is `TOLLGATE_POSTGRES_URL`, by default
//! `postgres://postgres@127.0.0.1:5432/test?sslmode=disable` (as for the tests).
//!
//! 1. **Uncontended acquire + release** (criterion, a tokio current-thread runtime for all):
//!    a `PostgresLock`'s `try_acquire().await` (and `acquire().await`) followed by
//!    `release().await`, so the unlock's round trip is inside the measurement. Beside it the
//!    raw floor on a warm tokio-postgres connection: `SELECT pg_try_advisory_lock(k)` +
//!    `SELECT pg_advisory_unlock(k)`, as prepared statements and as `simple_query` text (the
//!    library's form), and the peer crate `distributed-lock-postgres` (what
//!    `distributed-lock`'s `postgres` feature enables) on the same server. A summary table
//!    with the ratios is printed at the end.
//! 2. **Hand-off between two processes** (a custom section that prints a table): this process
//!    (A) holds the lock while a partner process (B, this binary run again with
//!    `TOLLGATE_BENCH_PARTNER` set) is blocked in `acquire()`, waiting in the server. Before
//!    each release A polls `pg_locks` until B's session (found by its `application_name`) has
//!    an advisory lock request that is not granted, so every round measures a real wake-up.
//!    A reads `CLOCK_MONOTONIC` right before it releases (`release().await`); B reads it right
//!    after its acquire returns and reports it on its stdout. The same is done with the raw
//!    floor (B blocked in a bare `SELECT pg_advisory_lock(k)`, A runs
//!    `SELECT pg_advisory_unlock(k)`) and with the peer crate.
//! 3. **Many held locks** (a partner process, so that its resident set counts nothing but
//!    this): 10,000 distinct names taken with `try_acquire` on one provider of the default
//!    pool size, one after another and then all at once; the sessions used, the growth of the
//!    resident set per handle (`/proc/self/statm`) and the time. If the server's shared lock
//!    table runs out ("out of shared memory"), the section says so and goes on with the
//!    largest count that fitted.
//!
//! A last note checks what the peer crate does with a handle that is dropped without
//! `release()`. Under `cargo test --benches` every benchmark runs once, the hand-off a few
//! rounds and the held-locks section with 100 locks. A criterion filter
//! (`cargo bench … -- lock`) skips the custom sections unless it matches "handoff" or "held".

use std::io::BufRead;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use distributed_lock_core::traits::{
    DistributedLock, LockHandle as _, LockProvider as DlLockProvider,
};
use distributed_lock_postgres::lock::PostgresDistributedLock;
use distributed_lock_postgres::PostgresLockProvider;
use tokio::runtime::Runtime;
use tokio_postgres::{Client, NoTls};
use tollgate::backend::postgres::{AdvisoryKey, PostgresLock, PostgresProvider, PostgresSemaphore};
use tollgate::{Acquire, Handle, LockProvider, SemaphoreProvider};
use tollgate_bench::args::{env_number, BenchArgs};
use tollgate_bench::clock::monotonic_ns;
use tollgate_bench::contention;
use tollgate_bench::current_thread;
use tollgate_bench::cycle::{acquire_release, try_acquire_release};
use tollgate_bench::handoff::{latency, Latencies, LATENCY_COLUMNS};
use tollgate_bench::interleave::rotation;
use tollgate_bench::partner::{die_with_parent, say, Partner};
use tollgate_bench::placement::last_cpu;
use tollgate_bench::stats::{upper_median, Samples};
use tollgate_bench::table::{format_ns, Table};

/// How many locks the `held` partner takes.
const HELD_ENV: &str = "TOLLGATE_BENCH_HELD";
const URL_ENV: &str = "TOLLGATE_POSTGRES_URL";
const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable";
/// The `application_name` of the partner's sessions, by which A finds them in `pg_locks`.
const PARTNER_APPLICATION: &str = "tollgate-bench-partner";
const DROP_CHECK_APPLICATION: &str = "tollgate-bench-dl-drop";

const UNCONTENDED_NAME: &str = "bench-uncontended";
const UNCONTENDED_PEER_NAME: &str = "bench-peer-uncontended";
/// The raw floor's key (any key nobody else uses).
const FLOOR_KEY: i64 = 0x746f_6c6c_0000_0001;
/// The first ticket of the semaphore floor's three.
const FLOOR_SEMAPHORE_BASE: i64 = 0x746f_6c6c_0000_0100;
/// The hand-off keys, for tollgate (`lock_with_key`) and the raw floor alike, so that the
/// two can be paired: this plus the pair's index.
const HANDOFF_KEY: i64 = 0x746f_6c6c_0000_0010;
const HANDOFF_PEER_NAME: &str = "bench-peer-handoff";
/// Which hand-off pair the partner belongs to (its key).
const PAIR_ENV: &str = "TOLLGATE_BENCH_PAIR";

const SAMPLE_SIZE: usize = 50;
const INTERLEAVED_REPETITIONS: usize = 4;
const INTERLEAVED_BLOCKS: usize = 60;
const INTERLEAVED_PER_BLOCK: usize = 40;
/// Unmeasured cycles at the start of each interleaved block.
const BLOCK_WARM_IN: usize = 10;
const HANDOFF_ROUNDS: usize = 1000;
const HANDOFF_WARMUP: usize = 100;
const HELD: usize = 10_000;
/// The raw floor's keys in the held-locks section: this plus 0..count.
const HELD_RAW_KEY: i64 = 0x746f_6c6c_1000_0000;
/// tollgate's default pool size (`PostgresProvider::builder`), for the raw floor's spread.
const DEFAULT_POOL_SIZE: usize = 16;

fn main() {
    tollgate_bench::run(partner, bench);
}

/// The benchmarks (this process is A).
fn bench(args: BenchArgs) {
    let (listing, testing) = (args.listing(), args.testing());
    let url = server_url();

    let runtime = current_thread();
    if !listing {
        runtime.block_on(print_server(&url));
    }
    let mut criterion = Criterion::default()
        .sample_size(SAMPLE_SIZE)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .nresamples(20_000)
        .without_plots()
        .configure_from_args();
    let subjects = Arc::new(runtime.block_on(Subjects::new(&url, "criterion")));
    let rows = uncontended(&mut criterion, &runtime, &subjects);
    criterion.final_summary();
    let placement = subjects.placement();
    drop(subjects);
    if args.answer_list(&["interleaved", "handoff", "held", "contention"]) {
        return;
    }
    if !testing {
        print_uncontended_summary(&rows, &placement);
    }
    if args.selects("interleaved") {
        let (repetitions, blocks, per_block) = if testing {
            (1, 2, 1)
        } else {
            (
                INTERLEAVED_REPETITIONS,
                INTERLEAVED_BLOCKS,
                INTERLEAVED_PER_BLOCK,
            )
        };
        interleaved(&url, repetitions, blocks, per_block);
    }
    if args.selects("handoff") {
        let (rounds, warmup) = if testing {
            (3, 1)
        } else {
            (HANDOFF_ROUNDS, HANDOFF_WARMUP)
        };
        handoff(&url, rounds, warmup);
    }
    if args.selects("held") {
        held(&url, if testing { 100 } else { HELD });
    }
    if args.selects("contention") {
        let (rounds, span) = contention::rounds_and_span(testing);
        contention(&url, rounds, span);
    }
    if !testing {
        runtime.block_on(peer_drop_check(&url));
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Contention: tasks of one process taking turns on one name.

/// The floor's key for the contention section.
const CONTENTION_KEY: i64 = 0x746f_6c6c_0000_0200;

/// [`contention::TASKS`] tasks on a multi-threaded runtime, each looping acquire + release
/// of one name for `span`: acquisitions per second, tollgate (one provider, its pool) against
/// the floor (a raw session per task, each `SELECT pg_advisory_lock($1)` blocking in the
/// server + `SELECT pg_advisory_unlock($1)`, prepared), alternating for `rounds` rounds.
fn contention(url: &str, rounds: usize, span: Duration) {
    contention::compare(
        rounds,
        span,
        |round| contend_tollgate(url, round, span),
        |_| contend_floor(url, span),
    );
}

/// Acquisitions per second of tollgate tasks contending for one lock.
async fn contend_tollgate(url: &str, round: usize, span: Duration) -> f64 {
    let provider = PostgresProvider::from_url(url).expect("provider");
    let name = format!("bench-contention-{round}");
    let locks = (0..contention::TASKS)
        .map(|_| provider.lock(&name).expect("lock"))
        .collect();
    contention::tollgate_turns(locks, span).await
}

/// Acquisitions per second of raw sessions contending for one advisory lock.
async fn contend_floor(url: &str, span: Duration) -> f64 {
    let mut sessions = Vec::new();
    for _ in 0..contention::TASKS {
        let client = raw_client(url).await;
        let lock = prepare(&client, "SELECT pg_advisory_lock($1)").await;
        let unlock = prepare(&client, "SELECT pg_advisory_unlock($1)").await;
        sessions.push((client, lock, unlock));
    }
    contention::turns(sessions, span, |session| async move {
        let (client, lock, unlock) = &session;
        client
            .query_one(lock, &[&CONTENTION_KEY])
            .await
            .expect("pg_advisory_lock");
        client
            .query_one(unlock, &[&CONTENTION_KEY])
            .await
            .expect("pg_advisory_unlock");
        session
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Helpers.

fn server_url() -> String {
    tollgate_bench::args::server_url(URL_ENV, DEFAULT_URL)
}

/// The URL with `application_name` set, so that A can find B's sessions.
fn with_application_name(url: &str, name: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}application_name={name}")
}

/// A plain tokio-postgres session, its connection task spawned on the current runtime.
async fn raw_client(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .expect("connect to PostgreSQL");
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            eprintln!("raw connection ended: {error}");
        }
    });
    client
}

/// `sql` prepared on `client`.
async fn prepare(client: &Client, sql: &str) -> tokio_postgres::Statement {
    client.prepare(sql).await.expect(sql)
}

/// The first column of the first row `sql` returns, sent as a simple query (text).
async fn simple_value(client: &Client, sql: &str) -> Option<String> {
    let messages = client.simple_query(sql).await.expect(sql);
    messages.into_iter().find_map(|message| match message {
        tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
        _ => None,
    })
}

async fn print_server(url: &str) {
    let client = raw_client(url).await;
    let version = simple_value(&client, "SHOW server_version").await;
    let setting = |name: &'static str| {
        let client = &client;
        async move {
            simple_value(client, &format!("SHOW {name}"))
                .await
                .unwrap_or_default()
        }
    };
    let locks_per = setting("max_locks_per_transaction").await;
    let connections = setting("max_connections").await;
    let prepared = setting("max_prepared_transactions").await;
    let autovacuum = setting("autovacuum_max_workers").await;
    let workers = setting("max_worker_processes").await;
    let senders = setting("max_wal_senders").await;
    let number = |value: &str| value.parse::<u64>().unwrap_or(0);
    // PostgreSQL sizes its shared lock table for max_locks_per_transaction ×
    // (MaxBackends + max_prepared_transactions) entries, where MaxBackends is max_connections
    // + autovacuum_max_workers + 1 + max_worker_processes + max_wal_senders.
    let backends = number(&connections) + number(&autovacuum) + 1 + number(&workers);
    let slots = number(&locks_per) * (backends + number(&senders) + number(&prepared));
    println!(
        "PostgreSQL {} at {}: max_locks_per_transaction={locks_per}, max_connections={connections}, \
         autovacuum_max_workers={autovacuum}, max_worker_processes={workers}, \
         max_wal_senders={senders}, max_prepared_transactions={prepared} \
         → shared lock table sized for {slots} locks\n",
        version.unwrap_or_default(),
        url
    );
}

// ---------------------------------------------------------------------------------------------
// 1. Uncontended acquire + release.

/// One variant's criterion benchmark, and the samples it measured.
struct Row {
    variant: Variant,
    samples: Samples,
}

/// One uncontended acquire + release, in one of the ways measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    TollgateTry,
    TollgateAcquire,
    FloorPrepared,
    FloorSimple,
    PeerTry,
    PeerAcquire,
    /// A semaphore of max 3, all tickets free: `try_acquire` + `release`.
    TollgateSemaphore,
    /// The semaphore floor: one prepared `CASE` over the 3 tickets + a prepared unlock.
    FloorSemaphore,
}

impl Variant {
    const ALL: [Variant; 8] = [
        Variant::TollgateTry,
        Variant::TollgateAcquire,
        Variant::FloorPrepared,
        Variant::FloorSimple,
        Variant::PeerTry,
        Variant::PeerAcquire,
        Variant::TollgateSemaphore,
        Variant::FloorSemaphore,
    ];

    fn name(self) -> &'static str {
        match self {
            Variant::TollgateTry => "tollgate try_acquire+release",
            Variant::TollgateAcquire => "tollgate acquire+release",
            Variant::FloorPrepared => "floor prepared try+unlock",
            Variant::FloorSimple => "floor simple_query try+unlock",
            Variant::PeerTry => "distributed-lock try_acquire+release",
            Variant::PeerAcquire => "distributed-lock acquire+release",
            Variant::TollgateSemaphore => "tollgate semaphore(3) try+release",
            Variant::FloorSemaphore => "floor semaphore(3) CASE scan+unlock",
        }
    }

    /// Short names for `TOLLGATE_BENCH_KIND` in the `cycles` role.
    fn kind(self) -> &'static str {
        match self {
            Variant::TollgateTry => "tollgate-try",
            Variant::TollgateAcquire => "tollgate-acquire",
            Variant::FloorPrepared => "floor-prepared",
            Variant::FloorSimple => "floor-simple",
            Variant::PeerTry => "peer-try",
            Variant::PeerAcquire => "peer-acquire",
            Variant::TollgateSemaphore => "tollgate-semaphore",
            Variant::FloorSemaphore => "floor-semaphore",
        }
    }
}

/// What the uncontended variants work on: a tollgate lock, a warm raw session with the
/// floor's statements, and the peer crate's lock.
struct Subjects {
    /// The server process of each variant's session(s), by `application_name`.
    backends: Vec<(Variant, Vec<i32>)>,
    lock: PostgresLock,
    client: Client,
    try_statement: tokio_postgres::Statement,
    unlock_statement: tokio_postgres::Statement,
    try_sql: String,
    unlock_sql: String,
    peer_lock: PostgresDistributedLock,
    semaphore: PostgresSemaphore,
    scan_statement: tokio_postgres::Statement,
}

impl Subjects {
    /// Connects everything (on the current runtime) and warms it up with one cycle each.
    /// `tag` names the sessions (`application_name`), so their server processes can be found.
    async fn new(url: &str, tag: &str) -> Subjects {
        let application = |who: &str| format!("tollgate-bench-{tag}-{who}");
        let provider =
            PostgresProvider::from_url(&with_application_name(url, &application("tollgate")))
                .expect("provider");
        let client = raw_client(&with_application_name(url, &application("floor"))).await;
        let try_statement = prepare(&client, "SELECT pg_try_advisory_lock($1)").await;
        let unlock_statement = prepare(&client, "SELECT pg_advisory_unlock($1)").await;
        let scan_statement = prepare(
            &client,
            "SELECT CASE WHEN pg_try_advisory_lock($1) THEN 0 \
             WHEN pg_try_advisory_lock($1 + 1) THEN 1 \
             WHEN pg_try_advisory_lock($1 + 2) THEN 2 END",
        )
        .await;
        let peer = PostgresLockProvider::new(with_application_name(url, &application("peer")))
            .await
            .expect("distributed-lock provider");
        let mut subjects = Subjects {
            backends: Vec::new(),
            lock: provider.lock(UNCONTENDED_NAME).expect("lock"),
            client,
            try_statement,
            unlock_statement,
            try_sql: format!("SELECT pg_try_advisory_lock({FLOOR_KEY})"),
            unlock_sql: format!("SELECT pg_advisory_unlock({FLOOR_KEY})"),
            peer_lock: peer.create_lock(UNCONTENDED_PEER_NAME),
            semaphore: provider.semaphore(UNCONTENDED_NAME, 3).expect("semaphore"),
            scan_statement,
        };
        for variant in Variant::ALL {
            subjects.cycle(variant).await;
        }
        for variant in Variant::ALL {
            let who = match variant {
                Variant::TollgateTry | Variant::TollgateAcquire | Variant::TollgateSemaphore => {
                    "tollgate"
                }
                Variant::FloorPrepared | Variant::FloorSimple | Variant::FloorSemaphore => "floor",
                Variant::PeerTry | Variant::PeerAcquire => "peer",
            };
            let rows = subjects
                .client
                .query(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
                    &[&application(who)],
                )
                .await
                .expect("pg_stat_activity");
            let pids = rows.iter().map(|row| row.get::<_, i32>(0)).collect();
            subjects.backends.push((variant, pids));
        }
        subjects
    }

    /// Whether every server process of `variant`'s session(s) last ran on the vCPU this
    /// thread last ran on (`None` when /proc does not tell).
    fn same_cpu(&self, variant: Variant) -> Option<bool> {
        let client = last_cpu("/proc/thread-self/stat")?;
        let (_, pids) = self.backends.iter().find(|(other, _)| *other == variant)?;
        let mut same = !pids.is_empty();
        for pid in pids {
            same &= last_cpu(&format!("/proc/{pid}/stat"))? == client;
        }
        Some(same)
    }

    /// Where the sessions' server processes and this thread last ran, for the record.
    fn placement(&self) -> String {
        let client = last_cpu("/proc/thread-self/stat").map_or("?".into(), |cpu| cpu.to_string());
        let mut parts = vec![format!("this thread on vCPU {client}")];
        for who in [Variant::TollgateTry, Variant::FloorSimple, Variant::PeerTry] {
            let (_, pids) = self
                .backends
                .iter()
                .find(|(other, _)| *other == who)
                .expect("variant");
            let cpus: Vec<String> = pids
                .iter()
                .map(|pid| {
                    last_cpu(&format!("/proc/{pid}/stat")).map_or("?".into(), |cpu| cpu.to_string())
                })
                .collect();
            let name = match who {
                Variant::TollgateTry => "tollgate's session",
                Variant::FloorSimple => "the floors' session",
                _ => "distributed-lock's sessions",
            };
            parts.push(format!("{name} on vCPU {}", cpus.join(",")));
        }
        parts.join(", ")
    }

    /// One acquire + release, waiting for the server's answer to both.
    async fn cycle(&self, variant: Variant) {
        match variant {
            Variant::TollgateTry => try_acquire_release(&self.lock).await,
            Variant::TollgateAcquire => acquire_release(&self.lock).await,
            Variant::FloorPrepared => {
                let row = self
                    .client
                    .query_one(&self.try_statement, &[&FLOOR_KEY])
                    .await
                    .expect("pg_try_advisory_lock");
                assert!(row.get::<_, bool>(0), "the floor's key is free");
                let row = self
                    .client
                    .query_one(&self.unlock_statement, &[&FLOOR_KEY])
                    .await
                    .expect("pg_advisory_unlock");
                assert!(row.get::<_, bool>(0), "the floor's key was held");
            }
            Variant::FloorSimple => {
                let taken = simple_value(&self.client, &self.try_sql).await;
                assert_eq!(taken.as_deref(), Some("t"), "the floor's key is free");
                let unlocked = simple_value(&self.client, &self.unlock_sql).await;
                assert_eq!(unlocked.as_deref(), Some("t"), "the floor's key was held");
            }
            Variant::PeerTry => {
                let handle = self
                    .peer_lock
                    .try_acquire()
                    .await
                    .expect("try_acquire")
                    .expect("an uncontended lock is free");
                handle.release().await.expect("release");
            }
            Variant::PeerAcquire => {
                let handle = self.peer_lock.acquire(None).await.expect("acquire");
                handle.release().await.expect("release");
            }
            Variant::TollgateSemaphore => try_acquire_release(&self.semaphore).await,
            Variant::FloorSemaphore => {
                let row = self
                    .client
                    .query_one(&self.scan_statement, &[&FLOOR_SEMAPHORE_BASE])
                    .await
                    .expect("scan");
                let ticket: i32 = row.get(0);
                let row = self
                    .client
                    .query_one(
                        &self.unlock_statement,
                        &[&(FLOOR_SEMAPHORE_BASE + i64::from(ticket))],
                    )
                    .await
                    .expect("pg_advisory_unlock");
                assert!(row.get::<_, bool>(0), "the floor's ticket was held");
            }
        }
    }
}

fn uncontended(criterion: &mut Criterion, runtime: &Runtime, subjects: &Arc<Subjects>) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut group = criterion.benchmark_group("uncontended lock");
    for variant in Variant::ALL {
        let samples = Samples::default();
        group.bench_function(variant.name(), |bencher| {
            bencher.to_async(runtime).iter_custom(|iterations| {
                let (subjects, samples) = (subjects.clone(), samples.clone());
                async move {
                    let start = Instant::now();
                    for _ in 0..iterations {
                        subjects.cycle(variant).await;
                    }
                    samples.record(iterations, start.elapsed())
                }
            })
        });
        rows.push(Row { variant, samples });
    }
    group.finish();
    rows
}

fn print_uncontended_summary(rows: &[Row], placement: &str) {
    let medians: Vec<(&Row, f64)> = rows
        .iter()
        .filter_map(|row| Some((row, row.samples.median_ns(SAMPLE_SIZE)?)))
        .collect();
    if medians.is_empty() {
        return;
    }
    let floor = |variant: Variant| {
        medians
            .iter()
            .find(|(row, _)| row.variant == variant)
            .map(|(_, median)| *median)
    };
    let (simple, prepared) = (floor(Variant::FloorSimple), floor(Variant::FloorPrepared));
    println!("\nUncontended acquire + release, median per operation (criterion samples)\n");
    let table = Table::new(&[40], &[10, 16, 14]);
    table.print(&["benchmark", "median", "× simple_query", "× prepared"]);
    for (row, median) in &medians {
        let ratio =
            |floor: Option<f64>| floor.map_or("-".to_owned(), |f| format!("{:.2}×", median / f));
        table.print(&[
            row.variant.name().to_owned(),
            format_ns(*median),
            ratio(simple),
            ratio(prepared),
        ]);
    }
    println!("(at the end: {placement})\n");
}

/// The same variants taking turns, block by block, so that a burst of load from elsewhere
/// falls on all of them alike; `repetitions` times with fresh sessions. Each variant talks to
/// the server on a session of its own, and the time of a round trip depends mostly on whether
/// that session's server process runs on the same vCPU as this thread (then the two hand the
/// CPU to each other) or on the other one (then every message wakes the other vCPU). After
/// each block the vCPUs are read from /proc, and the blocks are summarised by placement.
fn interleaved(url: &str, repetitions: usize, blocks: usize, per_block: usize) {
    let warmup = (blocks / 10).max(1);
    // Per variant: (time per cycle in ns, same vCPU) of every measured block.
    let mut times: Vec<Vec<(f64, Option<bool>)>> = vec![Vec::new(); Variant::ALL.len()];
    let mut placements = Vec::new();
    for repetition in 0..repetitions {
        let runtime = current_thread();
        runtime.block_on(async {
            let subjects = Subjects::new(url, &format!("i{repetition}")).await;
            for block in 0..warmup + blocks {
                // Each block starts with the next variant, so none always follows another.
                for index in rotation(block, Variant::ALL.len()) {
                    let variant = Variant::ALL[index];
                    // Unmeasured: the first round trips after a switch of sessions pay for
                    // waking a server process that slept (and maybe for moving it).
                    for _ in 0..BLOCK_WARM_IN {
                        subjects.cycle(variant).await;
                    }
                    let start = Instant::now();
                    for _ in 0..per_block {
                        subjects.cycle(variant).await;
                    }
                    let elapsed = start.elapsed().as_nanos() as f64 / per_block as f64;
                    if block >= warmup {
                        times[index].push((elapsed, subjects.same_cpu(variant)));
                    }
                }
            }
            placements.push(subjects.placement());
        });
    }
    let median = upper_median;
    let select = |index: usize, same: Option<bool>| -> Vec<f64> {
        times[index]
            .iter()
            .filter(|(_, placed)| same.is_none() || *placed == same)
            .map(|(time, _)| *time)
            .collect()
    };
    let position = |variant: Variant| {
        Variant::ALL
            .iter()
            .position(|other| *other == variant)
            .expect("a variant")
    };
    println!(
        "Uncontended acquire + release, interleaved: {repetitions} × {blocks} blocks of \
         {per_block} cycles per variant (each after {BLOCK_WARM_IN} unmeasured ones), the \
         variants taking turns in a rotating order (after {warmup} warm-up blocks each time), \
         fresh sessions for each repetition"
    );
    for (repetition, placement) in placements.iter().enumerate() {
        println!("  repetition {repetition}, at its end: {placement}");
    }
    println!();
    let table = Table::new(&[40], &[10, 22, 22, 16, 14]);
    table.print(&[
        "variant",
        "median",
        "session on our vCPU",
        "session on the other",
        "× simple_query",
        "× prepared",
    ]);
    let regime = |index: usize, same: bool| {
        let selected = select(index, Some(same));
        median(&selected).map_or("-".to_owned(), |value| {
            format!("{} ({} blocks)", format_ns(value), selected.len())
        })
    };
    // Ratios within one placement: the same-vCPU blocks when both sides have enough of them,
    // else the other-vCPU blocks.
    let ratio = |index: usize, floor: Variant| {
        let floor = position(floor);
        let enough =
            |index: usize, same: bool| select(index, Some(same)).len() >= (blocks / 4).max(1);
        for same in [true, false] {
            if enough(index, same) && enough(floor, same) {
                let (mine, theirs) = (
                    median(&select(index, Some(same))).expect("blocks"),
                    median(&select(floor, Some(same))).expect("blocks"),
                );
                let placed = if same { "our" } else { "other" };
                return format!("{:.2}× ({placed})", mine / theirs);
            }
        }
        "-".to_owned()
    };
    for (index, variant) in Variant::ALL.into_iter().enumerate() {
        table.print(&[
            variant.name().to_owned(),
            median(&select(index, None)).map_or("-".to_owned(), format_ns),
            regime(index, true),
            regime(index, false),
            ratio(index, Variant::FloorSimple),
            ratio(index, Variant::FloorPrepared),
        ]);
    }
    println!(
        "semaphore(3): tollgate × its floor (one prepared CASE scan + unlock): {}",
        ratio(
            position(Variant::TollgateSemaphore),
            Variant::FloorSemaphore
        )
    );
    println!(
        "(ratios: medians of blocks in which both sessions ran on the same placement, \
         \"our\" vCPU when there are enough such blocks, else the other)\n"
    );
}

/// `TOLLGATE_BENCH_PARTNER=cycles`: `TOLLGATE_BENCH_CYCLES` (10,000) uncontended cycles of
/// one variant (`TOLLGATE_BENCH_KIND`, default `tollgate-try`; see [`Variant::kind`]), after
/// one warm-up cycle of each, for `strace -f -c` or `perf` of one variant alone.
fn cycles(url: &str) {
    let kind = std::env::var("TOLLGATE_BENCH_KIND").unwrap_or_else(|_| "tollgate-try".into());
    let variant = Variant::ALL
        .into_iter()
        .find(|variant| variant.kind() == kind)
        .unwrap_or_else(|| panic!("unknown TOLLGATE_BENCH_KIND {kind:?}"));
    let count: u64 = env_number("TOLLGATE_BENCH_CYCLES").unwrap_or(10_000);
    current_thread().block_on(async {
        let subjects = Subjects::new(url, "cycles").await;
        for _ in 0..count {
            subjects.cycle(variant).await;
        }
    });
}

// ---------------------------------------------------------------------------------------------
// 2. Hand-off between two processes.

/// What one process of the hand-off uses.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// `PostgresLock::acquire()` / `release().await`.
    Tollgate,
    /// A bare `SELECT pg_advisory_lock(k)` / `SELECT pg_advisory_unlock(k)`.
    Raw,
    /// The peer crate: `acquire(None)` / `release().await`.
    Peer,
}

impl Mode {
    fn role(self) -> &'static str {
        match self {
            Mode::Tollgate => "tollgate",
            Mode::Raw => "raw",
            Mode::Peer => "peer",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Mode::Tollgate => "tollgate",
            Mode::Raw => "raw",
            Mode::Peer => "distributed-lock",
        }
    }
}

/// The lock one process of the hand-off takes and gives back, in one of the three ways.
enum Side {
    Tollgate {
        lock: PostgresLock,
        held: Option<tollgate::backend::postgres::PostgresHandle>,
    },
    Raw {
        client: Client,
        key: i64,
    },
    Peer {
        lock: PostgresDistributedLock,
        held: Option<distributed_lock_postgres::handle::PostgresLockHandle>,
        /// Keeps the pool open.
        _provider: PostgresLockProvider,
    },
}

impl Side {
    /// The side of hand-off pair `pair` (each pair has a key of its own).
    async fn new(mode: Mode, url: &str, pair: usize) -> Side {
        let key = HANDOFF_KEY + pair as i64;
        match mode {
            Mode::Tollgate => {
                let provider = PostgresProvider::from_url(url).expect("provider");
                Side::Tollgate {
                    lock: provider.lock_with_key(AdvisoryKey::Single(key)),
                    held: None,
                }
            }
            Mode::Raw => Side::Raw {
                client: raw_client(url).await,
                key,
            },
            Mode::Peer => {
                let provider = PostgresLockProvider::new(url)
                    .await
                    .expect("distributed-lock provider");
                Side::Peer {
                    lock: provider.create_lock(&format!("{HANDOFF_PEER_NAME}-{pair}")),
                    held: None,
                    _provider: provider,
                }
            }
        }
    }

    /// Takes the lock, waiting in the server.
    async fn acquire(&mut self) {
        match self {
            Side::Tollgate { lock, held } => {
                *held = Some(lock.acquire().await.expect("acquire"));
            }
            Side::Raw { client, key } => {
                simple_value(client, &format!("SELECT pg_advisory_lock({key})")).await;
            }
            Side::Peer { lock, held, .. } => {
                *held = Some(lock.acquire(None).await.expect("acquire"));
            }
        }
    }

    /// Gives the lock back and waits for the server's answer.
    async fn release(&mut self) {
        match self {
            Side::Tollgate { held, .. } => {
                held.take().expect("held").release().await.expect("release");
            }
            Side::Raw { client, key } => {
                let unlocked =
                    simple_value(client, &format!("SELECT pg_advisory_unlock({key})")).await;
                assert_eq!(unlocked.as_deref(), Some("t"), "the raw key was held");
            }
            Side::Peer { held, .. } => {
                held.take().expect("held").release().await.expect("release");
            }
        }
    }
}

/// Polls `pg_locks` until a session of the partner (by `application_name`) waits for an
/// advisory lock: B's backend is then queued on the lock, and A's unlock wakes it.
async fn wait_until_blocked(monitor: &Client, statement: &tokio_postgres::Statement) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut polls = 0;
    loop {
        polls += 1;
        let row = monitor
            .query_one(statement, &[&PARTNER_APPLICATION])
            .await
            .expect("poll pg_locks");
        if row.get::<_, i64>(0) > 0 {
            return polls;
        }
        assert!(Instant::now() < deadline, "the partner never blocked");
        tokio::time::sleep(Duration::from_micros(50)).await;
    }
}

const WAITING_SQL: &str = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' \
     AND NOT granted AND pid IN (SELECT pid FROM pg_stat_activity WHERE application_name = $1)";

/// The (A, B) pairs: each library against itself, the raw floor, and tollgate paired with the
/// raw floor both ways, which tells the holder's release apart from the waiter's wake-up.
const PAIRS: [(Mode, Mode); 5] = [
    (Mode::Tollgate, Mode::Tollgate),
    (Mode::Raw, Mode::Raw),
    (Mode::Peer, Mode::Peer),
    (Mode::Tollgate, Mode::Raw),
    (Mode::Raw, Mode::Tollgate),
];

fn handoff(url: &str, rounds: usize, warmup: usize) {
    println!("Hand-off between two processes: A releases → B (waiting in the server) holds");
    println!(
        "({rounds} rounds per pair after {warmup} warm-up rounds, the pairs taking turns round \
         by round; latency = t_B − t_A, CLOCK_MONOTONIC; before each release A saw B's \
         ungranted advisory lock in pg_locks)"
    );
    println!(
        "tollgate: acquire() / release().await; raw: SELECT pg_advisory_lock(k) / \
         SELECT pg_advisory_unlock(k); distributed-lock: acquire(None) / release().await\n"
    );
    let runtime = current_thread();
    let monitor = runtime.block_on(raw_client(url));
    let waiting = runtime
        .block_on(monitor.prepare(WAITING_SQL))
        .expect("prepare the pg_locks poll");
    // Every pair at once, each on a key of its own: A's side here, B in a partner process.
    let mut pairs: Vec<(Side, Partner)> = PAIRS
        .iter()
        .enumerate()
        .map(|(index, (holder, waiter))| {
            let mut side = runtime.block_on(Side::new(*holder, url, index));
            runtime.block_on(side.acquire());
            let partner = Partner::spawn(
                waiter.role(),
                [(URL_ENV, url.to_owned()), (PAIR_ENV, index.to_string())],
            );
            (side, partner)
        })
        .collect();
    let mut latencies: Vec<Vec<u64>> = vec![Vec::with_capacity(rounds); PAIRS.len()];
    let mut polls = vec![0; PAIRS.len()];
    for round in 0..warmup + rounds {
        for (index, (side, partner)) in pairs.iter_mut().enumerate() {
            partner.start_waiting();
            polls[index] += runtime.block_on(wait_until_blocked(&monitor, &waiting));
            let released = monotonic_ns();
            runtime.block_on(side.release());
            let round_ns = latency(released, partner.read_timestamp());
            if round >= warmup {
                latencies[index].push(round_ns);
            }
            // B lets go right after reporting; A waits for that in the server.
            runtime.block_on(side.acquire());
        }
    }
    for (mut side, partner) in pairs {
        drop(partner);
        runtime.block_on(side.release());
    }
    let table = Table::new(&[40], &[10, 10, 10, 10, 10, 12]);
    let mut header = vec!["holder (A) → waiter (B)"];
    header.extend(LATENCY_COLUMNS);
    header.push("polls/round");
    table.print(&header);
    for ((index, (holder, waiter)), latencies) in PAIRS.iter().enumerate().zip(latencies) {
        let mut cells = vec![format!("{} → {}", holder.label(), waiter.label())];
        cells.extend(Latencies::new(latencies).cells());
        cells.push(format!(
            "{:.1}",
            polls[index] as f64 / (rounds + warmup) as f64
        ));
        table.print(&cells);
    }
    println!();
}

// ---------------------------------------------------------------------------------------------
// 3. Many held locks.

fn held(url: &str, count: usize) {
    println!("{count} held locks: distinct names, try_acquire on one provider (default pool size)");
    println!("(in a fresh partner process; resident set from /proc/self/statm)\n");
    let mut partner = Partner::spawn(
        "held",
        [(URL_ENV, url.to_owned()), (HELD_ENV, count.to_string())],
    );
    loop {
        let line = partner.read_line();
        if line == "done" {
            break;
        }
        println!("{line}");
    }
    println!();
}

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|field| field.parse().ok())
        .expect("resident pages");
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    pages * page
}

/// The `held` partner: takes the locks, prints its findings line by line, then "done".
fn held_partner(url: &str, count: usize) {
    say("ready");
    let runtime = current_thread();
    runtime.block_on(async {
        let provider = PostgresProvider::from_url(url).expect("provider");
        // Open the first session before the baseline.
        let warm = provider.lock("bench-held-warm").expect("lock");
        warm.try_acquire()
            .await
            .expect("try_acquire")
            .expect("free")
            .release()
            .await
            .expect("release");
        let names: Vec<String> = (0..count).map(|i| format!("bench-held-{i:05}")).collect();

        // One after another.
        let mut handles = Vec::with_capacity(count);
        let before = resident_bytes();
        let start = Instant::now();
        let mut failure = None;
        for name in &names {
            let lock = provider.lock(name).expect("lock");
            match lock.try_acquire().await {
                Ok(Some(handle)) => handles.push(handle),
                Ok(None) => {
                    failure = Some(format!("{name} was busy"));
                    break;
                }
                Err(error) => {
                    failure = Some(format!("{error}: {}", error_chain(&error)));
                    break;
                }
            }
        }
        let elapsed = start.elapsed();
        let after = resident_bytes();
        let held = handles.len();
        say(&format!(
            "one after another: {held} held of {count}{}",
            failure
                .as_ref()
                .map_or(String::new(), |failure| format!(
                    "; lock {} failed: {failure}",
                    held + 1
                ))
        ));
        say(&format!(
            "  sessions used: {}; time: {:.0} ms ({:.1} µs per lock)",
            provider.connection_count(),
            elapsed.as_secs_f64() * 1000.0,
            elapsed.as_secs_f64() * 1e6 / held.max(1) as f64
        ));
        say(&format!(
            "  resident set: +{:.2} MiB = {:.0} bytes per held lock (lock + handle; size_of::<PostgresHandle>() = {} bytes)",
            after.saturating_sub(before) as f64 / (1 << 20) as f64,
            after.saturating_sub(before) as f64 / held.max(1) as f64,
            std::mem::size_of::<tollgate::backend::postgres::PostgresHandle>()
        ));
        let start = Instant::now();
        for handle in handles {
            handle.release().await.expect("release");
        }
        say(&format!(
            "  release().await of all, one after another: {:.0} ms",
            start.elapsed().as_secs_f64() * 1000.0
        ));

        // All at once (on one runtime, so the tries are pipelined on the session).
        let fitted = held;
        let locks: Vec<PostgresLock> = names[..fitted]
            .iter()
            .map(|name| provider.lock(name).expect("lock"))
            .collect();
        let start = Instant::now();
        let outcomes =
            futures_util::future::join_all(locks.iter().map(|lock| lock.try_acquire())).await;
        let elapsed = start.elapsed();
        let mut handles = Vec::with_capacity(fitted);
        let mut failed = 0;
        let mut first_error = None;
        for outcome in outcomes {
            match outcome {
                Ok(Some(handle)) => handles.push(handle),
                Ok(None) => failed += 1,
                Err(error) => {
                    failed += 1;
                    first_error.get_or_insert_with(|| error.to_string());
                }
            }
        }
        say(&format!(
            "all at once ({fitted} try_acquire futures joined): {} held, {failed} not{}",
            handles.len(),
            first_error.map_or(String::new(), |error| format!(" (first error: {error})"))
        ));
        say(&format!(
            "  sessions used: {}; time: {:.0} ms ({:.1} µs per lock)",
            provider.connection_count(),
            elapsed.as_secs_f64() * 1000.0,
            elapsed.as_secs_f64() * 1e6 / fitted.max(1) as f64
        ));
        let start = Instant::now();
        futures_util::future::join_all(handles.into_iter().map(|handle| handle.release())).await;
        say(&format!(
            "  release().await of all, joined: {:.0} ms",
            start.elapsed().as_secs_f64() * 1000.0
        ));

        // The raw floor: the same number of `SELECT pg_try_advisory_lock(k)` one after
        // another, on one session, and over the default pool size of sessions: taking turns
        // (round robin), or filled one after another (each holds at most 1/16 of them).
        for (sessions, round_robin) in [(1, false), (DEFAULT_POOL_SIZE, true), (DEFAULT_POOL_SIZE, false)] {
            let mut clients = Vec::with_capacity(sessions);
            for _ in 0..sessions {
                let client = raw_client(url).await;
                // Warm the session (a new backend loads its caches on the first call).
                let warm = format!(
                    "SELECT pg_try_advisory_lock({}); SELECT pg_advisory_unlock_all()",
                    HELD_RAW_KEY - 1
                );
                client.batch_execute(&warm).await.expect("warm the session");
                clients.push(client);
            }
            let start = Instant::now();
            for i in 0..fitted {
                let sql = format!("SELECT pg_try_advisory_lock({})", HELD_RAW_KEY + i as i64);
                let session = if round_robin {
                    i % sessions
                } else {
                    i * sessions / fitted
                };
                let taken = simple_value(&clients[session], &sql).await;
                assert_eq!(taken.as_deref(), Some("t"), "a raw held key is free");
            }
            let elapsed = start.elapsed();
            say(&format!(
                "raw floor, {fitted} × SELECT pg_try_advisory_lock(k) one after another on \
                 {sessions} session(s){}: {:.0} ms ({:.1} µs per lock)",
                match (sessions, round_robin) {
                    (1, _) => "",
                    (_, true) => " taking turns",
                    (_, false) => " filled one after another",
                },
                elapsed.as_secs_f64() * 1000.0,
                elapsed.as_secs_f64() * 1e6 / fitted.max(1) as f64
            ));
            for client in &clients {
                simple_value(client, "SELECT pg_advisory_unlock_all()").await;
            }
        }
    });
    say("done");
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut parts = Vec::new();
    let mut source = error.source();
    while let Some(cause) = source {
        parts.push(cause.to_string());
        source = cause.source();
    }
    parts.join(": ")
}

// ---------------------------------------------------------------------------------------------
// A note on the peer crate.

/// Takes a lock with the peer crate, drops the handle without `release()`, and looks whether
/// the pooled session still holds it; also whether tollgate sees the same key as busy (the
/// two crates claim DistributedLock's key scheme).
async fn peer_drop_check(url: &str) {
    let name = "bench-peer-drop";
    let monitor = raw_client(url).await;
    {
        let provider =
            PostgresLockProvider::new(with_application_name(url, DROP_CHECK_APPLICATION))
                .await
                .expect("distributed-lock provider");
        let lock = provider.create_lock(name);
        let handle = lock
            .try_acquire()
            .await
            .expect("try_acquire")
            .expect("free");
        drop(handle);
        // Let the pool take the connection back (a background task).
        tokio::time::sleep(Duration::from_millis(200)).await;
        let held = simple_value(
            &monitor,
            &format!(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid IN \
                 (SELECT pid FROM pg_stat_activity WHERE application_name = '{DROP_CHECK_APPLICATION}')"
            ),
        )
        .await
        .unwrap_or_default();
        let tollgate = PostgresProvider::from_url(url).expect("provider");
        let busy = tollgate
            .lock(name)
            .expect("lock")
            .try_acquire()
            .await
            .expect("try_acquire")
            .is_none();
        println!(
            "distributed-lock: a handle dropped without release(): advisory locks still held by \
             its pool's idle sessions 200 ms later: {held}; tollgate finds {name:?} busy: {busy}"
        );
        drop(lock);
        drop(provider);
    }
    // Whatever the dropped pool left behind.
    simple_value(
        &monitor,
        &format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name = '{DROP_CHECK_APPLICATION}'"
        ),
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// The partner process (B).

fn partner(role: &str) {
    die_with_parent();
    let url = server_url();
    if role == "cycles" {
        cycles(&url);
        return;
    }
    if role == "held" {
        let count = env_number(HELD_ENV).unwrap_or(HELD);
        held_partner(&url, count);
        return;
    }
    let mode = match role {
        "tollgate" => Mode::Tollgate,
        "raw" => Mode::Raw,
        "peer" => Mode::Peer,
        other => panic!("unknown partner role {other:?}"),
    };
    let runtime = current_thread();
    let url = with_application_name(&url, PARTNER_APPLICATION);
    let pair = env_number(PAIR_ENV).expect("TOLLGATE_BENCH_PAIR");
    let mut side = runtime.block_on(Side::new(mode, &url, pair));
    say("ready");
    for line in std::io::stdin().lock().lines() {
        match line.expect("read from the bench").as_str() {
            "go" => {
                say("waiting");
                let acquired = runtime.block_on(async {
                    side.acquire().await;
                    monotonic_ns()
                });
                say(&acquired.to_string());
                runtime.block_on(side.release());
            }
            _ => break,
        }
    }
}

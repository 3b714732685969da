//! Benchmarks of the Redis backend, each beside the raw floor measured in the same run.
//!
//! ```text
//! cargo bench -p tollgate-bench --features redis --bench redis
//! ```
//!
//! The server is `TOLLGATE_REDIS_URL`, by default `redis://127.0.0.1:6379` (as for the tests).
//!
//! 1. **Acquire + release, uncontended** (one tokio current-thread runtime for all): a
//!    `RedisLock`'s `try_acquire().await` (and `acquire().await`) followed by
//!    `release().await`. Beside it the raw floor on a warm multiplexed connection of the same
//!    `redis` crate: `SET key value NX PX 30000`, then a compare-and-delete script by
//!    `EVALSHA`; and the peers on the same server: `rslock` (`LockManager::lock` + `unlock`,
//!    one server) and `distributed-lock-redis` (`try_acquire` + `release`). Every row runs in
//!    batches of 50, interleaved round by round with the other rows so that they see the same
//!    machine; the medians of the per-batch means are reported.
//!    Beside them a semaphore of max 3, uncontended: tollgate's `RedisSemaphore`
//!    (`try_acquire` and `release`), the floor (one script that drops expired tickets, counts
//!    and adds a ticket, then a bare `ZREM`), and `distributed-lock-redis`'s semaphore.
//! 2. **Hand-off between two processes**: this process (A) holds the lock while a partner
//!    process (B, this binary run again with `TOLLGATE_BENCH_PARTNER` set) waits in
//!    `acquire()`. A waits until B has subscribed to the lock's release channel
//!    (`PUBSUB NUMSUB`) and 2 ms more, so B is idle in its wait; then A reads
//!    `CLOCK_MONOTONIC` and releases, and B reads it as soon as its acquire returns. The raw
//!    floor does the same with bare commands: B subscribed to a channel, `SET NX PX` after
//!    each message; A's release is a compare-and-delete script that publishes.
//!
//! 3. **Contention** (`--bench contention`): 8 tasks of one process (multi-threaded runtime)
//!    loop `acquire` + `release` on one name, against the floor: 8 tasks on one multiplexed
//!    connection, each with a subscription of its own, looping `SET NX PX`, and on a refusal
//!    waiting for a release's `PUBLISH` (50 ms at most) before trying again; the release is a
//!    compare-and-delete script that publishes. Acquisitions per second, rounds alternating.
//!
//! Under `cargo test --benches` every row runs a few times only.

use std::io::BufRead;
use std::time::{Duration, Instant};

use distributed_lock_core::traits::{
    DistributedLock, DistributedSemaphore as _, LockHandle as _, LockProvider as DlLockProvider,
    SemaphoreProvider as _,
};
use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use tokio::runtime::Runtime;
use tollgate::backend::redis::{RedisLock, RedisProvider};
use tollgate::{Acquire, Handle, LockProvider, SemaphoreProvider};
use tollgate_bench::args::BenchArgs;
use tollgate_bench::clock::monotonic_ns;
use tollgate_bench::current_thread;
use tollgate_bench::cycle::{acquire_release, try_acquire_release};
use tollgate_bench::handoff::{latency, Pair};
use tollgate_bench::partner::{die_with_parent, say, Partner};

const URL_ENV: &str = "TOLLGATE_REDIS_URL";
const DEFAULT_URL: &str = "redis://127.0.0.1:6379";
/// The lock name of a hand-off pair, passed to the partner.
const NAME_ENV: &str = "TOLLGATE_BENCH_NAME";
const BATCH: u32 = 50;
const UNCONTENDED_TIME: Duration = Duration::from_secs(20);
const HANDOFF_ROUNDS: usize = 300;
const HANDOFF_WARMUP: usize = 20;
const RAW_RELEASE: &str = "if redis.call('get', KEYS[1]) == ARGV[1] then \
     redis.call('del', KEYS[1]) redis.call('publish', ARGV[2], '') return 1 end return 0";
const RAW_DELETE: &str = "if redis.call('get', KEYS[1]) == ARGV[1] then \
     return redis.call('del', KEYS[1]) end return 0";
/// The semaphore floor's take: drop expired tickets, count, add one if there is room.
const RAW_SEMAPHORE_TAKE: &str = "local time = redis.call('time') \
     local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000) \
     redis.call('zremrangebyscore', KEYS[1], '-inf', now) \
     if redis.call('zcard', KEYS[1]) < tonumber(ARGV[2]) then \
       redis.call('zadd', KEYS[1], now + 30000, ARGV[1]) return 1 end return 0";
/// The semaphore's max count in the uncontended rows.
const SEMAPHORE_MAX: u32 = 3;

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
    let version: String = runtime.block_on(async {
        let mut connection = raw_connection(&url).await;
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut connection)
            .await
            .expect("INFO");
        info.lines()
            .find_map(|line| line.strip_prefix("redis_version:"))
            .unwrap_or("?")
            .trim()
            .to_owned()
    });
    println!("Redis {version} at {url}");
    let rows = args
        .selects("uncontended")
        .then(|| uncontended(&runtime, &url, testing));
    let handoffs = args.selects("handoff").then(|| {
        let (rounds, warmup) = if testing {
            (3, 1)
        } else {
            (HANDOFF_ROUNDS, HANDOFF_WARMUP)
        };
        Pair::BOTH.map(|pair| (pair_label(pair), handoff(&url, pair, rounds, warmup)))
    });
    if args.selects("contention") {
        let (rounds, span) = tollgate_bench::contention::rounds_and_span(testing);
        tollgate_bench::contention::compare(
            rounds,
            span,
            |round| contend_tollgate(&url, round, span),
            |round| contend_floor(&url, round, span),
        );
    }

    println!("\n==================== Summary ====================\n");
    if let Some(rows) = rows {
        let median_of = |wanted: Row| {
            rows.iter()
                .find(|(row, _)| *row == wanted)
                .map_or(Duration::ZERO, |(_, median)| *median)
        };
        let table: Vec<_> = rows
            .iter()
            .map(|&(row, median)| (row.label(), median, median_of(row.floor())))
            .collect();
        tollgate_bench::table::print_uncontended(&table);
    }
    if let Some(handoffs) = handoffs {
        tollgate_bench::handoff::print_pairs(handoffs.into());
    }
}

fn server_url() -> String {
    tollgate_bench::args::server_url(URL_ENV, DEFAULT_URL)
}

async fn raw_connection(url: &str) -> MultiplexedConnection {
    redis::Client::open(url)
        .expect("redis URL")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis")
}

fn unique(label: &str) -> String {
    format!("tollgate-bench-{label}-{}", std::process::id())
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Row {
    TollgateTry,
    TollgateAcquire,
    Floor,
    Rslock,
    DistributedLock,
    SemaphoreFloor,
    SemaphoreTollgate,
    SemaphorePeer,
}

impl Row {
    const ALL: [Row; 8] = [
        Row::Floor,
        Row::TollgateTry,
        Row::TollgateAcquire,
        Row::Rslock,
        Row::DistributedLock,
        Row::SemaphoreFloor,
        Row::SemaphoreTollgate,
        Row::SemaphorePeer,
    ];

    /// The floor this row is compared with.
    fn floor(self) -> Row {
        match self {
            Row::SemaphoreFloor | Row::SemaphoreTollgate | Row::SemaphorePeer => {
                Row::SemaphoreFloor
            }
            _ => Row::Floor,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Row::TollgateTry => "tollgate `try_acquire` + `release`",
            Row::TollgateAcquire => "tollgate `acquire` + `release`",
            Row::Floor => "raw floor: `SET NX PX` + compare-and-delete `EVALSHA`",
            Row::Rslock => "rslock 0.10 `lock` + `unlock`",
            Row::DistributedLock => "distributed-lock-redis 0.2 `try_acquire` + `release`",
            Row::SemaphoreFloor => "semaphore(3) raw floor: one take script + `ZREM`",
            Row::SemaphoreTollgate => "semaphore(3) tollgate `try_acquire` + `release`",
            Row::SemaphorePeer => {
                "semaphore(3) distributed-lock-redis 0.2 `try_acquire` + `release`"
            }
        }
    }
}

struct Subjects {
    lock: RedisLock,
    raw: MultiplexedConnection,
    raw_key: String,
    delete: redis::Script,
    rslock: rslock::LockManager,
    rslock_key: String,
    peer: distributed_lock_redis::lock::RedisDistributedLock,
    semaphore: tollgate::backend::redis::RedisSemaphore,
    semaphore_key: String,
    take: redis::Script,
    peer_semaphore: distributed_lock_redis::semaphore::RedisDistributedSemaphore,
}

impl tollgate_bench::interleave::Cycles for Subjects {
    type Row = Row;

    async fn cycle(&mut self, row: Row) {
        Subjects::cycle(self, row).await;
    }
}

impl Subjects {
    async fn new(url: &str) -> Subjects {
        let provider = RedisProvider::from_url(url).expect("provider");
        let peer = distributed_lock_redis::RedisLockProvider::new(url.to_owned())
            .await
            .expect("distributed-lock-redis provider");
        Subjects {
            lock: provider.lock(&unique("uncontended")).expect("lock"),
            raw: raw_connection(url).await,
            raw_key: unique("floor"),
            delete: redis::Script::new(RAW_DELETE),
            rslock: rslock::LockManager::new(vec![url.to_owned()]),
            rslock_key: unique("rslock"),
            peer: peer.create_lock(&unique("peer")),
            semaphore: provider
                .semaphore(&unique("semaphore"), SEMAPHORE_MAX)
                .expect("semaphore"),
            semaphore_key: unique("semaphore-floor"),
            take: redis::Script::new(RAW_SEMAPHORE_TAKE),
            peer_semaphore: peer.create_semaphore(&unique("peer-semaphore"), SEMAPHORE_MAX),
        }
    }

    async fn cycle(&mut self, row: Row) {
        match row {
            Row::TollgateTry => try_acquire_release(&self.lock).await,
            Row::TollgateAcquire => acquire_release(&self.lock).await,
            Row::Floor => {
                let set: Option<String> = redis::cmd("SET")
                    .arg(&self.raw_key)
                    .arg("owner")
                    .arg("NX")
                    .arg("PX")
                    .arg(30_000)
                    .query_async(&mut self.raw)
                    .await
                    .expect("SET NX");
                assert!(set.is_some(), "the floor's key is free");
                let deleted: i64 = self
                    .delete
                    .key(&self.raw_key)
                    .arg("owner")
                    .invoke_async(&mut self.raw)
                    .await
                    .expect("compare-and-delete");
                assert_eq!(deleted, 1);
            }
            Row::Rslock => {
                let lock = self
                    .rslock
                    .lock(self.rslock_key.as_bytes(), Duration::from_secs(30))
                    .await
                    .expect("rslock lock");
                self.rslock.unlock(&lock).await;
            }
            Row::DistributedLock => {
                let handle = self
                    .peer
                    .try_acquire()
                    .await
                    .expect("try_acquire")
                    .expect("free");
                handle.release().await.expect("release");
            }
            Row::SemaphoreTollgate => try_acquire_release(&self.semaphore).await,
            Row::SemaphoreFloor => {
                let taken: i64 = self
                    .take
                    .key(&self.semaphore_key)
                    .arg("owner")
                    .arg(SEMAPHORE_MAX)
                    .invoke_async(&mut self.raw)
                    .await
                    .expect("take a ticket");
                assert_eq!(taken, 1, "the floor's semaphore has room");
                let removed: i64 = redis::cmd("ZREM")
                    .arg(&self.semaphore_key)
                    .arg("owner")
                    .query_async(&mut self.raw)
                    .await
                    .expect("ZREM");
                assert_eq!(removed, 1);
            }
            Row::SemaphorePeer => {
                let handle = self
                    .peer_semaphore
                    .try_acquire()
                    .await
                    .expect("try_acquire")
                    .expect("room");
                handle.release().await.expect("release");
            }
        }
    }
}

/// `TOLLGATE_BENCH_PARTNER=cycles`: 10,000 (`TOLLGATE_BENCH_CYCLES`) uncontended cycles of one
/// row of the uncontended section (`TOLLGATE_BENCH_ROW`: `tollgate` (`try_acquire` +
/// `release`, the default), `floor`, `semaphore`, `semaphore-floor`, `rslock`, `peer`), for
/// `strace -c -f` or `perf record` of that row alone.
fn cycles() {
    let url = server_url();
    let row = match std::env::var("TOLLGATE_BENCH_ROW").as_deref() {
        Ok("floor") => Row::Floor,
        Ok("semaphore") => Row::SemaphoreTollgate,
        Ok("semaphore-floor") => Row::SemaphoreFloor,
        Ok("rslock") => Row::Rslock,
        Ok("peer") => Row::DistributedLock,
        _ => Row::TollgateTry,
    };
    let count: u64 = tollgate_bench::args::env_number("TOLLGATE_BENCH_CYCLES").unwrap_or(10_000);
    current_thread().block_on(async {
        let mut subjects = Subjects::new(&url).await;
        for _ in 0..count {
            subjects.cycle(row).await;
        }
    });
}

/// Acquisitions per second of tollgate tasks contending for one lock.
async fn contend_tollgate(url: &str, round: usize, span: Duration) -> f64 {
    let provider = RedisProvider::from_url(url).expect("provider");
    let name = unique(&format!("contention-{round}"));
    let locks = (0..tollgate_bench::contention::TASKS)
        .map(|_| provider.lock(&name).expect("lock"))
        .collect();
    tollgate_bench::contention::tollgate_turns(locks, span).await
}

/// One floor task of the contention section: the shared connection, its own subscription,
/// the key and its own owner id.
struct FloorTask {
    connection: MultiplexedConnection,
    subscription: redis::aio::PubSub,
    key: String,
    owner: String,
    release: redis::Script,
}

/// Acquisitions per second of raw tasks contending for one key, woken by `PUBLISH`.
async fn contend_floor(url: &str, round: usize, span: Duration) -> f64 {
    let key = unique(&format!("contention-floor-{round}"));
    let channel = format!("{key}:released");
    let client = redis::Client::open(url).expect("redis URL");
    let connection = raw_connection(url).await;
    let mut tasks = Vec::new();
    for index in 0..tollgate_bench::contention::TASKS {
        let mut subscription = client.get_async_pubsub().await.expect("pubsub");
        subscription.subscribe(&channel).await.expect("subscribe");
        tasks.push(FloorTask {
            connection: connection.clone(),
            subscription,
            key: key.clone(),
            owner: format!("owner-{index}"),
            release: redis::Script::new(RAW_RELEASE),
        });
    }
    let channel = std::sync::Arc::new(channel);
    tollgate_bench::contention::turns(tasks, span, move |mut task| {
        let channel = channel.clone();
        async move {
            loop {
                let set: Option<String> = redis::cmd("SET")
                    .arg(&task.key)
                    .arg(&task.owner)
                    .arg("NX")
                    .arg("PX")
                    .arg(30_000)
                    .query_async(&mut task.connection)
                    .await
                    .expect("SET NX");
                if set.is_some() {
                    break;
                }
                let _ = tokio::time::timeout(
                    Duration::from_millis(50),
                    task.subscription.on_message().next(),
                )
                .await;
            }
            let released: i64 = task
                .release
                .key(&task.key)
                .arg(&task.owner)
                .arg(channel.as_str())
                .invoke_async(&mut task.connection)
                .await
                .expect("release");
            assert_eq!(released, 1);
            task
        }
    })
    .await
}

fn uncontended(runtime: &Runtime, url: &str, testing: bool) -> Vec<(Row, Duration)> {
    runtime.block_on(async {
        let mut subjects = Subjects::new(url).await;
        let medians = tollgate_bench::interleave::batch_medians(
            &mut subjects,
            &Row::ALL,
            BATCH,
            UNCONTENDED_TIME,
            testing,
        )
        .await;
        medians
    })
}

/// What each pair of the hand-off section is.
fn pair_label(pair: Pair) -> &'static str {
    match pair {
        Pair::Tollgate => "tollgate → tollgate (pub/sub release notification)",
        Pair::Raw => "raw floor: compare-and-delete + `PUBLISH` → `SUBSCRIBE` + `SET NX`",
    }
}

async fn subscribers(admin: &mut MultiplexedConnection, channel: &[u8]) -> i64 {
    let counts: Vec<(Vec<u8>, i64)> = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query_async(admin)
        .await
        .expect("PUBSUB NUMSUB");
    counts.first().map_or(0, |(_, count)| *count)
}

async fn until_subscribers(admin: &mut MultiplexedConnection, channel: &[u8], wanted: i64) {
    let started = Instant::now();
    while subscribers(admin, channel).await != wanted {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the partner's subscription did not change"
        );
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

/// The latencies of the measured rounds of one pair, in nanoseconds.
fn handoff(url: &str, pair: Pair, rounds: usize, warmup: usize) -> Vec<u64> {
    let name = unique(&format!("handoff-{}", pair.role()));
    let channel = [b"tollgate:released:".as_slice(), name.as_bytes()].concat();
    let mut partner = Partner::spawn(pair.role(), [(URL_ENV, url), (NAME_ENV, name.as_str())]);
    let runtime = current_thread();
    runtime.block_on(async {
        let mut admin = raw_connection(url).await;
        let provider = RedisProvider::from_url(url).expect("provider");
        let lock = provider.lock(&name).expect("lock");
        let release = redis::Script::new(RAW_RELEASE);
        let mut latencies = Vec::new();
        for round in 0..rounds + warmup {
            until_subscribers(&mut admin, &channel, 0).await;
            let held = match pair {
                Pair::Tollgate => Some(lock.acquire().await.expect("acquire")),
                Pair::Raw => {
                    let set: Option<String> = redis::cmd("SET")
                        .arg(&name)
                        .arg("a")
                        .arg("NX")
                        .arg("PX")
                        .arg(30_000)
                        .query_async(&mut admin)
                        .await
                        .expect("SET NX");
                    assert!(set.is_some());
                    None
                }
            };
            partner.send("go");
            until_subscribers(&mut admin, &channel, 1).await;
            tokio::time::sleep(Duration::from_millis(2)).await;
            let released_at = monotonic_ns();
            match held {
                Some(handle) => handle.release().await.expect("release"),
                None => {
                    let _: i64 = release
                        .key(&name)
                        .arg("a")
                        .arg(&channel)
                        .invoke_async(&mut admin)
                        .await
                        .expect("release");
                }
            }
            let round_ns = latency(released_at, partner.read_timestamp());
            partner.send("release");
            assert_eq!(partner.read_line(), "released");
            if round >= warmup {
                latencies.push(round_ns);
            }
        }
        latencies
    })
}

/// B: on `go`, acquires (waiting), prints the time it got it, releases on `release`.
fn partner(role: &str) {
    die_with_parent();
    if role == "cycles" {
        cycles();
        return;
    }
    let url = server_url();
    let name = std::env::var(NAME_ENV).expect("TOLLGATE_BENCH_NAME");
    let channel = [b"tollgate:released:".as_slice(), name.as_bytes()].concat();
    let runtime = current_thread();
    runtime.block_on(async {
        let provider = RedisProvider::from_url(&url).expect("provider");
        let lock = provider.lock(&name).expect("lock");
        let client = redis::Client::open(url.as_str()).expect("url");
        let mut raw = raw_connection(&url).await;
        let delete = redis::Script::new(RAW_DELETE);
        let mut stdin = std::io::stdin().lock().lines();
        say("ready");
        while let Some(Ok(line)) = stdin.next() {
            if line != "go" {
                continue;
            }
            match role {
                "tollgate" => {
                    let handle = lock.acquire().await.expect("acquire");
                    say(&monotonic_ns().to_string());
                    let _ = stdin.next();
                    handle.release().await.expect("release");
                }
                _ => {
                    let mut pubsub = client.get_async_pubsub().await.expect("pubsub");
                    pubsub.subscribe(&channel).await.expect("subscribe");
                    loop {
                        let set: Option<String> = redis::cmd("SET")
                            .arg(&name)
                            .arg("b")
                            .arg("NX")
                            .arg("PX")
                            .arg(30_000)
                            .query_async(&mut raw)
                            .await
                            .expect("SET NX");
                        if set.is_some() {
                            break;
                        }
                        pubsub.on_message().next().await;
                    }
                    say(&monotonic_ns().to_string());
                    drop(pubsub);
                    let _ = stdin.next();
                    let _: i64 = delete
                        .key(&name)
                        .arg("b")
                        .invoke_async(&mut raw)
                        .await
                        .expect("release");
                }
            }
            say("released");
        }
    });
}

//! Benchmarks of the ZooKeeper backend, each beside the raw floor measured in the same run.
//!
//! ```text
//! cargo bench -p tollgate-bench --features zookeeper --bench zookeeper
//! ```
//!
//! The server is `TOLLGATE_ZOOKEEPER_URL`'s first host, by default `127.0.0.1:2181` (as for
//! the tests).
//!
//! 1. **Acquire + release, uncontended** (one tokio current-thread runtime for all): a
//!    `ZooKeeperLock`'s `try_acquire().await` (and `acquire().await`) followed by
//!    `release().await`, and a semaphore of max 3 (`try_acquire` + `release`). Beside them
//!    the raw floor on a warm session of the same `zookeeper-client` crate: create an
//!    ephemeral sequential `lock-` node under an existing path, list the path's children,
//!    delete the node. Every row runs in batches of 50, interleaved round by round with the
//!    other rows so that they see the same machine; the medians of the per-batch means are
//!    reported.
//! 2. **Hand-off between two processes**: this process (A) holds the lock while a partner
//!    process (B, this binary run again with `TOLLGATE_BENCH_PARTNER` set) waits in
//!    `acquire()`. A waits until B's node is there and 2 ms more, so B is idle in its wait;
//!    then A reads `CLOCK_MONOTONIC` and releases, and B reads it as soon as its acquire
//!    returns. The raw floor does the same with bare requests: B creates its node, lists the
//!    children, watches the node ahead with `exists`, and lists again when the watch fires;
//!    A's release is a bare `delete`.
//!
//! Under `cargo test --benches` every row runs a few times only.

use std::io::BufRead;
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;
use tollgate::backend::zookeeper::{ZooKeeperLock, ZooKeeperProvider, ZooKeeperSemaphore};
use tollgate::{Acquire, Handle, LockProvider, SemaphoreProvider};
use tollgate_bench::args::BenchArgs;
use tollgate_bench::clock::monotonic_ns;
use tollgate_bench::current_thread;
use tollgate_bench::cycle::{acquire_release, try_acquire_release};
use tollgate_bench::handoff::{latency, Pair};
use tollgate_bench::partner::{die_with_parent, say, Partner};
use zookeeper_client as zk;

const URL_ENV: &str = "TOLLGATE_ZOOKEEPER_URL";
const DEFAULT_URL: &str = "zookeeper://127.0.0.1:2181";
/// The lock name of a hand-off pair, passed to the partner.
const NAME_ENV: &str = "TOLLGATE_BENCH_NAME";
/// The directory every benchmark's nodes live under.
const DIRECTORY: &str = "/tollgate-bench";
const BATCH: u32 = 50;
const UNCONTENDED_TIME: Duration = Duration::from_secs(20);
const HANDOFF_ROUNDS: usize = 300;
const HANDOFF_WARMUP: usize = 20;
/// The semaphore's max count in the uncontended rows.
const SEMAPHORE_MAX: u32 = 3;

fn main() {
    tollgate_bench::run(partner, bench);
}

/// The benchmarks (this process is A).
fn bench(args: BenchArgs) {
    if args.answer_list(&["uncontended", "handoff"]) {
        return;
    }
    let testing = args.testing();
    let url = server_url();
    println!("ZooKeeper at {} ({DIRECTORY})", hosts(&url));
    let runtime = current_thread();
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

    println!("\n==================== Summary ====================\n");
    println!("load average: {}", tollgate_bench::load::load_average());
    if let Some(rows) = rows {
        let median_of = |wanted: Row| {
            rows.iter()
                .find(|(row, _)| *row == wanted)
                .map_or(Duration::ZERO, |(_, median)| *median)
        };
        let table: Vec<_> = rows
            .iter()
            .map(|&(row, median)| (row.label(), median, median_of(Row::Floor)))
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

/// The hosts of a `zookeeper://` URL, as the client's connect string.
fn hosts(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    authority.rsplit('@').next().unwrap_or_default().to_owned()
}

/// The provider's URL: the server's hosts and the benchmarks' directory.
fn provider_url(url: &str) -> String {
    format!("zookeeper://{}{DIRECTORY}", hosts(url))
}

async fn raw_client(url: &str) -> zk::Client {
    zk::Client::connect(&hosts(url))
        .await
        .expect("connect to zookeeper")
}

fn unique(label: &str) -> String {
    format!("{label}-{}", std::process::id())
}

/// Creates `path` and its parents as persistent nodes, if missing.
async fn make_path(client: &zk::Client, path: &str) {
    let options = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    let mut prefix = String::new();
    for segment in path.trim_start_matches('/').split('/') {
        prefix.push('/');
        prefix.push_str(segment);
        match client.create(&prefix, &[], &options).await {
            Ok(_) | Err(zk::Error::NodeExists) => {}
            Err(error) => panic!("create {prefix}: {error}"),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Row {
    Floor,
    TollgateTry,
    TollgateAcquire,
    SemaphoreTollgate,
}

impl Row {
    const ALL: [Row; 4] = [
        Row::Floor,
        Row::TollgateTry,
        Row::TollgateAcquire,
        Row::SemaphoreTollgate,
    ];

    fn label(self) -> &'static str {
        match self {
            Row::Floor => "raw floor: create ephemeral sequential + list children + delete",
            Row::TollgateTry => "tollgate `try_acquire` + `release`",
            Row::TollgateAcquire => "tollgate `acquire` + `release`",
            Row::SemaphoreTollgate => "semaphore(3) tollgate `try_acquire` + `release`",
        }
    }
}

struct Subjects {
    lock: ZooKeeperLock,
    semaphore: ZooKeeperSemaphore,
    raw: zk::Client,
    raw_path: String,
}

impl tollgate_bench::interleave::Cycles for Subjects {
    type Row = Row;

    async fn cycle(&mut self, row: Row) {
        Subjects::cycle(self, row).await;
    }
}

impl Subjects {
    async fn new(url: &str) -> Subjects {
        let provider = ZooKeeperProvider::from_url(&provider_url(url)).expect("provider");
        let raw = raw_client(url).await;
        let raw_path = format!("{DIRECTORY}/{}", unique("floor"));
        make_path(&raw, &raw_path).await;
        Subjects {
            lock: provider.lock(&unique("uncontended")).expect("lock"),
            semaphore: provider
                .semaphore(&unique("semaphore"), SEMAPHORE_MAX)
                .expect("semaphore"),
            raw,
            raw_path,
        }
    }

    async fn cycle(&mut self, row: Row) {
        match row {
            Row::Floor => {
                let options = zk::CreateMode::EphemeralSequential.with_acls(zk::Acls::anyone_all());
                let (_, sequence) = self
                    .raw
                    .create(&format!("{}/lock-", self.raw_path), &[], &options)
                    .await
                    .expect("create");
                let node = format!("lock-{sequence}");
                let children = self.raw.list_children(&self.raw_path).await.expect("list");
                assert!(children.contains(&node), "the floor's node is listed");
                self.raw
                    .delete(&format!("{}/{node}", self.raw_path), None)
                    .await
                    .expect("delete");
            }
            Row::TollgateTry => try_acquire_release(&self.lock).await,
            Row::TollgateAcquire => acquire_release(&self.lock).await,
            Row::SemaphoreTollgate => try_acquire_release(&self.semaphore).await,
        }
    }

    async fn clean_up(&self) {
        let _ = self.raw.delete(&self.raw_path, None).await;
    }
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
        subjects.clean_up().await;
        medians
    })
}

/// What each pair of the hand-off section is.
fn pair_label(pair: Pair) -> &'static str {
    match pair {
        Pair::Tollgate => "tollgate → tollgate (a watch on the node ahead)",
        Pair::Raw => "raw floor: `delete` → `exists` watch fires, list children",
    }
}

/// Waits until `path` has `wanted` children.
async fn until_children(admin: &zk::Client, path: &str, wanted: usize) {
    let started = Instant::now();
    loop {
        let children = match admin.list_children(path).await {
            Ok(children) => children.len(),
            Err(zk::Error::NoNode) => 0,
            Err(error) => panic!("list {path}: {error}"),
        };
        if children == wanted {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the partner's node did not come or go"
        );
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

/// The latencies of the measured rounds of one pair, in nanoseconds.
fn handoff(url: &str, pair: Pair, rounds: usize, warmup: usize) -> Vec<u64> {
    let name = unique(&format!("handoff-{}", pair.role()));
    let mut partner = Partner::spawn(pair.role(), [(URL_ENV, url), (NAME_ENV, name.as_str())]);
    let runtime = current_thread();
    runtime.block_on(async {
        let admin = raw_client(url).await;
        let provider = ZooKeeperProvider::from_url(&provider_url(url)).expect("provider");
        let lock = provider.lock(&name).expect("lock");
        let path = lock.path().to_owned();
        make_path(&admin, &path).await;
        let options = zk::CreateMode::EphemeralSequential.with_acls(zk::Acls::anyone_all());
        let mut latencies = Vec::new();
        for round in 0..rounds + warmup {
            until_children(&admin, &path, 0).await;
            let held = match pair {
                Pair::Tollgate => Ok(lock.acquire().await.expect("acquire")),
                Pair::Raw => {
                    let (_, sequence) = admin
                        .create(&format!("{path}/lock-"), &[], &options)
                        .await
                        .expect("create");
                    Err(format!("{path}/lock-{sequence}"))
                }
            };
            partner.send("go");
            until_children(&admin, &path, 2).await;
            tokio::time::sleep(Duration::from_millis(2)).await;
            let released_at = monotonic_ns();
            match held {
                Ok(handle) => handle.release().await.expect("release"),
                Err(node) => admin.delete(&node, None).await.expect("delete"),
            }
            let round_ns = latency(released_at, partner.read_timestamp());
            partner.send("release");
            assert_eq!(partner.read_line(), "released");
            if round >= warmup {
                latencies.push(round_ns);
            }
        }
        let _ = admin.delete(&path, None).await;
        latencies
    })
}

/// B: on `go`, acquires (waiting), prints the time it got it, releases on `release`.
fn partner(role: &str) {
    die_with_parent();
    let url = server_url();
    let name = std::env::var(NAME_ENV).expect("TOLLGATE_BENCH_NAME");
    let runtime = current_thread();
    runtime.block_on(async {
        let provider = ZooKeeperProvider::from_url(&provider_url(&url)).expect("provider");
        let lock = provider.lock(&name).expect("lock");
        let path = lock.path().to_owned();
        let raw = raw_client(&url).await;
        let options = zk::CreateMode::EphemeralSequential.with_acls(zk::Acls::anyone_all());
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
                    let (_, sequence) = raw
                        .create(&format!("{path}/lock-"), &[], &options)
                        .await
                        .expect("create");
                    let mine = format!("lock-{sequence}");
                    loop {
                        let mut children = raw.list_children(&path).await.expect("list");
                        children.sort();
                        let at = children
                            .iter()
                            .position(|child| *child == mine)
                            .expect("mine is listed");
                        if at == 0 {
                            break;
                        }
                        let ahead = format!("{path}/{}", children[at - 1]);
                        match raw.check_and_watch_stat(&ahead).await.expect("exists") {
                            (None, _) => continue,
                            (Some(_), watcher) => {
                                watcher.changed().await;
                            }
                        }
                    }
                    say(&monotonic_ns().to_string());
                    let _ = stdin.next();
                    raw.delete(&format!("{path}/{mine}"), None)
                        .await
                        .expect("delete");
                }
            }
            say("released");
        }
    });
}

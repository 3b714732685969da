//! The Redis backend against real servers: the shared conformance suite on the server at
//! 127.0.0.1:6379 (with and without a key prefix) and on three servers of its own (all up,
//! and one of them stopped), plus Redis's own cases.
//!
//! The extra servers are `redis-server` processes on free loopback ports, started per test
//! and killed when the test's thread ends (and by the kernel, should this process die first).
#![cfg(feature = "redis")]

mod conformance;

use std::cell::RefCell;
use std::io::{BufRead, Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use tollgate::backend::redis::{RedisLock, RedisProvider};
use tollgate::{
    Acquire, AnyProvider, Error, Handle, LockProvider, ReadWriteLock, ReadWriteLockProvider,
    SemaphoreProvider,
};

use conformance::support::{unique, Locks, Writers, PROMPT};

holder_entry!();

/// The lease the suite runs with: short, so that killed holders free their holds promptly.
const SUITE_OPTIONS: &str = "expiry=3s";

/// The test server; `TOLLGATE_REDIS_URL` points elsewhere.
fn server() -> String {
    std::env::var("TOLLGATE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn url() -> String {
    format!("{}/?{SUITE_OPTIONS}", server())
}

fn prefixed_url() -> String {
    format!("{}/?{SUITE_OPTIONS}&prefix=tollgate-test%3A", server())
}

fn provider() -> RedisProvider {
    RedisProvider::from_url(&url()).expect("redis provider")
}

fn prefixed_provider() -> RedisProvider {
    RedisProvider::from_url(&prefixed_url()).expect("redis provider")
}

async fn admin() -> redis::aio::MultiplexedConnection {
    admin_on(&server()).await
}

async fn admin_on(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("connect to the test server")
}

/// Keys that contain `needle`.
async fn keys_containing(
    connection: &mut redis::aio::MultiplexedConnection,
    needle: &str,
) -> Vec<String> {
    let pattern = format!("*{}*", needle.replace(['*', '?', '[', ']', '\\'], "?"));
    connection.keys(pattern).await.unwrap()
}

/// `redis-server` processes of a test's own, on free loopback ports.
struct Servers {
    children: Vec<Option<Child>>,
    ports: Vec<u16>,
}

impl Servers {
    fn start(count: usize) -> Servers {
        let mut servers = Servers {
            children: Vec::new(),
            ports: Vec::new(),
        };
        for _ in 0..count {
            // A port found free can be taken by another test's server before ours binds it:
            // then ours exits, and the PING would be answered by the other one. So a server
            // counts as started only when the process answering on the port is our child.
            let (child, port) = (0..10)
                .find_map(|_| {
                    let port = std::net::TcpListener::bind("127.0.0.1:0")
                        .and_then(|listener| listener.local_addr())
                        .expect("a free port")
                        .port();
                    let mut child = spawn_redis_server(port);
                    if answers_as(port, &mut child) {
                        Some((child, port))
                    } else {
                        let _ = child.kill();
                        let _ = child.wait();
                        None
                    }
                })
                .expect("a redis-server of our own on a free port");
            servers.children.push(Some(child));
            servers.ports.push(port);
        }
        servers
    }

    fn url(&self, options: &str) -> String {
        let hosts: Vec<String> = self
            .ports
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        format!("redis://{}/?{options}", hosts.join(","))
    }

    fn server_url(&self, index: usize) -> String {
        format!("redis://127.0.0.1:{}", self.ports[index])
    }

    fn pid(&self, index: usize) -> i32 {
        self.children[index].as_ref().expect("running").id() as i32
    }

    /// Kills server `index` (its port then refuses connections).
    fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.children[index].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills server `index` and starts a new one on its port (empty: nothing persists).
    fn restart(&mut self, index: usize) {
        self.kill(index);
        let port = self.ports[index];
        let mut child = spawn_redis_server(port);
        assert!(answers_as(port, &mut child), "restarted on port {port}");
        self.children[index] = Some(child);
    }

    /// Freezes server `index`: connections stay open, nothing is answered.
    fn pause(&self, index: usize) {
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(self.pid(index), libc::SIGSTOP) };
    }

    fn resume(&self, index: usize) {
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(self.pid(index), libc::SIGCONT) };
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for index in 0..self.children.len() {
            if self.children[index].is_some() {
                self.resume(index);
            }
            self.kill(index);
        }
    }
}

fn spawn_redis_server(port: u16) -> Child {
    let mut command = Command::new("redis-server");
    command
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: prctl is async-signal-safe; the child dies with the thread that started it.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    command.spawn().expect("start redis-server")
}

/// Waits until `child` serves on `port`: false if it exits first (the port was taken) or
/// another process answers there.
fn answers_as(port: u16, child: &mut Child) -> bool {
    let started = Instant::now();
    loop {
        if child.try_wait().expect("redis-server status").is_some() {
            return false;
        }
        if let Some(pid) = server_pid(port) {
            return pid == child.id();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "redis-server on port {port} did not come up"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The `process_id` that the server on `port` reports, if one answers.
fn server_pid(port: u16) -> Option<u32> {
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

/// Takes and releases `lock` once, so that its provider has a connection to every server
/// (one that a test then stops or freezes, say).
async fn connect_everywhere(lock: &RedisLock) {
    lock.try_acquire()
        .await
        .unwrap()
        .expect("all up")
        .release()
        .await
        .unwrap();
}

thread_local! {
    /// The three servers of the running test (each test runs on a thread of its own).
    static TRIO: RefCell<Option<(Servers, String)>> = const { RefCell::new(None) };
}

/// The URL of three servers of this test's own; with `one_stopped`, the first is killed.
fn trio_url(one_stopped: bool) -> String {
    TRIO.with(|trio| {
        let mut trio = trio.borrow_mut();
        let (_, url) = trio.get_or_insert_with(|| {
            let mut servers = Servers::start(3);
            if one_stopped {
                servers.kill(0);
            }
            let url = servers.url(SUITE_OPTIONS);
            (servers, url)
        });
        url.clone()
    })
}

fn trio(one_stopped: bool) -> RedisProvider {
    RedisProvider::from_url(&trio_url(one_stopped)).expect("redlock provider")
}

mod single {
    use super::*;

    mod lock {
        use super::*;
        mutex_suite!(Locks {
            provider: provider(),
            url: url()
        });
    }

    mod semaphore {
        use super::*;
        semaphore_suite!(provider(), url(), stores_max_count);
    }

    mod composite {
        use super::*;
        composite_suite!(provider());
    }

    mod read_write {
        use super::*;
        read_write_suite!(provider(), url());
    }
}

mod prefixed {
    use super::*;

    mod lock {
        use super::*;
        mutex_suite!(Locks {
            provider: prefixed_provider(),
            url: prefixed_url()
        });
    }

    mod semaphore {
        use super::*;
        semaphore_suite!(prefixed_provider(), prefixed_url(), stores_max_count);
    }

    mod read_write {
        use super::*;
        read_write_suite!(prefixed_provider(), prefixed_url());
    }
}

mod three_servers {
    use super::*;

    mod lock {
        use super::*;
        mutex_suite!(Locks {
            provider: trio(false),
            url: trio_url(false)
        });
    }

    mod read_write {
        use super::*;
        read_write_suite!(trio(false), trio_url(false));
    }
}

mod three_servers_one_stopped {
    use super::*;

    mod lock {
        use super::*;
        mutex_suite!(Locks {
            provider: trio(true),
            url: trio_url(true)
        });
    }

    mod write_as_mutex {
        use super::*;
        mutex_suite!(Writers {
            provider: trio(true),
            url: trio_url(true)
        });
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn readers_share_writers_exclude() {
        conformance::rw::readers_share_writers_exclude(trio(true)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn waiting_writer_blocks_new_readers() {
        conformance::rw::waiting_writer_blocks_new_readers(trio(true)).await;
    }
}

/// Leases are extended on a runtime of the library's own: a caller whose runtime is blocked
/// (here: not run at all) for many expiries keeps its holds.
#[test]
fn a_blocked_runtime_does_not_starve_the_lease() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let provider = short_lease_provider();
    let name = unique("starved");
    let (lock, ticket) = runtime.block_on(async {
        let lock = provider.lock(&name).unwrap().acquire().await.unwrap();
        let ticket = provider
            .semaphore(&name, 1)
            .unwrap()
            .acquire()
            .await
            .unwrap();
        (lock, ticket)
    });
    // Five expiries during which the caller's runtime runs nothing.
    std::thread::sleep(Duration::from_secs(3));
    runtime.block_on(async {
        let other = RedisProvider::from_url(&url()).unwrap();
        assert!(
            other
                .lock(&name)
                .unwrap()
                .try_acquire()
                .await
                .unwrap()
                .is_none(),
            "the lock expired while the holder's runtime was blocked"
        );
        assert!(other
            .semaphore(&name, 1)
            .unwrap()
            .try_acquire()
            .await
            .unwrap()
            .is_none());
        assert!(!lock.loss_signal().is_lost() && !ticket.loss_signal().is_lost());
        lock.release().await.unwrap();
        ticket.release().await.unwrap();
        assert!(other
            .lock(&name)
            .unwrap()
            .try_acquire()
            .await
            .unwrap()
            .is_some());
    });
}

/// A provider of the test server whose leases last 600 ms (extended every 200 ms).
fn short_lease_provider() -> RedisProvider {
    RedisProvider::builder(&server())
        .unwrap()
        .expiry(Duration::from_millis(600))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn auto_extension_keeps_a_lock_past_its_expiry() {
    let provider = short_lease_provider();
    let name = unique("extended");
    let handle = provider.lock(&name).unwrap().acquire().await.unwrap();
    let reader_side = provider.read_write_lock(&name).unwrap();
    let reader = reader_side.reader().acquire().await.unwrap();
    let ticket = provider
        .semaphore(&name, 1)
        .unwrap()
        .acquire()
        .await
        .unwrap();
    // Five expiries later, every hold is still there.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let other = RedisProvider::from_url(&url()).unwrap();
    assert!(other
        .lock(&name)
        .unwrap()
        .try_acquire()
        .await
        .unwrap()
        .is_none());
    assert!(other
        .read_write_lock(&name)
        .unwrap()
        .writer()
        .try_acquire()
        .await
        .unwrap()
        .is_none());
    assert!(other
        .semaphore(&name, 1)
        .unwrap()
        .try_acquire()
        .await
        .unwrap()
        .is_none());
    for signal in [
        handle.loss_signal(),
        reader.loss_signal(),
        ticket.loss_signal(),
    ] {
        assert!(signal.can_detect());
        assert!(!signal.is_lost());
    }
    handle.release().await.unwrap();
    reader.release().await.unwrap();
    ticket.release().await.unwrap();
    assert!(other
        .lock(&name)
        .unwrap()
        .try_acquire()
        .await
        .unwrap()
        .is_some());
}

/// One task keeps every lease of a provider: holds taken at different moments are all kept
/// past several expiries, a deleted one fires its own loss signal and no other, and a hold
/// taken after every other was released (the task had ended) is kept again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_lease_task_keeps_holds_taken_at_any_moment() {
    let provider = short_lease_provider();
    let other = RedisProvider::from_url(&url()).unwrap();
    let base = unique("kept");
    let mut holds = Vec::new();
    for index in 0..8 {
        let lock = provider.lock(&format!("{base}-{index}")).unwrap();
        holds.push((lock.key().to_vec(), lock.acquire().await.unwrap()));
        // Staggered, so that the holds fall due at different moments.
        tokio::time::sleep(Duration::from_millis(90)).await;
    }
    let mut admin = admin().await;
    let deleted: i64 = admin.del(&holds[3].0).await.unwrap();
    assert_eq!(deleted, 1);
    tokio::time::timeout(Duration::from_secs(5), holds[3].1.lost())
        .await
        .expect("the deleted hold's loss fires");
    // Four expiries later, every other hold is still there.
    tokio::time::sleep(Duration::from_millis(2400)).await;
    for (index, (_, handle)) in holds.iter().enumerate() {
        assert_eq!(handle.loss_signal().is_lost(), index == 3, "hold {index}");
        let taken = other
            .lock(&format!("{base}-{index}"))
            .unwrap()
            .try_acquire()
            .await
            .unwrap();
        assert_eq!(taken.is_some(), index == 3, "hold {index}");
        if let Some(taken) = taken {
            taken.release().await.unwrap();
        }
    }
    for (_, handle) in holds {
        handle.release().await.unwrap();
    }
    // Past a cadence with no hold: the task has ended; a new hold starts it again.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let lock = provider.lock(&format!("{base}-again")).unwrap();
    let handle = lock.acquire().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1800)).await;
    assert!(!handle.loss_signal().is_lost());
    assert!(other
        .lock(&format!("{base}-again"))
        .unwrap()
        .try_acquire()
        .await
        .unwrap()
        .is_none());
    handle.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_holder_process_frees_the_lock_after_its_expiry() {
    let name = unique("killed");
    let holder_url = format!("{}/?expiry=2s", server());
    let mut holder = conformance::support::Holder::start(&holder_url, "lock", &name).await;
    holder.held().await;
    let lock = provider().lock(&name).unwrap();
    holder.kill().await;
    let killed = Instant::now();
    assert!(
        lock.try_acquire().await.unwrap().is_none(),
        "the lease outlives its holder"
    );
    let handle = tokio::time::timeout(PROMPT, lock.acquire())
        .await
        .expect("freed once the lease expires")
        .unwrap();
    assert!(
        killed.elapsed() < Duration::from_secs(3),
        "{:?}",
        killed.elapsed()
    );
    handle.release().await.unwrap();
}

/// Lock keys are the name verbatim, so the names of the other primitives' keys are refused as
/// lock names; a key of another type (another program's) is a clear error naming the keys.
#[tokio::test]
async fn key_namespaces_do_not_collide() {
    let provider = prefixed_provider();
    let name = unique("namespace");
    for taken in [
        format!("{{semaphore:{name}}}:tickets"),
        format!("{{rw:{name}}}:writer"),
    ] {
        match provider.lock(&taken) {
            Err(Error::InvalidArgument(message)) => assert!(message.contains("{"), "{message}"),
            other => panic!("{taken:?} should be refused as a lock name, got {other:?}"),
        }
    }
    let semaphore = provider.semaphore(&name, 2).unwrap();
    let mut admin = admin().await;
    let tickets = format!("tollgate-test:{{semaphore:{name}}}:tickets");
    let _: () = admin.set(&tickets, "another program's").await.unwrap();
    match semaphore.try_acquire().await {
        Err(Error::InvalidArgument(message)) => {
            assert!(
                message.contains("another type") && message.contains(&tickets),
                "{message}"
            )
        }
        other => panic!("expected a clear error, got {other:?}"),
    }
    let _: () = admin.del(&tickets).await.unwrap();
    assert!(semaphore.try_acquire().await.unwrap().is_some());
}

/// A release whose connection was killed (`CLIENT KILL`) goes again on a fresh one: no key is
/// left behind for the lease's length.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_release_after_client_kill_leaves_no_key() {
    let servers = Servers::start(1);
    let provider = RedisProvider::from_url(&servers.url("")).unwrap();
    let name = unique("client-kill");
    let lock = provider.lock(&name).unwrap();
    let handle = lock.acquire().await.unwrap();
    let client = redis::Client::open(servers.server_url(0)).unwrap();
    let mut admin = client.get_multiplexed_async_connection().await.unwrap();
    let killed: i64 = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "normal", "SKIPME", "yes"][..])
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!(killed >= 1, "the holder's connection was not there");
    handle.release().await.expect("the release goes again");
    let exists: i64 = admin.exists(lock.key()).await.unwrap();
    assert_eq!(exists, 0, "the key was left behind");
}

/// With the default options (a 30 s expiry), a deleted key is noticed within 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deleted_key_is_noticed_within_5_s_by_default() {
    let provider = RedisProvider::from_url(&format!("{}/?prefix=tollgate-test%3A", server()))
        .expect("redis provider");
    let name = unique("deleted-default");
    let lock = provider.lock(&name).unwrap();
    let handle = lock.acquire().await.unwrap();
    let deleted: i64 = admin().await.del(lock.key()).await.unwrap();
    assert_eq!(deleted, 1);
    let began = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(30), handle.lost())
        .await
        .expect("the loss fires");
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "noticed after {:?}",
        began.elapsed()
    );
    handle.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleting_the_key_fires_the_loss_signal() {
    let provider = prefixed_provider();
    let name = unique("deleted");
    let lock = provider.lock(&name).unwrap();
    let handle = lock.acquire().await.unwrap();
    let mut admin = admin().await;
    let key = lock.key().to_vec();
    assert_eq!(key, format!("tollgate-test:{name}").into_bytes());
    let deleted: i64 = admin.del(&key).await.unwrap();
    assert_eq!(deleted, 1);
    tokio::time::timeout(Duration::from_secs(5), handle.lost())
        .await
        .expect("loss fires within 5 s");
    assert!(handle.loss_signal().is_lost());
    // Releasing a lost hold is not an error, and does not touch a new holder's key.
    let next = lock.acquire().await.unwrap();
    handle.release().await.unwrap();
    assert!(lock.try_acquire().await.unwrap().is_none());
    next.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn majority_down_is_an_error_not_a_hang() {
    let mut servers = Servers::start(3);
    let provider =
        RedisProvider::from_url(&servers.url("expiry=3s&unreachable_timeout=1s")).unwrap();
    let lock = provider.lock(&unique("majority")).unwrap();
    drop(lock.try_acquire().await.unwrap().expect("all up"));
    servers.kill(1);
    servers.kill(2);
    let started = Instant::now();
    let error = tokio::time::timeout(PROMPT, lock.acquire())
        .await
        .expect("no hang")
        .unwrap_err();
    assert!(error.is_backend(), "{error}");
    // Ridden out for the unreachable_timeout, then given up with the servers' failure.
    assert!(error_chain(&error).contains("2 of 3"), "{error:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    let error = lock.try_acquire().await.unwrap_err();
    assert!(error.is_backend(), "{error}");
}

/// One server refusing (the key is held there) and a majority failing is still an error: a
/// refusal that answers first must not make the outage look like "held elsewhere".
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refusal_does_not_hide_a_majority_of_failures() {
    let mut servers = Servers::start(3);
    let provider = RedisProvider::from_url(&servers.url("expiry=3s")).unwrap();
    let name = unique("refused-and-down");
    let lock = provider.lock(&name).unwrap();
    connect_everywhere(&lock).await;
    let mut first = admin_on(&servers.server_url(0)).await;
    let _: () = redis::cmd("SET")
        .arg(lock.key())
        .arg("someone-else")
        .arg("PX")
        .arg(60_000)
        .query_async(&mut first)
        .await
        .unwrap();
    servers.kill(1);
    servers.kill(2);
    for _ in 0..20 {
        let error = lock.try_acquire().await.unwrap_err();
        assert!(error.is_backend(), "{error}");
        assert!(error.to_string().contains("2 of 3"), "{error}");
    }
    let error = tokio::time::timeout(PROMPT, lock.acquire_timeout(Duration::from_secs(1)))
        .await
        .expect("no hang")
        .unwrap_err();
    assert!(error.is_backend(), "{error}");
}

/// A user whom the server does not allow to SUBSCRIBE (an ACL) still gets its locks, waiters
/// falling back on their backoff, and the failing subscriptions do not make the release
/// listener reconnect in a loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_user_without_subscribe_still_gets_locks() {
    let servers = Servers::start(1);
    let mut admin = admin_on(&servers.server_url(0)).await;
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("nosub")
        .arg("on")
        .arg("nopass")
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .arg("-subscribe")
        .arg("-psubscribe")
        .arg("-ssubscribe")
        .query_async(&mut admin)
        .await
        .unwrap();
    let connections = |mut admin: redis::aio::MultiplexedConnection| async move {
        let info: String = redis::cmd("INFO")
            .arg("stats")
            .query_async(&mut admin)
            .await
            .unwrap();
        info.lines()
            .find_map(|line| line.strip_prefix("total_connections_received:"))
            .and_then(|count| count.trim().parse::<u64>().ok())
            .expect("total_connections_received")
    };
    let url = format!("redis://nosub@127.0.0.1:{}/?expiry=10s", servers.ports[0]);
    let name = unique("nosub");
    let holder = RedisProvider::from_url(&url).unwrap();
    let held = holder.lock(&name).unwrap().acquire().await.unwrap();
    let waiter = RedisProvider::from_url(&url).unwrap();
    let lock = waiter.lock(&name).unwrap();
    let waiting = tokio::spawn(async move { lock.acquire().await });
    let before = connections(admin.clone()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during = connections(admin.clone()).await - before;
    assert!(during < 20, "{during} connections in one second of waiting");
    held.release().await.unwrap();
    tokio::time::timeout(PROMPT, waiting)
        .await
        .expect("the waiter gets the lock by its backoff")
        .unwrap()
        .unwrap()
        .release()
        .await
        .unwrap();
}

/// A waiter subscribes to release notifications on every server but needs only half of them
/// to confirm: a hung server neither stretches a bounded wait nor hides a release.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_server_does_not_stall_a_waiter() {
    let servers = Servers::start(3);
    let url = servers.url("expiry=10s");
    let name = unique("hung-waiter");
    let holder = RedisProvider::from_url(&url).unwrap();
    let held = holder.lock(&name).unwrap().acquire().await.unwrap();
    let waiter = RedisProvider::from_url(&url).unwrap();
    let lock = waiter.lock(&name).unwrap();
    // Connect everywhere first, so the frozen server has open connections.
    assert!(lock.try_acquire().await.unwrap().is_none());
    servers.pause(0);
    let started = Instant::now();
    let error = lock
        .acquire_timeout(Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(error.is_timeout(), "{error}");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "a 0.3 s wait took {:?}",
        started.elapsed()
    );
    let waiting = tokio::spawn(async move { lock.acquire().await });
    let second = admin_on(&servers.server_url(1)).await;
    let channel_subscribed = || {
        let mut connection = second.clone();
        let channel = format!("tollgate:released:{name}");
        async move {
            let counts: Vec<(String, i64)> = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(&channel)
                .query_async(&mut connection)
                .await
                .unwrap();
            counts.iter().any(|(_, count)| *count > 0)
        }
    };
    tokio::time::timeout(PROMPT, async {
        while !channel_subscribed().await {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the waiter subscribes on a live server");
    held.release().await.unwrap();
    let handle = tokio::time::timeout(PROMPT, waiting)
        .await
        .expect("the waiter takes the lock from the live majority")
        .unwrap()
        .unwrap();
    handle.release().await.unwrap();
    servers.resume(0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hung_servers_do_not_stall_acquire_beyond_the_budget() {
    let servers = Servers::start(3);
    // expiry 2 s, min validity 1.5 s: an attempt may take about half a second.
    let provider = RedisProvider::from_url(
        &servers.url("expiry=2s&min_validity=1500ms&unreachable_timeout=1s"),
    )
    .unwrap();
    let name = unique("hung");
    let lock = provider.lock(&name).unwrap();
    connect_everywhere(&lock).await;
    servers.pause(0);
    let started = Instant::now();
    let handle = tokio::time::timeout(PROMPT, lock.acquire())
        .await
        .expect("no hang")
        .expect("a majority is up");
    assert!(
        started.elapsed() < Duration::from_millis(600),
        "{:?}",
        started.elapsed()
    );
    // Held on the majority: another provider's try is refused promptly.
    let other = RedisProvider::from_url(
        &servers.url("expiry=2s&min_validity=1500ms&unreachable_timeout=1s"),
    )
    .unwrap();
    let started = Instant::now();
    assert!(other
        .lock(&name)
        .unwrap()
        .try_acquire()
        .await
        .unwrap()
        .is_none());
    assert!(started.elapsed() < Duration::from_millis(600));
    // Extensions carry on with the majority: held past the expiry, not lost.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!handle.loss_signal().is_lost());
    assert!(other
        .lock(&name)
        .unwrap()
        .try_acquire()
        .await
        .unwrap()
        .is_none());
    let started = Instant::now();
    handle.release().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(600),
        "release waited for the hung server"
    );
    // With a majority frozen, an attempt fails within the budget rather than hanging, and
    // the wait gives up once the servers stayed unreachable for the unreachable_timeout (1 s).
    servers.pause(1);
    let started = Instant::now();
    let error = tokio::time::timeout(PROMPT, other.lock(&name).unwrap().acquire())
        .await
        .expect("no hang")
        .unwrap_err();
    assert!(error.is_backend(), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    servers.resume(0);
    servers.resume(1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn semaphore_max_count_is_stored_and_checked() {
    let provider = provider();
    let name = unique("max-count");
    let three = provider.semaphore(&name, 3).unwrap();
    assert_eq!(three.available().await.unwrap(), 3);
    let ticket = three.acquire().await.unwrap();
    assert_eq!(three.available().await.unwrap(), 2);
    let five = provider.semaphore(&name, 5).unwrap();
    match five.try_acquire().await {
        Err(Error::InvalidArgument(message)) => {
            assert!(message.contains("max count 3"), "{message}");
            assert!(message.contains('5'), "{message}");
        }
        other => panic!("expected a max count mismatch, got {other:?}"),
    }
    assert!(matches!(
        five.available().await,
        Err(Error::InvalidArgument(_))
    ));
    ticket.release().await.unwrap();
    // Once every ticket is back, the name is free for any max count.
    let ticket = five.try_acquire().await.unwrap().expect("free");
    assert_eq!(five.available().await.unwrap(), 4);
    drop(ticket);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_is_left_behind_after_release() {
    for prefixed in [false, true] {
        let provider = if prefixed {
            prefixed_provider()
        } else {
            provider()
        };
        let name = unique("leftovers");
        let mut admin = admin().await;
        let lock = provider.lock(&name).unwrap();
        let rw = provider.read_write_lock(&name).unwrap();
        let semaphore = provider.semaphore(&name, 2).unwrap();
        let held = lock.acquire().await.unwrap();
        let readers = [
            rw.reader().acquire().await.unwrap(),
            rw.reader().acquire().await.unwrap(),
        ];
        // A writer waits (marking itself), then gives up.
        assert!(rw
            .writer()
            .try_acquire_timeout(Duration::from_millis(100))
            .await
            .unwrap()
            .is_none());
        let tickets = [
            semaphore.acquire().await.unwrap(),
            semaphore.acquire().await.unwrap(),
        ];
        assert!(!keys_containing(&mut admin, &name).await.is_empty());
        held.release().await.unwrap();
        for reader in readers {
            reader.release().await.unwrap();
        }
        let writer = rw.writer().acquire().await.unwrap();
        writer.release().await.unwrap();
        let [first, second] = tickets;
        first.release().await.unwrap();
        drop(second);
        // The dropped ticket's release runs in the background; this process's next
        // acquire of the name waits for it.
        drop(semaphore.acquire().await.unwrap());
        let deadline = Instant::now() + PROMPT;
        loop {
            let left = keys_containing(&mut admin, &name).await;
            if left.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "keys left behind: {left:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_carry_the_prefix_and_the_name_verbatim() {
    let name = unique("verbatim{tag}");
    let mut admin = admin().await;
    let plain = provider().lock(&name).unwrap().acquire().await.unwrap();
    let prefixed = prefixed_provider()
        .lock(&name)
        .unwrap()
        .acquire()
        .await
        .unwrap();
    let exists: bool = admin.exists(&name).await.unwrap();
    assert!(exists, "the lock's key is the name itself");
    let exists: bool = admin.exists(format!("tollgate-test:{name}")).await.unwrap();
    assert!(exists, "the prefixed lock's key");
    let rw = prefixed_provider().read_write_lock(&name).unwrap();
    let reader = rw.reader().acquire().await.unwrap();
    let exists: bool = admin
        .exists(format!("tollgate-test:{{rw:{name}}}:readers"))
        .await
        .unwrap();
    assert!(exists, "the readers' key shares the hash tag");
    drop((plain, prefixed, reader));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn release_wakes_a_waiter_at_once() {
    let provider = provider();
    let name = unique("handoff");
    let lock = provider.lock(&name).unwrap();
    let waiter_lock = RedisProvider::from_url(&url())
        .unwrap()
        .lock(&name)
        .unwrap();
    let mut handoffs = Vec::new();
    for _ in 0..21 {
        let held = lock.acquire().await.unwrap();
        let (ready, ready_signal) = tokio::sync::oneshot::channel();
        let waiter = tokio::spawn({
            let lock = waiter_lock.clone();
            async move {
                let acquiring = lock.acquire();
                let _ = ready.send(());
                let handle = acquiring.await.unwrap();
                let at = Instant::now();
                handle.release().await.unwrap();
                at
            }
        });
        ready_signal.await.unwrap();
        // Let the waiter find the lock busy and subscribe.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let released = Instant::now();
        held.release().await.unwrap();
        let acquired = tokio::time::timeout(PROMPT, waiter).await.unwrap().unwrap();
        handoffs.push(acquired - released);
    }
    handoffs.sort();
    let median = handoffs[handoffs.len() / 2];
    // The fallback backoff would take 25 ms at least: this is the notification.
    assert!(
        median < Duration::from_millis(20),
        "median hand-off {median:?}: {handoffs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_options_unreachable_servers_and_redlock_semaphores() {
    let unreachable = RedisProvider::from_url("redis://127.0.0.1:1/?connect_timeout=1s").unwrap();
    let error = unreachable
        .lock("x")
        .unwrap()
        .try_acquire()
        .await
        .unwrap_err();
    assert!(error.is_backend(), "{error}");
    for bad in [
        "redis://h?expiry=1ms",
        "redis://h?extension_cadence=0s",
        "redis://h,?x",
        "rediss://h/#secure",
    ] {
        assert!(
            matches!(AnyProvider::from_url(bad), Err(Error::InvalidArgument(_))),
            "{bad}"
        );
    }
    let any = AnyProvider::from_url("redis://127.0.0.1:6379,127.0.0.1:6380").unwrap();
    assert_eq!(any.backend(), "redis");
    assert!(matches!(
        any.semaphore("x", 2),
        Err(Error::Unsupported { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_server_is_reconnected() {
    let mut servers = Servers::start(1);
    let url = servers.server_url(0);
    let provider = RedisProvider::from_url(&format!("{url}/?expiry=3s")).unwrap();
    let lock = provider.lock(&unique("restart")).unwrap();
    drop(lock.try_acquire().await.unwrap().expect("up"));
    let port = servers.ports[0];
    servers.kill(0);
    assert!(lock.try_acquire().await.unwrap_err().is_backend());
    let mut restarted = Servers::start(0);
    restarted.ports.push(port);
    let mut child = spawn_redis_server(port);
    assert!(answers_as(port, &mut child), "restarted on port {port}");
    restarted.children.push(Some(child));
    let _ = admin_on(&url).await;
    // Reconnects after a short pause that keeps a dead server cheap to include.
    let deadline = Instant::now() + PROMPT;
    loop {
        match lock.try_acquire().await {
            Ok(Some(_)) => break,
            Ok(None) => panic!("a fresh server has nothing held"),
            Err(error) => assert!(Instant::now() < deadline, "not reconnected: {error}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

mod faults {
    use super::*;
    use crate::conformance::faults;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_waiter_rides_out_a_server_restart() {
        let mut servers = Servers::start(1);
        let url = servers.url(SUITE_OPTIONS);
        let providers = || RedisProvider::from_url(&url).unwrap();
        let name = unique("ride-restart");
        let server = servers.server_url(0);
        faults::waiter_rides_out(providers(), providers(), &name, || async {
            // The waiter waits once it has subscribed to the release channel.
            wait_for_subscriber(&server).await;
            // Down for a moment, then back empty: the hold is gone with it.
            servers.restart(0);
            faults::Left::HoldMayBeGone
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_waiter_rides_out_a_server_that_is_down_for_a_while() {
        let mut servers = Servers::start(1);
        let url = servers.url(SUITE_OPTIONS);
        let providers = || RedisProvider::from_url(&url).unwrap();
        let name = unique("ride-down");
        let server = servers.server_url(0);
        let port = servers.ports[0];
        faults::waiter_rides_out(providers(), providers(), &name, || async {
            wait_for_subscriber(&server).await;
            servers.kill(0);
            // Refused for a second and a half: several tries of the waiter fail meanwhile.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let mut child = spawn_redis_server(port);
            assert!(answers_as(port, &mut child));
            servers.children[0] = Some(child);
            faults::Left::HoldMayBeGone
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_waiter_whose_connections_are_killed_keeps_waiting() {
        let servers = Servers::start(1);
        let url = servers.url(SUITE_OPTIONS);
        let name = unique("ride-kill");
        let server = servers.server_url(0);
        // The holder's connections are killed too (one server, every normal client): its
        // hold stays, and so does the waiter.
        faults::waiter_rides_out(
            RedisProvider::from_url(&url).unwrap(),
            RedisProvider::from_url(&url).unwrap(),
            &name,
            || async {
                wait_for_subscriber(&server).await;
                let mut admin = redis::Client::open(server.as_str())
                    .unwrap()
                    .get_multiplexed_async_connection()
                    .await
                    .unwrap();
                let killed: i64 = redis::cmd("CLIENT")
                    .arg(&["KILL", "TYPE", "normal", "SKIPME", "yes"])
                    .query_async(&mut admin)
                    .await
                    .unwrap();
                assert!(killed >= 1, "{killed} connections killed");
                let killed: i64 = redis::cmd("CLIENT")
                    .arg(&["KILL", "TYPE", "pubsub"])
                    .query_async(&mut admin)
                    .await
                    .unwrap();
                assert!(killed >= 1, "{killed} pub/sub connections killed");
                // It subscribes again once its listener reconnects.
                wait_for_subscriber(&server).await;
                faults::Left::HoldKept
            },
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn an_unreachable_server_ends_a_wait_after_the_limit() {
        let url = format!(
            "redis://127.0.0.1:{}/?unreachable_timeout=1s",
            faults::closed_port()
        );
        faults::unreachable_server_fails_after_the_limit(RedisProvider::from_url(&url).unwrap())
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_wrong_password_fails_at_once() {
        let servers = Servers::start(1);
        let mut admin = redis::Client::open(servers.server_url(0).as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let _: () = redis::cmd("CONFIG")
            .arg(&["SET", "requirepass", "right"])
            .query_async(&mut admin)
            .await
            .unwrap();
        let url = format!("redis://:wrong@127.0.0.1:{}/", servers.ports[0]);
        faults::errors_a_retry_cannot_mend_fail_at_once(RedisProvider::from_url(&url).unwrap())
            .await;
    }
}

/// Returns once some client of the server at `url` is subscribed to a channel (a waiter
/// that has started to wait).
async fn wait_for_subscriber(url: &str) {
    let mut admin = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    tokio::time::timeout(PROMPT, async {
        loop {
            let channels: Vec<Vec<u8>> = redis::cmd("PUBSUB")
                .arg("CHANNELS")
                .query_async(&mut admin)
                .await
                .unwrap();
            if !channels.is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("a waiter subscribes");
}

/// An error with its whole source chain, as the CLI prints it.
fn error_chain(error: &Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// One server under two names (`localhost` and `127.0.0.1`) in a RedLock list would count its
/// vote twice: found by its `run_id` at the first attempt, refused, and nothing is left held.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_server_under_two_names_is_refused() {
    let servers = Servers::start(2);
    let (first, second) = (servers.ports[0], servers.ports[1]);
    let url =
        format!("redis://localhost:{first},127.0.0.1:{first},127.0.0.1:{second}/?{SUITE_OPTIONS}");
    let provider = RedisProvider::from_url(&url).unwrap();
    let name = unique("aliased");
    let lock = provider.lock(&name).unwrap();
    match lock.try_acquire().await {
        Err(Error::InvalidArgument(message)) => {
            assert!(message.contains("one server"), "{message}");
            assert!(message.contains(&format!("localhost:{first}")), "{message}");
            assert!(message.contains(&format!("127.0.0.1:{first}")), "{message}");
        }
        other => panic!("expected the aliased servers to be refused, got {other:?}"),
    }
    // Nothing was left held where the attempt got in.
    let single = RedisProvider::from_url(&servers.url(SUITE_OPTIONS)).unwrap();
    let held = tokio::time::timeout(PROMPT, single.lock(&name).unwrap().acquire())
        .await
        .expect("nothing left held")
        .unwrap();
    drop(held);
}

/// A hold deleted behind its holder's back and released before the next extension noticed:
/// the release finds it gone and fires the loss signal.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_loss_found_at_release_fires_the_loss_signal() {
    let provider = RedisProvider::from_url(&format!("{}/?expiry=30s", server())).unwrap();
    let lock = provider.lock(&unique("loss-at-release")).unwrap();
    let handle = lock.acquire().await.unwrap();
    let loss = handle.loss_signal();
    let mut admin = admin().await;
    let deleted: i64 = redis::cmd("DEL")
        .arg(lock.key())
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    assert!(!loss.is_lost(), "the next extension is seconds away");
    handle.release().await.unwrap();
    assert!(loss.is_lost(), "the release found the hold gone");
}

/// RedLock over three servers: a hold gone from two of them (a restart wiped it, another
/// server never had it) is lost, though the third still had it; the release must not decide
/// on the first two answers when one of them is that third server's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hold_left_on_a_minority_is_found_lost_at_release() {
    let servers = Servers::start(3);
    let provider = RedisProvider::from_url(&servers.url("expiry=30s")).unwrap();
    let mut admins = Vec::new();
    for index in 0..3 {
        admins.push(admin_on(&servers.server_url(index)).await);
    }
    let mut rounds = 0;
    for round in 0..40 {
        let lock = provider.lock(&unique("minority")).unwrap();
        let handle = lock.acquire().await.unwrap();
        let loss = handle.loss_signal();
        // An acquire is decided by the first two grants; the third may land a moment later,
        // or (not sent yet when decided) never: only a hold on all three makes the round.
        let mut on_all = false;
        for _ in 0..100 {
            let mut present = 0;
            for admin in &mut admins {
                let exists: i64 = redis::cmd("EXISTS")
                    .arg(lock.key())
                    .query_async(admin)
                    .await
                    .unwrap();
                present += exists;
            }
            if present == 3 {
                on_all = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if !on_all {
            handle.release().await.unwrap();
            continue;
        }
        // Deleted on two servers, in turn each pair of the three.
        for index in [round % 3, (round + 1) % 3] {
            let deleted: i64 = redis::cmd("DEL")
                .arg(lock.key())
                .query_async(&mut admins[index])
                .await
                .unwrap();
            assert_eq!(deleted, 1);
        }
        assert!(!loss.is_lost(), "the next extension is seconds away");
        handle.release().await.unwrap();
        assert!(
            loss.is_lost(),
            "round {round}: the release found the hold on one server only"
        );
        rounds += 1;
    }
    assert!(
        rounds >= 10,
        "only {rounds} rounds had the hold on all three servers"
    );
}

/// The server restarts (empty) under a hold, and the holder releases before an extension
/// noticed: the release goes again on a fresh connection, finds a new server without the
/// hold, and fires the loss signal.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hold_wiped_by_a_restart_is_found_lost_at_release() {
    let mut servers = Servers::start(1);
    let provider = RedisProvider::from_url(&servers.url("expiry=30s")).unwrap();
    let lock = provider.lock(&unique("wiped")).unwrap();
    let handle = lock.acquire().await.unwrap();
    let loss = handle.loss_signal();
    servers.restart(0);
    assert!(!loss.is_lost(), "the next extension is seconds away");
    handle.release().await.unwrap();
    assert!(
        loss.is_lost(),
        "the release found the hold gone with the old server"
    );
}

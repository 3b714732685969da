//! The ZooKeeper backend against a real server: the shared conformance suite on the server at
//! 127.0.0.1:2181 (`TOLLGATE_ZOOKEEPER_URL` points elsewhere), plus ZooKeeper's own cases.
#![cfg(feature = "zookeeper")]

mod conformance;

use std::time::{Duration, Instant};

use tollgate::backend::zookeeper::ZooKeeperProvider;
use tollgate::{Acquire, AnyProvider, Handle, LockProvider, SemaphoreProvider};
use zookeeper_client as zk;

use conformance::support::{unique, Locks, PROMPT};

holder_entry!();

/// The session timeout the suite runs with: short, so that killed holders free their holds
/// promptly.
const SUITE_OPTIONS: &str = "session_timeout=2s";

/// The test server's hosts.
fn server() -> String {
    std::env::var("TOLLGATE_ZOOKEEPER_URL").unwrap_or_else(|_| "zookeeper://127.0.0.1:2181".into())
}

/// The hosts part of [`server`], for the test's own client.
fn hosts() -> String {
    let server = server();
    let rest = server
        .split_once("://")
        .map_or(server.as_str(), |(_, rest)| rest);
    rest.split(['/', '?']).next().unwrap_or_default().to_owned()
}

/// The suite's directory: every test's nodes live under it.
const DIRECTORY: &str = "/tollgate-test";

fn url() -> String {
    format!("{}{DIRECTORY}?{SUITE_OPTIONS}", server())
}

fn provider() -> ZooKeeperProvider {
    ZooKeeperProvider::from_url(&url()).expect("zookeeper provider")
}

async fn admin() -> zk::Client {
    zk::Client::connector()
        .with_session_timeout(Duration::from_secs(5))
        .connect(&hosts())
        .await
        .expect("connect to the test server")
}

/// The children of `path`, none when it does not exist.
async fn children(client: &zk::Client, path: &str) -> Vec<String> {
    match client.list_children(path).await {
        Ok(children) => children,
        Err(zk::Error::NoNode) => Vec::new(),
        Err(error) => panic!("list {path}: {error}"),
    }
}

/// Waits (bounded) until no contender's node is left under `path` (releases after a drop run
/// on tollgate's runtime); the path itself is a container node, which the server removes
/// later (see `containers_are_removed_once_empty`).
async fn assert_gone(client: &zk::Client, path: &str) {
    let started = Instant::now();
    loop {
        let left = children(client, path).await;
        if left.is_empty() {
            return;
        }
        assert!(started.elapsed() < PROMPT, "{path} still has {left:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

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

mod rw {
    use super::*;
    read_write_suite!(provider(), url());
}

mod composite {
    use super::*;
    composite_suite!(provider());
}

mod faults {
    use super::*;
    use conformance::faults;

    #[tokio::test]
    async fn unreachable_server_fails_after_the_limit() {
        let url = format!(
            "zookeeper://127.0.0.1:{}/?unreachable_timeout=1s&connect_timeout=200ms",
            faults::closed_port()
        );
        faults::unreachable_server_fails_after_the_limit(
            ZooKeeperProvider::from_url(&url).unwrap(),
        )
        .await;
    }

    /// A directory the provider was told exists, but does not: no retry mends that.
    #[tokio::test]
    async fn missing_assumed_directory_fails_at_once() {
        let url = format!(
            "{}/tollgate-test-missing-{}?assume_path_exists=true",
            server(),
            std::process::id()
        );
        faults::errors_a_retry_cannot_mend_fail_at_once(ZooKeeperProvider::from_url(&url).unwrap())
            .await;
    }
}

/// A lock's nodes are where DistributedLock.ZooKeeper puts them (`lock-` nodes under the
/// name's safe path), and nothing is left once it is released.
#[tokio::test]
async fn nodes_are_where_distributed_lock_puts_them() {
    let client = admin().await;
    let provider = provider();
    let name = format!("{}/with slash", unique("compat"));
    let lock = provider.lock(&name).unwrap();
    assert!(lock.path().starts_with(&format!("{DIRECTORY}/")));
    assert!(
        !lock.path()[DIRECTORY.len() + 1..].contains('/'),
        "{}",
        lock.path()
    );
    let handle = lock.acquire().await.unwrap();
    let nodes = children(&client, lock.path()).await;
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    assert!(
        nodes[0].starts_with("lock-") && nodes[0].len() == 15,
        "{nodes:?}"
    );
    assert_eq!(handle.node_path(), format!("{}/{}", lock.path(), nodes[0]));
    handle.release().await.unwrap();
    assert_gone(&client, lock.path()).await;
}

/// A waiter whose node is deleted behind its back fails with an error saying so, while the
/// next waiter gets the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_whose_node_is_deleted_fails_and_the_next_gets_the_lock() {
    let client = admin().await;
    let provider = provider();
    let lock = provider.lock(&unique("deleted-waiter")).unwrap();
    let held = lock.acquire().await.unwrap();
    let first = {
        let lock = lock.clone();
        tokio::spawn(async move { lock.acquire().await })
    };
    // Wait until the first waiter's node is there, then queue the second behind it.
    let nodes = loop {
        let nodes = children(&client, lock.path()).await;
        if nodes.len() == 2 {
            break nodes;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let second = {
        let lock = lock.clone();
        tokio::spawn(async move { lock.acquire().await })
    };
    while children(&client, lock.path()).await.len() < 3 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut sorted = nodes.clone();
    sorted.sort();
    client
        .delete(&format!("{}/{}", lock.path(), sorted[1]), None)
        .await
        .unwrap();
    let error = tokio::time::timeout(PROMPT, first)
        .await
        .expect("the first waiter ends")
        .unwrap()
        .expect_err("its node is gone");
    assert!(error.to_string().contains("deleted"), "{error}");
    held.release().await.unwrap();
    let next = tokio::time::timeout(PROMPT, second)
        .await
        .expect("the second waiter gets the lock")
        .unwrap()
        .unwrap();
    next.release().await.unwrap();
    assert_gone(&client, lock.path()).await;
}

/// Deleting the holder's node fires its loss signal.
#[tokio::test]
async fn deleting_the_held_node_fires_loss() {
    let client = admin().await;
    let provider = provider();
    let lock = provider.lock(&unique("deleted-hold")).unwrap();
    let handle = lock.acquire().await.unwrap();
    assert!(handle.can_detect_loss());
    client.delete(handle.node_path(), None).await.unwrap();
    tokio::time::timeout(PROMPT, handle.lost())
        .await
        .expect("the loss is seen");
    handle.release().await.unwrap();
    assert_gone(&client, lock.path()).await;
}

/// The fencing token grows across holders even when the lock's path was deleted and
/// created again in between (its sequence numbers start over; zxids do not).
#[tokio::test]
async fn fencing_tokens_grow_across_recreated_paths() {
    let client = admin().await;
    let provider = provider();
    let lock = provider.lock(&unique("fencing")).unwrap();
    let mut last = 0;
    for _ in 0..3 {
        let handle = lock.acquire().await.unwrap();
        let token = handle.fencing_token().expect("locks have tokens");
        assert!(token > last, "{token} after {last}");
        last = token;
        handle.release().await.unwrap();
        assert_gone(&client, lock.path()).await;
        client.delete(lock.path(), None).await.unwrap();
    }
}

/// A provider told the directory is someone else's does not create the lock's path, nor
/// does the server remove it (it is not a container).
#[tokio::test]
async fn an_assumed_path_is_left_untouched() {
    let client = admin().await;
    let directory = format!("{DIRECTORY}-assumed-{}", std::process::id());
    let options = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    let _ = client.create(&directory, &[], &options).await;
    let provider =
        ZooKeeperProvider::from_url(&format!("{}{directory}?assume_path_exists=true", server()))
            .unwrap();
    let name = unique("assumed");
    let lock = provider.lock(&name).unwrap();
    let error = lock
        .try_acquire()
        .await
        .expect_err("its path does not exist");
    assert!(error.to_string().contains("does not exist"), "{error}");
    client.create(lock.path(), &[], &options).await.unwrap();
    let handle = lock.acquire().await.unwrap();
    handle.release().await.unwrap();
    assert_gone(&client, lock.path()).await;
    assert!(client.check_stat(lock.path()).await.unwrap().is_some());
    client.delete(lock.path(), None).await.unwrap();
    client.delete(&directory, None).await.unwrap();
}

/// With `acl=creator` and credentials, another session without them can neither delete the
/// hold nor take the lock; a wrong password is a clear error and leaves no node.
#[tokio::test]
async fn creator_acl_keeps_others_out() {
    let client = admin().await;
    let directory = format!("{DIRECTORY}-acl-{}", std::process::id());
    let owner = ZooKeeperProvider::from_url(&format!(
        "zookeeper://alice:secret@{}{directory}?acl=creator",
        hosts()
    ))
    .unwrap();
    let lock = owner.lock("guarded").unwrap();
    let handle = lock.acquire().await.unwrap();
    let intruder = ZooKeeperProvider::from_url(&format!(
        "zookeeper://alice:wrong@{}{directory}?acl=creator",
        hosts()
    ))
    .unwrap();
    let error = intruder
        .lock("guarded")
        .unwrap()
        .try_acquire()
        .await
        .expect_err("not authorized");
    assert!(error.to_string().contains("not authorized"), "{error}");
    assert!(!error.is_transient(), "{error:?}");
    assert!(client.delete(handle.node_path(), None).await.is_err());
    handle.release().await.unwrap();
    let alice = zk::Client::connector()
        .with_auth("digest", b"alice:secret")
        .connect(&hosts())
        .await
        .unwrap();
    assert_gone(&alice, lock.path()).await;
    let _ = client.delete(&directory, None).await;
}

/// The `tollgate` URL reaches this backend through [`AnyProvider`].
#[tokio::test]
async fn any_provider_takes_zookeeper_urls() {
    for scheme in ["zookeeper", "zk"] {
        let url = format!("{scheme}://{}{DIRECTORY}", hosts());
        let provider = AnyProvider::from_url(&url).unwrap();
        assert_eq!(provider.backend(), "zookeeper");
        let lock = provider.lock(&unique("any")).unwrap();
        lock.acquire().await.unwrap().release().await.unwrap();
    }
}

/// A ZooKeeper server of the test's own, on a free loopback port, for the cases that stop,
/// pause or restart it; killed when dropped.
struct OwnServer {
    child: Option<std::process::Child>,
    port: u16,
    dir: tempfile::TempDir,
    /// `-D` options of the server's JVM.
    properties: Vec<String>,
}

impl OwnServer {
    async fn start() -> OwnServer {
        OwnServer::start_with(&[]).await
    }

    /// A server whose JVM gets these `-D` options.
    async fn start_with(properties: &[&str]) -> OwnServer {
        let dir = tempfile::tempdir().unwrap();
        let port = conformance::faults::closed_port();
        let config = format!(
            "tickTime=500\ndataDir={}\nclientPort={port}\nclientPortAddress=127.0.0.1\n\
             admin.enableServer=false\n4lw.commands.whitelist=ruok\nforceSync=no\n",
            dir.path().join("data").display()
        );
        std::fs::write(dir.path().join("zoo.cfg"), config).unwrap();
        let mut server = OwnServer {
            child: None,
            port,
            dir,
            properties: properties.iter().map(|p| format!("-D{p}")).collect(),
        };
        server.run().await;
        server
    }

    /// Starts the server process on the same port and data, and waits until it answers.
    async fn run(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("server.log")).unwrap();
        let child = std::process::Command::new("java")
            .args(&self.properties)
            .args([
                "-cp",
                "/etc/zookeeper/conf:/usr/share/java/zookeeper.jar",
                "org.apache.zookeeper.server.ZooKeeperServerMain",
            ])
            .arg(self.dir.path().join("zoo.cfg"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("java and Debian's zookeeper package (see .ci/run)");
        self.child = Some(child);
        let started = Instant::now();
        while !self.answers().await {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the server did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether `ruok` gets `imok`.
    async fn answers(&self) -> bool {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let ask = async {
            let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
            stream.write_all(b"ruok").await?;
            let mut reply = String::new();
            stream.read_to_string(&mut reply).await?;
            std::io::Result::Ok(reply == "imok")
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(2), ask).await,
            Ok(Ok(true))
        )
    }

    fn url(&self, options: &str) -> String {
        format!("zookeeper://127.0.0.1:{}/own?{options}", self.port)
    }

    fn signal(&self, signal: i32) {
        let pid = self.child.as_ref().unwrap().id() as i32;
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    /// Kills the server (its data stays) and starts it again.
    async fn restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.run().await;
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A holder cut off from its server for longer than the session timeout (the server paused)
/// loses its hold, and its provider opens a new session for the next acquire once the server
/// is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_cut_off_past_its_timeout_loses_its_holds() {
    let server = OwnServer::start().await;
    let provider = ZooKeeperProvider::from_url(&server.url("session_timeout=1s")).unwrap();
    let lock = provider.lock(&unique("cut-off")).unwrap();
    let handle = lock.acquire().await.unwrap();
    let other = provider.lock(&unique("cut-off-other")).unwrap();
    let other_handle = other.acquire().await.unwrap();
    server.signal(libc::SIGSTOP);
    let lost = tokio::time::timeout(PROMPT, async {
        handle.lost().await;
        other_handle.lost().await;
    })
    .await;
    server.signal(libc::SIGCONT);
    lost.expect("both holds are lost with the session");
    handle.release().await.unwrap();
    other_handle.release().await.unwrap();
    let again = tokio::time::timeout(PROMPT, lock.acquire())
        .await
        .expect("a new session gets the lock")
        .unwrap();
    assert!(!again.loss_signal().is_lost());
    again.release().await.unwrap();
}

/// A waiter keeps waiting while its server restarts (the session outlives the restart), and
/// gets the lock once the holder lets go; the holder's hold is kept meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_survive_a_server_restart() {
    let mut server = OwnServer::start().await;
    let url = server.url("session_timeout=10s");
    let name = unique("restart");
    let holders = ZooKeeperProvider::from_url(&url).unwrap();
    let waiters = ZooKeeperProvider::from_url(&url).unwrap();
    let path = holders.path_of(&name);
    let hosts = format!("127.0.0.1:{}", server.port);
    let server_ref = &mut server;
    conformance::faults::waiter_rides_out(holders, waiters, &name, || async move {
        // The waiter queues behind the holder first.
        let client = zk::Client::connect(&hosts).await.unwrap();
        let started = Instant::now();
        while children(&client, &path).await.len() < 2 {
            assert!(started.elapsed() < PROMPT, "the waiter never queued");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(client);
        server_ref.restart().await;
        conformance::faults::Left::HoldKept
    })
    .await;
}

/// Every path tollgate creates is a container node: once a primitive's last contender is
/// gone, the server removes its path, and then the ancestors tollgate created, by itself
/// (this server looks every 200 ms instead of every minute).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_are_removed_once_empty() {
    let server = OwnServer::start_with(&["znode.container.checkIntervalMs=200"]).await;
    let provider = ZooKeeperProvider::from_url(&server.url("")).unwrap();
    let lock = provider.lock("deep").unwrap();
    let semaphore = provider.semaphore("counted", 2).unwrap();
    let held = lock.acquire().await.unwrap();
    let ticket = semaphore.acquire().await.unwrap();
    let client = zk::Client::connect(&format!("127.0.0.1:{}", server.port))
        .await
        .unwrap();
    assert!(client.check_stat("/own").await.unwrap().is_some());
    held.release().await.unwrap();
    ticket.release().await.unwrap();
    let started = Instant::now();
    while client.check_stat("/own").await.unwrap().is_some() {
        assert!(
            started.elapsed() < PROMPT,
            "left behind: {:?}",
            children(&client, "/own").await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TCP proxy between the provider and a server, which can swallow the server's replies and
/// cut the connections: a lost reply and a connection lost at a chosen moment.
struct Proxy {
    port: u16,
    swallow: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cut: std::sync::Arc<tokio::sync::Notify>,
    forwarded: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Proxy {
    async fn start(server_port: u16) -> Proxy {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Proxy {
            port: listener.local_addr().unwrap().port(),
            swallow: Default::default(),
            cut: Default::default(),
            forwarded: Default::default(),
        };
        let (swallow, cut, forwarded) = (
            proxy.swallow.clone(),
            proxy.cut.clone(),
            proxy.forwarded.clone(),
        );
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", server_port)).await
                else {
                    continue;
                };
                let (swallow, cut, forwarded) = (swallow.clone(), cut.clone(), forwarded.clone());
                tokio::spawn(async move {
                    let (mut client_in, mut client_out) = client.into_split();
                    let (mut server_in, mut server_out) = server.into_split();
                    let up = async {
                        let mut buffer = [0u8; 16384];
                        while let Ok(read @ 1..) = client_in.read(&mut buffer).await {
                            if server_out.write_all(&buffer[..read]).await.is_err() {
                                break;
                            }
                            forwarded.fetch_add(read, Ordering::SeqCst);
                        }
                    };
                    let down = async {
                        let mut buffer = [0u8; 16384];
                        while let Ok(read @ 1..) = server_in.read(&mut buffer).await {
                            if swallow.load(Ordering::SeqCst) {
                                continue;
                            }
                            if client_out.write_all(&buffer[..read]).await.is_err() {
                                break;
                            }
                        }
                    };
                    // Either side closing, or a cut, ends both directions.
                    tokio::select! {
                        () = up => {}
                        () = down => {}
                        () = cut.notified() => {}
                    }
                });
            }
        });
        proxy
    }

    fn url(&self, options: &str) -> String {
        format!("zookeeper://127.0.0.1:{}/own?{options}", self.port)
    }

    /// Closes every connection through the proxy now.
    fn cut(&self) {
        self.cut.notify_waiters();
    }
}

/// A create whose reply is lost with the connection is found again on the retry by the token
/// in its node, so the acquire holds that node and leaves no orphan behind (DistributedLock's
/// issue #156).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_whose_reply_is_lost_is_found_again() {
    use std::sync::atomic::Ordering;
    let server = OwnServer::start().await;
    let proxy = Proxy::start(server.port).await;
    let provider = ZooKeeperProvider::from_url(&proxy.url("session_timeout=10s")).unwrap();
    let lock = provider.lock("lost-reply").unwrap();
    // Open the session (and the path) first.
    lock.acquire().await.unwrap().release().await.unwrap();
    let client = zk::Client::connect(&format!("127.0.0.1:{}", server.port))
        .await
        .unwrap();
    proxy.swallow.store(true, Ordering::SeqCst);
    let sent = proxy.forwarded.load(Ordering::SeqCst);
    let acquiring = tokio::spawn({
        let lock = lock.clone();
        async move { lock.acquire().await }
    });
    // The create reached the server, its reply did not come back: cut the connection.
    let started = Instant::now();
    while children(&client, lock.path()).await.is_empty() {
        assert!(started.elapsed() < PROMPT, "the create never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(proxy.forwarded.load(Ordering::SeqCst) > sent);
    proxy.swallow.store(false, Ordering::SeqCst);
    proxy.cut();
    let handle = tokio::time::timeout(PROMPT, acquiring)
        .await
        .expect("the acquire ends")
        .unwrap()
        .expect("it holds the node its lost create made");
    let nodes = children(&client, lock.path()).await;
    assert_eq!(nodes.len(), 1, "an orphan was left: {nodes:?}");
    assert_eq!(handle.node_path(), format!("{}/{}", lock.path(), nodes[0]));
    handle.release().await.unwrap();
    assert_gone(&client, lock.path()).await;
}

/// A held node deleted while its holder's connection was down (so no watch event reaches it)
/// is found gone when the connection comes back: the holds are checked again after every
/// reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_deleted_while_disconnected_is_lost_after_the_reconnect() {
    use std::sync::atomic::Ordering;
    let server = OwnServer::start().await;
    let proxy = Proxy::start(server.port).await;
    let provider = ZooKeeperProvider::from_url(&proxy.url("session_timeout=10s")).unwrap();
    let lock = provider.lock("deleted-while-away").unwrap();
    let handle = lock.acquire().await.unwrap();
    let client = zk::Client::connect(&format!("127.0.0.1:{}", server.port))
        .await
        .unwrap();
    // Nothing reaches the holder, then its connection drops; meanwhile its node goes.
    proxy.swallow.store(true, Ordering::SeqCst);
    client.delete(handle.node_path(), None).await.unwrap();
    proxy.cut();
    proxy.swallow.store(false, Ordering::SeqCst);
    tokio::time::timeout(PROMPT, handle.lost())
        .await
        .expect("the loss is found after the reconnect");
    handle.release().await.unwrap();
}

/// A disconnection shorter than the session timeout is no loss: across a server restart the
/// hold stays held (another provider is still refused) and its loss signal never fires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_disconnection_is_no_loss() {
    let mut server = OwnServer::start().await;
    let url = server.url("session_timeout=10s");
    let holder = ZooKeeperProvider::from_url(&url).unwrap();
    let other = ZooKeeperProvider::from_url(&url).unwrap();
    let name = unique("short-disconnection");
    let handle = holder.lock(&name).unwrap().acquire().await.unwrap();
    server.restart().await;
    let lock = other.lock(&name).unwrap();
    let refused = tokio::time::timeout(PROMPT, async {
        loop {
            // Tries fail while the server is still coming up; once it answers, the lock is
            // still held.
            match lock.try_acquire().await {
                Ok(outcome) => return outcome,
                Err(error) => assert!(error.is_transient(), "{error:?}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the other provider gets an answer");
    assert!(
        refused.is_none(),
        "the hold was lost across a short disconnection"
    );
    // Past the point where the holder's session has reconnected: still not lost.
    let started = Instant::now();
    while holder
        .lock(&unique("probe"))
        .unwrap()
        .try_acquire()
        .await
        .is_err()
    {
        assert!(started.elapsed() < PROMPT, "the holder never reconnected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!handle.loss_signal().is_lost());
    handle.release().await.unwrap();
    let taken = lock
        .try_acquire()
        .await
        .unwrap()
        .expect("free after the release");
    taken.release().await.unwrap();
}

//! The ZooKeeper backend against a real server: the shared conformance suite on the server at
//! 127.0.0.1:2181 (`TOLLGATE_ZOOKEEPER_URL` points elsewhere), plus ZooKeeper's own cases.
#![cfg(feature = "zookeeper")]

mod conformance;

use std::time::{Duration, Instant};

use tollgate::backend::zookeeper::ZooKeeperProvider;
use tollgate::{Acquire, AnyProvider, Handle, LockProvider};
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

/// Waits (bounded) until `path` is gone: releases after a drop run on tollgate's runtime.
async fn assert_gone(client: &zk::Client, path: &str) {
    let started = Instant::now();
    while client.check_stat(path).await.unwrap().is_some() {
        assert!(
            started.elapsed() < PROMPT,
            "{path} is still there: {:?}",
            children(client, path).await
        );
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
    }
}

/// A provider told the directory is someone else's neither creates nor deletes the lock's
/// path.
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
    assert_gone(&client, lock.path()).await;
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

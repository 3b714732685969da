//! The MySQL / MariaDB backend against the real server at 127.0.0.1:3306: the shared
//! conformance suite, plus MySQL's own cases.
#![cfg(feature = "mysql")]

mod conformance;

use std::time::Duration;

use mysql_async::prelude::Queryable;
use tollgate::backend::mysql::MySqlProvider;
use tollgate::{Acquire, AnyProvider, Error, Handle, LockProvider};

use conformance::support::{unique, Locks, PROMPT};

holder_entry!();

/// The test server; `TOLLGATE_MYSQL_URL` points elsewhere.
fn url() -> String {
    std::env::var("TOLLGATE_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

fn provider() -> MySqlProvider {
    MySqlProvider::from_url(&url()).expect("mysql provider")
}

async fn admin() -> mysql_async::Conn {
    mysql_async::Conn::new(mysql_async::Opts::from_url("mysql://root@127.0.0.1:3306/test").unwrap())
        .await
        .expect("connect to the test server")
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
    semaphore_suite!(provider(), url());
}

/// The edges of a hold's life (the shared `hold_life_suite!`) on callers' connections
/// (`lock_on_connection`): every instance from [`CallerConnections::make`] locks on a
/// connection of its own (two instances are two sessions), opened on its first acquire and
/// closed once the instance and its handles are gone. The classic mutex cases are not run
/// here: their 100 contenders would be 100 connections.
mod caller_connection {
    use super::*;
    use conformance::support::Subject;
    use std::sync::Arc;
    use tokio::sync::OnceCell;
    use tollgate::backend::mysql::{lock_on_connection, ConnectionLockHandle, SharedConnection};
    use tollgate::Wait;

    /// Makes [`OnOwnConnection`] locks; a child process holds the same name through the
    /// pooled provider, which maps it to the same `GET_LOCK` name (`lock_name`).
    pub struct CallerConnections;

    impl Subject for CallerConnections {
        type Primitive = OnOwnConnection;
        fn make(&self, name: &str) -> OnOwnConnection {
            OnOwnConnection {
                name: name.to_owned(),
                connection: Arc::new(OnceCell::new()),
            }
        }
        fn url(&self) -> String {
            url()
        }
        fn child_kind(&self) -> String {
            "lock".into()
        }
    }

    /// A lock by name through `lock_on_connection` on a connection of this instance (and
    /// its clones), opened on the first acquire. The handles keep the connection, so it
    /// closes once the instance and its handles are gone.
    #[derive(Clone)]
    pub struct OnOwnConnection {
        name: String,
        connection: Arc<OnceCell<SharedConnection>>,
    }

    impl OnOwnConnection {
        async fn connection(&self) -> tollgate::Result<SharedConnection> {
            let connection = self
                .connection
                .get_or_try_init(|| async {
                    let opts = mysql_async::Opts::from_url(&url())
                        .map_err(|error| Error::invalid(format!("bad test URL: {error}")))?;
                    let conn = mysql_async::Conn::new(opts).await.map_err(|error| {
                        Error::backend("test", "cannot open a caller connection", error)
                    })?;
                    Ok::<_, Error>(Arc::new(tokio::sync::Mutex::new(conn)))
                })
                .await?;
            Ok(connection.clone())
        }
    }

    impl Acquire for OnOwnConnection {
        type Handle = ConnectionLockHandle;

        fn name(&self) -> &str {
            &self.name
        }

        async fn acquire_wait(&self, wait: Wait) -> tollgate::Result<Option<Self::Handle>> {
            lock_on_connection(self.connection().await?, &self.name, wait).await
        }
    }

    hold_life_suite!(caller_driven CallerConnections);
}

mod composite {
    use super::*;
    composite_suite!(provider());
}

#[tokio::test]
async fn killed_connection_fires_loss_and_a_waiter_proceeds() {
    let provider = provider();
    let name = unique("kill");
    let lock = provider.lock(&name).unwrap();
    let handle = lock.acquire().await.unwrap();
    assert!(handle.can_detect_loss());
    let waiter = tokio::spawn({
        let lock = MySqlProvider::from_url(&url())
            .unwrap()
            .lock(&name)
            .unwrap();
        async move { lock.acquire().await.map(drop) }
    });
    let mut admin = admin().await;
    let holder: Option<u64> = admin
        .exec_first("SELECT IS_USED_LOCK(?)", (lock.lock_name(),))
        .await
        .unwrap();
    let holder = holder.expect("the lock is held on the server");
    admin
        .query_drop(format!("KILL CONNECTION {holder}"))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), handle.lost())
        .await
        .expect("loss fires within 5 s");
    tokio::time::timeout(PROMPT, waiter)
        .await
        .expect("a waiter gets the lock")
        .unwrap()
        .unwrap();
    handle.release().await.unwrap();
}

#[tokio::test]
async fn names_map_like_distributed_lock_and_stay_case_sensitive() {
    let provider = provider();
    assert_eq!(
        provider.lock("ABC").unwrap().lock_name(),
        "abczj4qr6tvn4a3kmgq4bukhowqyfrlxsb3"
    );
    assert_eq!(
        provider.lock("").unwrap().lock_name(),
        "__empty__p6ad62yppho33ytkibum5wbqhqvbcsxa"
    );
    let base = unique("case");
    let upper = provider
        .lock(&format!("{base}-X"))
        .unwrap()
        .acquire()
        .await
        .unwrap();
    let lower = provider
        .lock(&format!("{base}-x"))
        .unwrap()
        .try_acquire()
        .await
        .unwrap();
    assert!(
        lower.is_some(),
        "case-sensitive for our users even though MySQL is not"
    );
    drop((upper, lower));
    let exact = MySqlProvider::builder(&url())
        .unwrap()
        .exact_names(true)
        .build()
        .unwrap();
    assert!(matches!(exact.lock(""), Err(Error::InvalidArgument(_))));
    assert!(matches!(
        exact.lock(&"x".repeat(65)),
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(exact.lock("Exact_Name").unwrap().lock_name(), "Exact_Name");
}

/// More contenders than the server lets in at once (an account limited to two connections,
/// refused with 1203 as a full server refuses with 1040) all get the lock in turn: a
/// connection refused for want of slots is ridden out, not an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn contenders_beyond_the_connection_limit_wait_their_turn() {
    let mut admin = admin().await;
    for host in ["127.0.0.1", "localhost"] {
        admin
            .query_drop(format!(
                "CREATE USER IF NOT EXISTS 'tollgate_limited'@'{host}' \
                 WITH MAX_USER_CONNECTIONS 2"
            ))
            .await
            .unwrap();
        admin
            .query_drop(format!(
                "GRANT SELECT ON test.* TO 'tollgate_limited'@'{host}' WITH MAX_USER_CONNECTIONS 2"
            ))
            .await
            .unwrap();
    }
    let provider = MySqlProvider::from_url("mysql://tollgate_limited@127.0.0.1:3306/test").unwrap();
    let name = unique("slots");
    let locks = (0..6).map(|_| provider.lock(&name).unwrap()).collect();
    conformance::support::contenders_take_turns(locks, Duration::from_secs(30)).await;
}

#[tokio::test]
async fn many_holds_share_few_connections_and_nothing_leaks() {
    let provider = MySqlProvider::builder(&url())
        .unwrap()
        .pool_size(4)
        .build()
        .unwrap();
    let base = unique("multiplex");
    let mut handles = Vec::new();
    for index in 0..200 {
        handles.push(
            provider
                .lock(&format!("{base}-{index}"))
                .unwrap()
                .try_acquire()
                .await
                .unwrap()
                .expect("free"),
        );
    }
    assert!(
        provider.connection_count() <= 2,
        "{}",
        provider.connection_count()
    );
    for handle in handles {
        handle.release().await.unwrap();
    }
    let name = unique("no-leak");
    let lock = provider.lock(&name).unwrap();
    for _ in 0..30 {
        let held = lock.acquire().await.unwrap();
        assert!(provider
            .lock(&name)
            .unwrap()
            .try_acquire_timeout(Duration::from_millis(20))
            .await
            .unwrap()
            .is_none());
        held.release().await.unwrap();
    }
    assert!(provider.connection_count() <= 4);
    let mut admin = admin().await;
    let used: Option<Option<u64>> = admin
        .exec_first("SELECT IS_USED_LOCK(?)", (lock.lock_name(),))
        .await
        .unwrap();
    assert_eq!(used, Some(None), "nothing left held on the server");
}

#[tokio::test]
async fn cancelled_wait_leaves_nothing_on_the_server() {
    let provider = provider();
    let name = unique("cancel-server");
    let held = provider.lock(&name).unwrap().acquire().await.unwrap();
    for _ in 0..5 {
        let lock = provider.lock(&name).unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(30), lock.acquire())
                .await
                .is_err()
        );
    }
    held.release().await.unwrap();
    let fresh = MySqlProvider::from_url(&url())
        .unwrap()
        .lock(&name)
        .unwrap();
    let again = tokio::time::timeout(PROMPT, fresh.acquire())
        .await
        .expect("lock is free")
        .unwrap();
    drop(again);
}

#[tokio::test]
async fn bad_urls_unreachable_servers_and_no_rw_locks() {
    for bad in [
        "mysql://[::1",
        "mysql://root@h/db?pool_size=x",
        "mysql://root@h/db?keepalive=0",
        "postgres-ish://x",
    ] {
        match MySqlProvider::from_url(bad) {
            Err(Error::InvalidArgument(_)) => {}
            other => panic!("{bad}: expected invalid argument, got {other:?}"),
        }
    }
    let unreachable = MySqlProvider::from_url("mysql://root@127.0.0.1:1/test").unwrap();
    let error = unreachable
        .lock("x")
        .unwrap()
        .try_acquire()
        .await
        .unwrap_err();
    assert!(error.is_backend(), "{error}");
    let any = AnyProvider::from_url(&url()).unwrap();
    assert!(matches!(
        tollgate::ReadWriteLockProvider::read_write_lock(&any, "x"),
        Err(Error::Unsupported { .. })
    ));
}

#[tokio::test]
async fn locks_on_the_callers_connection() {
    use tollgate::backend::mysql::{lock_name, lock_on_connection};
    use tollgate::Wait;
    let connection = std::sync::Arc::new(tokio::sync::Mutex::new(admin().await));
    let name = unique("own-connection");
    let handle = lock_on_connection(connection.clone(), &name, Wait::Forever)
        .await
        .unwrap()
        .expect("free");
    // Other connections see it held.
    assert!(provider()
        .lock(&name)
        .unwrap()
        .try_acquire()
        .await
        .unwrap()
        .is_none());
    // Re-acquiring on the same connection is not silently re-entrant.
    assert!(lock_on_connection(connection.clone(), &name, Wait::NO_WAIT)
        .await
        .unwrap()
        .is_none());
    match lock_on_connection(connection.clone(), &name, Wait::Forever).await {
        Err(Error::Deadlock { .. }) => {}
        other => panic!(
            "an unbounded re-acquire on the holding connection must be a deadlock: {other:?}"
        ),
    }
    let started = std::time::Instant::now();
    let bounded = lock_on_connection(
        connection.clone(),
        &name,
        Wait::AtMost(Duration::from_millis(200)),
    )
    .await;
    assert!(bounded.unwrap().is_none());
    assert!(
        started.elapsed() >= Duration::from_millis(200)
            && started.elapsed() < Duration::from_millis(500)
    );
    handle.release().await.unwrap();
    assert!(provider()
        .lock(&name)
        .unwrap()
        .try_acquire()
        .await
        .unwrap()
        .is_some());

    // A wait cancelled mid-way leaves nothing held, and the connection works afterwards.
    let other = provider().lock(&name).unwrap().acquire().await.unwrap();
    let waiting = lock_on_connection(connection.clone(), &name, Wait::Forever);
    assert!(tokio::time::timeout(Duration::from_millis(100), waiting)
        .await
        .is_err());
    other.release().await.unwrap();
    let mut conn = connection.lock().await;
    let used: Option<Option<u64>> = conn
        .exec_first("SELECT IS_USED_LOCK(?)", (lock_name(&name),))
        .await
        .unwrap();
    assert_eq!(used, Some(None), "the cancelled wait left nothing held");
}

#[tokio::test]
async fn server_detected_deadlock_is_the_deadlock_error() {
    use tollgate::backend::mysql::lock_on_connection;
    use tollgate::Wait;
    let (first, second) = (unique("deadlock-x"), unique("deadlock-y"));
    let a = std::sync::Arc::new(tokio::sync::Mutex::new(admin().await));
    let b = std::sync::Arc::new(tokio::sync::Mutex::new(admin().await));
    let held_a = lock_on_connection(a.clone(), &first, Wait::NO_WAIT)
        .await
        .unwrap()
        .unwrap();
    let held_b = lock_on_connection(b.clone(), &second, Wait::NO_WAIT)
        .await
        .unwrap()
        .unwrap();
    let long = Wait::AtMost(Duration::from_secs(20));
    let cross_a = tokio::spawn({
        let (a, second) = (a.clone(), second.clone());
        async move {
            lock_on_connection(a, &second, long)
                .await
                .map(|held| held.is_some())
        }
    });
    let cross_b = tokio::spawn({
        let (b, first) = (b.clone(), first.clone());
        async move {
            lock_on_connection(b, &first, long)
                .await
                .map(|held| held.is_some())
        }
    });
    // The server breaks the cycle at once by failing one wait; release the loser's lock so
    // the winner proceeds.
    let (result_a, result_b) = tokio::time::timeout(PROMPT, async {
        tokio::select! {
            result = cross_a => {
                let result_a = result.unwrap();
                drop(held_a);
                (result_a, None)
            }
            result = cross_b => {
                let result_b = result.unwrap();
                drop(held_b);
                (Err(Error::invalid("unused")), Some(result_b))
            }
        }
    })
    .await
    .expect("the server breaks the deadlock");
    let loser = result_b.unwrap_or(result_a);
    assert!(matches!(loser, Err(Error::Deadlock { .. })), "{loser:?}");
}

/// Many tasks on two providers with small pools (so connections are shared and reused) take
/// and give back tickets every way there is: waits, tries, bounded waits, cancelled waits,
/// release and drop. There are never more holders than tickets (`GET_LOCK` is re-entrant, so
/// a connection that took a ticket twice would hand out two holds of it), no hold is lost,
/// and every ticket comes back.
/// Concurrent tries on a semaphore with free tickets all succeed, even when every connection
/// of a small pool is busy scanning it: a try waits for a scan, it does not call the
/// semaphore busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_tries_on_a_small_pool_find_free_tickets() {
    let provider = MySqlProvider::from_url(&format!("{}?pool_size=2", url())).unwrap();
    let semaphore =
        tollgate::SemaphoreProvider::semaphore(&provider, &unique("scan-busy"), 24).unwrap();
    let tries = (0..24).map(|_| {
        let semaphore = semaphore.clone();
        tokio::spawn(async move { semaphore.try_acquire().await })
    });
    let mut held = Vec::new();
    for task in tries.collect::<Vec<_>>() {
        let ticket = task.await.unwrap().unwrap();
        held.push(ticket.expect("a free ticket was found"));
    }
    assert!(semaphore.try_acquire().await.unwrap().is_none(), "max 24");
    assert!(provider.connection_count() <= 2);
}

/// A network that silently drops everything fires the loss signal (the keepalive ping gets
/// no answer), rather than leaving it waiting for TCP to give up.
#[tokio::test]
async fn keepalive_detects_a_silent_network_failure() {
    let proxy = conformance::support::FreezableProxy::start("127.0.0.1:3306").await;
    // Over TCP through the proxy, not over the Unix socket the driver would switch to.
    let provider = MySqlProvider::from_url(&format!(
        "mysql://root@127.0.0.1:{}/test?prefer_socket=false&keepalive=1",
        proxy.port
    ))
    .unwrap();
    let held = conformance::support::hold_then_black_hole(&provider, &proxy).await;
    held.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn semaphore_never_over_max_under_churn() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tollgate::SemaphoreProvider;
    const ROUNDS: usize = 30;
    let providers: Vec<MySqlProvider> = [4, 6]
        .into_iter()
        .map(|pool_size| {
            MySqlProvider::builder(&url())
                .unwrap()
                .pool_size(pool_size)
                .build()
                .unwrap()
        })
        .collect();
    for max_count in [2u32, 3, 10] {
        let name = unique("churn");
        let inside = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for task in 0..(max_count as usize * 3).max(12) {
            let semaphore = providers[task % 2].semaphore(&name, max_count).unwrap();
            let (inside, peak) = (inside.clone(), peak.clone());
            tasks.push(tokio::spawn(async move {
                for round in 0..ROUNDS {
                    let handle = match (task + round) % 5 {
                        0 | 1 => Some(semaphore.acquire().await.unwrap()),
                        2 => semaphore.try_acquire().await.unwrap(),
                        3 => semaphore
                            .try_acquire_timeout(Duration::from_millis(20))
                            .await
                            .unwrap(),
                        // Cancelled mid-way (if it has to wait at all).
                        _ => tokio::time::timeout(Duration::from_millis(5), semaphore.acquire())
                            .await
                            .ok()
                            .map(Result::unwrap),
                    };
                    let Some(handle) = handle else { continue };
                    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    // Held a moment, so that a second holder of the same ticket would overlap.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    inside.fetch_sub(1, Ordering::SeqCst);
                    // Only a killed connection could take a hold away here, and only waits are
                    // ever killed, never a connection that holds tickets.
                    assert!(!handle.loss_signal().is_lost(), "a hold was lost");
                    if round % 2 == 0 {
                        handle.release().await.unwrap();
                    } else {
                        drop(handle);
                    }
                }
            }));
        }
        for task in tasks {
            tokio::time::timeout(Duration::from_secs(60), task)
                .await
                .expect("the churn finishes")
                .unwrap();
        }
        let peak = peak.load(Ordering::SeqCst);
        assert!(
            peak <= max_count as usize,
            "{peak} holders of a semaphore of {max_count}"
        );
        // Every ticket comes back (a cancelled wait's is freed when its connection dies).
        let semaphore = providers[0].semaphore(&name, max_count).unwrap();
        let mut all = Vec::new();
        for _ in 0..max_count {
            all.push(
                semaphore
                    .acquire_timeout(PROMPT)
                    .await
                    .expect("every ticket comes back"),
            );
        }
        assert!(semaphore.try_acquire().await.unwrap().is_none());
        for handle in all {
            handle.release().await.unwrap();
        }
    }
}

/// The shared session pool's edges, on MySQL's connections.
mod pool_edges {
    use super::*;
    use conformance::support::drop_acquires_at_random_moments;

    fn provider_of(pool_size: usize) -> MySqlProvider {
        MySqlProvider::builder(&url())
            .unwrap()
            .pool_size(pool_size)
            .build()
            .unwrap()
    }

    /// A connection killed by the server fires the loss signal of every hold on it, and the
    /// pool opens a fresh connection for the next acquire.
    #[tokio::test]
    async fn a_killed_connection_fires_loss_on_every_hold_and_is_replaced() {
        let provider = provider_of(1);
        let base = unique("pool-kill");
        let locks: Vec<_> = (0..5)
            .map(|index| provider.lock(&format!("{base}-{index}")).unwrap())
            .collect();
        let mut handles = Vec::new();
        for lock in &locks {
            handles.push(lock.try_acquire().await.unwrap().expect("a free name"));
        }
        assert_eq!(
            provider.connection_count(),
            1,
            "one connection holds all five"
        );
        let mut admin = admin().await;
        kill_holder(&mut admin, locks[0].lock_name()).await;
        for handle in &handles {
            tokio::time::timeout(PROMPT, handle.lost())
                .await
                .expect("every hold on the connection fires its loss signal");
        }
        for handle in handles {
            handle.release().await.unwrap();
        }
        for lock in &locks {
            let handle = tokio::time::timeout(PROMPT, lock.try_acquire())
                .await
                .unwrap()
                .unwrap()
                .expect("freed with the killed connection");
            assert!(!handle.loss_signal().is_lost());
            handle.release().await.unwrap();
        }
        assert_eq!(provider.connection_count(), 1);
    }

    /// Acquires dropped at random moments (opening a connection, trying, waiting in the
    /// server, just after the grant) leave nothing held on the server and no connection
    /// claimed: every name is free afterwards, and the pool stays within its size.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn acquires_dropped_at_random_moments_leave_nothing_held() {
        let provider = provider_of(2);
        let base = unique("pool-drop");
        let locks: Vec<_> = (0..4)
            .map(|index| provider.lock(&format!("{base}-{index}")).unwrap())
            .collect();
        // Held elsewhere, so that acquires of it wait in the server.
        let outsider = MySqlProvider::from_url(&url()).unwrap();
        let blocker = outsider
            .lock(&format!("{base}-0"))
            .unwrap()
            .acquire()
            .await
            .unwrap();
        drop_acquires_at_random_moments(&locks, || provider.connection_count() <= 2).await;
        blocker.release().await.unwrap();
        tollgate::flush_releases().await;
        let mut admin = admin().await;
        for lock in &locks {
            tokio::time::timeout(PROMPT, async {
                loop {
                    let holder: Option<Option<u64>> = admin
                        .exec_first("SELECT IS_USED_LOCK(?)", (lock.lock_name(),))
                        .await
                        .unwrap();
                    if holder.flatten().is_none() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await
            .expect("nothing left held on the server");
        }
        for lock in &locks {
            let handle = tokio::time::timeout(PROMPT, lock.try_acquire())
                .await
                .unwrap()
                .unwrap();
            assert!(handle.is_some(), "{} is free", lock.lock_name());
        }
    }
}

/// A timeout beyond what `GET_LOCK` takes (it answers a huge one at once) is waited out in the
/// server, a year at a time: the waiter's one statement stays in the state `User lock`, where a
/// wait that retried at once would show ever-new statements.
#[tokio::test]
async fn a_huge_timeout_waits_in_one_statement() {
    let provider = MySqlProvider::from_url(&url()).unwrap();
    let name = unique("huge-wait");
    let held = provider.lock(&name).unwrap().acquire().await.unwrap();
    let waiter = provider.lock(&name).unwrap();
    let waiting = tokio::spawn(async move {
        let ages = Duration::from_secs(1000 * 366 * 24 * 3600);
        waiter.acquire_timeout(ages).await.map(drop)
    });
    let mut admin = admin().await;
    // The statement is prepared, so the name is not in INFO; another test's wait could be
    // seen too (it would make this pass, never fail).
    let query = "SELECT MAX(TIME_MS) FROM information_schema.PROCESSLIST \
                 WHERE STATE = 'User lock' AND INFO LIKE '%GET_LOCK%'";
    let began = std::time::Instant::now();
    loop {
        let waited: Option<Option<f64>> = admin.query_first(query).await.unwrap();
        if waited.flatten().unwrap_or(0.0) >= 500.0 {
            break;
        }
        assert!(
            began.elapsed() < Duration::from_secs(10) && !waiting.is_finished(),
            "no statement waited 0.5 s in the server"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    held.release().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiter takes the lock once it is free")
        .unwrap()
        .expect("acquired");
}

/// Connections that hold nothing close after `idle_timeout`, as PostgreSQL's sessions do; the
/// keepalive and the idle timeout can each be turned off with `never`, and zero is refused.
#[tokio::test]
async fn idle_connections_close_and_options_match_postgres() {
    let provider = MySqlProvider::from_url(&format!("{}?idle_timeout=200ms", url())).unwrap();
    let held = provider
        .lock(&unique("idle"))
        .unwrap()
        .acquire()
        .await
        .unwrap();
    assert!(provider.connection_count() >= 1);
    held.release().await.unwrap();
    let began = std::time::Instant::now();
    while provider.connection_count() > 0 {
        assert!(
            began.elapsed() < Duration::from_secs(10),
            "idle connections stay open"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for good in ["keepalive=never", "idle_timeout=never", "idle_timeout=5s"] {
        assert!(
            MySqlProvider::from_url(&format!("{}?{good}", url())).is_ok(),
            "{good}"
        );
    }
    for bad in ["idle_timeout=0", "idle_timeout=x", "keepalive=0"] {
        let error = MySqlProvider::from_url(&format!("{}?{bad}", url())).unwrap_err();
        assert!(matches!(error, Error::InvalidArgument(_)), "{bad}: {error}");
    }
}

/// Kills the connection that holds MySQL lock `lock_name`.
async fn kill_holder(admin: &mut mysql_async::Conn, lock_name: &str) {
    let holder: Option<u64> = admin
        .exec_first("SELECT IS_USED_LOCK(?)", (lock_name,))
        .await
        .unwrap();
    admin
        .query_drop(format!("KILL CONNECTION {}", holder.expect("held")))
        .await
        .unwrap();
}

/// The id of a connection to database `db` waiting in `GET_LOCK`, other than `not`, once
/// there is one. (Waiters under test connect to a database no other test uses, so that
/// this finds theirs.)
async fn waiting_connection(admin: &mut mysql_async::Conn, db: &str, not: Option<u64>) -> u64 {
    tokio::time::timeout(PROMPT, async {
        loop {
            let id: Option<u64> = admin
                .exec_first(
                    "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = ? \
                     AND STATE = 'User lock' AND ID <> ? LIMIT 1",
                    (db, not.unwrap_or(0)),
                )
                .await
                .unwrap();
            if let Some(id) = id {
                return id;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("a connection waits for the lock")
}

mod faults {
    use super::*;
    use crate::conformance::faults;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_waiter_whose_connection_is_killed_keeps_waiting() {
        let name = unique("ride-kill");
        let waiters = MySqlProvider::from_url("mysql://root@127.0.0.1:3306/mysql").unwrap();
        faults::waiter_rides_out(provider(), waiters, &name, || async {
            let mut admin = admin().await;
            // Twice: the second kill lands on the connection the waiter opened after the first.
            let mut killed = None;
            for _ in 0..2 {
                let id = waiting_connection(&mut admin, "mysql", killed).await;
                admin
                    .query_drop(format!("KILL CONNECTION {id}"))
                    .await
                    .unwrap();
                killed = Some(id);
            }
            waiting_connection(&mut admin, "mysql", killed).await;
            faults::Left::HoldKept
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn an_unreachable_server_ends_a_wait_after_the_limit() {
        let url = format!(
            "mysql://root@127.0.0.1:{}/test?unreachable_timeout=1s",
            faults::closed_port()
        );
        faults::unreachable_server_fails_after_the_limit(MySqlProvider::from_url(&url).unwrap())
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_missing_database_fails_at_once() {
        let url = "mysql://root@127.0.0.1:3306/tollgate_no_such_database";
        faults::errors_a_retry_cannot_mend_fail_at_once(MySqlProvider::from_url(url).unwrap())
            .await;
    }
}

/// A connection killed between two keepalives (here: none at all) is found at the release:
/// the release succeeds (nothing is left to give back) and the loss signal fires, so the
/// holder learns that it ran without the lock for a while.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_loss_found_at_release_fires_the_loss_signal() {
    let provider = MySqlProvider::from_url(&format!("{}?keepalive=never", url())).unwrap();
    let lock = provider.lock(&unique("loss-at-release")).unwrap();
    let handle = lock.acquire().await.unwrap();
    let loss = handle.loss_signal();
    let mut admin = admin().await;
    kill_holder(&mut admin, lock.lock_name()).await;
    assert!(!loss.is_lost(), "nothing can have noticed yet");
    handle.release().await.unwrap();
    assert!(loss.is_lost(), "the release found the lock gone");
}

/// The same for a lock that was waited for: its connection was the wait's own, dedicated
/// until the grant, then the hold's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_loss_found_at_release_after_a_wait_fires_the_loss_signal() {
    let name = unique("loss-after-wait");
    let holder = provider().lock(&name).unwrap();
    let held = holder.acquire().await.unwrap();
    // The waiter's connection is found by its database, which no other test waits in.
    let waiter_provider =
        MySqlProvider::from_url("mysql://root@127.0.0.1:3306/sys?keepalive=never").unwrap();
    let waiter = waiter_provider.lock(&name).unwrap();
    let waiting = tokio::spawn(async move { waiter.acquire().await });
    let mut admin = admin().await;
    waiting_connection(&mut admin, "sys", None).await;
    held.release().await.unwrap();
    let handle = waiting.await.unwrap().unwrap();
    let loss = handle.loss_signal();
    kill_holder(&mut admin, holder.lock_name()).await;
    let other = holder.acquire().await.unwrap();
    assert!(!loss.is_lost(), "nothing can have noticed yet");
    handle.release().await.unwrap();
    assert!(loss.is_lost(), "the release found the lock gone");
    other.release().await.unwrap();
}

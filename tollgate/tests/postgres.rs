//! The PostgreSQL backend against the real server at 127.0.0.1:5432: the shared conformance
//! suite, plus PostgreSQL's own cases.
#![cfg(feature = "postgres")]

mod conformance;

use std::time::Duration;

use tollgate::backend::postgres::PostgresProvider;
use tollgate::{Acquire, Error, Handle, LockProvider, ReadWriteLock, ReadWriteLockProvider};

use conformance::support::{unique, Locks, PROMPT};

holder_entry!();

/// The test server; `TOLLGATE_POSTGRES_URL` points elsewhere.
fn url() -> String {
    std::env::var("TOLLGATE_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test?sslmode=disable".into())
}

fn provider() -> PostgresProvider {
    PostgresProvider::from_url(&url()).expect("postgres provider")
}

/// A plain session of our own, to look at and interfere with the server.
async fn admin() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(
        "host=127.0.0.1 port=5432 user=postgres dbname=test",
        tokio_postgres::NoTls,
    )
    .await
    .expect("connect to the test server");
    tokio::spawn(connection);
    client
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

mod composite {
    use super::*;
    composite_suite!(provider());
}

mod read_write {
    use super::*;
    read_write_suite!(provider(), url());
    upgradeable_suite!(provider());
}

#[tokio::test]
async fn terminated_session_fires_loss_and_frees_the_lock() {
    let provider = provider();
    let name = unique("terminate");
    let lock = provider.lock(&name).unwrap();
    let handle = lock.acquire().await.unwrap();
    assert!(handle.can_detect_loss());
    let other_name = unique("unaffected");
    // A lock on another session is not affected.
    let other = provider.lock(&other_name).unwrap();
    let waiter = tokio::spawn({
        let lock = PostgresProvider::from_url(&url())
            .unwrap()
            .lock(&name)
            .unwrap();
        async move { lock.acquire().await.map(drop) }
    });
    let admin = admin().await;
    let killed = admin
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_locks \
             WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid() \
             AND pid IN (SELECT pid FROM pg_stat_activity WHERE application_name = 'tollgate') \
             AND (classid::bigint << 32 | objid::bigint) = $1",
            &[&key_value(&name)],
        )
        .await
        .unwrap();
    assert_eq!(
        killed.get::<_, i64>(0),
        1,
        "exactly the holding session was terminated"
    );
    tokio::time::timeout(Duration::from_secs(5), handle.lost())
        .await
        .expect("loss fires within 5 s");
    tokio::time::timeout(PROMPT, waiter)
        .await
        .expect("a waiter gets the lock")
        .unwrap()
        .unwrap();
    // Releasing a lost hold is not an error: nothing is left to give back.
    handle.release().await.unwrap();
    let held = other.acquire().await.unwrap();
    assert!(!held.loss_signal().is_lost());
}

/// A session terminated just before the release is found by the release itself, whether or
/// not the pool's watch of the session has seen it end: the loss signal fires, and the
/// release is not an error (nothing is left to give back).
#[tokio::test]
async fn a_loss_found_at_release_fires_the_loss_signal() {
    let name = unique("loss-at-release");
    let lock = provider().lock(&name).unwrap();
    for _ in 0..20 {
        let handle = lock.acquire().await.unwrap();
        let loss = handle.loss_signal();
        let admin = admin().await;
        let killed = admin
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_locks \
                 WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid() \
                 AND (classid::bigint << 32 | objid::bigint) = $1",
                &[&key_value(&name)],
            )
            .await
            .unwrap();
        assert_eq!(killed.get::<_, i64>(0), 1);
        handle.release().await.unwrap();
        assert!(loss.is_lost(), "the release found the session gone");
    }
}

/// The 64-bit value of a hashed name's key, as `pg_locks` shows it.
fn key_value(name: &str) -> i64 {
    match tollgate::backend::postgres::AdvisoryKey::from_name(name, true).unwrap() {
        tollgate::backend::postgres::AdvisoryKey::Single(key) => key,
        tollgate::backend::postgres::AdvisoryKey::Pair(high, low) => {
            (i64::from(high) << 32) | i64::from(low as u32)
        }
    }
}

#[tokio::test]
async fn many_holds_share_few_connections() {
    let provider = PostgresProvider::builder(&url())
        .unwrap()
        .pool_size(4)
        .build()
        .unwrap();
    let base = unique("multiplex");
    let mut handles = Vec::new();
    for index in 0..300 {
        let lock = provider.lock(&format!("{base}-{index}")).unwrap();
        handles.push(lock.try_acquire().await.unwrap().expect("free lock"));
    }
    assert!(
        provider.connection_count() <= 2,
        "{} connections",
        provider.connection_count()
    );
    drop(handles);
}

#[tokio::test]
async fn no_connection_leak_after_many_holds() {
    let provider = PostgresProvider::builder(&url())
        .unwrap()
        .pool_size(4)
        .build()
        .unwrap();
    let name = unique("leak");
    let lock = provider.lock(&name).unwrap();
    for _ in 0..30 {
        let handle = lock.acquire().await.unwrap();
        let contender = provider.lock(&name).unwrap();
        assert!(contender
            .try_acquire_timeout(Duration::from_millis(20))
            .await
            .unwrap()
            .is_none());
        handle.release().await.unwrap();
    }
    assert!(provider.connection_count() <= 4);
    let admin = admin().await;
    let row = admin
        .query_one(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' \
             AND (classid::bigint << 32 | objid::bigint) = $1",
            &[&key_value(&name)],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 0, "nothing left held on the server");
}

/// Many held locks share few sessions, but a session takes at most 625 while the pool may
/// open another (each statement on a session costs the server time per lock it holds);
/// with the pool full, sessions take more.
#[tokio::test]
async fn many_holds_share_few_sessions() {
    let provider = PostgresProvider::builder(&url())
        .unwrap()
        .pool_size(3)
        .build()
        .unwrap();
    let base = unique("many");
    let mut held = Vec::new();
    for index in 0..2_000 {
        let lock = provider.lock(&format!("{base}-{index}")).unwrap();
        held.push(lock.try_acquire().await.unwrap().expect("a free name"));
        let expected = match index {
            0..625 => 1,
            625..1250 => 2,
            _ => 3,
        };
        assert_eq!(
            provider.connection_count(),
            expected,
            "after {} holds",
            index + 1
        );
    }
    let admin = admin().await;
    let row = admin
        .query_one(
            "SELECT count(*) FROM pg_locks JOIN pg_stat_activity USING (pid) \
             WHERE locktype = 'advisory' AND application_name = 'tollgate' AND granted \
             GROUP BY pid ORDER BY count(*) DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap();
    assert!(
        row.get::<_, i64>(0) >= 750,
        "the third session took the rest"
    );
    for handle in held {
        handle.release().await.unwrap();
    }
}

#[tokio::test]
async fn idle_sessions_are_closed_and_holding_ones_kept() {
    let application = unique("idle");
    let provider = PostgresProvider::builder(&format!("{}&application_name={application}", url()))
        .unwrap()
        .idle_timeout(Some(Duration::from_millis(300)))
        .build()
        .unwrap();
    let admin = admin().await;
    let sessions = || async {
        admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                &[&application],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    // One session holds `kept`; a waiter on `busy` takes a second one.
    let kept = provider
        .lock(&unique("idle-kept"))
        .unwrap()
        .acquire()
        .await
        .unwrap();
    let busy_name = unique("idle-busy");
    let busy = provider.lock(&busy_name).unwrap().acquire().await.unwrap();
    let waiter = provider.lock(&busy_name).unwrap();
    let waiting = tokio::spawn(async move { waiter.acquire().await.map(drop) });
    tokio::time::timeout(PROMPT, async {
        while provider.connection_count() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the waiter has a session of its own");
    busy.release().await.unwrap();
    waiting.await.unwrap().unwrap();
    // The waiter's session now holds nothing, and is closed; the holding one stays.
    tokio::time::timeout(PROMPT, async {
        while provider.connection_count() > 1 || sessions().await > 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the idle session is closed");
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(provider.connection_count(), 1, "the holding session stays");
    assert!(!kept.loss_signal().is_lost());
    let other = PostgresProvider::from_url(&url()).unwrap();
    assert!(
        other
            .lock(kept.name())
            .unwrap()
            .try_acquire()
            .await
            .unwrap()
            .is_none(),
        "still held"
    );
    kept.release().await.unwrap();
    tokio::time::timeout(PROMPT, async {
        while provider.connection_count() > 0 || sessions().await > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the last session is closed once idle");
    // The pool opens a new session when needed again.
    let again = provider
        .lock(&busy_name)
        .unwrap()
        .try_acquire()
        .await
        .unwrap();
    assert!(again.is_some());
    for bad in ["idle_timeout=x", "idle_timeout=0"] {
        let error = PostgresProvider::from_url(&format!("{}&{bad}", url())).unwrap_err();
        assert!(error.is_invalid_argument(), "{bad}: {error}");
    }
    assert!(PostgresProvider::from_url(&format!("{}&idle_timeout=never", url())).is_ok());
    assert!(PostgresProvider::from_url(&format!("{}&keepalive=never", url())).is_ok());
    let error = PostgresProvider::from_url(&format!("{}&keepalive=0", url())).unwrap_err();
    assert!(error.is_invalid_argument(), "{error}");
}

/// With the keepalive on (as it is by default), a network that silently drops everything
/// fires the loss signal within 5 s (the ping gets no answer), rather than leaving it waiting
/// for TCP to give up.
#[tokio::test]
async fn keepalive_detects_a_silent_network_failure() {
    let proxy = conformance::support::FreezableProxy::start("127.0.0.1:5432").await;
    let provider = PostgresProvider::from_url(&format!(
        "postgres://postgres@127.0.0.1:{}/test?sslmode=disable",
        proxy.port
    ))
    .unwrap();
    let began = std::time::Instant::now();
    let held = conformance::support::hold_then_black_hole(&provider, &proxy).await;
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "noticed after {:?}",
        began.elapsed()
    );
    assert_eq!(
        provider.connection_count(),
        0,
        "the dead session left the pool"
    );
    held.release().await.unwrap();
}

#[tokio::test]
async fn cancelled_wait_leaves_nothing_on_the_server() {
    let provider = provider();
    let name = unique("cancel-server");
    let held = provider.lock(&name).unwrap().acquire().await.unwrap();
    for _ in 0..10 {
        let lock = provider.lock(&name).unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(30), lock.acquire())
                .await
                .is_err()
        );
    }
    drop(held);
    // A waiter that is cancelled right as the lock frees must not keep it: the cancel then
    // reaches the server after the grant, and must not cost the cleanup that follows.
    let fresh = PostgresProvider::from_url(&url()).unwrap();
    for round in 0..10 {
        let held = provider.lock(&name).unwrap().acquire().await.unwrap();
        let racing = provider.lock(&name).unwrap();
        let race = tokio::spawn(async move { racing.acquire().await.map(drop) });
        // Not a synchronisation: the round checks the same thing whether or not the waiter
        // reached the server first, and most rounds it does.
        tokio::time::sleep(Duration::from_millis(20)).await;
        held.release().await.unwrap();
        if round % 2 == 1 {
            tokio::task::yield_now().await;
        }
        race.abort();
        let _ = race.await;
        let again = tokio::time::timeout(PROMPT, fresh.lock(&name).unwrap().acquire())
            .await
            .unwrap_or_else(|_| panic!("round {round}: the lock is not free"))
            .unwrap();
        again.release().await.unwrap();
    }
}

#[tokio::test]
async fn bad_urls_and_unreachable_servers() {
    for bad in [
        "postgres://[::1",
        "postgres://u@h/db?sslmode=sometimes",
        "postgres://u@h/db?pool_size=x",
    ] {
        match PostgresProvider::from_url(bad) {
            Err(Error::InvalidArgument(_)) => {}
            other => panic!("{bad}: expected invalid argument, got {other:?}"),
        }
    }
    let unreachable =
        PostgresProvider::from_url("postgres://postgres@127.0.0.1:1/test?sslmode=disable").unwrap();
    let error = unreachable
        .lock("x")
        .unwrap()
        .try_acquire()
        .await
        .unwrap_err();
    assert!(error.is_backend(), "{error}");
    // The provider and its pool stay usable for a server that comes back.
    assert_eq!(unreachable.connection_count(), 0);
}

#[tokio::test]
async fn writer_waits_in_the_server_and_readers_queue_behind_it() {
    let provider = provider();
    let rw = provider.read_write_lock(&unique("server-queue")).unwrap();
    let reader = rw.reader().acquire().await.unwrap();
    let writer = tokio::spawn({
        let rw = rw.clone();
        async move { rw.writer().acquire().await.map(drop) }
    });
    // Bounded poll until the server turns new readers away.
    tokio::time::timeout(PROMPT, async {
        while let Some(handle) = rw.reader().try_acquire().await.unwrap() {
            drop(handle);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    reader.release().await.unwrap();
    tokio::time::timeout(PROMPT, writer)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn key_spaces_are_distinct_on_the_server() {
    use tollgate::backend::postgres::AdvisoryKey;
    let provider = provider();
    // Other runs may hold these well-known keys only for an instant; take them briefly.
    let single = provider.lock_with_key(AdvisoryKey::Single(0));
    let pair = provider.lock_with_key(AdvisoryKey::Pair(0, 0));
    let held_single = tokio::time::timeout(PROMPT, single.acquire())
        .await
        .unwrap()
        .unwrap();
    let held_pair = pair
        .try_acquire_timeout(PROMPT)
        .await
        .unwrap()
        .expect("(0,0) is not 0");
    assert!(single.try_acquire().await.unwrap().is_none());
    // The name that packs to a key and the key itself are the same lock.
    let by_name = provider.lock("abc").unwrap();
    let by_key = provider.lock_with_key(AdvisoryKey::from_name("abc", false).unwrap());
    let held = tokio::time::timeout(PROMPT, by_name.acquire())
        .await
        .unwrap()
        .unwrap();
    assert!(by_key.try_acquire().await.unwrap().is_none());
    drop((held_single, held_pair, held));
}

#[tokio::test]
async fn pool_of_one_survives_random_operations() {
    use rand::{Rng, SeedableRng};
    let provider = PostgresProvider::builder(&url())
        .unwrap()
        .pool_size(1)
        .build()
        .unwrap();
    let base = unique("pool-of-one");
    let locks: Vec<_> = (0..20)
        .map(|index| provider.lock(&format!("{base}-{index}")).unwrap())
        .collect();
    let mut held: Vec<Option<tollgate::backend::postgres::PostgresHandle>> =
        (0..20).map(|_| None).collect();
    let mut random = rand::rngs::StdRng::seed_from_u64(7);
    for step in 0..1_000 {
        let index = random.gen_range(0..20);
        match held[index].take() {
            Some(handle) if random.gen_bool(0.5) => handle.release().await.unwrap(),
            Some(handle) => {
                // Busy while held, including for this process: one real try, no hang.
                assert!(
                    locks[index].try_acquire().await.unwrap().is_none(),
                    "step {step}"
                );
                held[index] = Some(handle);
            }
            None => {
                let handle = tokio::time::timeout(PROMPT, locks[index].try_acquire())
                    .await
                    .unwrap()
                    .unwrap();
                held[index] =
                    Some(handle.unwrap_or_else(|| panic!("step {step}: free lock not acquired")));
            }
        }
        assert_eq!(provider.connection_count(), 1);
    }
    // A bounded wait on a held lock with the only session busy holding: times out cleanly.
    let index = held
        .iter()
        .position(Option::is_some)
        .expect("something held");
    assert!(locks[index]
        .acquire_timeout(Duration::from_millis(200))
        .await
        .unwrap_err()
        .is_timeout());
}

/// The session of a pool of one runs one wait after another, each under its own timeout:
/// a bounded wait after an unbounded one still ends at its deadline, and an unbounded wait
/// after a bounded one that succeeded outlasts that one's timeout (the session's
/// `lock_timeout` is set again whenever the last wait left another).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_wait_on_a_reused_session_runs_under_its_own_timeout() {
    let holder = provider();
    let waiter = PostgresProvider::from_url(&format!("{}&pool_size=1", url())).unwrap();
    let (busy, freed) = (unique("timeouts-busy"), unique("timeouts-freed"));
    let held = holder.lock(&busy).unwrap().acquire().await.unwrap();
    // A wait for `freed` (as `wait` says) that succeeds once the holder lets go after `after`.
    let handed_over = |after: Duration, wait: Option<Duration>| {
        let (holder, waiter, freed) = (holder.clone(), waiter.clone(), freed.clone());
        async move {
            let briefly = holder.lock(&freed).unwrap().acquire().await.unwrap();
            let release = async {
                tokio::time::sleep(after).await;
                briefly.release().await.unwrap();
            };
            let lock = waiter.lock(&freed).unwrap();
            let acquire = async {
                match wait {
                    None => lock.acquire().await,
                    Some(timeout) => lock.acquire_timeout(timeout).await,
                }
            };
            let ((), acquired) = tokio::join!(release, acquire);
            acquired
                .unwrap_or_else(|error| {
                    panic!("the wait ({wait:?}) for a lock freed after {after:?}: {error}")
                })
                .release()
                .await
                .unwrap();
        }
    };
    for _ in 0..3 {
        handed_over(Duration::from_millis(50), None).await;
        let started = std::time::Instant::now();
        let outcome = tokio::time::timeout(
            PROMPT,
            waiter
                .lock(&busy)
                .unwrap()
                .try_acquire_timeout(Duration::from_millis(200)),
        )
        .await
        .expect("a bounded wait after an unbounded one ends at its deadline")
        .unwrap();
        assert!(outcome.is_none(), "got a held lock");
        assert!(started.elapsed() >= Duration::from_millis(200));
        handed_over(Duration::from_millis(50), Some(Duration::from_millis(300))).await;
        handed_over(Duration::from_millis(700), None).await;
    }
    held.release().await.unwrap();
}

#[tokio::test]
async fn lock_timeout_race_never_leaks_a_lock() {
    // Releases timed to land as the waiter's lock_timeout fires: whichever way each race
    // goes, the waiter either holds the lock or nothing is left held by its session.
    let provider = provider();
    let name = unique("race");
    let lock = provider.lock(&name).unwrap();
    let admin = admin().await;
    for round in 0..40u64 {
        let holder = lock.acquire().await.unwrap();
        let waiter = provider.lock(&name).unwrap();
        let timeout = Duration::from_millis(20);
        let attempt = tokio::spawn(async move { waiter.try_acquire_timeout(timeout).await });
        tokio::time::sleep(Duration::from_micros(19_000 + round * 50)).await;
        holder.release().await.unwrap();
        let outcome = attempt.await.unwrap().unwrap();
        let held_rows: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
                 AND (classid::bigint << 32 | objid::bigint) = $1",
                &[&key_value(&name)],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            held_rows,
            i64::from(outcome.is_some()),
            "round {round}: {outcome:?}"
        );
        drop(outcome);
        // The next round starts with the lock free (a drop releases in the background).
        tokio::time::timeout(PROMPT, lock.acquire())
            .await
            .unwrap()
            .unwrap()
            .release()
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn tls_sessions_encrypt_and_verify_when_asked() {
    let encrypted = PostgresProvider::from_url(
        "postgres://postgres@127.0.0.1:5432/test?sslmode=require&application_name=tollgate-tls-test",
    )
    .unwrap();
    let held = encrypted
        .lock(&unique("tls"))
        .unwrap()
        .acquire()
        .await
        .unwrap();
    let admin = admin().await;
    let ssl_sessions: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
             WHERE ssl AND application_name = 'tollgate-tls-test'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl_sessions >= 1, "the session is encrypted");
    drop(held);
    // The test server's certificate is self-signed: verifying it must fail, clearly.
    let verifying =
        PostgresProvider::from_url("postgres://postgres@127.0.0.1:5432/test?sslmode=verify-full")
            .unwrap();
    let error = verifying
        .lock("x")
        .unwrap()
        .try_acquire()
        .await
        .unwrap_err();
    assert!(error.is_backend(), "{error}");
}

/// The shared session pool's edges, on PostgreSQL's sessions (the application name tells
/// this test's sessions apart on the server).
mod pool_edges {
    use super::*;
    use conformance::support::drop_acquires_at_random_moments;

    fn named_provider(application: &str, pool_size: usize) -> PostgresProvider {
        PostgresProvider::builder(&format!("{}&application_name={application}", url()))
            .unwrap()
            .pool_size(pool_size)
            .build()
            .unwrap()
    }

    /// Advisory locks granted to this application's sessions.
    async fn held_on_server(admin: &tokio_postgres::Client, application: &str) -> i64 {
        admin
            .query_one(
                "SELECT count(*) FROM pg_locks JOIN pg_stat_activity USING (pid) \
                 WHERE locktype = 'advisory' AND granted AND application_name = $1",
                &[&application],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// A session ended by the server fires the loss signal of every hold on it, and the pool
    /// opens a fresh session for the next acquire.
    #[tokio::test]
    async fn a_terminated_session_fires_loss_on_every_hold_and_is_replaced() {
        let application = unique("pool-kill");
        let provider = named_provider(&application, 1);
        let base = unique("pool-kill");
        let mut handles = Vec::new();
        for index in 0..5 {
            let lock = provider.lock(&format!("{base}-{index}")).unwrap();
            handles.push(lock.try_acquire().await.unwrap().expect("a free name"));
        }
        assert_eq!(provider.connection_count(), 1, "one session holds all five");
        let admin = admin().await;
        let killed: i64 = admin
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE application_name = $1",
                &[&application],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(killed, 1);
        for handle in &handles {
            tokio::time::timeout(PROMPT, handle.lost())
                .await
                .expect("every hold on the session fires its loss signal");
        }
        for handle in handles {
            handle.release().await.unwrap();
        }
        // A fresh session, and the names are free again (the server freed them).
        for index in 0..5 {
            let lock = provider.lock(&format!("{base}-{index}")).unwrap();
            let handle = tokio::time::timeout(PROMPT, lock.try_acquire())
                .await
                .unwrap()
                .unwrap()
                .expect("freed with the terminated session");
            assert!(!handle.loss_signal().is_lost());
            handle.release().await.unwrap();
        }
        assert_eq!(provider.connection_count(), 1);
    }

    /// Acquires dropped at random moments (opening a session, trying, waiting in the server,
    /// just after the grant) leave nothing held on the server and no session claimed: every
    /// name is free afterwards, and the pool stays within its size.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn acquires_dropped_at_random_moments_leave_nothing_held() {
        let application = unique("pool-drop");
        let provider = named_provider(&application, 2);
        let base = unique("pool-drop");
        let names: Vec<String> = (0..4).map(|index| format!("{base}-{index}")).collect();
        // Held elsewhere, so that acquires of it wait in the server.
        let outsider = PostgresProvider::from_url(&url()).unwrap();
        let blocker = outsider.lock(&names[0]).unwrap().acquire().await.unwrap();
        let locks: Vec<_> = names
            .iter()
            .map(|name| provider.lock(name).unwrap())
            .collect();
        drop_acquires_at_random_moments(&locks, || provider.connection_count() <= 2).await;
        blocker.release().await.unwrap();
        tollgate::flush_releases().await;
        let admin = admin().await;
        tokio::time::timeout(PROMPT, async {
            while held_on_server(&admin, &application).await > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("nothing left held on the server");
        // Nothing left claimed in the pool either: every name is ours to take, at once.
        for name in &names {
            let handle = tokio::time::timeout(PROMPT, provider.lock(name).unwrap().try_acquire())
                .await
                .unwrap()
                .unwrap();
            assert!(handle.is_some(), "{name} is free");
        }
    }
}

/// The pid of a session waiting (not granted) for `name`'s key, other than `not`, once there
/// is one.
async fn waiting_pid(admin: &tokio_postgres::Client, name: &str, not: Option<i32>) -> i32 {
    let key = key_value(name);
    tokio::time::timeout(PROMPT, async {
        loop {
            let row = admin
                .query_opt(
                    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND NOT granted \
                     AND (classid::bigint << 32 | objid::bigint) = $1 AND pid <> $2 LIMIT 1",
                    &[&key, &not.unwrap_or(0)],
                )
                .await
                .unwrap();
            if let Some(row) = row {
                return row.get::<_, i32>(0);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("a session waits for the lock")
}

mod faults {
    use super::*;
    use crate::conformance::faults;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_waiter_whose_session_is_killed_keeps_waiting() {
        let name = unique("ride-kill");
        faults::waiter_rides_out(provider(), provider(), &name, || async {
            let admin = admin().await;
            // Twice: the second kill lands on the session the waiter opened after the first.
            let mut killed = None;
            for _ in 0..2 {
                let pid = waiting_pid(&admin, &name, killed).await;
                admin
                    .execute("SELECT pg_terminate_backend($1)", &[&pid])
                    .await
                    .unwrap();
                killed = Some(pid);
            }
            waiting_pid(&admin, &name, killed).await;
            faults::Left::HoldKept
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn an_unreachable_server_ends_a_wait_after_the_limit() {
        let url = format!(
            "postgres://postgres@127.0.0.1:{}/test?sslmode=disable&unreachable_timeout=1s",
            faults::closed_port()
        );
        faults::unreachable_server_fails_after_the_limit(PostgresProvider::from_url(&url).unwrap())
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_missing_database_fails_at_once() {
        let url = "postgres://postgres@127.0.0.1:5432/tollgate_no_such_database?sslmode=disable";
        faults::errors_a_retry_cannot_mend_fail_at_once(PostgresProvider::from_url(url).unwrap())
            .await;
    }
}

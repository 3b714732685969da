//! The caller-controlled PostgreSQL modes against the real server at 127.0.0.1:5432: locks
//! inside a caller's transaction, in owned transactions, and on a caller's connection.
#![cfg(feature = "postgres")]

mod conformance;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::{Client, SimpleQueryMessage};
use tollgate::backend::postgres::transaction::{
    lock_in_transaction, lock_name_in_transaction, lock_name_on_connection, lock_on_connection,
    TransactionLockProvider,
};
use tollgate::backend::postgres::{AdvisoryKey, PostgresProvider};
use tollgate::{Acquire, Error, Handle, LockProvider, Wait};

holder_entry!();

const CONNINFO: &str = "host=127.0.0.1 port=5432 user=postgres dbname=test";
/// The same server as a URL, for the conformance suite's child processes, which hold through
/// the pooled provider (`AnyProvider::from_url`): its session-level lock on a name's key
/// excludes every mode here on the same key.
const POOLED_URL: &str = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable";
/// A short wait that must run out.
const SHORT: Duration = Duration::from_millis(200);
/// How long a wait that should end at `SHORT` may take at most.
const SHORT_BOUND: Duration = Duration::from_millis(500);
/// Bound for anything we poll for.
const PATIENCE: Duration = Duration::from_secs(10);

fn unique(label: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos())
        .unwrap_or_default();
    format!(
        "modes-{label}-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn key_of(name: &str) -> AdvisoryKey {
    AdvisoryKey::from_name(name, true).unwrap()
}

/// The key's SQL arguments.
fn args(key: AdvisoryKey) -> String {
    match key {
        AdvisoryKey::Single(key) => key.to_string(),
        AdvisoryKey::Pair(high, low) => format!("{high}, {low}"),
    }
}

/// The `pg_locks` rows of `key` (any session, any mode).
fn on_key(key: AdvisoryKey) -> String {
    let (high, low) = key.halves();
    let sub = if key.is_single() { 1 } else { 2 };
    format!(
        "locktype = 'advisory' AND classid = {} AND objid = {} AND objsubid = {sub}",
        high as u32, low as u32
    )
}

async fn connect() -> Client {
    let (client, connection) = tokio_postgres::connect(CONNINFO, tokio_postgres::NoTls)
        .await
        .expect("connect to the test server");
    tokio::spawn(connection);
    client
}

/// The first column of the first row.
async fn value(client: &Client, sql: &str) -> String {
    client
        .simple_query(sql)
        .await
        .unwrap_or_else(|error| panic!("{sql}: {error:?}"))
        .into_iter()
        .find_map(|message| match message {
            SimpleQueryMessage::Row(row) => Some(row.get(0).unwrap_or_default().to_owned()),
            _ => None,
        })
        .unwrap_or_default()
}

async fn pid(client: &Client) -> i32 {
    value(client, "SELECT pg_backend_pid()")
        .await
        .parse()
        .unwrap()
}

/// How many sessions hold `key` (granted), optionally only `pid`.
async fn granted(admin: &Client, key: AdvisoryKey, pid: Option<i32>) -> i64 {
    let by = pid.map_or(String::new(), |pid| format!(" AND pid = {pid}"));
    value(
        admin,
        &format!(
            "SELECT count(*) FROM pg_locks WHERE {} AND granted{by}",
            on_key(key)
        ),
    )
    .await
    .parse()
    .unwrap()
}

/// How many requests for `key` wait in the server.
async fn waiting(admin: &Client, key: AdvisoryKey) -> i64 {
    value(
        admin,
        &format!(
            "SELECT count(*) FROM pg_locks WHERE {} AND NOT granted",
            on_key(key)
        ),
    )
    .await
    .parse()
    .unwrap()
}

/// Polls `condition` until it holds; panics after [`PATIENCE`].
async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !condition().await {
        assert!(start.elapsed() < PATIENCE, "gave up waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Until someone waits for `key` in the server.
async fn until_waiting(admin: &Client, key: AdvisoryKey) {
    eventually("a request waits", || async {
        waiting(admin, key).await > 0
    })
    .await;
}

/// Another session holding `key` with a plain `pg_advisory_lock`.
async fn hold_elsewhere(key: AdvisoryKey) -> Client {
    let other = connect().await;
    other
        .batch_execute(&format!("SELECT pg_advisory_lock({})", args(key)))
        .await
        .unwrap();
    other
}

async fn release_elsewhere(other: &Client, key: AdvisoryKey) {
    assert_eq!(
        value(other, &format!("SELECT pg_advisory_unlock({})", args(key))).await,
        "t"
    );
}

/// Whether a fresh session can get `key` within `wait` (proves nobody holds it for good).
async fn free_for_others(key: AdvisoryKey) -> bool {
    let probe = connect().await;
    let sql = format!(
        "SET lock_timeout = '5s'; SELECT pg_advisory_lock({0}); SELECT pg_advisory_unlock({0})",
        args(key)
    );
    probe.batch_execute(&sql).await.is_ok()
}

/// How many times the race tests let a grant race with a drop.
const RACES: usize = 10;

/// How many drops at different moments the early-drop tests try.
const DROP_STEPS: u32 = 24;

/// When the early-drop tests drop the acquire future: at once (after its first poll), then
/// later and later into the statement.
fn drop_after(step: u32) -> Duration {
    Duration::from_micros(u64::from(step) * u64::from(step) * 100)
}

fn assert_short_timeout(elapsed: Duration) {
    assert!(
        elapsed >= SHORT - Duration::from_millis(20),
        "gave up early: {elapsed:?}"
    );
    assert!(elapsed < SHORT_BOUND, "timed out too late: {elapsed:?}");
}

// ---------------------------------------------------------------------------------------------
// Inside the caller's transaction.
// ---------------------------------------------------------------------------------------------

mod caller_transaction {
    use super::*;

    #[tokio::test]
    async fn excluded_by_another_holder_times_out_and_keeps_the_transaction() {
        let name = unique("tx-exclusion");
        let key = key_of(&name);
        let other = hold_elsewhere(key).await;
        let mut client = connect().await;
        let transaction = client.transaction().await.unwrap();
        transaction
            .batch_execute("SET LOCAL lock_timeout = '7s'")
            .await
            .unwrap();

        // A zero wait makes one attempt.
        let start = Instant::now();
        assert!(
            !lock_name_in_transaction(&transaction, &name, false, Wait::NO_WAIT)
                .await
                .unwrap()
        );
        assert!(start.elapsed() < SHORT_BOUND);

        // A bounded wait waits in the server, then gives up.
        let start = Instant::now();
        let acquired = lock_name_in_transaction(&transaction, &name, false, Wait::AtMost(SHORT))
            .await
            .unwrap();
        assert!(!acquired);
        assert_short_timeout(start.elapsed());

        // The transaction is usable and its own lock_timeout is back.
        assert_eq!(
            value(
                transaction.client(),
                "SELECT current_setting('lock_timeout')"
            )
            .await,
            "7s"
        );
        assert_eq!(value(transaction.client(), "SELECT 41 + 1").await, "42");
        let own = pid(transaction.client()).await;
        let admin = connect().await;
        assert_eq!(granted(&admin, key, Some(own)).await, 0);
        transaction.commit().await.unwrap();
        drop(other);
    }

    #[tokio::test]
    async fn held_until_commit() {
        let key = key_of(&unique("tx-commit"));
        let admin = connect().await;
        let mut client = connect().await;
        let own = pid(&client).await;
        let transaction = client.transaction().await.unwrap();
        transaction
            .batch_execute("SET LOCAL lock_timeout = '7s'")
            .await
            .unwrap();
        assert!(
            lock_in_transaction(&transaction, key, false, Wait::AtMost(SHORT))
                .await
                .unwrap()
        );
        // Success puts the caller's lock_timeout back too.
        assert_eq!(
            value(
                transaction.client(),
                "SELECT current_setting('lock_timeout')"
            )
            .await,
            "7s"
        );
        assert_eq!(granted(&admin, key, Some(own)).await, 1);
        assert!(!free_for_others_now(key).await);
        transaction.commit().await.unwrap();
        assert_eq!(granted(&admin, key, None).await, 0);
        assert!(free_for_others_now(key).await);
    }

    #[tokio::test]
    async fn held_until_rollback() {
        let key = key_of(&unique("tx-rollback"));
        let admin = connect().await;
        let mut client = connect().await;
        let own = pid(&client).await;
        let transaction = client.transaction().await.unwrap();
        assert!(lock_in_transaction(&transaction, key, false, Wait::Forever)
            .await
            .unwrap());
        assert_eq!(granted(&admin, key, Some(own)).await, 1);
        transaction.rollback().await.unwrap();
        assert_eq!(granted(&admin, key, None).await, 0);
    }

    /// One attempt on a session that nobody holds the lock on (fresh session, `pg_try`).
    async fn free_for_others_now(key: AdvisoryKey) -> bool {
        let probe = connect().await;
        value(
            &probe,
            &format!("SELECT pg_try_advisory_lock({})", args(key)),
        )
        .await
            == "t"
    }

    #[tokio::test]
    async fn waits_then_proceeds_when_the_holder_releases() {
        let name = unique("tx-handoff");
        let key = key_of(&name);
        let other = hold_elsewhere(key).await;
        let admin = connect().await;
        let waiter = tokio::spawn(async move {
            let mut client = connect().await;
            let transaction = client.transaction().await.unwrap();
            let acquired = lock_name_in_transaction(
                &transaction,
                &name,
                false,
                Wait::AtMost(Duration::from_secs(30)),
            )
            .await;
            let own = pid(transaction.client()).await;
            transaction.commit().await.unwrap();
            (acquired.unwrap(), own)
        });
        until_waiting(&admin, key).await;
        release_elsewhere(&other, key).await;
        let (acquired, own) = tokio::time::timeout(PATIENCE, waiter)
            .await
            .expect("the waiter proceeds")
            .unwrap();
        assert!(acquired);
        // It was released with the transaction (committed by the waiter).
        assert_eq!(granted(&admin, key, Some(own)).await, 0);
    }

    #[tokio::test]
    async fn cancel_mid_wait_leaves_nothing_and_the_transaction_usable() {
        let name = unique("tx-cancel");
        let key = key_of(&name);
        let other = hold_elsewhere(key).await;
        let admin = connect().await;
        let mut client = connect().await;
        let own = pid(&client).await;
        let transaction = client.transaction().await.unwrap();
        transaction
            .batch_execute("SET LOCAL lock_timeout = '7s'")
            .await
            .unwrap();
        let start = Instant::now();
        tokio::select! {
            outcome = lock_name_in_transaction(&transaction, &name, false, Wait::Forever) => {
                panic!("the wait ended by itself: {outcome:?}")
            }
            () = until_waiting(&admin, key) => {}
        }
        // The future is dropped: the wait is cancelled in the server, and the statements that
        // follow on the connection run once it has ended.
        assert_eq!(
            value(
                transaction.client(),
                "SELECT current_setting('lock_timeout')"
            )
            .await,
            "7s"
        );
        assert!(start.elapsed() < Duration::from_secs(5));
        assert_eq!(waiting(&admin, key).await, 0);
        assert_eq!(granted(&admin, key, Some(own)).await, 0);
        assert_eq!(value(transaction.client(), "SELECT 41 + 1").await, "42");
        // Once the other holder lets go, the lock is free: our transaction took nothing.
        release_elsewhere(&other, key).await;
        assert!(free_for_others(key).await);
        transaction.commit().await.unwrap();
    }

    #[tokio::test]
    async fn drops_at_any_moment_keep_the_transaction_usable() {
        let key = key_of(&unique("tx-early-drop"));
        let other = hold_elsewhere(key).await;
        let admin = connect().await;
        let mut client = connect().await;
        let own = pid(&client).await;
        let transaction = client.transaction().await.unwrap();
        transaction
            .batch_execute("SET LOCAL lock_timeout = '7s'")
            .await
            .unwrap();
        for step in 0..DROP_STEPS {
            let wait = lock_in_transaction(&transaction, key, false, Wait::Forever);
            let outcome = tokio::time::timeout(drop_after(step), wait).await;
            assert!(
                outcome.is_err(),
                "step {step}: the wait ended by itself: {outcome:?}"
            );
            // The next statement runs once the abandoned wait has been cancelled.
            let setting = tokio::time::timeout(
                PATIENCE,
                value(
                    transaction.client(),
                    "SELECT current_setting('lock_timeout')",
                ),
            )
            .await
            .expect("the abandoned wait ends");
            assert_eq!(setting, "7s", "step {step}");
        }
        assert_eq!(granted(&admin, key, Some(own)).await, 0);
        release_elsewhere(&other, key).await;
        assert!(free_for_others(key).await);
        transaction.commit().await.unwrap();
    }

    #[tokio::test]
    async fn shared_locks_coexist_and_exclude_writers() {
        let key = key_of(&unique("tx-shared"));
        let mut first = connect().await;
        let mut second = connect().await;
        let mut writer = connect().await;
        let (first, second, writer) = (
            first.transaction().await.unwrap(),
            second.transaction().await.unwrap(),
            writer.transaction().await.unwrap(),
        );
        assert!(lock_in_transaction(&first, key, true, Wait::AtMost(SHORT))
            .await
            .unwrap());
        assert!(lock_in_transaction(&second, key, true, Wait::NO_WAIT)
            .await
            .unwrap());
        assert!(
            !lock_in_transaction(&writer, key, false, Wait::AtMost(SHORT))
                .await
                .unwrap()
        );
        first.commit().await.unwrap();
        second.rollback().await.unwrap();
        assert!(lock_in_transaction(&writer, key, false, Wait::NO_WAIT)
            .await
            .unwrap());
        writer.commit().await.unwrap();
    }

    #[tokio::test]
    async fn deadlock_is_reported_and_the_victim_stays_usable() {
        let (a, b) = (
            key_of(&unique("tx-deadlock-a")),
            key_of(&unique("tx-deadlock-b")),
        );
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let side = |mine: AdvisoryKey, theirs: AdvisoryKey| {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                let mut client = connect().await;
                let transaction = client.transaction().await.unwrap();
                assert!(
                    lock_in_transaction(&transaction, mine, false, Wait::NO_WAIT)
                        .await
                        .unwrap()
                );
                barrier.wait().await;
                let outcome =
                    lock_in_transaction(&transaction, theirs, false, Wait::AtMost(PATIENCE)).await;
                match outcome {
                    Ok(acquired) => {
                        transaction.commit().await.unwrap();
                        Ok(acquired)
                    }
                    Err(error) => {
                        // The victim's transaction survived the deadlock error.
                        assert_eq!(value(transaction.client(), "SELECT 41 + 1").await, "42");
                        transaction.rollback().await.unwrap();
                        Err(error)
                    }
                }
            })
        };
        let (first, second) = (side(a, b), side(b, a));
        let outcomes = [first.await.unwrap(), second.await.unwrap()];
        let deadlocks = outcomes
            .iter()
            .filter(|outcome| matches!(outcome, Err(Error::Deadlock { .. })))
            .count();
        let acquired = outcomes
            .iter()
            .filter(|outcome| matches!(outcome, Ok(true)))
            .count();
        assert_eq!((deadlocks, acquired), (1, 1), "{outcomes:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// In owned transactions.
// ---------------------------------------------------------------------------------------------

mod owned_transaction {
    use super::*;

    fn url() -> String {
        format!(
            "postgres://postgres@127.0.0.1:5432/test?sslmode=disable&pool_size=4\
             &application_name=tollgate-modes-{}",
            std::process::id()
        )
    }

    fn provider() -> TransactionLockProvider {
        TransactionLockProvider::from_url(&url()).expect("provider")
    }

    /// The shared mutex suite, classic cases and the edges of a hold's life.
    mod suite {
        use super::*;
        use crate::conformance::support::Locks;
        mutex_suite!(Locks {
            provider: provider(),
            url: POOLED_URL.to_owned()
        });
    }

    /// More contenders than the server lets in at once (here a role limited to two
    /// connections, the same refusal as a full server: 53300) all get the lock in turn: a
    /// connection refused for want of slots is ridden out, not an error.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn contenders_beyond_the_connection_limit_wait_their_turn() {
        let admin = connect().await;
        admin
            .batch_execute(
                "DO $$ BEGIN CREATE ROLE tollgate_limited LOGIN; \
                 EXCEPTION WHEN duplicate_object THEN NULL; END $$; \
                 ALTER ROLE tollgate_limited CONNECTION LIMIT 2",
            )
            .await
            .unwrap();
        // A provider each, as separate processes would have: each waiter needs a connection.
        let provider = || {
            TransactionLockProvider::from_url(
                "postgres://tollgate_limited@127.0.0.1:5432/test?sslmode=disable&pool_size=1",
            )
            .unwrap()
        };
        let name = unique("owned-slots");
        let locks = (0..6).map(|_| provider().lock(&name).unwrap()).collect();
        crate::conformance::support::contenders_take_turns(locks, PATIENCE * 3).await;
    }

    /// This process's waiters for one lock wait in the server one at a time: ten of them
    /// take one connection beside the holder's, and all get the lock in turn.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn waiters_of_one_process_queue_for_one_connection() {
        let application = format!("tollgate-turns-{}", std::process::id());
        let provider = TransactionLockProvider::from_url(&format!(
            "postgres://postgres@127.0.0.1:5432/test?sslmode=disable&application_name={application}"
        ))
        .unwrap();
        let lock = provider.lock(&unique("owned-turns")).unwrap();
        let held = lock.acquire().await.unwrap();
        let waiters: Vec<_> = (0..10)
            .map(|_| {
                let lock = lock.clone();
                tokio::spawn(async move { lock.acquire().await?.release().await })
            })
            .collect();
        let admin = connect().await;
        let count = |waiting: bool| {
            let sql =
                format!(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{application}'{}",
                if waiting { " AND wait_event_type = 'Lock'" } else { "" }
            );
            let admin = &admin;
            async move { value(admin, &sql).await }
        };
        let waiting = async {
            while count(true).await == "0" {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(PATIENCE, waiting)
            .await
            .expect("a waiter waits in the server");
        // Give the other nine every chance to open connections of their own.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            count(false).await,
            "2",
            "the holder's and one waiter's connection"
        );
        held.release().await.unwrap();
        for waiter in waiters {
            tokio::time::timeout(PATIENCE, waiter)
                .await
                .expect("every waiter gets its turn")
                .unwrap()
                .unwrap();
        }
    }

    #[tokio::test]
    async fn two_acquires_exclude_each_other_and_release_hands_over() {
        let provider = provider();
        let lock = provider.lock(&unique("owned-exclusion")).unwrap();
        let key = key_of(lock.name());
        let admin = connect().await;
        let held = lock.acquire().await.unwrap();
        assert_eq!(granted(&admin, key, None).await, 1);
        assert!(lock.try_acquire().await.unwrap().is_none());
        let start = Instant::now();
        assert!(lock.try_acquire_timeout(SHORT).await.unwrap().is_none());
        assert_short_timeout(start.elapsed());
        let error = lock.acquire_timeout(SHORT).await.unwrap_err();
        assert!(error.is_timeout(), "{error:?}");
        // Another process's provider, and the session-level provider, are excluded too.
        assert!(self::provider()
            .lock(lock.name())
            .unwrap()
            .try_acquire()
            .await
            .unwrap()
            .is_none());
        let pooled = PostgresProvider::from_url(&url()).unwrap();
        assert!(pooled
            .lock(lock.name())
            .unwrap()
            .try_acquire()
            .await
            .unwrap()
            .is_none());
        // Release gives it back at once.
        held.release().await.unwrap();
        assert_eq!(granted(&admin, key, None).await, 0);
        let again = lock
            .try_acquire()
            .await
            .unwrap()
            .expect("free after release");
        // Dropping releases too; this process's next acquire waits for that release.
        drop(again);
        let third = lock.try_acquire().await.unwrap().expect("free after drop");
        drop(third);
        eventually("the dropped hold is released", || async {
            granted(&admin, key, None).await == 0
        })
        .await;
    }

    #[tokio::test]
    async fn excluded_by_a_plain_session_then_proceeds() {
        let provider = provider();
        let lock = provider.lock(&unique("owned-handoff")).unwrap();
        let key = key_of(lock.name());
        let other = hold_elsewhere(key).await;
        let admin = connect().await;
        assert!(lock.try_acquire().await.unwrap().is_none());
        let waiter = tokio::spawn({
            let lock = lock.clone();
            async move { lock.acquire_timeout(Duration::from_secs(30)).await }
        });
        until_waiting(&admin, key).await;
        release_elsewhere(&other, key).await;
        let handle = tokio::time::timeout(PATIENCE, waiter)
            .await
            .expect("the waiter proceeds")
            .unwrap()
            .unwrap();
        assert_eq!(granted(&admin, key, None).await, 1);
        handle.release().await.unwrap();
        assert_eq!(granted(&admin, key, None).await, 0);
    }

    #[tokio::test]
    async fn cancel_mid_wait_leaves_nothing_held() {
        let provider = provider();
        let lock = provider.lock(&unique("owned-cancel")).unwrap();
        let key = key_of(lock.name());
        let other = hold_elsewhere(key).await;
        let admin = connect().await;
        tokio::select! {
            outcome = lock.acquire() => panic!("the wait ended by itself: {outcome:?}"),
            () = until_waiting(&admin, key) => {}
        }
        eventually("the abandoned wait ends", || async {
            waiting(&admin, key).await == 0
        })
        .await;
        release_elsewhere(&other, key).await;
        assert!(free_for_others(key).await);
        assert_eq!(granted(&admin, key, None).await, 0);
        // And the lock works as before.
        let handle = lock.try_acquire().await.unwrap().expect("free");
        handle.release().await.unwrap();
    }

    #[tokio::test]
    async fn drops_at_any_moment_leave_nothing_held() {
        let provider = provider();
        let lock = provider.lock(&unique("owned-early-drop")).unwrap();
        let key = key_of(lock.name());
        let other = hold_elsewhere(key).await;
        let admin = connect().await;
        for step in 0..DROP_STEPS {
            let outcome = tokio::time::timeout(drop_after(step), lock.acquire()).await;
            assert!(outcome.is_err(), "the wait ended by itself: {outcome:?}");
        }
        eventually("every abandoned wait ends", || async {
            waiting(&admin, key).await == 0
        })
        .await;
        release_elsewhere(&other, key).await;
        assert!(free_for_others(key).await);
        let handle = lock.try_acquire().await.unwrap().expect("free");
        handle.release().await.unwrap();
    }

    #[tokio::test]
    async fn a_grant_racing_with_the_drop_is_given_back() {
        let provider = provider();
        let admin = connect().await;
        for _ in 0..RACES {
            let lock = provider.lock(&unique("owned-race")).unwrap();
            let key = key_of(lock.name());
            let other = hold_elsewhere(key).await;
            tokio::select! {
                outcome = lock.acquire() => drop(outcome.unwrap()),
                () = async {
                    until_waiting(&admin, key).await;
                    release_elsewhere(&other, key).await;
                } => {}
            }
            eventually("whatever was granted is given back", || async {
                granted(&admin, key, None).await == 0
            })
            .await;
            let handle = lock.try_acquire().await.unwrap().expect("free");
            handle.release().await.unwrap();
        }
    }

    #[tokio::test]
    async fn killed_connection_fires_loss_and_frees_the_lock() {
        let provider = provider();
        let lock = provider.lock(&unique("owned-kill")).unwrap();
        let key = key_of(lock.name());
        let handle = lock.acquire().await.unwrap();
        assert!(handle.can_detect_loss());
        let waiter = tokio::spawn({
            let lock = self::provider().lock(lock.name()).unwrap();
            async move {
                lock.acquire_timeout(Duration::from_secs(30))
                    .await
                    .map(drop)
            }
        });
        let admin = connect().await;
        until_waiting(&admin, key).await;
        let killed = value(
            &admin,
            &format!(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_locks WHERE {} AND granted",
                on_key(key)
            ),
        )
        .await;
        assert_eq!(killed, "1");
        tokio::time::timeout(Duration::from_secs(5), handle.lost())
            .await
            .expect("loss fires within 5 s");
        assert!(handle.loss_signal().is_lost());
        tokio::time::timeout(PATIENCE, waiter)
            .await
            .expect("the waiter gets the lock")
            .unwrap()
            .unwrap();
        // Releasing a lost hold is fine.
        handle.release().await.unwrap();
    }

    #[tokio::test]
    async fn connections_are_reused() {
        let application = unique("reuse");
        let provider = TransactionLockProvider::from_url(&format!(
            "postgres://postgres@127.0.0.1:5432/test?sslmode=disable&application_name={application}"
        ))
        .unwrap();
        let lock = provider.lock(&unique("owned-reuse")).unwrap();
        for _ in 0..30 {
            lock.acquire().await.unwrap().release().await.unwrap();
        }
        assert_eq!(provider.idle_connections(), 1);
        let admin = connect().await;
        let sessions = format!(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{application}'"
        );
        assert_eq!(value(&admin, &sessions).await, "1");
        for _ in 0..30 {
            drop(lock.acquire().await.unwrap());
        }
        eventually("the last dropped hold is back in the pool", || async {
            provider.idle_connections() == 1
        })
        .await;
        assert_eq!(value(&admin, &sessions).await, "1");
    }

    /// Locks held at once need a session each; once they are released, only `pool_size` idle
    /// sessions are kept and the others are closed.
    #[tokio::test]
    async fn idle_sessions_beyond_the_pool_size_are_closed() {
        let application = unique("idle-limit");
        let provider = TransactionLockProvider::from_url(&format!(
            "postgres://postgres@127.0.0.1:5432/test?sslmode=disable&application_name={application}&pool_size=1"
        ))
        .unwrap();
        let base = unique("owned-idle");
        let mut handles = Vec::new();
        for index in 0..3 {
            let lock = provider.lock(&format!("{base}-{index}")).unwrap();
            handles.push(lock.acquire().await.unwrap());
        }
        let admin = connect().await;
        let sessions = format!(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{application}'"
        );
        assert_eq!(value(&admin, &sessions).await, "3");
        assert_eq!(provider.idle_connections(), 0);
        for handle in handles {
            handle.release().await.unwrap();
        }
        assert_eq!(provider.idle_connections(), 1);
        eventually("the sessions beyond the pool size are closed", || async {
            value(&admin, &sessions).await == "1"
        })
        .await;
    }
}

// ---------------------------------------------------------------------------------------------
// On the caller's connection.
// ---------------------------------------------------------------------------------------------

mod caller_connection {
    use super::*;

    /// The edges of a hold's life (the shared `hold_life_suite!`) on callers' connections:
    /// every instance from [`CallerConnections::make`] locks on a connection of its own
    /// (two instances are two sessions), opened on its first acquire and closed once the
    /// instance and its handles are gone. The classic mutex cases are not run here: their
    /// 100 contenders would be 100 connections.
    mod suite {
        use super::*;
        use crate::conformance::support::Subject;
        use tokio::sync::OnceCell;
        use tollgate::backend::postgres::transaction::ConnectionLockHandle;

        /// Makes [`OnOwnConnection`] locks; a child process holds the same name through the
        /// pooled provider (same key, `pg_advisory_lock` in the same key space).
        pub struct CallerConnections;

        impl Subject for CallerConnections {
            type Primitive = OnOwnConnection;
            fn make(&self, name: &str) -> OnOwnConnection {
                OnOwnConnection {
                    name: name.to_owned(),
                    client: Arc::new(OnceCell::new()),
                }
            }
            fn url(&self) -> String {
                POOLED_URL.to_owned()
            }
            fn child_kind(&self) -> String {
                "lock".into()
            }
        }

        /// A lock by name through `lock_name_on_connection` on a connection of this instance
        /// (and its clones), opened on the first acquire: its `Connection` future is spawned
        /// on the runtime of that acquire. The handles keep the client, so the connection
        /// closes once the instance and its handles are gone.
        #[derive(Clone)]
        pub struct OnOwnConnection {
            name: String,
            client: Arc<OnceCell<Arc<Client>>>,
        }

        impl OnOwnConnection {
            async fn client(&self) -> tollgate::Result<Arc<Client>> {
                let client = self
                    .client
                    .get_or_try_init(|| async {
                        let (client, connection) =
                            tokio_postgres::connect(CONNINFO, tokio_postgres::NoTls)
                                .await
                                .map_err(|error| {
                                    Error::backend("test", "cannot open a caller connection", error)
                                })?;
                        tokio::spawn(connection);
                        Ok::<_, Error>(Arc::new(client))
                    })
                    .await?;
                Ok(client.clone())
            }
        }

        impl Acquire for OnOwnConnection {
            type Handle = ConnectionLockHandle;

            fn name(&self) -> &str {
                &self.name
            }

            async fn acquire_wait(&self, wait: Wait) -> tollgate::Result<Option<Self::Handle>> {
                lock_name_on_connection(self.client().await?, &self.name, false, wait).await
            }
        }

        hold_life_suite!(caller_driven CallerConnections);
    }

    async fn connection() -> Arc<Client> {
        let client = Arc::new(connect().await);
        client
            .batch_execute("SET lock_timeout = '7s'")
            .await
            .unwrap();
        client
    }

    #[tokio::test]
    async fn excluded_by_another_holder_and_times_out() {
        let name = unique("conn-exclusion");
        let key = key_of(&name);
        let other = hold_elsewhere(key).await;
        let client = connection().await;
        assert!(
            lock_name_on_connection(client.clone(), &name, false, Wait::NO_WAIT)
                .await
                .unwrap()
                .is_none()
        );
        let start = Instant::now();
        assert!(
            lock_on_connection(client.clone(), key, false, Wait::AtMost(SHORT))
                .await
                .unwrap()
                .is_none()
        );
        assert_short_timeout(start.elapsed());
        assert_eq!(
            value(&client, "SELECT current_setting('lock_timeout')").await,
            "7s"
        );
        let admin = connect().await;
        assert_eq!(granted(&admin, key, Some(pid(&client).await)).await, 0);
        drop(other);
    }

    #[tokio::test]
    async fn waits_then_proceeds_and_drop_releases() {
        let key = key_of(&unique("conn-handoff"));
        let other = hold_elsewhere(key).await;
        let admin = connect().await;
        let client = connection().await;
        let own = pid(&client).await;
        let waiter = tokio::spawn(lock_on_connection(
            client.clone(),
            key,
            false,
            Wait::AtMost(Duration::from_secs(30)),
        ));
        until_waiting(&admin, key).await;
        release_elsewhere(&other, key).await;
        let handle = tokio::time::timeout(PATIENCE, waiter)
            .await
            .expect("the waiter proceeds")
            .unwrap()
            .unwrap()
            .expect("acquired");
        assert_eq!(granted(&admin, key, Some(own)).await, 1);
        assert_eq!(
            value(&client, "SELECT current_setting('lock_timeout')").await,
            "7s"
        );
        assert!(handle.can_detect_loss());
        drop(handle);
        eventually("the dropped hold is released", || async {
            granted(&admin, key, None).await == 0
        })
        .await;
    }

    #[tokio::test]
    async fn same_connection_reacquire_is_not_reentrant() {
        let key = key_of(&unique("conn-reentry"));
        let client = connection().await;
        let handle = lock_on_connection(client.clone(), key, false, Wait::NO_WAIT)
            .await
            .unwrap()
            .expect("free");
        // Zero wait: not acquired.
        assert!(
            lock_on_connection(client.clone(), key, false, Wait::NO_WAIT)
                .await
                .unwrap()
                .is_none()
        );
        assert!(lock_on_connection(client.clone(), key, true, Wait::NO_WAIT)
            .await
            .unwrap()
            .is_none());
        // No timeout: it would wait for itself.
        let error = lock_on_connection(client.clone(), key, false, Wait::Forever)
            .await
            .unwrap_err();
        assert!(matches!(error, Error::Deadlock { .. }), "{error:?}");
        // A timeout: waits it out, then not acquired.
        let start = Instant::now();
        let wait = Duration::from_millis(300);
        assert!(
            lock_on_connection(client.clone(), key, false, Wait::AtMost(wait))
                .await
                .unwrap()
                .is_none()
        );
        let elapsed = start.elapsed();
        assert!(elapsed >= wait - Duration::from_millis(20), "{elapsed:?}");
        assert!(elapsed < wait + Duration::from_millis(500), "{elapsed:?}");
        // Still held exactly once: one release frees it for others.
        handle.release().await.unwrap();
        let admin = connect().await;
        assert_eq!(granted(&admin, key, None).await, 0);
        // A drop followed at once by a re-acquire on the same connection finds it free: the
        // re-acquire waits for the release under way.
        let first = lock_on_connection(client.clone(), key, false, Wait::NO_WAIT)
            .await
            .unwrap()
            .expect("free");
        drop(first);
        let second = lock_on_connection(client.clone(), key, false, Wait::NO_WAIT)
            .await
            .unwrap()
            .expect("free after the drop");
        second.release().await.unwrap();
        assert_eq!(granted(&admin, key, None).await, 0);
    }

    #[tokio::test]
    async fn cancel_mid_wait_leaves_nothing_held() {
        let key = key_of(&unique("conn-cancel"));
        let other = hold_elsewhere(key).await;
        let admin = connect().await;
        let client = connection().await;
        let own = pid(&client).await;
        tokio::select! {
            outcome = lock_on_connection(client.clone(), key, false, Wait::Forever) => {
                panic!("the wait ended by itself: {outcome:?}")
            }
            () = until_waiting(&admin, key) => {}
        }
        // Runs after the cancelled wait on the same connection.
        assert_eq!(
            value(&client, "SELECT current_setting('lock_timeout')").await,
            "7s"
        );
        assert_eq!(waiting(&admin, key).await, 0);
        release_elsewhere(&other, key).await;
        assert!(free_for_others(key).await);
        assert_eq!(granted(&admin, key, Some(own)).await, 0);
        // The connection works and can take the lock.
        let handle = lock_on_connection(client.clone(), key, false, Wait::NO_WAIT)
            .await
            .unwrap()
            .expect("free");
        handle.release().await.unwrap();
    }

    #[tokio::test]
    async fn drops_at_any_moment_leave_nothing_held() {
        let key = key_of(&unique("conn-early-drop"));
        let other = hold_elsewhere(key).await;
        let admin = connect().await;
        let client = connection().await;
        let own = pid(&client).await;
        client.batch_execute("BEGIN").await.unwrap();
        for step in 0..DROP_STEPS {
            let wait = lock_on_connection(client.clone(), key, false, Wait::Forever);
            let outcome = tokio::time::timeout(drop_after(step), wait).await;
            assert!(outcome.is_err(), "the wait ended by itself: {outcome:?}");
            let setting = tokio::time::timeout(
                PATIENCE,
                value(&client, "SELECT current_setting('lock_timeout')"),
            )
            .await
            .expect("the abandoned wait ends");
            assert_eq!(setting, "7s", "step {step}");
        }
        client.batch_execute("COMMIT").await.unwrap();
        assert_eq!(granted(&admin, key, Some(own)).await, 0);
        release_elsewhere(&other, key).await;
        assert!(free_for_others(key).await);
        assert_eq!(granted(&admin, key, Some(own)).await, 0);
    }

    #[tokio::test]
    async fn a_grant_racing_with_the_drop_is_given_back() {
        let admin = connect().await;
        for _ in 0..RACES {
            let key = key_of(&unique("conn-race"));
            let other = hold_elsewhere(key).await;
            let client = connection().await;
            let own = pid(&client).await;
            // The holder lets go and the acquire future is dropped at about the same time.
            tokio::select! {
                outcome = lock_on_connection(client.clone(), key, false, Wait::Forever) => {
                    drop(outcome.unwrap().expect("acquired"));
                }
                () = async {
                    until_waiting(&admin, key).await;
                    release_elsewhere(&other, key).await;
                } => {}
            }
            eventually("whatever was granted is given back", || async {
                granted(&admin, key, Some(own)).await == 0
            })
            .await;
            assert!(free_for_others(key).await);
        }
    }

    #[tokio::test]
    async fn cancel_inside_a_caller_transaction_keeps_it_usable() {
        let key = key_of(&unique("conn-cancel-tx"));
        let other = hold_elsewhere(key).await;
        let admin = connect().await;
        let client = connection().await;
        client.batch_execute("BEGIN").await.unwrap();
        client
            .batch_execute("SET LOCAL lock_timeout = '9s'")
            .await
            .unwrap();
        tokio::select! {
            outcome = lock_on_connection(client.clone(), key, false, Wait::Forever) => {
                panic!("the wait ended by itself: {outcome:?}")
            }
            () = until_waiting(&admin, key) => {}
        }
        assert_eq!(
            value(&client, "SELECT current_setting('lock_timeout')").await,
            "9s"
        );
        assert_eq!(value(&client, "SELECT 41 + 1").await, "42");
        client.batch_execute("COMMIT").await.unwrap();
        assert_eq!(
            value(&client, "SELECT current_setting('lock_timeout')").await,
            "7s"
        );
        release_elsewhere(&other, key).await;
        assert!(free_for_others(key).await);
    }

    #[tokio::test]
    async fn killed_connection_fires_loss() {
        let key = key_of(&unique("conn-kill"));
        let client = connection().await;
        let own = pid(&client).await;
        let handle = lock_on_connection(client.clone(), key, false, Wait::NO_WAIT)
            .await
            .unwrap()
            .expect("free");
        let admin = connect().await;
        assert_eq!(
            value(&admin, &format!("SELECT pg_terminate_backend({own})")).await,
            "t"
        );
        tokio::time::timeout(Duration::from_secs(5), handle.lost())
            .await
            .expect("loss fires within 5 s");
        assert!(free_for_others(key).await);
        // Releasing a lost hold is fine.
        handle.release().await.unwrap();
    }
}

//! The reader-writer and upgradeable reader-writer contract.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;

use tollgate::{
    Acquire, Error, Handle, ReadWriteLock, ReadWriteLockProvider, UpgradeableHandle,
    UpgradeableReadWriteLock, UpgradeableReadWriteLockProvider,
};

use super::support::{abandon, unique, Holder, ABANDON_WAYS, PROMPT};

const SHORT: Duration = Duration::from_millis(200);

/// Polls (bounded) until a zero-wait read try fails: the sign that a writer now waits.
async fn until_readers_turned_away<L: ReadWriteLock>(lock: &L) {
    tokio::time::timeout(PROMPT, async {
        loop {
            match lock.reader().try_acquire().await.unwrap() {
                Some(handle) => drop(handle),
                None => return,
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("a waiting writer turns new readers away");
}

pub async fn readers_share_writers_exclude<P: ReadWriteLockProvider>(provider: P) {
    let name = unique("rw");
    let lock = provider.read_write_lock(&name).unwrap();
    let other = provider.read_write_lock(&name).unwrap();
    let readers: Vec<_> = futures_join(&lock, 3).await;
    assert!(
        other.writer().try_acquire().await.unwrap().is_none(),
        "writer beside readers"
    );
    assert!(
        lock.writer().try_acquire().await.unwrap().is_none(),
        "writer beside own readers"
    );
    for reader in readers {
        reader.release().await.unwrap();
    }
    let writer = other
        .writer()
        .try_acquire()
        .await
        .unwrap()
        .expect("no readers left");
    assert!(
        lock.reader().try_acquire().await.unwrap().is_none(),
        "reader beside a writer"
    );
    assert!(
        lock.writer().try_acquire().await.unwrap().is_none(),
        "two writers"
    );
    assert!(
        other.writer().try_acquire().await.unwrap().is_none(),
        "writer not re-entrant"
    );
    let started = Instant::now();
    assert!(lock
        .reader()
        .acquire_timeout(SHORT)
        .await
        .unwrap_err()
        .is_timeout());
    assert!(started.elapsed() < Duration::from_millis(500));
    writer.release().await.unwrap();
    assert!(lock.reader().try_acquire().await.unwrap().is_some());
}

async fn futures_join<L: ReadWriteLock>(
    lock: &L,
    count: usize,
) -> Vec<<L::Read as Acquire>::Handle> {
    let mut handles = Vec::new();
    for _ in 0..count {
        handles.push(
            lock.reader()
                .try_acquire()
                .await
                .unwrap()
                .expect("readers share"),
        );
    }
    handles
}

pub async fn waiting_writer_blocks_new_readers<P>(provider: P)
where
    P: ReadWriteLockProvider<ReadWriteLock: Clone + 'static>,
{
    let name = unique("preference");
    let lock = provider.read_write_lock(&name).unwrap();
    let reader = lock.reader().acquire().await.unwrap();
    let writer = tokio::spawn({
        let lock = lock.clone();
        async move {
            lock.writer()
                .acquire()
                .await
                .map(|handle| handle.fencing_token())
        }
    });
    until_readers_turned_away(&lock).await;
    assert!(!writer.is_finished());
    reader.release().await.unwrap();
    tokio::time::timeout(PROMPT, writer)
        .await
        .expect("writer gets in")
        .unwrap()
        .unwrap();
    // The writer's handle was dropped by its task (a release that may land a moment later on
    // a networked backend): readers are welcome again.
    tokio::time::timeout(PROMPT, lock.reader().acquire())
        .await
        .expect("readers admitted after the writer")
        .unwrap();
}

pub async fn cancelled_writer_lets_readers_in<P>(provider: P)
where
    P: ReadWriteLockProvider<ReadWriteLock: Clone + 'static>,
{
    let name = unique("writer-cancel");
    let lock = provider.read_write_lock(&name).unwrap();
    let reader = lock.reader().acquire().await.unwrap();
    let writer = tokio::spawn({
        let lock = lock.clone();
        async move { lock.writer().acquire().await.map(drop) }
    });
    until_readers_turned_away(&lock).await;
    writer.abort();
    let _ = writer.await;
    let second = tokio::time::timeout(PROMPT, lock.reader().acquire())
        .await
        .expect("readers admitted")
        .unwrap();
    reader.release().await.unwrap();
    second.release().await.unwrap();
    assert!(
        lock.writer().try_acquire().await.unwrap().is_some(),
        "nothing left held"
    );
}

/// A writer's wait dropped at any point — at its first poll, mid-attempt, between attempts —
/// leaves nothing behind: readers are admitted again at once, and once they leave a writer
/// gets in (no waiting mark set again by the rest of an attempt that outlived the drop).
pub async fn writer_wait_dropped_at_random_points<P>(provider: P)
where
    P: ReadWriteLockProvider<ReadWriteLock: Clone + 'static>,
{
    let name = unique("writer-storm");
    let lock = provider.read_write_lock(&name).unwrap();
    for round in 0..30 {
        let reader = lock.reader().acquire_timeout(PROMPT).await.unwrap();
        let how = if round % (ABANDON_WAYS + 1) == ABANDON_WAYS {
            // Aborted while it waits (mid-attempt or between attempts), after a random pause
            // once readers are turned away.
            let writer = tokio::spawn({
                let lock = lock.clone();
                async move { lock.writer().acquire().await.map(drop) }
            });
            until_readers_turned_away(&lock).await;
            let pause = Duration::from_micros(rand::thread_rng().gen_range(0..=3_000));
            tokio::time::sleep(pause).await;
            writer.abort();
            match writer.await {
                Ok(outcome) => panic!("round {round}: the writer's wait ended: {outcome:?}"),
                Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
                Err(_) => {}
            }
            format!("an abort {pause:?} after readers were turned away")
        } else {
            let (how, output) = abandon(round, lock.writer().acquire()).await;
            assert!(
                output.is_none(),
                "round {round}: a writer got in beside a reader"
            );
            how
        };
        let at = format!("round {round}, after {how}");
        let newcomer = tokio::time::timeout(PROMPT, lock.reader().acquire())
            .await
            .unwrap_or_else(|_| panic!("{at}: new readers are turned away"))
            .unwrap();
        reader.release().await.unwrap();
        newcomer.release().await.unwrap();
        lock.writer()
            .try_acquire()
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{at}: a writer is refused with nothing held"))
            .release()
            .await
            .unwrap();
    }
}

pub async fn reader_process_and_killed_writer<P: ReadWriteLockProvider>(provider: P, url: String) {
    let name = unique("rw-processes");
    let lock = provider.read_write_lock(&name).unwrap();
    let mut reader = Holder::start(&url, "read", &name).await;
    reader.held().await;
    assert!(
        lock.reader().try_acquire().await.unwrap().is_some(),
        "readers share across processes"
    );
    assert!(lock.writer().try_acquire().await.unwrap().is_none());
    reader.release().await;
    let mut writer = Holder::start(&url, "write", &name).await;
    writer.held().await;
    assert!(lock.reader().try_acquire().await.unwrap().is_none());
    writer.kill().await;
    let read = tokio::time::timeout(PROMPT, lock.reader().acquire())
        .await
        .expect("killed writer frees")
        .unwrap();
    drop(read);
}

pub async fn upgradeable_rules<P>(provider: P)
where
    P: UpgradeableReadWriteLockProvider<UpgradeableReadWriteLock: Clone + 'static>,
{
    let name = unique("upgradeable");
    let lock = provider.upgradeable_read_write_lock(&name).unwrap();
    let mut upgradeable = lock.upgradeable_reader().acquire().await.unwrap();
    assert!(!upgradeable.is_upgraded());
    // Coexists with readers; excludes writers and other upgradeable readers.
    let reader = lock
        .reader()
        .try_acquire()
        .await
        .unwrap()
        .expect("reader beside upgradeable");
    assert!(
        lock.upgradeable_reader()
            .try_acquire()
            .await
            .unwrap()
            .is_none(),
        "two upgradeable"
    );
    assert!(
        lock.writer().try_acquire().await.unwrap().is_none(),
        "writer beside upgradeable"
    );
    // The upgrade waits for the reader.
    assert!(!upgradeable.try_upgrade().await.unwrap());
    let started = Instant::now();
    match upgradeable.upgrade_timeout(SHORT).await {
        Err(Error::Timeout { name: reported, .. }) => assert_eq!(reported, name),
        other => panic!("expected an upgrade timeout, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_millis(500));
    assert!(!upgradeable.is_upgraded());
    // A failed upgrade leaves the read hold working for other readers.
    let second_reader = lock
        .reader()
        .try_acquire()
        .await
        .unwrap()
        .expect("readers still admitted");
    drop(second_reader);
    let upgrade = tokio::spawn(async move {
        upgradeable.upgrade().await.unwrap();
        upgradeable
    });
    until_readers_turned_away(&lock).await;
    reader.release().await.unwrap();
    let mut upgraded = tokio::time::timeout(PROMPT, upgrade)
        .await
        .expect("upgrade completes")
        .unwrap();
    assert!(upgraded.is_upgraded());
    assert!(
        lock.reader().try_acquire().await.unwrap().is_none(),
        "reader beside a writer"
    );
    assert!(lock.writer().try_acquire().await.unwrap().is_none());
    // Only once.
    assert!(matches!(
        upgraded.upgrade().await,
        Err(Error::InvalidArgument(_))
    ));
    upgraded.release().await.unwrap();
    assert!(
        lock.writer().try_acquire().await.unwrap().is_some(),
        "nothing left held"
    );
}

pub async fn cancelled_upgrade_keeps_read_hold<P>(provider: P)
where
    P: UpgradeableReadWriteLockProvider<UpgradeableReadWriteLock: Clone + 'static>,
{
    let name = unique("upgrade-cancel");
    let lock = provider.upgradeable_read_write_lock(&name).unwrap();
    let mut upgradeable = lock.upgradeable_reader().acquire().await.unwrap();
    let reader = lock.reader().acquire().await.unwrap();
    assert!(tokio::time::timeout(SHORT, upgradeable.upgrade())
        .await
        .is_err());
    // Readers are admitted again, the upgradeable hold still excludes writers.
    let second = tokio::time::timeout(PROMPT, lock.reader().acquire())
        .await
        .expect("readers admitted")
        .unwrap();
    assert!(lock.writer().try_acquire().await.unwrap().is_none());
    assert!(lock
        .upgradeable_reader()
        .try_acquire()
        .await
        .unwrap()
        .is_none());
    reader.release().await.unwrap();
    second.release().await.unwrap();
    assert!(
        upgradeable.try_upgrade().await.unwrap(),
        "upgrade once readers are gone"
    );
    upgradeable.release().await.unwrap();
    assert!(lock
        .upgradeable_reader()
        .try_acquire()
        .await
        .unwrap()
        .is_some());
}

/// How many ways [`abandon_upgrade`] knows.
const UPGRADE_ABANDON_WAYS: usize = ABANDON_WAYS + 2;

/// Gives up on an upgrade part-way while a reader holds (so it cannot succeed), the
/// `round`-th way of a rotation: `upgrade()` abandoned each way of [`abandon`], an
/// `upgrade_timeout` of 1–5 ms abandoned in turn, and a spawned `upgrade()` aborted after
/// a yield. Fails if an upgrade returned anything but an `upgrade_timeout`'s own timeout.
/// Returns the handle and how.
async fn abandon_upgrade<H: UpgradeableHandle>(round: usize, mut handle: H) -> (H, String) {
    let way = round % UPGRADE_ABANDON_WAYS;
    if way < ABANDON_WAYS {
        let (how, output) = abandon(way, handle.upgrade()).await;
        if let Some(result) = output {
            panic!("round {round}: upgrade() returned {result:?} (at {how}) while a reader holds");
        }
        return (handle, format!("upgrade() abandoned at {how}"));
    }
    if way == ABANDON_WAYS {
        let timeout = Duration::from_micros(rand::thread_rng().gen_range(1_000..=5_000));
        let (how, output) = abandon(
            round / UPGRADE_ABANDON_WAYS,
            handle.upgrade_timeout(timeout),
        )
        .await;
        match output {
            None | Some(Err(Error::Timeout { .. })) => {}
            Some(other) => panic!(
                "round {round}: upgrade_timeout({timeout:?}) returned {other:?} while a reader holds"
            ),
        }
        return (
            handle,
            format!("upgrade_timeout({timeout:?}) abandoned at {how}"),
        );
    }
    let shared = Arc::new(tokio::sync::Mutex::new(handle));
    let task = tokio::spawn({
        let shared = shared.clone();
        async move { shared.lock().await.upgrade().await }
    });
    tokio::task::yield_now().await;
    task.abort();
    match task.await {
        Ok(result) => panic!("round {round}: a spawned upgrade() returned {result:?}"),
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(_) => {}
    }
    let handle = Arc::try_unwrap(shared)
        .expect("the aborted task let go of the handle")
        .into_inner();
    (handle, "a spawned upgrade() aborted after a yield".into())
}

/// `upgrade()` is cancel-safe: dropped at any point, it keeps the upgradeable read hold and
/// leaves nothing else waiting or held (new readers get in; writers and other upgradeable
/// readers stay out), and a later upgrade, release and writer proceed.
pub async fn upgrade_dropped_at_random_points<P>(provider: P)
where
    P: UpgradeableReadWriteLockProvider<UpgradeableReadWriteLock: Clone + 'static>,
{
    let name = unique("upgrade-storm");
    let lock = provider.upgradeable_read_write_lock(&name).unwrap();
    let mut upgradeable = lock
        .upgradeable_reader()
        .acquire_timeout(PROMPT)
        .await
        .unwrap();
    let reader = lock.reader().acquire_timeout(PROMPT).await.unwrap();
    for round in 0..30 {
        let (handle, how) = abandon_upgrade(round, upgradeable).await;
        upgradeable = handle;
        let at = format!("round {round}, after {how}");
        assert!(!upgradeable.is_upgraded(), "{at}: upgraded beside a reader");
        let newcomer = tokio::time::timeout(PROMPT, lock.reader().acquire())
            .await
            .unwrap_or_else(|_| panic!("{at}: new readers are turned away (a wait left queued)"))
            .unwrap();
        assert!(
            lock.writer().try_acquire().await.unwrap().is_none(),
            "{at}: a writer got in"
        );
        assert!(
            lock.upgradeable_reader()
                .try_acquire()
                .await
                .unwrap()
                .is_none(),
            "{at}: a second upgradeable reader got in (the upgradeable hold is gone)"
        );
        newcomer.release().await.unwrap();
    }
    reader.release().await.unwrap();
    tokio::time::timeout(PROMPT * 2, upgradeable.upgrade_timeout(PROMPT))
        .await
        .expect("upgrade_timeout hung past its timeout")
        .expect("the upgrade succeeds once the readers are gone");
    assert!(upgradeable.is_upgraded());
    assert!(
        lock.reader().try_acquire().await.unwrap().is_none(),
        "a reader beside the upgraded hold"
    );
    tokio::time::timeout(PROMPT, upgradeable.release())
        .await
        .expect("the upgraded hold's release hung")
        .unwrap();
    tokio::time::timeout(PROMPT, lock.writer().acquire())
        .await
        .expect("a writer gets in after the release")
        .unwrap()
        .release()
        .await
        .unwrap();
}

/// An upgrade abandoned (every way of the rotation) and then `release()` at once: the
/// release does not wait behind the abandoned upgrade's wait, and a writer then gets in.
/// Last, an `upgrade()` after an abandoned one succeeds once the reader leaves (it never
/// gives up).
pub async fn upgrade_dropped_then_released<P>(provider: P)
where
    P: UpgradeableReadWriteLockProvider<UpgradeableReadWriteLock: Clone + 'static>,
{
    let name = unique("upgrade-drop-release");
    let lock = provider.upgradeable_read_write_lock(&name).unwrap();
    for round in 0..2 * UPGRADE_ABANDON_WAYS {
        let upgradeable = lock
            .upgradeable_reader()
            .acquire_timeout(PROMPT)
            .await
            .unwrap_or_else(|error| panic!("round {round}: upgradeable acquire: {error}"));
        let reader = lock.reader().acquire_timeout(PROMPT).await.unwrap();
        let (upgradeable, how) = abandon_upgrade(round, upgradeable).await;
        tokio::time::timeout(PROMPT, upgradeable.release())
            .await
            .unwrap_or_else(|_| panic!("round {round}: release hung after {how}"))
            .unwrap();
        reader.release().await.unwrap();
        tokio::time::timeout(PROMPT, lock.writer().acquire())
            .await
            .unwrap_or_else(|_| panic!("round {round}: no writer got in after {how}"))
            .unwrap()
            .release()
            .await
            .unwrap();
    }
    let upgradeable = lock
        .upgradeable_reader()
        .acquire_timeout(PROMPT)
        .await
        .unwrap();
    let reader = lock.reader().acquire_timeout(PROMPT).await.unwrap();
    let (mut upgradeable, how) = abandon_upgrade(0, upgradeable).await;
    reader.release().await.unwrap();
    tokio::time::timeout(PROMPT, upgradeable.upgrade())
        .await
        .unwrap_or_else(|_| panic!("upgrade() after {how} did not complete with no reader left"))
        .unwrap_or_else(|error| panic!("upgrade() after {how}: {error}"));
    assert!(upgradeable.is_upgraded());
    tokio::time::timeout(PROMPT, upgradeable.release())
        .await
        .expect("the upgraded hold's release hung")
        .unwrap();
    tokio::time::timeout(PROMPT, lock.writer().acquire())
        .await
        .expect("a writer gets in after the release")
        .unwrap();
}

/// Runs the reader-writer cases, plus the mutex suite on the write side.
#[macro_export]
macro_rules! read_write_suite {
    ($provider:expr, $url:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn readers_share_writers_exclude() {
            $crate::conformance::rw::readers_share_writers_exclude($provider).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn waiting_writer_blocks_new_readers() {
            $crate::conformance::rw::waiting_writer_blocks_new_readers($provider).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn cancelled_writer_lets_readers_in() {
            $crate::conformance::rw::cancelled_writer_lets_readers_in($provider).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn writer_wait_dropped_at_random_points() {
            $crate::conformance::rw::writer_wait_dropped_at_random_points($provider).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn reader_process_and_killed_writer() {
            $crate::conformance::rw::reader_process_and_killed_writer($provider, $url).await;
        }
        mod write_as_mutex {
            #[allow(unused_imports)]
            use super::*;
            $crate::mutex_suite!($crate::conformance::support::Writers {
                provider: $provider,
                url: $url
            });
        }
    };
}

/// Runs the upgradeable reader-writer cases.
#[macro_export]
macro_rules! upgradeable_suite {
    ($provider:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn upgradeable_rules() {
            $crate::conformance::rw::upgradeable_rules($provider).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn cancelled_upgrade_keeps_read_hold() {
            $crate::conformance::rw::cancelled_upgrade_keeps_read_hold($provider).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn upgrade_dropped_at_random_points() {
            $crate::conformance::rw::upgrade_dropped_at_random_points($provider).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn upgrade_dropped_then_released() {
            $crate::conformance::rw::upgrade_dropped_then_released($provider).await;
        }
    };
}

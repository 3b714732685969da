//! The local backend: the shared conformance suite, plus what only this backend has (file
//! names on disk, permissions, I/O errors, URLs, the blocking API).
#![cfg(feature = "local")]

mod conformance;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use tollgate::blocking::Blocking;
use tollgate::local::{lock_file_name, LocalProvider};
use tollgate::{
    Acquire, AnyProvider, Error, Handle, LockProvider, ReadWriteLock, ReadWriteLockProvider,
    SemaphoreProvider, UpgradeableHandle, UpgradeableReadWriteLock,
    UpgradeableReadWriteLockProvider, Wait,
};

use conformance::support::{unique, Locks};

holder_entry!();

/// One lock directory for this test binary and the holder processes it starts.
fn directory() -> PathBuf {
    static DIRECTORY: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIRECTORY
        .get_or_init(|| tempfile::tempdir().expect("temporary directory"))
        .path()
        .to_owned()
}

fn provider() -> LocalProvider {
    LocalProvider::with_directory(directory()).expect("local provider")
}

fn url() -> String {
    format!("file://{}", directory().display())
}

mod lock {
    use super::*;
    mutex_suite!(Locks {
        provider: provider(),
        url: url()
    });
}

mod lock_through_any_provider {
    use super::*;
    mutex_suite!(Locks {
        provider: AnyProvider::from_url(&url()).unwrap(),
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
    upgradeable_suite!(provider());
}

mod read_write_through_any_provider {
    use super::*;
    upgradeable_suite!(AnyProvider::from_url(&url()).unwrap());
}

#[tokio::test]
async fn lock_files_use_distributed_lock_names_and_stay() {
    let dir = tempfile::tempdir().unwrap();
    let provider = LocalProvider::with_directory(dir.path()).unwrap();
    let lock = provider.lock("ABC").unwrap();
    assert_eq!(
        lock.path(),
        dir.path().join("ABCZJ4QR6TVN4A3KMGQ4BUKHOWQYFRLXSB3.lock")
    );
    assert_eq!(lock_file_name(""), "P6AD62YPPHO33YTKIBUM5WBQHQVBCSXA.lock");
    lock.acquire().await.unwrap().release().await.unwrap();
    // Deleting lock files on release breaks exclusion (the inode race): they stay.
    assert!(lock.path().exists());
    let semaphore = provider.semaphore("ABC", 2).unwrap();
    let rw = provider.read_write_lock("ABC").unwrap();
    let (_a, _b, _c) = (
        semaphore.acquire().await.unwrap(),
        rw.writer().acquire().await.unwrap(),
        lock.acquire().await.unwrap(),
    );
    assert!(dir
        .path()
        .join("semaphore")
        .join(lock_file_name("ABC"))
        .exists());
    assert!(dir.path().join("rw").join(lock_file_name("ABC")).exists());
}

#[tokio::test]
async fn files_are_owner_only_unless_group_access() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let private = LocalProvider::with_directory(dir.path().join("private")).unwrap();
    let lock = private.lock("x").unwrap();
    drop(lock.acquire().await.unwrap());
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(lock.path()), 0o600);
    assert_eq!(mode(private.directory()), 0o700);

    let shared = LocalProvider::builder()
        .directory(dir.path().join("shared"))
        .group_access(true)
        .build()
        .unwrap();
    let lock = shared.lock("x").unwrap();
    drop(lock.acquire().await.unwrap());
    assert_eq!(mode(lock.path()), 0o660);
    let from_url = LocalProvider::from_url(&format!(
        "file://{}?group=true",
        dir.path().join("url").display()
    ))
    .unwrap();
    let lock = from_url.lock("x").unwrap();
    drop(lock.acquire().await.unwrap());
    assert_eq!(mode(lock.path()), 0o660);
}

#[tokio::test]
async fn io_errors_are_errors_not_busy() {
    let dir = tempfile::tempdir().unwrap();
    let provider = LocalProvider::with_directory(dir.path()).unwrap();
    let lock = provider.lock("in the way").unwrap();
    std::fs::create_dir(lock.path()).unwrap();
    for result in [
        lock.try_acquire().await.map(drop),
        lock.acquire().await.map(drop),
    ] {
        match result {
            Err(error @ Error::Backend { .. }) => {
                assert!(error.to_string().contains("lock file"), "{error}")
            }
            other => panic!("a directory in the way is an error, got {other:?}"),
        }
    }
    // A lock directory that is a regular file.
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"").unwrap();
    let error = LocalProvider::with_directory(&file).unwrap_err();
    assert!(error.is_backend(), "{error}");
}

#[tokio::test]
async fn replaced_lock_file_is_followed() {
    let dir = tempfile::tempdir().unwrap();
    let provider = LocalProvider::with_directory(dir.path()).unwrap();
    let lock = provider.lock("replaced").unwrap();
    drop(lock.acquire().await.unwrap());
    // Someone deletes the file between holders: the next holder locks the new file, and a
    // contender that opens the path afresh sees it held.
    std::fs::remove_file(lock.path()).unwrap();
    let held = lock.acquire().await.unwrap();
    assert!(lock.path().exists());
    assert!(provider
        .lock("replaced")
        .unwrap()
        .try_acquire()
        .await
        .unwrap()
        .is_none());
    drop(held);
}

#[test]
fn urls() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    assert_eq!(
        LocalProvider::from_url(&url).unwrap().directory(),
        dir.path()
    );
    assert_eq!(AnyProvider::from_url(&url).unwrap().backend(), "local");
    assert!(AnyProvider::from_url("local:").is_ok());
    for bad in [
        "",
        "nonsense",
        "zz://host/x",
        "local:/some/path",
        "file://elsewhere/tmp/x",
        &format!("{url}?bogus=1"),
        &format!("{url}?group=maybe"),
    ] {
        match AnyProvider::from_url(bad) {
            Err(Error::InvalidArgument(message)) => assert!(!message.is_empty()),
            other => panic!("{bad:?} should be an invalid argument, got {other:?}"),
        }
    }
}

/// A file URL names its directory in full: `file:`, `file://`, `file:dir`, `file:rel/dir` and
/// `file:///` are refused (they parse as `/`, a host, `/dir`, `/rel/dir`), and nothing is made.
#[test]
fn file_urls_must_be_absolute() {
    for bad in [
        "file:",
        "file://",
        "file:lockdir",
        "file:relative/dir",
        "file:///",
        "file:?group=true",
    ] {
        match LocalProvider::from_url(bad) {
            Err(Error::InvalidArgument(message)) => {
                assert!(message.contains("file:///path/to/dir"), "{bad}: {message}")
            }
            other => panic!("{bad:?} should be refused, got {other:?}"),
        }
    }
    assert!(!std::path::Path::new("/lockdir").exists());
    assert!(!std::path::Path::new("/relative").exists());
}

/// Only the lock directory's last component is made: a missing parent is an error naming the
/// path, and is not created.
#[test]
fn a_missing_parent_is_not_made() {
    let dir = tempfile::tempdir().unwrap();
    let below = dir.path().join("missing").join("locks");
    match LocalProvider::with_directory(&below) {
        Err(Error::InvalidArgument(message)) => {
            assert!(message.contains(&below.display().to_string()), "{message}");
            assert!(message.contains("parent"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(!dir.path().join("missing").exists());
    let made = dir.path().join("locks");
    LocalProvider::with_directory(&made).unwrap();
    assert!(made.join("semaphore").is_dir() && made.join("rw").is_dir());
}

/// A lock directory, wherever it comes from, is refused when others could tamper with it:
/// writable by everyone, writable by its group (unless the group option is on), a symbolic
/// link, or someone else's.
#[test]
fn lock_directories_are_checked() {
    use std::os::unix::fs::PermissionsExt;

    let refused = |path: &std::path::Path, group: bool, says: &str| {
        let built = LocalProvider::builder()
            .directory(path)
            .group_access(group)
            .build();
        match built {
            Err(Error::InvalidArgument(message)) => {
                assert!(message.contains(&path.display().to_string()), "{message}");
                assert!(message.contains(says), "{message}");
            }
            other => panic!("{} should be refused, got {other:?}", path.display()),
        }
    };
    let set_mode = |path: &std::path::Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    set_mode(&open, 0o777);
    refused(&open, false, "everyone");
    refused(&open, true, "everyone");
    let grouped = dir.path().join("grouped");
    std::fs::create_dir(&grouped).unwrap();
    set_mode(&grouped, 0o770);
    refused(&grouped, false, "group=true");
    LocalProvider::builder()
        .directory(&grouped)
        .group_access(true)
        .build()
        .expect("a group directory with the group option");
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&grouped, &link).unwrap();
    refused(&link, true, "symbolic link");
    // Someone else's: as root, a directory given to nobody; otherwise the root directory.
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        let theirs = dir.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        refused(&theirs, false, "uid 65534");
        refused(&theirs, true, "uid 65534");
    } else {
        refused(std::path::Path::new("/"), false, "uid 0");
    }
    // The same through a URL.
    match AnyProvider::from_url(&format!("file://{}", open.display())) {
        Err(Error::InvalidArgument(message)) => assert!(message.contains("everyone")),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn blocking_api_outside_a_runtime() {
    let provider = provider();
    let name = unique("blocking");
    let lock = Blocking::new(provider.lock(&name).unwrap());
    let held = lock.acquire().unwrap();
    assert!(held.fencing_token().is_some());
    assert!(lock.try_acquire().unwrap().is_none());
    let started = std::time::Instant::now();
    assert!(lock
        .acquire_timeout(Duration::from_millis(200))
        .unwrap_err()
        .is_timeout());
    assert!(started.elapsed() < Duration::from_millis(500));
    held.release().unwrap();
    assert!(lock.try_acquire_timeout(Duration::ZERO).unwrap().is_some());

    let semaphore = Blocking::new(provider.semaphore(&name, 2).unwrap());
    let tickets = (semaphore.acquire().unwrap(), semaphore.acquire().unwrap());
    assert!(semaphore.try_acquire().unwrap().is_none());
    drop(tickets);

    let rw = provider.upgradeable_read_write_lock(&name).unwrap();
    let mut upgradeable = Blocking::new(rw.upgradeable_reader()).acquire().unwrap();
    let reader = Blocking::new(rw.reader()).acquire().unwrap();
    assert!(!upgradeable.upgrade_wait(Wait::NO_WAIT).unwrap());
    drop(reader);
    upgradeable.upgrade().unwrap();
    assert!(upgradeable.is_upgraded());
}

#[tokio::test(flavor = "current_thread")]
async fn blocking_api_inside_a_runtime_does_not_hang() {
    let provider = provider();
    let name = unique("blocking-in-runtime");
    let lock = Blocking::new(provider.lock(&name).unwrap());
    let held = lock.acquire().unwrap();
    assert!(lock
        .acquire_timeout(Duration::from_millis(100))
        .unwrap_err()
        .is_timeout());
    held.release().unwrap();
}

#[tokio::test]
async fn upgrade_of_any_handle_and_fencing() {
    let provider = AnyProvider::from_url(&url()).unwrap();
    let rw = provider.read_write_lock(&unique("any-upgrade")).unwrap();
    let first = rw
        .writer()
        .acquire()
        .await
        .unwrap()
        .fencing_token()
        .expect("writers get tokens");
    let mut upgradeable = rw.upgradeable_reader().acquire().await.unwrap();
    assert_eq!(upgradeable.fencing_token(), None);
    upgradeable.upgrade().await.unwrap();
    let second = upgradeable
        .fencing_token()
        .expect("an upgraded hold gets a token");
    assert!(second > first);
    assert!(!upgradeable.can_detect_loss());
}

/// Users with different max counts race on one fresh name, again and again: at every moment
/// the tickets held are all under one max count and within it, and a refusal only ever
/// names a max count that was really held.
#[test]
fn semaphore_max_counts_race_and_never_mix() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    for round in 0..20 {
        let name = unique(&format!("max-race-{round}"));
        // held[m] counts the tickets held under max count m (2 or 3).
        let held: Arc<[AtomicUsize; 4]> = Arc::new(Default::default());
        let threads: Vec<_> = (0..6)
            .map(|thread| {
                let (name, held) = (name.clone(), held.clone());
                std::thread::spawn(move || {
                    let max = 2 + thread % 2;
                    let semaphore = Blocking::new(provider().semaphore(&name, max as u32).unwrap());
                    let (mut taken, mut refused) = (0, 0);
                    for _ in 0..50 {
                        match semaphore.try_acquire() {
                            Ok(Some(ticket)) => {
                                let now = held[max].fetch_add(1, Ordering::SeqCst) + 1;
                                let other = held[5 - max].load(Ordering::SeqCst);
                                assert!(now <= max, "{now} tickets of max {max}");
                                assert_eq!(other, 0, "max {max} held beside max {}", 5 - max);
                                held[max].fetch_sub(1, Ordering::SeqCst);
                                drop(ticket);
                                taken += 1;
                            }
                            Ok(None) => {}
                            Err(Error::InvalidArgument(message)) => {
                                assert!(
                                    message.contains(&format!("max count {}", 5 - max)),
                                    "{message}"
                                );
                                refused += 1;
                            }
                            Err(other) => panic!("{other}"),
                        }
                    }
                    (taken, refused)
                })
            })
            .collect();
        let outcomes: Vec<(usize, usize)> =
            threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert!(
            outcomes.iter().map(|o| o.0).sum::<usize>() > 0,
            "{outcomes:?}"
        );
    }
}

/// How long each of `rounds` hand-offs took, from the holder's release until a waiter that
/// `wait` runs (on whatever runtime or thread it chooses) holds the lock.
fn hand_offs(name: &str, rounds: usize, wait: impl Fn(String) -> std::thread::JoinHandle<()>) {
    let holder = Blocking::new(provider().lock(name).unwrap());
    let mut times = Vec::new();
    for _ in 0..rounds {
        let held = holder.acquire().unwrap();
        let waiter = wait(name.to_owned());
        // The waiter is watching once it has tried and found the lock busy: wait for its
        // watch on the file (its try and subscribe come before it sleeps).
        while !watching(name) {
            std::thread::sleep(Duration::from_millis(1));
        }
        let released = std::time::Instant::now();
        held.release().unwrap();
        waiter.join().unwrap();
        times.push(released.elapsed());
    }
    times.sort();
    let median = times[times.len() / 2];
    // A waiter that nothing wakes re-checks once a second; one woken by the release holds
    // within microseconds (milliseconds on a loaded machine).
    assert!(
        median < Duration::from_millis(300),
        "median hand-off {median:?} (all: {times:?})"
    );
}

/// Whether some thread of this process has an inotify watch on the lock file of `name`
/// (from `/proc/self/fdinfo`, matched by the file's inode).
fn watching(name: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(metadata) = std::fs::metadata(directory().join(lock_file_name(name))) else {
        return false;
    };
    let inode = format!("ino:{:x} ", metadata.ino());
    std::fs::read_dir("/proc/self/fdinfo")
        .unwrap()
        .filter_map(|entry| std::fs::read_to_string(entry.ok()?.path()).ok())
        .any(|info| {
            info.lines()
                .any(|line| line.starts_with("inotify") && line.contains(&inode))
        })
}

/// A release wakes its waiter at once wherever the waiter waits: in a current-thread
/// runtime, in a multi-thread one, through the blocking API on a plain thread, and in a
/// runtime started after another one (whose watcher went with it) shut down.
#[test]
fn a_release_wakes_its_waiter_in_every_kind_of_runtime() {
    let rounds = 15;
    let in_runtime = |runtime: fn() -> tokio::runtime::Runtime| {
        move |name: String| {
            std::thread::spawn(move || {
                runtime().block_on(async {
                    let handle = provider().lock(&name).unwrap().acquire().await.unwrap();
                    handle.release().await.unwrap();
                });
            })
        }
    };
    let current_thread = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    let multi_thread = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    };
    // A fresh runtime per round: each starts its own watcher after the last one's went.
    hand_offs(&unique("wake-current"), rounds, in_runtime(current_thread));
    hand_offs(&unique("wake-multi"), rounds, in_runtime(multi_thread));
    hand_offs(&unique("wake-blocking"), rounds, |name| {
        std::thread::spawn(move || {
            let lock = Blocking::new(provider().lock(&name).unwrap());
            lock.acquire().unwrap().release().unwrap();
        })
    });
}

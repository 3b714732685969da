//! `tollgate` against the server backends on this machine's loopback: the same cases for
//! each (run, hold, busy, other primitives of the same name, unreachable server, bad URL, a
//! hold lost under a running command, a killed tollgate, what the command is told).
//! ZooKeeper's server is the one `.ci/run` starts at 127.0.0.1:2181.

#![cfg(any(
    feature = "postgres",
    feature = "mysql",
    feature = "redis",
    feature = "zookeeper"
))]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{block_on, wait_within};

/// How long any child may take before the test calls it hung.
const HANG: Duration = Duration::from_secs(60);

fn tollgate(url: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    command.env("TOLLGATE_BACKEND", url);
    command
}

fn unique(label: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos())
        .unwrap_or_default();
    format!("{label}-{}-{nanos}", std::process::id())
}

/// Runs a command, holds the lock from another process, finds it busy (exit 75 with one
/// line naming it), takes each of `others` (other primitives of the same name) meanwhile,
/// and takes the lock once the holder lets go.
fn run_hold_and_busy(url: &str, label: &str, others: &[&[&str]]) {
    let name = unique(label);
    let status = tollgate(url)
        .args(["run", &name, "--", "sh", "-c", "exit 3"])
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(3), "the command's own status");

    let (holder, _stdout) = start_holder(url, &name);

    let busy = tollgate(url)
        .args(["run", &name, "--timeout", "0", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(busy.status.code(), Some(75));
    let stderr = String::from_utf8_lossy(&busy.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&name), "{stderr}");

    for args in others {
        let other = tollgate(url)
            .args(["run", &name, "--timeout", "0"])
            .args(*args)
            .args(["--", "true"])
            .status()
            .unwrap();
        assert_eq!(
            other.code(),
            Some(0),
            "{args:?} is not the lock of the same name"
        );
    }

    release_holder(holder);
    let free = tollgate(url)
        .args(["run", &name, "--timeout", "5s", "--", "true"])
        .status()
        .unwrap();
    assert_eq!(free.code(), Some(0));
}

/// An unreachable server exits 69 (with `says` on stderr); a malformed URL exits 2.
fn unreachable_and_bad_urls(unreachable: &str, says: &str, bad: &str) {
    // A wait rides out an unreachable server until its deadline (or the backend's
    // unreachable_timeout, 30 s by default), then says so.
    let started = Instant::now();
    let output = tollgate(unreachable)
        .args(["run", "x", "--timeout", "1s", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(69));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(says), "{stderr}");
    assert!(stderr.contains("unreachable for"), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    let output = tollgate(bad)
        .args(["run", "x", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{bad}");
}

/// The first line `child` prints on its (piped) stdout, and the rest of that stdout.
fn first_line(child: &mut Child) -> (String, BufReader<ChildStdout>) {
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    (line, stdout)
}

/// `tollgate hold NAME`, returned once it holds, with the rest of its stdout.
fn start_holder(url: &str, name: &str) -> (Child, BufReader<ChildStdout>) {
    start_holder_with(url, name, &[])
}

/// `tollgate hold NAME ARGS`, returned once it holds, with the rest of its stdout.
fn start_holder_with(url: &str, name: &str, args: &[&str]) -> (Child, BufReader<ChildStdout>) {
    let mut holder = tollgate(url)
        .args(["hold", name])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (line, stdout) = first_line(&mut holder);
    assert_eq!(line.trim(), format!("held {name}"));
    (holder, stdout)
}

/// Tells a [`start_holder`] to release, and waits for it to exit 0.
fn release_holder(mut holder: Child) {
    holder
        .stdin
        .take()
        .unwrap()
        .write_all(b"release\n")
        .unwrap();
    assert!(wait_within(&mut holder, HANG).success());
}

/// `tollgate run NAME ARGS -- sh -c 'echo started; sleep SECONDS; touch FILE'`, returned once
/// the command has started; with `detached`, the sleep and the touch run in a subshell of
/// their own that the command waits for (a child of the command, as a build's compilers are).
fn start_sleeper(
    url: &str,
    name: &str,
    args: &[&str],
    (seconds, detached): (u32, bool),
    file: &Path,
) -> Child {
    let work = format!("sleep {seconds}; touch '{}'", file.display());
    let script = if detached {
        format!("echo started; ({work}) & wait")
    } else {
        format!("echo started; {work}")
    };
    let mut child = tollgate(url)
        .args(["run", name])
        .args(args)
        .args(["--", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (line, _) = first_line(&mut child);
    assert_eq!(line, "started\n", "the command did not start");
    child
}

/// The file the sleeper would have touched is not there once its time (and some) has passed.
fn never_touched(file: &Path, started: Instant, seconds: u32) {
    let after = Duration::from_secs(u64::from(seconds)) + Duration::from_secs(1);
    std::thread::sleep(after.saturating_sub(started.elapsed()));
    assert!(!file.exists(), "the command ran on without its lock");
}

/// The holder's session or key is ended from outside (`end_hold`) while the command's child
/// sleeps: tollgate stops the command and its child before they can go on (the file is never
/// touched), says so in one line naming the lock, exits 79 within the backend's detection time
/// plus the grace period, and the lock is free again. A `tollgate hold` whose hold is ended
/// the same way exits 79 too.
fn loss_stops_the_command(url: &str, name: &str, end_hold: impl Fn()) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("touched");
    let began = Instant::now();
    let mut child = start_sleeper(url, name, &["--kill-after", "1s"], (4, true), &file);
    end_hold();
    let status = wait_within(&mut child, Duration::from_secs(20));
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(79), "{stderr}");
    assert!(stderr.contains(name) && stderr.contains("lost"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    never_touched(&file, began, 4);
    let free = tollgate(url)
        .args(["run", name, "--timeout", "5s", "--", "true"])
        .status()
        .unwrap();
    assert_eq!(free.code(), Some(0));
    let (mut holder, _stdout) = start_holder(url, name);
    end_hold();
    let status = wait_within(&mut holder, Duration::from_secs(20));
    assert_eq!(status.code(), Some(79), "the hold outlived its loss");
}

/// `kill -9` of tollgate while the command sleeps: the command dies with it (the file is
/// never touched), and the lock is free again.
fn killed_tollgate_takes_the_command(url: &str, label: &str) {
    let name = unique(label);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("touched");
    let began = Instant::now();
    let mut child = start_sleeper(url, &name, &[], (2, false), &file);
    child.kill().unwrap();
    let _ = child.wait();
    never_touched(&file, began, 2);
    let free = tollgate(url)
        .args(["run", &name, "--timeout", "10s", "--", "true"])
        .status()
        .unwrap();
    assert_eq!(free.code(), Some(0));
}

/// `kill -9` of tollgate while a process its command started runs on: that process shares
/// the hold's server connection, so the lock stays held (nothing else runs) until it is gone
/// (or, on Redis, the unextended lease lapses; on ZooKeeper, the session times out); with `-o`
/// the lock is free at once (on Redis and ZooKeeper, after the lease or session timeout).
fn killed_tollgate_leaves_its_lock_to_what_its_command_started(url: &str, label: &str) {
    for close in [false, true] {
        let name = unique(label);
        let mut command = tollgate(url);
        command.args(["run", &name]);
        if close {
            command.arg("-o");
        }
        let mut child = command
            .args(["--", "sh", "-c", "sleep 3 & echo started; wait"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let (line, _stdout) = first_line(&mut child);
        assert_eq!(line, "started\n");
        child.kill().unwrap();
        let _ = child.wait();
        let tried = tollgate(url)
            .args(["run", &name, "--timeout", "0", "--", "true"])
            .output()
            .unwrap();
        // A Redis lease outlives a killed tollgate until it expires, and a ZooKeeper session
        // until it times out, whatever holds its connection.
        let leased = url.starts_with("redis") || url.starts_with("zookeeper");
        if close && !leased {
            // The server sees the connection close with tollgate: free without waiting for
            // the `sleep`.
            let free = tollgate(url)
                .args(["run", &name, "--timeout", "2s", "--", "true"])
                .status()
                .unwrap();
            assert_eq!(free.code(), Some(0));
        } else {
            assert_eq!(
                tried.status.code(),
                Some(75),
                "{}",
                String::from_utf8_lossy(&tried.stderr)
            );
            let free = tollgate(url)
                .args(["run", &name, "--timeout", "20s", "--", "true"])
                .status()
                .unwrap();
            assert_eq!(free.code(), Some(0));
        }
    }
}

/// The command's environment names its lock, and carries the fencing token where `tollgate
/// hold` prints one.
fn command_sees_its_lock(url: &str, label: &str, has_token: bool) {
    let name = unique(label);
    let output = tollgate(url)
        .args(["run", &name, "--", "sh", "-c"])
        .arg("echo \"$TOLLGATE_LOCK_NAME\"; echo \"${TOLLGATE_FENCING_TOKEN-none}\"")
        .output()
        .unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], name);
    if has_token {
        assert!(lines[1].parse::<u64>().is_ok(), "{stdout}");
    } else {
        assert_eq!(lines[1], "none", "{stdout}");
    }
    let (holder, mut stdout) = start_holder(url, &name);
    if has_token {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let token = line
            .trim()
            .strip_prefix("fencing-token ")
            .unwrap_or_else(|| panic!("{line:?}"));
        assert!(token.parse::<u64>().unwrap() > lines[1].parse::<u64>().unwrap());
    }
    release_holder(holder);
}

/// A password that must appear in no output.
const SECRET: &str = "SeCrEt-pw-7310";

/// A failing run (`url`, `extra` arguments, `password` from a file when given) exits
/// `status` with one stderr line that names the lock and `server`, and shows the password
/// nowhere, even with -v.
fn fails_without_showing_the_password(
    url: &str,
    server: &str,
    password: Option<&str>,
    status: i32,
) {
    let name = unique("cli-secret");
    let dir = tempfile::tempdir().unwrap();
    let mut command = tollgate(url);
    command.args(["run", &name, "-v", "--timeout", "1s"]);
    if let Some(password) = password {
        let file = dir.path().join("password");
        std::fs::write(&file, format!("{password}\n")).unwrap();
        command.arg("--password-file").arg(&file);
    }
    let output = command.args(["--", "true"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(status), "{stderr}");
    assert!(
        !stdout.contains(SECRET) && !stderr.contains(SECRET),
        "{stderr}"
    );
    let failure = stderr.lines().last().unwrap_or_default();
    assert!(failure.contains(server), "{stderr}");
    if status != 2 {
        assert!(failure.contains(&name), "{stderr}");
    }
}

/// The command inherits neither `TOLLGATE_PASSWORD` nor the password in `TOLLGATE_BACKEND`
/// (given as `url_with_password`, which is `url_without` plus an empty password).
fn the_command_gets_no_password(url_with_password: &str, url_without: &str) {
    let name = unique("cli-secret-env");
    let script = "echo \"${TOLLGATE_PASSWORD-unset}\"; echo \"$TOLLGATE_BACKEND\"";
    for (url, password) in [(url_with_password, None), (url_without, Some(""))] {
        let mut command = tollgate(url);
        match password {
            Some(password) => command.env("TOLLGATE_PASSWORD", password),
            None => command.env_remove("TOLLGATE_PASSWORD"),
        };
        let output = command
            .args(["run", &name, "--", "sh", "-c", script])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stderr}");
        assert_eq!(stdout, format!("unset\n{url_without}\n"));
    }
}

/// flock(1)'s modes: shared holders coexist; `-x`, and no mode at all, exclude them and each
/// other (on a backend without shared locks, `-s` is a usage error naming the backend).
fn shared_and_exclusive_exclude(url: &str, label: &str, has_shared: bool) {
    let name = unique(label);
    let try_run = |mode: &[&str]| {
        tollgate(url)
            .args(["run", &name, "-n"])
            .args(mode)
            .args(["true"])
            .output()
            .unwrap()
    };
    if !has_shared {
        let refused = try_run(&["-s"]);
        assert_eq!(refused.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&refused.stderr).contains("does not support"));
        let (holder, _stdout) = start_holder(url, &name);
        assert_eq!(try_run(&["-x"]).status.code(), Some(75), "-x beside plain");
        release_holder(holder);
        return;
    }
    let (reader, _stdout) = start_holder_with(url, &name, &["-s"]);
    assert_eq!(try_run(&["-s"]).status.code(), Some(0), "-s beside -s");
    assert_eq!(try_run(&["-x"]).status.code(), Some(75), "-x beside -s");
    assert_eq!(try_run(&[]).status.code(), Some(75), "plain beside -s");
    release_holder(reader);
    let (writer, _stdout) = start_holder(url, &name);
    assert_eq!(try_run(&["-s"]).status.code(), Some(75), "-s beside plain");
    assert_eq!(try_run(&["-x"]).status.code(), Some(75), "-x beside plain");
    release_holder(writer);
}

/// The cases that need nothing of a backend but its URL: `label` prefixes the lock names,
/// `fencing_token` says whether the backend gives one, `shared` whether it has shared locks.
macro_rules! every_backend {
    ($url:expr, $label:literal, fencing_token = $token:expr, shared = $shared:expr) => {
        #[test]
        fn shared_and_exclusive_exclude() {
            super::shared_and_exclusive_exclude($url, concat!($label, "-modes"), $shared);
        }

        #[test]
        fn killed_tollgate_takes_the_command() {
            super::killed_tollgate_takes_the_command($url, concat!($label, "-kill"));
        }

        #[test]
        fn killed_tollgate_leaves_its_lock_to_what_its_command_started() {
            super::killed_tollgate_leaves_its_lock_to_what_its_command_started(
                $url,
                concat!($label, "-heir"),
            );
        }

        #[test]
        fn command_sees_its_lock() {
            super::command_sees_its_lock($url, concat!($label, "-env"), $token);
        }
    };
}
use every_backend;

#[cfg(feature = "postgres")]
mod postgres {
    const URL: &str = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable";

    #[test]
    fn run_hold_and_busy() {
        super::run_hold_and_busy(URL, "cli-pg", &[&["--max", "2"]]);
    }

    #[test]
    fn loss_stops_the_command() {
        let name = super::unique("cli-pg-loss");
        // The holder's sessions carry a name of their own, to end them by it.
        let application = format!("tollgate-{}", std::process::id());
        let url = format!("{URL}&application_name={application}");
        super::loss_stops_the_command(&url, &name, || {
            super::block_on(async {
                let (client, connection) = tokio_postgres::connect(URL, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                tokio::spawn(connection);
                let ended = client
                    .query(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                         WHERE application_name = $1",
                        &[&application],
                    )
                    .await
                    .unwrap();
                assert!(!ended.is_empty(), "no session of the holder found");
            });
        });
    }

    super::every_backend!(URL, "cli-pg", fencing_token = false, shared = true);

    #[test]
    fn passwords_appear_nowhere() {
        let secret = super::SECRET;
        let unreachable = format!("postgres://postgres:{secret}@127.0.0.1:1/test?sslmode=disable");
        super::fails_without_showing_the_password(&unreachable, "postgres://127.0.0.1:1", None, 69);
        let bad = format!("postgres://postgres:{secret}@127.0.0.1/test?pool_size=x");
        super::fails_without_showing_the_password(&bad, "postgres://127.0.0.1", None, 2);
        let apart = "postgres://postgres@127.0.0.1:1/test?sslmode=disable";
        super::fails_without_showing_the_password(
            apart,
            "postgres://127.0.0.1:1",
            Some(secret),
            69,
        );
    }

    #[test]
    fn unreachable_and_bad_urls() {
        super::unreachable_and_bad_urls(
            "postgres://postgres@127.0.0.1:1/test?sslmode=disable",
            "cannot connect",
            "postgres://u@h/db?pool_size=x",
        );
    }
}

#[cfg(feature = "mysql")]
mod mysql {
    const URL: &str = "mysql://root@127.0.0.1:3306/test";

    #[test]
    fn run_hold_and_busy() {
        super::run_hold_and_busy(URL, "cli-mysql", &[&["--max", "2"]]);
    }

    #[test]
    fn loss_stops_the_command() {
        use mysql_async::prelude::Queryable;

        let name = super::unique("cli-mysql-loss");
        let lock_name = tollgate::backend::mysql::lock_name(&name);
        super::loss_stops_the_command(URL, &name, || {
            super::block_on(async {
                let mut conn = mysql_async::Conn::from_url(URL).await.unwrap();
                let holder: Option<Option<u64>> = conn
                    .exec_first("SELECT IS_USED_LOCK(?)", (lock_name.clone(),))
                    .await
                    .unwrap();
                let holder = holder.flatten().expect("the lock is held");
                conn.query_drop(format!("KILL {holder}")).await.unwrap();
                conn.disconnect().await.unwrap();
            });
        });
    }

    super::every_backend!(URL, "cli-mysql", fencing_token = false, shared = false);

    #[test]
    fn passwords_appear_nowhere() {
        let secret = super::SECRET;
        let wrong = format!("mysql://root:{secret}@127.0.0.1:3306/test");
        super::fails_without_showing_the_password(&wrong, "mysql://127.0.0.1:3306", None, 69);
        super::fails_without_showing_the_password(URL, "mysql://127.0.0.1:3306", Some(secret), 69);
        // The root user here has an empty password: TOLLGATE_PASSWORD= is right.
        super::the_command_gets_no_password("mysql://root:@127.0.0.1:3306/test", URL);
    }

    #[test]
    fn a_loss_the_command_outran_is_found_at_release_and_exits_79() {
        // No keepalive: only the release can find the connection killed under the command.
        let url = format!("{URL}?keepalive=never");
        let name = super::unique("cli-mysql-outran");
        let kill = format!(
            "id=$(mariadb -h 127.0.0.1 -uroot -N -e \"SELECT IS_USED_LOCK('{name}')\") && \
             mariadb -h 127.0.0.1 -uroot -e \"KILL CONNECTION $id\""
        );
        let output = super::tollgate(&url)
            .args(["run", &name, "--", "sh", "-c", &kill])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(79), "{stderr}");
        assert!(stderr.contains("found when releasing"), "{stderr}");
        assert!(stderr.contains(&name), "{stderr}");
    }

    #[test]
    fn unreachable_and_bad_urls() {
        super::unreachable_and_bad_urls(
            "mysql://root@127.0.0.1:1/test",
            "mysql",
            "mysql://root@h/test?pool_size=x",
        );
    }
}

#[cfg(feature = "redis")]
mod redis {
    const URL: &str = "redis://127.0.0.1:6379/?expiry=5s";

    #[test]
    fn run_hold_and_busy() {
        super::run_hold_and_busy(URL, "cli-redis", &[&["--max", "2"]]);
    }

    #[test]
    fn loss_stops_the_command() {
        let name = super::unique("cli-redis-loss");
        // A 3 s lease is extended every second: the deleted key is noticed within about 1 s.
        let url = "redis://127.0.0.1:6379/?expiry=3s";
        super::loss_stops_the_command(url, &name, || {
            let client = redis::Client::open("redis://127.0.0.1:6379/").unwrap();
            super::block_on(async {
                let mut conn = client.get_multiplexed_async_connection().await.unwrap();
                // Without -s, the exclusive side of the name's reader-writer lock.
                let deleted: u32 = redis::cmd("DEL")
                    .arg(format!("{{rw:{name}}}:writer"))
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                assert_eq!(deleted, 1, "the lock's key was not there");
            });
        });
    }

    super::every_backend!(URL, "cli-redis", fencing_token = true, shared = true);

    #[test]
    fn passwords_appear_nowhere() {
        let secret = super::SECRET;
        // The server has no password: AUTH fails.
        let wrong = format!("redis://:{secret}@127.0.0.1:6379/");
        super::fails_without_showing_the_password(&wrong, "redis://127.0.0.1:6379", None, 69);
        let unreachable = format!("redis://:{secret}@127.0.0.1:1/");
        super::fails_without_showing_the_password(&unreachable, "redis://127.0.0.1:1", None, 69);
    }

    #[test]
    fn unreachable_and_bad_urls() {
        super::unreachable_and_bad_urls("redis://127.0.0.1:1", "redis", "redis://h?expiry=never");
    }
}

#[cfg(feature = "zookeeper")]
mod zookeeper {
    const URL: &str = "zookeeper://127.0.0.1:2181/tollgate-cli-test?session_timeout=2s";

    #[test]
    fn run_hold_and_busy() {
        super::run_hold_and_busy(URL, "cli-zk", &[&["--max", "2"]]);
    }

    #[test]
    fn loss_stops_the_command() {
        let name = super::unique("cli-zk-loss");
        super::loss_stops_the_command(URL, &name, || {
            super::block_on(async {
                let client = zookeeper_client::Client::connect("127.0.0.1:2181")
                    .await
                    .unwrap();
                // Without -s, the exclusive side of the name's reader-writer lock: its one
                // `write-` node, once the command runs.
                let path = format!("/tollgate-cli-test/{name}");
                let nodes = client.list_children(&path).await.unwrap();
                assert_eq!(nodes.len(), 1, "{nodes:?}");
                assert!(nodes[0].starts_with("write-"), "{nodes:?}");
                client
                    .delete(&format!("{path}/{}", nodes[0]), None)
                    .await
                    .unwrap();
            });
        });
    }

    super::every_backend!(URL, "cli-zk", fencing_token = true, shared = true);

    #[test]
    fn unreachable_and_bad_urls() {
        super::unreachable_and_bad_urls(
            "zookeeper://127.0.0.1:1/?connect_timeout=200ms",
            "zookeeper",
            "zookeeper://h?session_timeout=never",
        );
    }
}

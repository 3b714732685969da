//! `tollgate` against the server backends on this machine's loopback: the same cases for
//! each (run, hold, busy, other primitives of the same name, unreachable server, bad URL).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

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

    let mut holder = tollgate(url)
        .args(["hold", &name])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), format!("held {name}"));

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

    holder
        .stdin
        .take()
        .unwrap()
        .write_all(b"release\n")
        .unwrap();
    assert!(holder.wait().unwrap().success());
    let free = tollgate(url)
        .args(["run", &name, "--timeout", "5s", "--", "true"])
        .status()
        .unwrap();
    assert_eq!(free.code(), Some(0));
}

/// An unreachable server exits 69 (with `says` on stderr); a malformed URL exits 2.
fn unreachable_and_bad_urls(unreachable: &str, says: &str, bad: &str) {
    let output = tollgate(unreachable)
        .args(["run", "x", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(69));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(says), "{stderr}");
    let output = tollgate(bad)
        .args(["run", "x", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{bad}");
}

#[cfg(feature = "postgres")]
mod postgres {
    const URL: &str = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable";

    #[test]
    fn run_hold_and_busy() {
        // A reader-writer lock shares the lock's key there (as in DistributedLock), so only
        // the semaphore is another primitive.
        super::run_hold_and_busy(URL, "cli-pg", &[&["--max", "2"]]);
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
        super::run_hold_and_busy(URL, "cli-redis", &[&["--max", "2"], &["--read"]]);
    }

    #[test]
    fn unreachable_and_bad_urls() {
        super::unreachable_and_bad_urls("redis://127.0.0.1:1", "redis", "redis://h?expiry=never");
    }
}

//! `tollgate` against the PostgreSQL server at 127.0.0.1:5432.
#![cfg(feature = "postgres")]

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

const URL: &str = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable";

fn tollgate() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    command.env("TOLLGATE_BACKEND", URL);
    command
}

fn unique(label: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos())
        .unwrap_or_default();
    format!("{label}-{}-{nanos}", std::process::id())
}

#[test]
fn run_hold_and_busy_on_postgres() {
    let name = unique("cli-pg");
    let status = tollgate()
        .args(["run", &name, "--", "sh", "-c", "exit 3"])
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(3));

    let mut holder = tollgate()
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

    let busy = tollgate()
        .args(["run", &name, "--timeout", "0", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(busy.status.code(), Some(75));
    let stderr = String::from_utf8_lossy(&busy.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&name), "{stderr}");

    let semaphore = tollgate()
        .args(["run", &name, "--max", "2", "--timeout", "0", "--", "true"])
        .status()
        .unwrap();
    assert_eq!(
        semaphore.code(),
        Some(0),
        "a semaphore is not the lock of the same name"
    );

    holder
        .stdin
        .take()
        .unwrap()
        .write_all(b"release\n")
        .unwrap();
    assert!(holder.wait().unwrap().success());
    let free = tollgate()
        .args(["run", &name, "--timeout", "5s", "--", "true"])
        .status()
        .unwrap();
    assert_eq!(free.code(), Some(0));
}

#[test]
fn unreachable_postgres_exits_69() {
    let output = tollgate()
        .args([
            "run",
            "x",
            "--backend",
            "postgres://postgres@127.0.0.1:1/test?sslmode=disable",
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(69));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot connect"));
}

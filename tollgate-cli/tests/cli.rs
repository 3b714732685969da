//! The `tollgate` command, end to end: every test runs the real binary against its own lock
//! directory (`--backend file:///tmp/…`), so tests never collide.
//!
//! Nothing waits on a sleep: a holder is known to hold once it printed `held NAME`, a command
//! is known to run once it printed a line, a waiter is known to wait once it said so on its
//! terminal. Time bounds are generous and only catch hangs.

// Every test uses the local backend's `file://` URLs.
#![cfg(feature = "local")]

use std::ffi::CStr;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::FromRawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod common;

use common::wait_within;

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");
/// How long any child may take before the test calls it hung.
const HANG: Duration = Duration::from_secs(60);

/// A lock directory of one test.
struct Backend {
    dir: tempfile::TempDir,
    url: String,
}

fn backend() -> Backend {
    let dir = tempfile::tempdir().expect("temporary directory");
    let url = format!("file://{}", dir.path().display());
    Backend { dir, url }
}

impl Backend {
    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `tollgate run NAME --backend URL ARGS…` (ARGS include the `--` and the command).
    fn run(&self, name: &str, args: &[&str]) -> Output {
        let child = tollgate()
            .args(["run", name, "--backend", &self.url])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tollgate run");
        output_within(child, HANG)
    }

    /// Starts `tollgate hold NAME --backend URL ARGS…` and returns once it holds.
    fn hold(&self, name: &str, args: &[&str]) -> Holder {
        let mut child = tollgate()
            .args(["hold", name, "--backend", &self.url, "--timeout", "30s"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tollgate hold");
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read hold's stdout");
        if line != format!("held {name}\n") {
            let mut holder = Holder {
                child,
                stdin,
                _stdout: stdout,
            };
            let status = holder.wait();
            let mut stderr = String::new();
            if let Some(mut pipe) = holder.child.stderr.take() {
                let _ = pipe.read_to_string(&mut stderr);
            }
            panic!("hold {name} {args:?} printed {line:?}, then ended with {status}: {stderr}");
        }
        Holder {
            child,
            stdin,
            _stdout: stdout,
        }
    }
}

fn tollgate() -> Command {
    use std::os::unix::process::CommandExt;

    let mut command = Command::new(BIN);
    command.env_remove("TOLLGATE_BACKEND");
    // Tollgate keeps signals ignored that it was started with ignored (as under `nohup`, or
    // SIGINT in a background job); the tests may be run so, and need them live.
    // SAFETY: signal(2) is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                libc::signal(signal, libc::SIG_DFL);
            }
            Ok(())
        });
    }
    command
}

/// Collects stdout and stderr of `child` (on threads, so that full pipes cannot block it)
/// and waits for it within `limit`.
fn output_within(mut child: Child, limit: Duration) -> Output {
    fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    }
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let status = wait_within(&mut child, limit);
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// A running `tollgate hold` that holds its lock. Killed if the test ends without
/// releasing it.
struct Holder {
    child: Child,
    stdin: Option<ChildStdin>,
    _stdout: BufReader<ChildStdout>,
}

impl Holder {
    fn say(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("write to hold's stdin");
        stdin.flush().expect("flush hold's stdin");
    }

    fn wait(&mut self) -> ExitStatus {
        wait_within(&mut self.child, HANG)
    }

    /// `release` on stdin; returns once the process has exited.
    fn release(mut self) {
        self.say("release");
        let status = self.wait();
        assert_eq!(status.code(), Some(0), "hold after release: {status}");
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stderr_lines(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn assert_status(output: &Output, expected: i32) {
    assert_eq!(
        output.status.code(),
        Some(expected),
        "status {}; stdout {:?}; stderr {:?}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}

/// Asserts the one-line "not acquired" report: exit 75, one stderr line naming the lock.
fn assert_not_acquired(output: &Output, name: &str) -> String {
    assert_status(output, 75);
    let lines = stderr_lines(output);
    assert_eq!(lines.len(), 1, "exactly one stderr line: {lines:?}");
    assert!(
        lines[0].contains(&format!("\"{name}\"")),
        "names the lock: {lines:?}"
    );
    lines[0].clone()
}

fn marker(backend: &Backend) -> PathBuf {
    backend.path().join("command-ran")
}

#[test]
fn runs_the_command_and_passes_its_exit_status() {
    let backend = backend();
    let output = backend.run("job", &["--", "echo", "hello", "world"]);
    assert_status(&output, 0);
    assert_eq!(output.stdout, b"hello world\n");
    assert!(output.stderr.is_empty(), "{:?}", stderr_lines(&output));

    assert_status(&backend.run("job", &["--", "sh", "-c", "exit 3"]), 3);
    assert_status(&backend.run("job", &["--", "false"]), 1);
}

#[test]
fn a_command_killed_by_a_signal_maps_to_128_plus_n() {
    let backend = backend();
    assert_status(
        &backend.run("job", &["--", "sh", "-c", "kill -9 $$"]),
        128 + 9,
    );
    assert_status(
        &backend.run("job", &["--", "sh", "-c", "kill -TERM $$"]),
        128 + 15,
    );
    // SIGINT too, when tollgate did not get one itself.
    assert_status(
        &backend.run("job", &["--", "sh", "-c", "kill -INT $$"]),
        128 + 2,
    );
}

#[test]
fn the_command_runs_while_the_lock_is_held_and_it_is_released_after() {
    let backend = backend();
    // The command itself tries the lock: busy.
    let output = backend.run(
        "job",
        &[
            "--",
            BIN,
            "run",
            "job",
            "--backend",
            &backend.url,
            "--timeout",
            "0",
            "--",
            "true",
        ],
    );
    assert_status(&output, 75);
    // And it is free again afterwards.
    assert_status(&backend.run("job", &["--timeout", "0", "--", "true"]), 0);
}

#[test]
fn a_busy_lock_with_timeout_0_exits_75_with_one_line_naming_it() {
    let backend = backend();
    let holder = backend.hold("deploy nightly", &[]);
    let ran = marker(&backend);
    let output = backend.run(
        "deploy nightly",
        &[
            "--timeout",
            "0",
            "--",
            "touch",
            ran.to_str().expect("UTF-8 path"),
        ],
    );
    let line = assert_not_acquired(&output, "deploy nightly");
    assert!(line.starts_with("tollgate: "), "{line}");
    assert!(!ran.exists(), "the command must not run");
    assert!(output.stdout.is_empty());

    holder.release();
    assert_status(
        &backend.run("deploy nightly", &["--timeout", "0", "--", "true"]),
        0,
    );
}

#[test]
fn timeout_200ms_gives_up_in_time_with_75() {
    let backend = backend();
    let _holder = backend.hold("slow", &[]);
    let started = Instant::now();
    let output = backend.run("slow", &["--timeout", "200ms", "--", "true"]);
    let elapsed = started.elapsed();
    let line = assert_not_acquired(&output, "slow");
    assert!(line.contains("200ms"), "says how long it waited: {line}");
    assert!(elapsed >= Duration::from_millis(200), "waited {elapsed:?}");
    assert!(elapsed < Duration::from_secs(2), "waited {elapsed:?}");
}

#[test]
fn bare_seconds_are_a_timeout_too() {
    let backend = backend();
    let _holder = backend.hold("seconds", &[]);
    let started = Instant::now();
    let output = backend.run("seconds", &["--timeout", "0.3", "--", "true"]);
    let elapsed = started.elapsed();
    assert_not_acquired(&output, "seconds");
    assert!(elapsed >= Duration::from_millis(300), "waited {elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "waited {elapsed:?}");
}

#[test]
fn no_waiting_notice_when_stderr_is_not_a_terminal() {
    let backend = backend();
    let _holder = backend.hold("quiet", &[]);
    // Long enough that a terminal would have been told (after about a second).
    let output = backend.run("quiet", &["--timeout", "2500ms", "--", "true"]);
    let line = assert_not_acquired(&output, "quiet");
    assert!(line.contains("timed out"), "{line}");
}

#[test]
fn a_waiter_on_a_terminal_says_what_it_waits_for_and_a_signal_ends_its_wait() {
    let backend = backend();
    let holder = backend.hold("shared printer", &[]);

    // A waiter interrupted by SIGINT ends as SIGINT would have ended it.
    let (mut waiter, mut notices) = spawn_on_terminal(&backend, "shared printer");
    let notice = notices.wait_for("…");
    let expected = format!("waiting for lock \"shared printer\" on {}…", backend.url);
    assert!(notice.contains(&expected), "{notice:?}");
    send_signal(&waiter, libc::SIGINT);
    let status = wait_within(&mut waiter, HANG);
    assert_eq!(status.signal(), Some(libc::SIGINT), "{status}");

    // A waiter gets the lock once the holder lets go.
    let (mut waiter, mut notices) = spawn_on_terminal(&backend, "shared printer");
    notices.wait_for("…");
    holder.release();
    let status = wait_within(&mut waiter, HANG);
    assert_eq!(status.code(), Some(0), "{status}");
}

#[test]
fn a_semaphore_of_2_lets_two_holders_in_and_turns_the_third_away() {
    let backend = backend();
    let first = backend.hold("pool", &["--max", "2", "--timeout", "0"]);
    let _second = backend.hold("pool", &["--max", "2", "--timeout", "0"]);
    let output = backend.run("pool", &["--max", "2", "--timeout", "0", "--", "true"]);
    let line = assert_not_acquired(&output, "pool");
    assert!(line.contains("semaphore"), "{line}");

    first.release();
    assert_status(
        &backend.run("pool", &["--max", "2", "--timeout", "0", "--", "true"]),
        0,
    );
}

#[test]
fn a_semaphore_in_use_with_another_max_is_refused_with_2() {
    let backend = backend();
    let holder = backend.hold("pool", &["--max", "1"]);
    let output = backend.run("pool", &["--max", "2", "--", "true"]);
    assert_status(&output, 2);
    let lines = stderr_lines(&output);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("max count 1, not 2"), "{lines:?}");
    holder.release();
    assert_status(&backend.run("pool", &["--max", "2", "--", "true"]), 0);
}

#[test]
fn readers_coexist_and_a_writer_is_turned_away() {
    let backend = backend();
    let reader = backend.hold("catalog", &["--read"]);
    assert_status(
        &backend.run("catalog", &["--read", "--timeout", "0", "--", "true"]),
        0,
    );
    let output = backend.run("catalog", &["--write", "--timeout", "0", "--", "true"]);
    let line = assert_not_acquired(&output, "catalog");
    assert!(line.contains("exclusive lock"), "{line}");

    reader.release();
    assert_status(
        &backend.run("catalog", &["--write", "--timeout", "0", "--", "true"]),
        0,
    );
}

#[test]
fn usage_errors_exit_2_without_running_the_command() {
    let backend = backend();
    let ran = marker(&backend);
    let touch = ran.to_str().expect("UTF-8 path");
    let cases: &[(&[&str], &str)] = &[
        (&["--backend", "not a url"], "not a backend URL"),
        (&["--backend", "zz://x"], "zz"),
        (&["--backend", "local:/some/path"], "takes no path"),
        (&["--backend", "file:///tmp?bogus=1"], "bogus"),
        (&["--timeout", "5 parsecs"], "--timeout"),
        (&["--timeout", "soon"], "--timeout"),
        (&["--timeout=-1s"], "--timeout"),
        (&["--max", "0"], "at least 1"),
        (&["--max", "many"], "--max"),
        (&["--read", "--write"], "cannot be used with"),
        (&["--max", "2", "--read"], "cannot be used with"),
        (&["--bogus"], "--bogus"),
    ];
    for (options, expected) in cases {
        let mut args = vec!["run", "job"];
        if !options.contains(&"--backend") {
            args.extend(["--backend", &backend.url]);
        }
        args.extend(*options);
        args.extend(["--", "touch", touch]);
        let output = tollgate().args(&args).output().expect("run tollgate");
        assert_status(&output, 2);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{options:?}: {stderr}");
        assert!(!ran.exists(), "{options:?} ran the command");
    }

    // No command at all.
    let output = tollgate()
        .args(["run", "job", "--backend", &backend.url])
        .output()
        .expect("run tollgate");
    assert_status(&output, 2);
}

#[test]
fn a_backend_that_fails_exits_69() {
    let backend = backend();
    let file = backend.path().join("not-a-directory");
    std::fs::write(&file, b"").expect("create file");
    for directory in [file.clone(), file.join("below")] {
        let url = format!("file://{}", directory.display());
        let output = tollgate()
            .args(["run", "job", "--backend", &url, "--", "true"])
            .output()
            .expect("run tollgate");
        assert_status(&output, 69);
        let lines = stderr_lines(&output);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("not-a-directory"), "{lines:?}");
    }
}

#[test]
fn a_command_that_cannot_be_run_exits_127_or_126() {
    let backend = backend();
    let output = backend.run("job", &["--", "/nonexistent/tollgate-test-command"]);
    assert_status(&output, 127);
    assert!(stderr_lines(&output)[0].contains("not found"));

    let script = backend.path().join("not-executable.sh");
    std::fs::write(&script, b"#!/bin/sh\nexit 0\n").expect("write script");
    let output = backend.run("job", &["--", script.to_str().expect("UTF-8 path")]);
    assert_status(&output, 126);

    // The lock was released after the failed start.
    assert_status(&backend.run("job", &["--timeout", "0", "--", "true"]), 0);
}

#[test]
fn the_command_shares_the_lock_file_unless_told_not_to() {
    let backend = backend();
    for kind in [&[][..], &["--max", "2"], &["--read"], &["--write"]] {
        for close in [false, true] {
            let mut args = kind.to_vec();
            if close {
                args.push("-o");
            }
            args.extend(["--", "ls", "-l", "/proc/self/fd"]);
            let output = backend.run("inherit", &args);
            assert_status(&output, 0);
            let listing = String::from_utf8_lossy(&output.stdout);
            assert!(listing.contains(" 1 -> "), "{kind:?}: {listing}");
            let directory = backend.path().to_string_lossy();
            let shared = listing
                .lines()
                .filter(|line| line.contains(&*directory) && line.ends_with(".lock"))
                .count();
            assert_eq!(
                shared,
                usize::from(!close),
                "{kind:?} -o {close}: {listing}"
            );
        }
    }
}

/// A killed tollgate's command dies with it, but what the command started lives on: it keeps
/// the lock (it shares the lock file), so nothing else runs until it is gone; with -o the
/// lock goes at once.
/// Starts `tollgate ARGS…` whose command prints `started` first, waits for that line, and
/// SIGKILLs tollgate (not its command).
fn kill_tollgate_once_started(args: &[&str]) {
    let mut child = tollgate()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn tollgate run");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped stdout"))
        .read_line(&mut line)
        .expect("read the command's stdout");
    assert_eq!(line, "started\n");
    child.kill().expect("SIGKILL tollgate");
    let _ = child.wait();
}

#[test]
fn a_killed_tollgate_leaves_its_lock_to_what_its_command_started() {
    let backend = backend();
    for close in [false, true] {
        let name = if close { "heir-o" } else { "heir" };
        let mut args = vec!["run", name, "--backend", &backend.url];
        if close {
            args.push("-o");
        }
        args.extend(["--", "sh", "-c", "sleep 3 & echo started; wait"]);
        kill_tollgate_once_started(&args);
        let output = backend.run(name, &["--timeout", "0", "--", "true"]);
        if close {
            assert_status(&output, 0);
        } else {
            assert_not_acquired(&output, name);
            // Free once the `sleep` is gone.
            assert_status(&backend.run(name, &["--timeout", "20s", "--", "true"]), 0);
        }
    }
}

#[test]
fn the_backend_comes_from_tollgate_backend_unless_given() {
    let backend = backend();
    let output = tollgate()
        .env("TOLLGATE_BACKEND", &backend.url)
        .args(["run", "from-env", "--", "true"])
        .output()
        .expect("run tollgate");
    assert_status(&output, 0);
    assert!(
        std::fs::read_dir(backend.path())
            .expect("list")
            .next()
            .is_some(),
        "the lock file is in TOLLGATE_BACKEND's directory"
    );

    // --backend wins over the environment.
    let output = tollgate()
        .env("TOLLGATE_BACKEND", "zz://nowhere")
        .args(["run", "job", "--backend", &backend.url, "--", "true"])
        .output()
        .expect("run tollgate");
    assert_status(&output, 0);
}

#[test]
fn hold_exit_without_release_frees_the_lock() {
    let backend = backend();
    let mut holder = backend.hold("crash", &[]);
    assert_status(&backend.run("crash", &["--timeout", "0", "--", "true"]), 75);
    holder.say("exit");
    let status = holder.wait();
    assert_eq!(status.code(), Some(0), "{status}");
    assert_status(
        &backend.run("crash", &["--timeout", "10s", "--", "true"]),
        0,
    );
}

#[test]
fn a_sigkilled_holder_frees_the_lock() {
    let backend = backend();
    let mut holder = backend.hold("killed", &[]);
    assert_status(
        &backend.run("killed", &["--timeout", "0", "--", "true"]),
        75,
    );
    holder.child.kill().expect("SIGKILL the holder");
    let status = holder.wait();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
    assert_status(
        &backend.run("killed", &["--timeout", "10s", "--", "true"]),
        0,
    );
}

#[test]
fn flock_forms_of_the_command() {
    let backend = backend();
    // The command may follow the name without `--`, its own options included.
    let output = backend.run("forms", &["echo", "-n", "no dashes"]);
    assert_status(&output, 0);
    assert_eq!(output.stdout, b"no dashes");
    // -c STRING runs by `sh -c`.
    let output = backend.run("forms", &["-c", "echo \"$0\" ok; exit 4"]);
    assert_status(&output, 4);
    assert_eq!(output.stdout, b"sh ok\n");
    // A name that starts with `-` goes in --name; then the command starts at once.
    let output = tollgate()
        .args([
            "run",
            "--backend",
            &backend.url,
            "--name",
            "-dashed",
            "echo",
            "named",
        ])
        .output()
        .expect("run tollgate");
    assert_status(&output, 0);
    assert_eq!(output.stdout, b"named\n");
    let holder = {
        let mut child = tollgate()
            .args(["hold", "--backend", &backend.url, "--name", "-dashed"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn tollgate hold");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read hold's stdout");
        assert_eq!(line, "held -dashed\n");
        (child, stdout)
    };
    let busy = tollgate()
        .args([
            "run",
            "-n",
            "--backend",
            &backend.url,
            "--name",
            "-dashed",
            "true",
        ])
        .output()
        .expect("run tollgate");
    assert_not_acquired(&busy, "-dashed");
    drop(holder);
    // Both a command and -c is a usage error.
    assert_status(&backend.run("forms", &["-c", "true", "true"]), 2);
}

#[test]
fn flock_waits_and_conflict_exit_code() {
    let backend = backend();
    let holder = backend.hold("flock-wait", &[]);
    // -n: one try; -w: fractional seconds; -E: the status of a busy lock or a wait run out.
    assert_not_acquired(&backend.run("flock-wait", &["-n", "true"]), "flock-wait");
    let began = Instant::now();
    assert_not_acquired(
        &backend.run("flock-wait", &["-w", "0.3", "true"]),
        "flock-wait",
    );
    assert!(began.elapsed() >= Duration::from_millis(300));
    let conflict = backend.run("flock-wait", &["-n", "-E", "9", "true"]);
    assert_status(&conflict, 9);
    assert_eq!(stderr_lines(&conflict).len(), 1);
    // -q: the status says it all.
    let quiet = backend.run("flock-wait", &["-n", "-q", "true"]);
    assert_status(&quiet, 75);
    assert!(quiet.stderr.is_empty(), "{:?}", stderr_lines(&quiet));
    assert_status(&backend.run("flock-wait", &["-n", "-w", "1", "true"]), 2);
    holder.release();
    // -v: a line when it starts, a line when it holds, with the time it took.
    let verbose = backend.run("flock-wait", &["-v", "true"]);
    assert_status(&verbose, 0);
    let lines = stderr_lines(&verbose);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].contains("acquiring lock \"flock-wait\""),
        "{lines:?}"
    );
    assert!(
        lines[1].contains("holding lock \"flock-wait\" after"),
        "{lines:?}"
    );
}

#[test]
fn flock_modes_shared_and_exclusive_exclude() {
    let backend = backend();
    let reader = backend.hold("modes", &["-s"]);
    assert_status(&backend.run("modes", &["-n", "-s", "true"]), 0);
    assert_not_acquired(&backend.run("modes", &["-n", "-x", "true"]), "modes");
    assert_not_acquired(&backend.run("modes", &["-n", "true"]), "modes");
    reader.release();
    let writer = backend.hold("modes", &[]);
    assert_not_acquired(&backend.run("modes", &["-n", "-s", "true"]), "modes");
    assert_not_acquired(&backend.run("modes", &["-n", "-e", "true"]), "modes");
    // A semaphore of the same name is another primitive.
    assert_status(&backend.run("modes", &["-n", "--max", "2", "true"]), 0);
    writer.release();
}

#[test]
fn a_killed_tollgate_takes_its_command_along() {
    let backend = backend();
    let touched = backend.path().join("touched");
    let began = Instant::now();
    let script = format!("echo started; sleep 2; touch '{}'", touched.display());
    kill_tollgate_once_started(&[
        "run",
        "orphan",
        "--backend",
        &backend.url,
        "--",
        "sh",
        "-c",
        &script,
    ]);
    // The lock is free at once, and the command is gone: its file never appears.
    assert_status(
        &backend.run("orphan", &["--timeout", "10s", "--", "true"]),
        0,
    );
    std::thread::sleep(Duration::from_secs(3).saturating_sub(began.elapsed()));
    assert!(
        !touched.exists(),
        "the command ran on after tollgate was killed"
    );
}

#[test]
fn the_command_sees_its_lock_name_and_fencing_token() {
    let backend = backend();
    let script = "echo \"$TOLLGATE_LOCK_NAME\"; echo \"${TOLLGATE_FENCING_TOKEN-none}\"";
    let first = backend.run("env-name", &["--", "sh", "-c", script]);
    assert_status(&first, 0);
    let second = backend.run("env-name", &["--", "sh", "-c", script]);
    let token = |output: &Output| -> u64 {
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines[0], "env-name", "{stdout}");
        lines[1]
            .parse()
            .unwrap_or_else(|_| panic!("no fencing token: {stdout}"))
    };
    assert!(
        token(&second) > token(&first),
        "tokens grow with every acquisition"
    );
}

#[test]
fn hold_releases_on_release_and_on_end_of_input() {
    let backend = backend();
    let holder = backend.hold("polite", &[]);
    holder.release();
    assert_status(&backend.run("polite", &["--timeout", "0", "--", "true"]), 0);

    let mut holder = backend.hold("polite", &[]);
    holder.say("something else");
    drop(holder.stdin.take());
    let status = holder.wait();
    assert_eq!(status.code(), Some(0), "{status}");
    assert_status(&backend.run("polite", &["--timeout", "0", "--", "true"]), 0);
}

#[test]
fn signals_are_forwarded_to_the_command() {
    let backend = backend();
    for (signal, code) in [(libc::SIGTERM, 42), (libc::SIGINT, 43), (libc::SIGHUP, 44)] {
        let name = format!("forward-{signal}");
        let script = format!(
            "trap 'exit {code}' {}; echo ready; i=0; while [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done",
            match signal {
                libc::SIGTERM => "TERM",
                libc::SIGINT => "INT",
                _ => "HUP",
            }
        );
        let mut child = tollgate()
            .args(["run", &name, "--backend", &backend.url, "--timeout", "10s"])
            .args(["--", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn tollgate run");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .expect("read the command's output");
        assert_eq!(line, "ready\n");
        send_signal(&child, signal);
        let status = wait_within(&mut child, HANG);
        assert_eq!(status.code(), Some(code), "signal {signal}: {status}");
        assert_status(&backend.run(&name, &["--timeout", "0", "--", "true"]), 0);
    }
}

#[test]
fn completions_and_manual_pages() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let output = tollgate()
            .args(["completions", shell])
            .output()
            .expect("run tollgate");
        assert_status(&output, 0);
        let script = String::from_utf8_lossy(&output.stdout);
        assert!(
            script.contains("on-lost") && script.contains("kill-after"),
            "{shell}"
        );
    }
    let page = |args: &[&str]| {
        let output = tollgate()
            .arg("man")
            .args(args)
            .output()
            .expect("run tollgate");
        assert_status(&output, 0);
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    assert!(page(&[]).contains(".TH tollgate 1"));
    let run = page(&["run"]);
    assert!(
        run.contains(".TH tollgate-run 1") && run.contains("on\\-lost"),
        "{run}"
    );
    assert!(page(&["hold"]).contains(".TH tollgate-hold 1"));
    let unknown = tollgate()
        .args(["man", "bogus"])
        .output()
        .expect("run tollgate");
    assert_status(&unknown, 2);
}

#[test]
fn help_and_version() {
    for args in [&["--help"][..], &["run", "--help"], &["hold", "--help"]] {
        let output = tollgate().args(args).output().expect("run tollgate");
        assert_status(&output, 0);
        assert!(String::from_utf8_lossy(&output.stdout).contains("Usage"));
    }
    let output = tollgate().arg("--version").output().expect("run tollgate");
    assert_status(&output, 0);
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("tollgate "));
}

fn send_signal(child: &Child, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).expect("pid");
    // SAFETY: kill has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
}

/// What processes wrote to a terminal, as it comes.
struct TerminalOutput {
    chunks: mpsc::Receiver<String>,
    seen: String,
}

impl TerminalOutput {
    /// Returns the output so far once it contains `text`.
    fn wait_for(&mut self, text: &str) -> &str {
        let deadline = Instant::now() + HANG;
        while !self.seen.contains(text) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.chunks.recv_timeout(left) {
                Ok(chunk) => self.seen.push_str(&chunk),
                Err(error) => panic!("no {text:?} on the terminal ({error}): {:?}", self.seen),
            }
        }
        &self.seen
    }

    /// All the output, once every process has closed the terminal.
    fn finish(mut self) -> String {
        let deadline = Instant::now() + HANG;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.chunks.recv_timeout(left) {
                Ok(chunk) => self.seen.push_str(&chunk),
                Err(mpsc::RecvTimeoutError::Disconnected) => return self.seen,
                Err(error) => panic!("terminal still open ({error}): {:?}", self.seen),
            }
        }
    }
}

/// Reads the master side of a pseudo-terminal on a thread.
fn read_terminal(mut master: File) -> TerminalOutput {
    let (sender, chunks) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buffer = [0; 1024];
        // Ends with EIO once every copy of the slave side is closed.
        while let Ok(read @ 1..) = master.read(&mut buffer) {
            let chunk = String::from_utf8_lossy(&buffer[..read]).into_owned();
            if sender.send(chunk).is_err() {
                break;
            }
        }
    });
    TerminalOutput {
        chunks,
        seen: String::new(),
    }
}

/// Starts `tollgate run NAME -- true` with its stderr on a new pseudo-terminal.
fn spawn_on_terminal(backend: &Backend, name: &str) -> (Child, TerminalOutput) {
    let (master, slave) = open_pty();
    let child = tollgate()
        .args(["run", name, "--backend", &backend.url, "--timeout", "60s"])
        .args(["--", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(slave)
        .spawn()
        .expect("spawn tollgate run");
    (child, read_terminal(master))
}

/// A new pseudo-terminal: (master, slave), both close-on-exec and neither our controlling
/// terminal.
fn open_pty() -> (File, File) {
    // SAFETY: plain libc calls on descriptors we own, each result checked.
    unsafe {
        let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        assert!(
            master >= 0,
            "posix_openpt: {}",
            std::io::Error::last_os_error()
        );
        let master_file = File::from_raw_fd(master);
        assert_eq!(libc::grantpt(master), 0, "grantpt");
        assert_eq!(libc::unlockpt(master), 0, "unlockpt");
        let mut name = [0 as libc::c_char; 128];
        assert_eq!(libc::ptsname_r(master, name.as_mut_ptr(), name.len()), 0);
        let slave = libc::open(
            CStr::from_ptr(name.as_ptr()).as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        assert!(
            slave >= 0,
            "open slave: {}",
            std::io::Error::last_os_error()
        );
        (master_file, File::from_raw_fd(slave))
    }
}

/// Set in the environment of this test binary when it runs as [`signal_reporter`].
const REPORTER: &str = "TOLLGATE_TEST_SIGNAL_REPORTER";

static REPORT_PIPE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

extern "C" fn report_signal(
    signal: libc::c_int,
    info: *mut libc::siginfo_t,
    _context: *mut libc::c_void,
) {
    // SAFETY: the kernel passes a valid siginfo; write(2) is async-signal-safe.
    unsafe {
        let code = (*info).si_code;
        let record = [signal, code];
        libc::write(
            REPORT_PIPE.load(std::sync::atomic::Ordering::SeqCst),
            record.as_ptr().cast(),
            std::mem::size_of_val(&record),
        );
    }
}

/// Not a test of its own: when run as a command under `tollgate run` (with [`REPORTER`] set),
/// prints `ready`, then one line `signal N code C` for every SIGINT and SIGTERM it gets, and
/// exits 7 after SIGTERM.
#[test]
fn signal_reporter() {
    if std::env::var_os(REPORTER).is_none() {
        return;
    }
    let mut pipe = [0; 2];
    // SAFETY: plain libc calls; the handler only writes to the pipe.
    unsafe {
        assert_eq!(libc::pipe(pipe.as_mut_ptr()), 0);
        REPORT_PIPE.store(pipe[1], std::sync::atomic::Ordering::SeqCst);
        let mut action: libc::sigaction = std::mem::zeroed();
        let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            report_signal;
        action.sa_sigaction = handler as libc::sighandler_t;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        for signal in [libc::SIGINT, libc::SIGTERM] {
            assert_eq!(libc::sigaction(signal, &action, std::ptr::null_mut()), 0);
        }
    }
    // SAFETY: the read end is ours alone.
    let mut reports = unsafe { File::from_raw_fd(pipe[0]) };
    println!("ready");
    let mut record = [0; 2 * std::mem::size_of::<libc::c_int>()];
    loop {
        reports.read_exact(&mut record).expect("read a report");
        let signal = libc::c_int::from_ne_bytes(record[..4].try_into().expect("4 bytes"));
        let code = libc::c_int::from_ne_bytes(record[4..].try_into().expect("4 bytes"));
        println!("signal {signal} code {code}");
        if signal == libc::SIGTERM {
            std::process::exit(7);
        }
    }
}

/// A Ctrl-C typed on the terminal reaches the whole foreground process group: the command
/// gets it once, from the terminal, and not a second time from tollgate; a signal sent to
/// tollgate alone is passed on.
#[test]
fn a_ctrl_c_from_the_terminal_reaches_the_command_once() {
    use std::os::unix::process::CommandExt;

    let backend = backend();
    let (master, slave) = open_pty();
    let mut writer = master.try_clone().expect("clone master");
    let reporter = std::env::current_exe().expect("this test binary");
    let mut command = tollgate();
    command
        .args([
            "run",
            "ctrl-c",
            "--backend",
            &backend.url,
            "--timeout",
            "10s",
            "--",
        ])
        .arg(reporter)
        .args([
            "--exact",
            "signal_reporter",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(REPORTER, "1")
        .stdin(slave.try_clone().expect("clone slave"))
        .stdout(slave.try_clone().expect("clone slave"))
        .stderr(slave);
    // SAFETY: setsid and ioctl are async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            // A session of its own whose controlling terminal is the pty, in the foreground.
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().expect("spawn tollgate run");
    drop(command);
    let mut output = read_terminal(master);
    output.wait_for("ready");

    writer.write_all(b"\x03").expect("type Ctrl-C");
    output.wait_for(&format!("signal {} code {}", libc::SIGINT, libc::SI_KERNEL));
    // A forwarded duplicate would come before this SIGTERM: tollgate handles SIGINT first.
    send_signal(&child, libc::SIGTERM);
    let status = wait_within(&mut child, HANG);
    assert_eq!(status.code(), Some(7), "{status}");
    let seen = output.finish();
    let reports: Vec<&str> = seen
        .lines()
        // The terminal echoes the Ctrl-C as `^C` before the report.
        .filter_map(|line| line.find("signal ").map(|at| line[at..].trim()))
        .collect();
    assert_eq!(
        reports,
        [
            format!("signal {} code {}", libc::SIGINT, libc::SI_KERNEL),
            format!("signal {} code {}", libc::SIGTERM, libc::SI_USER),
        ],
        "{seen:?}"
    );
}

#[test]
fn a_command_killed_by_the_signal_tollgate_passed_on_ends_tollgate_the_same_way() {
    let backend = backend();
    let mut child = tollgate()
        .args([
            "run",
            "loop-body",
            "--backend",
            &backend.url,
            "--timeout",
            "10s",
        ])
        .args(["--", "sh", "-c", "echo ready; exec sleep 60"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn tollgate run");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut line = String::new();
    stdout
        .read_line(&mut line)
        .expect("read the command's output");
    assert_eq!(line, "ready\n");
    send_signal(&child, libc::SIGINT);
    let status = wait_within(&mut child, HANG);
    // As the command ended: a shell script running this loop would stop here.
    assert_eq!(status.signal(), Some(libc::SIGINT), "{status}");
    assert_status(
        &backend.run("loop-body", &["--timeout", "0", "--", "true"]),
        0,
    );
}

#[test]
fn a_signal_ignored_by_tollgates_parent_stays_ignored_for_the_command() {
    use std::os::unix::process::CommandExt;

    let backend = backend();
    let mut command = tollgate();
    command
        .args(["run", "nohup", "--backend", &backend.url, "--"])
        .args(["sh", "-c", "kill -HUP $$; echo survived"]);
    // As `nohup` starts it. SAFETY: signal(2) is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            libc::signal(libc::SIGHUP, libc::SIG_IGN);
            Ok(())
        });
    }
    let output = command.output().expect("run tollgate");
    assert_status(&output, 0);
    assert_eq!(output.stdout, b"survived\n");
}

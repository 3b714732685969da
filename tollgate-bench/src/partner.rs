//! The partner process (B): the bench binary run again with [`PARTNER_ENV`] set to the role
//! it plays, driven line by line over its stdin and stdout.
//!
//! [`Partner`] is A's end; [`die_with_parent`] and [`say`] are B's.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// Set in the partner process: which role it plays.
pub const PARTNER_ENV: &str = "TOLLGATE_BENCH_PARTNER";

/// How long a dropped partner has to end once its stdin is closed before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// The role this process plays, if it is a partner.
pub fn role() -> Option<String> {
    std::env::var(PARTNER_ENV).ok()
}

/// A's end of a partner process. Dropping it closes the partner's stdin, which ends it, and
/// kills it (by its id) if it has not ended within a few seconds.
pub struct Partner {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Partner {
    /// Starts this binary again as the partner playing `role`, with the environment
    /// variables `envs` besides, and waits for its `ready`.
    pub fn spawn<I, K, V>(role: &str, envs: I) -> Partner
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        let mut child = Command::new(std::env::current_exe().expect("bench binary"))
            .env(PARTNER_ENV, role)
            .envs(envs)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the partner process");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut partner = Partner {
            child,
            stdin,
            stdout,
        };
        assert_eq!(partner.read_line(), "ready");
        partner
    }

    /// The partner's process id (its main thread's too).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends one line.
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("write to partner");
        stdin.flush().expect("flush to partner");
    }

    /// Reads one line, without its line end; panics if the partner has exited.
    pub fn read_line(&mut self) -> String {
        let mut line = String::new();
        let read = self.stdout.read_line(&mut line).expect("read from partner");
        assert!(read > 0, "the partner process exited early");
        line.trim_end().to_owned()
    }

    /// Reads a line that is a [`monotonic_ns`](crate::clock::monotonic_ns) reading.
    pub fn read_timestamp(&mut self) -> u64 {
        self.read_line().parse().expect("a timestamp")
    }

    /// Starts a hand-off round: sends `go` and waits for the partner's `waiting`, which it
    /// says right before it starts to wait for the lock.
    pub fn start_waiting(&mut self) {
        self.send("go");
        assert_eq!(self.read_line(), "waiting");
    }
}

impl Drop for Partner {
    fn drop(&mut self) {
        // Closing its stdin ends the partner; kill it if it does not end promptly.
        drop(self.stdin.take());
        let deadline = Instant::now() + EXIT_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// In the partner: dies with the bench process, whatever happens to it.
pub fn die_with_parent() {
    // SAFETY: plain prctl arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
}

/// In the partner: says one line to the bench, at once.
pub fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").expect("write to the bench");
    out.flush().expect("flush to the bench");
}

//! The `tollgate` command: runs a command while holding a named lock, semaphore ticket or
//! reader-writer lock side on any tollgate backend, like `flock(1)` across machines.
//!
//! Thin by design: it parses the command line and calls the library.

mod command;
mod secrets;
mod signals;
mod target;

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitCode, ExitStatus};
use std::time::Duration;

use clap::{ArgGroup, Args, Parser, Subcommand};
use tokio::io::AsyncBufReadExt;
use tollgate::{AnyHandle, Handle};

use signals::Signals;
use target::{Acquired, Chatter, Target};

/// Tollgate's own exit statuses (sysexits.h where one fits; 126/127 as shells use them).
mod status {
    /// A usage error: bad option, duration, max count or backend URL.
    pub const USAGE: u8 = 2;
    /// `EX_UNAVAILABLE`: the backend could not be reached or failed.
    pub const BACKEND: u8 = 69;
    /// `EX_SOFTWARE`: tollgate itself failed (runtime, signal handlers, its own stdio).
    pub const INTERNAL: u8 = 70;
    /// `EX_TEMPFAIL`: not acquired within the timeout.
    pub const TIMED_OUT: u8 = 75;
    /// The lock was lost while the command ran, and the command was stopped (`--on-lost`).
    pub const LOST: u8 = 79;
    /// The command was found but could not be run.
    pub const CANNOT_RUN: u8 = 126;
    /// The command was not found.
    pub const NOT_FOUND: u8 = 127;
}

const ABOUT: &str = "Run a command while holding a distributed lock";

const LONG_ABOUT: &str = "\
Run a command while holding a distributed lock.

tollgate acquires a named lock (or a semaphore ticket, or one side of a reader-writer lock),
runs the command, and releases the lock when the command exits, like flock(1), on any
tollgate backend. Every process that names the same lock on the same backend takes turns.";

const EXAMPLES: &str = "\
Examples:
  tollgate run nightly-report ./report.sh
  tollgate run builds --max 4 --timeout 10m -- make -j8
  tollgate run cache -s ./read-cache
  tollgate run deploy -n -c './deploy.sh && ./notify.sh'
  TOLLGATE_BACKEND=file:///srv/locks tollgate run deploy --timeout 0 -- ./deploy.sh";

const RUN_AFTER_HELP: &str = "\
Modes, as flock(1)'s: -s takes the shared side of the name's reader-writer lock; -x, and no
mode at all, its exclusive side, so the three exclude as flock's do. On MySQL, which has no
reader-writer locks, the exclusive modes are its lock (GET_LOCK) and -s is refused. --max N is
the name's semaphore, apart from those. (Library users who share a lock with this command
take `read_write_lock(NAME).writer()`, or `lock(NAME)` on MySQL.)

Exit status:
  the command's own (128+N when signal N killed it)
  79   the lock was lost while the command ran, and the command was stopped (--on-lost)
  75   not acquired within --timeout, or busy with -n (one line on stderr names the lock;
       -E N changes the status)
  69   the backend could not be reached or failed
  2    usage error (bad option, duration, --max or backend URL)
  126  the command could not be run; 127: command not found
  70   tollgate itself failed

While tollgate waits for the lock, SIGINT, SIGTERM and SIGHUP end it (nothing stays held);
while the command runs, they are passed on to it (a Ctrl-C from the terminal reaches the
command directly) and tollgate exits with the command's status. If such a signal killed the
command, tollgate ends by that signal too (the shell's $? is still 128+N), so that a script
running tollgate stops on Ctrl-C as it would for the command itself.

If the lock is lost while the command runs (its server session killed, its lease expired),
tollgate says so in one line naming the lock and, by default, sends SIGTERM to the command,
then SIGKILL after --kill-after; it exits 79. How soon a loss is noticed depends on the
backend: PostgreSQL at once when the server ends the session; PostgreSQL and MySQL within
about twice their keepalive (default 1 s) when the connection dies silently; Redis at the
next lease extension (every 2.5 s by default);
local lock files cannot be lost while tollgate runs. A loss that the command outran (it ended
before the loss was noticed) is found at the release and reported the same way, exit 79.

The command runs in a process group of its own (signalled as a whole), except when tollgate
is a foreground job on a terminal, where it shares tollgate's so that job control works.
If tollgate itself is killed, the command gets SIGKILL (processes it started do not). The
command shares the lock's descriptors (lock file, server connection), as with flock(1), so
the lock goes only once the command and whatever it started that kept them are gone too;
-o (--close) does not pass them on (then processes the command started may run on after
the lock went). A Redis lease is not extended without tollgate, and lapses after its expiry.

The command's environment has TOLLGATE_LOCK_NAME (the name) and, where the backend gives one,
TOLLGATE_FENCING_TOKEN (a number that grows with every acquisition of the lock). It does not
inherit TOLLGATE_PASSWORD, and gets TOLLGATE_BACKEND without its password.";

const HOLD_AFTER_HELP: &str = "\
Once it holds the lock, tollgate prints `held NAME` on stdout (then `fencing-token N` where
the backend gives one) and reads stdin:
  release (or end of input)  release the lock and exit 0
  exit                       exit 0 at once without releasing (as a crash would)

Exit status: 0 after release; 79 (with one line naming the lock) when the hold is lost; 75,
69, 2 and 70 as for `tollgate run`.";

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "tollgate",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = EXAMPLES,
    // The last of a repeated option wins, so wrappers can set defaults that callers override.
    args_override_self = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a command while holding a lock, then release it
    #[command(after_help = RUN_AFTER_HELP)]
    Run {
        #[command(flatten)]
        lock: LockArgs,
        #[command(flatten)]
        supervision: Supervision,
        /// Run STRING with `sh -c` instead of COMMAND
        #[arg(short = 'c', long = "command", value_name = "STRING")]
        shell: Option<OsString>,
        /// The command to run and its arguments: after NAME (and tollgate's options), or after
        /// `--`
        #[arg(value_name = "COMMAND", trailing_var_arg = true)]
        command: Vec<OsString>,
    },
    /// Hold a lock until told on stdin to release it (for scripts and tests)
    #[command(after_help = HOLD_AFTER_HELP)]
    Hold {
        #[command(flatten)]
        lock: LockArgs,
    },
    /// Print a completion script for SHELL (for example `tollgate completions bash >
    /// /etc/bash_completion.d/tollgate`)
    Completions {
        /// The shell the script is for
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print a manual page (roff), from the same definitions as --help: tollgate(1), or
    /// tollgate-run(1) and tollgate-hold(1) (for example `tollgate man run >
    /// /usr/local/share/man/man1/tollgate-run.1`)
    Man {
        /// The subcommand whose page to print (run, hold)
        #[arg(value_name = "SUBCOMMAND")]
        subcommand: Option<String>,
    },
}

/// Which lock, on which backend, and how long to wait for it.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("kind").args(["max", "read", "write"]).multiple(false)))]
#[command(group(ArgGroup::new("wait").args(["timeout", "nonblock"]).multiple(false)))]
pub struct LockArgs {
    /// The lock's name: processes that use the same name on the same backend exclude each
    /// other (a name that starts with `-` goes in --name)
    #[arg(value_name = "NAME", required_unless_present = "named")]
    pub positional_name: Option<OsString>,

    /// The lock's name, for a name that starts with `-` (then every argument after the
    /// options is the command)
    #[arg(
        long = "name",
        value_name = "NAME",
        id = "named",
        allow_hyphen_values = true
    )]
    pub named: Option<String>,

    /// Use a semaphore of N tickets: up to N holders at once
    #[arg(long, value_name = "N", value_parser = parse_max)]
    pub max: Option<u32>,

    /// Take the shared side of the lock: shared holders coexist, an exclusive one waits
    #[arg(short = 's', long = "shared", visible_alias = "read")]
    pub read: bool,

    /// Take the exclusive side of the lock, as without -s (while it waits, it turns away new
    /// shared holders)
    #[arg(
        short = 'x',
        short_alias = 'e',
        long = "exclusive",
        visible_alias = "write"
    )]
    pub write: bool,

    /// How long to wait for the lock: 0 (one try), seconds (5, 0.5), or a duration such as
    /// 250ms, 5s, 2m; without it, wait as long as it takes
    #[arg(
        short = 'w',
        long,
        visible_alias = "wait",
        value_name = "DURATION",
        value_parser = tollgate::parse_duration
    )]
    pub timeout: Option<Duration>,

    /// Do not wait: one try (the same as --timeout 0)
    #[arg(short = 'n', long)]
    pub nonblock: bool,

    /// The exit status when the lock is busy or the wait runs out
    #[arg(short = 'E', long, value_name = "N", default_value_t = status::TIMED_OUT)]
    pub conflict_exit_code: u8,

    /// Say on stderr when tollgate starts to wait and when it holds the lock, with the time
    /// it took
    #[arg(short = 'v', long, conflicts_with = "quiet")]
    pub verbose: bool,

    /// Say nothing on stderr but errors: no waiting notice, no warnings, no line when the
    /// lock is busy or the wait runs out (the exit status still tells)
    #[arg(short = 'q', long)]
    pub quiet: bool,

    /// Where the locks live: local: (this machine, per-user runtime directory),
    /// file:///DIR (lock files in DIR), postgres://USER@HOST:PORT/DB, mysql://USER@HOST/DB,
    /// redis://HOST:PORT (redis://H1,H2,H3 for RedLock), zookeeper://HOST:2181[,HOST2…]/DIR
    /// (locks), with options after `?`
    #[arg(
        long,
        value_name = "URL",
        env = "TOLLGATE_BACKEND",
        default_value = "local:"
    )]
    pub backend: String,

    /// Read the backend's password from the first line of FILE instead of the URL (or of
    /// TOLLGATE_PASSWORD, which the command does not inherit)
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<std::path::PathBuf>,
}

impl LockArgs {
    /// The lock's name, and the arguments left for the command: with --name, the positional
    /// NAME was the command's first word.
    fn split(&self, command: &[OsString]) -> Result<(String, Vec<OsString>), Failure> {
        match (&self.named, &self.positional_name) {
            (Some(name), first) => {
                let rest = first.iter().chain(command).cloned().collect();
                Ok((name.clone(), rest))
            }
            (None, Some(name)) => {
                let name = name.to_str().ok_or_else(|| {
                    Failure::new(status::USAGE, format!("the name {name:?} is not UTF-8"))
                })?;
                Ok((name.to_owned(), command.to_vec()))
            }
            (None, None) => Err(Failure::new(status::USAGE, "no lock name given")),
        }
    }

    /// How long to wait: --nonblock is a zero timeout.
    pub fn wait_limit(&self) -> Option<Duration> {
        if self.nonblock {
            Some(Duration::ZERO)
        } else {
            self.timeout
        }
    }
}

/// What `tollgate run` does when the lock is lost while the command runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnLost {
    /// Send SIGTERM to the command, then SIGKILL after --kill-after; exit 79
    Term,
    /// Send SIGKILL to the command at once; exit 79
    Kill,
    /// Only say so on stderr; the command runs on, and its status is tollgate's
    Ignore,
}

/// How `tollgate run` watches over the command.
#[derive(Debug, Args)]
pub struct Supervision {
    /// What to do when the lock is lost while the command runs
    #[arg(long, value_enum, value_name = "ACTION", default_value = "term")]
    pub on_lost: OnLost,

    /// After a loss, how long the command has between SIGTERM and SIGKILL: seconds (5, 0.5)
    /// or a duration such as 500ms, 10s
    #[arg(long, value_name = "DURATION", default_value = "5", value_parser = tollgate::parse_duration)]
    pub kill_after: Duration,

    /// Do not let the command share the lock's descriptors (as flock -o): then if tollgate
    /// is killed, the lock goes at once, even while processes the command started run on
    #[arg(short = 'o', long)]
    pub close: bool,
}

fn parse_max(text: &str) -> Result<u32, String> {
    let max: u32 = text
        .parse()
        .map_err(|error| format!("expected a number of tickets (1 or more): {error}"))?;
    if max == 0 {
        return Err(String::from(
            "a semaphore needs at least 1 ticket (with 0, no one could ever hold it)",
        ));
    }
    Ok(max)
}

/// Why tollgate exits with a status of its own: printed as one `tollgate: …` line.
#[derive(Debug)]
pub struct Failure {
    status: u8,
    message: String,
    /// Whether the message stays unsaid (`--quiet` and an expected outcome).
    silent: bool,
}

impl Failure {
    /// A failure with its exit status and message.
    pub fn new(status: u8, message: impl Into<String>) -> Self {
        Failure {
            status,
            message: message.into(),
            silent: false,
        }
    }

    /// The same failure, its message after `context: `.
    pub fn context(self, context: impl std::fmt::Display) -> Self {
        Failure {
            message: format!("{context}: {}", self.message),
            ..self
        }
    }

    /// The same failure, told by its exit status only.
    pub fn silent(self) -> Self {
        Failure {
            silent: true,
            ..self
        }
    }

    /// A library error: a caller mistake is a usage error, everything else means the backend
    /// could not do it.
    pub fn library(error: tollgate::Error) -> Self {
        let status = match error {
            tollgate::Error::InvalidArgument(_) | tollgate::Error::Unsupported { .. } => {
                status::USAGE
            }
            tollgate::Error::Timeout { .. } => status::TIMED_OUT,
            _ => status::BACKEND,
        };
        Failure::new(status, error_chain(&error))
    }
}

/// The error and its sources on one line, skipping sources its message already quotes.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    // Some client errors repeat their own prefix ("Input/output error: Input/output error:
    // …"): a segment said twice in a row is said once.
    let mut segments: Vec<&str> = Vec::new();
    for segment in message.split(": ") {
        if segments.last() != Some(&segment) {
            segments.push(segment);
        }
    }
    segments.join(": ")
}

/// How tollgate ends when nothing went wrong.
enum Outcome {
    /// Exit with this status.
    Exit(u8),
    /// End as this signal would have.
    Signal(libc::c_int),
}

/// `tollgate completions` and `tollgate man`: generated from the command line's definitions.
fn generate(command: &Command) -> Option<ExitCode> {
    use clap::CommandFactory;

    let mut definitions = Cli::command();
    let mut stdout = std::io::stdout().lock();
    let written = match command {
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut definitions, "tollgate", &mut stdout);
            Ok(())
        }
        Command::Man { subcommand: None } => clap_mangen::Man::new(definitions).render(&mut stdout),
        Command::Man {
            subcommand: Some(name),
        } => {
            let title = match name.as_str() {
                "run" => "tollgate-run",
                "hold" => "tollgate-hold",
                _ => {
                    say(format_args!(
                        "no manual page for {name:?} (expected run or hold)"
                    ));
                    return Some(ExitCode::from(status::USAGE));
                }
            };
            let page = definitions.find_subcommand(name).cloned()?;
            let page = page.name(title).version(env!("CARGO_PKG_VERSION"));
            clap_mangen::Man::new(page).render(&mut stdout)
        }
        _ => return None,
    };
    Some(match written.and_then(|()| stdout.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        // A reader that stopped early (`| head`) is no failure.
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(error) => {
            say(format_args!("cannot write to stdout: {error}"));
            ExitCode::from(status::INTERNAL)
        }
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(code) = generate(&cli.command) {
        return code;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            say(format_args!("cannot start the async runtime: {error}"));
            return ExitCode::from(status::INTERNAL);
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Run {
                lock,
                supervision,
                shell,
                command,
            } => run(&lock, &supervision, shell, &command).await,
            Command::Hold { lock } => hold(&lock).await,
            Command::Completions { .. } | Command::Man { .. } => Ok(Outcome::Exit(0)),
        }
    });
    // Everything is released by now; don't wait for a blocking read of stdin.
    runtime.shutdown_background();
    match outcome {
        Ok(Outcome::Exit(code)) => ExitCode::from(code),
        Ok(Outcome::Signal(signal)) => {
            let _ = std::io::stdout().flush();
            signals::die_by(signal)
        }
        Err(failure) => {
            if !failure.silent {
                say(&failure.message);
            }
            ExitCode::from(failure.status)
        }
    }
}

/// Prints `tollgate: MESSAGE` on stderr in one write, so that it stays one whole line
/// among other processes' output.
pub fn say(message: impl std::fmt::Display) {
    let line = format!("tollgate: {message}\n");
    // Nowhere left to report a failure to write to stderr.
    let _ = std::io::stderr().write_all(line.as_bytes());
}

fn install_signals() -> Result<Signals, Failure> {
    Signals::install().map_err(|error| {
        Failure::new(
            status::INTERNAL,
            format!("cannot install signal handlers: {error}"),
        )
    })
}

/// Releases, reporting a failure on stderr (unless quiet) without changing the exit status.
async fn release(target: &Target, handle: AnyHandle) {
    if let Err(error) = handle.release().await {
        if target.chatter() == Chatter::Quiet {
            return;
        }
        say(format_args!(
            "warning: releasing {target} on {} failed: {}",
            target.backend_label(),
            error_chain(&error)
        ));
    }
}

/// `tollgate run`: acquire, run the command, release, exit with the command's status.
async fn run(
    options: &LockArgs,
    supervision: &Supervision,
    shell: Option<OsString>,
    command: &[OsString],
) -> Result<Outcome, Failure> {
    let (name, mut command) = options.split(command)?;
    if let Some(script) = shell {
        if !command.is_empty() {
            return Err(Failure::new(
                status::USAGE,
                "give the command either with -c STRING or as arguments, not both",
            ));
        }
        command = vec!["sh".into(), "-c".into(), script];
    }
    let Some((program, arguments)) = command.split_first() else {
        return Err(Failure::new(
            status::USAGE,
            "no command to run (give it after the name, or with -c STRING)",
        ));
    };
    let target = Target::new(options, name)?;
    let mut signals = install_signals()?;
    let handle = match target.acquire(&mut signals).await? {
        Acquired::Held(handle) => handle,
        Acquired::Interrupted(signal) => return Ok(Outcome::Signal(signal)),
    };
    // A signal between the acquire and the spawn would reach neither the wait nor the command.
    if let Some(signal) = signals.pending() {
        release(&target, handle).await;
        return Ok(Outcome::Signal(signal));
    }
    let mut env = vec![("TOLLGATE_LOCK_NAME", target.name().to_owned())];
    if let Some(token) = handle.fencing_token() {
        env.push(("TOLLGATE_FENCING_TOKEN", token.to_string()));
    }
    // The command may use the same backend, but not its password.
    if let Ok(url) = std::env::var("TOLLGATE_BACKEND") {
        env.push(("TOLLGATE_BACKEND", secrets::without_password(&url)));
    }
    // The command shares the hold's descriptors (as with flock(1)), so that if tollgate is
    // killed, the lock goes only once the command, and whatever it started, is gone too.
    let inherit = if supervision.close {
        Vec::new()
    } else {
        command::hold_descriptors()
    };
    let (mut child, started) = match command::spawn(program, arguments, &env, &inherit) {
        Ok(spawned) => spawned,
        Err(error) => {
            release(&target, handle).await;
            return Err(spawn_failure(program, &error));
        }
    };
    signals.set_command(Some(started.pid()), !started.own_group());
    let supervised = supervise(
        &target,
        &handle,
        supervision,
        &mut child,
        started,
        &mut signals,
    )
    .await;
    signals.set_command(None, true);
    let mut lost = supervised.lost;
    if lost {
        // Released with the session or lease; a release would only report that.
        drop(handle);
    } else {
        // A loss that no one noticed while the command ran (say, a MySQL connection killed
        // between two keepalives) shows at the release: the command ran without the lock for a
        // while, and says so as a loss seen during the run would.
        let loss = handle.loss_signal();
        release(&target, handle).await;
        if loss.is_lost() && supervision.on_lost != OnLost::Ignore {
            lost = true;
            say(format_args!(
                "lost {target} on {} while the command ran (found when releasing it)",
                target.backend_label()
            ));
        }
    }
    let exit = supervised.waited.map_err(|error| {
        Failure::new(
            status::INTERNAL,
            format!("cannot wait for {}: {error}", program.to_string_lossy()),
        )
    })?;
    if lost && supervision.on_lost != OnLost::Ignore {
        return Ok(Outcome::Exit(status::LOST));
    }
    // Killed by a signal that was meant for tollgate too (say, Ctrl-C): end the same way, so
    // that a shell running tollgate in a loop stops as it would for the command itself.
    match exit.signal() {
        Some(signal) if supervised.received.contains(&signal) => Ok(Outcome::Signal(signal)),
        _ => Ok(Outcome::Exit(command_status(exit))),
    }
}

/// What happened while the command ran.
struct Supervised {
    waited: std::io::Result<ExitStatus>,
    /// The signals tollgate received meanwhile.
    received: Vec<libc::c_int>,
    /// Whether the hold was lost meanwhile.
    lost: bool,
}

/// Waits for the command, passing signals on to it, and stops it as `supervision` says if
/// the hold is lost meanwhile.
async fn supervise(
    target: &Target,
    handle: &AnyHandle,
    supervision: &Supervision,
    child: &mut tokio::process::Child,
    started: command::Started,
    signals: &mut Signals,
) -> Supervised {
    let mut watch_loss = handle.can_detect_loss();
    let lost = handle.lost();
    tokio::pin!(lost);
    let kill = tokio::time::sleep(Duration::MAX);
    tokio::pin!(kill);
    let mut kill_armed = false;
    let (mut received, mut was_lost) = (Vec::new(), false);
    let waited = loop {
        tokio::select! {
            waited = child.wait() => break waited,
            signal = signals.recv() => {
                received.push(signal.number);
                if signal.forward {
                    started.signal(signal.number);
                }
            }
            () = &mut lost, if watch_loss => {
                watch_loss = false;
                was_lost = true;
                match supervision.on_lost {
                    OnLost::Term => {
                        say(format_args!(
                            "lost {target} on {} while the command ran; sending it SIGTERM \
                             (SIGKILL in {})",
                            target.backend_label(),
                            humantime::format_duration(supervision.kill_after)
                        ));
                        started.signal(libc::SIGTERM);
                        kill.as_mut().reset(tokio::time::Instant::now() + supervision.kill_after);
                        kill_armed = true;
                    }
                    OnLost::Kill => {
                        say(format_args!(
                            "lost {target} on {} while the command ran; killing it",
                            target.backend_label()
                        ));
                        started.signal(libc::SIGKILL);
                    }
                    OnLost::Ignore if target.chatter() == Chatter::Quiet => {}
                    OnLost::Ignore => say(format_args!(
                        "warning: lost {target} on {} while the command runs (--on-lost ignore)",
                        target.backend_label()
                    )),
                }
            }
            () = &mut kill, if kill_armed => {
                kill_armed = false;
                started.signal(libc::SIGKILL);
            }
        }
    };
    if was_lost && started.own_group() && supervision.on_lost != OnLost::Ignore {
        // What the command started may outlive it: the group goes too.
        started.signal(libc::SIGKILL);
    }
    Supervised {
        waited,
        received,
        lost: was_lost,
    }
}

fn spawn_failure(program: &OsStr, error: &std::io::Error) -> Failure {
    let shown = program.to_string_lossy();
    match error.kind() {
        std::io::ErrorKind::NotFound => {
            Failure::new(status::NOT_FOUND, format!("{shown}: command not found"))
        }
        _ => Failure::new(status::CANNOT_RUN, format!("{shown}: {error}")),
    }
}

/// The command's exit status, or 128+N if signal N ended it, as shells report it.
fn command_status(exit: ExitStatus) -> u8 {
    exit.code()
        .or_else(|| exit.signal().map(|signal| 128 + signal))
        .and_then(|code| u8::try_from(code).ok())
        .unwrap_or(status::INTERNAL)
}

/// `tollgate hold`: acquire, say `held NAME`, then follow the instructions on stdin.
async fn hold(options: &LockArgs) -> Result<Outcome, Failure> {
    let (name, rest) = options.split(&[])?;
    if !rest.is_empty() {
        return Err(Failure::new(status::USAGE, "hold takes no command"));
    }
    let target = Target::new(options, name)?;
    let mut signals = install_signals()?;
    let handle = match target.acquire(&mut signals).await? {
        Acquired::Held(handle) => handle,
        Acquired::Interrupted(signal) => return Ok(Outcome::Signal(signal)),
    };
    let announced = {
        let mut stdout = std::io::stdout().lock();
        let token = handle
            .fencing_token()
            .map_or_else(String::new, |token| format!("fencing-token {token}\n"));
        // One write, so that a reader that stops after the first line cannot make it fail.
        let announcement = format!("held {}\n{token}", target.name());
        stdout
            .write_all(announcement.as_bytes())
            .and_then(|()| stdout.flush())
    };
    if let Err(error) = announced {
        release(&target, handle).await;
        return Err(Failure::new(
            status::INTERNAL,
            format!("cannot write to stdout: {error}"),
        ));
    }
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let watch_loss = handle.can_detect_loss();
    let lost = handle.lost();
    tokio::pin!(lost);
    loop {
        tokio::select! {
            () = &mut lost, if watch_loss => {
                return Err(Failure::new(
                    status::LOST,
                    format!("lost {target} on {}", target.backend_label()),
                ));
            }
            line = lines.next_line() => match line {
                Ok(None) => break,
                Ok(Some(line)) => match line.trim() {
                    "release" => break,
                    // As a crash would: the backend frees what the process held.
                    "exit" => std::process::exit(0),
                    "" => {}
                    other => say(format_args!(
                        "ignoring {other:?} on stdin (expected `release` or `exit`)"
                    )),
                },
                Err(error) => {
                    release(&target, handle).await;
                    return Err(Failure::new(
                        status::INTERNAL,
                        format!("cannot read stdin: {error}"),
                    ));
                }
            },
            signal = signals.recv() => {
                release(&target, handle).await;
                return Ok(Outcome::Signal(signal.number));
            }
        }
    }
    release(&target, handle).await;
    Ok(Outcome::Exit(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Chained(&'static str, Option<Box<Chained>>);

    impl std::fmt::Display for Chained {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Chained {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|cause| cause as _)
        }
    }

    #[test]
    fn an_error_chain_is_one_line_without_repeats() {
        let io = Chained("Connection refused", None);
        let wrapped = Chained(
            "Input/output error: Input/output error: Connection refused",
            Some(Box::new(io)),
        );
        let top = Chained("cannot connect", Some(Box::new(wrapped)));
        assert_eq!(
            error_chain(&top),
            "cannot connect: Input/output error: Connection refused"
        );
    }
}

//! What the command line asks to acquire, and acquiring it.

use std::fmt;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use tollgate::{
    Acquire, AnyHandle, AnyProvider, LockProvider, ReadWriteLock, ReadWriteLockProvider,
    SemaphoreProvider, Wait,
};

use crate::secrets;
use crate::signals::Signals;
use crate::{Failure, LockArgs};

/// How long an acquire waits before tollgate says, on a terminal, what it waits for.
const WAIT_NOTICE_AFTER: Duration = Duration::from_secs(1);

/// Which primitive the options chose.
///
/// flock(1)'s modes on every backend: `-s` is the shared side of the reader-writer lock of
/// the name, `-x` and no mode at all its exclusive side, so that all three exclude as flock's
/// do; on a backend without reader-writer locks (MySQL) the exclusive modes are its lock and
/// `-s` is refused. `--max N` is the semaphore of the name, apart from all of them.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// No mode given: exclusive.
    Plain,
    Semaphore(u32),
    Shared,
    Exclusive,
}

/// What tollgate says on stderr besides errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chatter {
    /// Nothing but errors.
    Quiet,
    /// A waiting notice on a terminal, warnings, and the line when the lock is busy.
    Normal,
    /// Also when it starts to wait and when it holds, with the time it took.
    Verbose,
}

/// A named primitive on a backend, with how long to wait for it.
pub struct Target {
    provider: AnyProvider,
    /// The backend as messages show it (no password).
    backend_label: String,
    name: String,
    kind: Kind,
    timeout: Option<Duration>,
    conflict_status: u8,
    chatter: Chatter,
}

/// The outcome of [`Target::acquire`] when nothing went wrong.
pub enum Acquired {
    /// Held until the handle is released or dropped.
    Held(AnyHandle),
    /// A signal came while waiting; the wait was abandoned and nothing is held.
    Interrupted(libc::c_int),
}

impl Target {
    /// Connects to the backend the options name (a bad URL is a usage error, an unreachable
    /// backend a backend failure), for the lock `name`.
    pub fn new(options: &LockArgs, name: String) -> Result<Self, Failure> {
        let kind = match (options.max, options.read, options.write) {
            (Some(max), _, _) => Kind::Semaphore(max),
            (None, true, _) => Kind::Shared,
            (None, false, true) => Kind::Exclusive,
            (None, false, false) => Kind::Plain,
        };
        // `TOLLGATE_BACKEND=` (set but empty) means the default, as an unset one does.
        let url = match options.backend.as_str() {
            "" => "local:",
            url => url,
        };
        let url = match secrets::password(options.password_file.as_deref())? {
            Some(password) => {
                secrets::with_password(url, &password, options.password_file.is_some())?
            }
            None => url.to_owned(),
        };
        let backend_label = secrets::label(&url);
        let provider = AnyProvider::from_url(&url).map_err(|error| {
            Failure::library(error).context(format_args!("cannot use {name:?} on {backend_label}"))
        })?;
        let chatter = if options.quiet {
            Chatter::Quiet
        } else if options.verbose {
            Chatter::Verbose
        } else {
            Chatter::Normal
        };
        Ok(Target {
            provider,
            backend_label,
            name,
            kind,
            timeout: options.wait_limit(),
            conflict_status: options.conflict_exit_code,
            chatter,
        })
    }

    /// The name, as given.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The backend as messages show it: `scheme://host:port`, no password.
    pub fn backend_label(&self) -> &str {
        &self.backend_label
    }

    /// What tollgate says besides errors.
    pub fn chatter(&self) -> Chatter {
        self.chatter
    }

    async fn acquire_wait(&self, wait: Wait) -> tollgate::Result<Option<AnyHandle>> {
        let name = &self.name;
        let provider = &self.provider;
        match self.kind {
            Kind::Semaphore(max) => provider.semaphore(name, max)?.acquire_wait(wait).await,
            Kind::Shared => {
                provider
                    .read_write_lock(name)?
                    .reader()
                    .acquire_wait(wait)
                    .await
            }
            Kind::Plain | Kind::Exclusive => match provider.read_write_lock(name) {
                Ok(lock) => lock.writer().acquire_wait(wait).await,
                // Without shared holders, the lock is the exclusive side.
                Err(tollgate::Error::Unsupported { .. }) => {
                    provider.lock(name)?.acquire_wait(wait).await
                }
                Err(error) => Err(error),
            },
        }
    }

    /// Acquires within the timeout. On a terminal, a wait longer than a moment is announced
    /// on stderr (with --verbose, every wait and the acquisition are); a signal abandons the
    /// wait.
    pub async fn acquire(&self, signals: &mut Signals) -> Result<Acquired, Failure> {
        let began = Instant::now();
        if self.chatter == Chatter::Verbose {
            crate::say(format_args!("acquiring {self} on {}", self.backend_label));
        }
        let acquiring = self.acquire_wait(Wait::from_timeout(self.timeout));
        tokio::pin!(acquiring);
        let notice = tokio::time::sleep(WAIT_NOTICE_AFTER);
        tokio::pin!(notice);
        // Not when the wait ends about when the notice would come: a timeout is one line.
        let mut announce = self.chatter == Chatter::Normal
            && std::io::stderr().is_terminal()
            && self
                .timeout
                .is_none_or(|timeout| timeout > 2 * WAIT_NOTICE_AFTER);
        loop {
            tokio::select! {
                result = &mut acquiring => {
                    return match result {
                        Ok(Some(handle)) => {
                            if self.chatter == Chatter::Verbose {
                                crate::say(format_args!(
                                    "holding {self} after {:.3} s",
                                    began.elapsed().as_secs_f64()
                                ));
                            }
                            Ok(Acquired::Held(handle))
                        }
                        Ok(None) => Err(self.not_acquired()),
                        Err(error) => Err(Failure::library(error)
                            .context(format_args!("cannot acquire {self} on {}", self.backend_label))),
                    };
                }
                () = &mut notice, if announce => {
                    announce = false;
                    crate::say(format_args!("waiting for {self} on {}…", self.backend_label));
                }
                signal = signals.recv() => return Ok(Acquired::Interrupted(signal.number)),
            }
        }
    }

    fn not_acquired(&self) -> Failure {
        let message = match self.timeout {
            Some(timeout) if !timeout.is_zero() => format!(
                "timed out after {} waiting for {self}",
                humantime::format_duration(timeout)
            ),
            _ => format!("{self} is busy (no wait: one try)"),
        };
        let failure = Failure::new(self.conflict_status, message);
        if self.chatter == Chatter::Quiet {
            failure.silent()
        } else {
            failure
        }
    }
}

/// `lock "NAME"`, `semaphore "NAME" (max N)`, `shared lock "NAME"`, `exclusive lock "NAME"`;
/// the name is quoted and escaped, so it stays on one line whatever it contains.
impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = &self.name;
        match self.kind {
            Kind::Plain => write!(f, "lock {name:?}"),
            Kind::Semaphore(max) => write!(f, "semaphore {name:?} (max {max})"),
            Kind::Shared => write!(f, "shared lock {name:?}"),
            Kind::Exclusive => write!(f, "exclusive lock {name:?}"),
        }
    }
}

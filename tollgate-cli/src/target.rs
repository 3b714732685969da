//! What the command line asks to acquire, and acquiring it.

use std::fmt;
use std::io::IsTerminal;
use std::time::Duration;

use tollgate::{
    Acquire, AnyHandle, AnyProvider, LockProvider, ReadWriteLock, ReadWriteLockProvider,
    SemaphoreProvider, Wait,
};

use crate::signals::Signals;
use crate::{Failure, LockArgs};

/// How long an acquire waits before tollgate says, on a terminal, what it waits for.
const WAIT_NOTICE_AFTER: Duration = Duration::from_secs(1);

/// Which primitive the options chose.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Lock,
    Semaphore(u32),
    Read,
    Write,
}

/// A named primitive on a backend, with how long to wait for it.
pub struct Target {
    provider: AnyProvider,
    name: String,
    kind: Kind,
    timeout: Option<Duration>,
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
    /// backend a backend failure).
    pub fn new(options: &LockArgs) -> Result<Self, Failure> {
        let kind = match (options.max, options.read, options.write) {
            (Some(max), _, _) => Kind::Semaphore(max),
            (None, true, _) => Kind::Read,
            (None, false, true) => Kind::Write,
            (None, false, false) => Kind::Lock,
        };
        // `TOLLGATE_BACKEND=` (set but empty) means the default, as an unset one does.
        let url = match options.backend.as_str() {
            "" => "local:",
            url => url,
        };
        let provider = AnyProvider::from_url(url).map_err(Failure::library)?;
        Ok(Target {
            provider,
            name: options.name.clone(),
            kind,
            timeout: options.timeout,
        })
    }

    /// The name, as given.
    pub fn name(&self) -> &str {
        &self.name
    }

    async fn acquire_wait(&self, wait: Wait) -> tollgate::Result<Option<AnyHandle>> {
        let name = &self.name;
        let provider = &self.provider;
        match self.kind {
            Kind::Lock => provider.lock(name)?.acquire_wait(wait).await,
            Kind::Semaphore(max) => provider.semaphore(name, max)?.acquire_wait(wait).await,
            Kind::Read => {
                provider
                    .read_write_lock(name)?
                    .reader()
                    .acquire_wait(wait)
                    .await
            }
            Kind::Write => {
                provider
                    .read_write_lock(name)?
                    .writer()
                    .acquire_wait(wait)
                    .await
            }
        }
    }

    /// Acquires within the timeout. On a terminal, a wait longer than a moment is announced
    /// on stderr; a signal abandons the wait.
    pub async fn acquire(&self, signals: &mut Signals) -> Result<Acquired, Failure> {
        let acquiring = self.acquire_wait(Wait::from_timeout(self.timeout));
        tokio::pin!(acquiring);
        let notice = tokio::time::sleep(WAIT_NOTICE_AFTER);
        tokio::pin!(notice);
        // Not when the wait ends about when the notice would come: a timeout is one line.
        let mut announce = std::io::stderr().is_terminal()
            && self
                .timeout
                .is_none_or(|timeout| timeout > 2 * WAIT_NOTICE_AFTER);
        loop {
            tokio::select! {
                result = &mut acquiring => {
                    return match result {
                        Ok(Some(handle)) => Ok(Acquired::Held(handle)),
                        Ok(None) => Err(self.not_acquired()),
                        Err(error) => Err(Failure::library(error)),
                    };
                }
                () = &mut notice, if announce => {
                    announce = false;
                    crate::say(format_args!(
                        "waiting for {self} ({} backend)…",
                        self.provider.backend()
                    ));
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
            _ => format!("{self} is busy (--timeout 0: one try, no wait)"),
        };
        Failure::new(crate::status::TIMED_OUT, message)
    }
}

/// `lock "NAME"`, `semaphore "NAME" (max N)`, `read lock "NAME"`, `write lock "NAME"`; the
/// name is quoted and escaped, so it stays on one line whatever it contains.
impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = &self.name;
        match self.kind {
            Kind::Lock => write!(f, "lock {name:?}"),
            Kind::Semaphore(max) => write!(f, "semaphore {name:?} (max {max})"),
            Kind::Read => write!(f, "read lock {name:?}"),
            Kind::Write => write!(f, "write lock {name:?}"),
        }
    }
}

//! How local primitives wait: on the shared wait loop, woken by inotify events on the lock
//! file, with re-checks for what inotify cannot see.

use std::path::Path;
use std::time::Duration;

use super::{watch, Progress};
use crate::backend::kit;
use crate::backend::kit::wait::{Attempt, Contender, Schedule};
use crate::{Result, Wait};

/// Re-checks after an event that did not lead to an acquire (see the [backend docs](super)).
const SETTLE_RECHECKS: [Duration; 4] = [
    Duration::from_millis(1),
    Duration::from_millis(4),
    Duration::from_millis(16),
    Duration::from_millis(64),
];
/// The re-check when nothing is heard, for file systems whose changes inotify cannot see.
const QUIET_RECHECK: Duration = Duration::from_secs(1);
/// The re-check when another process is in the middle of a change of a few system calls.
const BRIEF_RECHECK: Duration = Duration::from_millis(1);

/// How every local primitive waits: run `attempt`, and while it reports "busy", sleep until
/// the lock file reports a change (or a re-check is due, or the wait ends), then run it again
/// (the shared wait loop). `Ok(false)` when the wait ran out.
pub(super) async fn wait_for(
    path: &Path,
    wait: Wait,
    attempt: impl FnMut() -> Result<Progress> + Send,
) -> Result<bool> {
    let mut contender = FileWaits { path, attempt };
    Ok(kit::wait::wait_for(
        &mut contender,
        wait.deadline(),
        &mut Rechecks::default(),
        // Lock files have no server to come back.
        &mut kit::fault::Outage::none(),
    )
    .await?
    .is_some())
}

/// A wait on a lock file, as the shared wait loop runs it.
struct FileWaits<'a, A> {
    path: &'a Path,
    attempt: A,
}

impl<A: FnMut() -> Result<Progress> + Send> Contender for FileWaits<'_, A> {
    type Held = ();
    type Wake = watch::Registration;

    async fn attempt(&mut self) -> Result<Attempt<()>> {
        Ok(match (self.attempt)()? {
            Progress::Complete => Attempt::Taken(()),
            Progress::Busy => Attempt::Busy { retry_within: None },
            // Jittered, so that two attempts that keep meeting part.
            Progress::Briefly => Attempt::Busy {
                retry_within: Some(kit::wait::jitter(BRIEF_RECHECK)),
            },
        })
    }

    async fn subscribe(
        &mut self,
        _deadline: Option<tokio::time::Instant>,
    ) -> Option<watch::Registration> {
        match watch::register(self.path) {
            Ok(registration) => Some(registration),
            Err(error) => {
                tracing::warn!(
                    path = %self.path.display(), %error,
                    "cannot watch lock file; falling back to re-checking"
                );
                None
            }
        }
    }
}

/// When a waiter re-checks its lock file: quietly once a second while watching, on the settle
/// schedule after a change (a release can show as several events), and on the settle schedule
/// as a capped backoff without inotify.
#[derive(Default)]
struct Rechecks {
    settle: usize,
}

impl Schedule for Rechecks {
    fn pause(&mut self, watching: bool) -> Duration {
        let (pause, next) = match (watching, self.settle) {
            (true, 0) => (QUIET_RECHECK, 0),
            (true, n) if n < SETTLE_RECHECKS.len() => (SETTLE_RECHECKS[n - 1], n + 1),
            (true, n) => (SETTLE_RECHECKS[n - 1], 0),
            (false, n) => (SETTLE_RECHECKS[n.min(SETTLE_RECHECKS.len() - 1)], n + 1),
        };
        self.settle = next;
        pause
    }

    fn woken(&mut self) {
        self.settle = 1;
    }
}

//! The guard a successful acquire returns: drop releases, `release().await` reports errors,
//! [`LossSignal`] tells when a hold was lost, and a fencing token orders successive holders.

use std::future::Future;

use tokio::sync::watch;

use crate::{Error, Result, Wait};

pub use crate::backend::kit::runtime::flush_releases;

/// A held lock, read or write hold, or semaphore ticket.
///
/// # Dropping a handle
/// Dropping the handle releases what it holds, promptly, wherever it is dropped: inside an
/// async runtime, on a plain thread, while a runtime shuts down, or right before the program
/// returns from `main`. Drop never blocks and never panics: a backend that must talk to a
/// server releases on tollgate's own runtime, which lives as long as the process. While such
/// a release is under way, this process's next acquire of the same name waits for it rather
/// than finding the name busy. A normal exit (returning from `main`, `std::process::exit`)
/// waits for the releases still under way, for at most a few seconds; [`flush_releases`]
/// waits for them explicitly. Only a process that dies without running that code (killed,
/// aborted) abandons its holds, which the backend then frees by itself: the kernel closes
/// the lock file or the connection, or the lease expires.
///
/// A server connection is served by the runtime it was opened on (so that the hot path
/// needs no hop between threads). A runtime that shuts down takes its connections with it,
/// and their holds end on the server; but while a runtime is alive and never polled (a
/// current-thread runtime left idle between two `block_on` calls), whatever needs one of its
/// connections, a release included, waits until it runs again or is dropped. Connections the
/// [blocking API](crate::blocking) uses are served by tollgate's own runtime.
///
/// Use [`Handle::release`] to wait for the release and see its errors.
pub trait Handle: Send + Sync + std::fmt::Debug + 'static {
    /// Releases the hold and waits until the backend has confirmed it.
    ///
    /// Releasing consumes the handle, so a handle can never release twice, and a stale
    /// handle can never release a newer holder's hold. If the hold had already been lost,
    /// this returns `Ok(())`: there is nothing left to give back.
    ///
    /// # Cancel safety
    /// Dropping the returned future still releases the hold (as dropping the handle would).
    fn release(self) -> impl Future<Output = Result<()>> + Send
    where
        Self: Sized;

    /// The name of the primitive this hold is on.
    fn name(&self) -> &str;

    /// The signal that fires if this hold is lost while held.
    fn loss_signal(&self) -> LossSignal;

    /// A number that strictly increases across successive holders of the same name, to pass
    /// along to storage that must reject writes from a stale holder. `None` where the
    /// backend cannot give one (for example semaphore tickets).
    fn fencing_token(&self) -> Option<u64>;

    /// Whether this backend can detect that a hold was lost. When it cannot,
    /// [`Handle::lost`] never completes.
    fn can_detect_loss(&self) -> bool {
        self.loss_signal().can_detect()
    }

    /// Completes when the hold is lost (connection killed, lease not renewed, session
    /// expired); never completes on normal release or when loss cannot be detected.
    ///
    /// The future does not borrow the handle, so it can be raced against the protected work
    /// with `tokio::select!`.
    fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        let signal = self.loss_signal();
        async move { signal.lost().await }
    }
}

/// The handle of an upgradeable read lock: it can become a write lock without releasing.
pub trait UpgradeableHandle: Handle {
    /// Upgrades to a write hold, waiting as `wait` says; `Ok(false)` when the wait ran out.
    /// An upgrade happens at most once: upgrading again is an [`Error::InvalidArgument`].
    ///
    /// # Cancel safety
    /// Cancel-safe: if the future is dropped, the handle keeps its upgradeable read hold and
    /// nothing else.
    fn upgrade_wait(&mut self, wait: Wait) -> impl Future<Output = Result<bool>> + Send;

    /// Whether the handle now holds the write lock.
    fn is_upgraded(&self) -> bool;

    /// Upgrades to a write hold, waiting as long as it takes.
    ///
    /// # Cancel safety
    /// Cancel-safe, as [`UpgradeableHandle::upgrade_wait`].
    fn upgrade(&mut self) -> impl Future<Output = Result<()>> + Send {
        async move {
            match self.upgrade_wait(Wait::Forever).await? {
                true => Ok(()),
                false => Err(Error::invalid("an upgrade without timeout gave up")),
            }
        }
    }

    /// Upgrades to a write hold, failing with [`Error::Timeout`] when `timeout` runs out.
    ///
    /// # Cancel safety
    /// Cancel-safe, as [`UpgradeableHandle::upgrade_wait`].
    fn upgrade_timeout(
        &mut self,
        timeout: std::time::Duration,
    ) -> impl Future<Output = Result<()>> + Send {
        async move {
            match self.upgrade_wait(Wait::AtMost(timeout)).await? {
                true => Ok(()),
                false => Err(Error::Timeout {
                    name: self.name().to_owned(),
                    timeout,
                }),
            }
        }
    }

    /// Tries once to upgrade; `Ok(false)` while readers are present.
    ///
    /// # Cancel safety
    /// Cancel-safe, as [`UpgradeableHandle::upgrade_wait`].
    fn try_upgrade(&mut self) -> impl Future<Output = Result<bool>> + Send {
        self.upgrade_wait(Wait::AtMost(std::time::Duration::ZERO))
    }
}

/// Tells whether a hold was lost. Cheap to clone; every clone sees the same loss.
#[derive(Clone, Debug)]
pub struct LossSignal {
    receiver: Option<watch::Receiver<bool>>,
}

/// The backend's side of a [`LossSignal`]: it reports the loss.
#[derive(Debug)]
pub struct LossNotifier {
    sender: watch::Sender<bool>,
}

impl LossSignal {
    /// A signal for a backend that cannot detect loss: it never fires.
    pub fn undetectable() -> Self {
        LossSignal { receiver: None }
    }

    /// A detectable signal and the notifier that fires it.
    pub fn detectable() -> (LossNotifier, LossSignal) {
        let (sender, receiver) = watch::channel(false);
        (
            LossNotifier { sender },
            LossSignal {
                receiver: Some(receiver),
            },
        )
    }

    /// Whether this backend can detect loss at all.
    pub fn can_detect(&self) -> bool {
        self.receiver.is_some()
    }

    /// Whether the loss has been detected.
    pub fn is_lost(&self) -> bool {
        self.receiver
            .as_ref()
            .is_some_and(|receiver| *receiver.borrow())
    }

    /// Completes when the hold is lost; pends forever otherwise (including after a normal
    /// release, and when loss cannot be detected).
    pub async fn lost(&self) {
        if let Some(receiver) = &self.receiver {
            let mut receiver = receiver.clone();
            if receiver.wait_for(|lost| *lost).await.is_ok() {
                return;
            }
        }
        std::future::pending::<()>().await
    }
}

impl LossNotifier {
    /// Whether the loss has been reported.
    pub fn is_lost(&self) -> bool {
        *self.sender.borrow()
    }

    /// Reports the loss to every clone of the signal.
    pub fn notify_lost(&self) {
        self.sender.send_replace(true);
    }
}

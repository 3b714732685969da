//! Composite acquire: several primitives taken all-or-nothing.
//!
//! ```no_run
//! # async fn example() -> tollgate::Result<()> {
//! use tollgate::composite::Composite;
//! use tollgate::{Acquire, AnyProvider, LockProvider};
//!
//! let provider = AnyProvider::from_url("local:")?;
//! let transfer = Composite::new(vec![provider.lock("account-17")?, provider.lock("account-4")?])?;
//! let _both = transfer.acquire().await?; // holds both locks, or neither
//! # Ok(())
//! # }
//! ```
//!
//! A composite takes its parts one after another **in the order of their names**, whatever
//! order they were given in, so two composites over overlapping names cannot deadlock each
//! other: whichever gets the first shared name first goes on, the other waits behind it
//! without holding anything the first still needs. If a part cannot be had in time, the parts
//! already taken are released (and the release awaited) before the acquire returns.
//!
//! Parts of different kinds (a lock and a semaphore, or primitives of two backends) go in one
//! composite as [`AnyAcquire`](crate::any::AnyAcquire) values.

use std::fmt;

use futures_util::future::select_all;

use crate::{Acquire, Error, Handle, LossSignal, Result, Wait};

/// Several primitives acquired together: the handle holds all of them, or the acquire holds
/// none.
#[derive(Clone, Debug)]
pub struct Composite<A> {
    /// In the order they are taken (sorted by name).
    parts: Vec<A>,
    name: String,
}

impl<A: Acquire> Composite<A> {
    /// A composite of `parts`. They are taken in the order of their names.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when `parts` is empty, or when two parts have the same name:
    /// a process that holds a lock and waits for it again would wait for itself.
    pub fn new(parts: impl IntoIterator<Item = A>) -> Result<Self> {
        let mut parts: Vec<A> = parts.into_iter().collect();
        if parts.is_empty() {
            return Err(Error::invalid("a composite needs at least one part"));
        }
        parts.sort_by(|a, b| a.name().cmp(b.name()));
        if let Some(pair) = parts
            .windows(2)
            .find(|pair| pair[0].name() == pair[1].name())
        {
            return Err(Error::invalid(format!(
                "{:?} appears twice in one composite",
                pair[0].name()
            )));
        }
        let name = parts
            .iter()
            .map(|part| format!("{:?}", part.name()))
            .collect::<Vec<_>>()
            .join(" + ");
        Ok(Composite { parts, name })
    }

    /// The parts, in the order they are taken (sorted by name).
    pub fn parts(&self) -> &[A] {
        &self.parts
    }
}

impl<A: Acquire> Acquire for Composite<A> {
    type Handle = CompositeHandle<A::Handle>;

    /// The parts' names, quoted and joined with ` + `, in the order they are taken.
    fn name(&self) -> &str {
        &self.name
    }

    /// Takes every part in turn within one shared deadline: `Ok(Some(_))` once all are held,
    /// `Ok(None)` when the time ran out on one of them; then, and on an error, the parts
    /// already taken are released before this returns. [`Wait::NO_WAIT`] makes one real
    /// attempt on each part (stopping at the first that is busy).
    ///
    /// # Cancel safety
    /// Cancel-safe: the parts are cancel-safe, and dropping the future drops the handles
    /// already taken, which releases them.
    async fn acquire_wait(&self, wait: Wait) -> Result<Option<Self::Handle>> {
        let deadline = wait.deadline();
        let mut held = Vec::with_capacity(self.parts.len());
        for part in &self.parts {
            let part_wait = match deadline {
                // Forever, or a timeout too long to add to now.
                None => Wait::Forever,
                Some(deadline) => {
                    Wait::AtMost(deadline.saturating_duration_since(tokio::time::Instant::now()))
                }
            };
            let outcome = part.acquire_wait(part_wait).await;
            match outcome {
                Ok(Some(handle)) => held.push(handle),
                other => {
                    // Release errors are logged there; the caller needs this outcome.
                    let _ = release_all(held).await;
                    return other.map(|_| None);
                }
            }
        }
        Ok(Some(CompositeHandle::new(self.name.clone(), held)))
    }
}

/// Releases handles in the reverse order of taking them, and returns the first error.
async fn release_all<H: Handle>(handles: Vec<H>) -> Result<()> {
    let mut first_error = None;
    // Dropping this future part-way drops the rest of the handles, which releases them.
    for handle in handles.into_iter().rev() {
        let name = handle.name().to_owned();
        if let Err(error) = handle.release().await {
            tracing::debug!(%error, name, "releasing a composite's part failed");
            first_error.get_or_insert(error);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// The hold of a [`Composite`]: every part's handle. Dropping it releases them all.
#[must_use = "dropping the handle releases it"]
pub struct CompositeHandle<H: Handle> {
    name: String,
    handles: Vec<H>,
    loss: LossSignal,
    /// Watches the parts' loss signals; stopped with the handle.
    watcher: Option<tokio::task::JoinHandle<()>>,
}

impl<H: Handle> CompositeHandle<H> {
    fn new(name: String, handles: Vec<H>) -> Self {
        let signals: Vec<LossSignal> = handles
            .iter()
            .map(Handle::loss_signal)
            .filter(LossSignal::can_detect)
            .collect();
        let runtime = tokio::runtime::Handle::try_current();
        let (loss, watcher) = match (signals.is_empty(), runtime) {
            (false, Ok(runtime)) => {
                let (notifier, signal) = LossSignal::detectable();
                let watcher = runtime.spawn(async move {
                    let waits = signals
                        .into_iter()
                        .map(|signal| Box::pin(async move { signal.lost().await }));
                    select_all(waits).await;
                    notifier.notify_lost();
                });
                (signal, Some(watcher))
            }
            _ => (LossSignal::undetectable(), None),
        };
        CompositeHandle {
            name,
            handles,
            loss,
            watcher,
        }
    }

    /// Each part's handle, in the order they were taken (sorted by name): for their fencing
    /// tokens, or to see which part was lost.
    pub fn handles(&self) -> &[H] {
        &self.handles
    }
}

impl<H: Handle> fmt::Debug for CompositeHandle<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompositeHandle")
            .field("handles", &self.handles)
            .finish()
    }
}

impl<H: Handle> Drop for CompositeHandle<H> {
    fn drop(&mut self) {
        if let Some(watcher) = self.watcher.take() {
            watcher.abort();
        }
        // The parts' handles release themselves as they drop.
    }
}

impl<H: Handle> Handle for CompositeHandle<H> {
    /// Releases every part, in the reverse order of taking them, and returns the first error
    /// (the other parts are still released).
    async fn release(mut self) -> Result<()> {
        let handles = std::mem::take(&mut self.handles);
        drop(self);
        release_all(handles).await
    }

    fn name(&self) -> &str {
        &self.name
    }

    /// Fires when any part's hold is lost. It can detect loss when at least one part can.
    fn loss_signal(&self) -> LossSignal {
        self.loss.clone()
    }

    /// A composite has no token of its own; each part's is in
    /// [`handles`](CompositeHandle::handles).
    fn fencing_token(&self) -> Option<u64> {
        None
    }
}

//! The hold shell: what every server backend's handle does with its hold at the end of its
//! life, written once. The hold is given back exactly once, either by `release().await` or
//! by dropping it; a dropped `release()` future still releases; a drop releases on
//! tollgate's own runtime (so wherever it happens: inside a runtime, on a plain thread,
//! during a runtime's shutdown); and while a release is under way, this process's next
//! acquire of the same name waits for it (the backend's [`Release::note`]).

use std::future::Future;

use super::completion::run_to_completion;
use super::runtime::spawn_release;
use crate::Result;

/// A backend's hold: how it is given back on the server.
pub(crate) trait Release: Send + Sync + 'static {
    /// What marks the release as under way in this process until it is dropped (see
    /// [`ReleaseNotes::note`](super::notes::ReleaseNotes::note)).
    type Note: Send + 'static;

    /// The primitive's name, for the log line of a failed release after drop.
    fn name(&self) -> &str;

    /// Notes the release as under way.
    fn note(&self) -> Self::Note;

    /// Gives the hold back. The future runs to completion once started, on tollgate's
    /// runtime if its caller goes away, so it may be polled from any runtime.
    fn release(self) -> impl Future<Output = Result<()>> + Send + 'static;
}

/// A hold that is given back exactly once: by [`Shell::release`] or on drop.
#[derive(Debug)]
pub(crate) struct Shell<H: Release> {
    // `None` only inside `release`, which consumes the shell.
    hold: Option<H>,
}

impl<H: Release> Shell<H> {
    pub(crate) fn new(hold: H) -> Self {
        Shell { hold: Some(hold) }
    }

    pub(crate) fn get(&self) -> &H {
        self.hold
            .as_ref()
            .expect("a shell holds until it is released")
    }

    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn get_mut(&mut self) -> &mut H {
        self.hold
            .as_mut()
            .expect("a shell holds until it is released")
    }

    /// Gives the hold back and waits for the backend to confirm. Dropping the future
    /// part-way still releases: the rest runs on tollgate's runtime.
    pub(crate) async fn release(mut self) -> Result<()> {
        let hold = self
            .hold
            .take()
            .expect("a shell holds until it is released");
        let note = hold.note();
        run_to_completion(
            async move {
                let _note = note;
                hold.release().await
            },
            |_| async {},
        )
        .await
    }
}

impl<H: Release> Drop for Shell<H> {
    fn drop(&mut self) {
        let Some(hold) = self.hold.take() else {
            return;
        };
        let note = hold.note();
        spawn_release(async move {
            let _note = note;
            let name = hold.name().to_owned();
            if let Err(error) = hold.release().await {
                tracing::warn!(%error, lock_name = %name, "release after drop failed");
            }
        });
    }
}

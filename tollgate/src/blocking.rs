//! The blocking (sync) API, for code without an async runtime.
//!
//! Wrap any primitive in [`Blocking`]: `Blocking::new(provider.lock("x")?).acquire()?`.
//! The async work runs on tollgate's own runtime, which starts on first use and lives as long
//! as the process, and uses only connections that runtime drives. The calling thread waits
//! on a plain channel, so a call from inside an async runtime cannot deadlock: on a worker of
//! a multi-threaded runtime the worker's other tasks move to another thread while it waits
//! (`block_in_place`); on a current-thread runtime the call works too, but stalls every other
//! task of that runtime while it waits, as any blocking call would. Prefer the async API
//! inside a runtime.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::kit::runtime::{background, on_background};
use crate::{Acquire, Error, Handle, LossSignal, Result, UpgradeableHandle, Wait};

/// Starts `future` on tollgate's runtime and waits for its output on this thread.
fn run<T: Send + 'static>(future: impl Future<Output = Result<T>> + Send + 'static) -> Result<T> {
    let receiver = start(runtime()?, future);
    wait(move || receiver.recv()).map_err(|_| stopped())?
}

/// tollgate's runtime, where this thread may wait for it.
fn runtime() -> Result<&'static tokio::runtime::Handle> {
    if on_background() {
        // The runtime's only worker would wait for itself.
        return Err(Error::invalid(
            "the blocking API cannot be used on tollgate's own runtime",
        ));
    }
    background()
}

fn start<T: Send + 'static>(
    runtime: &tokio::runtime::Handle,
    future: impl Future<Output = T> + Send + 'static,
) -> std::sync::mpsc::Receiver<T> {
    let (sender, receiver) = std::sync::mpsc::sync_channel(1);
    runtime.spawn(async move {
        let _ = sender.send(future.await);
    });
    receiver
}

/// Blocks this thread in `wait`. On a worker of a multi-threaded runtime, the worker's other
/// tasks move to another thread meanwhile (`block_in_place`), so the runtime, and any
/// connection it drives, keeps going.
fn wait<T>(wait: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) if runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(wait)
        }
        _ => wait(),
    }
}

fn stopped() -> Error {
    Error::Backend {
        backend: "tollgate",
        message: "tollgate's runtime stopped before the operation finished".into(),
        source: None,
    }
}

/// Waits at most `limit` for the releases of dropped handles (and dropped `release()`
/// futures) that are still under way; whether they all finished. See
/// [`flush_releases`](crate::flush_releases).
pub fn flush_releases(limit: Duration) -> bool {
    crate::backend::kit::runtime::flush_releases_blocking(limit)
}

/// A blocking view of any primitive (a lock, a semaphore, or a side of a reader-writer lock).
#[derive(Debug)]
pub struct Blocking<A> {
    inner: Arc<A>,
}

impl<A> Clone for Blocking<A> {
    fn clone(&self) -> Self {
        Blocking {
            inner: self.inner.clone(),
        }
    }
}

impl<A: Acquire + 'static> Blocking<A> {
    /// Wraps a primitive.
    pub fn new(primitive: A) -> Self {
        Blocking {
            inner: Arc::new(primitive),
        }
    }

    /// The wrapped primitive.
    pub fn get_ref(&self) -> &A {
        &self.inner
    }

    /// Acquires, waiting as `wait` says; `Ok(None)` when the wait ran out.
    pub fn acquire_wait(&self, wait: Wait) -> Result<Option<BlockingHandle<A::Handle>>> {
        let inner = self.inner.clone();
        let handle = run(async move { inner.acquire_wait(wait).await })?;
        Ok(handle.map(|handle| BlockingHandle {
            handle: Some(handle),
        }))
    }

    /// Acquires, blocking as long as it takes.
    pub fn acquire(&self) -> Result<BlockingHandle<A::Handle>> {
        let inner = self.inner.clone();
        let handle = run(async move { inner.acquire().await })?;
        Ok(BlockingHandle {
            handle: Some(handle),
        })
    }

    /// Acquires, failing with [`Error::Timeout`] when `timeout` runs out.
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<BlockingHandle<A::Handle>> {
        let inner = self.inner.clone();
        let handle = run(async move { inner.acquire_timeout(timeout).await })?;
        Ok(BlockingHandle {
            handle: Some(handle),
        })
    }

    /// One attempt without waiting; `Ok(None)` when busy.
    pub fn try_acquire(&self) -> Result<Option<BlockingHandle<A::Handle>>> {
        self.acquire_wait(Wait::NO_WAIT)
    }

    /// Waits up to `timeout`; `Ok(None)` when still busy then.
    pub fn try_acquire_timeout(
        &self,
        timeout: Duration,
    ) -> Result<Option<BlockingHandle<A::Handle>>> {
        self.acquire_wait(Wait::AtMost(timeout))
    }
}

/// A held primitive from the blocking API. Dropping it releases.
#[derive(Debug)]
#[must_use = "dropping the handle releases it"]
pub struct BlockingHandle<H: Handle> {
    // `None` only while an upgrade has it on the runtime.
    handle: Option<H>,
}

impl<H: Handle> BlockingHandle<H> {
    fn handle(&self) -> &H {
        self.handle
            .as_ref()
            .expect("the handle is only taken during an upgrade call")
    }

    /// Releases and waits for the backend to confirm.
    pub fn release(mut self) -> Result<()> {
        match self.handle.take() {
            Some(handle) => run(handle.release()),
            None => Ok(()),
        }
    }

    /// The fencing token, where the backend gives one.
    pub fn fencing_token(&self) -> Option<u64> {
        self.handle().fencing_token()
    }

    /// The loss signal; [`LossSignal::is_lost`] polls it without blocking.
    pub fn loss_signal(&self) -> LossSignal {
        self.handle().loss_signal()
    }

    /// The async handle inside.
    pub fn into_inner(mut self) -> H {
        self.handle
            .take()
            .expect("the handle is only taken during an upgrade call")
    }
}

impl<H: UpgradeableHandle> BlockingHandle<H> {
    /// Upgrades to a write hold, waiting as `wait` says; `Ok(false)` when the wait ran out.
    pub fn upgrade_wait(&mut self, wait: Wait) -> Result<bool> {
        let runtime = runtime()?;
        let mut handle = self
            .handle
            .take()
            .expect("the handle is only taken during an upgrade call");
        let receiver = start(runtime, async move {
            let result = handle.upgrade_wait(wait).await;
            (handle, result)
        });
        let (handle, result) = self::wait(move || receiver.recv()).map_err(|_| stopped())?;
        self.handle = Some(handle);
        result
    }

    /// Upgrades to a write hold, blocking as long as it takes.
    pub fn upgrade(&mut self) -> Result<()> {
        self.upgrade_wait(Wait::Forever).map(|_| ())
    }

    /// Whether the handle holds the write lock.
    pub fn is_upgraded(&self) -> bool {
        self.handle().is_upgraded()
    }
}

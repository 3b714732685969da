//! The blocking (sync) API, for code without an async runtime.
//!
//! Wrap any primitive in [`Blocking`]: `Blocking::new(provider.lock("x")?).acquire()?`.
//! The async work runs on one small tokio runtime that tollgate starts on first use and keeps
//! for the life of the process (backends with connections keep them there). The calling
//! thread waits on a plain channel, so calling from inside an async runtime cannot deadlock;
//! it only stalls that runtime's thread as any blocking call would, so prefer the async API
//! there.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::{Acquire, Error, Handle, LossSignal, Result, UpgradeableHandle, Wait};

fn runtime() -> Result<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<std::io::Result<tokio::runtime::Runtime>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("tollgate-blocking")
                .enable_all()
                .build()
        })
        .as_ref()
        .map_err(|error| Error::Backend {
            backend: "tollgate",
            message: format!("cannot start the blocking API's runtime: {error}"),
            source: None,
        })
}

/// Runs `future` to completion on tollgate's runtime and waits for it on this thread.
fn run<T: Send + 'static>(future: impl Future<Output = Result<T>> + Send + 'static) -> Result<T> {
    let (sender, receiver) = std::sync::mpsc::sync_channel(1);
    runtime()?.spawn(async move {
        let _ = sender.send(future.await);
    });
    receiver.recv().map_err(|_| Error::Backend {
        backend: "tollgate",
        message: "the blocking API's runtime stopped before the operation finished".into(),
        source: None,
    })?
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
        let mut handle = self
            .handle
            .take()
            .expect("the handle is only taken during an upgrade call");
        let (sender, receiver) = std::sync::mpsc::sync_channel(1);
        runtime()?.spawn(async move {
            let result = handle.upgrade_wait(wait).await;
            let _ = sender.send((handle, result));
        });
        let (handle, result) = receiver.recv().map_err(|_| Error::Backend {
            backend: "tollgate",
            message: "the blocking API's runtime stopped during an upgrade".into(),
            source: None,
        })?;
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

//! Backends chosen at run time: type-erased primitives, handles and providers, and
//! [`AnyProvider::from_url`].
//!
//! Every `Any*` type implements the same traits as the concrete ones, so code written
//! against [`LockProvider`] and [`Acquire`] works with either. The price is one allocation
//! per acquire for the boxed future and handle.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::{
    Acquire, Error, Handle, Lock, LockProvider, LossSignal, ReadWriteLock, ReadWriteLockProvider,
    Result, Semaphore, SemaphoreProvider, UpgradeableHandle, UpgradeableReadWriteLock,
    UpgradeableReadWriteLockProvider, Wait,
};

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

trait ErasedHandle: Send + Sync + 'static {
    fn release(self: Box<Self>) -> BoxFuture<'static, Result<()>>;
    fn name(&self) -> &str;
    fn loss_signal(&self) -> LossSignal;
    fn fencing_token(&self) -> Option<u64>;
}

impl<H: Handle> ErasedHandle for H {
    fn release(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        Box::pin(Handle::release(*self))
    }
    fn name(&self) -> &str {
        Handle::name(self)
    }
    fn loss_signal(&self) -> LossSignal {
        Handle::loss_signal(self)
    }
    fn fencing_token(&self) -> Option<u64> {
        Handle::fencing_token(self)
    }
}

trait ErasedUpgradeableHandle: ErasedHandle {
    fn upgrade_wait(&mut self, wait: Wait) -> BoxFuture<'_, Result<bool>>;
    fn is_upgraded(&self) -> bool;
}

impl<H: UpgradeableHandle> ErasedUpgradeableHandle for H {
    fn upgrade_wait(&mut self, wait: Wait) -> BoxFuture<'_, Result<bool>> {
        Box::pin(UpgradeableHandle::upgrade_wait(self, wait))
    }
    fn is_upgraded(&self) -> bool {
        UpgradeableHandle::is_upgraded(self)
    }
}

/// A handle of any backend.
#[must_use = "dropping the handle releases it"]
pub struct AnyHandle(Box<dyn ErasedHandle>);

impl AnyHandle {
    /// Erases a concrete handle's type.
    pub fn new(handle: impl Handle) -> Self {
        AnyHandle(Box::new(handle))
    }
}

impl std::fmt::Debug for AnyHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnyHandle")
            .field("fencing_token", &self.0.fencing_token())
            .finish()
    }
}

impl Handle for AnyHandle {
    fn release(self) -> impl Future<Output = Result<()>> + Send {
        self.0.release()
    }
    fn name(&self) -> &str {
        self.0.name()
    }
    fn loss_signal(&self) -> LossSignal {
        self.0.loss_signal()
    }
    fn fencing_token(&self) -> Option<u64> {
        self.0.fencing_token()
    }
}

/// An upgradeable read handle of any backend.
#[must_use = "dropping the handle releases it"]
pub struct AnyUpgradeableHandle(Box<dyn ErasedUpgradeableHandle>);

impl AnyUpgradeableHandle {
    /// Erases a concrete handle's type.
    pub fn new(handle: impl UpgradeableHandle) -> Self {
        AnyUpgradeableHandle(Box::new(handle))
    }
}

impl std::fmt::Debug for AnyUpgradeableHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnyUpgradeableHandle")
            .field("upgraded", &self.0.is_upgraded())
            .finish()
    }
}

impl Handle for AnyUpgradeableHandle {
    fn release(self) -> impl Future<Output = Result<()>> + Send {
        let upcast: Box<dyn ErasedHandle> = self.0;
        upcast.release()
    }
    fn name(&self) -> &str {
        self.0.name()
    }
    fn loss_signal(&self) -> LossSignal {
        self.0.loss_signal()
    }
    fn fencing_token(&self) -> Option<u64> {
        self.0.fencing_token()
    }
}

impl UpgradeableHandle for AnyUpgradeableHandle {
    fn upgrade_wait(&mut self, wait: Wait) -> impl Future<Output = Result<bool>> + Send {
        self.0.upgrade_wait(wait)
    }
    fn is_upgraded(&self) -> bool {
        self.0.is_upgraded()
    }
}

trait ErasedAcquire<H>: Send + Sync {
    fn name(&self) -> &str;
    fn acquire_wait(&self, wait: Wait) -> BoxFuture<'_, Result<Option<H>>>;
}

impl<A: Acquire> ErasedAcquire<AnyHandle> for A {
    fn name(&self) -> &str {
        Acquire::name(self)
    }
    fn acquire_wait(&self, wait: Wait) -> BoxFuture<'_, Result<Option<AnyHandle>>> {
        Box::pin(async move { Ok(Acquire::acquire_wait(self, wait).await?.map(AnyHandle::new)) })
    }
}

impl<A: Acquire<Handle: UpgradeableHandle>> ErasedAcquire<AnyUpgradeableHandle> for A {
    fn name(&self) -> &str {
        Acquire::name(self)
    }
    fn acquire_wait(&self, wait: Wait) -> BoxFuture<'_, Result<Option<AnyUpgradeableHandle>>> {
        Box::pin(async move {
            Ok(Acquire::acquire_wait(self, wait)
                .await?
                .map(AnyUpgradeableHandle::new))
        })
    }
}

macro_rules! erased_acquire {
    ($(#[$doc:meta])* $name:ident, $handle:ty) => {
        $(#[$doc])*
        #[derive(Clone)]
        pub struct $name(Arc<dyn ErasedAcquire<$handle>>);

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_tuple(stringify!($name)).field(&self.0.name()).finish()
            }
        }

        impl Acquire for $name {
            type Handle = $handle;
            fn name(&self) -> &str {
                self.0.name()
            }
            /// # Cancel safety
            /// Cancel-safe, as the backend's own `acquire_wait`.
            fn acquire_wait(&self, wait: Wait) -> impl Future<Output = Result<Option<$handle>>> + Send {
                self.0.acquire_wait(wait)
            }
        }
    };
}

erased_acquire!(
    /// A lock (or a reader-writer lock's write side) of any backend.
    AnyLock,
    AnyHandle
);
erased_acquire!(
    /// The read side of a reader-writer lock of any backend.
    AnyReader,
    AnyHandle
);
erased_acquire!(
    /// The upgradeable-read side of a reader-writer lock of any backend.
    AnyUpgradeableReader,
    AnyUpgradeableHandle
);

erased_acquire!(
    /// Anything that can be acquired (a lock, a semaphore, either side of a reader-writer
    /// lock), of any backend: for a [`Composite`](crate::composite::Composite) of mixed parts.
    AnyAcquire,
    AnyHandle
);

impl AnyAcquire {
    /// Erases a primitive's type.
    pub fn new(primitive: impl Acquire + 'static) -> Self {
        AnyAcquire(Arc::new(primitive))
    }
}

impl Lock for AnyLock {}

impl AnyLock {
    /// Erases a concrete lock's type.
    pub fn new(lock: impl Lock + 'static) -> Self {
        AnyLock(Arc::new(lock))
    }
}

/// A semaphore of any backend.
#[derive(Clone, Debug)]
pub struct AnySemaphore {
    inner: AnyReader,
    max_count: u32,
}

impl AnySemaphore {
    /// Erases a concrete semaphore's type.
    pub fn new(semaphore: impl Semaphore + 'static) -> Self {
        let max_count = semaphore.max_count();
        AnySemaphore {
            inner: AnyReader(Arc::new(semaphore)),
            max_count,
        }
    }
}

impl Acquire for AnySemaphore {
    type Handle = AnyHandle;
    fn name(&self) -> &str {
        Acquire::name(&self.inner)
    }
    /// # Cancel safety
    /// Cancel-safe, as the backend's own `acquire_wait`.
    fn acquire_wait(&self, wait: Wait) -> impl Future<Output = Result<Option<AnyHandle>>> + Send {
        Acquire::acquire_wait(&self.inner, wait)
    }
}

impl Semaphore for AnySemaphore {
    fn max_count(&self) -> u32 {
        self.max_count
    }
}

/// A reader-writer lock of any backend; upgradeable where the backend offers it.
#[derive(Clone, Debug)]
pub struct AnyReadWriteLock {
    name: Arc<str>,
    backend: &'static str,
    reader: AnyReader,
    writer: AnyLock,
    upgradeable: Option<AnyUpgradeableReader>,
}

impl AnyReadWriteLock {
    /// Erases a concrete reader-writer lock's type.
    pub fn new<L>(lock: L, backend: &'static str) -> Self
    where
        L: ReadWriteLock<Read: 'static, Write: 'static>,
    {
        AnyReadWriteLock {
            name: lock.name().into(),
            backend,
            reader: AnyReader(Arc::new(lock.reader())),
            writer: AnyLock::new(lock.writer()),
            upgradeable: None,
        }
    }

    /// Erases a concrete upgradeable reader-writer lock's type.
    pub fn upgradeable<L>(lock: L, backend: &'static str) -> Self
    where
        L: UpgradeableReadWriteLock<Read: 'static, Write: 'static, Upgradeable: 'static>,
    {
        let upgradeable = AnyUpgradeableReader(Arc::new(lock.upgradeable_reader()));
        AnyReadWriteLock {
            upgradeable: Some(upgradeable),
            ..Self::new(lock, backend)
        }
    }

    /// Whether the backend offers upgradeable reads on this lock.
    pub fn is_upgradeable(&self) -> bool {
        self.upgradeable.is_some()
    }
}

impl ReadWriteLock for AnyReadWriteLock {
    type Read = AnyReader;
    type Write = AnyLock;
    fn name(&self) -> &str {
        &self.name
    }
    fn reader(&self) -> AnyReader {
        self.reader.clone()
    }
    fn writer(&self) -> AnyLock {
        self.writer.clone()
    }
}

struct Unsupported {
    name: Arc<str>,
    backend: &'static str,
}

impl Acquire for Unsupported {
    type Handle = AnyUpgradeableHandle;
    fn name(&self) -> &str {
        &self.name
    }
    async fn acquire_wait(&self, _wait: Wait) -> Result<Option<AnyUpgradeableHandle>> {
        Err(Error::Unsupported {
            backend: self.backend,
            what: "upgradeable read locks",
        })
    }
}

impl UpgradeableReadWriteLock for AnyReadWriteLock {
    type Upgradeable = AnyUpgradeableReader;
    /// The upgradeable side; on a backend without upgradeable reads, acquiring it fails with
    /// [`Error::Unsupported`].
    fn upgradeable_reader(&self) -> AnyUpgradeableReader {
        self.upgradeable.clone().unwrap_or_else(|| {
            AnyUpgradeableReader(Arc::new(Unsupported {
                name: self.name.clone(),
                backend: self.backend,
            }))
        })
    }
}

/// What a backend's provider implements to be used as an [`AnyProvider`].
pub trait DynProvider: Send + Sync + 'static {
    /// The backend's short name, e.g. `"local"`.
    fn backend(&self) -> &'static str;
    /// The lock called `name`.
    fn lock(&self, name: &str) -> Result<AnyLock>;
    /// The semaphore called `name` with `max_count` tickets.
    fn semaphore(&self, name: &str, max_count: u32) -> Result<AnySemaphore>;
    /// The reader-writer lock called `name`.
    fn read_write_lock(&self, name: &str) -> Result<AnyReadWriteLock>;
}

/// A provider of any backend, chosen at run time. Cheap to clone.
#[derive(Clone)]
pub struct AnyProvider(Arc<dyn DynProvider>);

impl std::fmt::Debug for AnyProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("AnyProvider")
            .field(&self.0.backend())
            .finish()
    }
}

impl AnyProvider {
    /// Wraps a backend's provider.
    pub fn new(provider: impl DynProvider) -> Self {
        AnyProvider(Arc::new(provider))
    }

    /// The backend's short name, e.g. `"local"`.
    pub fn backend(&self) -> &'static str {
        self.0.backend()
    }

    /// A provider from a URL:
    ///
    /// | URL | backend |
    /// |---|---|
    /// | `local:` | same machine, per-user runtime directory |
    /// | `file:///some/dir` | same machine, lock files in `/some/dir` |
    /// | `redis://host:6379/0`, `rediss://…` | Redis; `redis://h1,h2,h3` for RedLock over several |
    ///
    /// Options go in the query string (`file:///dir?group=true`). A scheme whose backend was
    /// not compiled in, or any malformed URL, is an [`Error::InvalidArgument`].
    pub fn from_url(url: &str) -> Result<Self> {
        let scheme = url
            .split_once(':')
            .map(|(scheme, _)| scheme.to_ascii_lowercase());
        match scheme.as_deref() {
            #[cfg(feature = "local")]
            Some("local" | "file") => Ok(AnyProvider::new(crate::local::LocalProvider::from_url(
                url,
            )?)),
            #[cfg(feature = "postgres")]
            Some("postgres" | "postgresql") => Ok(AnyProvider::new(
                crate::backend::postgres::PostgresProvider::from_url(url)?,
            )),
            #[cfg(feature = "mysql")]
            Some("mysql" | "mariadb") => Ok(AnyProvider::new(
                crate::backend::mysql::MySqlProvider::from_url(url)?,
            )),
            #[cfg(feature = "redis")]
            Some("redis" | "rediss") => Ok(AnyProvider::new(
                crate::backend::redis::RedisProvider::from_url(url)?,
            )),
            #[cfg(not(feature = "local"))]
            Some(scheme @ ("local" | "file")) => Err(Error::invalid(format!(
                "{scheme}: URLs need tollgate's `local` feature, which this build lacks"
            ))),
            Some(scheme) if !scheme.is_empty() => Err(Error::invalid(format!(
                "{url:?}: no tollgate backend for scheme {scheme:?}"
            ))),
            _ => Err(Error::invalid(format!(
                "{url:?} is not a backend URL (e.g. local: or file:///dir)"
            ))),
        }
    }
}

impl LockProvider for AnyProvider {
    type Lock = AnyLock;
    fn lock(&self, name: &str) -> Result<AnyLock> {
        self.0.lock(name)
    }
}

impl SemaphoreProvider for AnyProvider {
    type Semaphore = AnySemaphore;
    fn semaphore(&self, name: &str, max_count: u32) -> Result<AnySemaphore> {
        crate::check_max_count(name, max_count)?;
        self.0.semaphore(name, max_count)
    }
}

impl ReadWriteLockProvider for AnyProvider {
    type ReadWriteLock = AnyReadWriteLock;
    fn read_write_lock(&self, name: &str) -> Result<AnyReadWriteLock> {
        self.0.read_write_lock(name)
    }
}

impl UpgradeableReadWriteLockProvider for AnyProvider {
    type UpgradeableReadWriteLock = AnyReadWriteLock;
    /// Fails with [`Error::Unsupported`] on backends without upgradeable reads.
    fn upgradeable_read_write_lock(&self, name: &str) -> Result<AnyReadWriteLock> {
        let lock = self.0.read_write_lock(name)?;
        if !lock.is_upgradeable() {
            return Err(Error::Unsupported {
                backend: self.0.backend(),
                what: "upgradeable read locks",
            });
        }
        Ok(lock)
    }
}

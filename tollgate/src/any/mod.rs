//! Backends chosen at run time: type-erased primitives, handles and providers, and
//! [`AnyProvider::from_url`].
//!
//! Every `Any*` type implements the same traits as the concrete ones, so code written
//! against [`LockProvider`] and [`Acquire`] works with either. The price is one allocation
//! per acquire for the boxed future and handle.
//!
//! The erasure lives here alone: [`AnyProvider`] adapts any provider of the typed traits,
//! told at construction which of them it has, so a backend implements only the typed traits.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

mod url;

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

// One object-safe trait per capability, each implemented once for every typed provider that
// has it: the erasure lives here, and a backend only implements the typed traits.

trait ErasedLocks: Send + Sync + 'static {
    fn erased_lock(&self, name: &str) -> Result<AnyLock>;
}

impl<P: LockProvider<Lock: 'static> + 'static> ErasedLocks for P {
    fn erased_lock(&self, name: &str) -> Result<AnyLock> {
        Ok(AnyLock::new(LockProvider::lock(self, name)?))
    }
}

trait ErasedSemaphores: Send + Sync + 'static {
    fn erased_semaphore(&self, name: &str, max_count: u32) -> Result<AnySemaphore>;
}

impl<P: SemaphoreProvider<Semaphore: 'static> + 'static> ErasedSemaphores for P {
    fn erased_semaphore(&self, name: &str, max_count: u32) -> Result<AnySemaphore> {
        Ok(AnySemaphore::new(SemaphoreProvider::semaphore(
            self, name, max_count,
        )?))
    }
}

trait ErasedReadWriteLocks: Send + Sync + 'static {
    fn erased_read_write_lock(&self, name: &str, backend: &'static str)
        -> Result<AnyReadWriteLock>;
}

impl<P> ErasedReadWriteLocks for P
where
    P: ReadWriteLockProvider<ReadWriteLock: ReadWriteLock<Read: 'static, Write: 'static>> + 'static,
{
    fn erased_read_write_lock(
        &self,
        name: &str,
        backend: &'static str,
    ) -> Result<AnyReadWriteLock> {
        let lock = ReadWriteLockProvider::read_write_lock(self, name)?;
        Ok(AnyReadWriteLock::new(lock, backend))
    }
}

/// A provider's reader-writer locks erased with their upgradeable side: a newtype, because the
/// blanket impl above already covers every reader-writer lock provider.
struct Upgradeable<P>(Arc<P>);

impl<P, L> ErasedReadWriteLocks for Upgradeable<P>
where
    P: UpgradeableReadWriteLockProvider<UpgradeableReadWriteLock = L> + 'static,
    L: UpgradeableReadWriteLock<Read: 'static, Write: 'static, Upgradeable: 'static>,
{
    fn erased_read_write_lock(
        &self,
        name: &str,
        backend: &'static str,
    ) -> Result<AnyReadWriteLock> {
        let lock = self.0.upgradeable_read_write_lock(name)?;
        Ok(AnyReadWriteLock::upgradeable(lock, backend))
    }
}

/// What an [`AnyProvider`] can create: locks always, the rest where the backend has them.
struct Capabilities {
    backend: &'static str,
    locks: Arc<dyn ErasedLocks>,
    semaphores: Option<Arc<dyn ErasedSemaphores>>,
    read_write_locks: Option<Arc<dyn ErasedReadWriteLocks>>,
}

impl Capabilities {
    fn unsupported(&self, what: &'static str) -> Error {
        Error::Unsupported {
            backend: self.backend,
            what,
        }
    }
}

/// A provider of any backend, chosen at run time. Cheap to clone.
///
/// [`from_url`](AnyProvider::from_url) picks the backend from a URL; [`new`](AnyProvider::new)
/// and [`builder`](AnyProvider::builder) erase a typed provider built in code.
#[derive(Clone)]
pub struct AnyProvider(Arc<Capabilities>);

impl std::fmt::Debug for AnyProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("AnyProvider").field(&self.0.backend).finish()
    }
}

impl AnyProvider {
    /// Erases a typed provider with the whole contract: locks, semaphores and upgradeable
    /// reader-writer locks. `backend` is the short name [`backend`](AnyProvider::backend)
    /// reports and [`Error::Unsupported`] carries. For a provider with less, use
    /// [`builder`](AnyProvider::builder).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(feature = "local")]
    /// # fn main() -> tollgate::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// use tollgate::{AnyProvider, LockProvider};
    ///
    /// let local = tollgate::local::LocalProvider::with_directory(dir.path())?;
    /// let provider = AnyProvider::new("local", local);
    /// let lock = provider.lock("reports")?;
    /// # Ok(())
    /// # }
    /// # #[cfg(not(feature = "local"))]
    /// # fn main() {}
    /// ```
    pub fn new<P>(backend: &'static str, provider: P) -> Self
    where
        P: LockProvider<Lock: 'static>
            + SemaphoreProvider<Semaphore: 'static>
            + UpgradeableReadWriteLockProvider<
                UpgradeableReadWriteLock: UpgradeableReadWriteLock<
                    Read: 'static,
                    Write: 'static,
                    Upgradeable: 'static,
                >,
            > + 'static,
    {
        Self::builder(backend, provider)
            .semaphores()
            .upgradeable_read_write_locks()
            .build()
    }

    /// Starts erasing a typed provider that offers locks, and whatever else the builder's
    /// methods add; what is not added fails with [`Error::Unsupported`].
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(feature = "local")]
    /// # fn main() -> tollgate::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// use tollgate::{AnyProvider, Error, ReadWriteLockProvider};
    ///
    /// let local = tollgate::local::LocalProvider::with_directory(dir.path())?;
    /// let provider = AnyProvider::builder("local", local).semaphores().build();
    /// assert!(matches!(
    ///     provider.read_write_lock("reports"),
    ///     Err(Error::Unsupported { .. })
    /// ));
    /// # Ok(())
    /// # }
    /// # #[cfg(not(feature = "local"))]
    /// # fn main() {}
    /// ```
    pub fn builder<P>(backend: &'static str, provider: P) -> AnyProviderBuilder<P>
    where
        P: LockProvider<Lock: 'static> + 'static,
    {
        let provider = Arc::new(provider);
        AnyProviderBuilder {
            capabilities: Capabilities {
                backend,
                locks: provider.clone(),
                semaphores: None,
                read_write_locks: None,
            },
            provider,
        }
    }

    /// The backend's short name, e.g. `"local"`.
    pub fn backend(&self) -> &'static str {
        self.0.backend
    }
}

/// Erases a typed provider into an [`AnyProvider`], adding what it offers beyond locks; made
/// by [`AnyProvider::builder`].
#[must_use = "an AnyProviderBuilder does nothing until `build`"]
pub struct AnyProviderBuilder<P> {
    capabilities: Capabilities,
    provider: Arc<P>,
}

impl<P> std::fmt::Debug for AnyProviderBuilder<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnyProviderBuilder")
            .field("backend", &self.capabilities.backend)
            .field("semaphores", &self.capabilities.semaphores.is_some())
            .field(
                "read_write_locks",
                &self.capabilities.read_write_locks.is_some(),
            )
            .finish()
    }
}

impl<P: 'static> AnyProviderBuilder<P> {
    /// Offers the provider's semaphores.
    pub fn semaphores(mut self) -> Self
    where
        P: SemaphoreProvider<Semaphore: 'static>,
    {
        self.capabilities.semaphores = Some(self.provider.clone());
        self
    }

    /// Offers the provider's reader-writer locks, without upgradeable reads.
    pub fn read_write_locks(mut self) -> Self
    where
        P: ReadWriteLockProvider<ReadWriteLock: ReadWriteLock<Read: 'static, Write: 'static>>,
    {
        self.capabilities.read_write_locks = Some(self.provider.clone());
        self
    }

    /// Offers the provider's reader-writer locks with upgradeable reads.
    pub fn upgradeable_read_write_locks(mut self) -> Self
    where
        P: UpgradeableReadWriteLockProvider<
            UpgradeableReadWriteLock: UpgradeableReadWriteLock<
                Read: 'static,
                Write: 'static,
                Upgradeable: 'static,
            >,
        >,
    {
        let upgradeable = Upgradeable(self.provider.clone());
        self.capabilities.read_write_locks = Some(Arc::new(upgradeable));
        self
    }

    /// The erased provider.
    pub fn build(self) -> AnyProvider {
        AnyProvider(Arc::new(self.capabilities))
    }
}

impl LockProvider for AnyProvider {
    type Lock = AnyLock;
    fn lock(&self, name: &str) -> Result<AnyLock> {
        self.0.locks.erased_lock(name)
    }
}

impl SemaphoreProvider for AnyProvider {
    type Semaphore = AnySemaphore;
    /// Fails with [`Error::Unsupported`] on backends without semaphores.
    fn semaphore(&self, name: &str, max_count: u32) -> Result<AnySemaphore> {
        crate::check_max_count(name, max_count)?;
        let semaphores = self.0.semaphores.as_ref();
        let semaphores = semaphores.ok_or_else(|| self.0.unsupported("semaphores"))?;
        semaphores.erased_semaphore(name, max_count)
    }
}

impl ReadWriteLockProvider for AnyProvider {
    type ReadWriteLock = AnyReadWriteLock;
    /// Fails with [`Error::Unsupported`] on backends without reader-writer locks.
    fn read_write_lock(&self, name: &str) -> Result<AnyReadWriteLock> {
        let locks = self.0.read_write_locks.as_ref();
        let locks = locks.ok_or_else(|| self.0.unsupported("reader-writer locks"))?;
        locks.erased_read_write_lock(name, self.0.backend)
    }
}

impl UpgradeableReadWriteLockProvider for AnyProvider {
    type UpgradeableReadWriteLock = AnyReadWriteLock;
    /// Fails with [`Error::Unsupported`] on backends without upgradeable reads.
    fn upgradeable_read_write_lock(&self, name: &str) -> Result<AnyReadWriteLock> {
        let lock = self.read_write_lock(name)?;
        if !lock.is_upgradeable() {
            return Err(self.0.unsupported("upgradeable read locks"));
        }
        Ok(lock)
    }
}

#[cfg(all(test, feature = "local"))]
mod tests {
    use super::*;
    use crate::local::LocalProvider;

    fn unsupported_what<T: std::fmt::Debug>(result: Result<T>) -> &'static str {
        match result {
            Err(Error::Unsupported { backend, what }) => {
                assert_eq!(backend, "test");
                what
            }
            other => panic!("expected Unsupported, got {other:?}"),
        }
    }

    #[test]
    fn capabilities_are_what_the_builder_added() {
        let dir = tempfile::tempdir().unwrap();
        let local = || LocalProvider::with_directory(dir.path()).unwrap();

        let locks_only = AnyProvider::builder("test", local()).build();
        assert!(locks_only.lock("a").is_ok());
        assert_eq!(unsupported_what(locks_only.semaphore("a", 2)), "semaphores");
        let what = unsupported_what(locks_only.read_write_lock("a"));
        assert_eq!(what, "reader-writer locks");
        let what = unsupported_what(locks_only.upgradeable_read_write_lock("a"));
        assert_eq!(what, "reader-writer locks");

        let plain = AnyProvider::builder("test", local())
            .semaphores()
            .read_write_locks()
            .build();
        assert_eq!(plain.semaphore("a", 2).unwrap().max_count(), 2);
        assert!(!plain.read_write_lock("a").unwrap().is_upgradeable());
        let what = unsupported_what(plain.upgradeable_read_write_lock("a"));
        assert_eq!(what, "upgradeable read locks");

        let full = AnyProvider::new("test", local());
        assert_eq!(full.backend(), "test");
        assert!(full
            .upgradeable_read_write_lock("a")
            .unwrap()
            .is_upgradeable());
        assert!(full
            .semaphore("a", 0)
            .is_err_and(|e| e.is_invalid_argument()));
    }
}

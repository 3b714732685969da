//! Reader-writer locks on one lock file: readers share a byte range, a writer closes a gate
//! range first (so new readers wait behind it) and then takes the data range; an upgradeable
//! reader holds the upgrade range, which only one reader at a time can have.

use std::fs::File;
use std::io;

use super::*;

/// A same-machine reader-writer lock with writer preference and upgradeable reads.
#[derive(Clone, Debug)]
pub struct LocalReadWriteLock {
    named: Arc<Named>,
}

/// The read side of a [`LocalReadWriteLock`].
#[derive(Clone, Debug)]
pub struct LocalReader {
    named: Arc<Named>,
}

/// The write side of a [`LocalReadWriteLock`].
#[derive(Clone, Debug)]
pub struct LocalWriter {
    named: Arc<Named>,
}

/// The upgradeable-read side of a [`LocalReadWriteLock`].
#[derive(Clone, Debug)]
pub struct LocalUpgradeableReader {
    named: Arc<Named>,
}

impl ReadWriteLock for LocalReadWriteLock {
    type Read = LocalReader;
    type Write = LocalWriter;

    fn name(&self) -> &str {
        &self.named.name
    }

    fn reader(&self) -> LocalReader {
        LocalReader {
            named: self.named.clone(),
        }
    }

    fn writer(&self) -> LocalWriter {
        LocalWriter {
            named: self.named.clone(),
        }
    }
}

impl UpgradeableReadWriteLock for LocalReadWriteLock {
    type Upgradeable = LocalUpgradeableReader;

    fn upgradeable_reader(&self) -> LocalUpgradeableReader {
        LocalUpgradeableReader {
            named: self.named.clone(),
        }
    }
}

/// A reader enters when no writer holds or waits for the gate, by sharing the data range.
fn read_step(file: &File) -> io::Result<bool> {
    if sys::range_conflicts(file, Range::Shared, GATE, 1)? {
        return Ok(false);
    }
    sys::try_range(file, Range::Shared, DATA, 1)
}

impl Acquire for LocalReader {
    type Handle = LocalHandle;

    fn name(&self) -> &str {
        &self.named.name
    }

    /// Takes a read hold, waiting as `wait` says. While a writer waits, new readers wait too.
    ///
    /// # Cancel safety
    /// Cancel-safe: a dropped future closes its file, so nothing stays held.
    async fn acquire_wait(&self, wait: Wait) -> Result<Option<LocalHandle>> {
        let taken = self
            .named
            .acquire(wait, |file, (): &mut ()| Ok(read_step(file)?.into()))
            .await?;
        Ok(taken.map(|(held, ())| LocalHandle {
            named: self.named.clone(),
            held,
            fencing: None,
        }))
    }
}

/// How far a writer has got; it keeps what it has while it waits for the rest.
#[derive(Default)]
struct WriterProgress {
    upgrade: bool,
    gate: bool,
}

impl Acquire for LocalWriter {
    type Handle = LocalHandle;

    fn name(&self) -> &str {
        &self.named.name
    }

    /// Takes the write hold, waiting as `wait` says. From the moment it starts waiting for
    /// readers to leave, new readers wait behind it.
    ///
    /// # Cancel safety
    /// Cancel-safe: a dropped future closes its file, which also lets waiting readers in.
    async fn acquire_wait(&self, wait: Wait) -> Result<Option<LocalHandle>> {
        let taken = self
            .named
            .acquire(wait, |file, progress: &mut WriterProgress| {
                if !progress.upgrade {
                    progress.upgrade = sys::try_range(file, Range::Exclusive, UPGRADE, 1)?;
                    if !progress.upgrade {
                        return Ok(Progress::Busy);
                    }
                }
                if !progress.gate {
                    progress.gate = sys::try_range(file, Range::Exclusive, GATE, 1)?;
                    if !progress.gate {
                        return Ok(Progress::Busy);
                    }
                }
                Ok(sys::try_range(file, Range::Exclusive, DATA, 1)?.into())
            })
            .await?;
        let Some((held, _)) = taken else {
            return Ok(None);
        };
        Ok(Some(LocalHandle {
            named: self.named.clone(),
            held,
            fencing: Some(OnceLock::new()),
        }))
    }
}

impl Lock for LocalWriter {}

impl Acquire for LocalUpgradeableReader {
    type Handle = LocalUpgradeableHandle;

    fn name(&self) -> &str {
        &self.named.name
    }

    /// Takes an upgradeable read hold, waiting as `wait` says.
    ///
    /// # Cancel safety
    /// Cancel-safe: a dropped future closes its file, so nothing stays held.
    async fn acquire_wait(&self, wait: Wait) -> Result<Option<LocalUpgradeableHandle>> {
        let taken = self
            .named
            .acquire(wait, |file, has_upgrade: &mut bool| {
                if !*has_upgrade {
                    *has_upgrade = sys::try_range(file, Range::Exclusive, UPGRADE, 1)?;
                    if !*has_upgrade {
                        return Ok(Progress::Busy);
                    }
                }
                Ok(read_step(file)?.into())
            })
            .await?;
        Ok(taken.map(|(held, _)| LocalUpgradeableHandle {
            handle: LocalHandle {
                named: self.named.clone(),
                held,
                fencing: None,
            },
            upgraded: false,
        }))
    }
}

/// An upgradeable read hold; [`UpgradeableHandle::upgrade`] turns it into the write hold.
#[derive(Debug)]
#[must_use = "dropping the handle releases it"]
pub struct LocalUpgradeableHandle {
    /// The hold; it gets a fencing token by the upgrade.
    handle: LocalHandle,
    upgraded: bool,
}

impl Handle for LocalUpgradeableHandle {
    async fn release(self) -> Result<()> {
        self.handle.release().await
    }

    fn name(&self) -> &str {
        self.handle.name()
    }

    fn loss_signal(&self) -> LossSignal {
        self.handle.loss_signal()
    }

    /// Once upgraded: the write hold's token.
    fn fencing_token(&self) -> Option<u64> {
        self.handle.fencing_token()
    }
}

/// Gives the gate back if an upgrade is abandoned (timeout or dropped future).
struct GateGuard<'a> {
    file: &'a File,
    armed: bool,
}

impl Drop for GateGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = sys::try_range(self.file, Range::Unlock, GATE, 1);
            // Readers turned away by the gate wait for an event on the file.
            let _ = sys::poke(self.file);
        }
    }
}

impl UpgradeableHandle for LocalUpgradeableHandle {
    /// Upgrades to the write hold: closes the gate to new readers, then waits for the
    /// readers inside to leave.
    ///
    /// # Cancel safety
    /// Cancel-safe: a dropped future reopens the gate; the upgradeable read hold stays.
    async fn upgrade_wait(&mut self, wait: Wait) -> Result<bool> {
        if self.upgraded {
            return Err(Error::invalid(format!(
                "{:?} is already upgraded",
                self.handle.named.name
            )));
        }
        let handle = &mut self.handle;
        let file = &handle.held.file;
        let path = &handle.named.path;
        let lock_error = |error: io::Error| io_error("cannot lock", path, error);
        // No one else can hold the gate: writers take the upgrade range first, and we have it.
        if !sys::try_range(file, Range::Exclusive, GATE, 1).map_err(lock_error)? {
            return Err(Error::backend(
                BACKEND,
                format!("gate of {} held unexpectedly", path.display()),
                io::Error::other("gate busy"),
            ));
        }
        let mut guard = GateGuard { file, armed: true };
        // Converts our shared data range to exclusive once the other readers are gone.
        let upgraded = wait_for(path, wait, || {
            sys::try_range(file, Range::Exclusive, DATA, 1)
                .map(Progress::from)
                .map_err(lock_error)
        })
        .await?;
        if !upgraded {
            return Ok(false);
        }
        guard.armed = false;
        drop(guard);
        handle.fencing = Some(OnceLock::new());
        self.upgraded = true;
        Ok(true)
    }

    fn is_upgraded(&self) -> bool {
        self.upgraded
    }
}

impl ReadWriteLockProvider for LocalProvider {
    type ReadWriteLock = LocalReadWriteLock;

    fn read_write_lock(&self, name: &str) -> Result<LocalReadWriteLock> {
        Ok(LocalReadWriteLock {
            named: self.primitive(Kind::ReadWrite, name),
        })
    }
}

impl UpgradeableReadWriteLockProvider for LocalProvider {
    type UpgradeableReadWriteLock = LocalReadWriteLock;

    fn upgradeable_read_write_lock(&self, name: &str) -> Result<LocalReadWriteLock> {
        self.read_write_lock(name)
    }
}

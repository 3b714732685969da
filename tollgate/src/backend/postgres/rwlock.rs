//! Reader-writer locks: shared and exclusive advisory locks on one key, and upgrades that
//! wait in the server on the upgradeable reader's own session.

use std::sync::Arc;

use super::connection::Mode;
use super::wait::wait_in_server;
use super::{AdvisoryKey, Hold, Named, PostgresReader, PostgresUpgradeableReader, PostgresWriter};
use crate::backend::kit::completion::{run_interruptible, Caller};
use crate::backend::kit::hold::Shell;
use crate::{
    Error, Handle, LossSignal, ReadWriteLock, Result, UpgradeableHandle, UpgradeableReadWriteLock,
    Wait,
};

/// The second key of a reader-writer lock: writers and upgradeable readers hold it
/// exclusively, so at most one of them is ever on its way to the write lock.
pub(super) fn upgrade_key(key: AdvisoryKey) -> AdvisoryKey {
    const SALT: u64 = 0x746f_6c6c_6761_7465; // "tollgate"
    match key {
        AdvisoryKey::Single(key) => AdvisoryKey::Single((key as u64 ^ SALT) as i64),
        AdvisoryKey::Pair(high, low) => {
            AdvisoryKey::Pair(high ^ (SALT >> 32) as i32, low ^ SALT as i32)
        }
    }
}

/// A PostgreSQL reader-writer lock (shared/exclusive advisory locks, writer-preferring),
/// with upgradeable reads.
#[derive(Clone, Debug)]
pub struct PostgresReadWriteLock {
    pub(super) named: Arc<Named>,
}

impl ReadWriteLock for PostgresReadWriteLock {
    type Read = PostgresReader;
    type Write = PostgresWriter;

    fn name(&self) -> &str {
        &self.named.name
    }

    fn reader(&self) -> PostgresReader {
        PostgresReader {
            named: self.named.clone(),
        }
    }

    fn writer(&self) -> PostgresWriter {
        PostgresWriter {
            named: self.named.clone(),
        }
    }
}

impl UpgradeableReadWriteLock for PostgresReadWriteLock {
    type Upgradeable = PostgresUpgradeableReader;

    fn upgradeable_reader(&self) -> PostgresUpgradeableReader {
        PostgresUpgradeableReader {
            named: self.named.clone(),
        }
    }
}

/// An upgradeable read hold on PostgreSQL; [`UpgradeableHandle::upgrade`] takes the
/// exclusive lock on the same session without letting go of the read hold.
#[derive(Debug)]
#[must_use = "dropping the handle releases it"]
pub struct PostgresUpgradeableHandle {
    hold: Shell<Hold>,
    upgraded: bool,
}

impl PostgresUpgradeableHandle {
    pub(super) fn new(hold: Shell<Hold>) -> Self {
        PostgresUpgradeableHandle {
            hold,
            upgraded: false,
        }
    }
}

impl Handle for PostgresUpgradeableHandle {
    async fn release(self) -> Result<()> {
        self.hold.release().await
    }

    fn name(&self) -> &str {
        &self.hold.get().named.name
    }

    fn loss_signal(&self) -> LossSignal {
        self.hold.get().loss.clone()
    }

    fn fencing_token(&self) -> Option<u64> {
        None
    }
}

impl UpgradeableHandle for PostgresUpgradeableHandle {
    /// Takes the exclusive lock in the server, waiting as `wait` says for the readers to
    /// leave; new readers queue behind the upgrade.
    ///
    /// # Cancel safety
    /// Cancel-safe: a dropped future cancels the server-side wait, gives back an exclusive
    /// lock granted in the race, and keeps the upgradeable read hold.
    async fn upgrade_wait(&mut self, wait: Wait) -> Result<bool> {
        let hold = self.hold.get();
        if self.upgraded {
            return Err(Error::invalid(format!(
                "{:?} is already upgraded",
                hold.named.name
            )));
        }
        let deadline = wait.deadline();
        let key = hold.named.key;
        let serial = hold.operation.clone().lock_owned().await;
        let connection = hold.held.session().clone();
        let name = hold.named.name.clone();
        let operation = hold.operation.clone();
        let (pool, note_pool) = (hold.named.pool.clone(), hold.named.pool.clone());
        let given_back = connection.clone();
        let waiting = move |mut caller: Caller| async move {
            let steps = [(key, Mode::Exclusive)];
            // A caller that goes mid-wait has the wait cancelled and a racing grant given back.
            let outcome =
                wait_in_server(&pool, &connection, &name, &steps, deadline, &mut caller).await;
            drop(serial);
            outcome
        };
        let granted = run_interruptible(
            waiting,
            move || note_pool.note(vec![key]),
            // Only a wait that ended without the caller gets here, and it gave back what it
            // was granted; should a grant come through anyway, it goes back too.
            move |outcome| async move {
                if let Ok(true) = outcome {
                    let _serial = operation.lock_owned().await;
                    let _ = given_back.unlock_if_held(key, Mode::Exclusive).await;
                }
            },
        )
        .await?;
        if !granted {
            return Ok(false);
        }
        self.hold.get_mut().steps.push((key, Mode::Exclusive));
        self.upgraded = true;
        Ok(true)
    }

    fn is_upgraded(&self) -> bool {
        self.upgraded
    }
}

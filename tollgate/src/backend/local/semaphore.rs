//! Same-machine semaphores: one byte-range lock per ticket in one file.

use std::sync::Arc;

use super::{sys, Kind, LocalHandle, LocalProvider, Named, Range};
use crate::{check_max_count, Acquire, Result, Semaphore, SemaphoreProvider, Wait};

/// A same-machine counting semaphore: ticket `i` is an exclusive lock on byte `i` of the
/// semaphore's file. Processes that name the same semaphore with different max counts share
/// the tickets they have in common, and each keeps to its own ceiling.
#[derive(Clone, Debug)]
pub struct LocalSemaphore {
    named: Arc<Named>,
    max_count: u32,
}

impl Acquire for LocalSemaphore {
    type Handle = LocalHandle;

    fn name(&self) -> &str {
        &self.named.name
    }

    /// Takes a ticket, waiting as `wait` says.
    ///
    /// # Cancel safety
    /// Cancel-safe: a dropped future closes its file, so no ticket stays taken.
    async fn acquire_wait(&self, wait: Wait) -> Result<Option<LocalHandle>> {
        let max_count = u64::from(self.max_count);
        let taken = self
            .named
            .acquire(wait, |file, (): &mut ()| {
                // Tickets are taken lowest-first, so a scan stops after the held ones.
                for ticket in 0..max_count {
                    if sys::try_range(file, Range::Exclusive, ticket, 1)? {
                        return Ok(true);
                    }
                }
                Ok(false)
            })
            .await?;
        Ok(taken.map(|(held, ())| LocalHandle {
            named: self.named.clone(),
            held,
            fencing: None,
        }))
    }
}

impl Semaphore for LocalSemaphore {
    fn max_count(&self) -> u32 {
        self.max_count
    }
}

impl SemaphoreProvider for LocalProvider {
    type Semaphore = LocalSemaphore;

    fn semaphore(&self, name: &str, max_count: u32) -> Result<LocalSemaphore> {
        check_max_count(name, max_count)?;
        Ok(LocalSemaphore {
            named: self.primitive(Kind::Semaphore, name),
            max_count,
        })
    }
}

//! Same-machine semaphores: one byte-range lock per ticket in one file, and the max count
//! the tickets are held under stored in the file.
//!
//! Ticket `i` is an exclusive lock on byte `i`. Every holder also holds a shared lock on the
//! pin byte (beyond every ticket) for as long as it holds, so the max count stored at the
//! start of the file can only change while nobody holds a ticket. An attempt pins (shared),
//! reads the stored max count and, when it is its own, takes a ticket. When it is not, the
//! attempt turns its pin exclusive, which works only when nobody else pins, and stores its own;
//! if others pin, a held ticket means the stored max count is in use (the attempt is
//! refused), and no held ticket means the others are attempts in flight (it tries again a
//! moment later). No step ever blocks.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::{sys, Kind, LocalHandle, LocalProvider, Named, Progress, Range, StepError};
use crate::primitive::max_count_mismatch;
use crate::{check_max_count, Acquire, Result, Semaphore, SemaphoreProvider, Wait};

/// The byte whose shared locks pin the stored max count: past every ticket (a max count is
/// a `u32`).
const PIN: u64 = 1 << 40;

/// A same-machine counting semaphore (see the [backend docs](crate::local)). Every user of a name must
/// give the same max count while tickets are held (in any process); a different one is an
/// [`Error::InvalidArgument`](crate::Error::InvalidArgument). Once every ticket is back, the
/// name is free for any max count.
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

    /// Takes a ticket, waiting as `wait` says. An
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) when tickets are held under
    /// another max count.
    ///
    /// # Cancel safety
    /// Cancel-safe: a dropped future closes its file, so no ticket stays taken.
    async fn acquire_wait(&self, wait: Wait) -> Result<Option<LocalHandle>> {
        let taken = self
            .named
            .acquire(wait, |file, (): &mut ()| {
                take_ticket(file, &self.named.name, self.max_count)
            })
            .await?;
        Ok(taken.map(|(held, ())| LocalHandle {
            named: self.named.clone(),
            held,
            fencing: None,
        }))
    }
}

/// One non-blocking attempt: pin the max count, then take the lowest free ticket; the pin is
/// let go again when every ticket is taken.
fn take_ticket(file: &File, name: &str, max_count: u32) -> Result<Progress, StepError> {
    match pin(file, max_count)? {
        Pin::Held => {}
        Pin::Briefly => return Ok(Progress::Briefly),
        Pin::Other(stored) => {
            return Err(StepError::Refused(max_count_mismatch(
                name, stored, max_count,
            )))
        }
    }
    // Tickets are taken lowest-first, so a scan stops after the held ones.
    for ticket in 0..u64::from(max_count) {
        if sys::try_range(file, Range::Exclusive, ticket, 1)? {
            return Ok(Progress::Complete);
        }
    }
    sys::try_range(file, Range::Unlock, PIN, 1)?;
    Ok(Progress::Busy)
}

/// What pinning the stored max count found.
enum Pin {
    /// Pinned (shared), and the stored max count is ours.
    Held,
    /// Not pinned: another attempt is storing its max count or is in flight.
    Briefly,
    /// Tickets are held under this other max count; not pinned.
    Other(u32),
}

fn pin(file: &File, max_count: u32) -> std::io::Result<Pin> {
    if !sys::try_range(file, Range::Shared, PIN, 1)? {
        // Someone holds it exclusively: storing, for the span of a write.
        return Ok(Pin::Briefly);
    }
    let stored = stored_max_count(file)?;
    if stored == Some(max_count) {
        return Ok(Pin::Held);
    }
    if sys::try_range(file, Range::Exclusive, PIN, 1)? {
        // Nobody else pins, so nobody holds a ticket: the max count is ours to store.
        file.write_all_at(&max_count.to_le_bytes(), 0)?;
        // Turning an exclusive lock shared never conflicts.
        sys::try_range(file, Range::Shared, PIN, 1)?;
        return Ok(Pin::Held);
    }
    sys::try_range(file, Range::Unlock, PIN, 1)?;
    // Every ticket holder stored or matched the stored max count under its pin.
    match stored {
        Some(stored) if sys::range_conflicts(file, Range::Shared, 0, PIN)? => {
            Ok(Pin::Other(stored))
        }
        _ => Ok(Pin::Briefly),
    }
}

/// The max count stored at the start of the file, if one was ever stored.
fn stored_max_count(file: &File) -> std::io::Result<Option<u32>> {
    let mut bytes = [0u8; 4];
    let read = file.read_at(&mut bytes, 0)?;
    Ok((read == bytes.len()).then(|| u32::from_le_bytes(bytes)))
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

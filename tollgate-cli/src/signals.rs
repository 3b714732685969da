//! SIGINT, SIGTERM and SIGHUP: while tollgate waits for a lock they end it (as they would
//! without handlers, after the wait is abandoned); while the command runs they are passed on
//! to it, except where it already got them.
//!
//! A Ctrl-C typed on the terminal reaches the whole foreground process group, the command
//! included when it shares tollgate's (see [`crate::command`]), so passing it on would deliver
//! it twice (and make a program that treats a second
//! Ctrl-C as "force quit" do so). Tokio's signal streams say only that a signal came, so a
//! second action on the same signal registry looks at who sent it before tokio's runs.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, Ordering};
use std::task::Poll;

use libc::c_int;
use tokio::signal::unix::{signal, Signal, SignalKind};

/// The signals tollgate handles, in the order of the counters below.
const HANDLED: [c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Deliveries of each handled signal not yet taken by [`Signals::recv`].
static RECEIVED: [AtomicU32; 3] = [AtomicU32::new(0), AtomicU32::new(0), AtomicU32::new(0)];
/// Those of them that the command did not get by itself.
static TO_FORWARD: [AtomicU32; 3] = [AtomicU32::new(0), AtomicU32::new(0), AtomicU32::new(0)];
/// The running command's process id, or 0.
static COMMAND_PID: AtomicI32 = AtomicI32::new(0);
/// Whether the running command shares tollgate's process group (and so gets a Ctrl-C from
/// the terminal by itself).
static COMMAND_SHARES_GROUP: AtomicBool = AtomicBool::new(true);

/// Runs inside the signal handler: only atomic operations, which are async-signal-safe.
fn classify(index: usize, info: &libc::siginfo_t) {
    // The terminal sends SIGINT to the foreground process group, which the command may share.
    let from_terminal = HANDLED[index] == libc::SIGINT
        && info.si_code == libc::SI_KERNEL
        && COMMAND_SHARES_GROUP.load(Ordering::SeqCst);
    // si_pid is meaningful for signals sent by a process (si_code <= 0).
    // SAFETY: reading a field of the siginfo the kernel filled in.
    let sender = if info.si_code <= 0 {
        unsafe { info.si_pid() }
    } else {
        0
    };
    let from_command = sender != 0 && sender == COMMAND_PID.load(Ordering::SeqCst);
    RECEIVED[index].fetch_add(1, Ordering::SeqCst);
    if !from_terminal && !from_command {
        TO_FORWARD[index].fetch_add(1, Ordering::SeqCst);
    }
}

/// A signal tollgate received.
#[derive(Clone, Copy, Debug)]
pub struct Received {
    /// The signal number.
    pub number: c_int,
    /// Whether the running command should be sent it too: false when the command already got
    /// it (a Ctrl-C from the terminal) or sent it itself.
    pub forward: bool,
}

/// Tollgate's handlers for SIGINT, SIGTERM and SIGHUP. Create it once per process.
pub struct Signals {
    streams: Vec<(usize, Signal)>,
}

impl Signals {
    /// Installs the handlers; from now on these signals no longer end the process by
    /// themselves.
    ///
    /// A signal that tollgate's parent set to be ignored (`nohup` does so for SIGHUP) stays
    /// ignored, for tollgate and for the command, which inherits that.
    pub fn install() -> io::Result<Self> {
        let mut streams = Vec::new();
        for (index, &number) in HANDLED.iter().enumerate() {
            if is_ignored(number)? {
                continue;
            }
            // Registered before tokio's action for the signal, so it runs first, and tokio's
            // stream never yields before the delivery has been classified.
            // SAFETY: the action only touches atomics.
            unsafe {
                signal_hook_registry::register_sigaction(number, move |info| classify(index, info))
            }?;
            streams.push((index, signal(SignalKind::from_raw(number))?));
        }
        Ok(Signals { streams })
    }

    /// Waits for the next handled signal.
    ///
    /// # Cancel safety
    /// Cancel-safe: a signal is only taken when this future completes.
    pub async fn recv(&mut self) -> Received {
        let index = std::future::poll_fn(|context| {
            for (index, stream) in &mut self.streams {
                // `None` only when the runtime shuts down: then nothing more comes.
                if let Poll::Ready(Some(())) = stream.poll_recv(context) {
                    return Poll::Ready(*index);
                }
            }
            Poll::Pending
        })
        .await;
        RECEIVED[index].store(0, Ordering::SeqCst);
        Received {
            number: HANDLED[index],
            forward: TO_FORWARD[index].swap(0, Ordering::SeqCst) > 0,
        }
    }

    /// A signal that arrived and was not yet taken by [`Signals::recv`], seen at once (the
    /// streams learn of a signal only when the runtime next polls its driver).
    pub fn pending(&self) -> Option<c_int> {
        (0..HANDLED.len())
            .find(|&index| RECEIVED[index].load(Ordering::SeqCst) > 0)
            .map(|index| HANDLED[index])
    }

    /// Tells the handlers which process runs the command, so that signals it sends to
    /// tollgate are not sent back to it, and whether it shares tollgate's process group (then
    /// a Ctrl-C from the terminal reaches it by itself).
    pub fn set_command(&self, pid: Option<u32>, shares_group: bool) {
        let pid = pid.and_then(|pid| i32::try_from(pid).ok()).unwrap_or(0);
        COMMAND_SHARES_GROUP.store(shares_group, Ordering::SeqCst);
        COMMAND_PID.store(pid, Ordering::SeqCst);
    }
}

fn is_ignored(signal: c_int) -> io::Result<bool> {
    // SAFETY: sigaction with a null new action only reads the current one into `current`.
    let mut current: libc::sigaction = unsafe { std::mem::zeroed() };
    if unsafe { libc::sigaction(signal, std::ptr::null(), &mut current) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(current.sa_sigaction == libc::SIG_IGN)
}

/// Ends the process as `signal` would have without tollgate's handlers, so that the parent
/// (a shell running a script, say) sees that a signal ended it.
pub fn die_by(signal: c_int) -> ! {
    // SAFETY: restoring the default action of a valid signal and raising it.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        libc::raise(signal);
    }
    // Only reached if the signal is blocked or ignored after all.
    std::process::exit(128 + signal)
}

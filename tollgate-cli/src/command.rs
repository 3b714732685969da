//! Starting the command so that it never outlives its lock unnoticed: it dies with tollgate
//! (a parent-death signal), and it can be stopped as a whole (its own process group) when
//! the lock is lost.
//!
//! Where the command runs:
//! - **tollgate is a foreground job on a terminal** (it can open `/dev/tty` and its process
//!   group is the terminal's foreground group): the command stays in tollgate's process
//!   group, so that the shell's job control (Ctrl-C, Ctrl-Z, `fg`) works on both as one job.
//!   On a loss, the command's process is signalled; processes it started itself are not.
//! - **otherwise** (scripts, cron, services, pipes): the command leads a process group of its
//!   own, and on a loss the whole group is signalled, the command's own children included.
//!
//! Either way the command gets `SIGKILL` when tollgate dies, however it dies (`SIGKILL`, the
//! OOM killer): the parent-death signal is set in the child before `exec`, and the child
//! checks that tollgate is still there after setting it. Processes the command started keep
//! running then (the signal reaches the command only); in the second case they can be found
//! by its process group.
//!
//! The command shares the hold's descriptors (its lock files and server connections, as
//! `flock(1)` passes its lock file on), so that a killed tollgate's lock goes only when the
//! command and everything it started that kept them are gone too: the kernel frees the
//! lock of a lock file, and a server ends a session, at the last close. Without that, the
//! kernel closes tollgate's descriptors before the command gets its signal, and the next
//! holder could start while the command (or what it started) still runs. `-o` opts out.

use std::ffi::OsString;
use std::io;

use libc::c_int;

/// How the command was started, for sending it signals.
#[derive(Clone, Copy, Debug)]
pub struct Started {
    pid: libc::pid_t,
    /// Whether the command leads a process group of its own.
    own_group: bool,
}

impl Started {
    /// The command's process id.
    pub fn pid(&self) -> u32 {
        self.pid as u32
    }

    /// Whether the command leads a process group of its own (see the module docs).
    pub fn own_group(&self) -> bool {
        self.own_group
    }

    /// Sends `signal` to the command: to its whole process group when it has one of its
    /// own, else to its process. Errors are ignored: it may have exited.
    pub fn signal(&self, signal: c_int) {
        let target = if self.own_group { -self.pid } else { self.pid };
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(target, signal) };
    }
}

/// Whether tollgate runs as a foreground job on a terminal (see the module docs).
fn foreground_on_terminal() -> bool {
    // SAFETY: open, tcgetpgrp, getpgrp and close on a descriptor we own.
    unsafe {
        let tty = libc::open(c"/dev/tty".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if tty < 0 {
            return false;
        }
        let foreground = libc::tcgetpgrp(tty);
        libc::close(tty);
        foreground > 0 && foreground == libc::getpgrp()
    }
}

/// The descriptors that keep this process's hold: its lock files (`*.lock`) and its server
/// connections (sockets). A command that inherits them keeps the hold alive if tollgate dies
/// first: the kernel frees a lock file's lock, and a server ends a session, only when the
/// last descriptor of it is closed. (Releasing still works as ever: an unlock is by open
/// file or by session, not by descriptor.)
pub fn hold_descriptors() -> Vec<std::os::fd::RawFd> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let fd: std::os::fd::RawFd = entry.file_name().to_str()?.parse().ok()?;
            if fd <= 2 {
                return None;
            }
            let target = std::fs::read_link(entry.path()).ok()?;
            let socket = target
                .to_str()
                .is_some_and(|link| link.starts_with("socket:"));
            // The directory's descriptor from read_dir is no lock file, nor a socket.
            let lock_file = target
                .extension()
                .is_some_and(|extension| extension == "lock")
                && std::fs::metadata(entry.path())
                    .is_ok_and(|meta| !meta.file_type().is_socket() && meta.is_file());
            (socket || lock_file).then_some(fd)
        })
        .collect()
}

/// Starts `program` with `arguments` and the extra environment `env`; the descriptors in
/// `inherit` stay open in it (see [`hold_descriptors`]).
pub fn spawn(
    program: &OsString,
    arguments: &[OsString],
    env: &[(&str, String)],
    inherit: &[std::os::fd::RawFd],
) -> io::Result<(tokio::process::Child, Started)> {
    let inherit = inherit.to_vec();
    let own_group = !foreground_on_terminal();
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    let mut command = tokio::process::Command::new(program);
    command.args(arguments);
    command.env_remove(crate::secrets::PASSWORD_VARIABLE);
    for (key, value) in env {
        command.env(key, value);
    }
    // SAFETY: the closure runs in the child between fork and exec and calls only
    // async-signal-safe functions (prctl, getppid, setpgid, raise, fcntl).
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // tollgate may have died before the signal was set: then nothing would send it.
            if libc::getppid() != parent {
                libc::raise(libc::SIGKILL);
            }
            if own_group && libc::setpgid(0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // In this child only: the hold's descriptors survive the exec.
            for &fd in &inherit {
                libc::fcntl(fd, libc::F_SETFD, 0);
            }
            Ok(())
        });
    }
    let child = command.spawn()?;
    let pid = child
        .id()
        .and_then(|pid| libc::pid_t::try_from(pid).ok())
        .ok_or_else(|| io::Error::other("the command has no process id"))?;
    if own_group {
        // Also from this side, so that the group exists before any signal is sent to it
        // (the child may not have run yet). EACCES: it has exec'd already, and set it itself.
        // SAFETY: setpgid has no memory-safety preconditions.
        unsafe { libc::setpgid(pid, pid) };
    }
    Ok((child, Started { pid, own_group }))
}

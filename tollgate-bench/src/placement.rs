//! On which CPU threads run, and where this thread may run.
//!
//! A round trip to a server on this machine wakes the server's thread and then this one;
//! whether the two share a CPU changes its cost several times over on a VM, so the
//! benchmarks that talk to a server note where both ran, and some pin this thread.

/// The CPU this thread runs on.
pub fn this_cpu() -> usize {
    // SAFETY: no arguments.
    let cpu = unsafe { libc::sched_getcpu() };
    assert!(
        cpu >= 0,
        "sched_getcpu: {}",
        std::io::Error::last_os_error()
    );
    cpu as usize
}

/// The CPU a process or thread last ran on, from its `stat` file (`/proc/<pid>/stat`,
/// `/proc/<pid>/task/<tid>/stat`, `/proc/thread-self/stat`): field 39, `processor`. `None`
/// when the file cannot be read.
pub fn last_cpu(stat_path: &str) -> Option<usize> {
    let stat = std::fs::read_to_string(stat_path).ok()?;
    // The fields after the parenthesised command name start at field 3 (the state).
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(39 - 3)?.parse().ok()
}

/// The CPUs this thread may run on.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: all-zero is a valid (empty) CPU set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: a valid CPU set of the size passed, for this thread.
    let result =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    assert_eq!(
        result,
        0,
        "sched_getaffinity: {}",
        std::io::Error::last_os_error()
    );
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: a CPU number below CPU_SETSIZE and a valid set.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

/// Lets this thread run on `cpus` only (it moves at once if it must).
pub fn pin_this_thread(cpus: &[usize]) {
    // SAFETY: all-zero is a valid (empty) CPU set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        // SAFETY: CPU numbers from sched_getaffinity, below CPU_SETSIZE.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: a valid CPU set of the size passed, for this thread.
    let result =
        unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    assert_eq!(
        result,
        0,
        "sched_setaffinity: {}",
        std::io::Error::last_os_error()
    );
}

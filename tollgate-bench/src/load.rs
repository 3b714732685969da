//! How busy the machine is, for the notes printed beside a result.

/// The first line of `/proc/loadavg` (the 1, 5 and 15 minute load averages, the runnable
/// and all tasks, the last process id), or an empty string where there is none.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

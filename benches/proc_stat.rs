//! CPU time from `/proc/<pid>/stat` (Linux). The benchmarks use it through `lib.rs`; the
//! posthog-rs-v1 helper, a workspace of its own, includes this file by path.

use std::time::Duration;

/// User + system CPU time of process `pid` (`"self"` for this one); zero without `/proc`.
pub fn cpu_time(pid: impl std::fmt::Display) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
}

//! The tool's own CPU time, from Linux's `/proc` (no `unsafe`, no libc calls).
//!
//! Process totals come from `/proc/self/stat` (user and system time, in clock ticks of
//! 1/100 s, Linux's fixed `USER_HZ`); per-thread times from
//! `/proc/thread-self/schedstat` (nanoseconds on CPU). Elsewhere both read as `None`.

use std::time::Duration;

/// Linux reports `utime`/`stime` in units of `USER_HZ`, 100 per second on every
/// architecture it supports.
const TICKS_PER_SEC: u64 = 100;

/// User and system CPU time consumed by the whole process so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessCpu {
    /// Time in user mode.
    pub user: Duration,
    /// Time in the kernel on the process's behalf.
    pub system: Duration,
}

impl ProcessCpu {
    /// User plus system time.
    pub fn total(&self) -> Duration {
        self.user + self.system
    }

    /// The CPU time spent between `earlier` and `self`.
    pub fn since(&self, earlier: &ProcessCpu) -> ProcessCpu {
        ProcessCpu {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
        }
    }
}

/// The process's CPU time so far; `None` where `/proc/self/stat` is unavailable.
pub fn process_cpu() -> Option<ProcessCpu> {
    parse_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// The calling thread's CPU time so far; `None` where `/proc/thread-self/schedstat`
/// is unavailable.
pub fn thread_cpu() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let nanos = text.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(nanos))
}

/// Parses `utime` and `stime` (fields 14 and 15) out of a `/proc/<pid>/stat` line.
fn parse_stat(line: &str) -> Option<ProcessCpu> {
    // The command name (field 2) is in parentheses and may hold spaces: skip past it.
    let rest = &line[line.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11); // fields 3..=13
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let ticks = |t: u64| Duration::from_millis(t * 1000 / TICKS_PER_SEC);
    Some(ProcessCpu {
        user: ticks(utime),
        system: ticks(stime),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_in_the_name() {
        let line = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 31 0 0 20 0 1 0";
        assert_eq!(
            parse_stat(line),
            Some(ProcessCpu {
                user: Duration::from_millis(2500),
                system: Duration::from_millis(310),
            })
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn reads_this_process() {
        if cfg!(target_os = "linux") {
            assert!(process_cpu().is_some());
            assert!(thread_cpu().is_some());
        }
    }
}

//! A deadlock watchdog for test builds.
//!
//! With the `deadlock-detection` feature, parking_lot records which thread holds and
//! which waits for every lock, and [`start`] spawns one thread that looks for a cycle in
//! that wait graph every [`CHECK_EVERY`]. A cycle (including one thread waiting for a
//! lock it already holds, as a re-entrant registry lock does) never resolves by itself:
//! the watchdog prints every deadlocked thread's id and backtrace to stderr and aborts
//! the process, so a test run fails loudly at the cause instead of hanging until a
//! timeout with nothing to show.
//!
//! Without the feature [`start`] does nothing: the release binary carries neither the
//! detector's bookkeeping nor the thread.

use std::time::Duration;

/// How often the watchdog looks for a deadlock.
pub const CHECK_EVERY: Duration = Duration::from_millis(500);

/// Whether this build carries the watchdog (the `deadlock-detection` feature).
pub const ENABLED: bool = cfg!(feature = "deadlock-detection");

/// Starts the watchdog thread once per process (later calls do nothing); a no-op unless
/// the `deadlock-detection` feature is on.
pub fn start() {
    #[cfg(feature = "deadlock-detection")]
    {
        static STARTED: std::sync::Once = std::sync::Once::new();
        STARTED.call_once(|| {
            let spawned = std::thread::Builder::new()
                .name("warren-deadlock-watchdog".into())
                .spawn(watch);
            if let Err(error) = spawned {
                eprintln!("warren: cannot start the deadlock watchdog: {error}");
            }
        });
    }
}

/// Checks for deadlocks forever; aborts the process on the first one.
#[cfg(feature = "deadlock-detection")]
fn watch() {
    loop {
        std::thread::sleep(CHECK_EVERY);
        let deadlocks = parking_lot::deadlock::check_deadlock();
        if deadlocks.is_empty() {
            continue;
        }
        let cycles: Vec<Vec<(String, String)>> = deadlocks
            .iter()
            .map(|threads| {
                threads
                    .iter()
                    .map(|t| (format!("{:?}", t.thread_id()), format!("{:?}", t.backtrace())))
                    .collect()
            })
            .collect();
        eprintln!("{}", report(&cycles));
        std::process::abort();
    }
}

/// The text printed for the deadlocks found: each cycle, each thread's id and backtrace.
#[cfg(feature = "deadlock-detection")]
fn report(deadlocks: &[Vec<(String, String)>]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "warren: DEADLOCK DETECTED: {} cycle(s); aborting (deadlock-detection watchdog)",
        deadlocks.len()
    );
    for (i, threads) in deadlocks.iter().enumerate() {
        let _ = writeln!(out, "=== deadlock #{i}: {} thread(s)", threads.len());
        for (id, backtrace) in threads {
            let _ = writeln!(out, "--- thread id {id}");
            let _ = writeln!(out, "{backtrace}");
        }
    }
    out
}

#[cfg(all(test, feature = "deadlock-detection"))]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use parking_lot::RwLock;

    /// The detector sees a thread that waits for a read lock it holds for writing: the
    /// shape of the re-entrant registry deadlock. The thread stays stuck; the test only
    /// looks at what the detector reports (the watchdog itself is not started here).
    #[test]
    fn a_thread_reentering_its_own_write_lock_is_reported() {
        let lock = Arc::new(RwLock::new(()));
        let stuck = lock.clone();
        std::thread::spawn(move || {
            let _write = stuck.write();
            let _read = stuck.read();
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found = parking_lot::deadlock::check_deadlock();
            if let Some(cycle) = found.first() {
                assert_eq!(cycle.len(), 1, "one thread waits for itself");
                let cycles = vec![vec![(format!("{:?}", cycle[0].thread_id()), String::new())]];
                assert!(super::report(&cycles).contains("DEADLOCK DETECTED"));
                return;
            }
            assert!(Instant::now() < deadline, "no deadlock reported within 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

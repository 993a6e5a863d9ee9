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
//! parking_lot's detector has a blind spot: its search only reports a cycle that it
//! first enters at a thread, so a thread that waits for a lock it holds itself is missed
//! when another thread queued on that lock before it (exactly the registry deadlock of
//! issue 12, where publishers queue on the registry lock before the declaring thread
//! re-enters it). [`watch_runtime`] covers that and every other way of blocking the
//! broker (an async lock cycle, blocking work on a worker): a heartbeat task on the
//! runtime must run every [`STALL_AFTER`]; when it does not, the watchdog prints every
//! thread's stack (through gdb, when it is installed) and aborts.
//!
//! Without the feature [`start`] and [`watch_runtime`] do nothing: the release binary
//! carries neither the detector's bookkeeping nor the threads.

use std::time::Duration;

/// How often the watchdog looks for a deadlock.
pub const CHECK_EVERY: Duration = Duration::from_millis(500);

/// How long the runtime may go without running its heartbeat task before
/// [`watch_runtime`] calls the broker stalled.
pub const STALL_AFTER: Duration = Duration::from_secs(5);

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

/// Watches `runtime` for stalls (see the module docs); a no-op unless the
/// `deadlock-detection` feature is on. Meant for a runtime that runs only the broker (the
/// `warren` binary's): a test runtime that blocks its thread on purpose would trip it.
pub fn watch_runtime(runtime: &tokio::runtime::Handle) {
    #[cfg(feature = "deadlock-detection")]
    {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::time::Instant;

        let started = Instant::now();
        let beat = Arc::new(AtomicU64::new(0));
        let ms = move || u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let heart = beat.clone();
        runtime.spawn(async move {
            loop {
                heart.store(ms(), Ordering::Relaxed);
                tokio::time::sleep(CHECK_EVERY / 2).await;
            }
        });
        let spawned = std::thread::Builder::new()
            .name("warren-stall-watchdog".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(CHECK_EVERY);
                    let silent = ms().saturating_sub(beat.load(Ordering::Relaxed));
                    if silent > u64::try_from(STALL_AFTER.as_millis()).unwrap_or(u64::MAX) {
                        eprintln!(
                            "warren: STALL DETECTED: the runtime ran nothing for {silent} ms \
                             (a worker is blocked: a lock cycle, or blocking work); aborting \
                             (deadlock-detection watchdog). Every thread's stack:\n{}",
                            all_stacks()
                        );
                        std::process::abort();
                    }
                }
            });
        if let Err(error) = spawned {
            eprintln!("warren: cannot start the stall watchdog: {error}");
        }
    }
    #[cfg(not(feature = "deadlock-detection"))]
    let _ = runtime;
}

/// Every thread's stack, from gdb attached to this process (or why there are none).
#[cfg(feature = "deadlock-detection")]
fn all_stacks() -> String {
    let output = std::process::Command::new("gdb")
        .args(["-p", &std::process::id().to_string(), "-batch", "-ex"])
        .arg("thread apply all bt")
        .stdin(std::process::Stdio::null())
        .output();
    match output {
        Ok(output) => String::from_utf8_lossy(&output.stdout).into_owned(),
        Err(error) => format!("(no stacks: gdb did not run: {error})"),
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
                    .map(|t| {
                        (
                            format!("{:?}", t.thread_id()),
                            format!("{:?}", t.backtrace()),
                        )
                    })
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
            assert!(
                Instant::now() < deadline,
                "no deadlock reported within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

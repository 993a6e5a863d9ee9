//! Per-second progress lines on stderr while a run is going.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::shared::Shared;

/// A thread printing rates once a second until stopped.
#[derive(Debug)]
pub struct Progress {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Progress {
    /// Starts printing (or does nothing if `enabled` is false).
    pub fn start(shared: &Arc<Shared>, enabled: bool) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = enabled
            .then(|| {
                let stop = Arc::clone(&stop);
                let shared = Arc::clone(shared);
                thread::Builder::new()
                    .name("progress".into())
                    .spawn(move || print_loop(&shared, &stop))
                    .ok()
            })
            .flatten();
        Self { stop, thread }
    }

    /// Stops printing and waits for the thread.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

fn print_loop(shared: &Shared, stop: &AtomicBool) {
    let start = Instant::now();
    let mut next = start + Duration::from_secs(1);
    let mut last = [0u64; 3];
    let mut last_at = start;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now < next {
            thread::park_timeout(next - now);
            continue;
        }
        next += Duration::from_secs(1);
        let current = [
            shared.published.load(Ordering::Relaxed),
            shared.confirmed.load(Ordering::Relaxed),
            shared.consumed.load(Ordering::Relaxed),
        ];
        let secs = now.duration_since(last_at).as_secs_f64().max(1e-9);
        let rate = |i: usize| (current[i] - last[i]) as f64 / secs;
        let _ = writeln!(
            std::io::stderr(),
            "[{:>5.1}s] published {:>10.0} msg/s  confirmed {:>10.0} msg/s  consumed {:>10.0} msg/s",
            now.duration_since(start).as_secs_f64(),
            rate(0),
            rate(1),
            rate(2),
        );
        last = current;
        last_at = now;
    }
}

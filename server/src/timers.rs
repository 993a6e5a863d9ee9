//! Wake-ups at wall-clock deadlines, for everything in a queue that happens with time
//! rather than a client's method: message expiry, queue expiry, delayed messages.
//!
//! One thread sleeps until the earliest deadline and wakes its target. Deadlines are
//! wall-clock milliseconds since the epoch, as the store keeps them, so a TTL keeps
//! counting across a restart. A target re-checks its own state when woken, so a stale or
//! duplicate wake-up is harmless and nothing needs cancelling.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::{Condvar, Mutex};

/// Something woken at a deadline it asked for.
pub trait Wake: Send + Sync {
    /// Called on the timer thread at (or after) the deadline; `now_ms` is the time then.
    fn wake(self: Arc<Self>, now_ms: u64);
}

/// The current wall-clock time in milliseconds since the Unix epoch (in tests, moved on
/// by what the calling thread set with [`skew_clock_for_tests`]).
pub fn now_ms() -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    #[cfg(test)]
    let now = now.saturating_add(TEST_SKEW.with(std::cell::Cell::get));
    now
}

#[cfg(test)]
thread_local! {
    static TEST_SKEW: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Moves the clock of the calling thread `ms` ahead of the wall clock until the guard is
/// dropped: a test can then let TTLs and delays run out without waiting for them.
#[cfg(test)]
pub(crate) fn skew_clock_for_tests(ms: u64) -> ClockSkew {
    ClockSkew(TEST_SKEW.with(|skew| skew.replace(ms)))
}

/// Puts back the clock skew a test replaced, when dropped.
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct ClockSkew(u64);

#[cfg(test)]
impl Drop for ClockSkew {
    fn drop(&mut self) {
        TEST_SKEW.with(|skew| skew.set(self.0));
    }
}

struct Entry {
    at_ms: u64,
    target: Weak<dyn Wake>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.at_ms == other.at_ms
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    /// Reversed, so that the heap's top is the earliest deadline.
    fn cmp(&self, other: &Self) -> Ordering {
        other.at_ms.cmp(&self.at_ms)
    }
}

#[derive(Default)]
struct Schedule {
    heap: BinaryHeap<Entry>,
    stopped: bool,
}

#[derive(Default)]
struct Shared {
    schedule: Mutex<Schedule>,
    changed: Condvar,
}

/// The timer thread's handle; dropping it stops the thread.
pub struct Timers {
    shared: Arc<Shared>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for Timers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timers")
            .field("pending", &self.shared.schedule.lock().heap.len())
            .finish()
    }
}

impl Timers {
    /// Starts the timer thread.
    ///
    /// # Errors
    /// The thread could not be spawned.
    pub fn start() -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("warren-timers".into())
            .spawn(move || run(&worker))?;
        Ok(Self {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Stops the timer thread and waits for the wake-up it may be running to end: at
    /// shutdown, so that nothing moves messages while the store is synced a last time.
    pub fn stop(&self) {
        self.shared.schedule.lock().stopped = true;
        self.shared.changed.notify_one();
        if let Some(thread) = self.thread.lock().take() {
            let _ = thread.join();
        }
    }

    /// Wakes `target` at `at_ms` (wall-clock milliseconds), unless it is gone by then.
    pub fn wake_at(&self, at_ms: u64, target: Weak<dyn Wake>) {
        let mut schedule = self.shared.schedule.lock();
        let earliest = schedule.heap.peek().is_none_or(|top| at_ms < top.at_ms);
        schedule.heap.push(Entry { at_ms, target });
        if earliest {
            self.shared.changed.notify_one();
        }
    }
}

impl Drop for Timers {
    fn drop(&mut self) {
        self.shared.schedule.lock().stopped = true;
        self.shared.changed.notify_one();
    }
}

fn run(shared: &Shared) {
    let mut schedule = shared.schedule.lock();
    loop {
        if schedule.stopped {
            return;
        }
        let now = now_ms();
        match schedule.heap.peek().map(|top| top.at_ms) {
            None => shared.changed.wait(&mut schedule),
            Some(at) if at > now => {
                shared
                    .changed
                    .wait_for(&mut schedule, Duration::from_millis(at - now));
            }
            Some(_) => {
                let due = schedule.heap.pop().map(|entry| entry.target);
                drop(schedule);
                if let Some(target) = due.and_then(|t| t.upgrade()) {
                    target.wake(now);
                }
                schedule = shared.schedule.lock();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    struct Probe {
        name: &'static str,
        fired: Mutex<mpsc::Sender<&'static str>>,
    }

    impl Wake for Probe {
        fn wake(self: Arc<Self>, _now_ms: u64) {
            let _ = self.fired.lock().send(self.name);
        }
    }

    fn probe(name: &'static str, tx: &mpsc::Sender<&'static str>) -> Arc<Probe> {
        Arc::new(Probe {
            name,
            fired: Mutex::new(tx.clone()),
        })
    }

    #[test]
    fn wakes_in_deadline_order_and_skips_dropped_targets() {
        let timers = Timers::start().expect("timer thread");
        let (tx, rx) = mpsc::channel();
        let late = probe("late", &tx);
        let early = probe("early", &tx);
        let gone = probe("gone", &tx);
        let now = now_ms();
        let weak = |p: &Arc<Probe>| Arc::downgrade(p) as Weak<dyn Wake>;
        timers.wake_at(now + 60, weak(&late));
        timers.wake_at(now + 20, weak(&early));
        timers.wake_at(now + 10, weak(&gone));
        drop(gone);
        let bound = Duration::from_secs(5);
        assert_eq!(rx.recv_timeout(bound), Ok("early"));
        assert_eq!(rx.recv_timeout(bound), Ok("late"));
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
    }

    #[test]
    fn a_past_deadline_fires_at_once() {
        let timers = Timers::start().expect("timer thread");
        let (tx, rx) = mpsc::channel();
        let p = probe("past", &tx);
        timers.wake_at(0, Arc::downgrade(&p) as Weak<dyn Wake>);
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok("past"));
    }
}

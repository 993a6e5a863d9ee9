//! State every producer and consumer thread of a run shares: the clock, running
//! counters (updated once per batch, not per message), what each queue should
//! receive, the start gate and the abort flag.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};

use super::stamp::Clock;

/// Expected count of a queue whose producers are still running.
pub const NOT_YET_KNOWN: u64 = u64::MAX;

/// Progress of one queue.
#[derive(Debug)]
pub struct QueueProgress {
    /// Messages its consumers received so far.
    pub received: AtomicU64,
    /// Messages it should receive in all; [`NOT_YET_KNOWN`] while producers run.
    pub expected: AtomicU64,
}

/// Shared run state.
#[derive(Debug)]
pub struct Shared {
    /// The run's clock, for send stamps and latency.
    pub clock: Clock,
    /// This run's nonce, carried in every message id.
    pub nonce: u8,
    /// Messages written by all producers.
    pub published: AtomicU64,
    /// Messages positively confirmed by the broker.
    pub confirmed: AtomicU64,
    /// Messages received by all consumers.
    pub consumed: AtomicU64,
    /// Per producer: how many messages it has started to write. A consumer seeing a
    /// sequence number at or above this knows the message is not from this run.
    pub issued: Vec<AtomicU64>,
    /// Per queue.
    pub queues: Vec<QueueProgress>,
    /// Set when the run must end early (a thread failed).
    pub abort: AtomicBool,
    gate: Mutex<Option<bool>>,
    gate_changed: Condvar,
}

impl Shared {
    /// State for `producers` producers and `queues` queues.
    pub fn new(clock: Clock, nonce: u8, producers: usize, queues: usize) -> Self {
        Self {
            clock,
            nonce,
            published: AtomicU64::new(0),
            confirmed: AtomicU64::new(0),
            consumed: AtomicU64::new(0),
            issued: (0..producers).map(|_| AtomicU64::new(0)).collect(),
            queues: (0..queues)
                .map(|_| QueueProgress {
                    received: AtomicU64::new(0),
                    expected: AtomicU64::new(NOT_YET_KNOWN),
                })
                .collect(),
            abort: AtomicBool::new(false),
            gate: Mutex::new(None),
            gate_changed: Condvar::new(),
        }
    }

    /// Whether the run is being aborted.
    pub fn aborted(&self) -> bool {
        self.abort.load(Ordering::Relaxed)
    }

    /// Aborts the run and releases anyone waiting at the gate.
    pub fn abort(&self) {
        self.abort.store(true, Ordering::Relaxed);
        self.open_gate(false);
    }

    /// Lets producers start (`go`) or tells them to give up.
    pub fn open_gate(&self, go: bool) {
        let mut gate = self.gate.lock().unwrap_or_else(|e| e.into_inner());
        if gate.is_none() {
            *gate = Some(go);
        }
        self.gate_changed.notify_all();
    }

    /// Waits until the gate opens; true to start, false to give up.
    pub fn wait_at_gate(&self) -> bool {
        let mut gate = self.gate.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(go) = *gate {
                return go;
            }
            gate = self
                .gate_changed
                .wait(gate)
                .unwrap_or_else(|e| e.into_inner());
        }
    }
}

//! Resource alarms: when messages held in memory pass `--memory-limit`, or free disk
//! space under the data directory falls below `--disk-free-limit`, publishing
//! connections are blocked (RabbitMQ's `connection.blocked`) until the alarm clears;
//! consumers keep draining.
//!
//! Memory is what the messages queues hold in memory take (bodies and each message's
//! footprint), summed over the queues: it rises and falls with the backlog, where the
//! process's resident size would stay high after a backlog drains and keep publishers
//! blocked. The same measure tells transient queues when to spill their backlogs early.

use std::path::PathBuf;
use std::sync::Weak;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

/// How often memory is measured.
const MEMORY_CHECK: Duration = Duration::from_millis(200);
/// Most memory queued messages may take before transient queues spill everything past
/// a small window to disk; a quarter of the memory limit when that is lower.
const SPILL_BUDGET: u64 = 128 << 20;
/// How often free disk space is measured (a `statvfs` per check).
const DISK_CHECK_EVERY: u32 = 5;

/// What the monitor measures and tells: the broker, as the alarms see it.
pub trait Monitored: Send + Sync {
    /// Its alarms, which the monitor raises and clears.
    fn alarms(&self) -> &Alarms;
    /// Memory the messages its queues hold take.
    fn memory_in_use(&self) -> u64;
    /// Tells its queues whether queued messages take more than the spill budget.
    fn set_memory_tight(&self, tight: bool);
}

/// Which alarms are raised.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AlarmState {
    /// Messages in memory exceed the memory limit.
    pub memory: bool,
    /// Free disk space is below the disk limit.
    pub disk: bool,
}

impl AlarmState {
    /// Whether publishers must be blocked.
    pub fn any(self) -> bool {
        self.memory || self.disk
    }

    /// The reason `connection.blocked` gives, as RabbitMQ words it.
    pub fn reason(self) -> &'static str {
        if self.memory {
            "low on memory"
        } else {
            "low on disk"
        }
    }
}

/// The broker's alarms: set by the monitor, watched by every connection.
#[derive(Debug)]
pub struct Alarms {
    state: watch::Sender<AlarmState>,
}

impl Default for Alarms {
    fn default() -> Self {
        Self {
            state: watch::Sender::new(AlarmState::default()),
        }
    }
}

impl Alarms {
    /// A receiver that sees every change of the alarms.
    pub fn subscribe(&self) -> watch::Receiver<AlarmState> {
        self.state.subscribe()
    }

    /// The alarms now.
    pub fn current(&self) -> AlarmState {
        *self.state.borrow()
    }

    fn set(&self, next: AlarmState) {
        self.state.send_if_modified(|state| {
            let changed = *state != next;
            *state = next;
            changed
        });
    }
}

/// Measures memory and disk until the broker goes away, raising and clearing alarms.
pub async fn monitor(
    broker: Weak<dyn Monitored>,
    memory_limit: u64,
    disk_free_limit: u64,
    data_dir: PathBuf,
) {
    let mut ticks = tokio::time::interval(MEMORY_CHECK);
    let mut round = 0u32;
    let mut disk = false;
    loop {
        ticks.tick().await;
        let Some(broker) = broker.upgrade() else {
            return;
        };
        let mut state = broker.alarms().current();
        let used = broker.memory_in_use();
        broker.set_memory_tight(used > spill_budget(memory_limit));
        if memory_limit > 0 {
            let raised = used > memory_limit;
            if raised != state.memory {
                info!(used, limit = memory_limit, raised, "memory alarm");
            }
            state.memory = raised;
        }
        if disk_free_limit > 0 && round % DISK_CHECK_EVERY == 0 {
            disk = check_disk(&data_dir, disk_free_limit, disk);
        }
        state.disk = disk;
        round = round.wrapping_add(1);
        broker.alarms().set(state);
        drop(broker);
    }
}

/// Whether the disk alarm is raised, logging changes; a failed measurement keeps the
/// previous state.
fn check_disk(data_dir: &PathBuf, limit: u64, raised: bool) -> bool {
    match fs4::available_space(data_dir) {
        Ok(free) => {
            let now = free < limit;
            if now != raised {
                info!(free, limit, raised = now, "disk alarm");
            }
            now
        }
        Err(error) => {
            warn!(%error, dir = %data_dir.display(), "cannot measure free disk space");
            raised
        }
    }
}

/// The memory queued messages may take before transient queues spill early.
fn spill_budget(memory_limit: u64) -> u64 {
    if memory_limit == 0 {
        SPILL_BUDGET
    } else {
        SPILL_BUDGET.min(memory_limit / 4)
    }
}

/// Spawns the monitor for `broker` on the current runtime.
pub fn spawn_monitor(
    broker: Weak<dyn Monitored>,
    memory_limit: u64,
    disk_free_limit: u64,
    data_dir: PathBuf,
) {
    tokio::spawn(monitor(broker, memory_limit, disk_free_limit, data_dir));
}

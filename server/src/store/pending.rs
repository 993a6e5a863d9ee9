//! Definitions changes between the registry lock that ordered them and their write.
//!
//! A vhost makes a change (a queue declared, a binding added) under its registry locks,
//! where no file-system work may happen: it queues the change here, in that order, and
//! has the queue written once its locks are released. Every group-commit round writes
//! what is queued too, before it syncs the definitions, so that nothing confirmed into a
//! queue is durable before the queue itself. A change whose operation is refused when it
//! cannot be stored is checked: its ticket tells, once written, whether it was.
//!
//! A durable queue whose deletion could not be written is gone from memory but not from
//! the store. Its log is kept (the queue would come back whole at a restart) and the
//! deletion is written again at every write until it is stored, or until the name is
//! declared anew (the new definition replaces the old one); the log is then retired.

use std::sync::Mutex as StdMutex;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::QueueLog;
use super::commit::Retired;
use super::definitions::{Change, DefinitionStore};

/// A durable queue whose deletion is not stored yet.
#[derive(Debug)]
struct Undeleted {
    vhost: String,
    name: String,
    /// Its logs (a partitioned queue's are several), once its owner handed them over.
    logs: Option<Vec<QueueLog>>,
}

/// The queued definitions changes of a broker, and the deletions still to store.
#[derive(Debug, Default)]
pub struct PendingChanges {
    /// Changes in the order their registry locks made them, with their tickets.
    queued: Mutex<Vec<(Change, Option<u64>)>>,
    /// Tickets of checked changes whose write failed, with why, until asked.
    failed: Mutex<Vec<(u64, String)>>,
    /// The next ticket.
    next_ticket: AtomicU64,
    /// Held while writing, so that writers keep the order changes were queued in.
    writing: Mutex<()>,
    /// Deletions whose write failed, retried at every write.
    undeleted: Mutex<Vec<Undeleted>>,
}

impl PendingChanges {
    /// Queues `change`; the caller holds the registry lock that orders it and has the
    /// queue written ([`BrokerStore::write_pending`](super::BrokerStore::write_pending))
    /// once its locks are released.
    pub fn queue(&self, change: Change) {
        self.queued.lock().push((change, None));
    }

    /// Like [`queue`](Self::queue), for a change whose operation is refused if it cannot
    /// be stored: returns the ticket to ask [`written`](Self::written) about.
    pub fn queue_checked(&self, change: Change) -> u64 {
        let ticket = self.next_ticket.fetch_add(1, Ordering::Relaxed);
        self.queued.lock().push((change, Some(ticket)));
        ticket
    }

    /// Whether the checked change of `ticket` was stored, and if not, why. Meaningful once
    /// a write that began after the change was queued has returned: every change queued
    /// before it was written by then, by this caller or another.
    pub fn written(&self, ticket: u64) -> Result<(), String> {
        let mut failed = self.failed.lock();
        match failed.iter().position(|(t, _)| *t == ticket) {
            Some(at) => Err(failed.swap_remove(at).1),
            None => Ok(()),
        }
    }

    /// Hands over the logs of queue `name` of `vhost`, whose deletion could not be
    /// written: they are kept until the deletion is stored. Returns them back when that
    /// already happened (or the name was declared anew): the caller retires them.
    pub fn keep_undeleted(&self, vhost: &str, name: &str, logs: Vec<QueueLog>) -> Vec<QueueLog> {
        let mut undeleted = self.undeleted.lock();
        match undeleted
            .iter_mut()
            .find(|u| u.vhost == vhost && u.name == name && u.logs.is_none())
        {
            Some(entry) => {
                entry.logs = Some(logs);
                Vec::new()
            }
            None => logs,
        }
    }

    /// Writes the queued changes in order, then the deletions still to store; the logs
    /// of queues whose deletion got stored (or whose name was declared anew) go to
    /// `retired`, removed once the definitions are synced. Returns whether any did.
    pub(super) fn write(&self, definitions: &StdMutex<DefinitionStore>, retired: &Retired) -> bool {
        let _order = self.writing.lock();
        let batch = std::mem::take(&mut *self.queued.lock());
        let mut undeleted = self.undeleted.lock();
        if batch.is_empty() && undeleted.is_empty() {
            return false;
        }
        let Ok(mut defs) = definitions.lock() else {
            let mut failed = self.failed.lock();
            failed.extend(
                batch
                    .iter()
                    .filter_map(|(_, t)| t.map(|t| (t, "definitions store poisoned".to_owned()))),
            );
            return false;
        };
        let mut settled = Vec::new();
        for (change, ticket) in batch {
            match defs.record(&change) {
                Ok(()) => {
                    if let Change::PutQueue(def) = &change {
                        settle(&mut undeleted, &def.vhost, &def.name, &mut settled);
                    } else if let Change::DeleteQueue { vhost, name } = &change {
                        settle(&mut undeleted, vhost, name, &mut settled);
                    }
                }
                Err(error) => {
                    tracing::error!(%error, ?change, "cannot record a definitions change");
                    if let Some(ticket) = ticket {
                        self.failed.lock().push((ticket, error.to_string()));
                    }
                    if let Change::DeleteQueue { vhost, name } = change
                        && !undeleted.iter().any(|u| u.vhost == vhost && u.name == name)
                    {
                        undeleted.push(Undeleted {
                            vhost,
                            name,
                            logs: None,
                        });
                    }
                }
            }
        }
        let mut still = Vec::new();
        for entry in std::mem::take(&mut *undeleted) {
            let change = Change::DeleteQueue {
                vhost: entry.vhost.clone(),
                name: entry.name.clone(),
            };
            match defs.record(&change) {
                Ok(()) => settled.extend(entry.logs.into_iter().flatten()),
                Err(error) => {
                    tracing::debug!(%error, queue = %entry.name, "the deletion is still not stored");
                    still.push(entry);
                }
            }
        }
        *undeleted = still;
        drop((defs, undeleted));
        if settled.is_empty() {
            return false;
        }
        if let Ok(mut retired) = retired.lock() {
            retired.extend(settled);
        }
        true
    }
}

/// The deletion of `name` in `vhost` is stored, or a new definition replaced it: its
/// kept log (if handed over yet) goes to `settled`.
fn settle(undeleted: &mut Vec<Undeleted>, vhost: &str, name: &str, settled: &mut Vec<QueueLog>) {
    if let Some(at) = undeleted
        .iter()
        .position(|u| u.vhost == vhost && u.name == name)
    {
        settled.extend(undeleted.swap_remove(at).logs.into_iter().flatten());
    }
}

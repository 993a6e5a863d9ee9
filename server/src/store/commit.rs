//! Group commit: one thread makes writes durable for many queues and many publishers at
//! once, so one sync serves every message appended since the last one, in every log.
//!
//! Connections submit the logs their last batch wrote to, optionally with a channel to
//! hear back on; publisher confirms wait for that answer. Requests that queue up while
//! an fsync runs are served together by the next one.

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;

use tokio::sync::oneshot;

use super::definitions::DefinitionStore;
use super::fd_budget::{FdBudget, ROUND_NEED};
use super::pending::PendingChanges;
use super::{PendingSync, QueueLog, Syncer};

/// Logs of deleted queues, removed once the deletion is durable in the definitions:
/// removing a log before that would, after a crash, bring the queue back without its
/// messages.
pub type Retired = Mutex<Vec<QueueLog>>;

/// Something whose appends a group commit makes durable (a queue with a log).
pub trait SyncTarget: Send + Sync {
    /// Writes out buffered appends and takes the fsyncs they need, under the target's
    /// own lock; `None` if the target keeps no log, an error if the writes failed (then
    /// nothing it holds may be confirmed).
    fn begin_sync(&self) -> Option<super::Result<PendingSync>>;
    /// Records the fsync's outcome; false if the appends are not durable.
    fn complete_sync(&self, pending: PendingSync, result: &super::Result<()>) -> bool;
}

/// Who hears how a request went.
enum Done {
    /// A task awaiting the answer (publisher confirms).
    Channel(oneshot::Sender<bool>),
    /// Work that must follow durability (acking a moved message's source), run on the
    /// commit thread with no lock held.
    Then(Box<dyn FnOnce(bool) + Send>),
}

impl Done {
    fn tell(self, durable: bool) {
        match self {
            Done::Channel(sender) => {
                let _ = sender.send(durable);
            }
            Done::Then(then) => then(durable),
        }
    }
}

struct Request {
    targets: Vec<Arc<dyn SyncTarget>>,
    done: Option<Done>,
}

/// Handle to the group-commit thread; dropping the last one stops the thread once the
/// requests already made are served.
#[derive(Debug, Clone)]
pub struct GroupCommit {
    requests: mpsc::Sender<Request>,
    stats: Arc<crate::stats::CommitStats>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("targets", &self.targets.len())
            .finish()
    }
}

impl GroupCommit {
    /// Starts the commit thread; each round first syncs the definitions log, so a queue
    /// is durable before any message confirmed into it, then syncs the logs through
    /// `syncer`, within the logs' descriptor `budget`.
    ///
    /// # Errors
    /// If the thread cannot be spawned.
    pub fn start(
        definitions: Arc<Mutex<DefinitionStore>>,
        pending: Arc<PendingChanges>,
        syncer: Arc<Syncer>,
        retired: Arc<Retired>,
        budget: Arc<FdBudget>,
    ) -> std::io::Result<Self> {
        let (requests, inbox) = mpsc::channel::<Request>();
        let stats = Arc::new(crate::stats::CommitStats::default());
        let recorded = stats.clone();
        thread::Builder::new()
            .name("warren-commit".into())
            .spawn(move || {
                let parts = (&*definitions, &*pending, &*syncer, &*retired, &*budget);
                commit_loop(&inbox, parts, &recorded);
            })?;
        Ok(Self { requests, stats })
    }

    /// Asks for `targets` to be made durable; `done` hears whether they all were.
    pub fn submit(&self, targets: Vec<Arc<dyn SyncTarget>>, done: Option<oneshot::Sender<bool>>) {
        self.send(Request {
            targets,
            done: done.map(Done::Channel),
        });
    }

    /// Asks for `targets` to be made durable, then runs `then` on the commit thread with
    /// whether they all were.
    pub fn submit_then(
        &self,
        targets: Vec<Arc<dyn SyncTarget>>,
        then: impl FnOnce(bool) + Send + 'static,
    ) {
        self.send(Request {
            targets,
            done: Some(Done::Then(Box::new(then))),
        });
    }

    /// What the rounds did so far.
    pub fn stats(&self) -> &crate::stats::CommitStats {
        &self.stats
    }

    fn send(&self, request: Request) {
        if let Err(mpsc::SendError(request)) = self.requests.send(request)
            && let Some(done) = request.done
        {
            done.tell(false);
        }
    }
}

/// What a commit round works on.
type RoundParts<'a> = (
    &'a Mutex<DefinitionStore>,
    &'a PendingChanges,
    &'a Syncer,
    &'a Retired,
    &'a FdBudget,
);

fn commit_loop(
    inbox: &mpsc::Receiver<Request>,
    (definitions, pending, syncer, retired, budget): RoundParts<'_>,
    stats: &crate::stats::CommitStats,
) {
    while let Ok(first) = inbox.recv() {
        let mut batch = vec![first];
        batch.extend(inbox.try_iter());
        let started = std::time::Instant::now();
        let outcome = commit_round(
            definitions,
            pending,
            syncer,
            retired,
            Some(budget),
            batch.iter().map(|r| &r.targets),
        );
        stats.duration.observe(started.elapsed().as_secs_f64());
        stats.requests.observe(batch.len() as f64);
        stats.logs.observe(outcome.targets.len() as f64);
        for took in &outcome.syncs {
            stats.sync.observe(took.as_secs_f64());
        }
        for request in batch {
            let ok = request.targets.iter().all(|t| outcome.durable(t));
            if let Some(done) = request.done {
                done.tell(ok);
            }
        }
    }
}

/// What one group-commit round achieved.
#[derive(Debug)]
pub struct RoundOutcome {
    definitions_ok: bool,
    /// Each target seen (by address) and whether its appends are durable.
    targets: HashMap<*const (), bool>,
    /// How long each sync of the logs took (one per chunk that had any to sync).
    syncs: Vec<std::time::Duration>,
}

impl RoundOutcome {
    /// Whether the definitions were synced in this round.
    pub fn definitions_ok(&self) -> bool {
        self.definitions_ok
    }

    /// Whether `target`'s appends up to the round are durable (and the definitions too).
    pub fn durable(&self, target: &Arc<dyn SyncTarget>) -> bool {
        let key = Arc::as_ptr(target).cast::<()>();
        self.definitions_ok && self.targets.get(&key).copied().unwrap_or(false)
    }
}

/// One group-commit round: writes the pending definitions changes, syncs
/// the definitions (then removes the logs retired before that sync), has every target write its buffers, syncs them all through `syncer`, and
/// tells each target its own outcome (a log the sync failed for is poisoned, the others
/// are confirmed).
///
/// Targets are synced in chunks that fit the logs' descriptor `budget`: when fewer than
/// [`ROUND_NEED`] permits are left, the targets begun so far are synced and completed,
/// which closes the descriptors they opened for the round, before more are begun. Under
/// the budget a round is one chunk.
pub fn commit_round<'a>(
    definitions: &Mutex<DefinitionStore>,
    pending: &PendingChanges,
    syncer: &Syncer,
    retired: &Retired,
    budget: Option<&FdBudget>,
    requests: impl Iterator<Item = &'a Vec<Arc<dyn SyncTarget>>>,
) -> RoundOutcome {
    pending.write(definitions, retired);
    // Taken before the sync: their deletions were recorded before it.
    let retiring = retired
        .lock()
        .map(|mut r| std::mem::take(&mut *r))
        .unwrap_or_default();
    let definitions_ok = match definitions.lock() {
        Ok(mut defs) => defs
            .sync()
            .inspect_err(|e| tracing::error!(error = %e, "cannot sync definitions"))
            .is_ok(),
        Err(_) => false,
    };
    if definitions_ok {
        for log in retiring {
            let dir = log.dir().to_path_buf();
            if let Err(error) = log.delete() {
                tracing::warn!(dir = %dir.display(), %error, "cannot remove the log of a deleted queue; it goes at the next start");
            }
        }
    } else if let Ok(mut r) = retired.lock() {
        r.extend(retiring);
    }
    // Every log writes its buffers first, then one sync covers them all (one per chunk).
    let mut seen: HashMap<*const (), bool> = HashMap::new();
    let mut began: Vec<&Arc<dyn SyncTarget>> = Vec::new();
    let mut pending = Vec::new();
    let mut syncs = Vec::new();
    let mut finish = |seen: &mut HashMap<*const (), bool>,
                      began: &mut Vec<&Arc<dyn SyncTarget>>,
                      pending: &mut Vec<super::PendingSync>| {
        let started = std::time::Instant::now();
        let results: Vec<super::Result<()>> = syncer.sync(pending);
        if !pending.is_empty() {
            syncs.push(started.elapsed());
        }
        for ((target, sync), result) in began.drain(..).zip(pending.drain(..)).zip(&results) {
            let durable = target.complete_sync(sync, result);
            seen.insert(Arc::as_ptr(target).cast::<()>(), durable);
        }
    };
    for targets in requests {
        for target in targets {
            let key = Arc::as_ptr(target).cast::<()>();
            if seen.contains_key(&key) {
                continue;
            }
            if !pending.is_empty() && budget.is_some_and(|b| b.round_room() < ROUND_NEED) {
                finish(&mut seen, &mut began, &mut pending);
            }
            // Not durable until its sync completes (or at once if it keeps no log).
            let ok = match target.begin_sync() {
                Some(Ok(sync)) => {
                    began.push(target);
                    pending.push(sync);
                    false
                }
                Some(Err(_)) => false,
                None => true,
            };
            seen.insert(key, ok);
        }
    }
    finish(&mut seen, &mut began, &mut pending);
    RoundOutcome {
        definitions_ok,
        targets: seen,
        syncs,
    }
}

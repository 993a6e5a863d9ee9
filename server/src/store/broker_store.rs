//! A broker's data directory: the lock that keeps other brokers out, the durable
//! definitions, one log directory per durable queue, the spill logs of transient queues,
//! and the group commit.
//!
//! Layout: `warren.lock`, `definitions.json` + `definitions.log`, `queues/<id>/`,
//! `spill/<id>/` (emptied at every start: it only ever holds transient messages).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::commit::{GroupCommit, Retired, SyncTarget};
use super::definitions::{DefinitionStore, Definitions, DefinitionsError};
use super::fd_budget::FdBudget;
use super::format::DEFAULT_SEGMENT_SIZE;
use super::fs::{FsRef, RealFs};
use super::pending::PendingChanges;
use super::stream_log::{StreamFiles, StreamLog, StreamRecovery};
use super::stream_offsets::StreamOffsets;
use super::{DataDirLock, QueueLog, Recovery, Result, StoreError, Syncer};

const QUEUES_DIR: &str = "queues";
const SPILL_DIR: &str = "spill";
/// Names a Warren data directory may hold; anything else means it is not ours.
const KNOWN_ENTRIES: [&str; 8] = [
    "warren.lock",
    // `warren ctl`'s socket (crate::ctl::SOCKET_NAME), left behind by a kill.
    "warren.sock",
    "definitions.json",
    "definitions.log",
    "definitions.tmp",
    QUEUES_DIR,
    SPILL_DIR,
    "lost+found",
];

/// The open data directory of a running broker.
#[derive(Debug)]
pub struct BrokerStore {
    fs: FsRef,
    dir: PathBuf,
    _lock: Option<DataDirLock>,
    definitions: Arc<Mutex<DefinitionStore>>,
    /// Definitions changes made but not yet written; each commit round writes them.
    pending: Arc<PendingChanges>,
    /// Shared with the commit thread; tests run rounds through it directly.
    #[cfg_attr(not(test), allow(dead_code))]
    syncer: Arc<Syncer>,
    retired: Arc<Retired>,
    commit: GroupCommit,
    /// Segment size of the queue logs it creates and opens.
    segment_size: u64,
    /// Shared by every log it creates or opens, so that many queues stay within the open
    /// files limit.
    fd_budget: Arc<FdBudget>,
    /// Tests drive every commit round themselves (`commit_now`): nothing may run on the
    /// commit thread behind their back.
    #[cfg(test)]
    manual_rounds: bool,
    /// With manual rounds: the commit requests made meanwhile, each with what to run
    /// once it is served, waiting for the next [`commit_now`](Self::commit_now).
    #[cfg(test)]
    held: Held,
    /// Ids of the queue logs this store created or opened: never orphans, whatever the
    /// definitions say (a log created during restore, a record that failed).
    known_ids: Mutex<HashSet<String>>,
}

impl BrokerStore {
    /// Opens (creating if needed) the data directory `dir`: takes its lock, refuses a
    /// directory that belongs to something else, and loads the definitions.
    ///
    /// # Errors
    /// Another broker holds the lock, the directory is not Warren's or of another
    /// version, its definitions are damaged ([`StoreError::Definitions`]), or I/O fails.
    pub fn open(dir: &Path) -> Result<(Self, Definitions, usize)> {
        let fs = RealFs::shared();
        fs.create_dir_all(dir)
            .map_err(StoreError::io("create directory", dir))?;
        check_entries(&fs, dir)?;
        let lock = DataDirLock::acquire(dir)?;
        Self::open_in(fs, dir, Some(lock))
    }

    /// As [`open`](Self::open) on the file system `fs`, with `lock` already held (tests on
    /// a simulated file system hold none).
    ///
    /// # Errors
    /// As [`open`](Self::open).
    pub(crate) fn open_in(
        fs: FsRef,
        dir: &Path,
        lock: Option<DataDirLock>,
    ) -> Result<(Self, Definitions, usize)> {
        fs.create_dir_all(dir)
            .map_err(StoreError::io("create directory", dir))?;
        check_entries(&fs, dir)?;
        let (definitions, defs, cut) =
            DefinitionStore::open_in(fs.clone(), dir).map_err(|e| match e {
                DefinitionsError::Incompatible { .. } => StoreError::Incompatible {
                    path: dir.to_owned(),
                    detail: e.to_string(),
                },
                other => StoreError::Definitions(other),
            })?;
        let definitions = Arc::new(Mutex::new(definitions));
        let syncer = Arc::new(Syncer::open(&fs, dir)?);
        let retired = Arc::new(Retired::default());
        let pending = Arc::new(PendingChanges::default());
        let fd_budget = FdBudget::from_rlimit();
        let commit = GroupCommit::start(
            definitions.clone(),
            pending.clone(),
            syncer.clone(),
            retired.clone(),
            fd_budget.clone(),
        )
        .map_err(StoreError::io("start the commit thread", dir))?;
        let queues = dir.join(QUEUES_DIR);
        fs.create_dir_all(&queues)
            .map_err(StoreError::io("create directory", &queues))?;
        let spill = dir.join(SPILL_DIR);
        if fs.exists(&spill).map_err(StoreError::io("stat", &spill))? {
            fs.remove_dir_all(&spill)
                .map_err(StoreError::io("remove directory", &spill))?;
        }
        fs.create_dir_all(&spill)
            .map_err(StoreError::io("create directory", &spill))?;
        // Their entries must be durable before any log in them is: a log syncs its own
        // directory and its parent, never this one.
        fs.sync_dir(dir)
            .map_err(StoreError::io("fsync directory", dir))?;
        Ok((
            Self {
                fs,
                dir: dir.to_owned(),
                _lock: lock,
                definitions,
                pending,
                syncer,
                retired,
                commit,
                segment_size: DEFAULT_SEGMENT_SIZE,
                fd_budget,
                #[cfg(test)]
                manual_rounds: false,
                #[cfg(test)]
                held: Held::default(),
                known_ids: Mutex::new(HashSet::new()),
            },
            defs,
            cut,
        ))
    }

    /// Appends a definitions change at once, durable at the next group commit; on
    /// failure nothing of it is recorded (store tests write changes directly; the
    /// broker queues them in [`pending`](Self::pending)).
    ///
    /// # Errors
    /// The change could not be written.
    #[cfg(test)]
    pub(crate) fn try_record(&self, change: &super::definitions::Change) -> Result<()> {
        let mut defs = self
            .definitions
            .lock()
            .map_err(|_| StoreError::Misuse("definitions store poisoned by a panic"))?;
        defs.record(change).map_err(StoreError::Definitions)
    }

    /// What the group commit's rounds did so far.
    pub fn commit_stats(&self) -> &crate::stats::CommitStats {
        self.commit.stats()
    }

    /// Where definitions changes made under registry locks wait to be written.
    pub fn pending(&self) -> &PendingChanges {
        &self.pending
    }

    /// Writes the pending definitions changes (see [`PendingChanges`]), in order; a
    /// commit round then removes the logs this let go.
    pub fn write_pending(&self) {
        if self.pending.write(&self.definitions, &self.retired) {
            self.ask_for_round();
        }
    }

    /// The log of queue `name` of `vhost`, whose deletion could not be written: kept
    /// until the deletion is stored (see [`PendingChanges`]).
    pub fn keep_undeleted(&self, vhost: &str, name: &str, logs: Vec<QueueLog>) {
        for log in self.pending.keep_undeleted(vhost, name, logs) {
            self.retire_queue_log(log);
        }
    }

    fn queue_dir(&self, id: &str) -> PathBuf {
        self.dir.join(QUEUES_DIR).join(id)
    }

    fn remember(&self, id: &str) {
        if let Ok(mut ids) = self.known_ids.lock() {
            ids.insert(id.to_owned());
        }
    }

    /// Creates the log of a newly declared durable queue.
    ///
    /// A partitioned queue's partitions other than the first have theirs made by
    /// [`BrokerStore::create_partition_log`].
    ///
    /// # Errors
    /// I/O failures.
    pub fn create_queue_log(&self, id: &str) -> Result<QueueLog> {
        self.remember(id);
        let mut log = QueueLog::create_in(self.fs.clone(), self.queue_dir(id), self.segment_size)?;
        log.set_fd_budget(self.fd_budget.clone());
        Ok(log)
    }

    /// Creates the log of partition `p` of the durable partitioned queue whose own log
    /// (partition 0's) has id `id`, on the partition's first message: beside it, as
    /// `<id>.p<p>`, so that an idle partition has no directory.
    ///
    /// # Errors
    /// I/O failures.
    pub fn create_partition_log(&self, id: &str, p: u16) -> Result<QueueLog> {
        self.create_queue_log(&partition_log_id(id, p))
    }

    /// Opens the log of partition `p` of a durable partitioned queue at start-up, if it
    /// ever made one.
    ///
    /// # Errors
    /// I/O failures or an incompatible log.
    pub fn open_partition_log(&self, id: &str, p: u16) -> Result<Option<(QueueLog, Recovery)>> {
        let id = partition_log_id(id, p);
        let dir = self.queue_dir(&id);
        if !self.fs.exists(&dir).map_err(StoreError::io("stat", &dir))? {
            return Ok(None);
        }
        self.open_queue_log(&id).map(Some)
    }

    /// Creates a spill log for a transient queue whose backlog outgrew memory.
    ///
    /// # Errors
    /// I/O failures.
    pub fn create_spill_log(&self) -> Result<QueueLog> {
        let dir = self.dir.join(SPILL_DIR).join(crate::names::queue_log_id());
        let mut log = QueueLog::create_scratch_in(self.fs.clone(), dir, DEFAULT_SEGMENT_SIZE)?;
        log.set_fd_budget(self.fd_budget.clone());
        Ok(log)
    }

    /// Opens a durable queue's log at start-up.
    ///
    /// # Errors
    /// I/O failures or an incompatible log.
    pub fn open_queue_log(&self, id: &str) -> Result<(QueueLog, Recovery)> {
        self.remember(id);
        let dir = self.queue_dir(id);
        let (mut log, recovery) = if self.fs.exists(&dir).map_err(StoreError::io("stat", &dir))? {
            QueueLog::open_in(self.fs.clone(), dir, self.segment_size)?
        } else {
            let log = QueueLog::create_in(self.fs.clone(), &dir, self.segment_size)?;
            (log, Recovery::default())
        };
        log.set_fd_budget(self.fd_budget.clone());
        Ok((log, recovery))
    }

    /// Starts the log and offsets of partition `p` of a newly declared stream (0 for
    /// a stream without partitions), in the directory of its (empty) queue log `home`,
    /// which then stands for the stream in the queue's life cycle, or a subdirectory
    /// of it for partitions past the first.
    ///
    /// # Errors
    /// I/O failures, or a segment size out of range.
    pub fn create_stream(
        &self,
        home: &QueueLog,
        p: u16,
        segment_bytes: u64,
        bloom_bytes: u8,
    ) -> Result<StreamFiles> {
        let dir = stream_dir(home, p);
        let mut log = StreamLog::create(self.fs.clone(), &dir, segment_bytes, bloom_bytes)?;
        if p > 0 {
            // The queue's directory entry, should partition 0 not be synced first.
            log.sync_outer_dir(home.dir().parent().map(Path::to_path_buf));
        }
        let offsets = StreamOffsets::open(self.fs.clone(), &dir)?;
        Ok(StreamFiles { log, offsets })
    }

    /// Opens partition `p` of a stream at start-up (see [`BrokerStore::create_stream`]);
    /// one whose directory a crash kept from being made starts empty.
    ///
    /// # Errors
    /// I/O failures or an incompatible log.
    pub fn open_stream(
        &self,
        home: &QueueLog,
        p: u16,
        segment_bytes: u64,
        bloom_bytes: u8,
    ) -> Result<(StreamFiles, StreamRecovery)> {
        let dir = stream_dir(home, p);
        if !self.fs.exists(&dir).map_err(StoreError::io("stat", &dir))? {
            let files = self.create_stream(home, p, segment_bytes, bloom_bytes)?;
            return Ok((files, StreamRecovery::default()));
        }
        let (log, recovery) = StreamLog::open(self.fs.clone(), &dir, segment_bytes, bloom_bytes)?;
        let offsets = StreamOffsets::open(self.fs.clone(), &dir)?;
        Ok((StreamFiles { log, offsets }, recovery))
    }

    /// The durable definitions as recorded so far (for an export).
    pub fn definitions_snapshot(&self) -> Option<super::definitions::Definitions> {
        self.definitions
            .lock()
            .ok()
            .map(|defs| defs.current().clone())
    }

    /// Removes the log of a deleted queue once its deletion (recorded before this call) is
    /// durable: at the end of the next group commit's definitions sync, which this asks
    /// for. Removing it at once (`QueueLog::delete`) would, after a crash before that
    /// sync, bring the queue back without its messages.
    pub fn retire_queue_log(&self, log: QueueLog) {
        match self.retired.lock() {
            Ok(mut retired) => retired.push(log),
            Err(_) => return,
        }
        self.ask_for_round();
    }

    /// Has the commit thread run a round soon (tests with manual rounds run their own).
    fn ask_for_round(&self) {
        #[cfg(test)]
        if self.manual_rounds {
            return;
        }
        self.commit.submit(Vec::new(), None);
    }

    /// Deletes the queue directories that are provably garbage: named by no queue of the
    /// definitions as they stand now (after restore, with what restore recorded) and
    /// never created nor opened by this store (queues deleted while their directory
    /// removal was cut short). Call it once restore is done. Returns how many it removed.
    pub fn remove_orphans(&self) -> usize {
        let mut keep: HashSet<String> = match self.known_ids.lock() {
            Ok(ids) => ids.clone(),
            Err(_) => return 0,
        };
        match self.definitions.lock() {
            Ok(defs) => keep.extend(defs.current().queues.iter().map(|q| q.id.clone())),
            Err(_) => return 0,
        }
        let queues = self.dir.join(QUEUES_DIR);
        let names = match self.fs.read_dir(&queues) {
            Ok(names) => names,
            Err(error) => {
                tracing::warn!(dir = %queues.display(), %error, "cannot list queue logs; no orphan removed");
                return 0;
            }
        };
        let mut removed = 0;
        for name in names {
            let name = name.to_string_lossy().into_owned();
            // A partition's log belongs to its queue's.
            let owner = name.rsplit_once(".p").map_or(name.as_str(), |(id, _)| id);
            if keep.contains(&name) || keep.contains(owner) {
                continue;
            }
            let path = queues.join(&name);
            tracing::warn!(path = %path.display(), "removing the log of a queue that no longer exists");
            match self.fs.remove_dir_all(&path) {
                Ok(()) => removed += 1,
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "cannot remove an orphan queue log");
                }
            }
        }
        removed
    }

    /// Asks the group commit to make `targets` durable, then runs `then` (on the commit
    /// thread) with whether it did.
    pub fn commit_then(
        &self,
        targets: Vec<Arc<dyn SyncTarget>>,
        then: impl FnOnce(bool) + Send + 'static,
    ) {
        #[cfg(test)]
        if self.manual_rounds {
            return self.hold(targets, Box::new(then));
        }
        self.commit.submit_then(targets, then);
    }

    /// Asks the group commit to make `targets` durable; `done` hears whether it did.
    pub fn commit(
        &self,
        targets: Vec<Arc<dyn SyncTarget>>,
        done: Option<tokio::sync::oneshot::Sender<bool>>,
    ) {
        #[cfg(test)]
        if self.manual_rounds {
            return self.hold(
                targets,
                Box::new(move |durable| {
                    if let Some(done) = done {
                        let _ = done.send(durable);
                    }
                }),
            );
        }
        self.commit.submit(targets, done);
    }

    /// Keeps a commit request for the next manual round.
    #[cfg(test)]
    fn hold(&self, targets: Vec<Arc<dyn SyncTarget>>, then: Box<dyn FnOnce(bool) + Send>) {
        if let Ok(mut held) = self.held.0.lock() {
            held.push(HeldRequest { targets, then });
        }
    }

    /// Uses `size` as the segment size of queue logs (tests roll segments often).
    #[cfg(test)]
    pub(crate) fn set_segment_size(&mut self, size: u64) {
        self.segment_size = size;
    }

    /// Shares `budget` among the queue logs it creates and opens from now on.
    #[cfg(test)]
    pub(crate) fn set_fd_budget(&mut self, budget: Arc<FdBudget>) {
        self.fd_budget = budget;
    }

    /// Leaves every commit round to [`commit_now`](Self::commit_now): commit requests
    /// (`commit`, `commit_then`) wait for it instead of going to the commit thread, so
    /// that a test sees every file-system call in an order it chose.
    #[cfg(test)]
    pub(crate) fn set_manual_rounds(&mut self) {
        self.manual_rounds = true;
    }

    /// One group-commit round on the caller's thread (tests drive rounds one by one):
    /// over `targets` and the targets of every request held since the last round, whose
    /// follow-up then runs with its own outcome.
    #[cfg(test)]
    pub(crate) fn commit_now(
        &self,
        targets: &Vec<Arc<dyn SyncTarget>>,
    ) -> super::commit::RoundOutcome {
        let held = self
            .held
            .0
            .lock()
            .map(|mut held| std::mem::take(&mut *held))
            .unwrap_or_default();
        let outcome = super::commit::commit_round(
            &self.definitions,
            &self.pending,
            &self.syncer,
            &self.retired,
            Some(&self.fd_budget),
            std::iter::once(targets).chain(held.iter().map(|request| &request.targets)),
        );
        for request in held {
            (request.then)(request.targets.iter().all(|t| outcome.durable(t)));
        }
        outcome
    }
}

/// A commit request held for a manual round: its targets, and what runs once the
/// round served it, with whether they were made durable.
#[cfg(test)]
struct HeldRequest {
    targets: Vec<Arc<dyn SyncTarget>>,
    then: Box<dyn FnOnce(bool) + Send>,
}

/// The commit requests held for the next manual round.
#[cfg(test)]
#[derive(Default)]
struct Held(Mutex<Vec<HeldRequest>>);

#[cfg(test)]
impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held = self.0.lock().map_or(0, |held| held.len());
        f.debug_struct("Held").field("requests", &held).finish()
    }
}

/// Refuses a directory holding anything Warren did not write.
fn check_entries(fs: &FsRef, dir: &Path) -> Result<()> {
    let names = fs
        .read_dir(dir)
        .map_err(StoreError::io("read directory", dir))?;
    for name in names {
        let name = name.to_string_lossy();
        if !KNOWN_ENTRIES.contains(&name.as_ref()) {
            return Err(StoreError::Incompatible {
                path: dir.to_owned(),
                detail: format!(
                    "it holds '{name}', which Warren did not write: not a Warren data directory"
                ),
            });
        }
    }
    Ok(())
}

/// The log id of partition `p` of the partitioned queue whose own log has id `id`.
fn partition_log_id(id: &str, p: u16) -> String {
    format!("{id}.p{p}")
}

/// Where partition `p` of the stream whose queue log is `home` keeps its files.
fn stream_dir(home: &QueueLog, p: u16) -> PathBuf {
    if p == 0 {
        home.dir().to_path_buf()
    } else {
        home.dir().join(format!("p{p:04}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoredMessage;
    use crate::store::sim::{PowerLoss, SimFs};

    /// The directories a fresh data directory gets are durable before anything goes
    /// into them: a power loss during the very first run keeps what it confirmed.
    #[test]
    fn the_first_runs_confirmed_messages_survive_a_power_loss() {
        let data = Path::new("/data");
        let sim = SimFs::new();
        sim.mkdir_durable(data);
        let (store, _, _) = BrokerStore::open_in(sim.shared(), data, None).expect("open");
        let mut log = store.create_queue_log("q").expect("create a log");
        let message = StoredMessage {
            exchange: "".into(),
            routing_key: "q".into(),
            properties: bytes::Bytes::new(),
            body: bytes::Bytes::from_static(b"confirmed"),
            expires_at_ms: 0,
            persistent: true,
        };
        log.append(&message).expect("append");
        log.sync().expect("sync");
        let after = sim.power_loss(PowerLoss::DropUnsynced);
        drop((log, store));
        let (store, _, _) = BrokerStore::open_in(after.shared(), data, None).expect("reopen");
        let (_, recovery) = store.open_queue_log("q").expect("open the log");
        assert_eq!(recovery.messages, 1);
    }
}

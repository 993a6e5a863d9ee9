//! A broker's data directory: the lock that keeps other brokers out, the durable
//! definitions, one log directory per durable queue, the spill logs of transient queues,
//! and the group commit.
//!
//! Layout: `warren.lock`, `definitions.json` + `definitions.log`, `queues/<id>/`,
//! `spill/<id>/` (emptied at every start: it only ever holds transient messages).

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::commit::{GroupCommit, SyncTarget};
use super::definitions::{Change, DefinitionStore, Definitions};
use super::format::DEFAULT_SEGMENT_SIZE;
use super::{DataDirLock, QueueLog, Recovery, Result, StoreError};

const QUEUES_DIR: &str = "queues";
const SPILL_DIR: &str = "spill";
/// Names a Warren data directory may hold; anything else means it is not ours.
const KNOWN_ENTRIES: [&str; 7] = [
    "warren.lock",
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
    dir: PathBuf,
    _lock: DataDirLock,
    definitions: Arc<Mutex<DefinitionStore>>,
    commit: GroupCommit,
}

impl BrokerStore {
    /// Opens (creating if needed) the data directory `dir`: takes its lock, refuses a
    /// directory that belongs to something else, and loads the definitions.
    ///
    /// # Errors
    /// Another broker holds the lock, the directory is not Warren's or of another
    /// version, or I/O fails.
    pub fn open(dir: &Path) -> Result<(Self, Definitions, usize)> {
        fs::create_dir_all(dir).map_err(StoreError::io("create directory", dir))?;
        let entries = fs::read_dir(dir).map_err(StoreError::io("read directory", dir))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if !KNOWN_ENTRIES.contains(&name.as_ref()) {
                return Err(StoreError::Incompatible {
                    path: dir.to_owned(),
                    detail: format!(
                        "it holds '{name}', which Warren did not write: \
                         not a Warren data directory"
                    ),
                });
            }
        }
        let lock = DataDirLock::acquire(dir)?;
        let (definitions, defs, cut) =
            DefinitionStore::open(dir).map_err(|e| StoreError::Incompatible {
                path: dir.to_owned(),
                detail: e.to_string(),
            })?;
        let definitions = Arc::new(Mutex::new(definitions));
        let commit = GroupCommit::start(definitions.clone())
            .map_err(StoreError::io("start the commit thread", dir))?;
        let queues = dir.join(QUEUES_DIR);
        fs::create_dir_all(&queues).map_err(StoreError::io("create directory", &queues))?;
        let spill = dir.join(SPILL_DIR);
        if spill.exists() {
            fs::remove_dir_all(&spill).map_err(StoreError::io("remove directory", &spill))?;
        }
        fs::create_dir_all(&spill).map_err(StoreError::io("create directory", &spill))?;
        Ok((
            Self {
                dir: dir.to_owned(),
                _lock: lock,
                definitions,
                commit,
            },
            defs,
            cut,
        ))
    }

    /// Appends a definitions change; durable at the next group commit.
    pub fn record(&self, change: &Change) {
        let result = match self.definitions.lock() {
            Ok(mut defs) => defs.record(change).map_err(|e| e.to_string()),
            Err(_) => Err("definitions store poisoned".to_owned()),
        };
        if let Err(error) = result {
            tracing::error!(%error, ?change, "cannot record a definitions change");
        }
    }

    fn queue_dir(&self, id: &str) -> PathBuf {
        self.dir.join(QUEUES_DIR).join(id)
    }

    /// Creates the log of a newly declared durable queue.
    ///
    /// # Errors
    /// I/O failures.
    pub fn create_queue_log(&self, id: &str) -> Result<QueueLog> {
        QueueLog::create(self.queue_dir(id), DEFAULT_SEGMENT_SIZE)
    }

    /// Creates a spill log for a transient queue whose backlog outgrew memory.
    ///
    /// # Errors
    /// I/O failures.
    pub fn create_spill_log(&self) -> Result<QueueLog> {
        let dir = self.dir.join(SPILL_DIR).join(crate::names::queue_log_id());
        QueueLog::create_scratch(dir, DEFAULT_SEGMENT_SIZE)
    }

    /// Opens a durable queue's log at start-up.
    ///
    /// # Errors
    /// I/O failures or an incompatible log.
    pub fn open_queue_log(&self, id: &str) -> Result<(QueueLog, Recovery)> {
        let dir = self.queue_dir(id);
        if !dir.exists() {
            return QueueLog::create(&dir, DEFAULT_SEGMENT_SIZE)
                .map(|log| (log, Recovery::default()));
        }
        QueueLog::open(dir, DEFAULT_SEGMENT_SIZE)
    }

    /// Deletes queue directories no definition refers to (queues deleted while their
    /// directory removal was cut short).
    pub fn remove_orphans(&self, keep: &HashSet<&str>) {
        let Ok(entries) = fs::read_dir(self.dir.join(QUEUES_DIR)) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if !keep.contains(name.to_string_lossy().as_ref()) {
                let path = entry.path();
                tracing::warn!(path = %path.display(), "removing the log of a queue that no longer exists");
                let _ = fs::remove_dir_all(path);
            }
        }
    }

    /// Asks the group commit to make `targets` durable, then runs `then` (on the commit
    /// thread) with whether it did.
    pub fn commit_then(
        &self,
        targets: Vec<Arc<dyn SyncTarget>>,
        then: impl FnOnce(bool) + Send + 'static,
    ) {
        self.commit.submit_then(targets, then);
    }

    /// Asks the group commit to make `targets` durable; `done` hears whether it did.
    pub fn commit(
        &self,
        targets: Vec<Arc<dyn SyncTarget>>,
        done: Option<tokio::sync::oneshot::Sender<bool>>,
    ) {
        self.commit.submit(targets, done);
    }
}

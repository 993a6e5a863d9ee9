//! The durable message store: one append-only log per queue, LavinMQ-style.
//!
//! A queue's log is a directory of segment files holding checksummed message records, and
//! beside each segment an ack file that records acks and delivered markers by offset. A
//! queue keeps no per-message index in memory: positions come from the segment files and,
//! per segment not yet fully acked, a sorted list of acked offsets. A segment whose
//! messages are all acked is deleted, so disk use follows the backlog, not the history.
//!
//! - [`fs`]: the one seam for every file-system call, so tests can inject faults.
//! - [`format`]: file names, headers and record encoding, in one place.
//! - [`queue_log`]: [`QueueLog`], one queue's log: append, group-commit sync, ack,
//!   paged reads, crash recovery.
//! - [`fd_budget`]: how many file descriptors the queue logs may hold at once.
//! - [`lock`]: [`DataDirLock`], so that two brokers never share a data directory.
//! - [`definitions`]: durable exchanges, queues and bindings: a snapshot plus a change log.
//! - [`field_json`]: the lossless JSON form of field tables the definitions are kept in.
//! - [`pending`]: definitions changes made under registry locks, waiting to be written.
//! - [`stream_log`]: [`stream_log::StreamLog`], one stream's log: chunked appends, group-commit
//!   sync, reads from any offset or time, retention, crash recovery.
//! - [`stream_offsets`]: the committed offsets of a stream's tracked consumers.
//! - [`stream_format`]: file names, chunks, entries and index entries of stream logs.
//! - [`commit`]: the group commit: one thread, one sync for many appends to many logs.
//! - [`syncer`]: how one group-commit round syncs many logs and learns which failed.
//! - [`broker_store`]: a broker's data directory: lock, definitions, queue logs, commit.

pub mod broker_store;
#[cfg(test)]
mod budget_tests;
pub mod commit;
#[cfg(test)]
mod crash_tests;
pub mod definitions;
pub mod fd_budget;
pub mod field_json;
pub mod format;
pub mod fs;
pub mod lock;
#[cfg(test)]
mod model_tests;
pub mod pending;
pub mod queue_log;
#[cfg(test)]
pub mod sim;
pub mod stream_format;
pub mod stream_log;
#[cfg(test)]
mod stream_log_tests;
pub mod stream_offsets;
pub mod syncer;

use std::fmt;
use std::io;
use std::path::PathBuf;

use bytes::Bytes;
use bytestring::ByteString;

pub use broker_store::BrokerStore;
pub use commit::{GroupCommit, SyncTarget};
pub use lock::DataDirLock;
pub use queue_log::{PendingSync, QueueLog, Recovery};
pub use syncer::Syncer;

/// Where a message record lives in its queue's log: its segment and its byte offset there.
///
/// This is the durable identity of a message in its queue: acks and delivered markers name
/// it, and positions order messages in publish order (segment first, then offset).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentPosition {
    /// Segment number (the file `NNNNNNNNNN.seg`).
    pub segment: u32,
    /// Byte offset of the record within its segment file.
    pub offset: u32,
}

impl fmt::Display for SegmentPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.segment, self.offset)
    }
}

/// A message as the store keeps it: what a queue needs to deliver it again after a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Published with delivery mode 2; only persistent messages survive a restart.
    pub persistent: bool,
    /// Expiry deadline in milliseconds since the Unix epoch, 0 for none. Computed once when
    /// the message is enqueued, so that replaying the log never reads the clock.
    pub expires_at_ms: u64,
    /// Exchange the message was published to (at most 255 bytes).
    pub exchange: ByteString,
    /// Routing key it was published with (at most 255 bytes).
    pub routing_key: ByteString,
    /// Encoded content properties, as they came from the publisher.
    pub properties: Bytes,
    /// The body.
    pub body: Bytes,
}

/// A message record to append, borrowed from wherever the message is kept: a queue's
/// messages are written without first being copied into a [`StoredMessage`].
#[derive(Debug, Clone, Copy)]
pub struct MessageRecord<'a> {
    /// Published with delivery mode 2.
    pub persistent: bool,
    /// Expiry deadline in milliseconds since the Unix epoch, 0 for none.
    pub expires_at_ms: u64,
    /// Exchange the message was published to.
    pub exchange: &'a str,
    /// Routing key it was published with.
    pub routing_key: &'a str,
    /// Encoded content properties.
    pub properties: &'a [u8],
    /// The body.
    pub body: &'a [u8],
}

impl<'a> From<&'a StoredMessage> for MessageRecord<'a> {
    fn from(msg: &'a StoredMessage) -> Self {
        Self {
            persistent: msg.persistent,
            expires_at_ms: msg.expires_at_ms,
            exchange: &msg.exchange,
            routing_key: &msg.routing_key,
            properties: &msg.properties,
            body: &msg.body,
        }
    }
}

/// What can go wrong in the store. Every I/O error names the operation and the file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An operating-system error on a file or directory.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What the store was doing ("write", "fdatasync", …).
        op: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A file whose header is not Warren's, or from a version this build cannot read.
    #[error(
        "{}: not a Warren data directory or an incompatible version ({detail})",
        path.display()
    )]
    Incompatible {
        /// The offending file.
        path: PathBuf,
        /// What was found.
        detail: String,
    },
    /// A record that passed its checksum at start-up but cannot be read now.
    #[error("{}: corrupt record at offset {offset}: {detail}", path.display())]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte offset of the record.
        offset: u64,
        /// What is wrong with it.
        detail: String,
    },
    /// A message that the record format cannot hold.
    #[error("message cannot be stored: {0}")]
    InvalidMessage(&'static str),
    /// `QueueLog::create` on a directory that already holds segments.
    #[error("{}: already holds a queue log", path.display())]
    AlreadyExists {
        /// The directory.
        path: PathBuf,
    },
    /// The data directory is locked by another process.
    #[error("another Warren is using data directory {}", path.display())]
    Locked {
        /// The data directory.
        path: PathBuf,
    },
    /// An fdatasync failed earlier; the kernel may have dropped the data, so this log
    /// refuses further writes until a restart recovers it from what is really on disk.
    #[error("the queue log failed to sync earlier and refuses writes: {0}")]
    Poisoned(String),
    /// A call the log cannot honour in its state (a second sync while one is in flight,
    /// segment numbers exhausted): a bug in the caller, reported rather than panicking.
    #[error("queue log misuse: {0}")]
    Misuse(&'static str),
    /// The definitions could not be loaded or written (damaged change log, I/O).
    #[error(transparent)]
    Definitions(#[from] definitions::DefinitionsError),
    /// Appends refused while earlier ones wait in memory for writes that keep failing
    /// (a full disk): memory must not take what the disk will not.
    #[error("appends are refused while {0} bytes wait for writes that keep failing: {1}")]
    Backlogged(usize, String),
    /// A segment size outside the supported range.
    #[error("segment size {0} is outside {min}..={max}", min = format::MIN_SEGMENT_SIZE, max = format::MAX_SEGMENT_SIZE)]
    InvalidSegmentSize(u64),
}

impl StoreError {
    /// The underlying OS error kind, if this is an I/O error (for example to tell a full
    /// disk, `StorageFull`, from other failures).
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            StoreError::Io { source, .. } => Some(source.kind()),
            _ => None,
        }
    }

    /// Whether this is a shortage that passes by itself (too many open files, no kernel
    /// memory) rather than a failure of the storage: the operation was not done, nothing
    /// was lost, and it may be retried.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Io { source, .. } => fs::is_transient(source),
            _ => false,
        }
    }

    /// Wraps an I/O error with the operation and the path.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| StoreError::Io { op, path, source }
    }
}

/// The store's result type.
pub type Result<T> = std::result::Result<T, StoreError>;

#[cfg(test)]
pub(crate) mod test_support {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A fresh directory path under the system temp dir, removed on drop.
    pub struct TempDir(pub PathBuf);

    impl TempDir {
        pub fn new(tag: &str) -> Self {
            static COUNTER: AtomicU32 = AtomicU32::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path =
                std::env::temp_dir().join(format!("warren-store-{tag}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            Self(path)
        }

        pub fn path(&self) -> &std::path::Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

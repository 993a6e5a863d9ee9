//! One queue's durable log: segment files of message records plus per-segment ack files.
//!
//! Memory per queue does not grow with the backlog: per segment the log keeps its live
//! count, its length and the sorted offsets of acked records (only while the segment is not
//! fully acked); message bodies are paged in with [`QueueLog::read`]. Appends, acks and
//! delivered markers are buffered in memory and written by [`QueueLog::flush`]; one
//! [`QueueLog::sync`] (or the split [`QueueLog::begin_sync`] / [`PendingSync::run`] /
//! [`QueueLog::complete_sync`] for group commit outside a lock) makes every earlier append
//! durable, with the acks and delivered markers recorded before it. Acks are never synced
//! on their own: one not yet synced may be lost in a crash, which means a redelivery,
//! never a loss.
//!
//! Recovery policy ([`QueueLog::open`]): segments are scanned in order and every record's
//! length and CRC32 checked. Only what is provably valid is kept, and nothing provably
//! valid is dropped: a bad record is skipped when a valid record follows it (found at the
//! end its length field names, or else by searching byte by byte for the next record whose
//! length, kind and checksum all hold), and its bytes are remembered as a hole that reads
//! step over; a bad tail with nothing valid after it (a torn write) is cut off. A segment
//! is never deleted because an earlier record or segment is damaged. A segment whose
//! header is all zeros (created, then a power loss before its first sync) is a torn
//! segment, not a foreign file. Every repair is reported in [`Recovery::warnings`] and
//! logged; start-up never fails on damaged data, only on I/O errors or on files that are
//! not Warren's (or from another format version). After recovery, appends go to a new
//! segment, so a recovered segment is never written again, and its transient records
//! count as gone.
//!
//! Durability and errors: [`QueueLog::sync`] fdatasyncs the segments and the ack files
//! written since the last sync and fsyncs the directory when it gained or lost files, so
//! a synced ack never comes back after a power loss. A failed fdatasync/fsync poisons the
//! log (the kernel may have dropped the data and a later fsync could succeed without it);
//! a failure to *open* a directory for lack of descriptors (EMFILE, ENFILE) does not: the
//! sync simply did not happen, is reported, and is retried in full by the next one.
//! All file-system calls go through the store's [`FileSystem`] seam.

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::fd_budget::{self, FdBudget, Hold};
use super::format::{
    self, ACKS_MAGIC, FILE_HEADER_LEN, FLAG_PERSISTENT, FLAGS_OFFSET, LogFile, MAX_RECORD_OFFSET,
    MESSAGE_PREFIX_MAX, MIN_MESSAGE_PAYLOAD, RECORD_HEADER_LEN, SEGMENT_MAGIC,
};
use super::fs::{FileRef, FileSystem, FsRef, OpenMode, RealFs};
use super::{MessageRecord, Result, SegmentPosition, StoreError, StoredMessage};

/// Appends are written out once this much is buffered (one write syscall per this many
/// bytes, whatever the group commit's pace).
const WRITE_BUFFER_LIMIT: usize = 64 << 10;
/// A spill log's appends are written out once this much is buffered: a broker may hold
/// thousands of spill logs, and their buffers are memory the spill means to save.
const SCRATCH_WRITE_BUFFER_LIMIT: usize = 16 << 10;
/// Ack and delivered entries are written out once this much is buffered.
const ACK_BUFFER_LIMIT: usize = 16 << 10;
/// Sequential reads fetch this much per syscall.
const READ_CHUNK: usize = 64 << 10;
/// Buffer of the start-up scan of one segment.
const SCAN_BUFFER: usize = 128 << 10;
/// Term written in every record until replication assigns real ones.
const TERM: u64 = 0;

/// What [`QueueLog::open`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Live messages: persistent and not acked.
    pub messages: u64,
    /// Sum of the body lengths of the live messages.
    pub bytes: u64,
    /// Live messages that carry an expiry.
    pub expiring: u64,
    /// Live messages with a delivered marker: they go out again flagged `redelivered`
    /// (ask [`QueueLog::was_delivered`] for a position).
    pub delivered: u64,
    /// Segments kept (those holding live messages).
    pub segments: usize,
    /// Damage found and repaired (torn tails cut, segments dropped, unreadable ack files),
    /// one sentence each, for the broker's log.
    pub warnings: Vec<String>,
}

/// In-memory state of one segment: no per-message data except acked offsets.
#[derive(Debug)]
struct Segment {
    number: u32,
    /// Bytes of valid data, header included (buffered bytes too, for the writer's).
    len: u64,
    /// Message records neither acked nor gone (transient ones from before a restart).
    live: u32,
    /// Sorted offsets of acked records.
    acked: Vec<u32>,
    /// Sorted offsets of live records with delivered markers found at recovery, once per
    /// marker (repeats count a quorum queue's returns).
    delivered: Vec<u32>,
    /// Encoded ack-file entries not yet written.
    pending: Vec<u8>,
    /// Length of the ack file; 0 when it must be (re)created before the next write.
    acks_len: u64,
    /// Byte ranges of damaged records found at recovery, sorted: reads step over them.
    holes: Vec<(u32, u32)>,
}

impl Segment {
    fn new(number: u32) -> Self {
        Self {
            number,
            len: FILE_HEADER_LEN,
            live: 0,
            acked: Vec::new(),
            delivered: Vec::new(),
            pending: Vec::new(),
            acks_len: 0,
            holes: Vec::new(),
        }
    }

    /// The end of the hole starting at `offset`, if one does.
    fn hole_at(&self, offset: u64) -> Option<u64> {
        if self.holes.is_empty() {
            return None;
        }
        self.holes
            .iter()
            .find(|&&(start, _)| u64::from(start) == offset)
            .map(|&(_, end)| u64::from(end))
    }
}

/// The segment being appended to.
#[derive(Debug)]
struct Writer {
    number: u32,
    path: PathBuf,
    /// `None` once closed to stay within the [`FdBudget`]; reopened by the next write.
    file: Option<FileRef>,
    /// Bytes written to the file; the buffer follows them.
    written: u64,
    buf: Vec<u8>,
    /// Written since the last sync began.
    dirty: bool,
}

/// A read-ahead buffer over one segment, filled with positional reads.
#[derive(Debug)]
struct SegmentReader {
    number: u32,
    path: PathBuf,
    file: FileRef,
    /// Its descriptor is the operation's only ([`Hold::Brief`]): closed when the read
    /// returns.
    brief: bool,
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    start: u64,
}

impl SegmentReader {
    fn open(
        fs: &dyn FileSystem,
        budget: Option<&Arc<FdBudget>>,
        dir: &Path,
        number: u32,
    ) -> Result<Self> {
        let path = dir.join(format::segment_file_name(number));
        let (file, hold) = open_counted(fs, budget, false, &path, OpenMode::Read)
            .map_err(StoreError::io("open", &path))?;
        Ok(Self {
            number,
            path,
            file,
            brief: hold == Hold::Brief,
            buf: Vec::new(),
            start: 0,
        })
    }

    /// Bytes `offset..offset + len`, which must lie before `end`, refilling the buffer with
    /// up to [`READ_CHUNK`] bytes from `offset` when they are not there.
    fn bytes(&mut self, offset: u64, len: usize, end: u64) -> Result<&[u8]> {
        let have =
            offset >= self.start && offset + len as u64 <= self.start + self.buf.len() as u64;
        if !have {
            let want = (len.max(READ_CHUNK) as u64).min(end - offset) as usize;
            self.buf.resize(want, 0);
            if let Err(e) = self.file.read_exact_at(&mut self.buf, offset) {
                self.buf.clear();
                return Err(StoreError::io("read", &self.path)(e));
            }
            self.start = offset;
        }
        let s = (offset - self.start) as usize;
        Ok(&self.buf[s..s + len])
    }

    /// A record's payload as its own allocation: copied from the buffer when small, read
    /// straight into a new buffer when large.
    fn payload(&mut self, offset: u64, len: usize, end: u64) -> Result<Bytes> {
        if len > READ_CHUNK / 2 {
            let mut v = vec![0; len];
            self.file
                .read_exact_at(&mut v, offset)
                .map_err(StoreError::io("read", &self.path))?;
            Ok(Bytes::from(v))
        } else {
            Ok(Bytes::copy_from_slice(self.bytes(offset, len, end)?))
        }
    }
}

/// The fsyncs one group commit owes for a log, taken by [`QueueLog::begin_sync`] so that
/// [`PendingSync::run`] can do them without the queue's lock.
#[derive(Debug)]
#[must_use = "run it and hand it back to QueueLog::complete_sync"]
pub struct PendingSync {
    fs: FsRef,
    /// Segment and ack files written since the last sync, each with the handle the
    /// writes went through (its write-back error cursor predates them).
    files: Vec<(PathBuf, FileRef)>,
    dirs: Vec<PathBuf>,
    /// Whether `dirs` holds the parent directory (the log's directory is new in it).
    parent: bool,
    position: Option<SegmentPosition>,
}

impl PendingSync {
    /// The sync of another kind of log (a stream's): `files` to fdatasync, each with the
    /// handle its writes went through, and `dirs` to fsync.
    pub(crate) fn of_files(fs: FsRef, files: Vec<(PathBuf, FileRef)>, dirs: Vec<PathBuf>) -> Self {
        Self {
            fs,
            files,
            dirs,
            parent: false,
            position: None,
        }
    }

    /// This sync with one more file to fdatasync (written through `file.1`) and,
    /// if given, a directory to fsync.
    pub(crate) fn with_file(mut self, file: (PathBuf, FileRef), dir: Option<PathBuf>) -> Self {
        self.files.push(file);
        self.dirs.extend(dir);
        self
    }

    /// Its files and directories back, for a log to sync again after a transient failure.
    pub(crate) fn into_files(self) -> (Vec<(PathBuf, FileRef)>, Vec<PathBuf>) {
        (self.files, self.dirs)
    }

    /// fdatasyncs the written files and fsyncs directories that gained or lost files.
    ///
    /// # Errors
    /// The first failure. A failed fdatasync or fsync means data may be lost; a failure to
    /// open a directory for lack of descriptors ([`StoreError::is_transient`]) means only
    /// that this sync did not happen.
    pub fn run(&self) -> Result<()> {
        for (path, file) in &self.files {
            file.sync_data()
                .map_err(StoreError::io("fdatasync", path))?;
        }
        for dir in &self.dirs {
            let handle = self
                .fs
                .open(dir, OpenMode::Directory)
                .map_err(StoreError::io("open directory", dir))?;
            handle
                .sync_all()
                .map_err(StoreError::io("fsync directory", dir))?;
        }
        Ok(())
    }

    /// Files and directories this sync covers.
    pub fn touched(&self) -> usize {
        self.files.len() + self.dirs.len()
    }

    /// The last append this sync covers.
    pub fn position(&self) -> Option<SegmentPosition> {
        self.position
    }

    /// True when there is nothing to sync.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.dirs.is_empty()
    }
}

/// One queue's durable log. See the [module documentation](self).
#[derive(Debug)]
pub struct QueueLog {
    fs: FsRef,
    dir: PathBuf,
    segment_size: u64,
    /// Segments in number order; the writer's, if any, is the last.
    segments: VecDeque<Segment>,
    writer: Option<Writer>,
    next_segment: u32,
    /// Segments numbered below this were recovered at open: never appended to again, and
    /// their transient records are gone.
    first_new_segment: u32,
    last_appended: Option<SegmentPosition>,
    durable: Option<SegmentPosition>,
    live: u64,
    /// Segments with pending ack entries.
    dirty_acks: Vec<u32>,
    pending_ack_bytes: usize,
    /// The ack file written last, kept open.
    ack_file: Option<(u32, FileRef)>,
    /// Sealed segments and ack files written since the last sync began, with the handles
    /// the writes went through (see [`PendingSync::run`]).
    unsynced: Vec<(PathBuf, FileRef)>,
    /// Ack files (by segment) already in `unsynced`.
    unsynced_acks: Vec<u32>,
    dir_unsynced: bool,
    parent_unsynced: bool,
    sync_in_flight: bool,
    reader: Option<SegmentReader>,
    /// (last position `read` returned, where that read stopped scanning).
    cursor: Option<(SegmentPosition, SegmentPosition)>,
    poisoned: Option<String>,
    deleted: bool,
    /// Segments dropped from memory whose files are not removed yet (found fully acked at
    /// start, or a removal failed): the next sync removes them, and fails while they
    /// remain (their messages would come back).
    undeleted: Vec<u32>,
    /// Shared limit on the descriptors of logs; `None`: never close them early.
    fd_budget: Option<Arc<FdBudget>>,
    /// Within [`begin_sync`](Self::begin_sync): files opened may take round permits.
    in_round: bool,
    /// Holds descriptors with round permits: closed when the round completes.
    round_files: bool,
    /// A spill log: never synced nor reopened, so it keeps no ack files and no sync
    /// bookkeeping, only what tells when a segment can go.
    scratch: bool,
}

impl QueueLog {
    /// Starts the log of a new queue in `dir` (created if missing). Fails with
    /// [`StoreError::AlreadyExists`] if `dir` already holds segments, so that a new queue
    /// never adopts an old log; stray ack files are removed.
    pub fn create(dir: impl AsRef<Path>, segment_size: u64) -> Result<QueueLog> {
        Self::create_in(RealFs::shared(), dir, segment_size)
    }

    /// As [`create`](Self::create), on the file system `fs`.
    ///
    /// # Errors
    /// As [`create`](Self::create).
    pub fn create_in(fs: FsRef, dir: impl AsRef<Path>, segment_size: u64) -> Result<QueueLog> {
        check_segment_size(segment_size)?;
        let dir = dir.as_ref().to_path_buf();
        fs.create_dir_all(&dir)
            .map_err(StoreError::io("create directory", &dir))?;
        let files = list_dir(&*fs, &dir)?;
        if files.iter().any(|(f, _)| matches!(f, LogFile::Segment(_))) {
            return Err(StoreError::AlreadyExists { path: dir });
        }
        for (_, path) in files {
            remove_if_exists(&*fs, &path)?;
        }
        let mut log = Self::empty(fs, dir, segment_size, 0);
        log.parent_unsynced = true;
        Ok(log)
    }

    /// Starts a spill log in `dir`: a transient queue's overflow, written but never
    /// synced, acked in memory only, and deleted with the queue (or at the next start).
    ///
    /// # Errors
    /// As [`create`](Self::create).
    pub fn create_scratch(dir: impl AsRef<Path>, segment_size: u64) -> Result<QueueLog> {
        Self::create_scratch_in(RealFs::shared(), dir, segment_size)
    }

    /// As [`create_scratch`](Self::create_scratch), on the file system `fs`.
    ///
    /// # Errors
    /// As [`create`](Self::create).
    pub fn create_scratch_in(
        fs: FsRef,
        dir: impl AsRef<Path>,
        segment_size: u64,
    ) -> Result<QueueLog> {
        let mut log = Self::create_in(fs, dir, segment_size)?;
        log.scratch = true;
        log.parent_unsynced = false;
        Ok(log)
    }

    /// Recovers the log in `dir` at start-up: checks every record, cuts a torn or corrupt
    /// tail (reported in [`Recovery::warnings`]), reads the ack files, deletes segments with
    /// no live message, and counts what is left. Bodies are checksummed in passing, never
    /// kept. Fails only on I/O errors and on files from another program or format version
    /// ([`StoreError::Incompatible`]); a missing `dir` is an I/O error (`NotFound`).
    pub fn open(dir: impl AsRef<Path>, segment_size: u64) -> Result<(QueueLog, Recovery)> {
        Self::open_in(RealFs::shared(), dir, segment_size)
    }

    /// As [`open`](Self::open), on the file system `fs`.
    ///
    /// # Errors
    /// As [`open`](Self::open).
    pub fn open_in(
        fs: FsRef,
        dir: impl AsRef<Path>,
        segment_size: u64,
    ) -> Result<(QueueLog, Recovery)> {
        check_segment_size(segment_size)?;
        let dir = dir.as_ref().to_path_buf();
        let mut segments = Vec::new();
        let mut acks = Vec::new();
        for (file, path) in list_dir(&*fs, &dir)? {
            match file {
                LogFile::Segment(n) => segments.push(n),
                LogFile::Acks(n) => acks.push((n, path)),
            }
        }
        segments.sort_unstable();
        // An ack file without its segment is left over from a deletion cut short; it must
        // not apply to a later segment of the same number.
        for (n, path) in acks {
            if segments.binary_search(&n).is_err() {
                remove_if_exists(&*fs, &path)?;
            }
        }
        let next = match segments.last() {
            Some(&n) => n
                .checked_add(1)
                .ok_or(StoreError::Misuse("segment numbers exhausted"))?,
            None => 0,
        };
        let mut log = Self::empty(fs, dir, segment_size, next);
        let mut recovery = Recovery::default();
        for n in segments {
            let seg_path = log.dir.join(format::segment_file_name(n));
            let acks_path = log.dir.join(format::acks_file_name(n));
            let entries = read_acks(&*log.fs, &acks_path, &mut recovery.warnings)?;
            let scan = scan_segment(&*log.fs, &seg_path, &entries)?;
            if !scan.holes.is_empty() {
                // Messages lost in the middle of a log: more than the torn tail a crash
                // leaves, which its owner reports with the other warnings.
                tracing::error!(segment = %seg_path.display(), holes = scan.holes.len(), "damaged records skipped; the messages in them are lost");
            }
            for note in &scan.notes {
                recovery
                    .warnings
                    .push(format!("{}: {note}", seg_path.display()));
            }
            if scan.live == 0 {
                if scan.notes.is_empty() {
                    // Removed by the log's first sync, not here: unlinking every queue's
                    // last, fully acked segment made starting 100,000 queues take
                    // minutes. Until then a restart finds it empty again.
                    log.undeleted.push(n);
                    log.dir_unsynced = true;
                } else {
                    // A damaged one goes now, so that it is reported once.
                    remove_if_exists(&*log.fs, &seg_path)?;
                    remove_if_exists(&*log.fs, &acks_path)?;
                }
                continue;
            }
            if scan.len < scan.file_len || scan.zero_header {
                let file = log
                    .fs
                    .open(&seg_path, OpenMode::ReadWrite)
                    .map_err(StoreError::io("open", &seg_path))?;
                if scan.len < scan.file_len {
                    file.set_len(scan.len)
                        .map_err(StoreError::io("truncate", &seg_path))?;
                }
                if scan.zero_header {
                    file.write_all_at(&format::file_header(&SEGMENT_MAGIC), 0)
                        .map_err(StoreError::io("write", &seg_path))?;
                }
                file.sync_all()
                    .map_err(StoreError::io("fsync", &seg_path))?;
            }
            recovery.messages += u64::from(scan.live);
            recovery.bytes += scan.bytes;
            recovery.expiring += scan.expiring;
            recovery.delivered += distinct(&scan.delivered);
            log.segments.push_back(Segment {
                number: n,
                len: scan.len,
                live: scan.live,
                acked: scan.acked,
                delivered: scan.delivered,
                pending: Vec::new(),
                acks_len: entries.len,
                holes: scan.holes,
            });
        }
        log.live = recovery.messages;
        recovery.segments = log.segments.len();
        Ok((log, recovery))
    }

    fn empty(fs: FsRef, dir: PathBuf, segment_size: u64, next_segment: u32) -> Self {
        Self {
            fs,
            dir,
            segment_size,
            segments: VecDeque::new(),
            writer: None,
            next_segment,
            first_new_segment: next_segment,
            last_appended: None,
            durable: None,
            live: 0,
            dirty_acks: Vec::new(),
            pending_ack_bytes: 0,
            ack_file: None,
            unsynced: Vec::new(),
            unsynced_acks: Vec::new(),
            dir_unsynced: false,
            parent_unsynced: false,
            sync_in_flight: false,
            reader: None,
            cursor: None,
            poisoned: None,
            deleted: false,
            undeleted: Vec::new(),
            fd_budget: None,
            in_round: false,
            round_files: false,
            scratch: false,
        }
    }

    /// Whether a failed sync poisoned the log (it refuses appends and syncs until the
    /// broker restarts).
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.is_some()
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Messages appended and not acked (after recovery: persistent ones only).
    pub fn live_messages(&self) -> u64 {
        self.live
    }

    /// Segment files currently kept.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Position of the last append, durable or not.
    pub fn last_position(&self) -> Option<SegmentPosition> {
        self.last_appended
    }

    /// Every append at or before this position is on disk (fdatasync'd): confirms for them
    /// may go out. `None` until the first sync after an append.
    pub fn durable_position(&self) -> Option<SegmentPosition> {
        self.durable
    }

    /// Appends a message to the in-memory write buffer and returns its position. No syscall
    /// unless the buffer is full or the segment rolls over; the message is durable once a
    /// later sync covers its position. Rolls to a new segment when this record would take
    /// the current one past the segment size (a larger message gets a segment of its own).
    pub fn append<'a>(&mut self, msg: impl Into<MessageRecord<'a>>) -> Result<SegmentPosition> {
        let msg = &msg.into();
        if let Some(why) = &self.poisoned {
            return Err(StoreError::Poisoned(why.clone()));
        }
        let record_len = format::message_record_len(msg)?;
        let roll = match &self.writer {
            None => true,
            Some(w) => {
                let len = w.written + w.buf.len() as u64;
                (len > FILE_HEADER_LEN && len + record_len > self.segment_size)
                    || len > MAX_RECORD_OFFSET
            }
        };
        if roll {
            self.roll()?;
        } else if self
            .writer
            .as_ref()
            .is_some_and(|w| w.buf.len() >= self.write_buffer_limit())
        {
            self.flush_data()?;
        }
        let (Some(w), Some(seg)) = (self.writer.as_mut(), self.segments.back_mut()) else {
            return Err(StoreError::Misuse("no segment to append to"));
        };
        let offset = w.written + w.buf.len() as u64;
        format::encode_message(&mut w.buf, TERM, msg, record_len);
        seg.len += record_len;
        seg.live += 1;
        self.live += 1;
        let pos = SegmentPosition {
            segment: w.number,
            offset: offset as u32,
        };
        self.last_appended = Some(pos);
        Ok(pos)
    }

    /// Seals the current segment (written out, to be synced by the next sync) and starts the
    /// next one. The old segment is deleted if it is already fully acked.
    fn roll(&mut self) -> Result<()> {
        self.flush_data()?;
        let number = self.next_segment;
        let next = number
            .checked_add(1)
            .ok_or(StoreError::Misuse("segment numbers exhausted"))?;
        let path = self.dir.join(format::segment_file_name(number));
        let (file, hold) = self
            .open_file(&path, OpenMode::CreateNew)
            .map_err(StoreError::io("create", &path))?;
        // Nothing is written through it yet: a brief descriptor closes at once.
        let file = (hold != Hold::Brief).then_some(file);
        self.next_segment = next;
        self.dir_unsynced = !self.scratch;
        let mut buf = self
            .writer
            .as_mut()
            .map(|w| std::mem::take(&mut w.buf))
            .unwrap_or_default();
        buf.extend_from_slice(&format::file_header(&SEGMENT_MAGIC));
        let writer = Writer {
            number,
            path,
            file,
            written: 0,
            buf,
            dirty: false,
        };
        self.segments.push_back(Segment::new(number));
        if let Some(old) = self.writer.replace(writer) {
            if old.dirty
                && !self.scratch
                && let Some(file) = old.file
            {
                self.unsynced.push((old.path, file));
            }
            if let Ok(i) = self.find_segment(old.number)
                && self.segments[i].live == 0
            {
                self.delete_segment(i)?;
            }
        }
        Ok(())
    }

    /// Writes buffered appends and ack entries to their files (no fsync).
    pub fn flush(&mut self) -> Result<()> {
        self.flush_data()?;
        self.flush_acks()
    }

    fn flush_data(&mut self) -> Result<()> {
        let Some(w) = self.writer.as_mut() else {
            return Ok(());
        };
        if w.buf.is_empty() {
            return Ok(());
        }
        let (file, hold) = match &w.file {
            Some(file) => (file.clone(), Hold::Kept),
            None => {
                let (file, hold) = open_counted(
                    &*self.fs,
                    self.fd_budget.as_ref(),
                    self.in_round,
                    &w.path,
                    OpenMode::ReadWrite,
                )
                .map_err(StoreError::io("open", &w.path))?;
                if hold != Hold::Brief {
                    w.file = Some(file.clone());
                }
                self.round_files |= hold == Hold::Round;
                (file, hold)
            }
        };
        // On failure the buffer is kept and rewritten at the same offset by the next
        // attempt, overwriting whatever part of it reached the file.
        let written = file
            .write_all_at(&w.buf, w.written)
            .map_err(StoreError::io("write", &w.path));
        if hold == Hold::Brief {
            // The descriptor closes on return: what went through it is synced first.
            let (path, scratch) = (w.path.clone(), self.scratch);
            self.settle_brief(&file, &path, scratch)?;
            written?;
        } else {
            // Even a failed write may have reached the file: the descriptor stays open
            // until a sync.
            w.dirty = true;
            written?;
        }
        let Some(w) = self.writer.as_mut() else {
            return Ok(());
        };
        w.written += w.buf.len() as u64;
        if w.buf.capacity() > 2 * WRITE_BUFFER_LIMIT || self.scratch {
            w.buf = Vec::new();
        } else {
            w.buf.clear();
        }
        if self.scratch && self.fd_budget.as_ref().is_some_and(|b| b.tight()) {
            // A spill log is never synced: nothing waits for its descriptor to close.
            w.file = None;
        }
        Ok(())
    }

    fn flush_acks(&mut self) -> Result<()> {
        let dirty = std::mem::take(&mut self.dirty_acks);
        for (k, &number) in dirty.iter().enumerate() {
            if let Err(e) = self.flush_segment_acks(number) {
                self.dirty_acks.extend_from_slice(&dirty[k..]);
                return Err(e);
            }
        }
        Ok(())
    }

    fn flush_segment_acks(&mut self, number: u32) -> Result<()> {
        let Ok(i) = self.find_segment(number) else {
            return Ok(());
        };
        let seg = &mut self.segments[i];
        if seg.pending.is_empty() {
            return Ok(());
        }
        let path = self.dir.join(format::acks_file_name(number));
        // The descriptor already open on this ack file, if any: the cached one, or one
        // still waiting for its sync.
        let open = match &self.ack_file {
            Some((n, f)) if *n == number => Some(f.clone()),
            _ => self
                .unsynced
                .iter()
                .find(|(p, _)| *p == path)
                .map(|(_, f)| f.clone()),
        }
        .filter(|_| seg.acks_len != 0);
        let (file, hold) = match open {
            Some(file) => (file, Hold::Kept),
            None => {
                let mode = if seg.acks_len == 0 {
                    OpenMode::CreateTruncate
                } else {
                    OpenMode::ReadWrite
                };
                let (file, hold) = open_counted(
                    &*self.fs,
                    self.fd_budget.as_ref(),
                    self.in_round,
                    &path,
                    mode,
                )
                .map_err(StoreError::io("open", &path))?;
                self.round_files |= hold == Hold::Round;
                (file, hold)
            }
        };
        if hold != Hold::Brief {
            self.ack_file = Some((number, file.clone()));
            if !self.unsynced_acks.contains(&number) {
                // Before writing: even a failed write may have reached the file.
                self.unsynced_acks.push(number);
                self.unsynced.push((path.clone(), file.clone()));
            }
        }
        if seg.acks_len == 0 {
            // A new entry in the directory: the next sync makes it durable.
            self.dir_unsynced = true;
        }
        let written = Self::write_acks(seg, &file, &path);
        if hold == Hold::Brief {
            // The descriptor closes on return: what went through it is synced first.
            self.settle_brief(&file, &path, false)?;
        }
        written?;
        let Ok(i) = self.find_segment(number) else {
            return Ok(());
        };
        let seg = &mut self.segments[i];
        self.pending_ack_bytes -= seg.pending.len();
        if seg.pending.capacity() > 4096 {
            seg.pending = Vec::new();
        } else {
            seg.pending.clear();
        }
        Ok(())
    }

    /// Writes `seg`'s pending entries to its ack file `file` (its header first if the file
    /// is new); `seg.acks_len` follows what was written.
    fn write_acks(seg: &mut Segment, file: &FileRef, path: &Path) -> Result<()> {
        if seg.acks_len == 0 {
            file.write_all_at(&format::file_header(&ACKS_MAGIC), 0)
                .map_err(StoreError::io("write", path))?;
            seg.acks_len = FILE_HEADER_LEN;
        }
        file.write_all_at(&seg.pending, seg.acks_len)
            .map_err(StoreError::io("write", path))?;
        seg.acks_len += seg.pending.len() as u64;
        Ok(())
    }

    /// Before a brief descriptor that was written through closes: fdatasyncs it, or
    /// poisons the log if that fails (the writes may be lost, and no descriptor would be
    /// left to report it). A spill log is never synced: nothing to do.
    fn settle_brief(&mut self, file: &FileRef, path: &Path, scratch: bool) -> Result<()> {
        if scratch {
            return Ok(());
        }
        if let Err(e) = file.sync_data() {
            let why = StoreError::io("fdatasync", path)(e).to_string();
            tracing::error!(dir = %self.dir.display(), error = %why, "cannot sync a queue log");
            self.poisoned = Some(why.clone());
            return Err(StoreError::Poisoned(why));
        }
        Ok(())
    }

    /// Opens a file of this log within its budget.
    fn open_file(&mut self, path: &Path, mode: OpenMode) -> io::Result<(FileRef, Hold)> {
        let opened = open_counted(
            &*self.fs,
            self.fd_budget.as_ref(),
            self.in_round,
            path,
            mode,
        )?;
        self.round_files |= opened.1 == Hold::Round;
        Ok(opened)
    }

    /// Flushes and fdatasyncs: every append so far is durable when this returns `Ok`, which
    /// carries the new [`durable_position`](Self::durable_position). One call covers any
    /// number of appends (group commit).
    pub fn sync(&mut self) -> Result<Option<SegmentPosition>> {
        let pending = self.begin_sync()?;
        let result = pending.run();
        self.complete_sync(pending, &result)
    }

    /// First half of [`sync`](Self::sync), for a group committer that must not hold the
    /// queue's lock while fsyncing: writes the buffers out and takes the files to sync.
    /// Run the result, then hand it to [`complete_sync`](Self::complete_sync); one sync
    /// at a time per log.
    pub fn begin_sync(&mut self) -> Result<PendingSync> {
        if let Some(why) = &self.poisoned {
            return Err(StoreError::Poisoned(why.clone()));
        }
        if self.sync_in_flight {
            return Err(StoreError::Misuse(
                "begin_sync called while a sync is in flight",
            ));
        }
        self.in_round = true;
        let flushed = self.flush();
        self.in_round = false;
        flushed?;
        self.remove_undeleted()?;
        let mut files = std::mem::take(&mut self.unsynced);
        self.unsynced_acks.clear();
        if let Some(w) = self.writer.as_mut()
            && w.dirty
            && let Some(file) = &w.file
        {
            files.push((w.path.clone(), file.clone()));
            w.dirty = false;
        }
        let mut dirs = Vec::new();
        let mut parent = false;
        if self.parent_unsynced
            && let Some(p) = self.dir.parent()
        {
            dirs.push(p.to_path_buf());
            parent = true;
        }
        if self.dir_unsynced {
            dirs.push(self.dir.clone());
        }
        self.parent_unsynced = false;
        self.dir_unsynced = false;
        self.sync_in_flight = true;
        Ok(PendingSync {
            fs: self.fs.clone(),
            files,
            dirs,
            parent,
            position: self.last_appended,
        })
    }

    /// Second half of [`sync`](Self::sync): records the outcome of
    /// [`PendingSync::run`]. On success the durable position advances to the sync's. On a
    /// transient failure ([`StoreError::is_transient`]: no descriptor to open a directory
    /// with) nothing was synced and nothing was lost: the error is returned and the next
    /// sync redoes all of this one. On any other failure the log is poisoned (appends and
    /// syncs fail from then on), because after a failed fsync the kernel may have dropped
    /// the data and a later fsync could succeed without it.
    ///
    /// # Errors
    /// The sync failed: [`StoreError::Poisoned`], or the transient error.
    pub fn complete_sync(
        &mut self,
        pending: PendingSync,
        result: &Result<()>,
    ) -> Result<Option<SegmentPosition>> {
        self.sync_in_flight = false;
        match result {
            Ok(()) => {
                if pending.position > self.durable {
                    self.durable = pending.position;
                }
                drop(pending);
                if self.round_files || self.fd_budget.as_ref().is_some_and(|b| b.tight()) {
                    self.close_idle_files();
                }
                Ok(self.durable)
            }
            Err(e) if e.is_transient() => {
                // Give everything back: the next sync syncs it all again.
                let PendingSync {
                    files,
                    parent,
                    dirs,
                    ..
                } = pending;
                let mut files = files;
                files.append(&mut self.unsynced);
                self.unsynced = files;
                self.parent_unsynced |= parent;
                self.dir_unsynced |= dirs.len() > usize::from(parent);
                if let Some(w) = self.writer.as_mut()
                    && self.unsynced.iter().any(|(p, _)| *p == w.path)
                {
                    self.unsynced.retain(|(p, _)| *p != w.path);
                    w.dirty = true;
                }
                self.unsynced_acks = self
                    .unsynced
                    .iter()
                    .filter_map(|(p, _)| {
                        match p.file_name()?.to_str().and_then(format::parse_file_name)? {
                            LogFile::Acks(n) => Some(n),
                            LogFile::Segment(_) => None,
                        }
                    })
                    .collect();
                let source = match e {
                    StoreError::Io { source, .. } => match source.raw_os_error() {
                        Some(code) => io::Error::from_raw_os_error(code),
                        None => io::Error::new(source.kind(), source.to_string()),
                    },
                    other => io::Error::other(other.to_string()),
                };
                Err(StoreError::Io {
                    op: "sync (not done for lack of resources; the next sync retries)",
                    path: self.dir.clone(),
                    source,
                })
            }
            Err(e) => {
                let why = e.to_string();
                self.poisoned = Some(why.clone());
                Err(StoreError::Poisoned(why))
            }
        }
    }

    /// Records that the message at `pos` is acked (buffered like appends, durable at the
    /// next sync).
    /// When every message of a sealed segment is acked, its files are deleted at once.
    /// Acking a position twice, or one of a deleted segment, does nothing. `pos` must come
    /// from [`append`](Self::append) or [`read`](Self::read).
    ///
    /// # Errors
    /// Writing buffered entries out failed (EMFILE on the ack file, a full disk …), or a
    /// segment could not be removed. The ack counts all the same: it is kept and written
    /// by a later flush or sync, which reports the error again if it persists.
    pub fn ack(&mut self, pos: SegmentPosition) -> Result<()> {
        let recorded = self.record_ack(pos);
        let flushed = if self.pending_ack_bytes >= ACK_BUFFER_LIMIT {
            self.flush_acks()
        } else {
            Ok(())
        };
        recorded.and(flushed)
    }

    fn record_ack(&mut self, pos: SegmentPosition) -> Result<()> {
        let Ok(i) = self.find_segment(pos.segment) else {
            return Ok(());
        };
        let writing = self
            .writer
            .as_ref()
            .is_some_and(|w| w.number == pos.segment);
        let seg = &mut self.segments[i];
        if u64::from(pos.offset) < FILE_HEADER_LEN || u64::from(pos.offset) >= seg.len {
            return Ok(());
        }
        // Acks mostly come in log order: then the offset goes at the end.
        if seg.acked.last().is_none_or(|&last| last < pos.offset) {
            seg.acked.push(pos.offset);
        } else {
            match seg.acked.binary_search(&pos.offset) {
                Ok(_) => return Ok(()),
                Err(k) => seg.acked.insert(k, pos.offset),
            }
        }
        seg.live = seg.live.saturating_sub(1);
        self.live = self.live.saturating_sub(1);
        if seg.live == 0 && !writing {
            return self.delete_segment(i);
        }
        self.push_entry(i, format::encode_ack_entry(pos.offset, false));
        Ok(())
    }

    /// Records that the message at `pos` has been delivered, so that after a restart it goes
    /// out flagged `redelivered` (buffered, durable at the next sync).
    ///
    /// # Errors
    /// As [`ack`](Self::ack): the marker is kept all the same.
    pub fn mark_delivered(&mut self, pos: SegmentPosition) -> Result<()> {
        if self.scratch {
            return Ok(());
        }
        if let Ok(i) = self.find_segment(pos.segment) {
            self.push_entry(i, format::encode_ack_entry(pos.offset, true));
        }
        if self.pending_ack_bytes >= ACK_BUFFER_LIMIT {
            self.flush_acks()?;
        }
        Ok(())
    }

    fn push_entry(&mut self, i: usize, entry: [u8; 4]) {
        if self.scratch {
            return;
        }
        let seg = &mut self.segments[i];
        if seg.pending.is_empty() {
            self.dirty_acks.push(seg.number);
        }
        seg.pending.extend_from_slice(&entry);
        self.pending_ack_bytes += entry.len();
    }

    /// How many delivered markers recovery found for the live message at `pos`: its
    /// first delivery and every return recorded since.
    pub fn delivery_marks(&self, pos: SegmentPosition) -> u32 {
        self.find_segment(pos.segment).map_or(0, |i| {
            let marks = &self.segments[i].delivered;
            let from = marks.partition_point(|&o| o < pos.offset);
            let to = marks.partition_point(|&o| o <= pos.offset);
            u32::try_from(to - from).unwrap_or(u32::MAX)
        })
    }

    /// Whether recovery found a delivered marker for the live message at `pos`.
    pub fn was_delivered(&self, pos: SegmentPosition) -> bool {
        self.find_segment(pos.segment).is_ok_and(|i| {
            self.segments[i]
                .delivered
                .binary_search(&pos.offset)
                .is_ok()
        })
    }

    /// Pages in up to `max_messages` live messages after `from` (from the start when
    /// `None`), stopping once their bodies reach `max_bytes` (at least one message is
    /// returned if there is one). Acked messages, and transient ones from before a restart,
    /// are skipped. Reads are sequential and buffered; buffered appends are written out
    /// first when the read reaches them. Pass the last returned position as the next
    /// `from` to continue where this call stopped.
    pub fn read(
        &mut self,
        from: Option<SegmentPosition>,
        max_messages: usize,
        max_bytes: usize,
    ) -> Result<Vec<(SegmentPosition, StoredMessage)>> {
        let mut out = Vec::new();
        if max_messages == 0 {
            return Ok(out);
        }
        let (mut idx, mut offset) = self.start_point(from)?;
        let mut bytes = 0usize;
        while idx < self.segments.len() {
            let (number, end) = (self.segments[idx].number, self.segments[idx].len);
            if offset >= end {
                idx += 1;
                offset = FILE_HEADER_LEN;
                continue;
            }
            self.make_readable(number, end)?;
            if let Some(hole_end) = self.segments[idx].hole_at(offset) {
                offset = hole_end;
                continue;
            }
            let reader = Self::reader_for(
                &mut self.reader,
                &*self.fs,
                self.fd_budget.as_ref(),
                &self.dir,
                number,
            )?;
            let head_len = RECORD_HEADER_LEN as usize + FLAGS_OFFSET + 1;
            if end - offset < head_len as u64 {
                return Err(corrupt(
                    &reader.path,
                    offset,
                    "record header past the end of the segment",
                ));
            }
            let head = reader.bytes(offset, head_len, end)?;
            let (payload_len, crc) = format::decode_record_header(head);
            let persistent = head[RECORD_HEADER_LEN as usize + FLAGS_OFFSET] & FLAG_PERSISTENT != 0;
            let record_end = offset + RECORD_HEADER_LEN + payload_len;
            if payload_len < MIN_MESSAGE_PAYLOAD || record_end > end {
                return Err(corrupt(&reader.path, offset, "invalid record length"));
            }
            let acked = &self.segments[idx].acked;
            let gone = (acked.last().is_some_and(|&last| last >= offset as u32)
                && acked.binary_search(&(offset as u32)).is_ok())
                || (number < self.first_new_segment && !persistent);
            if !gone {
                let payload =
                    reader.payload(offset + RECORD_HEADER_LEN, payload_len as usize, end)?;
                // A spill log is read back by the process that wrote it: no crash or
                // disk fault can lie between, so its checksums are not checked.
                if !self.scratch && crc32fast::hash(&payload) != crc {
                    return Err(corrupt(&reader.path, offset, "checksum mismatch"));
                }
                let msg = format::decode_message(payload)
                    .map_err(|why| corrupt(&reader.path, offset, why))?;
                bytes += msg.body.len();
                out.push((
                    SegmentPosition {
                        segment: number,
                        offset: offset as u32,
                    },
                    msg,
                ));
            }
            offset = record_end;
            if out.len() >= max_messages || (bytes >= max_bytes && !out.is_empty()) {
                break;
            }
        }
        if let Some(&(last, _)) = out.last() {
            let resume = if let Some(seg) = self.segments.get(idx) {
                SegmentPosition {
                    segment: seg.number,
                    offset: offset as u32,
                }
            } else if let Some(seg) = self.segments.back() {
                // Past every segment: resume at the end of the last one, the writer's,
                // which may still grow.
                SegmentPosition {
                    segment: seg.number,
                    offset: seg.len as u32,
                }
            } else {
                SegmentPosition {
                    segment: self.next_segment,
                    offset: FILE_HEADER_LEN as u32,
                }
            };
            self.cursor = Some((last, resume));
        }
        if idx >= self.segments.len()
            || self.scratch
            || self.reader.as_ref().is_some_and(|r| r.brief)
            || self.fd_budget.as_ref().is_some_and(|b| b.tight())
        {
            // Caught up (or a spill log, one of possibly thousands, or descriptors run
            // short): give back the read buffer and the file handle.
            self.reader = None;
        }
        Ok(out)
    }

    /// Segment index and offset where a read after `from` starts.
    fn start_point(&mut self, from: Option<SegmentPosition>) -> Result<(usize, u64)> {
        let Some(from) = from else {
            return Ok((0, FILE_HEADER_LEN));
        };
        if let Some((last, resume)) = self.cursor
            && last == from
        {
            return Ok(match self.find_segment(resume.segment) {
                Ok(i) => (i, u64::from(resume.offset)),
                Err(i) => (i, FILE_HEADER_LEN),
            });
        }
        let i = match self.find_segment(from.segment) {
            Ok(i) => i,
            Err(i) => return Ok((i, FILE_HEADER_LEN)),
        };
        let (number, end) = (self.segments[i].number, self.segments[i].len);
        let offset = u64::from(from.offset);
        if offset < FILE_HEADER_LEN || offset + RECORD_HEADER_LEN > end {
            return Ok((i + 1, FILE_HEADER_LEN));
        }
        self.make_readable(number, end)?;
        let reader = Self::reader_for(
            &mut self.reader,
            &*self.fs,
            self.fd_budget.as_ref(),
            &self.dir,
            number,
        )?;
        let (payload_len, _) =
            format::decode_record_header(reader.bytes(offset, RECORD_HEADER_LEN as usize, end)?);
        Ok((i, offset + RECORD_HEADER_LEN + payload_len))
    }

    /// Writes buffered appends out if reading segment `number` up to `end` needs them.
    fn make_readable(&mut self, number: u32, end: u64) -> Result<()> {
        if self
            .writer
            .as_ref()
            .is_some_and(|w| w.number == number && w.written < end)
        {
            if self.reader.as_ref().is_some_and(|r| r.brief) {
                // A thread holds one brief descriptor at a time.
                self.reader = None;
            }
            self.flush_data()?;
        }
        Ok(())
    }

    /// The reader of segment `number`, opened if the cached one is another segment's.
    fn reader_for<'a>(
        slot: &'a mut Option<SegmentReader>,
        fs: &dyn FileSystem,
        budget: Option<&Arc<FdBudget>>,
        dir: &Path,
        number: u32,
    ) -> Result<&'a mut SegmentReader> {
        match slot {
            Some(r) if r.number == number => {}
            _ => {
                // Closed first: one read holds one descriptor at a time.
                *slot = None;
                *slot = Some(SegmentReader::open(fs, budget, dir, number)?);
            }
        }
        slot.as_mut().ok_or(StoreError::Misuse("no reader"))
    }

    /// Drops every message: deletes all segments; the next append starts a new one.
    /// Returns how many live messages there were.
    ///
    /// # Errors
    /// A segment's files could not be removed: the messages are gone from the log all the
    /// same, and the next sync retries the removal (and fails while it cannot, so that no
    /// sync reports the purge durable while they could come back).
    pub fn purge(&mut self) -> Result<u64> {
        let purged = self.live;
        self.writer = None;
        // Every segment goes from memory even if a removal fails: those are retried by
        // the next sync, which fails while any remains.
        let mut first_error = None;
        while !self.segments.is_empty() {
            if let Err(e) = self.delete_segment(0) {
                first_error.get_or_insert(e);
            }
        }
        self.live = 0;
        self.cursor = None;
        self.dir_unsynced = !self.scratch;
        match first_error {
            Some(e) => Err(e),
            None => Ok(purged),
        }
    }

    /// Shares `budget` with other logs: every descriptor this log opens from now on
    /// counts in it (see [`FdBudget`]). Set it before the log opens any.
    pub fn set_fd_budget(&mut self, budget: Arc<FdBudget>) {
        self.fd_budget = Some(budget);
    }

    /// Closes every descriptor no unsynced write depends on (an ack file written since
    /// the sync began stays open through `unsynced`).
    fn close_idle_files(&mut self) {
        self.reader = None;
        self.ack_file = None;
        if let Some(w) = self.writer.as_mut()
            && !w.dirty
            && !self.sync_in_flight
        {
            w.file = None;
        }
        self.round_files =
            self.writer.as_ref().is_some_and(|w| w.file.is_some()) || !self.unsynced.is_empty();
    }

    /// Descriptors this log holds open now (writer, ack file, reader), for tests and
    /// metrics.
    pub fn open_files(&self) -> usize {
        usize::from(self.writer.as_ref().is_some_and(|w| w.file.is_some()))
            + usize::from(self.ack_file.is_some())
            + usize::from(self.reader.is_some())
    }

    /// Gives back the write buffer, the read-ahead buffer and cached file handles, after
    /// writing out what is buffered; for a queue gone idle.
    pub fn release_memory(&mut self) -> Result<()> {
        self.flush()?;
        if let Some(w) = self.writer.as_mut() {
            w.buf = Vec::new();
        }
        self.reader = None;
        self.ack_file = None;
        Ok(())
    }

    /// Removes the log's directory and everything in it (the queue was deleted).
    pub fn delete(mut self) -> Result<()> {
        self.deleted = true;
        self.writer = None;
        self.reader = None;
        self.ack_file = None;
        self.unsynced.clear();
        self.fs
            .remove_dir_all(&self.dir)
            .map_err(StoreError::io("remove directory", &self.dir))
    }

    fn write_buffer_limit(&self) -> usize {
        if self.scratch {
            SCRATCH_WRITE_BUFFER_LIMIT
        } else {
            WRITE_BUFFER_LIMIT
        }
    }

    fn find_segment(&self, number: u32) -> std::result::Result<usize, usize> {
        self.segments.binary_search_by_key(&number, |s| s.number)
    }

    /// Forgets segment `i` and deletes its files: the segment first, so that a crash in
    /// between leaves an orphan ack file (removed at recovery) rather than a segment whose
    /// acks are lost.
    fn delete_segment(&mut self, i: usize) -> Result<()> {
        let Some(seg) = self.segments.remove(i) else {
            return Ok(());
        };
        self.pending_ack_bytes -= seg.pending.len();
        self.live = self.live.saturating_sub(u64::from(seg.live));
        if self.reader.as_ref().is_some_and(|r| r.number == seg.number) {
            self.reader = None;
        }
        if self
            .ack_file
            .as_ref()
            .is_some_and(|(n, _)| *n == seg.number)
        {
            self.ack_file = None;
        }
        if !self.scratch {
            // The removal must be durable before a later sync reports acks durable: else
            // a power loss brings the segment back with its last ack never written.
            self.dir_unsynced = true;
        }
        self.remove_segment_files(seg.number).inspect_err(|_| {
            // Until its files are gone, no sync may report its acks durable.
            self.undeleted.push(seg.number);
        })
    }

    fn remove_segment_files(&self, number: u32) -> Result<()> {
        remove_if_exists(&*self.fs, &self.dir.join(format::segment_file_name(number)))?;
        remove_if_exists(&*self.fs, &self.dir.join(format::acks_file_name(number)))
    }

    /// Retries the removals of deleted segments that failed.
    fn remove_undeleted(&mut self) -> Result<()> {
        while let Some(&number) = self.undeleted.last() {
            self.remove_segment_files(number)?;
            self.undeleted.pop();
        }
        Ok(())
    }
}

impl Drop for QueueLog {
    /// Writes out what is buffered (best effort, no fsync), so that a clean shutdown that
    /// forgot to sync still hands the data to the kernel.
    fn drop(&mut self) {
        if !self.deleted && self.poisoned.is_none() {
            let _ = self.flush();
        }
    }
}

/// Opens `path` with a permit of `budget` (when there is one): kept if one is left, else
/// for the round when `in_round`, else brief. Returns the handle, carrying its permit,
/// and the permit's kind.
fn open_counted(
    fs: &dyn FileSystem,
    budget: Option<&Arc<FdBudget>>,
    in_round: bool,
    path: &Path,
    mode: OpenMode,
) -> io::Result<(FileRef, Hold)> {
    let Some(budget) = budget else {
        return Ok((fs.open(path, mode)?, Hold::Kept));
    };
    let permit = match budget.try_keep() {
        Some(permit) => permit,
        None => match in_round.then(|| budget.try_round()).flatten() {
            Some(permit) => permit,
            None => budget.brief()?,
        },
    };
    let hold = permit.hold();
    Ok((fd_budget::budgeted(fs.open(path, mode)?, permit), hold))
}

fn corrupt(path: &Path, offset: u64, detail: &str) -> StoreError {
    StoreError::Corrupt {
        path: path.to_path_buf(),
        offset,
        detail: detail.to_string(),
    }
}

fn check_segment_size(size: u64) -> Result<()> {
    if (format::MIN_SEGMENT_SIZE..=format::MAX_SEGMENT_SIZE).contains(&size) {
        Ok(())
    } else {
        Err(StoreError::InvalidSegmentSize(size))
    }
}

/// The log files in `dir`; other entries are ignored.
fn list_dir(fs: &dyn FileSystem, dir: &Path) -> Result<Vec<(LogFile, PathBuf)>> {
    list_files(fs, dir, format::parse_file_name)
}

/// The entries of `dir` that `parse` recognises, with their paths.
pub(super) fn list_files<F>(
    fs: &dyn FileSystem,
    dir: &Path,
    parse: impl Fn(&str) -> Option<F>,
) -> Result<Vec<(F, PathBuf)>> {
    let mut files = Vec::new();
    for name in fs
        .read_dir(dir)
        .map_err(StoreError::io("read directory", dir))?
    {
        if let Some(file) = name.to_str().and_then(&parse) {
            files.push((file, dir.join(name)));
        }
    }
    Ok(files)
}

/// Removes `path`; one already gone is not an error.
pub(super) fn remove_if_exists(fs: &dyn FileSystem, path: &Path) -> Result<()> {
    match fs.remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StoreError::io("remove", path)(e)),
        _ => Ok(()),
    }
}

/// The entries of one ack file, sorted and deduplicated.
#[derive(Debug, Default)]
struct AckEntries {
    acked: Vec<u32>,
    delivered: Vec<u32>,
    /// Length of the valid part of the file (0 if it must be recreated).
    len: u64,
}

fn read_acks(fs: &dyn FileSystem, path: &Path, warnings: &mut Vec<String>) -> Result<AckEntries> {
    let data = match fs.read(path) {
        Ok(data) => data,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(AckEntries::default()),
        Err(e) => return Err(StoreError::io("read", path)(e)),
    };
    if data.len() < FILE_HEADER_LEN as usize {
        // Torn at creation: recreated by the next ack.
        return Ok(AckEntries::default());
    }
    if let Err(detail) = format::check_file_header(&data[..FILE_HEADER_LEN as usize], &ACKS_MAGIC) {
        if data[..8] == ACKS_MAGIC {
            return Err(StoreError::Incompatible {
                path: path.to_path_buf(),
                detail,
            });
        }
        warnings.push(format!(
            "{}: unreadable ack file ({detail}); its messages will be delivered again",
            path.display()
        ));
        return Ok(AckEntries::default());
    }
    let mut entries = AckEntries::default();
    // A torn last entry is ignored; the next write overwrites it.
    let body = &data[FILE_HEADER_LEN as usize..];
    let whole = body.len() / 4 * 4;
    for e in body[..whole].chunks_exact(4) {
        match format::decode_ack_entry([e[0], e[1], e[2], e[3]]) {
            (offset, false) => entries.acked.push(offset),
            (offset, true) => entries.delivered.push(offset),
        }
    }
    entries.acked.sort_unstable();
    entries.acked.dedup();
    // Repeated delivered markers count deliveries (quorum queues' delivery count).
    entries.delivered.sort_unstable();
    entries.len = FILE_HEADER_LEN + whole as u64;
    Ok(entries)
}

/// What the start-up scan of one segment found.
#[derive(Debug, Default)]
struct Scan {
    file_len: u64,
    /// End of the last valid record: the file is cut here when shorter than `file_len`.
    len: u64,
    live: u32,
    bytes: u64,
    expiring: u64,
    acked: Vec<u32>,
    delivered: Vec<u32>,
    /// Byte ranges of damaged records with valid records after them.
    holes: Vec<(u32, u32)>,
    /// The header was all zeros (never synced) and must be rewritten if records are kept.
    zero_header: bool,
    /// One sentence per repair.
    notes: Vec<String>,
}

/// A read-ahead window over a file for the start-up scan.
struct Window<'a> {
    file: &'a dyn super::fs::FsFile,
    path: &'a Path,
    file_len: u64,
    buf: Vec<u8>,
    start: u64,
}

impl Window<'_> {
    /// Bytes `offset..offset + len` (`len` at most [`SCAN_BUFFER`], within the file).
    fn get(&mut self, offset: u64, len: usize) -> Result<&[u8]> {
        if offset.saturating_add(len as u64) > self.file_len {
            return Err(corrupt(
                self.path,
                offset,
                "read past the end of the segment",
            ));
        }
        let have =
            offset >= self.start && offset + len as u64 <= self.start + self.buf.len() as u64;
        if !have {
            let want = (SCAN_BUFFER as u64)
                .max(len as u64)
                .min(self.file_len - offset) as usize;
            self.buf.resize(want, 0);
            if let Err(e) = self.file.read_exact_at(&mut self.buf, offset) {
                self.buf.clear();
                return Err(StoreError::io("read", self.path)(e));
            }
            self.start = offset;
        }
        let s = (offset - self.start) as usize;
        Ok(&self.buf[s..s + len])
    }

    /// Checks the record at `offset`: its length fits the file, its checksum holds and it
    /// is a message. Returns its payload length and summary, or why it is not valid.
    fn record(
        &mut self,
        offset: u64,
    ) -> Result<std::result::Result<(u64, format::MessageSummary), &'static str>> {
        if offset > MAX_RECORD_OFFSET {
            return Ok(Err("record beyond the addressable range"));
        }
        if self.file_len - offset < RECORD_HEADER_LEN {
            return Ok(Err("torn record header"));
        }
        let (payload_len, crc) =
            format::decode_record_header(self.get(offset, RECORD_HEADER_LEN as usize)?);
        if payload_len < MIN_MESSAGE_PAYLOAD {
            return Ok(Err("invalid record length"));
        }
        if payload_len > self.file_len - offset - RECORD_HEADER_LEN {
            return Ok(Err("torn record"));
        }
        let start = offset + RECORD_HEADER_LEN;
        if self.get(start, 1)?[0] != format::KIND_MESSAGE {
            return Ok(Err("unknown record kind"));
        }
        let n = (payload_len as usize).min(MESSAGE_PREFIX_MAX);
        let mut prefix = [0u8; MESSAGE_PREFIX_MAX];
        prefix[..n].copy_from_slice(self.get(start, n)?);
        let mut hasher = crc32fast::Hasher::new();
        let mut at = start;
        let end = start + payload_len;
        while at < end {
            let k = (end - at).min(SCAN_BUFFER as u64) as usize;
            hasher.update(self.get(at, k)?);
            at += k as u64;
        }
        if hasher.finalize() != crc {
            return Ok(Err("checksum mismatch"));
        }
        Ok(format::summarize_message(&prefix[..n], payload_len).map(|s| (payload_len, s)))
    }

    /// The first offset after `bad` where a valid record starts: first where the bad
    /// record's own length says it ends, then byte by byte.
    fn next_valid(&mut self, bad: u64) -> Result<Option<u64>> {
        if self.file_len - bad >= RECORD_HEADER_LEN {
            let (payload_len, _) =
                format::decode_record_header(self.get(bad, RECORD_HEADER_LEN as usize)?);
            let end = bad + RECORD_HEADER_LEN + payload_len;
            if payload_len >= MIN_MESSAGE_PAYLOAD
                && end < self.file_len
                && self.record(end)?.is_ok()
            {
                return Ok(Some(end));
            }
        }
        let mut at = bad + 1;
        while self.file_len - at > RECORD_HEADER_LEN + MIN_MESSAGE_PAYLOAD {
            // Cheap filters first: a plausible length and the message kind.
            let head = self.get(at, RECORD_HEADER_LEN as usize + 1)?;
            let (payload_len, _) = format::decode_record_header(head);
            let plausible = head[RECORD_HEADER_LEN as usize] == format::KIND_MESSAGE
                && payload_len >= MIN_MESSAGE_PAYLOAD
                && payload_len <= self.file_len - at - RECORD_HEADER_LEN;
            if plausible && self.record(at)?.is_ok() {
                return Ok(Some(at));
            }
            at += 1;
        }
        Ok(None)
    }
}

/// Reads a segment sequentially, checking every record's length and CRC and matching ack
/// entries against record starts (entries that are not record starts are dropped).
/// Damaged records are skipped when a valid one follows (a hole), cut when none does (a
/// torn tail); see the [module documentation](self). Bodies pass through the checksum
/// and are not kept.
fn scan_segment(fs: &dyn FileSystem, path: &Path, acks: &AckEntries) -> Result<Scan> {
    let file = fs
        .open(path, OpenMode::Read)
        .map_err(StoreError::io("open", path))?;
    let file_len = file.size().map_err(StoreError::io("stat", path))?;
    let mut scan = Scan {
        file_len,
        len: file_len,
        ..Scan::default()
    };
    if file_len < FILE_HEADER_LEN {
        scan.notes
            .push(format!("torn file header ({file_len} bytes); removed"));
        scan.len = 0;
        return Ok(scan);
    }
    let mut w = Window {
        file: &*file,
        path,
        file_len,
        buf: Vec::new(),
        start: 0,
    };
    let header = w.get(0, FILE_HEADER_LEN as usize)?;
    if header.iter().all(|&b| b == 0) {
        scan.zero_header = true;
        scan.notes.push(
            "zero-filled header (created but never synced before a power loss): \
             read as a torn segment"
                .to_owned(),
        );
    } else {
        format::check_file_header(header, &SEGMENT_MAGIC).map_err(|detail| {
            StoreError::Incompatible {
                path: path.to_path_buf(),
                detail,
            }
        })?;
    }
    let mut offset = FILE_HEADER_LEN;
    let (mut next_ack, mut next_delivered) = (0, 0);
    while offset < file_len {
        let (payload_len, summary) = match w.record(offset)? {
            Ok(record) => record,
            Err(why) => match w.next_valid(offset)? {
                Some(next) => {
                    scan.notes.push(format!(
                        "{why} at offset {offset}: skipped {} bytes up to the valid record \
                         at offset {next}; the messages in them are lost",
                        next - offset
                    ));
                    scan.holes.push((offset as u32, next as u32));
                    offset = next;
                    continue;
                }
                None => {
                    if !(scan.zero_header && offset == FILE_HEADER_LEN) {
                        scan.notes.push(format!(
                            "{why} at offset {offset}; cut {} bytes, kept {} live messages \
                             before it",
                            file_len - offset,
                            scan.live
                        ));
                    }
                    scan.len = offset;
                    break;
                }
            },
        };
        let at = offset as u32;
        while next_ack < acks.acked.len() && acks.acked[next_ack] < at {
            next_ack += 1;
        }
        if acks.acked.get(next_ack) == Some(&at) {
            scan.acked.push(at);
        } else if summary.persistent {
            scan.live += 1;
            scan.bytes += summary.body_len;
            scan.expiring += u64::from(summary.expires);
            while next_delivered < acks.delivered.len() && acks.delivered[next_delivered] < at {
                next_delivered += 1;
            }
            while acks.delivered.get(next_delivered) == Some(&at) {
                scan.delivered.push(at);
                next_delivered += 1;
            }
        }
        offset += RECORD_HEADER_LEN + payload_len;
    }
    Ok(scan)
}

/// The number of distinct values in a sorted slice.
fn distinct(sorted: &[u32]) -> u64 {
    let repeats = sorted.windows(2).filter(|w| w[0] == w[1]).count();
    (sorted.len() - repeats) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sim::{Fault, Op as SimOp, PowerLoss, SimFs};
    use crate::store::test_support::TempDir;
    use bytestring::ByteString;
    use std::fs::{self, OpenOptions};
    use std::os::unix::fs::FileExt;

    const SEG: u64 = format::DEFAULT_SEGMENT_SIZE;

    fn msg(i: usize, body_len: usize) -> StoredMessage {
        let mut body = format!("message {i} ").into_bytes();
        body.resize(body_len.max(body.len()), b'x');
        StoredMessage {
            persistent: true,
            expires_at_ms: i as u64,
            exchange: ByteString::from_static("ex"),
            routing_key: ByteString::from(format!("rk.{i}")),
            properties: Bytes::from(vec![0x10, 0x00, i as u8]),
            body: Bytes::from(body),
        }
    }

    /// A fully acked segment found at start is removed by the log's first sync, not while
    /// opening (starting 100,000 idle queues must not unlink 100,000 files); until then
    /// a crash finds it empty again, never with its messages back.
    #[test]
    fn a_fully_acked_segment_goes_at_the_first_sync_not_at_start() {
        let dir = TempDir::new("acked-at-start");
        let mut log = QueueLog::create(dir.path(), SEG).expect("create");
        let positions: Vec<SegmentPosition> = (0..3)
            .map(|i| log.append(&msg(i, 10)).expect("append"))
            .collect();
        for pos in positions {
            log.ack(pos).expect("ack");
        }
        log.sync().expect("sync");
        drop(log);
        assert_eq!(
            files(dir.path(), "seg").len(),
            1,
            "the writer's segment stays"
        );

        let (log, recovery) = QueueLog::open(dir.path(), SEG).expect("open");
        assert_eq!(recovery.messages, 0);
        assert_eq!(files(dir.path(), "seg").len(), 1, "opening removed nothing");
        drop(log);
        let (mut log, recovery) = QueueLog::open(dir.path(), SEG).expect("open again");
        assert_eq!(recovery.messages, 0, "found empty again");
        log.sync().expect("first sync");
        assert!(files(dir.path(), "seg").is_empty(), "the sync removed it");
        let pos = log.append(&msg(9, 10)).expect("append after");
        log.sync().expect("sync");
        drop(log);
        let (mut log, recovery) = QueueLog::open(dir.path(), SEG).expect("reopen");
        assert_eq!(recovery.messages, 1);
        let read = read_all(&mut log);
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].0, pos);
    }

    fn read_all(log: &mut QueueLog) -> Vec<(SegmentPosition, StoredMessage)> {
        log.read(None, usize::MAX, usize::MAX).expect("read")
    }

    fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(dir)
            .expect("dir")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == ext))
            .collect();
        v.sort();
        v
    }

    fn disk_usage(dir: &Path) -> u64 {
        fs::read_dir(dir)
            .expect("dir")
            .map(|e| e.expect("entry").metadata().expect("meta").len())
            .sum()
    }

    #[test]
    fn round_trip_survives_reopen() {
        let dir = TempDir::new("roundtrip");
        let mut log = QueueLog::create(dir.path(), SEG).expect("create");
        let sent: Vec<StoredMessage> = (0..100).map(|i| msg(i, i * 7)).collect();
        let mut positions = Vec::new();
        for m in &sent {
            positions.push(log.append(m).expect("append"));
        }
        assert!(positions.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(log.durable_position(), None);
        assert_eq!(log.sync().expect("sync"), positions.last().copied());
        assert_eq!(log.durable_position(), positions.last().copied());
        drop(log);

        let (mut log, recovery) = QueueLog::open(dir.path(), SEG).expect("open");
        assert!(recovery.warnings.is_empty(), "{:?}", recovery.warnings);
        assert_eq!(recovery.messages, 100);
        assert_eq!(
            recovery.bytes,
            sent.iter().map(|m| m.body.len() as u64).sum::<u64>()
        );
        let got = read_all(&mut log);
        assert_eq!(got.iter().map(|(p, _)| *p).collect::<Vec<_>>(), positions);
        assert_eq!(got.into_iter().map(|(_, m)| m).collect::<Vec<_>>(), sent);
        // New appends go to a new segment, after the recovered ones.
        let p = log.append(&msg(100, 1)).expect("append");
        assert!(p > positions[99]);
        assert_ne!(p.segment, positions[99].segment);
    }

    #[test]
    fn acks_survive_reopen_and_acked_messages_do_not_come_back() {
        let dir = TempDir::new("acks");
        let mut log = QueueLog::create(dir.path(), SEG).expect("create");
        let positions: Vec<_> = (0..10)
            .map(|i| log.append(&msg(i, 10)).expect("append"))
            .collect();
        log.sync().expect("sync");
        for i in [0, 3, 5, 9] {
            log.ack(positions[i]).expect("ack");
        }
        log.ack(positions[3]).expect("duplicate ack is a no-op");
        assert_eq!(log.live_messages(), 6);
        let live: Vec<_> = read_all(&mut log).into_iter().map(|(p, _)| p).collect();
        let expected: Vec<_> = [1, 2, 4, 6, 7, 8].iter().map(|&i| positions[i]).collect();
        assert_eq!(live, expected);
        log.flush().expect("flush");
        drop(log);

        let (mut log, recovery) = QueueLog::open(dir.path(), SEG).expect("open");
        assert_eq!(recovery.messages, 6);
        let live: Vec<_> = read_all(&mut log).into_iter().map(|(p, _)| p).collect();
        assert_eq!(live, expected);
        // Acks after recovery go on in the same ack file.
        log.ack(positions[1]).expect("ack");
        drop(log);
        let (_, recovery) = QueueLog::open(dir.path(), SEG).expect("open");
        assert_eq!(recovery.messages, 5);
    }

    #[test]
    fn delivered_markers_come_back() {
        let dir = TempDir::new("delivered");
        let mut log = QueueLog::create(dir.path(), SEG).expect("create");
        let positions: Vec<_> = (0..5)
            .map(|i| log.append(&msg(i, 10)).expect("append"))
            .collect();
        log.mark_delivered(positions[1]).expect("mark");
        log.mark_delivered(positions[2]).expect("mark");
        log.ack(positions[2]).expect("ack");
        log.sync().expect("sync");
        drop(log);

        let (log, recovery) = QueueLog::open(dir.path(), SEG).expect("open");
        assert_eq!(recovery.messages, 4);
        assert_eq!(recovery.delivered, 1);
        let delivered: Vec<bool> = positions.iter().map(|&p| log.was_delivered(p)).collect();
        assert_eq!(delivered, [false, true, false, false, false]);
        assert_eq!(log.delivery_marks(positions[1]), 1);
        assert_eq!(log.delivery_marks(positions[0]), 0);
    }

    #[test]
    fn fully_acked_segments_are_deleted_and_disk_use_drops() {
        let dir = TempDir::new("gc");
        let mut log = QueueLog::create(dir.path(), 4096).expect("create");
        let positions: Vec<_> = (0..200)
            .map(|i| log.append(&msg(i, 100)).expect("append"))
            .collect();
        log.sync().expect("sync");
        let segments = log.segment_count();
        assert!(segments >= 5, "{segments} segments");
        assert_eq!(files(dir.path(), "seg").len(), segments);
        let full = disk_usage(dir.path());
        // Ack all but the last 10 messages, out of order within each segment.
        let mut acks: Vec<_> = positions[..190].to_vec();
        acks.reverse();
        for p in acks {
            log.ack(p).expect("ack");
        }
        log.flush().expect("flush");
        let last = positions[190].segment;
        assert_eq!(
            log.segment_count(),
            (positions[199].segment - last + 1) as usize
        );
        let remaining = files(dir.path(), "seg");
        assert_eq!(remaining.len(), log.segment_count());
        assert_eq!(
            remaining[0].file_name().and_then(|n| n.to_str()),
            Some(&*format::segment_file_name(last))
        );
        assert!(
            disk_usage(dir.path()) < full / 4,
            "{} of {full}",
            disk_usage(dir.path())
        );
        assert_eq!(read_all(&mut log).len(), 10);
        drop(log);
        let (mut log, recovery) = QueueLog::open(dir.path(), 4096).expect("open");
        assert_eq!(recovery.messages, 10);
        // Acking everything after recovery deletes every segment (none is being written).
        for (p, _) in read_all(&mut log) {
            log.ack(p).expect("ack");
        }
        assert_eq!(log.segment_count(), 0);
        assert!(files(dir.path(), "seg").is_empty());
        assert!(files(dir.path(), "acks").is_empty());
    }

    #[test]
    fn a_segment_acked_while_being_written_goes_when_sealed() {
        let dir = TempDir::new("sealed");
        let mut log = QueueLog::create(dir.path(), 1024).expect("create");
        let first = log.append(&msg(0, 100)).expect("append");
        log.ack(first).expect("ack");
        assert_eq!(log.segment_count(), 1, "the segment being written stays");
        let big = log.append(&msg(1, 5000)).expect("append");
        assert_ne!(
            big.segment, first.segment,
            "a message larger than a segment gets its own"
        );
        assert_eq!(log.segment_count(), 1, "the acked segment went when sealed");
        let next = log.append(&msg(2, 10)).expect("append");
        assert_ne!(next.segment, big.segment);
        log.sync().expect("sync");
        let got = read_all(&mut log);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].1.body.len(), 5000);
    }

    /// Writes 3 segments of messages, syncs, and returns the log's positions.
    fn three_segments(dir: &Path) -> Vec<SegmentPosition> {
        let mut log = QueueLog::create(dir, 2048).expect("create");
        let positions: Vec<_> = (0..30)
            .map(|i| log.append(&msg(i, 150)).expect("append"))
            .collect();
        log.sync().expect("sync");
        assert!(log.segment_count() >= 3);
        positions
    }

    #[test]
    fn a_torn_tail_is_cut_and_reported() {
        let dir = TempDir::new("torn");
        let positions = three_segments(dir.path());
        let last = files(dir.path(), "seg").pop().expect("segment");
        let len = fs::metadata(&last).expect("meta").len();
        let file = OpenOptions::new().write(true).open(&last).expect("open");
        file.set_len(len - 20).expect("truncate mid-record");
        drop(file);

        let (mut log, recovery) = QueueLog::open(dir.path(), 2048).expect("open");
        assert_eq!(recovery.messages, 29);
        assert_eq!(recovery.warnings.len(), 1, "{:?}", recovery.warnings);
        assert!(
            recovery.warnings[0].contains("torn record"),
            "{}",
            recovery.warnings[0]
        );
        let got = read_all(&mut log);
        assert_eq!(
            got.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
            positions[..29]
        );
        assert_eq!(got[28].1, msg(28, 150));
        // The cut is persistent: a second start finds nothing to repair.
        log.append(&msg(99, 1)).expect("append");
        log.sync().expect("sync");
        drop(log);
        let (_, recovery) = QueueLog::open(dir.path(), 2048).expect("open");
        assert!(recovery.warnings.is_empty(), "{:?}", recovery.warnings);
        assert_eq!(recovery.messages, 30);
    }

    #[test]
    fn garbage_at_the_end_of_a_middle_segment_cuts_it_and_keeps_later_segments() {
        let dir = TempDir::new("garbage");
        let positions = three_segments(dir.path());
        let segs = files(dir.path(), "seg");
        // Scribble over the tail of the middle segment.
        let middle = &segs[1];
        let len = fs::metadata(middle).expect("meta").len();
        let file = OpenOptions::new().write(true).open(middle).expect("open");
        file.write_all_at(&[0xAB; 100], len - 100)
            .expect("scribble");
        drop(file);

        let (mut log, recovery) = QueueLog::open(dir.path(), 2048).expect("open");
        assert_eq!(recovery.warnings.len(), 1, "{:?}", recovery.warnings);
        assert!(
            recovery.warnings[0].contains("checksum mismatch"),
            "{:?}",
            recovery.warnings
        );
        let got: Vec<_> = read_all(&mut log).into_iter().map(|(p, _)| p).collect();
        let second = segment_number(&segs[1]);
        let last_of_second = positions
            .iter()
            .copied()
            .filter(|p| p.segment == second)
            .max()
            .expect("second segment");
        let expected: Vec<_> = positions
            .iter()
            .copied()
            .filter(|&p| p != last_of_second)
            .collect();
        assert_eq!(
            got, expected,
            "everything but the scribbled record, later segments included"
        );
        assert_eq!(files(dir.path(), "seg").len(), 3);
    }

    #[test]
    fn a_corrupt_record_mid_log_keeps_every_later_valid_record() {
        let dir = TempDir::new("midcorrupt");
        let positions = three_segments(dir.path());
        let segs = files(dir.path(), "seg");
        // Flip one body byte of the second record of the first segment: its checksum
        // fails, but its length and every later record are intact.
        let victim = positions[1];
        assert_eq!(victim.segment, segment_number(&segs[0]));
        let file = OpenOptions::new().write(true).open(&segs[0]).expect("open");
        file.write_all_at(&[0xFF], u64::from(victim.offset) + 60)
            .expect("scribble");
        drop(file);

        let (mut log, recovery) = QueueLog::open(dir.path(), 2048).expect("open");
        let got: Vec<_> = read_all(&mut log).into_iter().map(|(p, _)| p).collect();
        let expected: Vec<_> = positions.iter().copied().filter(|&p| p != victim).collect();
        assert_eq!(got, expected, "only the corrupt record is lost");
        assert_eq!(recovery.messages, 29);
        assert!(
            recovery
                .warnings
                .iter()
                .any(|w| w.contains("checksum mismatch")),
            "{:?}",
            recovery.warnings
        );
        assert_eq!(
            files(dir.path(), "seg").len(),
            segs.len(),
            "no segment deleted"
        );
        // A second start finds the same and loses nothing more.
        drop(log);
        let (_, recovery) = QueueLog::open(dir.path(), 2048).expect("reopen");
        assert_eq!(recovery.messages, 29);
    }

    #[test]
    fn a_zero_filled_segment_header_after_power_loss_is_a_torn_segment() {
        let dir = TempDir::new("zeroheader");
        let positions = three_segments(dir.path());
        // The newest segment was created but its data never reached the disk: the file
        // has its size but only zeros (what ext4 can show after a power loss).
        let last = files(dir.path(), "seg").pop().expect("segment");
        let len = fs::metadata(&last).expect("meta").len();
        fs::write(&last, vec![0u8; len as usize]).expect("zero");
        let (mut log, recovery) = QueueLog::open(dir.path(), 2048).expect("must open");
        let got: Vec<_> = read_all(&mut log).into_iter().map(|(p, _)| p).collect();
        let last_number = segment_number(&last);
        let expected: Vec<_> = positions
            .iter()
            .copied()
            .filter(|p| p.segment != last_number)
            .collect();
        assert_eq!(got, expected);
        assert!(!recovery.warnings.is_empty());
        // Appends go on after it.
        log.append(&msg(100, 1)).expect("append");
        log.sync().expect("sync");
    }

    fn segment_number(path: &Path) -> u32 {
        match path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(format::parse_file_name)
        {
            Some(LogFile::Segment(n)) => n,
            other => panic!("not a segment: {other:?}"),
        }
    }

    #[test]
    fn wrong_magic_or_version_is_incompatible() {
        let dir = TempDir::new("magic");
        three_segments(dir.path());
        let first = &files(dir.path(), "seg")[0];
        let file = OpenOptions::new().write(true).open(first).expect("open");
        file.write_all_at(b"SQLite f", 0).expect("scribble");
        let err = QueueLog::open(dir.path(), 2048).expect_err("must refuse");
        assert!(matches!(err, StoreError::Incompatible { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("not a Warren data directory or an incompatible version")
        );
        file.write_all_at(&format::file_header(&SEGMENT_MAGIC), 0)
            .expect("fix magic");
        file.write_all_at(&7u32.to_be_bytes(), 8)
            .expect("future version");
        let err = QueueLog::open(dir.path(), 2048).expect_err("must refuse");
        assert!(err.to_string().contains("format version 7"), "{err}");
    }

    #[test]
    fn transient_messages_are_gone_after_reopen() {
        let dir = TempDir::new("transient");
        let mut log = QueueLog::create(dir.path(), SEG).expect("create");
        let mut expected = Vec::new();
        for i in 0..10 {
            let mut m = msg(i, 20);
            m.persistent = i % 3 == 0;
            let p = log.append(&m).expect("append");
            if m.persistent {
                expected.push(p);
            }
        }
        assert_eq!(
            read_all(&mut log).len(),
            10,
            "transient messages are live until restart"
        );
        log.sync().expect("sync");
        drop(log);
        let (mut log, recovery) = QueueLog::open(dir.path(), SEG).expect("open");
        assert_eq!(recovery.messages, 4);
        let got: Vec<_> = read_all(&mut log).into_iter().map(|(p, _)| p).collect();
        assert_eq!(got, expected);
        for p in got {
            log.ack(p).expect("ack");
        }
        assert_eq!(
            log.segment_count(),
            0,
            "transient records do not keep a segment alive"
        );
    }

    #[test]
    fn a_backlog_larger_than_the_buffers_reads_in_pages() {
        let dir = TempDir::new("backlog");
        let mut log = QueueLog::create(dir.path(), 256 << 10).expect("create");
        let n = 3000;
        let positions: Vec<_> = (0..n)
            .map(|i| log.append(&msg(i, 1000)).expect("append"))
            .collect();
        assert!(log.segment_count() > 10);
        // Some of it is still in the write buffer: reading goes through it.
        let mut from = None;
        let mut got = Vec::new();
        loop {
            let page = log.read(from, 64, 50_000).expect("read");
            if page.is_empty() {
                break;
            }
            assert!(page.len() <= 64);
            from = page.last().map(|(p, _)| *p);
            for (p, m) in page {
                if p.offset % 2 == 0 {
                    log.ack(p).expect("ack");
                }
                got.push((p, m));
            }
        }
        assert_eq!(got.len(), n);
        for (i, (p, m)) in got.iter().enumerate() {
            assert_eq!(*p, positions[i]);
            assert_eq!(*m, msg(i, 1000));
        }
        // Appends after the reader caught up are found from the last position.
        let p = log.append(&msg(n, 5)).expect("append");
        let page = log.read(from, 10, usize::MAX).expect("read");
        assert_eq!(page.iter().map(|(p, _)| *p).collect::<Vec<_>>(), [p]);
        // Byte limit: one page stops once bodies reach max_bytes.
        let page = log.read(None, 1000, 10_000).expect("read");
        assert_eq!(page.len(), 10);
        // Resuming from a position that is not the cursor still works.
        let page = log.read(Some(positions[1]), 2, usize::MAX).expect("read");
        assert!(page[0].0 > positions[1]);
    }

    #[test]
    fn torn_and_stray_ack_entries_are_ignored() {
        let dir = TempDir::new("ackfile");
        let mut log = QueueLog::create(dir.path(), SEG).expect("create");
        let positions: Vec<_> = (0..4)
            .map(|i| log.append(&msg(i, 10)).expect("append"))
            .collect();
        log.ack(positions[0]).expect("ack");
        log.sync().expect("sync");
        drop(log);
        let acks = files(dir.path(), "acks").pop().expect("ack file");
        let mut data = fs::read(&acks).expect("read");
        data.extend_from_slice(&format::encode_ack_entry(positions[1].offset + 1, false));
        data.extend_from_slice(&format::encode_ack_entry(positions[2].offset, false)[..3]);
        fs::write(&acks, data).expect("write");

        let (mut log, recovery) = QueueLog::open(dir.path(), SEG).expect("open");
        assert_eq!(recovery.messages, 3);
        log.ack(positions[3]).expect("ack");
        log.flush().expect("flush");
        drop(log);
        let (mut log, recovery) = QueueLog::open(dir.path(), SEG).expect("open");
        assert_eq!(
            recovery.messages, 2,
            "the ack after the torn entry was aligned"
        );
        let got: Vec<_> = read_all(&mut log).into_iter().map(|(p, _)| p).collect();
        assert_eq!(got, positions[1..3]);
    }

    #[test]
    fn create_refuses_an_existing_log_and_delete_removes_it() {
        let dir = TempDir::new("create");
        let mut log = QueueLog::create(dir.path(), SEG).expect("create");
        log.append(&msg(0, 1)).expect("append");
        log.sync().expect("sync");
        let err = QueueLog::create(dir.path(), SEG).expect_err("must refuse");
        assert!(matches!(err, StoreError::AlreadyExists { .. }));
        log.delete().expect("delete");
        assert!(!dir.path().exists());
        assert!(matches!(
            QueueLog::create(dir.path(), 10),
            Err(StoreError::InvalidSegmentSize(10))
        ));
    }

    #[test]
    fn a_read_that_caught_up_sees_later_appends_to_the_same_segment() {
        let dir = TempDir::new("catchup");
        let mut log = QueueLog::create(dir.path(), SEG).expect("create");
        for i in 0..3 {
            log.append(&msg(i, 1)).expect("append");
        }
        let first = log.read(None, 100, usize::MAX).expect("read");
        assert_eq!(first.len(), 3);
        let last = first.last().map(|(pos, _)| *pos);
        let later: Vec<_> = (3..5)
            .map(|i| log.append(&msg(i, 1)).expect("append"))
            .collect();
        let next = log.read(last, 100, usize::MAX).expect("read again");
        let positions: Vec<_> = next.iter().map(|(pos, _)| *pos).collect();
        assert_eq!(
            positions, later,
            "appends after a caught-up read are read next"
        );
    }

    #[test]
    fn one_sync_together_makes_several_logs_durable() {
        let dir = TempDir::new("synctogether");
        let mut logs: Vec<QueueLog> = (0..3)
            .map(|i| QueueLog::create(dir.path().join(format!("q{i}")), SEG).expect("create"))
            .collect();
        let appended: Vec<_> = logs
            .iter_mut()
            .map(|log| log.append(&msg(0, 1)).expect("append"))
            .collect();
        let pending: Vec<_> = logs
            .iter_mut()
            .map(|log| log.begin_sync().expect("begin"))
            .collect();
        let syncer = crate::store::Syncer::open(&RealFs::shared(), dir.path()).expect("syncer");
        let results = syncer.sync(&pending);
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        for (((log, sync), pos), result) in logs.iter_mut().zip(pending).zip(appended).zip(&results)
        {
            assert_eq!(
                log.complete_sync(sync, result).expect("complete"),
                Some(pos)
            );
        }
    }

    #[test]
    fn split_sync_reports_durability_and_a_failed_sync_poisons() {
        let dir = TempDir::new("groupcommit");
        let mut log = QueueLog::create(dir.path(), SEG).expect("create");
        let a = log.append(&msg(0, 1)).expect("append");
        let pending = log.begin_sync().expect("begin");
        assert!(log.begin_sync().is_err(), "one sync at a time");
        let b = log.append(&msg(1, 1)).expect("append while syncing");
        let result = pending.run();
        assert_eq!(
            log.complete_sync(pending, &result).expect("complete"),
            Some(a)
        );
        assert_eq!(log.sync().expect("sync"), Some(b));
        let nothing = log.begin_sync().expect("begin");
        assert!(nothing.is_empty());
        let failed = Err(StoreError::io("fdatasync", dir.path())(io::Error::other(
            "EIO",
        )));
        assert!(log.complete_sync(nothing, &failed).is_err());
        assert!(matches!(
            log.append(&msg(2, 1)),
            Err(StoreError::Poisoned(_))
        ));
        assert!(matches!(log.sync(), Err(StoreError::Poisoned(_))));
        assert_eq!(log.durable_position(), Some(b));
    }

    fn sim_log(sim: &SimFs, dir: &str, segment_size: u64) -> QueueLog {
        sim.mkdir_durable(Path::new("/data/queues"));
        QueueLog::create_in(sim.shared(), dir, segment_size).expect("create")
    }

    fn errno(e: rustix::io::Errno) -> i32 {
        e.raw_os_error()
    }

    #[test]
    fn no_descriptor_for_a_directory_sync_does_not_poison_and_the_sync_is_redone() {
        for errno_value in [
            errno(rustix::io::Errno::MFILE),
            errno(rustix::io::Errno::NFILE),
        ] {
            let sim = SimFs::new();
            let mut log = sim_log(&sim, "/data/queues/q", SEG);
            let a = log.append(&msg(0, 10)).expect("append");
            // The sync must fsync /data/queues (the log's directory is new there).
            sim.inject(Fault {
                op: SimOp::Open,
                path: "/data/queues".into(),
                skip: 0,
                times: 1,
                errno: errno_value,
                torn: false,
            });
            let err = log.sync().expect_err("the directory could not be opened");
            assert!(err.is_transient(), "{err}");
            assert_eq!(log.durable_position(), None, "nothing confirmed");
            let b = log
                .append(&msg(1, 10))
                .expect("not poisoned: appends go on");
            assert_eq!(log.sync().expect("the retry succeeds"), Some(b));
            drop(log);
            let after = sim.power_loss(PowerLoss::DropUnsynced);
            let (mut log, _) = QueueLog::open_in(after.shared(), "/data/queues/q", SEG)
                .expect("the retried sync made the directory durable");
            let got: Vec<_> = read_all(&mut log).into_iter().map(|(p, _)| p).collect();
            assert_eq!(got, [a, b]);
        }
    }

    #[test]
    fn a_failed_fdatasync_still_poisons() {
        let sim = SimFs::new();
        let mut log = sim_log(&sim, "/data/queues/q", SEG);
        log.append(&msg(0, 10)).expect("append");
        sim.inject(Fault {
            op: SimOp::SyncFile,
            path: ".seg".into(),
            skip: 0,
            times: 1,
            errno: errno(rustix::io::Errno::IO),
            torn: false,
        });
        assert!(matches!(log.sync(), Err(StoreError::Poisoned(_))));
        assert!(matches!(
            log.append(&msg(1, 1)),
            Err(StoreError::Poisoned(_))
        ));
    }

    #[test]
    fn write_errors_and_torn_writes_are_retried_at_the_same_offset() {
        for (errno_value, torn) in [
            (errno(rustix::io::Errno::NOSPC), true),
            (errno(rustix::io::Errno::IO), false),
        ] {
            let sim = SimFs::new();
            let mut log = sim_log(&sim, "/data/queues/q", SEG);
            let a = log.append(&msg(0, 100)).expect("append");
            sim.inject(Fault {
                op: SimOp::Write,
                path: ".seg".into(),
                skip: 0,
                times: 1,
                errno: errno_value,
                torn,
            });
            assert!(log.sync().is_err(), "the write failed");
            let b = log.append(&msg(1, 100)).expect("append");
            assert_eq!(log.sync().expect("sync"), Some(b));
            drop(log);
            let after = sim.power_loss(PowerLoss::DropUnsynced);
            let (mut log, recovery) =
                QueueLog::open_in(after.shared(), "/data/queues/q", SEG).expect("open");
            assert!(recovery.warnings.is_empty(), "{:?}", recovery.warnings);
            let got: Vec<_> = read_all(&mut log)
                .into_iter()
                .map(|(p, m)| (p, m.body))
                .collect();
            assert_eq!(got, [(a, msg(0, 100).body), (b, msg(1, 100).body)]);
        }
    }

    #[test]
    fn an_ack_whose_flush_finds_no_descriptor_still_counts() {
        let sim = SimFs::new();
        let mut log = sim_log(&sim, "/data/queues/q", SEG);
        let n = 2 * ACK_BUFFER_LIMIT / format::ACK_ENTRY_LEN as usize;
        let positions: Vec<_> = (0..n)
            .map(|i| log.append(&msg(i, 1)).expect("append"))
            .collect();
        log.sync().expect("sync");
        sim.inject(Fault {
            op: SimOp::Open,
            path: ".acks".into(),
            skip: 0,
            times: 1,
            errno: errno(rustix::io::Errno::MFILE),
            torn: false,
        });
        // As the queue does: an ack's error is logged, not retried.
        let failed = positions.iter().filter(|&&p| log.ack(p).is_err()).count();
        assert_eq!(failed, 1, "one flush found no descriptor");
        assert_eq!(log.live_messages(), 0, "every ack counts");
        assert!(read_all(&mut log).is_empty());
        log.sync().expect("the next sync writes them all");
        drop(log);
        let after = sim.power_loss(PowerLoss::DropUnsynced);
        let (_, recovery) = QueueLog::open_in(after.shared(), "/data/queues/q", SEG).expect("open");
        assert_eq!(recovery.messages, 0);
    }

    #[test]
    fn many_logs_stay_within_the_descriptor_limit() {
        let sim = SimFs::new();
        sim.mkdir_durable(Path::new("/data/queues"));
        // The budget, and one directory handle of a sync.
        sim.set_fd_limit(Some(21));
        let budget = crate::store::fd_budget::FdBudget::new(20);
        let mut logs = Vec::new();
        for q in 0..1000 {
            let mut log = QueueLog::create_in(sim.shared(), format!("/data/queues/{q}"), 1024)
                .expect("create");
            log.set_fd_budget(budget.clone());
            log.append(&msg(q, 10)).expect("append");
            log.sync().expect("sync");
            logs.push(log);
        }
        assert!(budget.open() <= 20, "{} files open", budget.open());
        // Every log works on: appends reopen the segment, acks the ack file, reads the
        // reader (closed after each page once descriptors run short).
        for (q, log) in logs.iter_mut().enumerate() {
            let p = log.append(&msg(q, 2000)).expect("append again");
            let first = log.read(None, 1, usize::MAX).expect("read")[0].0;
            log.ack(first).expect("ack");
            log.sync().expect("sync");
            assert_eq!(
                read_all(log).iter().map(|(p, _)| *p).collect::<Vec<_>>(),
                [p]
            );
            assert!(budget.open() <= 20, "{} files open", budget.open());
        }
        drop(logs);
        assert_eq!(sim.open_files(), 0);
        let after = sim.power_loss(PowerLoss::DropUnsynced);
        for q in [0, 499, 999] {
            let (_, recovery) =
                QueueLog::open_in(after.shared(), format!("/data/queues/{q}"), 1024).expect("open");
            assert_eq!(recovery.messages, 1);
        }
    }

    #[test]
    fn a_synced_ack_does_not_come_back_after_a_power_loss() {
        let sim = SimFs::new();
        let mut log = sim_log(&sim, "/data/queues/q", 1024);
        let positions: Vec<_> = (0..12)
            .map(|i| log.append(&msg(i, 100)).expect("append"))
            .collect();
        log.sync().expect("sync");
        // Ack a whole sealed segment (deleted at once) and one message of the next.
        let first = positions[0].segment;
        for &p in positions.iter().filter(|p| p.segment == first) {
            log.ack(p).expect("ack");
        }
        let other = *positions
            .iter()
            .find(|p| p.segment != first)
            .expect("second segment");
        log.ack(other).expect("ack");
        log.sync().expect("sync");
        drop(log);
        let after = sim.power_loss(PowerLoss::DropUnsynced);
        let (mut log, _) = QueueLog::open_in(after.shared(), "/data/queues/q", 1024).expect("open");
        let got: Vec<_> = read_all(&mut log).into_iter().map(|(p, _)| p).collect();
        let expected: Vec<_> = positions
            .iter()
            .copied()
            .filter(|p| p.segment != first && *p != other)
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn purge_drops_everything() {
        let dir = TempDir::new("purge");
        let mut log = QueueLog::create(dir.path(), 2048).expect("create");
        for i in 0..40 {
            log.append(&msg(i, 100)).expect("append");
        }
        assert_eq!(log.purge().expect("purge"), 40);
        assert!(files(dir.path(), "seg").is_empty());
        let p = log.append(&msg(40, 1)).expect("append");
        log.sync().expect("sync");
        drop(log);
        let (mut log, recovery) = QueueLog::open(dir.path(), 2048).expect("open");
        assert_eq!(recovery.messages, 1);
        assert_eq!(read_all(&mut log)[0].0, p);
    }

    /// Not a unit test: `cargo test -p warren --release --lib store::queue_log::tests::perf
    /// -- --ignored --nocapture` prints append throughput and recovery time.
    #[test]
    #[ignore]
    fn perf() {
        let dir = TempDir::new("perf");
        let (queues, per_queue) = (1000, 1000);
        let body = Bytes::from(vec![b'x'; 128]);
        let m = StoredMessage { body, ..msg(0, 0) };
        let start = std::time::Instant::now();
        for q in 0..queues {
            let mut log = QueueLog::create(dir.path().join(q.to_string()), SEG).expect("create");
            for _ in 0..per_queue {
                log.append(&m).expect("append");
            }
            log.flush().expect("flush");
        }
        let elapsed = start.elapsed();
        let total = queues * per_queue;
        println!(
            "append+flush {total} x 128 B over {queues} queues: {elapsed:?} ({:.0}/s)",
            total as f64 / elapsed.as_secs_f64()
        );
        let start = std::time::Instant::now();
        let mut log = QueueLog::create(dir.path().join("one"), SEG).expect("create");
        for _ in 0..total {
            log.append(&m).expect("append");
        }
        log.sync().expect("sync");
        let elapsed = start.elapsed();
        println!(
            "one queue: append {total} + sync: {elapsed:?} ({:.0}/s)",
            total as f64 / elapsed.as_secs_f64()
        );
        let start = std::time::Instant::now();
        let mut from = None;
        let mut n = 0;
        loop {
            let page = log.read(from, 256, usize::MAX).expect("read");
            let Some(&(last, _)) = page.last() else { break };
            from = Some(last);
            n += page.len();
        }
        assert_eq!(n, total);
        println!("one queue: read {total}: {:?}", start.elapsed());
        drop(log);
        let start = std::time::Instant::now();
        let mut recovered = 0;
        for q in 0..queues {
            let (_, r) = QueueLog::open(dir.path().join(q.to_string()), SEG).expect("open");
            recovered += r.messages;
        }
        assert_eq!(recovered, total as u64);
        println!(
            "recover {total} messages in {queues} queues: {:?}",
            start.elapsed()
        );
        let start = std::time::Instant::now();
        let (_, r) = QueueLog::open(dir.path().join("one"), SEG).expect("open");
        assert_eq!(r.messages, total as u64);
        println!(
            "recover {total} messages in one queue ({} segments): {:?}",
            r.segments,
            start.elapsed()
        );
    }
}

//! One stream's durable log: segment files of checksummed chunks, a sparse index per
//! segment, reads from any offset or time, retention by whole segments.
//!
//! Appends are encoded into the open chunk in memory; the group commit seals it, writes
//! it and its index entry, and fdatasyncs them ([`StreamLog::begin_sync`] /
//! [`PendingSync::run`] / [`StreamLog::complete_sync`], the queue log's protocol). Only
//! what a sync made durable is readable ([`StreamLog::readable_end`]), so an offset a
//! reader saw is never given to another message after a crash.
//!
//! Memory does not grow with the stream: per segment the log keeps a summary (first and
//! end offset, first and last timestamp, length). Finding an offset or a time is a
//! binary search over the summaries, then one over the segment's index file by
//! positional reads, then one read of the chunk. Readers ([`StreamReader`]) have their
//! own handles and buffers and need the log only to find where to start.
//!
//! Recovery ([`StreamLog::open`]): a segment's index is trusted when its last entry names
//! a valid chunk; else, and for what follows the last indexed chunk, the segment is
//! scanned and its index rewritten. A bad chunk with a valid one after it is skipped as
//! a hole (reported); a bad tail is cut off. Appends then go to a new segment, so a
//! recovered segment is never written again. All file-system calls go through the
//! store's [`FileSystem`] seam. See `docs/streams-design.md`.

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};

use super::format::{FILE_HEADER_LEN, check_file_header, file_header};
use super::fs::{FileRef, FileSystem, FsRef, OpenMode};
use super::queue_log::{list_files, remove_if_exists};
use super::stream_format::{
    self as sf, Bloom, CHUNK_FIXED_LEN, CHUNK_HEADER_LEN, ChunkBody, ChunkInfo, INDEX_ENTRY_LEN,
    IndexEntry, STREAM_INDEX_MAGIC, STREAM_SEGMENT_MAGIC, StreamFile, StreamRecord,
};
use super::{PendingSync, Result, StoreError};

/// What a stream (or one partition of it) keeps on disk: its log and committed
/// offsets, in the directory of the queue's (empty) queue log, which stands for the
/// stream in the queue's life cycle, or a subdirectory of it for partitions past the
/// first.
#[derive(Debug)]
pub struct StreamFiles {
    /// The messages.
    pub log: StreamLog,
    /// The committed offsets of tracked consumers.
    pub offsets: super::stream_offsets::StreamOffsets,
}

/// A chunk is sealed once its entries take this much.
const MAX_CHUNK_BYTES: usize = 1 << 20;
/// … or once it holds this many entries.
const MAX_CHUNK_ENTRIES: u32 = 4096;
/// A segment rolls once it holds this many chunks (as RabbitMQ's), which bounds its
/// index file to 6 MiB.
const MAX_SEGMENT_CHUNKS: u64 = 256_000;
/// Sealed chunks are written out once this much waits, whatever the commit's pace.
const WRITE_BUFFER_LIMIT: usize = 256 << 10;
/// Appends are refused while this much waits in memory for writes that keep failing.
const MAX_UNWRITTEN: usize = 64 << 20;
/// Buffers grown past this by a large message are shrunk back once emptied.
const SHRINK_ABOVE: usize = 4 << 20;
/// Readers fetch at least this much per read.
const READ_AHEAD: usize = 64 << 10;
/// Smallest and largest segment size a stream takes (RabbitMQ's largest).
pub const SEGMENT_SIZE_RANGE: (u64, u64) = (4096, 3_000_000_000);
/// RabbitMQ's default segment size.
pub const DEFAULT_STREAM_SEGMENT_SIZE: u64 = 500_000_000;
/// RabbitMQ's default size of a chunk's Bloom filter (`x-stream-filter-size-bytes`).
pub const DEFAULT_STREAM_FILTER_BYTES: u8 = 16;

/// What [`StreamLog::open`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StreamRecovery {
    /// Segments kept.
    pub segments: usize,
    /// Messages kept (the end offset less the first, holes counted in).
    pub messages: u64,
    /// Damage found and repaired, one sentence each, for the broker's log.
    pub warnings: Vec<String>,
}

/// What the log keeps of one segment in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Summary {
    number: u32,
    /// First offset of its first chunk (its end offset while it has none).
    first_offset: u64,
    /// The offset after its last chunk.
    end_offset: u64,
    /// Timestamps of its first and last chunks.
    first_ts: u64,
    last_ts: u64,
    /// Bytes of valid data, header included.
    len: u64,
    chunks: u64,
}

impl Summary {
    fn empty(number: u32, at_offset: u64) -> Self {
        Self {
            number,
            first_offset: at_offset,
            end_offset: at_offset,
            first_ts: 0,
            last_ts: 0,
            len: FILE_HEADER_LEN,
            chunks: 0,
        }
    }

    fn add(&mut self, info: ChunkInfo, chunk_len: u64) {
        if self.chunks == 0 {
            self.first_offset = info.first_offset;
            self.first_ts = info.timestamp_ms;
        }
        self.end_offset = info.end_offset();
        self.last_ts = info.timestamp_ms;
        self.len += chunk_len;
        self.chunks += 1;
    }
}

/// The segment being appended to, with its files.
#[derive(Debug)]
struct Active {
    segment: FileRef,
    segment_path: PathBuf,
    index: FileRef,
    index_path: PathBuf,
    /// Written since the last sync began.
    dirty: bool,
}

/// The chunk being filled by appends.
#[derive(Debug)]
struct OpenChunk {
    entries: Vec<u8>,
    count: u32,
    first_offset: u64,
    timestamp_ms: u64,
    bloom: Bloom,
}

/// Where a chunk starts: the reader's place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkPosition {
    /// Segment number.
    pub segment: u32,
    /// Byte position of the chunk's header.
    pub pos: u64,
}

/// A chunk a reader read.
#[derive(Debug, Clone)]
pub struct Chunk {
    /// Its contents.
    pub body: ChunkBody,
    /// Where the next chunk starts.
    pub next: ChunkPosition,
}

/// What a read found.
#[derive(Debug)]
pub enum Read {
    /// The chunk at the position.
    Chunk(Chunk),
    /// Nothing readable there yet: the reader is at the readable end.
    End,
    /// The position holds no chunk the reader can use (its segment went by retention, or
    /// the data is damaged): find the offset again with [`StreamLog::seek`].
    Lost,
}

/// One stream's durable log. See the [module documentation](self).
#[derive(Debug)]
pub struct StreamLog {
    fs: FsRef,
    dir: PathBuf,
    max_segment_bytes: u64,
    /// Segments in number order; the active one, if any, is the last.
    segments: VecDeque<Summary>,
    active: Option<Active>,
    next_segment: u32,
    open: OpenChunk,
    /// Sealed chunks waiting to be written, encoded back to back, with their infos and
    /// lengths.
    sealed: Vec<u8>,
    sealed_chunks: VecDeque<(ChunkInfo, usize)>,
    next_offset: u64,
    /// Offsets below this are written to the segment files.
    written_end: u64,
    /// Offsets below this are durable: readable.
    durable_end: u64,
    /// The first offset of the last durable chunk (`last`), and of every chunk since.
    last_chunks: VecDeque<u64>,
    /// Sealed segments' files written since the last sync began.
    unsynced: Vec<(PathBuf, FileRef)>,
    dir_unsynced: bool,
    parent_unsynced: bool,
    /// A directory further out whose entry for ours the next sync makes durable.
    outer_unsynced: Option<PathBuf>,
    /// The written end the sync in flight covers.
    syncing: Option<u64>,
    poisoned: Option<String>,
}

impl StreamLog {
    /// Starts the log of a new stream in `dir` (created if missing), which must hold no
    /// segments: a new stream never adopts an old log.
    ///
    /// # Errors
    /// I/O errors, [`StoreError::AlreadyExists`], or a segment size out of range.
    pub fn create(
        fs: FsRef,
        dir: impl AsRef<Path>,
        max_segment_bytes: u64,
        bloom_len: u8,
    ) -> Result<StreamLog> {
        let dir = dir.as_ref().to_path_buf();
        fs.create_dir_all(&dir)
            .map_err(StoreError::io("create directory", &dir))?;
        if list_files(&*fs, &dir, sf::parse_file_name)?
            .iter()
            .any(|(f, _)| matches!(f, StreamFile::Segment(_)))
        {
            return Err(StoreError::AlreadyExists { path: dir });
        }
        let mut log = Self::empty(fs, dir, max_segment_bytes, bloom_len)?;
        log.parent_unsynced = true;
        log.dir_unsynced = true;
        Ok(log)
    }

    /// Has the next sync also make `dir`'s entry for the directory that holds ours
    /// durable: for a log created in a subdirectory of a directory itself new.
    pub fn sync_outer_dir(&mut self, dir: Option<PathBuf>) {
        self.outer_unsynced = dir;
    }

    fn empty(fs: FsRef, dir: PathBuf, max_segment_bytes: u64, bloom_len: u8) -> Result<Self> {
        let (min, max) = SEGMENT_SIZE_RANGE;
        if !(min..=max).contains(&max_segment_bytes) {
            return Err(StoreError::InvalidSegmentSize(max_segment_bytes));
        }
        Ok(Self {
            fs,
            dir,
            max_segment_bytes,
            segments: VecDeque::new(),
            active: None,
            next_segment: 0,
            open: OpenChunk {
                entries: Vec::new(),
                count: 0,
                first_offset: 0,
                timestamp_ms: 0,
                bloom: Bloom::new(bloom_len),
            },
            sealed: Vec::new(),
            sealed_chunks: VecDeque::new(),
            next_offset: 0,
            written_end: 0,
            durable_end: 0,
            last_chunks: VecDeque::new(),
            unsynced: Vec::new(),
            dir_unsynced: false,
            parent_unsynced: false,
            outer_unsynced: None,
            syncing: None,
            poisoned: None,
        })
    }

    /// Opens the log in `dir` as a crash or a clean stop left it (see the [module
    /// documentation](self)).
    ///
    /// # Errors
    /// I/O errors, files that are not a stream's, a segment size out of range.
    pub fn open(
        fs: FsRef,
        dir: impl AsRef<Path>,
        max_segment_bytes: u64,
        bloom_len: u8,
    ) -> Result<(StreamLog, StreamRecovery)> {
        let dir = dir.as_ref().to_path_buf();
        let mut log = Self::empty(fs, dir, max_segment_bytes, bloom_len)?;
        let mut recovery = StreamRecovery::default();
        let files = list_files(&*log.fs, &log.dir, sf::parse_file_name)?;
        let mut numbers: Vec<u32> = files
            .iter()
            .filter_map(|(f, _)| match f {
                StreamFile::Segment(n) => Some(*n),
                StreamFile::Index(_) => None,
            })
            .collect();
        numbers.sort_unstable();
        for (file, path) in &files {
            if let StreamFile::Index(n) = file
                && numbers.binary_search(n).is_err()
            {
                remove_if_exists(&*log.fs, path)?;
                log.dir_unsynced = true;
            }
        }
        let mut end = 0u64;
        for &n in &numbers {
            if let Some(summary) = log.recover_segment(n, end, &mut recovery.warnings)? {
                end = summary.end_offset;
                if summary.chunks > 0 {
                    log.last_chunks.clear();
                    log.last_chunks
                        .push_back(last_chunk_offset(&*log.fs, &log.dir, &summary)?);
                }
                log.segments.push_back(summary);
            }
        }
        log.next_segment = numbers.last().map_or(0, |n| n.saturating_add(1));
        log.next_offset = end;
        log.written_end = end;
        log.durable_end = end;
        log.open.first_offset = end;
        recovery.segments = log.segments.len();
        recovery.messages = end - log.first_offset();
        for warning in &recovery.warnings {
            tracing::warn!(dir = %log.dir.display(), "{warning}");
        }
        Ok((log, recovery))
    }

    /// The first offset still kept.
    pub fn first_offset(&self) -> u64 {
        self.segments
            .iter()
            .find(|s| s.chunks > 0)
            .map_or(self.written_end, |s| s.first_offset)
            .min(self.durable_end)
    }

    /// The offset the next append gets.
    pub fn end_offset(&self) -> u64 {
        self.next_offset
    }

    /// Offsets below this are durable and readable.
    pub fn readable_end(&self) -> u64 {
        self.durable_end
    }

    /// The first offset of the last readable chunk (RabbitMQ's `last`); the readable end
    /// when there is none.
    pub fn last_chunk_offset(&self) -> u64 {
        self.last_chunks
            .iter()
            .rev()
            .find(|&&first| first < self.durable_end)
            .copied()
            .unwrap_or(self.durable_end)
    }

    /// Bytes appended and not yet written to the segment files (held in memory).
    pub fn buffered_bytes(&self) -> u64 {
        (self.open.entries.len() + self.sealed.len()) as u64
    }

    /// Bytes the segments take on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.len).sum()
    }

    /// Segments kept.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// The directory of the log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends a message, appended at `now_ms` (the chunk's timestamp if it opens one);
    /// returns its offset. Durable, and readable, after the next sync.
    ///
    /// # Errors
    /// A poisoned log, or a message the format cannot hold.
    pub fn append(&mut self, record: &StreamRecord<'_>, now_ms: u64) -> Result<u64> {
        if let Some(why) = &self.poisoned {
            return Err(StoreError::Poisoned(why.clone()));
        }
        let len = sf::entry_len(record)?;
        let unwritten = self.open.entries.len() + self.sealed.len();
        if unwritten >= MAX_UNWRITTEN {
            // Try to write it out; if the disk still refuses, so does this append.
            self.seal();
            if let Err(e) = self.write_sealed() {
                return Err(StoreError::Backlogged(self.sealed.len(), e.to_string()));
            }
        }
        if self.open.count > 0
            && (self.open.entries.len() + len > MAX_CHUNK_BYTES
                || self.open.count >= MAX_CHUNK_ENTRIES)
        {
            self.seal();
        }
        if self.open.count == 0 {
            self.open.first_offset = self.next_offset;
            self.open.timestamp_ms = now_ms;
        }
        sf::encode_entry(&mut self.open.entries, record, len);
        self.open.bloom.add(record.filter_value);
        self.open.count += 1;
        let offset = self.next_offset;
        self.next_offset += 1;
        if self.sealed.len() >= WRITE_BUFFER_LIMIT {
            // An error leaves the chunks waiting; the next sync reports it.
            let _ = self.write_sealed();
        }
        Ok(offset)
    }

    /// Seals the open chunk, if it has entries, for the next write.
    fn seal(&mut self) {
        if self.open.count == 0 {
            return;
        }
        let info = ChunkInfo {
            first_offset: self.open.first_offset,
            count: self.open.count,
            timestamp_ms: self.open.timestamp_ms,
        };
        let start = self.sealed.len();
        sf::encode_chunk(
            &mut self.sealed,
            info,
            self.open.bloom.bytes(),
            &self.open.entries,
        );
        self.sealed_chunks
            .push_back((info, self.sealed.len() - start));
        self.open.entries.clear();
        if self.open.entries.capacity() > SHRINK_ABOVE {
            // One huge message must not keep its buffer for good.
            self.open.entries.shrink_to(MAX_CHUNK_BYTES);
        }
        self.open.bloom.clear();
        self.open.count = 0;
        self.open.first_offset = self.next_offset;
    }

    /// Writes the sealed chunks and their index entries, rolling segments as they fill.
    /// On an error the chunks not written stay, to be written (over any part that
    /// landed) by the next call.
    fn write_sealed(&mut self) -> Result<()> {
        let mut done = 0usize;
        let result = loop {
            let Some(&(info, len)) = self.sealed_chunks.front() else {
                break Ok(());
            };
            if let Err(e) = self.write_chunk(info, done, len) {
                break Err(e);
            }
            done += len;
            self.sealed_chunks.pop_front();
        };
        self.sealed.drain(..done);
        if self.sealed.is_empty() && self.sealed.capacity() > SHRINK_ABOVE {
            self.sealed.shrink_to(WRITE_BUFFER_LIMIT);
        }
        result
    }

    fn write_chunk(&mut self, info: ChunkInfo, at: usize, len: usize) -> Result<()> {
        let needs_roll = match (self.active.as_ref(), self.segments.back()) {
            (Some(_), Some(s)) => {
                s.chunks >= MAX_SEGMENT_CHUNKS
                    || (s.chunks > 0 && s.len + len as u64 > self.max_segment_bytes)
            }
            _ => true,
        };
        if needs_roll {
            self.roll(info.first_offset)?;
        }
        let (Some(active), Some(summary)) = (self.active.as_mut(), self.segments.back_mut()) else {
            return Err(StoreError::Misuse("no active segment after a roll"));
        };
        let pos = summary.len;
        if pos + len as u64 > u64::from(u32::MAX) {
            return Err(StoreError::InvalidMessage(
                "a stream chunk would start past 4 GiB in its segment",
            ));
        }
        active.dirty = true;
        active
            .segment
            .write_all_at(&self.sealed[at..at + len], pos)
            .map_err(StoreError::io("write", &active.segment_path))?;
        let entry = IndexEntry { info, pos };
        active
            .index
            .write_all_at(&entry.encode(), IndexEntry::file_pos(summary.chunks))
            .map_err(StoreError::io("write", &active.index_path))?;
        summary.add(info, len as u64);
        self.written_end = info.end_offset();
        self.last_chunks.push_back(info.first_offset);
        Ok(())
    }

    /// Starts segment `next_segment`, whose first chunk will start at `first_offset`.
    fn roll(&mut self, first_offset: u64) -> Result<()> {
        let number = self.next_segment;
        let next = number
            .checked_add(1)
            .ok_or(StoreError::Misuse("stream segment numbers exhausted"))?;
        let segment_path = self.dir.join(sf::segment_file_name(number));
        let index_path = self.dir.join(sf::index_file_name(number));
        // Read and write (the index is searched while it grows), emptied: a roll that
        // failed part way may have left either file.
        let create = |path: &Path, magic: &[u8; 8]| -> Result<FileRef> {
            let file = self
                .fs
                .open(path, OpenMode::CreateKeep)
                .map_err(StoreError::io("create", path))?;
            file.set_len(0).map_err(StoreError::io("truncate", path))?;
            file.write_all_at(&file_header(magic), 0)
                .map_err(StoreError::io("write", path))?;
            Ok(file)
        };
        self.dir_unsynced = true;
        let segment = create(&segment_path, &STREAM_SEGMENT_MAGIC)?;
        let index = create(&index_path, &STREAM_INDEX_MAGIC)?;
        if let Some(old) = self.active.take()
            && old.dirty
        {
            self.unsynced.push((old.segment_path, old.segment));
            self.unsynced.push((old.index_path, old.index));
        }
        self.active = Some(Active {
            segment,
            segment_path,
            index,
            index_path,
            dirty: true,
        });
        self.segments
            .push_back(Summary::empty(number, first_offset));
        self.next_segment = next;
        Ok(())
    }

    /// First half of a group-commit sync: seals and writes what was appended and takes
    /// the files to sync. Run the result, then hand it to
    /// [`complete_sync`](Self::complete_sync); one sync at a time.
    ///
    /// # Errors
    /// A poisoned log, a sync already in flight, or a failed write (the appends wait for
    /// the next sync).
    pub fn begin_sync(&mut self) -> Result<PendingSync> {
        if let Some(why) = &self.poisoned {
            return Err(StoreError::Poisoned(why.clone()));
        }
        if self.syncing.is_some() {
            return Err(StoreError::Misuse(
                "begin_sync called while a sync is in flight",
            ));
        }
        self.seal();
        self.write_sealed()?;
        let mut files = std::mem::take(&mut self.unsynced);
        if let Some(active) = self.active.as_mut()
            && active.dirty
        {
            files.push((active.segment_path.clone(), active.segment.clone()));
            files.push((active.index_path.clone(), active.index.clone()));
            active.dirty = false;
        }
        let mut dirs = Vec::new();
        if self.parent_unsynced
            && let Some(parent) = self.dir.parent()
        {
            dirs.push(parent.to_path_buf());
        }
        if self.dir_unsynced {
            dirs.push(self.dir.clone());
        }
        dirs.extend(self.outer_unsynced.take());
        self.parent_unsynced = false;
        self.dir_unsynced = false;
        self.syncing = Some(self.written_end);
        Ok(PendingSync::of_files(self.fs.clone(), files, dirs))
    }

    /// Second half of a sync: on success everything it covered becomes readable;
    /// returns the new readable end. A transient failure ([`StoreError::is_transient`])
    /// gives everything back for the next sync; any other poisons the log.
    ///
    /// # Errors
    /// The sync failed.
    pub fn complete_sync(&mut self, pending: PendingSync, result: &Result<()>) -> Result<u64> {
        let covered = self.syncing.take().unwrap_or(self.durable_end);
        match result {
            Ok(()) => {
                self.durable_end = self.durable_end.max(covered);
                // Keep only the last readable chunk's start and those after it.
                while self.last_chunks.len() > 1
                    && self
                        .last_chunks
                        .get(1)
                        .is_some_and(|&o| o < self.durable_end)
                {
                    self.last_chunks.pop_front();
                }
                Ok(self.durable_end)
            }
            Err(e) if e.is_transient() => {
                let parent = self.dir.parent().map(Path::to_path_buf);
                let (files, dirs) = pending.into_files();
                for dir in dirs {
                    if Some(&dir) == parent.as_ref() {
                        self.parent_unsynced = true;
                    } else if dir == self.dir {
                        self.dir_unsynced = true;
                    } else {
                        self.outer_unsynced = Some(dir);
                    }
                }
                let active_path = self.active.as_ref().map(|a| a.segment_path.clone());
                // Only this log's files: others (a stream's offsets) share the sync.
                let ours = |path: &Path| {
                    path.file_name()
                        .and_then(|n| n.to_str())
                        .and_then(sf::parse_file_name)
                        .is_some()
                };
                for (path, file) in files.into_iter().filter(|(p, _)| ours(p)) {
                    let is_active = active_path
                        .as_ref()
                        .is_some_and(|p| *p == path || p.with_extension("sidx") == path);
                    if is_active {
                        if let Some(active) = self.active.as_mut() {
                            active.dirty = true;
                        }
                    } else {
                        self.unsynced.push((path, file));
                    }
                }
                Err(StoreError::Io {
                    op: "sync (not done for lack of resources; the next sync retries)",
                    path: self.dir.clone(),
                    source: io::Error::other(e.to_string()),
                })
            }
            Err(e) => {
                let why = e.to_string();
                self.poisoned = Some(why.clone());
                Err(StoreError::Poisoned(why))
            }
        }
    }

    /// Where the chunk holding `offset` starts, or the first chunk after it (past a gap
    /// damage left), or where the next chunk will be written. An offset below the first kept one finds the first.
    ///
    /// # Errors
    /// Reading an index failed.
    pub fn seek(&self, offset: u64) -> Result<ChunkPosition> {
        let Some(i) = self.segment_of(offset) else {
            return Ok(self.end_position());
        };
        let summary = self.segments[i];
        // The last index entry whose chunk starts at or before `offset`.
        let (mut lo, mut hi) = (0u64, summary.chunks);
        let index = self.open_index(summary.number)?;
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self
                .index_entry(&index, summary.number, mid)?
                .info
                .first_offset
                <= offset
            {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let mut entry = self.index_entry(&index, summary.number, lo)?;
        if entry.info.end_offset() <= offset && lo + 1 < summary.chunks {
            // `offset` fell in a gap (a damaged chunk stepped over): the chunk after it.
            entry = self.index_entry(&index, summary.number, lo + 1)?;
        }
        Ok(ChunkPosition {
            segment: summary.number,
            pos: entry.pos,
        })
    }

    /// Where the chunk after the one at `at` starts, by the index, and the offset it
    /// starts at: for a reader that found the chunk at `at` damaged (its messages are
    /// lost; this is logged), which must then never go back before that offset. A
    /// position in a segment no longer kept finds the first chunk.
    ///
    /// # Errors
    /// Reading an index failed.
    pub fn seek_past(&self, at: ChunkPosition) -> Result<(ChunkPosition, u64)> {
        let Some(i) = self.segments.iter().position(|s| s.number == at.segment) else {
            return Ok((self.seek(0)?, self.first_offset()));
        };
        let summary = self.segments[i];
        let index = self.open_index(summary.number)?;
        let (mut lo, mut hi) = (0u64, summary.chunks);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.index_entry(&index, summary.number, mid)?.pos > at.pos {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        tracing::error!(
            dir = %self.dir.display(),
            segment = at.segment,
            pos = at.pos,
            "a stream chunk is damaged: its messages are skipped"
        );
        if lo < summary.chunks {
            let entry = self.index_entry(&index, summary.number, lo)?;
            let at = ChunkPosition {
                segment: summary.number,
                pos: entry.pos,
            };
            return Ok((at, entry.info.first_offset));
        }
        Ok(match self.segments.get(i + 1) {
            Some(next) => {
                let at = ChunkPosition {
                    segment: next.number,
                    pos: FILE_HEADER_LEN,
                };
                (at, next.first_offset)
            }
            None => (self.end_position(), self.written_end),
        })
    }

    /// The first offset of the first chunk appended at or after `timestamp_ms`; the
    /// readable end when there is none (RabbitMQ attaches such a reader at `next`).
    ///
    /// # Errors
    /// Reading an index failed.
    pub fn offset_at_time(&self, timestamp_ms: u64) -> Result<u64> {
        let Some(summary) = self
            .segments
            .iter()
            .find(|s| s.chunks > 0 && s.last_ts >= timestamp_ms)
            .copied()
        else {
            return Ok(self.durable_end);
        };
        let index = self.open_index(summary.number)?;
        // The first entry whose timestamp is at or after `timestamp_ms` (timestamps grow
        // with offsets, but a clock step back can break that: then the first found).
        let (mut lo, mut hi) = (0u64, summary.chunks - 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self
                .index_entry(&index, summary.number, mid)?
                .info
                .timestamp_ms
                >= timestamp_ms
            {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        let first = self
            .index_entry(&index, summary.number, lo)?
            .info
            .first_offset;
        Ok(first.min(self.durable_end))
    }

    /// The segment holding `offset` or, below the first, the first; `None` at or past
    /// the written end.
    fn segment_of(&self, offset: u64) -> Option<usize> {
        if offset >= self.written_end {
            return None;
        }
        let i = self.segments.partition_point(|s| s.end_offset <= offset);
        (i < self.segments.len()).then_some(i)
    }

    /// Where the next chunk will be written.
    fn end_position(&self) -> ChunkPosition {
        match (self.active.as_ref(), self.segments.back()) {
            (Some(_), Some(s)) => ChunkPosition {
                segment: s.number,
                pos: s.len,
            },
            _ => ChunkPosition {
                segment: self.next_segment,
                pos: FILE_HEADER_LEN,
            },
        }
    }

    fn open_index(&self, number: u32) -> Result<FileRef> {
        if let (Some(active), Some(last)) = (self.active.as_ref(), self.segments.back())
            && last.number == number
        {
            return Ok(active.index.clone());
        }
        let path = self.dir.join(sf::index_file_name(number));
        self.fs
            .open(&path, OpenMode::Read)
            .map_err(StoreError::io("open", &path))
    }

    fn index_entry(&self, index: &FileRef, number: u32, i: u64) -> Result<IndexEntry> {
        let mut e = [0u8; INDEX_ENTRY_LEN as usize];
        index
            .read_exact_at(&mut e, IndexEntry::file_pos(i))
            .map_err(|err| {
                StoreError::io("read", self.dir.join(sf::index_file_name(number)))(err)
            })?;
        Ok(IndexEntry::decode(&e))
    }

    /// A reader of this log's files, with its own handles and buffer.
    pub fn reader(&self) -> StreamReader {
        StreamReader {
            fs: self.fs.clone(),
            dir: self.dir.clone(),
            file: None,
            buf: Bytes::new(),
            buf_at: ChunkPosition { segment: 0, pos: 0 },
        }
    }

    /// Drops whole segments, oldest first, while the stream takes more than `max_bytes`
    /// or its oldest segment's newest chunk is older than `now_ms - max_age_ms`. Never
    /// the newest segment holding a durable chunk, nor any after it: recovery finds the
    /// stream's end in its chunks, and offsets must never start again below it. Returns
    /// how many went.
    ///
    /// # Errors
    /// Removing a segment's files failed (it is kept, and tried again next time).
    pub fn apply_retention(
        &mut self,
        max_bytes: Option<u64>,
        max_age_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<usize> {
        let mut removed = 0;
        let durable = self.durable_end;
        let mut removable = self
            .segments
            .iter()
            .rposition(|s| s.chunks > 0 && s.first_offset < durable)
            .unwrap_or(0);
        while removable > 0 {
            let Some(oldest) = self.segments.front().copied() else {
                break;
            };
            let too_big = max_bytes.is_some_and(|max| self.disk_bytes() > max);
            let too_old = max_age_ms.is_some_and(|age| {
                oldest.chunks > 0 && oldest.last_ts < now_ms.saturating_sub(age)
            });
            if !too_big && !too_old {
                break;
            }
            remove_if_exists(
                &*self.fs,
                &self.dir.join(sf::segment_file_name(oldest.number)),
            )?;
            self.segments.pop_front();
            self.dir_unsynced = true;
            removed += 1;
            removable -= 1;
            remove_if_exists(
                &*self.fs,
                &self.dir.join(sf::index_file_name(oldest.number)),
            )?;
        }
        Ok(removed)
    }

    /// Removes the log's directory with everything in it.
    ///
    /// # Errors
    /// The removal failed.
    pub fn delete(self) -> Result<()> {
        match self.fs.remove_dir_all(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(StoreError::io("remove", &self.dir)(e))
            }
            _ => Ok(()),
        }
    }

    /// Recovers segment `n`, whose chunks must start at or after `min_offset`; `None`
    /// when it holds nothing (then its files are removed).
    fn recover_segment(
        &mut self,
        n: u32,
        min_offset: u64,
        warnings: &mut Vec<String>,
    ) -> Result<Option<Summary>> {
        let path = self.dir.join(sf::segment_file_name(n));
        let index_path = self.dir.join(sf::index_file_name(n));
        let file = self
            .fs
            .open(&path, OpenMode::ReadWrite)
            .map_err(StoreError::io("open", &path))?;
        let size = file.size().map_err(StoreError::io("stat", &path))?;
        let mut header = [0u8; FILE_HEADER_LEN as usize];
        if size >= FILE_HEADER_LEN {
            file.read_exact_at(&mut header, 0)
                .map_err(StoreError::io("read", &path))?;
        }
        if size < FILE_HEADER_LEN || header.iter().all(|&b| b == 0) {
            warnings.push(format!(
                "segment {} was torn at creation and held nothing: removed",
                path.display()
            ));
            self.drop_files(&path, &index_path)?;
            return Ok(None);
        }
        check_file_header(&header, &STREAM_SEGMENT_MAGIC).map_err(|detail| {
            StoreError::Incompatible {
                path: path.clone(),
                detail,
            }
        })?;
        // What a killed broker wrote without syncing is readable from now on: make it
        // durable first, so that no offset a reader sees can be taken back by a later
        // power loss.
        file.sync_data()
            .map_err(StoreError::io("fdatasync", &path))?;
        let mut scan = Scan {
            file: &file,
            path: &path,
            size,
            summary: Summary::empty(n, min_offset),
            entries: Vec::new(),
            rewrite_index: false,
        };
        // Trust the index up to its last entry if that entry names a valid chunk.
        let from = match self.trusted_index(&index_path, &mut scan)? {
            Some(from) => from,
            None => FILE_HEADER_LEN,
        };
        let indexed = scan.entries.len();
        let end = scan.run(from, warnings)?;
        if end < size {
            file.set_len(end)
                .map_err(StoreError::io("truncate", &path))?;
            warnings.push(format!(
                "{}: cut {} damaged bytes at its end (a write torn by a crash)",
                path.display(),
                size - end
            ));
            self.unsynced.push((path.clone(), file.clone()));
        }
        if scan.summary.chunks == 0 {
            self.drop_files(&path, &index_path)?;
            return Ok(None);
        }
        if scan.entries.len() != indexed || scan.rewrite_index {
            self.write_index(&index_path, &scan.entries)?;
        }
        Ok(Some(scan.summary))
    }

    /// Reads `index_path` into `scan` if its last entry names a valid chunk at the
    /// right place; returns where the scan goes on from (after that chunk).
    fn trusted_index(&self, index_path: &Path, scan: &mut Scan<'_>) -> Result<Option<u64>> {
        let data = match self.fs.read(index_path) {
            Ok(data) => data,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io("read", index_path)(e)),
        };
        if data.len() < FILE_HEADER_LEN as usize
            || check_file_header(&data[..FILE_HEADER_LEN as usize], &STREAM_INDEX_MAGIC).is_err()
        {
            scan.rewrite_index = true;
            return Ok(None);
        }
        let entries: Vec<IndexEntry> = data[FILE_HEADER_LEN as usize..]
            .chunks_exact(INDEX_ENTRY_LEN as usize)
            .filter_map(|e| e.try_into().ok().map(IndexEntry::decode))
            .collect();
        scan.rewrite_index =
            (data.len() - FILE_HEADER_LEN as usize) % INDEX_ENTRY_LEN as usize != 0;
        let Some(last) = entries.last().copied() else {
            return Ok(None);
        };
        let ordered = entries
            .windows(2)
            .all(|w| w[0].info.end_offset() <= w[1].info.first_offset && w[0].pos < w[1].pos);
        let first_ok = entries.first().is_some_and(|e| {
            e.info.first_offset >= scan.summary.first_offset && e.pos == FILE_HEADER_LEN
        });
        match scan.chunk_at(last.pos) {
            Some((info, len)) if ordered && first_ok && info == last.info => {
                // Chunks between indexed ones are the index's word: they were checked
                // when written, and a reader checks each one it reads.
                for e in &entries {
                    scan.summary.add(e.info, 0);
                }
                scan.summary.len = last.pos + len;
                scan.entries = entries;
                Ok(Some(last.pos + len))
            }
            _ => {
                scan.rewrite_index = true;
                Ok(None)
            }
        }
    }

    fn write_index(&mut self, path: &Path, entries: &[IndexEntry]) -> Result<()> {
        let mut data = Vec::with_capacity(FILE_HEADER_LEN as usize + entries.len() * 24);
        data.extend_from_slice(&file_header(&STREAM_INDEX_MAGIC));
        for e in entries {
            data.extend_from_slice(&e.encode());
        }
        let file = self
            .fs
            .open(path, OpenMode::CreateTruncate)
            .map_err(StoreError::io("create", path))?;
        file.write_all_at(&data, 0)
            .map_err(StoreError::io("write", path))?;
        self.unsynced.push((path.to_path_buf(), file));
        self.dir_unsynced = true;
        Ok(())
    }

    fn drop_files(&mut self, path: &Path, index_path: &Path) -> Result<()> {
        remove_if_exists(&*self.fs, path)?;
        remove_if_exists(&*self.fs, index_path)?;
        self.dir_unsynced = true;
        Ok(())
    }
}

/// The first offset of the last chunk of a recovered segment, from its index.
fn last_chunk_offset(fs: &dyn FileSystem, dir: &Path, summary: &Summary) -> Result<u64> {
    let path = dir.join(sf::index_file_name(summary.number));
    let index = fs
        .open(&path, OpenMode::Read)
        .map_err(StoreError::io("open", &path))?;
    let mut e = [0u8; INDEX_ENTRY_LEN as usize];
    index
        .read_exact_at(&mut e, IndexEntry::file_pos(summary.chunks - 1))
        .map_err(StoreError::io("read", &path))?;
    Ok(IndexEntry::decode(&e).info.first_offset)
}

/// A recovery scan of one segment's chunks.
struct Scan<'a> {
    file: &'a FileRef,
    path: &'a Path,
    size: u64,
    summary: Summary,
    entries: Vec<IndexEntry>,
    /// The index file is damaged or disagrees with the segment: write it anew.
    rewrite_index: bool,
}

impl Scan<'_> {
    /// The chunk at `pos` if it is valid and follows what came before: its info and
    /// length.
    fn chunk_at(&self, pos: u64) -> Option<(ChunkInfo, u64)> {
        let mut header = [0u8; CHUNK_HEADER_LEN as usize];
        if pos + CHUNK_HEADER_LEN > self.size || self.file.read_exact_at(&mut header, pos).is_err()
        {
            return None;
        }
        let (len, crc) = sf::decode_chunk_header(&header);
        let len = u64::from(len);
        if len < CHUNK_FIXED_LEN as u64 || pos + CHUNK_HEADER_LEN + len > self.size {
            return None;
        }
        let mut body = vec![0u8; usize::try_from(len).ok()?];
        self.file
            .read_exact_at(&mut body, pos + CHUNK_HEADER_LEN)
            .ok()?;
        let body = ChunkBody::decode(Bytes::from(body), crc).ok()?;
        let expected = self.summary.end_offset;
        (body.info.first_offset >= expected && body.info.count > 0)
            .then_some((body.info, CHUNK_HEADER_LEN + len))
    }

    /// Scans chunks from `from`; returns the end of the last valid one. A bad chunk with
    /// a valid one somewhere after it is stepped over (and reported).
    fn run(&mut self, from: u64, warnings: &mut Vec<String>) -> Result<u64> {
        let mut pos = from;
        let mut end = from;
        while pos < self.size {
            if let Some((info, len)) = self.chunk_at(pos) {
                self.entries.push(IndexEntry { info, pos });
                self.summary.add(info, 0);
                self.summary.len = pos + len;
                pos += len;
                end = pos;
                continue;
            }
            match self.find_next(pos + 1) {
                Some(next) => {
                    warnings.push(format!(
                        "{}: skipped {} damaged bytes at {pos}",
                        self.path.display(),
                        next - pos
                    ));
                    pos = next;
                }
                None => break,
            }
        }
        Ok(end)
    }

    /// The next position at or after `from` where a valid chunk starts.
    fn find_next(&self, from: u64) -> Option<u64> {
        // A chunk body starts with term 0 and an offset at or after the expected one:
        // read windows and try only positions where that holds.
        const WINDOW: usize = 1 << 20;
        let prefix = CHUNK_HEADER_LEN as usize + 16;
        let mut at = from;
        while at + prefix as u64 <= self.size {
            let want = (self.size - at).min(WINDOW as u64) as usize;
            let mut buf = vec![0u8; want];
            self.file.read_exact_at(&mut buf, at).ok()?;
            for i in 0..want.saturating_sub(prefix - 1) {
                let term_zero = buf[i + 8..i + 16].iter().all(|&b| b == 0);
                if term_zero && self.chunk_at(at + i as u64).is_some() {
                    return Some(at + i as u64);
                }
            }
            at += (want - (prefix - 1)).max(1) as u64;
        }
        None
    }
}

/// A reader of a stream's files: its own handle on one segment and a read-ahead buffer,
/// so that readers far behind read the disk without the stream's lock.
#[derive(Debug)]
pub struct StreamReader {
    fs: FsRef,
    dir: PathBuf,
    file: Option<(u32, FileRef)>,
    /// Bytes of segment `buf_at.segment` from `buf_at.pos`.
    buf: Bytes,
    buf_at: ChunkPosition,
}

impl StreamReader {
    /// The chunk at `at` if it holds offsets below `readable_end`; moves on to the next
    /// segment at the end of one. Call it only while the offsets the reader wants next
    /// are below `readable_end`, so that the end of a segment means the next one holds
    /// them.
    ///
    /// # Errors
    /// A read failed for another reason than the file being gone.
    pub fn read(&mut self, mut at: ChunkPosition, readable_end: u64) -> Result<Read> {
        for _ in 0..2 {
            let Some(header) = self.bytes(at, CHUNK_HEADER_LEN as usize, 0)? else {
                return Ok(Read::Lost);
            };
            if header.len() < CHUNK_HEADER_LEN as usize {
                // The end of this segment: the next one starts after its header.
                at = ChunkPosition {
                    segment: at.segment.saturating_add(1),
                    pos: FILE_HEADER_LEN,
                };
                continue;
            }
            let mut h = [0u8; CHUNK_HEADER_LEN as usize];
            h.copy_from_slice(&header);
            let (len, crc) = sf::decode_chunk_header(&h);
            let total = CHUNK_HEADER_LEN as usize + len as usize;
            let Some(whole) = self.bytes(at, total, total)? else {
                return Ok(Read::Lost);
            };
            if whole.len() < total {
                // The caller wants offsets below the readable end, all in complete
                // chunks: a chunk running past its file is damaged, or `at` is stale.
                return Ok(Read::Lost);
            }
            let Ok(body) = ChunkBody::decode(whole.slice(CHUNK_HEADER_LEN as usize..), crc) else {
                return Ok(Read::Lost);
            };
            if body.info.end_offset() > readable_end {
                return Ok(Read::End);
            }
            let next = ChunkPosition {
                segment: at.segment,
                pos: at.pos + total as u64,
            };
            return Ok(Read::Chunk(Chunk { body, next }));
        }
        // Two segment ends in a row: an empty segment, or a gap left by damage.
        Ok(Read::Lost)
    }

    /// Up to `len` bytes at `at` (fewer at the end of the file), reading ahead at least
    /// `min_read` bytes; `None` if the segment is gone.
    fn bytes(&mut self, at: ChunkPosition, len: usize, min_read: usize) -> Result<Option<Bytes>> {
        let in_buf = self.buf_at.segment == at.segment
            && at.pos >= self.buf_at.pos
            && at.pos + len as u64 <= self.buf_at.pos + self.buf.len() as u64;
        if !in_buf {
            let file = match &self.file {
                Some((n, file)) if *n == at.segment => file.clone(),
                _ => {
                    let path = self.dir.join(sf::segment_file_name(at.segment));
                    match self.fs.open(&path, OpenMode::Read) {
                        Ok(file) => {
                            self.file = Some((at.segment, file.clone()));
                            file
                        }
                        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                        Err(e) => return Err(StoreError::io("open", &path)(e)),
                    }
                }
            };
            let mut want = len.max(min_read).max(READ_AHEAD);
            if want > READ_AHEAD {
                // A damaged length must not make a reader allocate gigabytes.
                let size = file.size().map_err(|e| {
                    StoreError::io("stat", self.dir.join(sf::segment_file_name(at.segment)))(e)
                })?;
                want = want.min(usize::try_from(size.saturating_sub(at.pos)).unwrap_or(usize::MAX));
            }
            let mut buf = BytesMut::zeroed(want);
            let mut got = 0;
            while got < want {
                match file.read_at(&mut buf[got..], at.pos + got as u64) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let path = self.dir.join(sf::segment_file_name(at.segment));
                        return Err(StoreError::io("read", path)(e));
                    }
                }
            }
            buf.truncate(got);
            self.buf = buf.freeze();
            self.buf_at = at;
        }
        let start = (at.pos - self.buf_at.pos) as usize;
        let end = (start + len).min(self.buf.len());
        Ok(Some(self.buf.slice(start..end)))
    }
}

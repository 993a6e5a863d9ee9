//! The committed offsets of a stream's tracked consumers and groups, kept beside its
//! segments and synced in the same group commit as its messages.
//!
//! ```text
//! offsets.NNNNNNNNNN  header: "WARRENSO" u32 version u32 reserved, then records:
//!   u32 payload_len, u32 crc32(payload), payload: shortstr key, u64 offset
//! ```
//!
//! Each sync appends one record per key whose offset changed since the last one; the
//! last record of a key wins. When a file holds many more records than keys, a sync
//! starts the next generation with a full snapshot, and the older generations are
//! removed once that sync is durable; so does a failed sync, after which the kernel may
//! have dropped what the file held. Recovery reads every generation in order, so a
//! torn snapshot (a crash during its sync) only repeats values the older generation
//! still holds. A torn record ends its file: it was never synced, so never reported.

use std::collections::BTreeMap;
use std::io;
use std::ops::Bound;
use std::path::{Path, PathBuf};

use super::format::{FILE_HEADER_LEN, check_file_header, file_header};
use super::fs::{FileRef, FsRef, OpenMode};
use super::queue_log::remove_if_exists;
use super::{Result, StoreError};

/// Magic bytes opening every offsets file.
pub const OFFSETS_MAGIC: [u8; 8] = *b"WARRENSO";
/// A new generation is started once a file holds this many records per key (and at
/// least [`MIN_COMPACT_RECORDS`]).
const COMPACT_FACTOR: u64 = 4;
/// Fewer records than this never start a new generation.
const MIN_COMPACT_RECORDS: u64 = 1024;

fn file_name(generation: u32) -> String {
    format!("offsets.{generation:010}")
}

fn parse_name(name: &str) -> Option<u32> {
    let digits = name.strip_prefix("offsets.")?;
    (digits.len() == 10 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// The committed offsets of one stream.
#[derive(Debug)]
pub struct StreamOffsets {
    fs: FsRef,
    dir: PathBuf,
    /// The latest offset of every key, synced or not.
    current: BTreeMap<String, u64>,
    /// Keys changed since the last sync began.
    dirty: BTreeMap<String, u64>,
    /// What the sync in flight writes, given back to `dirty` if it fails.
    syncing: BTreeMap<String, u64>,
    generation: u32,
    /// The file of the current generation, and its length.
    file: Option<(FileRef, u64)>,
    records: u64,
    /// Older generations to remove once the current one's snapshot is durable.
    superseded: Vec<u32>,
    /// Generations whose removal the sync in flight waits for.
    removing: Vec<u32>,
    /// The current generation's file and snapshot are not durable yet: the next sync
    /// writes the snapshot (if a write failed) and syncs the directory too.
    snapshot_pending: bool,
    /// The sync in flight makes the current generation's snapshot durable.
    syncing_snapshot: bool,
    /// Fewer records than this never start a new generation ([`MIN_COMPACT_RECORDS`];
    /// smaller in tests).
    min_compact: u64,
}

impl StreamOffsets {
    /// Reads the offsets kept in `dir` (none if there are no offsets files).
    ///
    /// # Errors
    /// I/O errors, or a file that is not an offsets file.
    pub fn open(fs: FsRef, dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let mut generations: Vec<u32> = match fs.read_dir(&dir) {
            Ok(names) => names
                .iter()
                .filter_map(|n| n.to_str().and_then(parse_name))
                .collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(StoreError::io("read directory", &dir)(e)),
        };
        generations.sort_unstable();
        let mut current = BTreeMap::new();
        let mut records = 0;
        for &g in &generations {
            let path = dir.join(file_name(g));
            let data = fs.read(&path).map_err(StoreError::io("read", &path))?;
            records = read_records(&data, &path, &mut current)?;
        }
        let generation = generations.last().map_or(0, |g| g.saturating_add(1));
        Ok(Self {
            fs,
            dir,
            current,
            dirty: BTreeMap::new(),
            syncing: BTreeMap::new(),
            generation,
            file: None,
            records,
            // Everything found is rewritten as the next generation's snapshot before
            // anything is appended, so all of it goes once that is durable.
            superseded: generations,
            removing: Vec::new(),
            snapshot_pending: false,
            syncing_snapshot: false,
            min_compact: MIN_COMPACT_RECORDS,
        })
    }

    /// The committed offset of `key`, if it has one.
    pub fn get(&self, key: &str) -> Option<u64> {
        self.current.get(key).copied()
    }

    /// The keys that start with `prefix` and their committed offsets, in key order.
    pub fn with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, u64)> {
        self.current
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(move |(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.as_str(), *v))
    }

    /// Sets `key`'s offset, durable at the next sync; returns whether it changed.
    pub fn set(&mut self, key: &str, offset: u64) -> bool {
        if self.current.get(key) == Some(&offset) {
            return false;
        }
        self.current.insert(key.to_owned(), offset);
        self.dirty.insert(key.to_owned(), offset);
        true
    }

    /// Writes what changed (or a new generation's snapshot) and returns the file to
    /// fdatasync, and whether the directory must be synced too; `None` when nothing
    /// changed.
    ///
    /// # Errors
    /// The write failed: what it would have written stays to be written by the next.
    pub fn begin_sync(&mut self) -> Result<Option<((PathBuf, FileRef), bool)>> {
        let must_start =
            self.file.is_none() && !(self.current.is_empty() && self.superseded.is_empty());
        let compact = self.records >= self.min_compact
            && self.records > COMPACT_FACTOR * self.current.len() as u64;
        if self.dirty.is_empty() && !must_start && !compact {
            return Ok(None);
        }
        if self.file.is_none() || compact {
            if self.file.take().is_some() {
                self.superseded.push(self.generation);
                self.generation = self.generation.saturating_add(1);
            }
            let path = self.dir.join(file_name(self.generation));
            let file = self
                .fs
                .open(&path, OpenMode::CreateTruncate)
                .map_err(StoreError::io("create", &path))?;
            file.write_all_at(&file_header(&OFFSETS_MAGIC), 0)
                .map_err(StoreError::io("write", &path))?;
            self.file = Some((file, FILE_HEADER_LEN));
            self.records = 0;
            // The new generation starts with everything.
            self.dirty = self.current.clone();
            self.snapshot_pending = true;
        }
        let mut buf = Vec::new();
        for (key, offset) in &self.dirty {
            encode_record(&mut buf, key, *offset);
        }
        let path = self.dir.join(file_name(self.generation));
        let Some((file, len)) = self.file.as_mut() else {
            return Err(StoreError::Misuse("no offsets file after starting one"));
        };
        file.write_all_at(&buf, *len)
            .map_err(StoreError::io("write", &path))?;
        *len += buf.len() as u64;
        self.records += self.dirty.len() as u64;
        self.syncing = std::mem::take(&mut self.dirty);
        self.syncing_snapshot = self.snapshot_pending;
        if self.snapshot_pending {
            self.removing = std::mem::take(&mut self.superseded);
        }
        Ok(Some(((path, file.clone()), self.snapshot_pending)))
    }

    /// Records the sync's outcome: on success older generations go; on failure what it
    /// covered is written again by the next sync.
    ///
    /// # Errors
    /// Removing an older generation failed (it is tried again after the next sync).
    pub fn complete_sync(&mut self, durable: bool) -> Result<()> {
        let synced = std::mem::take(&mut self.syncing);
        let snapshot = std::mem::take(&mut self.syncing_snapshot);
        if !durable {
            for (key, offset) in synced {
                self.dirty.entry(key).or_insert(offset);
            }
            self.superseded.append(&mut self.removing);
            // The kernel may have dropped what was written, leaving a hole that would
            // end the file for recovery: go on in a new generation, with everything.
            if self.file.take().is_some() {
                self.superseded.push(self.generation);
                self.generation = self.generation.saturating_add(1);
            }
            return Ok(());
        }
        if snapshot {
            self.snapshot_pending = false;
        }
        while let Some(g) = self.removing.pop() {
            let removed = remove_if_exists(&*self.fs, &self.dir.join(file_name(g)));
            if let Err(e) = removed {
                self.removing.push(g);
                self.superseded.append(&mut self.removing);
                return Err(e);
            }
        }
        Ok(())
    }
}

fn encode_record(buf: &mut Vec<u8>, key: &str, offset: u64) {
    let mut end = key.len().min(255);
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    let key = &key.as_bytes()[..end];
    let payload_len = 1 + key.len() + 8;
    buf.extend_from_slice(&(payload_len as u32).to_be_bytes());
    let crc_at = buf.len();
    buf.extend_from_slice(&[0; 4]);
    let start = buf.len();
    buf.push(key.len() as u8);
    buf.extend_from_slice(key);
    buf.extend_from_slice(&offset.to_be_bytes());
    let crc = crc32fast::hash(&buf[start..]);
    buf[crc_at..crc_at + 4].copy_from_slice(&crc.to_be_bytes());
}

/// Applies the records of one file to `into`; returns how many it held. A record that
/// fails its checksum ends the file (a torn append).
fn read_records(data: &[u8], path: &Path, into: &mut BTreeMap<String, u64>) -> Result<u64> {
    if data.len() < FILE_HEADER_LEN as usize
        || data[..FILE_HEADER_LEN as usize].iter().all(|&b| b == 0)
    {
        return Ok(0);
    }
    check_file_header(&data[..FILE_HEADER_LEN as usize], &OFFSETS_MAGIC).map_err(|detail| {
        StoreError::Incompatible {
            path: path.to_path_buf(),
            detail,
        }
    })?;
    let mut at = FILE_HEADER_LEN as usize;
    let mut records = 0;
    while let Some(header) = data.get(at..at + 8) {
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
        let Some(payload) = data.get(at + 8..at + 8 + len) else {
            break;
        };
        if crc32fast::hash(payload) != crc || payload.is_empty() {
            break;
        }
        let key_len = usize::from(payload[0]);
        let (Some(key), Some(offset)) = (payload.get(1..1 + key_len), payload.get(1 + key_len..))
        else {
            break;
        };
        let Ok(offset) = <[u8; 8]>::try_from(offset) else {
            break;
        };
        into.insert(
            String::from_utf8_lossy(key).into_owned(),
            u64::from_be_bytes(offset),
        );
        records += 1;
        at += 8 + len;
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sim::{PowerLoss, SimFs};

    const DIR: &str = "/data/s";

    fn sync(o: &mut StreamOffsets) -> bool {
        match o.begin_sync() {
            Ok(Some(((_, file), dir))) => {
                let ok =
                    file.sync_data().is_ok() && (!dir || o.fs.sync_dir(Path::new(DIR)).is_ok());
                o.complete_sync(ok).is_ok() && ok
            }
            Ok(None) => true,
            Err(_) => false,
        }
    }

    fn fresh() -> SimFs {
        let sim = SimFs::new();
        sim.mkdir_durable(Path::new(DIR));
        sim
    }

    #[test]
    fn synced_offsets_come_back_and_unsynced_ones_may_not() {
        let sim = fresh();
        let mut o = StreamOffsets::open(sim.shared(), DIR).expect("open");
        o.set("a", 5);
        o.set("b", 7);
        assert!(sync(&mut o));
        o.set("a", 9);
        let o2 = StreamOffsets::open(sim.power_loss(PowerLoss::DropUnsynced).shared(), DIR)
            .expect("reopen");
        assert_eq!(
            (o2.get("a"), o2.get("b"), o2.get("c")),
            (Some(5), Some(7), None)
        );
    }

    #[test]
    fn a_new_generation_replaces_a_long_file_and_the_old_one_goes() {
        let sim = fresh();
        let mut o = StreamOffsets::open(sim.shared(), DIR).expect("open");
        for i in 0..3000u64 {
            o.set("k", i);
            o.set(&format!("other{}", i % 3), i);
            assert!(sync(&mut o));
        }
        let names: Vec<String> = sim
            .shared()
            .read_dir(Path::new(DIR))
            .expect("list")
            .iter()
            .filter_map(|n| n.to_str().map(str::to_owned))
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        let o2 = StreamOffsets::open(sim.power_loss(PowerLoss::DropUnsynced).shared(), DIR)
            .expect("reopen");
        assert_eq!(o2.get("k"), Some(2999));
        assert_eq!(o2.get("other2"), Some(2999));
        assert!(o.records < 2 * MIN_COMPACT_RECORDS);
    }

    #[test]
    fn a_crash_at_every_io_point_keeps_every_synced_offset() {
        let run = |crash: Option<u64>| {
            let sim = fresh();
            let base = sim.ops();
            if let Some(k) = crash {
                sim.crash_at(base + k, true);
            }
            let mut synced: BTreeMap<String, u64> = BTreeMap::new();
            let mut written: BTreeMap<String, Vec<u64>> = BTreeMap::new();
            if let Ok(mut o) = StreamOffsets::open(sim.shared(), DIR) {
                o.min_compact = 16;
                for i in 0..120u64 {
                    let key = format!("k{}", i % 5);
                    o.set(&key, i);
                    written.entry(key.clone()).or_default().push(i);
                    if i % 2 == 1 && sync(&mut o) {
                        synced = o.current.clone();
                    }
                }
            }
            (sim, synced, written, base)
        };
        let (sim, _, _, base) = run(None);
        let ops = sim.ops() - base;
        assert!(ops > 100, "{ops} crash points");
        assert!(
            sim.trace().iter().any(|op| op.contains("remove")),
            "the workload starts new generations"
        );
        for k in 0..ops {
            for mode in [
                PowerLoss::DropUnsynced,
                PowerLoss::ProcessKill,
                PowerLoss::MetadataOnly,
            ] {
                let (sim, synced, written, _) = run(Some(k));
                let after = sim.power_loss(mode);
                let o = StreamOffsets::open(after.shared(), DIR)
                    .unwrap_or_else(|e| panic!("crash at {k} ({mode:?}): open: {e}"));
                for (key, value) in &synced {
                    let got = o
                        .get(key)
                        .unwrap_or_else(|| panic!("crash at {k}: {key} lost"));
                    assert!(
                        got >= *value && written[key].contains(&got),
                        "crash at {k} ({mode:?}): {key} is {got}, synced {value}"
                    );
                }
            }
        }
    }

    #[test]
    fn an_error_at_every_io_point_keeps_every_synced_offset() {
        let errno = rustix::io::Errno::IO.raw_os_error();
        let run = |fail: Option<u64>| {
            let sim = fresh();
            let base = sim.ops();
            if let Some(k) = fail {
                sim.fail_at(base + k, errno);
            }
            let mut synced: BTreeMap<String, u64> = BTreeMap::new();
            if let Ok(mut o) = StreamOffsets::open(sim.shared(), DIR) {
                o.min_compact = 16;
                for i in 0..120u64 {
                    o.set(&format!("k{}", i % 5), i);
                    if i % 2 == 1 && sync(&mut o) {
                        synced = o.current.clone();
                    }
                }
            }
            (sim, synced, base)
        };
        let (sim, _, base) = run(None);
        let ops = sim.ops() - base;
        for k in 0..ops {
            let (sim, synced, _) = run(Some(k));
            let after = sim.power_loss(PowerLoss::DropUnsynced);
            let o = StreamOffsets::open(after.shared(), DIR)
                .unwrap_or_else(|e| panic!("error at {k}: open: {e}"));
            for (key, value) in &synced {
                assert!(
                    o.get(key).is_some_and(|got| got >= *value),
                    "error at {k}: {key} is {:?}, synced {value}",
                    o.get(key)
                );
            }
        }
    }
}

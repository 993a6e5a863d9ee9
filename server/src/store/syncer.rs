//! How one group-commit round makes many logs durable at once, and learns which of them
//! failed.
//!
//! # What Linux guarantees (errseq)
//!
//! Since Linux 4.13 every inode's page cache (`address_space`) carries an `errseq_t`
//! `wb_err`: a write-back error (EIO, ENOSPC, EDQUOT …) bumps it and clears its "seen"
//! flag. Every open file description samples it at `open` (an error nobody has seen yet
//! samples as "behind", so the new descriptor will report it too) and `fsync`/`fdatasync`
//! report an error when the counter moved past the descriptor's sample, then advance the
//! sample and mark the error seen. So `fdatasync(fd)` reports each write-back error of
//! *that file* that happened since `fd` was opened, once per descriptor, even when it
//! happened during background write-back or during somebody else's sync. Since Linux 5.8
//! the superblock carries a second `errseq_t`, `s_wb_err`, bumped by a write-back error
//! of *any* inode of the file system and sampled into each descriptor at open in the
//! same way; `syncfs(fd)` reports it when it moved past `fd`'s sample. Before 5.8
//! `syncfs` reported nothing.
//!
//! Consequences, which this module follows:
//! - `syncfs` through the descriptor of whichever file happens to be first (the old
//!   code) is wrong both ways. A descriptor opened after an error that was already seen
//!   (by another program's `syncfs` on the same file system, or by ours through another
//!   descriptor) misses it: a log that just rolled to a new segment has a fresh
//!   descriptor, and another log's lost write-back was confirmed. A descriptor opened
//!   long ago reports again errors already reported through another one: a whole round
//!   was poisoned for nothing. The [`Syncer`] therefore calls `syncfs` through one
//!   descriptor of the data directory opened once at start: every write-back error on
//!   the file system since the previous round is reported to it exactly once.
//! - `syncfs` does not say which file failed. When it reports an error, every log of the
//!   round is synced again on its own, `fdatasync` per file through the descriptor its
//!   writes went through (opened before them, so its sample predates any of their
//!   errors; the log keeps it until a sync succeeds): a log whose files all sync is
//!   durable (its pages were written back and no error hit them); a log whose file
//!   reports an error is not, and is poisoned. If no log of the round reports one, the
//!   error belonged to a file outside the round (another program's file on the same file
//!   system, a file already synced) and is logged.
//! - One `syncfs` report may stand for errors of several files, and some may belong to
//!   logs outside the round that still hold unsynced writes (through descriptors they
//!   keep open for that reason). Those must hear of it at their next sync, which `syncfs`
//!   will not tell them (the error is seen now), so after the first error every log is
//!   synced file by file until a restart: exact, slower, and only once the file system
//!   has lost data.
//! - On kernels older than 5.8, or where `syncfs` is unsupported, every file is synced on
//!   its own.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use super::fs::{FileRef, FsRef, OpenMode};
use super::{PendingSync, Result, StoreError};

/// Syncs the [`PendingSync`]s of one group-commit round; see the [module
/// documentation](self).
#[derive(Debug)]
pub struct Syncer {
    /// A descriptor of the data directory, held for the store's life so that its
    /// `syncfs` error cursor starts at store start; `None` to sync file by file.
    handle: Option<FileRef>,
    dir: PathBuf,
    /// `syncfs` reported an error: every sync since is per file, so that a log outside
    /// that round still learns of it.
    seen_error: AtomicBool,
}

impl Syncer {
    /// A syncer for the file system holding `dir`, using `syncfs` where the kernel
    /// reports write-back errors through it.
    ///
    /// # Errors
    /// `dir` cannot be opened.
    pub fn open(fs: &FsRef, dir: &Path) -> Result<Self> {
        let handle = if fs.syncfs_reports_errors() {
            Some(
                fs.open(dir, OpenMode::Directory)
                    .map_err(StoreError::io("open directory", dir))?,
            )
        } else {
            None
        };
        Ok(Self {
            handle,
            dir: dir.to_owned(),
            seen_error: AtomicBool::new(false),
        })
    }

    /// A syncer that syncs every file on its own.
    pub fn per_file() -> Self {
        Self {
            handle: None,
            dir: PathBuf::new(),
            seen_error: AtomicBool::new(false),
        }
    }

    /// Makes every sync in `all` durable; returns one result per sync, in order. A sync
    /// whose result is `Ok` is durable.
    pub fn sync(&self, all: &[PendingSync]) -> Vec<Result<()>> {
        let touched: usize = all.iter().map(PendingSync::touched).sum();
        let Some(handle) = self
            .handle
            .as_ref()
            .filter(|_| touched > 1 && !self.seen_error.load(Ordering::Relaxed))
        else {
            return all.iter().map(PendingSync::run).collect();
        };
        match handle.syncfs() {
            Ok(()) => all.iter().map(|_| Ok(())).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {
                all.iter().map(PendingSync::run).collect()
            }
            Err(error) => {
                self.seen_error.store(true, Ordering::Relaxed);
                tracing::error!(
                    dir = %self.dir.display(),
                    %error,
                    "syncfs reported a write-back error; syncing each log on its own to find the ones it hit, in this round and in every later one"
                );
                let results: Vec<Result<()>> = all.iter().map(PendingSync::run).collect();
                if results.iter().all(Result::is_ok) {
                    tracing::error!(
                        dir = %self.dir.display(),
                        %error,
                        "the write-back error hit no log of this round: a file synced earlier, another program's file on the same file system, or a log outside the round (which learns of it at its next sync)"
                    );
                }
                results
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fs::FileSystem;
    use crate::store::sim::{PowerLoss, SimFs};
    use crate::store::{QueueLog, StoredMessage};
    use bytes::Bytes;
    use bytestring::ByteString;

    fn msg(body: &'static [u8]) -> StoredMessage {
        StoredMessage {
            persistent: true,
            expires_at_ms: 0,
            exchange: ByteString::from_static(""),
            routing_key: ByteString::from_static("q"),
            properties: Bytes::new(),
            body: Bytes::from_static(body),
        }
    }

    fn round(
        syncer: &Syncer,
        logs: &mut [&mut QueueLog],
    ) -> Vec<Result<Option<crate::store::SegmentPosition>>> {
        let pending: Vec<PendingSync> = logs
            .iter_mut()
            .map(|log| log.begin_sync().expect("begin"))
            .collect();
        let results = syncer.sync(&pending);
        logs.iter_mut()
            .zip(pending)
            .zip(&results)
            .map(|((log, p), r)| log.complete_sync(p, r))
            .collect()
    }

    /// A write-back error of log B before log A rolled to a new segment: a `syncfs`
    /// through A's new descriptor would not report it, and B's lost message would be
    /// confirmed.
    #[test]
    fn a_writeback_error_of_another_log_is_seen_and_only_that_log_is_poisoned() {
        let sim = SimFs::new();
        let data = Path::new("/data");
        sim.mkdir_durable(&data.join("queues"));
        let syncer = Syncer::open(&sim.shared(), data).expect("syncer");
        let mut a = QueueLog::create_in(sim.shared(), "/data/queues/a", 256).expect("a");
        let mut b = QueueLog::create_in(sim.shared(), "/data/queues/b", 256).expect("b");
        let a1 = a.append(&msg(b"a1")).expect("append");
        let b1 = b.append(&msg(b"b1")).expect("append");
        let first = round(&syncer, &mut [&mut a, &mut b]);
        assert_eq!(first[0].as_ref().ok(), Some(&Some(a1)));
        assert_eq!(first[1].as_ref().ok(), Some(&Some(b1)));

        b.append(&msg(b"b2")).expect("append");
        b.flush().expect("flush");
        sim.writeback_error(Path::new("/data/queues/b/0000000000.seg"));
        // Another program on the same file system calls syncfs and sees the error first.
        sim.mkdir_durable(Path::new("/elsewhere"));
        sim.open(Path::new("/elsewhere"), OpenMode::Directory)
            .expect("dir")
            .syncfs()
            .expect_err("it sees the error");
        // A rolls: its new segment's descriptor is opened after the error was seen.
        let a2 = a.append(&msg(&[b'x'; 300])).expect("append");
        assert_ne!(a2.segment, a1.segment);

        let second = round(&syncer, &mut [&mut a, &mut b]);
        assert_eq!(second[0].as_ref().ok(), Some(&Some(a2)), "A is durable");
        assert!(
            matches!(second[1], Err(StoreError::Poisoned(_))),
            "B lost b2 and must not confirm it: {:?}",
            second[1]
        );
        drop((a, b));
        let after = sim.power_loss(PowerLoss::DropUnsynced);
        let (_, ra) = QueueLog::open_in(after.shared(), "/data/queues/a", 256).expect("a");
        assert_eq!(ra.messages, 2);
    }

    /// Log B's unsynced write is lost while only A is in the round: `syncfs` reports it
    /// to that round, which A does not claim; B's next round must still hear of it.
    #[test]
    fn a_writeback_error_of_a_log_outside_the_round_reaches_its_next_sync() {
        let sim = SimFs::new();
        let data = Path::new("/data");
        sim.mkdir_durable(&data.join("queues"));
        let syncer = Syncer::open(&sim.shared(), data).expect("syncer");
        let mut a = QueueLog::create_in(sim.shared(), "/data/queues/a", 256).expect("a");
        let mut b = QueueLog::create_in(sim.shared(), "/data/queues/b", 256).expect("b");
        let mut c = QueueLog::create_in(sim.shared(), "/data/queues/c", 256).expect("c");
        b.append(&msg(b"b1")).expect("append");
        b.flush().expect("flush");
        sim.writeback_error(Path::new("/data/queues/b/0000000000.seg"));
        a.append(&msg(b"a1")).expect("append");
        c.append(&msg(b"c1")).expect("append");
        let first = round(&syncer, &mut [&mut a, &mut c]);
        assert!(first.iter().all(Result::is_ok), "{first:?}");
        a.append(&msg(b"a2")).expect("append");
        let second = round(&syncer, &mut [&mut a, &mut b]);
        assert!(second[0].is_ok(), "{:?}", second[0]);
        assert!(
            matches!(second[1], Err(StoreError::Poisoned(_))),
            "B lost b1 and must not confirm it: {:?}",
            second[1]
        );
    }

    #[test]
    fn an_error_outside_the_round_confirms_the_round() {
        let sim = SimFs::new();
        let data = Path::new("/data");
        sim.mkdir_durable(&data.join("queues"));
        let syncer = Syncer::open(&sim.shared(), data).expect("syncer");
        let mut a = QueueLog::create_in(sim.shared(), "/data/queues/a", 256).expect("a");
        let mut b = QueueLog::create_in(sim.shared(), "/data/queues/b", 256).expect("b");
        a.append(&msg(b"a1")).expect("append");
        b.append(&msg(b"b1")).expect("append");
        sim.mkdir_durable(Path::new("/data/other"));
        let other = sim
            .open(Path::new("/data/other/f"), OpenMode::CreateNew)
            .expect("f");
        other.write_all_at(b"x", 0).expect("write");
        sim.writeback_error(Path::new("/data/other/f"));
        let results = round(&syncer, &mut [&mut a, &mut b]);
        assert!(results.iter().all(Result::is_ok), "{results:?}");
    }
}

//! A budget of file descriptors for queue logs, so that a broker with 100,000 durable
//! queues stays under the open files limit whatever the pattern of publishing, acking
//! and reading.
//!
//! Every descriptor a budgeted log opens (segment, ack file, reader, spill segment) takes
//! an [`FdPermit`], and the permit travels inside the file handle ([`budgeted`]): it is
//! given back exactly when the descriptor closes, that is when the last clone of the
//! handle drops. Permits come in three kinds ([`Hold`]):
//!
//! - **kept**: the log may hold the descriptor across operations. At most `keep` of them
//!   (about half the budget), so that busy logs keep their descriptors and pay nothing
//!   under the budget. Once kept permits run short ([`FdBudget::tight`]), every log
//!   closes its descriptors after its next sync and its reader after every page, so
//!   that kept permits pass from log to log.
//! - **round**: a group-commit round writing a log that found no kept permit takes one;
//!   the log closes it when the round completes. The round makes sure there is room: when
//!   fewer than [`ROUND_NEED`] permits are left it syncs the logs it has begun, which
//!   closes their round descriptors, before it begins more (see `commit_round`).
//! - **brief**: when neither can be had (outside a round, or a log needing more than a
//!   round's share) the operation opens, writes, fdatasyncs and closes within itself, and
//!   a read opens, reads a page and closes. A small reserve is kept for them; a thread
//!   holds at most one at a time, so waiting for one is short, and it is bounded.
//!
//! The closing rule that keeps durability exact: a descriptor through which unsynced
//! writes went is closed only after they were fdatasync'd through it or through a
//! descriptor of the same file opened before them (a write-back error is reported only
//! to descriptors open when it happens); a failed fdatasync poisons the log. Spill logs
//! are never synced (their messages do not outlive the process), so their descriptors
//! close without one. Directory handles that a sync opens, one at a time on the commit
//! thread, and the files recovery reads at start-up, one at a time, are outside the
//! budget.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use super::fs::{FileRef, FsFile};

/// Permits a group-commit round wants free before it begins another log: a segment and
/// an ack file or two.
pub const ROUND_NEED: usize = 3;
/// How long a brief permit is waited for before the operation fails as if the process
/// were out of descriptors (a transient error: nothing is lost, it is retried).
const BRIEF_WAIT: Duration = Duration::from_secs(10);

/// The kind of a permit; see the [module documentation](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// May be held across operations.
    Kept,
    /// Held until the group-commit round that took it completes.
    Round,
    /// Held within one operation only.
    Brief,
}

#[derive(Debug, Default)]
struct Counts {
    open: usize,
    kept: usize,
}

/// How many descriptors queue logs may hold at once; see the [module
/// documentation](self).
#[derive(Debug)]
pub struct FdBudget {
    limit: usize,
    /// Permits only brief holds may take.
    reserve: usize,
    /// Kept permits at most.
    keep: usize,
    counts: Mutex<Counts>,
    freed: Condvar,
}

impl FdBudget {
    /// A budget of `limit` descriptors (at least 4).
    pub fn new(limit: usize) -> Arc<Self> {
        let limit = limit.max(4);
        let reserve = (limit / 8).clamp(1, 16);
        Arc::new(Self {
            limit,
            reserve,
            keep: (limit - reserve) / 2,
            counts: Mutex::new(Counts::default()),
            freed: Condvar::new(),
        })
    }

    /// A budget from the process's open files limit: half the soft limit (connections,
    /// listeners and the definitions need the rest), at least 64.
    pub fn from_rlimit() -> Arc<Self> {
        let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(1 << 20);
        Self::new(usize::try_from(soft / 2).unwrap_or(usize::MAX).max(64))
    }

    /// A permit to hold a descriptor across operations, if any is left.
    pub fn try_keep(self: &Arc<Self>) -> Option<FdPermit> {
        let mut c = self.counts.lock();
        if c.kept >= self.keep || c.open >= self.limit - self.reserve {
            return None;
        }
        c.kept += 1;
        c.open += 1;
        Some(FdPermit {
            budget: self.clone(),
            hold: Hold::Kept,
        })
    }

    /// A permit for a group-commit round, if any is left outside the reserve.
    pub fn try_round(self: &Arc<Self>) -> Option<FdPermit> {
        let mut c = self.counts.lock();
        if c.open >= self.limit - self.reserve {
            return None;
        }
        c.open += 1;
        Some(FdPermit {
            budget: self.clone(),
            hold: Hold::Round,
        })
    }

    /// A permit for one operation, waiting (boundedly) for one to be free.
    ///
    /// # Errors
    /// None came free in time: `EMFILE`, a transient error.
    pub fn brief(self: &Arc<Self>) -> io::Result<FdPermit> {
        let mut c = self.counts.lock();
        while c.open >= self.limit {
            if self.freed.wait_for(&mut c, BRIEF_WAIT).timed_out() && c.open >= self.limit {
                tracing::warn!(
                    limit = self.limit,
                    "no file descriptor of the queue logs' budget came free"
                );
                return Err(io::Error::from_raw_os_error(libc_emfile()));
            }
        }
        c.open += 1;
        Ok(FdPermit {
            budget: self.clone(),
            hold: Hold::Brief,
        })
    }

    /// Permits a group-commit round may still take.
    pub fn round_room(&self) -> usize {
        let c = self.counts.lock();
        (self.limit - self.reserve).saturating_sub(c.open)
    }

    /// Whether kept permits run short: logs then close their descriptors after each sync
    /// so that others can have them.
    pub fn tight(&self) -> bool {
        let c = self.counts.lock();
        c.kept + self.keep / 8 >= self.keep
    }

    /// Descriptors held now.
    #[cfg(test)]
    pub fn open(&self) -> usize {
        self.counts.lock().open
    }
}

/// `EMFILE`, the error of a process out of descriptors.
fn libc_emfile() -> i32 {
    rustix::io::Errno::MFILE.raw_os_error()
}

/// One descriptor's place in an [`FdBudget`]; given back when dropped.
#[derive(Debug)]
pub struct FdPermit {
    budget: Arc<FdBudget>,
    hold: Hold,
}

impl FdPermit {
    /// Its kind.
    pub fn hold(&self) -> Hold {
        self.hold
    }
}

impl Drop for FdPermit {
    fn drop(&mut self) {
        let mut c = self.budget.counts.lock();
        c.open -= 1;
        if self.hold == Hold::Kept {
            c.kept -= 1;
        }
        drop(c);
        self.budget.freed.notify_one();
    }
}

/// `file` carrying `permit`, which is given back when the descriptor closes (when the
/// last clone of the returned handle drops).
pub fn budgeted(file: FileRef, permit: FdPermit) -> FileRef {
    Arc::new(Budgeted {
        file,
        _permit: permit,
    })
}

/// An open file and its place in the budget.
#[derive(Debug)]
struct Budgeted {
    file: FileRef,
    _permit: FdPermit,
}

impl FsFile for Budgeted {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.file.read_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        self.file.write_at(buf, offset)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn sync_all(&self) -> io::Result<()> {
        self.file.sync_all()
    }

    fn syncfs(&self) -> io::Result<()> {
        self.file.syncfs()
    }

    fn size(&self) -> io::Result<u64> {
        self.file.size()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn kinds_share_the_budget_and_keep_a_reserve_for_brief_holds() {
        let budget = FdBudget::new(16);
        assert_eq!((budget.reserve, budget.keep), (2, 7));
        let kept: Vec<_> = std::iter::from_fn(|| budget.try_keep()).collect();
        assert_eq!(kept.len(), 7);
        assert!(budget.tight());
        let round: Vec<_> = std::iter::from_fn(|| budget.try_round()).collect();
        assert_eq!(round.len(), 7, "rounds take what kept permits leave");
        assert_eq!(budget.round_room(), 0);
        let a = budget.brief().expect("reserve");
        let b = budget.brief().expect("reserve");
        assert_eq!(budget.open(), 16);
        // A third brief hold waits for a descriptor to close.
        let (tx, rx) = mpsc::channel();
        let waiter = {
            let budget = budget.clone();
            std::thread::spawn(move || tx.send(budget.brief().map(|p| p.hold())))
        };
        drop(a);
        let got = rx.recv_timeout(Duration::from_secs(5)).expect("woken");
        assert_eq!(got.expect("permit"), Hold::Brief);
        waiter.join().expect("join").expect("sent");
        drop((b, kept, round));
        assert_eq!(budget.open(), 0);
        assert!(!budget.tight());
        assert!(FdBudget::from_rlimit().limit >= 64);
    }

    #[test]
    fn a_budgeted_file_gives_its_permit_back_when_its_last_clone_closes() {
        let sim = crate::store::sim::SimFs::new();
        sim.mkdir_durable(std::path::Path::new("/d"));
        let budget = FdBudget::new(8);
        let file = crate::store::fs::FileSystem::open(
            &sim,
            std::path::Path::new("/d/f"),
            crate::store::fs::OpenMode::CreateNew,
        )
        .expect("open");
        let file = budgeted(file, budget.try_keep().expect("permit"));
        let clone = file.clone();
        drop(file);
        assert_eq!((budget.open(), sim.open_files()), (1, 1));
        drop(clone);
        assert_eq!((budget.open(), sim.open_files()), (0, 0));
    }
}

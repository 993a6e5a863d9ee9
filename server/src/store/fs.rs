//! The store's one seam to the file system: every open, write, sync, rename, removal and
//! directory listing the store makes goes through [`FileSystem`] and [`FsFile`], so that
//! tests can put a fault-injecting, power-loss-simulating file system under it (as
//! tikv/raft-engine's `env::FileSystem` does).
//!
//! The production implementation, [`RealFs`], is a thin layer over `std::fs`. Calls go
//! through `dyn` only once per system call (a buffered write, an fsync, an open), never
//! per appended message: appends are buffered in memory by the queue log and written in
//! large chunks, so the indirection costs nothing measurable.

use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

/// How [`FileSystem::open`] opens a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// An existing file, for reading.
    Read,
    /// An existing file, for reading and writing.
    ReadWrite,
    /// A new file for reading and writing; fails if it exists (`O_CREAT | O_EXCL`).
    CreateNew,
    /// A file for writing, created if missing and emptied if not.
    CreateTruncate,
    /// A file for reading and writing, created if missing, kept as is if not.
    CreateKeep,
    /// An existing directory, to fsync it (or to call `syncfs` through it).
    Directory,
}

/// An open file (or directory) of a [`FileSystem`]. Positional I/O only, so that one
/// handle can be shared (`Arc`) between a writer and a group commit that syncs it.
pub trait FsFile: Send + Sync + fmt::Debug {
    /// Reads at `offset`; returns how many bytes were read (0 at the end).
    ///
    /// # Errors
    /// As `pread(2)`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;

    /// Writes at `offset`; returns how many bytes were written (possibly fewer).
    ///
    /// # Errors
    /// As `pwrite(2)`.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize>;

    /// `fdatasync(2)`: the file's data (and its size) reach stable storage. Reports a
    /// write-back error of this file that happened since this handle last reported one.
    ///
    /// # Errors
    /// As `fdatasync(2)`.
    fn sync_data(&self) -> io::Result<()>;

    /// `fsync(2)`: data and all metadata; for a directory, its entries.
    ///
    /// # Errors
    /// As `fsync(2)`.
    fn sync_all(&self) -> io::Result<()>;

    /// `syncfs(2)`: every dirty file of this handle's file system, with its journal.
    /// Reports a write-back error of *any* file of the file system that happened since
    /// this handle was opened or last reported one (Linux 5.8 and later); on other
    /// systems it fails with `Unsupported`.
    ///
    /// # Errors
    /// As `syncfs(2)`.
    fn syncfs(&self) -> io::Result<()>;

    /// The file's length.
    ///
    /// # Errors
    /// As `fstat(2)`.
    fn size(&self) -> io::Result<u64>;

    /// Truncates or extends the file to `len` bytes.
    ///
    /// # Errors
    /// As `ftruncate(2)`.
    fn set_len(&self, len: u64) -> io::Result<()>;

    /// Reads exactly `buf.len()` bytes at `offset`; `UnexpectedEof` if the file is
    /// shorter.
    ///
    /// # Errors
    /// As [`read_at`](Self::read_at), or `UnexpectedEof`.
    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(buf, offset) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Writes all of `buf` at `offset`, retrying short writes. On an error some prefix of
    /// `buf` may have reached the file.
    ///
    /// # Errors
    /// As [`write_at`](Self::write_at), or `WriteZero`.
    fn write_all_at(&self, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.write_at(buf, offset) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    buf = &buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The whole file's contents.
    ///
    /// # Errors
    /// As [`size`](Self::size) and [`read_at`](Self::read_at).
    fn read_all(&self) -> io::Result<Vec<u8>> {
        let len = usize::try_from(self.size()?).map_err(|_| io::Error::other("file too large"))?;
        let mut buf = vec![0; len];
        let mut got = 0;
        while got < len {
            match self.read_at(&mut buf[got..], got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(got);
        Ok(buf)
    }
}

/// A shared open file.
pub type FileRef = Arc<dyn FsFile>;

/// The file-system calls of the store. See the [module documentation](self).
pub trait FileSystem: Send + Sync + fmt::Debug {
    /// Opens `path` as `mode` says.
    ///
    /// # Errors
    /// As `open(2)`: `NotFound`, `AlreadyExists`, `EMFILE`/`ENFILE` (too many open
    /// files: transient), …
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<FileRef>;

    /// Creates `path` and any missing parents (no sync).
    ///
    /// # Errors
    /// As `mkdir(2)`.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;

    /// The names of the entries of directory `path`.
    ///
    /// # Errors
    /// As `opendir(3)` / `readdir(3)`.
    fn read_dir(&self, path: &Path) -> io::Result<Vec<OsString>>;

    /// Removes the file `path`.
    ///
    /// # Errors
    /// As `unlink(2)`.
    fn remove_file(&self, path: &Path) -> io::Result<()>;

    /// Removes the directory `path` with everything in it.
    ///
    /// # Errors
    /// As `unlink(2)` / `rmdir(2)`.
    fn remove_dir_all(&self, path: &Path) -> io::Result<()>;

    /// Renames `from` to `to`, replacing `to` atomically.
    ///
    /// # Errors
    /// As `rename(2)`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;

    /// Whether `path` exists (`Ok(false)` only for `NotFound`).
    ///
    /// # Errors
    /// As `stat(2)`, except `NotFound`.
    fn exists(&self, path: &Path) -> io::Result<bool>;

    /// Opens and fsyncs the directory `path`, so that entries created, renamed or
    /// removed in it survive a power loss.
    ///
    /// # Errors
    /// As [`open`](Self::open) (with [`OpenMode::Directory`]) and `fsync(2)`.
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.open(path, OpenMode::Directory)?.sync_all()
    }

    /// The whole contents of the file `path`.
    ///
    /// # Errors
    /// As [`open`](Self::open) and [`FsFile::read_all`].
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.open(path, OpenMode::Read)?.read_all()
    }

    /// Whether [`FsFile::syncfs`] reports write-back errors (Linux 5.8 and later); when
    /// not, the store syncs file by file.
    fn syncfs_reports_errors(&self) -> bool;
}

/// A shared file system.
pub type FsRef = Arc<dyn FileSystem>;

/// The real file system, through `std::fs`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealFs;

impl RealFs {
    /// The real file system as a shared [`FsRef`].
    pub fn shared() -> FsRef {
        Arc::new(RealFs)
    }
}

/// A real open file.
#[derive(Debug)]
struct RealFile(File);

impl FsFile for RealFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.0.read_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        self.0.write_at(buf, offset)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(&self.0, buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(&self.0, buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn sync_all(&self) -> io::Result<()> {
        self.0.sync_all()
    }

    #[cfg(target_os = "linux")]
    fn syncfs(&self) -> io::Result<()> {
        rustix::fs::syncfs(&self.0).map_err(io::Error::from)
    }

    #[cfg(not(target_os = "linux"))]
    fn syncfs(&self) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
}

impl FileSystem for RealFs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<FileRef> {
        let mut options = OpenOptions::new();
        match mode {
            OpenMode::Read | OpenMode::Directory => options.read(true),
            OpenMode::ReadWrite => options.read(true).write(true),
            OpenMode::CreateNew => options.read(true).write(true).create_new(true),
            OpenMode::CreateTruncate => options.write(true).create(true).truncate(true),
            OpenMode::CreateKeep => options.read(true).write(true).create(true),
        };
        Ok(Arc::new(RealFile(options.open(path)?)))
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::create_dir_all(path)
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<OsString>> {
        fs::read_dir(path)?
            .map(|entry| entry.map(|e| e.file_name()))
            .collect()
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::remove_dir_all(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        match fs::symlink_metadata(path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn syncfs_reports_errors(&self) -> bool {
        static REPORTS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *REPORTS.get_or_init(|| {
            cfg!(target_os = "linux")
                && fs::read_to_string("/proc/sys/kernel/osrelease")
                    .ok()
                    .and_then(|release| kernel_at_least(&release, (5, 8)))
                    .unwrap_or(false)
        })
    }
}

/// Whether a kernel release string (`6.1.0-13-amd64`) is at least `major.minor`.
fn kernel_at_least(release: &str, (major, minor): (u32, u32)) -> Option<bool> {
    let mut parts = release.trim().split(['.', '-']);
    let a: u32 = parts.next()?.parse().ok()?;
    let b: u32 = parts.next()?.parse().ok()?;
    Some((a, b) >= (major, minor))
}

/// Whether an error is a shortage of a resource that comes back by itself (too many open
/// files in the process or the system, no memory for a kernel structure, interrupted):
/// a failed *open* for such a reason means the operation was not done and may be retried,
/// not that data was lost.
pub fn is_transient(error: &io::Error) -> bool {
    use rustix::io::Errno;
    let transient = [
        Errno::MFILE,
        Errno::NFILE,
        Errno::NOMEM,
        Errno::AGAIN,
        Errno::INTR,
    ];
    error
        .raw_os_error()
        .is_some_and(|code| transient.iter().any(|e| e.raw_os_error() == code))
        || matches!(
            error.kind(),
            io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock | io::ErrorKind::OutOfMemory
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::TempDir;

    #[test]
    fn real_fs_round_trips_a_file() {
        let dir = TempDir::new("realfs");
        let fs = RealFs::shared();
        fs.create_dir_all(dir.path()).expect("mkdir");
        let path = dir.path().join("a");
        let f = fs.open(&path, OpenMode::CreateNew).expect("create");
        assert!(fs.open(&path, OpenMode::CreateNew).is_err());
        f.write_all_at(b"hello", 0).expect("write");
        f.sync_data().expect("sync");
        f.syncfs().expect("syncfs");
        fs.sync_dir(dir.path()).expect("sync dir");
        assert_eq!(fs.read(&path).expect("read"), b"hello");
        assert_eq!(
            fs.read_dir(dir.path()).expect("list"),
            vec![OsString::from("a")]
        );
        fs.rename(&path, &dir.path().join("b")).expect("rename");
        assert!(!fs.exists(&path).expect("stat"));
        fs.remove_file(&dir.path().join("b")).expect("remove");
        assert!(is_transient(&io::Error::from_raw_os_error(
            rustix::io::Errno::MFILE.raw_os_error()
        )));
        assert!(!is_transient(&io::Error::from_raw_os_error(
            rustix::io::Errno::IO.raw_os_error()
        )));
        assert_eq!(kernel_at_least("6.1.0-13-amd64\n", (5, 8)), Some(true));
        assert_eq!(kernel_at_least("5.4.0", (5, 8)), Some(false));
        assert_eq!(kernel_at_least("5.10", (5, 8)), Some(true));
    }
}

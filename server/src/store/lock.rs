//! An exclusive lock on the data directory, so that two brokers never write one store.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::format::LOCK_FILE_NAME;
use super::{Result, StoreError};

/// Holds an exclusive advisory lock (`flock`) on `data_dir/warren.lock` for as long as it
/// lives. The kernel drops the lock when the file is closed, so a crashed broker never
/// leaves a stale lock behind.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    path: PathBuf,
}

impl DataDirLock {
    /// Creates `data_dir` if needed and takes the lock, writing this process's id into the
    /// lock file for whoever investigates. Fails with [`StoreError::Locked`] while another
    /// process (or another holder in this one) has it.
    pub fn acquire(data_dir: impl AsRef<Path>) -> Result<DataDirLock> {
        let data_dir = data_dir.as_ref();
        std::fs::create_dir_all(data_dir).map_err(StoreError::io("create directory", data_dir))?;
        let path = data_dir.join(LOCK_FILE_NAME);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(StoreError::io("open", &path))?;
        match fs4::FileExt::try_lock(&file) {
            Ok(()) => {}
            Err(fs4::TryLockError::WouldBlock) => {
                return Err(StoreError::Locked {
                    path: data_dir.to_path_buf(),
                });
            }
            Err(fs4::TryLockError::Error(e)) => return Err(StoreError::io("lock", &path)(e)),
        }
        file.set_len(0).map_err(StoreError::io("truncate", &path))?;
        writeln!(file, "{}", std::process::id()).map_err(StoreError::io("write", &path))?;
        Ok(DataDirLock { _file: file, path })
    }

    /// Path of the lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::TempDir;

    #[test]
    fn a_second_holder_is_refused_until_the_first_drops() {
        let dir = TempDir::new("lock");
        let first = DataDirLock::acquire(dir.path()).expect("first lock");
        let err = DataDirLock::acquire(dir.path()).expect_err("second lock must fail");
        assert!(matches!(err, StoreError::Locked { .. }));
        assert!(
            err.to_string()
                .starts_with("another Warren is using data directory")
        );
        let pid = std::fs::read_to_string(first.path()).expect("lock file");
        assert_eq!(pid.trim(), std::process::id().to_string());
        drop(first);
        DataDirLock::acquire(dir.path()).expect("lock after release");
    }
}

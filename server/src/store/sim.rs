//! A simulated file system for tests: in memory, with injected faults, crashes and power
//! losses, under the store's [`FileSystem`] seam.
//!
//! Model. Every file keeps its contents as the page cache has them (`data`) and as stable
//! storage has them (`durable`); every directory keeps its entries both ways too. A write
//! changes `data`; `fdatasync`/`fsync` of a file makes its `data` durable; `fsync` of a
//! directory makes its entries durable; `syncfs` does both for everything. A power loss
//! rebuilds the tree from durable entries and durable contents only ([`PowerLoss`] has
//! gentler variants: a process kill that keeps the page cache, a metadata journal that
//! kept new sizes and names but not the data, which shows as zeros).
//!
//! Write-back errors follow Linux's errseq semantics (see [`super::syncer`]): an
//! injected write-back error on a file bumps the file's and the file system's error
//! counters and drops its dirty pages; `fdatasync` reports it once per handle whose
//! sample is older, `syncfs` likewise for the file system's counter; a handle opened
//! after an error nobody has seen yet reports it too.
//!
//! Crash points: every mutating call and every sync (create, write, truncate, rename,
//! remove, mkdir, fsync, fdatasync, syncfs) gets the next operation number; with
//! [`SimFs::crash_at`] the call numbered `k` fails (a write may first land a prefix: a
//! torn write) and every later call of any kind fails, as if the process had died there.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::fs::{FileRef, FileSystem, FsFile, FsRef, OpenMode};

/// Kinds of calls a [`Fault`] can hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Any open (of a file or a directory).
    Open,
    /// A write.
    Write,
    /// `fdatasync` or `fsync` of a file.
    SyncFile,
    /// `fsync` of a directory.
    SyncDir,
    /// `syncfs`.
    Syncfs,
    /// A rename.
    Rename,
    /// A removal of a file or a directory tree.
    Remove,
    /// A directory listing.
    ReadDir,
    /// A read.
    Read,
}

/// An injected error: the `skip`+1-th to `skip`+`times`-th calls of kind `op` on a path
/// containing `path` fail with OS error `errno`; a failing write may land half its bytes
/// first (`torn`).
#[derive(Debug, Clone)]
pub struct Fault {
    /// Which calls.
    pub op: Op,
    /// A substring of the path (empty: any path).
    pub path: String,
    /// Matching calls let through first.
    pub skip: usize,
    /// Matching calls failed after those.
    pub times: usize,
    /// The OS error number (`rustix::io::Errno::IO.raw_os_error()` …).
    pub errno: i32,
    /// A failing write first writes half of its bytes.
    pub torn: bool,
}

/// What survives a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerLoss {
    /// Only what was synced: durable entries, durable contents.
    DropUnsynced,
    /// The process died but the machine did not: everything written survives.
    ProcessKill,
    /// The journal kept every new name and size but no unsynced data: unsynced bytes
    /// read as zeros (what ext4 can show).
    MetadataOnly,
}

/// Linux's `errseq_t`: an error counter and whether anyone has been told of the latest
/// error. A descriptor samples it at open; an error nobody has seen yet is reported to
/// descriptors opened after it too, one already seen only to those opened before it.
#[derive(Debug, Clone, Copy, Default)]
struct Errseq {
    counter: u32,
    seen: bool,
}

impl Errseq {
    fn bump(&mut self) {
        self.counter += 1;
        self.seen = false;
    }

    fn sample(self) -> u32 {
        if self.seen { self.counter } else { 0 }
    }

    /// `errseq_check_and_advance`: whether an error happened since `cursor`.
    fn check_and_advance(&mut self, cursor: &mut u32) -> bool {
        if *cursor == self.counter {
            return false;
        }
        *cursor = self.counter;
        self.seen = true;
        true
    }
}

#[derive(Debug, Clone)]
struct FileNode {
    data: Vec<u8>,
    durable: Vec<u8>,
    dirty: bool,
    wb_err: Errseq,
}

#[derive(Debug, Clone, Default)]
struct DirNode {
    entries: BTreeMap<OsString, u64>,
    durable: BTreeMap<OsString, u64>,
}

#[derive(Debug, Clone)]
enum Node {
    File(FileNode),
    Dir(DirNode),
}

#[derive(Debug, Default)]
struct State {
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    sb_err: Errseq,
    ops: u64,
    crash_at: Option<u64>,
    torn_crash: bool,
    /// The call with this number fails with this OS error (and does nothing).
    fail_at: Option<(u64, i32)>,
    crashed: bool,
    faults: Vec<(Fault, usize)>,
    open_files: usize,
    fd_limit: Option<usize>,
    trace: Vec<String>,
}

const ROOT: u64 = 0;

fn errno(code: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(code.raw_os_error())
}

fn crashed() -> io::Error {
    io::Error::other("simulated crash: the process is dead")
}

impl State {
    fn new() -> Self {
        let mut nodes = HashMap::new();
        nodes.insert(ROOT, Node::Dir(DirNode::default()));
        Self {
            nodes,
            next_ino: 1,
            ..Self::default()
        }
    }

    /// Numbers a crash point; fails when the process is (now) dead.
    fn step(&mut self, what: &str, path: &Path) -> io::Result<bool> {
        if self.crashed {
            return Err(crashed());
        }
        let n = self.ops;
        self.ops += 1;
        self.trace.push(format!("#{n} {what} {}", path.display()));
        if self.crash_at == Some(n) {
            self.crashed = true;
            return Ok(true);
        }
        if let Some((k, errno)) = self.fail_at
            && k == n
        {
            return Err(io::Error::from_raw_os_error(errno));
        }
        Ok(false)
    }

    fn alive(&self) -> io::Result<()> {
        if self.crashed { Err(crashed()) } else { Ok(()) }
    }

    /// The injected fault for this call, if any.
    fn fault(&mut self, op: Op, path: &Path) -> Option<Fault> {
        let text = path.to_string_lossy();
        for (fault, seen) in &mut self.faults {
            if fault.op == op && text.contains(fault.path.as_str()) {
                *seen += 1;
                if *seen > fault.skip && *seen <= fault.skip + fault.times {
                    return Some(fault.clone());
                }
            }
        }
        None
    }

    fn resolve(&self, path: &Path) -> io::Result<u64> {
        let mut ino = ROOT;
        for c in path.components() {
            match c {
                Component::RootDir | Component::CurDir => {}
                Component::Normal(name) => {
                    let Some(Node::Dir(d)) = self.nodes.get(&ino) else {
                        return Err(errno(rustix::io::Errno::NOTDIR));
                    };
                    ino = *d
                        .entries
                        .get(name)
                        .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
                }
                _ => return Err(io::Error::other("unsupported path component")),
            }
        }
        Ok(ino)
    }

    fn parent<'a>(&self, path: &'a Path) -> io::Result<(u64, &'a OsStr)> {
        let name = path
            .file_name()
            .ok_or_else(|| io::Error::other("no file name"))?;
        let parent = self.resolve(path.parent().unwrap_or(Path::new("/")))?;
        match self.nodes.get(&parent) {
            Some(Node::Dir(_)) => Ok((parent, name)),
            _ => Err(errno(rustix::io::Errno::NOTDIR)),
        }
    }

    fn dir_mut(&mut self, ino: u64) -> io::Result<&mut DirNode> {
        match self.nodes.get_mut(&ino) {
            Some(Node::Dir(d)) => Ok(d),
            _ => Err(errno(rustix::io::Errno::NOTDIR)),
        }
    }

    fn file_mut(&mut self, ino: u64) -> io::Result<&mut FileNode> {
        match self.nodes.get_mut(&ino) {
            Some(Node::File(f)) => Ok(f),
            _ => Err(errno(rustix::io::Errno::ISDIR)),
        }
    }

    fn add(&mut self, parent: u64, name: &OsStr, node: Node) -> io::Result<u64> {
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nodes.insert(ino, node);
        self.dir_mut(parent)?.entries.insert(name.to_owned(), ino);
        Ok(ino)
    }

    fn sync_everything(&mut self) {
        for node in self.nodes.values_mut() {
            match node {
                Node::File(f) => {
                    if f.dirty {
                        f.durable = f.data.clone();
                        f.dirty = false;
                    }
                }
                Node::Dir(d) => d.durable = d.entries.clone(),
            }
        }
    }
}

/// The simulated file system. Cloning shares it.
#[derive(Debug, Clone)]
pub struct SimFs {
    state: Arc<Mutex<State>>,
}

impl Default for SimFs {
    fn default() -> Self {
        Self::new()
    }
}

impl SimFs {
    /// An empty file system with only `/`.
    pub fn new() -> Self {
        Self {
            state: Arc::new(Mutex::new(State::new())),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// As a shared [`FsRef`].
    pub fn shared(&self) -> FsRef {
        Arc::new(self.clone())
    }

    /// Creates `path` (and parents) durably, as an operator's `mkdir` long before.
    pub fn mkdir_durable(&self, path: &Path) {
        let _ = self.create_dir_all(path);
        self.lock().sync_everything();
    }

    /// Makes the call numbered `k` (and every later call) fail; with `torn`, a write
    /// numbered `k` first lands half its bytes.
    pub fn crash_at(&self, k: u64, torn: bool) {
        let mut st = self.lock();
        st.crash_at = Some(k);
        st.torn_crash = torn;
    }

    /// Makes the call numbered `k` fail with OS error `errno`, doing nothing; the process
    /// lives on.
    pub fn fail_at(&self, k: u64, errno: i32) {
        self.lock().fail_at = Some((k, errno));
    }

    /// Whether the crash point was reached.
    pub fn crashed(&self) -> bool {
        self.lock().crashed
    }

    /// How many crash points (mutating calls and syncs) have been numbered so far.
    pub fn ops(&self) -> u64 {
        self.lock().ops
    }

    /// The calls numbered so far, one line each.
    pub fn trace(&self) -> Vec<String> {
        self.lock().trace.clone()
    }

    /// Adds an injected fault.
    pub fn inject(&self, fault: Fault) {
        self.lock().faults.push((fault, 0));
    }

    /// Removes every injected fault.
    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// Open files at most (EMFILE beyond); `None` for no limit.
    pub fn set_fd_limit(&self, limit: Option<usize>) {
        self.lock().fd_limit = limit;
    }

    /// Files open now.
    pub fn open_files(&self) -> usize {
        self.lock().open_files
    }

    /// A write-back error on the file `path`, now: its dirty pages are dropped (never to
    /// reach the disk) and the error is recorded for `fdatasync` and `syncfs` to report.
    pub fn writeback_error(&self, path: &Path) {
        let mut st = self.lock();
        let Ok(ino) = st.resolve(path) else { return };
        st.sb_err.bump();
        if let Ok(f) = st.file_mut(ino) {
            f.wb_err.bump();
            f.dirty = false;
        }
    }

    /// The file system as it is after a crash now, as `mode` says; the old one is left
    /// dead (every call fails).
    pub fn power_loss(&self, mode: PowerLoss) -> SimFs {
        let mut old = self.lock();
        old.crashed = true;
        let mut st = State::new();
        // Walk the surviving tree from the root, keeping inode numbers.
        let mut stack = vec![ROOT];
        while let Some(ino) = stack.pop() {
            let Some(node) = old.nodes.get(&ino) else {
                continue;
            };
            let kept = match node {
                Node::Dir(d) => {
                    let entries = match mode {
                        PowerLoss::DropUnsynced => d.durable.clone(),
                        PowerLoss::ProcessKill | PowerLoss::MetadataOnly => d.entries.clone(),
                    };
                    stack.extend(entries.values().copied());
                    Node::Dir(DirNode {
                        durable: entries.clone(),
                        entries,
                    })
                }
                Node::File(f) => {
                    let data = match mode {
                        PowerLoss::DropUnsynced => f.durable.clone(),
                        PowerLoss::ProcessKill => f.data.clone(),
                        PowerLoss::MetadataOnly => {
                            let mut v = vec![0u8; f.data.len()];
                            let n = f.durable.len().min(v.len());
                            v[..n].copy_from_slice(&f.durable[..n]);
                            v
                        }
                    };
                    Node::File(FileNode {
                        durable: data.clone(),
                        data,
                        dirty: false,
                        wb_err: Errseq::default(),
                    })
                }
            };
            st.nodes.insert(ino, kept);
        }
        st.next_ino = old.next_ino;
        SimFs {
            state: Arc::new(Mutex::new(st)),
        }
    }

    /// The contents of `path` as the page cache has them (for test assertions).
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        let mut st = self.lock();
        let ino = st.resolve(path).ok()?;
        st.file_mut(ino).ok().map(|f| f.data.clone())
    }

    /// Overwrites bytes of `path` in place, durably (test damage).
    pub fn scribble(&self, path: &Path, offset: usize, bytes: &[u8]) {
        let mut st = self.lock();
        let Ok(ino) = st.resolve(path) else { return };
        if let Ok(f) = st.file_mut(ino) {
            let end = (offset + bytes.len()).min(f.data.len());
            if offset < end {
                f.data[offset..end].copy_from_slice(&bytes[..end - offset]);
            }
            f.durable = f.data.clone();
        }
    }
}

/// An open file of a [`SimFs`].
#[derive(Debug)]
struct SimFile {
    fs: SimFs,
    ino: u64,
    path: PathBuf,
    dir: bool,
    /// errseq cursors, sampled at open.
    seen: Mutex<(u32, u32)>,
}

impl Drop for SimFile {
    fn drop(&mut self) {
        let mut st = self.fs.lock();
        st.open_files = st.open_files.saturating_sub(1);
    }
}

impl SimFile {
    fn check(&self, st: &mut State, op: Op) -> io::Result<()> {
        match st.fault(op, &self.path) {
            Some(f) => Err(io::Error::from_raw_os_error(f.errno)),
            None => Ok(()),
        }
    }

    fn seen(&self) -> MutexGuard<'_, (u32, u32)> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl FsFile for SimFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut st = self.fs.lock();
        st.alive()?;
        self.check(&mut st, Op::Read)?;
        let f = st.file_mut(self.ino)?;
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(f.data.len());
        let n = buf.len().min(f.data.len() - start);
        buf[..n].copy_from_slice(&f.data[start..start + n]);
        Ok(n)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        let mut st = self.fs.lock();
        let crash = st.step("write", &self.path)?;
        let fault = st.fault(Op::Write, &self.path);
        let torn = (crash && st.torn_crash) || fault.as_ref().is_some_and(|f| f.torn);
        let n = if crash || fault.is_some() {
            if torn { buf.len() / 2 } else { 0 }
        } else {
            buf.len()
        };
        let f = st.file_mut(self.ino)?;
        let start = usize::try_from(offset).map_err(|_| io::Error::other("offset"))?;
        if f.data.len() < start + n {
            f.data.resize(start + n, 0);
        }
        f.data[start..start + n].copy_from_slice(&buf[..n]);
        if n > 0 {
            f.dirty = true;
        }
        if crash {
            return Err(crashed());
        }
        if let Some(fault) = fault {
            return Err(io::Error::from_raw_os_error(fault.errno));
        }
        Ok(n)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.sync_all()
    }

    fn sync_all(&self) -> io::Result<()> {
        let mut st = self.fs.lock();
        let crash = st.step(if self.dir { "fsync dir" } else { "fsync" }, &self.path)?;
        if crash {
            return Err(crashed());
        }
        self.check(&mut st, if self.dir { Op::SyncDir } else { Op::SyncFile })?;
        match st.nodes.get_mut(&self.ino) {
            Some(Node::Dir(d)) => {
                d.durable = d.entries.clone();
                Ok(())
            }
            Some(Node::File(f)) => {
                if f.dirty {
                    f.durable = f.data.clone();
                    f.dirty = false;
                }
                if f.wb_err.check_and_advance(&mut self.seen().0) {
                    return Err(errno(rustix::io::Errno::IO));
                }
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn syncfs(&self) -> io::Result<()> {
        let mut st = self.fs.lock();
        let crash = st.step("syncfs", &self.path)?;
        if crash {
            return Err(crashed());
        }
        self.check(&mut st, Op::Syncfs)?;
        st.sync_everything();
        if st.sb_err.check_and_advance(&mut self.seen().1) {
            return Err(errno(rustix::io::Errno::IO));
        }
        Ok(())
    }

    fn size(&self) -> io::Result<u64> {
        let mut st = self.fs.lock();
        st.alive()?;
        Ok(st.file_mut(self.ino)?.data.len() as u64)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut st = self.fs.lock();
        if st.step("truncate", &self.path)? {
            return Err(crashed());
        }
        let f = st.file_mut(self.ino)?;
        f.data.resize(
            usize::try_from(len).map_err(|_| io::Error::other("len"))?,
            0,
        );
        f.dirty = true;
        Ok(())
    }
}

impl FileSystem for SimFs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<FileRef> {
        let mut st = self.lock();
        let creates = matches!(
            mode,
            OpenMode::CreateNew | OpenMode::CreateTruncate | OpenMode::CreateKeep
        );
        if creates {
            if st.step("create", path)? {
                return Err(crashed());
            }
        } else {
            st.alive()?;
        }
        if let Some(f) = st.fault(Op::Open, path) {
            return Err(io::Error::from_raw_os_error(f.errno));
        }
        if st.fd_limit.is_some_and(|limit| st.open_files >= limit) {
            return Err(errno(rustix::io::Errno::MFILE));
        }
        let existing = st.resolve(path);
        let ino = match (mode, existing) {
            (OpenMode::CreateNew, Ok(_)) => return Err(io::ErrorKind::AlreadyExists.into()),
            (OpenMode::Directory, Ok(ino)) => match st.nodes.get(&ino) {
                Some(Node::Dir(_)) => ino,
                _ => return Err(errno(rustix::io::Errno::NOTDIR)),
            },
            (_, Ok(ino)) => {
                let f = st.file_mut(ino)?;
                if mode == OpenMode::CreateTruncate && !f.data.is_empty() {
                    f.data.clear();
                    f.dirty = true;
                }
                ino
            }
            (OpenMode::CreateNew | OpenMode::CreateTruncate | OpenMode::CreateKeep, Err(_)) => {
                let (parent, name) = st.parent(path)?;
                st.add(
                    parent,
                    name,
                    Node::File(FileNode {
                        data: Vec::new(),
                        durable: Vec::new(),
                        dirty: false,
                        wb_err: Errseq::default(),
                    }),
                )?
            }
            (_, Err(e)) => return Err(e),
        };
        let wb = match st.nodes.get(&ino) {
            Some(Node::File(f)) => f.wb_err.sample(),
            _ => 0,
        };
        let sb = st.sb_err.sample();
        st.open_files += 1;
        drop(st);
        Ok(Arc::new(SimFile {
            fs: self.clone(),
            ino,
            path: path.to_owned(),
            dir: mode == OpenMode::Directory,
            seen: Mutex::new((wb, sb)),
        }))
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut st = self.lock();
        st.alive()?;
        let mut ino = ROOT;
        let mut at = PathBuf::from("/");
        for c in path.components() {
            let Component::Normal(name) = c else { continue };
            at.push(name);
            let next = match st.nodes.get(&ino) {
                Some(Node::Dir(d)) => d.entries.get(name).copied(),
                _ => return Err(errno(rustix::io::Errno::NOTDIR)),
            };
            ino = match next {
                Some(ino) => ino,
                None => {
                    if st.step("mkdir", &at)? {
                        return Err(crashed());
                    }
                    st.add(ino, name, Node::Dir(DirNode::default()))?
                }
            };
        }
        Ok(())
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<OsString>> {
        let mut st = self.lock();
        st.alive()?;
        if let Some(f) = st.fault(Op::ReadDir, path) {
            return Err(io::Error::from_raw_os_error(f.errno));
        }
        if st.fd_limit.is_some_and(|limit| st.open_files >= limit) {
            return Err(errno(rustix::io::Errno::MFILE));
        }
        let ino = st.resolve(path)?;
        Ok(st.dir_mut(ino)?.entries.keys().cloned().collect())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut st = self.lock();
        if st.step("remove", path)? {
            return Err(crashed());
        }
        if let Some(f) = st.fault(Op::Remove, path) {
            return Err(io::Error::from_raw_os_error(f.errno));
        }
        let (parent, name) = st.parent(path)?;
        st.dir_mut(parent)?
            .entries
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| io::ErrorKind::NotFound.into())
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut st = self.lock();
        if st.step("remove tree", path)? {
            return Err(crashed());
        }
        if let Some(f) = st.fault(Op::Remove, path) {
            return Err(io::Error::from_raw_os_error(f.errno));
        }
        let (parent, name) = st.parent(path)?;
        st.dir_mut(parent)?
            .entries
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| io::ErrorKind::NotFound.into())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.lock();
        if st.step("rename", to)? {
            return Err(crashed());
        }
        if let Some(f) = st.fault(Op::Rename, to) {
            return Err(io::Error::from_raw_os_error(f.errno));
        }
        let (from_parent, from_name) = st.parent(from)?;
        let (to_parent, to_name) = st.parent(to)?;
        let ino = st
            .dir_mut(from_parent)?
            .entries
            .remove(from_name)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        st.dir_mut(to_parent)?
            .entries
            .insert(to_name.to_owned(), ino);
        Ok(())
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        let st = self.lock();
        st.alive()?;
        match st.resolve(path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn syncfs_reports_errors(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsynced_names_and_bytes_are_lost_synced_ones_stay() {
        let sim = SimFs::new();
        let dir = Path::new("/d");
        sim.mkdir_durable(dir);
        let a = sim.open(&dir.join("a"), OpenMode::CreateNew).expect("a");
        a.write_all_at(b"12345", 0).expect("write");
        a.sync_data().expect("sync");
        let after = sim.power_loss(PowerLoss::DropUnsynced);
        assert!(
            !after.exists(&dir.join("a")).expect("stat"),
            "entry never synced"
        );

        let sim = SimFs::new();
        sim.mkdir_durable(dir);
        let a = sim.open(&dir.join("a"), OpenMode::CreateNew).expect("a");
        a.write_all_at(b"12345", 0).expect("write");
        a.sync_data().expect("sync");
        sim.sync_dir(dir).expect("sync dir");
        a.write_all_at(b"678", 5).expect("write");
        let after = sim.power_loss(PowerLoss::DropUnsynced);
        assert_eq!(after.read(&dir.join("a")).expect("read"), b"12345");
        let zeros = sim.power_loss(PowerLoss::MetadataOnly);
        assert_eq!(zeros.read(&dir.join("a")).expect("read"), b"12345\0\0\0");
        assert!(sim.read(&dir.join("a")).is_err(), "the old one is dead");
    }

    #[test]
    fn writeback_errors_follow_errseq() {
        let sim = SimFs::new();
        let dir = Path::new("/d");
        sim.mkdir_durable(dir);
        let early = sim.open(dir, OpenMode::Directory).expect("dir");
        let a = sim.open(&dir.join("a"), OpenMode::CreateNew).expect("a");
        a.write_all_at(b"x", 0).expect("write");
        sim.writeback_error(&dir.join("a"));
        let unseen = sim.open(dir, OpenMode::Directory).expect("dir");
        assert!(early.syncfs().is_err(), "opened before: told");
        assert!(early.syncfs().is_ok(), "told once");
        let late = sim.open(dir, OpenMode::Directory).expect("dir");
        assert!(
            late.syncfs().is_ok(),
            "opened after the error was seen: not told"
        );
        assert!(
            unseen.syncfs().is_err(),
            "opened after the error but before anyone saw it: told"
        );
        assert!(a.sync_data().is_err(), "the file's own handle is told too");
        assert!(a.sync_data().is_ok());
        let after = sim.power_loss(PowerLoss::DropUnsynced);
        assert!(after.read(&dir.join("a")).expect("read").is_empty());
    }

    #[test]
    fn a_crash_point_kills_every_later_call() {
        let sim = SimFs::new();
        sim.mkdir_durable(Path::new("/d"));
        let start = sim.ops();
        sim.crash_at(start + 1, true);
        let a = sim.open(Path::new("/d/a"), OpenMode::CreateNew).expect("a");
        assert!(a.write_all_at(b"abcd", 0).is_err());
        assert!(sim.crashed());
        assert!(sim.exists(Path::new("/d/a")).is_err());
        let after = sim.power_loss(PowerLoss::ProcessKill);
        assert_eq!(after.read(Path::new("/d/a")).expect("read"), b"ab");
    }
}

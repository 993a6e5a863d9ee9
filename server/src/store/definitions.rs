//! Durable definitions: exchanges, queues and bindings that survive a restart.
//!
//! A snapshot (`definitions.json`, replaced atomically: temp file, fsync, rename) plus a
//! change log (`definitions.log`, one checksummed JSON line per change). Start-up loads
//! the snapshot, replays the log up to its first torn or corrupt line, writes a fresh
//! snapshot and starts an empty log, so the log never grows beyond one run's changes.
//! Appends are written at once and made durable by the next group commit.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use amqp_codec::amq_protocol::types::FieldTable;
use serde::{Deserialize, Serialize};

/// Version of the definitions format; a different one is refused, not misread.
pub const DEFINITIONS_VERSION: u32 = 1;
const SNAPSHOT: &str = "definitions.json";
const LOG: &str = "definitions.log";

/// A durable exchange.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExchangeDef {
    /// Its vhost.
    pub vhost: String,
    /// Its name.
    pub name: String,
    /// Its type name (`direct`, `topic`, …).
    pub kind: String,
    /// Deleted when its last binding goes.
    pub auto_delete: bool,
    /// Not publishable by clients.
    pub internal: bool,
    /// Optional arguments.
    pub arguments: FieldTable,
}

/// A durable queue and the directory of its message log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueDef {
    /// Its vhost.
    pub vhost: String,
    /// Its name.
    pub name: String,
    /// Unique id of this incarnation: the name of its log directory, so a queue
    /// deleted and declared again never reads the old one's messages.
    pub id: String,
    /// Deleted when its last consumer goes.
    pub auto_delete: bool,
    /// Optional arguments.
    pub arguments: FieldTable,
}

/// A binding between durable ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BindingDef {
    /// Its vhost.
    pub vhost: String,
    /// Source exchange.
    pub source: String,
    /// Destination queue, or exchange when `to_exchange`.
    pub destination: String,
    /// The destination is an exchange (`exchange.bind`), not a queue.
    #[serde(default)]
    pub to_exchange: bool,
    /// Binding key.
    pub routing_key: String,
    /// Binding arguments.
    pub arguments: FieldTable,
}

/// Everything durable, as loaded at start-up.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Definitions {
    /// Format version.
    pub version: u32,
    /// Durable exchanges (the predeclared `amq.*` ones are not stored).
    pub exchanges: Vec<ExchangeDef>,
    /// Durable queues.
    pub queues: Vec<QueueDef>,
    /// Bindings of durable queues to durable exchanges.
    pub bindings: Vec<BindingDef>,
}

/// One change to the definitions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Change {
    /// A durable exchange was declared.
    PutExchange(ExchangeDef),
    /// An exchange was deleted (with its bindings).
    DeleteExchange {
        /// Its vhost.
        vhost: String,
        /// Its name.
        name: String,
    },
    /// A durable queue was declared.
    PutQueue(QueueDef),
    /// A queue was deleted (with its bindings).
    DeleteQueue {
        /// Its vhost.
        vhost: String,
        /// Its name.
        name: String,
    },
    /// A binding was added.
    Bind(BindingDef),
    /// A binding was removed.
    Unbind(BindingDef),
}

/// Errors of the definitions store.
#[derive(Debug, thiserror::Error)]
pub enum DefinitionsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: io::Error,
    },
    /// The snapshot is not ours or from another version.
    #[error("{path} is not a Warren definitions file of version {DEFINITIONS_VERSION}: {detail}")]
    Incompatible {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> DefinitionsError + '_ {
    move |source| DefinitionsError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The open definitions store of a data directory.
#[derive(Debug)]
pub struct DefinitionStore {
    log_path: PathBuf,
    log: File,
}

impl Definitions {
    fn apply(&mut self, change: Change) {
        match change {
            Change::PutExchange(def) => {
                self.exchanges
                    .retain(|e| !(e.vhost == def.vhost && e.name == def.name));
                self.exchanges.push(def);
            }
            Change::DeleteExchange { vhost, name } => {
                self.exchanges
                    .retain(|e| !(e.vhost == vhost && e.name == name));
                self.bindings.retain(|b| {
                    !(b.vhost == vhost
                        && (b.source == name || (b.to_exchange && b.destination == name)))
                });
            }
            Change::PutQueue(def) => {
                self.queues
                    .retain(|q| !(q.vhost == def.vhost && q.name == def.name));
                self.queues.push(def);
            }
            Change::DeleteQueue { vhost, name } => {
                self.queues
                    .retain(|q| !(q.vhost == vhost && q.name == name));
                self.bindings
                    .retain(|b| !(b.vhost == vhost && !b.to_exchange && b.destination == name));
            }
            Change::Bind(def) => {
                if !self.bindings.contains(&def) {
                    self.bindings.push(def);
                }
            }
            Change::Unbind(def) => self.bindings.retain(|b| *b != def),
        }
    }
}

/// Writes `bytes` to `path` atomically: a temp file, fsync, rename, fsync of the dir.
fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn encode_line(change: &Change) -> Vec<u8> {
    let json = serde_json::to_vec(change).unwrap_or_default();
    let mut line = format!("{:08x} ", crc32fast::hash(&json)).into_bytes();
    line.extend_from_slice(&json);
    line.push(b'\n');
    line
}

fn decode_line(line: &str) -> Option<Change> {
    let (crc, json) = line.split_once(' ')?;
    let crc = u32::from_str_radix(crc, 16).ok()?;
    (crc32fast::hash(json.as_bytes()) == crc)
        .then(|| serde_json::from_str(json).ok())
        .flatten()
}

impl DefinitionStore {
    /// Loads the definitions in `dir` (empty if there are none yet), compacts them into
    /// a fresh snapshot and opens an empty change log. Returns the store, the
    /// definitions, and how many log lines were cut off as torn or corrupt.
    ///
    /// # Errors
    /// I/O failures, or a snapshot from another program or version.
    pub fn open(dir: &Path) -> Result<(Self, Definitions, usize), DefinitionsError> {
        fs::create_dir_all(dir).map_err(io_at(dir))?;
        let snapshot_path = dir.join(SNAPSHOT);
        let log_path = dir.join(LOG);
        let mut defs = match fs::read(&snapshot_path) {
            Ok(bytes) => {
                let defs: Definitions =
                    serde_json::from_slice(&bytes).map_err(|e| DefinitionsError::Incompatible {
                        path: snapshot_path.clone(),
                        detail: e.to_string(),
                    })?;
                if defs.version != DEFINITIONS_VERSION {
                    return Err(DefinitionsError::Incompatible {
                        path: snapshot_path,
                        detail: format!("found version {}", defs.version),
                    });
                }
                defs
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Definitions {
                version: DEFINITIONS_VERSION,
                ..Definitions::default()
            },
            Err(e) => return Err(io_at(&snapshot_path)(e)),
        };
        let mut cut = 0;
        match File::open(&log_path) {
            Ok(file) => {
                let mut lines = BufReader::new(file).lines();
                for line in lines.by_ref() {
                    match line.ok().as_deref().and_then(decode_line) {
                        Some(change) => defs.apply(change),
                        None => {
                            cut = 1;
                            break;
                        }
                    }
                }
                cut += lines.count();
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_at(&log_path)(e)),
        }
        let json = serde_json::to_vec_pretty(&defs).unwrap_or_default();
        write_atomically(&snapshot_path, &json).map_err(io_at(&snapshot_path))?;
        let log = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&log_path)
            .map_err(io_at(&log_path))?;
        log.sync_all().map_err(io_at(&log_path))?;
        Ok((Self { log_path, log }, defs, cut))
    }

    /// Appends a change (written now, durable at the next [`DefinitionStore::sync`]).
    ///
    /// # Errors
    /// I/O failures.
    pub fn record(&mut self, change: &Change) -> Result<(), DefinitionsError> {
        self.log
            .write_all(&encode_line(change))
            .map_err(io_at(&self.log_path))
    }

    /// Makes every recorded change durable.
    ///
    /// # Errors
    /// I/O failures.
    pub fn sync(&mut self) -> Result<(), DefinitionsError> {
        self.log.sync_data().map_err(io_at(&self.log_path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "warren-defs-{name}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn queue(name: &str) -> QueueDef {
        QueueDef {
            vhost: "/".into(),
            name: name.into(),
            id: format!("{name}-1"),
            auto_delete: false,
            arguments: FieldTable::default(),
        }
    }

    #[test]
    fn changes_survive_reopen_and_compaction() {
        let dir = temp_dir("reopen");
        let (mut store, defs, _) = DefinitionStore::open(&dir).expect("open");
        assert!(defs.queues.is_empty());
        store.record(&Change::PutQueue(queue("a"))).expect("record");
        store.record(&Change::PutQueue(queue("b"))).expect("record");
        let binding = BindingDef {
            vhost: "/".into(),
            source: "amq.direct".into(),
            destination: "a".into(),
            to_exchange: false,
            routing_key: "k".into(),
            arguments: FieldTable::default(),
        };
        store
            .record(&Change::Bind(binding.clone()))
            .expect("record");
        store
            .record(&Change::DeleteQueue {
                vhost: "/".into(),
                name: "b".into(),
            })
            .expect("record");
        store.sync().expect("sync");
        drop(store);
        let (_, defs, cut) = DefinitionStore::open(&dir).expect("reopen");
        assert_eq!(cut, 0);
        assert_eq!(defs.queues, vec![queue("a")]);
        assert_eq!(defs.bindings, vec![binding]);
        let (_, again, _) = DefinitionStore::open(&dir).expect("compacted");
        assert_eq!(again, defs);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_torn_log_tail_is_cut_off() {
        let dir = temp_dir("torn");
        let (mut store, _, _) = DefinitionStore::open(&dir).expect("open");
        store.record(&Change::PutQueue(queue("a"))).expect("record");
        store.record(&Change::PutQueue(queue("b"))).expect("record");
        drop(store);
        let log = dir.join(LOG);
        let bytes = fs::read(&log).expect("log");
        fs::write(&log, &bytes[..bytes.len() - 10]).expect("truncate");
        let (_, defs, cut) = DefinitionStore::open(&dir).expect("reopen");
        assert_eq!(cut, 1);
        assert_eq!(defs.queues, vec![queue("a")]);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_foreign_snapshot_is_refused() {
        let dir = temp_dir("foreign");
        fs::create_dir_all(&dir).expect("dir");
        fs::write(dir.join(SNAPSHOT), b"{\"hello\": 1}").expect("write");
        assert!(matches!(
            DefinitionStore::open(&dir),
            Err(DefinitionsError::Incompatible { .. })
        ));
        let _ = fs::remove_dir_all(&dir);
    }
}

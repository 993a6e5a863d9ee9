//! Durable definitions: virtual hosts, users and their permissions, exchanges, queues and
//! bindings that survive a restart.
//!
//! A snapshot (`definitions.json`, replaced atomically: temp file, fsync, rename, fsync of
//! the directory) plus a change log (`definitions.log`, one checksummed JSON line per
//! change). Start-up loads the snapshot, replays the log, writes a fresh snapshot and
//! starts an empty log, so the log never grows beyond one run's changes. Appends are
//! written at once and made durable by the next group commit.
//!
//! Field tables (arguments) are written in [`field_json`](super::field_json)'s lossless
//! form, so every value a client can send reads back bit for bit (NaN included).
//!
//! Recovery policy for the log: bad lines at its end with no valid line after them are a
//! torn tail (a crash mid-write) and are cut off, as the caller is told. A bad line
//! *followed by* a valid one is not a torn write: start-up stops with
//! [`DefinitionsError::Corrupt`], naming the file and the line, rather than drop that
//! definition and every later one (and let the queue logs they name be taken for
//! orphans). A failed write is never left between two valid lines: the next write goes
//! to the same offset. A failed sync makes the next sync rewrite everything from memory
//! (snapshot and a fresh log), because the kernel may have dropped the log's pages.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};

use amqp_codec::amq_protocol::types::FieldTable;
use serde::{Deserialize, Serialize};

use super::field_json;
use super::fs::{FileRef, FsRef, OpenMode, RealFs};

/// Version of the definitions format written; other versions are refused, not misread.
/// Version 1 (field tables in `amq-protocol`'s serde form, which loses NaN) is still
/// read.
pub const DEFINITIONS_VERSION: u32 = 2;
/// Oldest version this build reads.
const OLDEST_READABLE_VERSION: u32 = 1;
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
    #[serde(with = "field_json")]
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
    #[serde(with = "field_json")]
    pub arguments: FieldTable,
    /// Its partition count, for a partitioned queue: the effective one at creation
    /// (`x-partitions`, else its policy's then), so that a restart gives it back the
    /// partitions its logs were written for even if the policy has changed or gone.
    /// Absent from plain queues' definitions and from those written before partitions
    /// existed, which therefore still load, and load as plain queues.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<u16>,
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
    #[serde(with = "field_json")]
    pub arguments: FieldTable,
}

/// A virtual host, with the fields RabbitMQ's definitions give one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VhostDef {
    /// Its name.
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Free labels.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Its limits (`max-connections`, `max-queues`); a negative value is no limit.
    #[serde(default)]
    pub limits: BTreeMap<String, i64>,
}

/// A user, as RabbitMQ's definitions hold one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserDef {
    /// Its name.
    pub name: String,
    /// Salt and hash in base64 (see `access::password`); empty: no password login.
    pub password_hash: String,
    /// The algorithm of `password_hash` (`rabbit_password_hashing_sha256` …).
    pub hashing_algorithm: String,
    /// Its tags (`administrator`, `monitoring`, `impersonator` …).
    #[serde(default)]
    pub tags: Vec<String>,
    /// Its limits (`max-connections`, `max-channels`); a negative value is no limit.
    #[serde(default)]
    pub limits: BTreeMap<String, i64>,
}

/// A user's permissions in a virtual host: three regular expressions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PermissionDef {
    /// The user.
    pub user: String,
    /// The virtual host.
    pub vhost: String,
    /// Over the names it may declare and delete.
    pub configure: String,
    /// Over the names it may publish to and bind to.
    pub write: String,
    /// Over the names it may consume from and bind from.
    pub read: String,
}

/// A global runtime parameter (`rabbitmqctl set_global_parameter`): a name and any JSON
/// value, kept for the tools that set and read them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GlobalParameterDef {
    /// Its name.
    pub name: String,
    /// Its value.
    pub value: serde_json::Value,
}

/// A user's topic permissions on one exchange of a virtual host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicPermissionDef {
    /// The user.
    pub user: String,
    /// The virtual host.
    pub vhost: String,
    /// The (topic) exchange.
    pub exchange: String,
    /// Over routing keys published with.
    pub write: String,
    /// Over binding keys.
    pub read: String,
}

/// A policy set at run time (`set_policy`, an import), as given: validated when it was
/// set, and again when loaded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyDef {
    /// The vhost whose queues and exchanges it covers.
    pub vhost: String,
    /// Its name, unique within the vhost.
    pub name: String,
    /// The regular expression over names.
    pub pattern: String,
    /// `all`, `queues`, `exchanges`, `classic_queues`, `quorum_queues` or `streams`.
    pub apply_to: String,
    /// Of the policies that match, the highest priority applies.
    pub priority: i64,
    /// What it sets, as the JSON object it was given in.
    pub definition: serde_json::Value,
}

/// Everything durable, as loaded at start-up.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Definitions {
    /// Format version.
    pub version: u32,
    /// The broker has started once and made (or was given) its users and vhosts: the
    /// default user and vhost are never made again, even if all are deleted.
    #[serde(default)]
    pub initialized: bool,
    /// Virtual hosts. None in definitions written before virtual hosts could be made,
    /// which therefore start as a first start does (the default vhost and user).
    #[serde(default)]
    pub vhosts: Vec<VhostDef>,
    /// Users.
    #[serde(default)]
    pub users: Vec<UserDef>,
    /// Permissions per user and vhost.
    #[serde(default)]
    pub permissions: Vec<PermissionDef>,
    /// Topic permissions per user, vhost and exchange.
    #[serde(default)]
    pub topic_permissions: Vec<TopicPermissionDef>,
    /// Policies set at run time (those of the `--policies` file are not stored).
    #[serde(default)]
    pub policies: Vec<PolicyDef>,
    /// Operator policies.
    #[serde(default)]
    pub operator_policies: Vec<PolicyDef>,
    /// Global runtime parameters.
    #[serde(default)]
    pub global_parameters: Vec<GlobalParameterDef>,
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
    /// The first start made (or was given) its users and vhosts.
    Initialized,
    /// A virtual host was created or changed.
    PutVhost(VhostDef),
    /// A virtual host was deleted, with everything in it and every permission in it.
    DeleteVhost {
        /// Its name.
        name: String,
    },
    /// A user was created or changed.
    PutUser(UserDef),
    /// A user was deleted, with its permissions.
    DeleteUser {
        /// Its name.
        name: String,
    },
    /// A user's permissions in a vhost were set.
    SetPermissions(PermissionDef),
    /// A user's permissions in a vhost were cleared.
    ClearPermissions {
        /// The user.
        user: String,
        /// The vhost.
        vhost: String,
    },
    /// A user's topic permissions on an exchange were set.
    SetTopicPermissions(TopicPermissionDef),
    /// A user's topic permissions in a vhost were cleared: on one exchange, or all.
    ClearTopicPermissions {
        /// The user.
        user: String,
        /// The vhost.
        vhost: String,
        /// The exchange; all of them when absent.
        exchange: Option<String>,
    },
    /// A policy was set (or replaced).
    SetPolicy(PolicyDef),
    /// A policy was cleared.
    ClearPolicy {
        /// Its vhost.
        vhost: String,
        /// Its name.
        name: String,
    },
    /// An operator policy was set (or replaced).
    SetOperatorPolicy(PolicyDef),
    /// An operator policy was cleared.
    ClearOperatorPolicy {
        /// Its vhost.
        vhost: String,
        /// Its name.
        name: String,
    },
    /// A global parameter was set (or replaced).
    SetGlobalParameter(GlobalParameterDef),
    /// A global parameter was cleared.
    ClearGlobalParameter {
        /// Its name.
        name: String,
    },
}

/// Applies a change to the virtual hosts, users, permissions and policies (the few
/// definitions kept without an index); false if `change` is not one of those.
fn apply_access(defs: &mut Definitions, change: &Change) -> bool {
    match change {
        Change::Initialized => defs.initialized = true,
        Change::PutVhost(def) => {
            defs.vhosts.retain(|v| v.name != def.name);
            defs.vhosts.push(def.clone());
        }
        Change::DeleteVhost { name } => {
            defs.vhosts.retain(|v| v.name != *name);
            defs.permissions.retain(|p| p.vhost != *name);
            defs.topic_permissions.retain(|p| p.vhost != *name);
            defs.policies.retain(|p| p.vhost != *name);
            defs.operator_policies.retain(|p| p.vhost != *name);
        }
        Change::PutUser(def) => {
            defs.users.retain(|u| u.name != def.name);
            defs.users.push(def.clone());
        }
        Change::DeleteUser { name } => {
            defs.users.retain(|u| u.name != *name);
            defs.permissions.retain(|p| p.user != *name);
            defs.topic_permissions.retain(|p| p.user != *name);
        }
        Change::SetPermissions(def) => {
            defs.permissions
                .retain(|p| !(p.user == def.user && p.vhost == def.vhost));
            defs.permissions.push(def.clone());
        }
        Change::ClearPermissions { user, vhost } => {
            defs.permissions
                .retain(|p| !(p.user == *user && p.vhost == *vhost));
        }
        Change::SetTopicPermissions(def) => {
            defs.topic_permissions.retain(|p| {
                !(p.user == def.user && p.vhost == def.vhost && p.exchange == def.exchange)
            });
            defs.topic_permissions.push(def.clone());
        }
        Change::ClearTopicPermissions {
            user,
            vhost,
            exchange,
        } => {
            defs.topic_permissions.retain(|p| {
                !(p.user == *user
                    && p.vhost == *vhost
                    && exchange.as_ref().is_none_or(|e| *e == p.exchange))
            });
        }
        Change::SetPolicy(def) => {
            defs.policies
                .retain(|p| !(p.vhost == def.vhost && p.name == def.name));
            defs.policies.push(def.clone());
        }
        Change::ClearPolicy { vhost, name } => {
            defs.policies
                .retain(|p| !(p.vhost == *vhost && p.name == *name));
        }
        Change::SetOperatorPolicy(def) => {
            defs.operator_policies
                .retain(|p| !(p.vhost == def.vhost && p.name == def.name));
            defs.operator_policies.push(def.clone());
        }
        Change::ClearOperatorPolicy { vhost, name } => {
            defs.operator_policies
                .retain(|p| !(p.vhost == *vhost && p.name == *name));
        }
        Change::SetGlobalParameter(def) => {
            defs.global_parameters.retain(|p| p.name != def.name);
            defs.global_parameters.push(def.clone());
        }
        Change::ClearGlobalParameter { name } => {
            defs.global_parameters.retain(|p| p.name != *name);
        }
        _ => return false,
    }
    true
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
    /// A line of the change log is unreadable and valid lines follow it: not a torn
    /// write but damage. Start-up stops rather than lose that change and later ones.
    #[error(
        "{path} line {line}: unreadable definitions change ({detail}) followed by {later} valid \
         ones; refusing to start rather than lose them. Restore the line from a backup, or \
         remove it if the change it held may be lost"
    )]
    Corrupt {
        /// The change log.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        detail: String,
        /// How many valid lines follow.
        later: usize,
    },
    /// An earlier write or sync failed and rewriting the definitions from memory failed
    /// too.
    #[error("definitions store failed earlier and cannot recover: {0}")]
    Broken(String),
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
    fs: FsRef,
    dir: PathBuf,
    log_path: PathBuf,
    log: FileRef,
    /// Length of the valid part of the log: the next line is written here.
    len: u64,
    /// Written since the last sync.
    dirty: bool,
    /// The definitions as recorded so far (what a rewrite writes).
    current: Definitions,
    /// Where each definition sits in `current`.
    index: Index,
    /// A write or sync failed: the next sync rewrites snapshot and log from `current`.
    broken: Option<String>,
}

/// Where each queue and exchange sits in a [`Definitions`] (by vhost and name), and how
/// many bindings share each key (all but the arguments), so that applying a change does
/// not scan every definition: declaring 100,000 queues one by one was quadratic.
#[derive(Debug, Default)]
struct Index {
    exchanges: HashMap<(String, String), usize>,
    queues: HashMap<(String, String), usize>,
    bindings: HashMap<BindingKey, usize>,
}

/// A binding's vhost, source, destination, whether that is an exchange, routing key.
type BindingKey = (String, String, String, bool, String);

fn binding_key(b: &BindingDef) -> BindingKey {
    (
        b.vhost.clone(),
        b.source.clone(),
        b.destination.clone(),
        b.to_exchange,
        b.routing_key.clone(),
    )
}

impl Index {
    /// The index of `defs`.
    fn of(defs: &Definitions) -> Self {
        let mut index = Self::default();
        for (i, e) in defs.exchanges.iter().enumerate() {
            index.exchanges.insert((e.vhost.clone(), e.name.clone()), i);
        }
        for (i, q) in defs.queues.iter().enumerate() {
            index.queues.insert((q.vhost.clone(), q.name.clone()), i);
        }
        for b in &defs.bindings {
            *index.bindings.entry(binding_key(b)).or_default() += 1;
        }
        index
    }

    /// Applies `change` to `defs`, which this indexes. A definition put again keeps its
    /// place; a deleted one's place goes to the last one.
    fn apply(&mut self, defs: &mut Definitions, change: Change) {
        if apply_access(defs, &change) {
            if let Change::DeleteVhost { name } = change {
                self.delete_vhost_contents(defs, &name);
            }
            return;
        }
        match change {
            Change::PutExchange(def) => {
                put(&mut self.exchanges, &mut defs.exchanges, def, |e| {
                    (e.vhost.clone(), e.name.clone())
                });
            }
            Change::DeleteExchange { vhost, name } => {
                remove(
                    &mut self.exchanges,
                    &mut defs.exchanges,
                    (vhost.clone(), name.clone()),
                    |e| (e.vhost.clone(), e.name.clone()),
                );
                self.unbind_where(defs, |b| {
                    b.vhost == vhost
                        && (b.source == name || (b.to_exchange && b.destination == name))
                });
            }
            Change::PutQueue(def) => {
                let replaced = self
                    .queues
                    .get(&(def.vhost.clone(), def.name.clone()))
                    .is_some_and(|&at| defs.queues[at].id != def.id);
                if replaced {
                    // Another incarnation of the name (its deletion was not stored): its
                    // bindings are not this queue's.
                    self.unbind_where(defs, |b| {
                        b.vhost == def.vhost && !b.to_exchange && b.destination == def.name
                    });
                }
                put(&mut self.queues, &mut defs.queues, def, |q| {
                    (q.vhost.clone(), q.name.clone())
                });
            }
            Change::DeleteQueue { vhost, name } => {
                remove(
                    &mut self.queues,
                    &mut defs.queues,
                    (vhost.clone(), name.clone()),
                    |q| (q.vhost.clone(), q.name.clone()),
                );
                self.unbind_where(defs, |b| {
                    b.vhost == vhost && !b.to_exchange && b.destination == name
                });
            }
            Change::Bind(def) => {
                let key = binding_key(&def);
                let same_key = self.bindings.get(&key).copied().unwrap_or(0);
                // Only bindings with the same key can be equal: scanned only if any is.
                if same_key == 0 || !defs.bindings.contains(&def) {
                    self.bindings.insert(key, same_key + 1);
                    defs.bindings.push(def);
                }
            }
            Change::Unbind(def) => {
                if self.bindings.contains_key(&binding_key(&def)) {
                    self.unbind_where(defs, |b| *b == def);
                }
            }
            // Applied above.
            Change::Initialized
            | Change::PutVhost(_)
            | Change::DeleteVhost { .. }
            | Change::PutUser(_)
            | Change::DeleteUser { .. }
            | Change::SetPermissions(_)
            | Change::ClearPermissions { .. }
            | Change::SetTopicPermissions(_)
            | Change::ClearTopicPermissions { .. }
            | Change::SetPolicy(_)
            | Change::ClearPolicy { .. }
            | Change::SetOperatorPolicy(_)
            | Change::ClearOperatorPolicy { .. }
            | Change::SetGlobalParameter(_)
            | Change::ClearGlobalParameter { .. } => {}
        }
    }

    /// Removes every exchange, queue and binding of a deleted vhost.
    fn delete_vhost_contents(&mut self, defs: &mut Definitions, vhost: &str) {
        let exchanges: Vec<String> = defs
            .exchanges
            .iter()
            .filter(|e| e.vhost == vhost)
            .map(|e| e.name.clone())
            .collect();
        for name in exchanges {
            remove(
                &mut self.exchanges,
                &mut defs.exchanges,
                (vhost.to_owned(), name),
                |e| (e.vhost.clone(), e.name.clone()),
            );
        }
        let queues: Vec<String> = defs
            .queues
            .iter()
            .filter(|q| q.vhost == vhost)
            .map(|q| q.name.clone())
            .collect();
        for name in queues {
            remove(
                &mut self.queues,
                &mut defs.queues,
                (vhost.to_owned(), name),
                |q| (q.vhost.clone(), q.name.clone()),
            );
        }
        self.unbind_where(defs, |b| b.vhost == vhost);
    }

    /// Removes the bindings that `gone` picks, keeping the counts.
    fn unbind_where(&mut self, defs: &mut Definitions, gone: impl Fn(&BindingDef) -> bool) {
        if defs.bindings.is_empty() {
            return;
        }
        let counts = &mut self.bindings;
        defs.bindings.retain(|b| {
            if !gone(b) {
                return true;
            }
            let key = binding_key(b);
            if let Some(n) = counts.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(&key);
                }
            }
            false
        });
    }
}

/// Puts `def` in `all` (replacing the one with its key, in place), keeping `index`.
fn put<T>(
    index: &mut HashMap<(String, String), usize>,
    all: &mut Vec<T>,
    def: T,
    key: impl Fn(&T) -> (String, String),
) {
    match index.get(&key(&def)) {
        Some(&i) if i < all.len() => all[i] = def,
        _ => {
            index.insert(key(&def), all.len());
            all.push(def);
        }
    }
}

/// Removes the definition with key `k` from `all`, keeping `index`.
fn remove<T>(
    index: &mut HashMap<(String, String), usize>,
    all: &mut Vec<T>,
    k: (String, String),
    key: impl Fn(&T) -> (String, String),
) {
    let Some(i) = index.remove(&k) else {
        return;
    };
    if i >= all.len() {
        return;
    }
    all.swap_remove(i);
    if let Some(moved) = all.get(i) {
        index.insert(key(moved), i);
    }
}

/// Writes `bytes` to `path` atomically: a temp file, fsync, rename (the directory is
/// synced by the caller).
fn write_atomically(fs: &FsRef, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let file = fs.open(&tmp, OpenMode::CreateTruncate)?;
    file.write_all_at(bytes, 0)?;
    file.sync_all()?;
    drop(file);
    fs.rename(&tmp, path)
}

fn encode_line(change: &Change) -> Result<Vec<u8>, DefinitionsError> {
    let json = serde_json::to_vec(change).map_err(|e| DefinitionsError::Io {
        path: PathBuf::from(LOG),
        source: io::Error::new(io::ErrorKind::InvalidInput, e),
    })?;
    let mut line = format!("{:08x} ", crc32fast::hash(&json)).into_bytes();
    line.extend_from_slice(&json);
    line.push(b'\n');
    Ok(line)
}

fn decode_line(line: &[u8]) -> Result<Change, String> {
    let text = std::str::from_utf8(line).map_err(|_| "not UTF-8".to_owned())?;
    let (crc, json) = text
        .split_once(' ')
        .ok_or_else(|| "no checksum".to_owned())?;
    let crc = u32::from_str_radix(crc, 16).map_err(|_| "no checksum".to_owned())?;
    if crc32fast::hash(json.as_bytes()) != crc {
        return Err("checksum mismatch".to_owned());
    }
    crate::own_json::read(json.as_bytes()).map_err(|e| format!("unreadable change: {e}"))
}

/// Replays the change log `bytes` onto `defs`. Returns how many lines were cut off as a
/// torn tail.
fn replay(path: &Path, bytes: &[u8], defs: &mut Definitions) -> Result<usize, DefinitionsError> {
    let mut index = Index::of(defs);
    let mut lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    let decoded: Vec<Result<Change, String>> = lines.iter().map(|l| decode_line(l)).collect();
    let Some(first_bad) = decoded.iter().position(Result::is_err) else {
        decoded
            .into_iter()
            .flatten()
            .for_each(|c| index.apply(defs, c));
        return Ok(0);
    };
    let later = decoded[first_bad..].iter().filter(|d| d.is_ok()).count();
    if later > 0 {
        let detail = decoded[first_bad]
            .as_ref()
            .err()
            .cloned()
            .unwrap_or_default();
        return Err(DefinitionsError::Corrupt {
            path: path.to_owned(),
            line: first_bad + 1,
            detail,
            later,
        });
    }
    let cut = decoded.len() - first_bad;
    decoded
        .into_iter()
        .take(first_bad)
        .flatten()
        .for_each(|c| index.apply(defs, c));
    Ok(cut)
}

impl DefinitionStore {
    /// Loads the definitions in `dir` (empty if there are none yet), compacts them into
    /// a fresh snapshot and opens an empty change log. Returns the store, the
    /// definitions, and how many log lines were cut off as a torn tail.
    ///
    /// # Errors
    /// I/O failures, a snapshot from another program or version, or a damaged change
    /// log ([`DefinitionsError::Corrupt`]).
    pub fn open(dir: &Path) -> Result<(Self, Definitions, usize), DefinitionsError> {
        Self::open_in(RealFs::shared(), dir)
    }

    /// As [`open`](Self::open), on the file system `fs`.
    ///
    /// # Errors
    /// As [`open`](Self::open).
    pub fn open_in(fs: FsRef, dir: &Path) -> Result<(Self, Definitions, usize), DefinitionsError> {
        fs.create_dir_all(dir).map_err(io_at(dir))?;
        let snapshot_path = dir.join(SNAPSHOT);
        let log_path = dir.join(LOG);
        let mut defs = match fs.read(&snapshot_path) {
            Ok(bytes) => {
                let defs: Definitions =
                    crate::own_json::read(&bytes).map_err(|e| DefinitionsError::Incompatible {
                        path: snapshot_path.clone(),
                        detail: e.to_string(),
                    })?;
                if !(OLDEST_READABLE_VERSION..=DEFINITIONS_VERSION).contains(&defs.version) {
                    return Err(DefinitionsError::Incompatible {
                        path: snapshot_path,
                        detail: format!("found version {}", defs.version),
                    });
                }
                defs
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Definitions::default(),
            Err(e) => return Err(io_at(&snapshot_path)(e)),
        };
        defs.version = DEFINITIONS_VERSION;
        let cut = match fs.read(&log_path) {
            Ok(bytes) => replay(&log_path, &bytes, &mut defs)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io_at(&log_path)(e)),
        };
        let (log, len) = Self::rewrite(&fs, dir, &defs)?;
        Ok((
            Self {
                fs,
                dir: dir.to_owned(),
                log_path,
                log,
                len,
                dirty: false,
                index: Index::of(&defs),
                current: defs.clone(),
                broken: None,
            },
            defs,
            cut,
        ))
    }

    /// Writes `defs` as the snapshot, starts an empty log and syncs the directory. The
    /// snapshot's rename is made durable before the log is emptied: otherwise a power
    /// loss between the two could leave the old snapshot beside the emptied log, and
    /// every change since the old snapshot would be lost.
    fn rewrite(
        fs: &FsRef,
        dir: &Path,
        defs: &Definitions,
    ) -> Result<(FileRef, u64), DefinitionsError> {
        let snapshot_path = dir.join(SNAPSHOT);
        let log_path = dir.join(LOG);
        let json = serde_json::to_vec_pretty(defs).map_err(|e| DefinitionsError::Io {
            path: snapshot_path.clone(),
            source: io::Error::new(io::ErrorKind::InvalidInput, e),
        })?;
        write_atomically(fs, &snapshot_path, &json).map_err(io_at(&snapshot_path))?;
        fs.sync_dir(dir).map_err(io_at(dir))?;
        let log = fs
            .open(&log_path, OpenMode::CreateTruncate)
            .map_err(io_at(&log_path))?;
        log.sync_all().map_err(io_at(&log_path))?;
        fs.sync_dir(dir).map_err(io_at(dir))?;
        Ok((log, 0))
    }

    /// The definitions as recorded so far (durable or not).
    pub fn current(&self) -> &Definitions {
        &self.current
    }

    /// Appends a change (written now, durable at the next [`DefinitionStore::sync`]).
    /// On failure the change is not recorded: nothing of it will be read back.
    ///
    /// # Errors
    /// I/O failures.
    pub fn record(&mut self, change: &Change) -> Result<(), DefinitionsError> {
        if let Some(why) = self.broken.clone() {
            // A failed write or sync left the log in doubt: replace it first.
            if self.sync().is_err() {
                return Err(DefinitionsError::Broken(why));
            }
        }
        let line = encode_line(change)?;
        if let Err(e) = self.log.write_all_at(&line, self.len) {
            // A prefix may have reached the file: cut it, or have the next sync rewrite
            // the log without it, so that a refused change never comes back.
            if self.log.set_len(self.len).is_err() {
                self.broken = Some(e.to_string());
            }
            return Err(io_at(&self.log_path)(e));
        }
        self.len += line.len() as u64;
        self.dirty = true;
        self.index.apply(&mut self.current, change.clone());
        Ok(())
    }

    /// Makes every recorded change durable. After a failed write or sync it rewrites the
    /// snapshot and starts a fresh log from memory instead.
    ///
    /// # Errors
    /// I/O failures.
    pub fn sync(&mut self) -> Result<(), DefinitionsError> {
        if let Some(why) = self.broken.clone() {
            tracing::warn!(error = %why, "rewriting the definitions after a failed write or sync");
            let (log, len) = Self::rewrite(&self.fs, &self.dir, &self.current)?;
            self.log = log;
            self.len = len;
            self.dirty = false;
            self.broken = None;
            return Ok(());
        }
        if !self.dirty {
            return Ok(());
        }
        match self.log.sync_data() {
            Ok(()) => {
                self.dirty = false;
                Ok(())
            }
            Err(e) => {
                self.broken = Some(e.to_string());
                Err(io_at(&self.log_path)(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

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
            partitions: None,
        }
    }

    /// A queue's arguments as deep as the AMQP codec lets a client send them read back
    /// from the log and from the compacted snapshot alike.
    #[test]
    fn the_deepest_arguments_a_client_can_send_survive_reopen_and_compaction() {
        use amqp_codec::amq_protocol::types::AMQPValue;
        let dir = temp_dir("deep-arguments");
        let mut table = FieldTable::default();
        table.insert("leaf".into(), AMQPValue::Boolean(true));
        for _ in 0..amqp_codec::table::MAX_DEPTH {
            let mut outer = FieldTable::default();
            outer.insert("in".into(), AMQPValue::FieldTable(table));
            table = outer;
        }
        let deep = QueueDef {
            arguments: table,
            ..queue("deep")
        };
        let (mut store, _, _) = DefinitionStore::open(&dir).expect("open");
        store
            .record(&Change::PutQueue(deep.clone()))
            .expect("record");
        store.sync().expect("sync");
        drop(store);
        let (_, defs, cut) = DefinitionStore::open(&dir).expect("reopen from the log");
        assert_eq!((cut, defs.queues.clone()), (0, vec![deep.clone()]));
        let (_, again, _) = DefinitionStore::open(&dir).expect("reopen from the snapshot");
        assert_eq!(again.queues, vec![deep]);
        let _ = fs::remove_dir_all(&dir);
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
    fn policies_operator_policies_and_global_parameters_survive_reopen() {
        let dir = temp_dir("policies");
        let (mut store, _, _) = DefinitionStore::open(&dir).expect("open");
        let policy = |vhost: &str, name: &str, ttl: u64| PolicyDef {
            vhost: vhost.into(),
            name: name.into(),
            pattern: "^a".into(),
            apply_to: "queues".into(),
            priority: 1,
            definition: serde_json::json!({ "message-ttl": ttl }),
        };
        for change in [
            Change::SetPolicy(policy("/", "p", 1)),
            Change::SetPolicy(policy("/", "p", 2)),
            Change::SetPolicy(policy("/", "q", 3)),
            Change::SetPolicy(policy("v", "p", 4)),
            Change::ClearPolicy {
                vhost: "/".into(),
                name: "q".into(),
            },
            // An operator policy may have a policy's name: the two are kept apart.
            Change::SetOperatorPolicy(policy("/", "p", 5)),
            Change::SetOperatorPolicy(policy("/", "cap", 6)),
            Change::SetOperatorPolicy(policy("/", "gone", 7)),
            Change::SetOperatorPolicy(policy("v", "cap", 8)),
            Change::ClearOperatorPolicy {
                vhost: "/".into(),
                name: "gone".into(),
            },
            Change::DeleteVhost { name: "v".into() },
            Change::SetGlobalParameter(GlobalParameterDef {
                name: "g".into(),
                value: serde_json::json!({ "any": ["json", 1] }),
            }),
            Change::SetGlobalParameter(GlobalParameterDef {
                name: "gone".into(),
                value: serde_json::Value::Null,
            }),
            Change::ClearGlobalParameter {
                name: "gone".into(),
            },
        ] {
            store.record(&change).expect("record");
        }
        store.sync().expect("sync");
        drop(store);
        let (_, defs, _) = DefinitionStore::open(&dir).expect("reopen");
        assert_eq!(defs.policies, vec![policy("/", "p", 2)]);
        assert_eq!(
            defs.operator_policies,
            vec![policy("/", "p", 5), policy("/", "cap", 6)]
        );
        assert_eq!(
            defs.global_parameters,
            vec![GlobalParameterDef {
                name: "g".into(),
                value: serde_json::json!({ "any": ["json", 1] }),
            }]
        );
        let (_, again, _) = DefinitionStore::open(&dir).expect("compacted");
        assert_eq!(again.policies, defs.policies);
        assert_eq!(again.operator_policies, defs.operator_policies);
        assert_eq!(again.global_parameters, defs.global_parameters);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_queue_keeps_its_partition_count_and_older_definitions_still_load() {
        let mut partitioned = queue("p");
        partitioned.partitions = Some(4);
        // A log line and a snapshot carry the count.
        let line = encode_line(&Change::PutQueue(partitioned.clone())).expect("encode");
        assert!(String::from_utf8_lossy(&line).contains("\"partitions\":4"));
        let back = decode_line(&line[..line.len() - 1]).expect("decode");
        assert_eq!(back, Change::PutQueue(partitioned.clone()));
        // A plain queue's definition is written as before partitions existed, and such a
        // definition (here also an old snapshot) reads back as a plain queue.
        let plain = queue("a");
        let line = encode_line(&Change::PutQueue(plain.clone())).expect("encode");
        assert!(!String::from_utf8_lossy(&line).contains("partitions"));
        assert_eq!(
            decode_line(&line[..line.len() - 1]).expect("decode"),
            Change::PutQueue(plain.clone())
        );
        let old = r#"{"version":2,"exchanges":[],"queues":[{"vhost":"/","name":"a","id":"a-1","auto_delete":false,"arguments":{}}],"bindings":[]}"#;
        let defs: Definitions = serde_json::from_str(old).expect("old snapshot");
        assert_eq!(defs.queues[0].partitions, None);
        // And through a restart, from the log and then from the compacted snapshot.
        let dir = temp_dir("partitions");
        let (mut store, _, _) = DefinitionStore::open(&dir).expect("open");
        store
            .record(&Change::PutQueue(partitioned.clone()))
            .expect("record");
        store
            .record(&Change::PutQueue(plain.clone()))
            .expect("record");
        store.sync().expect("sync");
        drop(store);
        for _ in 0..2 {
            let (_, defs, _) = DefinitionStore::open(&dir).expect("reopen");
            let mut queues = defs.queues.clone();
            queues.sort_by(|a, b| a.name.cmp(&b.name));
            assert_eq!(queues, vec![plain.clone(), partitioned.clone()]);
        }
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
    fn arguments_with_nan_and_infinities_survive_a_restart() {
        use amqp_codec::amq_protocol::types::AMQPValue;
        let dir = temp_dir("nan");
        let (mut store, _, _) = DefinitionStore::open(&dir).expect("open");
        let mut odd = queue("odd");
        let mut args = FieldTable::default();
        args.insert("nan".into(), AMQPValue::Double(f64::NAN));
        args.insert("inf".into(), AMQPValue::Float(f32::NEG_INFINITY));
        args.insert("zero".into(), AMQPValue::Double(-0.0));
        odd.arguments = args;
        store.record(&Change::PutQueue(odd)).expect("record");
        store.record(&Change::PutQueue(queue("q"))).expect("record");
        store.sync().expect("sync");
        drop(store);
        let (_, defs, cut) = DefinitionStore::open(&dir).expect("reopen");
        assert_eq!(cut, 0);
        let names: Vec<_> = defs.queues.iter().map(|q| q.name.as_str()).collect();
        assert_eq!(names, ["odd", "q"]);
        let args = defs.queues[0].arguments.inner();
        assert!(matches!(args.get("nan"), Some(AMQPValue::Double(d)) if d.is_nan()));
        assert!(
            matches!(args.get("zero"), Some(AMQPValue::Double(d)) if d.to_bits() == (-0.0f64).to_bits())
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_bad_line_before_valid_ones_stops_start_up() {
        let dir = temp_dir("badline");
        let (mut store, _, _) = DefinitionStore::open(&dir).expect("open");
        for name in ["a", "b", "c"] {
            store
                .record(&Change::PutQueue(queue(name)))
                .expect("record");
        }
        drop(store);
        let log = dir.join(LOG);
        let text = fs::read_to_string(&log).expect("log");
        let lines: Vec<&str> = text.lines().collect();
        let bad = lines[1].replace("\"b\"", "\"x\"");
        fs::write(&log, format!("{}\n{bad}\n{}\n", lines[0], lines[2])).expect("write");
        let err = DefinitionStore::open(&dir).expect_err("must refuse");
        let text = err.to_string();
        assert!(
            text.contains("definitions.log") && text.contains("line 2"),
            "{text}"
        );
        let _ = fs::remove_dir_all(&dir);
    }

    /// The changes as applied before the index: every definition scanned.
    fn apply_by_scanning(defs: &mut Definitions, change: Change) {
        match change {
            Change::PutExchange(def) => {
                defs.exchanges
                    .retain(|e| !(e.vhost == def.vhost && e.name == def.name));
                defs.exchanges.push(def);
            }
            Change::DeleteExchange { vhost, name } => {
                defs.exchanges
                    .retain(|e| !(e.vhost == vhost && e.name == name));
                defs.bindings.retain(|b| {
                    !(b.vhost == vhost
                        && (b.source == name || (b.to_exchange && b.destination == name)))
                });
            }
            Change::PutQueue(def) => {
                defs.queues
                    .retain(|q| !(q.vhost == def.vhost && q.name == def.name));
                defs.queues.push(def);
            }
            Change::DeleteQueue { vhost, name } => {
                defs.queues
                    .retain(|q| !(q.vhost == vhost && q.name == name));
                defs.bindings
                    .retain(|b| !(b.vhost == vhost && !b.to_exchange && b.destination == name));
            }
            Change::Bind(def) => {
                if !defs.bindings.contains(&def) {
                    defs.bindings.push(def);
                }
            }
            Change::Unbind(def) => defs.bindings.retain(|b| *b != def),
            other => {
                assert!(apply_access(defs, &other));
                if let Change::DeleteVhost { name } = other {
                    defs.exchanges.retain(|e| e.vhost != name);
                    defs.queues.retain(|q| q.vhost != name);
                    defs.bindings.retain(|b| b.vhost != name);
                }
            }
        }
    }

    fn change() -> impl proptest::strategy::Strategy<Value = Change> {
        use proptest::prelude::*;
        let name = || prop_oneof![Just("a"), Just("b"), Just("c")].prop_map(String::from);
        let vhost = || prop_oneof![Just("/"), Just("v")].prop_map(String::from);
        let binding = (
            vhost(),
            name(),
            name(),
            any::<bool>(),
            name(),
            any::<bool>(),
        )
            .prop_map(
                |(vhost, source, destination, to_exchange, routing_key, args)| {
                    let mut arguments = FieldTable::default();
                    if args {
                        arguments.insert(
                            "x".into(),
                            amqp_codec::amq_protocol::types::AMQPValue::Boolean(true),
                        );
                    }
                    BindingDef {
                        vhost,
                        source,
                        destination,
                        to_exchange,
                        routing_key,
                        arguments,
                    }
                },
            );
        prop_oneof![
            (vhost(), name(), any::<bool>()).prop_map(|(vhost, name, auto_delete)| {
                Change::PutExchange(ExchangeDef {
                    vhost,
                    name,
                    kind: "direct".into(),
                    auto_delete,
                    internal: false,
                    arguments: FieldTable::default(),
                })
            }),
            (vhost(), name()).prop_map(|(vhost, name)| Change::DeleteExchange { vhost, name }),
            (vhost(), name(), any::<bool>()).prop_map(|(vhost, name, auto_delete)| {
                let mut q = queue(&name);
                q.vhost = vhost;
                q.auto_delete = auto_delete;
                Change::PutQueue(q)
            }),
            (vhost(), name()).prop_map(|(vhost, name)| Change::DeleteQueue { vhost, name }),
            binding.clone().prop_map(Change::Bind),
            binding.prop_map(Change::Unbind),
            vhost().prop_map(|name| Change::DeleteVhost { name }),
        ]
    }

    /// `defs` in an order of its own, to compare contents whatever the order.
    fn sorted(defs: &Definitions) -> Vec<String> {
        let mut all: Vec<String> = defs
            .exchanges
            .iter()
            .map(|e| format!("e {e:?}"))
            .chain(defs.queues.iter().map(|q| format!("q {q:?}")))
            .chain(defs.bindings.iter().map(|b| format!("b {b:?}")))
            .collect();
        all.sort();
        all
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]

        /// The index gives the definitions that scanning gave, change after change.
        #[test]
        fn indexed_changes_give_what_scanning_gave(
            changes in proptest::collection::vec(change(), 0..60)
        ) {
            let mut indexed = Definitions::default();
            let mut index = Index::of(&indexed);
            let mut scanned = Definitions::default();
            for change in changes {
                index.apply(&mut indexed, change.clone());
                apply_by_scanning(&mut scanned, change);
                proptest::prop_assert_eq!(sorted(&indexed), sorted(&scanned));
            }
            // And an index built afresh agrees with the one kept up to date.
            let fresh = Index::of(&indexed);
            proptest::prop_assert_eq!(&fresh.queues, &index.queues);
            proptest::prop_assert_eq!(&fresh.exchanges, &index.exchanges);
            proptest::prop_assert_eq!(&fresh.bindings, &index.bindings);
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 128, ..Default::default() })]

        /// Any arguments a client can send read back bit for bit, from a log line and from
        /// the snapshot.
        #[test]
        fn any_arguments_survive_the_log_and_the_snapshot(
            t in crate::store::field_json::tests::table()
        ) {
            use crate::store::field_json::tests::same_table;
            let mut q = queue("q");
            q.arguments = t.clone();
            let line = encode_line(&Change::PutQueue(q.clone())).expect("encode");
            let back = decode_line(&line[..line.len() - 1]).expect("decode");
            let Change::PutQueue(back) = back else { panic!("not a queue") };
            proptest::prop_assert!(same_table(&back.arguments, &t));
            let defs = Definitions { version: DEFINITIONS_VERSION, queues: vec![q], ..Definitions::default() };
            let json = serde_json::to_vec_pretty(&defs).expect("snapshot");
            let again: Definitions = serde_json::from_slice(&json).expect("read snapshot");
            proptest::prop_assert!(same_table(&again.queues[0].arguments, &t));
        }
    }

    /// Opening compacts: a new snapshot replaces the old one, then the log is emptied.
    /// A power loss at any point of that must leave the changes of the old log readable,
    /// never the old snapshot beside the emptied log.
    #[test]
    fn a_power_loss_while_compacting_at_open_loses_no_change() {
        use super::super::sim::{PowerLoss, SimFs};
        let dir = Path::new("/data");
        let synced_change = || {
            let sim = SimFs::new();
            sim.mkdir_durable(dir);
            let (mut store, _, _) = DefinitionStore::open_in(sim.shared(), dir).expect("open");
            store.record(&Change::PutQueue(queue("a"))).expect("record");
            store.sync().expect("sync");
            sim
        };
        let sim = synced_change();
        let base = sim.ops();
        DefinitionStore::open_in(sim.shared(), dir).expect("reopen");
        let points = sim.ops() - base;
        assert!(points >= 5, "compaction makes {points} crash points");
        for k in 0..points {
            for mode in [PowerLoss::DropUnsynced, PowerLoss::MetadataOnly] {
                let sim = synced_change();
                sim.crash_at(sim.ops() + k, false);
                assert!(DefinitionStore::open_in(sim.shared(), dir).is_err());
                let at = sim.trace().last().cloned().unwrap_or_default();
                let after = sim.power_loss(mode);
                let (_, defs, _) = DefinitionStore::open_in(after.shared(), dir)
                    .unwrap_or_else(|e| panic!("crash at {at} ({mode:?}): open: {e}"));
                assert!(
                    defs.queues.iter().any(|q| q.name == "a"),
                    "crash at {at} ({mode:?}): the synced queue is lost"
                );
            }
        }
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

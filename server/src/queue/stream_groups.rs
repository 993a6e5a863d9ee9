//! A stream queue's partitions and the consumer groups that read them
//! (`docs/streams-design.md`, "Partitioned streams and groups").
//!
//! A stream is one [`Stream`], or with `x-partitions` N of them, each with its own log
//! and committed offsets; a message goes to the partition its key hashes to, as in a
//! partitioned queue. Unlike a partitioned queue, any number of consumer groups read the
//! same stream: each group has its own sticky assignment ([`group::assign`], one owner
//! per partition) and its own committed offset per partition, stored in that
//! partition's offsets under the group's tracking key ([`group_key`]).
//!
//! A partition moving from one member to another stops the old member's reading at
//! once; the new owner starts at the group's committed offset once the old member's
//! deliveries from it are settled (or its channel closed), so a key's messages are
//! never unsettled at two members of a group and the offset it starts from is final.
//!
//! Lock order: the groups' lock, then one partition's lock ([`Stream`]'s own).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use parking_lot::Mutex;

use super::group::{self, Candidate};
use super::partition_key::{self, HashOn};
use super::stream::{AddError, Reader, Stream};
use super::{ConsumerHandle, ConsumerId};
use crate::message::Message;

/// The prefix of a group's tracking key; a consumer tag that starts with a NUL is
/// escaped ([`consumer_key`]), so no tag can name a group's key.
const GROUP_KEY_PREFIX: &str = "\0g";
/// The prefix of a group's key whose name is too long to store whole.
const CUT_GROUP_KEY_PREFIX: &str = "\0h";
/// What an escaped consumer tag starts with.
const ESCAPED_TAG_PREFIX: &str = "\0c";
/// The prefix of an escaped consumer tag's key too long to store whole.
const CUT_TAG_KEY_PREFIX: &str = "\0d";
/// The longest tracking key the offsets file stores whole.
const MAX_KEY_BYTES: usize = 255;

/// The tracking key of consumer group `name` (the default group: the empty name).
/// Names too long to store whole are cut and given a hash of the whole name.
pub fn group_key(name: &str) -> String {
    prefixed(GROUP_KEY_PREFIX, CUT_GROUP_KEY_PREFIX, name)
}

/// The tracking key of a consumer tracked on its own (`x-stream-automatic-offset-tracking`).
pub fn consumer_key(tag: &str) -> String {
    if tag.starts_with('\0') {
        prefixed(ESCAPED_TAG_PREFIX, CUT_TAG_KEY_PREFIX, tag)
    } else {
        tag.to_owned()
    }
}

/// `prefix` and `name`, or where that is too long to store whole, `cut_prefix`, a hash
/// of `name` and as much of it as fits.
fn prefixed(prefix: &str, cut_prefix: &str, name: &str) -> String {
    let whole = format!("{prefix}{name}");
    if whole.len() <= MAX_KEY_BYTES {
        return whole;
    }
    let hash = partition_key::murmur3_x86_32(name.as_bytes(), 0);
    let mut cut = MAX_KEY_BYTES - cut_prefix.len() - 8;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{cut_prefix}{hash:08x}{}", &name[..cut])
}

/// A stream's partitions (one for a stream without `x-partitions`) and its groups.
#[derive(Debug)]
pub(super) struct Streams {
    /// Partition `p` is `parts[p]`.
    pub(super) parts: Box<[Arc<Stream>]>,
    /// How a message's partition is found; `None` without partitions.
    hash: Option<HashOn>,
    next_keyless: AtomicU32,
    groups: Mutex<Groups>,
}

#[derive(Debug, Default)]
struct Groups {
    /// Groups with members, by name (the default group: the empty name).
    by_name: BTreeMap<String, Group>,
    /// Join order over all groups: unique, the tie-break of assignment.
    next_seq: u64,
    /// The stream was deleted: a consumer that looked it up before must not join.
    deleted: bool,
}

#[derive(Debug, Default)]
struct Group {
    members: Vec<Member>,
    /// Each partition's owner (one at most).
    owners: Vec<Vec<ConsumerId>>,
    /// Times the partitions were assigned afresh.
    rebalances: u64,
}

#[derive(Debug)]
struct Member {
    reader: Reader,
    seq: u64,
}

/// One group of a stream as it is now: for the management API and tests.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StreamGroupSnapshot {
    /// Its name (empty for the default group).
    pub group: String,
    /// Its members' consumers, in join order.
    pub members: Vec<ConsumerId>,
    /// Every partition, by index.
    pub partitions: Vec<StreamPartitionSnapshot>,
    /// Times the partitions were assigned afresh.
    pub rebalances: u64,
}

/// A partition in a [`StreamGroupSnapshot`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct StreamPartitionSnapshot {
    /// Its index.
    pub index: u16,
    /// The member assigned it, if any (it may still be draining to it).
    pub owner: Option<ConsumerId>,
    /// The member reading it now (none while it drains).
    pub reading: Option<ConsumerId>,
    /// The group's committed offset: its lowest offset not yet settled.
    pub committed: Option<u64>,
    /// The partition's readable end.
    pub end: u64,
    /// Messages after the committed offset: `end − committed` (all of them with none).
    pub lag: u64,
    /// Deliveries to the group from it not settled yet.
    pub unsettled: u32,
}

impl Streams {
    /// The stream over `parts`, partitioned by `hash` when it has several.
    pub(super) fn new(parts: Vec<Arc<Stream>>, hash: Option<HashOn>) -> Self {
        Self {
            parts: parts.into_boxed_slice(),
            hash,
            next_keyless: AtomicU32::new(0),
            groups: Mutex::new(Groups::default()),
        }
    }

    /// The partition count, if the stream is partitioned.
    pub(super) fn partitions(&self) -> Option<u16> {
        self.hash
            .as_ref()
            .map(|_| u16::try_from(self.parts.len()).unwrap_or(u16::MAX))
    }

    /// The partition `message` goes to: its key's hash, else the next in turn.
    pub(super) fn route(&self, message: &Message) -> usize {
        let (Some(hash), Some(n)) = (&self.hash, self.partitions()) else {
            return 0;
        };
        let p = partition_key::partition_of(message, hash, n).unwrap_or_else(|| {
            let turn = self.next_keyless.fetch_add(1, Ordering::Relaxed);
            u16::try_from(turn % u32::from(n)).unwrap_or(0)
        });
        usize::from(p)
    }

    /// Adds `reader` to group `name` (the default group: `None`) and rebalances it.
    /// Returns whether a commit must be asked for.
    ///
    /// # Errors
    /// The stream was deleted.
    pub(super) fn join(
        &self,
        queue: &str,
        reader: Reader,
        name: Option<&str>,
    ) -> Result<bool, AddError> {
        let mut groups = self.groups.lock();
        if groups.deleted {
            return Err(AddError::Deleted);
        }
        let seq = groups.next_seq;
        groups.next_seq += 1;
        let name = name.unwrap_or_default();
        let group = groups.by_name.entry(name.to_owned()).or_default();
        group.members.push(Member { reader, seq });
        Ok(self.rebalance(queue, name, group, "join"))
    }

    /// Adds `reader` to the partitions `list`, outside any group (`x-partition`),
    /// tracked under `track` in each. Returns whether a commit must be asked for.
    ///
    /// # Errors
    /// As [`Stream::add_consumer`]; the reader is then in none of them.
    pub(super) fn add_to(
        &self,
        reader: &Reader,
        list: &[u16],
        track: Option<&str>,
    ) -> Result<bool, AddError> {
        let mut ask = false;
        for (i, &p) in list.iter().enumerate() {
            let Some(part) = self.parts.get(usize::from(p)) else {
                continue;
            };
            match part.add_consumer(reader.clone(), track.map(str::to_owned)) {
                Ok(a) => ask |= a,
                Err(error) => {
                    for &q in &list[..i] {
                        if let Some(part) = self.parts.get(usize::from(q)) {
                            let _ = part.remove_consumer(reader.consumer.id, false);
                        }
                    }
                    return Err(error);
                }
            }
        }
        Ok(ask)
    }

    /// Removes consumer `id` from every partition and from its group, which rebalances.
    /// With `keep_unsettled` (a `basic.cancel`), its readings with deliveries not
    /// settled stop but stay until they are (see [`Stream::remove_consumer`]).
    /// `None` if it is not a consumer here, else whether a commit must be asked for.
    pub(super) fn leave(&self, queue: &str, id: ConsumerId, keep_unsettled: bool) -> Option<bool> {
        let mut groups = self.groups.lock();
        let mut found = None;
        for part in &self.parts {
            if let Some(ask) = part.remove_consumer(id, keep_unsettled) {
                found = Some(found.unwrap_or(false) | ask);
            }
        }
        let name = groups
            .by_name
            .iter()
            .find(|(_, g)| g.members.iter().any(|m| m.reader.consumer.id == id))
            .map(|(name, _)| name.clone());
        if let Some(name) = name
            && let Some(group) = groups.by_name.get_mut(&name)
        {
            group.members.retain(|m| m.reader.consumer.id != id);
            let ask = self.rebalance(queue, &name, group, "leave");
            found = Some(found.unwrap_or(false) | ask);
            if group.members.is_empty() {
                groups.by_name.remove(&name);
            }
        }
        found
    }

    /// Marks every partition deleted and returns every consumer once, to be told.
    pub(super) fn take_consumers(&self) -> Vec<ConsumerHandle> {
        let mut groups = self.groups.lock();
        groups.deleted = true;
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        let members = std::mem::take(&mut groups.by_name)
            .into_values()
            .flat_map(|g| g.members.into_iter().map(|m| m.reader.consumer));
        let readers: Vec<ConsumerHandle> = self.parts.iter().flat_map(|p| p.delete()).collect();
        for handle in members.chain(readers) {
            if seen.insert(handle.id) {
                out.push(handle);
            }
        }
        out
    }

    /// Every group with members or a committed offset, as it is now.
    pub(super) fn snapshot(&self) -> Vec<StreamGroupSnapshot> {
        let groups = self.groups.lock();
        let mut names: BTreeSet<String> = groups.by_name.keys().cloned().collect();
        for part in &self.parts {
            // A cut name's key does not give the name back: such groups are listed
            // only while they have members.
            for key in part.keys_with_prefix(GROUP_KEY_PREFIX) {
                names.insert(key[GROUP_KEY_PREFIX.len()..].to_owned());
            }
        }
        names
            .into_iter()
            .map(|name| {
                let key = group_key(&name);
                let group = groups.by_name.get(&name);
                let partitions = self
                    .parts
                    .iter()
                    .enumerate()
                    .map(|(p, part)| {
                        let at = part.position_of(&key);
                        StreamPartitionSnapshot {
                            index: u16::try_from(p).unwrap_or(u16::MAX),
                            owner: group
                                .and_then(|g| g.owners.get(p))
                                .and_then(|o| o.first().copied()),
                            reading: at.reader,
                            committed: at.committed,
                            end: at.end,
                            lag: at.end - at.committed.unwrap_or(0).min(at.end),
                            unsettled: at.unsettled,
                        }
                    })
                    .collect();
                StreamGroupSnapshot {
                    members: group
                        .map(|g| g.members.iter().map(|m| m.reader.consumer.id).collect())
                        .unwrap_or_default(),
                    rebalances: group.map_or(0, |g| g.rebalances),
                    group: name,
                    partitions,
                }
            })
            .collect()
    }

    /// Assigns the group's partitions afresh and hands each moved one over. Returns
    /// whether a commit must be asked for; the caller dispatches.
    fn rebalance(&self, queue: &str, name: &str, group: &mut Group, cause: &str) -> bool {
        group.rebalances += 1;
        let key = group_key(name);
        let n = u16::try_from(self.parts.len()).unwrap_or(u16::MAX);
        let candidates: Vec<Candidate> = group
            .members
            .iter()
            .map(|m| Candidate {
                consumer: m.reader.consumer.id,
                seq: m.seq,
                priority: m.reader.consumer.priority,
            })
            .collect();
        let unsettled: Vec<u32> = self
            .parts
            .iter()
            .map(|p| p.position_of(&key).unsettled)
            .collect();
        let assignment = group::assign(
            n,
            1,
            &BTreeSet::new(),
            &candidates,
            &group.owners,
            &unsettled,
        );
        let mut ask = false;
        for (p, owners) in assignment.owners.iter().enumerate() {
            if group.owners.get(p) == Some(owners) {
                continue;
            }
            let to = owners
                .first()
                .and_then(|id| group.members.iter().find(|m| m.reader.consumer.id == *id))
                .map(|m| m.reader.clone());
            match self.parts[p].assign(&key, to) {
                Ok(a) => ask |= a,
                Err(error) => {
                    tracing::error!(queue, group = name, partition = p, %error, "cannot hand a stream partition to its new owner");
                }
            }
        }
        if !assignment.moves.is_empty() {
            tracing::info!(
                queue,
                group = name,
                cause,
                members = group.members.len(),
                moves = assignment.moves.len(),
                detail = %group::describe(&assignment.moves),
                "stream consumer group rebalanced"
            );
        }
        group.owners = assignment.owners;
        ask
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracking_keys_fit_the_offsets_file_and_never_collide() {
        let long = "é".repeat(200);
        let other = format!("{}x", "é".repeat(199));
        for name in ["", "g", &long, &other] {
            let key = group_key(name);
            assert!(key.len() <= MAX_KEY_BYTES, "{} bytes", key.len());
        }
        assert_ne!(group_key(&long), group_key(&other));
        assert_eq!(group_key("audit"), "\0gaudit");
        // No consumer tag names a group's key, even one that looks like it.
        assert_ne!(consumer_key("\0gaudit"), group_key("audit"));
        assert_eq!(consumer_key("tag"), "tag");
        assert!(consumer_key("\0g").starts_with(ESCAPED_TAG_PREFIX));
        let nul_tag = format!("\0{}", "t".repeat(254));
        assert!(consumer_key(&nul_tag).len() <= MAX_KEY_BYTES);
    }
}

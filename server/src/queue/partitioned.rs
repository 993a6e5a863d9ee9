//! Partitioned queues (`x-partitions`) and the consumer group that shares them out.
//!
//! A partitioned queue is one [`Queue`] with N partitions behind it. Each partition is a
//! plain queue's state behind its own lock: its own FIFO, log, TTLs and limits, and as
//! its consumers exactly its owners. So publishing, dispatching, acking and requeueing
//! take one partition's lock and partitions flow in parallel; only membership changes
//! take the group's lock, which then visits partitions one at a time.
//!
//! A message's partition is the hash of its key ([`partition_key`](super::partition_key));
//! a message without one goes round robin. The group's members are given partitions by
//! [`group::assign`](super::group::assign), sticky and with the fewest moves. A partition
//! that moves with deliveries still unacked drains first: it goes to nobody until its
//! unacked count is back to 0, so a key is never unacked at two members at once.
//!
//! Lock order, as in [`queue`](super): the group's lock, then one partition's lock, then
//! what a queue calls while holding its own. No code holds two partitions' locks.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::{Mutex, MutexGuard};

use super::group::{self, Candidate};
use super::partition_key::{self, HashOn};
use super::{
    ConsumerHandle, ConsumerId, ConsumerRemoval, Drain, FlowGauge, GroupEvent, Outgoing,
    PartitionTally, Queue, QueueState,
};
use crate::error::{self, AmqpResult};
use crate::message::Message;
use crate::store::{PendingSync, SyncTarget};
use crate::timers::{Wake, now_ms};

/// How a consumer takes part in a partitioned queue, from its `basic.consume` arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    /// `x-consumer-group`: the group it joins (the queue's group when absent).
    pub group: Option<String>,
    /// `x-partition`: consume these partitions, outside the group.
    pub partitions: Option<Vec<u16>>,
    /// `x-group-member`: a static member's id. A static member whose channel closes
    /// keeps its partitions, delivering nothing, for `session_timeout_ms`: back within
    /// it, it gets them again without a rebalance. A second consumer with a live
    /// member's id takes its place (the first is cancelled).
    pub member: Option<String>,
    /// `x-group-session-timeout`: how long a static member's partitions wait for it.
    pub session_timeout_ms: u64,
    /// `x-group-notify`: hear of each partition assigned or revoked, as an empty
    /// delivery with `x-group-event` and `x-partition` headers.
    pub notify: bool,
}

/// What a partitioned queue's group looks like now: for the management API and logs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GroupSnapshot {
    /// The group's name (`x-consumer-group`), if one was given.
    pub group: Option<String>,
    /// The partition count.
    pub partitions: u16,
    /// Owners per partition (`x-consumers-per-partition`).
    pub consumers_per_partition: u16,
    /// Members in join order.
    pub members: Vec<MemberSnapshot>,
    /// Every partition, by index.
    pub partition_states: Vec<PartitionSnapshot>,
    /// Times the partitions were assigned afresh.
    pub rebalances: u64,
}

/// A group member in a [`GroupSnapshot`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MemberSnapshot {
    /// Its consumer id.
    pub consumer: ConsumerId,
    /// Its channel.
    pub channel: u16,
    /// Its `x-priority`.
    pub priority: i32,
    /// The partitions assigned to it (some may still be draining to it).
    pub assigned: Vec<u16>,
    /// Assigned nothing: a hot standby.
    pub standby: bool,
}

/// A partition in a [`GroupSnapshot`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PartitionSnapshot {
    /// Its index.
    pub index: u16,
    /// The consumers it delivers to now (none while draining).
    pub owners: Vec<ConsumerId>,
    /// Ready messages.
    pub depth: u64,
    /// Deliveries handed out and not settled.
    pub unacked: u32,
    /// While it drains: the consumers it goes to next, and since when (ms since the
    /// epoch).
    pub draining_to: Option<(Vec<ConsumerId>, u64)>,
    /// Consumed by `x-partition` consumers, outside the group.
    pub manual: bool,
}

/// One partition: a plain queue's state under its own lock.
#[derive(Debug)]
pub struct Partition {
    pub(super) state: Mutex<QueueState>,
    /// Ready messages may wait for an owner's credit: a kick dispatches it.
    pub(super) waiting: AtomicBool,
}

/// Ready messages and bytes over all partitions, kept by [`Locked`] as partitions
/// change: what the queue's length limits and its counts read.
#[derive(Debug, Default)]
pub(super) struct Totals {
    pub(super) ready: AtomicU64,
    pub(super) bytes: AtomicU64,
}

/// A partition's state, locked; on release it brings the queue's totals and its share
/// of the flow gauge up to date, whatever changed it.
pub(super) struct Locked<'a> {
    st: MutexGuard<'a, QueueState>,
    shared: Option<(&'a Totals, &'a FlowGauge)>,
    before: (u64, u64),
}

impl<'a> Locked<'a> {
    /// Locks `state`, telling it what the queue's other partitions hold (`shared`:
    /// none for a plain queue).
    pub(super) fn new(
        state: &'a Mutex<QueueState>,
        shared: Option<(&'a Totals, &'a FlowGauge)>,
    ) -> Self {
        let mut st = state.lock();
        let before = (st.ready_count(), st.ready_bytes());
        if let (Some((totals, _)), Some(tally)) = (shared, st.partition.as_mut()) {
            tally.outside = (
                totals
                    .ready
                    .load(Ordering::Relaxed)
                    .saturating_sub(before.0),
                totals
                    .bytes
                    .load(Ordering::Relaxed)
                    .saturating_sub(before.1),
            );
        }
        Self { st, shared, before }
    }
}

impl std::ops::Deref for Locked<'_> {
    type Target = QueueState;
    fn deref(&self) -> &QueueState {
        &self.st
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut QueueState {
        &mut self.st
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let Some((totals, flow)) = self.shared else {
            return;
        };
        flow.show_share(&mut self.st);
        let after = (self.st.ready_count(), self.st.ready_bytes());
        for (total, before, after) in [
            (&totals.ready, self.before.0, after.0),
            (&totals.bytes, self.before.1, after.1),
        ] {
            // Untouched totals are not written: acks and kicks leave them alone, and
            // the line they share with every partition stays put.
            if after > before {
                total.fetch_add(after - before, Ordering::Relaxed);
            } else if after < before {
                let _ = total.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                    Some(t.saturating_sub(before - after))
                });
            }
        }
    }
}

/// The group of a partitioned queue: its members in join order, its manual consumers
/// and the assignment in force.
#[derive(Debug, Default)]
struct Group {
    /// Named by the first member that gave `x-consumer-group`; cleared when the last
    /// member leaves.
    name: Option<String>,
    members: Vec<Member>,
    /// Consumers of given partitions (`x-partition`), outside the group.
    manual: Vec<(ConsumerHandle, Vec<u16>)>,
    next_seq: u64,
    /// Each partition's group owners.
    owners: Vec<Vec<ConsumerId>>,
    /// The queue was deleted: a consumer that looked it up before must not join.
    deleted: bool,
    /// Times the partitions were assigned afresh.
    rebalances: u64,
}

#[derive(Debug)]
struct Member {
    handle: ConsumerHandle,
    seq: u64,
    /// A static member's id (`x-group-member`).
    static_id: Option<String>,
    session_ms: u64,
    /// A static member whose channel closed: its partitions wait for it until then.
    held_until: Option<u64>,
    /// It hears of its partitions' comings and goings.
    notify: bool,
}

/// Why a group rebalanced, for its log line.
#[derive(Debug, Clone, Copy)]
enum Cause {
    Join,
    Leave,
    Manual,
    /// A static member's channel closed: its partitions wait for it.
    Held,
    /// A static member came back (or took a live one's place).
    Rejoin,
    Fenced,
    SessionExpired,
}

impl Cause {
    fn name(self) -> &'static str {
        match self {
            Cause::Join => "join",
            Cause::Leave => "leave",
            Cause::Manual => "manual",
            Cause::Held => "held",
            Cause::Rejoin => "rejoin",
            Cause::Fenced => "fenced",
            Cause::SessionExpired => "session-expired",
        }
    }
}

/// The partitioned body of a queue.
#[derive(Debug)]
pub(super) struct Partitioned {
    pub(super) parts: Box<[Arc<Partition>]>,
    group: Mutex<Group>,
    hash: HashOn,
    /// Owners per partition (`x-consumers-per-partition`).
    per_partition: u16,
    next_keyless: AtomicU32,
    next_get: AtomicU32,
    pub(super) totals: Totals,
    /// The durable queue's log id: a partition's log is made beside it on first use.
    pub(super) log_id: Option<String>,
}

impl Partitioned {
    /// `n` empty partitions; the first one takes `first` (the queue's log, if any).
    pub(super) fn new(
        n: u16,
        hash: HashOn,
        per_partition: u16,
        log_id: Option<String>,
        mut first: QueueState,
        make: impl Fn() -> QueueState,
    ) -> Self {
        let parts = (0..n.max(1))
            .map(|index| {
                let mut st = if index == 0 {
                    std::mem::take(&mut first)
                } else {
                    make()
                };
                st.partition = Some(PartitionTally {
                    index,
                    ..PartitionTally::default()
                });
                Arc::new(Partition {
                    state: Mutex::new(st),
                    waiting: AtomicBool::new(false),
                })
            })
            .collect::<Box<[_]>>();
        let totals = Totals::default();
        if let Some(p) = parts.first() {
            let st = p.state.lock();
            totals.ready.store(st.ready_count(), Ordering::Relaxed);
            totals.bytes.store(st.ready_bytes(), Ordering::Relaxed);
        }
        Self {
            group: Mutex::new(Group {
                owners: vec![Vec::new(); parts.len()],
                ..Group::default()
            }),
            parts,
            hash,
            per_partition: per_partition.max(1),
            next_keyless: AtomicU32::new(0),
            next_get: AtomicU32::new(0),
            totals,
            log_id,
        }
    }

    /// The number of partitions.
    pub(super) fn count(&self) -> u16 {
        u16::try_from(self.parts.len()).unwrap_or(u16::MAX)
    }

    /// Locks partition `p`.
    pub(super) fn lock<'a>(&'a self, p: usize, flow: &'a FlowGauge) -> Locked<'a> {
        Locked::new(&self.parts[p].state, Some((&self.totals, flow)))
    }

    /// The partition `message` goes to: its key's hash, else the next in turn.
    pub(super) fn route(&self, message: &Message) -> usize {
        let n = self.count();
        let p = partition_key::partition_of(message, &self.hash, n).unwrap_or_else(|| {
            let turn = self.next_keyless.fetch_add(1, Ordering::Relaxed);
            u16::try_from(turn % u32::from(n)).unwrap_or(0)
        });
        usize::from(p)
    }

    /// The partition where `basic.get` starts looking, rotating so that none starves.
    pub(super) fn get_start(&self) -> usize {
        self.next_get.fetch_add(1, Ordering::Relaxed) as usize % self.parts.len()
    }

    /// Registered consumers: members (active or standby) and manual ones.
    pub(super) fn consumer_count(&self) -> usize {
        let group = self.group.lock();
        group.members.len() + group.manual.len()
    }

    /// Every consumer, for the cancellations of a deleted queue; the group is left empty
    /// and takes no one from now on.
    pub(super) fn take_consumers(&self) -> Vec<ConsumerHandle> {
        let mut group = self.group.lock();
        let group = &mut *group;
        group.deleted = true;
        group.name = None;
        group.owners.iter_mut().for_each(Vec::clear);
        let members = std::mem::take(&mut group.members)
            .into_iter()
            .map(|m| m.handle);
        let manual = std::mem::take(&mut group.manual)
            .into_iter()
            .map(|(c, _)| c);
        members.chain(manual).collect()
    }
}

impl Partitioned {
    /// The group and every partition as they are now, one partition lock at a time.
    pub(super) fn snapshot(&self) -> GroupSnapshot {
        let group = self.group.lock();
        let partition_states = self
            .parts
            .iter()
            .map(|part| {
                let st = part.state.lock();
                let tally = st.partition.as_ref();
                let index = tally.map_or(0, |t| t.index);
                PartitionSnapshot {
                    index,
                    owners: st.consumers.iter().map(|c| c.id).collect(),
                    depth: st.ready_count(),
                    unacked: tally.map_or(0, |t| t.unacked),
                    draining_to: tally
                        .and_then(|t| t.draining.as_ref())
                        .map(|d| (d.to.iter().map(|c| c.id).collect(), d.since_ms)),
                    manual: group.manual.iter().any(|(_, ps)| ps.contains(&index)),
                }
            })
            .collect();
        let members = group
            .members
            .iter()
            .map(|m| {
                let assigned: Vec<u16> = (0..self.count())
                    .filter(|&p| group.owners[usize::from(p)].contains(&m.handle.id))
                    .collect();
                MemberSnapshot {
                    consumer: m.handle.id,
                    channel: m.handle.channel,
                    priority: m.handle.priority,
                    standby: assigned.is_empty(),
                    assigned,
                }
            })
            .collect();
        GroupSnapshot {
            group: group.name.clone(),
            partitions: self.count(),
            consumers_per_partition: self.per_partition,
            members,
            partition_states,
            rebalances: group.rebalances,
        }
    }
}

/// Settles `n` of a partition's deliveries: once none is left, a drain ends and the
/// waiting owners take the partition (the caller dispatches it, or a kick does).
pub(super) fn settled(st: &mut QueueState, n: usize) -> bool {
    let Some(tally) = st.partition.as_mut() else {
        return false;
    };
    tally.unacked = tally
        .unacked
        .saturating_sub(u32::try_from(n).unwrap_or(u32::MAX));
    if tally.unacked > 0 {
        return false;
    }
    let Some(drain) = tally.draining.take() else {
        return false;
    };
    tracing::debug!(
        partition = tally.index,
        drained_ms = now_ms().saturating_sub(drain.since_ms),
        "a moved partition drained"
    );
    set_consumers(st, drain.to);
    true
}

/// Makes `owners` a partition's consumers, in priority order.
fn set_consumers(st: &mut QueueState, mut owners: Vec<ConsumerHandle>) {
    owners.sort_by_key(|c| std::cmp::Reverse(c.priority));
    st.uniform_priority = owners.windows(2).all(|w| w[0].priority == w[1].priority);
    st.next_consumer = 0;
    st.had_consumer |= !owners.is_empty();
    st.consumers = owners;
}

impl Queue {
    /// The partitioned body, if the queue is partitioned.
    pub(super) fn partitioned(&self) -> Option<&Partitioned> {
        match &self.body {
            super::Body::Partitioned(p) => Some(p),
            super::Body::Plain(_) | super::Body::Stream { .. } => None,
        }
    }

    /// Adds a consumer to a partitioned queue: to its group, or to given partitions.
    pub(super) fn join(
        self: &Arc<Self>,
        parts: &Partitioned,
        consumer: ConsumerHandle,
        membership: &Membership,
    ) -> AmqpResult<()> {
        let mut group = parts.group.lock();
        if group.deleted {
            return Err(error::no_queue(&self.name, &self.vhost_name));
        }
        // A static member coming back (or fencing its old self) takes its own place:
        // it is not another consumer to an exclusive one.
        let returning = membership
            .member
            .as_ref()
            .filter(|_| membership.partitions.is_none())
            .and_then(|id| {
                group
                    .members
                    .iter()
                    .position(|m| m.static_id.as_ref() == Some(id))
            });
        let others = || {
            group
                .members
                .iter()
                .enumerate()
                .filter(move |(at, _)| Some(*at) != returning)
                .map(|(_, m)| &m.handle)
                .chain(group.manual.iter().map(|(c, _)| c))
        };
        let exclusive = others().any(|c| c.exclusive);
        let empty = others().next().is_none();
        if exclusive || (consumer.exclusive && !empty) {
            return Err(crate::error::AmqpError::new(
                amqp_codec::ReplyCode::AccessRefused,
                format!(
                    "queue '{}' in vhost '{}' in exclusive use",
                    self.name, self.vhost_name
                ),
            ));
        }
        let cause = if let Some(partitions) = &membership.partitions {
            group.manual.push((consumer, partitions.clone()));
            Cause::Manual
        } else {
            if let (Some(asked), Some(name)) = (&membership.group, &group.name)
                && asked != name
            {
                return Err(error::precondition(format!(
                    "queue '{}' in vhost '{}' is consumed by group '{name}': a partitioned \
                     queue serves one consumer group; give group '{asked}' its own \
                     partitioned queue bound to the same exchange, or use a stream",
                    self.name, self.vhost_name
                )));
            }
            if group.name.is_none() {
                group.name.clone_from(&membership.group);
            }
            if let Some(at) = returning {
                let cause = take_place(&mut group, at, consumer, membership);
                let fresh = group.members[at].handle.id;
                self.rebalance(parts, &mut group, cause, Some(fresh));
                return Ok(());
            }
            let seq = group.next_seq;
            group.next_seq += 1;
            group.members.push(Member {
                handle: consumer,
                seq,
                static_id: membership.member.clone(),
                session_ms: membership.session_timeout_ms,
                held_until: None,
                notify: membership.notify,
            });
            Cause::Join
        };
        self.rebalance(parts, &mut group, cause, None);
        Ok(())
    }

    /// Removes a consumer from a partitioned queue; its partitions pass on once drained.
    /// A static member whose channel `closed` is held instead, for its session timeout.
    pub(super) fn leave(
        self: &Arc<Self>,
        parts: &Partitioned,
        id: ConsumerId,
        closed: bool,
    ) -> ConsumerRemoval {
        let mut group = parts.group.lock();
        let cause = if let Some(at) = group.members.iter().position(|m| m.handle.id == id) {
            let member = &mut group.members[at];
            if closed && member.static_id.is_some() && member.session_ms > 0 {
                let until = now_ms().saturating_add(member.session_ms);
                member.held_until = Some(until);
                let clock: Weak<dyn Wake> = Arc::downgrade(&self.env.clock);
                self.env.timers.wake_at(until, clock);
                Cause::Held
            } else {
                group.members.remove(at);
                Cause::Leave
            }
        } else if let Some(at) = group.manual.iter().position(|(c, _)| c.id == id) {
            group.manual.remove(at);
            Cause::Manual
        } else {
            return ConsumerRemoval::Unknown;
        };
        if group.members.is_empty() {
            group.name = None;
        }
        self.rebalance(parts, &mut group, cause, None);
        let empty = group.members.is_empty() && group.manual.is_empty();
        drop(group);
        if empty {
            self.unused_since(now_ms());
        }
        if self.settings.auto_delete && empty {
            ConsumerRemoval::RemovedLast
        } else {
            ConsumerRemoval::Removed
        }
    }

    /// Ends the sessions of static members held past their timeout: they leave.
    pub(super) fn expire_sessions(self: &Arc<Self>, parts: &Partitioned, now_ms: u64) {
        let mut group = parts.group.lock();
        let before = group.members.len();
        group
            .members
            .retain(|m| m.held_until.is_none_or(|until| until > now_ms));
        if group.members.len() == before {
            return;
        }
        if group.members.is_empty() {
            group.name = None;
        }
        self.rebalance(parts, &mut group, Cause::SessionExpired, None);
        let empty = group.members.is_empty() && group.manual.is_empty();
        drop(group);
        if empty {
            self.unused_since(now_ms);
        }
    }

    /// Assigns the partitions afresh and hands each moved one to its new owners, or
    /// starts its drain. Partitions given owners are left for the next kick to dispatch.
    /// Members that asked are told of each partition they gain or lose (`fresh`, a
    /// member that just took a static member's place, of every one it holds) before
    /// any of its messages.
    fn rebalance(
        self: &Arc<Self>,
        parts: &Partitioned,
        group: &mut Group,
        cause: Cause,
        fresh: Option<ConsumerId>,
    ) {
        group.rebalances += 1;
        let n = parts.count();
        let manual: BTreeSet<u16> = group
            .manual
            .iter()
            .flat_map(|(_, ps)| ps.iter().copied())
            .filter(|&p| p < n)
            .collect();
        let candidates: Vec<Candidate> = group
            .members
            .iter()
            .map(|m| Candidate {
                consumer: m.handle.id,
                seq: m.seq,
                priority: m.handle.priority,
            })
            .collect();
        let unacked: Vec<u32> = parts
            .parts
            .iter()
            .map(|p| p.state.lock().partition.as_ref().map_or(0, |t| t.unacked))
            .collect();
        let assignment = group::assign(
            n,
            parts.per_partition,
            &manual,
            &candidates,
            &group.owners,
            &unacked,
        );
        for (p, owners) in assignment.owners.iter().enumerate() {
            // A held member keeps its partitions, but they deliver to nobody.
            let mut target: Vec<ConsumerHandle> = owners
                .iter()
                .filter_map(|id| group.members.iter().find(|m| m.handle.id == *id))
                .filter(|m| m.held_until.is_none())
                .map(|m| m.handle.clone())
                .collect();
            let index = u16::try_from(p).unwrap_or(u16::MAX);
            target.extend(
                group
                    .manual
                    .iter()
                    .filter(|(_, ps)| ps.contains(&index))
                    .map(|(c, _)| c.clone()),
            );
            let exclusive_owner = parts.per_partition == 1;
            let mut st = parts.lock(p, &self.flow);
            if hand_over_partition(&mut st, target, exclusive_owner) {
                parts.parts[p].waiting.store(true, Ordering::Release);
            }
            // Told under the partition's lock: no delivery of it slips in between.
            let before = group.owners.get(p).map_or(&[][..], Vec::as_slice);
            for member in group
                .members
                .iter()
                .filter(|m| m.notify && m.held_until.is_none())
            {
                let id = member.handle.id;
                let event = match (before.contains(&id), owners.contains(&id)) {
                    (false, true) => GroupEvent::Assigned,
                    (true, true) if fresh == Some(id) => GroupEvent::Assigned,
                    (true, false) => GroupEvent::Revoked,
                    _ => continue,
                };
                member.handle.mailbox.push(Outgoing::GroupEvent {
                    channel: member.handle.channel,
                    consumer: id,
                    queue: self.clone(),
                    event,
                    partition: index,
                    group: group.name.clone(),
                });
            }
        }
        if !assignment.moves.is_empty() || matches!(cause, Cause::Rejoin | Cause::Fenced) {
            let active = assignment
                .owners
                .iter()
                .flatten()
                .collect::<BTreeSet<_>>()
                .len();
            tracing::info!(
                queue = %self.name,
                vhost = %self.vhost_name,
                group = group.name.as_deref().unwrap_or(""),
                cause = cause.name(),
                active,
                standby = group.members.len().saturating_sub(active),
                moves = assignment.moves.len(),
                detail = %group::describe(&assignment.moves),
                "consumer group rebalanced"
            );
        }
        group.owners = assignment.owners;
    }
}

/// Puts `consumer` in the place of static member `at` (back after a close, or taking a
/// live one's place, which is cancelled): same partitions, no moves.
fn take_place(
    group: &mut Group,
    at: usize,
    consumer: ConsumerHandle,
    membership: &Membership,
) -> Cause {
    let member = &mut group.members[at];
    let old = std::mem::replace(&mut member.handle, consumer);
    member.session_ms = membership.session_timeout_ms;
    member.notify = membership.notify;
    let cause = if member.held_until.take().is_some() {
        Cause::Rejoin
    } else {
        old.mailbox.push(Outgoing::Cancelled {
            channel: old.channel,
            consumer: old.id,
        });
        Cause::Fenced
    };
    let new = member.handle.id;
    for owner in group.owners.iter_mut().flatten() {
        if *owner == old.id {
            *owner = new;
        }
    }
    cause
}

/// Gives a partition to `target`: at once when nothing of it is unacked, when it keeps
/// every owner it has (or may have several group owners), else after a drain. True if
/// it has owners to dispatch to now.
fn hand_over_partition(
    st: &mut QueueState,
    target: Vec<ConsumerHandle>,
    exclusive_owner: bool,
) -> bool {
    let ids = |cs: &[ConsumerHandle]| cs.iter().map(|c| c.id).collect::<BTreeSet<_>>();
    let wanted = ids(&target);
    let current = ids(&st.consumers);
    let Some(tally) = st.partition.as_mut() else {
        return false;
    };
    if let Some(drain) = tally.draining.as_mut() {
        if wanted != drain.from {
            drain.to = target;
            return false;
        }
        // Back to the consumers that hold its deliveries: nothing to wait for.
        tally.draining = None;
    } else if current == wanted {
        return false;
    } else if tally.unacked > 0
        && exclusive_owner
        && (current.is_empty() || !current.is_subset(&wanted))
    {
        // Its unacked deliveries sit at owners it leaves (or at `basic.get`s when it
        // had none): it waits for them. Consumers added beside owners it keeps (manual
        // consumers sharing it) take it at once.
        tally.draining = Some(Drain {
            to: target,
            from: current,
            since_ms: now_ms(),
        });
        st.consumers.clear();
        return false;
    }
    set_consumers(st, target);
    !st.consumers.is_empty()
}

impl SyncTarget for Partition {
    fn begin_sync(&self) -> Option<crate::store::Result<PendingSync>> {
        super::begin_sync(&mut self.state.lock(), "partition")
    }

    fn complete_sync(&self, pending: PendingSync, result: &crate::store::Result<()>) -> bool {
        super::complete_sync(&mut self.state.lock(), "partition", pending, result)
    }
}

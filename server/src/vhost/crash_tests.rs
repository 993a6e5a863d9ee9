//! A crash at every I/O point of a broker-level workload, then a power loss, then a
//! restart: every confirmed message and every acknowledged durable definition must be
//! there, nothing whose ack was made durable may come back unflagged, and the broker must
//! start.
//!
//! The broker is a [`VHost`] over a [`BrokerStore`] opened on a [`SimFs`], driven through
//! the vhost and queue API as a channel drives it. Everything runs on the test's thread,
//! so every run makes the same file-system calls in the same order: commit rounds are
//! run by the test ([`BrokerStore::commit_now`], which also serves the commits the vhost
//! asks for when it moves messages), the timer thread is stopped (the test wakes queues
//! itself, as their clocks would), and time passes by moving the thread's clock
//! ([`skew_clock_for_tests`]).
//!
//! The workload: durable direct, fanout and delayed exchanges; durable classic and
//! quorum queues with bindings; confirmed persistent publishes (confirmed when a round
//! reports the queue durable); `basic.get`, a consumer, acks, and a transaction's store
//! effect (publishes and acks made durable by one round; `tx.commit` itself is not
//! driven); dead-lettering by rejection, by per-queue TTL and by `reject-publish-dlx`
//! overflow; an `at-least-once` quorum queue whose dead-letter exchange does not exist
//! yet (its letters are retained, then retried once it does); delayed messages coming
//! due; a queue expiring unused; a restart in the middle that finds messages expired
//! while it was down; a sliced purge of a paged backlog; a queue and an exchange
//! deletion; a second restart. Beside them, partitioned queues (issue 13): a durable
//! queue of four partitions fed keyed messages whose keys never hash to its last one
//! (whose log directory must then never exist), and one partitioned by a policy that
//! asks for another count over both queues after a restart, and is gone at the final
//! check (the stored counts must stand); a member consuming
//! and acking, a rejection dead-lettered from a partition, the first message of each
//! partition (its directory made and its parent synced), and the deletion of a
//! partitioned queue (every partition's log retired). It runs once without a crash to count its crash points,
//! then once per point and kind of crash, dying there; what the file system then holds
//! is restarted and checked against a ledger of what the workload was told.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use amqp_codec::amq_protocol::protocol::BasicProperties;
use amqp_codec::amq_protocol::types::{AMQPValue, FieldTable};
use amqp_codec::properties::encode_properties;
use bytes::Bytes;

use super::VHost;
use crate::exchange::{ExchangeSettings, Routed, parse_declared_type};
use crate::message::{Handling, Message, QueuedMessage};
use crate::names;
use crate::policy::Policies;
use crate::queue::Queue;
use crate::queue::partition_key::{SEED, murmur3_x86_32};
use crate::queue::{
    ConnectionId, ConsumerHandle, Credit, Effects, Enqueued, Mailbox, MoveRoute, Outgoing, Paging,
    QueueDeclare,
};
use crate::store::definitions::Definitions;
use crate::store::sim::{PowerLoss, SimFs};
use crate::store::{BrokerStore, SyncTarget};
use crate::timers::{ClockSkew, Timers, now_ms, skew_clock_for_tests};

const DATA: &str = "/data";
/// Small segments, so that logs roll and fully acked segments go.
const SEGMENT: u64 = 700;
/// The TTL and delay of messages that are to run out during the workload.
const HOUR: u64 = 3_600_000;
const CONN: ConnectionId = 1;
/// The partitions of the declared partitioned queue, and the one no key hashes to.
const PARTS: u16 = 4;
const UNUSED: u16 = 3;
/// The partitions the policy gives `bypolicy` when it is declared (the first boot).
const POLICY_PARTS: u16 = 2;
const POLICY: &str = r#"{"policies": [{"name": "split", "pattern": "^bypolicy$",
    "apply-to": "queues", "definition": {"partitions": 2}}]}"#;
/// The policy the restarts find instead: another count, over both partitioned queues.
/// Partition counts are fixed at creation: it must change neither.
const CHANGED_POLICY: &str = r#"{"policies": [{"name": "split", "pattern": "^(bypolicy|parts)$",
    "apply-to": "queues", "definition": {"partitions": 3}}]}"#;

/// A routing key that hashes to partition `p` of `PARTS` (never to `UNUSED`), the
/// `nth` such: as producers compute it, murmur3 x86_32 of the key, mod N.
fn key_for(p: u16, nth: usize) -> String {
    assert_ne!(p, UNUSED);
    (0..)
        .map(|i| format!("key{i}"))
        .filter(|key| partition_of_key(key, PARTS) == p)
        .nth(nth)
        .unwrap_or_default()
}

/// The partition (of `n`) a message published with routing key `key` belongs in.
fn partition_of_key(key: &str, n: u16) -> u16 {
    u16::try_from(murmur3_x86_32(key.as_bytes(), SEED) % u32::from(n)).unwrap_or(u16::MAX)
}

/// Small paging sizes: a few messages make a paged backlog and a purge in slices.
fn paging() -> Paging {
    Paging {
        durable: (4, 1 << 20),
        refill_below: 2,
        page_messages: 2,
        page_bytes: 1 << 20,
        discard_slice: 4,
        ..Paging::DEFAULT
    }
}

fn body(id: u32) -> Bytes {
    let mut b = format!("m{id:05}:").into_bytes();
    b.resize(24 + (id as usize * 29) % 90, b'a' + (id % 26) as u8);
    Bytes::from(b)
}

fn id_of(body: &[u8]) -> u32 {
    body.get(1..6)
        .and_then(|digits| std::str::from_utf8(digits).ok())
        .and_then(|digits| digits.parse().ok())
        .unwrap_or(u32::MAX)
}

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

fn delayed_by(ms: u64) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        "x-delay".into(),
        AMQPValue::LongLongInt(i64::try_from(ms).unwrap_or(i64::MAX)),
    );
    persistent().with_headers(headers)
}

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (key, value) in entries {
        t.insert((*key).into(), value.clone());
    }
    t
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}

/// Whether a message's ack (or purge) was made, and made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Settled {
    /// Not settled.
    #[default]
    No,
    /// Purged, but the purge may not have reached its log record yet (paged messages
    /// leave the log a slice per wake-up).
    Purging,
    /// Settled in the log, not yet synced.
    Pending,
    /// Settled and synced by a later round.
    Durable,
}

/// One message in one queue, as the workload knows it.
#[derive(Debug, Default)]
struct MessageCopy {
    /// Its log record was written (for a moved copy: the move is known to be taken).
    written: bool,
    /// A round after the write reported its queue durable.
    confirmed: bool,
    settled: Settled,
    /// It was dead-lettered (or came due in a delayed exchange) towards these queues: it
    /// may be there instead, or in both places (moves are at least once).
    moved_to: BTreeSet<String>,
    /// It came by a move: at least once, so it may arrive more than once.
    arrived: bool,
    /// The partition of a partitioned queue it belongs in (its key's hash), whose log's
    /// sync makes it durable; 0 in a plain queue.
    partition: u16,
}

/// A durable definition (exchange, queue, binding) as the workload knows it.
#[derive(Debug, Default, Clone, Copy)]
struct Definition {
    /// Its declaration succeeded and a later round synced the definitions.
    durable: bool,
    /// Its deletion was asked for: it may be gone.
    deleting: bool,
    /// And a later round synced the definitions: it must be gone.
    deleted: bool,
}

/// What the workload was told, to check a crash's leftovers against.
#[derive(Debug, Default)]
struct Ledger {
    /// By (queue, message id).
    copies: BTreeMap<(String, u32), MessageCopy>,
    /// By key ("exchange e", "queue q", "binding e q key").
    definitions: BTreeMap<String, Definition>,
    /// The partition count of each partitioned queue, as declared.
    partitions: BTreeMap<String, u16>,
    /// How far the workload's clock was moved ahead of the wall clock.
    skew: u64,
    /// The workload ran to its end.
    finished: bool,
}

impl Ledger {
    fn declared(&mut self, key: String) {
        self.definitions.insert(key, Definition::default());
    }

    fn deleting(&mut self, key: &str) {
        if let Some(def) = self.definitions.get_mut(key) {
            def.deleting = true;
        }
    }

    /// Notes that queue `name` is being deleted, and with it its bindings.
    fn queue_deleting(&mut self, name: &str) {
        self.deleting(&format!("queue {name}"));
        let bindings: Vec<String> = self
            .definitions
            .keys()
            .filter(|k| k.starts_with("binding ") && k.split(' ').nth(2) == Some(name))
            .cloned()
            .collect();
        for binding in bindings {
            self.deleting(&binding);
        }
    }

    fn copy(&mut self, queue: &str, id: u32) -> &mut MessageCopy {
        self.copies.entry((queue.to_owned(), id)).or_default()
    }

    /// Notes the moves `effects` are about to carry out. `taken` says whether a move
    /// along a route reaches its target now (the workload knows its bindings).
    fn moving(&mut self, effects: &Effects, taken: impl Fn(&MoveRoute) -> Option<&'static str>) {
        for moved in &effects.moves {
            let (target, reached) = match taken(&moved.route) {
                Some(target) => (target, true),
                None => ("dead", false),
            };
            let source = moved.source.name().to_string();
            for letter in &moved.letters {
                let id = id_of(letter.message.body());
                if letter.position.is_some() {
                    self.copy(&source, id).moved_to.insert(target.to_owned());
                }
                let arrived = self.copy(target, id);
                arrived.arrived = true;
                arrived.written |= reached;
            }
        }
    }
}

/// A running broker: the store and the one vhost.
struct Node {
    vhost: Arc<VHost>,
    store: Arc<BrokerStore>,
}

/// Starts a broker on `fs`: opens the store, restores the vhost, removes orphan logs.
/// `policies` is the policy file in force, if any.
fn boot(fs: &SimFs, policies: Option<&str>) -> Result<(Node, Definitions), String> {
    let (mut store, defs, _) =
        BrokerStore::open_in(fs.shared(), Path::new(DATA), None).map_err(|e| e.to_string())?;
    store.set_segment_size(SEGMENT);
    store.set_manual_rounds();
    let store = Arc::new(store);
    let timers = Timers::start().map_err(|e| e.to_string())?;
    // Nothing may run behind the test's back: it wakes queues itself.
    timers.stop();
    let policies = match policies {
        Some(json) => {
            Policies::from_json(json, Path::new("policies.json")).map_err(|e| e.to_string())?
        }
        None => Policies::default(),
    };
    let vhost = VHost::new(
        "/",
        Some(store.clone()),
        Arc::new(timers),
        Arc::new(parking_lot::RwLock::new(policies)),
    );
    vhost.restore(&defs).map_err(|e| e.to_string())?;
    store.remove_orphans();
    Ok((Node { vhost, store }, defs))
}

/// The run stopped: the simulated process died.
#[derive(Debug)]
struct Crashed;

type Step = Result<(), Crashed>;

/// The workload against one broker, recording what it was told in the ledger.
struct Run {
    sim: SimFs,
    node: Option<Node>,
    ledger: Ledger,
    next_id: u32,
    /// Deliveries taken with `basic.get` and not yet settled, by queue.
    taken: Vec<(String, QueuedMessage)>,
    /// The dead-letter exchange of the quorum queue exists and is bound.
    late_bound: bool,
    /// The thread's clock skew while the run lasts.
    skew: Option<ClockSkew>,
}

impl Run {
    fn vhost(&self) -> Result<Arc<VHost>, Crashed> {
        self.node.as_ref().map(|n| n.vhost.clone()).ok_or(Crashed)
    }

    /// Fails once the process is dead; a failure before that is a bug in the broker or
    /// the workload.
    fn alive<T, E: std::fmt::Display>(
        &self,
        what: &str,
        result: Result<T, E>,
    ) -> Result<T, Crashed> {
        match result {
            Ok(value) if !self.sim.crashed() => Ok(value),
            Ok(_) => Err(Crashed),
            Err(_) if self.sim.crashed() => Err(Crashed),
            Err(e) => panic!("{what} failed with no crash: {e}"),
        }
    }

    fn declare_exchange(&mut self, name: &str, kind: &str, arguments: FieldTable) -> Step {
        let Ok(Some((kind, delayed))) = parse_declared_type(kind, &arguments) else {
            panic!("exchange type {kind}");
        };
        let settings = ExchangeSettings {
            kind,
            durable: true,
            auto_delete: false,
            internal: false,
            delayed,
            arguments,
        };
        let declared = self.vhost()?.declare_exchange(name, false, settings);
        self.alive("exchange.declare", declared)?;
        self.ledger.declared(format!("exchange {name}"));
        Ok(())
    }

    fn delete_exchange(&mut self, name: &str) -> Step {
        let key = format!("exchange {name}");
        self.ledger.deleting(&key);
        let bindings: Vec<String> = self
            .ledger
            .definitions
            .keys()
            .filter(|k| k.starts_with(&format!("binding {name} ")))
            .cloned()
            .collect();
        for binding in bindings {
            self.ledger.deleting(&binding);
        }
        let deleted = self.vhost()?.delete_exchange(name, false);
        self.alive("exchange.delete", deleted)
    }

    fn declare_queue(&mut self, name: &str, arguments: FieldTable) -> Step {
        let declare = QueueDeclare {
            name: name.into(),
            server_named: false,
            passive: false,
            durable: true,
            exclusive: false,
            auto_delete: false,
            arguments,
        };
        let declared = self.vhost()?.declare_queue(declare, CONN);
        self.alive("queue.declare", declared)?;
        self.ledger.declared(format!("queue {name}"));
        Ok(())
    }

    fn delete_queue(&mut self, name: &str) -> Step {
        self.ledger.queue_deleting(name);
        self.taken.retain(|(queue, _)| queue != name);
        let deleted = self.vhost()?.delete_queue(name, CONN, false, false);
        self.alive("queue.delete", deleted).map(|_| ())
    }

    fn bind(&mut self, queue: &str, exchange: &str, key: &str) -> Step {
        let bound = self
            .vhost()?
            .bind(queue, exchange, key, FieldTable::default(), CONN);
        self.alive("queue.bind", bound)?;
        self.ledger
            .declared(format!("binding {exchange} {queue} {key}"));
        Ok(())
    }

    /// Where a move along `route` ends up now, if anywhere.
    fn target(late_bound: bool, route: &MoveRoute) -> Option<&'static str> {
        match route {
            MoveRoute::Delayed { .. } => Some("orders"),
            MoveRoute::DeadLetter { exchange, .. } if exchange == "dlx" => Some("dead"),
            MoveRoute::DeadLetter { exchange, .. } if exchange == "late" && late_bound => {
                Some("dead")
            }
            MoveRoute::DeadLetter { .. } => None,
        }
    }

    /// Carries out what queue operations left to do, as the connection has the vhost do.
    fn carry(&mut self, effects: Effects) -> Step {
        let late_bound = self.late_bound;
        self.ledger
            .moving(&effects, |route| Self::target(late_bound, route));
        for queue in &effects.expired {
            self.ledger.queue_deleting(queue.name());
        }
        self.vhost()?.apply(effects);
        self.alive("moving messages", Ok::<(), String>(()))
    }

    /// Publishes `count` persistent messages to `exchange` with `key`.
    fn publish(
        &mut self,
        exchange: &str,
        key: &str,
        properties: &BasicProperties,
        count: u32,
    ) -> Step {
        let vhost = self.vhost()?;
        let properties = encode_properties(properties);
        for _ in 0..count {
            let id = self.next_id;
            self.next_id += 1;
            let message = Message::new(exchange, key, &properties, body(id));
            let handling = Handling::of(&message);
            let mut routed = Routed::default();
            let route = vhost.route(&message, &[], &mut routed);
            self.alive("routing", route)?;
            let mut effects = Effects::default();
            for queue in routed.queues.drain(..) {
                let name = queue.name().to_string();
                let partition = self
                    .ledger
                    .partitions
                    .get(&name)
                    .map_or(0, |&n| partition_of_key(key, n));
                // Recorded first: a write cut short by the crash may have landed.
                self.ledger.copy(&name, id).partition = partition;
                let enqueued = queue.publish(message.clone(), handling, &mut effects);
                match self.alive("basic.publish", enqueued)? {
                    Enqueued::Logged(p) => {
                        assert_eq!(
                            p, partition,
                            "message {id} to {name} with key {key}: logged in partition {p}, \
                             its key hashes to {partition}"
                        );
                        self.ledger.copy(&name, id).written = true;
                    }
                    Enqueued::Rejected => {
                        self.ledger.copies.remove(&(name, id));
                    }
                    Enqueued::Memory => panic!("a persistent message not logged by {name}"),
                }
            }
            self.carry(effects)?;
        }
        Ok(())
    }

    /// Takes `count` messages from `queue` with `basic.get` (acks expected).
    fn get(&mut self, queue: &str, count: usize) -> Step {
        let q = self.vhost()?.queue(queue, CONN);
        let q = self.alive("queue lookup", q)?;
        for _ in 0..count {
            let mut effects = Effects::default();
            let got = q.get(false, &mut effects);
            self.carry(effects)?;
            let (message, _) = got.unwrap_or_else(|| panic!("{queue} is empty"));
            self.taken.push((queue.to_owned(), message));
        }
        Ok(())
    }

    /// Consumes from `queue` with a prefetch of `prefetch`, then cancels: what was
    /// delivered stays unacked with the channel.
    fn consume(&mut self, queue: &str, prefetch: u32) -> Step {
        let q = self.vhost()?.queue(queue, CONN);
        let q = self.alive("queue lookup", q)?;
        let mailbox = Arc::new(Mailbox::default());
        let consumer = ConsumerHandle {
            id: 1,
            channel: 1,
            exclusive: false,
            credit: Arc::new(Credit::new(prefetch, None)),
            mailbox: mailbox.clone(),
            no_ack: false,
            priority: 0,
        };
        let mut effects = Effects::default();
        let added = q.add_consumer(consumer, &mut effects);
        self.alive("basic.consume", added)?;
        self.carry(effects)?;
        q.remove_consumer(1);
        let mut delivered = Vec::new();
        mailbox.drain_into(&mut delivered);
        assert_eq!(
            delivered.len(),
            prefetch as usize,
            "deliveries from {queue}"
        );
        for item in delivered {
            if let Outgoing::Deliver { message, .. } = item {
                self.taken.push((queue.to_owned(), message));
            }
        }
        Ok(())
    }

    /// Takes the first `count` deliveries taken from `queue`.
    fn take_delivered(&mut self, queue: &str, count: usize) -> Vec<QueuedMessage> {
        let mut out = Vec::new();
        self.taken.retain(|(q, m)| {
            if q == queue && out.len() < count {
                out.push(m.clone());
                false
            } else {
                true
            }
        });
        assert_eq!(out.len(), count, "{count} deliveries of {queue} to settle");
        out
    }

    fn ack(&mut self, queue: &str, count: usize) -> Step {
        let messages = self.take_delivered(queue, count);
        for m in &messages {
            // Recorded first: an ack cut short by the crash may have taken effect.
            self.ledger.copy(queue, id_of(m.message.body())).settled = Settled::Pending;
        }
        let q = self.vhost()?.queue(queue, CONN);
        self.alive("queue lookup", q)?.settle(messages);
        self.alive("basic.ack", Ok::<(), String>(()))
    }

    fn reject(&mut self, queue: &str, count: usize) -> Step {
        let messages = self.take_delivered(queue, count);
        let q = self.vhost()?.queue(queue, CONN);
        let mut effects = Effects::default();
        self.alive("queue lookup", q)?
            .reject(messages, &mut effects);
        self.carry(effects)
    }

    /// Purges `queue`, then wakes it until the purge has left its log (a slice per
    /// wake-up, as its clock would).
    fn purge(&mut self, queue: &str) -> Step {
        let taken: BTreeSet<u32> = self
            .taken
            .iter()
            .filter(|(q, _)| q == queue)
            .map(|(_, m)| id_of(m.message.body()))
            .collect();
        let mut purged = 0;
        for ((q, id), copy) in &mut self.ledger.copies {
            if q == queue
                && copy.settled == Settled::No
                && copy.moved_to.is_empty()
                && !taken.contains(id)
            {
                copy.settled = Settled::Purging;
                purged += 1;
            }
        }
        let q = self.vhost()?.queue(queue, CONN);
        let q = self.alive("queue lookup", q)?;
        q.purge();
        self.alive("queue.purge", Ok::<(), String>(()))?;
        // Each wake-up takes at least one message off the log.
        for _ in 0..=purged {
            self.wake(queue)?;
        }
        for ((q, _), copy) in &mut self.ledger.copies {
            if q == queue && copy.settled == Settled::Purging {
                copy.settled = Settled::Pending;
            }
        }
        Ok(())
    }

    /// Does what `queue`'s clock does when it wakes it.
    fn wake(&mut self, queue: &str) -> Step {
        let vhost = self.vhost()?;
        let q = match vhost.queue(queue, CONN) {
            Ok(q) => q,
            // A delayed exchange's hold is not in the registry.
            Err(_) => vhost
                .exchange(queue.trim_start_matches(names::delayed_hold("").as_str()))
                .ok()
                .and_then(|e| e.hold().cloned())
                .unwrap_or_else(|| panic!("no queue {queue}")),
        };
        let mut effects = Effects::default();
        q.wake(now_ms(), &mut effects);
        self.alive("a queue's wake-up", Ok::<(), String>(()))?;
        self.carry(effects)
    }

    /// One group-commit round over every logged queue (a partitioned queue's partitions
    /// that have a log, as at shutdown); records what it made durable: a message is
    /// confirmed, an ack made durable, when the round synced its partition.
    fn round(&mut self) -> Step {
        let node = self.node.as_ref().ok_or(Crashed)?;
        let mut queues = node.vhost.logged_queues();
        queues.sort_by(|a, b| a.name().cmp(b.name()));
        let targets: Vec<Arc<dyn SyncTarget>> =
            queues.iter().flat_map(Queue::sync_targets).collect();
        let outcome = node.store.commit_now(&targets);
        for queue in &queues {
            for ((q, _), copy) in &mut self.ledger.copies {
                if q.as_str() != &**queue.name()
                    || !outcome.durable(&queue.sync_target(copy.partition))
                {
                    continue;
                }
                copy.confirmed |= copy.written;
                if copy.settled == Settled::Pending {
                    copy.settled = Settled::Durable;
                }
            }
        }
        if outcome.definitions_ok() {
            for def in self.ledger.definitions.values_mut() {
                def.durable = true;
                def.deleted |= def.deleting;
            }
        }
        self.alive("a commit round", Ok::<(), String>(()))
    }

    /// Moves the clock `ms` ahead: messages whose TTL or delay runs out by then are due
    /// to move, and may be found in their target (or both places) from now on.
    fn jump(&mut self, ms: u64) {
        self.ledger.skew += ms;
        let due: Vec<(String, u32, &'static str)> = self
            .ledger
            .copies
            .iter()
            .filter(|(_, c)| c.settled == Settled::No && c.moved_to.is_empty())
            .filter_map(|((q, id), _)| {
                let target = match q.as_str() {
                    "ttl" => "dead",
                    q if q == names::delayed_hold("delayed") => "orders",
                    _ => return None,
                };
                Some((q.clone(), *id, target))
            })
            .collect();
        for (queue, id, target) in due {
            self.ledger
                .copy(&queue, id)
                .moved_to
                .insert(target.to_owned());
            self.ledger.copy(target, id).arrived = true;
        }
        self.skew = None;
        self.skew = Some(skew_clock_for_tests(self.ledger.skew));
    }

    /// Stops the broker as a shutdown does (the purges finished, two rounds: the second
    /// makes durable the source acks of what the first moved) but without handing back
    /// unacked deliveries, as if killed right after, and starts it again.
    fn restart(&mut self) -> Step {
        let node = self.node.as_ref().ok_or(Crashed)?;
        for queue in node.vhost.logged_queues() {
            queue.finish_purge();
        }
        for copy in self.ledger.copies.values_mut() {
            if copy.settled == Settled::Purging {
                copy.settled = Settled::Pending;
            }
        }
        self.round()?;
        self.round()?;
        self.taken.clear();
        self.node = None;
        let booted = boot(&self.sim, Some(CHANGED_POLICY));
        let (node, _) = self.alive("restart", booted)?;
        // Partition counts come back from the definitions, whatever the policy says now.
        for (name, &n) in &self.ledger.partitions {
            if let Ok(queue) = node.vhost.queue(name, CONN) {
                assert_eq!(
                    queue.partitions(),
                    Some(n),
                    "{name}'s partitions after a restart"
                );
            }
        }
        self.node = Some(node);
        // Restore dead-lettered what expired while the broker was down.
        let expired: Vec<u32> = self
            .ledger
            .copies
            .iter()
            .filter(|((q, _), c)| q == "ttl" && c.moved_to.contains("dead"))
            .map(|((_, id), _)| *id)
            .collect();
        for id in expired {
            self.ledger.copy("dead", id).written = true;
        }
        Ok(())
    }

    fn workload(&mut self) -> Step {
        let hold = names::delayed_hold("delayed");
        let dlx = |exchange: &str| ("x-dead-letter-exchange", text(exchange));
        // Definitions.
        self.declare_exchange("dlx", "fanout", FieldTable::default())?;
        self.declare_exchange("work", "direct", FieldTable::default())?;
        self.declare_exchange(
            "delayed",
            "x-delayed-message",
            table(&[("x-delayed-type", text("direct"))]),
        )?;
        self.declare_queue("dead", FieldTable::default())?;
        self.declare_queue("orders", table(&[dlx("dlx")]))?;
        self.declare_queue("audit", FieldTable::default())?;
        self.declare_queue(
            "ttl",
            table(&[
                dlx("dlx"),
                ("x-message-ttl", AMQPValue::LongLongInt(HOUR as i64)),
            ]),
        )?;
        self.declare_queue(
            "limited",
            table(&[
                dlx("dlx"),
                ("x-max-length", AMQPValue::LongLongInt(2)),
                ("x-overflow", text("reject-publish-dlx")),
            ]),
        )?;
        self.declare_queue(
            "quorum",
            table(&[
                ("x-queue-type", text("quorum")),
                dlx("late"),
                ("x-overflow", text("reject-publish")),
                ("x-dead-letter-strategy", text("at-least-once")),
            ]),
        )?;
        self.bind("dead", "dlx", "")?;
        self.bind("orders", "work", "o")?;
        self.bind("audit", "work", "o")?;
        self.bind("ttl", "work", "t")?;
        self.bind("limited", "work", "l")?;
        self.bind("quorum", "work", "q")?;
        self.bind("orders", "delayed", "o")?;
        self.declare_queue(
            "idle",
            table(&[("x-expires", AMQPValue::LongLongInt(HOUR as i64))]),
        )?;
        self.bind("idle", "work", "i")?;
        // Partitioned queues, fed through a fanout exchange so that the routing key is
        // only the partition key: one declared with four partitions here, one given two
        // by a policy (in force at this first boot only) below.
        self.declare_exchange("keyed", "fanout", FieldTable::default())?;
        // Recorded first: a declaration cut short by the crash may have been stored.
        self.ledger.partitions.insert("parts".into(), PARTS);
        self.declare_queue(
            "parts",
            table(&[
                dlx("dlx"),
                ("x-partitions", AMQPValue::LongLongInt(i64::from(PARTS))),
            ]),
        )?;
        self.bind("parts", "keyed", "")?;
        self.round()?;

        // Confirmed publishes: to two queues at once, to a TTL queue, past a length
        // limit (the third is refused and dead-lettered), to the quorum queue, and
        // delayed.
        self.publish("work", "o", &persistent(), 6)?;
        self.round()?;
        self.publish("work", "t", &persistent(), 3)?;
        self.publish("work", "l", &persistent(), 3)?;
        self.publish("work", "q", &persistent(), 2)?;
        self.publish("delayed", "o", &delayed_by(HOUR), 2)?;
        self.publish("work", "i", &persistent(), 2)?;
        self.round()?;
        self.publish("work", "o", &persistent(), 6)?;
        self.round()?;

        // Keyed publishes: partitions 0 (past its memory window: some are paged) and 1
        // first, then the first message of partition 2 (its log made then) among more
        // for partition 0. No key ever hashes to the last partition. The queue the
        // policy partitions is declared just before: its partitions' logs are made
        // before its definition is durable.
        self.ledger
            .partitions
            .insert("bypolicy".into(), POLICY_PARTS);
        self.declare_queue("bypolicy", FieldTable::default())?;
        self.bind("bypolicy", "keyed", "")?;
        self.publish("keyed", &key_for(0, 0), &persistent(), 6)?;
        self.publish("keyed", &key_for(1, 0), &persistent(), 2)?;
        self.round()?;
        self.publish("keyed", &key_for(2, 0), &persistent(), 1)?;
        self.publish("keyed", &key_for(0, 1), &persistent(), 1)?;
        self.round()?;
        // A member of the group takes three and leaves; it acks two, the third is
        // rejected to the dead-letter exchange; another is taken with basic.get and
        // left unacked over the restart.
        self.consume("parts", 3)?;
        self.ack("parts", 2)?;
        self.reject("parts", 1)?;
        self.round()?;
        self.get("parts", 1)?;
        self.publish("keyed", &key_for(1, 1), &persistent(), 1)?;
        self.round()?;

        // Consume: acks, a rejection dead-lettered, a rejection retained (the quorum
        // queue's dead-letter exchange does not exist yet).
        self.get("orders", 3)?;
        self.ack("orders", 2)?;
        self.reject("orders", 1)?;
        self.round()?;
        self.get("quorum", 1)?;
        self.reject("quorum", 1)?;
        self.round()?;
        // A transaction's store effect: its publishes and acks, then one round.
        self.get("audit", 2)?;
        self.publish("work", "o", &persistent(), 2)?;
        self.ack("audit", 2)?;
        self.round()?;

        // Time passes: the delayed messages come due, the retained dead letter is tried
        // again now that its exchange exists, an unused queue expires; the TTL queue is
        // left for the restart.
        self.declare_exchange("late", "fanout", FieldTable::default())?;
        self.bind("dead", "late", "")?;
        self.late_bound = true;
        self.round()?;
        self.jump(2 * HOUR);
        self.wake(&hold)?;
        self.wake("quorum")?;
        // Unused for longer than its `x-expires`: deleted.
        self.wake("idle")?;
        self.round()?;
        self.round()?;

        // A restart, which finds the TTL queue's messages expired (and the policy that
        // partitioned `bypolicy` changed).
        self.restart()?;
        self.round()?;
        self.round()?;
        // Keyed publishes after the restart go on after what it recovered; the queue
        // partitioned by the changed policy keeps its partitions, then is deleted with
        // the logs of both.
        self.publish("keyed", &key_for(2, 1), &persistent(), 2)?;
        self.get("parts", 1)?;
        self.ack("parts", 1)?;
        self.round()?;
        self.delete_queue("bypolicy")?;
        self.round()?;

        // A purge of a paged backlog, in slices; acks of dead letters; deletions.
        self.get("orders", 1)?;
        self.purge("orders")?;
        self.round()?;
        self.consume("dead", 3)?;
        self.ack("dead", 2)?;
        self.ack("orders", 1)?;
        self.round()?;
        self.delete_queue("audit")?;
        self.delete_exchange("late")?;
        self.round()?;
        self.publish("work", "o", &persistent(), 3)?;
        self.round()?;

        // Another restart, over the removed logs of deleted queues; the broker goes on.
        self.restart()?;
        self.get("orders", 2)?;
        self.ack("orders", 1)?;
        self.publish("work", "l", &persistent(), 1)?;
        self.round()?;
        self.ledger.finished = true;
        Ok(())
    }
}

/// Runs the workload on a fresh file system, crashing at `crash` (point, torn write) if
/// given. Returns the file system, the ledger, and how many crash points it passed.
fn run(crash: Option<(u64, bool)>) -> (SimFs, Ledger, u64) {
    let _paging = paging().set_for_tests();
    let sim = SimFs::new();
    sim.mkdir_durable(Path::new(DATA));
    let base = sim.ops();
    if let Some((k, torn)) = crash {
        sim.crash_at(base + k, torn);
    }
    let mut run = Run {
        sim: sim.clone(),
        node: None,
        ledger: Ledger::default(),
        next_id: 0,
        taken: Vec::new(),
        late_bound: false,
        skew: None,
    };
    if let Ok((node, _)) = boot(&sim, Some(POLICY)) {
        run.node = Some(node);
        let _ = run.workload();
    }
    run.node = None;
    let ops = sim.ops() - base;
    (sim, run.ledger, ops)
}

/// Restarts the broker on what a crash left and checks it against the ledger; panics
/// with `context` on a violation. Returns how many messages the queues held.
///
/// The rules: the broker starts; a definition whose declaration was synced is there
/// unless its deletion was asked for, one whose deletion was synced is not; every
/// message found was put there by the workload, once (a moved one may arrive more than
/// once); one whose ack or purge was synced comes back only flagged redelivered; a
/// confirmed message not settled is in its queue (unless the queue is gone), or, if it
/// was moved, in its queue or its target or both. In a partitioned queue, a message is
/// in the partition its key hashes to, after every message published before it there;
/// the queue has the partitions it was declared with, and a log directory only for
/// those that were ever given a message.
fn check(fs: &SimFs, ledger: &Ledger, context: &str) -> usize {
    let _paging = paging().set_for_tests();
    let _skew = skew_clock_for_tests(ledger.skew);
    let (node, defs) =
        boot(fs, None).unwrap_or_else(|e| panic!("{context}: the broker must start: {e}"));
    for (key, def) in &ledger.definitions {
        let mut words = key.split(' ');
        let present = match (words.next(), words.next(), words.next(), words.next()) {
            (Some("exchange"), Some(name), None, None) => {
                defs.exchanges.iter().any(|e| e.name == name)
            }
            (Some("queue"), Some(name), None, None) => defs.queues.iter().any(|q| q.name == name),
            (Some("binding"), Some(source), Some(queue), Some(routing_key)) => {
                defs.bindings.iter().any(|b| {
                    b.source == source && b.destination == queue && b.routing_key == routing_key
                })
            }
            _ => panic!("ledger key {key}"),
        };
        if def.deleted {
            assert!(!present, "{context}: {key} was deleted, and that synced");
        } else if def.durable && !def.deleting {
            assert!(
                present,
                "{context}: {key} was declared and synced, and is gone"
            );
        }
    }

    check_partition_logs(fs, ledger, &defs, context);

    // Every message in every queue, by (queue, id): whether each copy came redelivered.
    let queues = node.vhost.logged_queues();
    let names: BTreeSet<String> = queues.iter().map(|q| q.name().to_string()).collect();
    for queue in &queues {
        let wanted = ledger.partitions.get(&**queue.name()).copied();
        assert_eq!(
            queue.partitions(),
            wanted,
            "{context}: {} has the wrong partition count",
            queue.name()
        );
    }
    // What a partitioned queue counts, recovered partition by partition, before `get`.
    let counted: BTreeMap<String, u32> = queues
        .iter()
        .filter(|q| q.partitions().is_some())
        .map(|q| (q.name().to_string(), q.message_count()))
        .collect();
    let mut found: BTreeMap<(String, u32), Vec<bool>> = BTreeMap::new();
    // A partitioned queue's messages by (queue, partition), in the order `get` gave them.
    let mut order: BTreeMap<(String, u16), Vec<u32>> = BTreeMap::new();
    loop {
        let mut any = false;
        for queue in &queues {
            loop {
                let mut effects = Effects::default();
                let got = queue.get(false, &mut effects);
                node.vhost.apply(effects);
                let Some((message, _)) = got else {
                    break;
                };
                any = true;
                let (name, id) = (queue.name().to_string(), id_of(message.message.body()));
                if ledger.partitions.contains_key(&name) {
                    if let Some(copy) = ledger.copies.get(&(name.clone(), id)) {
                        assert_eq!(
                            message.partition, copy.partition,
                            "{context}: message {id} of {name} came back in partition {}, \
                             its key hashes to {}",
                            message.partition, copy.partition
                        );
                    }
                    order
                        .entry((name.clone(), message.partition))
                        .or_default()
                        .push(id);
                }
                found
                    .entry((name, id))
                    .or_default()
                    .push(message.redelivered);
            }
        }
        if !any {
            break;
        }
    }

    for (queue, &count) in &counted {
        let got = found
            .iter()
            .filter(|((q, _), _)| q == queue)
            .map(|(_, flags)| flags.len())
            .sum::<usize>();
        assert_eq!(
            count as usize, got,
            "{context}: {queue} counted {count} messages at start, and gave {got}"
        );
    }
    for ((queue, p), ids) in &order {
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "{context}: partition {p} of {queue} gave its messages out of publish order: {ids:?}"
        );
    }
    for ((queue, id), flags) in &found {
        let copy = ledger
            .copies
            .get(&(queue.clone(), *id))
            .unwrap_or_else(|| panic!("{context}: message {id} in {queue} came from nowhere"));
        assert!(
            flags.len() == 1 || copy.arrived,
            "{context}: message {id} is {} times in {queue}",
            flags.len()
        );
        if copy.settled == Settled::Durable {
            assert!(
                flags.iter().all(|&redelivered| redelivered),
                "{context}: message {id} of {queue} was acked and synced, and came back unflagged"
            );
        }
    }
    for ((queue, id), copy) in &ledger.copies {
        if !copy.confirmed || copy.settled != Settled::No || !names.contains(queue) {
            continue;
        }
        let here = found.contains_key(&(queue.clone(), *id));
        let moved = copy.moved_to.iter().any(|target| {
            found.contains_key(&(target.clone(), *id))
                || !names.contains(target)
                || ledger
                    .copies
                    .get(&(target.clone(), *id))
                    .is_some_and(|c| c.settled != Settled::No)
        });
        assert!(
            here || moved,
            "{context}: confirmed message {id} of {queue} is lost (moved to {:?})",
            copy.moved_to
        );
    }
    found.values().map(Vec::len).sum()
}

/// Checks the partitions' log directories a restart left (orphans removed): each is
/// that of a partition past the first (which uses the queue's own) of a live queue;
/// every partitioned queue has its declared count stored, and none has a
/// directory for a partition no message was ever routed to.
fn check_partition_logs(fs: &SimFs, ledger: &Ledger, defs: &Definitions, context: &str) {
    for (name, &n) in &ledger.partitions {
        if let Some(def) = defs.queues.iter().find(|q| &q.name == name) {
            assert_eq!(
                def.partitions,
                Some(n),
                "{context}: {name}'s stored partition count"
            );
        }
    }
    let dir = Path::new(DATA).join("queues");
    let entries = fs
        .shared()
        .read_dir(&dir)
        .unwrap_or_else(|e| panic!("{context}: cannot list {}: {e}", dir.display()));
    for entry in entries {
        let entry = entry.to_string_lossy().into_owned();
        // A queue's own log may be one restore just made (a delayed exchange's hold),
        // not in the definitions it read: only partitions' logs are checked.
        let Some((id, p)) = entry.rsplit_once(".p") else {
            continue;
        };
        let def = defs
            .queues
            .iter()
            .find(|q| q.id == id)
            .unwrap_or_else(|| panic!("{context}: log directory {entry} of no queue"));
        let p: u16 = p
            .parse()
            .unwrap_or_else(|_| panic!("{context}: log directory {entry}"));
        assert!(
            p >= 1 && def.partitions.is_some_and(|n| p < n),
            "{context}: log directory {entry} is no partition of {} ({:?} partitions)",
            def.name,
            def.partitions
        );
        assert!(
            !(def.name == "parts" && p == UNUSED),
            "{context}: a log directory for partition {p} of parts, which no key hashes to"
        );
    }
}

#[test]
fn a_crash_at_every_io_point_of_a_broker_workload_loses_nothing_confirmed() {
    let started = std::time::Instant::now();
    let (sim, ledger, ops) = run(None);
    assert!(!sim.crashed());
    assert!(ledger.finished, "the workload runs to its end");
    let confirmed = |queue: &str| {
        ledger
            .copies
            .iter()
            .filter(|((q, _), c)| q == queue && c.confirmed)
            .count()
    };
    for queue in [
        "orders", "ttl", "limited", "quorum", "idle", "parts", "bypolicy",
    ] {
        assert!(confirmed(queue) > 0, "messages confirmed into {queue}");
    }
    // Every partition of `parts` but the unused one was given confirmed messages.
    for p in (0..PARTS).filter(|&p| p != UNUSED) {
        assert!(
            ledger
                .copies
                .iter()
                .any(|((q, _), c)| q == "parts" && c.partition == p && c.confirmed),
            "messages confirmed into partition {p} of parts"
        );
    }
    // Every kind of move reached its target durably: rejected, retained then retried,
    // expired at the restart, delayed and come due; and refused by a full queue.
    let hold = names::delayed_hold("delayed");
    for source in ["orders", "quorum", "ttl", "parts", hold.as_str()] {
        let moved = ledger.copies.iter().any(|((q, id), c)| {
            q == source
                && c.moved_to.iter().any(|target| {
                    ledger
                        .copies
                        .get(&(target.clone(), *id))
                        .is_some_and(|t| t.confirmed)
                })
        });
        assert!(moved, "a message of {source} moved durably");
    }
    assert!(confirmed("dead") >= 5, "dead letters confirmed");
    for key in [
        "queue audit",
        "queue idle",
        "queue bypolicy",
        "exchange late",
    ] {
        assert!(ledger.definitions[key].deleted, "{key} deleted");
    }
    let held = check(&sim.power_loss(PowerLoss::ProcessKill), &ledger, "no crash");
    let live = ledger
        .copies
        .iter()
        .filter(|((q, _), c)| {
            c.confirmed
                && c.settled == Settled::No
                && c.moved_to.is_empty()
                && ledger
                    .definitions
                    .get(&format!("queue {q}"))
                    .is_none_or(|d| !d.deleted)
        })
        .count();
    assert!(
        held >= live && live >= 8,
        "{held} messages found, {live} expected"
    );
    check(
        &sim.power_loss(PowerLoss::DropUnsynced),
        &ledger,
        "power loss, no crash",
    );
    let modes = [
        (false, PowerLoss::DropUnsynced),
        (true, PowerLoss::DropUnsynced),
        (true, PowerLoss::ProcessKill),
        (true, PowerLoss::MetadataOnly),
    ];
    let mut walked = 0;
    for k in 0..ops {
        for (torn, mode) in modes {
            let (sim, ledger, _) = run(Some((k, torn)));
            assert!(sim.crashed(), "crash point {k} not reached");
            let at = sim.trace().last().cloned().unwrap_or_default();
            check(
                &sim.power_loss(mode),
                &ledger,
                &format!("crash at {at} (torn: {torn}, {mode:?})"),
            );
            walked += 1;
        }
    }
    eprintln!(
        "walked {ops} crash points, {walked} crashes, in {:?}",
        started.elapsed()
    );
}

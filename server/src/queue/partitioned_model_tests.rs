//! Model-based tests of a partitioned queue (`x-partitions`, issue 13) and its consumer
//! group.
//!
//! Random sequences of operations (keyed and keyless publishes, members joining with a
//! prefetch and a priority, cancelling, closing their channel, acking, rejecting with
//! and without requeue, `basic.get` and its ack or return) run against a real
//! in-memory partitioned queue and against [`Model`]: N FIFOs, and [`group::assign`]
//! as the oracle of who owns which partition. After every step they are compared:
//!
//! - every delivery and get comes from the partition its key hashes to (keyless ones
//!   round robin), is the head of that partition's FIFO (so first deliveries of a key
//!   keep publish order, and returns go back to their place; with K = 2 owners per
//!   partition, which gives up order, it need only be ready there), and carries the
//!   right `redelivered` flag;
//! - a delivery goes only to an owner of the partition in the oracle's assignment; with
//!   one consumer per partition (K = 1) never while anyone else (another consumer's
//!   channel, or a `basic.get`) still holds an unacked message of that partition, so a
//!   partition's unacked messages have one holder at a time; with K = 2 the owners share
//!   it at once;
//! - no partition stalls: once an owner it may be delivered to has credit, its ready
//!   messages are delivered;
//! - message and consumer counts.
//!
//! At the end every channel closes and `basic.get` must give back exactly the messages
//! left. `PROPTEST_CASES` raises the number of cases (default [`DEFAULT_CASES`]).

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use super::arguments::QueueArguments;
use super::group::{self, Candidate};
use super::partition_key::{SEED, murmur3_x86_32};
use super::{ConsumerHandle, ConsumerId, Credit, Effects, Mailbox, Membership, Outgoing, Queue};
use crate::message::{Handling, Message, QueuedMessage};

/// Cases per property unless `PROPTEST_CASES` says otherwise.
const DEFAULT_CASES: u32 = 128;
/// Distinct keys publishes use: enough that every partition of 4 gets some.
const KEYS: u8 = 8;

#[derive(Debug, Clone, Copy)]
enum Op {
    /// A publish with routing key `k<key>` through an exchange: hashed.
    PublishKey { key: u8 },
    /// A publish through the default exchange: no key, round robin.
    PublishKeyless,
    /// A consumer joins the group on a channel of its own, with an `x-priority`: only
    /// the members at the highest one are active, the rest stand by.
    Join { prefetch: u32, priority: i32 },
    /// `basic.cancel` of a consumer: its unacked deliveries stay with its channel.
    Cancel { at: usize },
    /// Its channel closes: the consumer leaves, then its unacked deliveries go back.
    CloseChannel { at: usize },
    /// Acks the `n` oldest unacked deliveries of a channel.
    Ack { at: usize, n: usize },
    /// Rejects the oldest unacked delivery of a channel: back in place, or dropped (the
    /// queue has no dead-letter exchange).
    Reject { at: usize, requeue: bool },
    /// `basic.get` (acks expected) on a channel of its own.
    Get,
    /// Acks the oldest message taken with `basic.get`.
    AckGet,
    /// Returns (`basic.reject`, requeue) the oldest message taken with `basic.get`.
    ReturnGet,
}

/// A consumer's channel, in the model.
#[derive(Debug)]
struct Channel {
    consumer: ConsumerId,
    prefetch: u32,
    priority: i32,
    /// Still a member of the group (not cancelled nor closed).
    member: bool,
    /// Join order, as the queue's group numbers its members.
    seq: u64,
    /// Deliveries not yet settled, oldest first: (message, partition).
    unacked: Vec<(u64, u16)>,
}

/// Who holds a partition's unacked messages: a consumer's channel, or the `basic.get`
/// channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Holder {
    Consumer(ConsumerId),
    Get,
}

/// What the partitioned queue promises.
#[derive(Debug)]
struct Model {
    n: u16,
    /// `x-consumers-per-partition`.
    k: u16,
    /// Each partition's ready messages, by publish order (returns go back in place).
    ready: Vec<BTreeSet<u64>>,
    /// Messages delivered (or got) at least once: their next delivery is redelivered.
    delivered: BTreeSet<u64>,
    channels: Vec<Channel>,
    /// Taken with `basic.get`, oldest first: (message, partition).
    got: Vec<(u64, u16)>,
    /// The assignment in force: each partition's owners, as [`group::assign`] gives it.
    owners: Vec<Vec<ConsumerId>>,
    next_id: u64,
    next_keyless: u32,
    next_seq: u64,
}

impl Model {
    fn new(n: u16, k: u16) -> Self {
        Self {
            n,
            k,
            ready: vec![BTreeSet::new(); usize::from(n)],
            delivered: BTreeSet::new(),
            channels: Vec::new(),
            got: Vec::new(),
            owners: vec![Vec::new(); usize::from(n)],
            next_id: 0,
            next_keyless: 0,
            next_seq: 0,
        }
    }

    fn partition_of_key(&self, key: &str) -> u16 {
        u16::try_from(murmur3_x86_32(key.as_bytes(), SEED) % u32::from(self.n)).unwrap_or(0)
    }

    /// Unacked messages per partition, wherever they are held.
    fn unacked(&self) -> Vec<u32> {
        let mut unacked = vec![0u32; usize::from(self.n)];
        let held = self.channels.iter().flat_map(|c| c.unacked.iter());
        for &(_, p) in held.chain(self.got.iter()) {
            unacked[usize::from(p)] += 1;
        }
        unacked
    }

    /// Who holds unacked messages of partition `p`.
    fn holders(&self, p: u16) -> BTreeSet<Holder> {
        let mut holders: BTreeSet<Holder> = self
            .channels
            .iter()
            .filter(|c| c.unacked.iter().any(|&(_, q)| q == p))
            .map(|c| Holder::Consumer(c.consumer))
            .collect();
        if self.got.iter().any(|&(_, q)| q == p) {
            holders.insert(Holder::Get);
        }
        holders
    }

    /// The oracle: assigns the partitions afresh after a join or a leave.
    fn rebalance(&mut self) {
        let candidates: Vec<Candidate> = self
            .channels
            .iter()
            .filter(|c| c.member)
            .map(|c| Candidate {
                consumer: c.consumer,
                seq: c.seq,
                priority: c.priority,
            })
            .collect();
        let assignment = group::assign(
            self.n,
            self.k,
            &BTreeSet::new(),
            &candidates,
            &self.owners,
            &self.unacked(),
        );
        self.owners = assignment.owners;
    }

    /// The consumers partition `p` may be delivered to now: its owners in the
    /// assignment; with one owner per partition, only once nobody else holds its
    /// unacked messages.
    fn deliverers(&self, p: u16) -> Vec<ConsumerId> {
        let owners = &self.owners[usize::from(p)];
        if self.k > 1 {
            return owners.clone();
        }
        let [owner] = owners[..] else {
            return Vec::new();
        };
        let others = self
            .holders(p)
            .into_iter()
            .any(|h| h != Holder::Consumer(owner));
        if others { Vec::new() } else { vec![owner] }
    }

    fn ready_count(&self) -> usize {
        self.ready.iter().map(BTreeSet::len).sum()
    }

    fn channel(&mut self, consumer: ConsumerId) -> &mut Channel {
        self.channels
            .iter_mut()
            .find(|c| c.consumer == consumer)
            .expect("a channel of the model")
    }
}

/// A consumer as its connection sees it.
struct Client {
    consumer: ConsumerId,
    credit: Arc<Credit>,
    mailbox: Arc<Mailbox>,
    /// Unacked deliveries, oldest first.
    unacked: Vec<QueuedMessage>,
}

struct Harness {
    queue: Arc<Queue>,
    model: Model,
    clients: Vec<Client>,
    got: Vec<QueuedMessage>,
}

fn fail(what: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(what.to_string())
}

fn body(id: u64) -> Bytes {
    Bytes::from(format!("{id:08}"))
}

fn id_of(message: &QueuedMessage) -> u64 {
    std::str::from_utf8(message.message.body())
        .ok()
        .and_then(|digits| digits.parse().ok())
        .unwrap_or(u64::MAX)
}

impl Harness {
    fn new(n: u16, k: u16) -> Self {
        let queue = super::partitioned_tests::queue_with(QueueArguments {
            partitions: Some(n),
            consumers_per_partition: Some(k),
            ..QueueArguments::default()
        });
        Self {
            queue,
            model: Model::new(n, k),
            clients: Vec::new(),
            got: Vec::new(),
        }
    }

    fn apply(&mut self, op: Op) -> Result<(), TestCaseError> {
        let mut effects = Effects::default();
        match op {
            Op::PublishKey { key } => {
                let key = format!("k{key}");
                let p = self.model.partition_of_key(&key);
                self.publish(Message::new("x", &key, b"", body(self.model.next_id)), p)?;
            }
            Op::PublishKeyless => {
                let p =
                    u16::try_from(self.model.next_keyless % u32::from(self.model.n)).unwrap_or(0);
                self.model.next_keyless += 1;
                self.publish(Message::new("", "pq", b"", body(self.model.next_id)), p)?;
            }
            Op::Join { prefetch, priority } => {
                let consumer = ConsumerId::try_from(self.clients.len() + 1).unwrap_or(0);
                let client = Client {
                    consumer,
                    credit: Arc::new(Credit::new(prefetch, None)),
                    mailbox: Arc::new(Mailbox::default()),
                    unacked: Vec::new(),
                };
                let handle = ConsumerHandle {
                    id: consumer,
                    channel: 1,
                    exclusive: false,
                    credit: client.credit.clone(),
                    mailbox: client.mailbox.clone(),
                    no_ack: false,
                    priority,
                };
                self.clients.push(client);
                self.model.channels.push(Channel {
                    consumer,
                    prefetch,
                    priority,
                    member: true,
                    seq: self.model.next_seq,
                    unacked: Vec::new(),
                });
                self.model.next_seq += 1;
                self.model.rebalance();
                self.queue
                    .add_member(handle, &Membership::default(), &mut effects)
                    .map_err(|e| fail(format!("join: {e:?}")))?;
            }
            Op::Cancel { at } => {
                let Some(consumer) = self.member_at(at) else {
                    return Ok(());
                };
                self.leave(consumer, false)?;
            }
            Op::CloseChannel { at } => {
                let Some(at) = (!self.clients.is_empty()).then(|| at % self.clients.len()) else {
                    return Ok(());
                };
                let consumer = self.clients[at].consumer;
                if self.model.channel(consumer).member {
                    self.leave(consumer, true)?;
                }
                let returned = std::mem::take(&mut self.clients[at].unacked);
                let channel = self.model.channel(consumer);
                let back = std::mem::take(&mut channel.unacked);
                for (id, p) in back {
                    self.model.ready[usize::from(p)].insert(id);
                }
                self.queue.requeue(returned, &mut effects);
            }
            Op::Ack { at, n } => {
                let Some(at) = (!self.clients.is_empty()).then(|| at % self.clients.len()) else {
                    return Ok(());
                };
                let client = &mut self.clients[at];
                let n = n.min(client.unacked.len());
                let acked: Vec<QueuedMessage> = client.unacked.drain(..n).collect();
                let credit = client.credit.clone();
                self.model.channel(client.consumer).unacked.drain(..n);
                self.queue.settle(acked);
                credit.release(u32::try_from(n).unwrap_or(u32::MAX));
            }
            Op::Reject { at, requeue } => {
                let Some(at) = (!self.clients.is_empty()).then(|| at % self.clients.len()) else {
                    return Ok(());
                };
                let client = &mut self.clients[at];
                if client.unacked.is_empty() {
                    return Ok(());
                }
                let message = client.unacked.remove(0);
                let credit = client.credit.clone();
                let (id, p) = self.model.channel(client.consumer).unacked.remove(0);
                if requeue {
                    self.model.ready[usize::from(p)].insert(id);
                    self.queue.requeue([message], &mut effects);
                } else {
                    self.queue.reject([message], &mut effects);
                }
                credit.release(1);
            }
            Op::Get => {
                let got = self.queue.get(false, &mut effects);
                self.check_get(got)?;
            }
            Op::AckGet => {
                if !self.got.is_empty() {
                    self.model.got.remove(0);
                    self.queue.settle([self.got.remove(0)]);
                }
            }
            Op::ReturnGet => {
                if !self.got.is_empty() {
                    let (id, p) = self.model.got.remove(0);
                    self.model.ready[usize::from(p)].insert(id);
                    self.queue.requeue([self.got.remove(0)], &mut effects);
                }
            }
        }
        // As a channel does after a settlement, a return or a consume.
        self.queue.kick(&mut effects);
        self.take_deliveries()?;
        self.check()
    }

    fn publish(&mut self, message: Message, p: u16) -> Result<(), TestCaseError> {
        let id = self.model.next_id;
        self.model.next_id += 1;
        self.model.ready[usize::from(p)].insert(id);
        let mut effects = Effects::default();
        self.queue
            .publish(message, Handling::default(), &mut effects)
            .map_err(|e| fail(format!("publish: {e}")))?;
        self.take_deliveries()
    }

    /// The consumer of the `at`-th (modulo) channel still a member, if any.
    fn member_at(&self, at: usize) -> Option<ConsumerId> {
        let members: Vec<ConsumerId> = self
            .model
            .channels
            .iter()
            .filter(|c| c.member)
            .map(|c| c.consumer)
            .collect();
        (!members.is_empty()).then(|| members[at % members.len()])
    }

    /// The consumer leaves the group: cancelled, or its channel `closed` (as the channel
    /// tells the queue; no member here is static, so both are a leave).
    fn leave(&mut self, consumer: ConsumerId, closed: bool) -> Result<(), TestCaseError> {
        self.model.channel(consumer).member = false;
        self.model.rebalance();
        if closed {
            self.queue.close_consumer(consumer);
        } else {
            self.queue.remove_consumer(consumer);
        }
        // A delivery made before the cancel may still be in the mailbox.
        self.take_deliveries()
    }

    /// Takes what each consumer was handed, as its connection writes it, checking each
    /// delivery against the model.
    fn take_deliveries(&mut self) -> Result<(), TestCaseError> {
        for at in 0..self.clients.len() {
            let mut items = Vec::new();
            self.clients[at].mailbox.drain_into(&mut items);
            let consumer = self.clients[at].consumer;
            for item in items {
                let Outgoing::Deliver { message, .. } = item else {
                    continue;
                };
                let _ = self.clients[at].credit.written();
                let (id, p) = self.take(&message, Holder::Consumer(consumer))?;
                let deliverers = self.model.deliverers(p);
                if !deliverers.contains(&consumer) {
                    return Err(fail(format!(
                        "message {id} of partition {p} delivered to consumer {consumer}; \
                         it may go to {deliverers:?} (owners {:?}, holders {:?})",
                        self.model.owners,
                        self.model.holders(p)
                    )));
                }
                let channel = self.model.channel(consumer);
                if !channel.member {
                    return Err(fail(format!(
                        "message {id} delivered to consumer {consumer}, which left"
                    )));
                }
                let held = u32::try_from(channel.unacked.len()).unwrap_or(u32::MAX);
                if held >= channel.prefetch {
                    return Err(fail(format!(
                        "consumer {consumer} got message {id} beyond its prefetch {}",
                        channel.prefetch
                    )));
                }
                channel.unacked.push((id, p));
                self.clients[at].unacked.push(message);
            }
        }
        Ok(())
    }

    /// Checks that `message` is the head of its partition in the model, with the right
    /// flag, and takes it out of the ready FIFO.
    fn take(&mut self, message: &QueuedMessage, by: Holder) -> Result<(u64, u16), TestCaseError> {
        let id = id_of(message);
        let p = message.partition;
        let Some(ready) = self.model.ready.get_mut(usize::from(p)) else {
            return Err(fail(format!(
                "message {id} from partition {p} of {}",
                self.model.n
            )));
        };
        let head = ready.first().copied();
        // With several owners per partition, order within it is given up (and the
        // mailboxes of two owners do not tell which delivery came first): the message
        // need only be ready there.
        let in_order = head == Some(id) || (self.model.k > 1 && ready.contains(&id));
        if !in_order {
            let home = (0..self.model.n).find(|&q| self.model.ready[usize::from(q)].contains(&id));
            return Err(fail(format!(
                "{by:?} got message {id} from partition {p}; its head is {head:?} \
                 (the message is ready in partition {home:?})"
            )));
        }
        ready.remove(&id);
        let redelivered = !self.model.delivered.insert(id);
        if message.redelivered != redelivered {
            return Err(fail(format!(
                "message {id} came with redelivered {}, expected {redelivered}",
                message.redelivered
            )));
        }
        let others: Vec<Holder> = self
            .model
            .holders(p)
            .into_iter()
            .filter(|&h| h != by)
            .collect();
        let shared = self.model.k > 1;
        if !others.is_empty() && !shared {
            return Err(fail(format!(
                "{by:?} got message {id} of partition {p} while {others:?} hold its unacked \
                 messages"
            )));
        }
        Ok((id, p))
    }

    fn check_get(&mut self, got: Option<(QueuedMessage, u32)>) -> Result<(), TestCaseError> {
        // `basic.get` serves the partitions nobody owns, and with one owner per
        // partition only those whose unacked messages no consumer holds (they drain).
        let open: Vec<u16> = (0..self.model.n)
            .filter(|&p| {
                self.model.owners[usize::from(p)].is_empty()
                    && (self.model.k > 1 || self.model.holders(p).iter().all(|&h| h == Holder::Get))
                    && !self.model.ready[usize::from(p)].is_empty()
            })
            .collect();
        match got {
            None if open.is_empty() => Ok(()),
            None => Err(fail(format!(
                "basic.get found nothing; partitions {open:?} are free and hold messages"
            ))),
            Some((message, _)) => {
                if !open.contains(&message.partition) {
                    return Err(fail(format!(
                        "basic.get served partition {}, not free (free: {open:?})",
                        message.partition
                    )));
                }
                let (id, p) = self.take(&message, Holder::Get)?;
                self.model.got.push((id, p));
                self.got.push(message);
                Ok(())
            }
        }
    }

    fn check(&self) -> Result<(), TestCaseError> {
        let ready = u32::try_from(self.model.ready_count()).unwrap_or(u32::MAX);
        if self.queue.message_count() != ready {
            return Err(fail(format!(
                "message count {}, model {ready}",
                self.queue.message_count()
            )));
        }
        let members = self.model.channels.iter().filter(|c| c.member).count();
        if self.queue.consumer_count() as usize != members {
            return Err(fail(format!(
                "consumer count {}, model {members}",
                self.queue.consumer_count()
            )));
        }
        // No partition waits for nothing: none of its deliverers has credit left.
        for p in 0..self.model.n {
            if self.model.ready[usize::from(p)].is_empty() {
                continue;
            }
            for owner in self.model.deliverers(p) {
                let channel = self
                    .model
                    .channels
                    .iter()
                    .find(|c| c.consumer == owner)
                    .ok_or_else(|| fail("an owner without a channel"))?;
                if (channel.unacked.len() as u64) < u64::from(channel.prefetch) {
                    return Err(fail(format!(
                        "partition {p} stalls: {} ready, its owner {owner} has credit \
                         and may be delivered to",
                        self.model.ready[usize::from(p)].len()
                    )));
                }
            }
        }
        Ok(())
    }

    /// Closes every channel, returns what `basic.get` holds, and takes everything left
    /// with `basic.get`: exactly the model's ready messages.
    fn finish(&mut self) -> Result<(), TestCaseError> {
        for at in 0..self.clients.len() {
            self.apply(Op::CloseChannel { at })?;
        }
        while !self.got.is_empty() {
            self.apply(Op::ReturnGet)?;
        }
        let left = self.model.ready_count();
        for _ in 0..left {
            self.apply(Op::Get)?;
        }
        if self.got.len() != left || self.queue.message_count() != 0 {
            return Err(fail(format!(
                "{} of {left} messages got back, {} still counted",
                self.got.len(),
                self.queue.message_count()
            )));
        }
        Ok(())
    }
}

fn run(n: u16, k: u16, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut harness = Harness::new(n, k);
    for (step, &op) in ops.iter().enumerate() {
        harness
            .apply(op)
            .map_err(|e| fail(format!("step {step} ({op:?}): {e}")))?;
    }
    harness
        .finish()
        .map_err(|e| fail(format!("draining at the end: {e}")))
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..KEYS).prop_map(|key| Op::PublishKey { key }),
        1 => Just(Op::PublishKeyless),
        3 => (1u32..4, prop::sample::select(vec![0, 0, 0, 1, 2]))
            .prop_map(|(prefetch, priority)| Op::Join { prefetch, priority }),
        2 => any::<usize>().prop_map(|at| Op::Cancel { at }),
        2 => any::<usize>().prop_map(|at| Op::CloseChannel { at }),
        6 => (any::<usize>(), 1usize..4).prop_map(|(at, n)| Op::Ack { at, n }),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(at, requeue)| Op::Reject { at, requeue }),
        2 => Just(Op::Get),
        1 => Just(Op::AckGet),
        1 => Just(Op::ReturnGet),
    ]
}

#[test]
fn partitioned_queue_agrees_with_the_model() {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (1u16..=4, 1u16..=2, prop::collection::vec(op(), 1..80));
    if let Err(error) = runner.run(&strategy, |(n, k, ops)| run(n, k, &ops)) {
        panic!("{error}");
    }
}

/// Runs a kept failure: it must pass now.
#[allow(dead_code)]
fn regression(n: u16, k: u16, ops: &[Op]) {
    if let Err(error) = run(n, k, ops) {
        panic!("{error}");
    }
}

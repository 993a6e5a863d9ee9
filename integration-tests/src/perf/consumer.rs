//! One consuming connection: one channel with one or more consumers on it, reading big
//! chunks, walking the deliveries in them in place (no allocation per message),
//! recording latency and identity, and acknowledging each chunk with one
//! `basic.ack multiple=true` (or one per delivery with `--ack-each`, or none with
//! `--no-ack`).
//!
//! Each consumer's tag names the slot of the queue it reads (`wp<slot>-…`), so that a
//! connection reading several queues knows where each delivery came from. The
//! consumers of one queue on a connection share a slot; on a stream every consumer has
//! a slot of its own, since each must receive every message. It stops once its queues
//! have received everything producers published to them (on a stream: once per
//! consumer), or when nothing arrives for the drain timeout after producers finished.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use amqp_codec::amq_protocol::protocol::{AMQPClass, basic};
use amqp_codec::amq_protocol::types::FieldTable;
use amqp_codec::encode;
use anyhow::{Context, Result, bail};
use bytes::BytesMut;
use hdrhistogram::Histogram;

use super::conn::{self, CHANNEL, Connection, Endpoint};
use super::cpu;
use super::latency::latency_histogram;
use super::seqset::SeqSet;
use super::shared::{NOT_YET_KNOWN, QueueProgress, Shared};
use super::stamp::{STAMP_LEN, Stamp};
use super::topology::Share;
use super::wire::{self, BASIC_DELIVER};

/// How often a waiting consumer wakes to check whether it is done.
const TICK: Duration = Duration::from_millis(100);

/// What one consuming connection does.
#[derive(Debug, Clone)]
pub struct ConsumerPlan {
    /// Consuming connection index.
    pub index: u16,
    /// The queues its consumers read, by slot: queue index and name. A queue read by
    /// several of its consumers has one slot, a stream one per consumer.
    pub queues: Vec<(usize, String)>,
    /// One entry per consumer on the channel: the slot of the queue it reads.
    pub consumers: Vec<usize>,
    /// Per slot, then per producer: which of that producer's messages the queue
    /// receives (`None`: none).
    pub shares: Vec<Vec<Option<Share>>>,
    /// `basic.qos` prefetch count, per consumer (ignored with `no_ack`).
    pub prefetch: u16,
    /// Automatic acknowledgement.
    pub no_ack: bool,
    /// One `basic.ack` per delivery instead of one per read.
    pub ack_each: bool,
    /// Arguments of every `basic.consume` (`x-stream-offset` on streams).
    pub arguments: FieldTable,
    /// Number of producers in the run.
    pub producers: usize,
    /// How long to wait without progress once producers are done.
    pub drain_timeout: Duration,
}

/// What one consuming connection saw.
#[derive(Debug)]
pub struct ConsumerResult {
    /// Consuming connection index.
    pub index: u16,
    /// Per slot, the index of the queue read.
    pub queues: Vec<usize>,
    /// Deliveries received.
    pub consumed: u64,
    /// Body bytes received.
    pub bytes: u64,
    /// Per slot, then per producer: the messages received, numbered by their index in
    /// the producer's [`Share`] of that queue.
    pub seen: Vec<Vec<SeqSet>>,
    /// Deliveries of a message this consumer had already received.
    pub duplicates: u64,
    /// Deliveries not stamped by this run's producers.
    pub strays: u64,
    /// Deliveries flagged redelivered.
    pub redelivered: u64,
    /// End-to-end latency in nanoseconds.
    pub latency: Histogram<u64>,
    /// Clock time (ns) of the last delivery.
    pub last_delivery_nanos: u64,
    /// Gave up waiting for missing messages.
    pub timed_out: bool,
    /// CPU time of its thread.
    pub cpu: Option<Duration>,
}

/// Opens a consuming connection, sets prefetch and starts its consumers (pipelined:
/// one write for all the `basic.consume`s).
///
/// Returns once every consumer is confirmed, or once deliveries overtake the
/// remaining `consume-ok`s (a full queue); [`run`] then passes over the rest.
///
/// # Errors
/// Connection or broker failures (e.g. a missing queue).
pub fn connect(endpoint: &Endpoint, plan: &ConsumerPlan) -> Result<Connection> {
    let mut conn = Connection::open(endpoint, &format!("warren-perf consumer {}", plan.index))?;
    if !plan.no_ack {
        conn.call(AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: plan.prefetch,
            global: false,
        })))?;
    }
    let consumes: Vec<AMQPClass> = plan
        .consumers
        .iter()
        .enumerate()
        .map(|(k, &slot)| {
            AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                queue: plan.queues[slot].1.as_str().into(),
                consumer_tag: consumer_tag(slot, plan.index, k).into(),
                no_local: false,
                no_ack: plan.no_ack,
                exclusive: false,
                nowait: false,
                arguments: plan.arguments.clone(),
            }))
        })
        .collect();
    conn.send_many(&consumes)?;
    conn.take_replies(consumes.len(), |m| {
        matches!(m, AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_)))
    })?;
    Ok(conn)
}

/// The tag of consumer `k` of connection `index`, reading the queue in `slot`.
fn consumer_tag(slot: usize, index: u16, k: usize) -> String {
    format!("wp{slot}-{index}-{k}")
}

/// Finds the slot of a delivery's queue from its consumer tag.
#[derive(Debug, Clone, Copy)]
struct Slots {
    /// How many slots there are; with one, tags need not be read.
    count: usize,
}

impl Slots {
    /// The slot named by the consumer tag of a `basic.deliver` payload.
    fn of(self, deliver: &[u8]) -> Result<usize> {
        if self.count == 1 {
            return Ok(0);
        }
        let tag = wire::deliver_consumer_tag(deliver).context("malformed basic.deliver")?;
        let digits = tag.strip_prefix(b"wp").unwrap_or_default();
        let mut slot = 0usize;
        let mut any = false;
        for &b in digits.iter().take_while(|b| b.is_ascii_digit()) {
            slot = slot * 10 + usize::from(b - b'0');
            any = true;
        }
        if !any || slot >= self.count {
            bail!(
                "delivery for a consumer tag this connection did not set up: {:?}",
                String::from_utf8_lossy(tag)
            );
        }
        Ok(slot)
    }
}

/// Where the consumer is within one delivery's frames.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Between deliveries.
    Idle,
    /// After `basic.deliver`, waiting for the content header.
    Header {
        slot: usize,
        tag: u64,
        redelivered: bool,
    },
    /// Reading body frames.
    Body {
        slot: usize,
        tag: u64,
        redelivered: bool,
        size: u64,
        remaining: u64,
        stamp: Option<Stamp>,
    },
}

/// A delivery whose frames have all arrived.
struct Delivered {
    slot: usize,
    tag: u64,
    redelivered: bool,
    size: u64,
    stamp: Option<Stamp>,
}

/// Consumes until done; call on the consumer's own thread.
///
/// # Errors
/// Network failures, broker errors, and malformed deliveries.
pub fn run(
    mut conn: Connection,
    plan: &ConsumerPlan,
    shared: &Arc<Shared>,
) -> Result<ConsumerResult> {
    let cpu_start = cpu::thread_cpu();
    let mut tally = Tally::new(plan)?;
    let queues: Vec<&QueueProgress> = plan
        .queues
        .iter()
        .map(|(q, _)| &shared.queues[*q])
        .collect();
    let slots = Slots {
        count: plan.queues.len(),
    };
    let mut received: Vec<u64> = vec![0; queues.len()];
    conn.stream.set_read_timeout(Some(TICK))?;
    let mut out = BytesMut::with_capacity(64 * 1024);
    let mut phase = Phase::Idle;
    let mut acker = Acker::new(plan);
    let mut stop = StopRule::new(plan.drain_timeout);
    let mut last_write = Instant::now();
    let mut issued: Vec<u64> = vec![0; plan.producers];
    loop {
        let now_nanos = shared.clock.now_nanos();
        let mut batch = 0u64;
        while let Some((frame, used)) = wire::split_frame(conn.rbuf.data(), conn.frame_max)? {
            let done = step(&mut phase, frame, slots)?;
            conn.rbuf.consume(used);
            if let Some(d) = done {
                batch += 1;
                received[d.slot] += 1;
                acker.delivered(d.tag);
                tally.record(&d, now_nanos, shared, &mut issued);
            }
        }
        acker.encode(&mut out);
        if let Some(interval) = conn.heartbeat {
            if out.is_empty() && last_write.elapsed() >= interval / 2 {
                encode::heartbeat(&mut out);
            }
        }
        if !out.is_empty() {
            conn.stream.write_all(&out).context("writing acks")?;
            out.clear();
            last_write = Instant::now();
        }
        if batch > 0 {
            shared.consumed.fetch_add(batch, Ordering::Relaxed);
            for (queue, n) in queues.iter().zip(&mut received) {
                if *n > 0 {
                    queue.received.fetch_add(*n, Ordering::AcqRel);
                    *n = 0;
                }
            }
        }
        match stop.check(batch > 0, &queues) {
            Some(Stop::Done) => break,
            Some(Stop::GaveUp) => {
                tally.timed_out = true;
                break;
            }
            None if shared.aborted() => break,
            None => {}
        }
        match conn.rbuf.fill(&mut conn.stream, conn.frame_max as usize) {
            Ok(0) => bail!("consumer {}: the broker closed the connection", plan.index),
            Ok(_) => {}
            Err(e) if conn::is_timeout(&e) => {}
            Err(e) => return Err(e).context("reading deliveries"),
        }
    }
    // Everything is counted by now: a failed goodbye does not change the results.
    let _ = conn.close(Duration::from_secs(5));
    let cpu = cpu::thread_cpu()
        .zip(cpu_start)
        .map(|(end, start)| end - start);
    Ok(tally.finish(plan, cpu))
}

/// The acknowledgements a consumer owes the broker.
#[derive(Debug)]
struct Acker {
    /// Automatic acknowledgement: nothing to send.
    auto: bool,
    /// One `basic.ack` per delivery instead of one `multiple` ack per read.
    each: bool,
    /// Tags delivered and not acked yet (with `each`).
    pending: Vec<u64>,
    /// Highest tag delivered.
    last_tag: u64,
    /// Highest tag acked.
    acked_tag: u64,
}

impl Acker {
    fn new(plan: &ConsumerPlan) -> Self {
        Self {
            auto: plan.no_ack,
            each: plan.ack_each,
            pending: Vec::new(),
            last_tag: 0,
            acked_tag: 0,
        }
    }

    fn delivered(&mut self, tag: u64) {
        self.last_tag = tag;
        if self.each && !self.auto {
            self.pending.push(tag);
        }
    }

    /// Appends the acks owed for everything delivered so far.
    fn encode(&mut self, out: &mut BytesMut) {
        if self.auto || self.last_tag <= self.acked_tag {
            return;
        }
        if self.each {
            for tag in self.pending.drain(..) {
                encode::ack(out, CHANNEL, tag, false);
            }
        } else {
            encode::ack(out, CHANNEL, self.last_tag, true);
        }
        self.acked_tag = self.last_tag;
    }
}

/// Why a consumer stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Its queues received everything producers sent them.
    Done,
    /// Producers are done, and nothing arrived for the drain timeout.
    GaveUp,
}

/// When a consumer stops: once its queues have everything, or once nothing has
/// arrived for the drain timeout after producers finished.
#[derive(Debug)]
struct StopRule {
    drain_timeout: Duration,
    /// Last delivery, or when producers were seen to finish, whichever is later.
    last_progress: Option<Instant>,
}

impl StopRule {
    fn new(drain_timeout: Duration) -> Self {
        Self {
            drain_timeout,
            last_progress: None,
        }
    }

    /// Checks after a read that brought deliveries (`progress`) or none.
    fn check(&mut self, progress: bool, queues: &[&QueueProgress]) -> Option<Stop> {
        let mut done = true;
        for queue in queues {
            let expected = queue.expected.load(Ordering::Acquire);
            if expected == NOT_YET_KNOWN {
                return None;
            }
            done &= queue.received.load(Ordering::Acquire) >= expected;
        }
        if done {
            return Some(Stop::Done);
        }
        let last = self.last_progress.get_or_insert_with(Instant::now);
        if progress {
            *last = Instant::now();
        }
        (last.elapsed() > self.drain_timeout).then_some(Stop::GaveUp)
    }
}

/// Advances the delivery state machine by one frame; returns a delivery once complete.
/// Other methods (late `consume-ok`s among them) pass; closes and cancels are errors.
fn step(phase: &mut Phase, frame: wire::RawFrame<'_>, slots: Slots) -> Result<Option<Delivered>> {
    match (frame.kind, *phase) {
        (wire::METHOD, Phase::Idle) if wire::method_ids(frame.payload) == Some(BASIC_DELIVER) => {
            let (tag, redelivered) =
                wire::deliver_fields(frame.payload).context("malformed basic.deliver")?;
            let slot = slots.of(frame.payload)?;
            *phase = Phase::Header {
                slot,
                tag,
                redelivered,
            };
            Ok(None)
        }
        (wire::METHOD, Phase::Idle) => {
            let method = wire::parse_other(frame.payload)?;
            if let Some(reason) = wire::close_reason(&method) {
                bail!(reason);
            }
            if let AMQPClass::Basic(basic::AMQPMethod::Cancel(_)) = method {
                bail!("the broker cancelled the consumer (queue deleted?)");
            }
            Ok(None)
        }
        (
            wire::HEADER,
            Phase::Header {
                slot,
                tag,
                redelivered,
            },
        ) => {
            let (size, properties) =
                wire::header_fields(frame.payload).context("malformed content header")?;
            let stamp = if size < STAMP_LEN as u64 {
                Stamp::read_properties(properties)
            } else {
                None
            };
            if size == 0 {
                *phase = Phase::Idle;
                return Ok(Some(Delivered {
                    slot,
                    tag,
                    redelivered,
                    size,
                    stamp,
                }));
            }
            *phase = Phase::Body {
                slot,
                tag,
                redelivered,
                size,
                remaining: size,
                stamp,
            };
            Ok(None)
        }
        (
            wire::BODY,
            Phase::Body {
                slot,
                tag,
                redelivered,
                size,
                remaining,
                stamp,
            },
        ) => {
            let len = frame.payload.len() as u64;
            if len > remaining {
                bail!("body frame runs past the announced body size");
            }
            let stamp = if remaining == size && size >= STAMP_LEN as u64 {
                Stamp::read_body(frame.payload)
            } else {
                stamp
            };
            let remaining = remaining - len;
            if remaining == 0 {
                *phase = Phase::Idle;
                return Ok(Some(Delivered {
                    slot,
                    tag,
                    redelivered,
                    size,
                    stamp,
                }));
            }
            *phase = Phase::Body {
                slot,
                tag,
                redelivered,
                size,
                remaining,
                stamp,
            };
            Ok(None)
        }
        (wire::HEARTBEAT, _) => Ok(None),
        (kind, phase) => bail!("unexpected frame type {kind} while in {phase:?}"),
    }
}

/// Running totals of one consuming connection.
struct Tally {
    consumed: u64,
    bytes: u64,
    seen: Vec<Vec<SeqSet>>,
    shares: Vec<Vec<Option<Share>>>,
    duplicates: u64,
    strays: u64,
    redelivered: u64,
    latency: Histogram<u64>,
    last_delivery_nanos: u64,
    timed_out: bool,
}

impl Tally {
    fn new(plan: &ConsumerPlan) -> Result<Self> {
        Ok(Self {
            consumed: 0,
            bytes: 0,
            seen: vec![vec![SeqSet::new(); plan.producers]; plan.queues.len()],
            shares: plan.shares.clone(),
            duplicates: 0,
            strays: 0,
            redelivered: 0,
            // Three significant digits, auto-resizing: no latency is out of range.
            latency: latency_histogram().context("creating a latency histogram")?,
            last_delivery_nanos: 0,
            timed_out: false,
        })
    }

    /// Counts a delivery; `issued` caches each producer's issued count.
    fn record(&mut self, d: &Delivered, now_nanos: u64, shared: &Shared, issued: &mut [u64]) {
        self.consumed += 1;
        self.bytes += d.size;
        self.last_delivery_nanos = now_nanos;
        self.redelivered += u64::from(d.redelivered);
        let Some(stamp) = d.stamp else {
            self.strays += 1;
            return;
        };
        let producer = usize::from(stamp.id.producer());
        let seq = stamp.id.seq();
        if stamp.id.nonce() != shared.nonce || producer >= issued.len() {
            self.strays += 1;
            return;
        }
        if seq >= issued[producer] {
            issued[producer] = shared.issued[producer].load(Ordering::Acquire);
            if seq >= issued[producer] {
                self.strays += 1;
                return;
            }
        }
        let share = self.shares[d.slot].get(producer).copied().flatten();
        let Some(index) = share.and_then(|s| s.index(seq)) else {
            // A message of this run, but not one routed to this queue.
            self.strays += 1;
            return;
        };
        if !self.seen[d.slot][producer].insert(index) {
            self.duplicates += 1;
        }
        self.latency
            .saturating_record(now_nanos.saturating_sub(stamp.sent_nanos).max(1));
    }

    fn finish(self, plan: &ConsumerPlan, cpu: Option<Duration>) -> ConsumerResult {
        ConsumerResult {
            index: plan.index,
            queues: plan.queues.iter().map(|(q, _)| *q).collect(),
            consumed: self.consumed,
            bytes: self.bytes,
            seen: self.seen,
            duplicates: self.duplicates,
            strays: self.strays,
            redelivered: self.redelivered,
            latency: self.latency,
            last_delivery_nanos: self.last_delivery_nanos,
            timed_out: self.timed_out,
            cpu,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::perf::stamp::MessageId;
    use crate::perf::wire::{BASIC_ACK, split_frame};

    fn plan(no_ack: bool, ack_each: bool) -> ConsumerPlan {
        ConsumerPlan {
            index: 0,
            queues: vec![(0, "q".into())],
            consumers: vec![0],
            shares: vec![vec![Some(Share {
                offset: 0,
                stride: 1,
            })]],
            prefetch: 10,
            no_ack,
            ack_each,
            arguments: FieldTable::default(),
            producers: 1,
            drain_timeout: Duration::from_secs(1),
        }
    }

    fn delivery(out: &mut BytesMut, tag: u64, body: &[u8], frame_max: u32) {
        encode::deliver(
            out,
            CHANNEL,
            "wp1-0-3",
            encode::DeliveryInfo {
                delivery_tag: tag,
                redelivered: tag == 2,
                exchange: "",
                routing_key: "q",
            },
        );
        encode::content(out, CHANNEL, &[0, 0], body, frame_max);
    }

    #[test]
    fn deliveries_are_assembled_across_frames() {
        let stamp = Stamp {
            sent_nanos: 11,
            id: MessageId::new(1, 0, 5),
        };
        let mut big = vec![0u8; 10_000];
        stamp.write_body(&mut big);
        let mut out = BytesMut::new();
        delivery(&mut out, 1, &big, 4096);
        delivery(&mut out, 2, &[], 4096);
        let mut phase = Phase::Idle;
        let mut done = Vec::new();
        let mut at = 0;
        while let Some((frame, used)) = split_frame(&out[at..], 4096).expect("valid") {
            at += used;
            if let Some(d) = step(&mut phase, frame, Slots { count: 2 }).expect("in order") {
                done.push((d.slot, d.tag, d.redelivered, d.size, d.stamp));
            }
        }
        assert_eq!(
            done,
            [(1, 1, false, 10_000, Some(stamp)), (1, 2, true, 0, None)]
        );
        let (frame, _) = split_frame(&out, 4096).expect("valid").expect("whole");
        let mut phase = Phase::Idle;
        step(&mut phase, frame, Slots { count: 1 }).expect("one slot: tag unread");
        assert!(matches!(phase, Phase::Header { slot: 0, .. }));
    }

    #[test]
    fn consumer_tags_name_their_slot() {
        let slot = |tag: &str, count: usize| {
            let mut out = BytesMut::new();
            encode::deliver(
                &mut out,
                CHANNEL,
                tag,
                encode::DeliveryInfo {
                    delivery_tag: 1,
                    redelivered: false,
                    exchange: "",
                    routing_key: "q",
                },
            );
            let (frame, _) = split_frame(&out, 0).expect("valid").expect("whole");
            Slots { count }.of(frame.payload).ok()
        };
        assert_eq!(slot(&consumer_tag(12, 3, 40), 13), Some(12));
        assert_eq!(slot(&consumer_tag(12, 3, 40), 12), None);
        assert_eq!(slot("amq.ctag-x", 2), None);
        assert_eq!(slot("amq.ctag-x", 1), Some(0));
    }

    #[test]
    fn out_of_order_frames_are_errors() {
        let mut out = BytesMut::new();
        encode::content(&mut out, CHANNEL, &[0, 0], b"x", 4096);
        let (frame, _) = split_frame(&out, 0).expect("valid").expect("whole");
        assert!(step(&mut Phase::Idle, frame, Slots { count: 1 }).is_err());
    }

    #[test]
    fn acks_per_read_each_or_none() {
        let acks = |no_ack, each| {
            let mut acker = Acker::new(&plan(no_ack, each));
            let mut out = BytesMut::new();
            for tag in 1..=3 {
                acker.delivered(tag);
            }
            acker.encode(&mut out);
            acker.encode(&mut out);
            let mut seen = Vec::new();
            let mut at = 0;
            while let Some((f, used)) = split_frame(&out[at..], 0).expect("valid") {
                assert_eq!(wire::method_ids(f.payload), Some(BASIC_ACK));
                seen.push(wire::confirm_fields(f.payload).expect("ack"));
                at += used;
            }
            seen
        };
        assert_eq!(acks(false, false), [(3, true)]);
        assert_eq!(acks(false, true), [(1, false), (2, false), (3, false)]);
        assert_eq!(acks(true, false), []);
    }

    #[test]
    fn stops_when_everything_arrived_or_nothing_comes() {
        let queue = QueueProgress {
            received: 0.into(),
            expected: NOT_YET_KNOWN.into(),
        };
        let other = QueueProgress {
            received: 1.into(),
            expected: 1.into(),
        };
        let queues = [&queue, &other];
        let mut rule = StopRule::new(Duration::from_millis(20));
        assert_eq!(rule.check(false, &queues), None);
        queue.expected.store(2, Ordering::Relaxed);
        assert_eq!(rule.check(false, &queues), None);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(rule.check(false, &queues), Some(Stop::GaveUp));
        queue.received.store(2, Ordering::Relaxed);
        assert_eq!(rule.check(false, &queues), Some(Stop::Done));
    }
}

//! One producer: a connection whose writer thread encodes batches of messages into one
//! buffer and flushes each with a single write, and whose reader thread takes in
//! publisher confirms, broker errors and the final `close-ok`.
//!
//! Publishing runs flat out, or at a fixed rate (sending whatever is due at each
//! wake-up), and with confirms never has more than the window unconfirmed.

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use amqp_codec::amq_protocol::protocol::{AMQPClass, basic, confirm, connection};
use amqp_codec::encode;
use anyhow::{Context, Result, anyhow, bail};
use bytes::BytesMut;

use super::confirms::ConfirmTracker;
use super::conn::{self, CHANNEL, Connection, Endpoint};
use super::cpu;
use super::message::MessageWriter;
use super::shared::Shared;
use super::stamp::{MessageId, Stamp};
use super::topology::Route;
use super::wire::{self, BASIC_ACK, BASIC_NACK};

/// Bytes a producer encodes before flushing them with one write.
const BATCH_BYTES: usize = 256 * 1024;
/// Messages per write at most.
const BATCH_MESSAGES: u64 = 4096;
/// Longest a waiting writer sleeps before re-checking its limits.
const TICK: Duration = Duration::from_millis(50);

/// What one producer does.
#[derive(Debug, Clone)]
pub struct ProducerPlan {
    /// Producer index (carried in message ids).
    pub index: u16,
    /// Exchange and routing key.
    pub route: Route,
    /// Body size in bytes.
    pub size: usize,
    /// delivery-mode 2.
    pub persistent: bool,
    /// Unconfirmed messages allowed (0: no confirms).
    pub confirm_window: u32,
    /// Messages to publish at most.
    pub count: u64,
    /// How long to publish at most.
    pub time_limit: Duration,
    /// Messages per second, if rate-limited.
    pub rate: Option<f64>,
    /// How long to wait without progress for outstanding confirms.
    pub drain_timeout: Duration,
}

/// What one producer did.
#[derive(Debug)]
pub struct ProducerResult {
    /// Producer index.
    pub index: u16,
    /// Messages written to the socket.
    pub published: u64,
    /// Confirms received, when confirms were on.
    pub confirms: Option<ConfirmTracker>,
    /// Time from the start gate to the last write.
    pub publish_time: Duration,
    /// CPU time of its writer and reader threads.
    pub cpu: Option<Duration>,
    /// Whether the broker blocked the connection (`connection.blocked`) at some point.
    pub was_blocked: bool,
}

/// Opens a producer's connection and, if confirms are on, selects confirm mode.
///
/// # Errors
/// Connection or broker failures.
pub fn connect(endpoint: &Endpoint, plan: &ProducerPlan) -> Result<Connection> {
    let mut conn = Connection::open(endpoint, &format!("warren-perf producer {}", plan.index))?;
    if plan.confirm_window > 0 {
        match conn.call(AMQPClass::Confirm(confirm::AMQPMethod::Select(
            confirm::Select { nowait: false },
        )))? {
            AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(_)) => {}
            other => bail!("expected confirm.select-ok, got {other:?}"),
        }
    }
    Ok(conn)
}

/// What the writer and reader threads share.
#[derive(Debug, Default)]
struct Link {
    /// Messages confirmed (acked or nacked) so far.
    resolved: AtomicU64,
    /// The reader hit an error (its text is in `error`).
    failed: AtomicBool,
    /// The writer has sent `connection.close` (EOF is then expected).
    closing: AtomicBool,
    /// The writer gave up: the reader should stop.
    abandoned: AtomicBool,
    /// The broker blocked the connection at some point.
    blocked: AtomicBool,
    error: Mutex<Option<String>>,
    /// How long to wait for `close-ok` while nothing moves. Until `close-ok` arrives
    /// the broker may not have read every publish (under flow control it stops
    /// reading), and dropping the socket earlier would lose them.
    close_patience: Duration,
}

impl Link {
    fn fail(&self, error: &anyhow::Error, writer: &Thread) {
        *self.error.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!("{error:#}"));
        self.failed.store(true, Ordering::Release);
        writer.unpark();
    }

    fn error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Publishes per `plan`, then waits for confirms and closes; call on the producer's own
/// thread when the run starts.
///
/// # Errors
/// Network failures and broker errors (channel or connection closed).
pub fn run(conn: Connection, plan: &ProducerPlan, shared: &Arc<Shared>) -> Result<ProducerResult> {
    let cpu_start = cpu::thread_cpu();
    let mut stream = conn.try_clone_stream()?;
    // Writes time out so that a broker that stops reading (flow control) cannot hold
    // the producer past its deadline.
    stream.set_write_timeout(Some(TICK))?;
    let frame_max = conn.frame_max;
    let heartbeat = conn.heartbeat;
    let link = Arc::new(Link {
        close_patience: plan.drain_timeout,
        ..Link::default()
    });
    let reader = {
        let link = Arc::clone(&link);
        let shared = Arc::clone(shared);
        let writer = thread::current();
        let index = usize::from(plan.index);
        let confirms = plan.confirm_window > 0;
        thread::Builder::new()
            .name(format!("producer-{index}-reader"))
            .spawn(move || {
                let cpu_start = cpu::thread_cpu();
                let result = read_loop(conn, &link, &shared, index, confirms, &writer);
                if let Err(e) = &result {
                    link.fail(e, &writer);
                }
                let cpu = cpu::thread_cpu()
                    .zip(cpu_start)
                    .map(|(end, start)| end - start);
                (result, cpu)
            })
            .context("spawning a reader thread")?
    };

    let mut writer = Writer {
        stream: &mut stream,
        out: BytesMut::with_capacity(BATCH_BYTES * 2),
        heartbeat,
        last_write: Instant::now(),
        patience: plan.drain_timeout,
        consumed: &shared.consumed,
    };
    let (published, publish_time, write_result) =
        publish(&mut writer, plan, shared, &link, frame_max);
    let drain_result = write_result.and_then(|()| {
        if plan.confirm_window > 0 {
            await_confirms(&mut writer, &link, published, plan.drain_timeout, shared)?;
        }
        link.closing.store(true, Ordering::Release);
        encode::method(&mut writer.out, 0, &conn::close_method());
        writer.flush()
    });
    if drain_result.is_err() {
        link.abandoned.store(true, Ordering::Release);
    }
    let (read_result, reader_cpu) = reader
        .join()
        .map_err(|_| anyhow!("producer {} reader thread panicked", plan.index))?;
    // The reader's error (e.g. the broker's close reason) explains a failed write best.
    if let Some(error) = link.error() {
        bail!("producer {}: {error}", plan.index);
    }
    drain_result.with_context(|| format!("producer {}", plan.index))?;
    let tracker = read_result?;
    let cpu = cpu::thread_cpu()
        .zip(cpu_start)
        .map(|(end, start)| end - start + reader_cpu.unwrap_or_default());
    Ok(ProducerResult {
        index: plan.index,
        published,
        confirms: (plan.confirm_window > 0).then_some(tracker),
        publish_time,
        cpu,
        was_blocked: link.blocked.load(Ordering::Relaxed),
    })
}

/// The writing half of a producer connection (its socket has a write timeout).
struct Writer<'a> {
    stream: &'a mut TcpStream,
    out: BytesMut,
    heartbeat: Option<Duration>,
    last_write: Instant,
    /// How long a write may make no progress before the broker is given up on.
    patience: Duration,
    /// Messages consumed in the run: while this moves, a broker that does not read
    /// (flow control) is busy, not stuck.
    consumed: &'a AtomicU64,
}

impl Writer<'_> {
    /// Writes all of `out`.
    fn flush(&mut self) -> Result<()> {
        let len = self.out.len();
        self.write_until(|_| len)?;
        self.out.clear();
        Ok(())
    }

    /// Writes a batch of messages of `message_len` bytes each. Once `stop` says so
    /// (deadline passed, run aborted) it finishes the message in progress and drops the
    /// rest. Returns how many messages were written.
    fn flush_batch(&mut self, message_len: usize, stop: impl Fn() -> bool) -> Result<u64> {
        let len = self.out.len();
        let message_len = message_len.max(1);
        let written = self.write_until(|written| {
            if stop() {
                written.div_ceil(message_len) * message_len
            } else {
                len
            }
        })?;
        self.out.clear();
        Ok((written / message_len) as u64)
    }

    /// Writes `out` up to the length `limit` gives (asked again after each partial
    /// write or write timeout, given the bytes written so far); returns the bytes
    /// written.
    fn write_until(&mut self, limit: impl Fn(usize) -> usize) -> Result<usize> {
        let mut end = self.out.len();
        let mut written = 0;
        let mut last_progress = (Instant::now(), self.consumed.load(Ordering::Relaxed));
        while written < end {
            match self.stream.write(&self.out[written..end]) {
                Ok(0) => bail!("the broker closed the connection"),
                Ok(n) => {
                    written += n;
                    last_progress.0 = Instant::now();
                    if written < end {
                        end = limit(written).clamp(written, end);
                    }
                }
                Err(e) if conn::is_timeout(&e) => {
                    end = limit(written).clamp(written, end);
                    let consumed = self.consumed.load(Ordering::Relaxed);
                    if consumed != last_progress.1 {
                        last_progress = (Instant::now(), consumed);
                    }
                    if last_progress.0.elapsed() > self.patience {
                        bail!(
                            "the broker read nothing and delivered nothing for {:?}",
                            self.patience
                        );
                    }
                }
                Err(e) => return Err(e).context("writing to the broker"),
            }
        }
        self.last_write = Instant::now();
        Ok(written)
    }

    /// Sends a heartbeat if nothing was written for half the interval.
    fn keep_alive(&mut self) -> Result<()> {
        if let Some(interval) = self.heartbeat {
            if self.last_write.elapsed() >= interval / 2 {
                encode::heartbeat(&mut self.out);
                self.flush()?;
            }
        }
        Ok(())
    }
}

/// The publishing loop: returns messages written, the time it took, and how it ended.
fn publish(
    writer: &mut Writer<'_>,
    plan: &ProducerPlan,
    shared: &Shared,
    link: &Link,
    frame_max: u32,
) -> (u64, Duration, Result<()>) {
    let index = usize::from(plan.index);
    // One writer per routing key, used in turn; all encode to the same length (queue
    // names share one width), so a byte count still tells how many messages went out.
    let mut messages: Vec<MessageWriter> = plan
        .route
        .routing_keys
        .iter()
        .map(|key| {
            MessageWriter::new(
                CHANNEL,
                &plan.route.exchange,
                key,
                plan.size,
                plan.persistent,
                frame_max,
            )
        })
        .collect();
    let Some(encoded_len) = messages.first().map(MessageWriter::encoded_len) else {
        return (
            0,
            Duration::ZERO,
            Err(anyhow!("producer {index} has no routing key")),
        );
    };
    if messages.iter().any(|m| m.encoded_len() != encoded_len) {
        let error = anyhow!("producer {index}: routing keys of different lengths");
        return (0, Duration::ZERO, Err(error));
    }
    let keys = messages.len() as u64;
    let batch_max = ((BATCH_BYTES / encoded_len) as u64).clamp(1, BATCH_MESSAGES);
    let window = u64::from(plan.confirm_window);
    let mut seq = 0u64;
    let start = Instant::now();
    let deadline = start + plan.time_limit;
    let result = loop {
        if seq >= plan.count || shared.aborted() || link.failed.load(Ordering::Acquire) {
            break Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            break Ok(());
        }
        let mut n = batch_max.min(plan.count - seq);
        let mut wait_until = None;
        if let Some(rate) = plan.rate {
            let due = ((now - start).as_secs_f64() * rate) as u64 + 1;
            if due <= seq {
                wait_until = Some(start + Duration::from_secs_f64(seq as f64 / rate));
            }
            n = n.min(due.saturating_sub(seq));
        }
        if window > 0 && wait_until.is_none() {
            let outstanding = seq - link.resolved.load(Ordering::Acquire);
            if outstanding >= window {
                wait_until = Some(now + TICK);
            }
            n = n.min(window.saturating_sub(outstanding));
        }
        if let Some(until) = wait_until {
            let nap = until.min(deadline).saturating_duration_since(now).min(TICK);
            if plan.rate.is_some() && window == 0 {
                thread::sleep(nap);
            } else {
                thread::park_timeout(nap);
            }
            if let Err(e) = writer.keep_alive() {
                break Err(e);
            }
            continue;
        }
        let sent_nanos = shared.clock.now_nanos();
        shared.issued[index].store(seq + n, Ordering::Release);
        for s in seq..seq + n {
            let id = MessageId::new(shared.nonce, plan.index, s);
            messages[(s % keys) as usize].write(&mut writer.out, Stamp { sent_nanos, id });
        }
        let stop = || Instant::now() >= deadline || shared.aborted();
        let written = match writer.flush_batch(encoded_len, stop) {
            Ok(written) => written,
            Err(e) => break Err(e),
        };
        seq += written;
        shared.published.fetch_add(written, Ordering::Relaxed);
    };
    (seq, start.elapsed(), result)
}

/// Waits until every published message is confirmed, or confirms stop coming for
/// `drain_timeout`.
fn await_confirms(
    writer: &mut Writer<'_>,
    link: &Link,
    published: u64,
    drain_timeout: Duration,
    shared: &Shared,
) -> Result<()> {
    let mut last = link.resolved.load(Ordering::Acquire);
    let mut last_progress = Instant::now();
    while last < published && !link.failed.load(Ordering::Acquire) && !shared.aborted() {
        if last_progress.elapsed() > drain_timeout {
            break;
        }
        thread::park_timeout(TICK);
        writer.keep_alive()?;
        let now = link.resolved.load(Ordering::Acquire);
        if now != last {
            last = now;
            last_progress = Instant::now();
        }
    }
    Ok(())
}

/// The reader thread: confirms, broker errors, `close-ok`.
fn read_loop(
    mut conn: Connection,
    link: &Link,
    shared: &Shared,
    index: usize,
    confirms: bool,
    writer: &Thread,
) -> Result<ConfirmTracker> {
    let mut tracker = ConfirmTracker::new();
    conn.stream.set_read_timeout(Some(TICK))?;
    // While closing: when anything last moved (bytes from the broker, or consumers
    // receiving), and the consumed count seen then.
    let mut last_activity = (Instant::now(), shared.consumed.load(Ordering::Relaxed));
    loop {
        let resolved_before = tracker.resolved();
        let acked_before = tracker.acked();
        while let Some((frame, used)) = wire::split_frame(conn.rbuf.data(), conn.frame_max)? {
            if frame.kind == wire::METHOD {
                let ids = wire::method_ids(frame.payload);
                if confirms && (ids == Some(BASIC_ACK) || ids == Some(BASIC_NACK)) {
                    let (tag, multiple) = wire::confirm_fields(frame.payload)
                        .context("malformed publisher confirm")?;
                    let issued = shared.issued[index].load(Ordering::Acquire);
                    tracker.record(tag, multiple, ids == Some(BASIC_NACK), issued)?;
                } else {
                    let method = wire::parse_other(frame.payload)?;
                    match &method {
                        AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)) => {
                            return Ok(tracker);
                        }
                        AMQPClass::Connection(connection::AMQPMethod::Blocked(_)) => {
                            link.blocked.store(true, Ordering::Relaxed);
                        }
                        AMQPClass::Connection(connection::AMQPMethod::Unblocked(_))
                        | AMQPClass::Basic(basic::AMQPMethod::Return(_)) => {}
                        other => {
                            if let Some(reason) = wire::close_reason(other) {
                                bail!(reason);
                            }
                        }
                    }
                }
            }
            conn.rbuf.consume(used);
        }
        if tracker.resolved() != resolved_before {
            link.resolved.store(tracker.resolved(), Ordering::Release);
            shared
                .confirmed
                .fetch_add(tracker.acked() - acked_before, Ordering::Relaxed);
            writer.unpark();
        }
        if link.abandoned.load(Ordering::Acquire) {
            return Ok(tracker);
        }
        let consumed = shared.consumed.load(Ordering::Relaxed);
        if consumed != last_activity.1 {
            last_activity = (Instant::now(), consumed);
        }
        if link.closing.load(Ordering::Acquire) && last_activity.0.elapsed() > link.close_patience {
            eprintln!(
                "warren-perf: warning: producer {index}: no close-ok from the broker after {:?} \
                 without progress; publishes it had not read yet may be lost",
                link.close_patience
            );
            return Ok(tracker);
        }
        match conn.rbuf.fill(&mut conn.stream, conn.frame_max as usize) {
            Ok(0) if link.closing.load(Ordering::Acquire) => return Ok(tracker),
            Ok(0) => bail!("the broker closed the connection"),
            Ok(_) => last_activity.0 = Instant::now(),
            Err(e) if conn::is_timeout(&e) => {}
            Err(e) => return Err(e).context("reading from the broker"),
        }
    }
}

//! `warren-perf group-join`: how much a rebalance slows the partitions it does not move
//! (issue 13: "during a join, non-moving partitions lose < 5 % of their rate, at 100 ms
//! resolution").
//!
//! A transient queue of `--partitions` partitions is fed at a fixed `--rate` through the
//! default exchange, so that its messages spread over the partitions round robin, evenly.
//! `--members` members consume it and ack each delivery at once, so the broker alone
//! sets the pace. Every `--interval` seconds one more member joins and leaves again
//! `--hold` seconds later. All members run in this process (lapin, one connection each),
//! so that a join costs no process start.
//!
//! For every join and leave at time T, the partitions that kept their owner (the
//! deliverer of its last message in the second before T and in (T + 0.3 s, T + 1 s))
//! are the non-moving ones. Their deliveries in each of the three 100 ms buckets after
//! T are compared with what was offered to them in the same bucket (the messages
//! published then, times their share of the partitions); an event's loss is the worst
//! bucket's shortfall. The same figure over the three buckets from 0.6 s before the
//! event, a quiet time, is the measurement's own noise.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};
use serde::Serialize;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use super::group_member::header_partition;
use super::groups::connect;

/// Width of the buckets rates are counted in.
const BUCKET_US: u64 = 100_000;
/// Buckets after an event that count as its rebalance.
const EVENT_BUCKETS: u64 = 3;
/// Window before an event in which a partition's owner is looked up.
const BEFORE_US: u64 = 1_000_000;
/// Window after an event in which its new owner is looked up: after the rebalance,
/// before the next event.
const AFTER_US: (u64, u64) = (300_000, 1_000_000);
/// How long before an event its quiet control buckets start: at least 0.5 s after the
/// event before it.
const CONTROL_BEFORE_US: u64 = 600_000;
/// The longest --warmup, --hold or --interval taken, in seconds (a day).
const MAX_SECONDS: f64 = 86_400.0;
/// How long a step of the broker's (connect, consume, cancel, close) may take before
/// the run gives up on it rather than hang.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// The command line of `warren-perf group-join`.
#[derive(Debug, Clone, Args)]
pub struct JoinOptions {
    /// Broker URI (Warren: the queue is partitioned).
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub uri: String,

    /// Partitions of the queue.
    #[arg(long, default_value_t = 16)]
    pub partitions: u16,

    /// Members that stay for the whole run.
    #[arg(long, default_value_t = 3)]
    pub members: u16,

    /// Messages per second offered to the queue.
    #[arg(long, default_value_t = 32_000.0)]
    pub rate: f64,

    /// Members that join (and later leave), one after another.
    #[arg(long, default_value_t = 10)]
    pub joins: u32,

    /// Seconds between joins (at least 2.2, so that each event's windows are quiet).
    #[arg(long, default_value_t = 3.0)]
    pub interval: f64,

    /// Seconds a joining member stays (at least 1.1, and 1.1 less than --interval).
    #[arg(long, default_value_t = 1.5)]
    pub hold: f64,

    /// Seconds of steady flow before the first join.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,

    /// `basic.qos` prefetch of every member.
    #[arg(long, default_value_t = 100)]
    pub prefetch: u16,

    /// Queue name.
    #[arg(long, default_value = "warren-perf-join")]
    pub queue: String,

    /// Write the report as JSON here too.
    #[arg(long)]
    pub json: Option<PathBuf>,

    /// Write every event, publish and delivery here, one CSV line each (`event,change,
    /// t_us`, `publish,t_us`, `deliver,t_us,partition,member`), to look closer.
    #[arg(long)]
    pub trace: Option<PathBuf>,
}

impl JoinOptions {
    fn validate(&self) -> Result<()> {
        if self.partitions == 0 || self.members == 0 || self.joins == 0 {
            bail!("--partitions, --members and --joins must be at least 1");
        }
        if !(self.rate >= 100.0 && self.rate.is_finite()) {
            bail!("--rate must be at least 100 messages per second");
        }
        // Written so that NaN fails every check.
        let within = |v: f64, min: f64| v >= min && v <= MAX_SECONDS;
        if !within(self.hold, 1.1) || !within(self.interval - self.hold, 1.1) {
            bail!("--hold must be at least 1.1 s and 1.1 s shorter than --interval");
        }
        if !within(self.warmup, CONTROL_BEFORE_US as f64 / 1e6) {
            bail!("--warmup must be at least 0.6 s, for the first event's control point");
        }
        Ok(())
    }
}

/// A delivery as a member saw it: microseconds since the start, partition, member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    t_us: u64,
    partition: u16,
    member: u16,
}

/// A membership change the benchmark made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Change {
    /// `consume-ok` of a joining member.
    Join,
    /// `basic.cancel` of a leaving one.
    Leave,
}

/// What a run recorded.
#[derive(Debug, Default)]
struct Trace {
    partitions: u16,
    /// Publish times, in order.
    published_us: Vec<u64>,
    /// Every delivery, in time order.
    seen: Vec<Seen>,
    events: Vec<(Change, u64)>,
}

/// One event's figures.
#[derive(Debug, Clone, Serialize)]
pub struct EventFigures {
    change: Change,
    at_ms: f64,
    /// Partitions whose owner changed.
    moved: usize,
    /// The worst of its buckets: non-moving partitions' deliveries over what was offered
    /// to them (1.0: no loss); `None` when nothing was measured (every partition moved,
    /// or nothing was offered).
    worst_ratio: Option<f64>,
    /// The same at the quiet control point before it.
    control_ratio: Option<f64>,
}

/// The report of a run.
#[derive(Debug, Clone, Serialize)]
pub struct JoinReport {
    /// Partitions of the queue.
    pub partitions: u16,
    /// Members that stayed throughout.
    pub members: u16,
    /// Messages per second offered.
    pub rate: f64,
    /// Messages published.
    pub published: usize,
    /// Deliveries the members saw.
    pub delivered: usize,
    /// Every join's and leave's figures, in order.
    pub events: Vec<EventFigures>,
}

impl JoinReport {
    /// The measured losses of the events `change` picks (all when `None`), at the event or
    /// at its control point, sorted; and how many of them went unmeasured.
    fn losses(&self, change: Option<Change>, control: bool) -> (Vec<f64>, usize) {
        let ratios: Vec<Option<f64>> = self
            .events
            .iter()
            .filter(|e| change.is_none_or(|c| e.change == c))
            .map(|e| {
                if control {
                    e.control_ratio
                } else {
                    e.worst_ratio
                }
            })
            .collect();
        let mut v: Vec<f64> = ratios
            .iter()
            .flatten()
            .map(|ratio| (1.0 - ratio).max(0.0))
            .collect();
        v.sort_by(f64::total_cmp);
        let unmeasured = ratios.len() - v.len();
        (v, unmeasured)
    }

    /// The human-readable summary.
    pub fn to_text(&self) -> String {
        let median = |v: &[f64]| v.get(v.len() / 2).copied().unwrap_or(f64::NAN) * 100.0;
        let max = |v: &[f64]| v.last().copied().unwrap_or(f64::NAN) * 100.0;
        let moved = |change: Change| {
            let mut m: Vec<usize> = self
                .events
                .iter()
                .filter(|e| e.change == change)
                .map(|e| e.moved)
                .collect();
            m.sort_unstable();
            m.get(m.len() / 2).copied().unwrap_or(0)
        };
        let mut out = format!(
            "group-join: {} partitions, {} members + 1 joining, {:.0} msg/s offered, {} published, {} delivered\n\
             rate lost by non-moving partitions, worst 100 ms bucket of the 300 ms after the event:\n\
             | event | events measured | partitions moved (median) | loss median | loss max |\n\
             | --- | ---: | ---: | ---: | ---: |\n",
            self.partitions, self.members, self.rate, self.published, self.delivered
        );
        for (label, change, control) in [
            ("join", Some(Change::Join), false),
            ("leave", Some(Change::Leave), false),
            ("quiet (control, before each event)", None, true),
        ] {
            let (v, unmeasured) = self.losses(change, control);
            let moved = change.map_or(0, moved);
            let unmeasured = if unmeasured == 0 {
                String::new()
            } else {
                format!(" ({unmeasured} unmeasured)")
            };
            out.push_str(&format!(
                "| {label} | {}{unmeasured} | {moved} | {:.1} % | {:.1} % |\n",
                v.len(),
                median(&v),
                max(&v)
            ));
        }
        out
    }
}

/// Runs the benchmark.
///
/// # Errors
/// Bad options, or the broker could not be reached or refused a step.
pub fn run(opts: &JoinOptions) -> Result<JoinReport> {
    opts.validate()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let trace = runtime.block_on(record(opts))?;
    let report = analyse(&trace, opts);
    if let Some(path) = &opts.trace {
        write_trace(&trace, path).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &opts.json {
        let json = serde_json::to_string_pretty(&report)? + "\n";
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report)
}

fn write_trace(trace: &Trace, path: &std::path::Path) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for (change, t) in &trace.events {
        writeln!(out, "event,{change:?},{t}")?;
    }
    for t in &trace.published_us {
        writeln!(out, "publish,{t}")?;
    }
    for s in &trace.seen {
        writeln!(out, "deliver,{},{},{}", s.t_us, s.partition, s.member)?;
    }
    out.flush()
}

/// Runs the flow and the joins; returns what every member saw.
async fn record(opts: &JoinOptions) -> Result<Trace> {
    let (conn, channel) = connect(&opts.uri).await?;
    channel
        .queue_delete(opts.queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .context("deleting an earlier run's queue")?;
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-partitions".into(),
        AMQPValue::LongInt(i32::from(opts.partitions)),
    );
    channel
        .queue_declare(
            opts.queue.as_str().into(),
            QueueDeclareOptions::default(),
            arguments,
        )
        .await
        .context("declaring the partitioned queue")?;

    let start = Instant::now();
    let seen = Arc::new(Mutex::new(Vec::<Seen>::new()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (_always_tx, always) = watch::channel(true);
    let mut threads = Vec::new();
    for m in 0..opts.members {
        let (thread, joined) =
            spawn_member(opts, m, start, &seen, always.clone(), stop_rx.clone())?;
        threads.push(thread);
        joined_by(joined).await?;
    }

    let (publishing_tx, publishing_rx) = watch::channel(false);
    let publisher = {
        let (channel, queue, rate) = (channel.clone(), opts.queue.clone(), opts.rate);
        tokio::spawn(async move { publish(&channel, &queue, rate, start, publishing_rx).await })
    };

    // A joiner connects 0.4 s after the event before its join, outside every window
    // whose rate is measured, so that the join is its `basic.consume` alone.
    let mut events = Vec::new();
    let mut connect_at = start + Duration::from_secs_f64((opts.warmup - 1.0).max(0.0));
    for j in 0..opts.joins {
        let id = opts.members + u16::try_from(j).unwrap_or(u16::MAX);
        let join_at = start + Duration::from_secs_f64(opts.warmup + f64::from(j) * opts.interval);
        let leave_at = join_at + Duration::from_secs_f64(opts.hold);
        tokio::time::sleep_until(connect_at).await;
        let (go_tx, go_rx) = watch::channel(false);
        let (leave_tx, leave_rx) = watch::channel(false);
        let (thread, joined) = spawn_member(opts, id, start, &seen, go_rx, leave_rx)?;
        threads.push(thread);
        tokio::time::sleep_until(join_at).await;
        let _ = go_tx.send(true);
        events.push((Change::Join, joined_by(joined).await?));
        tokio::time::sleep_until(leave_at).await;
        events.push((Change::Leave, micros(start)));
        let _ = leave_tx.send(true);
        connect_at = leave_at + Duration::from_millis(400);
    }
    tokio::time::sleep_until(connect_at).await;

    let _ = publishing_tx.send(true);
    let published_us = publisher.await.context("joining the publisher")??;
    // The members stop once they have everything that was published, or stall.
    let mut last = (0, Instant::now());
    while last.0 < published_us.len() && last.1.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let now = seen.lock().map_or(0, |s| s.len());
        if now != last.0 {
            last = (now, Instant::now());
        }
    }
    let _ = stop_tx.send(true);
    // A member that leaves has a step's time to cancel and one to close.
    let bound = STEP_TIMEOUT * 3;
    for thread in threads {
        tokio::time::timeout(bound, tokio::task::spawn_blocking(move || thread.join()))
            .await
            .context("a member did not stop")?
            .context("joining a member's thread")?
            .map_err(|_| anyhow::anyhow!("a member's thread panicked"))??;
    }
    channel
        .queue_delete(opts.queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .context("deleting the queue")?;
    step("connection.close", conn.close(200, "done".into())).await?;

    let mut seen = std::mem::take(&mut *seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    seen.sort_by_key(|s| s.t_us);
    Ok(Trace {
        partitions: opts.partitions,
        published_us,
        seen,
        events,
    })
}

/// The time of a member's `consume-ok`, or an error if it does not come in time.
async fn joined_by(joined: oneshot::Receiver<u64>) -> Result<u64> {
    tokio::time::timeout(STEP_TIMEOUT, joined)
        .await
        .context("a member did not join in time")?
        .context("a member failed to join")
}

/// `future`, a step of the protocol named `what`, or an error if it does not end in time.
async fn step<T, E>(what: &str, future: impl Future<Output = Result<T, E>>) -> Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
{
    tokio::time::timeout(STEP_TIMEOUT, future)
        .await
        .with_context(|| format!("{what} did not end in time"))?
        .with_context(|| what.to_owned())
}

fn micros(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// Publishes at `rate` until told to stop; the publish times.
async fn publish(
    channel: &Channel,
    queue: &str,
    rate: f64,
    start: Instant,
    stop: watch::Receiver<bool>,
) -> Result<Vec<u64>> {
    let mut times = Vec::new();
    let body = [0u8; 16];
    while !*stop.borrow() {
        let due = (start.elapsed().as_secs_f64() * rate) as usize;
        while times.len() < due {
            channel
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default(),
                )
                .await
                .context("basic.publish")?;
            times.push(micros(start));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(times)
}

/// Starts member `id` on a thread of its own (so that nothing one member's client does
/// can hold up another's): it connects at once, consumes once `go` says so, sends the
/// time of its `consume-ok`, acks and records every delivery at once until `leave`
/// says so, then cancels, acks what is still on its way and closes.
fn spawn_member(
    opts: &JoinOptions,
    id: u16,
    start: Instant,
    seen: &Arc<Mutex<Vec<Seen>>>,
    go: watch::Receiver<bool>,
    leave: watch::Receiver<bool>,
) -> Result<(std::thread::JoinHandle<Result<()>>, oneshot::Receiver<u64>)> {
    let (joined_tx, joined_rx) = oneshot::channel();
    let (uri, queue, prefetch) = (opts.uri.clone(), opts.queue.clone(), opts.prefetch);
    let seen = Arc::clone(seen);
    let thread = std::thread::Builder::new()
        .name(format!("member-{id}"))
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting a member's runtime")?;
            runtime.block_on(async move {
                let member = Member { id, start, seen };
                member
                    .run(&uri, &queue, prefetch, go, leave, joined_tx)
                    .await
            })
        })
        .context("spawning a member's thread")?;
    Ok((thread, joined_rx))
}

/// One member's identity and where it records what it sees.
struct Member {
    id: u16,
    start: Instant,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Member {
    async fn run(
        &self,
        uri: &str,
        queue: &str,
        prefetch: u16,
        mut go: watch::Receiver<bool>,
        mut leave: watch::Receiver<bool>,
        joined: oneshot::Sender<u64>,
    ) -> Result<()> {
        let (conn, channel) = connect(uri).await?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .context("basic.qos")?;
        if go.wait_for(|go| *go).await.is_err() {
            return Ok(());
        }
        let tag = format!("member-{}", self.id);
        let mut consumer = channel
            .basic_consume(
                queue.into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .context("basic.consume")?;
        let _ = joined.send(micros(self.start));
        let mut leaving = false;
        loop {
            let next = tokio::select! {
                next = consumer.next() => next,
                changed = leave.changed(), if !leaving => {
                    if changed.is_err() || *leave.borrow() {
                        leaving = true;
                        let cancel = channel
                            .basic_cancel(tag.as_str().into(), BasicCancelOptions::default());
                        step("basic.cancel", cancel).await?;
                    }
                    continue;
                }
            };
            let Some(delivery) = next else { break };
            let delivery = delivery.context("consuming")?;
            let seen = Seen {
                t_us: micros(self.start),
                partition: header_partition(&delivery).unwrap_or(u16::MAX),
                member: self.id,
            };
            if let Ok(mut all) = self.seen.lock() {
                all.push(seen);
            }
            delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .context("basic.ack")?;
        }
        step("connection.close", conn.close(200, "leaving".into())).await?;
        Ok(())
    }
}

/// Each event's figures from a trace.
fn analyse(trace: &Trace, opts: &JoinOptions) -> JoinReport {
    let events = trace
        .events
        .iter()
        .map(|&(change, at)| {
            let kept = kept_owner(trace, at);
            let moved = usize::from(trace.partitions) - kept.len();
            let worst_from = |from: u64| {
                (0..EVENT_BUCKETS)
                    .filter_map(|k| bucket_ratio(trace, &kept, from + k * BUCKET_US))
                    .min_by(f64::total_cmp)
            };
            let worst = worst_from(at);
            let control = worst_from(at.saturating_sub(CONTROL_BEFORE_US));
            EventFigures {
                change,
                at_ms: at as f64 / 1000.0,
                moved,
                worst_ratio: worst,
                control_ratio: control,
            }
        })
        .collect();
    JoinReport {
        partitions: trace.partitions,
        members: opts.members,
        rate: opts.rate,
        published: trace.published_us.len(),
        delivered: trace.seen.len(),
        events,
    }
}

/// The partitions that kept their owner across the event at `at`.
fn kept_owner(trace: &Trace, at: u64) -> BTreeSet<u16> {
    let owners = |from: u64, to: u64| {
        let mut last = vec![None; usize::from(trace.partitions)];
        for s in window(&trace.seen, from, to) {
            if let Some(owner) = last.get_mut(usize::from(s.partition)) {
                *owner = Some(s.member);
            }
        }
        last
    };
    let before = owners(at.saturating_sub(BEFORE_US), at);
    let after = owners(at + AFTER_US.0, at + AFTER_US.1);
    (0..trace.partitions)
        .filter(|&p| {
            let p = usize::from(p);
            before[p].is_some() && before[p] == after[p]
        })
        .collect()
}

/// The deliveries seen in `[from, to)`.
fn window(seen: &[Seen], from: u64, to: u64) -> &[Seen] {
    let a = seen.partition_point(|s| s.t_us < from);
    let b = seen.partition_point(|s| s.t_us < to);
    &seen[a..b.max(a)]
}

/// Deliveries of the `kept` partitions in the bucket from `from`, over what was offered
/// to them in it (their share of what was published then); `None` when nothing was.
fn bucket_ratio(trace: &Trace, kept: &BTreeSet<u16>, from: u64) -> Option<f64> {
    let to = from + BUCKET_US;
    let delivered = window(&trace.seen, from, to)
        .iter()
        .filter(|s| kept.contains(&s.partition))
        .count();
    let a = trace.published_us.partition_point(|&t| t < from);
    let b = trace.published_us.partition_point(|&t| t < to);
    let offered =
        b.saturating_sub(a) as f64 * kept.len() as f64 / f64::from(trace.partitions.max(1));
    (offered > 0.0).then(|| delivered as f64 / offered)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A steady flow over 4 partitions: one message per partition every 1 ms, owned
    /// by members 0 and 1, with partition 3 moving to member 2 at 2 s; the deliveries
    /// of partition 0 stop for `gap_us` after it.
    fn trace(gap_us: u64) -> Trace {
        let mut t = Trace {
            partitions: 4,
            events: vec![(Change::Join, 2_000_000)],
            ..Trace::default()
        };
        for ms in 0..4_000u64 {
            let t_us = ms * 1000;
            for p in 0..4u16 {
                t.published_us.push(t_us);
                let member = match p {
                    3 if t_us >= 2_000_000 => 2,
                    p => p % 2,
                };
                let stalled = p == 0 && (2_000_000..2_000_000 + gap_us).contains(&t_us);
                if !stalled {
                    t.seen.push(Seen {
                        t_us,
                        partition: p,
                        member,
                    });
                }
            }
        }
        t
    }

    fn options() -> JoinOptions {
        JoinOptions {
            uri: String::new(),
            partitions: 4,
            members: 2,
            rate: 4000.0,
            joins: 1,
            interval: 3.0,
            hold: 1.5,
            warmup: 2.0,
            prefetch: 1,
            queue: String::new(),
            json: None,
            trace: None,
        }
    }

    #[test]
    fn a_rebalance_that_leaves_the_other_partitions_alone_loses_nothing() {
        let report = analyse(&trace(0), &options());
        let event = &report.events[0];
        assert_eq!(event.moved, 1);
        assert_eq!(event.worst_ratio, Some(1.0), "{event:?}");
        assert_eq!(event.control_ratio, Some(1.0), "{event:?}");
    }

    #[test]
    fn an_event_that_moves_every_partition_is_not_measured() {
        let mut trace = trace(0);
        for s in trace.seen.iter_mut().filter(|s| s.t_us >= 2_000_000) {
            s.member += 10;
        }
        let report = analyse(&trace, &options());
        let event = &report.events[0];
        assert_eq!(event.moved, 4);
        assert_eq!((event.worst_ratio, event.control_ratio), (None, None));
        assert!(
            report.to_text().contains("| join | 0 (1 unmeasured) |"),
            "{}",
            report.to_text()
        );
    }

    #[test]
    fn durations_that_are_not_numbers_or_too_short_are_refused() {
        for (warmup, hold, interval) in [
            (f64::NAN, 1.5, 3.0),
            (2.0, f64::NAN, 3.0),
            (2.0, 1.5, f64::NAN),
            (0.5, 1.5, 3.0),
            (-1.0, 1.5, 3.0),
            (2.0, 1.5, 2.5),
            (2.0, f64::INFINITY, f64::INFINITY),
        ] {
            let opts = JoinOptions {
                warmup,
                hold,
                interval,
                ..options()
            };
            assert!(opts.validate().is_err(), "{warmup} {hold} {interval}");
        }
        assert!(options().validate().is_ok());
    }

    #[test]
    fn a_stall_of_a_non_moving_partition_shows_as_lost_rate() {
        // Partition 0 is one of the 3 that stay: 50 ms of its 100 in the first bucket
        // missing is a sixth of what the three were offered.
        let report = analyse(&trace(50_000), &options());
        let event = &report.events[0];
        assert_eq!(event.moved, 1);
        let worst = event.worst_ratio.unwrap_or(f64::NAN);
        assert!((worst - 250.0 / 300.0).abs() < 1e-9, "{event:?}");
        assert_eq!(event.control_ratio, Some(1.0));
        assert!(report.to_text().contains("16.7 %"), "{}", report.to_text());
    }
}

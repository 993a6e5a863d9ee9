//! `warren-perf groups`: the consumer-group churn benchmark of issue 13
//! (docs/partitions-design.md §8).
//!
//! A durable queue of 16 partitions is fed through an exchange (routing key = the
//! message's key) with persistent, confirmed `key:seq` messages at a fixed rate, while
//! every `--interval` seconds the controller starts a member process
//! ([`group_member`](super::group_member), or `bench/group_member.py` in turn), tells
//! one to leave gracefully, or SIGKILLs one, keeping between `--min-members` and
//! `--max-members`. At the end a final member drains the rest. The members' JSON lines
//! are merged (and kept with `--events`) and checked by
//! [`group_check`](super::group_check): per-key order, one holder per partition at a
//! time, nothing lost, redeliveries only after kills; with join, hand-over and
//! fail-over latencies and the balance of partitions over members.
//!
//! With `--broker rabbitmq` the same churn runs against RabbitMQ's nearest equivalent:
//! an `x-consistent-hash` exchange in front of one quorum queue per partition with
//! `x-single-active-consumer`, every member consuming all of them (in an order rotated
//! by its id).

use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
    PublisherConfirm,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::group_check::{self, Ending, Event, MemberRecord, RunFacts, Summary, monotonic_nanos};

/// The broker under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Broker {
    /// Warren: one partitioned queue (`x-partitions`), its consumers one group.
    Warren,
    /// RabbitMQ: a consistent-hash exchange and one single-active-consumer quorum queue
    /// per partition (needs the `rabbitmq_consistent_hash_exchange` plugin).
    Rabbitmq,
}

/// The exchange type in front of Warren's partitioned queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Feed {
    /// One binding; the routing key passes through to the queue's hash.
    Fanout,
    /// One binding per key.
    Direct,
}

/// The command line of `warren-perf groups`.
#[derive(Debug, Clone, Args, Serialize)]
pub struct GroupsOptions {
    /// Broker URI.
    #[arg(
        long,
        env = "WARREN_PERF_URI",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub uri: String,

    /// Which broker's model to set up.
    #[arg(long, value_enum, default_value_t = Broker::Warren)]
    pub broker: Broker,

    /// Queue name (RabbitMQ: the prefix of the per-partition queues `NAME-0`, …).
    #[arg(long, default_value = "bench.g")]
    pub queue: String,

    /// Partitions.
    #[arg(long, default_value_t = 16)]
    pub partitions: u16,

    /// Exchange type feeding Warren's queue (RabbitMQ always uses x-consistent-hash).
    #[arg(long, value_enum, default_value_t = Feed::Fanout)]
    pub exchange_type: Feed,

    /// Distinct message keys.
    #[arg(long, default_value_t = 10_000)]
    pub keys: u32,

    /// Messages to publish.
    #[arg(long, default_value_t = 1_000_000)]
    pub messages: u32,

    /// Seconds of churn.
    #[arg(long, default_value_t = 300.0)]
    pub duration: f64,

    /// Messages per second (default: --messages spread over --duration).
    #[arg(long)]
    pub rate: Option<f64>,

    /// Unconfirmed messages allowed in flight.
    #[arg(long, default_value_t = 1000)]
    pub confirm_window: usize,

    /// Seconds between membership changes.
    #[arg(long, default_value_t = 2.0)]
    pub interval: f64,

    /// Fewest members during the churn.
    #[arg(long, default_value_t = 2)]
    pub min_members: usize,

    /// Most members during the churn.
    #[arg(long, default_value_t = 8)]
    pub max_members: usize,

    /// Members' `basic.qos` prefetch.
    #[arg(long, default_value_t = 10)]
    pub prefetch: u16,

    /// Members' most simulated work per message, in microseconds.
    #[arg(long, default_value_t = 2000)]
    pub work_max_us: u64,

    /// Command that runs a pika member (e.g. `examples-python/.venv/bin/python
    /// bench/group_member.py`); members then alternate between lapin and pika.
    #[arg(long)]
    pub pika_member: Option<String>,

    /// Seed of every random choice (keys, actions, members picked, work times);
    /// default: from the clock. Printed, to replay a run's choices.
    #[arg(long)]
    pub seed: Option<u64>,

    /// Seconds the final drain may go without progress before giving up.
    #[arg(long, default_value_t = 30.0)]
    pub drain_timeout: f64,

    /// Write every member line (and the controller's own actions) here, as JSON lines.
    #[arg(long)]
    #[serde(skip)]
    pub events: Option<std::path::PathBuf>,

    /// Write the summary here as JSON.
    #[arg(long)]
    #[serde(skip)]
    pub json: Option<std::path::PathBuf>,

    /// Keep the queue(s) and exchange after the run.
    #[arg(long)]
    pub keep: bool,
}

/// The messages of a run, planned up front: message `i` is `key:seq`.
struct Plan {
    /// `(key, seq)` of every message, in publishing order.
    messages: Vec<(u32, u32)>,
    /// Per key, the indexes of its messages, by seq.
    by_key: Vec<Vec<u32>>,
    /// Set once a message is positively confirmed.
    confirmed: Vec<AtomicBool>,
    /// Set once any member reports acking it.
    acked: Vec<AtomicBool>,
    /// When it was published (CLOCK_MONOTONIC ns; 0: not yet).
    published_at: Vec<AtomicU64>,
    /// Messages published so far.
    published: AtomicU64,
    /// Set when the publisher is done.
    done: AtomicBool,
}

impl Plan {
    fn new(messages: u32, keys: u32, rng: &mut SmallRng) -> Self {
        let mut by_key: Vec<Vec<u32>> = vec![Vec::new(); keys as usize];
        let messages: Vec<(u32, u32)> = (0..messages)
            .map(|i| {
                let key = rng.random_range(0..keys);
                let list = &mut by_key[key as usize];
                list.push(i);
                (key, u32::try_from(list.len() - 1).unwrap_or(u32::MAX))
            })
            .collect();
        let flags = |n: usize| (0..n).map(|_| AtomicBool::new(false)).collect();
        Self {
            confirmed: flags(messages.len()),
            acked: flags(messages.len()),
            published_at: (0..messages.len()).map(|_| AtomicU64::new(0)).collect(),
            messages,
            by_key,
            published: AtomicU64::new(0),
            done: AtomicBool::new(false),
        }
    }

    fn index(&self, key: u32, seq: u32) -> Option<usize> {
        let i = *self.by_key.get(key as usize)?.get(seq as usize)?;
        Some(i as usize)
    }

    /// Confirmed messages, and how many of them some member acked.
    fn progress(&self) -> (u64, u64) {
        let mut confirmed = 0;
        let mut acked = 0;
        for (c, a) in self.confirmed.iter().zip(&self.acked) {
            if c.load(Ordering::Relaxed) {
                confirmed += 1;
                acked += u64::from(a.load(Ordering::Relaxed));
            }
        }
        (confirmed, acked)
    }
}

/// What the run report holds besides the checks.
#[derive(Debug, Clone, Serialize)]
pub struct GroupsReport {
    /// The options.
    pub options: GroupsOptions,
    /// The seed used.
    pub seed: u64,
    /// Messages published.
    pub published: u64,
    /// Publishing time, seconds.
    pub publish_secs: f64,
    /// Messages left in the queue(s) after the final drain.
    pub left_in_queue: Option<u64>,
    /// Unparsable member lines (torn by a kill).
    pub torn_lines: u64,
    /// The checks.
    pub summary: Summary,
}

impl GroupsReport {
    /// Whether every check held and the queue ended empty.
    pub fn ok(&self) -> bool {
        self.summary.ok() && self.left_in_queue.unwrap_or(0) == 0
    }
}

/// A running member process.
struct Live {
    id: u32,
    child: Child,
    stdin: Option<ChildStdin>,
}

/// Everything that reads members' output.
struct Readers {
    plan: Arc<Plan>,
    sink: Option<Arc<Mutex<BufWriter<File>>>>,
    threads: Vec<JoinHandle<(Vec<Event>, u64)>>,
}

impl Readers {
    /// Writes a controller line to the events file.
    fn note(&self, line: &str) {
        if let Some(sink) = &self.sink {
            if let Ok(mut sink) = sink.lock() {
                let _ = writeln!(sink, "{line}");
            }
        }
    }

    fn read(&mut self, id: u32, out: std::process::ChildStdout) -> Result<()> {
        let (plan, sink) = (Arc::clone(&self.plan), self.sink.clone());
        let thread = thread::Builder::new()
            .name(format!("member-{id}"))
            .spawn(move || {
                let mut events = Vec::new();
                let mut torn = 0;
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if let Some(sink) = &sink {
                        if let Ok(mut sink) = sink.lock() {
                            let _ = writeln!(sink, "{line}");
                        }
                    }
                    match Event::parse(&line) {
                        Some(e) => {
                            if e.kind == group_check::Kind::Ack {
                                if let Some(i) = plan.index(e.key, e.seq) {
                                    plan.acked[i].store(true, Ordering::Relaxed);
                                }
                            }
                            events.push(e);
                        }
                        None => torn += 1,
                    }
                }
                (events, torn)
            })
            .context("spawning a reader thread")?;
        self.threads.push(thread);
        Ok(())
    }
}

/// Runs the churn benchmark.
///
/// # Errors
/// Setting up the broker, starting members, or publishing failed.
pub fn run(opts: &GroupsOptions) -> Result<GroupsReport> {
    if opts.partitions == 0 || opts.keys == 0 || opts.messages == 0 {
        bail!("--partitions, --keys and --messages must be at least 1");
    }
    if opts.min_members == 0 || opts.max_members < opts.min_members {
        bail!("need 1 ≤ --min-members ≤ --max-members");
    }
    let seed = opts
        .seed
        .unwrap_or_else(|| monotonic_nanos() ^ u64::from(std::process::id()));
    eprintln!("warren-perf groups: seed {seed}");
    let mut rng = SmallRng::seed_from_u64(seed);
    let plan = Arc::new(Plan::new(opts.messages, opts.keys, &mut rng));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(declare(opts)).context("declaring")?;

    let sink = match &opts.events {
        Some(path) => Some(Arc::new(Mutex::new(BufWriter::new(
            File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )))),
        None => None,
    };
    let mut readers = Readers {
        plan: Arc::clone(&plan),
        sink,
        threads: Vec::new(),
    };
    let mut records: Vec<MemberRecord> = Vec::new();
    let mut live: Vec<Live> = Vec::new();
    let mut leaving: Vec<Live> = Vec::new();
    for _ in 0..opts.min_members {
        start_member(opts, seed, false, &mut records, &mut live, &mut readers)?;
    }
    thread::sleep(Duration::from_millis(500));

    let rate = opts
        .rate
        .unwrap_or(f64::from(opts.messages) / opts.duration);
    let publish_start = monotonic_nanos();
    let publisher = {
        let (plan, uri, opts) = (Arc::clone(&plan), opts.uri.clone(), opts.clone());
        runtime.spawn(async move { publish(&uri, &opts, &plan, rate).await })
    };

    let churn_start = Instant::now();
    let interval = Duration::from_secs_f64(opts.interval);
    let mut tick = 1u32;
    while churn_start.elapsed() < Duration::from_secs_f64(opts.duration) {
        let next = churn_start + interval * tick;
        tick += 1;
        thread::sleep(next.saturating_duration_since(Instant::now()));
        reap(&mut leaving);
        if publisher.is_finished()
            && plan.published.load(Ordering::Relaxed) < plan.messages.len() as u64
        {
            break; // publishing failed: its error is reported below
        }
        let action = if live.len() < opts.min_members {
            0
        } else if live.len() >= opts.max_members {
            rng.random_range(1..3)
        } else {
            rng.random_range(0..3)
        };
        match action {
            0 => start_member(opts, seed, false, &mut records, &mut live, &mut readers)?,
            1 => {
                let mut member = live.swap_remove(rng.random_range(0..live.len()));
                let t = monotonic_nanos();
                set_ending(&mut records, member.id, Ending::Cancelled(t));
                readers.note(&format!(
                    r#"{{"ev":"ctl-cancel","m":{},"t":{t}}}"#,
                    member.id
                ));
                if let Some(mut stdin) = member.stdin.take() {
                    let _ = writeln!(stdin, "cancel");
                }
                leaving.push(member);
            }
            _ => {
                let mut member = live.swap_remove(rng.random_range(0..live.len()));
                let t = monotonic_nanos();
                set_ending(&mut records, member.id, Ending::Killed(t));
                readers.note(&format!(r#"{{"ev":"ctl-kill","m":{},"t":{t}}}"#, member.id));
                let _ = member.child.kill();
                let _ = member.child.wait();
            }
        }
    }
    let published = runtime
        .block_on(publisher)
        .context("joining the publisher")?
        .context("publishing")?;
    let publish_end = monotonic_nanos();

    // The final drain: one more member, then everyone else leaves gracefully.
    start_member(opts, seed, true, &mut records, &mut live, &mut readers)?;
    let final_member = live.pop();
    for mut member in live.drain(..) {
        let t = monotonic_nanos();
        set_ending(&mut records, member.id, Ending::Cancelled(t));
        readers.note(&format!(
            r#"{{"ev":"ctl-cancel","m":{},"t":{t}}}"#,
            member.id
        ));
        if let Some(mut stdin) = member.stdin.take() {
            let _ = writeln!(stdin, "cancel");
        }
        leaving.push(member);
    }
    let mut last = plan.progress();
    let mut last_change = Instant::now();
    while last.1 < last.0 {
        thread::sleep(Duration::from_millis(200));
        let now = plan.progress();
        if now != last {
            last = now;
            last_change = Instant::now();
        } else if last_change.elapsed() > Duration::from_secs_f64(opts.drain_timeout) {
            eprintln!(
                "warren-perf groups: drain stalled with {} of {} confirmed messages acked",
                last.1, last.0
            );
            break;
        }
    }
    if let Some(mut member) = final_member {
        let t = monotonic_nanos();
        set_ending(&mut records, member.id, Ending::Cancelled(t));
        if let Some(mut stdin) = member.stdin.take() {
            let _ = writeln!(stdin, "cancel");
        }
        leaving.push(member);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !leaving.is_empty() && Instant::now() < deadline {
        reap(&mut leaving);
        thread::sleep(Duration::from_millis(50));
    }
    for mut member in leaving {
        eprintln!(
            "warren-perf groups: member {} did not leave; killing it",
            member.id
        );
        let _ = member.child.kill();
        let _ = member.child.wait();
    }
    let end = monotonic_nanos();
    let mut events = Vec::new();
    let mut torn_lines = 0;
    for thread in readers.threads.drain(..) {
        let (mine, torn) = thread
            .join()
            .map_err(|_| anyhow::anyhow!("a reader thread panicked"))?;
        events.extend(mine);
        torn_lines += torn;
    }
    if let Some(sink) = &readers.sink {
        if let Ok(mut sink) = sink.lock() {
            sink.flush().context("writing the events file")?;
        }
    }
    let left_in_queue = runtime.block_on(left_in_queue(opts)).ok();
    if !opts.keep {
        if let Err(e) = runtime.block_on(delete(opts)) {
            eprintln!("warren-perf groups: warning: deleting the queues failed: {e:#}");
        }
    }
    let confirmed: Vec<(u32, u32)> = plan
        .messages
        .iter()
        .zip(&plan.confirmed)
        .filter(|(_, c)| c.load(Ordering::Relaxed))
        .map(|(&m, _)| m)
        .collect();
    let summary = group_check::check(
        &events,
        &RunFacts {
            members: &records,
            confirmed: &confirmed,
            publishing: (publish_start, publish_end),
            end,
            published_at: &|key, seq| {
                let i = plan.index(key, seq)?;
                Some(plan.published_at[i].load(Ordering::Relaxed)).filter(|&t| t > 0)
            },
        },
    );
    Ok(GroupsReport {
        options: opts.clone(),
        seed,
        published,
        publish_secs: (publish_end - publish_start) as f64 / 1e9,
        left_in_queue,
        torn_lines,
        summary,
    })
}

fn set_ending(records: &mut [MemberRecord], id: u32, ending: Ending) {
    if let Some(r) = records.iter_mut().find(|r| r.id == id) {
        r.ending = ending;
    }
}

/// Forgets members that have exited.
fn reap(leaving: &mut Vec<Live>) {
    leaving.retain_mut(|m| !matches!(m.child.try_wait(), Ok(Some(_))));
}

/// The queues a member consumes: Warren's one, or all of RabbitMQ's, rotated by `id`.
fn member_queues(opts: &GroupsOptions, id: u32) -> Vec<String> {
    match opts.broker {
        Broker::Warren => vec![opts.queue.clone()],
        Broker::Rabbitmq => {
            let n = u32::from(opts.partitions);
            (0..n)
                .map(|i| format!("{}-{}", opts.queue, (i + id) % n))
                .collect()
        }
    }
}

fn start_member(
    opts: &GroupsOptions,
    seed: u64,
    final_drain: bool,
    records: &mut Vec<MemberRecord>,
    live: &mut Vec<Live>,
    readers: &mut Readers,
) -> Result<()> {
    let id = u32::try_from(records.len()).context("too many members")?;
    let pika = opts
        .pika_member
        .as_deref()
        .filter(|_| id % 2 == 1 && !final_drain);
    let mut command = match pika {
        Some(cmd) => {
            let mut words = cmd.split_whitespace();
            let mut command = Command::new(words.next().context("empty --pika-member")?);
            command.args(words);
            command
        }
        None => {
            let mut command = Command::new(std::env::current_exe().context("finding warren-perf")?);
            command.arg("group-member");
            command
        }
    };
    command
        .args(["--uri", &opts.uri, "--id", &id.to_string()])
        .args(["--prefetch", &opts.prefetch.to_string()])
        .args(["--seed", &seed.to_string()])
        .args([
            "--work-max-us",
            &if final_drain { 0 } else { opts.work_max_us }.to_string(),
        ]);
    for q in member_queues(opts, id) {
        command.args(["--queue", &q]);
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting a member")?;
    let t = monotonic_nanos();
    let client = if pika.is_some() { "pika" } else { "lapin" };
    readers.note(&format!(
        r#"{{"ev":"ctl-start","m":{id},"client":"{client}","final":{final_drain},"t":{t}}}"#
    ));
    let stdout = child.stdout.take().context("member stdout")?;
    readers.read(id, stdout)?;
    records.push(MemberRecord {
        id,
        client: client.into(),
        started: t,
        ending: Ending::Running,
        final_drain,
    });
    live.push(Live {
        id,
        stdin: child.stdin.take(),
        child,
    });
    Ok(())
}

/// A connection and a channel on it.
pub(super) async fn connect(uri: &str) -> Result<(Connection, Channel)> {
    let conn = Connection::connect(uri, ConnectionProperties::default())
        .await
        .context("connecting")?;
    let channel = conn.create_channel().await.context("opening a channel")?;
    Ok((conn, channel))
}

fn exchange_name(opts: &GroupsOptions) -> String {
    format!("{}-x", opts.queue)
}

/// Queue names: Warren's one, or RabbitMQ's one per partition.
fn queue_names(opts: &GroupsOptions) -> Vec<String> {
    match opts.broker {
        Broker::Warren => vec![opts.queue.clone()],
        Broker::Rabbitmq => (0..opts.partitions)
            .map(|p| format!("{}-{p}", opts.queue))
            .collect(),
    }
}

/// Declares the exchange and queue(s) afresh (deleting what an earlier run left).
async fn declare(opts: &GroupsOptions) -> Result<()> {
    let (conn, channel) = connect(&opts.uri).await?;
    let exchange = exchange_name(opts);
    delete_on(&channel, opts).await?;
    let kind = match (opts.broker, opts.exchange_type) {
        (Broker::Rabbitmq, _) => ExchangeKind::Custom("x-consistent-hash".into()),
        (Broker::Warren, Feed::Fanout) => ExchangeKind::Fanout,
        (Broker::Warren, Feed::Direct) => ExchangeKind::Direct,
    };
    channel
        .exchange_declare(
            exchange.as_str().into(),
            kind,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .context("declaring the exchange")?;
    for name in queue_names(opts) {
        let mut arguments = FieldTable::default();
        match opts.broker {
            Broker::Warren => {
                arguments.insert(
                    "x-partitions".into(),
                    AMQPValue::LongInt(i32::from(opts.partitions)),
                );
            }
            Broker::Rabbitmq => {
                arguments.insert(
                    "x-queue-type".into(),
                    AMQPValue::LongString("quorum".into()),
                );
                arguments.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
            }
        }
        channel
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                arguments,
            )
            .await
            .with_context(|| format!("declaring {name}"))?;
        channel
            .queue_purge(name.as_str().into(), QueuePurgeOptions::default())
            .await?;
        let keys: Vec<String> = match (opts.broker, opts.exchange_type) {
            // The consistent-hash exchange reads the binding key as the queue's weight.
            (Broker::Rabbitmq, _) => vec!["1".into()],
            (Broker::Warren, Feed::Fanout) => vec![String::new()],
            (Broker::Warren, Feed::Direct) => (0..opts.keys).map(|k| k.to_string()).collect(),
        };
        for key in keys {
            channel
                .queue_bind(
                    name.as_str().into(),
                    exchange.as_str().into(),
                    key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .with_context(|| format!("binding {name}"))?;
        }
    }
    conn.close(200, "declared".into()).await?;
    Ok(())
}

async fn delete_on(channel: &Channel, opts: &GroupsOptions) -> Result<()> {
    for name in queue_names(opts) {
        channel
            .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
            .await
            .with_context(|| format!("deleting {name}"))?;
    }
    channel
        .exchange_delete(exchange_name(opts).as_str().into(), Default::default())
        .await
        .context("deleting the exchange")?;
    Ok(())
}

async fn delete(opts: &GroupsOptions) -> Result<()> {
    let (conn, channel) = connect(&opts.uri).await?;
    delete_on(&channel, opts).await?;
    conn.close(200, "deleted".into()).await?;
    Ok(())
}

/// Messages still in the queue(s).
async fn left_in_queue(opts: &GroupsOptions) -> Result<u64> {
    let (conn, channel) = connect(&opts.uri).await?;
    let mut left = 0;
    for name in queue_names(opts) {
        let q = channel
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        left += u64::from(q.message_count());
    }
    conn.close(200, "checked".into()).await?;
    Ok(left)
}

/// Publishes the plan at `rate` with confirms; the number published.
async fn publish(uri: &str, opts: &GroupsOptions, plan: &Plan, rate: f64) -> Result<u64> {
    let result = publish_all(uri, opts, plan, rate).await;
    plan.done.store(true, Ordering::Release);
    result
}

async fn publish_all(uri: &str, opts: &GroupsOptions, plan: &Plan, rate: f64) -> Result<u64> {
    let (conn, channel) = connect(uri).await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .context("confirm.select")?;
    let exchange = exchange_name(opts);
    let properties = BasicProperties::default().with_delivery_mode(2);
    let start = tokio::time::Instant::now();
    let mut window: std::collections::VecDeque<(usize, PublisherConfirm)> =
        std::collections::VecDeque::new();
    for (i, &(key, seq)) in plan.messages.iter().enumerate() {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        if due > tokio::time::Instant::now() + Duration::from_millis(1) {
            tokio::time::sleep_until(due).await;
        }
        while window.len() >= opts.confirm_window.max(1) {
            if let Some((j, confirm)) = window.pop_front() {
                settle(plan, j, confirm).await?;
            }
        }
        let body = format!("{key}:{seq}");
        plan.published_at[i].store(monotonic_nanos(), Ordering::Relaxed);
        let confirm = channel
            .basic_publish(
                exchange.as_str().into(),
                key.to_string().as_str().into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                properties.clone(),
            )
            .await
            .context("basic.publish")?;
        window.push_back((i, confirm));
        plan.published.fetch_add(1, Ordering::Relaxed);
    }
    while let Some((j, confirm)) = window.pop_front() {
        settle(plan, j, confirm).await?;
    }
    conn.close(200, "published".into()).await?;
    Ok(plan.published.load(Ordering::Relaxed))
}

async fn settle(plan: &Plan, i: usize, confirm: PublisherConfirm) -> Result<()> {
    if let Confirmation::Ack(_) = confirm.await.context("awaiting a confirm")? {
        plan.confirmed[i].store(true, Ordering::Relaxed);
    }
    Ok(())
}

/// The human-readable table of a report.
pub fn to_text(report: &GroupsReport) -> String {
    let s = &report.summary;
    let o = &report.options;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "warren-perf groups → {:?} {}: {} partitions, {} keys, {} published in {:.1} s, \
         churn {} s every {} s, {}–{} members, prefetch {}, work ≤ {} µs, seed {}",
        o.broker,
        o.uri.rsplit('@').next().unwrap_or_default(),
        o.partitions,
        o.keys,
        report.published,
        report.publish_secs,
        o.duration,
        o.interval,
        o.min_members,
        o.max_members,
        o.prefetch,
        o.work_max_us,
        report.seed
    );
    let pct = |p: &Option<group_check::Percentiles>| match p {
        Some(p) => format!(
            "p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms  (n={})",
            p.p50_ms, p.p99_ms, p.max_ms, p.count
        ),
        None => "no samples".into(),
    };
    let rows: Vec<(&str, String, &str)> = vec![
        (
            "members",
            format!(
                "{} started, {} cancelled, {} killed",
                s.members, s.cancelled, s.killed
            ),
            "",
        ),
        (
            "messages",
            format!(
                "{} confirmed, {} deliveries, {} acks",
                s.confirmed, s.deliveries, s.acks
            ),
            "",
        ),
        ("lost", s.lost.to_string(), verdict(s.lost == 0)),
        (
            "left in queue",
            report
                .left_in_queue
                .map_or("unknown".into(), |n| n.to_string()),
            verdict(report.left_in_queue.unwrap_or(0) == 0),
        ),
        (
            "order violations",
            s.order_violations.to_string(),
            verdict(s.order_violations == 0),
        ),
        (
            "overlapping holders",
            s.overlaps.to_string(),
            verdict(s.overlaps == 0),
        ),
        (
            "redeliveries",
            format!(
                "{} ({} after graceful leaves, {} after kills, {} unseen before)",
                s.redeliveries,
                s.redeliveries_after_graceful,
                s.redeliveries_after_kill,
                s.redeliveries_unseen
            ),
            verdict(s.redeliveries_after_graceful == 0),
        ),
        (
            "killed members' unacked",
            format!(
                "{} ({} kills redelivered more)",
                s.killed_unacked, s.kills_over_unacked
            ),
            verdict(s.kills_over_unacked == 0),
        ),
        (
            "unflagged repeats",
            s.unflagged_repeats.to_string(),
            verdict(s.unflagged_repeats == 0),
        ),
        (
            "join: consume-ok → 1st delivery",
            format!("{}; {} joined idle", pct(&s.join_latency), s.joined_idle),
            "",
        ),
        ("leave: last ack → new owner", pct(&s.handover_latency), ""),
        ("kill → new owner", pct(&s.failover_latency), ""),
        (
            "partitions per member",
            format!(
                "median {}, max {}; {} of {} members got none",
                s.partitions_per_member_p50,
                s.partitions_per_member_max,
                s.shares.iter().filter(|m| m.deliveries == 0).count(),
                s.shares.len()
            ),
            "",
        ),
    ];
    for (name, value, mark) in rows {
        let _ = writeln!(out, "{name:<32} {value} {mark}");
    }
    for example in s
        .lost_examples
        .iter()
        .chain(&s.order_examples)
        .chain(&s.overlap_examples)
        .chain(&s.redelivery_examples)
    {
        let _ = writeln!(out, "  evidence: {example}");
    }
    let _ = writeln!(
        out,
        "verdict: {}",
        if report.ok() { "PASSED" } else { "FAILED" }
    );
    out
}

fn verdict(ok: bool) -> &'static str {
    if ok { "ok" } else { "FAIL" }
}

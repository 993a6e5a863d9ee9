//! Chaos: many clients do random legal operations over the whole AMQP surface against a
//! real `warren` process while two checks run beside them.
//!
//! - A liveness probe, on its own connection and its own thread, does a cheap round trip
//!   (declare and delete a private queue, publish with a confirm and get it back) every
//!   150 ms; every answer must come within [`probe_bound`] (2 s). A stall, or the broker dying
//!   (the deadlock watchdog of test builds aborts it), is a freeze: the run fails with the
//!   broker's stderr (the watchdog's backtraces) and, if it still runs, its threads'
//!   stacks from gdb.
//! - A ledger: durable queues the chaos never touches (`ledger.*`; chaos names start
//!   `c.`), fed persistent messages under publisher confirms. Every confirmed id is
//!   recorded; after rounds ended by SIGKILL and a restart, the ledger queues are drained
//!   and every confirmed id must be there (a copy more is allowed only if flagged
//!   redelivered). One of them is partitioned and fed by key: its drain must also give
//!   each key's messages in publish order, each in the partition of its key. A stream
//!   (`ledger.s`) gets a copy of every message of the fanout route: read from its first
//!   offset, it must hold every confirmed one, once each and in publish order, however
//!   many rounds went by (a stream keeps what it is given).
//!
//! Beside the clients, an administrator makes and deletes vhosts (with durable queues
//! and connections in them) and users, sets and clears a run-time policy, an operator
//! policy and a global parameter, through `warren ctl`, while the policy file is
//! rewritten and reloaded.
//!
//! Errors the chaos provokes (a passive declare of a missing queue, an exclusive queue of
//! another connection, inequivalent arguments, a deleted exchange) close channels and
//! are counted by reply code; a connection closed with a 5xx code fails the run, except
//! `504 expected 'channel.open'`, which lapin's own race provokes (see [`Stats::error`]).
//!
//! Seeded: the seed is printed, and `WARREN_CHAOS_SEED` replays the same choices per
//! client (their interleaving still depends on scheduling). `WARREN_CHAOS_SECS` sets the
//! chaos time (default 60 s), cut into rounds of about `WARREN_CHAOS_ROUND_SECS` (15 s, at
//! least 3 rounds) each ended by a SIGKILL; `WARREN_CHAOS_CLIENTS` sets the clients (12);
//! `WARREN_CHAOS_VERIFY_EVERY` drains and checks the ledger every so many rounds as well
//! as at the end (default: only at the end); `WARREN_CHAOS_PROBE_MS` moves the probe's
//! bound. `bench/chaos.sh` runs it for an hour.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{KillableProxy, int, table, text};
use futures_lite::StreamExt;
use integration_tests::{ProcessOptions, WarrenProcess, temp_data_dir};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, BasicRejectOptions, ConfirmSelectOptions,
    ExchangeBindOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, ExchangeUnbindOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

/// Every probe answer must come within this: 2 s, or `WARREN_CHAOS_PROBE_MS` (for a
/// machine so loaded by others that a healthy broker answers later).
fn probe_bound() -> Duration {
    static BOUND: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *BOUND.get_or_init(|| Duration::from_millis(env_u64("WARREN_CHAOS_PROBE_MS").unwrap_or(2000)))
}
/// Pause between two probe round trips.
const PROBE_EVERY: Duration = Duration::from_millis(150);
/// A chaos operation that takes longer than this is counted as stuck (and its connection
/// dropped); the probe, not this, decides whether the broker froze.
const OP_BOUND: Duration = Duration::from_secs(10);
/// Messages the ledger publishes before it awaits their confirms.
const LEDGER_BATCH: u64 = 16;
/// The ledger's durable queues: one through the default exchange, one through a durable
/// direct exchange, one through a durable fanout exchange.
const LEDGER_QUEUES: [&str; 4] = ["ledger.q0", "ledger.q1", "ledger.q2", LEDGER_PARTITIONED];
/// The partitioned ledger queue, bound to `ledger.x` by every key of [`LEDGER_KEYS`].
const LEDGER_PARTITIONED: &str = "ledger.p";
/// Its partition count.
const LEDGER_PARTITIONS: i32 = 4;
/// The ledger stream, bound to the fanout exchange `ledger.f`.
const LEDGER_STREAM: &str = "ledger.s";
/// The keys its messages are published with.
const LEDGER_KEYS: [&str; 7] = ["pk0", "pk1", "pk2", "pk3", "pk4", "pk5", "pk6"];

/// The queues the chaos declares, publishes to, consumes from and deletes. The prefix
/// fixes each one's arguments (see [`queue_spec`]), so that declares by different
/// clients agree and redeclaring is the common case.
const QUEUES: [&str; 25] = [
    "c.plain.0",
    "c.plain.1",
    "c.plain.2",
    "c.ttl.0",
    "c.ttl.1",
    "c.ttl.2",
    "c.ttl.3",
    "c.self.0",
    "c.dlx.0",
    "c.len.0",
    "c.rej.0",
    "c.prio.0",
    "c.exp.0",
    "c.ad.0",
    "c.ad.1",
    "c.dur.0",
    "c.dur.1",
    "c.pol.0",
    "c.pol.1",
    "c.part.0",
    "c.part.1",
    "c.dlq",
    "c.stream.0",
    "c.stream.1",
    "c.stream.2",
];

/// The TTL and dead-lettering queues, which get more traffic and redeclares than the
/// rest: redeclaring them while their heads expire is where the registry deadlocked.
const TTL_QUEUES: [&str; 6] = [
    "c.ttl.0", "c.ttl.1", "c.ttl.2", "c.ttl.3", "c.self.0", "c.dlx.0",
];

/// The chaos's exchanges: name, type, durable.
const EXCHANGES: [(&str, &str, bool); 6] = [
    ("c.x.direct", "direct", false),
    ("c.x.topic", "topic", false),
    ("c.x.fanout", "fanout", false),
    ("c.x.headers", "headers", false),
    ("c.x.e2e", "topic", false),
    ("c.x.dur", "direct", true),
];

/// Routing and binding keys the chaos picks from.
const KEYS: [&str; 9] = [
    "",
    "k1",
    "k2",
    "c.ttl.0",
    "c.plain.1",
    "a.b",
    "c.#",
    "*.ttl.*",
    "#",
];

// ---------------------------------------------------------------------------------------
// Settings and bookkeeping.
// ---------------------------------------------------------------------------------------

/// The run's settings, from the environment.
#[derive(Debug, Clone)]
struct Settings {
    seed: u64,
    secs: u64,
    rounds: u64,
    round: Duration,
    clients: usize,
    verify_every: u64,
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value} is not a number")),
    )
}

impl Settings {
    fn from_env() -> Settings {
        let seed = env_u64("WARREN_CHAOS_SEED").unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or_default()
                ^ u64::from(std::process::id())
        });
        let secs = env_u64("WARREN_CHAOS_SECS").unwrap_or(60).max(3);
        let round_secs = env_u64("WARREN_CHAOS_ROUND_SECS").unwrap_or(15).max(1);
        let rounds = secs.div_ceil(round_secs).max(3);
        let clients = env_u64("WARREN_CHAOS_CLIENTS").unwrap_or(12).max(1);
        let verify_every = env_u64("WARREN_CHAOS_VERIFY_EVERY").unwrap_or(0);
        Settings {
            seed,
            secs,
            rounds,
            round: Duration::from_millis(secs * 1000 / rounds),
            clients: usize::try_from(clients).unwrap_or(12),
            verify_every,
        }
    }

    fn reproduce(&self) -> String {
        format!(
            "WARREN_CHAOS_SEED={} WARREN_CHAOS_SECS={} WARREN_CHAOS_CLIENTS={} \
             cargo test -p integration-tests --test chaos -- --nocapture",
            self.seed, self.secs, self.clients
        )
    }
}

/// Writes a line to the test's real stderr, past libtest's capture, so that the seed and
/// the summary show in every run, passing or not.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Counters the clients, the probe and the ledger share.
#[derive(Default)]
struct Stats {
    ops: Mutex<BTreeMap<&'static str, u64>>,
    errors: Mutex<BTreeMap<String, u64>>,
    /// 5xx closes, described (a broker bug: the chaos only does legal things).
    hard_errors: Mutex<Vec<String>>,
    /// Set while a round is being ended (by SIGKILL, or a freeze): errors then are
    /// expected.
    killing: AtomicBool,
    stuck_ops: AtomicU64,
    probe_max_us: AtomicU64,
    probes: AtomicU64,
    confirm_nacks: AtomicU64,
    returns: AtomicU64,
}

impl Stats {
    fn op(&self, kind: &'static str) {
        *lock(&self.ops).entry(kind).or_default() += 1;
    }

    fn error(&self, kind: &'static str, err: &lapin::Error) {
        if self.killing.load(Ordering::Relaxed) {
            *lock(&self.errors).entry("after-kill".into()).or_default() += 1;
            return;
        }
        let name = match err.kind() {
            lapin::ErrorKind::ProtocolError(e)
                if e.get_id() == 504
                    && e.get_message().as_str().contains("expected 'channel.open'") =>
            {
                // lapin can put a method of a channel the broker is closing after its own
                // channel.close-ok (it sends the close-ok from another task), and a broker
                // must then close the connection, as RabbitMQ does: a client race, not
                // the broker's. (Warren's crossed-close bug gives the same close; it has
                // its own test in chaos_regressions.rs.)
                "504-after-close".into()
            }
            lapin::ErrorKind::ProtocolError(e) => {
                let code = e.get_id();
                if code >= 500 {
                    let mut hard = lock(&self.hard_errors);
                    if hard.len() < 20 {
                        hard.push(format!("{kind}: {code} {}", e.get_message()));
                    }
                }
                code.to_string()
            }
            lapin::ErrorKind::IOError(_) => "io".into(),
            lapin::ErrorKind::InvalidChannelState(..) => "channel-state".into(),
            lapin::ErrorKind::InvalidConnectionState(_) => "connection-state".into(),
            lapin::ErrorKind::MissingHeartbeatError => "heartbeat".into(),
            other => {
                let name = format!("{other:?}");
                let variant = name.split(['(', ' ', '{']).next().unwrap_or_default();
                format!("other-{variant}")
            }
        };
        *lock(&self.errors).entry(name).or_default() += 1;
    }

    fn probe_latency(&self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.probe_max_us.fetch_max(us, Ordering::Relaxed);
    }
}

/// Locks a std mutex, ignoring poison (a panicking task must not hide the summary).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What the ledger knows: the ids the broker confirmed, and those a ledger reader took
/// and acked (which may or may not come back).
#[derive(Default)]
struct Ledger {
    next_id: AtomicU64,
    confirmed: Mutex<HashSet<u64>>,
    /// Every confirmed id routed to the ledger stream, over the whole run.
    stream_confirmed: Mutex<HashSet<u64>>,
    acked: Mutex<HashSet<u64>>,
    held: Mutex<HashSet<u64>>,
    total_confirmed: AtomicU64,
}

/// What draining the ledger found.
#[derive(Debug, Default)]
struct Verdict {
    lost: Vec<u64>,
    dup_redelivered: u64,
    dup_unflagged: u64,
    unconfirmed_present: u64,
    held_back: u64,
    /// A key of the partitioned ledger queue out of publish order, or in two partitions.
    misordered: Vec<String>,
    /// What is wrong with the ledger stream: confirmed ids missing, ids twice or out of
    /// publish order.
    stream_faults: Vec<String>,
}

// ---------------------------------------------------------------------------------------
// The chaos clients.
// ---------------------------------------------------------------------------------------

/// The chaos's operations, each with its weight in the mix.
#[derive(Debug, Clone, Copy)]
enum Op {
    Declare,
    RedeclareTtl,
    DeclareMismatch,
    PassiveMissing,
    Exclusive,
    DeleteQueue,
    Purge,
    Bind,
    Unbind,
    BindExchange,
    UnbindExchange,
    DeclareExchange,
    DeleteExchange,
    Publish,
    PublishConfirm,
    Consume,
    Get,
    Tx,
    CloseChannel,
    CloseConnection,
    DropConnection,
}

const MIX: [(Op, u32); 21] = [
    (Op::Declare, 8),
    (Op::RedeclareTtl, 14),
    (Op::DeclareMismatch, 1),
    (Op::PassiveMissing, 2),
    (Op::Exclusive, 3),
    (Op::DeleteQueue, 3),
    (Op::Purge, 2),
    (Op::Bind, 5),
    (Op::Unbind, 3),
    (Op::BindExchange, 3),
    (Op::UnbindExchange, 2),
    (Op::DeclareExchange, 3),
    (Op::DeleteExchange, 1),
    (Op::Publish, 16),
    (Op::PublishConfirm, 10),
    (Op::Consume, 5),
    (Op::Get, 8),
    (Op::Tx, 4),
    (Op::CloseChannel, 2),
    (Op::CloseConnection, 1),
    (Op::DropConnection, 1),
];

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Declare => "declare",
            Op::RedeclareTtl => "redeclare-ttl",
            Op::DeclareMismatch => "declare-mismatch",
            Op::PassiveMissing => "passive-missing",
            Op::Exclusive => "exclusive",
            Op::DeleteQueue => "delete-queue",
            Op::Purge => "purge",
            Op::Bind => "bind",
            Op::Unbind => "unbind",
            Op::BindExchange => "bind-exchange",
            Op::UnbindExchange => "unbind-exchange",
            Op::DeclareExchange => "declare-exchange",
            Op::DeleteExchange => "delete-exchange",
            Op::Publish => "publish",
            Op::PublishConfirm => "publish-confirm",
            Op::Consume => "consume",
            Op::Get => "get",
            Op::Tx => "tx",
            Op::CloseChannel => "close-channel",
            Op::CloseConnection => "close-connection",
            Op::DropConnection => "drop-connection",
        }
    }

    fn pick(rng: &mut StdRng) -> Op {
        let total: u32 = MIX.iter().map(|(_, w)| w).sum();
        let mut at = rng.random_range(0..total);
        for (op, weight) in MIX {
            if at < weight {
                return op;
            }
            at -= weight;
        }
        Op::Publish
    }
}

/// The declare options and arguments a chaos queue always has, from its name's prefix.
fn queue_spec(name: &str) -> (QueueDeclareOptions, FieldTable) {
    let mut options = QueueDeclareOptions::default();
    let to_dlq = [
        ("x-dead-letter-exchange", text("")),
        ("x-dead-letter-routing-key", text("c.dlq")),
    ];
    let args = if name.starts_with("c.ttl.") {
        let mut args = vec![("x-message-ttl", int(50))];
        args.extend(to_dlq.iter().cloned());
        table(&args)
    } else if name.starts_with("c.self.") {
        // Dead-letters through the default exchange with its own routing key: to itself.
        table(&[
            ("x-message-ttl", int(40)),
            ("x-dead-letter-exchange", text("")),
        ])
    } else if name.starts_with("c.dlx.") {
        table(&[
            ("x-message-ttl", int(60)),
            ("x-dead-letter-exchange", text("c.x.fanout")),
        ])
    } else if name.starts_with("c.len.") {
        let mut args = vec![("x-max-length", int(5)), ("x-overflow", text("drop-head"))];
        args.extend(to_dlq.iter().cloned());
        table(&args)
    } else if name.starts_with("c.rej.") {
        table(&[
            ("x-max-length", int(3)),
            ("x-overflow", text("reject-publish")),
        ])
    } else if name.starts_with("c.prio.") {
        table(&[("x-max-priority", int(5))])
    } else if name.starts_with("c.exp.") {
        table(&[("x-expires", int(300))])
    } else if name.starts_with("c.ad.") {
        options.auto_delete = true;
        FieldTable::default()
    } else if name.starts_with("c.dur.") {
        options.durable = true;
        table(&[("x-max-length", int(1000))])
    } else if name == "c.part.0" {
        table(&[("x-partitions", int(4))])
    } else if name == "c.part.1" {
        table(&[
            ("x-partitions", int(3)),
            ("x-partition-hash-property", text("message_id")),
            ("x-max-length", int(200)),
        ])
    } else if name == "c.stream.2" {
        // Partitioned, read by consumer groups that move partitions as members come
        // and go.
        options.durable = true;
        table(&[
            ("x-queue-type", text("stream")),
            ("x-partitions", int(3)),
            ("x-stream-max-segment-size-bytes", int(8192)),
        ])
    } else if name.starts_with("c.stream.") {
        // Small segments and a byte limit: retention drops segments under the readers.
        options.durable = true;
        table(&[
            ("x-queue-type", text("stream")),
            ("x-stream-max-segment-size-bytes", int(8192)),
            ("x-max-length-bytes", int(40_000)),
        ])
    } else if name == "c.dlq" {
        table(&[("x-max-length", int(500))])
    } else {
        FieldTable::default()
    };
    (options, args)
}

/// Whether a chaos queue is a stream (see [`queue_spec`]).
fn is_stream(name: &str) -> bool {
    name.starts_with("c.stream.")
}

fn exchange_kind(kind: &str) -> lapin::ExchangeKind {
    match kind {
        "topic" => lapin::ExchangeKind::Topic,
        "fanout" => lapin::ExchangeKind::Fanout,
        "headers" => lapin::ExchangeKind::Headers,
        _ => lapin::ExchangeKind::Direct,
    }
}

fn not_connected() -> lapin::Error {
    std::io::Error::other("not connected").into()
}

/// One chaos client: one connection (through a killable proxy for every third client,
/// so that it can vanish without a close), a few channels, short-lived consumers.
struct Client {
    id: usize,
    rng: StdRng,
    broker: SocketAddr,
    stats: Arc<Stats>,
    conn: Option<Connection>,
    proxy: Option<KillableProxy>,
    channel: Option<Channel>,
    confirm: Option<Channel>,
    consumers: JoinSet<()>,
}

impl Client {
    fn new(id: usize, seed: u64, broker: SocketAddr, stats: Arc<Stats>) -> Client {
        Client {
            id,
            rng: StdRng::seed_from_u64(seed),
            broker,
            stats,
            conn: None,
            proxy: None,
            channel: None,
            confirm: None,
            consumers: JoinSet::new(),
        }
    }

    fn proxied(&self) -> bool {
        self.id % 3 == 0
    }

    async fn run(mut self, stop: watch::Receiver<bool>) {
        while !*stop.borrow() {
            let op = Op::pick(&mut self.rng);
            self.stats.op(op.name());
            match tokio::time::timeout(OP_BOUND, self.step(op)).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    self.stats.error(op.name(), &err);
                    self.after_error();
                }
                Err(_) => {
                    if !self.stats.killing.load(Ordering::Relaxed) {
                        self.stats.stuck_ops.fetch_add(1, Ordering::Relaxed);
                    }
                    self.forget_connection();
                }
            }
            while self.consumers.try_join_next().is_some() {}
            // Pacing: a shared two-core machine must keep room for the probe's answers.
            let pause = self.rng.random_range(1..10);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        self.consumers.abort_all();
        self.forget_connection();
    }

    /// Drops channels the broker closed, and the connection if it is gone.
    fn after_error(&mut self) {
        if self.conn.as_ref().is_some_and(|c| !c.status().connected()) {
            self.forget_connection();
        }
        if self
            .channel
            .as_ref()
            .is_some_and(|c| !c.status().connected())
        {
            self.channel = None;
        }
        if self
            .confirm
            .as_ref()
            .is_some_and(|c| !c.status().connected())
        {
            self.confirm = None;
        }
    }

    fn forget_connection(&mut self) {
        self.channel = None;
        self.confirm = None;
        self.conn = None;
        self.proxy = None;
    }

    async fn connection(&mut self) -> lapin::Result<&Connection> {
        if !self.conn.as_ref().is_some_and(|c| c.status().connected()) {
            self.forget_connection();
            let uri = if self.proxied() {
                let proxy = KillableProxy::start(self.broker).await;
                let uri = proxy.uri();
                self.proxy = Some(proxy);
                uri
            } else {
                format!("amqp://guest:guest@{}/%2f", self.broker)
            };
            let conn = Connection::connect(&uri, ConnectionProperties::default()).await?;
            self.conn = Some(conn);
            self.declare_exchanges().await?;
        }
        self.conn.as_ref().ok_or_else(not_connected)
    }

    async fn new_channel(&mut self) -> lapin::Result<Channel> {
        self.connection().await?.create_channel().await
    }

    async fn channel(&mut self) -> lapin::Result<Channel> {
        if let Some(channel) = &self.channel
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        let channel = self.new_channel().await?;
        self.channel = Some(channel.clone());
        Ok(channel)
    }

    async fn confirm_channel(&mut self) -> lapin::Result<Channel> {
        if let Some(channel) = &self.confirm
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        let channel = self.new_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        self.confirm = Some(channel.clone());
        Ok(channel)
    }

    /// Declares every chaos exchange (after a connect: another client may have deleted
    /// one, or the broker restarted).
    async fn declare_exchanges(&mut self) -> lapin::Result<()> {
        let conn = self.conn.as_ref().ok_or_else(not_connected)?;
        let channel = conn.create_channel().await?;
        for (name, kind, durable) in EXCHANGES {
            channel
                .exchange_declare(
                    name.into(),
                    exchange_kind(kind),
                    ExchangeDeclareOptions {
                        durable,
                        ..ExchangeDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
        }
        channel.close(200, "OK".into()).await
    }

    fn queue(&mut self) -> &'static str {
        QUEUES.choose(&mut self.rng).copied().unwrap_or("c.plain.0")
    }

    fn ttl_queue(&mut self) -> &'static str {
        TTL_QUEUES
            .choose(&mut self.rng)
            .copied()
            .unwrap_or("c.ttl.0")
    }

    fn exchange(&mut self) -> (&'static str, &'static str) {
        let (name, kind, _) = EXCHANGES
            .choose(&mut self.rng)
            .copied()
            .unwrap_or(EXCHANGES[0]);
        (name, kind)
    }

    fn key(&mut self) -> &'static str {
        KEYS.choose(&mut self.rng).copied().unwrap_or("k1")
    }

    fn headers_args(&mut self) -> FieldTable {
        let x_match = if self.rng.random_bool(0.5) {
            "any"
        } else {
            "all"
        };
        let value = if self.rng.random_bool(0.5) { "a" } else { "b" };
        table(&[("x-match", text(x_match)), ("h", text(value))])
    }

    fn properties(&mut self) -> BasicProperties {
        let mut props = BasicProperties::default();
        if self.rng.random_bool(0.4) {
            props = props.with_delivery_mode(2);
        }
        if self.rng.random_bool(0.3) {
            props = props.with_priority(self.rng.random_range(0..10));
        }
        if self.rng.random_bool(0.1) {
            let ms = self.rng.random_range(0..100u32);
            props = props.with_expiration(ms.to_string().as_str().into());
        }
        if self.rng.random_bool(0.5) {
            let value = if self.rng.random_bool(0.5) { "a" } else { "b" };
            props = props.with_headers(table(&[("h", text(value))]));
        }
        props
    }

    fn body(&mut self) -> Vec<u8> {
        let len = if self.rng.random_bool(0.01) {
            self.rng.random_range(131_072..400_000)
        } else {
            self.rng.random_range(0..512)
        };
        let fill: u8 = self.rng.random();
        vec![fill; len]
    }

    /// Where a publish goes: mostly queues through the default exchange (the TTL ones
    /// most), else a chaos exchange, now and then one that does not exist (404).
    fn target(&mut self) -> (&'static str, &'static str) {
        let roll = self.rng.random_range(0..100);
        if roll < 30 {
            ("", self.ttl_queue())
        } else if roll < 60 {
            ("", self.queue())
        } else if roll < 98 {
            let (exchange, _) = self.exchange();
            (exchange, self.key())
        } else {
            ("c.x.missing", "k1")
        }
    }

    async fn declare(&mut self, channel: &Channel, name: &str) -> lapin::Result<()> {
        let (options, args) = queue_spec(name);
        channel.queue_declare(name.into(), options, args).await?;
        Ok(())
    }

    async fn publish_some(
        &mut self,
        channel: &Channel,
        count: usize,
        confirm: bool,
    ) -> lapin::Result<()> {
        let mut pending = Vec::with_capacity(count);
        for _ in 0..count {
            let (exchange, key) = self.target();
            let mandatory = confirm && self.rng.random_bool(0.5);
            let body = self.body();
            let props = self.properties();
            let confirmation = channel
                .basic_publish(
                    exchange.into(),
                    key.into(),
                    BasicPublishOptions {
                        mandatory,
                        immediate: false,
                    },
                    &body,
                    props,
                )
                .await?;
            pending.push(confirmation);
        }
        if confirm {
            for confirmation in pending {
                match confirmation.await? {
                    Confirmation::Ack(Some(_)) => {
                        self.stats.returns.fetch_add(1, Ordering::Relaxed);
                    }
                    Confirmation::Nack(_) => {
                        self.stats.confirm_nacks.fetch_add(1, Ordering::Relaxed);
                    }
                    Confirmation::Ack(None) | Confirmation::NotRequested => {}
                }
            }
        }
        Ok(())
    }

    async fn step(&mut self, op: Op) -> lapin::Result<()> {
        match op {
            Op::Declare => {
                let channel = self.channel().await?;
                let name = self.queue();
                self.declare(&channel, name).await
            }
            Op::RedeclareTtl => {
                // The pattern that deadlocked the registry: traffic into a TTL queue
                // with dead-lettering, and redeclares of it while its head expires.
                let channel = self.channel().await?;
                let name = self.ttl_queue();
                self.declare(&channel, name).await?;
                for _ in 0..self.rng.random_range(1..6) {
                    let body = self.body();
                    channel
                        .basic_publish(
                            "".into(),
                            name.into(),
                            BasicPublishOptions::default(),
                            &body,
                            BasicProperties::default(),
                        )
                        .await?;
                }
                let wait = self.rng.random_range(0..70);
                tokio::time::sleep(Duration::from_millis(wait)).await;
                self.declare(&channel, name).await
            }
            Op::DeclareMismatch => {
                let channel = self.channel().await?;
                let name = self.ttl_queue();
                channel
                    .queue_declare(
                        name.into(),
                        QueueDeclareOptions::default(),
                        table(&[("x-message-ttl", int(12_345))]),
                    )
                    .await?;
                Ok(())
            }
            Op::PassiveMissing => {
                let channel = self.channel().await?;
                let missing = format!("c.missing.{}", self.rng.random_range(0..1000));
                channel
                    .queue_declare(
                        missing.as_str().into(),
                        QueueDeclareOptions {
                            passive: true,
                            ..QueueDeclareOptions::default()
                        },
                        FieldTable::default(),
                    )
                    .await?;
                Ok(())
            }
            Op::Exclusive => {
                let channel = self.channel().await?;
                let mine = self.rng.random_bool(0.6);
                let owner = if mine {
                    self.id
                } else {
                    self.rng.random_range(0..16)
                };
                let name = format!("c.excl.{owner}.{}", self.rng.random_range(0..2));
                if mine {
                    channel
                        .queue_declare(
                            name.as_str().into(),
                            QueueDeclareOptions {
                                exclusive: true,
                                ..QueueDeclareOptions::default()
                            },
                            FieldTable::default(),
                        )
                        .await?;
                    channel
                        .basic_publish(
                            "".into(),
                            name.as_str().into(),
                            BasicPublishOptions::default(),
                            b"mine",
                            BasicProperties::default(),
                        )
                        .await?;
                } else {
                    // Another connection's exclusive queue: 405 (or 404 if it is gone).
                    channel
                        .queue_purge(name.as_str().into(), QueuePurgeOptions::default())
                        .await?;
                }
                Ok(())
            }
            Op::DeleteQueue => {
                let channel = self.channel().await?;
                let name = self.queue();
                let options = QueueDeleteOptions {
                    if_unused: self.rng.random_bool(0.2),
                    if_empty: self.rng.random_bool(0.2),
                    nowait: false,
                };
                channel.queue_delete(name.into(), options).await?;
                Ok(())
            }
            Op::Purge => {
                let channel = self.channel().await?;
                let name = self.queue();
                if is_stream(name) {
                    // 540, closing the connection: a stream cannot be purged.
                    return Ok(());
                }
                channel
                    .queue_purge(name.into(), QueuePurgeOptions::default())
                    .await?;
                Ok(())
            }
            Op::Bind | Op::Unbind => {
                let channel = self.channel().await?;
                let queue = self.queue();
                let (exchange, kind) = self.exchange();
                let key = self.key();
                let args = if kind == "headers" {
                    self.headers_args()
                } else {
                    FieldTable::default()
                };
                if matches!(op, Op::Bind) {
                    // Binding a missing queue is a 404: declare it first, mostly.
                    if self.rng.random_bool(0.8) {
                        self.declare(&channel, queue).await?;
                    }
                    channel
                        .queue_bind(
                            queue.into(),
                            exchange.into(),
                            key.into(),
                            QueueBindOptions::default(),
                            args,
                        )
                        .await
                } else {
                    channel
                        .queue_unbind(queue.into(), exchange.into(), key.into(), args)
                        .await
                }
            }
            Op::BindExchange | Op::UnbindExchange => {
                // Cycles and self-bindings included: routing must visit each exchange once.
                let channel = self.channel().await?;
                let (destination, _) = self.exchange();
                let (source, kind) = self.exchange();
                let key = self.key();
                let args = if kind == "headers" {
                    self.headers_args()
                } else {
                    FieldTable::default()
                };
                if matches!(op, Op::BindExchange) {
                    channel
                        .exchange_bind(
                            destination.into(),
                            source.into(),
                            key.into(),
                            ExchangeBindOptions::default(),
                            args,
                        )
                        .await
                } else {
                    channel
                        .exchange_unbind(
                            destination.into(),
                            source.into(),
                            key.into(),
                            ExchangeUnbindOptions::default(),
                            args,
                        )
                        .await
                }
            }
            Op::DeclareExchange => self.declare_exchanges().await,
            Op::DeleteExchange => {
                let channel = self.channel().await?;
                let (name, _) = self.exchange();
                channel
                    .exchange_delete(
                        name.into(),
                        ExchangeDeleteOptions {
                            if_unused: self.rng.random_bool(0.5),
                            nowait: false,
                        },
                    )
                    .await
            }
            Op::Publish => {
                let channel = self.channel().await?;
                let count = self.rng.random_range(1..20);
                self.publish_some(&channel, count, false).await
            }
            Op::PublishConfirm => {
                let channel = self.confirm_channel().await?;
                let count = self.rng.random_range(1..10);
                self.publish_some(&channel, count, true).await
            }
            Op::Consume => self.consume().await,
            Op::Get => {
                let channel = self.channel().await?;
                let name = self.queue();
                if is_stream(name) {
                    // 540, closing the connection: a stream has no basic.get.
                    return Ok(());
                }
                let no_ack = self.rng.random_bool(0.3);
                let got = channel
                    .basic_get(name.into(), BasicGetOptions { no_ack })
                    .await?;
                if let (Some(message), false) = (got, no_ack) {
                    let acker = &message.delivery.acker;
                    match self.rng.random_range(0..5) {
                        0 | 1 => acker.ack(BasicAckOptions::default()).await?,
                        2 => {
                            let requeue = self.rng.random_bool(0.5);
                            acker
                                .nack(BasicNackOptions {
                                    multiple: false,
                                    requeue,
                                })
                                .await?
                        }
                        3 => {
                            let requeue = self.rng.random_bool(0.5);
                            acker.reject(BasicRejectOptions { requeue }).await?
                        }
                        // Left unacked: back to the queue when the channel closes.
                        _ => true,
                    };
                }
                Ok(())
            }
            Op::Tx => {
                let channel = self.new_channel().await?;
                channel.tx_select().await?;
                let count = self.rng.random_range(1..6);
                for _ in 0..count {
                    let (exchange, key) = self.target();
                    let body = self.body();
                    let props = self.properties();
                    channel
                        .basic_publish(
                            exchange.into(),
                            key.into(),
                            BasicPublishOptions::default(),
                            &body,
                            props,
                        )
                        .await?;
                }
                let name = self.queue();
                // A stream has no basic.get (540, closing the connection).
                if self.rng.random_bool(0.3) && !is_stream(name) {
                    if let Some(message) = channel
                        .basic_get(name.into(), BasicGetOptions { no_ack: false })
                        .await?
                    {
                        message
                            .delivery
                            .acker
                            .ack(BasicAckOptions::default())
                            .await?;
                    }
                }
                if self.rng.random_bool(0.5) {
                    channel.tx_commit().await?;
                } else {
                    channel.tx_rollback().await?;
                }
                channel.close(200, "OK".into()).await
            }
            Op::CloseChannel => {
                if let Some(channel) = self.channel.take() {
                    channel.close(200, "OK".into()).await?;
                }
                Ok(())
            }
            Op::CloseConnection => {
                if let Some(conn) = self.conn.take() {
                    self.forget_connection();
                    conn.close(200, "OK".into()).await?;
                }
                Ok(())
            }
            Op::DropConnection => {
                // Abrupt: the socket goes without a connection.close, as when a client
                // process dies; only proxied clients can do it, the others close.
                if let Some(proxy) = self.proxy.take() {
                    proxy.kill().await;
                    self.forget_connection();
                } else if let Some(conn) = self.conn.take() {
                    self.forget_connection();
                    conn.close(200, "OK".into()).await?;
                }
                Ok(())
            }
        }
    }

    /// A consumer's arguments for `queue`: on a partitioned queue, now a plain member of
    /// its group, now a static one, a notified one, a prioritised one or a consumer of
    /// given partitions; now and then a group argument that is refused (out of range,
    /// another group, or on a queue that is not partitioned).
    fn consume_arguments(&mut self, queue: &str) -> FieldTable {
        if is_stream(queue) {
            return self.stream_arguments(queue == "c.stream.2");
        }
        let partitioned = queue.starts_with("c.part.");
        if !partitioned {
            return if self.rng.random_bool(0.01) {
                table(&[("x-consumer-group", text("g"))])
            } else {
                FieldTable::default()
            };
        }
        match self.rng.random_range(0..10) {
            0 => table(&[("x-consumer-group", text("g"))]),
            1 => table(&[
                (
                    "x-group-member",
                    text(&format!("m{}", self.rng.random_range(0..4))),
                ),
                (
                    "x-group-session-timeout",
                    int(self.rng.random_range(0..300)),
                ),
            ]),
            2 => table(&[("x-group-notify", lapin::types::AMQPValue::Boolean(true))]),
            3 => table(&[("x-priority", int(self.rng.random_range(0..3)))]),
            4 => table(&[("x-partition", int(self.rng.random_range(0..3)))]),
            5 if self.rng.random_bool(0.2) => table(&[("x-partition", int(99))]),
            6 if self.rng.random_bool(0.2) => table(&[("x-consumer-group", text("other"))]),
            _ => FieldTable::default(),
        }
    }

    /// A stream consumer's arguments: any start, now and then a filter, and on a
    /// `partitioned` stream one of two groups (else the default group), or given
    /// partitions.
    fn stream_arguments(&mut self, partitioned: bool) -> FieldTable {
        use lapin::types::AMQPValue;
        let offset = match self.rng.random_range(0..6) {
            0 => text("first"),
            1 => text("last"),
            2 => text("next"),
            3 => AMQPValue::LongLongInt(self.rng.random_range(-5..400)),
            4 => AMQPValue::Timestamp(1_700_000_000),
            _ => text("10s"),
        };
        let mut args = vec![("x-stream-offset", offset)];
        if partitioned {
            match self.rng.random_range(0..4) {
                0 => args.push(("x-consumer-group", text("g1"))),
                1 => args.push(("x-consumer-group", text("g2"))),
                2 => args.push(("x-partition", int(self.rng.random_range(0..3)))),
                _ => {}
            }
        }
        if self.rng.random_bool(0.2) {
            args.push(("x-stream-filter", text("red")));
            args.push((
                "x-stream-match-unfiltered",
                AMQPValue::Boolean(self.rng.random_bool(0.5)),
            ));
        }
        table(&args)
    }

    /// Starts a short-lived consumer on a channel of its own, with a prefetch, that acks,
    /// nacks, rejects (requeueing or not) or leaves its deliveries, then cancels or closes.
    async fn consume(&mut self) -> lapin::Result<()> {
        if self.consumers.len() >= 4 {
            return Ok(());
        }
        let channel = self.new_channel().await?;
        let queue = self.queue();
        if self.rng.random_bool(0.7) {
            self.declare(&channel, queue).await?;
        }
        let prefetch = self.rng.random_range(1..20);
        // A stream consumer needs its own prefetch and acks (else 540).
        let global = !is_stream(queue) && self.rng.random_bool(0.1);
        channel
            .basic_qos(prefetch, BasicQosOptions { global })
            .await?;
        let no_ack = !is_stream(queue) && self.rng.random_bool(0.2);
        let arguments = self.consume_arguments(queue);
        let mut consumer = channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack,
                    exclusive: self.rng.random_bool(0.05),
                    ..BasicConsumeOptions::default()
                },
                arguments,
            )
            .await?;
        let mut rng = StdRng::seed_from_u64(self.rng.random());
        let stats = self.stats.clone();
        let lifetime = Duration::from_millis(rng.random_range(50..800));
        self.consumers.spawn(async move {
            let deadline = tokio::time::Instant::now() + lifetime;
            let outcome: lapin::Result<()> = async {
                loop {
                    let next = tokio::time::timeout_at(deadline, consumer.next()).await;
                    let Ok(Some(delivery)) = next else { break };
                    let delivery = delivery?;
                    if no_ack {
                        continue;
                    }
                    let acker = &delivery.acker;
                    match rng.random_range(0..20) {
                        0..=11 => acker.ack(BasicAckOptions::default()).await?,
                        12 => acker.ack(BasicAckOptions { multiple: true }).await?,
                        13 | 14 => {
                            acker
                                .nack(BasicNackOptions {
                                    multiple: false,
                                    requeue: true,
                                })
                                .await?
                        }
                        15 | 16 => {
                            acker
                                .nack(BasicNackOptions {
                                    multiple: false,
                                    requeue: false,
                                })
                                .await?
                        }
                        17 => acker.reject(BasicRejectOptions { requeue: true }).await?,
                        18 => acker.reject(BasicRejectOptions { requeue: false }).await?,
                        _ => true,
                    };
                }
                if rng.random_bool(0.5) {
                    channel
                        .basic_cancel(consumer.tag(), BasicCancelOptions::default())
                        .await?;
                }
                channel.close(200, "OK".into()).await
            }
            .await;
            if let Err(err) = outcome {
                stats.error("consume", &err);
            }
        });
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Policy reloads.
// ---------------------------------------------------------------------------------------

/// Writes a random policy file for the `c.pol.` queues and `c.x.direct` (now and then an
/// invalid one, which the broker must refuse and keep the old).
fn write_policies(path: &Path, rng: &mut StdRng) {
    if rng.random_bool(0.1) {
        let _ = std::fs::write(path, "{\"policies\": [ not json");
        return;
    }
    let mut definition = serde_json::Map::new();
    if rng.random_bool(0.6) {
        definition.insert("message-ttl".into(), rng.random_range(20..200).into());
    }
    if rng.random_bool(0.5) {
        definition.insert("max-length".into(), rng.random_range(1..20).into());
        let overflow = if rng.random_bool(0.5) {
            "drop-head"
        } else {
            "reject-publish"
        };
        definition.insert("overflow".into(), overflow.into());
    }
    if rng.random_bool(0.6) {
        definition.insert("dead-letter-exchange".into(), "".into());
        definition.insert("dead-letter-routing-key".into(), "c.dlq".into());
    }
    if rng.random_bool(0.1) {
        definition.insert("expires".into(), rng.random_range(500..3000).into());
    }
    if definition.is_empty() {
        // An empty definition is refused; this file is meant to be accepted.
        definition.insert("message-ttl".into(), 100.into());
    }
    let mut policies = vec![serde_json::json!({
        "vhost": "/", "name": "chaos-queues", "pattern": "^c\\.pol\\.",
        "apply-to": "queues", "priority": 0, "definition": definition,
    })];
    if rng.random_bool(0.5) {
        policies.push(serde_json::json!({
            "vhost": "/", "name": "chaos-ae", "pattern": "^c\\.x\\.direct$",
            "apply-to": "exchanges", "priority": 0,
            "definition": {"alternate-exchange": "c.x.fanout"},
        }));
    }
    let file = serde_json::json!({ "policies": policies });
    std::fs::write(path, file.to_string()).expect("write the policy file");
}

/// Rewrites the policy file and sends SIGHUP every 0.5–2 s, once the broker serves AMQP
/// (it accepts TCP connections before it has recovered and listens for reloads).
async fn reload_policies(
    path: PathBuf,
    broker: SocketAddr,
    pid: u32,
    seed: u64,
    stats: Arc<Stats>,
    stop: watch::Receiver<bool>,
) {
    let uri = format!("amqp://guest:guest@{broker}/%2f");
    let serving = integration_tests::wait_for(Duration::from_secs(20), || async {
        match Connection::connect(&uri, ConnectionProperties::default()).await {
            Ok(conn) => {
                let _ = conn.close(200, "OK".into()).await;
                true
            }
            Err(_) => *stop.borrow(),
        }
    })
    .await;
    if !serving {
        return;
    }
    let mut rng = StdRng::seed_from_u64(seed);
    while !*stop.borrow() {
        let pause = rng.random_range(500..2000);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        if *stop.borrow() {
            break;
        }
        write_policies(&path, &mut rng);
        stats.op("policy-reload");
        // Quietly: the round's SIGKILL may have come first.
        let _ = std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Runs `warren ctl` on the broker of `dir`; whether it succeeded (it fails for a
/// vhost or user already gone, and while the broker is being killed).
async fn ctl(dir: &Path, args: Vec<String>) -> bool {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(integration_tests::warren_binary())
            .arg("ctl")
            .arg("--data-dir")
            .arg(&dir)
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
    .await
    .unwrap_or(false)
}

/// Administration under the traffic, every 0.2–0.8 s: vhosts `c-v0..2` made (with a
/// connection that declares a durable queue in one and publishes to it under confirms)
/// and deleted under it; users `c-u0..2` made, logged in and deleted; a run-time
/// policy and an operator policy over the `c.pol.` queues set and cleared; a global
/// parameter set or cleared and the definitions exported.
async fn administer(
    dir: PathBuf,
    broker: SocketAddr,
    seed: u64,
    stats: Arc<Stats>,
    stop: watch::Receiver<bool>,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut open: Vec<Connection> = Vec::new();
    let owned = |args: &[&str]| args.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();
    while !*stop.borrow() {
        let pause = rng.random_range(200..800);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let n = rng.random_range(0..3);
        let (vhost, user) = (format!("c-v{n}"), format!("c-u{n}"));
        match rng.random_range(0..7) {
            0 | 1 => {
                stats.op("ctl-add-vhost");
                if ctl(&dir, owned(&["add_vhost", &vhost])).await {
                    let granted = ctl(
                        &dir,
                        owned(&["set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"]),
                    )
                    .await;
                    let uri = format!("amqp://guest:guest@{broker}/{vhost}");
                    if granted
                        && let Ok(conn) =
                            Connection::connect(&uri, ConnectionProperties::default()).await
                    {
                        // Durable, persistent and confirmed: the vhost's deletion must
                        // take them, with the connection, and nothing else.
                        if let Ok(ch) = conn.create_channel().await {
                            let durable = QueueDeclareOptions {
                                durable: true,
                                ..Default::default()
                            };
                            let _ = ch.confirm_select(Default::default()).await;
                            if ch
                                .queue_declare("c.v.q".into(), durable, FieldTable::default())
                                .await
                                .is_ok()
                            {
                                for _ in 0..10 {
                                    let _ = ch
                                        .basic_publish(
                                            "".into(),
                                            "c.v.q".into(),
                                            BasicPublishOptions::default(),
                                            b"in a vhost to be deleted",
                                            BasicProperties::default().with_delivery_mode(2),
                                        )
                                        .await;
                                }
                            }
                        }
                        open.push(conn);
                    }
                }
            }
            2 => {
                stats.op("ctl-delete-vhost");
                ctl(&dir, owned(&["delete_vhost", &vhost])).await;
            }
            3 => {
                stats.op("ctl-user");
                ctl(&dir, owned(&["add_user", &user, "pw"])).await;
                ctl(
                    &dir,
                    owned(&[
                        "set_permissions",
                        &user,
                        "^c\\.u\\.",
                        "^c\\.u\\.",
                        "^c\\.u\\.",
                    ]),
                )
                .await;
                let uri = format!("amqp://{user}:pw@{broker}/%2f");
                if let Ok(conn) = Connection::connect(&uri, ConnectionProperties::default()).await {
                    open.push(conn);
                }
            }
            4 => {
                stats.op("ctl-delete-user");
                ctl(&dir, owned(&["delete_user", &user])).await;
            }
            5 => {
                // A policy or an operator policy (which caps the policy's limit).
                let (set, clear, name) = if rng.random_bool(0.5) {
                    stats.op("ctl-policy");
                    ("set_policy", "clear_policy", "chaos-runtime")
                } else {
                    stats.op("ctl-operator-policy");
                    ("set_operator_policy", "clear_operator_policy", "chaos-cap")
                };
                if rng.random_bool(0.5) {
                    let definition = format!("{{\"max-length\":{}}}", rng.random_range(1..50));
                    ctl(
                        &dir,
                        owned(&[set, "--priority", "1", name, "^c\\.pol\\.", &definition]),
                    )
                    .await;
                } else {
                    ctl(&dir, owned(&[clear, name])).await;
                }
            }
            _ => {
                // A global parameter changed, then everything exported.
                stats.op("ctl-export");
                let value = format!("{{\"round\":{}}}", rng.random_range(0..1000));
                if rng.random_bool(0.5) {
                    ctl(&dir, owned(&["set_global_parameter", "chaos", &value])).await;
                } else {
                    ctl(&dir, owned(&["clear_global_parameter", "chaos"])).await;
                }
                ctl(&dir, owned(&["export_definitions", "-"])).await;
            }
        }
        // Connections closed by a deletion are dropped; a few stay open meanwhile.
        open.retain(|c| c.status().connected());
        if open.len() > 6 {
            open.remove(0);
        }
    }
}

// ---------------------------------------------------------------------------------------
// The liveness probe.
// ---------------------------------------------------------------------------------------

/// Runs the probe on a thread and runtime of its own (so that a busy test runtime cannot
/// make it late) until `stop`; reports the first stall or failure on `failed`.
fn spawn_probe(
    broker: SocketAddr,
    stats: Arc<Stats>,
    stop: watch::Receiver<bool>,
    failed: mpsc::UnboundedSender<String>,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("chaos-probe".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("the probe's runtime");
            if let Err(failure) = runtime.block_on(probe(broker, &stats, stop)) {
                let _ = failed.send(failure);
            }
        })
        .expect("spawn the probe thread")
}

/// Awaits one probe answer, bounded by [`probe_bound`]; records its latency.
async fn answer<T>(
    stats: &Stats,
    what: &str,
    fut: impl std::future::Future<Output = lapin::Result<T>>,
) -> Result<T, String> {
    let started = Instant::now();
    match tokio::time::timeout(probe_bound(), fut).await {
        Ok(Ok(value)) => {
            stats.probe_latency(started.elapsed());
            Ok(value)
        }
        Ok(Err(err)) => Err(format!("probe: {what} failed: {err}")),
        Err(_) => Err(format!(
            "FREEZE: probe: no answer to {what} within {:?}",
            probe_bound()
        )),
    }
}

async fn probe(
    broker: SocketAddr,
    stats: &Stats,
    stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let uri = format!("amqp://guest:guest@{broker}/%2f");
    let conn = answer(
        stats,
        "connect",
        Connection::connect(&uri, ConnectionProperties::default()),
    )
    .await?;
    let channel = answer(stats, "channel.open", conn.create_channel()).await?;
    answer(
        stats,
        "confirm.select",
        channel.confirm_select(ConfirmSelectOptions::default()),
    )
    .await?;
    answer(
        stats,
        "queue.declare probe.q",
        channel.queue_declare(
            "probe.q".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await?;
    let mut n = 0u64;
    while !*stop.borrow() {
        n += 1;
        let private = format!("probe.tmp.{n}");
        answer(
            stats,
            "queue.declare (private)",
            channel.queue_declare(
                private.as_str().into(),
                QueueDeclareOptions {
                    exclusive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            ),
        )
        .await?;
        let body = n.to_string();
        let confirm = answer(stats, "basic.publish (confirm)", async {
            channel
                .basic_publish(
                    "".into(),
                    "probe.q".into(),
                    BasicPublishOptions::default(),
                    body.as_bytes(),
                    BasicProperties::default(),
                )
                .await?
                .await
        })
        .await?;
        if !matches!(confirm, Confirmation::Ack(None)) {
            return Err(format!(
                "probe: publish to probe.q confirmed as {confirm:?}"
            ));
        }
        let got = answer(
            stats,
            "basic.get",
            channel.basic_get("probe.q".into(), BasicGetOptions { no_ack: true }),
        )
        .await?;
        match got {
            Some(message) if message.delivery.data == body.as_bytes() => {}
            other => {
                return Err(format!(
                    "probe: basic.get after a confirmed publish gave {:?}, expected {body}",
                    other.map(|m| String::from_utf8_lossy(&m.delivery.data).into_owned())
                ));
            }
        }
        answer(
            stats,
            "queue.delete (private)",
            channel.queue_delete(private.as_str().into(), QueueDeleteOptions::default()),
        )
        .await?;
        stats.probes.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(PROBE_EVERY).await;
    }
    let _ = tokio::time::timeout(probe_bound(), conn.close(200, "OK".into())).await;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The ledger.
// ---------------------------------------------------------------------------------------

/// Declares the ledger's durable queues, exchanges and bindings (idempotent).
async fn declare_ledger(channel: &Channel) -> lapin::Result<()> {
    for queue in LEDGER_QUEUES {
        let arguments = if queue == LEDGER_PARTITIONED {
            table(&[("x-partitions", int(LEDGER_PARTITIONS))])
        } else {
            FieldTable::default()
        };
        channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                arguments,
            )
            .await?;
    }
    channel
        .queue_declare(
            LEDGER_STREAM.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            table(&[("x-queue-type", text("stream"))]),
        )
        .await?;
    for (exchange, kind, queue, key) in [
        ("ledger.x", lapin::ExchangeKind::Direct, "ledger.q1", "k1"),
        ("ledger.f", lapin::ExchangeKind::Fanout, "ledger.q2", ""),
        ("ledger.f", lapin::ExchangeKind::Fanout, LEDGER_STREAM, ""),
    ] {
        channel
            .exchange_declare(
                exchange.into(),
                kind,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    for key in LEDGER_KEYS {
        channel
            .queue_bind(
                LEDGER_PARTITIONED.into(),
                "ledger.x".into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

/// Where ledger message `id` goes: (exchange, routing key).
fn ledger_route(id: u64) -> (&'static str, &'static str) {
    match id % 4 {
        0 => ("", "ledger.q0"),
        1 => ("ledger.x", "k1"),
        2 => ("ledger.f", ""),
        _ => (
            "ledger.x",
            LEDGER_KEYS[(id / 4) as usize % LEDGER_KEYS.len()],
        ),
    }
}

/// Feeds the ledger queues until `stop`, reconnecting after failures (the broker is
/// killed under it at the end of every round).
async fn feed_ledger(
    broker: SocketAddr,
    ledger: Arc<Ledger>,
    stats: Arc<Stats>,
    seed: u64,
    stop: watch::Receiver<bool>,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let uri = format!("amqp://guest:guest@{broker}/%2f");
    while !*stop.borrow() {
        let result: lapin::Result<()> = async {
            let conn = Connection::connect(&uri, ConnectionProperties::default()).await?;
            let channel = conn.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            declare_ledger(&channel).await?;
            let reader = conn.create_channel().await?;
            let mut batches = 0u64;
            while !*stop.borrow() {
                let mut pending = Vec::new();
                for _ in 0..LEDGER_BATCH {
                    let id = ledger.next_id.fetch_add(1, Ordering::Relaxed);
                    let (exchange, key) = ledger_route(id);
                    let confirm = channel
                        .basic_publish(
                            exchange.into(),
                            key.into(),
                            BasicPublishOptions {
                                mandatory: true,
                                immediate: false,
                            },
                            format!("ledger-{id}").as_bytes(),
                            BasicProperties::default().with_delivery_mode(2),
                        )
                        .await?;
                    pending.push((id, confirm));
                }
                for (id, confirm) in pending {
                    match confirm.await? {
                        Confirmation::Ack(None) => {
                            lock(&ledger.confirmed).insert(id);
                            if ledger_route(id).0 == "ledger.f" {
                                lock(&ledger.stream_confirmed).insert(id);
                            }
                            ledger.total_confirmed.fetch_add(1, Ordering::Relaxed);
                        }
                        Confirmation::Ack(Some(_)) => {
                            stats.returns.fetch_add(1, Ordering::Relaxed);
                            lock(&stats.hard_errors)
                                .push(format!("ledger message {id} returned unroutable"));
                        }
                        Confirmation::Nack(_) | Confirmation::NotRequested => {
                            stats.confirm_nacks.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                batches += 1;
                if batches % 8 == 0 {
                    // Take a message: ack it (it may come back after a kill) or hold it
                    // unacked (it must come back).
                    let queue = LEDGER_QUEUES
                        .choose(&mut rng)
                        .copied()
                        .unwrap_or("ledger.q0");
                    if let Some(message) = reader
                        .basic_get(queue.into(), BasicGetOptions { no_ack: false })
                        .await?
                    {
                        let id = ledger_id(&message.delivery.data);
                        if rng.random_bool(0.5) {
                            if let Some(id) = id {
                                lock(&ledger.acked).insert(id);
                            }
                            message
                                .delivery
                                .acker
                                .ack(BasicAckOptions::default())
                                .await?;
                        } else if let Some(id) = id {
                            lock(&ledger.held).insert(id);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..10))).await;
            }
            Ok(())
        }
        .await;
        if let Err(err) = result {
            stats.error("ledger", &err);
            // Reconnect pacing: the broker is restarting, or was killed.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A delivery's `x-partition` header (-1 without one).
fn partition_header(delivery: &lapin::message::Delivery) -> i64 {
    let value = delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-partition").cloned());
    match value {
        Some(lapin::types::AMQPValue::LongLongInt(p)) => p,
        _ => -1,
    }
}

fn ledger_id(body: &[u8]) -> Option<u64> {
    std::str::from_utf8(body)
        .ok()?
        .strip_prefix("ledger-")?
        .parse()
        .ok()
}

/// Drains every ledger queue and checks it against what was confirmed; forgets what it
/// checked (the drained queues start empty again).
async fn verify_ledger(broker: SocketAddr, ledger: &Ledger) -> Verdict {
    let uri = format!("amqp://guest:guest@{broker}/%2f");
    let conn = common::connect_uri(&uri)
        .await
        .expect("connect to verify the ledger");
    let channel = common::channel(&conn).await;
    common::within("declare the ledger", declare_ledger(&channel))
        .await
        .expect("declare the ledger");
    let mut seen: HashMap<u64, (u32, u32)> = HashMap::new();
    let mut verdict = Verdict::default();
    for queue in LEDGER_QUEUES {
        let ready = common::message_count(&channel, queue).await;
        let mut consumer = common::consume_with(
            &channel,
            queue,
            "",
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await;
        // The partitioned queue's last id per key, and the partition each key was in.
        let mut keys: HashMap<String, (u64, i64)> = HashMap::new();
        for _ in 0..ready {
            let delivery = common::next_delivery(&mut consumer).await;
            let id = ledger_id(&delivery.data).unwrap_or_else(|| {
                panic!(
                    "a foreign message in {queue}: {:?}",
                    String::from_utf8_lossy(&delivery.data)
                )
            });
            if queue == LEDGER_PARTITIONED {
                let partition = partition_header(&delivery);
                let key = delivery.routing_key.as_str().to_owned();
                if let Some((last, was)) = keys.insert(key.clone(), (id, partition))
                    && (last >= id || was != partition)
                {
                    verdict.misordered.push(format!(
                        "key {key}: id {id} in partition {partition} after id {last} in {was}"
                    ));
                }
            }
            let entry = seen.entry(id).or_default();
            entry.0 += 1;
            if !delivery.redelivered {
                entry.1 += 1;
            }
        }
        common::within(
            "basic.cancel",
            channel.basic_cancel(consumer.tag(), BasicCancelOptions::default()),
        )
        .await
        .expect("cancel the drain");
        let left = common::message_count(&channel, queue).await;
        assert_eq!(left, 0, "{queue} still holds {left} after its drain");
    }
    verdict.stream_faults = verify_ledger_stream(&conn, ledger).await;
    let _ = conn.close(200, "OK".into()).await;

    let confirmed = std::mem::take(&mut *lock(&ledger.confirmed));
    let acked = std::mem::take(&mut *lock(&ledger.acked));
    let held = std::mem::take(&mut *lock(&ledger.held));
    for id in &confirmed {
        if !seen.contains_key(id) && !acked.contains(id) {
            verdict.lost.push(*id);
        }
    }
    verdict.lost.sort_unstable();
    for (id, (copies, fresh)) in &seen {
        if *copies > 1 {
            if *fresh > 1 {
                verdict.dup_unflagged += 1;
            } else {
                verdict.dup_redelivered += 1;
            }
        }
        if !confirmed.contains(id) {
            verdict.unconfirmed_present += 1;
        }
        if held.contains(id) {
            verdict.held_back += 1;
        }
    }
    verdict
}

/// Reads the ledger stream from its first offset: every id confirmed into it over the
/// run must be there, once, in publish order.
async fn verify_ledger_stream(conn: &Connection, ledger: &Ledger) -> Vec<String> {
    let channel = common::channel(conn).await;
    let count = common::message_count(&channel, LEDGER_STREAM).await;
    common::within(
        "basic.qos",
        channel.basic_qos(500, BasicQosOptions::default()),
    )
    .await
    .expect("qos");
    let mut consumer = common::consume_with(
        &channel,
        LEDGER_STREAM,
        "",
        BasicConsumeOptions::default(),
        table(&[("x-stream-offset", text("first"))]),
    )
    .await;
    let mut faults = Vec::new();
    let mut seen = HashSet::new();
    let mut last: Option<u64> = None;
    for _ in 0..count {
        let delivery = common::next_delivery(&mut consumer).await;
        common::within("ack", delivery.acker.ack(BasicAckOptions::default()))
            .await
            .expect("ack");
        let Some(id) = ledger_id(&delivery.data) else {
            faults.push(format!(
                "a foreign message {:?}",
                String::from_utf8_lossy(&delivery.data)
            ));
            continue;
        };
        if last.is_some_and(|last| last >= id) && faults.len() < 20 {
            faults.push(format!("id {id} after {last:?}"));
        }
        last = Some(id);
        seen.insert(id);
    }
    let _ = channel.close(200, "OK".into()).await;
    let mut lost: Vec<u64> = lock(&ledger.stream_confirmed)
        .iter()
        .filter(|id| !seen.contains(id))
        .copied()
        .collect();
    lost.sort_unstable();
    if !lost.is_empty() {
        faults.push(format!(
            "{} confirmed ids missing (first {:?})",
            lost.len(),
            &lost[..lost.len().min(20)]
        ));
    }
    faults
}

// ---------------------------------------------------------------------------------------
// Diagnostics.
// ---------------------------------------------------------------------------------------

/// The last `lines` lines of a text.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The lines of thread stacks (gdb's, or the watchdog's) that say where each thread
/// waits: headers, and the first frames in Warren's own source.
fn condense(stacks: &str) -> String {
    let mut out = Vec::new();
    let mut frames = 0;
    let mut previous = "";
    for line in stacks.lines() {
        if line.contains("DETECTED")
            || line.starts_with("Thread ")
            || line.starts_with("--- thread")
            || line.starts_with("=== deadlock")
        {
            out.push(line.to_owned());
            frames = 0;
        } else if frames < 8 && line.contains("server/src/") {
            // The watchdog's backtraces put a frame's name and its file on two lines.
            if line.trim_start().starts_with("at ") {
                out.push(format!("    {}", previous.trim()));
            }
            out.push(format!("    {}", line.trim()));
            frames += 1;
        }
        previous = line;
    }
    out.join("\n")
}

/// Every thread's stack of process `pid`, from gdb (saved to `file`), condensed.
async fn stacks_of(pid: u32, file: &Path) -> String {
    let pid = pid.to_string();
    let gdb = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || {
            std::process::Command::new("gdb")
                .args(["-p", &pid, "-batch", "-ex", "thread apply all bt"])
                .output()
        }),
    )
    .await;
    match gdb {
        Ok(Ok(Ok(output))) => {
            let stacks = String::from_utf8_lossy(&output.stdout);
            let _ = std::fs::write(file, stacks.as_bytes());
            format!("{}\n(all stacks: {})\n", condense(&stacks), file.display())
        }
        Ok(Ok(Err(err))) => format!("(gdb did not run: {err})\n"),
        Ok(Err(err)) => format!("(gdb did not run: {err})\n"),
        Err(_) => "(gdb took over 60 s)\n".into(),
    }
}

/// Whether the broker answers a fresh connection's declare within 5 s: tells a freeze
/// from a hiccup that passed.
async fn answers_again(broker: SocketAddr) -> bool {
    let uri = format!("amqp://guest:guest@{broker}/%2f");
    let attempt = async {
        let conn = Connection::connect(&uri, ConnectionProperties::default()).await?;
        let channel = conn.create_channel().await?;
        channel
            .queue_declare(
                "probe.after-stall".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        conn.close(200, "OK".into()).await
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(5), attempt).await,
        Ok(Ok(()))
    )
}

/// What to print about a frozen or dead broker: its threads' stacks at once (gdb) if it
/// still runs, how it ended if the watchdog then aborts it, whether it answers again,
/// and its stderr (with the watchdog's backtraces).
async fn diagnose(broker: &mut WarrenProcess, stderr_log: &Path, dir: &Path) -> String {
    let mut out = String::new();
    if broker.exit_status().is_none() {
        out.push_str(&format!(
            "broker (pid {}) still runs; its threads' stacks now:\n",
            broker.id()
        ));
        out.push_str(&stacks_of(broker.id(), &dir.with_extension("gdb.txt")).await);
    }
    // The watchdog of test builds finds a lock cycle within half a second and a stalled
    // runtime within five (then prints every stack): give it the chance.
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut status = broker.exit_status();
    while status.is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        status = broker.exit_status();
    }
    match status {
        Some(status) => out.push_str(&format!("broker exited: {status}\n")),
        None if answers_again(broker.addr()).await => out.push_str(
            "the broker answers again: a stall that passed (machine load, or blocking work \
             on its runtime), not a deadlock\n",
        ),
        None => out.push_str("the broker still does not answer: frozen\n"),
    }
    let log = std::fs::read_to_string(stderr_log).unwrap_or_default();
    if log.contains("DETECTED") {
        out.push_str(&format!(
            "the broker's watchdog reported (all of it in {}):\n{}\n",
            stderr_log.display(),
            condense(&log)
        ));
    } else {
        out.push_str(&format!(
            "broker stderr ({}), last lines:\n{}\n",
            stderr_log.display(),
            tail(&log, 30)
        ));
    }
    out
}

/// The broker's own ERROR lines, counted by message (their variable fields cut off).
fn broker_errors(stderr_log: &Path) -> BTreeMap<String, u64> {
    let log = std::fs::read_to_string(stderr_log).unwrap_or_default();
    let mut errors = BTreeMap::new();
    for line in log.lines().filter(|l| l.contains("ERROR")) {
        let message = line.split("ERROR").nth(1).unwrap_or_default();
        let message: String = message
            .chars()
            .filter(|c| !c.is_control())
            .collect::<String>()
            .replace("[0m", "")
            .replace("[2m", "")
            .replace("[3m", "");
        let message = message.split(" queue=").next().unwrap_or_default().trim();
        *errors.entry(message.to_owned()).or_default() += 1;
    }
    errors
}

// ---------------------------------------------------------------------------------------
// The test.
// ---------------------------------------------------------------------------------------

/// Starts the broker on the chaos's data directory with the policy file, stderr to a log.
async fn start_broker(dir: &Path, policies: &Path, stderr_log: &Path) -> WarrenProcess {
    // The chaos may have left an invalid file, which a running broker refuses to reload
    // but a starting one refuses to start with.
    std::fs::write(policies, r#"{"policies": []}"#).expect("write the policy file");
    let policies = policies.to_str().expect("a UTF-8 path");
    WarrenProcess::start_logged(
        dir,
        ProcessOptions {
            args: &["--policies", policies],
            stderr: Some(stderr_log),
        },
    )
    .await
}

#[allow(clippy::too_many_arguments)] // one line from everything the run counted
fn summary(
    settings: &Settings,
    stats: &Stats,
    broker_errors: &BTreeMap<String, u64>,
    rounds_done: u64,
    kills: u64,
    confirmed: u64,
    verdicts: &[Verdict],
    freezes: u64,
) -> String {
    let ops = lock(&stats.ops)
        .iter()
        .map(|(k, v)| format!("{k}:{v}"))
        .collect::<Vec<_>>()
        .join(",");
    let errors = lock(&stats.errors)
        .iter()
        .map(|(k, v)| format!("{k}:{v}"))
        .collect::<Vec<_>>()
        .join(",");
    let lost: usize = verdicts.iter().map(|v| v.lost.len()).sum();
    let dup_redelivered: u64 = verdicts.iter().map(|v| v.dup_redelivered).sum();
    let dup_unflagged: u64 = verdicts.iter().map(|v| v.dup_unflagged).sum();
    let unconfirmed: u64 = verdicts.iter().map(|v| v.unconfirmed_present).sum();
    let held_back: u64 = verdicts.iter().map(|v| v.held_back).sum();
    format!(
        "chaos summary: seed={} secs={} clients={} rounds={rounds_done} kills={kills} \
         ops={{{ops}}} errors={{{errors}}} hard_errors={} stuck_ops={} \
         probes={} probe_max_ms={:.1} confirm_nacks={} returns={} \
         confirmed={confirmed} lost={lost} dup_redelivered={dup_redelivered} \
         dup_unflagged={dup_unflagged} unconfirmed_present={unconfirmed} \
         held_back={held_back} broker_errors={} freezes={freezes}",
        settings.seed,
        settings.secs,
        settings.clients,
        lock(&stats.hard_errors).len(),
        stats.stuck_ops.load(Ordering::Relaxed),
        stats.probes.load(Ordering::Relaxed),
        stats.probe_max_us.load(Ordering::Relaxed) as f64 / 1000.0,
        stats.confirm_nacks.load(Ordering::Relaxed),
        stats.returns.load(Ordering::Relaxed),
        broker_errors.values().sum::<u64>(),
    )
}

#[test]
fn chaos_never_freezes_and_never_loses_what_it_confirmed() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runtime.block_on(chaos());
    }));
    // Once the verdict is in, the clients' threads must not hold the test: lapin 4.12
    // can deadlock two of its own locks when a connection error races its io loop
    // (once, after an hour's run had passed), and dropping the runtime would wait on
    // that worker for ever.
    runtime.shutdown_timeout(Duration::from_secs(10));
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn chaos() {
    let settings = Settings::from_env();
    say(&format!(
        "chaos: seed={} secs={} rounds={} of {:?} clients={} (reproduce: {})",
        settings.seed,
        settings.secs,
        settings.rounds,
        settings.round,
        settings.clients,
        settings.reproduce()
    ));
    let dir = temp_data_dir("chaos");
    std::fs::create_dir_all(&dir).expect("create the data directory");
    let policies = dir.with_extension("policies.json");
    let stderr_log = dir.with_extension("stderr.log");
    let stats = Arc::new(Stats::default());
    let ledger = Arc::new(Ledger::default());
    let mut verdicts = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    let mut freezes = 0u64;
    let mut kills = 0u64;
    let mut rounds_done = 0u64;

    for round in 0..settings.rounds {
        let mut broker = start_broker(&dir, &policies, &stderr_log).await;
        if round > 0 && settings.verify_every > 0 && round % settings.verify_every == 0 {
            verdicts.push(verify_ledger(broker.addr(), &ledger).await);
        }
        stats.killing.store(false, Ordering::Relaxed);
        let round_seed = settings.seed ^ (round << 48);
        let (stop_probe, probe_stopped) = watch::channel(false);
        let (stop, stopped) = watch::channel(false);
        let (failed, mut failure) = mpsc::unbounded_channel();
        let probe = spawn_probe(broker.addr(), stats.clone(), probe_stopped, failed);
        let mut tasks = JoinSet::new();
        for id in 0..settings.clients {
            let client = Client::new(
                id,
                round_seed ^ (id as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                broker.addr(),
                stats.clone(),
            );
            tasks.spawn(client.run(stopped.clone()));
        }
        tasks.spawn(feed_ledger(
            broker.addr(),
            ledger.clone(),
            stats.clone(),
            round_seed ^ 0x1ed9e5,
            stopped.clone(),
        ));
        tasks.spawn(administer(
            dir.clone(),
            broker.addr(),
            round_seed ^ 0xad317,
            stats.clone(),
            stopped.clone(),
        ));
        tasks.spawn(reload_policies(
            policies.clone(),
            broker.addr(),
            broker.id(),
            round_seed ^ 0x9011c1e5,
            stats.clone(),
            stopped.clone(),
        ));

        // Run the round, watching the probe and the broker's life.
        let deadline = tokio::time::Instant::now() + settings.round;
        let frozen = loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => break None,
                Some(why) = failure.recv() => break Some(why),
                () = tokio::time::sleep(Duration::from_millis(100)) => {
                    if let Some(status) = broker.exit_status() {
                        break Some(format!("the broker died during the round: {status}"));
                    }
                }
            }
        };
        rounds_done += 1;
        if let Some(why) = frozen {
            // What the clients see from here on is the freeze's doing, not theirs.
            stats.killing.store(true, Ordering::Relaxed);
            freezes += 1;
            let at = settings.round.as_secs_f64()
                - deadline
                    .saturating_duration_since(tokio::time::Instant::now())
                    .as_secs_f64();
            let details = diagnose(&mut broker, &stderr_log, &dir).await;
            failures.push(format!("round {round}, {at:.1} s in: {why}\n{details}"));
        }

        // End the round: the probe first, then SIGKILL under the traffic, then the rest.
        let _ = stop_probe.send(true);
        let joined = tokio::task::spawn_blocking(move || probe.join()).await;
        assert!(matches!(joined, Ok(Ok(()))), "the probe thread panicked");
        stats.killing.store(true, Ordering::Relaxed);
        broker.kill();
        kills += 1;
        let _ = stop.send(true);
        let ended = tokio::time::timeout(Duration::from_secs(15), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if ended.is_err() {
            tasks.abort_all();
        }
        if !failures.is_empty() {
            break;
        }
    }

    // After the last kill: restart on the same data and check the ledger.
    let broker = start_broker(&dir, &policies, &stderr_log).await;
    verdicts.push(verify_ledger(broker.addr(), &ledger).await);
    drop(broker);

    let confirmed = ledger.total_confirmed.load(Ordering::Relaxed);
    // The broker's ERROR lines are not failures by themselves (some are the expected
    // outcome of a kill), but each kind is worth a look.
    let errors_logged = broker_errors(&stderr_log);
    for (message, count) in &errors_logged {
        say(&format!(
            "chaos: the broker logged ERROR {count}x: {message}"
        ));
    }
    let line = summary(
        &settings,
        &stats,
        &errors_logged,
        rounds_done,
        kills,
        confirmed,
        &verdicts,
        freezes,
    );
    say(&line);
    let lost: Vec<u64> = verdicts.iter().flat_map(|v| v.lost.clone()).collect();
    if !lost.is_empty() {
        failures.push(format!(
            "LOST {} confirmed ledger messages (first ids {:?})",
            lost.len(),
            &lost[..lost.len().min(20)]
        ));
    }
    let misordered: Vec<&String> = verdicts.iter().flat_map(|v| &v.misordered).collect();
    if !misordered.is_empty() {
        failures.push(format!(
            "the partitioned ledger queue broke key order {} times: {:?}",
            misordered.len(),
            &misordered[..misordered.len().min(10)]
        ));
    }
    let stream_faults: Vec<&String> = verdicts.iter().flat_map(|v| &v.stream_faults).collect();
    if !stream_faults.is_empty() {
        failures.push(format!(
            "the ledger stream is wrong: {:?}",
            &stream_faults[..stream_faults.len().min(10)]
        ));
    }
    if verdicts.iter().any(|v| v.dup_unflagged > 0) {
        failures.push("ledger messages came back twice without the redelivered flag".into());
    }
    if confirmed == 0 && freezes == 0 {
        failures.push("the ledger got no confirm at all: the durability check saw nothing".into());
    }
    let hard = lock(&stats.hard_errors).clone();
    if !hard.is_empty() {
        failures.push(format!("the broker closed with 5xx codes: {hard:?}"));
    }
    if failures.is_empty() {
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_file(&policies);
        let _ = std::fs::remove_file(&stderr_log);
        return;
    }
    for failure in &failures {
        say(&format!("chaos FAILURE: {failure}"));
    }
    panic!(
        "chaos failed (seed {}): {}\n{line}\nreproduce: {}\ndata kept in {}",
        settings.seed,
        failures
            .iter()
            .map(|f| f.lines().next().unwrap_or_default())
            .collect::<Vec<_>>()
            .join("; "),
        settings.reproduce(),
        dir.display()
    );
}

//! `warren-perf`'s command line, and the checks that make every run bounded.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use amqp_codec::amq_protocol::types::AMQPValue;
use anyhow::{Result, bail};
use clap::{Parser, Subcommand, ValueEnum};

use super::group_join::JoinOptions;
use super::group_member::MemberOptions;
use super::groups::GroupsOptions;

/// Run time when neither `--duration` nor `--count` is given.
const DEFAULT_DURATION_SECS: f64 = 10.0;
/// Safety limit on publishing time when only `--count` is given.
const COUNT_ONLY_TIME_LIMIT_SECS: f64 = 3600.0;

/// Examples shown after `--help`.
const EXAMPLES: &str = "\
Examples (against a broker on 127.0.0.1:5672 unless --uri says otherwise):
  warren-perf --duration 10                                   1 producer, 1 consumer, 16 B, manual ack
  warren-perf --duration 10 --no-ack --size 1024              auto-ack, 1 KiB bodies
  warren-perf --duration 10 --confirm 256 --persistent -x 4   confirms, durable, 4 producers
  warren-perf --duration 10 --exchange-type fanout --queues 50 --consumers 50
  warren-perf --duration 30 --rate 10000 --json               fixed rate: latency and CPU per message
  warren-perf --duration 5 --queues 1000 -x 2 -y 2 --consumers-per-connection 500
                                                              1000 queues, 4 connections in all
  warren-perf --duration 5 --exchange-type topic --bindings 10000
                                                              routing past 10,000 non-matching bindings
  warren-perf --duration 10 --partitions 4 -x 4 -y 4           a 4-partition queue, a group of 4 members
  warren-perf --duration 10 --stream --confirm 256             a stream, its consumer reading from first
  warren-perf --stream --backlog --count 100000 -y 10 --confirm 256
                                                              fill a stream, then 10 consumers replay it all
  warren-perf groups --duration 60 --messages 200000         consumer-group churn (see groups --help)
  warren-perf group-join --joins 10                           rate of unmoved partitions during joins
  warren-perf --connections 10000 --hold 30                   open 10,000 consumer connections, hold, close
  warren-perf --connections 500 --hold 0 --uri amqps://guest:guest@localhost:5671/%2f --ca-cert ca.pem
                                                              the same over TLS, handshakes counted

Exit status: 0 verified (every message consumed exactly once; on a stream, once by each
consumer), 1 verification failed, 2 the run could not be carried out.";

/// Exchange types the tool can set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExchangeType {
    /// Route by exact routing key: producer `i` sends to queue `i % queues`.
    Direct,
    /// Copy every message to every bound queue.
    Fanout,
    /// Route by pattern; queues are bound with their own name as the key.
    Topic,
}

impl ExchangeType {
    /// The name AMQP uses for this type.
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeType::Direct => "direct",
            ExchangeType::Fanout => "fanout",
            ExchangeType::Topic => "topic",
        }
    }
}

/// Where the consumers of a stream start reading (`--stream-offset`, sent as the
/// `x-stream-offset` consume argument).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamOffset {
    /// The oldest message the stream holds.
    First,
    /// The start of the stream's last chunk.
    Last,
    /// The next message appended after the consumer attaches.
    Next,
    /// This offset (the stream's first message is 0).
    Offset(u64),
}

impl StreamOffset {
    /// The `x-stream-offset` value: a longstr for a name, a long integer for an offset.
    pub fn to_amqp(self) -> AMQPValue {
        match self {
            StreamOffset::Offset(n) => AMQPValue::LongLongInt(i64::try_from(n).unwrap_or(i64::MAX)),
            named => AMQPValue::LongString(named.to_string().into()),
        }
    }
}

impl fmt::Display for StreamOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamOffset::First => f.write_str("first"),
            StreamOffset::Last => f.write_str("last"),
            StreamOffset::Next => f.write_str("next"),
            StreamOffset::Offset(n) => write!(f, "{n}"),
        }
    }
}

impl FromStr for StreamOffset {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "first" => Ok(StreamOffset::First),
            "last" => Ok(StreamOffset::Last),
            "next" => Ok(StreamOffset::Next),
            _ => s
                .parse::<i64>()
                .ok()
                .and_then(|n| u64::try_from(n).ok())
                .map(StreamOffset::Offset)
                .ok_or_else(|| format!("expected first, last, next or an offset ≥ 0, got {s:?}")),
        }
    }
}

/// The modes besides the load run.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Consumer-group churn: a partitioned queue, members started, cancelled and
    /// SIGKILLed as separate processes, and checks of order, exclusivity and loss.
    /// Exit status: 0 every check held, 1 one failed, 2 the run could not be carried out.
    Groups(GroupsOptions),
    /// One member process of `groups` (started by it): prints JSON lines.
    GroupMember(MemberOptions),
    /// Rate lost by the partitions a rebalance does not move: a steady flow into a
    /// partitioned queue while members join and leave.
    GroupJoin(JoinOptions),
}

/// Load generator for AMQP 0-9-1 brokers: publish and consume at full speed or at a
/// fixed rate, measure rates, end-to-end latency and the tool's own CPU, and check that
/// every message arrived exactly once.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "warren-perf",
    version,
    after_help = EXAMPLES,
    args_conflicts_with_subcommands = true
)]
pub struct Options {
    /// Another mode than the load run.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Broker URI (user, password, host, port, vhost; `?heartbeat=N` and
    /// `?frame_max=N` are honoured). `amqps://` (TLS, with --ca-cert) only with
    /// --connections.
    #[arg(
        long,
        env = "WARREN_PERF_URI",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub uri: String,

    /// Publishing connections (one channel each).
    #[arg(long, short = 'x', default_value_t = 1)]
    pub producers: u16,

    /// Consuming connections (one channel each, with --consumers-per-connection
    /// consumers on it), spread over the queues.
    #[arg(long, short = 'y', default_value_t = 1)]
    pub consumers: u16,

    /// Consumers on each consuming connection's channel. Consumer `j` (of
    /// consumers × this, numbered connection by connection) reads queue `j % queues`.
    #[arg(long, default_value_t = 1)]
    pub consumers_per_connection: u16,

    /// Queues. With at least as many producers as queues, producer `i` publishes to
    /// queue `i % N`; with fewer, producer `i` of `P` sends to queues `i`, `i + P`, …
    /// in turn; with fanout every message reaches every queue.
    #[arg(long, default_value_t = 1)]
    pub queues: u16,

    /// Declare each queue partitioned (`x-partitions: N`, Warren only), so that its
    /// consumers share its partitions out as one consumer group. Through the default
    /// exchange messages spread over the partitions round robin.
    #[arg(long)]
    pub partitions: Option<u16>,

    /// Declare each queue as a stream (`x-queue-type: stream`), durable whether or not
    /// --persistent is given (a stream stores every message); consumers read from
    /// --stream-offset, default `first`. Every consumer of a stream reads every message
    /// (nothing is shared out): with N consumers on a stream, each message is delivered
    /// N times and each consumer is checked for all of them. Streams cannot be purged,
    /// so each is deleted and declared afresh before the run (--keep keeps it after).
    /// A replay is --backlog: the stream is filled first, then all consumers attach at
    /// once and read it from --stream-offset. Needs manual acks (no --no-ack) and a
    /// --prefetch above 0 (acks only give credit back); not with --partitions.
    #[arg(long)]
    pub stream: bool,

    /// With --stream: where consumers start, `first`, `last`, `next` or an offset
    /// (N ≥ 0). On the fresh stream of a run without --backlog, consumers attach before
    /// anything is published, so `first`, `last` and `next` all read everything. With
    /// --backlog only `first` or an offset can be checked. An offset N skips the first N
    /// messages of the stream, which must then have one producer (the offsets then
    /// number that producer's messages).
    #[arg(
        long,
        default_value = "first",
        requires = "stream",
        value_name = "first|last|next|N"
    )]
    pub stream_offset: StreamOffset,

    /// Extra bindings on the (direct or topic) exchange whose keys match no message,
    /// leading to a queue that must stay empty: routing cost as bindings grow.
    #[arg(long, default_value_t = 0)]
    pub bindings: u32,

    /// Message body size in bytes.
    #[arg(long, short = 's', default_value_t = 16)]
    pub size: usize,

    /// Seconds to publish for (default 10 unless --count is given; with only --count,
    /// publishing stops after an hour at most).
    #[arg(long, short = 'z')]
    pub duration: Option<f64>,

    /// Messages per producer; publishing stops at this count or at --duration,
    /// whichever comes first.
    #[arg(long, short = 'C')]
    pub count: Option<u64>,

    /// Persistent messages (delivery-mode 2) to durable queues.
    #[arg(long)]
    pub persistent: bool,

    /// Publisher confirms with at most this many unconfirmed messages per producer
    /// (0: no confirms).
    #[arg(long, short = 'c', default_value_t = 0)]
    pub confirm: u32,

    /// Unacknowledged deliveries allowed per consumer (`basic.qos`; 0: unlimited).
    #[arg(long, short = 'q', default_value_t = 200)]
    pub prefetch: u16,

    /// Consume with automatic acknowledgement (no `basic.ack` at all).
    #[arg(long, short = 'a', conflicts_with = "ack_each")]
    pub no_ack: bool,

    /// Acknowledge every delivery with its own `basic.ack`; by default one
    /// `basic.ack multiple=true` covers everything a socket read brought in.
    #[arg(long)]
    pub ack_each: bool,

    /// Queue name, or name prefix when there are several (`NAME-0`, `NAME-1`, …);
    /// default `warren-perf-<pid>`.
    #[arg(long, short = 'u')]
    pub queue: Option<String>,

    /// Exchange to publish to (declared with --exchange-type; `amq.*` exchanges are
    /// used as they are); default: the default exchange, or `<queue>-<type>` when an
    /// --exchange-type is given.
    #[arg(long, short = 'e')]
    pub exchange: Option<String>,

    /// Type of the exchange to declare and bind the queues to.
    #[arg(long, short = 't', value_enum)]
    pub exchange_type: Option<ExchangeType>,

    /// Messages per second per producer (fixed-rate mode, for latency and
    /// CPU-per-message measurements); unlimited by default.
    #[arg(long, short = 'r')]
    pub rate: Option<f64>,

    /// Seconds consumers wait without progress, once producers are done, before
    /// giving up on missing messages.
    #[arg(long, default_value_t = 10.0)]
    pub drain_timeout: f64,

    /// Keep the queues (and a declared exchange) after the run instead of deleting them.
    #[arg(long)]
    pub keep: bool,

    /// Backlog mode: publish everything first (bounded by --count or --duration), then
    /// start the consumers and drain it; the rates are then fill and drain rates.
    #[arg(long)]
    pub backlog: bool,

    /// Connection-scale mode: open this many connections, each with one channel and
    /// one consumer on its own exclusive queue; report how long opening took; print a
    /// line `ready OPENED FAILED` on stdout; hold them until stdin closes (or for
    /// --hold seconds); close them. No messages flow.
    #[arg(long)]
    pub connections: Option<u32>,

    /// With --connections: connections being set up at once. Kept below the usual
    /// listen backlog (128 for both Warren and RabbitMQ): above it, dropped SYNs add
    /// one-second retransmission stalls that measure the kernel, not the broker.
    #[arg(long, default_value_t = 100)]
    pub connect_concurrency: u32,

    /// With --connections: seconds to hold the connections open, instead of waiting
    /// for stdin to close.
    #[arg(long)]
    pub hold: Option<f64>,

    /// With --connections: stop trying new connections after this many failed.
    #[arg(long, default_value_t = 100)]
    pub max_failures: u32,

    /// With --connections and an `amqps://` --uri: the CA certificates (PEM) that the
    /// broker's certificate is verified against, for the URI's host. Every connection
    /// makes a full TLS handshake (no session resumption), counted in its set-up time.
    /// Not used with `amqp://`.
    #[arg(long, env = "WARREN_PERF_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,

    /// Print one JSON object on stdout instead of the text report.
    #[arg(long)]
    pub json: bool,

    /// No per-second progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
}

impl Options {
    /// Rejects combinations that cannot run or could not be verified.
    ///
    /// # Errors
    /// The first problem found, worded for the command line.
    pub fn validate(&self) -> Result<()> {
        if self.producers == 0 {
            bail!("--producers must be at least 1");
        }
        if self.queues == 0 {
            bail!("--queues must be at least 1");
        }
        if self.consumers_per_connection == 0 {
            bail!("--consumers-per-connection must be at least 1");
        }
        if self.consumers != 0 && self.total_consumers() < usize::from(self.queues) {
            bail!(
                "--consumers × --consumers-per-connection ({}) must be 0 or at least --queues ({}): \
                 every queue needs a consumer",
                self.total_consumers(),
                self.queues
            );
        }
        if self.partitions == Some(0) {
            bail!("--partitions must be at least 1");
        }
        if self.connections == Some(0) {
            bail!("--connections must be at least 1");
        }
        if self.connect_concurrency == 0 {
            bail!("--connect-concurrency must be at least 1");
        }
        if let Some(hold) = self.hold {
            if !(hold.is_finite() && hold >= 0.0) {
                bail!("--hold must be a number of seconds");
            }
        }
        if self.size > 64 << 20 {
            bail!("--size above 64 MiB is not supported");
        }
        for (name, value) in [
            ("--duration", self.duration),
            ("--rate", self.rate),
            ("--drain-timeout", Some(self.drain_timeout)),
        ] {
            if let Some(v) = value {
                if !(v.is_finite() && v > 0.0) {
                    bail!("{name} must be a positive number of seconds or messages");
                }
            }
        }
        if self.count == Some(0) {
            bail!("--count must be at least 1");
        }
        if self.stream {
            self.validate_stream()?;
        }
        Ok(())
    }

    /// The rules of `--stream`: what a stream consumer needs, and runs whose
    /// deliveries could not be checked.
    fn validate_stream(&self) -> Result<()> {
        if self.no_ack {
            bail!("--stream cannot be read with --no-ack: stream consumers must acknowledge");
        }
        if self.prefetch == 0 {
            bail!(
                "--stream needs --prefetch above 0: a stream consumer reads only as far as \
                 its prefetch lets it"
            );
        }
        if self.partitions.is_some() {
            bail!("--stream with --partitions is not supported");
        }
        if self.connections.is_some() {
            bail!("--stream does not apply to --connections");
        }
        if self.backlog && matches!(self.stream_offset, StreamOffset::Last | StreamOffset::Next) {
            bail!(
                "--backlog fills the stream before consumers attach: --stream-offset {} would \
                 skip what was published; use first or an offset",
                self.stream_offset
            );
        }
        Ok(())
    }

    /// Consumers in all: consuming connections times consumers on each.
    pub fn total_consumers(&self) -> usize {
        usize::from(self.consumers) * usize::from(self.consumers_per_connection)
    }

    /// How long producers publish at most.
    pub fn publish_time_limit(&self) -> Duration {
        let secs = match (self.duration, self.count) {
            (Some(d), _) => d,
            (None, Some(_)) => COUNT_ONLY_TIME_LIMIT_SECS,
            (None, None) => DEFAULT_DURATION_SECS,
        };
        Duration::from_secs_f64(secs)
    }

    /// The queue name or prefix.
    pub fn queue_prefix(&self) -> String {
        self.queue
            .clone()
            .unwrap_or_else(|| format!("warren-perf-{}", std::process::id()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Options {
        let mut all = vec!["warren-perf"];
        all.extend_from_slice(args);
        Options::try_parse_from(all).expect("parses")
    }

    #[test]
    fn defaults_are_bounded_and_valid() {
        let o = parse(&[]);
        o.validate().expect("valid");
        assert_eq!(o.publish_time_limit(), Duration::from_secs(10));
        assert_eq!((o.size, o.prefetch, o.confirm), (16, 200, 0));
        let o = parse(&["--count", "5"]);
        assert_eq!(o.publish_time_limit(), Duration::from_secs(3600));
    }

    #[test]
    fn rejects_unverifiable_runs() {
        assert!(
            parse(&["--queues", "3", "--consumers", "2"])
                .validate()
                .is_err()
        );
        assert!(parse(&["--producers", "0"]).validate().is_err());
        assert!(parse(&["--rate", "0"]).validate().is_err());
        assert!(Options::try_parse_from(["warren-perf", "--no-ack", "--ack-each"]).is_err());
        parse(&["--queues", "3", "--consumers", "0"])
            .validate()
            .expect("publish only");
        parse(&[
            "--queues",
            "6",
            "--consumers",
            "2",
            "--consumers-per-connection",
            "3",
        ])
        .validate()
        .expect("six consumers on two connections");
        assert!(
            parse(&[
                "--queues",
                "7",
                "--consumers",
                "2",
                "--consumers-per-connection",
                "3"
            ])
            .validate()
            .is_err()
        );
        assert!(parse(&["--connections", "0"]).validate().is_err());
    }

    #[test]
    fn ca_cert_is_a_path() {
        let o = parse(&["--connections", "5", "--ca-cert", "/tmp/ca.pem"]);
        o.validate().expect("valid");
        assert_eq!(o.ca_cert, Some(PathBuf::from("/tmp/ca.pem")));
    }

    #[test]
    fn stream_offsets_parse_and_need_a_stream() {
        let o = parse(&["--stream"]);
        o.validate().expect("valid");
        assert_eq!(o.stream_offset, StreamOffset::First);
        assert!(!parse(&[]).stream);
        for (arg, offset) in [
            ("first", StreamOffset::First),
            ("last", StreamOffset::Last),
            ("next", StreamOffset::Next),
            ("42", StreamOffset::Offset(42)),
        ] {
            assert_eq!(
                parse(&["--stream", "--stream-offset", arg]).stream_offset,
                offset
            );
            assert_eq!(offset.to_string(), arg);
        }
        assert_eq!(StreamOffset::Offset(7).to_amqp(), AMQPValue::LongLongInt(7));
        assert_eq!(
            StreamOffset::First.to_amqp(),
            AMQPValue::LongString("first".into())
        );
        for bad in ["-1", "FIRST", "1h", ""] {
            assert!(
                Options::try_parse_from(["warren-perf", "--stream", "--stream-offset", bad])
                    .is_err(),
                "{bad:?}"
            );
        }
        assert!(Options::try_parse_from(["warren-perf", "--stream-offset", "last"]).is_err());
    }

    #[test]
    fn stream_runs_need_acks_credit_and_a_checkable_start() {
        let refused = |args: &[&str]| {
            let mut all = vec!["--stream"];
            all.extend_from_slice(args);
            parse(&all).validate().err().map(|e| e.to_string())
        };
        let no_ack = refused(&["--no-ack"]).expect("refused");
        assert!(no_ack.contains("--no-ack"), "{no_ack}");
        let prefetch = refused(&["--prefetch", "0"]).expect("refused");
        assert!(prefetch.contains("--prefetch"), "{prefetch}");
        assert!(refused(&["--partitions", "2"]).is_some());
        assert!(refused(&["--connections", "5"]).is_some());
        assert!(refused(&["--backlog", "--stream-offset", "next"]).is_some());
        assert!(refused(&["--backlog", "--stream-offset", "last"]).is_some());
        assert_eq!(refused(&["--backlog", "--count", "5", "-y", "10"]), None);
        assert_eq!(refused(&["--backlog", "--stream-offset", "3"]), None);
        assert_eq!(refused(&["--stream-offset", "next", "--ack-each"]), None);
        parse(&["--no-ack"])
            .validate()
            .expect("a queue may be read with auto-ack");
        parse(&["--prefetch", "0"])
            .validate()
            .expect("and without a prefetch");
    }
}

//! `warren-perf`'s command line, and the checks that make every run bounded.

use std::time::Duration;

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
  warren-perf groups --duration 60 --messages 200000         consumer-group churn (see groups --help)
  warren-perf group-join --joins 10                           rate of unmoved partitions during joins
  warren-perf --connections 10000 --hold 30                   open 10,000 consumer connections, hold, close

Exit status: 0 verified (every message consumed exactly once), 1 verification failed,
2 the run could not be carried out.";

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
    /// `?frame_max=N` are honoured).
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
}

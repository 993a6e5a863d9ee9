//! The queues and exchange a run uses: their names, which queues each producer's
//! messages reach, which queue each consumer reads, and declaring, purging and
//! deleting them on the broker.
//!
//! With `--stream` the queues are streams: every consumer of a stream reads all of its
//! messages ([`Reading::Each`]) where the consumers of a queue share them out
//! ([`Reading::Shared`]).
//!
//! With more queues than producers (and no fanout), each producer publishes to its
//! share of the queues in turn: producer `p` of `P` owns queues `p`, `p + P`, … and
//! sends message `seq` to the `seq % n`-th of its `n` queues. Queue names are
//! zero-padded to one width, so that every message of a producer encodes to the same
//! length whichever queue it goes to.

use std::time::Duration;

use amqp_codec::amq_protocol::protocol::{AMQPClass, exchange, queue};
use amqp_codec::amq_protocol::types::{AMQPValue, FieldTable, ShortString};
use anyhow::{Result, anyhow, bail};

use super::conn::{Connection, Endpoint};
use super::options::{ExchangeType, Options, StreamOffset};

/// Names and routing for one run.
#[derive(Debug, Clone)]
pub struct Topology {
    /// Exchange producers publish to; empty for the default exchange.
    pub exchange: String,
    /// Type of `exchange` (`None` for the default exchange).
    pub exchange_type: Option<ExchangeType>,
    /// Whether the exchange is a pre-declared `amq.*` one (used, never declared or deleted).
    pub builtin_exchange: bool,
    /// Queue names, in index order.
    pub queues: Vec<String>,
    /// Durable queues and exchange (with `--persistent` or `--stream`).
    pub durable: bool,
    /// With `--stream`: the queues are streams, which every consumer reads from this
    /// offset.
    pub stream: Option<StreamOffset>,
    /// Number of producers, which share the queues out between them.
    pub producers: usize,
    /// Queue that the extra, never-matching bindings (`--bindings`) lead to; it must
    /// stay empty.
    pub sink: Option<String>,
    /// Extra bindings whose keys match no routing key the producers use.
    pub bindings: u32,
    /// `x-partitions` for each queue (`--partitions`), if partitioned.
    pub partitions: Option<u16>,
}

/// How the consumers of a queue divide its messages between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// A queue: its consumers share its messages out, so that each message is
    /// delivered once in all.
    Shared,
    /// A stream: every consumer reads every message whose index in its producer's
    /// [`Share`] of the stream is at least `from`.
    Each {
        /// The first share index read: the stream offset consumers start at, which
        /// numbers the messages of the stream's one producer (checked when planning);
        /// 0 when they start at the beginning.
        from: u64,
    },
}

impl Reading {
    /// How many of the first `sent` messages of a share each reader must receive.
    pub fn due(self, sent: u64) -> u64 {
        match self {
            Reading::Shared => sent,
            Reading::Each { from } => sent.saturating_sub(from),
        }
    }
}

/// Where one producer's messages go.
#[derive(Debug, Clone)]
pub struct Route {
    /// Exchange to publish to.
    pub exchange: String,
    /// Routing keys, used in turn: message `seq` is published with
    /// `routing_keys[seq % routing_keys.len()]`.
    pub routing_keys: Vec<String>,
    /// Indexes of the queues the messages reach: with `fanout` every message reaches
    /// all of them; otherwise `routing_keys[k]` reaches `queues[k]` alone.
    pub queues: Vec<usize>,
    /// Whether every message reaches every queue in `queues`.
    pub fanout: bool,
}

/// Which of one producer's messages a queue receives: sequence numbers
/// `offset`, `offset + stride`, `offset + 2 * stride`, …. Consumers and the verdict
/// number them densely by `seq / stride` (their index in the share).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    /// The first sequence number the queue receives.
    pub offset: u64,
    /// Distance between the sequence numbers it receives.
    pub stride: u64,
}

impl Share {
    /// How many of the first `published` messages fall in the share.
    pub fn count(&self, published: u64) -> u64 {
        if published > self.offset {
            (published - self.offset - 1) / self.stride + 1
        } else {
            0
        }
    }

    /// The index in the share of message `seq`, or `None` if it is not in the share.
    pub fn index(&self, seq: u64) -> Option<u64> {
        (seq % self.stride == self.offset).then_some(seq / self.stride)
    }

    /// The sequence number of the share's `index`-th message.
    pub fn seq(&self, index: u64) -> u64 {
        index * self.stride + self.offset
    }
}

impl Route {
    /// Which of this producer's messages queue `queue` receives; `None` if none.
    pub fn share(&self, queue: usize) -> Option<Share> {
        let position = self.queues.iter().position(|&q| q == queue)?;
        Some(if self.fanout {
            Share {
                offset: 0,
                stride: 1,
            }
        } else {
            Share {
                offset: position as u64,
                stride: self.queues.len() as u64,
            }
        })
    }
}

impl Topology {
    /// Works out names and routing from the options.
    ///
    /// # Errors
    /// Names longer than AMQP allows (255 bytes).
    pub fn plan(opts: &Options) -> Result<Self> {
        let prefix = opts.queue_prefix();
        let queues: Vec<String> = if opts.queues == 1 {
            vec![prefix.clone()]
        } else {
            let width = (opts.queues - 1).to_string().len();
            (0..opts.queues)
                .map(|k| format!("{prefix}-{k:0width$}"))
                .collect()
        };
        let (exchange, exchange_type) = match (&opts.exchange, opts.exchange_type) {
            (Some(name), None) if name.is_empty() => (String::new(), None),
            (Some(name), None) => (name.clone(), Some(builtin_type(name))),
            (Some(name), Some(kind)) => (name.clone(), Some(kind)),
            (None, Some(kind)) => (format!("{prefix}-{}", kind.as_str()), Some(kind)),
            (None, None) => (String::new(), None),
        };
        if exchange.is_empty() && exchange_type.is_some() {
            bail!("the default exchange cannot be given a type");
        }
        let sink = (opts.bindings > 0).then(|| format!("{prefix}-unrouted"));
        if opts.bindings > 0
            && !matches!(
                exchange_type,
                Some(ExchangeType::Direct | ExchangeType::Topic)
            )
        {
            bail!("--bindings needs a direct or topic exchange (--exchange-type)");
        }
        for name in queues.iter().chain([&exchange]).chain(&sink) {
            ShortString::try_new(name.as_str()).map_err(|e| anyhow!("name {name:?}: {e}"))?;
        }
        let topology = Self {
            builtin_exchange: exchange.starts_with("amq."),
            exchange,
            exchange_type,
            queues,
            durable: opts.persistent || opts.stream,
            stream: opts.stream.then_some(opts.stream_offset),
            producers: usize::from(opts.producers).max(1),
            sink,
            bindings: opts.bindings,
            partitions: opts.partitions,
        };
        if matches!(topology.reading(), Reading::Each { from } if from > 0) {
            let mut feeders = vec![0usize; topology.queues.len()];
            for p in 0..topology.producers {
                for &q in &topology.route(p).queues {
                    feeders[q] += 1;
                }
            }
            if feeders.iter().any(|&n| n > 1) {
                bail!(
                    "an integer --stream-offset needs one producer per stream (the offsets \
                     then number that producer's messages): use fewer --producers than \
                     --queues, or as many, and no fanout with several producers"
                );
            }
        }
        Ok(topology)
    }

    /// How consumers divide each queue's messages: shared out, or all read by each
    /// consumer of a stream.
    pub fn reading(&self) -> Reading {
        match self.stream {
            None => Reading::Shared,
            Some(StreamOffset::Offset(from)) => Reading::Each { from },
            Some(_) => Reading::Each { from: 0 },
        }
    }

    /// How many times each message routed to queue `queue` must be delivered, with
    /// `consumers` consumers in all (consumer `j` reading queue `j % queues`): once for
    /// a queue, once per consumer of it for a stream.
    pub fn readers(&self, queue: usize, consumers: usize) -> u64 {
        match self.reading() {
            Reading::Shared => 1,
            Reading::Each { .. } => {
                let n = self.queues.len();
                (consumers / n + usize::from(queue < consumers % n)) as u64
            }
        }
    }

    /// The arguments of every `basic.consume`: `x-stream-offset` on streams.
    pub fn consume_arguments(&self) -> FieldTable {
        let mut arguments = FieldTable::default();
        if let Some(offset) = self.stream {
            arguments.insert("x-stream-offset".into(), offset.to_amqp());
        }
        arguments
    }

    /// Where producer `producer` publishes and which queues that reaches: with fanout,
    /// every queue; with at least as many producers as queues, queue
    /// `producer % queues`; otherwise its share of the queues, in turn.
    pub fn route(&self, producer: usize) -> Route {
        if self.exchange_type == Some(ExchangeType::Fanout) {
            return Route {
                exchange: self.exchange.clone(),
                routing_keys: vec![String::new()],
                queues: (0..self.queues.len()).collect(),
                fanout: true,
            };
        }
        let queues: Vec<usize> = if self.producers >= self.queues.len() {
            vec![producer % self.queues.len()]
        } else {
            (producer % self.producers..self.queues.len())
                .step_by(self.producers)
                .collect()
        };
        Route {
            exchange: self.exchange.clone(),
            routing_keys: queues.iter().map(|&q| self.queues[q].clone()).collect(),
            queues,
            fanout: false,
        }
    }

    /// The `i`-th of the `--bindings` extra keys: never equal to (direct) or matching
    /// (topic) a queue name, which is the only kind of routing key producers use.
    /// Topic keys come in three shapes, so that a trie is exercised at its first,
    /// second and third word.
    pub fn unmatched_key(&self, i: u32) -> String {
        let q = &self.queues[0];
        match (self.exchange_type, i % 3) {
            (Some(ExchangeType::Topic), 0) => format!("{q}.{i}"),
            (Some(ExchangeType::Topic), 1) => format!("*.{q}.k{i}"),
            (Some(ExchangeType::Topic), _) => format!("k{i}.#"),
            _ => format!("{q}-unmatched-{i}"),
        }
    }

    /// The queue index consumer `consumer` reads from.
    pub fn consumer_queue(&self, consumer: usize) -> usize {
        consumer % self.queues.len()
    }

    /// Declares the exchange and queues, empties the queues (a previous run may have
    /// left messages) and binds them. Streams cannot be purged: each is deleted and
    /// declared afresh.
    ///
    /// # Errors
    /// The broker refusing any step (e.g. an existing queue with other settings).
    pub fn declare(&self, endpoint: &Endpoint) -> Result<()> {
        let mut conn = Connection::open(endpoint, "warren-perf setup")?;
        if let Some(kind) = self.exchange_type {
            conn.call(AMQPClass::Exchange(exchange::AMQPMethod::Declare(
                exchange::Declare {
                    exchange: self.exchange.as_str().into(),
                    kind: kind.as_str().into(),
                    passive: self.builtin_exchange,
                    durable: self.durable,
                    ..Default::default()
                },
            )))?;
        }
        let mut setup = Vec::new();
        for (k, name) in self.queues.iter().chain(&self.sink).enumerate() {
            // The sink of the --bindings keys stays a plain queue, whose count is read.
            let stream = self.stream.is_some() && k < self.queues.len();
            let mut arguments = FieldTable::default();
            if let Some(n) = self.partitions.filter(|_| k < self.queues.len()) {
                arguments.insert("x-partitions".into(), AMQPValue::ShortUInt(n));
            }
            if stream {
                arguments.insert(
                    "x-queue-type".into(),
                    AMQPValue::LongString("stream".into()),
                );
                setup.push(delete_queue(name));
            }
            setup.push(AMQPClass::Queue(queue::AMQPMethod::Declare(
                queue::Declare {
                    queue: name.as_str().into(),
                    durable: self.durable,
                    arguments,
                    ..Default::default()
                },
            )));
            if !stream {
                setup.push(AMQPClass::Queue(queue::AMQPMethod::Purge(queue::Purge {
                    queue: name.as_str().into(),
                    nowait: false,
                })));
            }
        }
        if self.exchange_type.is_some() {
            for name in &self.queues {
                let routing_key = match self.exchange_type {
                    Some(ExchangeType::Fanout) => "",
                    _ => name.as_str(),
                };
                setup.push(self.bind(name, routing_key));
            }
        }
        if let Some(sink) = &self.sink {
            for i in 0..self.bindings {
                setup.push(self.bind(sink, &self.unmatched_key(i)));
            }
        }
        conn.call_many(setup)?;
        conn.close(Duration::from_secs(5))
    }

    fn bind(&self, queue: &str, routing_key: &str) -> AMQPClass {
        AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
            queue: queue.into(),
            exchange: self.exchange.as_str().into(),
            routing_key: routing_key.into(),
            ..Default::default()
        }))
    }

    /// Messages sitting in the sink queue of the `--bindings` keys (which nothing
    /// should reach); 0 when there is no sink.
    ///
    /// # Errors
    /// The broker refusing the passive declare.
    pub fn sink_messages(&self, endpoint: &Endpoint) -> Result<u32> {
        let Some(sink) = &self.sink else {
            return Ok(0);
        };
        let mut conn = Connection::open(endpoint, "warren-perf check")?;
        let reply = conn.call(AMQPClass::Queue(queue::AMQPMethod::Declare(
            queue::Declare {
                queue: sink.as_str().into(),
                passive: true,
                ..Default::default()
            },
        )))?;
        let _ = conn.close(Duration::from_secs(5));
        match reply {
            AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok)) => Ok(ok.message_count),
            other => bail!("expected queue.declare-ok, got {other:?}"),
        }
    }

    /// Deletes the queues and, unless it is the default or an `amq.*` exchange, the
    /// exchange.
    ///
    /// # Errors
    /// The broker refusing a deletion.
    pub fn delete(&self, endpoint: &Endpoint) -> Result<()> {
        let mut conn = Connection::open(endpoint, "warren-perf cleanup")?;
        conn.call_many(
            self.queues
                .iter()
                .chain(&self.sink)
                .map(|name| delete_queue(name)),
        )?;
        if self.exchange_type.is_some() && !self.builtin_exchange {
            conn.call(AMQPClass::Exchange(exchange::AMQPMethod::Delete(
                exchange::Delete {
                    exchange: self.exchange.as_str().into(),
                    ..Default::default()
                },
            )))?;
        }
        conn.close(Duration::from_secs(5))
    }
}

/// `queue.delete` of `name` (which brokers answer with `delete-ok` even when there is
/// no such queue).
fn delete_queue(name: &str) -> AMQPClass {
    AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
        queue: name.into(),
        ..Default::default()
    }))
}

/// The type of a named exchange given without `--exchange-type`: that of the
/// pre-declared `amq.fanout` / `amq.topic`, else direct.
fn builtin_type(name: &str) -> ExchangeType {
    match name {
        "amq.fanout" => ExchangeType::Fanout,
        "amq.topic" => ExchangeType::Topic,
        _ => ExchangeType::Direct,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn plan(args: &[&str]) -> Topology {
        let mut all = vec!["warren-perf", "--queue", "q"];
        all.extend_from_slice(args);
        Topology::plan(&Options::try_parse_from(all).expect("parses")).expect("plans")
    }

    #[test]
    fn default_exchange_spreads_producers_over_queues() {
        let t = plan(&["--queues", "3", "--producers", "5"]);
        assert_eq!(t.exchange, "");
        assert_eq!(t.queues, ["q-0", "q-1", "q-2"]);
        let r = t.route(4);
        assert_eq!(
            (r.routing_keys, r.queues),
            (vec!["q-1".to_string()], vec![1])
        );
        assert_eq!(t.consumer_queue(5), 2);
        assert_eq!(plan(&[]).queues, ["q"]);
    }

    #[test]
    fn producers_take_turns_over_their_share_of_many_queues() {
        let t = plan(&["--queues", "11", "--producers", "4", "--consumers", "11"]);
        assert_eq!(
            (t.queues[0].as_str(), t.queues[10].as_str()),
            ("q-00", "q-10")
        );
        let r = t.route(1);
        assert_eq!(r.queues, [1, 5, 9]);
        assert_eq!(r.routing_keys, ["q-01", "q-05", "q-09"]);
        let share = r.share(9).expect("in the share");
        assert_eq!(
            share,
            Share {
                offset: 2,
                stride: 3
            }
        );
        assert_eq!((share.count(2), share.count(3), share.count(6)), (0, 1, 2));
        assert_eq!((share.index(4), share.index(8)), (None, Some(2)));
        assert_eq!(share.seq(2), 8);
        assert_eq!(r.share(2), None);
    }

    #[test]
    fn extra_bindings_never_match_a_queue_name() {
        let t = plan(&["--exchange-type", "topic", "--bindings", "3"]);
        let keys: Vec<String> = (0..3).map(|i| t.unmatched_key(i)).collect();
        assert_eq!(keys, ["q.0", "*.q.k1", "k2.#"]);
        assert_eq!(t.sink.as_deref(), Some("q-unrouted"));
        let mut all = vec!["warren-perf", "--bindings", "3"];
        all.extend(["--exchange-type", "fanout"]);
        assert!(Topology::plan(&Options::try_parse_from(all).expect("parses")).is_err());
    }

    #[test]
    fn streams_are_durable_read_whole_by_each_consumer_from_their_offset() {
        let t = plan(&[]);
        assert_eq!((t.durable, t.reading()), (false, Reading::Shared));
        assert_eq!(t.readers(0, 10), 1);
        assert!(t.consume_arguments().inner().is_empty());
        let t = plan(&["--stream", "--queues", "3", "-y", "7"]);
        assert_eq!((t.durable, t.reading()), (true, Reading::Each { from: 0 }));
        // Consumers 0, 3, 6 read stream 0; 1, 4 stream 1; 2, 5 stream 2.
        let readers: Vec<u64> = (0..3).map(|q| t.readers(q, 7)).collect();
        assert_eq!(readers, [3, 2, 2]);
        assert_eq!(
            t.consume_arguments().inner().get("x-stream-offset"),
            Some(&AMQPValue::LongString("first".into()))
        );
        let t = plan(&["--stream", "--stream-offset", "next"]);
        assert_eq!(t.reading(), Reading::Each { from: 0 });
        let t = plan(&["--stream", "--stream-offset", "5"]);
        assert_eq!(t.reading(), Reading::Each { from: 5 });
        assert_eq!(
            t.consume_arguments().inner().get("x-stream-offset"),
            Some(&AMQPValue::LongLongInt(5))
        );
        assert_eq!(
            (
                t.reading().due(8),
                t.reading().due(3),
                Reading::Shared.due(8)
            ),
            (3, 0, 8)
        );
    }

    #[test]
    fn an_integer_stream_offset_needs_one_producer_per_stream() {
        let planned = |args: &[&str]| {
            let mut all = vec!["warren-perf", "--stream", "--stream-offset", "2"];
            all.extend_from_slice(args);
            Topology::plan(&Options::try_parse_from(all).expect("parses")).is_ok()
        };
        assert!(planned(&[]));
        assert!(planned(&["-x", "2", "--queues", "2"]));
        assert!(planned(&["-x", "2", "--queues", "5", "-y", "5"]));
        assert!(!planned(&["-x", "2"]));
        assert!(!planned(&["-x", "3", "--queues", "2", "-y", "2"]));
        assert!(!planned(&[
            "-x",
            "2",
            "--queues",
            "2",
            "--exchange-type",
            "fanout"
        ]));
        assert!(planned(&[
            "--queues",
            "2",
            "-y",
            "2",
            "--exchange-type",
            "fanout"
        ]));
        let mut all = vec!["warren-perf", "--stream", "--stream-offset", "first"];
        all.extend(["-x", "2"]);
        assert!(Topology::plan(&Options::try_parse_from(all).expect("parses")).is_ok());
    }

    #[test]
    fn fanout_reaches_every_queue() {
        let t = plan(&["--queues", "4", "--exchange-type", "fanout"]);
        assert_eq!(t.exchange, "q-fanout");
        let r = t.route(0);
        assert_eq!((r.routing_keys[0].as_str(), r.queues.len()), ("", 4));
        assert_eq!(
            r.share(3),
            Some(Share {
                offset: 0,
                stride: 1
            })
        );
        let t = plan(&["--exchange", "amq.fanout"]);
        assert!(t.builtin_exchange);
        assert_eq!(t.exchange_type, Some(ExchangeType::Fanout));
    }
}

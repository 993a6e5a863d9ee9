//! The queues and exchange a run uses: their names, which queues each producer's
//! messages reach, which queue each consumer reads, and declaring, purging and
//! deleting them on the broker.

use std::time::Duration;

use amqp_codec::amq_protocol::protocol::{AMQPClass, exchange, queue};
use amqp_codec::amq_protocol::types::ShortString;
use anyhow::{Result, anyhow, bail};

use super::conn::{Connection, Endpoint};
use super::options::{ExchangeType, Options};

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
    /// Durable queues and exchange (with `--persistent`).
    pub durable: bool,
}

/// Where one producer's messages go.
#[derive(Debug, Clone)]
pub struct Route {
    /// Exchange to publish to.
    pub exchange: String,
    /// Routing key to publish with.
    pub routing_key: String,
    /// Indexes of the queues each message reaches.
    pub queues: Vec<usize>,
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
            (0..opts.queues).map(|k| format!("{prefix}-{k}")).collect()
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
        for name in queues.iter().chain([&exchange]) {
            ShortString::try_new(name.as_str()).map_err(|e| anyhow!("name {name:?}: {e}"))?;
        }
        Ok(Self {
            builtin_exchange: exchange.starts_with("amq."),
            exchange,
            exchange_type,
            queues,
            durable: opts.persistent,
        })
    }

    /// Where producer `producer` publishes and which queues that reaches.
    pub fn route(&self, producer: usize) -> Route {
        if self.exchange_type == Some(ExchangeType::Fanout) {
            return Route {
                exchange: self.exchange.clone(),
                routing_key: String::new(),
                queues: (0..self.queues.len()).collect(),
            };
        }
        let q = producer % self.queues.len();
        Route {
            exchange: self.exchange.clone(),
            routing_key: self.queues[q].clone(),
            queues: vec![q],
        }
    }

    /// The queue index consumer `consumer` reads from.
    pub fn consumer_queue(&self, consumer: usize) -> usize {
        consumer % self.queues.len()
    }

    /// Declares the exchange and queues, empties the queues (a previous run may have
    /// left messages) and binds them.
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
        for name in &self.queues {
            conn.call(AMQPClass::Queue(queue::AMQPMethod::Declare(
                queue::Declare {
                    queue: name.as_str().into(),
                    durable: self.durable,
                    ..Default::default()
                },
            )))?;
            conn.call(AMQPClass::Queue(queue::AMQPMethod::Purge(queue::Purge {
                queue: name.as_str().into(),
                nowait: false,
            })))?;
            if self.exchange_type.is_some() {
                let routing_key = match self.exchange_type {
                    Some(ExchangeType::Fanout) => "",
                    _ => name.as_str(),
                };
                conn.call(AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
                    queue: name.as_str().into(),
                    exchange: self.exchange.as_str().into(),
                    routing_key: routing_key.into(),
                    ..Default::default()
                })))?;
            }
        }
        conn.close(Duration::from_secs(5))
    }

    /// Deletes the queues and, unless it is the default or an `amq.*` exchange, the
    /// exchange.
    ///
    /// # Errors
    /// The broker refusing a deletion.
    pub fn delete(&self, endpoint: &Endpoint) -> Result<()> {
        let mut conn = Connection::open(endpoint, "warren-perf cleanup")?;
        for name in &self.queues {
            conn.call(AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
                queue: name.as_str().into(),
                ..Default::default()
            })))?;
        }
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
        let t = plan(&["--queues", "3"]);
        assert_eq!(t.exchange, "");
        assert_eq!(t.queues, ["q-0", "q-1", "q-2"]);
        let r = t.route(4);
        assert_eq!((r.routing_key.as_str(), r.queues), ("q-1", vec![1]));
        assert_eq!(t.consumer_queue(5), 2);
        assert_eq!(plan(&[]).queues, ["q"]);
    }

    #[test]
    fn fanout_reaches_every_queue() {
        let t = plan(&["--queues", "4", "--exchange-type", "fanout"]);
        assert_eq!(t.exchange, "q-fanout");
        let r = t.route(0);
        assert_eq!((r.routing_key.as_str(), r.queues.len()), ("", 4));
        let t = plan(&["--exchange", "amq.fanout"]);
        assert!(t.builtin_exchange);
        assert_eq!(t.exchange_type, Some(ExchangeType::Fanout));
    }
}

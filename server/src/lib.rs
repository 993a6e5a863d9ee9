//! Warren, an AMQP 0-9-1 message broker that stands in for RabbitMQ.
//!
//! - [`config`]: every setting, from flags and `WARREN_*` variables.
//! - [`server`]: the listener, the accept loop and graceful shutdown.
//! - [`shutdown`]: the broker-wide stop signal as connections see it.
//! - [`connection`]: handshake, heartbeats, frame I/O and dispatch to channels.
//! - [`channel`]: per-channel state: content, consumers, unacked deliveries, confirms, tx.
//! - [`broker`]: the shared registry of vhosts and users.
//! - [`stats`]: message counters, as RabbitMQ's `message_stats` count them.
//! - [`registry`]: the open connections, channels and consumers, as the API lists them.
//! - [`vhost`]: one vhost's exchanges, queues and bindings, with RabbitMQ's rules.
//! - [`exchange`]: routing, one file per exchange type.
//! - [`queue`]: one queue's ready messages, consumers and credit.
//! - [`message`]: messages as queues hold them.
//! - [`store`]: the durable store: one append-only segment log per queue, crash recovery.
//! - [`error`]: AMQP reply codes and RabbitMQ's error texts, in one place.
//! - [`names`]: server-generated queue names and consumer tags.
//! - [`own_json`]: reading back the JSON Warren wrote, however deep.
//! - [`management`]: RabbitMQ's management HTTP API, over the administration operations.
//! - [`prometheus`]: `rabbitmq_prometheus`'s metrics endpoints.
//! - [`policy`]: RabbitMQ policies: per-name queue and exchange settings from a file.
//! - [`watchdog`]: test builds only: aborts with backtraces when threads deadlock.

pub mod access;
pub mod admin;
pub mod alarms;
pub mod broker;
pub mod channel;
pub mod config;
pub mod connection;
pub mod ctl;
pub mod erlang;
pub mod error;
pub mod exchange;
pub mod management;
pub mod message;
pub mod names;
pub mod own_json;
pub mod policy;
pub mod prometheus;
pub mod queue;
pub mod registry;
pub mod server;
pub mod shutdown;
pub mod stats;
pub mod store;
pub mod timers;
pub mod tls;
pub mod vhost;
pub mod watchdog;

pub use config::Config;

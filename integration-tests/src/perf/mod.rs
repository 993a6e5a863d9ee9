//! `warren-perf`, the load tool: producers and consumers on raw sockets (built on this
//! workspace's `amqp-codec`), fast enough never to be the bottleneck, measuring rates,
//! end-to-end latency and its own CPU, and checking that every message arrived once.
//!
//! One concern per module:
//!
//! - [`options`]: the command line and its checks.
//! - [`conn`]: URI, blocking connection, handshake and setup calls.
//! - [`connections`]: the connection-scale mode (`--connections`), on tokio tasks.
//! - [`fdlimit`]: raising the open-file limit.
//! - [`wire`]: read buffer, frame splitting, hot-path method fields.
//! - [`stamp`]: the send time and identity each message carries.
//! - [`message`]: encoding a stamped message into a producer's batch.
//! - [`topology`]: queue and exchange names, routing, declare and delete.
//! - [`producer`] and [`confirms`]: publishing, and publisher-confirm bookkeeping.
//! - [`consumer`]: consuming, acking, and recording what arrived.
//! - [`seqset`]: bit sets of sequence numbers.
//! - [`shared`]: counters and flags the threads share.
//! - [`progress`]: per-second progress lines.
//! - [`cpu`]: the tool's CPU time.
//! - [`latency`]: the latency histogram and its percentiles.
//! - [`verify`]: the exactly-once verdict.
//! - [`report`]: the text and JSON reports.
//! - [`run`]: one run from start to finish.
//! - [`groups`], [`group_member`] and [`group_check`]: the consumer-group churn
//!   benchmark (`warren-perf groups`), its member processes (`warren-perf
//!   group-member`) and the checks over what they report.
//! - [`group_join`]: how much a rebalance slows the partitions it does not move
//!   (`warren-perf group-join`).
//!
//! The tests of the private `capacity` module measure the tool's own ceiling against
//! an in-process null broker.

#[cfg(test)]
mod capacity;
pub mod confirms;
pub mod conn;
pub mod connections;
pub mod consumer;
pub mod cpu;
pub mod fdlimit;
pub mod group_check;
pub mod group_join;
pub mod group_member;
pub mod groups;
pub mod latency;
pub mod message;
pub mod options;
pub mod producer;
pub mod progress;
pub mod report;
pub mod run;
pub mod seqset;
pub mod shared;
pub mod stamp;
pub mod topology;
pub mod verify;
pub mod wire;

pub use options::{Command, Options};
pub use report::{Outcome, Report};
pub use run::run;

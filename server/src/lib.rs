//! Warren, an AMQP 0-9-1 message broker that stands in for RabbitMQ.
//!
//! - [`config`]: every setting, from flags and `WARREN_*` variables.
//! - [`server`]: the listener, the accept loop and graceful shutdown.

pub mod config;
pub mod server;

pub use config::Config;

//! The listener, the accept loop and graceful shutdown.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::config::Config;

/// Serves AMQP connections from `listener` until `shutdown` resolves.
///
/// # Errors
/// Only if the broker cannot start (its data directory is unusable).
pub async fn run(
    listener: TcpListener,
    config: Arc<Config>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let _ = (listener, config);
    shutdown.await;
    Ok(())
}

//! The listener, the accept loop and graceful shutdown.
//!
//! One stop signal is broadcast to every connection
//! ([`Shutdown`](crate::shutdown::Shutdown)); each closes its client with 320
//! CONNECTION_FORCED, and `run` returns once all connection tasks have ended.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use tracing::{error, info};

use crate::broker::Broker;
use crate::config::Config;
use crate::connection;
use crate::shutdown::Shutdown;

/// How long connections get to close after the stop signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads the policy file (if any) again on every SIGHUP, as long as the broker runs.
async fn reload_on_hangup(broker: std::sync::Weak<Broker>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            error!("cannot listen for SIGHUP; policies will not be reloaded");
            return;
        };
        while hangups.recv().await.is_some() {
            let Some(broker) = broker.upgrade() else {
                return;
            };
            // A refused reload is logged, with its reason, where it is refused.
            let _ = broker.reload_policies();
        }
    }
    #[cfg(not(unix))]
    let _ = broker;
}

/// Serves AMQP connections from `listener` until `shutdown` resolves, then closes every
/// connection with 320 CONNECTION_FORCED and returns when they are gone.
///
/// # Errors
/// If the broker cannot start: its data directory is locked by another broker, not
/// Warren's, or unreadable.
pub async fn run(
    listener: TcpListener,
    config: Arc<Config>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    // Test builds (`deadlock-detection`) abort with backtraces on a lock cycle.
    crate::watchdog::start();
    let broker = Arc::new(Broker::open(config).map_err(std::io::Error::other)?);
    {
        let config = broker.config();
        let monitored: Arc<dyn crate::alarms::Monitored> = broker.clone();
        crate::alarms::spawn_monitor(
            Arc::downgrade(&monitored),
            config.memory_limit,
            config.disk_free_limit,
            config.data_dir.clone(),
        );
    }
    tokio::spawn(reload_on_hangup(Arc::downgrade(&broker)));
    {
        let config = broker.config();
        let socket = config
            .ctl_socket
            .clone()
            .unwrap_or_else(|| crate::ctl::socket_path(&config.data_dir));
        let weak = Arc::downgrade(&broker);
        tokio::spawn(async move {
            if let Err(error) = crate::ctl::serve(socket.clone(), weak).await {
                tracing::error!(socket = %socket.display(), %error, "warren ctl is not available");
            }
        });
    }
    let (stop, stopping) = watch::channel(false);
    let tracker = TaskTracker::new();
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "accepting AMQP connections");
    }
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(5);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    backoff = Duration::from_millis(5);
                    // Small frames (confirms, acks) must not wait for Nagle.
                    let _ = stream.set_nodelay(true);
                    let (reader, writer) = stream.into_split();
                    tracker.spawn(connection::serve(
                        reader,
                        writer,
                        peer,
                        broker.clone(),
                        Shutdown::from(stopping.clone()),
                    ));
                }
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    error!(error = %e, "accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            },
        }
    }
    info!("shutting down");
    drop(listener);
    let _ = stop.send(true);
    tracker.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, tracker.wait())
        .await
        .is_err()
    {
        error!("connections did not close in time");
    }
    if !broker.sync_all().await {
        error!("could not make every queue's log durable at shutdown");
    }
    info!("stopped");
    Ok(())
}

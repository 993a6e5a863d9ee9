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
use crate::connection::{self, Transport};
use crate::shutdown::Shutdown;
use crate::tls::{Tls, TlsSettings};

/// The sockets the broker accepts on: plain AMQP, AMQPS (TLS), or both.
#[derive(Debug, Default)]
pub struct Listeners {
    /// Plain TCP (5672); none with `--no-tcp`.
    pub amqp: Option<TcpListener>,
    /// TLS (5671), when a certificate and key are given.
    pub amqps: Option<TcpListener>,
    /// The management HTTP API (15672); none with `--no-management`.
    pub management: Option<TcpListener>,
    /// Prometheus metrics (15692); none with `--no-prometheus`.
    pub prometheus: Option<TcpListener>,
}

/// How long a client has for its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long connections get to close after the stop signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads the policy file (if any) and the TLS files (if any) again on every SIGHUP, as
/// long as the broker runs.
async fn reload_on_hangup(broker: std::sync::Weak<Broker>, tls: Option<Arc<Tls>>) {
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
            if let Some(tls) = &tls {
                match tls.reload() {
                    Ok(()) => info!("TLS certificate and key reloaded"),
                    Err(e) => {
                        error!(error = %e, "cannot reload the TLS files; the old ones stay in force")
                    }
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (broker, tls);
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
    let listeners = Listeners {
        amqp: Some(listener),
        ..Listeners::default()
    };
    run_with(listeners, config, shutdown).await
}

/// Like [`run`], on the plain and TLS listeners given.
///
/// # Errors
/// As [`run`]; or the TLS files are unreadable.
pub async fn run_with(
    listeners: Listeners,
    config: Arc<Config>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    // Test builds (`deadlock-detection`) abort with backtraces on a lock cycle.
    crate::watchdog::start();
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(Arc::new(
            Tls::load(TlsSettings {
                cert: cert.clone(),
                key: key.clone(),
                ca: config.tls_ca.clone(),
                fail_if_no_peer_cert: config.tls_fail_if_no_peer_cert,
            })
            .map_err(std::io::Error::other)?,
        )),
        _ => None,
    };
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
    tokio::spawn(reload_on_hangup(Arc::downgrade(&broker), tls.clone()));
    {
        let config = broker.config();
        let socket = config
            .ctl_socket
            .clone()
            .unwrap_or_else(|| crate::ctl::socket_path(&config.data_dir));
        // Bound before AMQP is accepted: `warren ctl` works once clients can connect.
        match crate::ctl::listen(&socket) {
            Ok(listener) => {
                let weak = Arc::downgrade(&broker);
                tokio::spawn(async move {
                    if let Err(error) = crate::ctl::serve(listener, weak).await {
                        tracing::error!(%error, "warren ctl stopped accepting");
                    }
                });
            }
            Err(error) => {
                tracing::error!(socket = %socket.display(), %error, "warren ctl is not available");
            }
        }
    }
    let (stop, stopping) = watch::channel(false);
    let tracker = TaskTracker::new();
    let Listeners {
        amqp,
        amqps,
        management,
        prometheus,
    } = listeners;
    broker.record_listeners(
        [
            (&amqp, "amqp"),
            (&amqps, "amqp/ssl"),
            (&management, "http"),
            (&prometheus, "http/prometheus"),
        ]
        .into_iter()
        .filter_map(|(listener, protocol)| {
            let addr = listener.as_ref()?.local_addr().ok()?;
            Some(crate::broker::Listener { protocol, addr })
        })
        .collect(),
    );
    // The counters the API's rates and the metrics' queue lengths come from, read
    // every `--stats-interval-ms`.
    let rates: Arc<parking_lot::RwLock<crate::management::rates::Rates>> = Arc::default();
    if management.is_some() || prometheus.is_some() {
        tokio::spawn(crate::management::rates::run(
            Arc::downgrade(&broker),
            rates.clone(),
            Duration::from_millis(broker.config().stats_interval_ms),
        ));
    }
    if let Some(listener) = management {
        if let Ok(addr) = listener.local_addr() {
            info!(%addr, "serving the management HTTP API");
        }
        let weak = Arc::downgrade(&broker);
        let (stopping, rates) = (stopping.clone(), rates.clone());
        tokio::spawn(async move {
            if let Err(error) = crate::management::serve(listener, weak, rates, stopping).await {
                error!(%error, "the management HTTP API stopped");
            }
        });
    }
    if let Some(listener) = prometheus {
        if let Ok(addr) = listener.local_addr() {
            info!(%addr, "serving Prometheus metrics");
        }
        let weak = Arc::downgrade(&broker);
        let stopping = stopping.clone();
        tokio::spawn(async move {
            if let Err(error) = crate::prometheus::serve(listener, weak, rates, stopping).await {
                error!(%error, "the Prometheus endpoint stopped");
            }
        });
    }
    for (listener, what) in [(&amqp, "AMQP"), (&amqps, "AMQPS (TLS)")] {
        if let Some(addr) = listener.as_ref().and_then(|l| l.local_addr().ok()) {
            info!(%addr, "accepting {what} connections");
        }
    }
    let amqps = amqps.zip(tls);
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = accept(amqp.as_ref()) => accepted.map(|(stream, peer)| (stream, peer, None)),
            accepted = accept(amqps.as_ref().map(|(l, _)| l)) => accepted.map(|(stream, peer)| {
                (stream, peer, amqps.as_ref().map(|(_, tls)| tls.clone()))
            }),
        };
        match accepted {
            Ok((stream, peer, tls)) => {
                backoff = Duration::from_millis(5);
                // Small frames (confirms, acks) must not wait for Nagle.
                let _ = stream.set_nodelay(true);
                let shutdown = Shutdown::from(stopping.clone());
                let broker = broker.clone();
                let local = stream.local_addr().ok();
                match tls {
                    None => {
                        let (reader, writer) = stream.into_split();
                        let plain = Transport {
                            local,
                            ..Transport::default()
                        };
                        tracker.spawn(connection::serve(
                            reader, writer, peer, broker, shutdown, plain,
                        ));
                    }
                    Some(tls) => {
                        tracker.spawn(serve_tls(stream, peer, broker, shutdown, tls));
                    }
                }
            }
            Err(e) => {
                // Out of file descriptors and similar: back off instead of spinning.
                error!(error = %e, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
    info!("shutting down");
    drop((amqp, amqps));
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

/// The next connection on `listener`; never, without one.
async fn accept(
    listener: Option<&TcpListener>,
) -> std::io::Result<(tokio::net::TcpStream, std::net::SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// Runs the TLS handshake of an accepted socket, then serves the connection over it,
/// with the user name its verified client certificate gives `EXTERNAL`.
async fn serve_tls(
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    broker: Arc<Broker>,
    shutdown: Shutdown,
    tls: Arc<Tls>,
) {
    let local = stream.local_addr().ok();
    let accepted = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.acceptor().accept(stream)).await;
    let stream = match accepted {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            info!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            info!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let from = broker.config().tls_cert_login_from;
    let cert_user = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|cert| crate::tls::cert_user(cert, from));
    let transport = Transport {
        tls: true,
        cert_user,
        local,
    };
    let (reader, writer) = tokio::io::split(stream);
    connection::serve(reader, writer, peer, broker, shutdown, transport).await;
}

//! Shared helpers for Warren's black-box tests: start a broker on a free port, connect
//! real clients to it, and wait on conditions with a bound instead of sleeping.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub mod perf;

/// Set this to an AMQP URI (e.g. `amqp://guest:guest@127.0.0.1:5673/%2f`) to run the
/// black-box tests against another broker, such as a real RabbitMQ, instead of an
/// in-process Warren. Tests must then use unique names, which they do.
pub const EXTERNAL_URI_ENV: &str = "WARREN_TEST_EXTERNAL_URI";

/// A broker under test: an in-process Warren on a free loopback port (stopped when
/// dropped), or the external broker named by [`EXTERNAL_URI_ENV`].
pub struct TestServer {
    uri: String,
    addr: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    /// Starts Warren with default settings on `127.0.0.1:0`.
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    /// Starts Warren on `127.0.0.1:0` after `configure` adjusts the settings.
    pub async fn start_with(configure: impl FnOnce(&mut warren::Config)) -> TestServer {
        if let Ok(uri) = std::env::var(EXTERNAL_URI_ENV) {
            return TestServer {
                uri,
                addr: None,
                stop: None,
                task: None,
            };
        }
        let mut config = warren::Config {
            bind: "127.0.0.1".parse().expect("loopback address"),
            port: 0,
            data_dir: std::env::temp_dir().join(format!("warren-test-{}", unique_suffix())),
            ..warren::Config::default()
        };
        configure(&mut config);
        let listener = TcpListener::bind((config.bind, config.port))
            .await
            .expect("bind a free port");
        let addr = listener.local_addr().expect("bound address");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(warren::server::run(listener, Arc::new(config), async {
            let _ = stopped.await;
        }));
        TestServer {
            uri: format!("amqp://guest:guest@{addr}/%2f"),
            addr: Some(addr),
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// The AMQP URI clients connect with (guest/guest, vhost `/`).
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The socket address, for raw-socket tests; for an external broker, parsed from
    /// its URI's host and port.
    pub fn addr(&self) -> SocketAddr {
        if let Some(addr) = self.addr {
            return addr;
        }
        let rest = self.uri.split('@').next_back().unwrap_or_default();
        let host_port = rest.split('/').next().unwrap_or_default();
        host_port
            .parse()
            .expect("external URI with an IP:port host")
    }

    /// Whether this is an in-process Warren (false against an external broker).
    pub fn is_warren(&self) -> bool {
        self.addr.is_some()
    }

    /// Opens a lapin connection to the broker.
    pub async fn connect(&self) -> lapin::Connection {
        lapin::Connection::connect(&self.uri, lapin::ConnectionProperties::default())
            .await
            .expect("connect to the broker under test")
    }

    /// Stops the in-process broker gracefully and waits until it has.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A name no other test (or earlier run against an external broker) uses.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{}", unique_suffix())
}

fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "{}-{nanos:x}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Polls `condition` until it holds or `within` passes; returns whether it held.
pub async fn wait_for<F, Fut>(within: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if condition().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

//! Shared helpers for Warren's black-box tests: start a broker on a free port, connect
//! real clients to it, and wait on conditions with a bound instead of sleeping.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub mod fuzz;
pub mod perf;
pub mod python;

/// Set this to an AMQP URI (e.g. `amqp://guest:guest@127.0.0.1:5673/%2f`) to run the
/// black-box tests against another broker, such as a real RabbitMQ, instead of an
/// in-process Warren. Tests must then use unique names, which they do.
pub const EXTERNAL_URI_ENV: &str = "WARREN_TEST_EXTERNAL_URI";

/// With [`EXTERNAL_URI_ENV`], the command that administers that broker, split on
/// spaces (e.g. `../shared/tools/rabbitmq.sh ctl 5673`): tests that need users and
/// permissions run `rabbitmqctl` verbs through it.
pub const EXTERNAL_CTL_ENV: &str = "WARREN_TEST_EXTERNAL_CTL";

/// Runs a `rabbitmqctl` verb on the external broker through [`EXTERNAL_CTL_ENV`];
/// its output on success.
///
/// # Panics
/// The variable is not set, or the command fails: the test cannot go on.
pub fn external_ctl(args: &[&str]) -> String {
    let command = std::env::var(EXTERNAL_CTL_ENV)
        .unwrap_or_else(|_| panic!("{EXTERNAL_CTL_ENV} is needed to administer the broker"));
    let mut words = command.split_whitespace();
    let program = words.next().expect("a command");
    let out = std::process::Command::new(program)
        .args(words)
        .args(args)
        .output()
        .expect("run the external broker's ctl");
    assert!(
        out.status.success(),
        "{command} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A broker under test: an in-process Warren on a free loopback port (stopped when
/// dropped), or the external broker named by [`EXTERNAL_URI_ENV`].
pub struct TestServer {
    uri: String,
    addr: Option<SocketAddr>,
    tls_addr: Option<SocketAddr>,
    management_addr: Option<SocketAddr>,
    prometheus_addr: Option<SocketAddr>,
    data_dir: Option<std::path::PathBuf>,
    scratch_dir: Option<std::path::PathBuf>,
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
                tls_addr: None,
                management_addr: None,
                prometheus_addr: None,
                data_dir: None,
                scratch_dir: None,
                stop: None,
                task: None,
            };
        }
        let mut config = warren::Config {
            bind: "127.0.0.1".parse().expect("loopback address"),
            port: 0,
            data_dir: std::env::temp_dir().join(format!("warren-test-{}", unique_suffix())),
            // Rates after a tenth of a second, not five.
            stats_interval_ms: 100,
            ..warren::Config::default()
        };
        let default_dir = config.data_dir.clone();
        configure(&mut config);
        // A directory the harness made up is the harness's to remove when the server goes.
        let scratch_dir = (config.data_dir == default_dir).then(|| default_dir.clone());
        let listener = TcpListener::bind((config.bind, config.port))
            .await
            .expect("bind a free port");
        let addr = listener.local_addr().expect("bound address");
        // With a certificate and key, an AMQPS listener too, on a free port of its own.
        let amqps = match (&config.tls_cert, &config.tls_key) {
            (Some(_), Some(_)) => Some(
                TcpListener::bind((config.bind, 0))
                    .await
                    .expect("bind a free port for TLS"),
            ),
            _ => None,
        };
        let tls_addr = amqps
            .as_ref()
            .map(|l| l.local_addr().expect("bound address"));
        // The management API on a free port of its own, unless turned off.
        let management = if config.no_management {
            None
        } else {
            Some(
                TcpListener::bind((config.bind, 0))
                    .await
                    .expect("bind a free port for the management API"),
            )
        };
        let management_addr = management
            .as_ref()
            .map(|l| l.local_addr().expect("bound address"));
        let prometheus = if config.no_prometheus {
            None
        } else {
            Some(
                TcpListener::bind((config.bind, 0))
                    .await
                    .expect("bind a free port for Prometheus"),
            )
        };
        let prometheus_addr = prometheus
            .as_ref()
            .map(|l| l.local_addr().expect("bound address"));
        let listeners = warren::server::Listeners {
            amqp: Some(listener),
            amqps,
            management,
            prometheus,
        };
        let data_dir = Some(config.data_dir.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(warren::server::run_with(
            listeners,
            Arc::new(config),
            async {
                let _ = stopped.await;
            },
        ));
        // The broker opens its data directory before it accepts: wait until it answers.
        let ready = wait_for(Duration::from_secs(10), || async move {
            answers_amqp(addr).await
        })
        .await;
        assert!(ready, "warren on {addr} did not answer within 10 s");
        TestServer {
            uri: format!("amqp://guest:guest@{addr}/%2f"),
            addr: Some(addr),
            tls_addr,
            management_addr,
            prometheus_addr,
            data_dir,
            scratch_dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Starts Warren on a free port with its data in `dir` (to restart on the same data).
    pub async fn start_in(dir: &std::path::Path) -> TestServer {
        let dir = dir.to_owned();
        Self::start_with(move |c| c.data_dir = dir).await
    }

    /// The in-process broker's data directory.
    pub fn data_dir(&self) -> Option<&std::path::Path> {
        self.data_dir.as_deref()
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

    /// The AMQPS listener's address, when the settings gave a certificate and key.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// The management API's address (an in-process Warren's own free port).
    pub fn management_addr(&self) -> Option<SocketAddr> {
        self.management_addr
    }

    /// The Prometheus endpoint's address (an in-process Warren's own free port).
    pub fn prometheus_addr(&self) -> Option<SocketAddr> {
        self.prometheus_addr
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
        if let Some(dir) = self.scratch_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Best effort: the broker may still be stopping; a later write just fails.
        if let Some(dir) = self.scratch_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Whether a broker at `addr` answers the AMQP protocol header.
///
/// A socket connected to itself does not count: while nothing listens on a port of the
/// ephemeral range, a connect from the same host can pick that very port as its own
/// and succeed by simultaneous open, echoing what it writes. A probe that took that for
/// the broker let a test connect before the broker listened ("connection refused").
async fn answers_amqp(addr: SocketAddr) -> bool {
    match tokio::net::TcpStream::connect(addr).await {
        Ok(stream) => speaks_amqp(stream, addr).await,
        Err(_) => false,
    }
}

/// Whether something other than the probe itself listens at `addr` (see
/// [`answers_amqp`] for why a socket connected to itself does not count).
async fn listens(addr: SocketAddr) -> bool {
    match tokio::net::TcpStream::connect(addr).await {
        Ok(stream) => stream.local_addr().is_ok_and(|local| local != addr),
        Err(_) => false,
    }
}

/// Whether the other end of `stream`, connected to `addr`, answers the AMQP header.
async fn speaks_amqp(mut stream: tokio::net::TcpStream, addr: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if stream.local_addr().is_ok_and(|local| local == addr) {
        return false;
    }
    if stream.write_all(b"AMQP\x00\x00\x09\x01").await.is_err() {
        return false;
    }
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_secs(1), stream.read(&mut byte)).await,
        Ok(Ok(1))
    )
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

/// A fresh, empty directory for a broker's data, unique to this test.
pub fn temp_data_dir(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("warren-{tag}-{}", unique_suffix()))
}

/// The `warren` binary run as a child process, for tests that kill it with SIGKILL.
pub struct WarrenProcess {
    child: std::process::Child,
    addr: SocketAddr,
}

/// How [`WarrenProcess::start_logged`] starts the broker: more flags, and a file that
/// takes its stderr (logs, and the deadlock watchdog's backtraces) instead of the test's.
#[derive(Debug, Default, Clone)]
pub struct ProcessOptions<'a> {
    /// More command-line flags.
    pub args: &'a [&'a str],
    /// Appends the broker's stderr to this file.
    pub stderr: Option<&'a std::path::Path>,
}

/// How far a started broker must have come before [`WarrenProcess`] hands it over.
#[derive(Clone, Copy)]
enum Ready {
    /// Its port is bound (it may still be recovering its data).
    Listening,
    /// It has recovered and answers the AMQP protocol header.
    Answering,
    /// This port (its TLS listener, with plain TCP off) is bound.
    ListeningAt(u16),
}

impl Ready {
    fn describe(self) -> &'static str {
        match self {
            Ready::Listening => "listening",
            Ready::Answering => "answering AMQP",
            Ready::ListeningAt(_) => "listening for TLS",
        }
    }

    /// Whether the broker at `addr` has come this far.
    async fn reached(self, addr: SocketAddr) -> bool {
        match self {
            Ready::Listening => listens(addr).await,
            Ready::Answering => answers_amqp(addr).await,
            Ready::ListeningAt(port) => listens(([127, 0, 0, 1], port).into()).await,
        }
    }
}

impl WarrenProcess {
    /// Builds the binary if needed, starts it on a free loopback port with its data in
    /// `data_dir`, and waits (bounded) until it has recovered and answers AMQP.
    pub async fn start(data_dir: &std::path::Path) -> WarrenProcess {
        Self::start_limited(data_dir, None).await
    }

    /// Like [`WarrenProcess::start`], but with every file the broker writes limited to
    /// `max_file_kib` KiB (`ulimit -f`, with SIGXFSZ ignored): writes past it fail with
    /// EFBIG, the way a full disk makes them fail, without filling a real disk.
    pub async fn start_limited(
        data_dir: &std::path::Path,
        max_file_kib: Option<u64>,
    ) -> WarrenProcess {
        Self::spawn(data_dir, max_file_kib, &[]).await
    }

    /// Like [`WarrenProcess::start`], with more command-line flags.
    pub async fn start_with_args(data_dir: &std::path::Path, args: &[&str]) -> WarrenProcess {
        Self::spawn(data_dir, None, args).await
    }

    /// Like [`WarrenProcess::start`], with more flags and its stderr sent to a file.
    pub async fn start_logged(
        data_dir: &std::path::Path,
        options: ProcessOptions<'_>,
    ) -> WarrenProcess {
        let stderr = options.stderr.map(|path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
        });
        Self::spawn_to(data_dir, None, options.args, stderr).await
    }

    /// Starts it like [`WarrenProcess::start`] but returns as soon as its port is bound,
    /// before it has recovered its data and answers AMQP: for tests of what a broker
    /// does while it starts.
    pub async fn start_listening(data_dir: &std::path::Path) -> WarrenProcess {
        Self::launch(data_dir, None, &[], None, Ready::Listening).await
    }

    /// Starts it with more flags that turn plain TCP off (`--no-tcp`) and open TLS on
    /// `tls_port`, waiting (bounded) until that port is bound.
    pub async fn start_tls_only(
        data_dir: &std::path::Path,
        args: &[&str],
        tls_port: u16,
    ) -> WarrenProcess {
        Self::launch(data_dir, None, args, None, Ready::ListeningAt(tls_port)).await
    }

    async fn spawn(
        data_dir: &std::path::Path,
        max_file_kib: Option<u64>,
        extra_args: &[&str],
    ) -> WarrenProcess {
        Self::spawn_to(data_dir, max_file_kib, extra_args, None).await
    }

    async fn spawn_to(
        data_dir: &std::path::Path,
        max_file_kib: Option<u64>,
        extra_args: &[&str],
        stderr: Option<std::fs::File>,
    ) -> WarrenProcess {
        Self::launch(data_dir, max_file_kib, extra_args, stderr, Ready::Answering).await
    }

    async fn launch(
        data_dir: &std::path::Path,
        max_file_kib: Option<u64>,
        extra_args: &[&str],
        stderr: Option<std::fs::File>,
        ready: Ready,
    ) -> WarrenProcess {
        let binary = warren_binary();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut command = match max_file_kib {
            None => std::process::Command::new(&binary),
            Some(kib) => {
                // dash counts `ulimit -f` in 512-byte blocks.
                let mut sh = std::process::Command::new("sh");
                sh.arg("-c")
                    .arg(format!(
                        "ulimit -f {} && trap '' XFSZ && exec \"$0\" \"$@\"",
                        kib * 2
                    ))
                    .arg(&binary);
                sh
            }
        };
        let mut child = command
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--log-level",
                "warn",
            ])
            .arg("--data-dir")
            .arg(data_dir)
            // Tests run side by side: the management API and metrics only where a test
            // gives them ports of their own.
            .args((!extra_args.contains(&"--management-port")).then_some("--no-management"))
            .args((!extra_args.contains(&"--prometheus-port")).then_some("--no-prometheus"))
            .args(extra_args)
            .stderr(stderr.map_or_else(std::process::Stdio::inherit, Into::into))
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        // A broker that exits while starting fails the test at once, with its status.
        let mut exited = None;
        let up = wait_for(Duration::from_secs(20), || {
            exited = child.try_wait().ok().flatten();
            let gone = exited.is_some();
            async move { gone || ready.reached(addr).await }
        })
        .await;
        if let Some(status) = exited {
            panic!(
                "warren exited ({status}) before it was {}",
                ready.describe()
            );
        }
        assert!(
            up,
            "warren was not {} on {addr} within 20 s",
            ready.describe()
        );
        WarrenProcess { child, addr }
    }

    /// Its socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its process id (to read its memory use from `/proc`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The AMQP URI to reach it.
    pub fn uri(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }

    /// Its process id (for signals, and for a debugger to print its threads' stacks).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status, if it has exited (it is then reaped); `None` while it runs.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends SIGHUP (Warren reloads its policy file).
    pub fn hang_up(&self) {
        let status = std::process::Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .expect("run kill -HUP");
        assert!(status.success(), "kill -HUP failed");
    }

    /// Sends SIGTERM and waits (bounded) for it to exit; returns its exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "warren did not exit within 15 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it with SIGKILL (no chance to flush or sync) and reaps it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for WarrenProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The path of the `warren` binary next to this test executable, built on first use,
/// with the `deadlock-detection` watchdog: a broker that deadlocks aborts and prints
/// every deadlocked thread's backtrace to its stderr.
pub fn warren_binary() -> std::path::PathBuf {
    static BUILD: std::sync::Once = std::sync::Once::new();
    let exe = std::env::current_exe().expect("the test executable");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let binary = profile_dir.join("warren");
    BUILD.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = std::process::Command::new(cargo);
        build.args([
            "build",
            "-p",
            "warren",
            "--bin",
            "warren",
            "--features",
            "deadlock-detection",
        ]);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build");
        assert!(status.success(), "cargo build -p warren failed");
    });
    binary
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A probe whose socket the kernel connected to itself (the port it waits on is
    /// free, and the probe's own end took it) does not mistake its echo for a broker.
    #[tokio::test]
    async fn a_socket_connected_to_itself_is_no_broker() {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("reuseaddr");
        socket.bind(addr).expect("bind the port to connect to");
        let stream = socket.connect(addr).await.expect("connected to itself");
        assert_eq!(stream.peer_addr().ok(), Some(addr));
        assert!(!speaks_amqp(stream, addr).await);
    }
}

//! Connection-scale mode (`--connections N`): open N connections, each with one channel
//! and one consumer on its own exclusive queue, with a bounded number of set-ups under
//! way at once; print `ready OPENED FAILED` on stdout; hold them until stdin closes (or
//! for `--hold` seconds) so that a harness can read the broker's memory meanwhile; then
//! close them all cleanly and report.
//!
//! Thousands of idle sockets do not suit the thread-per-connection design of the
//! message modes, so here every connection is a task on a single-threaded tokio
//! runtime. Set-up is pipelined where brokers allow it: one write carries `tune-ok`
//! and `connection.open`, and after `open-ok` one write carries `channel.open`,
//! `queue.declare` and `basic.consume`, so a connection costs four round trips (TCP,
//! start, tune, open) and one burst of replies. (Sending the channel's methods before
//! `open-ok` arrives would save one more, but the spec does not promise that works and
//! a broker may drop them.)
//!
//! With an `amqps://` URI each connection makes a full TLS handshake (rustls, no session
//! resumption, the broker's certificate checked against `--ca-cert`) between the TCP
//! connect and the protocol header, and that handshake counts in its set-up time.

use std::collections::BTreeMap;
use std::io::{self, IoSlice, Read as _, Write as _};
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use amqp_codec::amq_protocol::protocol::{AMQPClass, basic, channel, connection, queue};
use amqp_codec::amq_protocol::types::FieldTable;
use amqp_codec::encode;
use anyhow::{Context, Result, anyhow, bail};
use bytes::{Buf, BytesMut};
use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::conn::{self, CHANNEL, Endpoint, Transport};
use super::cpu;
use super::fdlimit;
use super::options::Options;
use super::report::{ConnectionsReport, ErrorCount, OpenLatency};
use super::wire;

/// How long one connection's whole set-up may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the TCP connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for `close-ok`.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Descriptors the tool needs besides its connections.
const SPARE_FDS: u64 = 32;
/// Distinct error texts kept for the report; the rest are counted as "other".
const ERROR_KINDS: usize = 5;

/// How one connection's set-up went.
enum Opened {
    /// Consuming, after this long.
    Ready(Duration),
    /// Failed with this error.
    Failed(String),
    /// Not tried: too many others had failed.
    Skipped,
}

/// How one connection ended.
enum Ended {
    /// It never opened.
    NeverOpened,
    /// Closed by the tool; `clean` if the broker answered `close-ok`.
    Closed { clean: bool },
    /// The broker closed it (or the socket failed) while it was held.
    Lost(String),
}

/// Opens, holds and closes `count` connections over `transport`; see the module
/// documentation.
///
/// # Errors
/// Only failures of the tool itself (starting its runtime; for TLS, a missing
/// `--ca-cert` or one that cannot be read, or a host that is no valid server name);
/// connections the broker refuses or drops are counted in the report.
pub fn run(
    opts: &Options,
    endpoint: &Endpoint,
    transport: &Transport,
    count: u32,
) -> Result<ConnectionsReport> {
    let connector = Arc::new(Connector::new(opts, transport)?);
    let nofile = match fdlimit::raise_nofile() {
        Ok(limit) => limit,
        Err(e) => {
            eprintln!("warren-perf: warning: could not raise the open-file limit: {e}");
            None
        }
    };
    if let Some(limit) = nofile {
        if limit < u64::from(count) + SPARE_FDS {
            eprintln!(
                "warren-perf: warning: the open-file limit ({limit}) is below the {count} \
                 connections asked for; some will fail"
            );
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .context("starting the tokio runtime")?;
    let mut report = runtime.block_on(run_all(opts, endpoint, connector, count));
    report.nofile_limit = nofile;
    Ok(report)
}

async fn run_all(
    opts: &Options,
    endpoint: &Endpoint,
    connector: Arc<Connector>,
    count: u32,
) -> ConnectionsReport {
    let prefix = opts.queue_prefix();
    let gate = Arc::new(Semaphore::new(opts.connect_concurrency as usize));
    let failures = Arc::new(AtomicU32::new(0));
    let (close_tx, close_rx) = watch::channel(false);
    let (opened_tx, mut opened_rx) = mpsc::unbounded_channel::<Opened>();
    let endpoint = Arc::new(endpoint.clone());
    let cpu_start = cpu::process_cpu();
    let start = Instant::now();
    let tasks: Vec<_> = (0..count)
        .map(|i| {
            tokio::spawn(one_connection(
                i,
                Arc::clone(&endpoint),
                Arc::clone(&connector),
                format!("{prefix}-c{i}"),
                Gate {
                    permits: Arc::clone(&gate),
                    failures: Arc::clone(&failures),
                    max_failures: opts.max_failures,
                },
                close_rx.clone(),
                opened_tx.clone(),
            ))
        })
        .collect();
    drop(opened_tx);

    let mut latencies = Vec::with_capacity(count as usize);
    let mut errors = Errors::default();
    let (mut failed, mut skipped) = (0u32, 0u32);
    let mut progress = tokio::time::interval(Duration::from_secs(1));
    progress.tick().await;
    loop {
        tokio::select! {
            opened = opened_rx.recv() => match opened {
                Some(Opened::Ready(took)) => latencies.push(took),
                Some(Opened::Failed(error)) => {
                    failed += 1;
                    errors.add(error);
                }
                Some(Opened::Skipped) => skipped += 1,
                None => break,
            },
            _ = progress.tick(), if !opts.quiet => eprintln!(
                "[{:>5.1}s] opened {:>6}  failed {:>5}  of {count}",
                start.elapsed().as_secs_f64(),
                latencies.len(),
                failed,
            ),
        }
    }
    let open_time = start.elapsed();
    let open_cpu = cpu::process_cpu()
        .zip(cpu_start)
        .map(|(end, start)| end.since(&start).total().as_secs_f64());
    let opened = u32::try_from(latencies.len()).unwrap_or(u32::MAX);

    // The harness reads the broker's memory between this line and closing stdin.
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "ready {opened} {}", failed + skipped);
    let _ = stdout.flush();
    if !opts.quiet {
        match opts.hold {
            Some(secs) => eprintln!("warren-perf: holding {opened} connections for {secs} s"),
            None => eprintln!(
                "warren-perf: holding {opened} connections; close stdin (Ctrl-D) to close them"
            ),
        }
    }
    let hold_start = Instant::now();
    match opts.hold {
        Some(secs) => tokio::time::sleep(Duration::from_secs_f64(secs)).await,
        None => stdin_closed().await,
    }
    let held = hold_start.elapsed();

    let close_start = Instant::now();
    let _ = close_tx.send(true);
    let (mut closed, mut clean, mut lost) = (0u32, 0u32, 0u32);
    for task in tasks {
        match task.await {
            Ok(Ended::NeverOpened) => {}
            Ok(Ended::Closed { clean: ok }) => {
                closed += 1;
                clean += u32::from(ok);
            }
            Ok(Ended::Lost(error)) => {
                lost += 1;
                errors.add(format!("while held: {error}"));
            }
            Err(e) => errors.add(format!("connection task failed: {e}")),
        }
    }
    let close_time = close_start.elapsed();

    latencies.sort_unstable();
    ConnectionsReport {
        broker: endpoint
            .addrs
            .first()
            .map(ToString::to_string)
            .unwrap_or_default(),
        requested: count,
        concurrency: opts.connect_concurrency,
        opened,
        failed,
        not_attempted: skipped,
        open_secs: open_time.as_secs_f64(),
        opens_per_sec: f64::from(opened) / open_time.as_secs_f64().max(1e-9),
        open_latency: OpenLatency::from_sorted(&latencies),
        held_secs: held.as_secs_f64(),
        lost_while_held: lost,
        closed,
        closed_cleanly: clean,
        close_secs: close_time.as_secs_f64(),
        tool_cpu_secs: open_cpu,
        nofile_limit: None,
        errors: errors.into_counts(),
    }
}

/// What bounds the set-ups under way: permits, and a cap on failures.
struct Gate {
    permits: Arc<Semaphore>,
    failures: Arc<AtomicU32>,
    max_failures: u32,
}

/// One connection from set-up to close.
async fn one_connection(
    index: u32,
    endpoint: Arc<Endpoint>,
    connector: Arc<Connector>,
    queue: String,
    gate: Gate,
    mut close: watch::Receiver<bool>,
    opened: mpsc::UnboundedSender<Opened>,
) -> Ended {
    let Ok(permit) = Arc::clone(&gate.permits).acquire_owned().await else {
        return Ended::NeverOpened;
    };
    if gate.failures.load(Ordering::Relaxed) >= gate.max_failures {
        let _ = opened.send(Opened::Skipped);
        return Ended::NeverOpened;
    }
    let started = Instant::now();
    let result = tokio::time::timeout(
        SETUP_TIMEOUT,
        Link::open(&endpoint, &connector, index, &queue),
    )
    .await
    .unwrap_or_else(|_| Err(anyhow!("set-up took longer than {SETUP_TIMEOUT:?}")));
    drop(permit);
    let mut link = match result {
        Ok(link) => link,
        Err(e) => {
            gate.failures.fetch_add(1, Ordering::Relaxed);
            let _ = opened.send(Opened::Failed(format!("{e:#}")));
            return Ended::NeverOpened;
        }
    };
    let _ = opened.send(Opened::Ready(started.elapsed()));
    drop(opened);
    if let Err(e) = link.hold(&mut close).await {
        return Ended::Lost(format!("{e:#}"));
    }
    // Closing is bounded like opening, so that close time compares across brokers.
    let _permit = gate.permits.acquire_owned().await;
    Ended::Closed {
        clean: link.close().await,
    }
}

/// Resolves once stdin reaches end of file (or cannot be read).
async fn stdin_closed() {
    let _ = tokio::task::spawn_blocking(|| {
        let mut buf = [0u8; 256];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
    })
    .await;
}

/// One open connection: socket, read buffer and what the tune settled.
struct Link {
    stream: Stream,
    rbuf: BytesMut,
    out: BytesMut,
    frame_max: u32,
    heartbeat: Option<Duration>,
}

impl Link {
    /// Connects (with the TLS handshake, if any) and sets up channel [`CHANNEL`] with
    /// one consumer on `queue`, an exclusive, auto-delete queue of its own.
    async fn open(
        endpoint: &Endpoint,
        connector: &Connector,
        index: u32,
        queue: &str,
    ) -> Result<Self> {
        let stream = connector.connect(&endpoint.addrs).await?;
        let mut link = Self {
            stream,
            rbuf: BytesMut::with_capacity(1024),
            out: BytesMut::with_capacity(1024),
            frame_max: 0,
            heartbeat: None,
        };
        encode::protocol_header(&mut link.out);
        link.flush().await?;
        let start = match link.next_method().await? {
            AMQPClass::Connection(connection::AMQPMethod::Start(start)) => start,
            other => bail!("expected connection.start, got {other:?}"),
        };
        let name = format!("warren-perf connection {index}");
        encode::method(&mut link.out, 0, &conn::start_ok(endpoint, &start, &name)?);
        link.flush().await?;
        let tune = match link.next_method().await? {
            AMQPClass::Connection(connection::AMQPMethod::Tune(tune)) => tune,
            other => bail!("expected connection.tune, got {other:?}"),
        };
        let tune_ok = conn::tune_ok(endpoint, &tune);
        link.heartbeat = conn::heartbeat_interval(&tune_ok);
        link.frame_max = tune_ok.frame_max;
        encode::method(
            &mut link.out,
            0,
            &AMQPClass::Connection(connection::AMQPMethod::TuneOk(tune_ok)),
        );
        encode::method(&mut link.out, 0, &conn::open_method(endpoint)?);
        link.flush().await?;
        match link.next_method().await? {
            AMQPClass::Connection(connection::AMQPMethod::OpenOk(_)) => {}
            other => bail!("expected connection.open-ok, got {other:?}"),
        }
        for (channel, method) in [
            (
                CHANNEL,
                AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
            ),
            (
                CHANNEL,
                AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                    queue: queue.into(),
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                })),
            ),
            (
                CHANNEL,
                AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                    queue: queue.into(),
                    consumer_tag: format!("wp-c{index}").into(),
                    no_local: false,
                    no_ack: true,
                    exclusive: false,
                    nowait: false,
                    arguments: FieldTable::default(),
                })),
            ),
        ] {
            encode::method(&mut link.out, channel, &method);
        }
        link.flush().await?;
        match link.next_method().await? {
            AMQPClass::Channel(channel::AMQPMethod::OpenOk(_)) => {}
            other => bail!("expected channel.open-ok, got {other:?}"),
        }
        match link.next_method().await? {
            AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_)) => {}
            other => bail!("expected queue.declare-ok, got {other:?}"),
        }
        match link.next_method().await? {
            AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_)) => Ok(link),
            other => bail!("expected basic.consume-ok, got {other:?}"),
        }
    }

    async fn flush(&mut self) -> Result<()> {
        self.stream
            .write_all(&self.out)
            .await
            .context("writing to the broker")?;
        // A no-op on plain TCP; over TLS, sends records rustls still holds.
        self.stream.flush().await.context("writing to the broker")?;
        self.out.clear();
        Ok(())
    }

    /// The next method from the broker, skipping heartbeats and flow notices; a close
    /// from the broker is answered and returned as an error.
    async fn next_method(&mut self) -> Result<AMQPClass> {
        loop {
            match self.take_frame() {
                Ok(Some(method)) => return Ok(method),
                Ok(None) => {}
                Err(e) => {
                    // Best effort: send the close-ok a broker's close is owed.
                    let _ = self.flush().await;
                    return Err(e);
                }
            }
            if self
                .stream
                .read_buf(&mut self.rbuf)
                .await
                .context("reading from the broker")?
                == 0
            {
                bail!("the broker closed the connection");
            }
        }
    }

    /// Takes frames off the read buffer up to the first method that matters; `None`
    /// once the buffer holds no whole frame.
    fn take_frame(&mut self) -> Result<Option<AMQPClass>> {
        while let Some((frame, used)) = wire::split_frame(&self.rbuf, self.frame_max)? {
            let (kind, channel) = (frame.kind, frame.channel);
            let method = (kind == wire::METHOD)
                .then(|| wire::parse_other(frame.payload))
                .transpose()?;
            self.rbuf.advance(used);
            match method {
                None if kind == wire::HEARTBEAT => {}
                None => bail!("unexpected content frame (type {kind}) on channel {channel}"),
                Some(AMQPClass::Connection(
                    connection::AMQPMethod::Blocked(_) | connection::AMQPMethod::Unblocked(_),
                )) => {}
                Some(method) => {
                    if let Some(reason) = wire::close_reason(&method) {
                        self.answer_close(&method);
                        bail!(reason);
                    }
                    return Ok(Some(method));
                }
            }
        }
        Ok(None)
    }

    /// Queues `close-ok` for a broker-initiated close (sent with the next flush, if
    /// any: the connection is being given up on).
    fn answer_close(&mut self, close: &AMQPClass) {
        let (channel, reply) = match close {
            AMQPClass::Connection(_) => (
                0,
                AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
            ),
            _ => (
                CHANNEL,
                AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
            ),
        };
        encode::method(&mut self.out, channel, &reply);
    }

    /// Keeps the connection (sending heartbeats if they were negotiated) until `close`
    /// turns true.
    ///
    /// # Errors
    /// The broker closing the connection or channel, or cancelling the consumer.
    async fn hold(&mut self, close: &mut watch::Receiver<bool>) -> Result<()> {
        loop {
            if *close.borrow_and_update() {
                return Ok(());
            }
            let beat = self.heartbeat.map(|interval| interval / 2);
            let tick = async {
                match beat {
                    Some(beat) => tokio::time::sleep(beat).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = close.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                }
                read = self.stream.read_buf(&mut self.rbuf) => {
                    if read.context("reading from the broker")? == 0 {
                        bail!("the broker closed the connection");
                    }
                    loop {
                        match self.take_frame() {
                            Ok(Some(AMQPClass::Basic(basic::AMQPMethod::Cancel(_)))) => {
                                bail!("the broker cancelled the consumer");
                            }
                            Ok(Some(_)) => {}
                            Ok(None) => break,
                            Err(e) => {
                                let _ = self.flush().await;
                                return Err(e);
                            }
                        }
                    }
                }
                () = tick => {
                    encode::heartbeat(&mut self.out);
                    self.flush().await?;
                }
            }
        }
    }

    /// Sends `connection.close` and waits for `close-ok`; whether it came.
    async fn close(mut self) -> bool {
        encode::method(&mut self.out, 0, &conn::close_method());
        if self.flush().await.is_err() {
            return false;
        }
        let close_ok = async {
            loop {
                match self.next_method().await {
                    Ok(AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))) => return true,
                    Ok(_) => {}
                    Err(_) => return false,
                }
            }
        };
        tokio::time::timeout(CLOSE_TIMEOUT, close_ok)
            .await
            .unwrap_or(false)
    }
}

/// How each connection's byte stream is set up: a TCP connect, then for TLS the
/// handshake.
enum Connector {
    /// Plain TCP.
    Plain,
    /// TLS over TCP.
    Tls {
        /// The client configuration every connection shares.
        tls: TlsConnector,
        /// The name the broker's certificate is checked against.
        server_name: ServerName<'static>,
        /// Whether the next handshake to finish should print what it negotiated
        /// (only the first does, unless `--quiet`).
        describe: AtomicBool,
    },
}

impl Connector {
    /// The connector for `transport`, trusting `--ca-cert` for TLS.
    fn new(opts: &Options, transport: &Transport) -> Result<Self> {
        let server_name = match transport {
            Transport::Plain => return Ok(Self::Plain),
            Transport::Tls { server_name } => server_name,
        };
        let Some(ca) = &opts.ca_cert else {
            bail!(
                "an amqps:// URI needs --ca-cert FILE (or WARREN_PERF_CA_CERT): the CA \
                 certificates the broker's certificate is checked against"
            );
        };
        let server_name = ServerName::try_from(server_name.clone())
            .with_context(|| format!("{server_name:?} as a TLS server name"))?;
        Ok(Self::Tls {
            tls: TlsConnector::from(client_config(ca)?),
            server_name,
            describe: AtomicBool::new(!opts.quiet),
        })
    }

    /// Connects to the first of `addrs` that answers, with `TCP_NODELAY` (the tool
    /// batches its own writes), and makes the TLS handshake if there is one.
    async fn connect(&self, addrs: &[SocketAddr]) -> Result<Stream> {
        let tcp = connect(addrs).await?;
        tcp.set_nodelay(true)?;
        let Self::Tls {
            tls,
            server_name,
            describe,
        } = self
        else {
            return Ok(Stream::Plain(tcp));
        };
        let stream = tls
            .connect(server_name.clone(), tcp)
            .await
            .context("TLS handshake")?;
        if describe.swap(false, Ordering::Relaxed) {
            let (_, session) = stream.get_ref();
            let shown = |what: Option<String>| what.unwrap_or_else(|| "?".into());
            eprintln!(
                "warren-perf: TLS {}, {}, key exchange {} (full handshakes, no resumption)",
                shown(session.protocol_version().map(|v| format!("{v:?}"))),
                shown(
                    session
                        .negotiated_cipher_suite()
                        .map(|s| format!("{:?}", s.suite()))
                ),
                shown(
                    session
                        .negotiated_key_exchange_group()
                        .map(|g| format!("{:?}", g.name()))
                ),
            );
        }
        Ok(Stream::Tls(Box::new(stream)))
    }
}

/// The client configuration for `amqps://`: the certificates in `ca` as the only roots,
/// rustls' default protocol versions, cipher suites and groups, and no session
/// resumption, so that every connection pays for a full handshake.
fn client_config(ca: &Path) -> Result<Arc<ClientConfig>> {
    let shown = ca.display();
    let certs = CertificateDer::pem_file_iter(ca)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .with_context(|| format!("reading --ca-cert {shown}"))?;
    if certs.is_empty() {
        bail!("--ca-cert {shown}: no certificate in it");
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .with_context(|| format!("--ca-cert {shown}"))?;
    }
    let mut config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// A connection's byte stream: plain TCP, or TLS over TCP.
enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP (boxed: the session state is large).
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

async fn connect(addrs: &[SocketAddr]) -> Result<TcpStream> {
    let mut last = None;
    for addr in addrs {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) => last = Some(anyhow!(e).context(format!("connecting to {addr}"))),
            Err(_) => {
                last = Some(anyhow!(
                    "connecting to {addr}: no answer in {CONNECT_TIMEOUT:?}"
                ))
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow!("no address to connect to")))
}

/// Error texts and how often each came, keeping a few distinct ones.
#[derive(Default)]
struct Errors {
    counts: BTreeMap<String, u32>,
    other: u32,
}

impl Errors {
    fn add(&mut self, error: String) {
        if let Some(n) = self.counts.get_mut(&error) {
            *n += 1;
        } else if self.counts.len() < ERROR_KINDS {
            self.counts.insert(error, 1);
        } else {
            self.other += 1;
        }
    }

    fn into_counts(self) -> Vec<ErrorCount> {
        let mut counts: Vec<ErrorCount> = self
            .counts
            .into_iter()
            .map(|(error, count)| ErrorCount { error, count })
            .collect();
        if self.other > 0 {
            counts.push(ErrorCount {
                error: "other errors".into(),
                count: self.other,
            });
        }
        counts.sort_by_key(|c| std::cmp::Reverse(c.count));
        counts
    }
}

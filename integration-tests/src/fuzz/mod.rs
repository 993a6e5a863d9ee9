//! The fuzz harness for whole client sessions: fuzzed bytes into one connection of an
//! in-process broker, over an in-memory stream, and checks on what comes back.
//!
//! The `connection` target in the repository's `fuzz/` is a thin wrapper around
//! [`connection`]; `tests/fuzz_corpus.rs` replays the committed corpus
//! (`fuzz/corpus/connection/`) and a few seconds of seeded random inputs through it, so
//! the ordinary test command runs the same checks.
//!
//! An input is one of three kinds, picked by its first byte (modulo 3):
//! - **raw**: the rest is written as it is, from the protocol header on;
//! - **frames**: eight bytes of [`Handshake`] settings, then raw bytes written after a
//!   handshake the harness performs;
//! - **session**: the same handshake, then the rest decoded with `arbitrary` into a
//!   sequence of [`Op`]s: plausible AMQP methods and content with fuzzed fields, raw
//!   frames and pauses, encoded with `amq-protocol`.
//!
//! For every input the harness checks that the server
//! - does not panic;
//! - writes only well-formed frames that `amq-protocol` parses, none above `frame_max`;
//! - answers a `connection.close` sent after whole frames, or closes, within
//!   [`BOUND`] (no hang), and ends the connection's task once the client has gone;
//! - still serves a fresh, well-behaved connection afterwards (handshake, channel,
//!   `queue.declare` round trip, close).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use amqp_codec::amq_protocol::frame::{AMQPFrame, parse_frame};
use amqp_codec::amq_protocol::protocol::{
    AMQPClass, BasicProperties, basic, channel, confirm, connection, exchange, queue, tx,
};
use amqp_codec::amq_protocol::types::{
    AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString,
};
use amqp_codec::frame::{
    FRAME_BODY, FRAME_END, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD, PROTOCOL_HEADER,
};
use amqp_codec::{PropertiesView, encode};
use arbitrary::Unstructured;
use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use warren::broker::Broker;
use warren::shutdown::Shutdown;

/// The deepest nesting of field tables the codec accepts.
const MAX_TABLE_DEPTH: usize = amqp_codec::table::MAX_DEPTH;

/// How long the server gets to answer or close, and its connection task to end.
pub const BOUND: Duration = Duration::from_secs(10);
/// Sessions served by one broker before it is replaced by a fresh one, so that the
/// queues and messages fuzzed sessions leave behind do not pile up.
const SESSIONS_PER_BROKER: u32 = 500;
/// At most this many ops of a session input are run.
const MAX_OPS: usize = 256;
/// At most this many sleeps per session, so that no input is slow by design.
const MAX_SLEEPS: usize = 8;
/// Room in each direction of the in-memory stream.
const PIPE: usize = 256 * 1024;

/// Runs one fuzz input against the shared in-process broker; see the module docs.
///
/// # Panics
/// When the server breaks one of the promises listed in the module docs.
pub fn connection(data: &[u8]) {
    let input = Input::parse(data);
    let mut harness = HARNESS.lock().unwrap_or_else(PoisonError::into_inner);
    let harness = harness.get_or_insert_with(Harness::new);
    harness.run(&input);
}

static HARNESS: Mutex<Option<Harness>> = Mutex::new(None);

/// A runtime and a broker that outlive single inputs (opening a broker costs more than
/// a session).
struct Harness {
    runtime: tokio::runtime::Runtime,
    broker: Arc<Broker>,
    data_dir: PathBuf,
    sessions: u32,
}

/// Where data directories go: tmpfs where there is one, so that the fuzzed sessions'
/// fsyncs cost nothing.
fn scratch_base() -> PathBuf {
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() {
        shm
    } else {
        std::env::temp_dir()
    }
}

/// Removes the data directories of harness processes that are gone: libFuzzer ends a
/// run with `exit`, which runs no destructors.
fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(scratch_base()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("warren-fuzz-"))
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !PathBuf::from("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn scratch_dir() -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    scratch_base().join(format!(
        "warren-fuzz-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

fn open_broker(data_dir: &std::path::Path) -> Arc<Broker> {
    let config = warren::Config {
        data_dir: data_dir.to_path_buf(),
        // No resource alarms: they would block publishers for reasons outside the input.
        memory_limit: 0,
        disk_free_limit: 0,
        ..warren::Config::default()
    };
    match Broker::open(Arc::new(config)) {
        Ok(broker) => Arc::new(broker),
        Err(e) => panic!("cannot open a broker in {}: {e}", data_dir.display()),
    }
}

impl Harness {
    fn new() -> Self {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => panic!("cannot build a runtime: {e}"),
        };
        if cfg!(target_os = "linux") {
            remove_stale_dirs();
        }
        let data_dir = scratch_dir();
        let broker = {
            let _entered = runtime.enter();
            open_broker(&data_dir)
        };
        Self {
            runtime,
            broker,
            data_dir,
            sessions: 0,
        }
    }

    fn recycle(&mut self) {
        let data_dir = scratch_dir();
        let _entered = self.runtime.enter();
        self.broker = open_broker(&data_dir);
        let _ = std::fs::remove_dir_all(std::mem::replace(&mut self.data_dir, data_dir));
    }

    fn run(&mut self, input: &Input) {
        self.sessions += 1;
        if self.sessions % SESSIONS_PER_BROKER == 0 {
            self.recycle();
        }
        let broker = self.broker.clone();
        self.runtime.block_on(async move {
            let (stop, stopping) = watch::channel(false);
            let Some(()) = bounded(session(&broker, input, &stopping)).await else {
                panic!("the server neither answered nor closed within {BOUND:?}: {input:?}");
            };
            let Some(()) = bounded(well_behaved(&broker, &stopping)).await else {
                panic!("a fresh connection got no answer within {BOUND:?} after {input:?}");
            };
            drop(stop);
        });
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

async fn bounded<F: std::future::Future>(fut: F) -> Option<F::Output> {
    tokio::time::timeout(BOUND, fut).await.ok()
}

fn peer() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 40000))
}

/// The handshake settings a frames or session input starts with (eight bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handshake {
    /// Log in with AMQPLAIN instead of PLAIN.
    pub amqplain: bool,
    /// Offer the `consumer_cancel_notify` capability.
    pub cancel_notify: bool,
    /// Offer the `connection.blocked` capability.
    pub blocked_notify: bool,
    /// Offer `authentication_failure_close`.
    pub auth_failure_close: bool,
    /// Log in with a wrong password.
    pub bad_password: bool,
    /// Open a vhost that does not exist.
    pub bad_vhost: bool,
    /// `channel_max` in tune-ok.
    pub channel_max: u16,
    /// `frame_max` in tune-ok.
    pub frame_max: u32,
    /// `heartbeat` in tune-ok.
    pub heartbeat: u16,
}

impl Default for Handshake {
    fn default() -> Self {
        Self {
            amqplain: false,
            cancel_notify: true,
            blocked_notify: true,
            auth_failure_close: true,
            bad_password: false,
            bad_vhost: false,
            channel_max: 2047,
            frame_max: 131_072,
            heartbeat: 0,
        }
    }
}

impl Handshake {
    /// Reads the settings: a flags byte, then `channel_max` (0 means 2047), `frame_max`
    /// (4096 + 2 × the value; 0 means 131072) and `heartbeat`, big-endian u16s, and
    /// a spare byte.
    pub fn from_bytes(b: [u8; 8]) -> Self {
        let flags = b[0];
        let channel_max = u16::from_be_bytes([b[1], b[2]]);
        let frame_max = u16::from_be_bytes([b[3], b[4]]);
        Self {
            amqplain: flags & 1 != 0,
            cancel_notify: flags & 2 != 0,
            blocked_notify: flags & 4 != 0,
            auth_failure_close: flags & 8 != 0,
            bad_password: flags >> 4 == 0xF,
            bad_vhost: flags >> 4 == 0xE,
            channel_max: if channel_max == 0 { 2047 } else { channel_max },
            frame_max: if frame_max == 0 {
                131_072
            } else {
                4096 + 2 * u32::from(frame_max)
            },
            heartbeat: u16::from_be_bytes([b[5], b[6]]),
        }
    }

    /// The eight bytes [`Handshake::from_bytes`] reads back as these settings.
    pub fn to_bytes(self) -> [u8; 8] {
        let mut flags = u8::from(self.amqplain)
            | u8::from(self.cancel_notify) << 1
            | u8::from(self.blocked_notify) << 2
            | u8::from(self.auth_failure_close) << 3;
        if self.bad_password {
            flags |= 0xF0;
        } else if self.bad_vhost {
            flags |= 0xE0;
        }
        let channel_max = if self.channel_max == 2047 {
            0
        } else {
            self.channel_max
        };
        let frame_max = if self.frame_max == 131_072 {
            0
        } else {
            u16::try_from(self.frame_max.saturating_sub(4096) / 2).unwrap_or(u16::MAX)
        };
        let [c0, c1] = channel_max.to_be_bytes();
        let [f0, f1] = frame_max.to_be_bytes();
        let [h0, h1] = self.heartbeat.to_be_bytes();
        [flags, c0, c1, f0, f1, h0, h1, 0]
    }

    /// The client's side of the handshake, pipelined: protocol header, start-ok, tune-ok
    /// and open.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = BytesMut::new();
        out.put_slice(PROTOCOL_HEADER);
        let mut capabilities = FieldTable::default();
        for (name, on) in [
            ("consumer_cancel_notify", self.cancel_notify),
            ("connection.blocked", self.blocked_notify),
            ("authentication_failure_close", self.auth_failure_close),
            ("publisher_confirms", true),
        ] {
            capabilities.insert(name.into(), AMQPValue::Boolean(on));
        }
        let mut client_properties = FieldTable::default();
        client_properties.insert("product".into(), AMQPValue::LongString("fuzz".into()));
        client_properties.insert("capabilities".into(), AMQPValue::FieldTable(capabilities));
        let password = if self.bad_password { "nope" } else { "guest" };
        let (mechanism, response) = if self.amqplain {
            let mut login = FieldTable::default();
            login.insert("LOGIN".into(), AMQPValue::LongString("guest".into()));
            login.insert("PASSWORD".into(), AMQPValue::LongString(password.into()));
            // AMQPLAIN's response is a field table without its length prefix.
            let table = encode_table(&login);
            ("AMQPLAIN", table[4..].to_vec())
        } else {
            ("PLAIN", format!("\0guest\0{password}").into_bytes())
        };
        let methods = [
            connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties,
                mechanism: mechanism.into(),
                response: LongString::from(response),
                locale: "en_US".into(),
            }),
            connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: self.channel_max,
                frame_max: self.frame_max,
                heartbeat: self.heartbeat,
            }),
            connection::AMQPMethod::Open(connection::Open {
                virtual_host: if self.bad_vhost { "/nowhere" } else { "/" }.into(),
            }),
        ];
        for method in methods {
            encode::method(&mut out, 0, &AMQPClass::Connection(method));
        }
        out.to_vec()
    }
}

fn encode_table(table: &FieldTable) -> Vec<u8> {
    match cookie_factory::r#gen(
        amqp_codec::amq_protocol::types::generation::gen_field_table(table),
        Vec::new(),
    ) {
        Ok((bytes, _)) => bytes,
        Err(e) => panic!("encoding a field table into a Vec failed: {e:?}"),
    }
}

/// One fuzz input, decoded.
#[derive(Debug)]
enum Input {
    /// Bytes from the very start of the connection.
    Raw(Vec<u8>),
    /// Bytes after the harness's handshake.
    Frames(Handshake, Vec<u8>),
    /// Structured operations after the harness's handshake.
    Session(Handshake, Vec<Op>),
}

/// Kind bytes of the three input kinds (the first byte, modulo 3).
pub mod kind {
    /// Raw bytes from the start of the connection.
    pub const RAW: u8 = 0;
    /// A handshake, then raw bytes.
    pub const FRAMES: u8 = 1;
    /// A handshake, then structured operations.
    pub const SESSION: u8 = 2;
}

impl Input {
    fn parse(data: &[u8]) -> Self {
        let Some((first, rest)) = data.split_first() else {
            return Input::Raw(Vec::new());
        };
        let kind = first % 3;
        if kind == kind::RAW {
            return Input::Raw(rest.to_vec());
        }
        let mut settings = [0u8; 8];
        let n = rest.len().min(8);
        settings[..n].copy_from_slice(&rest[..n]);
        let handshake = Handshake::from_bytes(settings);
        let rest = &rest[n..];
        if kind == kind::FRAMES {
            return Input::Frames(handshake, rest.to_vec());
        }
        let ops = Unstructured::new(rest)
            .arbitrary_take_rest_iter::<Op>()
            .into_iter()
            .flatten()
            .map_while(Result::ok)
            .take(MAX_OPS)
            .collect();
        Input::Session(handshake, ops)
    }
}

mod ops;
pub mod seeds;

use ops::{Op, frame};

/// What the client writes: chunks with pauses between them, and how it ends.
struct Script {
    chunks: Vec<(Vec<u8>, Pause)>,
    /// The input ends on a frame boundary: send `connection.close` and expect an
    /// answer. Otherwise end the stream and expect the server to close.
    close: bool,
    /// The largest frame the server may send.
    frame_max: u32,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Pause {
    None,
    Yield,
    Sleep,
}

/// Whether `bytes` is a run of whole frames (by their size fields).
fn whole_frames(bytes: &[u8]) -> bool {
    let mut at = 0usize;
    while at < bytes.len() {
        let Some(size) = bytes.get(at + 3..at + 7) else {
            return false;
        };
        let size = u32::from_be_bytes([size[0], size[1], size[2], size[3]]) as usize;
        at = at.saturating_add(8).saturating_add(size);
    }
    at == bytes.len()
}

impl Input {
    fn script(&self, server_frame_max: u32) -> Script {
        match self {
            Input::Raw(bytes) => Script {
                chunks: vec![(bytes.clone(), Pause::None)],
                close: false,
                frame_max: server_frame_max,
            },
            Input::Frames(handshake, bytes) => Script {
                chunks: vec![
                    (handshake.encode(), Pause::None),
                    (bytes.clone(), Pause::None),
                ],
                close: whole_frames(bytes),
                frame_max: handshake.frame_max.min(server_frame_max),
            },
            Input::Session(handshake, ops) => {
                let mut chunks = vec![(handshake.encode(), Pause::Yield)];
                let mut sleeps = 0;
                let mut out = BytesMut::new();
                for op in ops {
                    op.encode(&mut out, handshake.frame_max);
                    let pause = match op {
                        Op::Yield => Pause::Yield,
                        Op::Sleep if sleeps < MAX_SLEEPS => {
                            sleeps += 1;
                            Pause::Sleep
                        }
                        _ => Pause::None,
                    };
                    if pause != Pause::None {
                        chunks.push((out.split().to_vec(), pause));
                    }
                }
                chunks.push((out.to_vec(), Pause::None));
                Script {
                    chunks,
                    close: true,
                    frame_max: handshake.frame_max.min(server_frame_max),
                }
            }
        }
    }
}

/// Frames the server wrote, read off the client's end and checked one by one.
struct Reader<R> {
    stream: R,
    buf: BytesMut,
    /// The largest frame allowed.
    frame_max: u32,
    /// Still at the start of the stream, where a protocol header may come back.
    at_start: bool,
}

/// How reading the server's output stopped.
#[derive(Debug, PartialEq, Eq)]
enum Stop {
    /// The server ended the stream.
    Eof,
    /// The server sent `connection.close`.
    ServerClose,
    /// The server sent `connection.close-ok`.
    CloseOk,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    fn new(stream: R, frame_max: u32) -> Self {
        Self {
            stream,
            buf: BytesMut::with_capacity(64 * 1024),
            frame_max,
            at_start: true,
        }
    }

    /// The next whole frame, checked; `None` once the server ended the stream.
    async fn next(&mut self) -> Option<AMQPFrame> {
        loop {
            if self.at_start && self.buf.len() >= PROTOCOL_HEADER.len() {
                self.at_start = false;
                if self.buf.starts_with(b"AMQP") {
                    assert_eq!(
                        &self.buf[..PROTOCOL_HEADER.len()],
                        PROTOCOL_HEADER,
                        "the server answered with another protocol header"
                    );
                    let _ = self.buf.split_to(PROTOCOL_HEADER.len());
                    self.read_rest().await;
                    assert!(
                        self.buf.is_empty(),
                        "the server wrote after refusing the protocol header"
                    );
                    return None;
                }
            }
            if !self.at_start && self.buf.len() >= 7 {
                let size = u32::from_be_bytes([self.buf[3], self.buf[4], self.buf[5], self.buf[6]]);
                let total = size as usize + 8;
                assert!(
                    total <= self.frame_max as usize,
                    "the server wrote a {total}-byte frame, above frame_max {}",
                    self.frame_max
                );
                if self.buf.len() >= total {
                    let bytes = self.buf.split_to(total);
                    assert_eq!(bytes[total - 1], FRAME_END, "a frame without its end octet");
                    if bytes[0] == FRAME_HEADER {
                        // Properties go out as the publisher sent them, as RabbitMQ does,
                        // short strings that are not UTF-8 included (which amq-protocol
                        // refuses): only their structure is the server's to keep.
                        let properties = bytes.get(19..total - 1).unwrap_or_default();
                        assert!(
                            PropertiesView::new(properties).is_ok(),
                            "the server wrote a malformed content header: {bytes:?}"
                        );
                        continue;
                    }
                    return match parse_frame(&bytes[..]) {
                        Ok(([], frame)) => Some(frame),
                        other => panic!(
                            "the server wrote a frame amq-protocol cannot parse: {other:?}: {bytes:?}"
                        ),
                    };
                }
            }
            self.buf.reserve(64 * 1024);
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => {
                    assert!(
                        self.buf.is_empty()
                            || (self.at_start && PROTOCOL_HEADER.starts_with(&self.buf)),
                        "the server's output ends inside a frame: {:?}",
                        &self.buf[..]
                    );
                    return None;
                }
                Ok(_) => {}
            }
        }
    }

    async fn read_rest(&mut self) {
        loop {
            self.buf.reserve(1024);
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }

    /// Reads and checks frames until the server closes, or ends the stream.
    async fn until_close(&mut self) -> Stop {
        loop {
            match self.next().await {
                None => return Stop::Eof,
                Some(AMQPFrame::Method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::Close(_)),
                )) => return Stop::ServerClose,
                Some(AMQPFrame::Method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)),
                )) => return Stop::CloseOk,
                Some(_) => {}
            }
        }
    }

    async fn until_eof(&mut self) {
        while self.next().await.is_some() {}
    }
}

fn close_frame() -> BytesMut {
    let mut out = BytesMut::new();
    encode::method(
        &mut out,
        0,
        &AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: 200,
            reply_text: "fuzz session over".into(),
            class_id: 0,
            method_id: 0,
        })),
    );
    out
}

fn close_ok_frame() -> BytesMut {
    let mut out = BytesMut::new();
    encode::method(
        &mut out,
        0,
        &AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
    );
    out
}

/// Starts a connection task on an in-memory stream; returns the client's end.
fn connect(
    broker: &Arc<Broker>,
    stopping: &watch::Receiver<bool>,
) -> (tokio::io::DuplexStream, tokio::task::JoinHandle<()>) {
    let (client, server) = tokio::io::duplex(PIPE);
    let (reader, writer) = tokio::io::split(server);
    let task = tokio::spawn(warren::connection::serve(
        reader,
        writer,
        peer(),
        broker.clone(),
        Shutdown::from(stopping.clone()),
        warren::connection::Transport::default(),
    ));
    (client, task)
}

async fn write_script<W: AsyncWrite + Unpin>(writer: &mut W, script: &Script) {
    for (chunk, pause) in &script.chunks {
        if writer.write_all(chunk).await.is_err() {
            return;
        }
        match pause {
            Pause::None => {}
            Pause::Yield => {
                for _ in 0..4 {
                    tokio::task::yield_now().await;
                }
            }
            Pause::Sleep => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
    if script.close {
        let _ = writer.write_all(&close_frame()).await;
    } else {
        let _ = writer.shutdown().await;
    }
}

/// One fuzzed session: write the script while reading and checking what comes back,
/// then finish the close handshake and wait for the connection task to end.
async fn session(broker: &Arc<Broker>, input: &Input, stopping: &watch::Receiver<bool>) {
    let script = input.script(broker.config().frame_max);
    let (client, task) = connect(broker, stopping);
    let (read_half, mut write_half) = tokio::io::split(client);
    let mut reader = Reader::new(read_half, script.frame_max);
    let ((), stop) = tokio::join!(write_script(&mut write_half, &script), reader.until_close());
    if stop == Stop::ServerClose {
        let _ = write_half.write_all(&close_ok_frame()).await;
    }
    // Whatever remains comes before the end of the stream; none of it may be malformed.
    let _ = write_half.shutdown().await;
    reader.until_eof().await;
    join(task).await;
}

async fn join(task: tokio::task::JoinHandle<()>) {
    if let Err(e) = task.await {
        match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("the connection task failed: {e}"),
        }
    }
}

/// A well-behaved client: handshake, channel, `queue.declare` of a server-named
/// exclusive queue, close. Each answer must be the one expected.
async fn well_behaved(broker: &Arc<Broker>, stopping: &watch::Receiver<bool>) {
    let (client, task) = connect(broker, stopping);
    let (read_half, mut write_half) = tokio::io::split(client);
    let mut out = BytesMut::from(&Handshake::default().encode()[..]);
    encode::method(
        &mut out,
        1,
        &AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    );
    encode::method(
        &mut out,
        1,
        &AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: "".into(),
            exclusive: true,
            ..Default::default()
        })),
    );
    out.extend_from_slice(&close_frame());
    let written = write_half.write_all(&out).await;
    assert!(written.is_ok(), "cannot write to a fresh connection");
    let mut reader = Reader::new(read_half, broker.config().frame_max);
    let mut answers = Vec::new();
    while let Some(frame) = reader.next().await {
        match frame {
            AMQPFrame::Heartbeat => {}
            AMQPFrame::Method(channel, class) => answers.push((
                channel,
                class.get_amqp_class_id(),
                class.get_amqp_method_id(),
            )),
            other => panic!("a fresh connection got {other:?}"),
        }
    }
    assert_eq!(
        answers,
        [
            (0, 10, 10),
            (0, 10, 30),
            (0, 10, 41),
            (1, 20, 11),
            (1, 50, 11),
            (0, 10, 51)
        ],
        "a fresh connection got other answers than start, tune, open-ok, \
         channel.open-ok, queue.declare-ok, close-ok"
    );
    join(task).await;
}

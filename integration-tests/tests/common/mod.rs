//! Helpers shared by the black-box test files (each file says `mod common;`): bounded
//! waits, reading AMQP errors out of lapin's errors, small lapin shortcuts, a raw AMQP
//! socket for malformed-bytes tests, and a TCP proxy whose sockets can be killed.
#![allow(dead_code)]

use std::fmt::Debug;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use amq_protocol::auth::{Credentials, SASLMechanism};
use amq_protocol::frame::{AMQPFrame, gen_frame, parse_frame};
use amq_protocol::protocol::{AMQPClass, channel as channel_methods, connection};
use amq_protocol::types::{AMQPValue, FieldTable as RawFieldTable};
use futures_lite::StreamExt;
use integration_tests::TestServer;
use lapin::message::{BasicGetMessage, Delivery};
use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

pub mod http;
pub mod pki;

/// The bound on every wait for something that must happen.
pub const BOUND: Duration = Duration::from_secs(5);
/// How long to watch for something that must not happen (a delivery beyond prefetch).
pub const QUIET: Duration = Duration::from_millis(300);

/// Awaits `fut`, failing the test with `what` if it takes longer than [`BOUND`].
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(BOUND, fut).await {
        Ok(output) => output,
        Err(_) => panic!("timed out after {BOUND:?}: {what}"),
    }
}

/// The AMQP reply code and text an error carries, if it is a broker-sent close.
pub fn amqp_error(err: &lapin::Error) -> Option<(u16, String)> {
    match err.kind() {
        lapin::ErrorKind::ProtocolError(e) => Some((e.get_id(), e.get_message().to_string())),
        _ => None,
    }
}

/// Asserts that `result` failed with the broker's close carrying `code` and `text`.
#[track_caller]
pub fn assert_amqp_error<T: Debug>(result: lapin::Result<T>, code: u16, text: &str) {
    match result {
        Ok(value) => panic!("expected {code} `{text}`, got Ok({value:?})"),
        Err(err) => assert_eq!(
            amqp_error(&err),
            Some((code, text.to_string())),
            "unexpected error: {err:?}"
        ),
    }
}

/// The broker's URI with another user, password, vhost or query string.
pub fn uri_with(server: &TestServer, user: &str, pass: &str, vhost: &str, query: &str) -> String {
    let addr = server.addr();
    format!("amqp://{user}:{pass}@{addr}/{vhost}{query}")
}

/// Connects with a custom URI.
pub async fn connect_uri(uri: &str) -> lapin::Result<Connection> {
    within(
        "lapin connect",
        Connection::connect(uri, ConnectionProperties::default()),
    )
    .await
}

/// A connection and a channel on it.
pub async fn open(server: &TestServer) -> (Connection, Channel) {
    let conn = within("connect", server.connect()).await;
    let channel = within("open channel", conn.create_channel())
        .await
        .expect("open a channel");
    (conn, channel)
}

/// A connection and a channel in confirm mode: [`publish`] on it returns once the
/// broker has routed (and confirmed) the message.
pub async fn open_confirm(server: &TestServer) -> (Connection, Channel) {
    let (conn, channel) = open(server).await;
    within(
        "confirm.select",
        channel.confirm_select(lapin::options::ConfirmSelectOptions::default()),
    )
    .await
    .expect("confirm.select");
    (conn, channel)
}

/// Another channel on `conn`.
pub async fn channel(conn: &Connection) -> Channel {
    within("open channel", conn.create_channel())
        .await
        .expect("open a channel")
}

/// Declares a plain (non-durable, non-exclusive, non-auto-delete) queue.
pub async fn declare_queue(channel: &Channel, name: &str) {
    within(
        "queue.declare",
        channel.queue_declare(
            name.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("declare a queue");
}

/// The number of ready messages in `queue`, by passive declare.
pub async fn message_count(channel: &Channel, queue: &str) -> u32 {
    counts(channel, queue).await.0
}

/// (ready messages, consumers) of `queue`, by passive declare.
pub async fn counts(channel: &Channel, queue: &str) -> (u32, u32) {
    let declared = within(
        "passive queue.declare",
        channel.queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("passive declare");
    (declared.message_count(), declared.consumer_count())
}

/// Whether `queue` exists, by passive declare on a throwaway channel (an exclusive
/// queue of another connection exists: 405).
pub async fn queue_exists(conn: &Connection, queue: &str) -> bool {
    let channel = channel(conn).await;
    let result = within(
        "passive queue.declare",
        channel.queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await;
    match result {
        Ok(_) => {
            let _ = channel.close(200, "OK".into()).await;
            true
        }
        Err(err) => match amqp_error(&err).map(|(code, _)| code) {
            Some(404) => false,
            Some(405) => true,
            _ => panic!("passive declare failed otherwise: {err:?}"),
        },
    }
}

/// Publishes `body` and awaits lapin's send (and the confirm when in confirm mode).
pub async fn publish(channel: &Channel, exchange: &str, routing_key: &str, body: &[u8]) {
    publish_with(
        channel,
        exchange,
        routing_key,
        body,
        BasicProperties::default(),
    )
    .await;
}

/// Publishes `body` with `properties`.
pub async fn publish_with(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) {
    within("basic.publish", async {
        channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await?
            .await
    })
    .await
    .expect("publish");
}

/// Publishes in confirm mode and awaits the confirm. A publish the broker refuses closes
/// the channel (or connection), and the pending confirm fails with that close; a method
/// sent after the publish instead could find the channel already closed by a fast broker
/// and report only a channel-state error.
pub async fn publish_confirmed_or_closed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    options: BasicPublishOptions,
    body: &[u8],
    properties: BasicProperties,
) -> lapin::Result<lapin::Confirmation> {
    within(
        "confirm.select",
        channel.confirm_select(lapin::options::ConfirmSelectOptions::default()),
    )
    .await?;
    publish_then_confirm(channel, exchange, routing_key, options, body, properties).await
}

/// Publishes and awaits lapin's send and, in confirm mode, the broker's confirm.
async fn publish_then_confirm(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    options: BasicPublishOptions,
    body: &[u8],
    properties: BasicProperties,
) -> lapin::Result<lapin::Confirmation> {
    within("basic.publish", async {
        channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                options,
                body,
                properties,
            )
            .await?
            .await
    })
    .await
}

/// Publishes `count` messages `prefix-0`, `prefix-1` … to `queue` through the default
/// exchange, then waits until the queue holds them all (publishes are asynchronous).
pub async fn fill_queue(channel: &Channel, queue: &str, count: usize) -> Vec<String> {
    let bodies: Vec<String> = (0..count).map(|i| format!("m{i:03}")).collect();
    for body in &bodies {
        publish(channel, "", queue, body.as_bytes()).await;
    }
    let expected = u32::try_from(count).expect("small count");
    let ok = integration_tests::wait_for(BOUND, || async {
        message_count(channel, queue).await == expected
    })
    .await;
    assert!(ok, "queue {queue} did not reach {count} messages");
    bodies
}

/// The next delivery on `consumer`, bounded.
pub async fn next_delivery(consumer: &mut Consumer) -> Delivery {
    within("a delivery", consumer.next())
        .await
        .expect("consumer stream ended")
        .expect("consumer error")
}

/// Asserts that no delivery arrives on `consumer` for [`QUIET`].
pub async fn assert_no_delivery(consumer: &mut Consumer) {
    if let Ok(item) = tokio::time::timeout(QUIET, consumer.next()).await {
        match item {
            Some(Ok(delivery)) => panic!(
                "unexpected delivery {:?} (tag {})",
                String::from_utf8_lossy(&delivery.data),
                delivery.delivery_tag
            ),
            other => panic!("unexpected consumer event {other:?}"),
        }
    }
}

/// `basic.get` with manual ack.
pub async fn get(channel: &Channel, queue: &str) -> Option<BasicGetMessage> {
    within(
        "basic.get",
        channel.basic_get(queue.into(), BasicGetOptions { no_ack: false }),
    )
    .await
    .expect("basic.get")
}

/// Takes every ready message from `queue` with `basic.get` (no-ack): body and
/// redelivered flag, in queue order.
pub async fn drain(channel: &Channel, queue: &str) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    loop {
        let message = within(
            "basic.get",
            channel.basic_get(queue.into(), BasicGetOptions { no_ack: true }),
        )
        .await
        .expect("basic.get");
        match message {
            Some(message) => out.push((
                String::from_utf8_lossy(&message.delivery.data).into_owned(),
                message.delivery.redelivered,
            )),
            None => return out,
        }
    }
}

/// Waits until `queue` holds `count` ready messages.
pub async fn wait_for_count(channel: &Channel, queue: &str, count: u32) {
    let ok = integration_tests::wait_for(BOUND, || async {
        message_count(channel, queue).await == count
    })
    .await;
    if !ok {
        let now = message_count(channel, queue).await;
        panic!("queue {queue} holds {now} messages, expected {count}");
    }
}

/// The body of a delivery as text.
pub fn body(delivery: &Delivery) -> String {
    String::from_utf8_lossy(&delivery.data).into_owned()
}

// ---------------------------------------------------------------------------------------
// Raw AMQP over a TCP socket.
// ---------------------------------------------------------------------------------------

/// The AMQP 0-9-1 protocol header.
pub const PROTOCOL_HEADER: &[u8] = b"AMQP\x00\x00\x09\x01";

/// A raw AMQP client: write any bytes, read and parse the broker's frames.
pub struct Raw {
    pub stream: TcpStream,
    buf: Vec<u8>,
    /// `frame_max` agreed in the handshake.
    pub frame_max: u32,
}

/// What a raw read found.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one value at a time, in tests
pub enum Read {
    Frame(AMQPFrame),
    Eof,
}

impl Raw {
    /// Opens a TCP connection to the broker.
    pub async fn connect(addr: SocketAddr) -> Raw {
        let stream = within("tcp connect", TcpStream::connect(addr))
            .await
            .expect("tcp connect");
        stream.set_nodelay(true).expect("nodelay");
        Raw {
            stream,
            buf: Vec::new(),
            frame_max: 131_072,
        }
    }

    /// Writes bytes as they are.
    pub async fn send(&mut self, bytes: &[u8]) {
        within("write", self.stream.write_all(bytes))
            .await
            .expect("write to the broker");
    }

    /// Writes bytes, tolerating a broker that already closed the socket.
    pub async fn send_lenient(&mut self, bytes: &[u8]) {
        let _ = within("write", self.stream.write_all(bytes)).await;
    }

    /// Encodes one frame.
    pub fn encode(frame: &AMQPFrame) -> Vec<u8> {
        cookie_factory::gen_simple(gen_frame(frame), Vec::new()).expect("encode a frame")
    }

    /// Writes one method frame.
    pub async fn send_method(&mut self, channel: u16, method: AMQPClass) {
        let bytes = Self::encode(&AMQPFrame::Method(channel, method));
        self.send(&bytes).await;
    }

    /// Reads the next frame (heartbeats included) or end of stream, bounded.
    pub async fn read(&mut self) -> Read {
        within("a frame from the broker", async {
            loop {
                if !self.buf.is_empty() {
                    match parse_frame(self.buf.as_slice()) {
                        Ok((rest, frame)) => {
                            let used = self.buf.len() - rest.len();
                            self.buf.drain(..used);
                            return Read::Frame(frame);
                        }
                        Err(e) if e.is_incomplete() => {}
                        Err(e) => panic!("unparsable bytes from the broker: {e:?} {:?}", self.buf),
                    }
                }
                self.buf.reserve(65536);
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return Read::Eof,
                    Ok(_) => {}
                }
            }
        })
        .await
    }

    /// The next frame other than a heartbeat; panics at end of stream.
    pub async fn frame(&mut self) -> AMQPFrame {
        loop {
            match self.read().await {
                Read::Frame(AMQPFrame::Heartbeat) => continue,
                Read::Frame(frame) => return frame,
                Read::Eof => panic!("the broker closed the socket"),
            }
        }
    }

    /// The next method (skipping heartbeats); panics on anything else.
    pub async fn method(&mut self) -> (u16, AMQPClass) {
        match self.frame().await {
            AMQPFrame::Method(channel, method) => (channel, method),
            other => panic!("expected a method frame, got {other:?}"),
        }
    }

    /// Reads raw bytes until the broker closes the socket; returns them.
    pub async fn read_to_eof(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.buf);
        within("the broker closing the socket", async {
            loop {
                out.reserve(4096);
                match self.stream.read_buf(&mut out).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        out
    }

    /// Every frame the broker sends until it closes the socket, waiting at most `bound`
    /// (RabbitMQ closes a failed handshake silently after a 3 s delay).
    pub async fn frames_until_eof(&mut self, bound: Duration) -> Vec<AMQPFrame> {
        let mut frames = Vec::new();
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            if !self.buf.is_empty() {
                match parse_frame(self.buf.as_slice()) {
                    Ok((rest, frame)) => {
                        let used = self.buf.len() - rest.len();
                        self.buf.drain(..used);
                        frames.push(frame);
                        continue;
                    }
                    Err(e) if e.is_incomplete() => {}
                    Err(e) => panic!("unparsable bytes from the broker: {e:?} {:?}", self.buf),
                }
            }
            self.buf.reserve(65536);
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return frames,
                Ok(Ok(_)) => {}
                Err(_) => panic!("the broker kept the socket open for {bound:?}; sent {frames:?}"),
            }
        }
    }

    /// Asserts the broker closes the socket within `bound` having sent nothing but,
    /// perhaps, a `connection.close` (RabbitMQ sends nothing when a handshake fails
    /// before `connection.open`, except for refused logins).
    pub async fn expect_handshake_abort(&mut self, bound: Duration) {
        for frame in self.frames_until_eof(bound).await {
            match frame {
                AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Close(_)))
                | AMQPFrame::Heartbeat => {}
                other => panic!("expected the handshake to fail, got {other:?}"),
            }
        }
    }

    /// Sends the protocol header and reads `connection.start`.
    pub async fn start(&mut self) -> connection::Start {
        self.send(PROTOCOL_HEADER).await;
        match self.method().await {
            (0, AMQPClass::Connection(connection::AMQPMethod::Start(start))) => start,
            other => panic!("expected connection.start, got {other:?}"),
        }
    }

    /// Sends `connection.start-ok` with PLAIN guest/guest.
    pub async fn start_ok(&mut self) {
        self.start_ok_with("PLAIN", "guest", "guest").await;
    }

    /// Sends `connection.start-ok` with a mechanism and credentials.
    pub async fn start_ok_with(&mut self, mechanism: &str, user: &str, pass: &str) {
        let credentials = Credentials::new(user.into(), pass.into());
        let response = match mechanism {
            "AMQPLAIN" => credentials.sasl_auth_string(SASLMechanism::AMQPlain),
            _ => credentials.sasl_auth_string(SASLMechanism::Plain),
        };
        let mut capabilities = RawFieldTable::default();
        capabilities.insert(
            "authentication_failure_close".into(),
            AMQPValue::Boolean(true),
        );
        capabilities.insert("consumer_cancel_notify".into(), AMQPValue::Boolean(true));
        capabilities.insert("basic.nack".into(), AMQPValue::Boolean(true));
        capabilities.insert("publisher_confirms".into(), AMQPValue::Boolean(true));
        let mut client_properties = RawFieldTable::default();
        client_properties.insert("product".into(), AMQPValue::LongString("raw-test".into()));
        client_properties.insert("capabilities".into(), AMQPValue::FieldTable(capabilities));
        self.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties,
                mechanism: mechanism.into(),
                response,
                locale: "en_US".into(),
            })),
        )
        .await;
    }

    /// Reads `connection.tune`.
    pub async fn tune(&mut self) -> connection::Tune {
        match self.method().await {
            (0, AMQPClass::Connection(connection::AMQPMethod::Tune(tune))) => tune,
            other => panic!("expected connection.tune, got {other:?}"),
        }
    }

    /// Sends `connection.tune-ok`.
    pub async fn tune_ok(&mut self, channel_max: u16, frame_max: u32, heartbeat: u16) {
        self.frame_max = frame_max;
        self.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max,
                frame_max,
                heartbeat,
            })),
        )
        .await;
    }

    /// Sends `connection.open` for `vhost` and reads `open-ok`.
    pub async fn open_vhost(&mut self, vhost: &str) {
        self.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: vhost.into(),
            })),
        )
        .await;
        match self.method().await {
            (0, AMQPClass::Connection(connection::AMQPMethod::OpenOk(_))) => {}
            other => panic!("expected connection.open-ok, got {other:?}"),
        }
    }

    /// The whole handshake: guest/guest, the server's tune values with heartbeats off,
    /// vhost `/`.
    pub async fn connect_open(addr: SocketAddr) -> Raw {
        let mut raw = Raw::connect(addr).await;
        raw.start().await;
        raw.start_ok().await;
        let tune = raw.tune().await;
        raw.tune_ok(tune.channel_max, tune.frame_max, 0).await;
        raw.open_vhost("/").await;
        raw
    }

    /// Opens channel `id` and reads `channel.open-ok`.
    pub async fn open_channel(&mut self, id: u16) {
        self.send_method(
            id,
            AMQPClass::Channel(channel_methods::AMQPMethod::Open(channel_methods::Open {})),
        )
        .await;
        match self.method().await {
            (ch, AMQPClass::Channel(channel_methods::AMQPMethod::OpenOk(_))) if ch == id => {}
            other => panic!("expected channel.open-ok on {id}, got {other:?}"),
        }
    }

    /// Reads frames until `connection.close`, answers `close-ok`, and checks that the
    /// broker then closes the socket. Returns (code, text, class, method).
    pub async fn expect_connection_close(&mut self) -> (u16, String, u16, u16) {
        loop {
            match self.read().await {
                Read::Frame(AMQPFrame::Method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::Close(close)),
                )) => {
                    self.send_lenient(&Self::encode(&AMQPFrame::Method(
                        0,
                        AMQPClass::Connection(connection::AMQPMethod::CloseOk(
                            connection::CloseOk {},
                        )),
                    )))
                    .await;
                    self.read_to_eof().await;
                    return (
                        close.reply_code,
                        close.reply_text.to_string(),
                        close.class_id,
                        close.method_id,
                    );
                }
                Read::Frame(_) => continue,
                Read::Eof => panic!("socket closed without connection.close"),
            }
        }
    }

    /// Reads frames until `channel.close` on `id`, answers `close-ok`.
    /// Returns (code, text, class, method).
    pub async fn expect_channel_close(&mut self, id: u16) -> (u16, String, u16, u16) {
        loop {
            match self.frame().await {
                AMQPFrame::Method(
                    ch,
                    AMQPClass::Channel(channel_methods::AMQPMethod::Close(close)),
                ) if ch == id => {
                    self.send_method(
                        id,
                        AMQPClass::Channel(channel_methods::AMQPMethod::CloseOk(
                            channel_methods::CloseOk {},
                        )),
                    )
                    .await;
                    return (
                        close.reply_code,
                        close.reply_text.to_string(),
                        close.class_id,
                        close.method_id,
                    );
                }
                AMQPFrame::Method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::Close(close)),
                ) => panic!("expected channel.close, got connection.close {close:?}"),
                _ => continue,
            }
        }
    }
}

/// A raw frame with any type, channel and payload, and a correct frame end.
pub fn raw_frame(frame_type: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.push(frame_type);
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(
        &u32::try_from(payload.len())
            .expect("small payload")
            .to_be_bytes(),
    );
    out.extend_from_slice(payload);
    out.push(0xCE);
    out
}

/// Checks that the broker still serves a fresh lapin connection: declare, publish, get.
pub async fn assert_broker_works(server: &TestServer) {
    let (conn, channel) = open(server).await;
    let queue = integration_tests::unique_name("alive");
    declare_queue(&channel, &queue).await;
    publish(&channel, "", &queue, b"still here").await;
    let ok = integration_tests::wait_for(BOUND, || async {
        message_count(&channel, &queue).await == 1
    })
    .await;
    assert!(ok, "a second connection could not publish");
    let got = get(&channel, &queue).await.expect("the message");
    assert_eq!(got.delivery.data, b"still here");
    let _ = within(
        "queue.delete",
        channel.queue_delete(queue.as_str().into(), Default::default()),
    )
    .await;
    let _ = conn.close(200, "OK".into()).await;
}

// ---------------------------------------------------------------------------------------
// A TCP proxy whose client-side sockets can be killed, to drop a lapin connection's
// socket abruptly (no connection.close, as when a client process dies).
// ---------------------------------------------------------------------------------------

/// Forwards every connection it accepts to the broker until [`KillableProxy::kill`].
pub struct KillableProxy {
    pub addr: SocketAddr,
    kill: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl KillableProxy {
    /// Starts the proxy in front of `target`.
    pub async fn start(target: SocketAddr) -> KillableProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let kill = Arc::new(Notify::new());
        let killed = kill.clone();
        let task = tokio::spawn(async move {
            let mut pipes = Vec::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((mut client, _)) = accepted else { break };
                        let Ok(mut upstream) = TcpStream::connect(target).await else { break };
                        pipes.push(tokio::spawn(async move {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                        }));
                    }
                    () = killed.notified() => break,
                }
            }
            // Aborting the pipes drops both sockets: the broker sees its peer vanish.
            for pipe in pipes {
                pipe.abort();
                let _ = pipe.await;
            }
        });
        KillableProxy { addr, kill, task }
    }

    /// The URI to reach the broker through the proxy.
    pub fn uri(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }

    /// Drops every proxied socket at once, and waits until they are gone.
    pub async fn kill(self) {
        self.kill.notify_one();
        let _ = within("proxy shutdown", self.task).await;
    }
}

// ---------------------------------------------------------------------------------------
// RabbitMQ extensions: argument tables, declares and consumes with arguments, and the
// headers dead-lettering adds.
// ---------------------------------------------------------------------------------------

/// A field table from `(key, value)` pairs, for queue, exchange and consumer arguments
/// and message headers.
pub fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in pairs {
        table.insert((*key).into(), value.clone());
    }
    table
}

/// A long-string field value.
pub fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(value.into())
}

/// A signed 32-bit field value (`I`, what most clients send for small integers).
pub fn int(value: i32) -> AMQPValue {
    AMQPValue::LongInt(value)
}

/// Declares a plain queue with `args`; the broker's refusal is returned, not a panic.
pub async fn declare_queue_with(
    channel: &Channel,
    name: &str,
    args: FieldTable,
) -> lapin::Result<lapin::Queue> {
    within(
        "queue.declare",
        channel.queue_declare(name.into(), QueueDeclareOptions::default(), args),
    )
    .await
}

/// Starts a consumer with `options` and consumer `args` (such as `x-priority`).
pub async fn consume_with(
    channel: &Channel,
    queue: &str,
    tag: &str,
    options: lapin::options::BasicConsumeOptions,
    args: FieldTable,
) -> Consumer {
    within(
        "basic.consume",
        channel.basic_consume(queue.into(), tag.into(), options, args),
    )
    .await
    .expect("basic.consume")
}

/// Sets a per-consumer prefetch on `channel`.
pub async fn prefetch(channel: &Channel, count: u16) {
    within(
        "basic.qos",
        channel.basic_qos(count, lapin::options::BasicQosOptions { global: false }),
    )
    .await
    .expect("basic.qos");
}

/// Waits (bounded) until `basic.get` (manual ack) on `queue` returns a message.
pub async fn wait_for_get(channel: &Channel, queue: &str) -> BasicGetMessage {
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        if let Some(message) = get(channel, queue).await {
            return message;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no message arrived in {queue} within {BOUND:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A header of a delivered message.
pub fn header<'a>(properties: &'a BasicProperties, key: &str) -> Option<&'a AMQPValue> {
    properties
        .headers()
        .as_ref()
        .and_then(|headers| headers.inner().get(key))
}

/// A long-string header of a delivered message, as text.
pub fn header_text(properties: &BasicProperties, key: &str) -> Option<String> {
    match header(properties, key)? {
        AMQPValue::LongString(value) => Some(String::from_utf8_lossy(value.as_bytes()).into()),
        other => panic!("header {key} is not a long string: {other:?}"),
    }
}

/// The `x-death` header's entries, most recent first; empty when absent.
pub fn x_death(properties: &BasicProperties) -> Vec<FieldTable> {
    match header(properties, "x-death") {
        None => Vec::new(),
        Some(AMQPValue::FieldArray(entries)) => entries
            .as_slice()
            .iter()
            .map(|entry| match entry {
                AMQPValue::FieldTable(entry) => entry.clone(),
                other => panic!("x-death entry is not a table: {other:?}"),
            })
            .collect(),
        Some(other) => panic!("x-death is not an array: {other:?}"),
    }
}

/// A field of an `x-death` entry (or any table) as text, for long strings.
pub fn field_text(table: &FieldTable, key: &str) -> Option<String> {
    match table.inner().get(key)? {
        AMQPValue::LongString(value) => Some(String::from_utf8_lossy(value.as_bytes()).into()),
        other => panic!("field {key} is not a long string: {other:?}"),
    }
}

/// Declares a non-durable exchange of `kind` with `args` (such as `alternate-exchange`).
pub async fn declare_exchange_with(
    channel: &Channel,
    name: &str,
    kind: lapin::ExchangeKind,
    args: FieldTable,
) {
    within(
        "exchange.declare",
        channel.exchange_declare(
            name.into(),
            kind,
            lapin::options::ExchangeDeclareOptions::default(),
            args,
        ),
    )
    .await
    .expect("exchange.declare");
}

/// Binds `queue` to `exchange` with `routing_key`.
pub async fn bind_queue(channel: &Channel, queue: &str, exchange: &str, routing_key: &str) {
    within(
        "queue.bind",
        channel.queue_bind(
            queue.into(),
            exchange.into(),
            routing_key.into(),
            lapin::options::QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("queue.bind");
}

/// Publishes on a channel in confirm mode and returns the broker's confirmation.
pub async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    options: BasicPublishOptions,
    body: &[u8],
    properties: BasicProperties,
) -> lapin::Confirmation {
    publish_then_confirm(channel, exchange, routing_key, options, body, properties)
        .await
        .expect("publish")
}

/// Whether `exchange` exists (a passive `exchange.declare` on a fresh channel).
pub async fn exchange_exists(conn: &Connection, exchange: &str) -> bool {
    let channel = channel(conn).await;
    let result = within(
        "passive exchange.declare",
        channel.exchange_declare(
            exchange.into(),
            lapin::ExchangeKind::Direct,
            lapin::options::ExchangeDeclareOptions {
                passive: true,
                ..lapin::options::ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await;
    match result {
        Ok(()) => {
            let _ = channel.close(200, "OK".into()).await;
            true
        }
        Err(err) if amqp_error(&err).map(|(code, _)| code) == Some(404) => false,
        Err(err) => panic!("passive exchange.declare failed otherwise: {err:?}"),
    }
}

/// The bodies [`drain`] takes from `queue`, in order, without their redelivered flags.
pub async fn drain_bodies(channel: &Channel, queue: &str) -> Vec<String> {
    drain(channel, queue)
        .await
        .into_iter()
        .map(|(body, _)| body)
        .collect()
}

/// Runs `warren ctl --data-dir DIR ARGS…` against the broker on `dir`; returns its exit
/// status, stdout and stderr.
pub fn warren_ctl(dir: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(integration_tests::warren_binary())
        .arg("ctl")
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .output()
        .expect("run warren ctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs a `warren ctl` command that must succeed; returns its stdout.
pub fn ctl_ok(dir: &std::path::Path, args: &[&str]) -> String {
    let (status, out, err) = warren_ctl(dir, args);
    assert_eq!(status, 0, "warren ctl {args:?}: {err}");
    out
}

//! A small blocking AMQP client connection: the broker's address from a URI, the
//! handshake (protocol header, PLAIN login, tune, vhost, channel 1), and
//! request/response calls for setup methods. Hot loops take the socket and read
//! buffer from here and drive them directly.

use std::io::Write;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use amqp_codec::amq_protocol::protocol::{AMQPClass, channel, connection};
use amqp_codec::amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};
use amqp_codec::amq_protocol::uri::{AMQPScheme, AMQPUri};
use amqp_codec::encode;
use anyhow::{Context, Result, anyhow, bail};
use bytes::BytesMut;

use super::wire::{self, ReadBuf};

/// The one channel every connection of the tool uses.
pub const CHANNEL: u16 = 1;
/// `frame_max` the tool asks for unless the URI says otherwise.
const DEFAULT_FRAME_MAX: u32 = 131_072;
/// How long a setup step may wait for the broker.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Size of the read buffer each connection starts with.
const READ_BUF_SIZE: usize = 1 << 20;

/// Where and how to connect, from an `amqp://` URI (or, for the connections mode, an
/// `amqps://` one: see [`Endpoint::parse_with_transport`]).
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The broker's addresses, in resolution order.
    pub addrs: Vec<SocketAddr>,
    /// PLAIN user name.
    pub username: String,
    /// PLAIN password.
    pub password: String,
    /// Virtual host.
    pub vhost: String,
    /// Largest frame to negotiate.
    pub frame_max: u32,
    /// Heartbeat interval to ask for, in seconds (0: none).
    pub heartbeat: u16,
}

impl Endpoint {
    /// Parses and resolves an `amqp://user:pass@host:port/vhost?heartbeat=N&frame_max=N`
    /// URI. Heartbeats are off unless the URI asks for them.
    ///
    /// # Errors
    /// A malformed URI, `amqps://` (only the connections mode has a TLS client), or a
    /// host that does not resolve.
    pub fn parse(uri: &str) -> Result<Self> {
        let (endpoint, transport) = Self::parse_with_transport(uri)?;
        if let Transport::Tls { .. } = transport {
            bail!(
                "amqps:// is supported only with --connections (this mode has no TLS client); \
                 use an amqp:// URI"
            );
        }
        Ok(endpoint)
    }

    /// As [`Endpoint::parse`], but accepts `amqps://` too, saying which of the two the
    /// URI asked for. Without a port, `amqps://` means 5671.
    ///
    /// # Errors
    /// A malformed URI, or a host that does not resolve.
    pub fn parse_with_transport(uri: &str) -> Result<(Self, Transport)> {
        let parsed: AMQPUri = uri.parse().map_err(|e| anyhow!("bad URI {uri:?}: {e}"))?;
        let host = parsed
            .authority
            .host
            .trim_start_matches('[')
            .trim_end_matches(']');
        let addrs: Vec<SocketAddr> = (host, parsed.authority.port)
            .to_socket_addrs()
            .with_context(|| format!("resolving {host}"))?
            .collect();
        if addrs.is_empty() {
            bail!("{host} resolves to no address");
        }
        let transport = match parsed.scheme {
            AMQPScheme::AMQP => Transport::Plain,
            AMQPScheme::AMQPS => Transport::Tls {
                server_name: host.to_owned(),
            },
        };
        let endpoint = Self {
            addrs,
            username: parsed.authority.userinfo.username,
            password: parsed.authority.userinfo.password,
            vhost: parsed.vhost,
            frame_max: parsed.query.frame_max.unwrap_or(DEFAULT_FRAME_MAX),
            heartbeat: parsed.query.heartbeat.unwrap_or(0),
        };
        Ok((endpoint, transport))
    }
}

/// What carries the AMQP bytes, from the URI's scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// `amqp://`: plain TCP.
    Plain,
    /// `amqps://`: TLS over TCP.
    Tls {
        /// The name the broker's certificate must match: the URI's host, a DNS name or
        /// an IP address.
        server_name: String,
    },
}

/// An open connection with channel [`CHANNEL`] open on it.
#[derive(Debug)]
pub struct Connection {
    /// The socket (TCP_NODELAY set: the tool batches its own writes).
    pub stream: TcpStream,
    /// Bytes read from the socket and not yet parsed.
    pub rbuf: ReadBuf,
    /// The negotiated largest frame, framing included.
    pub frame_max: u32,
    /// The negotiated heartbeat interval, if any.
    pub heartbeat: Option<Duration>,
    out: BytesMut,
}

impl Connection {
    /// Connects, logs in, opens the vhost and channel [`CHANNEL`]; `name` is shown in
    /// the broker's connection list.
    ///
    /// # Errors
    /// Network failures, refused login or vhost, and protocol violations.
    pub fn open(endpoint: &Endpoint, name: &str) -> Result<Self> {
        let stream = connect(&endpoint.addrs)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(SETUP_TIMEOUT))?;
        let mut conn = Self {
            stream,
            rbuf: ReadBuf::with_capacity(READ_BUF_SIZE),
            frame_max: 0,
            heartbeat: None,
            out: BytesMut::with_capacity(4096),
        };
        conn.handshake(endpoint, name)
            .with_context(|| format!("opening a connection to {}", endpoint.addrs[0]))?;
        Ok(conn)
    }

    fn handshake(&mut self, endpoint: &Endpoint, name: &str) -> Result<()> {
        encode::protocol_header(&mut self.out);
        self.flush()?;
        let start = match self.next_method()? {
            (0, AMQPClass::Connection(connection::AMQPMethod::Start(start))) => start,
            (_, other) => bail!("expected connection.start, got {other:?}"),
        };
        self.send(0, &start_ok(endpoint, &start, name)?)?;
        let tune = match self.next_method()? {
            (0, AMQPClass::Connection(connection::AMQPMethod::Tune(tune))) => tune,
            (_, other) => bail!("expected connection.tune, got {other:?}"),
        };
        let tune_ok = tune_ok(endpoint, &tune);
        self.frame_max = tune_ok.frame_max;
        self.heartbeat = heartbeat_interval(&tune_ok);
        self.send(
            0,
            &AMQPClass::Connection(connection::AMQPMethod::TuneOk(tune_ok)),
        )?;
        self.send(0, &open_method(endpoint)?)?;
        match self.next_method()? {
            (0, AMQPClass::Connection(connection::AMQPMethod::OpenOk(_))) => {}
            (_, other) => bail!("expected connection.open-ok, got {other:?}"),
        }
        self.call(AMQPClass::Channel(channel::AMQPMethod::Open(
            channel::Open {},
        )))?;
        Ok(())
    }

    /// Sends one method on `channel`.
    ///
    /// # Errors
    /// Write failures.
    pub fn send(&mut self, channel: u16, method: &AMQPClass) -> Result<()> {
        encode::method(&mut self.out, channel, method);
        self.flush()
    }

    fn flush(&mut self) -> Result<()> {
        self.stream
            .write_all(&self.out)
            .context("writing to the broker")?;
        self.out.clear();
        Ok(())
    }

    /// Sends `method` on channel [`CHANNEL`] and returns the broker's reply.
    ///
    /// # Errors
    /// The broker closing the channel or connection (with its reply code and text),
    /// network failures and timeouts.
    pub fn call(&mut self, method: AMQPClass) -> Result<AMQPClass> {
        let what = format!(
            "{}.{}",
            method.get_amqp_class_id(),
            method.get_amqp_method_id()
        );
        self.send(CHANNEL, &method)?;
        match self.next_method()? {
            (CHANNEL, reply) => Ok(reply),
            (channel, other) => bail!("reply to {what} on channel {channel}: {other:?}"),
        }
    }

    /// Sends `methods` on channel [`CHANNEL`] pipelined, in writes of a few hundred,
    /// and returns the broker's replies in order: one round trip per batch instead of
    /// one per method (declaring a thousand queues or binding ten thousand keys stays
    /// quick).
    ///
    /// # Errors
    /// As [`Connection::call`], for the first method the broker refuses.
    pub fn call_many(
        &mut self,
        methods: impl IntoIterator<Item = AMQPClass>,
    ) -> Result<Vec<AMQPClass>> {
        /// Methods per write: few enough that the replies fit in socket buffers
        /// while the requests are still being written.
        const BATCH: usize = 256;
        let mut replies = Vec::new();
        let mut methods = methods.into_iter().peekable();
        while methods.peek().is_some() {
            let mut sent = 0;
            for method in methods.by_ref().take(BATCH) {
                encode::method(&mut self.out, CHANNEL, &method);
                sent += 1;
            }
            self.flush()?;
            for _ in 0..sent {
                match self.next_method()? {
                    (CHANNEL, reply) => replies.push(reply),
                    (channel, other) => bail!("reply on channel {channel}: {other:?}"),
                }
            }
        }
        Ok(replies)
    }

    /// Sends `methods` on channel [`CHANNEL`] in one write without waiting.
    ///
    /// # Errors
    /// Write failures.
    pub fn send_many(&mut self, methods: &[AMQPClass]) -> Result<()> {
        for method in methods {
            encode::method(&mut self.out, CHANNEL, method);
        }
        self.flush()
    }

    /// Takes up to `count` replies to pipelined setup calls, those `is_reply` accepts,
    /// stopping early at the first frame that is something else (a delivery that
    /// overtook the replies, say), which is left unread for the caller. Returns how
    /// many replies it took.
    ///
    /// # Errors
    /// The broker closing the channel or connection, network failures and timeouts.
    pub fn take_replies(
        &mut self,
        count: usize,
        is_reply: impl Fn(&AMQPClass) -> bool,
    ) -> Result<usize> {
        let mut taken = 0;
        while taken < count {
            if let Some((frame, used)) = wire::split_frame(self.rbuf.data(), self.frame_max)? {
                match frame.kind {
                    wire::HEARTBEAT => {
                        self.rbuf.consume(used);
                        continue;
                    }
                    wire::METHOD => {}
                    _ => return Ok(taken),
                }
                let method = wire::parse_other(frame.payload)?;
                if let Some(reason) = wire::close_reason(&method) {
                    self.rbuf.consume(used);
                    self.answer_close(&method);
                    bail!(reason);
                }
                if !is_reply(&method) {
                    return Ok(taken);
                }
                self.rbuf.consume(used);
                taken += 1;
                continue;
            }
            let room = (self.frame_max as usize).max(65_536);
            if self
                .rbuf
                .fill(&mut self.stream, room)
                .context("reading from the broker")?
                == 0
            {
                bail!("the broker closed the connection");
            }
        }
        Ok(taken)
    }

    /// Reads until the next method frame, skipping heartbeats.
    fn next_method(&mut self) -> Result<(u16, AMQPClass)> {
        loop {
            if let Some((frame, used)) = wire::split_frame(self.rbuf.data(), self.frame_max)? {
                let kind = frame.kind;
                let channel = frame.channel;
                let parsed = (kind == wire::METHOD).then(|| wire::parse_other(frame.payload));
                self.rbuf.consume(used);
                match (kind, parsed) {
                    (wire::HEARTBEAT, _) => continue,
                    (_, Some(method)) => {
                        let method = method?;
                        if let Some(reason) = wire::close_reason(&method) {
                            self.answer_close(&method);
                            bail!(reason);
                        }
                        return Ok((channel, method));
                    }
                    _ => bail!("unexpected content frame (type {kind}) during setup"),
                }
            }
            let room = (self.frame_max as usize).max(65_536);
            if self
                .rbuf
                .fill(&mut self.stream, room)
                .context("reading from the broker")?
                == 0
            {
                bail!("the broker closed the connection");
            }
        }
    }

    /// Replies `close-ok` to a broker-initiated close, as the protocol asks.
    fn answer_close(&mut self, close: &AMQPClass) {
        let reply = match close {
            AMQPClass::Connection(_) => (
                0,
                AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
            ),
            _ => (
                CHANNEL,
                AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
            ),
        };
        // Best effort: the error being reported matters more than this reply.
        let _ = self.send(reply.0, &reply.1);
    }

    /// Sends `connection.close` and waits (at most `timeout`) for `close-ok`,
    /// discarding whatever else arrives first.
    ///
    /// # Errors
    /// Network failures; a timeout is not an error (the socket is dropped anyway).
    pub fn close(mut self, timeout: Duration) -> Result<()> {
        self.send(0, &close_method())?;
        let deadline = Instant::now() + timeout;
        self.stream
            .set_read_timeout(Some(Duration::from_millis(100)))?;
        while Instant::now() < deadline {
            while let Some((frame, used)) = wire::split_frame(self.rbuf.data(), self.frame_max)? {
                let close_ok =
                    frame.kind == wire::METHOD && wire::method_ids(frame.payload) == Some((10, 51));
                self.rbuf.consume(used);
                if close_ok {
                    return Ok(());
                }
            }
            match self.rbuf.fill(&mut self.stream, 65_536) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) if is_timeout(&e) => {}
                Err(e) => return Err(e).context("reading close-ok"),
            }
        }
        Ok(())
    }

    /// Splits off a second handle on the same socket, for a thread that only writes.
    ///
    /// # Errors
    /// The OS refusing to duplicate the socket.
    pub fn try_clone_stream(&self) -> Result<TcpStream> {
        self.stream.try_clone().context("duplicating the socket")
    }
}

/// The `connection.start-ok` answering `start`: PLAIN login with the endpoint's
/// credentials, `name` as the connection name.
///
/// # Errors
/// A broker that does not offer PLAIN.
pub fn start_ok(endpoint: &Endpoint, start: &connection::Start, name: &str) -> Result<AMQPClass> {
    let mechanisms = String::from_utf8_lossy(start.mechanisms.as_bytes()).into_owned();
    if !mechanisms.split(' ').any(|m| m == "PLAIN") {
        bail!("broker does not offer PLAIN login (offers {mechanisms:?})");
    }
    let response = format!("\0{}\0{}", endpoint.username, endpoint.password);
    Ok(AMQPClass::Connection(connection::AMQPMethod::StartOk(
        connection::StartOk {
            client_properties: client_properties(name),
            mechanism: "PLAIN".into(),
            response: LongString::from(response),
            locale: "en_US".into(),
        },
    )))
}

/// The `connection.tune-ok` answering `tune`: the smaller of each side's limits
/// (heartbeats only if the endpoint asks for them).
pub fn tune_ok(endpoint: &Endpoint, tune: &connection::Tune) -> connection::TuneOk {
    let frame_max = match tune.frame_max {
        0 => endpoint.frame_max,
        server => server.min(endpoint.frame_max),
    };
    let heartbeat = match (endpoint.heartbeat, tune.heartbeat) {
        (0, _) => 0,
        (ours, 0) => ours,
        (ours, server) => ours.min(server),
    };
    connection::TuneOk {
        channel_max: match tune.channel_max {
            0 => 2047,
            server => server.min(2047),
        },
        frame_max,
        heartbeat,
    }
}

/// The heartbeat interval a `tune-ok` settled on, if any.
pub fn heartbeat_interval(tune_ok: &connection::TuneOk) -> Option<Duration> {
    (tune_ok.heartbeat > 0).then(|| Duration::from_secs(u64::from(tune_ok.heartbeat)))
}

/// `connection.open` of the endpoint's vhost.
///
/// # Errors
/// A vhost name too long for AMQP.
pub fn open_method(endpoint: &Endpoint) -> Result<AMQPClass> {
    let vhost =
        ShortString::try_new(endpoint.vhost.as_str()).map_err(|e| anyhow!("vhost name: {e}"))?;
    Ok(AMQPClass::Connection(connection::AMQPMethod::Open(
        connection::Open {
            virtual_host: vhost,
        },
    )))
}

/// `connection.close` with reply code 200, as a client ends a connection.
pub fn close_method() -> AMQPClass {
    AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
        reply_code: 200,
        reply_text: "bye".into(),
        class_id: 0,
        method_id: 0,
    }))
}

/// Whether a read error is a read timeout (which the hot loops use as a tick).
pub fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock
            | std::io::ErrorKind::TimedOut
            | std::io::ErrorKind::Interrupted
    )
}

fn connect(addrs: &[SocketAddr]) -> Result<TcpStream> {
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect_timeout(addr, Duration::from_secs(10)) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(anyhow!(e).context(format!("connecting to {addr}"))),
        }
    }
    Err(last.unwrap_or_else(|| anyhow!("no address to connect to")))
}

/// The client properties the tool announces, `name` shown as the connection name.
pub fn client_properties(name: &str) -> FieldTable {
    let mut capabilities = FieldTable::default();
    for cap in [
        "publisher_confirms",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "authentication_failure_close",
    ] {
        capabilities.insert(cap.into(), AMQPValue::Boolean(true));
    }
    let mut props = FieldTable::default();
    let text = |s: &str| AMQPValue::LongString(LongString::from(s));
    props.insert("product".into(), text("warren-perf"));
    props.insert("version".into(), text(env!("CARGO_PKG_VERSION")));
    props.insert("platform".into(), text("Rust"));
    props.insert("connection_name".into(), text(name));
    props.insert("capabilities".into(), AMQPValue::FieldTable(capabilities));
    props
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amqps_is_refused_by_parse_and_named_by_parse_with_transport() {
        let err = Endpoint::parse("amqps://guest:guest@127.0.0.1:5681/%2f")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("--connections"), "{err:?}");

        let (endpoint, transport) =
            Endpoint::parse_with_transport("amqps://u:p@127.0.0.1:5681/v").expect("parses");
        assert_eq!(
            transport,
            Transport::Tls {
                server_name: "127.0.0.1".into()
            }
        );
        assert_eq!(endpoint.addrs[0].port(), 5681);
        assert_eq!(
            (endpoint.username.as_str(), endpoint.vhost.as_str()),
            ("u", "v")
        );

        let (endpoint, transport) =
            Endpoint::parse_with_transport("amqps://127.0.0.1").expect("parses");
        assert_eq!(endpoint.addrs[0].port(), 5671);
        assert!(matches!(transport, Transport::Tls { .. }));

        let (_, transport) =
            Endpoint::parse_with_transport("amqp://127.0.0.1:5680").expect("parses");
        assert_eq!(transport, Transport::Plain);
        Endpoint::parse("amqp://127.0.0.1:5680").expect("plain still parses");
    }
}

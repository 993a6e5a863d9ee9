//! The connection handshake: start, SASL (PLAIN and AMQPLAIN), tune, open.

use std::net::SocketAddr;
use std::sync::Arc;

use amqp_codec::amq_protocol::protocol::{AMQPClass, connection as c};
use amqp_codec::amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};
use amqp_codec::{CodecError, Frame, Method, ProtocolError, ReplyCode, encode};
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};

use super::io::FrameIo;
use crate::broker::{Broker, Grant, Slot};
use crate::vhost::VHost;

/// How long a refused login waits before its answer.
const LOGIN_FAILURE_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

/// What the handshake agreed on.
pub struct Session {
    /// The authenticated user.
    pub user: String,
    /// What it may do in the vhost.
    pub grant: Grant,
    /// The connection as the limits count it.
    pub slot: Slot,
    /// The vhost opened.
    pub vhost: Arc<VHost>,
    /// Negotiated largest frame.
    pub frame_max: u32,
    /// Negotiated highest channel number.
    pub channel_max: u16,
    /// Negotiated heartbeat interval in seconds (0: none).
    pub heartbeat: u16,
    /// The client handles a server-sent `basic.cancel`.
    pub cancel_notify: bool,
    /// The client handles `connection.blocked` / `unblocked`.
    pub blocked_notify: bool,
    /// The client's properties (`connection.start-ok`).
    pub client_properties: amqp_codec::amq_protocol::types::FieldTable,
    /// The SASL mechanism it logged in with.
    pub mechanism: String,
}

/// Why a handshake did not produce a session.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The peer went away or the socket failed.
    #[error("client closed the connection during the handshake")]
    Closed,
    /// The peer broke the handshake; as RabbitMQ does, the socket is closed without a
    /// `connection.close`.
    #[error("handshake aborted: {0}")]
    Aborted(&'static str),
    /// Refused with a `connection.close` (already sent).
    #[error("{0}")]
    Refused(ProtocolError),
    /// The peer broke the protocol.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// Socket failure.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

fn server_properties() -> FieldTable {
    let mut capabilities = FieldTable::default();
    for cap in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "per_consumer_qos",
        "authentication_failure_close",
        "consumer_priorities",
        "direct_reply_to",
        "connection.blocked",
    ] {
        capabilities.insert(ShortString::from(cap), AMQPValue::Boolean(true));
    }
    let mut props = FieldTable::default();
    let text = |s: &str| AMQPValue::LongString(LongString::from(s));
    props.insert("product".into(), text("Warren"));
    props.insert("version".into(), text(env!("CARGO_PKG_VERSION")));
    props.insert("platform".into(), text("Rust"));
    props.insert("cluster_name".into(), text("warren"));
    props.insert(
        "information".into(),
        text("An AMQP 0-9-1 broker, a stand-in for RabbitMQ"),
    );
    props.insert("capabilities".into(), AMQPValue::FieldTable(capabilities));
    props
}

/// Reads the next method on channel 0, skipping heartbeats.
async fn next_method<R, W>(io: &mut FrameIo<R, W>) -> Result<AMQPClass, HandshakeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        match io.read_frame().await? {
            None => return Err(HandshakeError::Closed),
            Some(Frame::Heartbeat(_)) => continue,
            Some(Frame::Method(0, Method::Other(class))) => return Ok(*class),
            Some(_) => {
                return Err(HandshakeError::Codec(CodecError::Protocol(
                    ProtocolError::new(
                        ReplyCode::UnexpectedFrame,
                        "a frame other than a connection method during the handshake",
                    ),
                )));
            }
        }
    }
}

/// Sends `connection.close` with `error` and waits briefly for `close-ok`.
async fn refuse<R, W>(io: &mut FrameIo<R, W>, error: ProtocolError) -> HandshakeError
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut out = BytesMut::new();
    encode::method(&mut out, 0, &close_method(&error));
    if io.write_all(&mut out).await.is_ok() {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), io.read_frame()).await;
    }
    HandshakeError::Refused(error)
}

/// The `connection.close` that reports `error`.
pub fn close_method(error: &ProtocolError) -> AMQPClass {
    AMQPClass::Connection(c::AMQPMethod::Close(c::Close {
        reply_code: error.code.code(),
        reply_text: error.reply_text().into(),
        class_id: error.class_id,
        method_id: error.method_id,
    }))
}

/// Extracts (user, password) from a SASL response.
fn credentials(mechanism: &str, response: &[u8]) -> Option<(String, String)> {
    match mechanism {
        "PLAIN" => {
            let mut parts = response.split(|b| *b == 0);
            let _authzid = parts.next()?;
            let user = std::str::from_utf8(parts.next()?).ok()?;
            let pass = std::str::from_utf8(parts.next()?).ok()?;
            Some((user.to_owned(), pass.to_owned()))
        }
        "AMQPLAIN" => {
            // A field table without its length prefix (as clients send it).
            let mut framed = Vec::with_capacity(response.len() + 4);
            framed.extend_from_slice(&u32::try_from(response.len()).ok()?.to_be_bytes());
            framed.extend_from_slice(response);
            let (_, table) =
                amqp_codec::amq_protocol::types::parsing::parse_field_table(&framed[..]).ok()?;
            let text = |key: &str| match table.inner().get(key)? {
                AMQPValue::LongString(s) => Some(s.to_string()),
                AMQPValue::ShortString(s) => Some(s.to_string()),
                _ => None,
            };
            Some((text("LOGIN")?, text("PASSWORD")?))
        }
        _ => None,
    }
}

/// The SASL mechanisms offered, in RabbitMQ's configuration order: `PLAIN` and
/// `AMQPLAIN`, `EXTERNAL` on a TLS connection (also without a client certificate, as
/// RabbitMQ offers it, so that the refusal says why), and `ANONYMOUS` when enabled.
fn mechanisms(broker: &Broker, transport: &super::Transport) -> Vec<&'static str> {
    let mut offered = vec!["PLAIN", "AMQPLAIN"];
    if transport.tls {
        offered.push("EXTERNAL");
    }
    if broker.config().anonymous_login_user.is_some() {
        offered.push("ANONYMOUS");
    }
    offered
}

fn client_capability(props: &FieldTable, name: &str) -> bool {
    match props.inner().get("capabilities") {
        Some(AMQPValue::FieldTable(caps)) => {
            matches!(caps.inner().get(name), Some(AMQPValue::Boolean(true)))
        }
        _ => false,
    }
}

/// Runs the handshake after the protocol header was accepted.
///
/// # Errors
/// See [`HandshakeError`]; refusals have already been sent to the client.
pub async fn negotiate<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    io: &mut FrameIo<R, W>,
    broker: &Broker,
    peer: SocketAddr,
    transport: &super::Transport,
) -> Result<Session, HandshakeError> {
    let config = broker.config();
    let mut out = BytesMut::new();
    encode::method(
        &mut out,
        0,
        &AMQPClass::Connection(c::AMQPMethod::Start(c::Start {
            version_major: 0,
            version_minor: 9,
            server_properties: server_properties(),
            mechanisms: mechanisms(broker, transport).join(" ").into(),
            locales: "en_US".into(),
        })),
    );
    io.write_all(&mut out).await?;

    let AMQPClass::Connection(c::AMQPMethod::StartOk(start_ok)) = next_method(io).await? else {
        return Err(HandshakeError::Aborted("expected connection.start-ok"));
    };
    let mechanism = start_ok.mechanism.as_str();
    let auth_close = client_capability(&start_ok.client_properties, "authentication_failure_close");
    let cancel_notify = client_capability(&start_ok.client_properties, "consumer_cancel_notify");
    let blocked_notify = client_capability(&start_ok.client_properties, "connection.blocked");
    let client_properties = start_ok.client_properties.clone();
    if !mechanisms(broker, transport).contains(&mechanism) {
        tracing::warn!(mechanism, "unsupported authentication mechanism");
        return Err(HandshakeError::Aborted(
            "unsupported authentication mechanism",
        ));
    }
    let checked = match mechanism {
        // The user is the one the verified client certificate names.
        "EXTERNAL" => transport.cert_user.clone().map(|user| {
            let result = broker.authorize(&user, peer.ip());
            (user, result)
        }),
        "ANONYMOUS" => broker.config().anonymous_login_user.clone().map(|user| {
            let result = broker.authorize(&user, peer.ip());
            (user, result)
        }),
        _ => credentials(mechanism, start_ok.response.as_bytes()).map(|(user, pass)| {
            let result = broker.authenticate(&user, &pass, peer.ip());
            (user, result)
        }),
    };
    let churn = &broker.registry().churn;
    churn
        .auth_attempts
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let user = match checked {
        Some((user, Ok(()))) => {
            churn
                .auth_succeeded
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            user
        }
        other => {
            churn
                .auth_failed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (user, why, detail) = match &other {
                Some((user, Err(why))) => (user.as_str(), why.logged(user), why.to_string()),
                _ => ("", "unreadable credentials".to_owned(), String::new()),
            };
            // RabbitMQ's words, which log watchers (fail2ban …) match; the detail says
            // whether the user exists, for the operator alone.
            tracing::warn!(%user, %peer, mechanism, %detail, "{mechanism} login refused: {why}");
            let error = ProtocolError::new(
                ReplyCode::AccessRefused,
                format!(
                    "Login was refused using authentication mechanism {mechanism}. \
                     For details see the broker logfile."
                ),
            );
            // Guessing passwords costs the guesser a second per try, spent only by this
            // connection's task asleep.
            tokio::time::sleep(LOGIN_FAILURE_DELAY).await;
            if auth_close {
                return Err(refuse(io, error).await);
            }
            return Err(HandshakeError::Refused(error));
        }
    };

    encode::method(
        &mut out,
        0,
        &AMQPClass::Connection(c::AMQPMethod::Tune(c::Tune {
            channel_max: config.channel_max,
            frame_max: config.frame_max,
            heartbeat: config.heartbeat,
        })),
    );
    io.write_all(&mut out).await?;
    // Like RabbitMQ, anything but tune-ok here ends the connection without a close.
    let AMQPClass::Connection(c::AMQPMethod::TuneOk(tune_ok)) = next_method(io).await? else {
        return Err(HandshakeError::Aborted("expected connection.tune-ok"));
    };
    if tune_ok.channel_max == 0
        || tune_ok.channel_max > config.channel_max
        || tune_ok.frame_max < amqp_codec::frame::FRAME_MIN_SIZE
        || tune_ok.frame_max > config.frame_max
    {
        return Err(HandshakeError::Codec(CodecError::Protocol(
            ProtocolError::new(
                ReplyCode::NotAllowed,
                format!(
                    "tune-ok outside the server's limits: channel_max={} frame_max={}",
                    tune_ok.channel_max, tune_ok.frame_max
                ),
            ),
        )));
    }
    let frame_max = tune_ok.frame_max;
    let channel_max = tune_ok.channel_max;
    io.decoder.set_frame_max(frame_max);

    let open = match next_method(io).await {
        Ok(AMQPClass::Connection(c::AMQPMethod::Open(open))) => open,
        Ok(_) => return Err(HandshakeError::Aborted("expected connection.open")),
        Err(HandshakeError::Codec(CodecError::Protocol(error)))
            if error.code == ReplyCode::UnexpectedFrame =>
        {
            return Err(refuse(io, error).await);
        }
        Err(error) => return Err(error),
    };
    let vhost_name = open.virtual_host.as_str();
    let opened = broker
        .open_session(&user, vhost_name)
        .and_then(|(grant, slot)| match broker.vhost(vhost_name) {
            Some(vhost) => Ok((grant, slot, vhost)),
            None => Err(format!("vhost {vhost_name} not found")),
        });
    let (grant, slot, vhost) = match opened {
        Ok(opened) => opened,
        Err(text) => {
            tracing::warn!(%user, vhost = vhost_name, %peer, "{text}");
            return Err(refuse(
                io,
                ProtocolError::new(ReplyCode::NotAllowed, text).for_method(10, 40),
            )
            .await);
        }
    };
    encode::method(
        &mut out,
        0,
        &AMQPClass::Connection(c::AMQPMethod::OpenOk(c::OpenOk {})),
    );
    io.write_all(&mut out).await?;
    Ok(Session {
        user,
        grant,
        slot,
        vhost,
        frame_max,
        channel_max,
        heartbeat: tune_ok.heartbeat,
        cancel_notify,
        blocked_notify,
        client_properties,
        mechanism: mechanism.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_amqplain_credentials_are_read() {
        assert_eq!(
            credentials("PLAIN", b"\0guest\0secret"),
            Some(("guest".into(), "secret".into()))
        );
        assert_eq!(credentials("PLAIN", b"guest"), None);
        let mut table = FieldTable::default();
        table.insert("LOGIN".into(), AMQPValue::LongString("bob".into()));
        table.insert("PASSWORD".into(), AMQPValue::LongString("pw".into()));
        let (bytes, _) = cookie_factory::r#gen(
            amqp_codec::amq_protocol::types::generation::gen_field_table(&table),
            Vec::new(),
        )
        .expect("encode");
        assert_eq!(
            credentials("AMQPLAIN", &bytes[4..]),
            Some(("bob".into(), "pw".into()))
        );
        assert_eq!(credentials("EXTERNAL", b""), None);
    }
}

//! The frames a peer sends, as the broker consumes them.
//!
//! `basic.publish` and content frames are the hot path: their strings and payloads are
//! slices of the read buffer, never copied. Every other method is decoded by
//! `amq-protocol` into its generated types.

use amq_protocol::protocol::AMQPClass;
use bytes::Bytes;
use bytestring::ByteString;

/// Frame type octet of a method frame.
pub const FRAME_METHOD: u8 = 1;
/// Frame type octet of a content header frame.
pub const FRAME_HEADER: u8 = 2;
/// Frame type octet of a content body frame.
pub const FRAME_BODY: u8 = 3;
/// Frame type octet of a heartbeat frame.
pub const FRAME_HEARTBEAT: u8 = 8;
/// The octet that ends every frame.
pub const FRAME_END: u8 = 0xCE;
/// Bytes of framing around a payload: type, channel, size, and the end octet.
pub const FRAME_OVERHEAD: usize = 8;
/// The smallest `frame_max` a peer may negotiate.
pub const FRAME_MIN_SIZE: u32 = 4096;
/// The protocol header this codec speaks, sent back to peers that open with another.
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";
/// Class id of `basic`, the only content class.
pub const CLASS_BASIC: u16 = 60;

/// A UTF-8 short string (at most 255 bytes) that shares the read buffer it came from.
pub type ShortStr = ByteString;

/// One decoded frame and the channel it arrived on.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A method frame.
    Method(u16, Method),
    /// A content header frame.
    Header(u16, ContentHeader),
    /// A content body frame; the payload is a slice of the read buffer.
    Body(u16, Bytes),
    /// A heartbeat; valid only on channel 0.
    Heartbeat(u16),
}

/// A decoded method: the hot `basic.publish` zero-copy, everything else generated.
#[derive(Debug, Clone, PartialEq)]
pub enum Method {
    /// `basic.publish`, parsed without allocating.
    Publish(Publish),
    /// Any other method.
    Other(Box<AMQPClass>),
}

impl Method {
    /// The (class id, method id) pair, for error replies.
    pub fn ids(&self) -> (u16, u16) {
        match self {
            Method::Publish(_) => (CLASS_BASIC, 40),
            Method::Other(class) => (class.get_amqp_class_id(), class.get_amqp_method_id()),
        }
    }
}

/// The arguments of `basic.publish`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// Exchange to publish to; empty for the default exchange.
    pub exchange: ShortStr,
    /// Routing key.
    pub routing_key: ShortStr,
    /// Return the message if no queue gets it.
    pub mandatory: bool,
    /// Return the message if no consumer can take it at once (unsupported by RabbitMQ).
    pub immediate: bool,
}

/// A content header: the body size and the properties in their encoded form.
///
/// The properties stay encoded (flags then values) so they are forwarded to consumers
/// exactly as they came; [`crate::PropertiesView`] reads the few a broker needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentHeader {
    /// Content class; 60 (basic) for every message.
    pub class_id: u16,
    /// Total body size in bytes.
    pub body_size: u64,
    /// Property flags and values, encoded.
    pub properties: Bytes,
}

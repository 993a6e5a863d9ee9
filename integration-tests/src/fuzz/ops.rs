//! Structured session input: plausible AMQP methods and content with fuzzed fields,
//! decoded from fuzz bytes by `arbitrary` and encoded with `amq-protocol`.

use amqp_codec::amq_protocol::protocol::{
    AMQPClass, BasicProperties, basic, channel, confirm, connection, exchange, queue, tx,
};
use amqp_codec::amq_protocol::types::{
    AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, ShortString,
};
use amqp_codec::encode;
use amqp_codec::frame::{FRAME_BODY, FRAME_END, FRAME_HEADER, FRAME_HEARTBEAT};
use arbitrary::Arbitrary;
use bytes::{BufMut, BytesMut};

/// A channel number: mostly the first few, sometimes any.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub(super) enum Chan {
    /// Channel 1.
    One,
    /// Channel 2.
    Two,
    /// Channel 3.
    Three,
    /// Channel 0, the connection's.
    Zero,
    /// Any channel.
    Other(u16),
}

impl Chan {
    fn id(self) -> u16 {
        match self {
            Chan::One => 1,
            Chan::Two => 2,
            Chan::Three => 3,
            Chan::Zero => 0,
            Chan::Other(id) => id,
        }
    }
}

/// A queue, exchange, routing key or tag name: mostly from a small set, so that
/// operations meet each other's entities, sometimes any string.
#[derive(Arbitrary, Debug, Clone)]
pub(super) enum Name {
    /// The empty name (the default exchange, a server-named queue).
    Empty,
    /// `q`.
    Q,
    /// `guest`, the default user (for `user-id`).
    Guest,
    /// `q2`.
    Q2,
    /// `ex`.
    Ex,
    /// `ex2`.
    Ex2,
    /// `amq.direct`.
    AmqDirect,
    /// `amq.fanout`.
    AmqFanout,
    /// `amq.topic`.
    AmqTopic,
    /// `amq.headers`.
    AmqHeaders,
    /// `amq.rabbitmq.reply-to`, direct reply-to.
    ReplyTo,
    /// `amq.gen-fuzz`, a reserved prefix.
    AmqGen,
    /// `#`, the topic wildcard.
    Hash,
    /// `a.*.c`.
    Pattern,
    /// 255 bytes, the longest short string.
    Longest,
    /// Any string (cut to 255 bytes).
    Text(String),
}

impl Name {
    fn text(&self) -> String {
        match self {
            Name::Empty => String::new(),
            Name::Q => "q".into(),
            Name::Guest => "guest".into(),
            Name::Q2 => "q2".into(),
            Name::Ex => "ex".into(),
            Name::Ex2 => "ex2".into(),
            Name::AmqDirect => "amq.direct".into(),
            Name::AmqFanout => "amq.fanout".into(),
            Name::AmqTopic => "amq.topic".into(),
            Name::AmqHeaders => "amq.headers".into(),
            Name::ReplyTo => "amq.rabbitmq.reply-to".into(),
            Name::AmqGen => "amq.gen-fuzz".into(),
            Name::Hash => "#".into(),
            Name::Pattern => "a.*.c".into(),
            Name::Longest => "n".repeat(255),
            Name::Text(s) => {
                let mut end = s.len().min(255);
                while !s.is_char_boundary(end) {
                    end -= 1;
                }
                s[..end].to_owned()
            }
        }
    }

    fn short(&self) -> ShortString {
        self.text().into()
    }
}

/// The `x-` arguments and other keys the broker gives meaning to.
const KNOWN_KEYS: &[&str] = &[
    "x-message-ttl",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-overflow",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-dead-letter-strategy",
    "x-max-priority",
    "x-queue-type",
    "x-queue-mode",
    "x-single-active-consumer",
    "x-delivery-limit",
    "x-priority",
    "x-consumer-timeout",
    "x-cancel-on-ha-failover",
    "x-delayed-type",
    "x-delay",
    "x-match",
    "x-stream-offset",
    "x-queue-version",
    "x-max-age",
    "alternate-exchange",
    "hash-header",
    "hash-property",
    "CC",
    "BCC",
];

/// Values the broker's argument checks look for.
const KNOWN_TEXTS: &[&str] = &[
    "classic",
    "quorum",
    "stream",
    "lazy",
    "default",
    "drop-head",
    "reject-publish",
    "reject-publish-dlx",
    "at-most-once",
    "at-least-once",
    "all",
    "any",
    "all-with-x",
    "any-with-x",
    "direct",
    "topic",
    "fanout",
    "headers",
    "1000",
    "-1",
    "1D",
    "message_id",
];

/// A table key.
#[derive(Arbitrary, Debug, Clone)]
pub(super) enum Key {
    /// One of [`KNOWN_KEYS`].
    Known(u8),
    /// Any key.
    Other(Name),
}

impl Key {
    fn short(&self) -> ShortString {
        match self {
            Key::Known(i) => KNOWN_KEYS[usize::from(*i) % KNOWN_KEYS.len()].into(),
            Key::Other(name) => name.short(),
        }
    }
}

/// A field value, in each of RabbitMQ's types.
#[derive(Arbitrary, Debug, Clone)]
pub(super) enum Value {
    /// `t`.
    Bool(bool),
    /// `b`.
    I8(i8),
    /// `B`.
    U8(u8),
    /// `s`.
    I16(i16),
    /// `u`.
    U16(u16),
    /// `I`.
    I32(i32),
    /// `i`.
    U32(u32),
    /// `l`.
    I64(i64),
    /// `l`, small: the common case for counts and times.
    Small(u8),
    /// `f`.
    F32(f32),
    /// `d`.
    F64(f64),
    /// `D`.
    Decimal(u8, u32),
    /// `S`, one of [`KNOWN_TEXTS`].
    Known(u8),
    /// `S`.
    Text(Name),
    /// `S`, a name repeated: longer than a short string holds.
    Repeated(Name, u8),
    /// `x`.
    Bytes(Vec<u8>),
    /// `T`.
    Timestamp(u64),
    /// `V`.
    Void,
    /// `A`.
    Array(Vec<Value>),
    /// `F`.
    Table(Vec<(Key, Value)>),
}

/// How deep generated tables nest: deep nesting is the codec targets' business.
const MAX_NESTING: usize = 4;

impl Value {
    fn amqp(&self, depth: usize) -> AMQPValue {
        match self {
            Value::Bool(b) => AMQPValue::Boolean(*b),
            Value::I8(v) => AMQPValue::ShortShortInt(*v),
            Value::U8(v) => AMQPValue::ShortShortUInt(*v),
            Value::I16(v) => AMQPValue::ShortInt(*v),
            Value::U16(v) => AMQPValue::ShortUInt(*v),
            Value::I32(v) => AMQPValue::LongInt(*v),
            Value::U32(v) => AMQPValue::LongUInt(*v),
            Value::I64(v) => AMQPValue::LongLongInt(*v),
            Value::Small(v) => AMQPValue::LongLongInt(i64::from(*v)),
            Value::F32(v) => AMQPValue::Float(*v),
            Value::F64(v) => AMQPValue::Double(*v),
            Value::Decimal(scale, value) => AMQPValue::DecimalValue(DecimalValue {
                scale: *scale,
                value: *value,
            }),
            Value::Known(i) => {
                AMQPValue::LongString(KNOWN_TEXTS[usize::from(*i) % KNOWN_TEXTS.len()].into())
            }
            Value::Text(name) => AMQPValue::LongString(name.text().into()),
            Value::Repeated(name, n) => {
                AMQPValue::LongString(name.text().repeat(usize::from(*n)).into())
            }
            Value::Bytes(b) => AMQPValue::ByteArray(ByteArray::from(b.clone())),
            Value::Timestamp(t) => AMQPValue::Timestamp(*t),
            Value::Void => AMQPValue::Void,
            Value::Array(_) | Value::Table(_) if depth >= MAX_NESTING => AMQPValue::Void,
            Value::Array(values) => {
                let mut array = FieldArray::default();
                for v in values {
                    array.push(v.amqp(depth + 1));
                }
                AMQPValue::FieldArray(array)
            }
            Value::Table(entries) => AMQPValue::FieldTable(table(entries, depth + 1)),
        }
    }
}

fn table(entries: &[(Key, Value)], depth: usize) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in entries {
        table.insert(key.short(), value.amqp(depth));
    }
    table
}

/// An exchange type.
#[derive(Arbitrary, Debug, Clone)]
pub(super) enum ExchangeKind {
    /// `direct`.
    Direct,
    /// `fanout`.
    Fanout,
    /// `topic`.
    Topic,
    /// `headers`.
    Headers,
    /// `x-consistent-hash`.
    ConsistentHash,
    /// `x-delayed-message`.
    Delayed,
    /// Anything else.
    Other(Name),
}

impl ExchangeKind {
    fn short(&self) -> ShortString {
        match self {
            ExchangeKind::Direct => "direct".into(),
            ExchangeKind::Fanout => "fanout".into(),
            ExchangeKind::Topic => "topic".into(),
            ExchangeKind::Headers => "headers".into(),
            ExchangeKind::ConsistentHash => "x-consistent-hash".into(),
            ExchangeKind::Delayed => "x-delayed-message".into(),
            ExchangeKind::Other(name) => name.short(),
        }
    }
}

/// A delivery tag: mostly one the server may have handed out.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub(super) enum Tag {
    /// 0 to 15.
    Small(u8),
    /// Any tag.
    Any(u64),
}

impl Tag {
    fn value(self) -> u64 {
        match self {
            Tag::Small(t) => u64::from(t % 16),
            Tag::Any(t) => t,
        }
    }
}

/// A client method with fuzzed fields (and a few that only servers send).
#[derive(Arbitrary, Debug, Clone)]
pub(super) enum ClientMethod {
    ChannelOpen,
    ChannelClose(u16),
    ChannelCloseOk,
    ChannelFlow(bool),
    ChannelFlowOk(bool),
    ConnectionClose(u16),
    ConnectionCloseOk,
    ConnectionUpdateSecret,
    ConnectionBlocked,
    ConnectionTuneOk(u16, u32, u16),
    ExchangeDeclare {
        exchange: Name,
        kind: ExchangeKind,
        flags: u8,
        arguments: Vec<(Key, Value)>,
    },
    ExchangeDelete {
        exchange: Name,
        if_unused: bool,
        nowait: bool,
    },
    ExchangeBind {
        destination: Name,
        source: Name,
        routing_key: Name,
        nowait: bool,
        arguments: Vec<(Key, Value)>,
    },
    ExchangeUnbind {
        destination: Name,
        source: Name,
        routing_key: Name,
        nowait: bool,
        arguments: Vec<(Key, Value)>,
    },
    QueueDeclare {
        queue: Name,
        flags: u8,
        arguments: Vec<(Key, Value)>,
    },
    QueueBind {
        queue: Name,
        exchange: Name,
        routing_key: Name,
        nowait: bool,
        arguments: Vec<(Key, Value)>,
    },
    QueuePurge {
        queue: Name,
        nowait: bool,
    },
    QueueDelete {
        queue: Name,
        flags: u8,
    },
    QueueUnbind {
        queue: Name,
        exchange: Name,
        routing_key: Name,
        arguments: Vec<(Key, Value)>,
    },
    BasicQos {
        prefetch_count: u16,
        global: bool,
    },
    BasicConsume {
        queue: Name,
        consumer_tag: Name,
        flags: u8,
        arguments: Vec<(Key, Value)>,
    },
    BasicCancel {
        consumer_tag: Name,
        nowait: bool,
    },
    BasicGet {
        queue: Name,
        no_ack: bool,
    },
    BasicAck {
        delivery_tag: Tag,
        multiple: bool,
    },
    BasicReject {
        delivery_tag: Tag,
        requeue: bool,
    },
    BasicNack {
        delivery_tag: Tag,
        multiple: bool,
        requeue: bool,
    },
    BasicRecover(bool),
    BasicRecoverAsync(bool),
    ConfirmSelect(bool),
    TxSelect,
    TxCommit,
    TxRollback,
    /// A method only a server sends: `basic.deliver`, `get-ok`, `consume-ok`, `return`,
    /// `queue.declare-ok`, `connection.start`, `tune`, `open-ok`.
    ServerOnly(u8),
}

fn bit(flags: u8, n: u8) -> bool {
    flags & (1 << n) != 0
}

impl ClientMethod {
    fn class(&self) -> AMQPClass {
        use ClientMethod as M;
        match self {
            M::ChannelOpen => AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
            M::ChannelClose(code) => {
                AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
                    reply_code: *code,
                    reply_text: "bye".into(),
                    class_id: 0,
                    method_id: 0,
                }))
            }
            M::ChannelCloseOk => {
                AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {}))
            }
            M::ChannelFlow(active) => {
                AMQPClass::Channel(channel::AMQPMethod::Flow(channel::Flow { active: *active }))
            }
            M::ChannelFlowOk(active) => {
                AMQPClass::Channel(channel::AMQPMethod::FlowOk(channel::FlowOk {
                    active: *active,
                }))
            }
            M::ConnectionClose(code) => {
                AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                    reply_code: *code,
                    reply_text: "bye".into(),
                    class_id: 0,
                    method_id: 0,
                }))
            }
            M::ConnectionCloseOk => {
                AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {}))
            }
            M::ConnectionUpdateSecret => AMQPClass::Connection(
                connection::AMQPMethod::UpdateSecret(connection::UpdateSecret {
                    new_secret: "guest".into(),
                    reason: "fuzz".into(),
                }),
            ),
            M::ConnectionBlocked => {
                AMQPClass::Connection(connection::AMQPMethod::Blocked(connection::Blocked {
                    reason: "fuzz".into(),
                }))
            }
            M::ConnectionTuneOk(channel_max, frame_max, heartbeat) => {
                AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                    channel_max: *channel_max,
                    frame_max: *frame_max,
                    heartbeat: *heartbeat,
                }))
            }
            M::ExchangeDeclare {
                exchange,
                kind,
                flags,
                arguments,
            } => AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
                exchange: exchange.short(),
                kind: kind.short(),
                passive: bit(*flags, 0),
                durable: bit(*flags, 1),
                auto_delete: bit(*flags, 2),
                internal: bit(*flags, 3),
                nowait: bit(*flags, 4),
                arguments: table(arguments, 0),
            })),
            M::ExchangeDelete {
                exchange,
                if_unused,
                nowait,
            } => AMQPClass::Exchange(exchange::AMQPMethod::Delete(exchange::Delete {
                exchange: exchange.short(),
                if_unused: *if_unused,
                nowait: *nowait,
            })),
            M::ExchangeBind {
                destination,
                source,
                routing_key,
                nowait,
                arguments,
            } => AMQPClass::Exchange(exchange::AMQPMethod::Bind(exchange::Bind {
                destination: destination.short(),
                source: source.short(),
                routing_key: routing_key.short(),
                nowait: *nowait,
                arguments: table(arguments, 0),
            })),
            M::ExchangeUnbind {
                destination,
                source,
                routing_key,
                nowait,
                arguments,
            } => AMQPClass::Exchange(exchange::AMQPMethod::Unbind(exchange::Unbind {
                destination: destination.short(),
                source: source.short(),
                routing_key: routing_key.short(),
                nowait: *nowait,
                arguments: table(arguments, 0),
            })),
            M::QueueDeclare {
                queue,
                flags,
                arguments,
            } => AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: queue.short(),
                passive: bit(*flags, 0),
                durable: bit(*flags, 1),
                exclusive: bit(*flags, 2),
                auto_delete: bit(*flags, 3),
                nowait: bit(*flags, 4),
                arguments: table(arguments, 0),
            })),
            M::QueueBind {
                queue,
                exchange,
                routing_key,
                nowait,
                arguments,
            } => AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
                queue: queue.short(),
                exchange: exchange.short(),
                routing_key: routing_key.short(),
                nowait: *nowait,
                arguments: table(arguments, 0),
            })),
            M::QueuePurge { queue, nowait } => {
                AMQPClass::Queue(queue::AMQPMethod::Purge(queue::Purge {
                    queue: queue.short(),
                    nowait: *nowait,
                }))
            }
            M::QueueDelete { queue, flags } => {
                AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
                    queue: queue.short(),
                    if_unused: bit(*flags, 0),
                    if_empty: bit(*flags, 1),
                    nowait: bit(*flags, 2),
                }))
            }
            M::QueueUnbind {
                queue,
                exchange,
                routing_key,
                arguments,
            } => AMQPClass::Queue(queue::AMQPMethod::Unbind(queue::Unbind {
                queue: queue.short(),
                exchange: exchange.short(),
                routing_key: routing_key.short(),
                arguments: table(arguments, 0),
            })),
            M::BasicQos {
                prefetch_count,
                global,
            } => AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
                prefetch_count: *prefetch_count,
                global: *global,
            })),
            M::BasicConsume {
                queue,
                consumer_tag,
                flags,
                arguments,
            } => AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                queue: queue.short(),
                consumer_tag: consumer_tag.short(),
                no_local: bit(*flags, 0),
                no_ack: bit(*flags, 1),
                exclusive: bit(*flags, 2),
                nowait: bit(*flags, 3),
                arguments: table(arguments, 0),
            })),
            M::BasicCancel {
                consumer_tag,
                nowait,
            } => AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                consumer_tag: consumer_tag.short(),
                nowait: *nowait,
            })),
            M::BasicGet { queue, no_ack } => AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
                queue: queue.short(),
                no_ack: *no_ack,
            })),
            M::BasicAck {
                delivery_tag,
                multiple,
            } => AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag: delivery_tag.value(),
                multiple: *multiple,
            })),
            M::BasicReject {
                delivery_tag,
                requeue,
            } => AMQPClass::Basic(basic::AMQPMethod::Reject(basic::Reject {
                delivery_tag: delivery_tag.value(),
                requeue: *requeue,
            })),
            M::BasicNack {
                delivery_tag,
                multiple,
                requeue,
            } => AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack {
                delivery_tag: delivery_tag.value(),
                multiple: *multiple,
                requeue: *requeue,
            })),
            M::BasicRecover(requeue) => {
                AMQPClass::Basic(basic::AMQPMethod::Recover(basic::Recover {
                    requeue: *requeue,
                }))
            }
            M::BasicRecoverAsync(requeue) => {
                AMQPClass::Basic(basic::AMQPMethod::RecoverAsync(basic::RecoverAsync {
                    requeue: *requeue,
                }))
            }
            M::ConfirmSelect(nowait) => {
                AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
                    nowait: *nowait,
                }))
            }
            M::TxSelect => AMQPClass::Tx(tx::AMQPMethod::Select(tx::Select {})),
            M::TxCommit => AMQPClass::Tx(tx::AMQPMethod::Commit(tx::Commit {})),
            M::TxRollback => AMQPClass::Tx(tx::AMQPMethod::Rollback(tx::Rollback {})),
            M::ServerOnly(which) => server_only(*which),
        }
    }
}

fn server_only(which: u8) -> AMQPClass {
    match which % 8 {
        0 => AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
            consumer_tag: "c".into(),
            delivery_tag: 1,
            redelivered: false,
            exchange: "".into(),
            routing_key: "q".into(),
        })),
        1 => AMQPClass::Basic(basic::AMQPMethod::GetOk(basic::GetOk {
            delivery_tag: 1,
            redelivered: false,
            exchange: "".into(),
            routing_key: "q".into(),
            message_count: 0,
        })),
        2 => AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
            consumer_tag: "c".into(),
        })),
        3 => AMQPClass::Basic(basic::AMQPMethod::Return(basic::Return {
            reply_code: 312,
            reply_text: "NO_ROUTE".into(),
            exchange: "".into(),
            routing_key: "q".into(),
        })),
        4 => AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
            queue: "q".into(),
            message_count: 0,
            consumer_count: 0,
        })),
        5 => AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
            version_major: 0,
            version_minor: 9,
            server_properties: FieldTable::default(),
            mechanisms: "PLAIN".into(),
            locales: "en_US".into(),
        })),
        6 => AMQPClass::Connection(connection::AMQPMethod::Tune(connection::Tune {
            channel_max: 0,
            frame_max: 0,
            heartbeat: 0,
        })),
        _ => AMQPClass::Connection(connection::AMQPMethod::OpenOk(connection::OpenOk {})),
    }
}

/// `delivery-mode`.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub(super) enum DeliveryMode {
    /// 1.
    Transient,
    /// 2.
    Persistent,
    /// Anything.
    Other(u8),
}

/// `expiration`.
#[derive(Arbitrary, Debug, Clone)]
pub(super) enum Expiration {
    /// A number of milliseconds, as it should be.
    Millis(u16),
    /// Any text.
    Text(Name),
}

/// Content properties with fuzzed values.
#[derive(Arbitrary, Debug, Clone, Default)]
pub(super) struct Properties {
    content_type: Option<Name>,
    headers: Option<Vec<(Key, Value)>>,
    delivery_mode: Option<DeliveryMode>,
    priority: Option<u8>,
    correlation_id: Option<Name>,
    reply_to: Option<Name>,
    expiration: Option<Expiration>,
    message_id: Option<Name>,
    timestamp: Option<u64>,
    kind: Option<Name>,
    user_id: Option<Name>,
    app_id: Option<Name>,
}

impl Properties {
    fn encode(&self) -> bytes::Bytes {
        let mut p = BasicProperties::default();
        if let Some(v) = &self.content_type {
            p = p.with_content_type(v.short());
        }
        if let Some(v) = &self.headers {
            p = p.with_headers(table(v, 0));
        }
        if let Some(v) = self.delivery_mode {
            p = p.with_delivery_mode(match v {
                DeliveryMode::Transient => 1,
                DeliveryMode::Persistent => 2,
                DeliveryMode::Other(m) => m,
            });
        }
        if let Some(v) = self.priority {
            p = p.with_priority(v);
        }
        if let Some(v) = &self.correlation_id {
            p = p.with_correlation_id(v.short());
        }
        if let Some(v) = &self.reply_to {
            p = p.with_reply_to(v.short());
        }
        if let Some(v) = &self.expiration {
            p = p.with_expiration(match v {
                Expiration::Millis(ms) => ms.to_string().into(),
                Expiration::Text(name) => name.short(),
            });
        }
        if let Some(v) = &self.message_id {
            p = p.with_message_id(v.short());
        }
        if let Some(v) = self.timestamp {
            p = p.with_timestamp(v);
        }
        if let Some(v) = &self.kind {
            p = p.with_type(v.short());
        }
        if let Some(v) = &self.user_id {
            p = p.with_user_id(v.short());
        }
        if let Some(v) = &self.app_id {
            p = p.with_app_id(v.short());
        }
        amqp_codec::properties::encode_properties(&p)
    }
}

/// A message body.
#[derive(Arbitrary, Debug, Clone)]
pub(super) enum Body {
    /// These bytes.
    Bytes(Vec<u8>),
    /// `len` copies of one byte: large bodies from small inputs.
    Repeat(u8, u16),
}

/// A published message: method, header and body frames.
#[derive(Arbitrary, Debug, Clone)]
pub(super) struct Publish {
    /// The exchange.
    exchange: Name,
    /// The routing key.
    routing_key: Name,
    /// `mandatory` (bit 0) and `immediate` (bit 1).
    flags: u8,
    /// The properties.
    properties: Properties,
    /// The body.
    body: Body,
    /// Body frame payload size (0: as large as `frame_max` allows).
    cut: u16,
}

/// One step of a structured session.
#[derive(Arbitrary, Debug, Clone)]
pub(super) enum Op {
    /// A method frame.
    Method(Chan, ClientMethod),
    /// A message: `basic.publish`, content header, body frames.
    Publish(Chan, Box<Publish>),
    /// A frame of any type with any payload (framed correctly).
    Frame(u8, Chan, Vec<u8>),
    /// A heartbeat frame.
    Heartbeat(Chan),
    /// Let the server run (a few yields) before the next op.
    Yield,
    /// Wait a millisecond (group commits, timers) before the next op.
    Sleep,
}

pub(super) fn frame(out: &mut BytesMut, frame_type: u8, channel: u16, payload: &[u8]) {
    out.put_u8(frame_type);
    out.put_u16(channel);
    out.put_u32(u32::try_from(payload.len()).unwrap_or(u32::MAX));
    out.put_slice(payload);
    out.put_u8(FRAME_END);
}

impl Op {
    pub(super) fn encode(&self, out: &mut BytesMut, frame_max: u32) {
        match self {
            Op::Method(chan, method) => encode::method(out, chan.id(), &method.class()),
            Op::Publish(chan, publish) => {
                let channel = chan.id();
                encode::method(
                    out,
                    channel,
                    &AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                        exchange: publish.exchange.short(),
                        routing_key: publish.routing_key.short(),
                        mandatory: bit(publish.flags, 0),
                        immediate: bit(publish.flags, 1),
                    })),
                );
                let body = match &publish.body {
                    Body::Bytes(b) => b.clone(),
                    Body::Repeat(byte, len) => vec![*byte; usize::from(*len)],
                };
                let properties = publish.properties.encode();
                let mut header = Vec::with_capacity(14 + properties.len());
                header.put_u16(60);
                header.put_u16(0);
                header.put_u64(body.len() as u64);
                header.put_slice(&properties);
                frame(out, FRAME_HEADER, channel, &header);
                let cut = match publish.cut {
                    0 => frame_max.saturating_sub(8).max(1) as usize,
                    cut => usize::from(cut),
                };
                for chunk in body.chunks(cut) {
                    frame(out, FRAME_BODY, channel, chunk);
                }
            }
            Op::Frame(frame_type, chan, payload) => {
                frame(out, *frame_type, chan.id(), payload);
            }
            Op::Heartbeat(chan) => frame(out, FRAME_HEARTBEAT, chan.id(), &[]),
            Op::Yield | Op::Sleep => {}
        }
    }
}

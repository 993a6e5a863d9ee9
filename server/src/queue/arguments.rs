//! The optional arguments of `queue.declare` and `basic.consume`, validated as RabbitMQ
//! validates them and turned into the typed settings a queue runs with.
//!
//! Clients depend on RabbitMQ's exact reply texts, so the checks, their order and their
//! texts follow RabbitMQ 3.13 (`rabbit_amqqueue`, `rabbit_misc`, `rabbit_queue_type_util`,
//! `rabbit_quorum_queue`, `rabbit_channel`); 4.x differences are noted where they matter.
//! Streams follow RabbitMQ 4.2 (`rabbit_stream_queue`, `docs/streams-rabbitmq-facts.md`).
//! RabbitMQ prints the reason of an invalid argument as an Erlang term (`~255p`), so the
//! texts reproduce that rendering: `{value_negative,-5}`, `"expected integer, got longstr"`,
//! `{unacceptable_type,long}`.
//!
//! Field types are named as RabbitMQ names them: `byte`, `unsignedbyte`, `short`,
//! `unsignedshort`, `signedint`, `unsignedint`, `long` (both `l` and `L`), `float`,
//! `double`, `decimal`, `timestamp`, `bool`, `longstr`, `binary`, `table`, `array`, `void`.

use std::fmt;

use amqp_codec::amq_protocol::types::{AMQPValue, FieldTable};

use crate::erlang;
use crate::error::{self, AmqpError, AmqpResult};
use crate::queue::QueueDeclare;
use crate::queue::partition_key::{HashOn, HashProperty};

const EXPIRES: &str = "x-expires";
const MESSAGE_TTL: &str = "x-message-ttl";
const DLX: &str = "x-dead-letter-exchange";
const DLX_ROUTING_KEY: &str = "x-dead-letter-routing-key";
const DLX_STRATEGY: &str = "x-dead-letter-strategy";
const MAX_LENGTH: &str = "x-max-length";
const MAX_LENGTH_BYTES: &str = "x-max-length-bytes";
const MAX_IN_MEMORY_LENGTH: &str = "x-max-in-memory-length";
const MAX_IN_MEMORY_BYTES: &str = "x-max-in-memory-bytes";
const MAX_PRIORITY: &str = "x-max-priority";
const OVERFLOW: &str = "x-overflow";
const QUEUE_MODE: &str = "x-queue-mode";
const QUEUE_VERSION: &str = "x-queue-version";
const SINGLE_ACTIVE_CONSUMER: &str = "x-single-active-consumer";
const CONSUMER_TIMEOUT: &str = "x-consumer-timeout";
const QUEUE_TYPE: &str = "x-queue-type";
const INITIAL_GROUP_SIZE: &str = "x-quorum-initial-group-size";
const DELIVERY_LIMIT: &str = "x-delivery-limit";
/// RabbitMQ 4's delivery limit for quorum queues that set none.
const DEFAULT_DELIVERY_LIMIT: u64 = 20;
const LEADER_LOCATOR: &str = "x-queue-leader-locator";
const MAX_AGE: &str = "x-max-age";
const STREAM_SEGMENT_SIZE: &str = "x-stream-max-segment-size-bytes";
const STREAM_FILTER_SIZE: &str = "x-stream-filter-size-bytes";
const INITIAL_CLUSTER_SIZE: &str = "x-initial-cluster-size";
/// RabbitMQ's largest `x-stream-max-segment-size-bytes` (`?MAX_STREAM_MAX_SEGMENT_SIZE`).
const MAX_STREAM_SEGMENT_BYTES: i64 = 3_000_000_000;
/// The sizes `x-stream-filter-size-bytes` may take, in bytes.
const STREAM_FILTER_BYTES: std::ops::RangeInclusive<i64> = 16..=255;
const PRIORITY: &str = "x-priority";
const CANCEL_ON_HA_FAILOVER: &str = "x-cancel-on-ha-failover";
const STREAM_OFFSET: &str = "x-stream-offset";
const STREAM_FILTER: &str = "x-stream-filter";
const MATCH_UNFILTERED: &str = "x-stream-match-unfiltered";
/// LavinMQ's name for server-side offset tracking of a stream consumer.
const OFFSET_TRACKING: &str = "x-stream-automatic-offset-tracking";
// Warren's partitioned queues and consumer groups (issue 13, docs/partitions-design.md §6).
const PARTITIONS: &str = "x-partitions";
const HASH_HEADER: &str = "x-partition-hash-header";
const HASH_PROPERTY: &str = "x-partition-hash-property";
const CONSUMERS_PER_PARTITION: &str = "x-consumers-per-partition";
const CONSUMER_GROUP: &str = "x-consumer-group";
const GROUP_MEMBER: &str = "x-group-member";
const SESSION_TIMEOUT: &str = "x-group-session-timeout";
const GROUP_NOTIFY: &str = "x-group-notify";
const PARTITION: &str = "x-partition";

/// The most partitions a queue may have (`x-partitions`, policy `partitions`).
pub const MAX_PARTITIONS: u16 = 4096;
/// The most consumers that may own one partition at a time (`x-consumers-per-partition`).
pub const MAX_CONSUMERS_PER_PARTITION: u16 = 1024;
/// The longest `x-group-session-timeout`: one hour, in milliseconds.
pub const MAX_SESSION_TIMEOUT_MS: u64 = 3_600_000;
/// How long a static member's partitions wait for it after its channel closes, when it
/// gives no `x-group-session-timeout`, in milliseconds.
pub const DEFAULT_SESSION_TIMEOUT_MS: u64 = 30_000;
/// The longest group name or member id, in bytes (a short string's limit).
const MAX_GROUP_NAME_BYTES: usize = 255;

/// Queue arguments each type accepts, in RabbitMQ 3.13's order (its `capabilities/0`;
/// streams as in 4.2, which added `x-stream-filter-size-bytes`): redeclaration compares
/// exactly these, in this order.
const CLASSIC_QUEUE_ARGS: &[&str] = &[
    EXPIRES,
    MESSAGE_TTL,
    DLX,
    DLX_ROUTING_KEY,
    MAX_LENGTH,
    MAX_LENGTH_BYTES,
    MAX_PRIORITY,
    OVERFLOW,
    QUEUE_MODE,
    QUEUE_VERSION,
    SINGLE_ACTIVE_CONSUMER,
    QUEUE_TYPE,
    "x-queue-master-locator",
    PARTITIONS,
    HASH_HEADER,
    HASH_PROPERTY,
    CONSUMERS_PER_PARTITION,
];
const QUORUM_QUEUE_ARGS: &[&str] = &[
    DLX,
    DLX_ROUTING_KEY,
    DLX_STRATEGY,
    EXPIRES,
    MAX_LENGTH,
    MAX_LENGTH_BYTES,
    MAX_IN_MEMORY_LENGTH,
    MAX_IN_MEMORY_BYTES,
    OVERFLOW,
    SINGLE_ACTIVE_CONSUMER,
    QUEUE_TYPE,
    INITIAL_GROUP_SIZE,
    DELIVERY_LIMIT,
    MESSAGE_TTL,
    LEADER_LOCATOR,
    PARTITIONS,
    HASH_HEADER,
    HASH_PROPERTY,
    CONSUMERS_PER_PARTITION,
];
const STREAM_QUEUE_ARGS: &[&str] = &[
    MAX_LENGTH_BYTES,
    QUEUE_TYPE,
    MAX_AGE,
    STREAM_SEGMENT_SIZE,
    STREAM_FILTER_SIZE,
    INITIAL_CLUSTER_SIZE,
    LEADER_LOCATOR,
    PARTITIONS,
    HASH_HEADER,
    HASH_PROPERTY,
];

/// Consumer arguments each type accepts (RabbitMQ 3.13), then Warren's consumer-group
/// arguments, which only a partitioned queue takes (refused on others). Streams take
/// RabbitMQ 4's filter arguments and LavinMQ's offset tracking too, so other types
/// refuse those, as RabbitMQ 4 refuses `x-stream-filter` on a classic queue.
const CLASSIC_CONSUMER_ARGS: &[&str] = &[
    CANCEL_ON_HA_FAILOVER,
    PRIORITY,
    "x-credit",
    CONSUMER_GROUP,
    GROUP_MEMBER,
    SESSION_TIMEOUT,
    GROUP_NOTIFY,
    PARTITION,
];
const QUORUM_CONSUMER_ARGS: &[&str] = &[
    PRIORITY,
    "x-credit",
    CONSUMER_GROUP,
    GROUP_MEMBER,
    SESSION_TIMEOUT,
    GROUP_NOTIFY,
    PARTITION,
];
const STREAM_CONSUMER_ARGS: &[&str] = &[
    STREAM_OFFSET,
    "x-credit",
    CONSUMER_GROUP,
    PARTITION,
    STREAM_FILTER,
    MATCH_UNFILTERED,
    OFFSET_TRACKING,
];

/// The order in which RabbitMQ validates declare arguments (`declare_args/0`), limited to
/// what Warren's queue types accept; `x-consumer-timeout` sits where 4.3 puts it.
/// Warren's partitioning arguments come last, `x-partitions` first: the others need the
/// count it settles.
const DECLARE_ORDER: &[&str] = &[
    EXPIRES,
    MESSAGE_TTL,
    DLX,
    DLX_ROUTING_KEY,
    DLX_STRATEGY,
    MAX_LENGTH,
    MAX_LENGTH_BYTES,
    MAX_IN_MEMORY_LENGTH,
    MAX_IN_MEMORY_BYTES,
    MAX_PRIORITY,
    OVERFLOW,
    QUEUE_MODE,
    QUEUE_VERSION,
    SINGLE_ACTIVE_CONSUMER,
    CONSUMER_TIMEOUT,
    INITIAL_GROUP_SIZE,
    MAX_AGE,
    STREAM_SEGMENT_SIZE,
    STREAM_FILTER_SIZE,
    INITIAL_CLUSTER_SIZE,
    LEADER_LOCATOR,
    PARTITIONS,
    HASH_HEADER,
    HASH_PROPERTY,
    CONSUMERS_PER_PARTITION,
];

/// The order in which RabbitMQ validates consumer arguments (`consume_args/0`), then
/// Warren's consumer-group arguments in the design's table order, then the stream
/// arguments RabbitMQ reads without validating (`x-stream-filter`,
/// `x-stream-match-unfiltered`: the filter comes first, the second depends on it) and
/// LavinMQ's offset tracking.
const CONSUME_ORDER: &[&str] = &[
    PRIORITY,
    CONSUMER_TIMEOUT,
    CANCEL_ON_HA_FAILOVER,
    STREAM_OFFSET,
    CONSUMER_GROUP,
    GROUP_MEMBER,
    SESSION_TIMEOUT,
    GROUP_NOTIFY,
    PARTITION,
    STREAM_FILTER,
    MATCH_UNFILTERED,
    OFFSET_TRACKING,
];

/// `x-message-ttl` and `x-expires` above ten years are refused (`rabbit_misc:check_expiry`).
const MAX_EXPIRY_MS: i64 = 315_360_000_000;

/// Which implementation a queue uses, from `x-queue-type`.
///
/// Warren runs classic and quorum queues with one engine; the type decides which
/// arguments are allowed, the flags a quorum queue or a stream needs, and delivery
/// counting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum QueueType {
    /// The default: `classic`, or no `x-queue-type` at all.
    #[default]
    Classic,
    /// `quorum`: durable only, counts deliveries, honours `x-delivery-limit`.
    Quorum,
    /// `stream`: an append-only log read from any offset; durable only. Its declare
    /// and consume arguments are validated as RabbitMQ validates them, but [`parse`]
    /// still refuses to declare one until the stream body is in place.
    Stream,
}

impl QueueType {
    /// The `x-queue-type` value that names this type.
    pub fn name(self) -> &'static str {
        match self {
            Self::Classic => "classic",
            Self::Quorum => "quorum",
            Self::Stream => "stream",
        }
    }

    /// RabbitMQ's module for this type, as its error texts name it
    /// (`... of queue type rabbit_quorum_queue`).
    pub fn module(self) -> &'static str {
        match self {
            Self::Classic => "rabbit_classic_queue",
            Self::Quorum => "rabbit_quorum_queue",
            Self::Stream => "rabbit_stream_queue",
        }
    }

    /// Whether a client may leave the name empty and have the server pick one: only
    /// classic queues (RabbitMQ's `server_named` capability).
    pub fn allows_server_named(self) -> bool {
        self == Self::Classic
    }

    /// The type recorded in already-accepted arguments; anything unrecognised counts as
    /// classic, as RabbitMQ treats a missing `x-queue-type`.
    pub fn of(args: &FieldTable) -> Self {
        match args.inner().get(QUEUE_TYPE).and_then(as_longstr) {
            Some(b"quorum") => Self::Quorum,
            Some(b"stream") => Self::Stream,
            _ => Self::Classic,
        }
    }

    fn queue_arguments(self) -> &'static [&'static str] {
        match self {
            Self::Classic => CLASSIC_QUEUE_ARGS,
            Self::Quorum => QUORUM_QUEUE_ARGS,
            Self::Stream => STREAM_QUEUE_ARGS,
        }
    }

    fn consumer_arguments(self) -> &'static [&'static str] {
        match self {
            Self::Classic => CLASSIC_CONSUMER_ARGS,
            Self::Quorum => QUORUM_CONSUMER_ARGS,
            Self::Stream => STREAM_CONSUMER_ARGS,
        }
    }

    /// `x-consumer-timeout` is a Warren extension on both classic and quorum queues
    /// (RabbitMQ 3.13 honours it without validating it; 4.3 validates it, quorum only).
    fn accepts_queue_argument(self, key: &str) -> bool {
        self.queue_arguments().contains(&key) || (key == CONSUMER_TIMEOUT && self != Self::Stream)
    }

    fn accepts_consumer_argument(self, key: &str) -> bool {
        self.consumer_arguments().contains(&key)
            || (key == CONSUMER_TIMEOUT && self != Self::Stream)
    }
}

impl fmt::Display for QueueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a full queue does with a new message (`x-overflow`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Overflow {
    /// `drop-head`: drop (or dead-letter) the oldest message to make room.
    #[default]
    DropHead,
    /// `reject-publish`: refuse the new message (a nack under confirms).
    RejectPublish,
    /// `reject-publish-dlx`: refuse it and dead-letter it; classic queues only, a quorum
    /// queue falls back to `drop-head` as RabbitMQ's does.
    RejectPublishDlx,
}

/// How a quorum queue dead-letters (`x-dead-letter-strategy`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum DeadLetterStrategy {
    /// Publish once and forget: the only strategy of classic queues.
    #[default]
    AtMostOnce,
    /// Keep the message until the dead-letter target confirms it. In force only on a
    /// quorum queue with a dead-letter exchange and `x-overflow` `reject-publish`.
    AtLeastOnce,
}

/// A queue's validated arguments, as the queue applies them.
///
/// Values are the effective ones (RabbitMQ's fallbacks already applied); the declared
/// table is kept separately for redeclaration checks and listings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueArguments {
    /// `x-message-ttl`: how long a message may wait, in milliseconds (0 allowed).
    pub message_ttl: Option<u64>,
    /// `x-expires`: delete the queue after this many milliseconds unused (never 0).
    pub expires: Option<u64>,
    /// `x-max-length`: most ready messages.
    pub max_length: Option<u64>,
    /// `x-max-length-bytes`: most body bytes of ready messages; for a stream, the
    /// retention limit on the bytes it keeps.
    pub max_length_bytes: Option<u64>,
    /// `x-overflow`: what happens past either limit.
    pub overflow: Overflow,
    /// `x-dead-letter-exchange`: where dropped and rejected messages go (`""` is the
    /// default exchange).
    pub dead_letter_exchange: Option<String>,
    /// `x-dead-letter-routing-key`: replaces the routing key when dead-lettering.
    pub dead_letter_routing_key: Option<String>,
    /// `x-dead-letter-strategy` as in force (quorum queues).
    pub dead_letter_strategy: DeadLetterStrategy,
    /// `x-max-priority`: the highest message priority, 1..=255. RabbitMQ gives a declared
    /// 0 two levels, like 1, so 0 is stored as 1.
    pub max_priority: Option<u8>,
    /// `x-single-active-consumer`: deliver to one consumer at a time.
    pub single_active_consumer: bool,
    /// `x-queue-type`.
    pub queue_type: QueueType,
    /// `x-delivery-limit` (quorum): dead-letter a message returned more than this many
    /// times. `None` means unlimited: RabbitMQ 3.13's default, and what a negative value
    /// means in 4.x. (RabbitMQ 4.x defaults to 20 when it is absent.)
    pub delivery_limit: Option<u64>,
    /// `x-consumer-timeout`: milliseconds a delivery may stay unacknowledged before the
    /// channel is closed; overrides the broker-wide setting.
    pub consumer_timeout: Option<u64>,
    /// How many partitions the queue has (1..=[`MAX_PARTITIONS`]); `None` for a plain
    /// queue. This is the *effective* count, fixed when the queue is made: its
    /// `x-partitions` argument, else the `partitions` of the policy that matched it then
    /// (given to [`parse`]), and after a restart the count stored with its definition
    /// (given to [`parse_stored`]). A later policy never changes it: the partitions'
    /// logs and every key's partition depend on it.
    pub partitions: Option<u16>,
    /// What a partitioned queue hashes a message by: `x-partition-hash-header`,
    /// `x-partition-hash-property`, else the routing key.
    pub partition_hash: HashOn,
    /// `x-consumers-per-partition`: how many group members own each partition at once
    /// (1..=[`MAX_CONSUMERS_PER_PARTITION`]); `None` means 1, which keeps each key's
    /// order.
    pub consumers_per_partition: Option<u16>,
}

/// A stream's own settings, read from its accepted declare arguments with
/// [`StreamArguments::of`]; `None` means the default. (`x-max-length-bytes`, its
/// retention by size, is [`QueueArguments::max_length_bytes`].)
///
/// They are not in [`QueueArguments`], which each partition of a partitioned queue
/// holds a copy of: they would make every idle partition bigger.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamArguments {
    /// `x-max-age`: drop what is older than this many milliseconds, as
    /// [`parse_max_age`] reads it.
    pub max_age_ms: Option<u64>,
    /// `x-stream-max-segment-size-bytes`: the size at which a segment file rolls, at
    /// most 3,000,000,000.
    pub segment_bytes: Option<u64>,
    /// `x-stream-filter-size-bytes`: the bytes of each chunk's Bloom filter, 16..=255.
    pub filter_bytes: Option<u8>,
}

impl StreamArguments {
    /// The settings in a stream's arguments as [`parse`] or [`parse_stored`] accepted
    /// them. A value those would refuse counts as absent.
    pub fn of(args: &FieldTable) -> Self {
        let int = |key: &str| args.inner().get(key).and_then(integer);
        Self {
            max_age_ms: args
                .inner()
                .get(MAX_AGE)
                .and_then(as_longstr)
                .and_then(parse_max_age),
            segment_bytes: int(STREAM_SEGMENT_SIZE)
                .filter(|n| *n <= MAX_STREAM_SEGMENT_BYTES)
                .and_then(|n| u64::try_from(n).ok()),
            filter_bytes: int(STREAM_FILTER_SIZE)
                .filter(|n| STREAM_FILTER_BYTES.contains(n))
                .and_then(|n| u8::try_from(n).ok()),
        }
    }
}

/// Where a stream consumer starts reading (`x-stream-offset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamOffset {
    /// `first`: the oldest message the stream keeps. A negative integer means this too.
    First,
    /// `last`: the start of the last chunk written, delivered whole; `next` when the
    /// stream is empty.
    Last,
    /// `next`: only messages written after the consumer attaches (the default).
    Next,
    /// A non-negative integer: this offset, or the first one kept when it is older;
    /// beyond the end, the consumer waits until the stream reaches it.
    Offset(u64),
    /// A `timestamp` (sent in seconds), in milliseconds since the Unix epoch: the first
    /// chunk written at or after this time.
    Timestamp(u64),
    /// An interval string such as `"1h"` (read as `x-max-age` is), in milliseconds:
    /// the first chunk written at or after that long before the consume.
    Interval(u64),
}

/// A consumer's validated `basic.consume` arguments.
///
/// Not `Copy`: the consumer-group arguments hold strings and a partition list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsumerArguments {
    /// `x-priority`: higher-priority consumers are served first; default 0. RabbitMQ takes
    /// any integer; values beyond `i32` are clamped, which keeps their order.
    pub priority: i32,
    /// `x-consumer-timeout`: this consumer's acknowledgement timeout in milliseconds.
    pub timeout_ms: Option<u64>,
    /// `x-consumer-group`: the name of the group the consumer joins (1 to 255 bytes of
    /// UTF-8). `None` joins the queue's group under whatever name it has, or the default
    /// group; a consumer with [`partitions`](Self::partitions) joins none.
    pub group: Option<String>,
    /// `x-group-member`: a static member id (1 to 255 bytes of UTF-8). A static member
    /// that loses its channel keeps its partitions for
    /// [`session_timeout_ms`](Self::session_timeout_ms), and gets them back by
    /// rejoining with the same id.
    pub member: Option<String>,
    /// `x-group-session-timeout`: how long a static member's partitions wait for it, in
    /// milliseconds (0..=[`MAX_SESSION_TIMEOUT_MS`]); `None` means
    /// [`DEFAULT_SESSION_TIMEOUT_MS`]. Only with [`member`](Self::member).
    pub session_timeout_ms: Option<u64>,
    /// `x-group-notify`: also deliver `assigned`/`revoked` control messages.
    pub notify: bool,
    /// `x-partition`: the partitions this consumer reads outside the group (a manual
    /// consumer), sorted and without duplicates; `None` for a group member.
    pub partitions: Option<Vec<u16>>,
    /// `x-stream-offset` (streams): where to start reading; `None` means
    /// [`StreamOffset::Next`].
    pub stream_offset: Option<StreamOffset>,
    /// `x-stream-filter` (streams): deliver only messages whose
    /// `x-stream-filter-value` is one of these, byte for byte. A string gives one value;
    /// an array gives its strings, in order (its other elements are dropped). Empty
    /// means no filter, which is also what a value of any other type means.
    pub stream_filter: Vec<Box<[u8]>>,
    /// `x-stream-match-unfiltered` (streams): with a filter, also deliver messages
    /// that have no filter value. Always false without a filter, and when the
    /// argument is not a boolean.
    pub match_unfiltered: bool,
    /// `x-stream-automatic-offset-tracking` (streams, LavinMQ's name): the server keeps
    /// this consumer's committed offset under its consumer tag.
    pub track_offsets: bool,
}

/// Validates the arguments of a new queue (not a redeclaration) and the flags its type
/// needs, in RabbitMQ's order, and returns the settings to run it with.
///
/// `declare.name` must already be the final name; `declare.server_named` says the server
/// picked it.
///
/// `policy_partitions` is the `partitions` of the policy that matches the new queue, if
/// any: the queue's partition count is fixed here, once ([`QueueArguments::partitions`]).
/// An `x-partitions` argument wins over it, and it is not applied to a queue declared
/// with `x-single-active-consumer` true, which cannot be partitioned (the queue stays
/// plain rather than its declaration failing because of a policy). The partitioning
/// arguments that need a partitioned queue (`x-partition-hash-header`,
/// `x-partition-hash-property`, `x-consumers-per-partition`) accept either source, so a
/// policy-partitioned queue can choose its key.
///
/// # Errors
///
/// 406 PRECONDITION_FAILED with RabbitMQ's text for a server-named non-classic queue, an
/// argument of the wrong type or value, an argument the queue type does not take, a
/// quorum queue or stream that is auto-delete, exclusive or not durable, or a stream's
/// segment or filter size out of range.
pub fn parse(
    args: &FieldTable,
    declare: &QueueDeclare,
    vhost: &str,
    policy_partitions: Option<u16>,
) -> AmqpResult<QueueArguments> {
    let queue = Resource {
        queue: &declare.name,
        vhost,
    };
    let queue_type = queue_type_arg(args);
    // rabbit_channel: checked before anything else, using the requested type.
    if declare.server_named {
        if let Ok(queue_type) = queue_type {
            if !queue_type.allows_server_named() {
                return Err(error::precondition(format!(
                    "Cannot declare a server-named queue for type {}",
                    queue_type.module()
                )));
            }
        }
    }
    // rabbit_channel: a new queue's dead-letter exchange must be a string.
    if let Some(value) = args.inner().get(DLX) {
        if as_longstr(value).is_none() {
            return Err(error::precondition(format!(
                "invalid type '{}' for arg '{DLX}' in {queue}",
                type_name(value)
            )));
        }
    }
    let single_active = matches!(
        args.inner().get(SINGLE_ACTIVE_CONSUMER),
        Some(AMQPValue::Boolean(true))
    );
    let policy_partitions = policy_partitions.filter(|_| !single_active);
    let parsed = parse_arguments(args, queue, queue_type, policy_partitions)?;
    if parsed.queue_type == QueueType::Classic {
        return Ok(parsed);
    }
    // rabbit_queue_type_util checks, in the order of rabbit_quorum_queue:declare/2 and
    // rabbit_stream_queue:declare/2. RabbitMQ 4.3 refuses a transient stream before
    // this (541, the deprecated transient_nonexcl_queues); 3.13 to 4.2 answer here.
    let durable = declare.durable && !declare.exclusive;
    let property = if declare.auto_delete {
        Some("auto-delete")
    } else if declare.exclusive {
        Some("exclusive-owner")
    } else if !durable {
        Some("non-durable")
    } else {
        None
    };
    if let Some(property) = property {
        return Err(error::precondition(format!(
            "invalid property '{property}' for {queue}"
        )));
    }
    if parsed.queue_type == QueueType::Stream {
        stream_limits(args)?;
    } else if args
        .inner()
        .get(OVERFLOW)
        .and_then(as_longstr)
        .is_some_and(|v| v == b"reject-publish-dlx")
    {
        tracing::warn!(
            queue = %declare.name,
            vhost,
            "invalid overflow strategy reject-publish-dlx for a quorum queue: using drop-head"
        );
    }
    Ok(parsed)
}

/// Rebuilds the settings of a queue from arguments accepted earlier (recovery).
///
/// Runs the argument checks of [`parse`] (a stream's segment and filter sizes
/// included) but not the flag checks, which held when the queue was declared, nor the
/// refusal of streams.
///
/// `stored_partitions` is the partition count recorded with the queue's definition (the
/// effective one at creation, which a policy may have given): it overrides the
/// arguments, so the queue comes back with the partitions it had even if its policy is
/// gone.
///
/// # Errors
///
/// As [`parse`], for arguments that no longer pass (say, from a newer or older Warren).
pub fn parse_stored(
    args: &FieldTable,
    queue: &str,
    vhost: &str,
    stored_partitions: Option<u16>,
) -> AmqpResult<QueueArguments> {
    let mut parsed = parse_arguments(
        args,
        Resource { queue, vhost },
        queue_type_arg(args),
        stored_partitions,
    )?;
    if parsed.queue_type == QueueType::Stream {
        stream_limits(args)?;
    }
    if stored_partitions.is_some() {
        parsed.partitions = stored_partitions;
    }
    Ok(parsed)
}

/// Checks a redeclaration's arguments against the existing queue's, as RabbitMQ does
/// (`rabbit_misc:assert_args_equivalence`): only the arguments the existing queue's type
/// accepts are compared, integers of any width are equal when their values are, and a
/// missing `x-queue-type` equals `classic`. Other arguments may differ freely.
///
/// `x-partitions` is compared with `current_partitions`, the queue's effective partition
/// count (from its argument or from its policy at creation), not with its declared
/// argument; a redeclaration without `x-partitions` is accepted whatever the count, so
/// clients unaware of a policy-partitioned queue can still declare it.
///
/// A stream redeclared without `x-queue-type` is compared as RabbitMQ 4 compares it:
/// its channel adds `x-queue-type: classic` to such a declaration (the default type), so
/// the text is `received 'classic' but current is 'stream'`. Classic and quorum queues
/// keep RabbitMQ 3.13's comparison, which adds nothing: a quorum queue redeclared
/// without its type gets `received none but current is the value 'quorum' of type
/// 'longstr'`.
///
/// # Errors
///
/// 406 PRECONDITION_FAILED `inequivalent arg 'x-message-ttl' for queue 'q' in vhost '/':
/// received the value '2000' of type 'signedint' but current is none` (or `received
/// '2000' but current is '1000'` when both are present).
pub fn assert_equivalent(
    current: &FieldTable,
    requested: &FieldTable,
    current_partitions: Option<u16>,
    queue: &str,
    vhost: &str,
) -> AmqpResult<()> {
    let resource = Resource { queue, vhost };
    let same = |key: &str, old: Option<&AMQPValue>, new: Option<&AMQPValue>| {
        let classic =
            |v: Option<&AMQPValue>| v.and_then(as_longstr).is_some_and(|s| s == b"classic");
        key == QUEUE_TYPE && (classic(old) || classic(new))
    };
    let current_type = QueueType::of(current);
    for &key in current_type.queue_arguments() {
        if key == QUEUE_TYPE
            && current_type == QueueType::Stream
            && !requested.contains_key(QUEUE_TYPE)
        {
            let mut augmented = FieldTable::default();
            augmented.insert(
                QUEUE_TYPE.into(),
                AMQPValue::LongString(QueueType::Classic.name().into()),
            );
            assert_args_equivalent(current, &augmented, &[key], &resource, same)?;
        } else if key == PARTITIONS {
            // The effective count stands in for the argument; an absent one is no claim.
            let mut effective = FieldTable::default();
            if let Some(n) = current_partitions {
                effective.insert(PARTITIONS.into(), AMQPValue::ShortUInt(n));
            }
            assert_args_equivalent(&effective, requested, &[key], &resource, |_, _, new| {
                new.is_none()
            })?;
        } else {
            assert_args_equivalent(current, requested, &[key], &resource, same)?;
        }
    }
    Ok(())
}

/// The arguments of `exchange.declare` RabbitMQ compares on redeclaration.
const EXCHANGE_ARGUMENTS: &[&str] = &["alternate-exchange"];

/// Validates `exchange.declare` arguments as RabbitMQ does: `alternate-exchange` must be
/// a string.
///
/// # Errors
/// 406 PRECONDITION_FAILED `invalid type 'long' for arg 'alternate-exchange' in
/// exchange 'x' in vhost '/'`.
pub fn check_exchange(args: &FieldTable, exchange: &str, vhost: &str) -> AmqpResult<()> {
    for &key in EXCHANGE_ARGUMENTS {
        if let Some(value) = args.inner().get(key)
            && as_longstr(value).is_none()
        {
            return Err(error::precondition(format!(
                "invalid type '{}' for arg '{key}' in exchange '{exchange}' in vhost '{vhost}'",
                type_name(value)
            )));
        }
    }
    Ok(())
}

/// Compares the arguments of an exchange's redeclaration with those it has.
///
/// # Errors
/// 406 PRECONDITION_FAILED `inequivalent arg 'alternate-exchange' for exchange 'x' in
/// vhost '/': received 'b' but current is 'a'`.
pub fn assert_exchange_equivalent(
    current: &FieldTable,
    requested: &FieldTable,
    exchange: &str,
    vhost: &str,
) -> AmqpResult<()> {
    let resource = format!("exchange '{exchange}' in vhost '{vhost}'");
    assert_args_equivalent(
        current,
        requested,
        EXCHANGE_ARGUMENTS,
        &resource,
        |_, _, _| false,
    )
}

/// `rabbit_misc:assert_args_equivalence` over `keys`; `same` lets a caller treat some
/// absent/present pairs as equal.
fn assert_args_equivalent(
    current: &FieldTable,
    requested: &FieldTable,
    keys: &[&str],
    resource: &dyn fmt::Display,
    same: impl Fn(&str, Option<&AMQPValue>, Option<&AMQPValue>) -> bool,
) -> AmqpResult<()> {
    for &key in keys {
        let (old, new) = (current.inner().get(key), requested.inner().get(key));
        let (received, held) = match (old, new) {
            (None, None) => continue,
            (Some(old), Some(new)) => {
                let same_class = type_class(old) == type_class(new);
                if (same_class && erl_equal(old, new, false)) || erl_equal(old, new, true) {
                    continue;
                }
                (untyped_val(new), untyped_val(old))
            }
            (old, new) => {
                if same(key, old, new) {
                    continue;
                }
                (typed_val(new), typed_val(old))
            }
        };
        return Err(error::precondition(format!(
            "inequivalent arg '{key}' for {resource}: received {received} but current is {held}"
        )));
    }
    Ok(())
}

/// Validates `basic.consume` arguments for a queue of type `queue_type`, as RabbitMQ's
/// `check_consume_arguments` does.
///
/// `x-priority` takes any integer; `x-consumer-timeout` a non-negative integer (validated
/// as RabbitMQ 4.3 does; 3.13 ignored it); `x-cancel-on-ha-failover` a boolean (classic,
/// ignored). Arguments known only to another queue type (`x-stream-offset`, or
/// `x-cancel-on-ha-failover` on a quorum queue) are refused; unknown ones are ignored.
///
/// A stream takes `x-stream-offset` ([`StreamOffset`], RabbitMQ's rules),
/// `x-stream-filter` and `x-stream-match-unfiltered` (read as RabbitMQ reads them, never
/// refused), and `x-stream-automatic-offset-tracking`, a boolean. Other queue types
/// refuse these four, and streams refuse `x-priority` and the consumer-group
/// arguments, with RabbitMQ's `of queue type` text.
///
/// Then Warren's consumer-group arguments, in this order: `x-consumer-group`,
/// `x-group-member`, `x-group-session-timeout`, `x-group-notify`, `x-partition`.
/// `partitions` is the queue's effective partition count; on a queue that has none,
/// each of them is refused (unlike RabbitMQ, which ignores unknown consume arguments:
/// ignoring `x-consumer-group` would hide a missing policy).
///
/// # Errors
///
/// 406 PRECONDITION_FAILED with RabbitMQ's text, e.g. `invalid arg 'x-priority' for queue
/// 'q' in vhost '/': "expected integer, got longstr"` or `invalid arg 'x-stream-offset'
/// for queue 'q' in vhost '/': {invalid_stream_offset_arg,{longstr,<<"foo">>}}`, or
/// ours, e.g. `invalid arg 'x-partition' for queue 'q' in vhost '/': "partition 16 is
/// out of range 0-15"` or `invalid arg 'x-stream-automatic-offset-tracking' for queue
/// 'q' in vhost '/': {unacceptable_type,longstr}`.
pub fn consumer(
    args: &FieldTable,
    queue_type: QueueType,
    partitions: Option<u16>,
    queue: &str,
    vhost: &str,
) -> AmqpResult<ConsumerArguments> {
    let resource = Resource { queue, vhost };
    let mut parsed = ConsumerArguments::default();
    for &key in CONSUME_ORDER {
        let Some(value) = args.inner().get(key) else {
            continue;
        };
        if !queue_type.accepts_consumer_argument(key) {
            continue;
        }
        apply_consumer(key, value, args, partitions, &mut parsed)
            .map_err(|reason| invalid_arg(key, resource, &reason))?;
    }
    let known = |key: &str| {
        [
            CLASSIC_CONSUMER_ARGS,
            QUORUM_CONSUMER_ARGS,
            STREAM_CONSUMER_ARGS,
        ]
        .iter()
        .any(|list| list.contains(&key))
    };
    for key in args.inner().keys() {
        let key = key.as_str();
        if known(key) && !queue_type.accepts_consumer_argument(key) {
            return Err(wrong_queue_type(key, resource, queue_type));
        }
    }
    Ok(parsed)
}

/// A queue as RabbitMQ's texts name it (`rabbit_misc:rs/1`): `queue 'q' in vhost '/'`.
#[derive(Debug, Clone, Copy)]
struct Resource<'a> {
    queue: &'a str,
    vhost: &'a str,
}

impl fmt::Display for Resource<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "queue '{}' in vhost '{}'", self.queue, self.vhost)
    }
}

/// Why an argument was refused, printed as the Erlang term RabbitMQ reports.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reason {
    /// `check_int_arg`: `"expected integer, got longstr"` (an Erlang string).
    ExpectedInteger(&'static str),
    /// `{unacceptable_type,long}`.
    UnacceptableType(&'static str),
    /// `{value_negative,-1}`.
    ValueNegative(i64),
    /// `{value_zero,0}`.
    ValueZero,
    /// `{value_too_large,N}`.
    ValueTooLarge(i64),
    /// `{max_value_exceeded,N}`.
    MaxValueExceeded(i64),
    /// A bare atom such as `invalid_overflow`.
    Atom(&'static str),
    /// An Erlang string such as `"unsupported queue mode 'x'"`.
    Text(String),
    /// `{invalid_stream_offset_arg,{longstr,<<"foo">>}}`: the field's type and its value
    /// as `~255p` prints it, but always on one line (RabbitMQ breaks a term past 255
    /// columns).
    InvalidStreamOffset(&'static str, String),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ExpectedInteger(t) => {
                f.write_str(&erlang::string(&format!("expected integer, got {t}")))
            }
            Self::UnacceptableType(t) => write!(f, "{{unacceptable_type,{t}}}"),
            Self::ValueNegative(n) => write!(f, "{{value_negative,{n}}}"),
            Self::ValueZero => f.write_str("{value_zero,0}"),
            Self::ValueTooLarge(n) => write!(f, "{{value_too_large,{n}}}"),
            Self::MaxValueExceeded(n) => write!(f, "{{max_value_exceeded,{n}}}"),
            Self::Atom(a) => f.write_str(a),
            Self::Text(s) => f.write_str(&erlang::string(s)),
            Self::InvalidStreamOffset(t, v) => {
                write!(f, "{{invalid_stream_offset_arg,{{{t},{v}}}}}")
            }
        }
    }
}

/// `check_arguments_type_and_value`: `invalid arg 'k' for queue 'q' in vhost '/': reason`.
fn invalid_arg(key: &str, queue: Resource<'_>, reason: &Reason) -> AmqpError {
    error::precondition(format!("invalid arg '{key}' for {queue}: {reason}"))
}

/// `check_arguments_key`: an argument that belongs to another queue type.
fn wrong_queue_type(key: &str, queue: Resource<'_>, queue_type: QueueType) -> AmqpError {
    error::precondition(format!(
        "invalid arg '{key}' for {queue} of queue type {}",
        queue_type.module()
    ))
}

/// The requested type (`check_queue_type`); absent or `"undefined"` means classic.
fn queue_type_arg(args: &FieldTable) -> Result<QueueType, Reason> {
    let Some(value) = args.inner().get(QUEUE_TYPE) else {
        return Ok(QueueType::Classic);
    };
    match as_longstr(value) {
        None => Err(Reason::UnacceptableType(type_name(value))),
        Some(b"classic" | b"undefined") => Ok(QueueType::Classic),
        Some(b"quorum") => Ok(QueueType::Quorum),
        Some(b"stream") => Ok(QueueType::Stream),
        Some(other) => Err(Reason::Text(format!(
            "unsupported queue type '{}'",
            erlang::chars(other)
        ))),
    }
}

/// `rabbit_amqqueue:check_declare_arguments`: the type, then each argument the type
/// takes in `declare_args/0` order, then arguments that belong to another type.
///
/// `partitions` is the partition count to assume when `x-partitions` is absent (from a
/// policy or the stored definition).
fn parse_arguments(
    args: &FieldTable,
    queue: Resource<'_>,
    queue_type: Result<QueueType, Reason>,
    partitions: Option<u16>,
) -> AmqpResult<QueueArguments> {
    let queue_type = queue_type.map_err(|reason| invalid_arg(QUEUE_TYPE, queue, &reason))?;
    let mut parsed = QueueArguments {
        queue_type,
        partitions,
        ..QueueArguments::default()
    };
    for &key in DECLARE_ORDER {
        let Some(value) = args.inner().get(key) else {
            continue;
        };
        if queue_type.accepts_queue_argument(key) {
            apply(key, value, args, &mut parsed)
                .map_err(|reason| invalid_arg(key, queue, &reason))?;
        }
    }
    let known = |key: &str| {
        [CLASSIC_QUEUE_ARGS, QUORUM_QUEUE_ARGS, STREAM_QUEUE_ARGS]
            .iter()
            .any(|list| list.contains(&key))
    };
    for key in args.inner().keys() {
        let key = key.as_str();
        if known(key) && !queue_type.accepts_queue_argument(key) {
            return Err(wrong_queue_type(key, queue, queue_type));
        }
    }
    if queue_type == QueueType::Quorum {
        // RabbitMQ does not validate x-delivery-limit: non-integers are ignored. As in
        // RabbitMQ 4, a quorum queue without one has a limit of 20; a negative one
        // means no limit.
        parsed.delivery_limit = match args.inner().get(DELIVERY_LIMIT).and_then(integer) {
            Some(limit) => u64::try_from(limit).ok(),
            None => Some(DEFAULT_DELIVERY_LIMIT),
        };
        if parsed.overflow == Overflow::RejectPublishDlx {
            parsed.overflow = Overflow::DropHead;
        }
        let at_least_once = parsed.dead_letter_strategy == DeadLetterStrategy::AtLeastOnce
            && parsed.dead_letter_exchange.is_some()
            && parsed.overflow == Overflow::RejectPublish;
        if !at_least_once {
            parsed.dead_letter_strategy = DeadLetterStrategy::AtMostOnce;
        }
    }
    Ok(parsed)
}

/// The checks of `rabbit_stream_queue:declare/2` that follow the flags: the segment and
/// filter sizes, whose types and signs the argument checks have already settled.
fn stream_limits(args: &FieldTable) -> AmqpResult<()> {
    let value = |key: &str| args.inner().get(key).and_then(integer);
    if value(STREAM_SEGMENT_SIZE).is_some_and(|n| n > MAX_STREAM_SEGMENT_BYTES) {
        // RabbitMQ's fixed text, without the queue's name.
        return Err(error::precondition(format!(
            "Exceeded max value for {STREAM_SEGMENT_SIZE}"
        )));
    }
    if value(STREAM_FILTER_SIZE).is_some_and(|n| !STREAM_FILTER_BYTES.contains(&n)) {
        return Err(error::precondition(format!(
            "Invalid value for {STREAM_FILTER_SIZE}"
        )));
    }
    Ok(())
}

/// Reads an `x-max-age` value (also a stream consumer's interval offset) as RabbitMQ's
/// `check_max_age` does, in milliseconds: digits, a number above 0, then exactly one
/// unit, `Y` (365 days), `M` (30 days), `D` (24 hours), `h`, `m` or `s`, case-sensitive.
/// `"7D"` and `"12h"` are valid; `"0D"`, `"1d"`, `"1.5h"`, `"D"` and `""` are not.
///
/// RabbitMQ matches `^([0-9]+)(.*)`, whose `.` stops at a line feed, so anything after a
/// line feed that follows the unit is ignored (`"1h\nx"` is one hour), as there.
/// RabbitMQ's integers have no bound; here a result past `u64` saturates at
/// `u64::MAX`, an age no message reaches.
pub fn parse_max_age(text: &[u8]) -> Option<u64> {
    let digits = text.iter().take_while(|b| b.is_ascii_digit()).count();
    let (number, rest) = text.split_at(digits);
    let unit = rest.split(|&b| b == b'\n').next().unwrap_or_default();
    let unit_ms: u64 = match unit {
        b"Y" => 365 * 86_400_000,
        b"M" => 30 * 86_400_000,
        b"D" => 86_400_000,
        b"h" => 3_600_000,
        b"m" => 60_000,
        b"s" => 1_000,
        _ => return None,
    };
    let n = number.iter().fold(0u64, |n, &d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    });
    (n > 0).then(|| n.saturating_mul(unit_ms))
}

/// Validates one declare argument and records it.
fn apply(
    key: &str,
    value: &AMQPValue,
    args: &FieldTable,
    out: &mut QueueArguments,
) -> Result<(), Reason> {
    match key {
        EXPIRES => {
            let n = check_int(value)?;
            if n == 0 {
                return Err(Reason::ValueZero);
            }
            out.expires = Some(check_expiry(n)?);
        }
        MESSAGE_TTL => out.message_ttl = Some(check_expiry(check_int(value)?)?),
        DLX => {
            let name = check_longstr(value)?;
            out.dead_letter_exchange = Some(String::from_utf8_lossy(name).into_owned());
        }
        DLX_ROUTING_KEY => {
            let key = check_longstr(value)?;
            if !args.contains_key(DLX) {
                return Err(Reason::Atom("routing_key_but_no_dlx_defined"));
            }
            out.dead_letter_routing_key = Some(String::from_utf8_lossy(key).into_owned());
        }
        DLX_STRATEGY => {
            out.dead_letter_strategy = match check_longstr(value)? {
                b"at-most-once" => DeadLetterStrategy::AtMostOnce,
                b"at-least-once" => DeadLetterStrategy::AtLeastOnce,
                _ => return Err(Reason::Atom("invalid_dlx_strategy")),
            };
        }
        MAX_LENGTH => out.max_length = Some(check_non_neg_int(value)?),
        MAX_LENGTH_BYTES => out.max_length_bytes = Some(check_non_neg_int(value)?),
        MAX_IN_MEMORY_LENGTH | MAX_IN_MEMORY_BYTES => {
            check_non_neg_int(value)?;
        }
        MAX_PRIORITY => {
            // Up to ?MAX_SUPPORTED_PRIORITY, 255.
            let n = check_non_neg_int(value)?;
            let max = u8::try_from(n).map_err(|_| Reason::MaxValueExceeded(saturate(n)))?;
            // rabbit_priority_queue:priorities/1 gives 0 the same two levels as 1.
            out.max_priority = Some(max.max(1));
        }
        OVERFLOW => {
            out.overflow = match check_longstr(value)? {
                b"drop-head" => Overflow::DropHead,
                b"reject-publish" => Overflow::RejectPublish,
                b"reject-publish-dlx" => Overflow::RejectPublishDlx,
                _ => return Err(Reason::Atom("invalid_overflow")),
            };
        }
        QUEUE_MODE => {
            // Accepted and ignored: since 3.12 every classic queue behaves as lazy.
            // RabbitMQ 4.x no longer validates it.
            let mode = check_longstr(value)?;
            if mode != b"default" && mode != b"lazy" {
                return Err(Reason::Text(format!(
                    "unsupported queue mode '{}'",
                    erlang::chars(mode)
                )));
            }
        }
        QUEUE_VERSION => {
            // Accepted and ignored (4.x accepts only 2).
            let version = check_non_neg_int(value)?;
            if version != 1 && version != 2 {
                return Err(Reason::Text(format!(
                    "unsupported queue version '{version}'"
                )));
            }
        }
        SINGLE_ACTIVE_CONSUMER => out.single_active_consumer = check_bool(value)?,
        CONSUMER_TIMEOUT => out.consumer_timeout = Some(check_non_neg_int(value)?),
        INITIAL_GROUP_SIZE | INITIAL_CLUSTER_SIZE => {
            // Checked, then ignored: Warren runs on one node.
            let size = check_non_neg_int(value)?;
            if size == 0 {
                return Err(Reason::ValueZero);
            }
        }
        // Checked; StreamArguments::of reads them.
        MAX_AGE => {
            parse_max_age(check_longstr(value)?).ok_or(Reason::Atom("invalid_max_age"))?;
        }
        // Their bounds are checked after the flags (stream_limits), as RabbitMQ does.
        STREAM_SEGMENT_SIZE | STREAM_FILTER_SIZE => {
            check_non_neg_int(value)?;
        }
        LEADER_LOCATOR => {
            let locator = check_longstr(value)?;
            if ![
                &b"client-local"[..],
                b"balanced",
                b"random",
                b"least-leaders",
            ]
            .contains(&locator)
            {
                return Err(Reason::Atom("invalid_queue_locator_arg"));
            }
        }
        PARTITIONS => {
            let n = check_bounded(value, MAX_PARTITIONS)?;
            if matches!(
                args.inner().get(SINGLE_ACTIVE_CONSUMER),
                Some(AMQPValue::Boolean(true))
            ) {
                return Err(Reason::Text(format!(
                    "{SINGLE_ACTIVE_CONSUMER} cannot be combined with {PARTITIONS}"
                )));
            }
            out.partitions = Some(n);
        }
        HASH_HEADER => {
            let header = check_longstr(value)?;
            require_partitions(out)?;
            if args.contains_key(HASH_PROPERTY) {
                return Err(Reason::Text(format!(
                    "{HASH_HEADER} and {HASH_PROPERTY} are mutually exclusive"
                )));
            }
            out.partition_hash = HashOn::Header(header.into());
        }
        HASH_PROPERTY => {
            let property = match check_longstr(value)? {
                b"message_id" => HashProperty::MessageId,
                b"correlation_id" => HashProperty::CorrelationId,
                b"timestamp" => HashProperty::Timestamp,
                other => {
                    return Err(Reason::Text(format!(
                        "unsupported property '{}'",
                        erlang::chars(other)
                    )));
                }
            };
            require_partitions(out)?;
            out.partition_hash = HashOn::Property(property);
        }
        CONSUMERS_PER_PARTITION => {
            let k = check_bounded(value, MAX_CONSUMERS_PER_PARTITION)?;
            require_partitions(out)?;
            out.consumers_per_partition = Some(k);
        }
        _ => {}
    }
    Ok(())
}

/// The partitioning arguments that mean nothing on a plain queue. `out.partitions` is
/// already the effective count: `x-partitions` is checked before them.
fn require_partitions(out: &QueueArguments) -> Result<u16, Reason> {
    out.partitions
        .ok_or_else(|| Reason::Text("requires a partitioned queue".to_owned()))
}

/// Validates one consumer argument and records it; `partitions` is the queue's count.
fn apply_consumer(
    key: &str,
    value: &AMQPValue,
    args: &FieldTable,
    partitions: Option<u16>,
    out: &mut ConsumerArguments,
) -> Result<(), Reason> {
    let partitioned = || partitions.ok_or_else(|| Reason::Text("queue is not partitioned".into()));
    match key {
        PRIORITY => {
            let p = check_int(value)?;
            out.priority = i32::try_from(p).unwrap_or(if p < 0 { i32::MIN } else { i32::MAX });
        }
        CONSUMER_TIMEOUT => out.timeout_ms = Some(check_non_neg_int(value)?),
        // Checked, then ignored: Warren has no mirrored queues.
        CANCEL_ON_HA_FAILOVER => {
            check_bool(value)?;
        }
        CONSUMER_GROUP => {
            let group = check_group_name(value, "group name")?;
            partitioned()?;
            out.group = Some(group);
        }
        GROUP_MEMBER => {
            let member = check_group_name(value, "member id")?;
            partitioned()?;
            if args.contains_key(PARTITION) {
                return Err(Reason::Text(format!(
                    "{GROUP_MEMBER} and {PARTITION} are mutually exclusive"
                )));
            }
            out.member = Some(member);
        }
        SESSION_TIMEOUT => {
            let ms = check_non_neg_int(value)?;
            if ms > MAX_SESSION_TIMEOUT_MS {
                return Err(Reason::MaxValueExceeded(saturate(ms)));
            }
            partitioned()?;
            if !args.contains_key(GROUP_MEMBER) {
                return Err(Reason::Text(format!("requires {GROUP_MEMBER}")));
            }
            out.session_timeout_ms = Some(ms);
        }
        GROUP_NOTIFY => {
            let notify = check_bool(value)?;
            partitioned()?;
            out.notify = notify;
        }
        PARTITION => {
            let requested = match value {
                AMQPValue::FieldArray(items) => items
                    .as_slice()
                    .iter()
                    .map(check_int)
                    .collect::<Result<Vec<i64>, Reason>>()?,
                single => vec![check_int(single)?],
            };
            if requested.is_empty() {
                return Err(Reason::Text("empty partition list".to_owned()));
            }
            let n = partitioned()?;
            let mut owned = Vec::with_capacity(requested.len());
            for p in requested {
                match u16::try_from(p).ok().filter(|&p| p < n) {
                    Some(p) => owned.push(p),
                    None => {
                        return Err(Reason::Text(format!(
                            "partition {p} is out of range 0-{}",
                            n - 1
                        )));
                    }
                }
            }
            if args.contains_key(CONSUMER_GROUP) {
                return Err(Reason::Text(format!(
                    "{PARTITION} and {CONSUMER_GROUP} are mutually exclusive"
                )));
            }
            owned.sort_unstable();
            owned.dedup();
            out.partitions = Some(owned);
        }
        STREAM_OFFSET => out.stream_offset = Some(stream_offset(value)?),
        // rabbit_stream_queue:filter_spec/1: never refused.
        STREAM_FILTER => {
            out.stream_filter = match value {
                AMQPValue::FieldArray(items) => items
                    .as_slice()
                    .iter()
                    .filter_map(as_longstr)
                    .map(Box::from)
                    .collect(),
                single => as_longstr(single).map(Box::from).into_iter().collect(),
            };
        }
        // After STREAM_FILTER in CONSUME_ORDER: it only counts with a filter.
        MATCH_UNFILTERED => {
            out.match_unfiltered =
                matches!(value, AMQPValue::Boolean(true)) && !out.stream_filter.is_empty();
        }
        // Our choice: a non-boolean is refused rather than ignored.
        OFFSET_TRACKING => out.track_offsets = check_bool(value)?,
        _ => {}
    }
    Ok(())
}

/// `x-stream-offset` as RabbitMQ's `parse_offset_arg` reads it: the bytes `first`,
/// `last` or `next` in any string type; a `timestamp` in seconds; another string as an
/// interval ([`parse_max_age`]); an integer as an offset, negative ones meaning first.
///
/// RabbitMQ also lets any other type through its validator, then fails on it when the
/// consumer attaches; Warren refuses it here with the same reason as an invalid string,
/// `{invalid_stream_offset_arg,{T,V}}` (`{bool,true}`, `{double,1.5}`,
/// `{binary,<<"1h">>}`, `{void,undefined}`).
fn stream_offset(value: &AMQPValue) -> Result<StreamOffset, Reason> {
    let bytes = match value {
        AMQPValue::ByteArray(bytes) => Some(bytes.as_slice()),
        other => as_longstr(other),
    };
    match bytes {
        Some(b"first") => return Ok(StreamOffset::First),
        Some(b"last") => return Ok(StreamOffset::Last),
        Some(b"next") => return Ok(StreamOffset::Next),
        _ => {}
    }
    let offset = match value {
        AMQPValue::Timestamp(seconds) => {
            Some(StreamOffset::Timestamp(seconds.saturating_mul(1000)))
        }
        AMQPValue::LongString(_) | AMQPValue::ShortString(_) => {
            bytes.and_then(parse_max_age).map(StreamOffset::Interval)
        }
        other => integer(other)
            .map(|n| u64::try_from(n).map_or(StreamOffset::First, StreamOffset::Offset)),
    };
    offset.ok_or_else(|| {
        let shown = match erl(value) {
            Erl::Bin(bytes) => erlang::latin1_binary(bytes),
            term => erl_term(term),
        };
        Reason::InvalidStreamOffset(type_name(value), shown)
    })
}

/// A group name or member id: a string of 1 to 255 bytes of UTF-8; `what` names it in
/// the reasons (`"empty group name"`).
fn check_group_name(value: &AMQPValue, what: &str) -> Result<String, Reason> {
    let bytes = check_longstr(value)?;
    if bytes.is_empty() {
        return Err(Reason::Text(format!("empty {what}")));
    }
    if bytes.len() > MAX_GROUP_NAME_BYTES {
        return Err(Reason::Text(format!(
            "{what} is longer than {MAX_GROUP_NAME_BYTES} bytes"
        )));
    }
    String::from_utf8(bytes.to_vec())
        .map_err(|_| Reason::Text(format!("{what} is not valid UTF-8")))
}

/// An integer from 1 to `max`, with `check_int_arg`'s reasons and RabbitMQ's
/// `{value_zero,0}`, `{value_negative,N}` and `{max_value_exceeded,N}` (in that order of
/// checks, as `x-expires` and `x-max-priority` report them).
fn check_bounded(value: &AMQPValue, max: u16) -> Result<u16, Reason> {
    let n = check_int(value)?;
    if n == 0 {
        return Err(Reason::ValueZero);
    }
    if n < 0 {
        return Err(Reason::ValueNegative(n));
    }
    u16::try_from(n)
        .ok()
        .filter(|&k| k <= max)
        .ok_or(Reason::MaxValueExceeded(n))
}

/// A string argument: other types are `{unacceptable_type,T}`.
fn check_longstr(value: &AMQPValue) -> Result<&[u8], Reason> {
    as_longstr(value).ok_or(Reason::UnacceptableType(type_name(value)))
}

/// `check_int_arg`: any AMQP integer type, any value.
fn check_int(value: &AMQPValue) -> Result<i64, Reason> {
    integer(value).ok_or(Reason::ExpectedInteger(type_name(value)))
}

/// `check_non_neg_int_arg`.
fn check_non_neg_int(value: &AMQPValue) -> Result<u64, Reason> {
    let n = check_int(value)?;
    u64::try_from(n).map_err(|_| Reason::ValueNegative(n))
}

/// `rabbit_misc:check_expiry`: 0 to ten years in milliseconds.
fn check_expiry(n: i64) -> Result<u64, Reason> {
    if n > MAX_EXPIRY_MS {
        return Err(Reason::ValueTooLarge(n));
    }
    u64::try_from(n).map_err(|_| Reason::ValueNegative(n))
}

/// `check_bool_arg`.
fn check_bool(value: &AMQPValue) -> Result<bool, Reason> {
    match value {
        AMQPValue::Boolean(b) => Ok(*b),
        other => Err(Reason::UnacceptableType(type_name(other))),
    }
}

fn saturate(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The value of an integer field, for the types RabbitMQ counts as integers
/// (`?INTEGER_ARG_TYPES`: not `timestamp` nor `decimal`).
fn integer(value: &AMQPValue) -> Option<i64> {
    Some(match *value {
        AMQPValue::ShortShortInt(n) => n.into(),
        AMQPValue::ShortShortUInt(n) => n.into(),
        AMQPValue::ShortInt(n) => n.into(),
        AMQPValue::ShortUInt(n) => n.into(),
        AMQPValue::LongInt(n) => n.into(),
        AMQPValue::LongUInt(n) => n.into(),
        AMQPValue::LongLongInt(n) => n,
        _ => return None,
    })
}

/// The bytes of a string field (`longstr`; a short string, which cannot arrive on the
/// wire, counts as one).
fn as_longstr(value: &AMQPValue) -> Option<&[u8]> {
    match value {
        AMQPValue::LongString(s) => Some(s.as_bytes()),
        AMQPValue::ShortString(s) => Some(s.as_str().as_bytes()),
        _ => None,
    }
}

/// RabbitMQ's name for a field's type (`rabbit_binary_parser`).
pub fn type_name(value: &AMQPValue) -> &'static str {
    match value {
        AMQPValue::Boolean(_) => "bool",
        AMQPValue::ShortShortInt(_) => "byte",
        AMQPValue::ShortShortUInt(_) => "unsignedbyte",
        AMQPValue::ShortInt(_) => "short",
        AMQPValue::ShortUInt(_) => "unsignedshort",
        AMQPValue::LongInt(_) => "signedint",
        AMQPValue::LongUInt(_) => "unsignedint",
        AMQPValue::LongLongInt(_) => "long",
        AMQPValue::Float(_) => "float",
        AMQPValue::Double(_) => "double",
        AMQPValue::DecimalValue(_) => "decimal",
        AMQPValue::ShortString(_) | AMQPValue::LongString(_) => "longstr",
        AMQPValue::FieldArray(_) => "array",
        AMQPValue::Timestamp(_) => "timestamp",
        AMQPValue::FieldTable(_) => "table",
        AMQPValue::ByteArray(_) => "binary",
        AMQPValue::Void => "void",
    }
}

/// `rabbit_misc:type_class/1`: integer types (and `decimal`) compare as one class, as do
/// `float` and `double`; every other type is its own class.
fn type_class(value: &AMQPValue) -> &'static str {
    match value {
        AMQPValue::ShortShortInt(_)
        | AMQPValue::ShortShortUInt(_)
        | AMQPValue::ShortInt(_)
        | AMQPValue::ShortUInt(_)
        | AMQPValue::LongInt(_)
        | AMQPValue::LongUInt(_)
        | AMQPValue::LongLongInt(_)
        | AMQPValue::DecimalValue(_) => "int",
        AMQPValue::Float(_) | AMQPValue::Double(_) => "float",
        other => type_name(other),
    }
}

/// A field's value as the Erlang term RabbitMQ holds it.
#[derive(Debug, Clone, Copy)]
enum Erl<'a> {
    Int(i128),
    Float(f64),
    Bin(&'a [u8]),
    Bool(bool),
    Decimal(u8, u32),
    Table(&'a FieldTable),
    Array(&'a [AMQPValue]),
    Undefined,
}

fn erl(value: &AMQPValue) -> Erl<'_> {
    match value {
        AMQPValue::Boolean(b) => Erl::Bool(*b),
        AMQPValue::Float(x) => Erl::Float(f64::from(*x)),
        AMQPValue::Double(x) => Erl::Float(*x),
        AMQPValue::DecimalValue(d) => Erl::Decimal(d.scale, d.value),
        AMQPValue::ShortString(s) => Erl::Bin(s.as_str().as_bytes()),
        AMQPValue::LongString(s) => Erl::Bin(s.as_bytes()),
        AMQPValue::ByteArray(b) => Erl::Bin(b.as_slice()),
        AMQPValue::FieldArray(a) => Erl::Array(a.as_slice()),
        AMQPValue::Timestamp(t) => Erl::Int(i128::from(*t)),
        AMQPValue::FieldTable(t) => Erl::Table(t),
        AMQPValue::Void => Erl::Undefined,
        other => Erl::Int(integer(other).map_or(0, i128::from)),
    }
}

/// Erlang's `==` (`exact` false: 1 == 1.0) or `=:=` (`exact` true) on two field values.
fn erl_equal(a: &AMQPValue, b: &AMQPValue, exact: bool) -> bool {
    match (erl(a), erl(b)) {
        (Erl::Int(x), Erl::Int(y)) => x == y,
        (Erl::Float(x), Erl::Float(y)) => x == y,
        (Erl::Int(i), Erl::Float(f)) | (Erl::Float(f), Erl::Int(i)) => !exact && i as f64 == f,
        (Erl::Bin(x), Erl::Bin(y)) => x == y,
        (Erl::Bool(x), Erl::Bool(y)) => x == y,
        (Erl::Decimal(s, v), Erl::Decimal(t, w)) => s == t && v == w,
        (Erl::Undefined, Erl::Undefined) => true,
        (Erl::Table(x), Erl::Table(y)) => {
            x.inner().len() == y.inner().len()
                && x.inner().iter().zip(y.inner()).all(|((k, v), (l, w))| {
                    k == l && type_name(v) == type_name(w) && erl_equal(v, w, exact)
                })
        }
        (Erl::Array(x), Erl::Array(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|(v, w)| type_name(v) == type_name(w) && erl_equal(v, w, exact))
        }
        _ => false,
    }
}

/// `rabbit_misc:val/1` of a bare value: `'2000'`.
fn untyped_val(value: &AMQPValue) -> String {
    match erl(value) {
        Erl::Bin(bytes) => format!("'{}'", erlang::chars(bytes)),
        term => format!("'{}'", erl_term(term)),
    }
}

/// `rabbit_misc:val/1` of a typed value, or `none` when absent:
/// `the value '2000' of type 'signedint'`.
fn typed_val(value: Option<&AMQPValue>) -> String {
    let Some(value) = value else {
        return "none".to_owned();
    };
    let shown = match erl(value) {
        Erl::Bin(bytes) => erlang::chars(bytes),
        term => erl_term(term),
    };
    format!("the value '{shown}' of type '{}'", type_name(value))
}

/// A term printed with `~tp`, on one line (RabbitMQ wraps terms past 80 columns).
fn erl_term(term: Erl<'_>) -> String {
    match term {
        Erl::Int(n) => n.to_string(),
        Erl::Float(x) => erlang::float(x),
        Erl::Bin(bytes) => erlang::binary(bytes),
        Erl::Bool(b) => b.to_string(),
        Erl::Decimal(scale, value) => format!("{{{scale},{value}}}"),
        Erl::Undefined => "undefined".to_owned(),
        Erl::Table(table) => {
            let entries: Vec<String> = table
                .inner()
                .iter()
                .map(|(k, v)| {
                    format!(
                        "{{{},{},{}}}",
                        erlang::binary(k.as_str().as_bytes()),
                        type_name(v),
                        erl_term(erl(v))
                    )
                })
                .collect();
            format!("[{}]", entries.join(","))
        }
        Erl::Array(values) => {
            let entries: Vec<String> = values
                .iter()
                .map(|v| format!("{{{},{}}}", type_name(v), erl_term(erl(v))))
                .collect();
            format!("[{}]", entries.join(","))
        }
    }
}

#[cfg(test)]
mod tests {
    use amqp_codec::ReplyCode;
    use amqp_codec::amq_protocol::types::{
        AMQPValue as V, ByteArray, DecimalValue, FieldArray, LongString,
    };

    use super::*;

    const RES: &str = "queue 'q' in vhost '/'";

    fn table(entries: &[(&str, V)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in entries {
            t.insert((*k).into(), v.clone());
        }
        t
    }

    fn s(text: &str) -> V {
        V::LongString(LongString::from(text))
    }

    fn declare(durable: bool, exclusive: bool, auto_delete: bool) -> QueueDeclare {
        QueueDeclare {
            name: "q".into(),
            server_named: false,
            passive: false,
            durable,
            exclusive,
            auto_delete,
            arguments: FieldTable::default(),
        }
    }

    fn classic(entries: &[(&str, V)]) -> AmqpResult<QueueArguments> {
        parse(&table(entries), &declare(false, false, false), "/", None)
    }

    fn quorum(entries: &[(&str, V)]) -> AmqpResult<QueueArguments> {
        let mut all = vec![(QUEUE_TYPE, s("quorum"))];
        all.extend(entries.iter().cloned());
        parse(&table(&all), &declare(true, false, false), "/", None)
    }

    /// A durable stream declared with these arguments, without the final refusal.
    fn stream(entries: &[(&str, V)]) -> AmqpResult<QueueArguments> {
        stream_declared(entries, &declare(true, false, false))
    }

    fn stream_declared(entries: &[(&str, V)], d: &QueueDeclare) -> AmqpResult<QueueArguments> {
        parse(&stream_table(entries), d, "/", None)
    }

    fn stream_table(entries: &[(&str, V)]) -> FieldTable {
        let mut all = vec![(QUEUE_TYPE, s("stream"))];
        all.extend(entries.iter().cloned());
        table(&all)
    }

    /// The settings of a stream declared with these arguments, which must pass.
    fn stream_settings(entries: &[(&str, V)]) -> StreamArguments {
        ok(stream(entries));
        StreamArguments::of(&stream_table(entries))
    }

    fn ok<T: fmt::Debug>(result: AmqpResult<T>) -> T {
        match result {
            Ok(value) => value,
            Err(e) => panic!("unexpected error: {}", e.reply_text()),
        }
    }

    fn err<T: fmt::Debug>(result: AmqpResult<T>) -> (ReplyCode, String) {
        match result {
            Ok(value) => panic!("expected an error, got {value:?}"),
            Err(e) => (e.code, e.text),
        }
    }

    /// The 406 text of a failed result.
    fn refused<T: fmt::Debug>(result: AmqpResult<T>) -> String {
        let (code, text) = err(result);
        assert_eq!(code, ReplyCode::PreconditionFailed, "{text}");
        text
    }

    fn invalid(key: &str, reason: &str) -> String {
        format!("invalid arg '{key}' for {RES}: {reason}")
    }

    /// Every AMQP integer type RabbitMQ accepts, holding `n`.
    fn each_integer(n: i8) -> Vec<(&'static str, V)> {
        let u = u8::try_from(n).unwrap_or(0);
        vec![
            ("byte", V::ShortShortInt(n)),
            ("unsignedbyte", V::ShortShortUInt(u)),
            ("short", V::ShortInt(n.into())),
            ("unsignedshort", V::ShortUInt(u.into())),
            ("signedint", V::LongInt(n.into())),
            ("unsignedint", V::LongUInt(u.into())),
            ("long", V::LongLongInt(n.into())),
        ]
    }

    /// One value of every non-integer type, with RabbitMQ's name for it.
    fn each_non_integer() -> Vec<(&'static str, V)> {
        vec![
            ("longstr", s("1000")),
            ("bool", V::Boolean(true)),
            ("float", V::Float(1.5)),
            ("double", V::Double(1000.0)),
            (
                "decimal",
                V::DecimalValue(DecimalValue {
                    scale: 0,
                    value: 1000,
                }),
            ),
            ("timestamp", V::Timestamp(1000)),
            ("table", V::FieldTable(FieldTable::default())),
            ("array", V::FieldArray(FieldArray::default())),
            ("binary", V::ByteArray(ByteArray::from(vec![1u8]))),
            ("void", V::Void),
        ]
    }

    #[test]
    fn no_arguments_is_a_plain_classic_queue() {
        assert_eq!(ok(classic(&[])), QueueArguments::default());
        let unknown = ok(classic(&[
            ("x-custom", s("anything")),
            ("foo", V::Boolean(true)),
        ]));
        assert_eq!(unknown, QueueArguments::default());
    }

    #[test]
    fn numeric_arguments_take_every_integer_type() {
        for (name, value) in each_integer(7) {
            let parsed = ok(classic(&[
                (MESSAGE_TTL, value.clone()),
                (EXPIRES, value.clone()),
                (MAX_LENGTH, value.clone()),
                (MAX_LENGTH_BYTES, value.clone()),
                (MAX_PRIORITY, value.clone()),
                (CONSUMER_TIMEOUT, value.clone()),
            ]));
            assert_eq!(parsed.message_ttl, Some(7), "{name}");
            assert_eq!(parsed.expires, Some(7), "{name}");
            assert_eq!(parsed.max_length, Some(7), "{name}");
            assert_eq!(parsed.max_length_bytes, Some(7), "{name}");
            assert_eq!(parsed.max_priority, Some(7), "{name}");
            assert_eq!(parsed.consumer_timeout, Some(7), "{name}");
        }
        let wide = ok(classic(&[(MAX_LENGTH_BYTES, V::LongLongInt(i64::MAX))]));
        assert_eq!(wide.max_length_bytes, Some(i64::MAX.unsigned_abs()));
        let unsigned = ok(classic(&[(MAX_LENGTH, V::LongUInt(u32::MAX))]));
        assert_eq!(unsigned.max_length, Some(u64::from(u32::MAX)));
    }

    #[test]
    fn numeric_arguments_refuse_other_types() {
        for key in [
            EXPIRES,
            MESSAGE_TTL,
            MAX_LENGTH,
            MAX_LENGTH_BYTES,
            MAX_PRIORITY,
            CONSUMER_TIMEOUT,
        ] {
            for (name, value) in each_non_integer() {
                let text = refused(classic(&[(key, value)]));
                assert_eq!(
                    text,
                    invalid(key, &format!("\"expected integer, got {name}\"")),
                    "{key} {name}"
                );
            }
        }
    }

    #[test]
    fn non_negative_arguments_refuse_negatives() {
        for key in [MAX_LENGTH, MAX_LENGTH_BYTES, MAX_PRIORITY, CONSUMER_TIMEOUT] {
            for (name, value) in each_integer(-5) {
                if name.starts_with("unsigned") {
                    continue;
                }
                let text = refused(classic(&[(key, value)]));
                assert_eq!(text, invalid(key, "{value_negative,-5}"), "{key} {name}");
            }
            assert!(classic(&[(key, V::ShortShortInt(0))]).is_ok(), "{key}");
        }
    }

    #[test]
    fn message_ttl_ranges_from_zero_to_ten_years() {
        assert_eq!(
            ok(classic(&[(MESSAGE_TTL, V::LongInt(0))])).message_ttl,
            Some(0)
        );
        let max = ok(classic(&[(MESSAGE_TTL, V::LongLongInt(315_360_000_000))]));
        assert_eq!(max.message_ttl, Some(315_360_000_000));
        assert_eq!(
            refused(classic(&[(MESSAGE_TTL, V::LongInt(-1))])),
            invalid(MESSAGE_TTL, "{value_negative,-1}")
        );
        assert_eq!(
            refused(classic(&[(MESSAGE_TTL, V::LongLongInt(315_360_000_001))])),
            invalid(MESSAGE_TTL, "{value_too_large,315360000001}")
        );
    }

    #[test]
    fn expires_must_be_positive_and_at_most_ten_years() {
        assert_eq!(ok(classic(&[(EXPIRES, V::ShortUInt(1))])).expires, Some(1));
        assert_eq!(
            refused(classic(&[(EXPIRES, V::LongInt(0))])),
            invalid(EXPIRES, "{value_zero,0}")
        );
        assert_eq!(
            refused(classic(&[(EXPIRES, V::ShortInt(-3))])),
            invalid(EXPIRES, "{value_negative,-3}")
        );
        assert_eq!(
            refused(classic(&[(EXPIRES, V::LongLongInt(i64::MAX))])),
            invalid(EXPIRES, &format!("{{value_too_large,{}}}", i64::MAX))
        );
    }

    #[test]
    fn max_priority_is_capped_at_255_and_zero_means_one() {
        assert_eq!(
            ok(classic(&[(MAX_PRIORITY, V::ShortUInt(255))])).max_priority,
            Some(255)
        );
        assert_eq!(
            ok(classic(&[(MAX_PRIORITY, V::ShortShortUInt(0))])).max_priority,
            Some(1)
        );
        assert_eq!(
            refused(classic(&[(MAX_PRIORITY, V::ShortInt(256))])),
            invalid(MAX_PRIORITY, "{max_value_exceeded,256}")
        );
        assert_eq!(
            refused(classic(&[(MAX_PRIORITY, V::LongLongInt(i64::MAX))])),
            invalid(
                MAX_PRIORITY,
                &format!("{{max_value_exceeded,{}}}", i64::MAX)
            )
        );
    }

    #[test]
    fn single_active_consumer_is_a_boolean() {
        assert!(ok(classic(&[(SINGLE_ACTIVE_CONSUMER, V::Boolean(true))])).single_active_consumer);
        assert!(
            !ok(classic(&[(SINGLE_ACTIVE_CONSUMER, V::Boolean(false))])).single_active_consumer
        );
        for (name, value) in each_integer(1).into_iter().chain(each_non_integer()) {
            if name == "bool" {
                continue;
            }
            assert_eq!(
                refused(classic(&[(SINGLE_ACTIVE_CONSUMER, value)])),
                invalid(
                    SINGLE_ACTIVE_CONSUMER,
                    &format!("{{unacceptable_type,{name}}}")
                )
            );
        }
    }

    #[test]
    fn dead_letter_exchange_and_routing_key() {
        let parsed = ok(classic(&[(DLX, s("dlx")), (DLX_ROUTING_KEY, s("rk"))]));
        assert_eq!(parsed.dead_letter_exchange.as_deref(), Some("dlx"));
        assert_eq!(parsed.dead_letter_routing_key.as_deref(), Some("rk"));
        assert_eq!(
            ok(classic(&[(DLX, s(""))])).dead_letter_exchange.as_deref(),
            Some("")
        );
        // rabbit_channel refuses a non-string exchange before the queue checks run.
        for (name, value) in [("long", V::LongLongInt(1)), ("bool", V::Boolean(true))] {
            assert_eq!(
                refused(classic(&[(DLX, value.clone())])),
                format!("invalid type '{name}' for arg '{DLX}' in {RES}")
            );
            assert_eq!(
                refused(quorum(&[(DLX, value.clone())])),
                format!("invalid type '{name}' for arg '{DLX}' in {RES}")
            );
            // Stored arguments only meet rabbit_amqqueue's check.
            assert_eq!(
                refused(parse_stored(&table(&[(DLX, value)]), "q", "/", None)),
                invalid(DLX, &format!("{{unacceptable_type,{name}}}"))
            );
        }
        assert_eq!(
            refused(classic(&[(DLX_ROUTING_KEY, s("rk"))])),
            invalid(DLX_ROUTING_KEY, "routing_key_but_no_dlx_defined")
        );
        assert_eq!(
            refused(classic(&[
                (DLX, s("dlx")),
                (DLX_ROUTING_KEY, V::LongInt(1))
            ])),
            invalid(DLX_ROUTING_KEY, "{unacceptable_type,signedint}")
        );
        // The type is checked before the exchange's presence.
        assert_eq!(
            refused(classic(&[(DLX_ROUTING_KEY, V::LongInt(1))])),
            invalid(DLX_ROUTING_KEY, "{unacceptable_type,signedint}")
        );
    }

    #[test]
    fn overflow_modes() {
        for (text, mode) in [
            ("drop-head", Overflow::DropHead),
            ("reject-publish", Overflow::RejectPublish),
            ("reject-publish-dlx", Overflow::RejectPublishDlx),
        ] {
            assert_eq!(ok(classic(&[(OVERFLOW, s(text))])).overflow, mode);
        }
        assert_eq!(
            refused(classic(&[(OVERFLOW, s("drop-tail"))])),
            invalid(OVERFLOW, "invalid_overflow")
        );
        assert_eq!(
            refused(classic(&[(OVERFLOW, V::LongLongInt(1))])),
            invalid(OVERFLOW, "{unacceptable_type,long}")
        );
    }

    #[test]
    fn queue_mode_and_version_are_checked_then_ignored() {
        assert!(classic(&[(QUEUE_MODE, s("lazy"))]).is_ok());
        assert!(classic(&[(QUEUE_MODE, s("default"))]).is_ok());
        assert_eq!(
            refused(classic(&[(QUEUE_MODE, s("eager"))])),
            invalid(QUEUE_MODE, "\"unsupported queue mode 'eager'\"")
        );
        assert_eq!(
            refused(classic(&[(QUEUE_MODE, V::Boolean(true))])),
            invalid(QUEUE_MODE, "{unacceptable_type,bool}")
        );
        assert!(classic(&[(QUEUE_VERSION, V::ShortShortInt(1))]).is_ok());
        assert!(classic(&[(QUEUE_VERSION, V::LongLongInt(2))]).is_ok());
        assert_eq!(
            refused(classic(&[(QUEUE_VERSION, V::LongInt(3))])),
            invalid(QUEUE_VERSION, "\"unsupported queue version '3'\"")
        );
        assert_eq!(
            refused(classic(&[(QUEUE_VERSION, V::LongInt(-1))])),
            invalid(QUEUE_VERSION, "{value_negative,-1}")
        );
        assert_eq!(
            refused(classic(&[(QUEUE_VERSION, s("2"))])),
            invalid(QUEUE_VERSION, "\"expected integer, got longstr\"")
        );
    }

    #[test]
    fn queue_type_values() {
        assert_eq!(
            ok(classic(&[(QUEUE_TYPE, s("classic"))])).queue_type,
            QueueType::Classic
        );
        assert_eq!(
            ok(classic(&[(QUEUE_TYPE, s("undefined"))])).queue_type,
            QueueType::Classic
        );
        assert_eq!(ok(quorum(&[])).queue_type, QueueType::Quorum);
        // The text RabbitMQ's quorum_queue_SUITE expects, but for queue 'q'.
        assert_eq!(
            refused(classic(&[(QUEUE_TYPE, s("fake-queue-type"))])),
            invalid(QUEUE_TYPE, "\"unsupported queue type 'fake-queue-type'\"")
        );
        assert_eq!(
            refused(classic(&[(QUEUE_TYPE, s("Quorum"))])),
            invalid(QUEUE_TYPE, "\"unsupported queue type 'Quorum'\"")
        );
        assert_eq!(
            refused(classic(&[(QUEUE_TYPE, V::LongInt(1))])),
            invalid(QUEUE_TYPE, "{unacceptable_type,signedint}")
        );
        // The type is checked before any other argument.
        assert_eq!(
            refused(classic(&[(QUEUE_TYPE, s("x")), (EXPIRES, V::LongInt(0))])),
            invalid(QUEUE_TYPE, "\"unsupported queue type 'x'\"")
        );
    }

    #[test]
    fn a_valid_stream_declaration_is_accepted_and_stored_alike() {
        let args = table(&[(QUEUE_TYPE, s("stream")), (MAX_AGE, s("1D"))]);
        let parsed = ok(parse(&args, &declare(true, false, false), "/", None));
        assert_eq!(parsed.queue_type, QueueType::Stream);
        assert_eq!(
            refused(parse(&args, &declare(false, false, false), "/", None)),
            format!("invalid property 'non-durable' for {RES}")
        );
        let bad = table(&[(QUEUE_TYPE, s("stream")), (MAX_AGE, s("1d"))]);
        assert_eq!(
            refused(parse(&bad, &declare(true, false, false), "/", None)),
            invalid(MAX_AGE, "invalid_max_age")
        );
        let stored = ok(parse_stored(&args, "q", "/", None));
        assert_eq!(stored.queue_type, QueueType::Stream);
        assert_eq!(StreamArguments::of(&args).max_age_ms, Some(86_400_000));
    }

    #[test]
    fn stream_arguments_are_recorded() {
        assert_eq!(
            ok(stream(&[])),
            QueueArguments {
                queue_type: QueueType::Stream,
                ..QueueArguments::default()
            }
        );
        assert_eq!(stream_settings(&[]), StreamArguments::default());
        let all = [
            (MAX_LENGTH_BYTES, V::LongLongInt(20_000_000_000)),
            (MAX_AGE, s("7D")),
            (STREAM_SEGMENT_SIZE, V::LongInt(100_000_000)),
            (STREAM_FILTER_SIZE, V::ShortShortUInt(32)),
            (INITIAL_CLUSTER_SIZE, V::ShortInt(3)),
            (LEADER_LOCATOR, s("balanced")),
            ("x-foo", s("stored, not checked")),
        ];
        assert_eq!(
            ok(stream(&all)),
            QueueArguments {
                queue_type: QueueType::Stream,
                max_length_bytes: Some(20_000_000_000),
                ..QueueArguments::default()
            }
        );
        assert_eq!(
            stream_settings(&all),
            StreamArguments {
                max_age_ms: Some(7 * 86_400_000),
                segment_bytes: Some(100_000_000),
                filter_bytes: Some(32),
            }
        );
        for (name, value) in each_integer(100) {
            let entries = [
                (MAX_LENGTH_BYTES, value.clone()),
                (STREAM_SEGMENT_SIZE, value.clone()),
                (STREAM_FILTER_SIZE, value.clone()),
                (INITIAL_CLUSTER_SIZE, value),
            ];
            assert_eq!(ok(stream(&entries)).max_length_bytes, Some(100), "{name}");
            let settings = stream_settings(&entries);
            assert_eq!(settings.segment_bytes, Some(100), "{name}");
            assert_eq!(settings.filter_bytes, Some(100), "{name}");
        }
        // Values the checks refuse are absent.
        let refused_values = stream_table(&[
            (MAX_AGE, s("1d")),
            (STREAM_SEGMENT_SIZE, V::LongLongInt(4_000_000_000)),
            (STREAM_FILTER_SIZE, V::LongInt(8)),
        ]);
        assert_eq!(
            StreamArguments::of(&refused_values),
            StreamArguments::default()
        );
    }

    #[test]
    fn max_age_is_a_number_and_one_unit() {
        let day = 86_400_000;
        for (text, ms) in [
            ("1Y", 365 * day),
            ("10D", 10 * day),
            ("1M", 30 * day),
            ("7D", 7 * day),
            ("12h", 12 * 3_600_000),
            ("30m", 30 * 60_000),
            ("45s", 45_000),
            ("007s", 7_000),
            // PCRE's `.` stops at a line feed: what follows one is not part of the unit.
            ("1h\nanything", 3_600_000),
        ] {
            assert_eq!(parse_max_age(text.as_bytes()), Some(ms), "{text:?}");
            assert_eq!(stream_settings(&[(MAX_AGE, s(text))]).max_age_ms, Some(ms));
        }
        assert_eq!(
            parse_max_age(b"99999999999999999999999999Y"),
            Some(u64::MAX)
        );
        for text in [
            "1A", "D", "", "0D", "000h", "1.5h", "1d", "1H", "1hh", "1 h", " 1h", "+1h", "-1h",
            "h1", "1\nh", "1h\r",
        ] {
            assert_eq!(parse_max_age(text.as_bytes()), None, "{text:?}");
            assert_eq!(
                refused(stream(&[(MAX_AGE, s(text))])),
                invalid(MAX_AGE, "invalid_max_age"),
                "{text:?}"
            );
        }
        // Only a longstr: RabbitMQ's check_max_age_arg takes no other type.
        for (name, value) in each_integer(1).into_iter().chain(each_non_integer()) {
            if name == "longstr" {
                continue;
            }
            assert_eq!(
                refused(stream(&[(MAX_AGE, value)])),
                invalid(MAX_AGE, &format!("{{unacceptable_type,{name}}}")),
                "{name}"
            );
        }
    }

    #[test]
    fn stream_sizes_are_non_negative_integers() {
        for key in [MAX_LENGTH_BYTES, STREAM_SEGMENT_SIZE, STREAM_FILTER_SIZE] {
            assert_eq!(
                refused(stream(&[(key, V::LongInt(-5))])),
                invalid(key, "{value_negative,-5}")
            );
            for (name, value) in each_non_integer() {
                assert_eq!(
                    refused(stream(&[(key, value)])),
                    invalid(key, &format!("\"expected integer, got {name}\"")),
                    "{key} {name}"
                );
            }
        }
        // The facts note's example, for queue 'q'.
        assert_eq!(
            refused(stream(&[(MAX_LENGTH_BYTES, V::LongInt(-5))])),
            format!("invalid arg 'x-max-length-bytes' for {RES}: {{value_negative,-5}}")
        );
        assert_eq!(
            stream_settings(&[(STREAM_SEGMENT_SIZE, V::LongInt(0))]).segment_bytes,
            Some(0)
        );
    }

    #[test]
    fn segment_size_is_at_most_three_gigabytes() {
        let size = |n: i64| stream(&[(STREAM_SEGMENT_SIZE, V::LongLongInt(n))]);
        assert_eq!(
            stream_settings(&[(STREAM_SEGMENT_SIZE, V::LongLongInt(3_000_000_000))]).segment_bytes,
            Some(3_000_000_000)
        );
        for n in [3_000_000_001, i64::MAX] {
            assert_eq!(
                refused(size(n)),
                "Exceeded max value for x-stream-max-segment-size-bytes"
            );
        }
    }

    #[test]
    fn filter_size_ranges_from_16_to_255() {
        let size = |n: i32| stream(&[(STREAM_FILTER_SIZE, V::LongInt(n))]);
        for n in [16, 255] {
            let settings = stream_settings(&[(STREAM_FILTER_SIZE, V::LongInt(n))]);
            assert_eq!(settings.filter_bytes, u8::try_from(n).ok());
        }
        for n in [0, 15, 256, 100_000] {
            assert_eq!(
                refused(size(n)),
                "Invalid value for x-stream-filter-size-bytes",
                "{n}"
            );
        }
        // The segment size is checked first.
        assert_eq!(
            refused(stream(&[
                (STREAM_FILTER_SIZE, V::LongInt(1)),
                (STREAM_SEGMENT_SIZE, V::LongLongInt(4_000_000_000))
            ])),
            "Exceeded max value for x-stream-max-segment-size-bytes"
        );
        // Stored arguments get the same checks.
        let stored = |n: i32| {
            let args = table(&[
                (QUEUE_TYPE, s("stream")),
                (STREAM_FILTER_SIZE, V::LongInt(n)),
            ]);
            parse_stored(&args, "q", "/", None)
        };
        assert!(stored(64).is_ok());
        assert_eq!(
            refused(stored(8)),
            "Invalid value for x-stream-filter-size-bytes"
        );
    }

    #[test]
    fn initial_cluster_size_and_leader_locator() {
        assert!(stream(&[(INITIAL_CLUSTER_SIZE, V::LongInt(1))]).is_ok());
        assert_eq!(
            refused(stream(&[(INITIAL_CLUSTER_SIZE, V::LongInt(0))])),
            invalid(INITIAL_CLUSTER_SIZE, "{value_zero,0}")
        );
        assert_eq!(
            refused(stream(&[(INITIAL_CLUSTER_SIZE, V::LongInt(-1))])),
            invalid(INITIAL_CLUSTER_SIZE, "{value_negative,-1}")
        );
        assert_eq!(
            refused(stream(&[(INITIAL_CLUSTER_SIZE, s("3"))])),
            invalid(INITIAL_CLUSTER_SIZE, "\"expected integer, got longstr\"")
        );
        for locator in ["client-local", "balanced", "random", "least-leaders"] {
            assert!(stream(&[(LEADER_LOCATOR, s(locator))]).is_ok(), "{locator}");
        }
        assert_eq!(
            refused(stream(&[(LEADER_LOCATOR, s("nearest"))])),
            invalid(LEADER_LOCATOR, "invalid_queue_locator_arg")
        );
        assert_eq!(
            refused(stream(&[(LEADER_LOCATOR, V::Boolean(true))])),
            invalid(LEADER_LOCATOR, "{unacceptable_type,bool}")
        );
    }

    #[test]
    fn stream_arguments_follow_rabbitmq_order() {
        // declare_args/0: x-max-length-bytes, x-max-age, the segment size, the filter
        // size, x-initial-cluster-size, x-queue-leader-locator.
        let bad = [
            (LEADER_LOCATOR, s("nearest")),
            (INITIAL_CLUSTER_SIZE, V::LongInt(0)),
            (STREAM_FILTER_SIZE, V::LongInt(-1)),
            (STREAM_SEGMENT_SIZE, V::LongInt(-1)),
            (MAX_AGE, s("1d")),
            (MAX_LENGTH_BYTES, V::LongInt(-1)),
        ];
        for (i, (key, _)) in bad.iter().enumerate().rev() {
            let text = refused(stream(&bad[..=i]));
            assert!(text.starts_with(&format!("invalid arg '{key}'")), "{text}");
        }
        // Values before membership, membership before the flags and the limits.
        assert_eq!(
            refused(stream(&[
                (MAX_LENGTH, V::LongInt(1)),
                (MAX_AGE, V::LongInt(1))
            ])),
            invalid(MAX_AGE, "{unacceptable_type,signedint}")
        );
        assert_eq!(
            refused(stream_declared(
                &[
                    (MAX_LENGTH, V::LongInt(1)),
                    (STREAM_SEGMENT_SIZE, V::LongLongInt(4_000_000_000))
                ],
                &declare(false, false, false)
            )),
            format!("invalid arg 'x-max-length' for {RES} of queue type rabbit_stream_queue")
        );
        assert_eq!(
            refused(stream_declared(
                &[(STREAM_SEGMENT_SIZE, V::LongLongInt(4_000_000_000))],
                &declare(false, false, false)
            )),
            format!("invalid property 'non-durable' for {RES}")
        );
    }

    #[test]
    fn streams_must_be_durable_and_shared() {
        let text = |d: QueueDeclare| refused(stream_declared(&[], &d));
        assert!(stream_declared(&[], &declare(true, false, false)).is_ok());
        assert_eq!(
            text(declare(true, false, true)),
            format!("invalid property 'auto-delete' for {RES}")
        );
        assert_eq!(
            text(declare(true, true, false)),
            format!("invalid property 'exclusive-owner' for {RES}")
        );
        assert_eq!(
            text(declare(false, false, false)),
            format!("invalid property 'non-durable' for {RES}")
        );
        // RabbitMQ's order: auto-delete, then exclusive, then durability.
        assert_eq!(
            text(declare(false, true, true)),
            format!("invalid property 'auto-delete' for {RES}")
        );
        assert_eq!(
            text(declare(false, true, false)),
            format!("invalid property 'exclusive-owner' for {RES}")
        );
        // Flags are not rechecked on recovery.
        let args = table(&[(QUEUE_TYPE, s("stream"))]);
        assert!(parse_stored(&args, "q", "/", None).is_ok());
    }

    #[test]
    fn other_queue_types_arguments_are_refused_on_streams() {
        let other =
            |key: &str| format!("invalid arg '{key}' for {RES} of queue type rabbit_stream_queue");
        for (key, value) in [
            (MAX_LENGTH, V::LongInt(10)),
            (MESSAGE_TTL, V::LongInt(10)),
            (EXPIRES, V::LongInt(10)),
            (DLX, s("dlx")),
            (DLX_ROUTING_KEY, s("rk")),
            (DLX_STRATEGY, s("at-most-once")),
            (OVERFLOW, s("reject-publish")),
            (SINGLE_ACTIVE_CONSUMER, V::Boolean(true)),
            (MAX_PRIORITY, V::LongInt(5)),
            (QUEUE_MODE, s("lazy")),
            (QUEUE_VERSION, V::LongInt(2)),
            ("x-queue-master-locator", s("min-masters")),
            (MAX_IN_MEMORY_LENGTH, V::LongInt(1)),
            (MAX_IN_MEMORY_BYTES, V::LongInt(1)),
            (DELIVERY_LIMIT, V::LongInt(1)),
            (INITIAL_GROUP_SIZE, V::LongInt(1)),
            // A partition of a stream has one owner per group.
            (CONSUMERS_PER_PARTITION, V::LongInt(2)),
        ] {
            assert_eq!(refused(stream(&[(key, value)])), other(key), "{key}");
        }
        // The text of RabbitMQ's test, for queue 'q'.
        assert_eq!(
            refused(stream(&[(OVERFLOW, s("drop-head"))])),
            format!("invalid arg 'x-overflow' for {RES} of queue type rabbit_stream_queue")
        );
        // rabbit_channel's check of a dead-letter exchange's type comes first.
        assert_eq!(
            refused(stream(&[(DLX, V::LongInt(1))])),
            format!("invalid type 'signedint' for arg '{DLX}' in {RES}")
        );
        // The stream arguments are refused on the other types.
        for key in [
            MAX_AGE,
            STREAM_SEGMENT_SIZE,
            STREAM_FILTER_SIZE,
            INITIAL_CLUSTER_SIZE,
        ] {
            assert_eq!(
                refused(classic(&[(key, V::LongInt(20))])),
                format!("invalid arg '{key}' for {RES} of queue type rabbit_classic_queue")
            );
            assert_eq!(
                refused(quorum(&[(key, V::LongInt(20))])),
                format!("invalid arg '{key}' for {RES} of queue type rabbit_quorum_queue")
            );
        }
    }

    #[test]
    fn server_named_queues_must_be_classic() {
        let mut d = declare(true, false, false);
        d.server_named = true;
        assert!(parse(&FieldTable::default(), &d, "/", None).is_ok());
        assert_eq!(
            refused(parse(&table(&[(QUEUE_TYPE, s("quorum"))]), &d, "/", None)),
            "Cannot declare a server-named queue for type rabbit_quorum_queue"
        );
        assert_eq!(
            refused(parse(&table(&[(QUEUE_TYPE, s("stream"))]), &d, "/", None)),
            "Cannot declare a server-named queue for type rabbit_stream_queue"
        );
    }

    #[test]
    fn quorum_queues_must_be_durable_and_shared() {
        let args = table(&[(QUEUE_TYPE, s("quorum"))]);
        let text = |d: QueueDeclare| refused(parse(&args, &d, "/", None));
        assert!(parse(&args, &declare(true, false, false), "/", None).is_ok());
        assert_eq!(
            text(declare(true, false, true)),
            format!("invalid property 'auto-delete' for {RES}")
        );
        assert_eq!(
            text(declare(true, true, false)),
            format!("invalid property 'exclusive-owner' for {RES}")
        );
        assert_eq!(
            text(declare(false, false, false)),
            format!("invalid property 'non-durable' for {RES}")
        );
        // RabbitMQ's order: auto-delete, then exclusive, then durability.
        assert_eq!(
            text(declare(false, true, true)),
            format!("invalid property 'auto-delete' for {RES}")
        );
        assert_eq!(
            text(declare(false, true, false)),
            format!("invalid property 'exclusive-owner' for {RES}")
        );
        // Argument errors come first.
        let bad = table(&[(QUEUE_TYPE, s("quorum")), (MAX_LENGTH, V::LongLongInt(-5))]);
        assert_eq!(
            refused(parse(&bad, &declare(false, false, false), "/", None)),
            invalid(MAX_LENGTH, "{value_negative,-5}")
        );
        // Flags are not rechecked on recovery.
        assert!(parse_stored(&args, "q", "/", None).is_ok());
    }

    #[test]
    fn arguments_of_another_queue_type_are_refused() {
        let other = |key: &str, module: &str| {
            format!("invalid arg '{key}' for {RES} of queue type {module}")
        };
        // The texts of RabbitMQ's quorum_queue_SUITE (declare_invalid_arg_1 and _3).
        assert_eq!(
            refused(quorum(&[(QUEUE_MODE, s("default"))])),
            other(QUEUE_MODE, "rabbit_quorum_queue")
        );
        for key in [
            MAX_PRIORITY,
            QUEUE_VERSION,
            "x-queue-master-locator",
            "x-max-age",
        ] {
            assert_eq!(
                refused(quorum(&[(key, V::LongInt(5))])),
                other(key, "rabbit_quorum_queue")
            );
        }
        for key in [
            DELIVERY_LIMIT,
            DLX_STRATEGY,
            INITIAL_GROUP_SIZE,
            LEADER_LOCATOR,
            MAX_IN_MEMORY_LENGTH,
            MAX_IN_MEMORY_BYTES,
            "x-max-age",
            "x-stream-max-segment-size-bytes",
            "x-initial-cluster-size",
        ] {
            assert_eq!(
                refused(classic(&[(key, s("whatever"))])),
                other(key, "rabbit_classic_queue")
            );
        }
        // Values are checked before membership.
        assert_eq!(
            refused(quorum(&[
                (MAX_PRIORITY, V::LongInt(5)),
                (MESSAGE_TTL, V::LongInt(-1))
            ])),
            invalid(MESSAGE_TTL, "{value_negative,-1}")
        );
    }

    #[test]
    fn quorum_only_arguments() {
        let parsed = ok(quorum(&[
            (DELIVERY_LIMIT, V::ShortShortUInt(5)),
            (INITIAL_GROUP_SIZE, V::LongInt(3)),
            (LEADER_LOCATOR, s("balanced")),
            (MAX_IN_MEMORY_LENGTH, V::LongInt(0)),
            (MAX_IN_MEMORY_BYTES, V::LongInt(10)),
        ]));
        assert_eq!(parsed.delivery_limit, Some(5));
        assert_eq!(ok(quorum(&[])).delivery_limit, Some(20));
        // RabbitMQ does not validate x-delivery-limit; a negative one means unlimited (4.x).
        assert_eq!(
            ok(quorum(&[(DELIVERY_LIMIT, V::LongInt(-1))])).delivery_limit,
            None
        );
        assert_eq!(
            ok(quorum(&[(DELIVERY_LIMIT, s("5"))])).delivery_limit,
            Some(20)
        );
        assert_eq!(
            refused(quorum(&[(INITIAL_GROUP_SIZE, V::LongInt(0))])),
            invalid(INITIAL_GROUP_SIZE, "{value_zero,0}")
        );
        assert_eq!(
            refused(quorum(&[(INITIAL_GROUP_SIZE, V::LongInt(-2))])),
            invalid(INITIAL_GROUP_SIZE, "{value_negative,-2}")
        );
        assert_eq!(
            refused(quorum(&[(LEADER_LOCATOR, s("nearest"))])),
            invalid(LEADER_LOCATOR, "invalid_queue_locator_arg")
        );
        assert_eq!(
            refused(quorum(&[(LEADER_LOCATOR, V::LongInt(1))])),
            invalid(LEADER_LOCATOR, "{unacceptable_type,signedint}")
        );
        assert_eq!(
            refused(quorum(&[(MAX_IN_MEMORY_BYTES, V::LongInt(-1))])),
            invalid(MAX_IN_MEMORY_BYTES, "{value_negative,-1}")
        );
        assert_eq!(
            refused(quorum(&[(DLX_STRATEGY, s("exactly-once"))])),
            invalid(DLX_STRATEGY, "invalid_dlx_strategy")
        );
        assert_eq!(
            refused(quorum(&[(DLX_STRATEGY, V::Boolean(true))])),
            invalid(DLX_STRATEGY, "{unacceptable_type,bool}")
        );
    }

    #[test]
    fn quorum_fallbacks_match_rabbitmq() {
        // reject-publish-dlx is accepted but runs as drop-head.
        let parsed = ok(quorum(&[(OVERFLOW, s("reject-publish-dlx"))]));
        assert_eq!(parsed.overflow, Overflow::DropHead);
        assert_eq!(
            ok(quorum(&[(OVERFLOW, s("reject-publish"))])).overflow,
            Overflow::RejectPublish
        );
        // at-least-once needs a dead-letter exchange and reject-publish.
        let strategy = |entries: &[(&str, V)]| ok(quorum(entries)).dead_letter_strategy;
        let alo = (DLX_STRATEGY, s("at-least-once"));
        assert_eq!(
            strategy(std::slice::from_ref(&alo)),
            DeadLetterStrategy::AtMostOnce
        );
        assert_eq!(
            strategy(&[alo.clone(), (DLX, s("dlx"))]),
            DeadLetterStrategy::AtMostOnce
        );
        assert_eq!(
            strategy(&[alo, (DLX, s("dlx")), (OVERFLOW, s("reject-publish"))]),
            DeadLetterStrategy::AtLeastOnce
        );
    }

    #[test]
    fn validation_follows_rabbitmq_order() {
        // declare_args/0 checks x-expires before x-message-ttl, whatever the table order.
        assert_eq!(
            refused(classic(&[(MESSAGE_TTL, s("a")), (EXPIRES, s("b"))])),
            invalid(EXPIRES, "\"expected integer, got longstr\"")
        );
        assert_eq!(
            refused(classic(&[
                (SINGLE_ACTIVE_CONSUMER, s("a")),
                (MAX_LENGTH, s("b"))
            ])),
            invalid(MAX_LENGTH, "\"expected integer, got longstr\"")
        );
    }

    #[test]
    fn queue_type_of_stored_arguments() {
        assert_eq!(QueueType::of(&FieldTable::default()), QueueType::Classic);
        assert_eq!(
            QueueType::of(&table(&[(QUEUE_TYPE, s("quorum"))])),
            QueueType::Quorum
        );
        assert_eq!(
            QueueType::of(&table(&[(QUEUE_TYPE, s("stream"))])),
            QueueType::Stream
        );
        assert_eq!(
            QueueType::of(&table(&[(QUEUE_TYPE, V::LongInt(1))])),
            QueueType::Classic
        );
        assert!(QueueType::Classic.allows_server_named());
        assert!(!QueueType::Quorum.allows_server_named());
        assert_eq!(QueueType::Quorum.to_string(), "quorum");
    }

    fn equivalent(current: &[(&str, V)], requested: &[(&str, V)]) -> AmqpResult<()> {
        assert_equivalent(&table(current), &table(requested), None, "q", "/")
    }

    fn inequivalent(key: &str, received: &str, current: &str) -> String {
        format!("inequivalent arg '{key}' for {RES}: received {received} but current is {current}")
    }

    #[test]
    fn equivalence_names_the_missing_side() {
        assert_eq!(
            refused(equivalent(&[], &[(MESSAGE_TTL, V::LongInt(2000))])),
            inequivalent(MESSAGE_TTL, "the value '2000' of type 'signedint'", "none")
        );
        assert_eq!(
            refused(equivalent(&[(MESSAGE_TTL, V::LongLongInt(2000))], &[])),
            inequivalent(MESSAGE_TTL, "none", "the value '2000' of type 'long'")
        );
        assert_eq!(
            refused(equivalent(&[], &[(DLX, s("dlx"))])),
            inequivalent(DLX, "the value 'dlx' of type 'longstr'", "none")
        );
        assert_eq!(
            refused(equivalent(
                &[],
                &[(SINGLE_ACTIVE_CONSUMER, V::Boolean(true))]
            )),
            inequivalent(
                SINGLE_ACTIVE_CONSUMER,
                "the value 'true' of type 'bool'",
                "none"
            )
        );
        assert_eq!(
            refused(equivalent(&[], &[(MAX_PRIORITY, V::Double(2.0))])),
            inequivalent(MAX_PRIORITY, "the value '2.0' of type 'double'", "none")
        );
        // A quorum queue redeclared without its type: the common mistake.
        assert_eq!(
            refused(equivalent(&[(QUEUE_TYPE, s("quorum"))], &[])),
            inequivalent(QUEUE_TYPE, "none", "the value 'quorum' of type 'longstr'")
        );
    }

    #[test]
    fn equivalence_shows_both_values_when_both_are_present() {
        assert_eq!(
            refused(equivalent(
                &[(MESSAGE_TTL, V::LongInt(1000))],
                &[(MESSAGE_TTL, V::LongInt(2000))]
            )),
            inequivalent(MESSAGE_TTL, "'2000'", "'1000'")
        );
        assert_eq!(
            refused(equivalent(&[(DLX, s("a"))], &[(DLX, s("b"))])),
            inequivalent(DLX, "'b'", "'a'")
        );
        // Integer and float never match, even with equal values.
        assert_eq!(
            refused(equivalent(
                &[(MESSAGE_TTL, V::LongInt(1000))],
                &[(MESSAGE_TTL, V::Double(1000.0))]
            )),
            inequivalent(MESSAGE_TTL, "'1.0e3'", "'1000'")
        );
        assert_eq!(
            refused(equivalent(
                &[(MESSAGE_TTL, V::LongInt(5))],
                &[(MESSAGE_TTL, s("5"))]
            )),
            inequivalent(MESSAGE_TTL, "'5'", "'5'")
        );
        // decimal is in the integer class, but its value is a pair.
        assert_eq!(
            refused(equivalent(
                &[(
                    MAX_LENGTH,
                    V::DecimalValue(DecimalValue {
                        scale: 2,
                        value: 100
                    })
                )],
                &[(MAX_LENGTH, V::LongInt(100))]
            )),
            inequivalent(MAX_LENGTH, "'100'", "'{2,100}'")
        );
        assert_eq!(
            refused(equivalent(
                &[(QUEUE_TYPE, s("quorum"))],
                &[(QUEUE_TYPE, s("classic"))]
            )),
            inequivalent(QUEUE_TYPE, "'classic'", "'quorum'")
        );
    }

    #[test]
    fn equivalence_accepts_equal_values_across_widths() {
        for (_, current) in each_integer(7) {
            for (_, requested) in each_integer(7) {
                assert!(
                    equivalent(&[(MAX_LENGTH, current.clone())], &[(MAX_LENGTH, requested)])
                        .is_ok()
                );
            }
        }
        assert!(
            equivalent(
                &[(MESSAGE_TTL, V::Float(1.5))],
                &[(MESSAGE_TTL, V::Double(1.5))]
            )
            .is_ok()
        );
        // Different classes with identical Erlang values pass (rabbit_misc's second check).
        assert!(
            equivalent(
                &[(MAX_LENGTH, V::Timestamp(5))],
                &[(MAX_LENGTH, V::LongInt(5))]
            )
            .is_ok()
        );
        assert!(
            equivalent(
                &[(DLX, s("dlx"))],
                &[(DLX, V::ByteArray(ByteArray::from(b"dlx".to_vec())))]
            )
            .is_ok()
        );
        let args = [
            (MESSAGE_TTL, V::LongInt(1)),
            (DLX, s("")),
            (SINGLE_ACTIVE_CONSUMER, V::Boolean(false)),
        ];
        assert!(equivalent(&args, &args).is_ok());
    }

    #[test]
    fn equivalence_compares_only_the_existing_types_arguments() {
        // A missing x-queue-type and "classic" are the same.
        assert!(equivalent(&[], &[(QUEUE_TYPE, s("classic"))]).is_ok());
        assert!(equivalent(&[(QUEUE_TYPE, s("classic"))], &[]).is_ok());
        // Arguments outside the type's list may differ.
        assert!(
            equivalent(
                &[("x-custom", V::LongInt(1))],
                &[("x-custom", V::LongInt(2))]
            )
            .is_ok()
        );
        assert!(equivalent(&[(CONSUMER_TIMEOUT, V::LongInt(1))], &[]).is_ok());
        assert!(equivalent(&[(DELIVERY_LIMIT, V::LongInt(1))], &[]).is_ok());
        let q = (QUEUE_TYPE, s("quorum"));
        assert!(
            equivalent(
                std::slice::from_ref(&q),
                &[q.clone(), (MAX_PRIORITY, V::LongInt(5))]
            )
            .is_ok()
        );
        assert_eq!(
            refused(equivalent(
                std::slice::from_ref(&q),
                &[q.clone(), (DELIVERY_LIMIT, V::LongInt(5))]
            )),
            inequivalent(DELIVERY_LIMIT, "the value '5' of type 'signedint'", "none")
        );
        // The first differing argument in the type's order is reported.
        assert_eq!(
            refused(equivalent(
                &[],
                &[
                    (SINGLE_ACTIVE_CONSUMER, V::Boolean(true)),
                    (EXPIRES, V::LongInt(1))
                ]
            )),
            inequivalent(EXPIRES, "the value '1' of type 'signedint'", "none")
        );
        assert_eq!(
            refused(equivalent(
                std::slice::from_ref(&q),
                &[q.clone(), (EXPIRES, V::LongInt(1)), (DLX, s("x"))]
            )),
            inequivalent(DLX, "the value 'x' of type 'longstr'", "none")
        );
    }

    #[test]
    fn a_streams_redeclaration_compares_its_seven_arguments() {
        let current = [
            (QUEUE_TYPE, s("stream")),
            (MAX_AGE, s("1D")),
            (MAX_LENGTH_BYTES, V::LongInt(1000)),
            (STREAM_FILTER_SIZE, V::ShortShortUInt(32)),
        ];
        assert!(equivalent(&current, &current).is_ok());
        let with = |key: &str, value: V| {
            let mut requested = current.to_vec();
            requested.retain(|(k, _)| *k != key);
            requested.push((key, value));
            equivalent(&current, &requested)
        };
        assert_eq!(
            refused(with(MAX_AGE, s("7D"))),
            inequivalent(MAX_AGE, "'7D'", "'1D'")
        );
        // Integer widths do not matter.
        assert!(with(MAX_LENGTH_BYTES, V::LongLongInt(1000)).is_ok());
        assert_eq!(
            refused(with(STREAM_FILTER_SIZE, V::LongInt(64))),
            inequivalent(STREAM_FILTER_SIZE, "'64'", "'32'")
        );
        for key in [STREAM_SEGMENT_SIZE, INITIAL_CLUSTER_SIZE] {
            assert_eq!(
                refused(with(key, V::LongInt(3))),
                inequivalent(key, "the value '3' of type 'signedint'", "none")
            );
        }
        assert_eq!(
            refused(with(LEADER_LOCATOR, s("balanced"))),
            inequivalent(
                LEADER_LOCATOR,
                "the value 'balanced' of type 'longstr'",
                "none"
            )
        );
        // Any other argument is ignored, x-max-length included; a partition count
        // other than the stream's is refused, as on partitioned queues.
        assert!(with(MAX_LENGTH, V::LongInt(1)).is_ok());
        assert!(with(PARTITIONS, V::LongInt(4)).is_err());
    }

    #[test]
    fn a_stream_redeclared_without_its_type_is_compared_with_classic() {
        // RabbitMQ 4's channel adds x-queue-type: classic when a declaration has none,
        // so both sides hold a value: untyped texts.
        let text = inequivalent(QUEUE_TYPE, "'classic'", "'stream'");
        let current = [(QUEUE_TYPE, s("stream")), (MAX_AGE, s("1D"))];
        assert_eq!(refused(equivalent(&current, &[(MAX_AGE, s("1D"))])), text);
        assert_eq!(refused(equivalent(&current, &[])), text);
        assert_eq!(
            refused(equivalent(&current, &[(QUEUE_TYPE, s("classic"))])),
            text
        );
        assert_eq!(
            refused(equivalent(&current, &[(QUEUE_TYPE, s("quorum"))])),
            inequivalent(QUEUE_TYPE, "'quorum'", "'stream'")
        );
        // The mirror case.
        assert_eq!(
            refused(equivalent(&[], &[(QUEUE_TYPE, s("stream"))])),
            inequivalent(QUEUE_TYPE, "the value 'stream' of type 'longstr'", "none")
        );
        assert_eq!(
            refused(equivalent(
                &[(QUEUE_TYPE, s("classic"))],
                &[(QUEUE_TYPE, s("stream"))]
            )),
            inequivalent(QUEUE_TYPE, "'stream'", "'classic'")
        );
        // Quorum queues keep RabbitMQ 3.13's text (equivalence_names_the_missing_side).
        assert_eq!(
            refused(equivalent(&[(QUEUE_TYPE, s("quorum"))], &[])),
            inequivalent(QUEUE_TYPE, "none", "the value 'quorum' of type 'longstr'")
        );
    }

    #[test]
    fn equivalence_prints_nested_values_as_erlang_terms() {
        let mut inner = FieldTable::default();
        inner.insert("a".into(), V::LongLongInt(1));
        inner.insert("b".into(), s("x\"y"));
        let array = FieldArray::from(vec![V::Boolean(true), V::Void, V::Float(1.5)]);
        assert_eq!(
            refused(equivalent(&[], &[(DLX, V::FieldTable(inner))])),
            inequivalent(
                DLX,
                "the value '[{<<\"a\">>,long,1},{<<\"b\">>,longstr,<<\"x\\\"y\">>}]' of type 'table'",
                "none"
            )
        );
        assert_eq!(
            refused(equivalent(&[], &[(DLX, V::FieldArray(array))])),
            inequivalent(
                DLX,
                "the value '[{bool,true},{void,undefined},{float,1.5}]' of type 'array'",
                "none"
            )
        );
        assert_eq!(
            refused(equivalent(&[], &[(DLX, V::Void)])),
            inequivalent(DLX, "the value 'undefined' of type 'void'", "none")
        );
    }

    fn consume(entries: &[(&str, V)], queue_type: QueueType) -> AmqpResult<ConsumerArguments> {
        consumer(&table(entries), queue_type, None, "q", "/")
    }

    #[test]
    fn consumer_priority_takes_any_integer() {
        assert_eq!(
            ok(consume(&[], QueueType::Classic)),
            ConsumerArguments::default()
        );
        for (name, value) in each_integer(-3) {
            let expected = if name.starts_with("unsigned") { 0 } else { -3 };
            let parsed = ok(consume(&[(PRIORITY, value)], QueueType::Quorum));
            assert_eq!(parsed.priority, expected, "{name}");
        }
        let high = ok(consume(
            &[(PRIORITY, V::LongLongInt(i64::MAX))],
            QueueType::Classic,
        ));
        assert_eq!(high.priority, i32::MAX);
        let low = ok(consume(
            &[(PRIORITY, V::LongLongInt(i64::MIN))],
            QueueType::Classic,
        ));
        assert_eq!(low.priority, i32::MIN);
        // RabbitMQ's quorum_queue_SUITE consume_invalid_arg_2, for queue 'q'.
        assert_eq!(
            refused(consume(&[(PRIORITY, s("important"))], QueueType::Quorum)),
            invalid(PRIORITY, "\"expected integer, got longstr\"")
        );
        for (name, value) in each_non_integer() {
            assert_eq!(
                refused(consume(&[(PRIORITY, value)], QueueType::Classic)),
                invalid(PRIORITY, &format!("\"expected integer, got {name}\""))
            );
        }
    }

    #[test]
    fn consumer_timeout_is_a_non_negative_integer() {
        for (name, value) in each_integer(9) {
            let parsed = ok(consume(&[(CONSUMER_TIMEOUT, value)], QueueType::Classic));
            assert_eq!(parsed.timeout_ms, Some(9), "{name}");
        }
        let parsed = ok(consume(
            &[(CONSUMER_TIMEOUT, V::LongInt(0))],
            QueueType::Quorum,
        ));
        assert_eq!(parsed.timeout_ms, Some(0));
        assert_eq!(
            refused(consume(
                &[(CONSUMER_TIMEOUT, V::LongInt(-1))],
                QueueType::Quorum
            )),
            invalid(CONSUMER_TIMEOUT, "{value_negative,-1}")
        );
        assert_eq!(
            refused(consume(
                &[(CONSUMER_TIMEOUT, V::Double(5.0))],
                QueueType::Classic
            )),
            invalid(CONSUMER_TIMEOUT, "\"expected integer, got double\"")
        );
    }

    #[test]
    fn consumer_arguments_of_another_queue_type_are_refused() {
        // RabbitMQ's quorum_queue_SUITE consume_invalid_arg_1, for queue 'q'.
        assert_eq!(
            refused(consume(
                &[("x-stream-offset", s("last"))],
                QueueType::Quorum
            )),
            format!("invalid arg 'x-stream-offset' for {RES} of queue type rabbit_quorum_queue")
        );
        assert_eq!(
            refused(consume(
                &[("x-stream-offset", s("last"))],
                QueueType::Classic
            )),
            format!("invalid arg 'x-stream-offset' for {RES} of queue type rabbit_classic_queue")
        );
        assert_eq!(
            refused(consume(
                &[(CANCEL_ON_HA_FAILOVER, V::Boolean(true))],
                QueueType::Quorum
            )),
            format!(
                "invalid arg '{CANCEL_ON_HA_FAILOVER}' for {RES} of queue type rabbit_quorum_queue"
            )
        );
        assert!(
            consume(
                &[(CANCEL_ON_HA_FAILOVER, V::Boolean(true))],
                QueueType::Classic
            )
            .is_ok()
        );
        assert_eq!(
            refused(consume(
                &[(CANCEL_ON_HA_FAILOVER, s("yes"))],
                QueueType::Classic
            )),
            invalid(CANCEL_ON_HA_FAILOVER, "{unacceptable_type,longstr}")
        );
        assert!(
            consume(
                &[("x-credit", V::Boolean(true)), ("x-other", s("a"))],
                QueueType::Quorum
            )
            .is_ok()
        );
    }

    fn offset(value: V) -> AmqpResult<Option<StreamOffset>> {
        consume(&[(STREAM_OFFSET, value)], QueueType::Stream).map(|c| c.stream_offset)
    }

    #[test]
    fn stream_offsets_follow_rabbitmq() {
        assert_eq!(ok(consume(&[], QueueType::Stream)).stream_offset, None);
        for (text, spec) in [
            ("first", StreamOffset::First),
            ("last", StreamOffset::Last),
            ("next", StreamOffset::Next),
        ] {
            assert_eq!(ok(offset(s(text))), Some(spec));
            let bytes = V::ByteArray(ByteArray::from(text.as_bytes().to_vec()));
            assert_eq!(ok(offset(bytes)), Some(spec));
            let short = V::ShortString(text.into());
            assert_eq!(ok(offset(short)), Some(spec));
        }
        for (name, value) in each_integer(5) {
            assert_eq!(ok(offset(value)), Some(StreamOffset::Offset(5)), "{name}");
        }
        for (name, value) in each_integer(-5) {
            let expected = if name.starts_with("unsigned") {
                StreamOffset::Offset(0)
            } else {
                StreamOffset::First
            };
            assert_eq!(ok(offset(value)), Some(expected), "{name}");
        }
        assert_eq!(
            ok(offset(V::LongLongInt(i64::MAX))),
            Some(StreamOffset::Offset(i64::MAX.unsigned_abs()))
        );
        // A timestamp is in seconds.
        assert_eq!(
            ok(offset(V::Timestamp(1_700_000_000))),
            Some(StreamOffset::Timestamp(1_700_000_000_000))
        );
        assert_eq!(
            ok(offset(V::Timestamp(u64::MAX))),
            Some(StreamOffset::Timestamp(u64::MAX))
        );
        // Another string is an interval back from now, read as x-max-age is.
        assert_eq!(ok(offset(s("1h"))), Some(StreamOffset::Interval(3_600_000)));
        assert_eq!(
            ok(offset(s("30m"))),
            Some(StreamOffset::Interval(1_800_000))
        );
    }

    #[test]
    fn invalid_stream_offsets_are_refused_with_the_value() {
        let reason = |term: &str| {
            invalid(
                STREAM_OFFSET,
                &format!("{{invalid_stream_offset_arg,{term}}}"),
            )
        };
        // The text of the facts note, for queue 'q'.
        assert_eq!(
            refused(offset(s("foo"))),
            format!(
                "invalid arg 'x-stream-offset' for {RES}: {{invalid_stream_offset_arg,{{longstr,<<\"foo\">>}}}}"
            )
        );
        for text in ["100", "0s", "1H", "", "First", "1h "] {
            assert_eq!(
                refused(offset(s(text))),
                reason(&format!(
                    "{{longstr,{}}}",
                    erlang::latin1_binary(text.as_bytes())
                )),
                "{text:?}"
            );
        }
        // ~p prints a binary's bytes as latin-1.
        assert_eq!(refused(offset(s("é"))), reason("{longstr,<<\"Ã©\">>}"));
        let control = V::LongString(LongString::from(vec![1_u8, 2]));
        assert_eq!(refused(offset(control)), reason("{longstr,<<1,2>>}"));
        // Types RabbitMQ lets through its validator (then fails on): our choice.
        let cases = [
            (V::Boolean(true), "{bool,true}"),
            (V::Double(1.5), "{double,1.5}"),
            (V::Float(2.0), "{float,2.0}"),
            (
                V::DecimalValue(DecimalValue {
                    scale: 2,
                    value: 100,
                }),
                "{decimal,{2,100}}",
            ),
            (V::Void, "{void,undefined}"),
            (
                V::ByteArray(ByteArray::from(b"1h".to_vec())),
                "{binary,<<\"1h\">>}",
            ),
            (
                V::FieldArray(FieldArray::from(vec![s("first")])),
                "{array,[{longstr,<<\"first\">>}]}",
            ),
            (V::FieldTable(FieldTable::default()), "{table,[]}"),
        ];
        for (value, term) in cases {
            assert_eq!(refused(offset(value)), reason(term), "{term}");
        }
    }

    #[test]
    fn stream_filters_take_strings() {
        let filter = |entries: &[(&str, V)]| {
            let parsed = ok(consume(entries, QueueType::Stream));
            let values: Vec<Vec<u8>> = parsed.stream_filter.iter().map(|v| v.to_vec()).collect();
            (values, parsed.match_unfiltered)
        };
        let none: Vec<Vec<u8>> = Vec::new();
        assert_eq!(filter(&[]), (none.clone(), false));
        assert_eq!(
            filter(&[(STREAM_FILTER, s("eu"))]),
            (vec![b"eu".to_vec()], false)
        );
        let array = V::FieldArray(FieldArray::from(vec![
            s("eu"),
            V::LongInt(1),
            V::LongString(LongString::from(vec![0xff_u8])),
            V::Boolean(true),
            s("us"),
        ]));
        assert_eq!(
            filter(&[(STREAM_FILTER, array), (MATCH_UNFILTERED, V::Boolean(true))]),
            (vec![b"eu".to_vec(), vec![0xff], b"us".to_vec()], true)
        );
        // Another type, or an array without strings, means no filter, and
        // match-unfiltered then means nothing.
        for value in [
            V::LongInt(1),
            V::Boolean(true),
            V::FieldArray(FieldArray::default()),
            V::FieldArray(FieldArray::from(vec![V::LongInt(1)])),
        ] {
            assert_eq!(
                filter(&[(STREAM_FILTER, value), (MATCH_UNFILTERED, V::Boolean(true))]),
                (none.clone(), false)
            );
        }
        // A non-boolean match-unfiltered is false, as in RabbitMQ.
        assert_eq!(
            filter(&[(STREAM_FILTER, s("eu")), (MATCH_UNFILTERED, s("true"))]),
            (vec![b"eu".to_vec()], false)
        );
        assert_eq!(
            filter(&[
                (STREAM_FILTER, s("eu")),
                (MATCH_UNFILTERED, V::Boolean(false))
            ]),
            (vec![b"eu".to_vec()], false)
        );
    }

    #[test]
    fn offset_tracking_is_a_boolean() {
        let track = |value: V| consume(&[(OFFSET_TRACKING, value)], QueueType::Stream);
        assert!(ok(track(V::Boolean(true))).track_offsets);
        assert!(!ok(track(V::Boolean(false))).track_offsets);
        assert!(!ok(consume(&[], QueueType::Stream)).track_offsets);
        assert_eq!(
            refused(track(s("true"))),
            invalid(OFFSET_TRACKING, "{unacceptable_type,longstr}")
        );
        assert_eq!(
            refused(track(V::ShortShortUInt(1))),
            invalid(OFFSET_TRACKING, "{unacceptable_type,unsignedbyte}")
        );
    }

    #[test]
    fn stream_consumer_arguments_belong_to_streams() {
        let other = |key: &str, queue_type: QueueType| {
            format!(
                "invalid arg '{key}' for {RES} of queue type {}",
                queue_type.module()
            )
        };
        // RabbitMQ's stream_SUITE: x-priority on a stream.
        assert_eq!(
            refused(consume(&[(PRIORITY, V::LongInt(1))], QueueType::Stream)),
            format!("invalid arg 'x-priority' for {RES} of queue type rabbit_stream_queue")
        );
        // Static members and group events are partitioned queues' alone.
        for (key, value) in [
            (CANCEL_ON_HA_FAILOVER, V::Boolean(true)),
            (GROUP_MEMBER, s("m")),
            (SESSION_TIMEOUT, V::LongInt(1)),
            (GROUP_NOTIFY, V::Boolean(true)),
        ] {
            assert_eq!(
                refused(consume(&[(key, value)], QueueType::Stream)),
                other(key, QueueType::Stream)
            );
        }
        // As in 3.13 to 4.2, x-consumer-timeout is ignored on a stream (4.3 refuses it).
        let timeout = ok(consume(
            &[(CONSUMER_TIMEOUT, V::LongInt(5))],
            QueueType::Stream,
        ));
        assert_eq!(timeout.timeout_ms, None);
        // The offset is validated before other types' arguments are refused.
        assert_eq!(
            refused(consume(
                &[(PRIORITY, V::LongInt(1)), (STREAM_OFFSET, s("foo"))],
                QueueType::Stream
            )),
            invalid(
                STREAM_OFFSET,
                "{invalid_stream_offset_arg,{longstr,<<\"foo\">>}}"
            )
        );
        // Groups and given partitions need a partitioned stream, as they need a
        // partitioned queue.
        for (key, value) in [(CONSUMER_GROUP, s("g")), (PARTITION, V::LongInt(0))] {
            assert_eq!(
                refused(consume(&[(key, value)], QueueType::Stream)),
                invalid(key, "\"queue is not partitioned\"")
            );
        }
        // Classic and quorum queues refuse the stream arguments, as RabbitMQ 4 does
        // (LavinMQ's tracking too: our choice).
        for queue_type in [QueueType::Classic, QueueType::Quorum] {
            for (key, value) in [
                (STREAM_OFFSET, s("first")),
                (STREAM_FILTER, s("eu")),
                (MATCH_UNFILTERED, V::Boolean(true)),
                (OFFSET_TRACKING, V::Boolean(true)),
            ] {
                assert_eq!(
                    refused(consume(&[(key, value)], queue_type)),
                    other(key, queue_type)
                );
            }
        }
        // Unknown arguments and x-credit are ignored.
        assert_eq!(
            ok(consume(
                &[("x-credit", V::Boolean(true)), ("x-other", s("a"))],
                QueueType::Stream
            )),
            ConsumerArguments::default()
        );
        let all = ok(consume(
            &[
                (STREAM_OFFSET, V::LongLongInt(42)),
                (STREAM_FILTER, s("eu")),
                (MATCH_UNFILTERED, V::Boolean(true)),
                (OFFSET_TRACKING, V::Boolean(true)),
            ],
            QueueType::Stream,
        ));
        assert_eq!(
            all,
            ConsumerArguments {
                stream_offset: Some(StreamOffset::Offset(42)),
                stream_filter: vec![Box::from(&b"eu"[..])],
                match_unfiltered: true,
                track_offsets: true,
                ..ConsumerArguments::default()
            }
        );
    }

    /// A classic queue declared with these arguments under a policy giving `policy`
    /// partitions.
    fn under_policy(entries: &[(&str, V)], policy: Option<u16>) -> AmqpResult<QueueArguments> {
        parse(&table(entries), &declare(false, false, false), "/", policy)
    }

    #[test]
    fn partitions_take_an_integer_from_1_to_4096() {
        for (name, value) in each_integer(4) {
            assert_eq!(
                ok(classic(&[(PARTITIONS, value.clone())])).partitions,
                Some(4),
                "{name}"
            );
            assert_eq!(
                ok(quorum(&[(PARTITIONS, value)])).partitions,
                Some(4),
                "{name}"
            );
        }
        assert_eq!(
            ok(classic(&[(PARTITIONS, V::ShortUInt(4096))])).partitions,
            Some(4096)
        );
        assert_eq!(ok(classic(&[])).partitions, None);
        assert_eq!(
            refused(classic(&[(PARTITIONS, s("4"))])),
            invalid(PARTITIONS, "\"expected integer, got longstr\"")
        );
        assert_eq!(
            refused(classic(&[(PARTITIONS, V::LongInt(0))])),
            invalid(PARTITIONS, "{value_zero,0}")
        );
        assert_eq!(
            refused(quorum(&[(PARTITIONS, V::LongInt(-1))])),
            invalid(PARTITIONS, "{value_negative,-1}")
        );
        assert_eq!(
            refused(classic(&[(PARTITIONS, V::LongInt(5000))])),
            invalid(PARTITIONS, "{max_value_exceeded,5000}")
        );
        assert_eq!(
            refused(classic(&[(PARTITIONS, V::LongLongInt(i64::MAX))])),
            invalid(PARTITIONS, &format!("{{max_value_exceeded,{}}}", i64::MAX))
        );
        // Streams take it too (a partitioned stream).
        let stream = table(&[(QUEUE_TYPE, s("stream")), (PARTITIONS, V::LongInt(4))]);
        let parsed = parse(&stream, &declare(true, false, false), "/", None);
        assert_eq!(ok(parsed).partitions, Some(4));
    }

    #[test]
    fn partitions_cannot_be_combined_with_single_active_consumer() {
        let sac = |on: bool| (SINGLE_ACTIVE_CONSUMER, V::Boolean(on));
        assert_eq!(
            refused(classic(&[sac(true), (PARTITIONS, V::LongInt(4))])),
            invalid(
                PARTITIONS,
                "\"x-single-active-consumer cannot be combined with x-partitions\""
            )
        );
        assert_eq!(
            refused(quorum(&[sac(true), (PARTITIONS, V::LongInt(4))])),
            invalid(
                PARTITIONS,
                "\"x-single-active-consumer cannot be combined with x-partitions\""
            )
        );
        assert_eq!(
            ok(classic(&[sac(false), (PARTITIONS, V::LongInt(4))])).partitions,
            Some(4)
        );
        // A policy's count does not apply to a single-active-consumer queue: it stays
        // plain rather than its declaration failing.
        let plain = ok(under_policy(&[sac(true)], Some(4)));
        assert_eq!(plain.partitions, None);
        assert!(plain.single_active_consumer);
    }

    #[test]
    fn the_argument_wins_over_the_policy_at_creation() {
        assert_eq!(ok(under_policy(&[], Some(4))).partitions, Some(4));
        assert_eq!(
            ok(under_policy(&[(PARTITIONS, V::LongInt(8))], Some(4))).partitions,
            Some(8)
        );
        assert_eq!(ok(under_policy(&[], None)).partitions, None);
        // An invalid argument is refused even when a policy would partition the queue.
        assert_eq!(
            refused(under_policy(&[(PARTITIONS, V::LongInt(0))], Some(4))),
            invalid(PARTITIONS, "{value_zero,0}")
        );
    }

    #[test]
    fn the_stored_count_overrides_on_recovery() {
        let stored = |entries: &[(&str, V)], n| ok(parse_stored(&table(entries), "q", "/", n));
        // Given by a policy that is gone now.
        assert_eq!(stored(&[], Some(4)).partitions, Some(4));
        assert_eq!(
            stored(&[(PARTITIONS, V::LongInt(4))], Some(4)).partitions,
            Some(4)
        );
        assert_eq!(
            stored(&[(PARTITIONS, V::LongInt(8))], Some(4)).partitions,
            Some(4)
        );
        // Definitions written before partitions existed.
        assert_eq!(
            stored(&[(PARTITIONS, V::LongInt(8))], None).partitions,
            Some(8)
        );
        assert_eq!(stored(&[], None).partitions, None);
        // The key arguments of a policy-partitioned queue come back with it.
        let keyed = stored(&[(HASH_HEADER, s("k"))], Some(4));
        assert_eq!(keyed.partition_hash, HashOn::Header(b"k".to_vec().into()));
    }

    #[test]
    fn the_hash_header_names_the_key() {
        let n = (PARTITIONS, V::LongInt(4));
        let parsed = ok(classic(&[n.clone(), (HASH_HEADER, s("customer"))]));
        assert_eq!(
            parsed.partition_hash,
            HashOn::Header(b"customer".to_vec().into())
        );
        assert_eq!(
            ok(classic(std::slice::from_ref(&n))).partition_hash,
            HashOn::RoutingKey
        );
        // A policy-partitioned queue may choose its key too.
        let policy = ok(under_policy(&[(HASH_HEADER, s("customer"))], Some(4)));
        assert_eq!(
            policy.partition_hash,
            HashOn::Header(b"customer".to_vec().into())
        );
        assert_eq!(
            refused(classic(&[n.clone(), (HASH_HEADER, V::LongLongInt(1))])),
            invalid(HASH_HEADER, "{unacceptable_type,long}")
        );
        assert_eq!(
            refused(classic(&[(HASH_HEADER, s("customer"))])),
            invalid(HASH_HEADER, "\"requires a partitioned queue\"")
        );
        assert_eq!(
            refused(classic(&[
                n,
                (HASH_HEADER, s("customer")),
                (HASH_PROPERTY, s("message_id"))
            ])),
            invalid(
                HASH_HEADER,
                "\"x-partition-hash-header and x-partition-hash-property are mutually exclusive\""
            )
        );
    }

    #[test]
    fn the_hash_property_is_one_of_three() {
        let n = (PARTITIONS, V::LongInt(4));
        for (text, property) in [
            ("message_id", HashProperty::MessageId),
            ("correlation_id", HashProperty::CorrelationId),
            ("timestamp", HashProperty::Timestamp),
        ] {
            let parsed = ok(quorum(&[n.clone(), (HASH_PROPERTY, s(text))]));
            assert_eq!(parsed.partition_hash, HashOn::Property(property));
        }
        assert_eq!(
            refused(classic(&[n.clone(), (HASH_PROPERTY, V::Boolean(true))])),
            invalid(HASH_PROPERTY, "{unacceptable_type,bool}")
        );
        assert_eq!(
            refused(classic(&[n, (HASH_PROPERTY, s("foo"))])),
            invalid(HASH_PROPERTY, "\"unsupported property 'foo'\"")
        );
        assert_eq!(
            refused(classic(&[(HASH_PROPERTY, s("message_id"))])),
            invalid(HASH_PROPERTY, "\"requires a partitioned queue\"")
        );
        // The value is checked before the queue is known to be partitioned.
        assert_eq!(
            refused(classic(&[(HASH_PROPERTY, s("foo"))])),
            invalid(HASH_PROPERTY, "\"unsupported property 'foo'\"")
        );
    }

    #[test]
    fn consumers_per_partition_range_from_1_to_1024() {
        let n = (PARTITIONS, V::LongInt(4));
        let k = |value: V| classic(&[n.clone(), (CONSUMERS_PER_PARTITION, value)]);
        assert_eq!(ok(k(V::ShortUInt(2))).consumers_per_partition, Some(2));
        assert_eq!(ok(k(V::LongInt(1024))).consumers_per_partition, Some(1024));
        assert_eq!(
            ok(classic(std::slice::from_ref(&n))).consumers_per_partition,
            None
        );
        assert_eq!(
            refused(k(s("2"))),
            invalid(CONSUMERS_PER_PARTITION, "\"expected integer, got longstr\"")
        );
        assert_eq!(
            refused(k(V::LongInt(0))),
            invalid(CONSUMERS_PER_PARTITION, "{value_zero,0}")
        );
        assert_eq!(
            refused(k(V::LongInt(-2))),
            invalid(CONSUMERS_PER_PARTITION, "{value_negative,-2}")
        );
        assert_eq!(
            refused(k(V::LongInt(1025))),
            invalid(CONSUMERS_PER_PARTITION, "{max_value_exceeded,1025}")
        );
        assert_eq!(
            refused(classic(&[(CONSUMERS_PER_PARTITION, V::LongInt(2))])),
            invalid(CONSUMERS_PER_PARTITION, "\"requires a partitioned queue\"")
        );
    }

    fn redeclare(
        current: &[(&str, V)],
        partitions: Option<u16>,
        requested: &[(&str, V)],
    ) -> AmqpResult<()> {
        assert_equivalent(&table(current), &table(requested), partitions, "q", "/")
    }

    #[test]
    fn redeclaring_without_x_partitions_is_accepted() {
        let n = (PARTITIONS, V::LongInt(4));
        // Partitioned by argument, by policy, and a quorum queue.
        assert!(redeclare(std::slice::from_ref(&n), Some(4), &[]).is_ok());
        assert!(redeclare(&[], Some(4), &[]).is_ok());
        let q = (QUEUE_TYPE, s("quorum"));
        assert!(redeclare(&[q.clone(), n], Some(4), std::slice::from_ref(&q)).is_ok());
    }

    #[test]
    fn x_partitions_is_compared_with_the_effective_count() {
        let n = |k: i32| (PARTITIONS, V::LongInt(k));
        for (name, value) in each_integer(4) {
            assert!(
                redeclare(&[], Some(4), &[(PARTITIONS, value.clone())]).is_ok(),
                "{name}"
            );
            assert!(
                redeclare(&[n(4)], Some(4), &[(PARTITIONS, value)]).is_ok(),
                "{name}"
            );
        }
        assert_eq!(
            refused(redeclare(&[n(4)], Some(4), &[n(8)])),
            inequivalent(PARTITIONS, "'8'", "'4'")
        );
        // Partitioned by a policy: the declared arguments hold no count.
        assert_eq!(
            refused(redeclare(&[], Some(4), &[n(8)])),
            inequivalent(PARTITIONS, "'8'", "'4'")
        );
        assert_eq!(
            refused(redeclare(&[], None, &[n(4)])),
            inequivalent(PARTITIONS, "the value '4' of type 'signedint'", "none")
        );
        let q = (QUEUE_TYPE, s("quorum"));
        assert_eq!(
            refused(redeclare(&[q.clone(), n(4)], Some(4), &[q, n(2)])),
            inequivalent(PARTITIONS, "'2'", "'4'")
        );
        // The key settings compare as RabbitMQ compares arguments.
        assert_eq!(
            refused(redeclare(
                &[n(4), (HASH_HEADER, s("a"))],
                Some(4),
                &[(HASH_HEADER, s("b"))]
            )),
            inequivalent(HASH_HEADER, "'b'", "'a'")
        );
    }

    /// Consumes from a classic queue of `partitions` partitions.
    fn join(entries: &[(&str, V)], partitions: Option<u16>) -> AmqpResult<ConsumerArguments> {
        consumer(&table(entries), QueueType::Classic, partitions, "q", "/")
    }

    #[test]
    fn group_arguments_on_a_plain_queue_are_refused() {
        for (key, value) in [
            (CONSUMER_GROUP, s("g")),
            (GROUP_MEMBER, s("m")),
            (SESSION_TIMEOUT, V::LongInt(10)),
            (GROUP_NOTIFY, V::Boolean(true)),
            (PARTITION, V::LongInt(0)),
        ] {
            assert_eq!(
                refused(join(&[(key, value.clone())], None)),
                invalid(key, "\"queue is not partitioned\""),
                "{key}"
            );
            let quorum = consumer(&table(&[(key, value)]), QueueType::Quorum, None, "q", "/");
            assert_eq!(
                refused(quorum),
                invalid(key, "\"queue is not partitioned\""),
                "{key}"
            );
        }
        // RabbitMQ's arguments are checked first.
        assert_eq!(
            refused(join(&[(CONSUMER_GROUP, s("g")), (PRIORITY, s("x"))], None)),
            invalid(PRIORITY, "\"expected integer, got longstr\"")
        );
    }

    #[test]
    fn group_names_and_member_ids() {
        let parsed = ok(join(
            &[(CONSUMER_GROUP, s("billing")), (GROUP_MEMBER, s("node-1"))],
            Some(4),
        ));
        assert_eq!(parsed.group.as_deref(), Some("billing"));
        assert_eq!(parsed.member.as_deref(), Some("node-1"));
        assert_eq!(parsed.session_timeout_ms, None);
        assert!(!parsed.notify);
        assert_eq!(parsed.partitions, None);
        assert_eq!(ok(join(&[], Some(4))), ConsumerArguments::default());
        let longest = "g".repeat(255);
        assert_eq!(
            ok(join(&[(CONSUMER_GROUP, s(&longest))], Some(4))).group,
            Some(longest)
        );
        for (key, what) in [(CONSUMER_GROUP, "group name"), (GROUP_MEMBER, "member id")] {
            assert_eq!(
                refused(join(&[(key, V::LongInt(1))], Some(4))),
                invalid(key, "{unacceptable_type,signedint}")
            );
            assert_eq!(
                refused(join(&[(key, s(""))], Some(4))),
                invalid(key, &format!("\"empty {what}\""))
            );
            assert_eq!(
                refused(join(&[(key, s(&"m".repeat(256)))], Some(4))),
                invalid(key, &format!("\"{what} is longer than 255 bytes\""))
            );
            let bad = V::LongString(LongString::from(vec![0xff_u8, 0xfe]));
            assert_eq!(
                refused(join(&[(key, bad)], Some(4))),
                invalid(key, &format!("\"{what} is not valid UTF-8\""))
            );
            // The value is checked before the queue is known to be partitioned.
            assert_eq!(
                refused(join(&[(key, s(""))], None)),
                invalid(key, &format!("\"empty {what}\""))
            );
        }
        assert_eq!(
            refused(join(
                &[(GROUP_MEMBER, s("m")), (PARTITION, V::LongInt(1))],
                Some(4)
            )),
            invalid(
                GROUP_MEMBER,
                "\"x-group-member and x-partition are mutually exclusive\""
            )
        );
    }

    #[test]
    fn session_timeout_needs_a_member_and_ranges_to_an_hour() {
        let member = (GROUP_MEMBER, s("m"));
        for ms in [0, 30_000, 3_600_000] {
            let parsed = ok(join(
                &[member.clone(), (SESSION_TIMEOUT, V::LongLongInt(ms))],
                Some(2),
            ));
            assert_eq!(parsed.session_timeout_ms, Some(ms.unsigned_abs()));
        }
        assert_eq!(
            refused(join(
                &[member.clone(), (SESSION_TIMEOUT, V::LongInt(3_600_001))],
                Some(2)
            )),
            invalid(SESSION_TIMEOUT, "{max_value_exceeded,3600001}")
        );
        assert_eq!(
            refused(join(
                &[member.clone(), (SESSION_TIMEOUT, V::LongInt(-1))],
                Some(2)
            )),
            invalid(SESSION_TIMEOUT, "{value_negative,-1}")
        );
        assert_eq!(
            refused(join(&[member, (SESSION_TIMEOUT, s("1s"))], Some(2))),
            invalid(SESSION_TIMEOUT, "\"expected integer, got longstr\"")
        );
        assert_eq!(
            refused(join(&[(SESSION_TIMEOUT, V::LongInt(10))], Some(2))),
            invalid(SESSION_TIMEOUT, "\"requires x-group-member\"")
        );
        assert_eq!(DEFAULT_SESSION_TIMEOUT_MS, 30_000);
    }

    #[test]
    fn group_notify_is_a_boolean() {
        assert!(ok(join(&[(GROUP_NOTIFY, V::Boolean(true))], Some(2))).notify);
        assert!(!ok(join(&[(GROUP_NOTIFY, V::Boolean(false))], Some(2))).notify);
        assert_eq!(
            refused(join(&[(GROUP_NOTIFY, V::LongInt(1))], Some(2))),
            invalid(GROUP_NOTIFY, "{unacceptable_type,signedint}")
        );
    }

    #[test]
    fn x_partition_is_an_integer_or_a_list_in_range() {
        for (name, value) in each_integer(3) {
            let parsed = ok(join(&[(PARTITION, value)], Some(16)));
            assert_eq!(parsed.partitions, Some(vec![3]), "{name}");
        }
        let list = |items: Vec<V>| V::FieldArray(FieldArray::from(items));
        let parsed = ok(join(
            &[(
                PARTITION,
                list(vec![V::LongInt(5), V::ShortShortUInt(1), V::LongLongInt(5)]),
            )],
            Some(16),
        ));
        assert_eq!(parsed.partitions, Some(vec![1, 5]));
        assert_eq!(
            ok(join(&[(PARTITION, V::LongInt(15))], Some(16))).partitions,
            Some(vec![15])
        );
        assert_eq!(
            refused(join(&[(PARTITION, V::LongInt(16))], Some(16))),
            invalid(PARTITION, "\"partition 16 is out of range 0-15\"")
        );
        assert_eq!(
            refused(join(
                &[(PARTITION, list(vec![V::LongInt(0), V::LongInt(-1)]))],
                Some(16)
            )),
            invalid(PARTITION, "\"partition -1 is out of range 0-15\"")
        );
        assert_eq!(
            refused(join(&[(PARTITION, list(vec![]))], Some(16))),
            invalid(PARTITION, "\"empty partition list\"")
        );
        assert_eq!(
            refused(join(&[(PARTITION, s("1"))], Some(16))),
            invalid(PARTITION, "\"expected integer, got longstr\"")
        );
        assert_eq!(
            refused(join(
                &[(PARTITION, list(vec![V::LongInt(1), s("2")]))],
                Some(16)
            )),
            invalid(PARTITION, "\"expected integer, got longstr\"")
        );
        assert_eq!(
            refused(join(
                &[(CONSUMER_GROUP, s("g")), (PARTITION, V::LongInt(1))],
                Some(16)
            )),
            invalid(
                PARTITION,
                "\"x-partition and x-consumer-group are mutually exclusive\""
            )
        );
        // A manual consumer may ask for notifications.
        let manual = ok(join(
            &[(PARTITION, V::LongInt(2)), (GROUP_NOTIFY, V::Boolean(true))],
            Some(4),
        ));
        assert_eq!((manual.partitions, manual.notify), (Some(vec![2]), true));
    }

    #[test]
    fn reasons_render_as_erlang_terms() {
        assert_eq!(
            erlang::string("a\"b\\c\n\r\t\u{b}\u{8}\u{c}\u{1b}d"),
            r#""a\"b\\c\n\r\t\v\b\f\ed""#
        );
        assert_eq!(erlang::string("a\u{1}b"), "[97,1,98]");
        assert_eq!(erlang::string("a\u{7f}b"), "[97,127,98]");
        assert_eq!(erlang::string("a\u{a0}b"), "\"a\u{a0}b\"");
        assert_eq!(erlang::string("日"), "[26085]");
        let text = refused(classic(&[(QUEUE_TYPE, s("fo\"o"))]));
        assert_eq!(
            text,
            invalid(QUEUE_TYPE, r#""unsupported queue type 'fo\"o'""#)
        );
        let text = refused(classic(&[(QUEUE_TYPE, s("日本"))]));
        assert!(text.ends_with(": [117,110,115,117,112,112,111,114,116,101,100,32,113,117,101,117,101,32,116,121,112,101,32,39,26085,26412,39]"), "{text}");
        assert_eq!(erlang::binary(b"abc"), "<<\"abc\">>");
        assert_eq!(erlang::binary(&[1, 2]), "<<1,2>>");
        assert_eq!(erlang::binary("é".as_bytes()), "<<\"é\"/utf8>>");
        assert_eq!(erlang::binary(b""), "<<>>");
    }

    #[test]
    fn floats_print_as_erlang_prints_them() {
        // Pairs checked against Erlang/OTP 25's io_lib:format("~tp", [X]).
        let cases: &[(f64, &str)] = &[
            (1.0, "1.0"),
            (10.0, "10.0"),
            (100.0, "100.0"),
            (1000.0, "1.0e3"),
            (1.0e9, "1.0e9"),
            (12345.0, "12345.0"),
            (1_234_567_890.0, "1234567890.0"),
            (1.5e10, "1.5e10"),
            (123_456_789_012_345.0, "123456789012345.0"),
            (1_234_567_890_123_456.0, "1234567890123456.0"),
            (9_007_199_254_740_992.0, "9.007199254740992e15"),
            (1.234_567_890_123_456_8e17, "1.2345678901234568e17"),
            (0.5, "0.5"),
            (0.01, "0.01"),
            (0.0001, "0.0001"),
            (0.00012, "1.2e-4"),
            (0.0012, "0.0012"),
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (-2.5, "-2.5"),
            (1.0e300, "1.0e300"),
            (5.0e-324, "5.0e-324"),
            (123.456, "123.456"),
            (1.0e21, "1.0e21"),
        ];
        for &(x, shown) in cases {
            assert_eq!(erlang::float(x), shown, "{x:?}");
        }
        // A float field is widened to a double, as RabbitMQ's parser does.
        assert_eq!(erlang::float(f64::from(1.1f32)), "1.100000023841858");
    }
}

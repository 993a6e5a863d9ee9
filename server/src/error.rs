//! The one place where broker failures become AMQP reply codes and RabbitMQ's texts.
//!
//! Handlers return [`AmqpError`]; the connection closes a channel for soft codes and the
//! whole connection for hard ones (`ReplyCode::is_connection_error`).

pub use amqp_codec::ProtocolError as AmqpError;
use amqp_codec::ReplyCode;

/// Result of a method handler.
pub type AmqpResult<T> = Result<T, AmqpError>;

/// 404: `no queue 'q' in vhost '/'`.
pub fn no_queue(name: &str, vhost: &str) -> AmqpError {
    AmqpError::new(
        ReplyCode::NotFound,
        format!("no queue '{name}' in vhost '{vhost}'"),
    )
}

/// 404: `no exchange 'x' in vhost '/'`.
pub fn no_exchange(name: &str, vhost: &str) -> AmqpError {
    AmqpError::new(
        ReplyCode::NotFound,
        format!("no exchange '{name}' in vhost '{vhost}'"),
    )
}

/// 405: another connection owns this exclusive queue.
pub fn queue_locked(name: &str, vhost: &str) -> AmqpError {
    AmqpError::new(
        ReplyCode::ResourceLocked,
        format!(
            "cannot obtain exclusive access to locked queue '{name}' in vhost '{vhost}'. \
             It could be originally declared on another connection or the exclusive property \
             value does not match that of the original declaration."
        ),
    )
}

/// 406: a redeclaration that differs from what exists.
pub fn inequivalent(
    arg: &str,
    kind: &str,
    name: &str,
    vhost: &str,
    received: &str,
    current: &str,
) -> AmqpError {
    AmqpError::new(
        ReplyCode::PreconditionFailed,
        format!(
            "inequivalent arg '{arg}' for {kind} '{name}' in vhost '{vhost}': \
             received '{received}' but current is '{current}'"
        ),
    )
}

/// 403: names starting `amq.` belong to the broker.
pub fn reserved_name(kind: &str, name: &str) -> AmqpError {
    AmqpError::new(
        ReplyCode::AccessRefused,
        format!("{kind} name '{name}' contains reserved prefix 'amq.*'"),
    )
}

/// 403: the default exchange cannot be declared, bound, or deleted.
pub fn default_exchange_forbidden() -> AmqpError {
    AmqpError::new(
        ReplyCode::AccessRefused,
        "operation not permitted on the default exchange",
    )
}

/// 406: an acknowledgement for a delivery tag the channel does not have.
pub fn unknown_delivery_tag(tag: u64) -> AmqpError {
    AmqpError::new(
        ReplyCode::PreconditionFailed,
        format!("unknown delivery tag {tag}"),
    )
}

/// 406 with free text.
pub fn precondition(text: impl Into<String>) -> AmqpError {
    AmqpError::new(ReplyCode::PreconditionFailed, text)
}

/// 503: a method that is not valid in this state (a connection error).
pub fn command_invalid(text: impl Into<String>) -> AmqpError {
    AmqpError::new(ReplyCode::CommandInvalid, text)
}

/// 503 `unimplemented method`: a method only the server may send, or one not expected
/// now (RabbitMQ's answer).
pub fn unimplemented_method() -> AmqpError {
    command_invalid("unimplemented method")
}

/// 540: a feature RabbitMQ does not implement either (a connection error).
pub fn not_implemented(text: impl Into<String>) -> AmqpError {
    AmqpError::new(ReplyCode::NotImplemented, text)
}

/// 530: not allowed (a connection error).
pub fn not_allowed(text: impl Into<String>) -> AmqpError {
    AmqpError::new(ReplyCode::NotAllowed, text)
}

/// 504: a channel misuse (a connection error).
pub fn channel_error(text: impl Into<String>) -> AmqpError {
    AmqpError::new(ReplyCode::ChannelError, text)
}

/// 403 with free text.
pub fn access_refused(text: impl Into<String>) -> AmqpError {
    AmqpError::new(ReplyCode::AccessRefused, text)
}

/// 541 INTERNAL_ERROR: a durable definition could not be written to the store, so the
/// operation is refused rather than confirmed and lost at the next restart.
pub fn not_stored(kind: &str, name: &str, vhost: &str, reason: &str) -> AmqpError {
    AmqpError::new(
        ReplyCode::InternalError,
        format!("cannot store the definition of {kind} '{name}' in vhost '{vhost}': {reason}"),
    )
}

/// 541 INTERNAL_ERROR: a durable deletion could not be written to the store yet; it is
/// retried, and a restart before it is stored brings the thing back with what it held.
pub fn deletion_not_stored(kind: &str, name: &str, vhost: &str, reason: &str) -> AmqpError {
    AmqpError::new(
        ReplyCode::InternalError,
        format!(
            "cannot store the deletion of {kind} '{name}' in vhost '{vhost}' yet: {reason}; it is retried, and a restart before then brings the {kind} back"
        ),
    )
}

/// Permission refusals, with RabbitMQ's texts (`rabbit_access_control`).
pub mod access {
    use super::{AmqpError, ReplyCode};

    /// 403: `configure access to queue 'q' in vhost '/' refused for user 'u'`.
    pub fn refused(perm: &str, kind: &str, name: &str, vhost: &str, user: &str) -> AmqpError {
        AmqpError::new(
            ReplyCode::AccessRefused,
            format!(
                "{perm} access to {kind} '{name}' in vhost '{vhost}' refused for user '{user}'"
            ),
        )
    }

    /// 403: `write access to topic 'k' in exchange 'x' in vhost '/' refused for user 'u'`.
    pub fn topic_refused(
        perm: &str,
        key: &str,
        exchange: &str,
        vhost: &str,
        user: &str,
    ) -> AmqpError {
        AmqpError::new(
            ReplyCode::AccessRefused,
            format!(
                "{perm} access to topic '{key}' in exchange '{exchange}' in vhost '{vhost}' refused for user '{user}'"
            ),
        )
    }
}

/// What a stream refuses, with RabbitMQ's codes and texts (`rabbit_stream_queue`).
pub mod stream {
    use super::{AmqpError, ReplyCode};

    /// 540: `basic.get` on a stream.
    pub fn get(name: &str, vhost: &str) -> AmqpError {
        AmqpError::new(
            ReplyCode::NotImplemented,
            format!("basic.get not supported by stream queues queue '{name}' in vhost '{vhost}'"),
        )
    }

    /// 540: `queue.purge` of a stream.
    pub fn purge(name: &str, vhost: &str) -> AmqpError {
        AmqpError::new(
            ReplyCode::NotImplemented,
            format!("queue.purge not supported by stream queues queue '{name}' in vhost '{vhost}'"),
        )
    }

    /// 406: a stream consumer on a channel without a per-consumer `basic.qos`.
    pub fn no_prefetch(name: &str, vhost: &str) -> AmqpError {
        super::precondition(format!(
            "consumer prefetch count is not set for stream queue '{name}' in vhost '{vhost}'"
        ))
    }

    /// 540: a `no_ack` stream consumer.
    pub fn no_ack(name: &str, vhost: &str) -> AmqpError {
        AmqpError::new(
            ReplyCode::NotImplemented,
            format!(
                "automatic acknowledgement not supported by stream queue '{name}' in vhost '{vhost}'"
            ),
        )
    }

    /// 406: a second live consumer tracking its offsets under the same consumer tag.
    pub fn tracking_key_in_use(key: &str, name: &str, vhost: &str) -> AmqpError {
        super::precondition(format!(
            "consumer tag '{key}' already tracks its offsets in stream queue '{name}' in vhost '{vhost}'"
        ))
    }

    /// 406: offset tracking asked for without a consumer tag to keep it under.
    pub fn tracking_without_tag(name: &str, vhost: &str) -> AmqpError {
        super::precondition(format!(
            "invalid arg 'x-stream-automatic-offset-tracking' for queue '{name}' in vhost '{vhost}': \"requires a consumer tag\""
        ))
    }

    /// 540: a stream consumer on a channel with a global `basic.qos`.
    pub fn global_qos(name: &str, vhost: &str) -> AmqpError {
        AmqpError::new(
            ReplyCode::NotImplemented,
            format!("queue '{name}' in vhost '{vhost}' does not support global qos"),
        )
    }
}

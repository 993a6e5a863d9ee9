//! AMQP 0-9-1 reply codes, with RabbitMQ's names for them.

/// A reply code sent in `connection.close`, `channel.close` or `basic.return`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ReplyCode {
    /// 200: normal shutdown.
    Success = 200,
    /// 311: content too large (soft).
    ContentTooLarge = 311,
    /// 312: a mandatory message could not be routed (in `basic.return`).
    NoRoute = 312,
    /// 313: an immediate message had no consumer (in `basic.return`).
    NoConsumers = 313,
    /// 320: the server closed the connection, e.g. at shutdown.
    ConnectionForced = 320,
    /// 402: unknown virtual host path.
    InvalidPath = 402,
    /// 403: access refused (soft, or hard during the handshake).
    AccessRefused = 403,
    /// 404: no such entity (soft).
    NotFound = 404,
    /// 405: the entity is locked by another connection (soft).
    ResourceLocked = 405,
    /// 406: a precondition failed (soft).
    PreconditionFailed = 406,
    /// 501: malformed frame (hard).
    FrameError = 501,
    /// 502: malformed method arguments (hard).
    SyntaxError = 502,
    /// 503: a method that is not allowed here (hard).
    CommandInvalid = 503,
    /// 504: a channel used wrongly (hard).
    ChannelError = 504,
    /// 505: a frame that was not expected at this point (hard).
    UnexpectedFrame = 505,
    /// 506: the server ran out of a resource (hard).
    ResourceError = 506,
    /// 530: not allowed, e.g. an unknown vhost (hard).
    NotAllowed = 530,
    /// 540: not implemented (hard).
    NotImplemented = 540,
    /// 541: internal error (hard).
    InternalError = 541,
}

impl ReplyCode {
    /// The numeric code as sent on the wire.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// RabbitMQ's upper-case name, the prefix of its reply texts (`NOT_FOUND - …`).
    pub fn name(self) -> &'static str {
        match self {
            ReplyCode::Success => "OK",
            ReplyCode::ContentTooLarge => "CONTENT_TOO_LARGE",
            ReplyCode::NoRoute => "NO_ROUTE",
            ReplyCode::NoConsumers => "NO_CONSUMERS",
            ReplyCode::ConnectionForced => "CONNECTION_FORCED",
            ReplyCode::InvalidPath => "INVALID_PATH",
            ReplyCode::AccessRefused => "ACCESS_REFUSED",
            ReplyCode::NotFound => "NOT_FOUND",
            ReplyCode::ResourceLocked => "RESOURCE_LOCKED",
            ReplyCode::PreconditionFailed => "PRECONDITION_FAILED",
            ReplyCode::FrameError => "FRAME_ERROR",
            ReplyCode::SyntaxError => "SYNTAX_ERROR",
            ReplyCode::CommandInvalid => "COMMAND_INVALID",
            ReplyCode::ChannelError => "CHANNEL_ERROR",
            ReplyCode::UnexpectedFrame => "UNEXPECTED_FRAME",
            ReplyCode::ResourceError => "RESOURCE_ERROR",
            ReplyCode::NotAllowed => "NOT_ALLOWED",
            ReplyCode::NotImplemented => "NOT_IMPLEMENTED",
            ReplyCode::InternalError => "INTERNAL_ERROR",
        }
    }

    /// Whether this code closes the whole connection rather than one channel.
    pub fn is_connection_error(self) -> bool {
        matches!(
            self,
            ReplyCode::ConnectionForced
                | ReplyCode::InvalidPath
                | ReplyCode::FrameError
                | ReplyCode::SyntaxError
                | ReplyCode::CommandInvalid
                | ReplyCode::ChannelError
                | ReplyCode::UnexpectedFrame
                | ReplyCode::ResourceError
                | ReplyCode::NotAllowed
                | ReplyCode::NotImplemented
                | ReplyCode::InternalError
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soft_and_hard_codes_are_split_as_the_spec_says() {
        assert!(!ReplyCode::NotFound.is_connection_error());
        assert!(!ReplyCode::PreconditionFailed.is_connection_error());
        assert!(ReplyCode::FrameError.is_connection_error());
        assert!(ReplyCode::NotAllowed.is_connection_error());
        assert_eq!(ReplyCode::ResourceLocked.code(), 405);
        assert_eq!(ReplyCode::NotFound.name(), "NOT_FOUND");
    }
}

//! Errors of the frame layer; each protocol error carries the reply code to close with.

use crate::reply::ReplyCode;

/// A violation of the protocol, with the reply code and text to send in the close.
///
/// `class_id`/`method_id` name the method that caused it (0 when it was not a method).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} - {text}", code.name())]
pub struct ProtocolError {
    /// The reply code to close with.
    pub code: ReplyCode,
    /// The human-readable part of the reply text, without the code's name.
    pub text: String,
    /// Class of the offending method, or 0.
    pub class_id: u16,
    /// Method id of the offending method, or 0.
    pub method_id: u16,
}

impl ProtocolError {
    /// A protocol error not tied to one method.
    pub fn new(code: ReplyCode, text: impl Into<String>) -> Self {
        Self {
            code,
            text: text.into(),
            class_id: 0,
            method_id: 0,
        }
    }

    /// The same error, attributed to a method.
    pub fn for_method(mut self, class_id: u16, method_id: u16) -> Self {
        self.class_id = class_id;
        self.method_id = method_id;
        self
    }

    /// The reply text as RabbitMQ sends it: `NAME - text`, cut as RabbitMQ cuts it to
    /// fit the short string of `connection.close` and `channel.close` (255 bytes): its
    /// first 252 bytes, at a character boundary, and `...`.
    pub fn reply_text(&self) -> String {
        let mut text = format!("{} - {}", self.code.name(), self.text);
        if text.len() > MAX_REPLY_TEXT {
            let mut end = MAX_REPLY_TEXT - 3;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text.push_str("...");
        }
        text
    }
}

/// The longest reply text: a short string.
const MAX_REPLY_TEXT: usize = 255;

/// What the decoder can fail with.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The peer did not open with `AMQP\0\0\x09\x01`; answer with ours and close.
    #[error("bad protocol header")]
    BadProtocolHeader,
    /// A framing or syntax error: close the connection with this code.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the connection fuzz harness: a 404 quoting a 255-byte queue name made a
    /// 291-byte reply text, and amq-protocol panics on a short string that long, which
    /// killed the connection's task without closing it or releasing what it held.
    #[test]
    fn regression_long_reply_texts_are_cut_as_rabbitmq_cuts_them() {
        let name = "n".repeat(255);
        let e = ProtocolError::new(
            ReplyCode::NotFound,
            format!("no queue '{name}' in vhost '/'"),
        );
        let text = e.reply_text();
        assert_eq!(text.len(), 255);
        assert!(text.starts_with("NOT_FOUND - no queue 'nnn"));
        assert!(text.ends_with("nnn..."));
        // Never inside a character: 'é' is two bytes.
        let e = ProtocolError::new(ReplyCode::NotFound, "é".repeat(200));
        let text = e.reply_text();
        assert!(text.len() <= 255 && text.ends_with("é..."));
        let short = ProtocolError::new(ReplyCode::NotFound, "no queue 'q' in vhost '/'");
        assert_eq!(short.reply_text(), "NOT_FOUND - no queue 'q' in vhost '/'");
    }
}

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

    /// The full reply text as RabbitMQ words it: `NAME - text`.
    pub fn reply_text(&self) -> String {
        format!("{} - {}", self.code.name(), self.text)
    }
}

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

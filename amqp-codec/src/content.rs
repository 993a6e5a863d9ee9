//! Content assembly: `basic.publish`, then a content header, then body frames until the
//! declared size is reached, become one message.

use bytes::{Bytes, BytesMut};

use crate::error::ProtocolError;
use crate::frame::{CLASS_BASIC, ContentHeader, Publish};
use crate::reply::ReplyCode;

/// A complete published message: the method, its encoded properties and its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Content {
    /// The `basic.publish` that started it.
    pub publish: Publish,
    /// Encoded properties, as the publisher sent them.
    pub properties: Bytes,
    /// The whole body.
    pub body: Bytes,
}

#[derive(Debug, Default)]
enum State {
    #[default]
    Idle,
    AwaitingHeader(Publish),
    AwaitingBody {
        publish: Publish,
        properties: Bytes,
        body_size: usize,
        received: usize,
        /// The first body frame, kept as is: most bodies arrive in one frame.
        first: Option<Bytes>,
        /// Later frames, joined only when a body spans several.
        rest: BytesMut,
    },
}

/// Per-channel content assembly state.
///
/// A body that arrives in one frame is passed on as that frame's slice of the read
/// buffer; only bodies split over several frames are joined (one copy).
#[derive(Debug, Default)]
pub struct ContentAssembler {
    state: State,
}

/// RabbitMQ's texts for frames that arrive out of order, and the method it names.
const EXPECTED_METHOD: &str = "expected method frame, got non method frame instead";
const EXPECTED_HEADER: &str =
    "expected content header for class 60, got non content header frame instead";
const EXPECTED_BODY: &str = "expected content body, got non content body frame instead";

fn unexpected(text: &str) -> ProtocolError {
    ProtocolError::new(ReplyCode::UnexpectedFrame, text).for_method(CLASS_BASIC, 40)
}

impl ContentAssembler {
    /// Whether a method frame may arrive now (no content is half-received).
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Idle)
    }

    /// Drops any half-received content (when the channel closes).
    pub fn reset(&mut self) {
        self.state = State::Idle;
    }

    /// Checks that a method frame may arrive now.
    ///
    /// # Errors
    /// 505 UNEXPECTED_FRAME, naming the publish, if its content is incomplete.
    pub fn expect_method(&self) -> Result<(), ProtocolError> {
        match self.state {
            State::Idle => Ok(()),
            State::AwaitingHeader(_) => Err(unexpected(EXPECTED_HEADER)),
            State::AwaitingBody { .. } => Err(unexpected(EXPECTED_BODY)),
        }
    }

    /// Starts a message with its `basic.publish`.
    ///
    /// # Errors
    /// 505 UNEXPECTED_FRAME if a previous message's content is incomplete.
    pub fn start(&mut self, publish: Publish) -> Result<(), ProtocolError> {
        self.expect_method()?;
        self.state = State::AwaitingHeader(publish);
        Ok(())
    }

    /// Takes the content header; returns the message if its body is empty.
    ///
    /// # Errors
    /// 505 UNEXPECTED_FRAME if no publish precedes it or the class is not basic.
    pub fn header(&mut self, header: ContentHeader) -> Result<Option<Content>, ProtocolError> {
        let publish = match std::mem::take(&mut self.state) {
            State::AwaitingHeader(publish) => publish,
            State::Idle => {
                return Err(ProtocolError::new(
                    ReplyCode::UnexpectedFrame,
                    EXPECTED_METHOD,
                ));
            }
            State::AwaitingBody { .. } => return Err(unexpected(EXPECTED_BODY)),
        };
        if header.class_id != CLASS_BASIC {
            return Err(unexpected(&format!(
                "expected content header for class 60, got one for class {} instead",
                header.class_id
            )));
        }
        if header.body_size == 0 {
            return Ok(Some(Content {
                publish,
                properties: header.properties,
                body: Bytes::new(),
            }));
        }
        let body_size = usize::try_from(header.body_size)
            .map_err(|_| ProtocolError::new(ReplyCode::FrameError, "body size too large"))?;
        self.state = State::AwaitingBody {
            publish,
            properties: header.properties,
            body_size,
            received: 0,
            first: None,
            rest: BytesMut::new(),
        };
        Ok(None)
    }

    /// Takes a body frame; returns the message once its body is complete.
    ///
    /// # Errors
    /// 505 UNEXPECTED_FRAME if no header precedes it, 501 FRAME_ERROR if the body grows
    /// past the size the header declared.
    pub fn body(&mut self, payload: Bytes) -> Result<Option<Content>, ProtocolError> {
        let State::AwaitingBody {
            body_size,
            received,
            first,
            rest,
            ..
        } = &mut self.state
        else {
            return Err(match self.state {
                State::Idle => ProtocolError::new(ReplyCode::UnexpectedFrame, EXPECTED_METHOD),
                _ => unexpected(EXPECTED_HEADER),
            });
        };
        *received += payload.len();
        if *received > *body_size {
            return Err(ProtocolError::new(
                ReplyCode::FrameError,
                format!("content body exceeds the declared size {body_size}"),
            ));
        }
        match first {
            None => *first = Some(payload),
            Some(head) => {
                if rest.is_empty() {
                    // Grow with what arrives, never by the size the peer announced.
                    rest.reserve(head.len() + payload.len());
                    rest.extend_from_slice(head);
                }
                rest.extend_from_slice(&payload);
            }
        }
        if *received < *body_size {
            return Ok(None);
        }
        let State::AwaitingBody {
            publish,
            properties,
            first,
            rest,
            ..
        } = std::mem::take(&mut self.state)
        else {
            return Ok(None);
        };
        let body = if rest.is_empty() {
            first.unwrap_or_default()
        } else {
            rest.freeze()
        };
        Ok(Some(Content {
            publish,
            properties,
            body,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish() -> Publish {
        Publish {
            exchange: "".into(),
            routing_key: "q".into(),
            mandatory: false,
            immediate: false,
        }
    }

    fn header(size: u64) -> ContentHeader {
        ContentHeader {
            class_id: CLASS_BASIC,
            body_size: size,
            properties: Bytes::from_static(&[0, 0]),
        }
    }

    #[test]
    fn single_frame_body_is_not_copied() {
        let mut a = ContentAssembler::default();
        a.start(publish()).expect("idle");
        assert_eq!(a.header(header(3)).expect("header"), None);
        let payload = Bytes::from_static(b"abc");
        let content = a.body(payload.clone()).expect("body").expect("complete");
        assert_eq!(content.body.as_ptr(), payload.as_ptr());
        assert!(a.is_idle());
    }

    #[test]
    fn multi_frame_body_is_joined() {
        let mut a = ContentAssembler::default();
        a.start(publish()).expect("idle");
        a.header(header(5)).expect("header");
        assert_eq!(a.body(Bytes::from_static(b"ab")).expect("body"), None);
        assert_eq!(a.body(Bytes::from_static(b"cd")).expect("body"), None);
        let c = a
            .body(Bytes::from_static(b"e"))
            .expect("body")
            .expect("done");
        assert_eq!(&c.body[..], b"abcde");
    }

    #[test]
    fn empty_body_completes_at_the_header() {
        let mut a = ContentAssembler::default();
        a.start(publish()).expect("idle");
        let c = a.header(header(0)).expect("header").expect("complete");
        assert!(c.body.is_empty());
    }

    #[test]
    fn out_of_order_frames_are_unexpected() {
        let mut a = ContentAssembler::default();
        assert_eq!(
            a.header(header(1)).expect_err("no publish").code,
            ReplyCode::UnexpectedFrame
        );
        assert_eq!(
            a.body(Bytes::from_static(b"x"))
                .expect_err("no header")
                .code,
            ReplyCode::UnexpectedFrame
        );
        a.start(publish()).expect("idle");
        assert_eq!(
            a.start(publish()).expect_err("busy").code,
            ReplyCode::UnexpectedFrame
        );
    }

    #[test]
    fn overlong_body_is_a_frame_error() {
        let mut a = ContentAssembler::default();
        a.start(publish()).expect("idle");
        a.header(header(2)).expect("header");
        assert_eq!(
            a.body(Bytes::from_static(b"xyz"))
                .expect_err("too long")
                .code,
            ReplyCode::FrameError
        );
    }
}

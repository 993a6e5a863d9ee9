//! AMQP 0-9-1 framing for Warren: bytes in, frames out, and back.
//!
//! - [`reply`]: the AMQP reply codes and which of them are connection errors.
//! - [`error`]: protocol errors that carry their reply code.
//! - [`frame`]: the frames a peer sends, with `basic.publish` and content kept zero-copy.
//! - [`decode`]: the frame decoder (protocol header check, `frame_max`, frame end octet).
//! - [`encode`]: writing methods, content and deliveries into an output buffer.
//! - [`content`]: assembling publish → header → bodies into one message.
//! - [`properties`]: reading the few content properties a broker needs without decoding all.
//! - [`table`]: bounded-depth checks of field tables before they are decoded.
//! - `fuzz` (tests and the `fuzzing` feature): the checks the fuzz targets run.
//!
//! Nothing here touches a socket: every function works on byte buffers, so all of it is
//! unit- and property-tested on plain slices.

pub mod content;
pub mod decode;
pub mod encode;
pub mod error;
pub mod frame;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;
pub mod properties;
pub mod reply;
pub mod table;

pub use amq_protocol;
pub use content::{Content, ContentAssembler};
pub use decode::FrameDecoder;
pub use error::{CodecError, ProtocolError};
pub use frame::{ContentHeader, Frame, Method, Publish, ShortStr};
pub use properties::PropertiesView;
pub use reply::ReplyCode;

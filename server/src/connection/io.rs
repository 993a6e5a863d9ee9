//! A connection's socket halves, read buffer and frame decoder.
//!
//! Reads take large chunks; decoded bodies are slices of the chunk. Writes go out from the
//! connection's output buffer, many frames per syscall.

use std::io;

use amqp_codec::frame::PROTOCOL_HEADER;
use amqp_codec::{CodecError, Frame, FrameDecoder};
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How much free space a read asks for: one read can bring many small frames.
pub const READ_CHUNK: usize = 64 * 1024;

/// The reading and writing ends of a client socket.
///
/// Generic over the halves so that each transport is compiled in, with no dynamic
/// dispatch: TCP's lock-free owned halves, or any stream cut by `tokio::io::split`.
pub struct FrameIo<R, W> {
    /// The socket's read half.
    pub reader: R,
    /// The socket's write half.
    pub writer: W,
    /// Bytes read and not yet decoded.
    pub rbuf: BytesMut,
    /// The frame decoder (protocol header already checked).
    pub decoder: FrameDecoder,
}

/// How the protocol header check ended.
pub enum HeaderCheck {
    /// `AMQP 0-9-1`: go on with the handshake.
    Accepted,
    /// Something else, answered with our header; close.
    Rejected,
    /// The peer closed before sending eight bytes.
    Closed,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> FrameIo<R, W> {
    /// Wraps a socket's halves; frames may be at most `frame_max` bytes.
    pub fn new(reader: R, writer: W, frame_max: u32) -> Self {
        Self {
            reader,
            writer,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            decoder: FrameDecoder::after_header(frame_max),
        }
    }

    /// Reads the 8-byte protocol header; answers a wrong one with ours.
    ///
    /// # Errors
    /// Socket errors.
    pub async fn check_protocol_header(&mut self) -> io::Result<HeaderCheck> {
        while self.rbuf.len() < PROTOCOL_HEADER.len() {
            let have = self.rbuf.len();
            if self.rbuf[..] != PROTOCOL_HEADER[..have] {
                break;
            }
            if self.reader.read_buf(&mut self.rbuf).await? == 0 {
                return Ok(HeaderCheck::Closed);
            }
        }
        let n = PROTOCOL_HEADER.len().min(self.rbuf.len());
        if self.rbuf[..n] == PROTOCOL_HEADER[..] {
            let _ = self.rbuf.split_to(n);
            return Ok(HeaderCheck::Accepted);
        }
        self.writer.write_all(PROTOCOL_HEADER).await?;
        self.writer.shutdown().await?;
        Ok(HeaderCheck::Rejected)
    }

    /// Reads until one whole frame is decoded; `None` if the peer closed.
    ///
    /// # Errors
    /// Framing errors and socket errors.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>, CodecError> {
        loop {
            if let Some(frame) =
                tokio_util::codec::Decoder::decode(&mut self.decoder, &mut self.rbuf)?
            {
                return Ok(Some(frame));
            }
            self.rbuf.reserve(READ_CHUNK);
            if self.reader.read_buf(&mut self.rbuf).await? == 0 {
                return Ok(None);
            }
        }
    }

    /// Writes all of `out` and empties it.
    ///
    /// # Errors
    /// Socket errors.
    pub async fn write_all(&mut self, out: &mut BytesMut) -> io::Result<()> {
        self.writer.write_all(out).await?;
        out.clear();
        Ok(())
    }
}

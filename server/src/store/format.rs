//! The on-disk format of a queue log, in one place: file names, file headers, records and
//! ack entries. Everything is big-endian.
//!
//! ```text
//! NNNNNNNNNN.seg   header: "WARRENSG" u32 version u32 reserved
//!                  records: u32 payload_len, u32 crc32(payload), payload
//!                  payload: u8 kind, u64 term, kind-specific bytes
//!                  kind 1 (message): u8 flags (bit 0 persistent), u64 expires_at_ms,
//!                    shortstr exchange, shortstr routing_key,
//!                    u32 properties_len, properties, u64 body_len, body
//! NNNNNNNNNN.acks  header: "WARRENAK" u32 version u32 reserved
//!                  entries: u32 record offset; high bit set = delivered marker, clear = ack
//! ```
//!
//! The term is reserved for replication (a Raft term) and is 0 for now.

use bytes::Bytes;
use bytestring::ByteString;

use super::{MessageRecord, StoreError, StoredMessage};

/// Magic bytes opening every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"WARRENSG";
/// Magic bytes opening every ack file.
pub const ACKS_MAGIC: [u8; 8] = *b"WARRENAK";
/// Version of this format, written in both headers; a different version is refused.
pub const FORMAT_VERSION: u32 = 1;
/// Length of the header of segment and ack files.
pub const FILE_HEADER_LEN: u64 = 16;
/// Length of a record's header (payload length and CRC32).
pub const RECORD_HEADER_LEN: u64 = 8;
/// Record kind of an enqueued message.
pub const KIND_MESSAGE: u8 = 1;
/// Message flag bit: published persistent (delivery mode 2).
pub const FLAG_PERSISTENT: u8 = 1;
/// High bit of an ack entry: a delivered marker rather than an ack.
pub const DELIVERED_BIT: u32 = 1 << 31;
/// Largest record offset an ack entry can name.
pub const MAX_RECORD_OFFSET: u64 = (DELIVERED_BIT - 1) as u64;
/// Length of one ack entry.
pub const ACK_ENTRY_LEN: u64 = 4;
/// Largest payload a record can hold (its length field is a u32).
pub const MAX_PAYLOAD_LEN: u64 = u32::MAX as u64;
/// Smallest segment size accepted (small sizes are for tests).
pub const MIN_SEGMENT_SIZE: u64 = 64;
/// Largest segment size accepted, well below [`MAX_RECORD_OFFSET`].
pub const MAX_SEGMENT_SIZE: u64 = 1 << 30;
/// Default segment size: 8 MiB, as LavinMQ.
pub const DEFAULT_SEGMENT_SIZE: u64 = 8 << 20;
/// Name of the lock file in the data directory.
pub const LOCK_FILE_NAME: &str = "warren.lock";

/// Offset of the flags byte in a message payload (after kind and term).
pub const FLAGS_OFFSET: usize = 9;
/// Bytes of a message payload before the exchange name: kind, term, flags, expires_at_ms.
const MESSAGE_FIXED_LEN: usize = 18;
/// Smallest message payload: fixed part, two empty shortstrs, both length fields.
pub const MIN_MESSAGE_PAYLOAD: u64 = (MESSAGE_FIXED_LEN + 1 + 1 + 4 + 8) as u64;
/// Bytes of a payload that always suffice to find `properties_len`: the fixed part, two
/// maximal shortstrs and the length itself.
pub const MESSAGE_PREFIX_MAX: usize = MESSAGE_FIXED_LEN + 256 + 256 + 4;

/// Which kind of file a directory entry of a queue log is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFile {
    /// `NNNNNNNNNN.seg`.
    Segment(u32),
    /// `NNNNNNNNNN.acks`.
    Acks(u32),
}

/// File name of segment `n`.
pub fn segment_file_name(n: u32) -> String {
    format!("{n:010}.seg")
}

/// File name of the ack file of segment `n`.
pub fn acks_file_name(n: u32) -> String {
    format!("{n:010}.acks")
}

/// A log file name's segment number and extension: ten digits, a dot, the rest.
pub fn numbered_file(name: &str) -> Option<(u32, &str)> {
    let (stem, ext) = name.split_once('.')?;
    if stem.len() != 10 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((stem.parse().ok()?, ext))
}

/// Recognises the files of a queue log; anything else is `None`.
pub fn parse_file_name(name: &str) -> Option<LogFile> {
    let (n, ext) = numbered_file(name)?;
    match ext {
        "seg" => Some(LogFile::Segment(n)),
        "acks" => Some(LogFile::Acks(n)),
        _ => None,
    }
}

/// The 16-byte header of a file with the given magic.
pub fn file_header(magic: &[u8; 8]) -> [u8; FILE_HEADER_LEN as usize] {
    let mut h = [0u8; FILE_HEADER_LEN as usize];
    h[..8].copy_from_slice(magic);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_be_bytes());
    h
}

/// Checks a file header; the error says what was found instead.
pub fn check_file_header(header: &[u8], magic: &[u8; 8]) -> Result<(), String> {
    if header.len() < FILE_HEADER_LEN as usize || header[..8] != magic[..] {
        let shown = &header[..header.len().min(8)];
        return Err(format!(
            "expected magic {:?}, found {:?}",
            String::from_utf8_lossy(magic),
            String::from_utf8_lossy(shown)
        ));
    }
    let version = u32::from_be_bytes([header[8], header[9], header[10], header[11]]);
    if version != FORMAT_VERSION {
        return Err(format!(
            "format version {version}, this build reads version {FORMAT_VERSION}"
        ));
    }
    Ok(())
}

/// Length of the record (header included) that `msg` encodes to, after checking that the
/// format can hold it.
pub fn message_record_len(msg: &MessageRecord<'_>) -> Result<u64, StoreError> {
    if msg.exchange.len() > 255 {
        return Err(StoreError::InvalidMessage(
            "exchange name longer than 255 bytes",
        ));
    }
    if msg.routing_key.len() > 255 {
        return Err(StoreError::InvalidMessage(
            "routing key longer than 255 bytes",
        ));
    }
    if msg.properties.len() > u32::MAX as usize {
        return Err(StoreError::InvalidMessage("properties longer than 4 GiB"));
    }
    let payload = MIN_MESSAGE_PAYLOAD
        + msg.exchange.len() as u64
        + msg.routing_key.len() as u64
        + msg.properties.len() as u64
        + msg.body.len() as u64;
    if payload > MAX_PAYLOAD_LEN {
        return Err(StoreError::InvalidMessage("message larger than 4 GiB"));
    }
    Ok(RECORD_HEADER_LEN + payload)
}

/// Appends the record of `msg` to `buf`. The caller has checked it with
/// [`message_record_len`], whose result this returns.
pub fn encode_message(buf: &mut Vec<u8>, term: u64, msg: &MessageRecord<'_>, record_len: u64) {
    let start = buf.len();
    buf.reserve(record_len as usize);
    let payload_len = (record_len - RECORD_HEADER_LEN) as u32;
    buf.extend_from_slice(&payload_len.to_be_bytes());
    buf.extend_from_slice(&[0; 4]); // CRC, patched below
    buf.push(KIND_MESSAGE);
    buf.extend_from_slice(&term.to_be_bytes());
    buf.push(if msg.persistent { FLAG_PERSISTENT } else { 0 });
    buf.extend_from_slice(&msg.expires_at_ms.to_be_bytes());
    buf.push(msg.exchange.len() as u8);
    buf.extend_from_slice(msg.exchange.as_bytes());
    buf.push(msg.routing_key.len() as u8);
    buf.extend_from_slice(msg.routing_key.as_bytes());
    buf.extend_from_slice(&(msg.properties.len() as u32).to_be_bytes());
    buf.extend_from_slice(msg.properties);
    buf.extend_from_slice(&(msg.body.len() as u64).to_be_bytes());
    buf.extend_from_slice(msg.body);
    let crc = crc32fast::hash(&buf[start + RECORD_HEADER_LEN as usize..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_be_bytes());
}

/// Splits a record header (the first 8 bytes of `h`, which must have them) into payload
/// length and CRC32.
pub fn decode_record_header(h: &[u8]) -> (u64, u32) {
    let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
    let crc = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
    (u64::from(len), crc)
}

/// What recovery needs of a message record, read from the start of its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageSummary {
    /// Persistent flag.
    pub persistent: bool,
    /// Body length.
    pub body_len: u64,
    /// It carries an expiry.
    pub expires: bool,
}

/// Summarises a message record from the first bytes of its payload (at least
/// `min(payload_len, MESSAGE_PREFIX_MAX)` of them), without needing the body.
pub fn summarize_message(prefix: &[u8], payload_len: u64) -> Result<MessageSummary, &'static str> {
    let mut r = Reader::new(prefix);
    if r.u8()? != KIND_MESSAGE {
        return Err("unknown record kind");
    }
    r.skip(8)?; // term
    let flags = r.u8()?;
    let expires = r.u64()? != 0;
    let n = usize::from(r.u8()?);
    r.skip(n)?;
    let n = usize::from(r.u8()?);
    r.skip(n)?;
    let properties_len = u64::from(r.u32()?);
    let body_len = payload_len
        .checked_sub(r.pos as u64 + properties_len + 8)
        .ok_or("lengths exceed the record")?;
    Ok(MessageSummary {
        persistent: flags & FLAG_PERSISTENT != 0,
        body_len,
        expires,
    })
}

/// Decodes a whole message payload. Properties and body share the payload's allocation.
pub fn decode_message(payload: Bytes) -> Result<StoredMessage, &'static str> {
    let mut r = Reader::new(&payload);
    if r.u8()? != KIND_MESSAGE {
        return Err("unknown record kind");
    }
    let _term = r.u64()?;
    let flags = r.u8()?;
    let expires_at_ms = r.u64()?;
    let n = usize::from(r.u8()?);
    let exchange = r.range(n)?;
    let n = usize::from(r.u8()?);
    let routing_key = r.range(n)?;
    let n = r.u32()? as usize;
    let properties = r.range(n)?;
    let n = usize::try_from(r.u64()?).map_err(|_| "body length out of range")?;
    let body = r.range(n)?;
    if r.pos != payload.len() {
        return Err("trailing bytes after the body");
    }
    let string = |range: std::ops::Range<usize>| {
        ByteString::try_from(payload.slice(range)).map_err(|_| "name is not UTF-8")
    };
    Ok(StoredMessage {
        persistent: flags & FLAG_PERSISTENT != 0,
        expires_at_ms,
        exchange: string(exchange)?,
        routing_key: string(routing_key)?,
        properties: payload.slice(properties),
        body: payload.slice(body),
    })
}

/// Encodes one ack-file entry.
pub fn encode_ack_entry(offset: u32, delivered: bool) -> [u8; ACK_ENTRY_LEN as usize] {
    let v = if delivered {
        offset | DELIVERED_BIT
    } else {
        offset
    };
    v.to_be_bytes()
}

/// Decodes one ack-file entry into (offset, is a delivered marker).
pub fn decode_ack_entry(e: [u8; ACK_ENTRY_LEN as usize]) -> (u32, bool) {
    let v = u32::from_be_bytes(e);
    (v & !DELIVERED_BIT, v & DELIVERED_BIT != 0)
}

/// A bounds-checked cursor over a payload.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn range(&mut self, n: usize) -> Result<std::ops::Range<usize>, &'static str> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or("truncated payload")?;
        let r = self.pos..end;
        self.pos = end;
        Ok(r)
    }

    fn skip(&mut self, n: usize) -> Result<(), &'static str> {
        self.range(n).map(|_| ())
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], &'static str> {
        let r = self.range(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(&self.buf[r]);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, &'static str> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, &'static str> {
        self.array().map(u32::from_be_bytes)
    }

    fn u64(&mut self) -> Result<u64, &'static str> {
        self.array().map(u64::from_be_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(body: &[u8]) -> StoredMessage {
        StoredMessage {
            persistent: true,
            expires_at_ms: 42,
            exchange: ByteString::from_static("amq.direct"),
            routing_key: ByteString::from_static("key"),
            properties: Bytes::from_static(b"\x80\x00\x02"),
            body: Bytes::copy_from_slice(body),
        }
    }

    #[test]
    fn message_round_trips_and_summarizes() {
        let msg = message(b"hello");
        let len = message_record_len(&(&msg).into()).expect("fits");
        let mut buf = vec![9u8; 3];
        encode_message(&mut buf, 0, &(&msg).into(), len);
        assert_eq!(buf.len() as u64, 3 + len);
        let rec = &buf[3..];
        let (plen, crc) = decode_record_header(rec);
        assert_eq!(plen + RECORD_HEADER_LEN, len);
        assert_eq!(crc, crc32fast::hash(&rec[8..]));
        let summary = summarize_message(&rec[8..], plen).expect("valid");
        assert_eq!(
            summary,
            MessageSummary {
                persistent: true,
                body_len: 5,
                expires: msg.expires_at_ms != 0,
            }
        );
        let back = decode_message(Bytes::copy_from_slice(&rec[8..])).expect("valid");
        assert_eq!(back, msg);
    }

    #[test]
    fn oversized_names_are_refused() {
        let mut msg = message(b"");
        msg.exchange = ByteString::from("x".repeat(256));
        assert!(matches!(
            message_record_len(&(&msg).into()),
            Err(StoreError::InvalidMessage(_))
        ));
    }

    #[test]
    fn file_names_and_headers() {
        assert_eq!(segment_file_name(7), "0000000007.seg");
        assert_eq!(parse_file_name("0000000007.acks"), Some(LogFile::Acks(7)));
        assert_eq!(parse_file_name("0000000007.seg"), Some(LogFile::Segment(7)));
        assert_eq!(parse_file_name("7.seg"), None);
        assert_eq!(parse_file_name("warren.lock"), None);
        assert!(check_file_header(&file_header(&SEGMENT_MAGIC), &SEGMENT_MAGIC).is_ok());
        assert!(check_file_header(&file_header(&ACKS_MAGIC), &SEGMENT_MAGIC).is_err());
        let mut h = file_header(&SEGMENT_MAGIC);
        h[11] = 2;
        assert!(
            check_file_header(&h, &SEGMENT_MAGIC)
                .expect_err("version")
                .contains("version 2")
        );
        assert_eq!(decode_ack_entry(encode_ack_entry(1234, true)), (1234, true));
        assert_eq!(decode_ack_entry(encode_ack_entry(16, false)), (16, false));
    }

    #[test]
    fn truncated_payloads_are_errors_not_panics() {
        let msg = message(b"body");
        let len = message_record_len(&(&msg).into()).expect("fits");
        let mut buf = Vec::new();
        encode_message(&mut buf, 0, &(&msg).into(), len);
        let payload = &buf[8..];
        for cut in 0..payload.len() {
            assert!(decode_message(Bytes::copy_from_slice(&payload[..cut])).is_err());
        }
    }
}

//! The on-disk format of a stream log, in one place: file names, chunks, entries, index
//! entries and chunk Bloom filters. Everything is big-endian.
//!
//! ```text
//! NNNNNNNNNN.sseg  header: "WARRENST" u32 version u32 reserved, then chunks:
//!   chunk: u32 body_len, u32 crc32(body), body
//!   body:  u64 term, u64 first_offset, u32 count, u64 timestamp_ms,
//!          u8 bloom_len, bloom, entries
//!   entry: u32 entry_len (of what follows), u8 flags (bit 0: filter value present),
//!          [shortstr filter_value], shortstr exchange, shortstr routing_key,
//!          u32 properties_len, properties, body (the rest)
//! NNNNNNNNNN.sidx  header: "WARRENSX" u32 version u32 reserved, then per chunk:
//!   u64 first_offset, u64 timestamp_ms, u32 chunk_pos, u32 count
//! ```
//!
//! A chunk holds the messages one group-commit round appended (see
//! `docs/streams-design.md`); the index is a hint that readers check against the chunk it
//! names. The term is reserved for replication and is 0 for now.

use bytes::Bytes;

use super::StoreError;
use super::format::FILE_HEADER_LEN;

/// Magic bytes opening every stream segment file.
pub const STREAM_SEGMENT_MAGIC: [u8; 8] = *b"WARRENST";
/// Magic bytes opening every stream index file.
pub const STREAM_INDEX_MAGIC: [u8; 8] = *b"WARRENSX";
/// Length of a chunk's header (body length and CRC32).
pub const CHUNK_HEADER_LEN: u64 = 8;
/// Bytes of a chunk body before its Bloom filter: term, first offset, count, timestamp,
/// Bloom length.
pub const CHUNK_FIXED_LEN: usize = 8 + 8 + 4 + 8 + 1;
/// Length of one index entry.
pub const INDEX_ENTRY_LEN: u64 = 24;
/// Entry flag: a filter value follows.
const FLAG_FILTER: u8 = 1;
/// Bytes of an entry besides its strings, properties and body: length, flags, the two
/// name lengths, the properties length.
const ENTRY_FIXED_LEN: usize = 4 + 1 + 1 + 1 + 4;

/// Which kind of file a directory entry of a stream log is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamFile {
    /// `NNNNNNNNNN.sseg`.
    Segment(u32),
    /// `NNNNNNNNNN.sidx`.
    Index(u32),
}

/// File name of segment `n`.
pub fn segment_file_name(n: u32) -> String {
    format!("{n:010}.sseg")
}

/// File name of the index of segment `n`.
pub fn index_file_name(n: u32) -> String {
    format!("{n:010}.sidx")
}

/// Recognises the files of a stream log; anything else is `None`.
pub fn parse_file_name(name: &str) -> Option<StreamFile> {
    let (n, ext) = super::format::numbered_file(name)?;
    match ext {
        "sseg" => Some(StreamFile::Segment(n)),
        "sidx" => Some(StreamFile::Index(n)),
        _ => None,
    }
}

/// A message to append to a stream, borrowed from wherever it is kept.
#[derive(Debug, Clone, Copy)]
pub struct StreamRecord<'a> {
    /// The publisher's `x-stream-filter-value`, if it set one (a string).
    pub filter_value: Option<&'a str>,
    /// Exchange the message was published to.
    pub exchange: &'a str,
    /// Routing key it was published with.
    pub routing_key: &'a str,
    /// Encoded content properties.
    pub properties: &'a [u8],
    /// The body.
    pub body: &'a [u8],
}

/// `s` cut to what a short string holds, at a character boundary.
fn short(s: &str) -> &[u8] {
    let mut end = s.len().min(usize::from(u8::MAX));
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s.as_bytes()[..end]
}

/// The encoded length of `record` as an entry, or an error if the format cannot hold it.
pub fn entry_len(record: &StreamRecord<'_>) -> Result<usize, StoreError> {
    let filter = record.filter_value.map_or(0, |f| 1 + short(f).len());
    let len = ENTRY_FIXED_LEN
        + filter
        + short(record.exchange).len()
        + short(record.routing_key).len()
        + record.properties.len()
        + record.body.len();
    if record.properties.len() > u32::MAX as usize || len > u32::MAX as usize {
        return Err(StoreError::InvalidMessage(
            "a stream entry is limited to 4 GiB",
        ));
    }
    Ok(len)
}

/// Appends `record` as an entry; `len` is its [`entry_len`].
pub fn encode_entry(buf: &mut Vec<u8>, record: &StreamRecord<'_>, len: usize) {
    buf.reserve(len);
    let after_len = u32::try_from(len - 4).unwrap_or(u32::MAX);
    buf.extend_from_slice(&after_len.to_be_bytes());
    match record.filter_value {
        Some(filter) => {
            buf.push(FLAG_FILTER);
            put_short(buf, short(filter));
        }
        None => buf.push(0),
    }
    put_short(buf, short(record.exchange));
    put_short(buf, short(record.routing_key));
    let properties_len = u32::try_from(record.properties.len()).unwrap_or(u32::MAX);
    buf.extend_from_slice(&properties_len.to_be_bytes());
    buf.extend_from_slice(record.properties);
    buf.extend_from_slice(record.body);
}

fn put_short(buf: &mut Vec<u8>, s: &[u8]) {
    buf.push(u8::try_from(s.len()).unwrap_or(u8::MAX));
    buf.extend_from_slice(s);
}

/// What a chunk's body says of itself before its entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkInfo {
    /// Offset of its first entry.
    pub first_offset: u64,
    /// How many entries it holds.
    pub count: u32,
    /// When its first entry was appended (ms since the epoch).
    pub timestamp_ms: u64,
}

impl ChunkInfo {
    /// The offset after its last entry.
    pub fn end_offset(&self) -> u64 {
        self.first_offset + u64::from(self.count)
    }
}

/// Writes a whole chunk (header, then body) of `count` entries already encoded in
/// `entries`, with a Bloom filter of `bloom`.
pub fn encode_chunk(out: &mut Vec<u8>, info: ChunkInfo, bloom: &[u8], entries: &[u8]) {
    let body_len = CHUNK_FIXED_LEN + bloom.len() + entries.len();
    out.reserve(CHUNK_HEADER_LEN as usize + body_len);
    out.extend_from_slice(&u32::try_from(body_len).unwrap_or(u32::MAX).to_be_bytes());
    let crc_at = out.len();
    out.extend_from_slice(&[0; 4]);
    let body_at = out.len();
    out.extend_from_slice(&0u64.to_be_bytes()); // term
    out.extend_from_slice(&info.first_offset.to_be_bytes());
    out.extend_from_slice(&info.count.to_be_bytes());
    out.extend_from_slice(&info.timestamp_ms.to_be_bytes());
    out.push(u8::try_from(bloom.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(bloom);
    out.extend_from_slice(entries);
    let crc = crc32fast::hash(&out[body_at..]);
    out[crc_at..crc_at + 4].copy_from_slice(&crc.to_be_bytes());
}

/// Reads a chunk header: (body length, CRC32).
pub fn decode_chunk_header(h: &[u8; CHUNK_HEADER_LEN as usize]) -> (u32, u32) {
    let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
    let crc = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
    (len, crc)
}

/// A chunk's body, checked against its CRC.
#[derive(Debug, Clone)]
pub struct ChunkBody {
    /// What it says of itself.
    pub info: ChunkInfo,
    bloom: Bytes,
    entries: Bytes,
}

impl ChunkBody {
    /// Decodes `body`, which must match `crc`.
    ///
    /// # Errors
    /// A checksum mismatch or a body too short for its own fields, as a sentence.
    pub fn decode(body: Bytes, crc: u32) -> Result<Self, &'static str> {
        if crc32fast::hash(&body) != crc {
            return Err("checksum mismatch");
        }
        if body.len() < CHUNK_FIXED_LEN {
            return Err("chunk too short");
        }
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&body[at..at + 8]);
            u64::from_be_bytes(b)
        };
        let first_offset = u64_at(8);
        let count = u32::from_be_bytes([body[16], body[17], body[18], body[19]]);
        let timestamp_ms = u64_at(20);
        let bloom_len = usize::from(body[28]);
        let entries_at = CHUNK_FIXED_LEN + bloom_len;
        if body.len() < entries_at {
            return Err("chunk too short for its Bloom filter");
        }
        Ok(Self {
            info: ChunkInfo {
                first_offset,
                count,
                timestamp_ms,
            },
            bloom: body.slice(CHUNK_FIXED_LEN..entries_at),
            entries: body.slice(entries_at..),
        })
    }

    /// Whether the chunk may hold an entry whose filter value is one of `values`, or
    /// (with `unfiltered`) an entry without one. False positives are possible, false
    /// negatives not.
    pub fn may_match(&self, values: &[impl AsRef<[u8]>], unfiltered: bool) -> bool {
        if self.bloom.is_empty() {
            // No entry has a filter value.
            return unfiltered;
        }
        (unfiltered && bloom_has(&self.bloom, 0))
            || values.iter().any(|v| {
                bloom_bits(v.as_ref(), self.bloom.len()).all(|b| bloom_has(&self.bloom, b))
            })
    }

    /// Its entries in order, each with its offset.
    pub fn entries(&self) -> Entries {
        Entries {
            rest: self.entries.clone(),
            next_offset: self.info.first_offset,
            left: self.info.count,
        }
    }
}

/// The entries of a chunk, decoded as they are reached.
#[derive(Debug, Clone)]
pub struct Entries {
    rest: Bytes,
    next_offset: u64,
    left: u32,
}

/// One message read from a stream: slices of the chunk it came in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntry {
    /// Its offset in the stream.
    pub offset: u64,
    /// The publisher's filter value, if any.
    pub filter_value: Option<Bytes>,
    /// Exchange it was published to.
    pub exchange: Bytes,
    /// Routing key it was published with.
    pub routing_key: Bytes,
    /// Encoded content properties.
    pub properties: Bytes,
    /// The body.
    pub body: Bytes,
}

impl Iterator for Entries {
    type Item = Result<StreamEntry, &'static str>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        let entry = self.decode_next();
        if entry.is_err() {
            self.left = 0;
        }
        Some(entry)
    }
}

impl Entries {
    fn decode_next(&mut self) -> Result<StreamEntry, &'static str> {
        let rest = &self.rest;
        if rest.len() < 4 {
            return Err("entry length cut short");
        }
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if rest.len() - 4 < len || len < ENTRY_FIXED_LEN - 4 {
            return Err("entry runs past its chunk");
        }
        let entry = rest.slice(4..4 + len);
        let mut at = 1;
        let take_short = |at: &mut usize| -> Result<Bytes, &'static str> {
            let n = usize::from(*entry.get(*at).ok_or("entry cut short")?);
            let s = entry.get(*at + 1..*at + 1 + n).ok_or("entry cut short")?;
            let s = entry.slice_ref(s);
            *at += 1 + n;
            Ok(s)
        };
        let filter_value = if entry[0] & FLAG_FILTER != 0 {
            Some(take_short(&mut at)?)
        } else {
            None
        };
        let exchange = take_short(&mut at)?;
        let routing_key = take_short(&mut at)?;
        let len_bytes = entry.get(at..at + 4).ok_or("entry cut short")?;
        let properties_len =
            u32::from_be_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]) as usize;
        at += 4;
        let properties_end = at.checked_add(properties_len).ok_or("entry cut short")?;
        if properties_end > entry.len() {
            return Err("properties run past their entry");
        }
        let item = StreamEntry {
            offset: self.next_offset,
            filter_value,
            exchange,
            routing_key,
            properties: entry.slice(at..properties_end),
            body: entry.slice(properties_end..),
        };
        self.rest = self.rest.slice(4 + len..);
        self.next_offset += 1;
        self.left -= 1;
        Ok(item)
    }
}

/// The two bits (of `bloom_len * 8`, never bit 0) a filter value sets.
fn bloom_bits(value: &[u8], bloom_len: usize) -> impl Iterator<Item = usize> {
    let bits = (bloom_len * 8).max(2);
    let first = crc32fast::hash(value) as usize;
    let mut second = crc32fast::Hasher::new_with_initial(0x9e37_79b9);
    second.update(value);
    let second = second.finalize() as usize;
    [first, second].into_iter().map(move |h| h % (bits - 1) + 1)
}

fn bloom_has(bloom: &[u8], bit: usize) -> bool {
    bloom
        .get(bit / 8)
        .is_some_and(|b| b & (1 << (bit % 8)) != 0)
}

/// A chunk's Bloom filter, built as its entries are appended.
#[derive(Debug, Clone, Default)]
pub struct Bloom {
    bits: Vec<u8>,
    /// Some entry has a filter value: the filter is written (else it is empty).
    used: bool,
}

impl Bloom {
    /// An empty filter of `len` bytes (16–255).
    pub fn new(len: u8) -> Self {
        Self {
            bits: vec![0; usize::from(len.max(1))],
            used: false,
        }
    }

    /// Adds an entry with `value` (or without a filter value: bit 0).
    pub fn add(&mut self, value: Option<&str>) {
        let bits: Vec<usize> = match value {
            Some(v) => bloom_bits(short(v), self.bits.len()).collect(),
            None => vec![0],
        };
        self.used |= value.is_some();
        for bit in bits {
            self.bits[bit / 8] |= 1 << (bit % 8);
        }
    }

    /// The bytes to write: none when no entry had a filter value.
    pub fn bytes(&self) -> &[u8] {
        if self.used { &self.bits } else { &[] }
    }

    /// Starts over for the next chunk.
    pub fn clear(&mut self) {
        self.bits.fill(0);
        self.used = false;
    }
}

/// One index entry: where a chunk starts and what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// The chunk's first offset, count and timestamp.
    pub info: ChunkInfo,
    /// Byte position of the chunk's header in its segment.
    pub pos: u64,
}

impl IndexEntry {
    /// The 24 bytes of this entry.
    pub fn encode(&self) -> [u8; INDEX_ENTRY_LEN as usize] {
        let mut e = [0u8; INDEX_ENTRY_LEN as usize];
        e[..8].copy_from_slice(&self.info.first_offset.to_be_bytes());
        e[8..16].copy_from_slice(&self.info.timestamp_ms.to_be_bytes());
        let pos = u32::try_from(self.pos).unwrap_or(u32::MAX);
        e[16..20].copy_from_slice(&pos.to_be_bytes());
        e[20..].copy_from_slice(&self.info.count.to_be_bytes());
        e
    }

    /// Reads an entry.
    pub fn decode(e: &[u8; INDEX_ENTRY_LEN as usize]) -> Self {
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&e[at..at + 8]);
            u64::from_be_bytes(b)
        };
        Self {
            info: ChunkInfo {
                first_offset: u64_at(0),
                count: u32::from_be_bytes([e[20], e[21], e[22], e[23]]),
                timestamp_ms: u64_at(8),
            },
            pos: u64::from(u32::from_be_bytes([e[16], e[17], e[18], e[19]])),
        }
    }

    /// The byte position of index entry `i` in an index file.
    pub fn file_pos(i: u64) -> u64 {
        FILE_HEADER_LEN + i * INDEX_ENTRY_LEN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record<'a>(filter: Option<&'a str>, body: &'a [u8]) -> StreamRecord<'a> {
        StreamRecord {
            filter_value: filter,
            exchange: "ex",
            routing_key: "rk",
            properties: &[0x80, 0x00, 4, b't', b'e', b'x', b't'],
            body,
        }
    }

    fn chunk(records: &[StreamRecord<'_>], first: u64, bloom_len: u8) -> Vec<u8> {
        let mut entries = Vec::new();
        let mut bloom = Bloom::new(bloom_len);
        for r in records {
            let len = entry_len(r).expect("fits");
            encode_entry(&mut entries, r, len);
            bloom.add(r.filter_value);
        }
        let info = ChunkInfo {
            first_offset: first,
            count: records.len() as u32,
            timestamp_ms: 1_700_000_000_000,
        };
        let mut out = Vec::new();
        encode_chunk(&mut out, info, bloom.bytes(), &entries);
        out
    }

    fn decode(bytes: &[u8]) -> ChunkBody {
        let header: [u8; 8] = bytes[..8].try_into().expect("a header");
        let (len, crc) = decode_chunk_header(&header);
        assert_eq!(len as usize, bytes.len() - 8);
        ChunkBody::decode(Bytes::copy_from_slice(&bytes[8..]), crc).expect("decodes")
    }

    #[test]
    fn a_chunk_decodes_to_the_entries_it_was_made_of() {
        let long = "é".repeat(200);
        let records = [
            record(Some("red"), b"one"),
            record(None, b""),
            StreamRecord {
                filter_value: Some(&long),
                exchange: &long,
                routing_key: "",
                properties: &[],
                body: &[7; 3000],
            },
        ];
        let body = decode(&chunk(&records, 41, 16));
        assert_eq!(body.info.first_offset, 41);
        assert_eq!(body.info.end_offset(), 44);
        let got: Vec<StreamEntry> = body.entries().map(|e| e.expect("an entry")).collect();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].offset, 41);
        assert_eq!(got[0].filter_value.as_deref(), Some(&b"red"[..]));
        assert_eq!(&got[0].exchange[..], b"ex");
        assert_eq!(&got[0].body[..], b"one");
        assert_eq!(got[1].filter_value, None);
        assert!(got[1].body.is_empty());
        // Names are cut to 255 bytes at a character boundary.
        let cut = got[2].exchange.len();
        assert!(cut <= 255 && std::str::from_utf8(&got[2].exchange).is_ok());
        assert_eq!(got[2].filter_value.as_ref().map(Bytes::len), Some(cut));
        assert_eq!(got[2].body.len(), 3000);
        assert_eq!(got[2].offset, 43);
    }

    #[test]
    fn a_damaged_chunk_is_refused() {
        let mut bytes = chunk(&[record(None, b"x")], 0, 16);
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let header: [u8; 8] = bytes[..8].try_into().expect("a header");
        let (_, crc) = decode_chunk_header(&header);
        assert!(ChunkBody::decode(Bytes::copy_from_slice(&bytes[8..]), crc).is_err());
    }

    #[test]
    fn entries_that_lie_about_their_length_end_the_chunk_with_an_error() {
        let mut entries = Vec::new();
        let r = record(None, b"abc");
        encode_entry(&mut entries, &r, entry_len(&r).expect("fits"));
        entries[3] = entries[3].wrapping_add(50);
        let info = ChunkInfo {
            first_offset: 0,
            count: 2,
            timestamp_ms: 0,
        };
        let mut out = Vec::new();
        encode_chunk(&mut out, info, &[], &entries);
        let mut it = decode(&out).entries();
        assert!(matches!(it.next(), Some(Err(_))));
        assert!(it.next().is_none());
    }

    #[test]
    fn the_bloom_filter_never_misses_a_value_it_holds() {
        let values: Vec<String> = (0..40).map(|i| format!("v{i}")).collect();
        let records: Vec<StreamRecord<'_>> = values
            .iter()
            .map(|v| record(Some(v.as_str()), b""))
            .collect();
        for bloom_len in [16, 64, 255] {
            let body = decode(&chunk(&records, 0, bloom_len));
            for v in &values {
                assert!(body.may_match(&[v.as_bytes()], false), "{v}");
            }
            // No entry without a value: unfiltered alone does not match.
            assert!(!body.may_match(&[] as &[&[u8]], true));
        }
        let sparse = decode(&chunk(&[record(Some("a"), b"")], 0, 255));
        let misses = (0..100)
            .filter(|i| sparse.may_match(&[format!("z{i}").as_bytes()], false))
            .count();
        assert!(misses < 10, "{misses} false positives of 100");
    }

    #[test]
    fn chunks_without_filter_values_match_only_unfiltered_readers() {
        let body = decode(&chunk(&[record(None, b"")], 0, 16));
        assert!(body.may_match(&[b"red"], true));
        assert!(!body.may_match(&[b"red"], false));
        let mixed = decode(&chunk(
            &[record(None, b""), record(Some("blue"), b"")],
            0,
            16,
        ));
        assert!(mixed.may_match(&[b"red"], true));
    }

    #[test]
    fn index_entries_round_trip() {
        let e = IndexEntry {
            info: ChunkInfo {
                first_offset: u64::MAX - 5,
                count: 4096,
                timestamp_ms: 1_700_000_000_123,
            },
            pos: u64::from(u32::MAX),
        };
        assert_eq!(IndexEntry::decode(&e.encode()), e);
        assert_eq!(IndexEntry::file_pos(2), FILE_HEADER_LEN + 48);
    }

    #[test]
    fn file_names_round_trip() {
        assert_eq!(
            parse_file_name(&segment_file_name(7)),
            Some(StreamFile::Segment(7))
        );
        assert_eq!(
            parse_file_name(&index_file_name(7)),
            Some(StreamFile::Index(7))
        );
        assert_eq!(parse_file_name("0000000007.seg"), None);
        assert_eq!(parse_file_name("offsets"), None);
    }
}

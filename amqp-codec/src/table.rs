//! Structural checks of encoded field tables before they are decoded, and reading or
//! copying their entries without decoding them.
//!
//! `amq-protocol` decodes nested tables and arrays recursively, one stack frame per
//! level, so a peer could crash the broker with a small, deeply nested frame. These
//! checks walk the encoding without allocating, with a bounded nesting depth, so only
//! tables that are safe to decode reach the decoder.
//!
//! The hot path (routing by a header, annotating deliveries) needs one entry of a
//! table, not all of it decoded: [`Entries`], [`find_header`] and [`value_size`] walk
//! the encoding flatly, reading only length prefixes, with no allocation.

/// Deepest nesting of tables and arrays accepted (RabbitMQ's own clients never come near).
pub const MAX_DEPTH: usize = 64;

/// Walks one field table (with its length prefix) at the start of `bytes`; returns the
/// bytes it occupies, or `None` if it is malformed or nested deeper than [`MAX_DEPTH`].
pub fn check_table(bytes: &[u8]) -> Option<usize> {
    table(bytes, 0)
}

/// Splits a value with a `u32` length prefix (a long string, byte array, array or
/// table) at the start of `bytes` into its content and the bytes it occupies, prefix
/// included; `None` if `bytes` is shorter than the prefix says.
pub fn length_prefixed(bytes: &[u8]) -> Option<(&[u8], usize)> {
    let len = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let body = bytes.get(4..4usize.checked_add(len)?)?;
    Some((body, 4 + len))
}

/// The size of a value of type `tag` (RabbitMQ's type tags) at the start of `bytes`,
/// the tag itself already read; `None` for an unknown tag or a value cut short.
///
/// Nested arrays and tables are sized by their length prefix alone, not walked: what
/// needs them checked uses [`check_table`] first.
pub fn value_size(tag: u8, bytes: &[u8]) -> Option<usize> {
    let size = match tag {
        b't' | b'b' | b'B' => 1,
        b's' | b'U' | b'u' => 2,
        b'I' | b'i' | b'f' => 4,
        b'D' => 5,
        b'L' | b'l' | b'd' | b'T' => 8,
        b'V' => 0,
        b'S' | b'x' | b'A' | b'F' => return length_prefixed(bytes).map(|(_, n)| n),
        _ => return None,
    };
    (bytes.len() >= size).then_some(size)
}

/// One entry of an encoded field table, as [`Entries`] yields it: slices of the table,
/// nothing decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The key (a short string, not checked to be UTF-8).
    pub name: &'a [u8],
    /// The value's type tag.
    pub tag: u8,
    /// The encoded value after its tag (a long string with its length prefix).
    pub value: &'a [u8],
    /// The whole entry as encoded (key length, key, tag, value), to copy it as it is.
    pub encoded: &'a [u8],
}

/// The entries of an encoded field table's content (the bytes after its length
/// prefix, as [`length_prefixed`] gives them), in order, without allocating.
///
/// Iteration stops at the end or at the first malformed entry; [`rest`](Self::rest)
/// then tells which: empty after the last entry, the unread bytes after a malformed
/// one, so callers that copy entries can fall back rather than emit a broken table.
#[derive(Debug, Clone)]
pub struct Entries<'a> {
    rest: &'a [u8],
}

impl<'a> Entries<'a> {
    /// The entries of the table content `body`.
    pub fn new(body: &'a [u8]) -> Self {
        Self { rest: body }
    }

    /// The bytes not read yet: empty once every entry was read, else the malformed
    /// entry iteration stopped at (and what follows it).
    pub fn rest(&self) -> &'a [u8] {
        self.rest
    }
}

impl<'a> Iterator for Entries<'a> {
    type Item = Entry<'a>;

    fn next(&mut self) -> Option<Entry<'a>> {
        let bytes = self.rest;
        let (&name_len, after_len) = bytes.split_first()?;
        let name_len = usize::from(name_len);
        let name = after_len.get(..name_len)?;
        let (&tag, after_tag) = after_len.get(name_len..)?.split_first()?;
        let size = value_size(tag, after_tag)?;
        let value = after_tag.get(..size)?;
        let used = 2 + name_len + size;
        let (encoded, rest) = bytes.split_at_checked(used)?;
        self.rest = rest;
        Some(Entry {
            name,
            tag,
            value,
            encoded,
        })
    }
}

/// The last value (type tag and encoded value) of header `name` in an encoded field
/// table (length prefix included), as RabbitMQ keeps the last of repeated keys; `None`
/// when absent or when the table is malformed (it should have been checked when the
/// content header was decoded, so that is only a safeguard).
pub fn find_header<'a>(table: &'a [u8], name: &[u8]) -> Option<(u8, &'a [u8])> {
    let (body, _) = length_prefixed(table)?;
    let mut entries = Entries::new(body);
    let found = entries.by_ref().filter(|e| e.name == name).last();
    if !entries.rest().is_empty() {
        return None;
    }
    found.map(|e| (e.tag, e.value))
}

fn table(bytes: &[u8], depth: usize) -> Option<usize> {
    if depth > MAX_DEPTH {
        return None;
    }
    let (mut body, total) = length_prefixed(bytes)?;
    while !body.is_empty() {
        let key_len = usize::from(*body.first()?);
        body = body.get(1 + key_len..)?;
        let used = value(body, depth)?;
        body = body.get(used..)?;
    }
    Some(total)
}

fn array(bytes: &[u8], depth: usize) -> Option<usize> {
    if depth > MAX_DEPTH {
        return None;
    }
    let (mut body, total) = length_prefixed(bytes)?;
    while !body.is_empty() {
        let used = value(body, depth)?;
        body = body.get(used..)?;
    }
    Some(total)
}

/// The size of one tagged value (tag included), using RabbitMQ's type tags; nested
/// arrays and tables are walked too.
fn value(bytes: &[u8], depth: usize) -> Option<usize> {
    let (&tag, rest) = bytes.split_first()?;
    match tag {
        b'A' => array(rest, depth + 1).map(|n| 1 + n),
        b'F' => table(rest, depth + 1).map(|n| 1 + n),
        _ => value_size(tag, rest).map(|n| 1 + n),
    }
}

/// Where a method's fields sit before its field table, for the methods that carry one.
#[derive(Clone, Copy)]
enum Field {
    Short,
    ShortStr,
    Bits,
    Table,
}

/// Checks every field table in a method payload (class and method ids included), so the
/// generic decoder never recurses deeply. Methods without tables pass unchecked; every
/// method `amq-protocol` decodes a table for is listed, the ones only servers send too
/// (a client that sends `connection.start` must get an error, not a stack overflow).
pub fn check_method_tables(payload: &[u8]) -> bool {
    use Field::{Bits, Short, ShortStr, Table};
    let (Some(class), Some(method)) = (payload.get(0..2), payload.get(2..4)) else {
        return false;
    };
    let ids = (
        u16::from_be_bytes([class[0], class[1]]),
        u16::from_be_bytes([method[0], method[1]]),
    );
    let layout: &[Field] = match ids {
        (10, 10) => &[Short, Table], // connection.start: two version octets, then a table
        (10, 11) => &[Table],        // connection.start-ok
        (40, 10) => &[Short, ShortStr, ShortStr, Bits, Table], // exchange.declare
        (40, 30) | (40, 40) => &[Short, ShortStr, ShortStr, ShortStr, Bits, Table], // exchange.bind/unbind
        (50, 10) => &[Short, ShortStr, Bits, Table],                                // queue.declare
        (50, 20) => &[Short, ShortStr, ShortStr, ShortStr, Bits, Table],            // queue.bind
        (50, 50) => &[Short, ShortStr, ShortStr, ShortStr, Table],                  // queue.unbind
        (60, 20) => &[Short, ShortStr, ShortStr, Bits, Table],                      // basic.consume
        _ => return true,
    };
    let mut at = 4usize;
    for field in layout {
        let used = match field {
            Short => Some(2),
            Bits => Some(1),
            ShortStr => payload.get(at).map(|n| 1 + usize::from(*n)),
            Table => payload.get(at..).and_then(check_table),
        };
        let Some(used) = used else {
            return false;
        };
        at += used;
        if at > payload.len() {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested_arrays(depth: usize) -> Vec<u8> {
        let mut value = vec![b'V'];
        for _ in 0..depth {
            let mut outer = vec![b'A'];
            outer.extend_from_slice(&(value.len() as u32).to_be_bytes());
            outer.extend_from_slice(&value);
            value = outer;
        }
        let mut entries = vec![1, b'k'];
        entries.extend_from_slice(&value);
        let mut table = (entries.len() as u32).to_be_bytes().to_vec();
        table.extend_from_slice(&entries);
        table
    }

    #[test]
    fn shallow_tables_pass_and_deep_ones_do_not() {
        let shallow = nested_arrays(3);
        assert_eq!(check_table(&shallow), Some(shallow.len()));
        assert_eq!(check_table(&nested_arrays(MAX_DEPTH + 5)), None);
        assert_eq!(check_table(&nested_arrays(5_000)), None);
    }

    #[test]
    fn truncated_and_unknown_values_are_malformed() {
        assert_eq!(check_table(&[0, 0, 0, 3, 1, b'k', b'I']), None);
        assert_eq!(check_table(&[0, 0, 0, 3, 1, b'k', b'?']), None);
        assert_eq!(check_table(&[0, 0, 0, 0]), Some(4));
        assert_eq!(check_table(&[0, 0, 9]), None);
    }

    /// A table of `entries` (name, tag, encoded value), encoded by hand.
    fn table_of(entries: &[(&str, u8, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (name, tag, value) in entries {
            body.push(name.len() as u8);
            body.extend_from_slice(name.as_bytes());
            body.push(*tag);
            body.extend_from_slice(value);
        }
        let mut table = (body.len() as u32).to_be_bytes().to_vec();
        table.extend_from_slice(&body);
        table
    }

    #[test]
    fn value_sizes_follow_rabbitmq_type_tags() {
        let nine = [0u8; 9];
        for (tags, size) in [
            (&b"tbB"[..], 1),
            (b"sUu", 2),
            (b"Iif", 4),
            (b"D", 5),
            (b"LldT", 8),
            (b"V", 0),
        ] {
            for &tag in tags {
                assert_eq!(value_size(tag, &nine), Some(size), "{}", tag as char);
                assert_eq!(value_size(tag, &nine[..size]), Some(size));
                if size > 0 {
                    assert_eq!(value_size(tag, &nine[..size - 1]), None);
                }
            }
        }
        for tag in *b"SxAF" {
            assert_eq!(value_size(tag, &[0, 0, 0, 2, 7, 7, 7]), Some(6));
            assert_eq!(value_size(tag, &[0, 0, 0, 2, 7]), None);
            assert_eq!(value_size(tag, &[0, 0]), None);
        }
        assert_eq!(value_size(b'?', &nine), None);
        assert_eq!(length_prefixed(&[0, 0, 0, 1, 9, 8]), Some((&[9u8][..], 5)));
        assert_eq!(length_prefixed(&[0xff, 0xff, 0xff, 0xff]), None);
    }

    #[test]
    fn entries_are_slices_of_the_table() {
        let table = table_of(&[
            ("a", b'I', &[0, 0, 0, 7]),
            ("bb", b'S', &[0, 0, 0, 2, b'h', b'i']),
            ("", b'V', &[]),
            ("nest", b'F', &[0, 0, 0, 0]),
        ]);
        let (body, used) = length_prefixed(&table).expect("a table");
        assert_eq!(used, table.len());
        let mut entries = Entries::new(body);
        let read: Vec<Entry<'_>> = entries.by_ref().collect();
        assert!(entries.rest().is_empty());
        let names: Vec<&[u8]> = read.iter().map(|e| e.name).collect();
        assert_eq!(names, [&b"a"[..], b"bb", b"", b"nest"]);
        assert_eq!(read[1].tag, b'S');
        assert_eq!(read[1].value, &[0, 0, 0, 2, b'h', b'i']);
        assert_eq!(read[0].encoded, &[1, b'a', b'I', 0, 0, 0, 7]);
        // The entries tile the table's content.
        assert_eq!(
            read.iter()
                .flat_map(|e| e.encoded)
                .copied()
                .collect::<Vec<u8>>(),
            body
        );
    }

    #[test]
    fn entries_stop_at_a_malformed_entry() {
        for malformed in [
            &[1, b'k', b'I', 0, 0][..], // value cut short
            &[1, b'k', b'?', 0],        // unknown tag
            &[5, b'k'],                 // name cut short
            &[1, b'k'],                 // no tag
        ] {
            let mut body = vec![1, b'a', b't', 1];
            body.extend_from_slice(malformed);
            let mut entries = Entries::new(&body);
            assert_eq!(entries.next().map(|e| e.name), Some(&b"a"[..]));
            assert_eq!(entries.next(), None);
            assert_eq!(entries.rest(), malformed);
        }
    }

    #[test]
    fn find_header_gives_the_last_value_of_a_name() {
        let table = table_of(&[
            ("k", b'S', &[0, 0, 0, 1, b'x']),
            ("other", b'b', &[0xff]),
            ("k", b'l', &[0, 0, 0, 0, 0, 0, 0, 9]),
        ]);
        assert_eq!(
            find_header(&table, b"k"),
            Some((b'l', &[0, 0, 0, 0, 0, 0, 0, 9][..]))
        );
        assert_eq!(find_header(&table, b"other"), Some((b'b', &[0xff][..])));
        assert_eq!(find_header(&table, b"missing"), None);
        assert_eq!(find_header(&table, b""), None);
        assert_eq!(find_header(&[0, 0, 0, 0], b"k"), None);
        // Malformed: cut short, or a bad entry after the one asked for.
        assert_eq!(find_header(&table[..table.len() - 1], b"other"), None);
        let mut bad = table_of(&[("k", b'S', &[0, 0, 0, 1, b'x']), ("z", b'?', &[])]);
        assert_eq!(find_header(&bad, b"k"), None);
        bad.truncate(2);
        assert_eq!(find_header(&bad, b"k"), None);
    }

    #[test]
    fn find_header_reads_what_amq_protocol_wrote() {
        use amq_protocol::types::generation::gen_field_table;
        use amq_protocol::types::{AMQPValue, FieldArray, FieldTable};
        let mut t = FieldTable::default();
        t.insert("bool".into(), AMQPValue::Boolean(true));
        t.insert("i8".into(), AMQPValue::ShortShortInt(-3));
        t.insert("u16".into(), AMQPValue::ShortUInt(65_000));
        t.insert("i32".into(), AMQPValue::LongInt(-70_000));
        t.insert("i64".into(), AMQPValue::LongLongInt(1 << 40));
        t.insert("f64".into(), AMQPValue::Double(1.5));
        t.insert("ts".into(), AMQPValue::Timestamp(1_700_000_000));
        t.insert("str".into(), AMQPValue::LongString("hello".into()));
        t.insert("void".into(), AMQPValue::Void);
        t.insert(
            "arr".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::LongInt(1)])),
        );
        t.insert("tbl".into(), AMQPValue::FieldTable(t.clone()));
        let (encoded, _) = cookie_factory::r#gen(gen_field_table(&t), Vec::new()).expect("encodes");
        for (name, tag, value) in [
            ("bool", b't', &[1u8][..]),
            ("i8", b'b', &[0xfd]),
            ("u16", b'u', &65_000u16.to_be_bytes()),
            ("i32", b'I', &(-70_000i32).to_be_bytes()),
            ("i64", b'l', &(1i64 << 40).to_be_bytes()),
            ("f64", b'd', &1.5f64.to_be_bytes()),
            ("ts", b'T', &1_700_000_000u64.to_be_bytes()),
            ("str", b'S', b"\0\0\0\x05hello"),
            ("void", b'V', &[]),
            ("arr", b'A', &[0, 0, 0, 5, b'I', 0, 0, 0, 1]),
        ] {
            assert_eq!(
                find_header(&encoded, name.as_bytes()),
                Some((tag, value)),
                "{name}"
            );
        }
        let (tag, nested) = find_header(&encoded, b"tbl").expect("nested table");
        assert_eq!(tag, b'F');
        assert_eq!(check_table(nested), Some(nested.len()));
        assert_eq!(find_header(nested, b"i64").map(|(t, _)| t), Some(b'l'));
    }

    #[test]
    fn method_layouts_find_the_table() {
        // queue.declare with a deep argument table.
        let mut payload = vec![0, 50, 0, 10, 0, 0, 1, b'q', 0];
        payload.extend_from_slice(&nested_arrays(1000));
        assert!(!check_method_tables(&payload));
        let mut payload = vec![0, 50, 0, 10, 0, 0, 1, b'q', 0];
        payload.extend_from_slice(&nested_arrays(2));
        assert!(check_method_tables(&payload));
        // basic.ack carries no table.
        assert!(check_method_tables(&[
            0, 60, 0, 80, 0, 0, 0, 0, 0, 0, 0, 1, 0
        ]));
    }
}

//! Structural checks of encoded field tables before they are decoded.
//!
//! `amq-protocol` decodes nested tables and arrays recursively, one stack frame per
//! level, so a peer could crash the broker with a small, deeply nested frame. These
//! checks walk the encoding without allocating, with a bounded nesting depth, so only
//! tables that are safe to decode reach the decoder.

/// Deepest nesting of tables and arrays accepted (RabbitMQ's own clients never come near).
pub const MAX_DEPTH: usize = 64;

/// Walks one field table (with its length prefix) at the start of `bytes`; returns the
/// bytes it occupies, or `None` if it is malformed or nested deeper than [`MAX_DEPTH`].
pub fn check_table(bytes: &[u8]) -> Option<usize> {
    table(bytes, 0)
}

fn length_prefixed(bytes: &[u8]) -> Option<(&[u8], usize)> {
    let len = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let body = bytes.get(4..4usize.checked_add(len)?)?;
    Some((body, 4 + len))
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

/// The size of one tagged value (tag included), using RabbitMQ's type tags.
fn value(bytes: &[u8], depth: usize) -> Option<usize> {
    let rest = bytes.get(1..)?;
    let fixed = |n: usize| (rest.len() >= n).then_some(1 + n);
    match bytes.first()? {
        b't' | b'b' | b'B' => fixed(1),
        b's' | b'U' | b'u' => fixed(2),
        b'I' | b'i' | b'f' => fixed(4),
        b'D' => fixed(5),
        b'L' | b'l' | b'd' | b'T' => fixed(8),
        b'V' => Some(1),
        b'S' | b'x' => length_prefixed(rest).map(|(_, n)| 1 + n),
        b'A' => array(rest, depth + 1).map(|n| 1 + n),
        b'F' => table(rest, depth + 1).map(|n| 1 + n),
        _ => None,
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

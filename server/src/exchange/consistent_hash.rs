//! The consistent-hash exchange (`x-consistent-hash`, RabbitMQ's
//! `rabbitmq_consistent_hash_exchange` plugin): every message goes to exactly one
//! destination, picked by hashing the message onto a ring on which each binding holds
//! points in proportion to its weight (its binding key, a decimal integer).
//!
//! What is hashed is the routing key, or with the exchange argument `hash-header` the
//! value of that header, or with `hash-property` the `message_id`, `correlation_id` or
//! `timestamp` property. A message without that header or property is still routed: as
//! in the plugin, all such messages hash alike and go to one (arbitrary) destination.
//!
//! Each destination holds [`POINTS_PER_WEIGHT`] points per unit of weight, placed by
//! hashing the destination's name with the point's number, so a destination's points do
//! not depend on the other bindings: binding or unbinding moves only the keys that the
//! affected destination gains or loses. The ring is a sorted `Vec`, searched in
//! `O(log n)` per message; it is updated by merging on bind and filtering on unbind.
//!
//! As in the plugin, only one binding per destination counts: a second binding to the
//! same queue or exchange (with another weight) is kept but holds no points while the
//! first exists. The plugin is not bit-compatible here: it uses Erlang's `phash2` and
//! jump consistent hashing, which keeps exact proportions but moves other bindings' keys
//! when a binding other than the last is removed.

use std::cmp::Ordering;
use std::fmt;

use amqp_codec::amq_protocol::types::{AMQPValue, FieldTable};
use amqp_codec::properties::Property;
use amqp_codec::table::{find_header, value_size};

use super::{Binding, Destination, DestinationKind, Routed, Router};
use crate::erlang;
use crate::error::{self, AmqpResult};
use crate::message::Message;
use crate::queue::arguments::type_name;
use crate::queue::partition_key::{Digits, HashOn, parse_hash_property, property_key};

/// The exchange argument naming a header whose value is hashed instead of the routing
/// key.
pub const HASH_HEADER: &str = "hash-header";

/// The exchange argument naming a property (`message_id`, `correlation_id` or
/// `timestamp`) whose value is hashed instead of the routing key.
pub const HASH_PROPERTY: &str = "hash-property";

/// The largest binding weight the plugin accepts (`MAX_BINDING_WEIGHT`).
pub const MAX_WEIGHT: u32 = 10_000;

/// Ring points a destination holds per unit of weight. One point per unit (as the
/// plugin's buckets) would leave shares to chance with few bindings; with a hundred a
/// destination's share typically strays about a tenth from its weight's proportion
/// (weights 1 and 3: 25% ± 2.2 points). Each point costs 8 bytes, so a binding of the
/// largest weight holds 8 MB, and a bind or unbind costs time linear in the points.
pub const POINTS_PER_WEIGHT: u32 = 100;

/// A binding, with what the ring needs to know of it.
#[derive(Debug)]
struct Entry {
    binding: Binding,
    /// Its weight; 0 when the key is not a valid weight (it then holds no points).
    weight: u32,
    /// Whether it holds the destination's points: the first binding, in bind order, with
    /// a valid weight to its destination.
    on_ring: bool,
}

/// One point on the ring, owned by `self.entries[entry]`.
#[derive(Debug, Clone, Copy)]
struct Point {
    hash: u32,
    entry: u32,
}

/// Bindings and the hash ring built from them.
pub struct ConsistentHashRouter {
    hash_on: HashOn,
    /// Every binding, in bind order.
    entries: Vec<Entry>,
    /// Points of the bindings on the ring, sorted by hash then destination.
    ring: Vec<Point>,
}

impl fmt::Debug for ConsistentHashRouter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsistentHashRouter")
            .field("hash_on", &self.hash_on)
            .field("entries", &self.entries)
            .field("points", &self.ring.len())
            .finish()
    }
}

impl Default for ConsistentHashRouter {
    /// A router hashing routing keys, for an exchange declared without arguments.
    fn default() -> Self {
        Self::with(HashOn::RoutingKey)
    }
}

impl ConsistentHashRouter {
    /// A router for an exchange declared with `arguments`, which
    /// [`check_arguments`](Self::check_arguments) should have accepted. Arguments it
    /// would reject (as recovered from an older store) fall back leniently: a string
    /// `hash-header` wins, then a known `hash-property`, else the routing key is hashed.
    pub fn new(arguments: &FieldTable) -> Self {
        let header = arguments.inner().get(HASH_HEADER).and_then(string_bytes);
        let property = arguments.inner().get(HASH_PROPERTY).and_then(string_bytes);
        let hash_on = match (header, property.and_then(parse_hash_property)) {
            (Some(name), _) => HashOn::Header(name.into()),
            (None, Some(property)) => HashOn::Property(property),
            (None, None) => HashOn::RoutingKey,
        };
        Self::with(hash_on)
    }

    fn with(hash_on: HashOn) -> Self {
        Self {
            hash_on,
            entries: Vec::new(),
            ring: Vec::new(),
        }
    }

    /// Validates the arguments of a new `x-consistent-hash` exchange as the plugin's
    /// `validate/1` does (RabbitMQ calls it only when the exchange is created, not on
    /// redeclaration, and compares only `alternate-exchange` between declarations).
    ///
    /// # Errors
    /// 406 PRECONDITION_FAILED:
    /// - `hash-header and hash-property are mutually exclusive` when both are given;
    /// - `Unsupported property: foo` for a `hash-property` other than `message_id`,
    ///   `correlation_id` or `timestamp`;
    /// - `invalid type 'long' for arg 'hash-header' in exchange 'x' in vhost '/'` when
    ///   either is not a string (the plugin crashes there instead; the text is the one
    ///   Warren gives for a mistyped `alternate-exchange`).
    pub fn check_arguments(arguments: &FieldTable, exchange: &str, vhost: &str) -> AmqpResult<()> {
        let string_arg = |key: &str| match arguments.inner().get(key) {
            None => Ok(None),
            Some(value) => string_bytes(value).map(Some).ok_or_else(|| {
                error::precondition(format!(
                    "invalid type '{}' for arg '{key}' in exchange '{exchange}' in vhost '{vhost}'",
                    type_name(value)
                ))
            }),
        };
        let header = string_arg(HASH_HEADER)?;
        let property = string_arg(HASH_PROPERTY)?;
        match (header, property) {
            (Some(_), Some(_)) => Err(error::precondition(
                "hash-header and hash-property are mutually exclusive",
            )),
            (None, Some(name)) if parse_hash_property(name).is_none() => Err(error::precondition(
                format!("Unsupported property: {}", String::from_utf8_lossy(name)),
            )),
            _ => Ok(()),
        }
    }

    /// Validates a binding key as the plugin's `validate_binding/2` does: it must be a
    /// decimal integer (optionally signed, as Erlang's `list_to_integer` reads it) from 1
    /// to [`MAX_WEIGHT`]. Call it before [`Router::bind`], which cannot fail.
    ///
    /// # Errors
    /// 406 PRECONDITION_FAILED (RabbitMQ's answer to `binding_invalid`):
    /// - `The binding key must be an integer: <<"abc">>` (the key printed as an Erlang
    ///   binary, `~tp`);
    /// - `The binding key must be greater than 0`;
    /// - `The binding key must not exceed 10000`.
    pub fn check_binding_key(key: &str) -> AmqpResult<()> {
        match parse_integer(key) {
            None => Err(error::precondition(format!(
                "The binding key must be an integer: {}",
                erlang::binary(key.as_bytes())
            ))),
            Some(n) if n < 1 => Err(error::precondition(
                "The binding key must be greater than 0",
            )),
            Some(n) if n > i64::from(MAX_WEIGHT) => Err(error::precondition(format!(
                "The binding key must not exceed {MAX_WEIGHT}"
            ))),
            Some(_) => Ok(()),
        }
    }

    /// Total points on the ring (memory is 8 bytes a point).
    #[cfg(test)]
    fn points(&self) -> usize {
        self.ring.len()
    }

    /// The ring position of `message`.
    fn message_hash(&self, message: &Message) -> u32 {
        let mut h = Hasher::new();
        match &self.hash_on {
            HashOn::RoutingKey => h.write(message.routing_key().as_bytes()),
            HashOn::Header(name) => {
                let value = message
                    .properties()
                    .and_then(|p| p.raw(Property::Headers))
                    .and_then(|table| find_header(table, name));
                match value {
                    Some((tag, bytes)) => hash_value(&mut h, tag, bytes, true),
                    None => h.write_undefined(),
                }
            }
            HashOn::Property(property) => {
                let mut digits: Digits = [0; 40];
                let key = message
                    .properties()
                    .and_then(|p| property_key(&p, *property, &mut digits));
                match key {
                    Some(bytes) => h.write(bytes),
                    None => h.write_undefined(),
                }
            }
        }
        h.finish()
    }

    /// Puts the points of `self.entries[index]` on the ring.
    fn add_points(&mut self, index: usize) {
        let (Some(entry), Ok(owner)) = (self.entries.get(index), u32::try_from(index)) else {
            return;
        };
        let count = entry.weight.saturating_mul(POINTS_PER_WEIGHT);
        let destination = &entry.binding.destination;
        let mut points: Vec<Point> = (0..count)
            .map(|i| Point {
                hash: point_hash(destination, i),
                entry: owner,
            })
            .collect();
        let entries = &self.entries;
        points.sort_unstable_by(|a, b| ring_order(entries, a, b));
        // Two sorted runs: the stable sort finds them and merges them in linear time.
        self.ring.extend(points);
        self.ring.sort_by(|a, b| ring_order(entries, a, b));
    }

    /// Removes the entries `remove` picks, with their points, and gives each destination
    /// that lost its points but keeps a binding with a weight that binding's points.
    fn remove_entries(&mut self, mut remove: impl FnMut(&Binding) -> bool) -> usize {
        let mut new_index = Vec::with_capacity(self.entries.len());
        let mut orphaned: Vec<(DestinationKind, String)> = Vec::new();
        let mut kept = 0u32;
        let mut removed = 0;
        self.entries.retain(|e| {
            if remove(&e.binding) {
                new_index.push(None);
                removed += 1;
                if e.on_ring {
                    let d = &e.binding.destination;
                    orphaned.push((d.kind(), d.name().to_owned()));
                }
                false
            } else {
                new_index.push(Some(kept));
                kept += 1;
                true
            }
        });
        if removed == 0 {
            return 0;
        }
        self.ring.retain_mut(
            |p| match new_index.get(p.entry as usize).copied().flatten() {
                Some(i) => {
                    p.entry = i;
                    true
                }
                None => false,
            },
        );
        for (kind, name) in orphaned {
            let heir = self
                .entries
                .iter()
                .position(|e| e.weight > 0 && e.binding.targets(kind, &name));
            if let Some(heir) = heir {
                if let Some(e) = self.entries.get_mut(heir) {
                    e.on_ring = true;
                }
                self.add_points(heir);
            }
        }
        removed
    }
}

impl Router for ConsistentHashRouter {
    fn bind(&mut self, binding: Binding) -> bool {
        let (kind, name) = (binding.destination.kind(), binding.destination.name());
        if self.entries.iter().any(|e| {
            e.binding
                .is(kind, name, &binding.routing_key, &binding.arguments)
        }) {
            return false;
        }
        let weight = weight(&binding.routing_key);
        let on_ring = weight > 0
            && !self
                .entries
                .iter()
                .any(|e| e.on_ring && e.binding.targets(kind, name));
        self.entries.push(Entry {
            binding,
            weight,
            on_ring,
        });
        if on_ring {
            self.add_points(self.entries.len() - 1);
        }
        true
    }

    fn unbind(
        &mut self,
        kind: DestinationKind,
        name: &str,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> bool {
        self.remove_entries(|b| b.is(kind, name, routing_key, arguments)) > 0
    }

    fn remove_destination(&mut self, kind: DestinationKind, name: &str) {
        self.remove_entries(|b| b.targets(kind, name));
    }

    fn route(&self, message: &Message, out: &mut Routed) {
        if self.ring.is_empty() {
            return;
        }
        let hash = self.message_hash(message);
        let at = self.ring.partition_point(|p| p.hash < hash);
        let point = self.ring.get(at).or_else(|| self.ring.first());
        if let Some(entry) = point.and_then(|p| self.entries.get(p.entry as usize)) {
            entry.binding.deliver_to(out);
        }
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    fn bindings(&self) -> Vec<Binding> {
        self.entries.iter().map(|e| e.binding.clone()).collect()
    }
}

/// The weight a binding key gives, 0 if it is not a valid one.
fn weight(key: &str) -> u32 {
    match parse_integer(key) {
        Some(n) if (1..=i64::from(MAX_WEIGHT)).contains(&n) => u32::try_from(n).unwrap_or(0),
        _ => 0,
    }
}

/// An integer as Erlang's `list_to_integer` reads it (an optional `+` or `-`, then one
/// or more ASCII digits, nothing else), saturating where Erlang would use a bignum.
fn parse_integer(s: &str) -> Option<i64> {
    let (negative, digits) = match s.as_bytes() {
        [b'-', rest @ ..] => (true, rest),
        [b'+', rest @ ..] => (false, rest),
        rest => (false, rest),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let magnitude = digits.iter().fold(0i64, |n, d| {
        n.saturating_mul(10).saturating_add(i64::from(d - b'0'))
    });
    Some(if negative { -magnitude } else { magnitude })
}

/// The bytes of a string argument (`longstr`; Warren's short strings count as such).
fn string_bytes(value: &AMQPValue) -> Option<&[u8]> {
    match value {
        AMQPValue::LongString(s) => Some(s.as_bytes()),
        AMQPValue::ShortString(s) => Some(s.as_str().as_bytes()),
        _ => None,
    }
}

/// The order of points on the ring: by hash, then (for the rare equal hashes of two
/// destinations) by destination, so the ring does not depend on bind order.
fn ring_order(entries: &[Entry], a: &Point, b: &Point) -> Ordering {
    a.hash.cmp(&b.hash).then_with(|| {
        let key = |p: &Point| {
            entries.get(p.entry as usize).map(|e| {
                let d = &e.binding.destination;
                (d.kind() == DestinationKind::Exchange, d.name())
            })
        };
        key(a).cmp(&key(b))
    })
}

/// The position of point `index` of `destination`.
fn point_hash(destination: &Destination, index: u32) -> u32 {
    let mut h = Hasher::new();
    h.write(match destination.kind() {
        DestinationKind::Queue => b"q",
        DestinationKind::Exchange => b"e",
    });
    h.write(destination.name().as_bytes());
    h.write(&[0]);
    h.write(&index.to_be_bytes());
    h.finish()
}

/// Prefix of hashed values that are not strings, so they differ from the strings they
/// are (rarely) spelled like.
const TAG: u8 = 0xff;

/// FNV-1a over the bytes, finished with MurmurHash3's 64-bit mixer so that every bit of
/// the result depends on every input bit; the ring uses the top 32 bits. Stable across
/// builds and platforms, and allocation-free.
struct Hasher(u64);

impl Hasher {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    /// What a missing header or property hashes as (Erlang's `undefined`): one value,
    /// so all such messages go to one destination.
    fn write_undefined(&mut self) {
        self.write(&[TAG, b'u']);
    }

    fn finish(&self) -> u32 {
        let mut k = self.0;
        k ^= k >> 33;
        k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
        k ^= k >> 33;
        k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        k ^= k >> 33;
        (k >> 32) as u32
    }
}

/// Hashes a header value the way RabbitMQ sees it as an Erlang term, so that values it
/// treats as equal hash alike: strings and byte arrays as their bytes (like a routing
/// key), every integer type as its number (timestamps in milliseconds), `void` as a
/// missing header, and an array or table by its first element (the plugin hashes the
/// head of the list), or as one value when empty. `first` is false inside an array or
/// table, where nested ones are hashed whole.
fn hash_value(h: &mut Hasher, tag: u8, bytes: &[u8], first: bool) {
    let int = |h: &mut Hasher, n: i128| {
        h.write(&[TAG, b'i']);
        h.write(&n.to_be_bytes());
    };
    let fixed = |n: usize| bytes.get(..n).unwrap_or_default();
    match tag {
        b'S' | b'x' => h.write(bytes.get(4..).unwrap_or_default()),
        b'b' => int(h, i128::from(fixed(1).first().map_or(0, |&b| b as i8))),
        b'B' => int(h, i128::from(fixed(1).first().copied().unwrap_or(0))),
        b's' | b'U' => int(h, i128::from(i16::from_be_bytes(array(fixed(2))))),
        b'u' => int(h, i128::from(u16::from_be_bytes(array(fixed(2))))),
        b'I' => int(h, i128::from(i32::from_be_bytes(array(fixed(4))))),
        b'i' => int(h, i128::from(u32::from_be_bytes(array(fixed(4))))),
        b'L' | b'l' => int(h, i128::from(i64::from_be_bytes(array(fixed(8))))),
        b'T' => int(h, i128::from(u64::from_be_bytes(array(fixed(8)))) * 1000),
        b't' => h.write(&[TAG, b't', fixed(1).first().copied().unwrap_or(0)]),
        b'f' => {
            let x = f64::from(f32::from_be_bytes(array(fixed(4))));
            h.write(&[TAG, b'f']);
            h.write(&x.to_bits().to_be_bytes());
        }
        b'd' => {
            h.write(&[TAG, b'f']);
            h.write(fixed(8));
        }
        b'D' => {
            h.write(&[TAG, b'D']);
            h.write(fixed(5));
        }
        b'A' if first => match bytes.get(4..).and_then(|b| b.split_first()) {
            Some((&tag, rest)) => {
                let size = value_size(tag, rest).unwrap_or(0);
                hash_value(h, tag, rest.get(..size).unwrap_or_default(), false);
            }
            None => h.write(&[TAG, b'[']),
        },
        b'F' if first => match bytes.get(4..).and_then(|b| b.split_first()) {
            Some((&key_len, rest)) => {
                let key_len = usize::from(key_len);
                h.write(&[TAG, b'{']);
                h.write(rest.get(..key_len).unwrap_or_default());
                if let Some((&tag, rest)) = rest.get(key_len..).and_then(|r| r.split_first()) {
                    let size = value_size(tag, rest).unwrap_or(0);
                    hash_value(h, tag, rest.get(..size).unwrap_or_default(), false);
                }
            }
            None => h.write(&[TAG, b'[']),
        },
        b'A' | b'F' => {
            h.write(&[TAG, tag]);
            h.write(bytes);
        }
        _ => h.write_undefined(),
    }
}

/// The first `N` bytes of `bytes` as an array, zero-padded if short (values were length
/// checked before, so padding never happens in practice).
fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    for (o, b) in out.iter_mut().zip(bytes) {
        *o = *b;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;
    use amqp_codec::ReplyCode;
    use amqp_codec::ShortStr;
    use amqp_codec::amq_protocol::protocol::BasicProperties;
    use amqp_codec::amq_protocol::types::{FieldArray, ShortString};
    use amqp_codec::properties::encode_properties;
    use bytes::Bytes;
    use std::collections::HashMap;
    use std::sync::Arc;

    use crate::queue::Queue;

    fn args(pairs: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert(ShortString::from(*k), v.clone());
        }
        t
    }

    fn text(s: &str) -> AMQPValue {
        AMQPValue::LongString(s.into())
    }

    fn no_args() -> FieldTable {
        FieldTable::default()
    }

    /// The one destination `message` goes to, by name (`None` if unrouted).
    fn dest(router: &ConsistentHashRouter, message: &Message) -> Option<String> {
        let mut out = Routed::default();
        router.route(message, &mut out);
        let mut names: Vec<String> = out.queues.iter().map(|q| q.name().to_string()).collect();
        names.extend(out.exchanges.iter().map(|e| format!("x:{e}")));
        assert!(names.len() <= 1, "routed to {names:?}");
        names.pop()
    }

    fn key(i: usize) -> Message {
        message(&format!("key-{i}"), Bytes::from_static(&[0, 0]))
    }

    fn with_properties(key: &str, properties: BasicProperties) -> Message {
        message(key, encode_properties(&properties))
    }

    fn with_header(key: &str, name: &str, value: AMQPValue) -> Message {
        let properties = BasicProperties::default().with_headers(args(&[(name, value)]));
        with_properties(key, properties)
    }

    /// How many of 10,000 keys each destination gets.
    fn shares(router: &ConsistentHashRouter) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for i in 0..10_000 {
            if let Some(d) = dest(router, &key(i)) {
                *counts.entry(d).or_insert(0) += 1;
            }
        }
        counts
    }

    fn bound(bindings: &[(&Arc<Queue>, &str)]) -> ConsistentHashRouter {
        let mut r = ConsistentHashRouter::default();
        for (q, weight) in bindings {
            assert!(r.bind(binding(q, weight, no_args())));
        }
        r
    }

    fn assert_precondition(result: AmqpResult<()>, expected: &str) {
        let err = result.expect_err(expected);
        assert_eq!(err.code, ReplyCode::PreconditionFailed);
        assert_eq!(err.text, expected);
    }

    #[test]
    fn binding_keys_are_checked_as_the_plugin_does() {
        for ok in ["1", "3", "10000", "+5", "007"] {
            assert!(ConsistentHashRouter::check_binding_key(ok).is_ok(), "{ok}");
        }
        let positive = "The binding key must be greater than 0";
        for low in ["0", "-3", "-0", "-99999999999999999999999"] {
            assert_precondition(ConsistentHashRouter::check_binding_key(low), positive);
        }
        let high = "The binding key must not exceed 10000";
        for big in ["10001", "99999999999999999999999"] {
            assert_precondition(ConsistentHashRouter::check_binding_key(big), high);
        }
        for (bad, printed) in [
            ("abc", r#"<<"abc">>"#),
            ("", "<<>>"),
            ("1.5", r#"<<"1.5">>"#),
            (" 1", r#"<<" 1">>"#),
            ("+", r#"<<"+">>"#),
            ("1_000", r#"<<"1_000">>"#),
            ("a\"b", r#"<<"a\"b">>"#),
            ("é", r#"<<"é"/utf8>>"#),
            ("\u{1}", "<<1>>"),
        ] {
            assert_precondition(
                ConsistentHashRouter::check_binding_key(bad),
                &format!("The binding key must be an integer: {printed}"),
            );
        }
    }

    #[test]
    fn exchange_arguments_are_checked_as_the_plugin_does() {
        let check = |t: &FieldTable| ConsistentHashRouter::check_arguments(t, "x", "/");
        assert!(check(&no_args()).is_ok());
        assert!(check(&args(&[(HASH_HEADER, text("h"))])).is_ok());
        for p in ["message_id", "correlation_id", "timestamp"] {
            assert!(check(&args(&[(HASH_PROPERTY, text(p))])).is_ok(), "{p}");
        }
        assert_precondition(
            check(&args(&[(HASH_PROPERTY, text("app_id"))])),
            "Unsupported property: app_id",
        );
        let both = "hash-header and hash-property are mutually exclusive";
        assert_precondition(
            check(&args(&[
                (HASH_HEADER, text("h")),
                (HASH_PROPERTY, text("message_id")),
            ])),
            both,
        );
        assert_precondition(
            check(&args(&[
                (HASH_HEADER, text("h")),
                (HASH_PROPERTY, text("nope")),
            ])),
            both,
        );
        assert_precondition(
            check(&args(&[(HASH_HEADER, AMQPValue::LongLongInt(1))])),
            "invalid type 'long' for arg 'hash-header' in exchange 'x' in vhost '/'",
        );
        assert_precondition(
            check(&args(&[(HASH_PROPERTY, AMQPValue::Boolean(true))])),
            "invalid type 'bool' for arg 'hash-property' in exchange 'x' in vhost '/'",
        );
    }

    #[test]
    fn shares_follow_weights() {
        let (a, b) = (queue("a"), queue("b"));
        let counts = shares(&bound(&[(&a, "1"), (&b, "3")]));
        assert_eq!(counts.values().sum::<usize>(), 10_000);
        let share_a = counts["a"] as f64 / 10_000.0;
        assert!((share_a - 0.25).abs() < 0.04, "a got {share_a}");

        let qs: Vec<_> = (0..4).map(|i| queue(&format!("q{i}"))).collect();
        let counts = shares(&bound(&[
            (&qs[0], "1"),
            (&qs[1], "1"),
            (&qs[2], "1"),
            (&qs[3], "1"),
        ]));
        for (name, n) in &counts {
            assert!((1_800..3_200).contains(n), "{name} got {n} of 10000");
        }
    }

    #[test]
    fn a_key_always_goes_to_one_same_destination() {
        let (a, b, c) = (queue("a"), queue("b"), queue("c"));
        let r = bound(&[(&a, "2"), (&b, "1"), (&c, "5")]);
        for i in 0..1_000 {
            let first = dest(&r, &key(i));
            assert!(first.is_some());
            assert_eq!(dest(&r, &key(i)), first);
        }
        // Rebuilt in another order, the ring is the same.
        let again = bound(&[(&c, "5"), (&a, "2"), (&b, "1")]);
        for i in 0..1_000 {
            assert_eq!(dest(&r, &key(i)), dest(&again, &key(i)));
        }
    }

    #[test]
    fn binding_and_unbinding_move_only_that_destinations_keys() {
        let (a, b, c) = (queue("a"), queue("b"), queue("c"));
        let mut r = bound(&[(&a, "1"), (&b, "2"), (&c, "1")]);
        let before: Vec<_> = (0..10_000).map(|i| dest(&r, &key(i))).collect();

        assert!(r.unbind(DestinationKind::Queue, "b", "2", &no_args()));
        assert!(!r.unbind(DestinationKind::Queue, "b", "2", &no_args()));
        assert_eq!(r.len(), 2);
        for (i, was) in before.iter().enumerate() {
            let now = dest(&r, &key(i));
            if was.as_deref() == Some("b") {
                assert!(matches!(now.as_deref(), Some("a" | "c")));
            } else {
                assert_eq!(&now, was, "key {i} moved");
            }
        }

        assert!(r.bind(binding(&b, "2", no_args())));
        let after: Vec<_> = (0..10_000).map(|i| dest(&r, &key(i))).collect();
        assert_eq!(after, before);

        let d = queue("d");
        assert!(r.bind(binding(&d, "1", no_args())));
        let mut moved = 0;
        for (i, was) in before.iter().enumerate() {
            let now = dest(&r, &key(i));
            if &now != was {
                assert_eq!(now.as_deref(), Some("d"));
                moved += 1;
            }
        }
        assert!((1_500..3_000).contains(&moved), "{moved} keys moved to d");

        r.remove_destination(DestinationKind::Queue, "d");
        let after: Vec<_> = (0..10_000).map(|i| dest(&r, &key(i))).collect();
        assert_eq!(after, before);
    }

    #[test]
    fn only_the_first_binding_to_a_destination_counts() {
        let (a, b) = (queue("a"), queue("b"));
        let mut r = bound(&[(&a, "1"), (&b, "1")]);
        let points = r.points();
        assert!(r.bind(binding(&a, "9", no_args())));
        assert!(!r.bind(binding(&a, "9", no_args())));
        assert_eq!(r.len(), 3);
        assert_eq!(r.points(), points);
        let before: Vec<_> = (0..2_000).map(|i| dest(&r, &key(i))).collect();

        // The weight-9 binding takes over when the first goes.
        assert!(r.unbind(DestinationKind::Queue, "a", "1", &no_args()));
        assert_eq!(r.points(), 10 * POINTS_PER_WEIGHT as usize);
        for (i, was) in before.iter().enumerate() {
            if was.as_deref() == Some("a") {
                assert_eq!(dest(&r, &key(i)).as_deref(), Some("a"));
            }
        }
        r.remove_destination(DestinationKind::Queue, "a");
        assert_eq!(r.len(), 1);
        assert_eq!(r.points(), POINTS_PER_WEIGHT as usize);
        assert_eq!(dest(&r, &key(0)).as_deref(), Some("b"));
    }

    #[test]
    fn nothing_routes_without_points() {
        let a = queue("a");
        let mut r = ConsistentHashRouter::default();
        assert_eq!(dest(&r, &key(0)), None);
        // A key that is not a weight (bound without the check) holds no points.
        assert!(r.bind(binding(&a, "heavy", no_args())));
        assert_eq!(r.len(), 1);
        assert_eq!(r.points(), 0);
        assert_eq!(dest(&r, &key(0)), None);
        assert!(r.bind(binding(&a, "1", no_args())));
        assert_eq!(dest(&r, &key(0)).as_deref(), Some("a"));
    }

    #[test]
    fn exchanges_can_be_destinations() {
        let q = queue("q");
        let mut r = ConsistentHashRouter::default();
        assert!(r.bind(binding(&q, "1", no_args())));
        for name in ["e1", "e2"] {
            assert!(r.bind(Binding {
                destination: Destination::Exchange(ShortStr::from(name)),
                routing_key: "1".into(),
                arguments: no_args(),
            }));
        }
        let counts = shares(&r);
        for d in ["q", "x:e1", "x:e2"] {
            assert!((2_600..4_100).contains(&counts[d]), "{d}: {counts:?}");
        }
        r.remove_destination(DestinationKind::Exchange, "e1");
        assert_eq!(r.len(), 2);
        assert!(!shares(&r).contains_key("x:e1"));
        // A queue named like an exchange is another destination.
        r.remove_destination(DestinationKind::Queue, "e2");
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn hash_header_routes_by_the_header_value() {
        let (a, b) = (queue("a"), queue("b"));
        let mut r = ConsistentHashRouter::new(&args(&[(HASH_HEADER, text("shard"))]));
        r.bind(binding(&a, "1", no_args()));
        r.bind(binding(&b, "1", no_args()));
        let mut seen = HashMap::new();
        for i in 0..1_000 {
            let value = text(&format!("user-{i}"));
            let d = dest(&r, &with_header("k1", "shard", value.clone()));
            assert!(d.is_some());
            // The routing key no longer matters.
            assert_eq!(dest(&r, &with_header("k2", "shard", value)), d);
            *seen.entry(d).or_insert(0) += 1;
        }
        assert_eq!(seen.len(), 2, "{seen:?}");
        // Integers hash by number, whatever their width; strings like routing keys.
        assert_eq!(
            dest(&r, &with_header("", "shard", AMQPValue::LongInt(42))),
            dest(&r, &with_header("", "shard", AMQPValue::LongLongInt(42))),
        );
        let plain = bound(&[(&a, "1"), (&b, "1")]);
        for i in 0..100 {
            let k = format!("user-{i}");
            assert_eq!(
                dest(&r, &with_header("", "shard", text(&k))),
                dest(&plain, &message(&k, Bytes::from_static(&[0, 0]))),
            );
        }
        // An array hashes as its first element.
        let array = AMQPValue::FieldArray(FieldArray::from(vec![text("user-1"), text("z")]));
        assert_eq!(
            dest(&r, &with_header("", "shard", array)),
            dest(&r, &with_header("", "shard", text("user-1"))),
        );
    }

    #[test]
    fn a_missing_header_or_property_still_routes_to_one_destination() {
        let qs: Vec<_> = (0..8).map(|i| queue(&format!("q{i}"))).collect();
        for arguments in [
            args(&[(HASH_HEADER, text("shard"))]),
            args(&[(HASH_PROPERTY, text("message_id"))]),
            args(&[(HASH_PROPERTY, text("timestamp"))]),
        ] {
            let mut r = ConsistentHashRouter::new(&arguments);
            for q in &qs {
                r.bind(binding(q, "1", no_args()));
            }
            let first = dest(&r, &key(0));
            assert!(first.is_some());
            for i in 0..200 {
                assert_eq!(dest(&r, &key(i)), first);
                assert_eq!(
                    dest(&r, &with_header(&i.to_string(), "other", text("x"))),
                    first
                );
            }
            if arguments.inner().contains_key(HASH_HEADER) {
                // A void header is the same as none.
                assert_eq!(dest(&r, &with_header("", "shard", AMQPValue::Void)), first);
            }
        }
    }

    #[test]
    fn hash_property_routes_by_the_property() {
        let qs: Vec<_> = (0..4).map(|i| queue(&format!("q{i}"))).collect();
        let router = |property: &str| {
            let mut r = ConsistentHashRouter::new(&args(&[(HASH_PROPERTY, text(property))]));
            for q in &qs {
                r.bind(binding(q, "1", no_args()));
            }
            r
        };
        let plain = {
            let mut r = ConsistentHashRouter::default();
            for q in &qs {
                r.bind(binding(q, "1", no_args()));
            }
            r
        };
        let by_id = router("message_id");
        let by_correlation = router("correlation_id");
        let by_time = router("timestamp");
        let mut seen = HashMap::new();
        for i in 0..1_000u64 {
            let id = format!("id-{i}");
            let expected = dest(&plain, &message(&id, Bytes::from_static(&[0, 0])));
            let p = BasicProperties::default().with_message_id(id.as_str().into());
            assert_eq!(dest(&by_id, &with_properties("ignored", p)), expected);
            let p = BasicProperties::default().with_correlation_id(id.as_str().into());
            assert_eq!(dest(&by_correlation, &with_properties("x", p)), expected);
            // The timestamp hashes as its decimal seconds.
            let seconds = 1_700_000_000 + i;
            let p = BasicProperties::default().with_timestamp(seconds);
            let d = dest(&by_time, &with_properties("x", p));
            let plain_key = message(&seconds.to_string(), Bytes::from_static(&[0, 0]));
            assert_eq!(d, dest(&plain, &plain_key));
            *seen.entry(d).or_insert(0) += 1;
        }
        assert_eq!(seen.len(), 4);
    }

    #[test]
    fn new_falls_back_leniently() {
        let r = ConsistentHashRouter::new(&args(&[(HASH_PROPERTY, text("app_id"))]));
        assert_eq!(r.hash_on, HashOn::RoutingKey);
        let r = ConsistentHashRouter::new(&args(&[
            (HASH_HEADER, text("h")),
            (HASH_PROPERTY, text("timestamp")),
        ]));
        assert_eq!(r.hash_on, HashOn::Header(b"h".to_vec().into()));
        let r = ConsistentHashRouter::new(&args(&[(HASH_HEADER, AMQPValue::LongInt(1))]));
        assert_eq!(r.hash_on, HashOn::RoutingKey);
    }
}

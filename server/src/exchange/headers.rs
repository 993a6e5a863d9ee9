//! The headers exchange: a message goes to bindings whose arguments match its headers,
//! all of them (`x-match: all`, the default) or any of them (`x-match: any`).
//! Arguments starting with `x-` are not matched, except with `all-with-x`/`any-with-x`.

use amqp_codec::amq_protocol::types::{AMQPValue, DecimalValue, FieldTable, ShortString};

use super::{Binding, DestinationKind, Routed, Router};
use crate::message::Message;

/// How a binding's pairs combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MatchMode {
    /// Every pair must match (`all`, `all-with-x`, or no `x-match`).
    All,
    /// One pair is enough (`any`, `any-with-x`).
    Any,
}

/// A binding argument's value, in the form header values are compared with.
///
/// RabbitMQ compares values as Erlang terms with `==`, which ignores the AMQP type of
/// the top-level values: every integer type and timestamps are integers (`1` equals
/// `1.0`), `f` and `d` are floats, and long strings and byte arrays are binaries. Values
/// are brought to that form once, at bind time.
#[derive(Debug, Clone, PartialEq)]
enum Expected {
    /// `void`: the header must be present, with any value.
    Present,
    /// A boolean.
    Bool(bool),
    /// Any integer type or a timestamp.
    Int(i128),
    /// A float or a double.
    Float(f64),
    /// A decimal.
    Decimal(DecimalValue),
    /// A string or a byte array.
    Bytes(Box<[u8]>),
    /// A table or an array, compared as decoded (types included, as in RabbitMQ).
    Nested(AMQPValue),
}

/// A header value in the same form as [`Expected`], borrowed so that comparing it
/// allocates nothing.
enum Got<'a> {
    Void,
    Bool(bool),
    Int(i128),
    Float(f64),
    Decimal(DecimalValue),
    Bytes(&'a [u8]),
    Nested(&'a AMQPValue),
}

impl<'a> Got<'a> {
    fn of(value: &'a AMQPValue) -> Self {
        match value {
            AMQPValue::Void => Self::Void,
            AMQPValue::Boolean(b) => Self::Bool(*b),
            AMQPValue::ShortShortInt(i) => Self::Int(i128::from(*i)),
            AMQPValue::ShortShortUInt(i) => Self::Int(i128::from(*i)),
            AMQPValue::ShortInt(i) => Self::Int(i128::from(*i)),
            AMQPValue::ShortUInt(i) => Self::Int(i128::from(*i)),
            AMQPValue::LongInt(i) => Self::Int(i128::from(*i)),
            AMQPValue::LongUInt(i) => Self::Int(i128::from(*i)),
            AMQPValue::LongLongInt(i) => Self::Int(i128::from(*i)),
            AMQPValue::Timestamp(t) => Self::Int(i128::from(*t)),
            AMQPValue::Float(f) => Self::Float(f64::from(*f)),
            AMQPValue::Double(f) => Self::Float(*f),
            AMQPValue::DecimalValue(d) => Self::Decimal(*d),
            AMQPValue::ShortString(s) => Self::Bytes(s.as_str().as_bytes()),
            AMQPValue::LongString(s) => Self::Bytes(s.as_bytes()),
            AMQPValue::ByteArray(b) => Self::Bytes(b.as_slice()),
            AMQPValue::FieldArray(_) | AMQPValue::FieldTable(_) => Self::Nested(value),
        }
    }
}

/// Whether integer `i` and float `f` are the same number (Erlang's `1 == 1.0`).
fn int_equals_float(i: i128, f: f64) -> bool {
    // Beyond 2^100 no header integer can be equal; the bound keeps the cast exact.
    f.fract() == 0.0 && f.abs() < 1e30 && f as i128 == i
}

impl Expected {
    fn of(value: &AMQPValue) -> Self {
        match Got::of(value) {
            Got::Void => Self::Present,
            Got::Bool(b) => Self::Bool(b),
            Got::Int(i) => Self::Int(i),
            Got::Float(f) => Self::Float(f),
            Got::Decimal(d) => Self::Decimal(d),
            Got::Bytes(b) => Self::Bytes(b.into()),
            Got::Nested(v) => Self::Nested(v.clone()),
        }
    }

    /// This value in the form header values are read in.
    fn as_got(&self) -> Got<'_> {
        match self {
            Self::Present => Got::Void,
            Self::Bool(b) => Got::Bool(*b),
            Self::Int(i) => Got::Int(*i),
            Self::Float(f) => Got::Float(*f),
            Self::Decimal(d) => Got::Decimal(*d),
            Self::Bytes(b) => Got::Bytes(b),
            Self::Nested(v) => Got::Nested(v),
        }
    }

    /// Whether a header holding `value` satisfies this argument.
    fn accepts(&self, value: &AMQPValue) -> bool {
        match (self, Got::of(value)) {
            (Self::Present, _) => true,
            (Self::Bool(a), Got::Bool(b)) => *a == b,
            (Self::Int(a), Got::Int(b)) => *a == b,
            (Self::Int(a), Got::Float(b)) => int_equals_float(*a, b),
            (Self::Float(a), Got::Int(b)) => int_equals_float(b, *a),
            (Self::Float(a), Got::Float(b)) => *a == b,
            (Self::Decimal(a), Got::Decimal(b)) => *a == b,
            (Self::Bytes(a), Got::Bytes(b)) => **a == *b,
            (Self::Nested(a), Got::Nested(b)) => a == b,
            _ => false,
        }
    }
}

/// A binding's arguments as matching needs them, read once at bind time: the mode, and
/// the pairs to compare (without `x-match`, and without other `x-` arguments unless the
/// mode is `all-with-x` or `any-with-x`).
#[derive(Debug, Clone)]
struct Rule {
    mode: MatchMode,
    pairs: Vec<(ShortString, Expected)>,
}

impl Rule {
    fn of(arguments: &FieldTable) -> Self {
        let mode = match arguments.inner().get("x-match") {
            Some(AMQPValue::LongString(s)) => s.as_bytes(),
            Some(AMQPValue::ShortString(s)) => s.as_str().as_bytes(),
            _ => &b"all"[..],
        };
        let (mode, with_x) = match mode {
            b"any" => (MatchMode::Any, false),
            b"all-with-x" => (MatchMode::All, true),
            b"any-with-x" => (MatchMode::Any, true),
            _ => (MatchMode::All, false),
        };
        let pairs = arguments
            .inner()
            .iter()
            .filter(|(k, _)| {
                let k = k.as_str();
                k != "x-match" && (with_x || !k.starts_with("x-"))
            })
            .map(|(k, v)| (k.clone(), Expected::of(v)))
            .collect();
        Self { mode, pairs }
    }

    /// Whether a message with `headers` matches, straight from the definition: the
    /// model the router's compiled form is tested against. With no pairs, `all`
    /// matches every message and `any` none, as in RabbitMQ.
    #[cfg(test)]
    fn matches(&self, headers: Option<&FieldTable>) -> bool {
        let hit = |(key, expected): &(ShortString, Expected)| {
            headers
                .and_then(|h| h.inner().get(key))
                .is_some_and(|got| expected.accepts(got))
        };
        match self.mode {
            MatchMode::All => self.pairs.iter().all(hit),
            MatchMode::Any => self.pairs.iter().any(hit),
        }
    }
}

/// A hash of a value consistent with [`Expected::accepts`]: values it accepts hash
/// alike (whole floats hash as the integer they equal), so most comparisons end at a
/// `u64` compare without touching the values.
fn value_hash(value: &Got<'_>) -> u64 {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut h = DefaultHasher::new();
    match *value {
        Got::Void => 0u8.hash(&mut h),
        Got::Bool(b) => (1u8, b).hash(&mut h),
        Got::Float(f) if f.fract() == 0.0 && f.abs() < 1e30 => (2u8, f as i128).hash(&mut h),
        Got::Int(i) => (2u8, i).hash(&mut h),
        Got::Float(f) => (3u8, f.to_bits()).hash(&mut h),
        Got::Decimal(d) => (4u8, d).hash(&mut h),
        Got::Bytes(b) => (5u8, b).hash(&mut h),
        // Rare: always compared in full.
        Got::Nested(_) => 6u8.hash(&mut h),
    }
    h.finish()
}

/// One compiled pair of a binding: the interned header name, and the hash of the value
/// wanted (its [`Expected`] sits at the same index in [`HeadersRouter::expected`]).
#[derive(Debug, Clone, Copy)]
struct Pair {
    key: u32,
    /// The argument is `void`: presence is enough.
    present: bool,
    hash: u64,
}

/// One binding's compiled rule: its mode and its run of [`Pair`]s.
#[derive(Debug, Clone, Copy)]
struct CompiledRule {
    mode: MatchMode,
    start: u32,
    len: u32,
}

/// A message header whose name some binding uses: the name's id, the value's hash and
/// the value.
#[derive(Debug, Clone, Copy)]
struct Found<'a> {
    key: u32,
    hash: u64,
    value: &'a AMQPValue,
}

/// The message's headers that bindings ask about; a few stay on the stack.
struct FoundHeaders<'a> {
    inline: [Found<'a>; FoundHeaders::INLINE],
    len: usize,
    spill: Vec<Found<'a>>,
}

static VOID: AMQPValue = AMQPValue::Void;

impl<'a> FoundHeaders<'a> {
    const INLINE: usize = 16;

    fn new() -> Self {
        let empty = Found {
            key: u32::MAX,
            hash: 0,
            value: &VOID,
        };
        Self {
            inline: [empty; Self::INLINE],
            len: 0,
            spill: Vec::new(),
        }
    }

    fn push(&mut self, found: Found<'a>) {
        if self.len < Self::INLINE {
            self.inline[self.len] = found;
            self.len += 1;
        } else {
            self.spill.push(found);
        }
    }

    fn get(&self, key: u32) -> Option<&Found<'a>> {
        let found = self.inline[..self.len].iter().find(|f| f.key == key);
        if found.is_none() && !self.spill.is_empty() {
            return self.spill.iter().find(|f| f.key == key);
        }
        found
    }
}

/// The headers exchange's bindings, compiled at bind time for a lean linear scan per
/// message (matching is linear in the bindings, as in RabbitMQ): header names are
/// interned to ids, each binding's pairs sit in one shared array as (id, value hash),
/// and the full values are only compared when the hashes agree. Routing decodes a
/// message's headers once, looks each name up once, and then compares integers.
#[derive(Debug, Default)]
pub struct HeadersRouter {
    /// One rule per binding, in binding order.
    rules: Vec<CompiledRule>,
    /// The bindings, parallel to `rules`.
    bindings: Vec<Binding>,
    /// Every rule's pairs, one run per rule.
    pairs: Vec<Pair>,
    /// The wanted values, parallel to `pairs`.
    expected: Vec<Expected>,
    /// Header names in use: their id and how many pairs use them.
    keys: std::collections::HashMap<ShortString, (u32, usize)>,
    next_key: u32,
}

impl HeadersRouter {
    /// The id of header name `key`, counting one more use.
    fn intern(&mut self, key: ShortString) -> u32 {
        let next = &mut self.next_key;
        let entry = self.keys.entry(key).or_insert_with(|| {
            let id = *next;
            *next = next.wrapping_add(1);
            (id, 0)
        });
        entry.1 += 1;
        entry.0
    }

    /// Removes the bindings `drop` picks, compacting the pairs and releasing names no
    /// longer used; returns how many went.
    fn remove_where(&mut self, drop: impl Fn(&Binding) -> bool) -> usize {
        let before = self.bindings.len();
        let mut released = Vec::new();
        let (mut kept_rule, mut kept_pair) = (0, 0);
        for i in 0..self.rules.len() {
            let rule = self.rules[i];
            let run = rule.start as usize..(rule.start + rule.len) as usize;
            if drop(&self.bindings[i]) {
                released.extend(self.pairs[run].iter().map(|p| p.key));
                continue;
            }
            for j in run {
                self.pairs.swap(kept_pair, j);
                self.expected.swap(kept_pair, j);
                kept_pair += 1;
            }
            self.rules[kept_rule] = CompiledRule {
                start: (kept_pair - rule.len as usize) as u32,
                ..rule
            };
            self.bindings.swap(kept_rule, i);
            kept_rule += 1;
        }
        self.rules.truncate(kept_rule);
        self.bindings.truncate(kept_rule);
        self.pairs.truncate(kept_pair);
        self.expected.truncate(kept_pair);
        if !released.is_empty() {
            released.sort_unstable();
            self.keys.retain(|_, (id, uses)| {
                let from = released.partition_point(|k| k < id);
                let to = released.partition_point(|k| k <= id);
                *uses -= to - from;
                *uses > 0
            });
        }
        before - self.bindings.len()
    }

    /// Whether a message whose bound-to headers are `found` matches `rule`.
    fn matches(&self, rule: &CompiledRule, found: &FoundHeaders<'_>) -> bool {
        let start = rule.start as usize;
        let pairs = &self.pairs[start..start + rule.len as usize];
        let hit = |(offset, pair): (usize, &Pair)| {
            found.get(pair.key).is_some_and(|f| {
                pair.present
                    || (f.hash == pair.hash && self.expected[start + offset].accepts(f.value))
            })
        };
        match rule.mode {
            MatchMode::All => pairs.iter().enumerate().all(hit),
            MatchMode::Any => pairs.iter().enumerate().any(hit),
        }
    }
}

impl Router for HeadersRouter {
    fn bind(&mut self, binding: Binding) -> bool {
        if self.bindings.iter().any(|b| {
            b.is(
                binding.destination.kind(),
                binding.destination.name(),
                &binding.routing_key,
                &binding.arguments,
            )
        }) {
            return false;
        }
        let rule = Rule::of(&binding.arguments);
        let start = self.pairs.len() as u32;
        let len = rule.pairs.len() as u32;
        for (key, expected) in rule.pairs {
            let key = self.intern(key);
            let present = expected == Expected::Present;
            let hash = value_hash(&expected.as_got());
            self.pairs.push(Pair { key, present, hash });
            self.expected.push(expected);
        }
        self.rules.push(CompiledRule {
            mode: rule.mode,
            start,
            len,
        });
        self.bindings.push(binding);
        true
    }

    fn unbind(
        &mut self,
        kind: DestinationKind,
        name: &str,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> bool {
        self.remove_where(|b| b.is(kind, name, routing_key, arguments)) > 0
    }

    fn remove_destination(&mut self, kind: DestinationKind, name: &str) {
        self.remove_where(|b| b.targets(kind, name));
    }

    fn route(&self, message: &Message, out: &mut Routed) {
        if self.bindings.is_empty() {
            return;
        }
        // With no names to look for, only rules without pairs decide, so skip decoding.
        let headers = if self.keys.is_empty() {
            None
        } else {
            message.properties().and_then(|p| p.headers())
        };
        let mut found = FoundHeaders::new();
        for (key, value) in headers.iter().flat_map(FieldTable::inner) {
            if let Some(&(id, _)) = self.keys.get(key) {
                let hash = value_hash(&Got::of(value));
                found.push(Found {
                    key: id,
                    hash,
                    value,
                });
            }
        }
        for (rule, binding) in self.rules.iter().zip(&self.bindings) {
            if self.matches(rule, &found) {
                binding.deliver_to(out);
            }
        }
    }

    fn len(&self) -> usize {
        self.bindings.len()
    }

    fn bindings(&self) -> Vec<Binding> {
        self.bindings.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;
    use amqp_codec::amq_protocol::protocol::BasicProperties;
    use amqp_codec::amq_protocol::types::{ByteArray, FieldArray};
    use amqp_codec::properties::encode_properties;
    use proptest::prelude::*;
    use std::sync::Arc;

    use crate::queue::Queue;

    fn table(pairs: &[(&str, &str)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert(ShortString::from(*k), AMQPValue::LongString((*v).into()));
        }
        t
    }

    fn typed(pairs: Vec<(&str, AMQPValue)>) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert(ShortString::from(k), v);
        }
        t
    }

    fn matches(arguments: &FieldTable, headers: Option<&FieldTable>) -> bool {
        Rule::of(arguments).matches(headers)
    }

    #[test]
    fn all_needs_every_pair_and_any_one() {
        let all = table(&[("x-match", "all"), ("a", "1"), ("b", "2")]);
        let any = table(&[("x-match", "any"), ("a", "1"), ("b", "2")]);
        let both = table(&[("a", "1"), ("b", "2"), ("c", "3")]);
        let one = table(&[("a", "1")]);
        let wrong = table(&[("a", "2")]);
        assert!(matches(&all, Some(&both)));
        assert!(!matches(&all, Some(&one)));
        assert!(matches(&any, Some(&one)));
        assert!(!matches(&any, Some(&wrong)));
        assert!(!matches(&any, None));
        // Without x-match, `all` applies.
        assert!(!matches(&table(&[("a", "1"), ("b", "2")]), Some(&one)));
        assert!(matches(&table(&[("a", "1"), ("b", "2")]), Some(&both)));
    }

    #[test]
    fn x_arguments_are_ignored_unless_with_x() {
        let all = table(&[("x-match", "all"), ("x-extra", "1")]);
        assert!(matches(&all, None));
        let with_x = table(&[("x-match", "all-with-x"), ("x-extra", "1")]);
        assert!(!matches(&with_x, None));
        assert!(matches(&with_x, Some(&table(&[("x-extra", "1")]))));
        let any_with_x = table(&[("x-match", "any-with-x"), ("x-extra", "1"), ("a", "1")]);
        assert!(matches(&any_with_x, Some(&table(&[("x-extra", "1")]))));
        assert!(!matches(&any_with_x, Some(&table(&[("x-extra", "2")]))));
    }

    #[test]
    fn with_no_pairs_all_matches_everything_and_any_nothing() {
        assert!(matches(&FieldTable::default(), None));
        assert!(matches(
            &table(&[("x-match", "all")]),
            Some(&table(&[("a", "1")]))
        ));
        assert!(!matches(
            &table(&[("x-match", "any")]),
            Some(&table(&[("a", "1")]))
        ));
        assert!(!matches(&table(&[("x-match", "any"), ("x-k", "1")]), None));
    }

    #[test]
    fn void_arguments_need_the_header_present_with_any_value() {
        let args = typed(vec![("a", AMQPValue::Void)]);
        assert!(matches(&args, Some(&table(&[("a", "anything")]))));
        assert!(matches(&args, Some(&typed(vec![("a", AMQPValue::Void)]))));
        assert!(!matches(&args, Some(&table(&[("b", "1")]))));
        assert!(!matches(&args, None));
        // A void header is not equal to a value.
        let value = table(&[("a", "1")]);
        assert!(!matches(&value, Some(&typed(vec![("a", AMQPValue::Void)]))));
    }

    /// As RabbitMQ compares Erlang terms with `==`: integers of any width, timestamps
    /// and whole floats are equal numbers, and strings equal byte arrays.
    #[test]
    fn values_compare_as_rabbitmq_does_regardless_of_wire_type() {
        let int = typed(vec![("n", AMQPValue::LongInt(7))]);
        for same in [
            AMQPValue::ShortShortUInt(7),
            AMQPValue::ShortInt(7),
            AMQPValue::LongLongInt(7),
            AMQPValue::Timestamp(7),
            AMQPValue::Double(7.0),
            AMQPValue::Float(7.0),
        ] {
            assert!(
                matches(&int, Some(&typed(vec![("n", same.clone())]))),
                "{same:?}"
            );
        }
        for other in [
            AMQPValue::LongInt(8),
            AMQPValue::Double(7.5),
            AMQPValue::LongString("7".into()),
            AMQPValue::Boolean(true),
        ] {
            assert!(
                !matches(&int, Some(&typed(vec![("n", other.clone())]))),
                "{other:?}"
            );
        }
        let negative = typed(vec![("n", AMQPValue::ShortShortInt(-1))]);
        assert!(matches(
            &negative,
            Some(&typed(vec![("n", AMQPValue::LongLongInt(-1))]))
        ));
        assert!(!matches(
            &negative,
            Some(&typed(vec![("n", AMQPValue::Timestamp(u64::MAX))]))
        ));
        let float = typed(vec![("f", AMQPValue::Double(0.5))]);
        assert!(matches(
            &float,
            Some(&typed(vec![("f", AMQPValue::Float(0.5))]))
        ));
        assert!(!matches(
            &float,
            Some(&typed(vec![("f", AMQPValue::LongInt(0))]))
        ));

        let text = table(&[("s", "pdf")]);
        let bytes = ByteArray::from(b"pdf".to_vec());
        assert!(matches(
            &text,
            Some(&typed(vec![("s", AMQPValue::ByteArray(bytes))]))
        ));
        assert!(matches(
            &text,
            Some(&typed(vec![("s", AMQPValue::ShortString("pdf".into()))]))
        ));
        let yes = typed(vec![("b", AMQPValue::Boolean(true))]);
        assert!(matches(
            &yes,
            Some(&typed(vec![("b", AMQPValue::Boolean(true))]))
        ));
        assert!(!matches(
            &yes,
            Some(&typed(vec![("b", AMQPValue::ShortShortUInt(1))]))
        ));
    }

    #[test]
    fn nested_values_compare_as_decoded() {
        let array = |v: Vec<AMQPValue>| AMQPValue::FieldArray(FieldArray::from(v));
        let args = typed(vec![("l", array(vec![AMQPValue::LongString("a".into())]))]);
        let same = typed(vec![("l", array(vec![AMQPValue::LongString("a".into())]))]);
        let other = typed(vec![("l", array(vec![AMQPValue::LongString("b".into())]))]);
        assert!(matches(&args, Some(&same)));
        assert!(!matches(&args, Some(&other)));
        assert!(!matches(&args, Some(&table(&[("l", "a")]))));
    }

    fn value() -> impl Strategy<Value = AMQPValue> {
        prop_oneof![
            Just(AMQPValue::Void),
            any::<bool>().prop_map(AMQPValue::Boolean),
            (0i8..3).prop_map(AMQPValue::ShortShortInt),
            (0i32..3).prop_map(AMQPValue::LongInt),
            (0u64..3).prop_map(AMQPValue::Timestamp),
            (0u8..6).prop_map(|n| AMQPValue::Double(f64::from(n) / 2.0)),
            (0u8..6).prop_map(|n| AMQPValue::Float(f32::from(n) / 2.0)),
            prop::sample::select(vec!["", "a", "b"]).prop_map(|s| AMQPValue::LongString(s.into())),
            prop::sample::select(vec!["", "a", "b"])
                .prop_map(|s| AMQPValue::ByteArray(s.as_bytes().to_vec().into())),
            prop::sample::select(vec!["a", "b"]).prop_map(|s| AMQPValue::FieldArray(
                FieldArray::from(vec![AMQPValue::LongString(s.into())])
            )),
        ]
    }

    fn pairs(max: usize) -> impl Strategy<Value = FieldTable> {
        let key = prop::sample::select(vec!["a", "b", "c", "x-k"]);
        prop::collection::vec((key, value()), 0..max).prop_map(|pairs| {
            let mut t = FieldTable::default();
            for (k, v) in pairs {
                t.insert(k.into(), v);
            }
            t
        })
    }

    fn arguments() -> impl Strategy<Value = FieldTable> {
        let mode = prop::sample::select(vec![
            None,
            Some("all"),
            Some("any"),
            Some("all-with-x"),
            Some("any-with-x"),
            Some("bogus"),
        ]);
        (mode, pairs(4)).prop_map(|(mode, mut t)| {
            if let Some(mode) = mode {
                t.insert("x-match".into(), AMQPValue::LongString(mode.into()));
            }
            t
        })
    }

    fn route_names(router: &HeadersRouter, headers: &Option<FieldTable>) -> Vec<String> {
        let mut properties = BasicProperties::default();
        if let Some(headers) = headers {
            properties = properties.with_headers(headers.clone());
        }
        let mut out = Routed::default();
        router.route(&message("", encode_properties(&properties)), &mut out);
        names(&out.queues)
    }

    proptest! {
        /// The compiled router routes exactly what the plain definition matches, also
        /// after unbinding some bindings and removing a destination (which compact the
        /// pairs and release names).
        #[test]
        fn router_agrees_with_rule_definition(
            bindings in prop::collection::vec(arguments(), 1..16),
            messages in prop::collection::vec(prop::option::of(pairs(5)), 1..12),
            drop in prop::collection::vec(any::<bool>(), 16),
        ) {
            let mut router = HeadersRouter::default();
            let mut bound = Vec::new();
            for (i, arguments) in bindings.iter().enumerate() {
                let q = queue(&format!("q{i:02}"));
                prop_assert!(router.bind(binding(&q, "", arguments.clone())));
                bound.push((arguments.clone(), q));
            }
            let check = |router: &HeadersRouter, bound: &[(FieldTable, Arc<Queue>)]| {
                for headers in &messages {
                    let want = names(
                        &bound
                            .iter()
                            .filter(|(a, _)| Rule::of(a).matches(headers.as_ref()))
                            .map(|(_, q)| q.clone())
                            .collect::<Vec<_>>(),
                    );
                    let got = route_names(router, headers);
                    if got != want {
                        return Err(format!("{headers:?}: got {got:?}, want {want:?}"));
                    }
                }
                Ok(())
            };
            prop_assert_eq!(check(&router, &bound), Ok(()));
            let mut kept = Vec::new();
            for (i, (arguments, q)) in bound.into_iter().enumerate() {
                if drop[i] {
                    let name = q.name().to_string();
                    prop_assert!(router.unbind(DestinationKind::Queue, &name, "", &arguments));
                } else {
                    kept.push((arguments, q));
                }
            }
            prop_assert_eq!(router.len(), kept.len());
            prop_assert_eq!(check(&router, &kept), Ok(()));
            if let Some((_, q)) = kept.first() {
                let name = q.name().to_string();
                router.remove_destination(DestinationKind::Queue, &name);
                kept.remove(0);
            }
            prop_assert_eq!(check(&router, &kept), Ok(()));
            let used: usize = router.keys.values().map(|(_, uses)| uses).sum();
            prop_assert_eq!(used, router.pairs.len());
            if kept.is_empty() {
                prop_assert!(router.keys.is_empty() && router.expected.is_empty());
            }
        }
    }

    #[test]
    fn router_routes_by_message_headers_and_unbinds() {
        let mut router = HeadersRouter::default();
        let pdf = queue("pdf");
        let any = queue("any");
        let none = queue("none");
        let pdf_args = table(&[("x-match", "all"), ("format", "pdf"), ("type", "report")]);
        let any_args = table(&[("x-match", "any"), ("format", "pdf"), ("type", "log")]);
        let none_args = table(&[("x-match", "any")]);
        assert!(router.bind(binding(&pdf, "", pdf_args.clone())));
        assert!(!router.bind(binding(&pdf, "", pdf_args.clone())));
        assert!(router.bind(binding(&any, "", any_args.clone())));
        assert!(router.bind(binding(&none, "", none_args)));
        assert_eq!(router.len(), 3);

        let route = |router: &HeadersRouter, headers: Option<FieldTable>| {
            let mut properties = BasicProperties::default();
            if let Some(headers) = headers {
                properties = properties.with_headers(headers);
            }
            let mut out = Routed::default();
            router.route(&message("", encode_properties(&properties)), &mut out);
            names(&out.queues)
        };
        let report = table(&[("format", "pdf"), ("type", "report")]);
        assert_eq!(route(&router, Some(report.clone())), ["any", "pdf"]);
        assert_eq!(route(&router, Some(table(&[("type", "log")]))), ["any"]);
        assert_eq!(route(&router, None), Vec::<String>::new());

        assert!(router.unbind(DestinationKind::Queue, "pdf", "", &pdf_args));
        assert!(!router.unbind(DestinationKind::Queue, "pdf", "", &pdf_args));
        assert_eq!(route(&router, Some(report.clone())), ["any"]);
        router.remove_destination(DestinationKind::Queue, "any");
        assert_eq!(route(&router, Some(report)), Vec::<String>::new());
        assert_eq!(router.len(), 1);
    }
}

//! Dead-lettering: how a message that leaves a queue unconsumed (rejected, expired,
//! pushed out by a length limit, or past its delivery limit) is rewritten before it is
//! republished to the queue's dead-letter exchange, and when that would loop forever.
//!
//! The rewrite follows RabbitMQ: an `x-death` entry per (queue, reason) with a count,
//! newest first; `x-first-death-*` set once and `x-last-death-*` each time; the
//! `expiration` property moved into the entry as `original-expiration`.

use amqp_codec::PropertiesView;
use amqp_codec::ShortStr;
use amqp_codec::amq_protocol::types::{AMQPValue, FieldArray, FieldTable, ShortString};
use amqp_codec::properties::{Property, decode_properties, encode_properties};

use crate::message::Message;
use crate::store::SegmentPosition;

/// Why a message was dead-lettered, as `x-death` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeathReason {
    /// `basic.reject` or `basic.nack` without requeue.
    Rejected,
    /// Its TTL ran out.
    Expired,
    /// A length limit pushed it out (or, with `reject-publish-dlx`, kept it out).
    MaxLen,
    /// It was returned more often than the queue's delivery limit allows.
    DeliveryLimit,
}

impl DeathReason {
    /// The reason as it appears in headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rejected => "rejected",
            Self::Expired => "expired",
            Self::MaxLen => "maxlen",
            Self::DeliveryLimit => "delivery_limit",
        }
    }
}

/// A message on its way from a queue to that queue's dead-letter exchange.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The message as it left the queue.
    pub message: Message,
    /// Why it left.
    pub reason: DeathReason,
    /// Its record in the queue's log, acked once the copies are durable elsewhere.
    pub position: Option<SegmentPosition>,
}

/// The message as republished, and the routing keys it is routed with.
#[derive(Debug, Clone)]
pub struct Republished {
    /// The rewritten message, addressed to the dead-letter exchange.
    pub message: Message,
    /// The keys to route with: the dead-letter routing key, or the original key and the
    /// `CC` keys.
    pub routing_keys: Vec<ShortStr>,
    /// The message's deaths, newest first: (queue, reason), for cycle detection.
    deaths: Vec<(String, DeathReason)>,
}

impl Republished {
    /// Whether routing to `queue` would close a dead-letter cycle that no client broke
    /// (every death since `queue`'s last one was automatic), which RabbitMQ drops.
    pub fn is_cycle(&self, queue: &str) -> bool {
        for (name, reason) in &self.deaths {
            if *reason == DeathReason::Rejected {
                return false;
            }
            if name == queue {
                return true;
            }
        }
        false
    }
}

fn long_str(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}

fn text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// A copy of `table` without `key`.
pub fn without_key(table: &FieldTable, key: &str) -> FieldTable {
    let mut map = table.inner().clone();
    map.remove(key);
    FieldTable::from(map)
}

/// The routing keys in a `CC` or `BCC` header: a string or an array of strings.
pub fn header_routing_keys(headers: &FieldTable, name: &str) -> Vec<String> {
    match headers.inner().get(name) {
        Some(AMQPValue::FieldArray(array)) => array.as_slice().iter().filter_map(text).collect(),
        Some(value) => text(value).into_iter().collect(),
        None => Vec::new(),
    }
}

fn reason_of(name: &str) -> Option<DeathReason> {
    [
        DeathReason::Rejected,
        DeathReason::Expired,
        DeathReason::MaxLen,
        DeathReason::DeliveryLimit,
    ]
    .into_iter()
    .find(|r| r.as_str() == name)
}

/// Rewrites `letter`, which leaves queue `queue`, for republishing to exchange `dlx`
/// with routing key `dlrk` (or its own keys when `None`), at `now_ms`.
pub fn republish(
    letter: &DeadLetter,
    queue: &str,
    dlx: &str,
    dlrk: Option<&str>,
    now_ms: u64,
) -> Republished {
    let message = &letter.message;
    let mut properties = decode_properties(message.raw_properties()).unwrap_or_default();
    let mut headers = properties.headers().clone().unwrap_or_default();
    let mut keys = vec![message.routing_key().to_string()];
    keys.extend(header_routing_keys(&headers, "CC"));

    let mut entry = FieldTable::default();
    entry.insert("count".into(), AMQPValue::LongLongInt(1));
    entry.insert("reason".into(), long_str(letter.reason.as_str()));
    entry.insert("queue".into(), long_str(queue));
    entry.insert("time".into(), AMQPValue::Timestamp(now_ms / 1000));
    entry.insert("exchange".into(), long_str(message.exchange()));
    entry.insert(
        "routing-keys".into(),
        AMQPValue::FieldArray(keys.iter().map(|k| long_str(k)).collect::<Vec<_>>().into()),
    );
    if let Some(expiration) = properties.expiration() {
        entry.insert("original-expiration".into(), long_str(expiration.as_str()));
    }

    let mut deaths = vec![AMQPValue::FieldTable(entry)];
    if let Some(AMQPValue::FieldArray(earlier)) = headers.inner().get("x-death") {
        for value in earlier.as_slice() {
            let AMQPValue::FieldTable(table) = value else {
                continue;
            };
            let same = table.inner().get("queue").and_then(text).as_deref() == Some(queue)
                && table.inner().get("reason").and_then(text).as_deref()
                    == Some(letter.reason.as_str());
            if same {
                let count = match table.inner().get("count") {
                    Some(AMQPValue::LongLongInt(n)) => *n,
                    Some(AMQPValue::LongInt(n)) => i64::from(*n),
                    _ => 0,
                };
                let mut merged = table.clone();
                merged.insert("count".into(), AMQPValue::LongLongInt(count + 1));
                deaths[0] = AMQPValue::FieldTable(merged);
            } else {
                deaths.push(value.clone());
            }
        }
    }
    let history = deaths
        .iter()
        .filter_map(|d| match d {
            AMQPValue::FieldTable(t) => Some((
                t.inner().get("queue").and_then(text).unwrap_or_default(),
                t.inner()
                    .get("reason")
                    .and_then(text)
                    .and_then(|r| reason_of(&r))?,
            )),
            _ => None,
        })
        .collect();

    headers.insert(
        "x-death".into(),
        AMQPValue::FieldArray(FieldArray::from(deaths)),
    );
    for (suffix, value) in [
        ("reason", letter.reason.as_str()),
        ("queue", queue),
        ("exchange", message.exchange()),
    ] {
        let first = ShortString::from(format!("x-first-death-{suffix}"));
        if !headers.contains_key(first.as_str()) {
            headers.insert(first, long_str(value));
        }
        headers.insert(format!("x-last-death-{suffix}").into(), long_str(value));
    }
    let routing_keys = match dlrk {
        Some(key) => {
            headers = without_key(&headers, "CC");
            vec![key.into()]
        }
        None => keys.iter().map(|k| ShortStr::from(k.as_str())).collect(),
    };
    properties = properties.with_headers(headers);
    let mut encoded = encode_properties(&properties);
    if let Ok(view) = PropertiesView::new(&encoded) {
        encoded = view.without(Property::Expiration);
    }
    Republished {
        message: Message::new(
            dlx,
            routing_keys.first().map_or(message.routing_key(), |k| &**k),
            &encoded,
            message.body_bytes(),
        ),
        routing_keys,
        deaths: history,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amqp_codec::amq_protocol::protocol::BasicProperties;
    use bytes::Bytes;

    fn message(properties: &BasicProperties) -> Message {
        Message::new(
            "ex",
            "rk",
            &encode_properties(properties),
            Bytes::from_static(b"body"),
        )
    }

    fn headers(message: &Message) -> FieldTable {
        PropertiesView::new(message.raw_properties())
            .expect("valid properties")
            .headers()
            .expect("headers")
    }

    fn deaths(message: &Message) -> Vec<FieldTable> {
        match headers(message).inner().get("x-death") {
            Some(AMQPValue::FieldArray(a)) => a
                .as_slice()
                .iter()
                .filter_map(|v| match v {
                    AMQPValue::FieldTable(t) => Some(t.clone()),
                    _ => None,
                })
                .collect(),
            other => panic!("no x-death: {other:?}"),
        }
    }

    fn letter(message: Message, reason: DeathReason) -> DeadLetter {
        DeadLetter {
            message,
            reason,
            position: None,
        }
    }

    #[test]
    fn first_death_records_everything_and_moves_the_expiration() {
        let props = BasicProperties::default().with_expiration("500".into());
        let out = republish(
            &letter(message(&props), DeathReason::Expired),
            "q1",
            "dlx",
            None,
            7_000,
        );
        assert_eq!(out.message.exchange(), "dlx");
        assert_eq!(out.message.routing_key(), "rk");
        let view = PropertiesView::new(out.message.raw_properties()).expect("valid");
        assert_eq!(view.short_str(Property::Expiration), None);
        let d = deaths(&out.message);
        assert_eq!(d.len(), 1);
        let e = d[0].inner();
        assert_eq!(e.get("count"), Some(&AMQPValue::LongLongInt(1)));
        assert_eq!(e.get("reason"), Some(&long_str("expired")));
        assert_eq!(e.get("queue"), Some(&long_str("q1")));
        assert_eq!(e.get("exchange"), Some(&long_str("ex")));
        assert_eq!(e.get("time"), Some(&AMQPValue::Timestamp(7)));
        assert_eq!(e.get("original-expiration"), Some(&long_str("500")));
        let h = headers(&out.message);
        assert_eq!(
            h.inner().get("x-first-death-reason"),
            Some(&long_str("expired"))
        );
        assert_eq!(h.inner().get("x-last-death-queue"), Some(&long_str("q1")));
    }

    #[test]
    fn a_repeated_death_counts_up_and_moves_to_the_front() {
        let first = republish(
            &letter(message(&BasicProperties::default()), DeathReason::Rejected),
            "a",
            "dlx",
            None,
            1_000,
        );
        let second = republish(
            &letter(first.message, DeathReason::Expired),
            "b",
            "dlx",
            None,
            2_000,
        );
        let third = republish(
            &letter(second.message, DeathReason::Rejected),
            "a",
            "dlx",
            Some("other"),
            3_000,
        );
        let d = deaths(&third.message);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].inner().get("queue"), Some(&long_str("a")));
        assert_eq!(d[0].inner().get("count"), Some(&AMQPValue::LongLongInt(2)));
        assert_eq!(d[1].inner().get("queue"), Some(&long_str("b")));
        let h = headers(&third.message);
        assert_eq!(h.inner().get("x-first-death-queue"), Some(&long_str("a")));
        assert_eq!(
            h.inner().get("x-first-death-reason"),
            Some(&long_str("rejected"))
        );
        assert_eq!(third.routing_keys, vec![ShortStr::from("other")]);
    }

    #[test]
    fn cc_keys_route_unless_a_dead_letter_key_replaces_them() {
        let mut h = FieldTable::default();
        h.insert(
            "CC".into(),
            AMQPValue::FieldArray(vec![long_str("c1"), long_str("c2")].into()),
        );
        let props = BasicProperties::default().with_headers(h);
        let kept = republish(
            &letter(message(&props), DeathReason::Rejected),
            "q",
            "dlx",
            None,
            0,
        );
        let keys: Vec<&str> = kept.routing_keys.iter().map(|k| &**k).collect();
        assert_eq!(keys, ["rk", "c1", "c2"]);
        let replaced = republish(
            &letter(message(&props), DeathReason::Rejected),
            "q",
            "dlx",
            Some("fixed"),
            0,
        );
        assert_eq!(replaced.routing_keys, vec![ShortStr::from("fixed")]);
        assert!(!headers(&replaced.message).contains_key("CC"));
    }

    #[test]
    fn cycles_without_a_rejection_are_detected() {
        let expired = republish(
            &letter(message(&BasicProperties::default()), DeathReason::Expired),
            "q",
            "",
            None,
            0,
        );
        assert!(expired.is_cycle("q"));
        assert!(!expired.is_cycle("elsewhere"));
        let rejected = republish(
            &letter(message(&BasicProperties::default()), DeathReason::Rejected),
            "q",
            "",
            None,
            0,
        );
        assert!(!rejected.is_cycle("q"));
        // work (rejected) -> wait (expired) -> work: the rejection breaks the cycle.
        let back = republish(
            &letter(rejected.message, DeathReason::Expired),
            "wait",
            "",
            None,
            0,
        );
        assert!(!back.is_cycle("q"));
        assert!(back.is_cycle("wait"));
    }
}

//! Operator policies (`rabbitmqctl set_operator_policy`): limits that whoever runs the
//! broker puts on what users' policies and queues may ask for.
//!
//! They are policies of their own set, chosen for a queue as policies are (pattern,
//! `apply-to`, highest priority; but a key the queue's type does not take does not keep
//! one off it, as in RabbitMQ 3.x), and may set only the limits below (those
//! `rabbit_policies` registers as `operator_policy_validator`, and 3.x's `ha-mode`,
//! `ha-params` and `ha-sync-mode`, accepted and left alone as in policies).
//!
//! A queue runs with its policy's definition and its operator policy's together; where
//! both set a key the lower value wins (`rabbit_policy:merge_policy_value/3`), so a
//! user's policy can tighten an operator's limit but never loosen it. The result then
//! meets the queue's own arguments as a policy does (see [`super::effective`]).

use std::borrow::Cow;

use serde_json::{Map, Value};

use super::{DELIVERY_LIMIT, EXPIRES, MAX_LENGTH, MAX_LENGTH_BYTES, MESSAGE_TTL};
use super::{Policy, PolicyDefinition};
use crate::store::definitions::PolicyDef;

/// The keys an operator policy may set (the `ha-*` three as 3.x takes them, then left
/// alone: see [`super::mirroring`]).
const KEYS: &[&str] = &[
    "ha-mode",
    "ha-params",
    "ha-sync-mode",
    EXPIRES,
    MESSAGE_TTL,
    MAX_LENGTH,
    MAX_LENGTH_BYTES,
    "max-in-memory-length",
    "max-in-memory-bytes",
    DELIVERY_LIMIT,
];

/// Validates an operator policy as `rabbitmqctl set_operator_policy` does: the values of
/// the keys it may set first, then the keys it may not.
///
/// # Errors
/// RabbitMQ's reason, as shown after "Validation failed".
pub fn validate(def: &PolicyDef) -> Result<Policy, String> {
    let Value::Object(terms) = &def.definition else {
        return Policy::from_def(def);
    };
    let (allowed, refused): (Map<String, Value>, Map<String, Value>) = terms
        .iter()
        .map(|(key, value)| (key.clone(), value.clone()))
        .partition(|(key, _)| KEYS.contains(&key.as_str()));
    if refused.is_empty() {
        return Policy::from_def(def);
    }
    if !allowed.is_empty() {
        Policy::from_def(&PolicyDef {
            definition: Value::Object(allowed),
            ..def.clone()
        })?;
    }
    // serde_json's map is ordered by key, as RabbitMQ holds a decoded object.
    Err(super::not_recognised(&refused))
}

/// The policy and the operator policy that apply to a queue.
#[derive(Debug, Clone, Copy, Default)]
pub struct Applied<'a> {
    /// Its policy.
    pub policy: Option<&'a Policy>,
    /// Its operator policy.
    pub operator: Option<&'a Policy>,
}

impl Applied<'_> {
    /// The definition the queue runs with (pass it to [`super::effective`]).
    pub fn definition(&self) -> Option<Cow<'_, PolicyDefinition>> {
        match (self.policy, self.operator) {
            (None, None) => None,
            (Some(policy), None) => Some(Cow::Borrowed(&policy.definition)),
            (None, Some(operator)) => Some(Cow::Borrowed(&operator.definition)),
            (Some(policy), Some(operator)) => {
                Some(Cow::Owned(capped(&policy.definition, &operator.definition)))
            }
        }
    }

    /// The same as JSON, as the management API shows it (`effective_policy_definition`).
    pub fn definition_json(&self) -> Value {
        let mut merged = match self.policy.map(|p| &p.definition_json) {
            Some(Value::Object(terms)) => terms.clone(),
            _ => Map::new(),
        };
        if let Some(Value::Object(limits)) = self.operator.map(|p| &p.definition_json) {
            for (key, limit) in limits {
                let value = match merged.get(key) {
                    Some(own) => lower_json(key, own, limit),
                    None => limit.clone(),
                };
                merged.insert(key.clone(), value);
            }
        }
        Value::Object(merged)
    }
}

/// `policy` under the limits of `operator`.
fn capped(policy: &PolicyDefinition, operator: &PolicyDefinition) -> PolicyDefinition {
    let lower = |own: Option<u64>, limit: Option<u64>| match (own, limit) {
        (Some(own), Some(limit)) => Some(own.min(limit)),
        (own, limit) => own.or(limit),
    };
    let mut ignored = policy.ignored.clone();
    for key in &operator.ignored {
        if !ignored.contains(key) {
            ignored.push(key.clone());
        }
    }
    PolicyDefinition {
        message_ttl: lower(policy.message_ttl, operator.message_ttl),
        expires: lower(policy.expires, operator.expires),
        max_length: lower(policy.max_length, operator.max_length),
        max_length_bytes: lower(policy.max_length_bytes, operator.max_length_bytes),
        delivery_limit: match (policy.delivery_limit, operator.delivery_limit) {
            (Some(own), Some(limit)) => Some(lower_delivery_limit(own, limit)),
            (own, limit) => own.or(limit),
        },
        ignored,
        ..policy.clone()
    }
}

/// The lower of two delivery limits, where a negative one means none: any limit is
/// lower than none.
fn lower_delivery_limit(own: i64, limit: i64) -> i64 {
    if own < 0 || limit < 0 {
        own.max(limit)
    } else {
        own.min(limit)
    }
}

/// The lower of two values of `key` as JSON; `own` when they do not compare as numbers.
fn lower_json(key: &str, own: &Value, limit: &Value) -> Value {
    match (own.as_i64(), limit.as_i64()) {
        (Some(a), Some(b)) if key == DELIVERY_LIMIT => Value::from(lower_delivery_limit(a, b)),
        (Some(a), Some(b)) => Value::from(a.min(b)),
        _ => match (own.as_f64(), limit.as_f64()) {
            (Some(a), Some(b)) if b < a => limit.clone(),
            _ => own.clone(),
        },
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::queue::arguments::QueueType;

    fn def(name: &str, definition: Value) -> PolicyDef {
        PolicyDef {
            vhost: "/".into(),
            name: name.into(),
            pattern: "^capped".into(),
            apply_to: "queues".into(),
            priority: 0,
            definition,
        }
    }

    #[test]
    fn an_operator_policy_holds_only_limits() {
        assert!(validate(&def("cap", json!({"max-length": 5, "message-ttl": 1000}))).is_ok());
        assert!(validate(&def("cap", json!({"max-in-memory-length": 5}))).is_ok());
        assert_eq!(
            validate(&def("bad", json!({"alternate-exchange": "x"}))).err(),
            Some(
                r#"[{<<"alternate-exchange">>,<<"x">>}] are not recognised policy settings"#
                    .to_owned()
            )
        );
        // Values of the keys it may hold are checked first, then the keys it may not.
        assert_eq!(
            validate(&def(
                "bad",
                json!({"max-length": "x", "overflow": "drop-head"})
            ))
            .err(),
            Some(r#"<<"x">> is not a valid maximum length"#.to_owned())
        );
        assert_eq!(
            validate(&def("bad", json!({"zz": 1, "dead-letter-exchange": "d", "expires": 5}))).err(),
            Some(
                r#"[{<<"dead-letter-exchange">>,<<"d">>},{<<"zz">>,1}] are not recognised policy settings"#
                    .to_owned()
            )
        );
        assert_eq!(
            validate(&def("bad", json!({}))).err(),
            Some("no policy provided".to_owned())
        );
    }

    #[test]
    fn where_both_set_a_limit_the_lower_wins() {
        let policy = Policy::from_def(&def(
            "userp",
            json!({"max-length": 10, "expires": 60000, "message-ttl": 500, "overflow": "reject-publish"}),
        ))
        .expect("policy");
        let operator = validate(&def(
            "cap",
            json!({"max-length": 5, "message-ttl": 1000, "max-length-bytes": 99}),
        ))
        .expect("operator policy");
        let applied = Applied {
            policy: Some(&policy),
            operator: Some(&operator),
        };
        // As the lab RabbitMQ 3.10 shows it.
        assert_eq!(
            applied.definition_json(),
            json!({"expires": 60000, "max-length": 5, "message-ttl": 500,
                   "max-length-bytes": 99, "overflow": "reject-publish"})
        );
        let merged = applied.definition().expect("a definition");
        assert_eq!(merged.max_length, Some(5));
        assert_eq!(merged.message_ttl, Some(500));
        assert_eq!(merged.expires, Some(60000));
        assert_eq!(merged.max_length_bytes, Some(99));
        assert_eq!(merged.overflow, policy.definition.overflow);

        let alone = Applied {
            policy: None,
            operator: Some(&operator),
        };
        assert_eq!(alone.definition_json(), operator.definition_json);
        assert_eq!(Applied::default().definition_json(), json!({}));
        assert!(Applied::default().definition().is_none());
    }

    #[test]
    fn a_key_the_queue_type_lacks_does_not_keep_an_operator_policy_off() {
        let mut policies = super::super::Policies::default();
        let cap = validate(&def("cap", json!({"max-length": 3, "delivery-limit": 5})))
            .expect("operator policy");
        policies.set_operator([cap]);
        for queue_type in [QueueType::Classic, QueueType::Quorum] {
            let applied = policies.applied("/", "capped.q", queue_type);
            assert_eq!(applied.operator.map(|p| p.name.as_str()), Some("cap"));
            assert_eq!(applied.definition().and_then(|d| d.max_length), Some(3));
        }
        assert!(
            policies
                .applied("/", "other", QueueType::Classic)
                .operator
                .is_none()
        );
        assert!(policies.clear_operator("/", "cap"));
        assert!(!policies.clear_operator("/", "cap"));
    }

    #[test]
    fn a_delivery_limit_beats_none() {
        assert_eq!(lower_delivery_limit(-1, 5), 5);
        assert_eq!(lower_delivery_limit(7, -1), 7);
        assert_eq!(lower_delivery_limit(7, 5), 5);
        assert_eq!(lower_delivery_limit(-1, -1), -1);
        assert_eq!(lower_json(DELIVERY_LIMIT, &json!(-1), &json!(3)), json!(3));
        assert_eq!(lower_json(MAX_LENGTH, &json!(2), &json!(3)), json!(2));
    }
}

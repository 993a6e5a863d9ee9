//! Vhost and user limits as RabbitMQ reads them: which names each owner may have, that
//! values are integers (a negative one means no limit), and its words for a refusal
//! (`rabbit_vhost_limit`, `rabbit_auth_backend_internal`, both through
//! `rabbit_parameter_validation`).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::erlang;

/// Which limits an owner may have, and how RabbitMQ's refusals name and word them.
#[derive(Debug)]
pub struct LimitKind {
    known: &'static [&'static str],
    /// The name of the set in refusals.
    set: &'static str,
    /// Whether refusals read `Validation failed`: RabbitMQ checks vhost limits as a
    /// runtime parameter, user limits directly.
    as_parameter: bool,
}

/// The limits a vhost may have.
pub const VHOST_LIMITS: LimitKind = LimitKind {
    known: &["max-connections", "max-queues"],
    set: "limits",
    as_parameter: true,
};

/// The limits a user may have.
pub const USER_LIMITS: LimitKind = LimitKind {
    known: &["max-connections", "max-channels"],
    set: "user-limits",
    as_parameter: false,
};

impl LimitKind {
    /// Reads limits given as a JSON object (`{"max-connections": 10}`; an empty list
    /// is no limits, as RabbitMQ reads `[]`).
    ///
    /// # Errors
    /// RabbitMQ's refusal: names not known, all of them, else the first value that is
    /// not an integer.
    pub fn parse(&self, value: &Value) -> Result<BTreeMap<String, i64>, String> {
        let map = match value {
            Value::Object(map) => map,
            Value::Array(items) if items.is_empty() => return Ok(BTreeMap::new()),
            other => {
                return Err(self.refusal(format!(
                    "{} not a list {}",
                    self.set,
                    erlang::json(other)
                )));
            }
        };
        self.check_names(map)?;
        map.iter()
            .map(|(name, value)| Ok((name.clone(), self.value(name, value)?)))
            .collect()
    }

    /// The value of one limit `name` given as JSON.
    ///
    /// # Errors
    /// RabbitMQ's refusal of an unknown name or a value that is not an integer.
    pub fn one(&self, name: &str, value: &Value) -> Result<i64, String> {
        let mut limits = Map::new();
        limits.insert(name.to_owned(), value.clone());
        self.check_names(&limits)?;
        self.value(name, value)
    }

    /// Refuses limits of names not `known`, all of them named.
    fn check_names(&self, limits: &Map<String, Value>) -> Result<(), String> {
        let mut unknown = limits
            .iter()
            .filter(|(name, _)| !self.known.contains(&name.as_str()))
            .peekable();
        if unknown.peek().is_none() {
            return Ok(());
        }
        Err(self.refusal(format!(
            "Unrecognised terms {} in {}",
            erlang::proplist(unknown),
            self.set
        )))
    }

    /// A limit's value: an integer (`rabbit_parameter_validation:integer/2`, which
    /// refuses `2.5` and `3.0` alike); one past i64's range is as good as none.
    fn value(&self, name: &str, value: &Value) -> Result<i64, String> {
        let number = value.as_i64().or_else(|| value.as_u64().map(|_| i64::MAX));
        number.ok_or_else(|| {
            self.refusal(format!(
                "{name} should be a number, actually was {}",
                erlang::json(value)
            ))
        })
    }

    /// A refusal with RabbitMQ's `reason`, worded as it words this kind's.
    fn refusal(&self, reason: String) -> String {
        if self.as_parameter {
            format!("Validation failed\n\n{reason}\n")
        } else {
            reason
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn limits_are_integers_of_known_names() {
        assert_eq!(
            VHOST_LIMITS.parse(&json!({"max-connections": 3, "max-queues": -7})),
            Ok(BTreeMap::from([
                ("max-connections".to_owned(), 3),
                ("max-queues".to_owned(), -7)
            ]))
        );
        assert_eq!(VHOST_LIMITS.parse(&json!([])), Ok(BTreeMap::new()));
        assert_eq!(
            USER_LIMITS.one("max-channels", &json!(u64::MAX)),
            Ok(i64::MAX)
        );
    }

    #[test]
    fn bad_limits_are_refused_in_rabbitmqs_words() {
        // As the lab RabbitMQ 3.10 words them, over HTTP and through rabbitmqctl.
        assert_eq!(
            VHOST_LIMITS.parse(&json!({"max-b": 1, "max-a": "x", "max-queues": 1})),
            Err("Validation failed\n\nUnrecognised terms [{<<\"max-a\">>,<<\"x\">>},{<<\"max-b\">>,1}] in limits\n".to_owned())
        );
        for (fraction, shown) in [
            (json!(2.5), "2.5"),
            (json!(3.0), "3.0"),
            (json!(-0.0), "-0.0"),
        ] {
            assert_eq!(
                VHOST_LIMITS.one("max-connections", &fraction),
                Err(format!(
                    "Validation failed\n\nmax-connections should be a number, actually was {shown}\n"
                ))
            );
        }
        assert_eq!(
            USER_LIMITS.parse(&json!({"max-channels": null})),
            Err("max-channels should be a number, actually was null".to_owned())
        );
        assert_eq!(
            USER_LIMITS.parse(&json!(5)),
            Err("user-limits not a list 5".to_owned())
        );
        assert_eq!(
            USER_LIMITS.one("max-queues", &json!(1)),
            Err("Unrecognised terms [{<<\"max-queues\">>,1}] in user-limits".to_owned())
        );
    }
}

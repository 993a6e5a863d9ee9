//! RabbitMQ 3.x's classic mirroring keys (`ha-mode`, `ha-params`, `ha-sync-mode`, …),
//! accepted so that a 3.x export imports unchanged, and then left alone.
//!
//! A single node mirrors nothing, so on a one-node 3.x broker a policy with `ha-mode`
//! only ever set its other keys; Warren does the same. The keys are checked as 3.13's
//! `rabbit_mirror_queue_misc:validate_policy/1` checks them, in its words, and keep a
//! policy off quorum queues and streams as they did in 3.x. RabbitMQ 4.x, which removed
//! mirroring, refuses them; Warren takes the 3.x side, since refusing them would stop
//! such an export from loading at all.

use serde_json::Value;

use crate::erlang;

/// The keys, sorted.
pub(super) const KEYS: &[&str] = &[
    "ha-mode",
    "ha-params",
    "ha-promote-on-failure",
    "ha-promote-on-shutdown",
    "ha-sync-batch-size",
    "ha-sync-mode",
];

/// Checks the mirroring keys of a definition together, as 3.13 does: `(key, reason)` of
/// the first fault.
pub(super) fn check(terms: &[(&String, &Value)]) -> Result<(), (String, String)> {
    let get = |key: &str| {
        terms
            .iter()
            .find(|(k, _)| k.as_str() == key)
            .map(|(_, v)| *v)
    };
    let fault = |key: &str, reason: String| Err((key.to_owned(), reason));
    let (mode, params) = (get("ha-mode"), get("ha-params"));
    let (sync, on_shutdown, on_failure) = (
        get("ha-sync-mode"),
        get("ha-promote-on-shutdown"),
        get("ha-promote-on-failure"),
    );
    let Some(mode) = mode else {
        if params.is_some() || sync.is_some() || on_shutdown.is_some() || on_failure.is_some() {
            return fault(
                "ha-mode",
                "ha-mode must be specified to specify ha-params, ha-sync-mode or \
                 ha-promote-on-shutdown"
                    .to_owned(),
            );
        }
        return batch_size(get("ha-sync-batch-size"));
    };
    match (mode.as_str(), params) {
        (Some("all"), None) => {}
        (Some("all"), Some(_)) => {
            return fault(
                "ha-params",
                "ha-mode=\"all\" does not take parameters".to_owned(),
            );
        }
        (Some("exactly"), Some(n)) if n.as_u64().is_some_and(|n| n > 0) => {}
        (Some("exactly"), given) => {
            return fault(
                "ha-params",
                format!(
                    "ha-mode=\"exactly\" takes an integer, {} given",
                    given.map_or_else(|| "none".to_owned(), erlang::json)
                ),
            );
        }
        (Some("nodes"), Some(Value::Array(nodes))) if nodes.is_empty() => {
            return fault(
                "ha-params",
                "ha-mode=\"nodes\" list must be non-empty".to_owned(),
            );
        }
        (Some("nodes"), Some(Value::Array(nodes))) => {
            let bad: Vec<&Value> = nodes.iter().filter(|n| !n.is_string()).collect();
            if !bad.is_empty() {
                let bad: Vec<String> = bad.into_iter().map(erlang::json).collect();
                return fault(
                    "ha-params",
                    format!(
                        "ha-mode=\"nodes\" takes a list of strings, [{}] was not a string",
                        bad.join(",")
                    ),
                );
            }
        }
        (Some("nodes"), given) => {
            return fault(
                "ha-params",
                format!(
                    "ha-mode=\"nodes\" takes a list, {} given",
                    given.map_or_else(|| "none".to_owned(), erlang::json)
                ),
            );
        }
        _ => {
            return fault(
                "ha-mode",
                format!("{} is not a valid ha-mode value", erlang::json(mode)),
            );
        }
    }
    for (key, value) in [
        ("ha-sync-mode", sync),
        ("ha-promote-on-shutdown", on_shutdown),
        ("ha-promote-on-failure", on_failure),
    ] {
        let allowed: &[&str] = if key == "ha-sync-mode" {
            &["manual", "automatic"]
        } else {
            &["always", "when-synced"]
        };
        if let Some(value) = value
            && !value.as_str().is_some_and(|v| allowed.contains(&v))
        {
            return fault(
                key,
                format!(
                    "{key} must be \"{}\" or \"{}\", got {}",
                    allowed[0],
                    allowed[1],
                    erlang::json(value)
                ),
            );
        }
    }
    batch_size(get("ha-sync-batch-size"))
}

/// `ha-sync-batch-size`: a positive integer.
fn batch_size(value: Option<&Value>) -> Result<(), (String, String)> {
    match value {
        None => Ok(()),
        Some(n) if n.as_u64().is_some_and(|n| n > 0) => Ok(()),
        Some(other) => Err((
            "ha-sync-batch-size".to_owned(),
            format!(
                "ha-sync-batch-size takes an integer greater than 0, {} given",
                erlang::json(other)
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn checked(definition: Value) -> Result<(), (String, String)> {
        let Value::Object(map) = definition else {
            panic!("an object");
        };
        let terms: Vec<(&String, &Value)> = map.iter().collect();
        check(&terms)
    }

    #[test]
    fn a_3x_mirroring_policy_is_accepted() {
        for definition in [
            json!({"ha-mode": "all"}),
            json!({"ha-mode": "all", "ha-sync-mode": "automatic", "ha-sync-batch-size": 5}),
            json!({"ha-mode": "exactly", "ha-params": 2, "ha-promote-on-shutdown": "always"}),
            json!({"ha-mode": "nodes", "ha-params": ["rabbit@a", "rabbit@b"],
                   "ha-promote-on-failure": "when-synced"}),
            json!({"max-length": 5}),
        ] {
            assert_eq!(checked(definition.clone()), Ok(()), "{definition}");
        }
    }

    #[test]
    fn a_mirroring_policy_sets_its_other_keys_on_classic_queues_only() {
        use crate::queue::arguments::QueueType;
        let definition = super::super::PolicyDefinition::parse(&json!({
            "ha-mode": "all", "max-length": 5
        }))
        .expect("accepted");
        assert_eq!(definition.max_length, Some(5));
        assert!(definition.applies_to(QueueType::Classic));
        assert!(!definition.applies_to(QueueType::Quorum));
        assert!(!definition.applies_to(QueueType::Stream));
    }

    #[test]
    fn a_bad_mirroring_policy_is_refused_in_3x_words() {
        for (definition, reason) in [
            (
                json!({"ha-params": 2}),
                "ha-mode must be specified to specify ha-params, ha-sync-mode or ha-promote-on-shutdown",
            ),
            (
                json!({"ha-mode": "some"}),
                "<<\"some\">> is not a valid ha-mode value",
            ),
            (
                json!({"ha-mode": "all", "ha-params": 2}),
                "ha-mode=\"all\" does not take parameters",
            ),
            (
                json!({"ha-mode": "exactly", "ha-params": "2"}),
                "ha-mode=\"exactly\" takes an integer, <<\"2\">> given",
            ),
            (
                json!({"ha-mode": "nodes", "ha-params": []}),
                "ha-mode=\"nodes\" list must be non-empty",
            ),
            (
                json!({"ha-mode": "nodes", "ha-params": ["a", 1]}),
                "ha-mode=\"nodes\" takes a list of strings, [1] was not a string",
            ),
            (
                json!({"ha-mode": "all", "ha-sync-mode": "sometimes"}),
                "ha-sync-mode must be \"manual\" or \"automatic\", got <<\"sometimes\">>",
            ),
            (
                json!({"ha-sync-batch-size": 0}),
                "ha-sync-batch-size takes an integer greater than 0, 0 given",
            ),
        ] {
            assert_eq!(
                checked(definition.clone()).map_err(|(_, r)| r),
                Err(reason.to_owned()),
                "{definition}"
            );
        }
    }
}

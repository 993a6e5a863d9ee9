//! The headers exchange: a message goes to bindings whose arguments match its headers,
//! all of them (`x-match: all`, the default) or any of them (`x-match: any`).
//! Arguments starting with `x-` are not matched, except with `all-with-x`/`any-with-x`.

use amqp_codec::amq_protocol::types::{AMQPValue, FieldTable};

use super::{Binding, DestinationKind, Routed, Router};
use crate::message::Message;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MatchMode {
    All,
    Any,
    AllWithX,
    AnyWithX,
}

impl MatchMode {
    fn of(arguments: &FieldTable) -> Self {
        let mode = arguments.inner().get("x-match").and_then(|v| match v {
            AMQPValue::LongString(s) => Some(s.to_string()),
            AMQPValue::ShortString(s) => Some(s.to_string()),
            _ => None,
        });
        match mode.as_deref() {
            Some("any") => Self::Any,
            Some("all-with-x") => Self::AllWithX,
            Some("any-with-x") => Self::AnyWithX,
            _ => Self::All,
        }
    }
}

/// Whether a message with `headers` matches a binding's `arguments`.
fn matches(arguments: &FieldTable, mode: MatchMode, headers: Option<&FieldTable>) -> bool {
    let with_x = matches!(mode, MatchMode::AllWithX | MatchMode::AnyWithX);
    let mut wanted = arguments
        .inner()
        .iter()
        .filter(|(k, _)| k.as_str() != "x-match" && (with_x || !k.as_str().starts_with("x-")));
    let hit = |(key, value): (&amqp_codec::amq_protocol::types::ShortString, &AMQPValue)| {
        headers
            .and_then(|h| h.inner().get(key))
            .is_some_and(|got| matches!(value, AMQPValue::Void) || got == value)
    };
    match mode {
        MatchMode::All | MatchMode::AllWithX => wanted.all(hit),
        MatchMode::Any | MatchMode::AnyWithX => wanted.any(hit),
    }
}

/// Bindings with their match mode read once, at bind time.
#[derive(Debug, Default)]
pub struct HeadersRouter {
    bindings: Vec<(MatchMode, Binding)>,
}

impl Router for HeadersRouter {
    fn bind(&mut self, binding: Binding) -> bool {
        if self.bindings.iter().any(|(_, b)| {
            b.is(
                binding.destination.kind(),
                binding.destination.name(),
                &binding.routing_key,
                &binding.arguments,
            )
        }) {
            return false;
        }
        self.bindings
            .push((MatchMode::of(&binding.arguments), binding));
        true
    }

    fn unbind(
        &mut self,
        kind: DestinationKind,
        name: &str,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> bool {
        let before = self.bindings.len();
        self.bindings
            .retain(|(_, b)| !b.is(kind, name, routing_key, arguments));
        before != self.bindings.len()
    }

    fn remove_destination(&mut self, kind: DestinationKind, name: &str) {
        self.bindings.retain(|(_, b)| !b.targets(kind, name));
    }

    fn route(&self, message: &Message, out: &mut Routed) {
        if self.bindings.is_empty() {
            return;
        }
        let headers = message.properties().and_then(|p| p.headers());
        for (mode, binding) in &self.bindings {
            if matches(&binding.arguments, *mode, headers.as_ref()) {
                binding.deliver_to(out);
            }
        }
    }

    fn len(&self) -> usize {
        self.bindings.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amqp_codec::amq_protocol::types::ShortString;

    fn table(pairs: &[(&str, &str)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert(ShortString::from(*k), AMQPValue::LongString((*v).into()));
        }
        t
    }

    #[test]
    fn all_needs_every_pair_and_any_one() {
        let all = table(&[("x-match", "all"), ("a", "1"), ("b", "2")]);
        let any = table(&[("x-match", "any"), ("a", "1"), ("b", "2")]);
        let both = table(&[("a", "1"), ("b", "2"), ("c", "3")]);
        let one = table(&[("a", "1")]);
        let wrong = table(&[("a", "2")]);
        assert!(matches(&all, MatchMode::of(&all), Some(&both)));
        assert!(!matches(&all, MatchMode::of(&all), Some(&one)));
        assert!(matches(&any, MatchMode::of(&any), Some(&one)));
        assert!(!matches(&any, MatchMode::of(&any), Some(&wrong)));
        assert!(!matches(&any, MatchMode::of(&any), None));
    }

    #[test]
    fn x_arguments_are_ignored_unless_with_x() {
        let all = table(&[("x-match", "all"), ("x-extra", "1")]);
        assert!(matches(&all, MatchMode::of(&all), None));
        let with_x = table(&[("x-match", "all-with-x"), ("x-extra", "1")]);
        assert!(!matches(&with_x, MatchMode::of(&with_x), None));
        assert!(matches(
            &with_x,
            MatchMode::of(&with_x),
            Some(&table(&[("x-extra", "1")]))
        ));
    }
}

//! The topic exchange: dotted routing keys matched against binding patterns, where `*`
//! stands for exactly one word and `#` for zero or more.

use amqp_codec::amq_protocol::types::FieldTable;

use super::{Binding, DestinationKind, Routed, Router};
use crate::message::Message;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Word {
    Literal(String),
    One,
    Many,
}

/// Splits a key into words; the empty key has none (as in RabbitMQ).
fn words(key: &str) -> Vec<&str> {
    if key.is_empty() {
        Vec::new()
    } else {
        key.split('.').collect()
    }
}

fn parse_pattern(pattern: &str) -> Vec<Word> {
    words(pattern)
        .into_iter()
        .map(|w| match w {
            "*" => Word::One,
            "#" => Word::Many,
            w => Word::Literal(w.to_owned()),
        })
        .collect()
}

/// Whether `words` (a routing key split on dots) matches `pattern`.
fn matches(pattern: &[Word], words: &[&str]) -> bool {
    match pattern.split_first() {
        None => words.is_empty(),
        Some((Word::Many, rest)) => {
            // `#` takes 0..=n words; collapse repeated `#`s first.
            (0..=words.len()).any(|taken| matches(rest, &words[taken..]))
        }
        Some((Word::One, rest)) => !words.is_empty() && matches(rest, &words[1..]),
        Some((Word::Literal(lit), rest)) => {
            words.first().is_some_and(|w| w == lit) && matches(rest, &words[1..])
        }
    }
}

/// Bindings with their patterns parsed once, at bind time.
#[derive(Debug, Default)]
pub struct TopicRouter {
    bindings: Vec<(Vec<Word>, Binding)>,
}

impl Router for TopicRouter {
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
            .push((parse_pattern(&binding.routing_key), binding));
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
        let words = words(&message.routing_key);
        for (pattern, binding) in &self.bindings {
            if matches(pattern, &words) {
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

    fn m(pattern: &str, key: &str) -> bool {
        matches(&parse_pattern(pattern), &words(key))
    }

    #[test]
    fn star_is_one_word_and_hash_any_number() {
        assert!(m("a.*.c", "a.b.c"));
        assert!(!m("a.*.c", "a.c"));
        assert!(!m("a.*", "a.b.c"));
        assert!(m("a.#", "a"));
        assert!(m("a.#", "a.b.c"));
        assert!(m("#", ""));
        assert!(m("#", "x.y"));
        assert!(m("#.c", "c"));
        assert!(m("a.#.c", "a.c"));
        assert!(m("a.#.c", "a.b.b.c"));
        assert!(!m("a.#.c", "a.b.d"));
        assert!(m("*.#", "x"));
        assert!(!m("*", ""));
        assert!(m("", ""));
        assert!(m("a.b", "a.b"));
        assert!(!m("a.b", "a.bb"));
        assert!(m("#.#", "a.b"));
    }
}

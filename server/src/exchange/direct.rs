//! The direct exchange: a message goes to the queues bound with its exact routing key.

use amqp_codec::amq_protocol::types::FieldTable;
use std::collections::HashMap;

use super::{Binding, DestinationKind, Routed, Router};
use crate::message::Message;

/// Bindings indexed by key, so routing is one hash lookup.
#[derive(Debug, Default)]
pub struct DirectRouter {
    by_key: HashMap<String, Vec<Binding>>,
    count: usize,
}

impl Router for DirectRouter {
    fn bind(&mut self, binding: Binding) -> bool {
        let list = self.by_key.entry(binding.routing_key.clone()).or_default();
        if list.iter().any(|b| {
            b.is(
                binding.destination.kind(),
                binding.destination.name(),
                &binding.routing_key,
                &binding.arguments,
            )
        }) {
            return false;
        }
        list.push(binding);
        self.count += 1;
        true
    }

    fn unbind(
        &mut self,
        kind: DestinationKind,
        name: &str,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> bool {
        let Some(list) = self.by_key.get_mut(routing_key) else {
            return false;
        };
        let before = list.len();
        list.retain(|b| !b.is(kind, name, routing_key, arguments));
        let removed = before - list.len();
        if list.is_empty() {
            self.by_key.remove(routing_key);
        }
        self.count -= removed;
        removed > 0
    }

    fn remove_destination(&mut self, kind: DestinationKind, name: &str) {
        let mut count = 0;
        self.by_key.retain(|_, list| {
            list.retain(|b| !b.targets(kind, name));
            count += list.len();
            !list.is_empty()
        });
        self.count = count;
    }

    fn route(&self, message: &Message, out: &mut Routed) {
        if let Some(list) = self.by_key.get(message.routing_key()) {
            for b in list {
                b.deliver_to(out);
            }
        }
    }

    fn len(&self) -> usize {
        self.count
    }

    fn bindings(&self) -> Vec<Binding> {
        self.by_key.values().flatten().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    #[test]
    fn routes_by_exact_key_only() {
        let mut r = DirectRouter::default();
        let a = queue("a");
        let b = queue("b");
        r.bind(binding(&a, "k", FieldTable::default()));
        r.bind(binding(&b, "k.x", FieldTable::default()));
        let mut out = Routed::default();
        r.route(&message("k", bytes::Bytes::new()), &mut out);
        assert_eq!(names(&out.queues), ["a"]);
        assert!(r.unbind(DestinationKind::Queue, "a", "k", &FieldTable::default()));
        assert!(!r.unbind(DestinationKind::Queue, "a", "k", &FieldTable::default()));
        out.queues.clear();
        r.route(&message("k", bytes::Bytes::new()), &mut out);
        assert!(out.queues.is_empty());
        assert_eq!(r.len(), 1);
        r.remove_destination(DestinationKind::Queue, "b");
        assert_eq!(r.len(), 0);
    }
}

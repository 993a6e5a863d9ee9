//! The fanout exchange: a message goes to every bound queue, whatever its key.

use amqp_codec::amq_protocol::types::FieldTable;

use super::{Binding, DestinationKind, Routed, Router};
use crate::message::Message;

/// All bindings in one list.
#[derive(Debug, Default)]
pub struct FanoutRouter {
    bindings: Vec<Binding>,
}

impl Router for FanoutRouter {
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
        let before = self.bindings.len();
        self.bindings
            .retain(|b| !b.is(kind, name, routing_key, arguments));
        before != self.bindings.len()
    }

    fn remove_destination(&mut self, kind: DestinationKind, name: &str) {
        self.bindings.retain(|b| !b.targets(kind, name));
    }

    fn route(&self, _message: &Message, out: &mut Routed) {
        for b in &self.bindings {
            b.deliver_to(out);
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

    #[test]
    fn routes_to_every_queue() {
        let mut r = FanoutRouter::default();
        let a = queue("a");
        let b = queue("b");
        r.bind(binding(&a, "", FieldTable::default()));
        r.bind(binding(&b, "ignored", FieldTable::default()));
        let mut out = Routed::default();
        r.route(&message("anything", bytes::Bytes::new()), &mut out);
        assert_eq!(names(&out.queues), ["a", "b"]);
    }
}

//! Exchanges: routing a message to the queues bound to it. One file per exchange type,
//! each a [`Router`] over its bindings; routing is pure, over names and headers.

mod consistent_hash;
mod direct;
mod fanout;
mod headers;
mod topic;

use std::sync::{Arc, OnceLock};

use amqp_codec::ShortStr;
use amqp_codec::amq_protocol::types::{AMQPValue, FieldTable};
use parking_lot::RwLock;

use crate::error::AmqpResult;
use crate::message::Message;
use crate::queue::Queue;
use consistent_hash::ConsistentHashRouter;

/// The exchange types Warren routes by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    /// Exact routing-key match.
    Direct,
    /// Every bound queue.
    Fanout,
    /// Dotted words with `*` (one word) and `#` (zero or more words).
    Topic,
    /// Header values with `x-match` all or any.
    Headers,
    /// One destination per message, chosen on a hash ring weighted by binding keys
    /// (`x-consistent-hash`, RabbitMQ's plugin).
    ConsistentHash,
}

impl ExchangeKind {
    /// The kind named in `exchange.declare`, if known.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "direct" => Some(Self::Direct),
            "fanout" => Some(Self::Fanout),
            "topic" => Some(Self::Topic),
            "headers" => Some(Self::Headers),
            "x-consistent-hash" => Some(Self::ConsistentHash),
            _ => None,
        }
    }

    /// The type name as declared.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Fanout => "fanout",
            Self::Topic => "topic",
            Self::Headers => "headers",
            Self::ConsistentHash => "x-consistent-hash",
        }
    }

    fn router(self, arguments: &FieldTable) -> Box<dyn Router> {
        match self {
            Self::Direct => Box::<direct::DirectRouter>::default(),
            Self::Fanout => Box::<fanout::FanoutRouter>::default(),
            Self::Topic => Box::<topic::TopicRouter>::default(),
            Self::Headers => Box::<headers::HeadersRouter>::default(),
            Self::ConsistentHash => Box::new(ConsistentHashRouter::new(arguments)),
        }
    }

    /// Checks a new exchange's arguments as its type requires.
    ///
    /// # Errors
    /// 406 PRECONDITION_FAILED with the text RabbitMQ (or its plugin) gives.
    pub fn check_arguments(
        self,
        arguments: &FieldTable,
        exchange: &str,
        vhost: &str,
    ) -> AmqpResult<()> {
        match self {
            Self::ConsistentHash => {
                ConsistentHashRouter::check_arguments(arguments, exchange, vhost)
            }
            _ => Ok(()),
        }
    }

    /// Checks a binding key as this type requires (a weight, for consistent hashing).
    ///
    /// # Errors
    /// 406 PRECONDITION_FAILED with the plugin's text.
    pub fn check_binding_key(self, key: &str) -> AmqpResult<()> {
        match self {
            Self::ConsistentHash => ConsistentHashRouter::check_binding_key(key),
            _ => Ok(()),
        }
    }
}

/// What a binding leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestinationKind {
    /// A queue (`queue.bind`).
    Queue,
    /// Another exchange (`exchange.bind`).
    Exchange,
}

/// The destination of a binding: a queue, or an exchange routed through by name (so
/// that exchanges bound in a cycle do not keep each other alive).
#[derive(Debug, Clone)]
pub enum Destination {
    /// A queue.
    Queue(Arc<Queue>),
    /// An exchange, by name.
    Exchange(ShortStr),
}

impl Destination {
    /// Whether it is a queue or an exchange.
    pub fn kind(&self) -> DestinationKind {
        match self {
            Destination::Queue(_) => DestinationKind::Queue,
            Destination::Exchange(_) => DestinationKind::Exchange,
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        match self {
            Destination::Queue(q) => q.name(),
            Destination::Exchange(name) => name,
        }
    }
}

/// A binding from an exchange to a queue or another exchange.
#[derive(Debug, Clone)]
pub struct Binding {
    /// Where matching messages go.
    pub destination: Destination,
    /// The binding key.
    pub routing_key: String,
    /// Binding arguments (used by the headers exchange).
    pub arguments: FieldTable,
}

impl Binding {
    /// Whether this binding leads to the destination `kind`/`name`.
    pub fn targets(&self, kind: DestinationKind, name: &str) -> bool {
        self.destination.kind() == kind && self.destination.name() == name
    }

    /// Whether this is the binding named by (destination, key, arguments).
    pub fn is(
        &self,
        kind: DestinationKind,
        name: &str,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> bool {
        self.targets(kind, name) && self.routing_key == routing_key && &self.arguments == arguments
    }

    /// Adds this binding's destination to a routing result.
    pub fn deliver_to(&self, out: &mut Routed) {
        match &self.destination {
            Destination::Queue(queue) => out.queues.push(queue.clone()),
            Destination::Exchange(name) => out.exchanges.push(name.clone()),
        }
    }
}

/// Where a message goes: queues, and exchanges to route it through next. Reused across
/// messages, so routing allocates nothing once warm.
#[derive(Debug, Default)]
pub struct Routed {
    /// Destination queues (possibly with duplicates until deduplicated).
    pub queues: Vec<Arc<Queue>>,
    /// Exchanges still to route through.
    pub exchanges: Vec<ShortStr>,
}

impl Routed {
    /// Empties both lists, keeping their capacity.
    pub fn clear(&mut self) {
        self.queues.clear();
        self.exchanges.clear();
    }

    /// Keeps one copy of each queue: a queue reached by several bindings gets the
    /// message once.
    pub fn dedup_queues(&mut self) {
        if self.queues.len() > 1 {
            self.queues.sort_unstable_by_key(Arc::as_ptr);
            self.queues.dedup_by(|a, b| Arc::ptr_eq(a, b));
        }
    }
}

/// The routing table of one exchange type.
pub trait Router: Send + Sync + std::fmt::Debug {
    /// Adds a binding; false if an identical one exists.
    fn bind(&mut self, binding: Binding) -> bool;
    /// Removes a binding; false if there was none.
    fn unbind(
        &mut self,
        kind: DestinationKind,
        name: &str,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> bool;
    /// Removes every binding to a destination.
    fn remove_destination(&mut self, kind: DestinationKind, name: &str);
    /// Adds the destinations `message` goes to (possibly with duplicates).
    fn route(&self, message: &Message, out: &mut Routed);
    /// Number of bindings.
    fn len(&self) -> usize;
    /// Every binding, for listings (the management API); in no particular order.
    fn bindings(&self) -> Vec<Binding>;
    /// Whether there are no bindings.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The declared properties of an exchange, compared on redeclaration.
#[derive(Debug, Clone)]
pub struct ExchangeSettings {
    /// Routing type.
    pub kind: ExchangeKind,
    /// Survives a restart.
    pub durable: bool,
    /// Deleted when its last binding goes.
    pub auto_delete: bool,
    /// Not publishable by clients.
    pub internal: bool,
    /// Declared as `x-delayed-message`: messages with an `x-delay` header are held that
    /// long before `kind` routes them.
    pub delayed: bool,
    /// Optional arguments.
    pub arguments: FieldTable,
}

impl ExchangeSettings {
    /// The type as declared (`x-delayed-message` for a delayed exchange).
    pub fn type_name(&self) -> &'static str {
        if self.delayed {
            DELAYED_TYPE
        } else {
            self.kind.as_str()
        }
    }
}

/// The exchange type of the delayed-message plugin.
pub const DELAYED_TYPE: &str = "x-delayed-message";

/// Reads a declared exchange type: its routing kind and whether it delays messages.
/// `Ok(None)` for a type Warren does not know.
///
/// # Errors
/// 406 PRECONDITION_FAILED, as the delayed-message plugin answers, for
/// `x-delayed-message` without a known `x-delayed-type`.
pub fn parse_declared_type(
    type_name: &str,
    arguments: &FieldTable,
) -> AmqpResult<Option<(ExchangeKind, bool)>> {
    if type_name != DELAYED_TYPE {
        return Ok(ExchangeKind::parse(type_name).map(|kind| (kind, false)));
    }
    let inner = match arguments.inner().get("x-delayed-type") {
        Some(AMQPValue::LongString(name)) => ExchangeKind::parse(&name.to_string()),
        Some(AMQPValue::ShortString(name)) => ExchangeKind::parse(name.as_str()),
        _ => None,
    };
    match inner {
        Some(kind) => Ok(Some((kind, true))),
        None => Err(crate::error::precondition(
            "Invalid argument, 'x-delayed-type' must be an existing exchange type",
        )),
    }
}

/// An exchange and its bindings.
#[derive(Debug)]
pub struct Exchange {
    name: ShortStr,
    settings: ExchangeSettings,
    router: RwLock<Box<dyn Router>>,
    /// Where a delayed exchange holds messages until their delay is over.
    hold: OnceLock<Arc<Queue>>,
    /// The alternate exchange in force: its own argument, else its policy's.
    alternate: RwLock<Option<ShortStr>>,
    /// Messages published to it and routed out of it.
    counters: crate::stats::ExchangeCounters,
}

impl Exchange {
    /// A new exchange with no bindings.
    pub fn new(name: ShortStr, settings: ExchangeSettings) -> Self {
        let router = RwLock::new(settings.kind.router(&settings.arguments));
        Self {
            name,
            settings,
            router,
            hold: OnceLock::new(),
            alternate: RwLock::new(None),
            counters: crate::stats::ExchangeCounters::default(),
        }
    }

    /// The exchange's name.
    pub fn name(&self) -> &ShortStr {
        &self.name
    }

    /// Messages published to it and routed out of it (`publish_in`, `publish_out`).
    pub fn counters(&self) -> &crate::stats::ExchangeCounters {
        &self.counters
    }

    /// Its declared settings.
    pub fn settings(&self) -> &ExchangeSettings {
        &self.settings
    }

    /// Adds a binding; false if it existed.
    pub fn bind(&self, binding: Binding) -> bool {
        self.router.write().bind(binding)
    }

    /// Removes a binding; false if there was none.
    pub fn unbind(
        &self,
        kind: DestinationKind,
        name: &str,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> bool {
        self.router
            .write()
            .unbind(kind, name, routing_key, arguments)
    }

    /// Removes every binding to a deleted queue or exchange.
    pub fn remove_destination(&self, kind: DestinationKind, name: &str) {
        self.router.write().remove_destination(kind, name);
    }

    /// Its bindings, copied out of its lock (for listings).
    pub fn bindings(&self) -> Vec<Binding> {
        self.router.read().bindings()
    }

    /// Whether any binding exists (for `if-unused` deletes).
    pub fn has_bindings(&self) -> bool {
        !self.router.read().is_empty()
    }

    /// The queue a delayed exchange holds messages in, once it has one.
    pub fn hold(&self) -> Option<&Arc<Queue>> {
        self.hold.get()
    }

    /// Gives a delayed exchange its hold (at declaration or recovery); false if it
    /// already had one.
    pub fn set_hold(&self, hold: Arc<Queue>) -> bool {
        self.hold.set(hold).is_ok()
    }

    /// The alternate exchange that takes what this one cannot route.
    pub fn alternate(&self) -> Option<ShortStr> {
        self.alternate.read().clone()
    }

    /// Sets the alternate exchange in force (from the `alternate-exchange` argument or
    /// a policy).
    pub fn set_alternate(&self, alternate: Option<String>) {
        *self.alternate.write() = alternate.map(ShortStr::from);
    }

    /// Adds the destinations `message` goes to through this exchange's bindings.
    pub fn route(&self, message: &Message, out: &mut Routed) {
        self.router.read().route(message, out);
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use crate::queue::QueueSettings;
    use bytes::Bytes;

    pub fn queue(name: &str) -> Arc<Queue> {
        Arc::new(Queue::new(
            name.into(),
            "/",
            QueueSettings::default(),
            None,
            &crate::store::Recovery::default(),
            crate::queue::QueueEnv::for_tests(),
        ))
    }

    pub fn binding(queue: &Arc<Queue>, key: &str, arguments: FieldTable) -> Binding {
        Binding {
            destination: Destination::Queue(queue.clone()),
            routing_key: key.into(),
            arguments,
        }
    }

    pub fn message(key: &str, properties: Bytes) -> Message {
        Message::new("x", key, &properties, Bytes::new())
    }

    pub fn names(out: &[Arc<Queue>]) -> Vec<String> {
        let mut names: Vec<String> = out.iter().map(|q| q.name().to_string()).collect();
        names.sort();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;

    #[test]
    fn a_queue_bound_twice_gets_one_copy() {
        let ex = Exchange::new(
            "x".into(),
            ExchangeSettings {
                kind: ExchangeKind::Topic,
                durable: false,
                auto_delete: false,
                internal: false,
                delayed: false,
                arguments: FieldTable::default(),
            },
        );
        let q = queue("q");
        let other = queue("other");
        assert!(ex.bind(binding(&q, "a.*", FieldTable::default())));
        assert!(ex.bind(binding(&q, "#", FieldTable::default())));
        assert!(ex.bind(binding(&other, "a.b", FieldTable::default())));
        assert!(!ex.bind(binding(&q, "#", FieldTable::default())));
        let mut out = Routed::default();
        ex.route(
            &message("a.b", bytes::Bytes::from_static(&[0, 0])),
            &mut out,
        );
        out.dedup_queues();
        assert_eq!(names(&out.queues), ["other", "q"]);
    }

    #[test]
    fn every_router_lists_its_bindings() {
        for kind in [
            ExchangeKind::Direct,
            ExchangeKind::Fanout,
            ExchangeKind::Topic,
            ExchangeKind::Headers,
            ExchangeKind::ConsistentHash,
        ] {
            let ex = Exchange::new(
                "x".into(),
                ExchangeSettings {
                    kind,
                    durable: false,
                    auto_delete: false,
                    internal: false,
                    delayed: false,
                    arguments: FieldTable::default(),
                },
            );
            let (q, other) = (queue("q"), queue("other"));
            let keys = ["1", "2", "a.#"];
            for key in keys {
                assert!(ex.bind(binding(&q, key, FieldTable::default())), "{kind:?}");
            }
            assert!(ex.bind(binding(&other, "1", FieldTable::default())));
            let mut listed: Vec<(String, String)> = ex
                .bindings()
                .iter()
                .map(|b| (b.destination.name().to_owned(), b.routing_key.clone()))
                .collect();
            listed.sort();
            assert_eq!(
                listed,
                [("other", "1"), ("q", "1"), ("q", "2"), ("q", "a.#")]
                    .map(|(d, k)| (d.to_owned(), k.to_owned())),
                "{kind:?}"
            );
            assert!(ex.unbind(DestinationKind::Queue, "q", "2", &FieldTable::default()));
            assert_eq!(ex.bindings().len(), 3, "{kind:?}");
        }
    }
}

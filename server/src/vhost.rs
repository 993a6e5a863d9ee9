//! A virtual host: the registry of its exchanges and queues and the bindings between
//! them, with RabbitMQ's rules for declaring, binding and deleting.
//!
//! The vhost is where effects that cross queues are carried out ([`VHost::apply`]):
//! queues hand back the messages they dead-letter or release and the queues that
//! expired, and the vhost routes and deletes them once no lock is held. Definition
//! changes are queued under the registry lock that orders them and written to the
//! store after it is released, so no file-system work happens under a registry lock and
//! the store sees changes in the order the registry made them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use amqp_codec::ShortStr;
use amqp_codec::amq_protocol::types::FieldTable;
use parking_lot::RwLock;

use crate::error::{self, AmqpError, AmqpResult};
use crate::exchange::{
    Binding, Destination, DestinationKind, Exchange, ExchangeKind, ExchangeSettings, Routed,
    parse_declared_type,
};
use crate::message::{Handling, Message};
use crate::names;
use crate::policy::{self, Policies};
use crate::queue::arguments::{self, QueueArguments, QueueType};
use crate::queue::dead_letter;
use crate::queue::stream::Retention;
use crate::queue::{
    ConnectionId, Effects, Enqueued, Move, MoveRoute, Queue, QueueDeclare, QueueEnv, QueueSettings,
};
use crate::store::definitions::{BindingDef, Change, Definitions, ExchangeDef, QueueDef};
use crate::store::stream_log::{
    DEFAULT_STREAM_FILTER_BYTES, DEFAULT_STREAM_SEGMENT_SIZE, SEGMENT_SIZE_RANGE, StreamFiles,
};
use crate::store::{BrokerStore, QueueLog, Recovery, SegmentPosition, SyncTarget};
use crate::timers::{Timers, Wake, now_ms};
use amqp_codec::ReplyCode;

/// A virtual host's registry.
#[derive(Debug)]
pub struct VHost {
    name: String,
    exchanges: RwLock<HashMap<String, Arc<Exchange>>>,
    queues: RwLock<HashMap<String, Arc<Queue>>>,
    /// Direct reply-to consumers' private queues, by reply address.
    reply_queues: RwLock<HashMap<String, Arc<Queue>>>,
    /// Where durable definitions and queue logs go; `None` keeps everything in memory.
    store: Option<Arc<BrokerStore>>,
    /// Wake-ups for its queues' expiries.
    timers: Arc<Timers>,
    /// The broker's policies, applied to queues by name.
    policies: Arc<RwLock<Policies>>,
    /// The broker's queued messages take more memory than the spill budget; shared
    /// with its queues, which then spill early.
    memory_tight: Arc<AtomicBool>,
    /// Itself, for the clocks of its queues, which wake it to carry out their effects.
    me: Weak<VHost>,
    /// Set while [`restore`](Self::restore) runs: queues' clocks do nothing until every
    /// exchange, queue and binding is back (restore then starts them afresh), so that
    /// nothing is dead-lettered to a queue or through a binding not yet restored.
    restoring: AtomicBool,
    /// Set when the vhost is deleted: its connections close.
    deleted: tokio::sync::watch::Sender<bool>,
    /// Messages published, delivered, acked … in this vhost since start.
    messages: crate::stats::MessageCounters,
    /// The default exchange's `publish_in` and `publish_out` (it has no [`Exchange`]).
    default_exchange: crate::stats::ExchangeCounters,
    /// Queues declared, created and deleted in this vhost since start.
    queue_churn: crate::stats::QueueChurn,
    /// Tests set it to leave queued changes unwritten by the operations that made them,
    /// as if their thread stalled just after the registry lock: only commit rounds
    /// write them then.
    #[cfg(test)]
    stall_writes: AtomicBool,
    /// Tests set it to run once in a declaration, after the queue is put under the
    /// policies and before it is in the registry.
    #[cfg(test)]
    between_policy_and_registry: parking_lot::Mutex<Option<Meanwhile>>,
}

/// What a test runs in the middle of an operation.
#[cfg(test)]
struct Meanwhile(Box<dyn FnOnce() + Send>);

#[cfg(test)]
impl std::fmt::Debug for Meanwhile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Meanwhile")
    }
}

/// What the timers wake for one queue: asks it what is due and carries out the effects
/// through its vhost, on the timer thread with no lock held.
struct QueueClock {
    vhost: Weak<VHost>,
    queue: Weak<Queue>,
}

impl Wake for QueueClock {
    fn wake(self: Arc<Self>, now_ms: u64) {
        let (Some(vhost), Some(queue)) = (self.vhost.upgrade(), self.queue.upgrade()) else {
            return;
        };
        if vhost.restoring.load(Ordering::Acquire) {
            return;
        }
        let mut effects = Effects::default();
        queue.wake(now_ms, &mut effects);
        vhost.apply(effects);
    }
}

/// RabbitMQ's predeclared exchanges, present in every vhost.
fn predeclared_exchanges() -> HashMap<String, Arc<Exchange>> {
    [
        ("amq.direct", ExchangeKind::Direct),
        ("amq.fanout", ExchangeKind::Fanout),
        ("amq.topic", ExchangeKind::Topic),
        ("amq.headers", ExchangeKind::Headers),
        ("amq.match", ExchangeKind::Headers),
    ]
    .into_iter()
    .map(|(name, kind)| {
        let settings = ExchangeSettings {
            kind,
            durable: true,
            auto_delete: false,
            internal: false,
            delayed: false,
            arguments: FieldTable::default(),
        };
        (
            name.to_owned(),
            Arc::new(Exchange::new(name.into(), settings)),
        )
    })
    .collect()
}

/// The segment size and Bloom filter size a stream declared with `args` uses.
fn stream_log_settings(args: &FieldTable) -> (u64, u8) {
    let stream = arguments::StreamArguments::of(args);
    (
        stream
            .segment_bytes
            .unwrap_or(DEFAULT_STREAM_SEGMENT_SIZE)
            .clamp(SEGMENT_SIZE_RANGE.0, SEGMENT_SIZE_RANGE.1),
        stream.filter_bytes.unwrap_or(DEFAULT_STREAM_FILTER_BYTES),
    )
}

fn yes_no(b: bool) -> &'static str {
    if b { "true" } else { "false" }
}

impl VHost {
    /// A vhost with RabbitMQ's predeclared exchanges, storing durable things in `store`.
    pub fn new(
        name: &str,
        store: Option<Arc<BrokerStore>>,
        timers: Arc<Timers>,
        policies: Arc<RwLock<Policies>>,
    ) -> Arc<Self> {
        let vhost = Arc::new_cyclic(|me| Self {
            name: name.to_owned(),
            exchanges: RwLock::new(predeclared_exchanges()),
            queues: RwLock::default(),
            reply_queues: RwLock::default(),
            store,
            timers,
            policies,
            memory_tight: Arc::default(),
            me: me.clone(),
            restoring: AtomicBool::new(false),
            deleted: tokio::sync::watch::Sender::new(false),
            messages: crate::stats::MessageCounters::default(),
            default_exchange: crate::stats::ExchangeCounters::default(),
            queue_churn: crate::stats::QueueChurn::default(),
            #[cfg(test)]
            stall_writes: AtomicBool::new(false),
            #[cfg(test)]
            between_policy_and_registry: parking_lot::Mutex::new(None),
        });
        vhost.apply_policies();
        vhost
    }

    /// Makes a queue of this vhost, with a clock that wakes it through the vhost.
    /// A stream's files (`stream`, one per partition) sit in the directory of its
    /// queue log `log`.
    fn new_queue(
        &self,
        name: ShortStr,
        settings: QueueSettings,
        log: Option<QueueLog>,
        recovered: &Recovery,
        stream: Option<Vec<StreamFiles>>,
    ) -> Arc<Queue> {
        Arc::new_cyclic(|me| {
            let clock: Arc<dyn Wake> = Arc::new(QueueClock {
                vhost: self.me.clone(),
                queue: me.clone(),
            });
            let env = QueueEnv {
                timers: self.timers.clone(),
                clock,
                store: self.store.as_ref().map_or_else(Weak::new, Arc::downgrade),
                memory_tight: self.memory_tight.clone(),
            };
            match (log, stream) {
                (Some(home), Some(files)) => {
                    Queue::new_stream(me.clone(), name, &self.name, settings, home, files, env)
                }
                (log, _) => Queue::new(name, &self.name, settings, log, recovered, env),
            }
        })
    }

    /// The files of a new stream's `partitions` (1 without `x-partitions`), in the
    /// directory of its queue log `home`.
    ///
    /// # Errors
    /// 541 INTERNAL_ERROR without a data directory or when the log cannot be made.
    fn new_stream_files(
        &self,
        home: Option<&QueueLog>,
        partitions: u16,
        args: &FieldTable,
        name: &str,
    ) -> AmqpResult<Vec<StreamFiles>> {
        let failed = |why: String| {
            AmqpError::new(
                ReplyCode::InternalError,
                format!(
                    "cannot create the log of stream '{name}' in vhost '{}': {why}",
                    self.name
                ),
            )
        };
        let (Some(store), Some(home)) = (self.store.as_ref(), home) else {
            return Err(failed("the broker runs without a data directory".into()));
        };
        let (segment, bloom) = stream_log_settings(args);
        (0..partitions.max(1))
            .map(|p| {
                store
                    .create_stream(home, p, segment, bloom)
                    .map_err(|e| failed(e.to_string()))
            })
            .collect()
    }

    /// Drops a deleted queue's messages; its durable log goes once the deletion (written
    /// before this call) is durable.
    fn discard_queue(&self, queue: &Queue) -> u32 {
        let (count, logs) = queue.delete();
        for log in logs {
            match &self.store {
                Some(store) => store.retire_queue_log(log),
                None => {
                    if let Err(error) = log.delete() {
                        tracing::error!(queue = %queue.name(), %error, "cannot remove the queue's log");
                    }
                }
            }
        }
        count
    }

    /// Drops a removed queue: discarded with its log if its deletion (`ticket`) was
    /// stored; else its messages leave memory but its log is kept, durable, until the
    /// store manages to write the deletion (a restart before then brings the queue back
    /// whole, not as a stored queue without its messages). The write's error then.
    fn drop_removed(&self, queue: &Queue, ticket: Option<u64>) -> Result<u32, String> {
        let reason = match self.written(ticket) {
            Ok(()) => return Ok(self.discard_queue(queue)),
            Err(reason) => reason,
        };
        let logs = queue.abandon();
        if let Some(store) = &self.store
            && !logs.is_empty()
        {
            store.keep_undeleted(&self.name, queue.name(), logs);
        }
        Err(reason)
    }

    /// Queues a definitions change; the caller holds the registry lock that orders it
    /// and calls [`write_changes`](Self::write_changes) once it is released.
    fn queue_change(&self, change: Change) {
        if let Some(store) = &self.store {
            store.pending().queue(change);
        }
    }

    /// Like [`queue_change`](Self::queue_change), for a change whose operation is
    /// refused if it cannot be written: returns the ticket to ask
    /// [`written`](Self::written) about once [`write_changes`](Self::write_changes)
    /// returned.
    fn queue_checked_change(&self, change: Change) -> Option<u64> {
        Some(self.store.as_ref()?.pending().queue_checked(change))
    }

    /// Whether the checked change of `ticket` was stored, and if not, why. Only
    /// meaningful after [`write_changes`](Self::write_changes) returned.
    fn written(&self, ticket: Option<u64>) -> Result<(), String> {
        match (&self.store, ticket) {
            (Some(store), Some(ticket)) => store.pending().written(ticket),
            _ => Ok(()),
        }
    }

    /// Writes the queued definitions changes to the store, in the order they were made
    /// (commit rounds write them too, should this thread stall before it does).
    fn write_changes(&self) {
        #[cfg(test)]
        if self.stall_writes.load(Ordering::Acquire) {
            return;
        }
        if let Some(store) = &self.store {
            store.write_pending();
        }
    }

    /// Carries out what queue operations left to do: moves messages between queues
    /// (at least once: a source record is acked only when the copies are durable) and
    /// deletes expired queues. Moving can make targets drop or expire messages in turn;
    /// that goes on until nothing is left (dead-letter cycles end as in RabbitMQ).
    ///
    /// Must be called with no lock held.
    pub fn apply(&self, mut effects: Effects) {
        while !effects.is_empty() {
            let mut next = Effects::default();
            for moved in std::mem::take(&mut effects.moves) {
                self.carry(moved, &mut next);
            }
            for queue in std::mem::take(&mut effects.expired) {
                tracing::debug!(queue = %queue.name(), "queue expired");
                self.remove_queue(&queue);
            }
            effects = next;
        }
    }

    /// Routes the messages of one move and enqueues them where they go; acks their
    /// source records once the copies are durable.
    fn carry(&self, moved: Move, next: &mut Effects) {
        let now = now_ms();
        let mut routed = Routed::default();
        let mut commits: Vec<Arc<dyn SyncTarget>> = Vec::new();
        let mut positions: Vec<SegmentPosition> = Vec::new();
        let mut retained = Vec::new();
        let from = moved.source.name();
        for letter in moved.letters {
            routed.clear();
            let mut cycled = false;
            let (message, at_least_once) = match &moved.route {
                MoveRoute::Delayed { exchange } => {
                    let exchanges = self.exchanges.read();
                    if let Some(source) = exchanges.get(&**exchange) {
                        route_through(&exchanges, source, &letter.message, &[], &mut routed);
                    }
                    (letter.message.clone(), false)
                }
                MoveRoute::DeadLetter {
                    exchange,
                    routing_key,
                    at_least_once,
                } => {
                    let republished = dead_letter::republish(
                        &letter,
                        from,
                        exchange,
                        routing_key.as_deref(),
                        now,
                    );
                    let extra = republished.routing_keys.get(1..).unwrap_or_default();
                    if exchange.is_empty() {
                        let _ = self.route(&republished.message, extra, &mut routed);
                    } else {
                        let exchanges = self.exchanges.read();
                        match exchanges.get(exchange) {
                            Some(target) => route_through(
                                &exchanges,
                                target,
                                &republished.message,
                                extra,
                                &mut routed,
                            ),
                            None => tracing::debug!(
                                queue = %from,
                                exchange = %exchange,
                                "dead-letter exchange missing"
                            ),
                        }
                    }
                    let before = routed.queues.len();
                    routed
                        .queues
                        .retain(|queue| !republished.is_cycle(queue.name()));
                    // Every route closes a cycle: RabbitMQ drops it, whatever the strategy.
                    cycled = before > 0 && routed.queues.is_empty();
                    (republished.message, *at_least_once)
                }
            };
            routed.dedup_queues();
            let taken = enqueue_moved(&message, routed.queues.drain(..), &mut commits, next);
            if taken || !at_least_once || cycled {
                positions.extend(letter.position);
            } else {
                retained.push(letter);
            }
        }
        if !retained.is_empty() {
            // At least once: no queue took them, so their source keeps them and tries
            // again later.
            moved.source.retain_dead_letters(moved.partition, retained);
        }
        let (source, partition) = (moved.source, moved.partition);
        match (&self.store, commits.is_empty()) {
            (Some(store), false) => store.commit_then(commits, move |durable| {
                if durable {
                    source.settle_moved(partition, &positions);
                } else {
                    tracing::error!(
                        queue = %source.name(),
                        "moved messages could not be made durable; they stay in their source's log"
                    );
                }
            }),
            _ => {
                if !positions.is_empty() {
                    source.settle_moved(partition, &positions);
                }
            }
        }
    }

    /// Puts `queue` under the policy and operator policy that match it now (none: its
    /// own arguments).
    fn apply_queue_policy(&self, queue: &Arc<Queue>, effects: &mut Effects) {
        let args = self.effective_arguments(queue);
        if queue.is_stream() {
            // A stream's retention: the policy's `max-age` wins over `x-max-age`.
            let settings = queue.settings();
            let policy_age = self
                .policies
                .read()
                .for_queue(&self.name, queue.name(), settings.parsed.queue_type)
                .and_then(|p| p.definition.max_age_ms);
            let declared_age = arguments::StreamArguments::of(&settings.arguments).max_age_ms;
            queue.set_stream_retention(Retention {
                max_bytes: args.max_length_bytes,
                max_age_ms: policy_age.or(declared_age),
            });
        }
        queue.set_arguments(args, effects);
    }

    /// The arguments `queue` runs with: its declared ones under its policy and operator
    /// policy merged, with RabbitMQ's precedence.
    fn effective_arguments(&self, queue: &Queue) -> QueueArguments {
        let settings = queue.settings();
        let policies = self.policies.read();
        let applied = policies.applied(&self.name, queue.name(), settings.parsed.queue_type);
        policy::effective(
            &settings.parsed,
            &settings.arguments,
            applied.definition().as_deref(),
        )
    }

    /// Applies the current policies to every queue and exchange (after a reload).
    pub fn apply_policies(&self) {
        let queues: Vec<Arc<Queue>> = self.queues.read().values().cloned().collect();
        let mut effects = Effects::default();
        for queue in queues {
            let queue_type = queue.settings().parsed.queue_type;
            if let Some((policy, wanted)) = self.policies.read().ignored_partitions(
                &self.name,
                queue.name(),
                queue_type,
                queue.partitions(),
            ) {
                tracing::info!(queue = %queue.name(), vhost = %self.name, policy = %policy.name,
                    partitions = ?queue.partitions(), wanted,
                    "a policy's partitions apply only to new queues: delete and re-declare it to change its partitions");
            }
            self.apply_queue_policy(&queue, &mut effects);
        }
        for exchange in self.exchanges.read().values() {
            self.apply_exchange_policy(exchange);
        }
        self.apply(effects);
    }

    /// Sets an exchange's alternate exchange from its argument or its policy.
    fn apply_exchange_policy(&self, exchange: &Exchange) {
        let policies = self.policies.read();
        let policy = policies.for_exchange(&self.name, exchange.name());
        exchange.set_alternate(policy::alternate_exchange(
            &exchange.settings().arguments,
            policy.map(|p| &p.definition),
        ));
    }

    /// The vhost's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Looks up an exchange.
    ///
    /// # Errors
    /// 404 if it does not exist.
    pub fn exchange(&self, name: &str) -> AmqpResult<Arc<Exchange>> {
        self.exchanges
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| error::no_exchange(name, &self.name))
    }

    /// Declares (or, if passive, checks) an exchange; true if this declare made it.
    ///
    /// # Errors
    /// 403 for the default exchange or a new `amq.` name, 404 for a passive miss,
    /// 406 when an existing exchange differs.
    pub fn declare_exchange(
        &self,
        name: &str,
        passive: bool,
        settings: ExchangeSettings,
    ) -> AmqpResult<bool> {
        let declared = self.declare_exchange_locked(name, passive, settings);
        self.write_changes();
        declared
    }

    fn declare_exchange_locked(
        &self,
        name: &str,
        passive: bool,
        settings: ExchangeSettings,
    ) -> AmqpResult<bool> {
        if name.is_empty() {
            return Err(error::default_exchange_forbidden());
        }
        if passive {
            return self.exchange(name).map(|_| false);
        }
        arguments::check_exchange(&settings.arguments, name, &self.name)?;
        let existing = self.exchanges.read().get(name).cloned();
        if let Some(existing) = existing {
            return self
                .check_redeclared_exchange(&existing, name, &settings)
                .map(|()| false);
        }
        if name.starts_with("amq.") {
            return Err(error::reserved_name("exchange", name));
        }
        settings
            .kind
            .check_arguments(&settings.arguments, name, &self.name)?;
        let exchange = Arc::new(Exchange::new(name.into(), settings));
        let policies_seen = self.policies.read().generation();
        self.apply_exchange_policy(&exchange);
        #[cfg(test)]
        if let Some(Meanwhile(meanwhile)) = self.between_policy_and_registry.lock().take() {
            meanwhile();
        }
        // A delayed exchange's hold, with its log, is made before the registry lock.
        let hold = if exchange.settings().delayed {
            self.new_hold(&exchange)?
        } else {
            None
        };
        let raced = {
            let mut exchanges = self.exchanges.write();
            match exchanges.get(name) {
                Some(existing) => Err(existing.clone()),
                None => {
                    let settings = exchange.settings();
                    let mut tickets = Vec::new();
                    if settings.durable {
                        tickets.push(self.queue_checked_change(Change::PutExchange(ExchangeDef {
                            vhost: self.name.clone(),
                            name: name.to_owned(),
                            kind: settings.type_name().to_owned(),
                            auto_delete: settings.auto_delete,
                            internal: settings.internal,
                            arguments: settings.arguments.clone(),
                        })));
                    }
                    if let Some(def) = hold {
                        tickets.push(self.queue_checked_change(Change::PutQueue(def)));
                    }
                    exchanges.insert(name.to_owned(), exchange.clone());
                    Ok(tickets)
                }
            }
        };
        let tickets = match raced {
            Ok(tickets) => tickets,
            Err(existing) => {
                // Another connection declared it meanwhile: that one stands, ours goes.
                if let Some(ours) = exchange.hold() {
                    self.discard_queue(ours);
                }
                return self
                    .check_redeclared_exchange(&existing, name, exchange.settings())
                    .map(|()| false);
            }
        };
        // As for a queue: a policy change since went past this exchange.
        if self.policies.read().generation() != policies_seen {
            self.apply_exchange_policy(&exchange);
        }
        self.write_changes();
        let unwritten: Vec<String> = tickets
            .into_iter()
            .filter_map(|ticket| self.written(ticket).err())
            .collect();
        if let Some(reason) = unwritten.first() {
            // Not stored, so not declared: it would not survive a restart.
            self.remove_exchange(name);
            return Err(error::not_stored("exchange", name, &self.name, reason));
        }
        Ok(true)
    }

    /// Checks a declaration of an existing exchange against it (RabbitMQ's equivalence
    /// rules).
    fn check_redeclared_exchange(
        &self,
        existing: &Exchange,
        name: &str,
        settings: &ExchangeSettings,
    ) -> AmqpResult<()> {
        let current = existing.settings();
        let mismatch = |arg: &str, received: &str, current: &str| {
            Err(error::inequivalent(
                arg, "exchange", name, &self.name, received, current,
            ))
        };
        if current.type_name() != settings.type_name() {
            return mismatch("type", settings.type_name(), current.type_name());
        }
        if current.durable != settings.durable {
            return mismatch("durable", yes_no(settings.durable), yes_no(current.durable));
        }
        if current.auto_delete != settings.auto_delete {
            return mismatch(
                "auto_delete",
                yes_no(settings.auto_delete),
                yes_no(current.auto_delete),
            );
        }
        if current.internal != settings.internal {
            return mismatch(
                "internal",
                yes_no(settings.internal),
                yes_no(current.internal),
            );
        }
        arguments::assert_exchange_equivalent(
            &current.arguments,
            &settings.arguments,
            name,
            &self.name,
        )
    }

    /// For a durable queue (or a durable delayed exchange's hold), with a data directory:
    /// creates its log under a fresh id and returns it with `def` carrying that id, for
    /// the caller to record. `owner` names it in the error.
    ///
    /// # Errors
    /// 541 INTERNAL_ERROR when the log cannot be created.
    fn new_log(
        &self,
        durable: bool,
        owner: &str,
        mut def: QueueDef,
    ) -> AmqpResult<(Option<QueueLog>, Option<QueueDef>)> {
        let Some(store) = self.store.as_ref().filter(|_| durable) else {
            return Ok((None, None));
        };
        def.id = names::queue_log_id();
        let log = store.create_queue_log(&def.id).map_err(|e| {
            AmqpError::new(
                ReplyCode::InternalError,
                format!("cannot create the log of {owner}: {e}"),
            )
        })?;
        Ok((Some(log), Some(def)))
    }

    /// Gives a delayed exchange the queue its messages wait in: logged, so that they
    /// survive a restart, when the exchange is durable.
    fn create_hold(&self, exchange: &Exchange) -> AmqpResult<()> {
        if let Some(def) = self.new_hold(exchange)? {
            self.queue_change(Change::PutQueue(def));
        }
        Ok(())
    }

    /// Like [`create_hold`](Self::create_hold), but leaves recording the hold's
    /// definition (returned for a logged hold) to the caller.
    fn new_hold(&self, exchange: &Exchange) -> AmqpResult<Option<QueueDef>> {
        let name = names::delayed_hold(exchange.name());
        let durable = exchange.settings().durable;
        let (log, def) = self.new_log(
            durable,
            &format!("exchange '{}'", exchange.name()),
            QueueDef {
                vhost: self.name.clone(),
                name: name.clone(),
                id: String::new(),
                auto_delete: false,
                arguments: FieldTable::default(),
                partitions: None,
            },
        )?;
        self.attach_hold(exchange, &name, log, &Recovery::default());
        Ok(def)
    }

    /// Makes the hold queue of a delayed exchange from its (new or recovered) log.
    fn attach_hold(
        &self,
        exchange: &Exchange,
        name: &str,
        log: Option<crate::store::QueueLog>,
        recovered: &Recovery,
    ) -> Arc<Queue> {
        let hold = self.new_queue(
            name.into(),
            QueueSettings {
                durable: log.is_some(),
                holds_for: Some(exchange.name().clone()),
                ..QueueSettings::default()
            },
            log,
            recovered,
            None,
        );
        exchange.set_hold(hold.clone());
        hold
    }

    /// Deletes an exchange; a missing one is not an error.
    ///
    /// # Errors
    /// 403 for the default and `amq.` exchanges, 406 if `if_unused` and it has bindings.
    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> AmqpResult<()> {
        if name.is_empty() {
            return Err(error::default_exchange_forbidden());
        }
        if name.starts_with("amq.") {
            return Err(error::access_refused(format!(
                "deletion of system exchange '{name}' in vhost '{}' not allowed",
                self.name
            )));
        }
        {
            let exchanges = self.exchanges.read();
            if let Some(existing) = exchanges.get(name)
                && if_unused
                && existing.has_bindings()
            {
                return Err(error::precondition(format!(
                    "exchange '{name}' in vhost '{}' in use",
                    self.name
                )));
            }
        }
        self.remove_exchange(name);
        Ok(())
    }

    /// Removes exchange `name` with its bindings (to it, from other exchanges) and its
    /// held messages; auto-delete exchanges that thereby lose their last binding go too.
    fn remove_exchange(&self, name: &str) {
        let mut pending = vec![name.to_owned()];
        while let Some(name) = pending.pop() {
            let mut exchanges = self.exchanges.write();
            let Some(existing) = exchanges.remove(&name) else {
                continue;
            };
            if existing.settings().durable {
                self.queue_change(Change::DeleteExchange {
                    vhost: self.name.clone(),
                    name: name.clone(),
                });
            }
            let hold = existing.hold().cloned();
            let mut hold_ticket = None;
            if let Some(hold) = &hold {
                hold.mark_deleted();
                if hold.settings().durable {
                    hold_ticket = self.queue_checked_change(Change::DeleteQueue {
                        vhost: self.name.clone(),
                        name: hold.name().to_string(),
                    });
                }
            }
            for other in exchanges.values() {
                if unbinds_last(other, DestinationKind::Exchange, &name) {
                    pending.push(other.name().to_string());
                }
            }
            drop(exchanges);
            self.write_changes();
            if let Some(hold) = hold {
                // A failure is logged; the exchange is gone for its clients either way.
                let _ = self.drop_removed(&hold, hold_ticket);
            }
        }
    }

    /// Deletes the auto-delete exchanges among `names` that have no bindings left.
    fn remove_unused_exchanges(&self, names: Vec<String>) {
        for name in names {
            let unused = self
                .exchanges
                .read()
                .get(&name)
                .is_some_and(|e| e.settings().auto_delete && !e.has_bindings());
            if unused {
                tracing::debug!(exchange = %name, "auto-delete exchange lost its last binding");
                self.remove_exchange(&name);
            }
        }
    }

    /// Looks up a queue that connection `conn` may use.
    ///
    /// # Errors
    /// 404 if it does not exist, 405 if another connection owns it.
    pub fn queue(&self, name: &str, conn: ConnectionId) -> AmqpResult<Arc<Queue>> {
        let queue = self
            .queues
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| error::no_queue(name, &self.name))?;
        queue.check_access(conn)?;
        Ok(queue)
    }

    /// Declares (or, if passive, checks) a queue for connection `conn`; returns it and
    /// whether it was created.
    ///
    /// # Errors
    /// 403 for a new `amq.` name, 404 for a passive miss, 405 if another connection owns
    /// it, 406 when an existing queue differs.
    pub fn declare_queue(
        &self,
        declare: QueueDeclare,
        conn: ConnectionId,
    ) -> AmqpResult<(Arc<Queue>, bool)> {
        let mut effects = Effects::default();
        let passive = declare.passive;
        let declared = self.declare_queue_unlocked(declare, conn, &mut effects);
        self.write_changes();
        self.apply(effects);
        if !passive {
            let churn = &self.queue_churn;
            churn.declared.fetch_add(1, Ordering::Relaxed);
            if matches!(declared, Ok((_, true))) {
                churn.created.fetch_add(1, Ordering::Relaxed);
            }
        }
        declared
    }

    fn declare_queue_unlocked(
        &self,
        declare: QueueDeclare,
        conn: ConnectionId,
        effects: &mut Effects,
    ) -> AmqpResult<(Arc<Queue>, bool)> {
        if declare.passive {
            let queue = self.queue(&declare.name, conn)?;
            queue.touch(effects);
            return Ok((queue, false));
        }
        let existing = self.queues.read().get(&*declare.name).cloned();
        if let Some(existing) = existing {
            self.redeclare(&existing, &declare, conn, effects)?;
            return Ok((existing, false));
        }
        if declare.name.starts_with("amq.") && !declare.server_named {
            return Err(error::reserved_name("queue", &declare.name));
        }
        // The partition count is fixed here, once: a later policy never changes it.
        let policy_partitions = self.policies.read().partitions_at_creation(
            &self.name,
            &declare.name,
            QueueType::of(&declare.arguments),
        );
        let parsed = arguments::parse(&declare.arguments, &declare, &self.name, policy_partitions)?;
        let durable = declare.durable && !declare.exclusive;
        // The log is made before the registry lock is taken: no file-system work under it.
        let (log, def) = self.new_log(
            durable,
            &format!("queue '{}'", declare.name),
            QueueDef {
                vhost: self.name.clone(),
                name: declare.name.to_string(),
                id: String::new(),
                auto_delete: declare.auto_delete,
                arguments: declare.arguments.clone(),
                partitions: parsed.partitions,
            },
        )?;
        let stream = if parsed.queue_type == QueueType::Stream {
            let partitions = parsed.partitions.unwrap_or(1);
            Some(self.new_stream_files(
                log.as_ref(),
                partitions,
                &declare.arguments,
                &declare.name,
            )?)
        } else {
            None
        };
        let queue = self.new_queue(
            declare.name.clone(),
            QueueSettings {
                durable,
                exclusive_owner: declare.exclusive.then_some(conn),
                auto_delete: declare.auto_delete,
                arguments: declare.arguments.clone(),
                parsed,
                holds_for: None,
            },
            log,
            &Recovery::default(),
            stream,
        );
        let policies_seen = self.policies.read().generation();
        self.apply_queue_policy(&queue, effects);
        #[cfg(test)]
        if let Some(Meanwhile(meanwhile)) = self.between_policy_and_registry.lock().take() {
            meanwhile();
        }
        let raced = {
            let mut queues = self.queues.write();
            match queues.get(&*declare.name) {
                Some(existing) => Err(existing.clone()),
                None => {
                    let ticket =
                        def.and_then(|def| self.queue_checked_change(Change::PutQueue(def)));
                    queues.insert(declare.name.to_string(), queue.clone());
                    Ok(ticket)
                }
            }
        };
        let ticket = match raced {
            Ok(ticket) => ticket,
            Err(existing) => {
                // Another connection declared it meanwhile: that one stands, ours goes.
                self.discard_queue(&queue);
                self.redeclare(&existing, &declare, conn, effects)?;
                return Ok((existing, false));
            }
        };
        // A policy change made since went to the queues in the registry, without this
        // one: it looks again.
        if self.policies.read().generation() != policies_seen {
            self.apply_queue_policy(&queue, effects);
        }
        self.write_changes();
        if let Err(reason) = self.written(ticket) {
            // Not stored, so not declared: it would not survive a restart.
            self.remove_queue(&queue);
            return Err(error::not_stored(
                "queue",
                &declare.name,
                &self.name,
                &reason,
            ));
        }
        queue.touch(effects);
        Ok((queue, true))
    }

    /// Checks a declaration of an existing queue against it (RabbitMQ's equivalence
    /// rules) and counts it as a use.
    fn redeclare(
        &self,
        existing: &Arc<Queue>,
        declare: &QueueDeclare,
        conn: ConnectionId,
        effects: &mut Effects,
    ) -> AmqpResult<()> {
        existing.check_access(conn)?;
        let current = existing.settings();
        if current.exclusive_owner.is_some() != declare.exclusive {
            return Err(error::queue_locked(&declare.name, &self.name));
        }
        let durable = declare.durable && !declare.exclusive;
        if current.durable != durable {
            return Err(error::inequivalent(
                "durable",
                "queue",
                &declare.name,
                &self.name,
                yes_no(durable),
                yes_no(current.durable),
            ));
        }
        if current.auto_delete != declare.auto_delete {
            return Err(error::inequivalent(
                "auto_delete",
                "queue",
                &declare.name,
                &self.name,
                yes_no(declare.auto_delete),
                yes_no(current.auto_delete),
            ));
        }
        arguments::assert_equivalent(
            &current.arguments,
            &declare.arguments,
            existing.partitions(),
            &declare.name,
            &self.name,
        )?;
        existing.touch(effects);
        Ok(())
    }

    /// Deletes a queue and its bindings; returns its ready message count, or 0 if it did
    /// not exist.
    ///
    /// # Errors
    /// 405 if another connection owns it, 406 for `if_unused`/`if_empty` violations.
    pub fn delete_queue(
        &self,
        name: &str,
        conn: ConnectionId,
        if_unused: bool,
        if_empty: bool,
    ) -> AmqpResult<u32> {
        let removed = {
            // Registry locks in their order: exchanges, then queues.
            let exchanges = self.exchanges.read();
            let mut queues = self.queues.write();
            let Some(queue) = queues.get(name) else {
                return Ok(0);
            };
            queue.check_access(conn)?;
            if if_unused && queue.consumer_count() > 0 {
                return Err(error::precondition(format!(
                    "queue '{name}' in vhost '{}' in use",
                    self.name
                )));
            }
            // RabbitMQ ignores if_empty for a stream (and deletes it).
            if if_empty && !queue.is_stream() && queue.message_count() > 0 {
                return Err(error::precondition(format!(
                    "queue '{name}' in vhost '{}' not empty",
                    self.name
                )));
            }
            queues
                .remove(name)
                .map(|queue| self.unregister_queue(queue, &exchanges))
        };
        match removed {
            Some(removed) => self
                .finish_removal(removed)
                .map_err(|reason| error::deletion_not_stored("queue", name, &self.name, &reason)),
            None => Ok(0),
        }
    }

    /// Ends the vhost, once it is deleted and out of the broker's registry: its
    /// connections are told to close, and its queues are deleted with their messages
    /// and logs.
    pub fn delete_contents(&self) {
        self.deleted.send_replace(true);
        // The exchanges go first, so that no queue's removal deletes (and stores the
        // deletion of) an auto-delete exchange it emptied.
        self.exchanges.write().clear();
        let queues: Vec<Arc<Queue>> = self.queues.read().values().cloned().collect();
        for queue in queues {
            self.remove_queue(&queue);
        }
    }

    /// Whether a queue named `name` exists.
    pub fn has_queue(&self, name: &str) -> bool {
        self.queues.read().contains_key(name)
    }

    /// How many queues it holds.
    pub fn queue_count(&self) -> usize {
        self.queues.read().len()
    }

    /// Messages published, delivered, acked … in this vhost since start.
    pub fn message_counters(&self) -> &crate::stats::MessageCounters {
        &self.messages
    }

    /// Queues declared, created and deleted in this vhost since start.
    pub fn queue_churn(&self) -> &crate::stats::QueueChurn {
        &self.queue_churn
    }

    /// Its queues, taken out of the registry's lock (for listings).
    pub fn queues(&self) -> Vec<Arc<Queue>> {
        self.queues.read().values().cloned().collect()
    }

    /// The queue called `name`, exclusive or not (for the management API, which shows
    /// every queue; AMQP clients go through [`Self::queue`]).
    pub fn find_queue(&self, name: &str) -> Option<Arc<Queue>> {
        self.queues.read().get(name).cloned()
    }

    /// Its exchanges, taken out of the registry's lock (for listings).
    pub fn exchanges(&self) -> Vec<Arc<Exchange>> {
        self.exchanges.read().values().cloned().collect()
    }

    /// The default exchange's counters.
    pub fn default_exchange_counters(&self) -> &crate::stats::ExchangeCounters {
        &self.default_exchange
    }

    /// Adds to the counters of exchange `name` (`""`: the default exchange) what a
    /// publisher counted; nothing if it has been deleted since.
    pub fn count_exchange(&self, name: &str, publish_in: u64, publish_out: u64) {
        if name.is_empty() {
            self.default_exchange.add(publish_in, publish_out);
        } else if let Some(exchange) = self.exchanges.read().get(name) {
            exchange.counters().add(publish_in, publish_out);
        }
    }

    /// Resolves once the vhost is deleted (at once if it is).
    pub fn deleted(&self) -> tokio::sync::watch::Receiver<bool> {
        self.deleted.subscribe()
    }

    /// Deletes `queue` if it is still registered (exclusive and auto-delete clean-up,
    /// `x-expires`): a queue of the same name declared since is left alone.
    pub fn remove_queue(&self, queue: &Arc<Queue>) {
        let removed = {
            let exchanges = self.exchanges.read();
            let mut queues = self.queues.write();
            match queues.get(&**queue.name()) {
                Some(q) if Arc::ptr_eq(q, queue) => queues
                    .remove(&**queue.name())
                    .map(|queue| self.unregister_queue(queue, &exchanges)),
                _ => None,
            }
        };
        if let Some(removed) = removed {
            // A failure is logged; nobody waits for the answer.
            let _ = self.finish_removal(removed);
        }
    }

    /// A private queue for a direct reply-to consumer of connection `conn`; replies
    /// published to its name reach it until [`VHost::remove_reply_queue`].
    pub fn reply_queue(&self, conn: ConnectionId) -> Arc<Queue> {
        let address = names::reply_to_address();
        let queue = self.new_queue(
            address.as_str().into(),
            QueueSettings {
                exclusive_owner: Some(conn),
                ..QueueSettings::default()
            },
            None,
            &Recovery::default(),
            None,
        );
        self.reply_queues.write().insert(address, queue.clone());
        queue
    }

    /// Retires a direct reply-to queue: later replies to it are dropped.
    pub fn remove_reply_queue(&self, queue: &Arc<Queue>) {
        if self.reply_queues.write().remove(&**queue.name()).is_some() {
            self.discard_queue(queue);
        }
    }

    /// Deletes queue `name` because its `x-expires` ran out unused.
    pub fn expire_queue(&self, name: &str) {
        let queue = self.queues.read().get(name).cloned();
        if let Some(queue) = queue {
            tracing::debug!(queue = name, "queue expired");
            self.remove_queue(&queue);
        }
    }

    /// The part of a queue's deletion done under the queue registry's write lock, just
    /// after the queue left it: its bindings go and its deletion is queued for the store,
    /// so that a queue of the same name declared and bound right after is untouched.
    /// Memory work only; [`finish_removal`](Self::finish_removal) does the rest.
    fn unregister_queue(
        &self,
        queue: Arc<Queue>,
        exchanges: &HashMap<String, Arc<Exchange>>,
    ) -> RemovedQueue {
        queue.mark_deleted();
        self.queue_churn.deleted.fetch_add(1, Ordering::Relaxed);
        let emptied: Vec<String> = exchanges
            .values()
            .filter(|e| unbinds_last(e, DestinationKind::Queue, queue.name()))
            .map(|e| e.name().to_string())
            .collect();
        // A deleted vhost's stored deletion took its queues with it; storing each again
        // could remove a queue of the same name in a vhost made again since.
        let ticket = if queue.settings().durable && !*self.deleted.borrow() {
            self.queue_checked_change(Change::DeleteQueue {
                vhost: self.name.clone(),
                name: queue.name().to_string(),
            })
        } else {
            None
        };
        RemovedQueue {
            queue,
            emptied,
            ticket,
        }
    }

    /// Finishes a deletion once the registry lock is released: writes the change, drops
    /// the queue's messages and log (keeping the log if the deletion could not be
    /// written), and deletes the auto-delete exchanges it emptied. Returns the ready
    /// message count, or why the deletion is not stored.
    fn finish_removal(&self, removed: RemovedQueue) -> Result<u32, String> {
        self.write_changes();
        let dropped = self.drop_removed(&removed.queue, removed.ticket);
        self.remove_unused_exchanges(removed.emptied);
        dropped
    }

    /// Adds a binding, recording it when both ends are durable.
    fn add_binding(
        &self,
        source: &Exchange,
        destination: Destination,
        durable: bool,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Option<u64> {
        let ticket = if durable && source.settings().durable {
            self.queue_checked_change(Change::Bind(self.binding_def(
                source,
                &destination,
                routing_key,
                &arguments,
            )))
        } else {
            None
        };
        source.bind(Binding {
            destination,
            routing_key: routing_key.to_owned(),
            arguments,
        });
        ticket
    }

    /// Writes the changes a binding queued and checks that its own was written; if not,
    /// takes the binding back.
    ///
    /// # Errors
    /// 541 INTERNAL_ERROR when the binding could not be stored.
    fn confirm_binding(
        &self,
        ticket: Option<u64>,
        source: &Exchange,
        destination: Destination,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> AmqpResult<()> {
        self.write_changes();
        let Err(reason) = self.written(ticket) else {
            return Ok(());
        };
        source.unbind(
            destination.kind(),
            destination.name(),
            routing_key,
            arguments,
        );
        Err(error::not_stored(
            "binding",
            &format!("{} -> {}", source.name(), destination.name()),
            &self.name,
            &reason,
        ))
    }

    /// Removes a binding, recording it when both ends are durable.
    fn remove_binding(
        &self,
        source: &Exchange,
        destination: Destination,
        durable: bool,
        routing_key: &str,
        arguments: &FieldTable,
    ) {
        let removed = source.unbind(
            destination.kind(),
            destination.name(),
            routing_key,
            arguments,
        );
        if removed && durable && source.settings().durable {
            self.queue_change(Change::Unbind(self.binding_def(
                source,
                &destination,
                routing_key,
                arguments,
            )));
        }
        if removed {
            self.remove_unused_exchanges(vec![source.name().to_string()]);
        }
    }

    fn binding_def(
        &self,
        source: &Exchange,
        destination: &Destination,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> BindingDef {
        BindingDef {
            vhost: self.name.clone(),
            source: source.name().to_string(),
            destination: destination.name().to_owned(),
            to_exchange: destination.kind() == DestinationKind::Exchange,
            routing_key: routing_key.to_owned(),
            arguments: arguments.clone(),
        }
    }

    /// The source exchange of a bind or unbind: not the default one, and existing.
    fn binding_source(&self, name: &str) -> AmqpResult<Arc<Exchange>> {
        binding_source(&self.exchanges.read(), name, &self.name)
    }

    /// An exchange at one end of an unbind: not the default one; `None` if missing.
    fn unbinding_end(&self, name: &str) -> AmqpResult<Option<Arc<Exchange>>> {
        missing_is_none(self.binding_source(name))
    }

    /// Binds a queue to an exchange.
    ///
    /// # Errors
    /// 403 for the default exchange, 404 for a missing queue or exchange, 405 for another
    /// connection's exclusive queue.
    pub fn bind(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: FieldTable,
        conn: ConnectionId,
    ) -> AmqpResult<()> {
        let (ticket, queue, source) = {
            // Looked up and bound under the registries' locks (exchanges, then queues),
            // so that a deletion of either end, which unbinds it under a write lock,
            // cannot fall in between.
            let exchanges = self.exchanges.read();
            let source = binding_source(&exchanges, exchange, &self.name)?;
            source.settings().kind.check_binding_key(routing_key)?;
            let queues = self.queues.read();
            let queue = queues
                .get(queue)
                .cloned()
                .ok_or_else(|| error::no_queue(queue, &self.name))?;
            queue.check_access(conn)?;
            let durable = queue.settings().durable;
            let ticket = self.add_binding(
                &source,
                Destination::Queue(queue.clone()),
                durable,
                routing_key,
                arguments.clone(),
            );
            (ticket, queue, source)
        };
        self.confirm_binding(
            ticket,
            &source,
            Destination::Queue(queue),
            routing_key,
            &arguments,
        )
    }

    /// Removes a queue's binding; a missing binding, queue or exchange is not an error
    /// (RabbitMQ answers `unbind-ok`: clients tear down after auto-delete has).
    ///
    /// # Errors
    /// 403 for the default exchange, 405 for another connection's exclusive queue.
    pub fn unbind(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: &FieldTable,
        conn: ConnectionId,
    ) -> AmqpResult<()> {
        let (Some(source), Some(queue)) = (
            self.unbinding_end(exchange)?,
            missing_is_none(self.queue(queue, conn))?,
        ) else {
            return Ok(());
        };
        let durable = queue.settings().durable;
        self.remove_binding(
            &source,
            Destination::Queue(queue),
            durable,
            routing_key,
            arguments,
        );
        self.write_changes();
        Ok(())
    }

    /// Binds exchange `destination` to exchange `source` (`exchange.bind`).
    ///
    /// # Errors
    /// 403 for the default exchange at either end, 404 for a missing one.
    pub fn bind_exchange(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> AmqpResult<()> {
        let (ticket, source, destination) = {
            // Under the exchange registry's lock: a deletion of either end cannot fall
            // between the look-ups and the binding.
            let exchanges = self.exchanges.read();
            let source = binding_source(&exchanges, source, &self.name)?;
            let destination = binding_source(&exchanges, destination, &self.name)?;
            source.settings().kind.check_binding_key(routing_key)?;
            let durable = destination.settings().durable;
            let ticket = self.add_binding(
                &source,
                Destination::Exchange(destination.name().clone()),
                durable,
                routing_key,
                arguments.clone(),
            );
            (ticket, source, destination)
        };
        self.confirm_binding(
            ticket,
            &source,
            Destination::Exchange(destination.name().clone()),
            routing_key,
            &arguments,
        )
    }

    /// Removes an exchange-to-exchange binding; a missing binding or exchange is not an
    /// error, as in RabbitMQ.
    ///
    /// # Errors
    /// 403 for the default exchange at either end.
    pub fn unbind_exchange(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> AmqpResult<()> {
        let (Some(source), Some(destination)) = (
            self.unbinding_end(source)?,
            self.unbinding_end(destination)?,
        ) else {
            return Ok(());
        };
        let durable = destination.settings().durable;
        self.remove_binding(
            &source,
            Destination::Exchange(destination.name().clone()),
            durable,
            routing_key,
            arguments,
        );
        self.write_changes();
        Ok(())
    }

    /// Finds the queues a message published to its exchange goes to, each once, with its
    /// routing key and the `extra_keys` (from `CC`/`BCC` headers); follows
    /// exchange-to-exchange bindings and alternate exchanges, each exchange visited once
    /// so that cycles end.
    ///
    /// # Errors
    /// 404 if the exchange does not exist, 403 if it is internal.
    pub fn route(
        &self,
        message: &Message,
        extra_keys: &[ShortStr],
        out: &mut Routed,
    ) -> AmqpResult<()> {
        out.clear();
        if message.exchange().is_empty() {
            let queues = self.queues.read();
            let keys =
                std::iter::once(message.routing_key()).chain(extra_keys.iter().map(|k| &**k));
            for key in keys {
                if let Some(queue) = queues.get(key) {
                    out.queues.push(queue.clone());
                } else if key.starts_with(names::REPLY_TO)
                    && let Some(queue) = self.reply_queues.read().get(key)
                {
                    out.queues.push(queue.clone());
                }
            }
            out.dedup_queues();
            return Ok(());
        }
        let exchanges = self.exchanges.read();
        let exchange = exchanges
            .get(message.exchange())
            .ok_or_else(|| error::no_exchange(message.exchange(), &self.name))?;
        if exchange.settings().internal {
            return Err(error::access_refused(format!(
                "cannot publish to internal exchange '{}' in vhost '{}'",
                message.exchange(),
                self.name
            )));
        }
        if let Some(hold) = exchange.hold()
            && message.delay_ms() > 0
        {
            out.queues.push(hold.clone());
            return Ok(());
        }
        route_through(&exchanges, exchange, message, extra_keys, out);
        out.dedup_queues();
        Ok(())
    }

    /// Rebuilds this vhost's durable exchanges, queues (with their logs) and bindings
    /// from the definitions; returns the queues and messages recovered.
    ///
    /// # Errors
    /// A queue log that cannot be opened (I/O, or written by an incompatible version).
    pub fn restore(&self, defs: &Definitions) -> crate::store::Result<(usize, u64)> {
        let Some(store) = &self.store else {
            return Ok((0, 0));
        };
        self.restoring.store(true, Ordering::Release);
        let restored = self.restore_from(store, defs);
        self.restoring.store(false, Ordering::Release);
        let restored = restored?;
        for queue in restored.clocks {
            queue.start_clocks();
        }
        self.write_changes();
        // Only now that every exchange, queue and binding is back can messages that
        // expired while the broker was down reach their dead-letter queues.
        self.apply(restored.effects);
        Ok((restored.queues, restored.messages))
    }

    /// Restore's work while the queues' clocks are held.
    fn restore_from(
        &self,
        store: &Arc<BrokerStore>,
        defs: &Definitions,
    ) -> crate::store::Result<Restored> {
        for def in defs.exchanges.iter().filter(|e| e.vhost == self.name) {
            let Ok(Some((kind, delayed))) = parse_declared_type(&def.kind, &def.arguments) else {
                tracing::warn!(exchange = %def.name, kind = %def.kind, "skipping an exchange of unknown type");
                continue;
            };
            let exchange = Arc::new(Exchange::new(
                def.name.as_str().into(),
                ExchangeSettings {
                    kind,
                    durable: true,
                    auto_delete: def.auto_delete,
                    internal: def.internal,
                    delayed,
                    arguments: def.arguments.clone(),
                },
            ));
            self.apply_exchange_policy(&exchange);
            self.exchanges.write().insert(def.name.clone(), exchange);
        }
        let mut messages = 0;
        let mut queues = 0;
        let mut holds = Vec::new();
        let mut effects = Effects::default();
        let total = defs.queues.iter().filter(|q| q.vhost == self.name).count();
        let mut last_report = std::time::Instant::now();
        for def in defs.queues.iter().filter(|q| q.vhost == self.name) {
            if last_report.elapsed() >= std::time::Duration::from_secs(1) {
                tracing::info!(vhost = %self.name, queues, of = total, messages, "recovering queues");
                last_report = std::time::Instant::now();
            }
            let (log, recovery) = store.open_queue_log(&def.id)?;
            for warning in &recovery.warnings {
                tracing::warn!(queue = %def.name, "{warning}");
            }
            messages += recovery.messages;
            if let Some(exchange) = names::held_for(&def.name) {
                let owner = self.exchanges.read().get(exchange).cloned();
                match owner {
                    Some(owner) if owner.settings().delayed && owner.hold().is_none() => {
                        holds.push(self.attach_hold(&owner, &def.name, Some(log), &recovery));
                    }
                    _ => {
                        tracing::warn!(
                            exchange,
                            "dropping the held messages of a deleted delayed exchange"
                        );
                        self.queue_change(Change::DeleteQueue {
                            vhost: self.name.clone(),
                            name: def.name.clone(),
                        });
                        self.write_changes();
                        store.retire_queue_log(log);
                    }
                }
                continue;
            }
            queues += 1;
            // The stored partition count overrides: the policy that gave it may be gone.
            let parsed = arguments::parse_stored(&def.arguments, &def.name, &self.name, def.partitions).unwrap_or_else(|error| {
                tracing::warn!(queue = %def.name, %error, "ignoring the stored queue's invalid arguments");
                QueueArguments { partitions: def.partitions, ..QueueArguments::default() }
            });
            let stream = if parsed.queue_type == QueueType::Stream {
                let (segment, bloom) = stream_log_settings(&def.arguments);
                let mut files = Vec::new();
                for p in 0..parsed.partitions.unwrap_or(1).max(1) {
                    let (part, recovery) = store.open_stream(&log, p, segment, bloom)?;
                    messages += recovery.messages;
                    files.push(part);
                }
                Some(files)
            } else {
                None
            };
            let queue = self.new_queue(
                def.name.as_str().into(),
                QueueSettings {
                    durable: true,
                    exclusive_owner: None,
                    auto_delete: def.auto_delete,
                    arguments: def.arguments.clone(),
                    parsed,
                    holds_for: None,
                },
                Some(log),
                &recovery,
                stream,
            );
            let queue_partitions = if queue.is_stream() {
                None
            } else {
                queue.partitions()
            };
            for p in 1..queue_partitions.unwrap_or(0) {
                if let Some((log, recovery)) = store.open_partition_log(&def.id, p)? {
                    for warning in &recovery.warnings {
                        tracing::warn!(queue = %def.name, partition = p, "{warning}");
                    }
                    messages += recovery.messages;
                    queue.recover_partition(p, log, &recovery);
                }
            }
            // What this drops or expires is carried out once the whole vhost is back.
            self.apply_queue_policy(&queue, &mut effects);
            self.queues.write().insert(def.name.clone(), queue);
        }
        let delayed: Vec<Arc<Exchange>> = self
            .exchanges
            .read()
            .values()
            .filter(|e| e.settings().delayed && e.hold().is_none())
            .cloned()
            .collect();
        for exchange in delayed {
            if let Err(error) = self.create_hold(&exchange) {
                tracing::error!(exchange = %exchange.name(), %error, "cannot give a delayed exchange its log");
            }
        }
        let mut restored: Vec<Arc<Queue>> = self.queues.read().values().cloned().collect();
        restored.extend(holds);
        for def in defs.bindings.iter().filter(|b| b.vhost == self.name) {
            let Some(source) = self.exchanges.read().get(&def.source).cloned() else {
                continue;
            };
            let destination = if def.to_exchange {
                self.exchanges
                    .read()
                    .get(&def.destination)
                    .map(|e| Destination::Exchange(e.name().clone()))
            } else {
                self.queues
                    .read()
                    .get(&def.destination)
                    .map(|q| Destination::Queue(q.clone()))
            };
            if let Some(destination) = destination {
                source.bind(Binding {
                    destination,
                    routing_key: def.routing_key.clone(),
                    arguments: def.arguments.clone(),
                });
            }
        }
        Ok(Restored {
            queues,
            messages,
            clocks: restored,
            effects,
        })
    }

    /// Memory the messages its queues (and delayed exchanges) hold take.
    pub fn memory_in_use(&self) -> u64 {
        let queues: u64 = self.queues.read().values().map(|q| q.memory_bytes()).sum();
        let held: u64 = self.holds().iter().map(|q| q.memory_bytes()).sum();
        queues + held
    }

    /// The queues delayed exchanges hold messages in.
    fn holds(&self) -> Vec<Arc<Queue>> {
        self.exchanges
            .read()
            .values()
            .filter_map(|e| e.hold().cloned())
            .collect()
    }

    /// Records whether the broker's queued messages take more memory than the spill
    /// budget: then transient queues spill past the small window of durable ones.
    pub fn set_memory_tight(&self, tight: bool) {
        self.memory_tight.store(tight, Ordering::Relaxed);
    }

    /// Every queue that keeps a durable log (delayed exchanges' too), for a final sync
    /// at shutdown.
    pub fn logged_queues(&self) -> Vec<Arc<Queue>> {
        let mut logged: Vec<Arc<Queue>> = self
            .queues
            .read()
            .values()
            .filter(|q| q.is_logged())
            .cloned()
            .collect();
        logged.extend(self.holds().into_iter().filter(|q| q.is_logged()));
        logged
    }
}

/// The exchange at one end of a bind or unbind: not the default one, and existing.
fn binding_source(
    exchanges: &HashMap<String, Arc<Exchange>>,
    name: &str,
    vhost: &str,
) -> AmqpResult<Arc<Exchange>> {
    if name.is_empty() {
        return Err(error::default_exchange_forbidden());
    }
    exchanges
        .get(name)
        .cloned()
        .ok_or_else(|| error::no_exchange(name, vhost))
}

/// What restoring a vhost found, and what it leaves to do once its clocks may run.
struct Restored {
    /// Queues restored.
    queues: usize,
    /// Messages recovered.
    messages: u64,
    /// The queues (delayed exchanges' holds too) whose clocks to start.
    clocks: Vec<Arc<Queue>>,
    /// What recovery expired or dropped, to carry out.
    effects: Effects,
}

/// A queue taken out of the registry, with what its deletion still has to do.
struct RemovedQueue {
    queue: Arc<Queue>,
    /// Auto-delete exchanges its bindings were the last of.
    emptied: Vec<String>,
    /// The checked change of its deletion, if durable.
    ticket: Option<u64>,
}

/// Routes `message` from `start` with its own key and `extra_keys`, then through the
/// exchanges that leads to: bound exchanges, and the alternate exchange of any exchange
/// that routed it nowhere. Each exchange is visited once.
fn route_through(
    exchanges: &HashMap<String, Arc<Exchange>>,
    start: &Exchange,
    message: &Message,
    extra_keys: &[ShortStr],
    out: &mut Routed,
) {
    route_one(start, message, extra_keys, out);
    if out.exchanges.is_empty() {
        return;
    }
    let mut visited = vec![start.name().clone()];
    while let Some(next) = out.exchanges.pop() {
        if visited.contains(&next) {
            continue;
        }
        if let Some(exchange) = exchanges.get(&*next) {
            route_one(exchange, message, extra_keys, out);
        }
        visited.push(next);
    }
}

/// Routes through one exchange; if it matched nothing, its alternate exchange is next.
fn route_one(exchange: &Exchange, message: &Message, extra_keys: &[ShortStr], out: &mut Routed) {
    let before = (out.queues.len(), out.exchanges.len());
    exchange.route(message, out);
    if !extra_keys.is_empty() {
        for key in extra_keys {
            exchange.route(&message.with_route(message.exchange(), key), out);
        }
    }
    if (out.queues.len(), out.exchanges.len()) == before
        && let Some(alternate) = exchange.alternate()
    {
        out.exchanges.push(alternate);
    }
}

/// A lookup whose 404 means "nothing to do" (unbinding what is already gone).
fn missing_is_none<T>(found: AmqpResult<T>) -> AmqpResult<Option<T>> {
    match found {
        Ok(found) => Ok(Some(found)),
        Err(e) if e.code == ReplyCode::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Removes every binding of `exchange` to a destination; true if that left an
/// auto-delete exchange without bindings (it is then to be deleted, as in RabbitMQ).
fn unbinds_last(exchange: &Exchange, kind: DestinationKind, name: &str) -> bool {
    let had = exchange.has_bindings();
    exchange.remove_destination(kind, name);
    had && exchange.settings().auto_delete && !exchange.has_bindings()
}

/// Puts a message the broker moves itself (dead-lettered, or delayed and now due) on
/// `queues`, noting those whose logs then owe a group commit; true if any queue took
/// it. A queue that cannot store it is logged and skipped: there is no publisher to
/// refuse.
fn enqueue_moved(
    message: &Message,
    queues: impl Iterator<Item = Arc<Queue>>,
    commits: &mut Vec<Arc<dyn SyncTarget>>,
    effects: &mut Effects,
) -> bool {
    let handling = Handling::of(message);
    let mut taken = false;
    for queue in queues {
        match queue.publish(message.clone(), handling, effects) {
            Ok(Enqueued::Logged(p)) => {
                commits.push(queue.sync_target(p));
                taken = true;
            }
            Ok(Enqueued::Memory) => taken = true,
            Ok(Enqueued::Rejected) => {}
            Err(error) => {
                tracing::error!(queue = %queue.name(), %error, "cannot store a moved message");
            }
        }
    }
    taken
}

#[cfg(test)]
mod crash_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;
    use crate::store::definitions::PolicyDef;
    use crate::store::test_support::TempDir;
    use std::sync::Barrier;

    fn durable_queue(name: &str) -> QueueDeclare {
        QueueDeclare {
            name: name.into(),
            server_named: false,
            passive: false,
            durable: true,
            exclusive: false,
            auto_delete: false,
            arguments: FieldTable::default(),
        }
    }

    fn open(dir: &TempDir) -> (Arc<VHost>, Definitions) {
        let (store, defs, _) = BrokerStore::open(dir.path()).expect("open the store");
        let timers = Arc::new(Timers::start().expect("timer thread"));
        let vhost = VHost::new("/", Some(Arc::new(store)), timers, Arc::default());
        (vhost, defs)
    }

    /// The definitions stored in `dir`, once the store's last user (the commit thread
    /// may hold it a moment after the vhost is dropped) has let go of it.
    fn stored_definitions(dir: &TempDir) -> Definitions {
        loop {
            match BrokerStore::open(dir.path()) {
                Ok((_, defs, _)) => return defs,
                Err(crate::store::StoreError::Locked { .. }) => std::thread::yield_now(),
                Err(e) => panic!("reopen: {e}"),
            }
        }
    }

    /// Runs `rounds` rounds of: `setup`, then `a` and `b` on two threads released at
    /// the same instant, then `check` once both are done. None of them may panic, so
    /// that no thread is left waiting at a barrier.
    fn race_rounds(
        rounds: usize,
        mut setup: impl FnMut(usize),
        a: impl Fn(usize) + Sync,
        b: impl Fn(usize) + Sync,
        mut check: impl FnMut(usize),
    ) {
        let start = Barrier::new(3);
        let end = Barrier::new(3);
        std::thread::scope(|s| {
            let sides: [&(dyn Fn(usize) + Sync); 2] = [&a, &b];
            for side in sides {
                let (start, end) = (&start, &end);
                s.spawn(move || {
                    for round in 0..rounds {
                        start.wait();
                        side(round);
                        end.wait();
                    }
                });
            }
            for round in 0..rounds {
                setup(round);
                start.wait();
                end.wait();
                check(round);
            }
        });
    }

    /// Whether the vhost has a binding from `amq.direct` to queue `name`.
    fn bound(vhost: &VHost, name: &str) -> bool {
        let direct = vhost.exchange("amq.direct").expect("amq.direct");
        let message = Message::new("amq.direct", "k", b"", bytes::Bytes::new());
        let mut routed = Routed::default();
        direct.route(&message, &mut routed);
        routed.queues.iter().any(|q| &**q.name() == name)
    }

    /// A deletion racing a re-declaration and a binding of the same name: what the store
    /// holds afterwards is what the registry holds, and no binding points to a queue that
    /// is gone.
    #[test]
    fn a_delete_racing_a_redeclare_leaves_store_and_registry_agreeing() {
        let dir = TempDir::new("delete-redeclare");
        let (vhost, _) = open(&dir);
        let rounds = 3_000;
        let name = |round: usize| format!("q{round}");
        let mut live = Vec::new();
        race_rounds(
            rounds,
            |round| {
                let _ = vhost.declare_queue(durable_queue(&name(round)), 1);
            },
            |round| {
                let _ = vhost.delete_queue(&name(round), 2, false, false);
            },
            |round| {
                let _ = vhost.declare_queue(durable_queue(&name(round)), 1);
                let key = name(round);
                let _ = vhost.bind(&key, "amq.direct", &key, FieldTable::default(), 1);
            },
            |round| live.push(vhost.queue(&name(round), 1).is_ok()),
        );
        drop(vhost);
        let defs = stored_definitions(&dir);
        let disagree: Vec<usize> = (0..rounds)
            .filter(|&round| {
                let stored = defs.queues.iter().any(|q| q.name == name(round));
                let stored_binding = defs.bindings.iter().any(|b| b.destination == name(round));
                stored != live[round] || (stored_binding && !live[round])
            })
            .collect();
        assert!(
            disagree.is_empty(),
            "store and registry disagree in rounds {disagree:?}"
        );
    }

    /// An operator policy set while a queue is being declared caps that queue too: the
    /// policy change goes to the queues in the registry, and one not yet in it looks at
    /// the policies again once it is.
    #[test]
    fn a_policy_set_while_a_queue_is_declared_applies_to_it() {
        let dir = TempDir::new("declare-policy-race");
        let (vhost, _) = open(&dir);
        let cap = Policy::from_operator_def(&PolicyDef {
            vhost: "/".into(),
            name: "cap".into(),
            pattern: "^q".into(),
            apply_to: "queues".into(),
            priority: 0,
            definition: serde_json::json!({ "max-length": 1 }),
        })
        .expect("an operator policy");
        let changer = vhost.clone();
        *vhost.between_policy_and_registry.lock() = Some(Meanwhile(Box::new(move || {
            // As Broker::change_policies does it.
            changer.policies.write().set_operator([cap]);
            changer.apply_policies();
        })));
        let (queue, _) = vhost
            .declare_queue(durable_queue("q"), 1)
            .expect("declare the queue");
        assert_eq!(queue.arguments_in_force().max_length, Some(1));
    }

    /// Likewise for an exchange and a policy that gives it an alternate exchange.
    #[test]
    fn a_policy_set_while_an_exchange_is_declared_applies_to_it() {
        let dir = TempDir::new("declare-exchange-policy-race");
        let (vhost, _) = open(&dir);
        let policy = Policy::from_def(&PolicyDef {
            vhost: "/".into(),
            name: "ae".into(),
            pattern: "^x".into(),
            apply_to: "exchanges".into(),
            priority: 0,
            definition: serde_json::json!({ "alternate-exchange": "unrouted" }),
        })
        .expect("a policy");
        let changer = vhost.clone();
        *vhost.between_policy_and_registry.lock() = Some(Meanwhile(Box::new(move || {
            changer.policies.write().set([policy]);
            changer.apply_policies();
        })));
        let settings = ExchangeSettings {
            kind: crate::exchange::ExchangeKind::Fanout,
            durable: false,
            auto_delete: false,
            internal: false,
            delayed: false,
            arguments: FieldTable::default(),
        };
        vhost
            .declare_exchange("x", false, settings)
            .expect("declare the exchange");
        let exchange = vhost.exchanges.read().get("x").cloned().expect("declared");
        assert_eq!(exchange.alternate().as_deref(), Some("unrouted"));
    }

    /// A queue is routable as soon as it is in the registry, a moment before the
    /// declaring thread writes its definition: a message confirmed into it in that
    /// moment must not be durable without the queue.
    #[test]
    fn a_message_confirmed_into_a_just_declared_queue_survives_with_it() {
        let dir = TempDir::new("routable-before-written");
        let (vhost, _) = open(&dir);
        vhost.stall_writes.store(true, Ordering::Release);
        let (queue, _) = vhost
            .declare_queue(durable_queue("fresh"), 1)
            .expect("declare the queue");
        let message = Message::new("", "fresh", &[], bytes::Bytes::from_static(b"confirmed"));
        let persistent = Handling {
            persistent: true,
            ..Handling::default()
        };
        let mut effects = Effects::default();
        queue
            .publish(message, persistent, &mut effects)
            .expect("publish");
        let store = vhost.store.clone().expect("a durable vhost");
        let (done, durable) = tokio::sync::oneshot::channel();
        let target: Arc<dyn SyncTarget> = queue.clone();
        store.commit(vec![target], Some(done));
        assert_eq!(
            durable.blocking_recv(),
            Ok(true),
            "the publish was confirmed"
        );
        drop((queue, store, vhost));
        let defs = stored_definitions(&dir);
        let stored = defs.queues.iter().find(|q| q.name == "fresh");
        let stored = stored.expect("the queue a confirmed message went to is stored");
        let (store, _, _) = BrokerStore::open(dir.path()).expect("reopen the store");
        let (_, recovery) = store.open_queue_log(&stored.id).expect("open its log");
        assert_eq!(recovery.messages, 1);
    }

    /// A durable vhost on a simulated file system, for tests that inject faults.
    struct SimVHost {
        sim: crate::store::sim::SimFs,
        store: Arc<BrokerStore>,
        vhost: Arc<VHost>,
    }

    const SIM_DATA: &str = "/data";

    impl SimVHost {
        fn new() -> Self {
            let sim = crate::store::sim::SimFs::new();
            sim.mkdir_durable(std::path::Path::new(SIM_DATA));
            let (store, _, _) =
                BrokerStore::open_in(sim.shared(), std::path::Path::new(SIM_DATA), None)
                    .expect("open");
            let store = Arc::new(store);
            let timers = Arc::new(Timers::start().expect("timer thread"));
            let vhost = VHost::new("/", Some(store.clone()), timers, Arc::default());
            Self { sim, store, vhost }
        }

        /// A commit round over `targets`: whether they were made durable.
        fn commit(&self, targets: Vec<Arc<dyn SyncTarget>>) -> bool {
            let (done, durable) = tokio::sync::oneshot::channel();
            self.store.commit(targets, Some(done));
            durable.blocking_recv() == Ok(true)
        }

        fn publish(&self, queue: &Arc<Queue>, body: &str) {
            let message = Message::new("", queue.name(), &[], bytes::Bytes::from(body.to_owned()));
            let persistent = Handling {
                persistent: true,
                ..Handling::default()
            };
            queue
                .publish(message, persistent, &mut Effects::default())
                .expect("publish");
        }

        /// Makes every write to the definitions log fail (disk full).
        fn fail_definitions(&self) {
            self.sim.inject(crate::store::sim::Fault {
                op: crate::store::sim::Op::Write,
                path: "definitions.log".into(),
                skip: 0,
                times: usize::MAX,
                errno: rustix::io::Errno::NOSPC.raw_os_error(),
                torn: false,
            });
        }

        /// Stops the broker and opens what a power loss leaves (`lose_unsynced`) or
        /// what a clean stop leaves: the definitions, and each stored queue's message
        /// count by name.
        fn restart(self, lose_unsynced: bool) -> (Definitions, Vec<(String, u64)>) {
            let after = if lose_unsynced {
                self.sim
                    .power_loss(crate::store::sim::PowerLoss::DropUnsynced)
            } else {
                self.sim.clone()
            };
            drop((self.vhost, self.store));
            let (store, defs, _) =
                BrokerStore::open_in(after.shared(), std::path::Path::new(SIM_DATA), None)
                    .expect("reopen");
            let counts = defs
                .queues
                .iter()
                .map(|q| {
                    let (_, recovery) = store.open_queue_log(&q.id).expect("open a log");
                    (q.name.clone(), recovery.messages)
                })
                .collect();
            (defs, counts)
        }
    }

    /// A deletion that cannot be stored is refused with 541 and keeps the queue's log:
    /// the restart that brings the stored queue back brings its messages too.
    #[test]
    fn a_deletion_that_cannot_be_stored_keeps_the_queues_messages() {
        let sim = SimVHost::new();
        let (queue, _) = sim
            .vhost
            .declare_queue(durable_queue("doomed"), 1)
            .expect("declare the queue");
        for n in 0..3 {
            sim.publish(&queue, &format!("m{n}"));
        }
        assert!(sim.commit(vec![queue.clone()]), "confirmed");
        sim.fail_definitions();
        let refused = sim
            .vhost
            .delete_queue("doomed", 1, false, false)
            .expect_err("a deletion that is not stored");
        assert_eq!(refused.code, ReplyCode::InternalError);
        // A round after the deletion: a retired log would be removed by now.
        assert!(sim.commit(Vec::new()));
        drop(queue);
        let (_, counts) = sim.restart(false);
        assert_eq!(
            counts,
            [("doomed".to_owned(), 3)],
            "the queue comes back whole"
        );
    }

    /// A message written to a queue just before its deletion failed to be stored is
    /// confirmed only once it is durable: that queue comes back after a power loss.
    #[test]
    fn a_queue_whose_deletion_is_not_stored_keeps_what_was_confirmed_into_it() {
        let sim = SimVHost::new();
        let (queue, _) = sim
            .vhost
            .declare_queue(durable_queue("q"), 1)
            .expect("declare the queue");
        assert!(sim.commit(Vec::new()), "the queue is durable");
        sim.publish(&queue, "m");
        sim.fail_definitions();
        sim.vhost
            .delete_queue("q", 1, false, false)
            .expect_err("a deletion that is not stored");
        assert!(sim.commit(vec![queue.clone()]), "the message is confirmed");
        drop(queue);
        let (_, counts) = sim.restart(true);
        assert_eq!(counts, [("q".to_owned(), 1)]);
    }

    /// A deletion that could not be stored is written again by later commits: once the
    /// disk recovers, the queue is gone for good and its log is removed.
    #[test]
    fn a_deletion_that_failed_is_stored_once_the_disk_recovers() {
        let sim = SimVHost::new();
        let (queue, _) = sim
            .vhost
            .declare_queue(durable_queue("q"), 1)
            .expect("declare the queue");
        sim.publish(&queue, "m");
        assert!(sim.commit(vec![queue.clone()]));
        drop(queue);
        sim.fail_definitions();
        sim.vhost
            .delete_queue("q", 1, false, false)
            .expect_err("a deletion that is not stored");
        sim.sim.clear_faults();
        assert!(sim.commit(Vec::new()));
        let logs = sim.sim.clone();
        let (defs, _) = sim.restart(true);
        assert!(defs.queues.is_empty(), "{:?}", defs.queues);
        let queues = std::path::Path::new(SIM_DATA).join("queues");
        assert_eq!(
            crate::store::fs::FileSystem::read_dir(&logs, &queues).map_or(0, |d| d.len()),
            0,
            "the log was removed"
        );
    }

    /// A queue declared anew under the name of one whose deletion could not be stored
    /// replaces it in the store, without the old one's bindings, and the old log goes.
    #[test]
    fn a_queue_declared_after_a_failed_deletion_does_not_inherit_its_bindings() {
        let sim = SimVHost::new();
        sim.vhost
            .declare_queue(durable_queue("q"), 1)
            .expect("declare the queue");
        sim.vhost
            .bind("q", "amq.direct", "k", FieldTable::default(), 1)
            .expect("bind");
        assert!(sim.commit(Vec::new()));
        sim.fail_definitions();
        sim.vhost
            .delete_queue("q", 1, false, false)
            .expect_err("a deletion that is not stored");
        sim.sim.clear_faults();
        let (fresh, _) = sim
            .vhost
            .declare_queue(durable_queue("q"), 1)
            .expect("declare it again");
        drop(fresh);
        assert!(sim.commit(Vec::new()));
        let (defs, _) = sim.restart(true);
        assert_eq!(defs.queues.len(), 1);
        assert!(
            !defs.bindings.iter().any(|b| b.destination == "q"),
            "{:?}",
            defs.bindings
        );
    }

    /// A binding racing the deletion of its exchange is never stored without it: after
    /// a restart it would bind a later exchange of that name that the client never bound.
    #[test]
    fn a_bind_racing_an_exchange_delete_stores_no_orphan_binding() {
        let dir = TempDir::new("bind-exchange-delete");
        let (vhost, _) = open(&dir);
        vhost
            .declare_queue(durable_queue("q"), 1)
            .expect("declare the queue");
        let name = |round: usize| format!("e{round}");
        let durable_direct = || ExchangeSettings {
            kind: ExchangeKind::Direct,
            durable: true,
            auto_delete: false,
            internal: false,
            delayed: false,
            arguments: FieldTable::default(),
        };
        race_rounds(
            2_000,
            |round| {
                let _ = vhost.declare_exchange(&name(round), false, durable_direct());
            },
            |round| {
                let _ = vhost.delete_exchange(&name(round), false);
            },
            |round| {
                let _ = vhost.bind("q", &name(round), "k", FieldTable::default(), 1);
            },
            |_| {},
        );
        drop(vhost);
        let defs = stored_definitions(&dir);
        let orphans: Vec<&str> = defs
            .bindings
            .iter()
            .filter(|b| !defs.exchanges.iter().any(|e| e.name == b.source))
            .map(|b| b.source.as_str())
            .collect();
        assert!(
            orphans.is_empty(),
            "bindings of deleted exchanges: {orphans:?}"
        );
    }

    /// A binding racing the deletion of its queue never outlives the queue.
    #[test]
    fn a_bind_racing_a_delete_never_binds_a_dead_queue() {
        let timers = Arc::new(Timers::start().expect("timer thread"));
        let vhost = VHost::new("/", None, timers, Arc::default());
        let mut dangling = Vec::new();
        race_rounds(
            20_000,
            |_| {
                let mut plain = durable_queue("r");
                plain.durable = false;
                let _ = vhost.declare_queue(plain, 1);
            },
            |_| {
                let _ = vhost.delete_queue("r", 1, false, false);
            },
            |_| {
                let _ = vhost.bind("r", "amq.direct", "k", FieldTable::default(), 1);
            },
            |round| {
                if bound(&vhost, "r") {
                    dangling.push(round);
                    let direct = vhost.exchange("amq.direct").expect("amq.direct");
                    direct.remove_destination(DestinationKind::Queue, "r");
                }
            },
        );
        assert!(
            dangling.is_empty(),
            "bound to a deleted queue in rounds {dangling:?}"
        );
    }

    /// Commits what `queue` holds and waits for it: every partition's log and offsets.
    fn commit_all(vhost: &VHost, queue: &Arc<Queue>) {
        let store = vhost.store.clone().expect("a durable vhost");
        let (done, durable) = tokio::sync::oneshot::channel();
        store.commit(queue.sync_targets(), Some(done));
        assert_eq!(durable.blocking_recv(), Ok(true), "committed");
    }

    /// Takes what `mailbox` holds for consumer `id`: its deliveries' (partition, offset).
    fn delivered(mailbox: &crate::queue::Mailbox) -> Vec<(u16, u64)> {
        let mut out = Vec::new();
        mailbox.drain_into(&mut out);
        out.into_iter()
            .filter_map(|o| match o {
                crate::queue::Outgoing::Deliver { message, .. } => {
                    Some((message.partition, message.offset))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_stream_groups_committed_offsets_and_lag_are_exact_at_rest_and_after_a_reopen() {
        use crate::queue::stream::{Reader, StreamFilter, StreamStart};
        use crate::queue::{ConsumerHandle, Credit, Mailbox, Membership};
        let dir = TempDir::new("vhost-stream-groups");
        let name = "events";
        let declare = || {
            let mut d = durable_queue(name);
            d.arguments.insert(
                "x-queue-type".into(),
                amqp_codec::amq_protocol::types::AMQPValue::LongString("stream".into()),
            );
            d.arguments.insert(
                "x-partitions".into(),
                amqp_codec::amq_protocol::types::AMQPValue::LongInt(2),
            );
            d
        };
        {
            let (vhost, _) = open(&dir);
            let (queue, _) = vhost.declare_queue(declare(), 1).expect("declare");
            let mut effects = Effects::default();
            // Keyless publishes go round robin: 5 to each partition.
            for i in 0..10u8 {
                let message = Message::new("", "", &[0, 0], bytes::Bytes::from(vec![i]));
                queue
                    .publish(message, Handling::default(), &mut effects)
                    .expect("publish");
            }
            commit_all(&vhost, &queue);
            let mailbox = Arc::new(Mailbox::default());
            let credit = Arc::new(Credit::new(100, None));
            let reader = Reader {
                consumer: ConsumerHandle {
                    id: 7,
                    channel: 1,
                    exclusive: false,
                    credit: credit.clone(),
                    mailbox: mailbox.clone(),
                    no_ack: false,
                    priority: 0,
                },
                start: StreamStart::First,
                filter: StreamFilter::default(),
            };
            let membership = Membership {
                group: Some("audit".into()),
                ..Membership::default()
            };
            queue
                .add_stream_consumer(reader, None, &membership)
                .expect("join");
            let got = delivered(&mailbox);
            assert_eq!(got.len(), 10, "{got:?}");
            // Settle partition 0's offsets 0–2 and 4 (3 stays unsettled), and all of
            // partition 1's.
            queue.stream_settled(&credit, 0, &[0, 1, 2, 4]);
            queue.stream_settled(&credit, 1, &[0, 1, 2, 3, 4]);
            commit_all(&vhost, &queue);
            let groups = queue.stream_groups();
            assert_eq!(groups.len(), 1);
            let audit = &groups[0];
            assert_eq!(audit.group, "audit");
            assert_eq!(audit.members, vec![7]);
            let at: Vec<(Option<u64>, u64, u64, u32)> = audit
                .partitions
                .iter()
                .map(|p| (p.committed, p.end, p.lag, p.unsettled))
                .collect();
            assert_eq!(at, vec![(Some(3), 5, 2, 1), (Some(5), 5, 0, 0)]);
            assert_eq!(
                queue.remove_consumer(7),
                crate::queue::ConsumerRemoval::Removed
            );
            commit_all(&vhost, &queue);
        }
        let defs = stored_definitions(&dir);
        let (vhost, _) = open(&dir);
        vhost.restore(&defs).expect("restore");
        let queue = vhost.queue(name, 1).expect("the stream is back");
        assert_eq!(queue.partitions(), Some(2));
        let groups = queue.stream_groups();
        assert_eq!(groups.len(), 1, "the group is listed at rest: {groups:?}");
        let at: Vec<(Option<u64>, u64, u64, Option<u64>)> = groups[0]
            .partitions
            .iter()
            .map(|p| (p.committed, p.end, p.lag, p.owner))
            .collect();
        assert_eq!(at, vec![(Some(3), 5, 2, None), (Some(5), 5, 0, None)]);
    }
}

//! The exchange and queue classes: declaring, binding, purging and deleting.

use amqp_codec::amq_protocol::protocol::{AMQPClass, exchange as ex, queue as q};

use super::authz::Kind;
use super::{Channel, Context};
use crate::access::permissions::Perm;
use crate::error::{self, AmqpResult};
use crate::exchange::{ExchangeKind, ExchangeSettings, parse_declared_type};
use crate::names;
use crate::queue::QueueDeclare;

impl Channel {
    pub(super) fn exchange_method(
        &mut self,
        ctx: &mut Context<'_>,
        method: ex::AMQPMethod,
    ) -> AmqpResult<()> {
        match method {
            ex::AMQPMethod::Declare(d) => {
                // A passive declare only checks existence; the type is not looked at.
                let declared = if d.passive {
                    Some((ExchangeKind::Direct, false))
                } else {
                    parse_declared_type(d.kind.as_str(), &d.arguments)?
                };
                let (kind, delayed) = match declared {
                    Some(declared) => declared,
                    None => {
                        return Err(error::command_invalid(format!(
                            "unknown exchange type '{}'",
                            d.kind
                        )));
                    }
                };
                let name = d.exchange.as_str();
                if d.passive && !name.is_empty() {
                    ctx.permit_any(Kind::Exchange, name)?;
                }
                // Whether the exchange is new, as far as the checks before the declare
                // can tell; another connection's delete can race it (see below).
                let alternate = d
                    .arguments
                    .inner()
                    .get("alternate-exchange")
                    .and_then(long_string);
                let new = !d.passive && ctx.vhost.exchange(name).is_err();
                if !d.passive && !name.is_empty() {
                    ctx.permit(Perm::Configure, Kind::Exchange, name)?;
                    if let Some(alternate) = &alternate
                        && new
                    {
                        ctx.permit(Perm::Read, Kind::Exchange, name)?;
                        ctx.permit(Perm::Write, Kind::Exchange, alternate)?;
                    }
                }
                let created = ctx.vhost.declare_exchange(
                    d.exchange.as_str(),
                    d.passive,
                    ExchangeSettings {
                        kind,
                        durable: d.durable,
                        auto_delete: d.auto_delete,
                        internal: d.internal,
                        delayed,
                        arguments: d.arguments,
                    },
                )?;
                // One this declare did make although it looked old before checks its
                // alternate exchange now, and goes again if that is refused.
                if created
                    && !new
                    && let Some(alternate) = &alternate
                {
                    let permitted = ctx
                        .permit(Perm::Read, Kind::Exchange, name)
                        .and_then(|()| ctx.permit(Perm::Write, Kind::Exchange, alternate));
                    if let Err(refused) = permitted {
                        let _ = ctx.vhost.delete_exchange(name, false);
                        return Err(refused);
                    }
                }
                if !d.nowait {
                    ctx.send(
                        self.id,
                        AMQPClass::Exchange(ex::AMQPMethod::DeclareOk(ex::DeclareOk {})),
                    );
                }
                Ok(())
            }
            ex::AMQPMethod::Delete(d) => {
                // The default and `amq.*` exchanges are refused before the check.
                let name = d.exchange.as_str();
                if !name.is_empty() && !name.starts_with("amq.") {
                    ctx.permit(Perm::Configure, Kind::Exchange, name)?;
                }
                ctx.vhost
                    .delete_exchange(d.exchange.as_str(), d.if_unused)?;
                if !d.nowait {
                    ctx.send(
                        self.id,
                        AMQPClass::Exchange(ex::AMQPMethod::DeleteOk(ex::DeleteOk {})),
                    );
                }
                Ok(())
            }
            ex::AMQPMethod::Bind(bind) => {
                ctx.permit_binding(
                    Kind::Exchange,
                    bind.destination.as_str(),
                    bind.source.as_str(),
                    bind.routing_key.as_str(),
                )?;
                ctx.vhost.bind_exchange(
                    bind.destination.as_str(),
                    bind.source.as_str(),
                    bind.routing_key.as_str(),
                    bind.arguments,
                )?;
                if !bind.nowait {
                    ctx.send(
                        self.id,
                        AMQPClass::Exchange(ex::AMQPMethod::BindOk(ex::BindOk {})),
                    );
                }
                Ok(())
            }
            ex::AMQPMethod::Unbind(unbind) => {
                ctx.permit_binding(
                    Kind::Exchange,
                    unbind.destination.as_str(),
                    unbind.source.as_str(),
                    unbind.routing_key.as_str(),
                )?;
                ctx.vhost.unbind_exchange(
                    unbind.destination.as_str(),
                    unbind.source.as_str(),
                    unbind.routing_key.as_str(),
                    &unbind.arguments,
                )?;
                if !unbind.nowait {
                    ctx.send(
                        self.id,
                        AMQPClass::Exchange(ex::AMQPMethod::UnbindOk(ex::UnbindOk {})),
                    );
                }
                Ok(())
            }
            _ => Err(error::unimplemented_method()),
        }
    }

    pub(super) fn queue_method(
        &mut self,
        ctx: &mut Context<'_>,
        method: q::AMQPMethod,
    ) -> AmqpResult<()> {
        match method {
            q::AMQPMethod::Declare(d) => {
                let server_named = d.queue.as_str().is_empty() && !d.passive;
                let name = if d.queue.as_str().is_empty() {
                    if d.passive {
                        self.resolve_queue_name(&"".into())?
                    } else {
                        names::server_queue_name().into()
                    }
                } else {
                    d.queue.as_str().into()
                };
                if d.passive && &*name == names::REPLY_TO {
                    if !d.nowait {
                        ctx.send(
                            self.id,
                            AMQPClass::Queue(q::AMQPMethod::DeclareOk(q::DeclareOk {
                                queue: name.to_string().into(),
                                message_count: 0,
                                consumer_count: 0,
                            })),
                        );
                    }
                    return Ok(());
                }
                if d.passive && &*name != names::REPLY_TO {
                    ctx.permit_any(Kind::Queue, &name)?;
                }
                // Whether the queue is new, as far as the checks before the declare can
                // tell; another connection's delete can race it (see below).
                let new = !d.passive && !ctx.vhost.has_queue(&name);
                if !d.passive {
                    if name.starts_with("amq.") && !server_named {
                        return Err(error::reserved_name("queue", &name));
                    }
                    ctx.permit(Perm::Configure, Kind::Queue, &name)?;
                    if new
                        && let Some(limit) = ctx.broker.vhost_limit(ctx.vhost.name(), "max-queues")
                        && ctx.vhost.queue_count() as u64 >= limit
                    {
                        return Err(error::precondition(format!(
                            "cannot declare queue '{name}': queue limit in vhost '{}' ({limit}) is reached",
                            ctx.vhost.name()
                        )));
                    }
                    let dlx = d.arguments.inner().get("x-dead-letter-exchange");
                    if let Some(dlx) = dlx.and_then(long_string)
                        && new
                    {
                        ctx.permit(Perm::Read, Kind::Queue, &name)?;
                        ctx.permit(Perm::Write, Kind::Exchange, &dlx)?;
                    }
                }
                // A queue this declare did create although it looked old before checks
                // its dead-letter exchange now, and goes again if that is refused.
                let dlx = d
                    .arguments
                    .inner()
                    .get("x-dead-letter-exchange")
                    .and_then(long_string);
                let (queue, created) = ctx.vhost.declare_queue(
                    QueueDeclare {
                        name: name.clone(),
                        server_named,
                        passive: d.passive,
                        durable: d.durable,
                        exclusive: d.exclusive,
                        auto_delete: d.auto_delete,
                        arguments: d.arguments,
                    },
                    ctx.connection,
                )?;
                if created
                    && !new
                    && let Some(dlx) = &dlx
                {
                    let permitted = ctx
                        .permit(Perm::Read, Kind::Queue, &name)
                        .and_then(|()| ctx.permit(Perm::Write, Kind::Exchange, dlx));
                    if let Err(refused) = permitted {
                        ctx.vhost.remove_queue(&queue);
                        return Err(refused);
                    }
                }
                if created && queue.settings().exclusive_owner.is_some() {
                    ctx.exclusive_queues.push(queue.clone());
                }
                self.last_queue = Some(name.clone());
                if !d.nowait {
                    ctx.send(
                        self.id,
                        AMQPClass::Queue(q::AMQPMethod::DeclareOk(q::DeclareOk {
                            queue: name.to_string().into(),
                            message_count: queue.message_count(),
                            consumer_count: queue.consumer_count(),
                        })),
                    );
                }
                Ok(())
            }
            q::AMQPMethod::Bind(bind) => {
                let name = self.resolve_queue_name(&bind.queue.as_str().into())?;
                ctx.permit_binding(
                    Kind::Queue,
                    &name,
                    bind.exchange.as_str(),
                    bind.routing_key.as_str(),
                )?;
                ctx.vhost.bind(
                    &name,
                    bind.exchange.as_str(),
                    bind.routing_key.as_str(),
                    bind.arguments,
                    ctx.connection,
                )?;
                if !bind.nowait {
                    ctx.send(
                        self.id,
                        AMQPClass::Queue(q::AMQPMethod::BindOk(q::BindOk {})),
                    );
                }
                Ok(())
            }
            q::AMQPMethod::Unbind(unbind) => {
                let name = self.resolve_queue_name(&unbind.queue.as_str().into())?;
                ctx.permit_binding(
                    Kind::Queue,
                    &name,
                    unbind.exchange.as_str(),
                    unbind.routing_key.as_str(),
                )?;
                ctx.vhost.unbind(
                    &name,
                    unbind.exchange.as_str(),
                    unbind.routing_key.as_str(),
                    &unbind.arguments,
                    ctx.connection,
                )?;
                ctx.send(
                    self.id,
                    AMQPClass::Queue(q::AMQPMethod::UnbindOk(q::UnbindOk {})),
                );
                Ok(())
            }
            q::AMQPMethod::Purge(purge) => {
                let name = self.resolve_queue_name(&purge.queue.as_str().into())?;
                ctx.permit(Perm::Read, Kind::Queue, &name)?;
                let queue = ctx.vhost.queue(&name, ctx.connection)?;
                if queue.is_stream() {
                    return Err(error::stream::purge(&name, ctx.vhost.name()));
                }
                let message_count = queue.purge();
                if !purge.nowait {
                    ctx.send(
                        self.id,
                        AMQPClass::Queue(q::AMQPMethod::PurgeOk(q::PurgeOk { message_count })),
                    );
                }
                Ok(())
            }
            q::AMQPMethod::Delete(delete) => {
                let name = self.resolve_queue_name(&delete.queue.as_str().into())?;
                ctx.permit(Perm::Configure, Kind::Queue, &name)?;
                let message_count = ctx.vhost.delete_queue(
                    &name,
                    ctx.connection,
                    delete.if_unused,
                    delete.if_empty,
                )?;
                if !delete.nowait {
                    ctx.send(
                        self.id,
                        AMQPClass::Queue(q::AMQPMethod::DeleteOk(q::DeleteOk { message_count })),
                    );
                }
                Ok(())
            }
            _ => Err(error::unimplemented_method()),
        }
    }
}

/// A string argument's value (`alternate-exchange`, `x-dead-letter-exchange`).
fn long_string(value: &amqp_codec::amq_protocol::types::AMQPValue) -> Option<String> {
    use amqp_codec::amq_protocol::types::AMQPValue;
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

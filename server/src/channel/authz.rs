//! Permission checks of a channel's methods: which permission each method needs on
//! which resource, as RabbitMQ's channel checks them (`rabbit_channel`), refused with
//! 403 ACCESS_REFUSED and RabbitMQ's texts ([`error::access`]).
//!
//! A connection's [`Grant`] holds its user's permissions in the vhost as of an epoch
//! of the broker's access registry; a check first brings it up to date if users or
//! permissions changed since, so a change applies to open connections at their next
//! method. Publishing checks write access on every message, so a channel remembers
//! the exchange it last allowed at the current epoch and skips the pattern then.

use crate::access::permissions::Perm;
use crate::error::{self, AmqpResult};
use crate::exchange::ExchangeKind;

use super::{Channel, Context};
use amqp_codec::Content;

/// The kind of resource a check is about, as RabbitMQ's texts name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Queue,
    Exchange,
}

impl Kind {
    fn word(self) -> &'static str {
        match self {
            Kind::Queue => "queue",
            Kind::Exchange => "exchange",
        }
    }
}

/// The name the default exchange has in permission checks.
const DEFAULT_EXCHANGE: &str = "amq.default";

impl Context<'_> {
    /// Checks that the user may `perm` the resource `name` of `kind`.
    ///
    /// # Errors
    /// 403 ACCESS_REFUSED: `configure access to queue 'q' in vhost '/' refused for user 'u'`.
    pub(super) fn permit(&mut self, perm: Perm, kind: Kind, name: &str) -> AmqpResult<()> {
        self.broker.refresh(self.grant);
        let name = if kind == Kind::Exchange && name.is_empty() {
            DEFAULT_EXCHANGE
        } else {
            name
        };
        if self.grant.permissions.allows(perm, name) {
            return Ok(());
        }
        Err(error::access::refused(
            perm.word(),
            kind.word(),
            name,
            &self.grant.vhost,
            &self.grant.user,
        ))
    }

    /// Checks a passive declare of the `kind` resource `name`: any one of read, write
    /// or configure will do (RabbitMQ 4.2.7 and later; tried in that order, so a
    /// refusal names configure).
    ///
    /// # Errors
    /// 403 ACCESS_REFUSED, as [`permit`](Self::permit) for configure.
    pub(super) fn permit_any(&mut self, kind: Kind, name: &str) -> AmqpResult<()> {
        for perm in [Perm::Read, Perm::Write] {
            if self.permit(perm, kind, name).is_ok() {
                return Ok(());
            }
        }
        self.permit(Perm::Configure, kind, name)
    }

    /// Checks the user's topic permission `perm` (write to publish, read to bind) for
    /// routing or binding key `key` on the topic exchange `exchange`. A user without
    /// topic permissions on it may use any key, as in RabbitMQ.
    ///
    /// # Errors
    /// 403 ACCESS_REFUSED: `write access to topic 'k' in exchange 'x' in vhost '/'
    /// refused for user 'u'`.
    pub(super) fn permit_topic(&mut self, perm: Perm, exchange: &str, key: &str) -> AmqpResult<()> {
        self.broker.refresh(self.grant);
        if !self.grant.topic {
            return Ok(());
        }
        let access = self.broker.access();
        let Some(topic) = access.topic_permission(&self.grant.user, &self.grant.vhost, exchange)
        else {
            return Ok(());
        };
        if topic.allows(perm, key) {
            return Ok(());
        }
        Err(error::access::topic_refused(
            perm.word(),
            key,
            exchange,
            &self.grant.vhost,
            &self.grant.user,
        ))
    }

    /// Checks a binding (or unbinding) from exchange `source` to the `kind`
    /// `destination` with key `key`: write on the destination, read on the source, and
    /// on a topic source the topic read permission for the key.
    ///
    /// # Errors
    /// 403 ACCESS_REFUSED, as [`permit`](Self::permit) and
    /// [`permit_topic`](Self::permit_topic).
    pub(super) fn permit_binding(
        &mut self,
        kind: Kind,
        destination: &str,
        source: &str,
        key: &str,
    ) -> AmqpResult<()> {
        if !destination.is_empty() {
            self.permit(Perm::Write, kind, destination)?;
        }
        if !source.is_empty() {
            self.permit(Perm::Read, Kind::Exchange, source)?;
        }
        if self.grant.topic
            && let Ok(exchange) = self.vhost.exchange(source)
            && exchange.settings().kind == ExchangeKind::Topic
        {
            self.permit_topic(Perm::Read, source, key)?;
        }
        Ok(())
    }
}

impl Channel {
    /// Checks a publish: write access to its exchange, then the topic permission for
    /// its routing key on a topic exchange. An exchange allowed at the broker's current
    /// permissions epoch is remembered, so a run of publishes checks it once.
    ///
    /// # Errors
    /// 403 ACCESS_REFUSED.
    pub(super) fn permit_publish(
        &mut self,
        ctx: &mut Context<'_>,
        content: &Content,
    ) -> AmqpResult<()> {
        let exchange = &content.publish.exchange;
        let epoch = ctx.broker.access_epoch();
        let remembered = self
            .allowed_publish
            .as_ref()
            .is_some_and(|(x, e)| x == exchange && *e == epoch);
        if !remembered {
            ctx.permit(Perm::Write, Kind::Exchange, exchange)?;
            self.allowed_publish = Some((exchange.clone(), ctx.grant.epoch));
        }
        if ctx.grant.topic
            && let Ok(x) = ctx.vhost.exchange(exchange)
            && x.settings().kind == ExchangeKind::Topic
        {
            ctx.permit_topic(Perm::Write, exchange, &content.publish.routing_key)?;
        }
        Ok(())
    }

    /// Checks the topic write permission for a publish's `CC` and `BCC` keys, as
    /// RabbitMQ 4 does (its routing key was checked by
    /// [`permit_publish`](Self::permit_publish)).
    ///
    /// # Errors
    /// 403 ACCESS_REFUSED.
    pub(super) fn permit_extra_keys(
        ctx: &mut Context<'_>,
        exchange: &str,
        keys: &[amqp_codec::ShortStr],
    ) -> AmqpResult<()> {
        if keys.is_empty() || !ctx.grant.topic {
            return Ok(());
        }
        if ctx
            .vhost
            .exchange(exchange)
            .is_ok_and(|x| x.settings().kind == ExchangeKind::Topic)
        {
            for key in keys {
                ctx.permit_topic(Perm::Write, exchange, key)?;
            }
        }
        Ok(())
    }
}

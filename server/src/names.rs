//! Server-generated names: `amq.gen-…` queues and `amq.ctag-…` consumer tags, random
//! like RabbitMQ's so they never collide across restarts.

use rand::Rng;

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn random_suffix() -> String {
    let mut rng = rand::rng();
    (0..22)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

/// A name for a queue declared with an empty name.
pub fn server_queue_name() -> String {
    format!("amq.gen-{}", random_suffix())
}

/// A unique id for a durable queue's log directory, so a queue deleted and declared
/// again never reads the old incarnation's messages.
pub fn queue_log_id() -> String {
    let mut rng = rand::rng();
    format!("{:016x}{:016x}", rng.random::<u64>(), rng.random::<u64>())
}

/// The pseudo-queue RPC clients consume from for direct reply-to.
pub const REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// The address replies to one direct reply-to consumer are published to: the
/// pseudo-queue's name with an unguessable suffix.
pub fn reply_to_address() -> String {
    format!("{REPLY_TO}.{}", queue_log_id())
}

/// Prefix of the queues delayed exchanges hold messages in (a reserved `amq.` name, so
/// no client queue can take it).
const DELAYED_HOLD: &str = "amq.delayed.";

/// The name of the queue delayed exchange `exchange` holds messages in.
pub fn delayed_hold(exchange: &str) -> String {
    format!("{DELAYED_HOLD}{exchange}")
}

/// The delayed exchange a hold queue belongs to, if `queue` is one.
pub fn held_for(queue: &str) -> Option<&str> {
    queue.strip_prefix(DELAYED_HOLD)
}

/// A tag for a consumer started with an empty tag.
pub fn server_consumer_tag() -> String {
    format!("amq.ctag-{}", random_suffix())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_have_rabbitmq_prefixes_and_differ() {
        let a = server_queue_name();
        assert!(a.starts_with("amq.gen-") && a.len() == 30);
        assert_ne!(a, server_queue_name());
        assert!(server_consumer_tag().starts_with("amq.ctag-"));
    }
}

//! The ready messages a queue holds in memory, oldest first within each priority; a
//! queue without `x-max-priority` has one level, so it is a plain FIFO.

use std::collections::VecDeque;

use crate::message::QueuedMessage;

/// Ready messages by priority level, highest level served first.
#[derive(Debug)]
pub struct Ready {
    levels: Vec<VecDeque<QueuedMessage>>,
    len: usize,
    bytes: usize,
}

impl Default for Ready {
    fn default() -> Self {
        Self::new(0)
    }
}

impl Ready {
    /// Ready messages for a queue whose highest priority is `max_priority` (0: none).
    pub fn new(max_priority: u8) -> Self {
        Self {
            levels: (0..=max_priority).map(|_| VecDeque::new()).collect(),
            len: 0,
            bytes: 0,
        }
    }

    fn level(&self, priority: u8) -> usize {
        usize::from(priority).min(self.levels.len() - 1)
    }

    /// How many messages are held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether none are held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Body bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Adds a newly published (or paged-in) message behind those of its priority.
    pub fn push_back(&mut self, message: QueuedMessage) {
        self.len += 1;
        self.bytes += message.message.body().len();
        let level = self.level(message.priority);
        self.levels[level].push_back(message);
    }

    /// Adds a message in expiry order (delayed exchanges' holds, where messages leave
    /// when their delay is over), after those due at the same time.
    pub fn insert_by_expiry(&mut self, message: QueuedMessage) {
        self.len += 1;
        self.bytes += message.message.body().len();
        let level = self.level(message.priority);
        let queue = &mut self.levels[level];
        let at = queue.partition_point(|m| m.expires_at_ms <= message.expires_at_ms);
        queue.insert(at, message);
    }

    /// Puts a returned message back where its offset places it among its priority.
    pub fn reinsert(&mut self, message: QueuedMessage) {
        self.len += 1;
        self.bytes += message.message.body().len();
        let level = self.level(message.priority);
        let queue = &mut self.levels[level];
        match queue.front() {
            Some(front) if front.offset < message.offset => {
                let at = queue.partition_point(|m| m.offset < message.offset);
                queue.insert(at, message);
            }
            _ => queue.push_front(message),
        }
    }

    /// The message to deliver next.
    pub fn front(&self) -> Option<&QueuedMessage> {
        self.levels.iter().rev().find_map(VecDeque::front)
    }

    /// Takes the message to deliver next.
    pub fn pop_front(&mut self) -> Option<QueuedMessage> {
        let queue = self.levels.iter_mut().rev().find(|q| !q.is_empty())?;
        let message = queue.pop_front()?;
        release_spare(queue);
        self.len -= 1;
        self.bytes -= message.message.body().len();
        Some(message)
    }

    /// Takes the head of every level whose head expires before `cutoff_ms`, highest
    /// level first; stops at the first live head of each level, as RabbitMQ expires
    /// only from the head.
    pub fn pop_expired(&mut self, cutoff_ms: u64, mut taken: impl FnMut(QueuedMessage)) {
        for queue in self.levels.iter_mut().rev() {
            while queue
                .front()
                .is_some_and(|m| m.expires_at_ms != 0 && m.expires_at_ms < cutoff_ms)
            {
                if let Some(message) = queue.pop_front() {
                    self.len -= 1;
                    self.bytes -= message.message.body().len();
                    taken(message);
                }
            }
        }
    }

    /// The earliest expiry among the level heads, if any head expires.
    pub fn next_expiry(&self) -> Option<u64> {
        self.levels
            .iter()
            .filter_map(VecDeque::front)
            .map(|m| m.expires_at_ms)
            .filter(|&at| at != 0)
            .min()
    }

    /// Takes every message.
    pub fn take_all(&mut self) -> Vec<QueuedMessage> {
        self.len = 0;
        self.bytes = 0;
        self.levels
            .iter_mut()
            .flat_map(|q| std::mem::take(q).into_iter())
            .collect()
    }
}

/// Entries a level may keep room for without holding them (7 KiB). Kept small: a
/// thousand queues that each held a few hundred messages a moment ago would otherwise
/// keep ~50 MB of empty room between them (heaptrack, 1,000 queues fed round-robin).
const SPARE_MIN: usize = 64;

/// Gives back most of a level's room once it holds under a quarter of it, so that a queue
/// that once held a backlog does not keep the memory after draining it. Shrinking only
/// below a quarter and to twice what is held keeps the copies amortised over the
/// pushes and pops between them.
fn release_spare(queue: &mut VecDeque<QueuedMessage>) {
    let capacity = queue.capacity();
    if capacity > SPARE_MIN && queue.len() < capacity / 4 {
        queue.shrink_to(queue.len() * 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;
    use bytes::Bytes;

    fn msg(offset: u64, priority: u8, expires_at_ms: u64) -> QueuedMessage {
        QueuedMessage {
            offset,
            position: None,
            redelivered: false,
            expires_at_ms,
            delivery_count: 0,
            priority,
            partition: 0,
            awaiting_ack: false,
            message: Message::new("", "q", b"", Bytes::from_static(b"xy")),
        }
    }

    fn offsets(ready: &mut Ready) -> Vec<u64> {
        std::iter::from_fn(|| ready.pop_front().map(|m| m.offset)).collect()
    }

    #[test]
    fn higher_priorities_go_first_and_overflowing_ones_count_as_the_maximum() {
        let mut ready = Ready::new(5);
        ready.push_back(msg(1, 0, 0));
        ready.push_back(msg(2, 9, 0));
        ready.push_back(msg(3, 5, 0));
        ready.push_back(msg(4, 2, 0));
        assert_eq!((ready.len(), ready.bytes()), (4, 8));
        assert_eq!(offsets(&mut ready), [2, 3, 4, 1]);
        assert!(ready.is_empty());
    }

    #[test]
    fn a_drained_level_gives_its_room_back() {
        let mut ready = Ready::new(0);
        for i in 0..100_000 {
            ready.push_back(msg(i, 0, 0));
        }
        let full = ready.levels[0].capacity();
        while ready.len() > 10 {
            ready.pop_front();
        }
        let left = ready.levels[0].capacity();
        assert!(
            left <= SPARE_MIN,
            "{full} entries of room shrank only to {left}"
        );
        assert_eq!(offsets(&mut ready), (99_990..100_000).collect::<Vec<_>>());
    }

    #[test]
    fn without_levels_priority_is_ignored() {
        let mut ready = Ready::new(0);
        ready.push_back(msg(1, 0, 0));
        ready.push_back(msg(2, 9, 0));
        assert_eq!(offsets(&mut ready), [1, 2]);
    }

    #[test]
    fn returned_messages_go_back_in_offset_order() {
        let mut ready = Ready::new(0);
        ready.push_back(msg(5, 0, 0));
        ready.push_back(msg(9, 0, 0));
        ready.reinsert(msg(7, 0, 0));
        ready.reinsert(msg(1, 0, 0));
        assert_eq!(offsets(&mut ready), [1, 5, 7, 9]);
    }

    #[test]
    fn delayed_messages_line_up_by_due_time() {
        let mut ready = Ready::new(0);
        for (offset, due) in [(1, 50), (2, 10), (3, 50), (4, 30)] {
            ready.insert_by_expiry(msg(offset, 0, due));
        }
        let mut taken = Vec::new();
        ready.pop_expired(31, |m| taken.push(m.offset));
        assert_eq!(taken, [2, 4]);
        assert_eq!(offsets(&mut ready), [1, 3]);
    }

    #[test]
    fn only_expired_heads_are_taken() {
        let mut ready = Ready::new(1);
        ready.push_back(msg(1, 0, 10));
        ready.push_back(msg(2, 0, 50));
        ready.push_back(msg(3, 0, 5));
        ready.push_back(msg(4, 1, 20));
        assert_eq!(ready.next_expiry(), Some(10));
        let mut taken = Vec::new();
        ready.pop_expired(31, |m| taken.push(m.offset));
        assert_eq!(taken, [4, 1]);
        assert_eq!(ready.next_expiry(), Some(50));
        assert_eq!(offsets(&mut ready), [2, 3]);
    }
}

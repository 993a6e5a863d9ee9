//! Unit tests of partitioned queues: routing, assignment glue, drains, counts.

use std::sync::Arc;

use bytes::Bytes;

use super::*;
use crate::timers::now_ms;

/// A transient queue `pq` on its own, running with `args`.
pub(super) fn queue_with(args: QueueArguments) -> Arc<Queue> {
    let settings = QueueSettings {
        parsed: args,
        ..QueueSettings::default()
    };
    Arc::new(Queue::new(
        "pq".into(),
        "/",
        settings,
        None,
        &Recovery::default(),
        QueueEnv::for_tests(),
    ))
}

fn partitioned_queue(n: u16) -> Arc<Queue> {
    queue_with(QueueArguments {
        partitions: Some(n),
        ..QueueArguments::default()
    })
}

/// A message published through the default exchange: it has no key, so it goes round
/// robin.
fn keyless(n: usize) -> Message {
    Message::new("", "pq", b"", Bytes::from(n.to_string()))
}

struct Member {
    id: ConsumerId,
    credit: Arc<Credit>,
    mailbox: Arc<Mailbox>,
}

impl Member {
    fn new(id: ConsumerId, prefetch: u32) -> Self {
        Self {
            id,
            credit: Arc::new(Credit::new(prefetch, None)),
            mailbox: Arc::new(Mailbox::default()),
        }
    }

    fn handle(&self) -> ConsumerHandle {
        ConsumerHandle {
            id: self.id,
            channel: 1,
            exclusive: false,
            credit: self.credit.clone(),
            mailbox: self.mailbox.clone(),
            no_ack: false,
            priority: 0,
        }
    }

    fn join(&self, queue: &Arc<Queue>) {
        let mut effects = Effects::default();
        queue
            .add_member(self.handle(), &Membership::default(), &mut effects)
            .expect("join");
    }

    /// The deliveries handed to it since last asked, as written by its connection.
    fn take(&self) -> Vec<QueuedMessage> {
        let mut items = Vec::new();
        self.mailbox.drain_into(&mut items);
        items
            .into_iter()
            .filter_map(|item| match item {
                Outgoing::Deliver { message, .. } => {
                    let _ = self.credit.written();
                    Some(message)
                }
                Outgoing::Cancelled { .. }
                | Outgoing::GroupEvent { .. }
                | Outgoing::Wake { .. } => None,
            })
            .collect()
    }

    /// Acks `messages`, as a channel does: settle, give credit back, kick.
    fn ack(&self, queue: &Arc<Queue>, messages: Vec<QueuedMessage>) {
        let n = u32::try_from(messages.len()).expect("few");
        queue.settle(messages);
        self.credit.release(n);
        queue.kick(&mut Effects::default());
    }
}

fn publish(queue: &Arc<Queue>, range: std::ops::Range<usize>) {
    let mut effects = Effects::default();
    for n in range {
        queue
            .publish(keyless(n), Handling::default(), &mut effects)
            .expect("publish");
    }
}

fn body(m: &QueuedMessage) -> usize {
    std::str::from_utf8(m.message.body())
        .expect("utf8")
        .parse()
        .expect("number")
}

#[test]
fn keyless_messages_go_round_robin_and_counts_add_up() {
    let queue = partitioned_queue(4);
    publish(&queue, 0..10);
    assert_eq!(queue.message_count(), 10);
    assert_eq!(queue.partitions(), Some(4));
    let member = Member::new(1, 100);
    member.join(&queue);
    let got = member.take();
    assert_eq!(got.len(), 10);
    for m in &got {
        assert_eq!(usize::from(m.partition), body(m) % 4, "round robin");
    }
    assert_eq!(queue.message_count(), 0);
    assert_eq!(queue.consumer_count(), 1);
}

#[test]
fn two_members_share_the_partitions_and_each_keeps_its_own() {
    let queue = partitioned_queue(4);
    let (a, b) = (Member::new(1, 100), Member::new(2, 100));
    a.join(&queue);
    b.join(&queue);
    publish(&queue, 0..40);
    let (got_a, got_b) = (a.take(), b.take());
    assert_eq!(got_a.len() + got_b.len(), 40);
    let parts = |ms: &[QueuedMessage]| {
        ms.iter()
            .map(|m| m.partition)
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert_eq!(parts(&got_a).len(), 2);
    assert_eq!(parts(&got_b).len(), 2);
    assert!(parts(&got_a).is_disjoint(&parts(&got_b)));
}

/// A partition that moves while its owner holds unacked deliveries goes to its new
/// owner only once they are acked: never unacked at two members at once.
#[test]
fn a_moving_partition_waits_for_its_old_owner_to_ack() {
    let queue = partitioned_queue(2);
    let a = Member::new(1, 100);
    a.join(&queue);
    publish(&queue, 0..4);
    let held = a.take();
    assert_eq!(held.len(), 4);
    let b = Member::new(2, 100);
    b.join(&queue);
    publish(&queue, 4..8);
    // One partition moved to b, but a still holds its deliveries: b gets nothing yet,
    // while a goes on with the partition it kept.
    assert!(b.take().is_empty(), "b waits for the drain");
    let kept = a.take();
    assert_eq!(kept.len(), 2);
    let moved = 1 - kept[0].partition;
    let snapshot = queue.group_snapshot().expect("partitioned");
    let state = &snapshot.partition_states[usize::from(moved)];
    assert!(state.owners.is_empty(), "nobody takes it while it drains");
    assert_eq!(
        state.draining_to.as_ref().map(|d| d.0.clone()),
        Some(vec![b.id])
    );
    assert_eq!((state.depth, state.unacked), (2, 2));
    assert_eq!(snapshot.members.len(), 2);
    assert!(snapshot.members.iter().all(|m| m.assigned.len() == 1));
    assert!(kept.iter().all(|m| m.partition != moved));
    // a acks what it held of the moved partition: b takes over, in order.
    let (of_moved, rest): (Vec<_>, Vec<_>) = held.into_iter().partition(|m| m.partition == moved);
    a.ack(&queue, rest);
    assert!(
        b.take().is_empty(),
        "still one delivery of the moved partition unacked"
    );
    a.ack(&queue, of_moved);
    let got = b.take();
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|m| m.partition == moved && !m.redelivered));
    let bodies: Vec<usize> = got.iter().map(body).collect();
    let mut sorted = bodies.clone();
    sorted.sort_unstable();
    assert_eq!(bodies, sorted, "in order");
}

/// A member that goes away with unacked deliveries: they come back first, flagged
/// redelivered, at the member that takes its partitions.
#[test]
fn a_closed_member_hands_its_unacked_on_first() {
    let queue = partitioned_queue(2);
    let (a, b) = (Member::new(1, 100), Member::new(2, 100));
    a.join(&queue);
    b.join(&queue);
    publish(&queue, 0..6);
    let held = a.take();
    let _ = b.take();
    assert_eq!(held.len(), 3);
    // The channel closes: consumer first, then its unacked requeued.
    assert_eq!(queue.remove_consumer(a.id), ConsumerRemoval::Removed);
    let mut effects = Effects::default();
    queue.requeue(held, &mut effects);
    queue.kick(&mut effects);
    let got = b.take();
    assert_eq!(got.len(), 3);
    assert!(got.iter().all(|m| m.redelivered));
    assert_eq!(queue.consumer_count(), 1);
}

#[test]
fn get_takes_only_from_partitions_nobody_owns() {
    let queue = partitioned_queue(2);
    publish(&queue, 0..4);
    let mut effects = Effects::default();
    let (first, left) = queue.get(false, &mut effects).expect("a message");
    assert_eq!(left, 3);
    let a = Member::new(1, 100);
    a.join(&queue);
    // The partition of the got message waits for its settle; the other flows.
    let got = a.take();
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|m| m.partition != first.partition));
    assert!(
        queue.get(false, &mut effects).is_none(),
        "all partitions owned"
    );
    queue.settle([first]);
    queue.kick(&mut effects);
    assert_eq!(a.take().len(), 1);
}

#[test]
fn a_consumer_naming_another_group_is_refused() {
    let queue = partitioned_queue(2);
    let a = Member::new(1, 10);
    let mut effects = Effects::default();
    let named = |g: &str| Membership {
        group: Some(g.into()),
        ..Membership::default()
    };
    queue
        .add_member(a.handle(), &named("g"), &mut effects)
        .expect("join g");
    let b = Member::new(2, 10);
    let error = queue
        .add_member(b.handle(), &named("h"), &mut effects)
        .expect_err("one group per queue");
    assert_eq!(error.code, ReplyCode::PreconditionFailed);
    assert!(error.reply_text().contains("is consumed by group 'g'"));
    // Without a name, it joins the queue's group.
    queue
        .add_member(b.handle(), &Membership::default(), &mut effects)
        .expect("join the queue's group");
    assert_eq!(queue.consumer_count(), 2);
}

#[test]
fn purge_and_delete_cover_every_partition() {
    let queue = partitioned_queue(3);
    publish(&queue, 0..9);
    assert_eq!(queue.purge(), 9);
    assert_eq!(queue.message_count(), 0);
    publish(&queue, 0..3);
    let a = Member::new(1, 0);
    let (count, logs) = queue.delete();
    assert_eq!(count, 3);
    assert!(logs.is_empty());
    let mut effects = Effects::default();
    assert!(
        queue
            .add_member(a.handle(), &Membership::default(), &mut effects)
            .is_err()
    );
}

#[test]
fn length_limits_bound_the_whole_queue() {
    let queue = queue_with(QueueArguments {
        partitions: Some(4),
        max_length: Some(5),
        overflow: Overflow::RejectPublish,
        ..QueueArguments::default()
    });
    let mut effects = Effects::default();
    let outcomes: Vec<Enqueued> = (0..8)
        .map(|n| {
            queue
                .publish(keyless(n), Handling::default(), &mut effects)
                .expect("publish")
        })
        .collect();
    assert_eq!(
        outcomes
            .iter()
            .filter(|e| **e == Enqueued::Rejected)
            .count(),
        3
    );
    assert_eq!(queue.message_count(), 5);
}

/// Members with a small prefetch work a backlog off to the end, acking as they go.
#[test]
fn members_with_a_small_prefetch_drain_the_backlog() {
    let queue = partitioned_queue(4);
    publish(&queue, 0..40);
    let (a, b) = (Member::new(1, 5), Member::new(2, 5));
    a.join(&queue);
    b.join(&queue);
    let mut total = 0;
    for _ in 0..100 {
        let (got_a, got_b) = (a.take(), b.take());
        if got_a.is_empty() && got_b.is_empty() {
            break;
        }
        total += got_a.len() + got_b.len();
        a.ack(&queue, got_a);
        b.ack(&queue, got_b);
    }
    assert_eq!(total, 40);
    assert_eq!(queue.message_count(), 0);
}

/// Deliveries still in a leaving member's mailbox, never written, come back as they
/// were: the member that takes the partition over sees no redelivery.
#[test]
fn unwritten_deliveries_of_a_leaver_come_back_unflagged() {
    let queue = partitioned_queue(2);
    let (a, b) = (Member::new(1, 100), Member::new(2, 100));
    a.join(&queue);
    publish(&queue, 0..6);
    assert_eq!(queue.remove_consumer(a.id), ConsumerRemoval::Removed);
    b.join(&queue);
    let mut items = Vec::new();
    a.mailbox.drain_into(&mut items);
    let unwritten: Vec<QueuedMessage> = items
        .into_iter()
        .filter_map(|item| match item {
            Outgoing::Deliver { message, .. } => Some(message),
            Outgoing::Cancelled { .. } | Outgoing::GroupEvent { .. } | Outgoing::Wake { .. } => {
                None
            }
        })
        .collect();
    assert_eq!(unwritten.len(), 6);
    assert!(
        b.take().is_empty(),
        "the partitions wait for what a was handed"
    );
    let mut effects = Effects::default();
    queue.give_back(unwritten, &mut effects);
    queue.kick(&mut effects);
    let got = b.take();
    assert_eq!(got.len(), 6);
    assert!(got.iter().all(|m| !m.redelivered));
    let mut bodies: Vec<usize> = got.iter().map(body).collect();
    bodies.sort_unstable();
    assert_eq!(bodies, (0..6).collect::<Vec<_>>());
}

fn static_member(id: &str) -> Membership {
    Membership {
        member: Some(id.into()),
        session_timeout_ms: 60_000,
        ..Membership::default()
    }
}

fn assigned(queue: &Queue, consumer: ConsumerId) -> Vec<u16> {
    let snapshot = queue.group_snapshot().expect("partitioned");
    snapshot
        .members
        .iter()
        .find(|m| m.consumer == consumer)
        .map(|m| m.assigned.clone())
        .unwrap_or_default()
}

/// A static member whose channel closes keeps its partitions for its session: nothing
/// is delivered from them meanwhile, and back in time it gets the same ones.
#[test]
fn a_static_member_comes_back_to_its_partitions() {
    let queue = partitioned_queue(4);
    let mut effects = Effects::default();
    let (a, b) = (Member::new(1, 100), Member::new(2, 100));
    queue
        .add_member(a.handle(), &static_member("a"), &mut effects)
        .expect("join");
    b.join(&queue);
    let mine = assigned(&queue, a.id);
    assert_eq!(mine.len(), 2);
    assert_eq!(queue.close_consumer(a.id), ConsumerRemoval::Removed);
    publish(&queue, 0..8);
    let got_b = b.take();
    assert_eq!(got_b.len(), 4, "b keeps only its own partitions");
    assert!(got_b.iter().all(|m| !mine.contains(&m.partition)));
    let again = Member::new(3, 100);
    queue
        .add_member(again.handle(), &static_member("a"), &mut effects)
        .expect("rejoin");
    queue.kick(&mut effects);
    assert_eq!(assigned(&queue, again.id), mine, "the same partitions");
    let got = again.take();
    assert_eq!(got.len(), 4);
    assert!(got.iter().all(|m| mine.contains(&m.partition)));
    assert_eq!(queue.consumer_count(), 2);
}

/// A held member whose session runs out leaves: its partitions pass on.
#[test]
fn a_static_members_session_expires() {
    let queue = partitioned_queue(2);
    let mut effects = Effects::default();
    let (a, b) = (Member::new(1, 100), Member::new(2, 100));
    queue
        .add_member(a.handle(), &static_member("a"), &mut effects)
        .expect("join");
    b.join(&queue);
    queue.close_consumer(a.id);
    publish(&queue, 0..4);
    assert_eq!(b.take().len(), 2);
    queue.wake(now_ms() + 60_001, &mut effects);
    assert_eq!(b.take().len(), 2, "b took a's partition");
    assert_eq!(queue.consumer_count(), 1);
}

/// A second consumer with a live static member's id takes its place; the first is
/// cancelled, and its partitions wait for what it holds.
#[test]
fn a_second_consumer_with_the_same_id_fences_the_first() {
    let queue = partitioned_queue(2);
    let mut effects = Effects::default();
    let a = Member::new(1, 100);
    queue
        .add_member(a.handle(), &static_member("a"), &mut effects)
        .expect("join");
    publish(&queue, 0..2);
    let held = a.take();
    assert_eq!(held.len(), 2);
    let a2 = Member::new(2, 100);
    queue
        .add_member(a2.handle(), &static_member("a"), &mut effects)
        .expect("fence");
    let mut items = Vec::new();
    a.mailbox.drain_into(&mut items);
    assert!(matches!(
        items.as_slice(),
        [Outgoing::Cancelled { consumer: 1, .. }]
    ));
    publish(&queue, 2..4);
    assert!(
        a2.take().is_empty(),
        "waits for the fenced member's deliveries"
    );
    a.ack(&queue, held);
    assert_eq!(a2.take().len(), 2);
    assert_eq!(queue.consumer_count(), 1);
}

/// A member that asked hears of each partition it gains before its messages, and of
/// each it loses.
#[test]
fn notified_members_hear_of_assignments_before_messages() {
    let queue = partitioned_queue(2);
    let mut effects = Effects::default();
    let notify = Membership {
        notify: true,
        ..Membership::default()
    };
    publish(&queue, 0..2);
    let a = Member::new(1, 100);
    queue
        .add_member(a.handle(), &notify, &mut effects)
        .expect("join");
    let b = Member::new(2, 100);
    b.join(&queue);
    let mut items = Vec::new();
    a.mailbox.drain_into(&mut items);
    let seen: Vec<String> = items
        .iter()
        .map(|item| match item {
            Outgoing::GroupEvent {
                event, partition, ..
            } => format!("{}:{partition}", event.name()),
            Outgoing::Deliver { message, .. } => format!("message:{}", message.partition),
            Outgoing::Cancelled { .. } => "cancelled".into(),
            Outgoing::Wake { .. } => "wake".into(),
        })
        .collect();
    assert_eq!(
        seen,
        [
            "assigned:0",
            "assigned:1",
            "message:0",
            "message:1",
            "revoked:1"
        ]
    );
    assert!(b.take().is_empty(), "p1 drains before b takes it");
}

/// An idle partition costs well under a KiB: its state (the log boxed, made only on
/// first use) and its `Arc`, plus one small allocation for its priority level.
#[test]
fn an_idle_partition_is_small() {
    let size = std::mem::size_of::<partitioned::Partition>();
    assert!(size <= 512, "{size} bytes");
}

fn expiring_queue(expires_ms: u64) -> Arc<Queue> {
    queue_with(QueueArguments {
        partitions: Some(2),
        expires: Some(expires_ms),
        ..QueueArguments::default()
    })
}

/// The last member of a queue with `x-expires` leaving (cancel, close, or a static
/// member's session running out) starts the countdown without taking the group's
/// lock twice: that hung the connection, or the broker's timer thread.
#[test]
fn the_last_member_leaving_an_expiring_queue_does_not_hang() {
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let queue = expiring_queue(60_000);
        let mut effects = Effects::default();
        let a = Member::new(1, 10);
        a.join(&queue);
        assert_eq!(queue.remove_consumer(a.id), ConsumerRemoval::Removed);
        let b = Member::new(2, 10);
        queue
            .add_member(b.handle(), &static_member("b"), &mut effects)
            .expect("join");
        queue.close_consumer(b.id);
        let session_over = now_ms() + 60_001;
        queue.wake(session_over, &mut effects);
        let held_until_then = effects.expired.len();
        queue.wake(session_over + 60_000, &mut effects);
        let _ = done.send((held_until_then, effects.expired.len()));
    });
    let expired = finished
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("leaving returned");
    assert_eq!(
        expired,
        (0, 1),
        "unused from the end of the session, expired x-expires later"
    );
}

/// A consumer of given partitions that takes one from a group member waits, like a
/// new group owner, until the member's deliveries of it are settled.
#[test]
fn a_manual_consumer_taking_a_members_partition_waits_for_its_drain() {
    let queue = partitioned_queue(1);
    let mut effects = Effects::default();
    let a = Member::new(1, 100);
    a.join(&queue);
    publish(&queue, 0..1);
    let held = a.take();
    assert_eq!(held.len(), 1);
    let manual = Member::new(2, 100);
    let given = Membership {
        partitions: Some(vec![0]),
        ..Membership::default()
    };
    queue
        .add_member(manual.handle(), &given, &mut effects)
        .expect("consume partition 0");
    publish(&queue, 1..2);
    assert!(
        manual.take().is_empty(),
        "a still holds partition 0's delivery"
    );
    assert!(a.take().is_empty(), "a lost partition 0");
    a.ack(&queue, held);
    assert_eq!(manual.take().len(), 1);
}

/// Publishers' flow control sees a partitioned queue's whole backlog: the sum of what
/// its owned partitions hold, kept without a lock over them all.
#[test]
fn the_flow_gauge_adds_up_the_partitions_backlogs() {
    let queue = partitioned_queue(2);
    publish(&queue, 0..10);
    assert_eq!(queue.flow().ready(), 0, "no member: nothing to wait for");
    let member = Member::new(1, 4);
    member.join(&queue);
    let flow = queue.flow();
    assert_eq!((flow.ready(), flow.ready_bytes(), flow.handed()), (6, 6, 4));
    let first = member.take();
    member.ack(&queue, first);
    assert_eq!((flow.ready(), flow.handed()), (2, 8));
    publish(&queue, 10..20);
    assert_eq!(flow.ready(), 12);
    assert_eq!(queue.remove_consumer(member.id), ConsumerRemoval::Removed);
    assert_eq!(
        queue.flow().ready(),
        0,
        "the member left: nothing is delivered"
    );
}

/// A purge empties every partition's share, though nothing is dispatched after it.
#[test]
fn a_purge_empties_the_flow_gauge() {
    let queue = partitioned_queue(2);
    let member = Member::new(1, 1);
    member.join(&queue);
    publish(&queue, 0..10);
    assert_eq!(queue.flow().ready(), 9, "one is out on the member's credit");
    assert_eq!(queue.purge(), 9);
    assert_eq!(queue.flow().ready(), 0);
}

/// An exclusive static member that comes back within its session takes its own place;
/// anyone else is still refused while it is held.
#[test]
fn an_exclusive_static_member_comes_back_to_its_place() {
    let queue = partitioned_queue(2);
    let mut effects = Effects::default();
    let exclusive = |member: &Member| ConsumerHandle {
        exclusive: true,
        ..member.handle()
    };
    let a = Member::new(1, 100);
    queue
        .add_member(exclusive(&a), &static_member("a"), &mut effects)
        .expect("join");
    queue.close_consumer(a.id);
    let stranger = Member::new(2, 100);
    let refused = queue
        .add_member(exclusive(&stranger), &Membership::default(), &mut effects)
        .expect_err("held in exclusive use");
    assert_eq!(refused.code, amqp_codec::ReplyCode::AccessRefused);
    let again = Member::new(3, 100);
    queue
        .add_member(exclusive(&again), &static_member("a"), &mut effects)
        .expect("back within its session");
    assert_eq!(assigned(&queue, again.id), vec![0, 1]);
}

//! One client connection: handshake, then a loop that reads frames in large chunks and
//! dispatches them to channels, delivers what queues left in its mailbox, sends
//! heartbeats, and writes everything through one output buffer in batched writes.
//!
//! Reading and writing run in one task but never block each other: the loop selects
//! over a read, a pending write, the mailbox and the heartbeat timer, so a client that
//! is slow to read cannot stall the frames it sends us, and vice versa.

mod flow;
mod handshake;
mod io;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use amqp_codec::amq_protocol::protocol::{AMQPClass, channel as ch, connection as c};
use amqp_codec::{CodecError, Frame, Method, ProtocolError, ReplyCode, encode};
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::broker::{Broker, Grant, Slot};
use crate::channel::{Channel, Context};
use crate::exchange::Routed;
use crate::queue::{ConnectionId, Effects, Mailbox, Outgoing, Queue};
use crate::shutdown::Shutdown;
use crate::store::SyncTarget;
use crate::vhost::VHost;
use handshake::{HandshakeError, Session, close_method};
use io::{FrameIo, HeaderCheck, READ_CHUNK};

/// Above this much unwritten output, the connection stops taking deliveries from its
/// mailbox and stops reading the client's requests until the client reads: a client
/// that pipelines requests and never reads the answers cannot grow the buffer without
/// bound (one read's answers at most go past it).
const OUT_HIGH_WATER: usize = 1024 * 1024;

/// How long a client gets to finish the handshake (RabbitMQ's `handshake_timeout`).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long to wait for `close-ok` after the server closed the connection.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// How often deliveries' acknowledgement deadlines are checked while some are pending.
const ACK_TIMEOUT_CHECK: Duration = Duration::from_millis(250);

/// What the socket under a connection is.
#[derive(Debug, Clone, Default)]
pub struct Transport {
    /// It is TLS.
    pub tls: bool,
    /// The user name its verified client certificate gives SASL `EXTERNAL`.
    pub cert_user: Option<String>,
    /// The broker's address the client connected to (as the API names connections).
    pub local: Option<SocketAddr>,
}

/// Serves one client connection, given as the two halves of its stream, until it
/// closes, fails, or the broker shuts down.
///
/// Any byte stream works: TCP's `into_split` halves (the listener sets `TCP_NODELAY`
/// first), or the halves `tokio::io::split` cuts from another stream, such as an
/// in-memory `tokio::io::duplex` in tests. `peer` is the client's address, used for
/// logs and for the rule that the default user logs in only from loopback.
/// `transport` says whether the socket is TLS, and the user its client certificate
/// names for SASL `EXTERNAL`.
pub async fn serve<R, W>(
    reader: R,
    writer: W,
    peer: SocketAddr,
    broker: Arc<Broker>,
    shutdown: Shutdown,
    transport: Transport,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let id = broker.next_connection_id();
    let span = info_span!("connection", id, %peer);
    async move {
        let mut io = FrameIo::new(reader, writer, broker.config().frame_max);
        match io.check_protocol_header().await {
            Ok(HeaderCheck::Accepted) => {}
            Ok(HeaderCheck::Rejected) => {
                info!("bad protocol header; answered with AMQP 0-9-1 and closed");
                return;
            }
            Ok(HeaderCheck::Closed) | Err(_) => return,
        }
        let session = match tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            handshake::negotiate(&mut io, &broker, peer, &transport),
        )
        .await
        {
            Ok(Ok(session)) => session,
            Ok(Err(HandshakeError::Refused(error))) => {
                warn!(%error, "connection refused");
                return;
            }
            Ok(Err(error)) => {
                info!(%error, "handshake failed");
                return;
            }
            Err(_) => {
                info!("handshake timed out");
                return;
            }
        };
        info!(user = %session.user, vhost = %session.vhost.name(), "connection opened");
        let facts = crate::registry::ConnectionFacts {
            peer,
            local: transport.local.unwrap_or(peer),
            user: session.user.clone(),
            vhost: session.vhost.name().to_owned(),
            auth_mechanism: session.mechanism.clone(),
            tls: transport.tls,
            client_properties: crate::access::rabbit_json::table_to_json(
                &session.client_properties,
            ),
            connected_at_ms: crate::timers::now_ms(),
            frame_max: session.frame_max,
            channel_max: session.channel_max,
            heartbeat: session.heartbeat,
        };
        let registered = broker.registry().register(id, facts);
        let mut connection = Connection::new(id, broker, session, registered);
        let reason = connection.run(&mut io, shutdown).await;
        connection.release_resources();
        info!(%reason, "connection closed");
    }
    .instrument(span)
    .await;
}

/// Why the connection loop ended.
#[derive(Debug)]
enum Ended {
    ClientClosed,
    ServerClosed(String),
    SocketClosed,
    SocketError(std::io::Error),
    MissedHeartbeats(u16),
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::ClientClosed => write!(f, "client sent connection.close"),
            Ended::ServerClosed(text) => write!(f, "closed by the server: {text}"),
            Ended::SocketClosed => write!(f, "client closed the socket"),
            Ended::SocketError(e) => write!(f, "socket error: {e}"),
            Ended::MissedHeartbeats(t) => {
                write!(f, "missed heartbeats from client, timeout: {t}s")
            }
        }
    }
}

/// Where the connection is in its life.
enum Phase {
    Open,
    /// The server sent `connection.close`; waiting for `close-ok` until the deadline.
    Closing(Instant, String),
    /// Flush what is written, then end.
    Done(Ended),
}

/// State shared by all channels of a connection: what a [`Context`] borrows.
struct Shared {
    broker: Arc<Broker>,
    vhost: Arc<VHost>,
    id: ConnectionId,
    out: BytesMut,
    frame_max: u32,
    mailbox: Arc<Mailbox>,
    exclusive_queues: Vec<Arc<Queue>>,
    routed: Routed,
    kicks: Vec<Arc<Queue>>,
    effects: Effects,
    confirms_due: Vec<u16>,
    tx_commits_due: Vec<u16>,
    commits: Vec<Arc<dyn SyncTarget>>,
    cancel_notify: bool,
    /// The user and what it may do in the vhost.
    grant: Grant,
    /// When the current batch started (deliveries' acknowledgement clocks start here).
    now: std::time::Instant,
    /// The current batch published a message.
    published: bool,
    /// Queues the current batch published to that hold a backlog.
    backlogged: Vec<Arc<Queue>>,
}

impl Shared {
    fn context(&mut self) -> Context<'_> {
        Context {
            broker: &self.broker,
            vhost: &self.vhost,
            connection: self.id,
            out: &mut self.out,
            frame_max: self.frame_max,
            mailbox: &self.mailbox,
            exclusive_queues: &mut self.exclusive_queues,
            routed: &mut self.routed,
            kicks: &mut self.kicks,
            effects: &mut self.effects,
            confirms_due: &mut self.confirms_due,
            tx_commits_due: &mut self.tx_commits_due,
            commits: &mut self.commits,
            cancel_notify: self.cancel_notify,
            grant: &mut self.grant,
            now: self.now,
            published: &mut self.published,
            backlogged: &mut self.backlogged,
        }
    }
}

struct Connection {
    shared: Shared,
    /// Open channels by number; boxed so that a sparse table of high numbers stays small.
    channels: Vec<Option<Box<Channel>>>,
    open_channels: u16,
    channel_max: u16,
    /// The connection and its channels as the limits count them.
    slot: Slot,
    heartbeat: u16,
    /// Items taken from the mailbox; written while the output buffer has room, so that
    /// one wake-up cannot pile a whole prefetch window of large bodies into memory.
    pending: VecDeque<Outgoing>,
    /// Queues that asked to be kicked ([`Outgoing::Wake`]): kicked only when nothing
    /// else is ready, so that a stream consumer catching up a chunk budget at a time
    /// never keeps the connection from reading its client.
    wakes: Vec<Arc<Queue>>,
    /// The buffer the mailbox is swapped into.
    inbox: Vec<Outgoing>,
    /// Publisher confirms waiting for a group commit, in the order they must go out.
    confirm_groups: VecDeque<ConfirmGroup>,
    phase: Phase,
    /// The client handles `connection.blocked`.
    blocked_notify: bool,
    /// Reading is paused: the connection published while a resource alarm was raised.
    blocked: bool,
    /// Reading is paused while the queues it publishes to work off their backlog.
    flow: flow::Flow,
    /// Its entry in the broker's registry, kept current after each batch.
    registered: crate::registry::Registered,
}

/// The confirms one batch owes, per channel up to a sequence number, and the channels
/// whose `tx.commit` it completes, answered once the group commit of the batch's
/// persistent messages (if any) reports back. A channel that closes takes its entries
/// with it.
struct ConfirmGroup {
    confirms: Vec<(u16, u64)>,
    tx_commits: Vec<u16>,
    durable: Option<oneshot::Receiver<bool>>,
}

impl Connection {
    fn new(
        id: ConnectionId,
        broker: Arc<Broker>,
        session: Session,
        registered: crate::registry::Registered,
    ) -> Self {
        Self {
            shared: Shared {
                broker,
                vhost: session.vhost,
                id,
                out: BytesMut::with_capacity(64 * 1024),
                frame_max: session.frame_max,
                mailbox: Arc::new(Mailbox::default()),
                exclusive_queues: Vec::new(),
                routed: Routed::default(),
                kicks: Vec::new(),
                effects: Effects::default(),
                confirms_due: Vec::new(),
                tx_commits_due: Vec::new(),
                commits: Vec::new(),
                cancel_notify: session.cancel_notify,
                grant: session.grant,
                now: std::time::Instant::now(),
                published: false,
                backlogged: Vec::new(),
            },
            blocked_notify: session.blocked_notify,
            blocked: false,
            flow: flow::Flow::default(),
            channels: Vec::new(),
            open_channels: 0,
            slot: session.slot,
            channel_max: session.channel_max,
            heartbeat: session.heartbeat,
            pending: VecDeque::new(),
            wakes: Vec::new(),
            inbox: Vec::new(),
            confirm_groups: VecDeque::new(),
            phase: Phase::Open,
            registered,
        }
    }

    async fn run<R, W>(&mut self, io: &mut FrameIo<R, W>, mut shutdown: Shutdown) -> Ended
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let beat = Duration::from_secs(u64::from(self.heartbeat.max(1)));
        let mut ticker = tokio::time::interval_at(Instant::now() + beat / 2, beat / 2);
        let mut last_read = Instant::now();
        let mut wrote_since_tick = false;
        let mut alarms = self.shared.broker.alarms().subscribe();
        let mut alarms_open = true;
        let mut vhost_deleted = self.shared.vhost.deleted();
        let mut users_deleted = self.shared.broker.users_deleted();
        let mut close_requested = self.registered.entry.close_requested();
        // The client holds the open connection since open-ok went out, before these were
        // watched: a user deleted or a close asked for meanwhile is looked at in the
        // first round (after frames pipelined behind connection.open, which the
        // permissions of a deleted user refuse anyway).
        users_deleted.mark_changed();
        close_requested.mark_changed();
        let entry = self.registered.entry.clone();
        let mut ack_deadlines = tokio::time::interval(ACK_TIMEOUT_CHECK);
        ack_deadlines.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Frames the client pipelined behind `connection.open` are already read.
        if !io.rbuf.is_empty() {
            self.process_input(io);
        }
        loop {
            if let Phase::Done(_) = self.phase {
                // The close handshake's last frames go out behind what is buffered: give
                // up only on a client that stops reading, not on one that reads slowly.
                while !self.shared.out.is_empty() {
                    match tokio::time::timeout(
                        CLOSE_TIMEOUT,
                        io.writer.write_buf(&mut self.shared.out),
                    )
                    .await
                    {
                        Ok(Ok(n)) if n > 0 => {}
                        _ => break,
                    }
                }
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, io.writer.shutdown()).await;
                let Phase::Done(ended) = std::mem::replace(&mut self.phase, Phase::Open) else {
                    unreachable!("checked above")
                };
                return ended;
            }
            let closing_deadline = match &self.phase {
                Phase::Closing(deadline, _) => Some(*deadline),
                _ => None,
            };
            let output_full = self.shared.out.len() >= OUT_HIGH_WATER;
            let take_deliveries = !output_full && matches!(self.phase, Phase::Open);
            // While closing, only the close handshake is read: it writes nothing more and
            // publishes nothing, so neither a full output nor an alarm holds it back.
            let in_flow = self.flow.is_waiting();
            let read_more =
                !matches!(self.phase, Phase::Open) || (!self.blocked && !output_full && !in_flow);
            let watch_acks = matches!(self.phase, Phase::Open)
                && self.channels.iter().flatten().any(|c| c.has_unacked());
            io.rbuf.reserve(READ_CHUNK);
            tokio::select! {
                biased;
                _ = shutdown.wait(), if matches!(self.phase, Phase::Open) => {
                    self.close_connection(ProtocolError::new(
                        ReplyCode::ConnectionForced,
                        "broker forced connection closure with reason 'shutdown'",
                    ));
                }
                _ = vhost_deleted.wait_for(|deleted| *deleted), if matches!(self.phase, Phase::Open) => {
                    let text = format!("vhost '{}' is deleted", self.shared.vhost.name());
                    self.close_connection(ProtocolError::new(ReplyCode::ConnectionForced, text));
                }
                Ok(()) = close_requested.changed(), if matches!(self.phase, Phase::Open) => {
                    let reason = close_requested.borrow_and_update().clone();
                    if let Some(reason) = reason {
                        self.close_connection(ProtocolError::new(ReplyCode::ConnectionForced, reason));
                    }
                }
                Ok(()) = users_deleted.changed(), if matches!(self.phase, Phase::Open) => {
                    if !self.shared.broker.grant_user_exists(&self.shared.grant) {
                        let text = format!("user '{}' is deleted", self.shared.grant.user);
                        self.close_connection(ProtocolError::new(ReplyCode::ConnectionForced, text));
                    }
                }
                written = io.writer.write_buf(&mut self.shared.out), if !self.shared.out.is_empty() => {
                    match written {
                        Ok(n) => {
                            entry.send_oct.fetch_add(n as u64, Ordering::Relaxed);
                            entry.send_cnt.fetch_add(1, Ordering::Relaxed);
                            wrote_since_tick = true;
                            if output_full && n > 0 {
                                // Reading waits for the client to read; that it does
                                // shows it is alive as a heartbeat would.
                                last_read = Instant::now();
                            }
                        }
                        Err(e) => return Ended::SocketError(e),
                    }
                }
                () = self.shared.mailbox.wait(), if take_deliveries => {
                    self.drain_mailbox();
                }
                () = std::future::ready(()), if take_deliveries && !self.pending.is_empty() => {
                    self.drain_mailbox();
                }
                read = io.reader.read_buf(&mut io.rbuf), if read_more => {
                    match read {
                        Ok(0) => return Ended::SocketClosed,
                        Ok(n) => {
                            entry.recv_oct.fetch_add(n as u64, Ordering::Relaxed);
                            entry.recv_cnt.fetch_add(1, Ordering::Relaxed);
                            last_read = Instant::now();
                            self.process_input(io);
                            if self.shared.published && alarms.borrow().any() {
                                self.block(alarms.borrow().reason());
                            }
                            self.flow.after_batch(&mut self.shared.backlogged);
                        }
                        Err(e) => return Ended::SocketError(e),
                    }
                }
                changed = alarms.changed(), if alarms_open => {
                    if changed.is_err() {
                        alarms_open = false;
                    } else if self.blocked && !alarms.borrow_and_update().any() {
                        self.unblock();
                        last_read = Instant::now();
                    }
                }
                _ = ticker.tick(), if self.heartbeat > 0 => {
                    if last_read.elapsed() > beat * 2 && !self.blocked {
                        return Ended::MissedHeartbeats(self.heartbeat);
                    }
                    if !wrote_since_tick {
                        encode::heartbeat(&mut self.shared.out);
                    }
                    wrote_since_tick = false;
                }
                () = sleep_until_opt(self.flow.next_look()) => {
                    self.flow.poll();
                    // The client's frames wait unread meanwhile: its heartbeats too.
                    last_read = Instant::now();
                }
                _ = ack_deadlines.tick(), if watch_acks => {
                    self.close_late_channels();
                }
                durable = next_commit(&mut self.confirm_groups), if !self.confirm_groups.is_empty() => {
                    self.release_confirms(durable);
                }
                () = sleep_until_opt(closing_deadline) => {
                    if let Phase::Closing(_, text) = &self.phase {
                        self.phase = Phase::Done(Ended::ServerClosed(text.clone()));
                    }
                }
                // Last: only when nothing else is ready (see `wakes`).
                () = std::future::ready(()), if take_deliveries && !self.wakes.is_empty() => {
                    for queue in std::mem::take(&mut self.wakes) {
                        self.shared.context().kick_later(&queue);
                    }
                    self.after_batch();
                }
            }
        }
    }

    /// Decodes and handles every whole frame read so far, then does the work the batch
    /// deferred (dispatch to consumers that regained credit, publisher confirms).
    fn process_input<R, W>(&mut self, io: &mut FrameIo<R, W>) {
        self.shared.now = std::time::Instant::now();
        self.shared.published = false;
        loop {
            if let Phase::Done(_) = self.phase {
                break;
            }
            match tokio_util::codec::Decoder::decode(&mut io.decoder, &mut io.rbuf) {
                Ok(Some(frame)) => {
                    if let Err(error) = self.handle_frame(frame) {
                        self.close_connection(error);
                    }
                }
                Ok(None) => break,
                Err(CodecError::Protocol(error)) => {
                    self.close_connection(error);
                    break;
                }
                Err(CodecError::BadProtocolHeader) => {
                    self.close_connection(ProtocolError::new(ReplyCode::FrameError, "bad frame"));
                    break;
                }
                Err(CodecError::Io(e)) => {
                    self.phase = Phase::Done(Ended::SocketError(e));
                    break;
                }
            }
        }
        self.after_batch();
    }

    fn after_batch(&mut self) {
        self.kick_and_apply();
        self.show_channels();
        let confirms: Vec<(u16, u64)> = self
            .shared
            .confirms_due
            .drain(..)
            .filter_map(|id| {
                let channel = self.channels.get_mut(usize::from(id))?.as_mut()?;
                Some((id, channel.schedule_confirms()?))
            })
            .collect();
        let tx_commits: Vec<u16> = self
            .shared
            .tx_commits_due
            .drain(..)
            .filter(|&id| {
                matches!(self.channels.get(usize::from(id)), Some(Some(c)) if c.is_committing())
            })
            .collect();
        let mut durable = None;
        if !self.shared.commits.is_empty() {
            let targets: Vec<Arc<dyn SyncTarget>> = self.shared.commits.drain(..).collect();
            let done = if confirms.is_empty() && tx_commits.is_empty() {
                None
            } else {
                let (done, committed) = oneshot::channel();
                durable = Some(committed);
                Some(done)
            };
            self.shared.broker.commit(targets, done);
        }
        // Nothing may follow connection.close: a closing connection confirms no more.
        if (confirms.is_empty() && tx_commits.is_empty()) || !matches!(self.phase, Phase::Open) {
            return;
        }
        let group = ConfirmGroup {
            confirms,
            tx_commits,
            durable,
        };
        if group.durable.is_none() && self.confirm_groups.is_empty() {
            self.send_group(&group, true);
        } else {
            self.confirm_groups.push_back(group);
        }
    }

    /// Sends what a group owes now that its commit ended with `durable`: confirms, and
    /// `commit-ok` (or the channel error of a transaction that did not complete).
    fn send_group(&mut self, group: &ConfirmGroup, durable: bool) {
        self.send_confirms(&group.confirms, durable);
        if !matches!(self.phase, Phase::Open) {
            return;
        }
        for &id in &group.tx_commits {
            let result = match self.channels.get_mut(usize::from(id)) {
                Some(Some(channel)) => channel.complete_commit(&mut self.shared.out, durable),
                _ => Ok(()),
            };
            if let Err(error) = self.channel_result(id, result) {
                self.close_connection(error);
            }
        }
        self.kick_and_apply();
        self.show_channels();
    }

    /// Brings the channels' registry entries and the message counters up to date.
    fn show_channels(&mut self) {
        let broker = self.shared.broker.message_counters();
        for channel in self.channels.iter_mut().flatten() {
            channel.show(broker, &self.shared.vhost);
        }
    }

    /// Forgets a closed channel, and with it the confirms and commit answers it was
    /// still owed: a channel opened next under its number must not receive them.
    fn forget_channel(&mut self, id: u16) {
        if let Some(slot) = self.channels.get_mut(usize::from(id))
            && let Some(mut channel) = slot.take()
        {
            // What it counted in the batch that closed it.
            channel.show(self.shared.broker.message_counters(), &self.shared.vhost);
            self.registered.entry.close_channel(id);
            let churn = &self.shared.broker.registry().churn;
            churn.channels_closed.fetch_add(1, Ordering::Relaxed);
            self.open_channels -= 1;
            self.shared.broker.close_channel(&mut self.slot);
        }
        for group in &mut self.confirm_groups {
            group.confirms.retain(|&(c, _)| c != id);
            group.tx_commits.retain(|&c| c != id);
        }
        self.shared.confirms_due.retain(|&c| c != id);
        self.shared.tx_commits_due.retain(|&c| c != id);
    }

    fn send_confirms(&mut self, confirms: &[(u16, u64)], durable: bool) {
        if !matches!(self.phase, Phase::Open) {
            return;
        }
        for &(id, upto) in confirms {
            if let Some(Some(channel)) = self.channels.get_mut(usize::from(id)) {
                channel.send_confirms(&mut self.shared.out, upto, durable);
            }
        }
    }

    /// Sends the confirms of the oldest group, whose commit ended with `durable`, and
    /// of every group behind it that is ready too.
    fn release_confirms(&mut self, durable: bool) {
        let Some(group) = self.confirm_groups.pop_front() else {
            return;
        };
        self.send_group(&group, durable);
        while let Some(next) = self.confirm_groups.front_mut() {
            let durable = match next.durable.as_mut().map(oneshot::Receiver::try_recv) {
                None => true,
                Some(Ok(durable)) => durable,
                Some(Err(oneshot::error::TryRecvError::Closed)) => false,
                Some(Err(oneshot::error::TryRecvError::Empty)) => break,
            };
            if let Some(group) = self.confirm_groups.pop_front() {
                self.send_group(&group, durable);
            }
        }
    }

    /// Handles one frame; an error is a connection error.
    fn handle_frame(&mut self, frame: Frame) -> Result<(), ProtocolError> {
        if let Phase::Closing(..) = self.phase {
            // Only the close handshake matters now.
            return match frame {
                Frame::Method(0, Method::Other(class)) => {
                    match *class {
                        AMQPClass::Connection(c::AMQPMethod::CloseOk(_)) => {
                            self.phase = Phase::Done(Ended::ServerClosed(self.closing_text()));
                        }
                        AMQPClass::Connection(c::AMQPMethod::Close(_)) => {
                            encode::method(
                                &mut self.shared.out,
                                0,
                                &AMQPClass::Connection(c::AMQPMethod::CloseOk(c::CloseOk {})),
                            );
                            self.phase = Phase::Done(Ended::ServerClosed(self.closing_text()));
                        }
                        _ => {}
                    }
                    Ok(())
                }
                _ => Ok(()),
            };
        }
        match frame {
            Frame::Heartbeat(0) => Ok(()),
            Frame::Heartbeat(id) => Err(ProtocolError::new(
                ReplyCode::UnexpectedFrame,
                format!("heartbeat frame on channel {id}"),
            )),
            Frame::Method(0, method) => self.connection_method(method),
            Frame::Header(0, _) | Frame::Body(0, _) => Err(ProtocolError::new(
                ReplyCode::UnexpectedFrame,
                "content frame on channel 0",
            )),
            Frame::Method(id, method) => self.channel_method(id, method),
            Frame::Header(id, header) => {
                let shared = &mut self.shared;
                let Some(Some(channel)) = self.channels.get_mut(usize::from(id)) else {
                    return Err(expected_method_frame());
                };
                if channel.is_closing() {
                    return Ok(());
                }
                let result = channel.handle_header(&mut shared.context(), header);
                self.channel_result(id, result)
            }
            Frame::Body(id, payload) => {
                let shared = &mut self.shared;
                let Some(Some(channel)) = self.channels.get_mut(usize::from(id)) else {
                    return Err(expected_method_frame());
                };
                if channel.is_closing() {
                    return Ok(());
                }
                let result = channel.handle_body(&mut shared.context(), payload);
                self.channel_result(id, result)
            }
        }
    }

    fn closing_text(&self) -> String {
        match &self.phase {
            Phase::Closing(_, text) => text.clone(),
            _ => String::new(),
        }
    }

    fn connection_method(&mut self, method: Method) -> Result<(), ProtocolError> {
        let Method::Other(class) = method else {
            return Err(crate::error::unimplemented_method().for_method(60, 40));
        };
        match *class {
            AMQPClass::Connection(c::AMQPMethod::Close(close)) => {
                debug!(code = close.reply_code, text = %close.reply_text, "client closed the connection");
                encode::method(
                    &mut self.shared.out,
                    0,
                    &AMQPClass::Connection(c::AMQPMethod::CloseOk(c::CloseOk {})),
                );
                self.phase = Phase::Done(Ended::ClientClosed);
                Ok(())
            }
            AMQPClass::Connection(c::AMQPMethod::Blocked(_) | c::AMQPMethod::Unblocked(_)) => {
                Ok(())
            }
            AMQPClass::Connection(
                c::AMQPMethod::StartOk(_)
                | c::AMQPMethod::SecureOk(_)
                | c::AMQPMethod::TuneOk(_)
                | c::AMQPMethod::Open(_),
            ) => Err(ProtocolError::new(
                ReplyCode::ChannelError,
                "unexpected method in connection state running",
            )
            .for_method(class.get_amqp_class_id(), class.get_amqp_method_id())),
            AMQPClass::Connection(c::AMQPMethod::UpdateSecret(_)) => {
                encode::method(
                    &mut self.shared.out,
                    0,
                    &AMQPClass::Connection(c::AMQPMethod::UpdateSecretOk(c::UpdateSecretOk {})),
                );
                Ok(())
            }
            other => Err(crate::error::unimplemented_method()
                .for_method(other.get_amqp_class_id(), other.get_amqp_method_id())),
        }
    }

    fn channel_method(&mut self, id: u16, method: Method) -> Result<(), ProtocolError> {
        let slot = usize::from(id);
        let open = matches!(self.channels.get(slot), Some(Some(_)));
        if !open {
            let (class_id, method_id) = method.ids();
            let Method::Other(class) = &method else {
                return Err(expected_channel_open().for_method(class_id, method_id));
            };
            if !matches!(**class, AMQPClass::Channel(ch::AMQPMethod::Open(_))) {
                return Err(expected_channel_open().for_method(class_id, method_id));
            }
            if self.open_channels >= self.channel_max {
                return Err(ProtocolError::new(
                    ReplyCode::NotAllowed,
                    format!(
                        "number of channels opened ({}) has reached the negotiated channel_max ({})",
                        self.open_channels, self.channel_max
                    ),
                ));
            }
            self.shared
                .broker
                .open_channel(&mut self.slot)
                .map_err(|text| ProtocolError::new(ReplyCode::NotAllowed, text))?;
            if self.channels.len() <= slot {
                self.channels.resize_with(slot + 1, || None);
            }
            self.channels[slot] = Some(Box::new(Channel::new(
                id,
                self.shared.broker.config().max_message_size,
                self.registered.entry.open_channel(id),
            )));
            let churn = &self.shared.broker.registry().churn;
            churn.channels_opened.fetch_add(1, Ordering::Relaxed);
            self.open_channels += 1;
            debug!(channel = id, "channel opened");
            encode::method(
                &mut self.shared.out,
                id,
                &AMQPClass::Channel(ch::AMQPMethod::OpenOk(ch::OpenOk {})),
            );
            return Ok(());
        }
        let shared = &mut self.shared;
        let Some(Some(channel)) = self.channels.get_mut(slot) else {
            return Err(expected_channel_open());
        };
        if let Method::Other(class) = &method {
            match **class {
                AMQPClass::Channel(ch::AMQPMethod::Close(_)) if channel.is_closing() => {
                    // The client's close crossed ours: answer it, as RabbitMQ does, and
                    // keep waiting for the close-ok of ours.
                    encode::method(
                        &mut shared.out,
                        id,
                        &AMQPClass::Channel(ch::AMQPMethod::CloseOk(ch::CloseOk {})),
                    );
                    return Ok(());
                }
                AMQPClass::Channel(ch::AMQPMethod::Close(_)) => {
                    channel.close_resources(&mut shared.context());
                    encode::method(
                        &mut shared.out,
                        id,
                        &AMQPClass::Channel(ch::AMQPMethod::CloseOk(ch::CloseOk {})),
                    );
                    self.forget_channel(id);
                    debug!(channel = id, "channel closed by the client");
                    return Ok(());
                }
                AMQPClass::Channel(ch::AMQPMethod::CloseOk(_)) => {
                    if !channel.is_closing() {
                        return Err(crate::error::unimplemented_method().for_method(20, 41));
                    }
                    self.forget_channel(id);
                    return Ok(());
                }
                _ => {}
            }
        }
        if channel.is_closing() {
            return Ok(());
        }
        let result = channel.handle_method(&mut shared.context(), method);
        self.channel_result(id, result)
    }

    /// Turns a handler's error into a channel close (soft codes) or passes it up to close
    /// the connection (hard codes).
    fn channel_result(
        &mut self,
        id: u16,
        result: Result<(), ProtocolError>,
    ) -> Result<(), ProtocolError> {
        let Err(error) = result else {
            return Ok(());
        };
        if error.code.is_connection_error() {
            return Err(error);
        }
        let shared = &mut self.shared;
        if let Some(Some(channel)) = self.channels.get_mut(usize::from(id)) {
            debug!(channel = id, %error, "closing channel");
            channel.close_resources(&mut shared.context());
            channel.mark_closing();
            encode::method(
                &mut shared.out,
                id,
                &AMQPClass::Channel(ch::AMQPMethod::Close(ch::Close {
                    reply_code: error.code.code(),
                    reply_text: error.reply_text().into(),
                    class_id: error.class_id,
                    method_id: error.method_id,
                })),
            );
        }
        Ok(())
    }

    /// Stops reading from a client that published while a resource alarm is raised
    /// (its deliveries and confirms still go out), telling it why if it listens.
    fn block(&mut self, reason: &str) {
        if self.blocked || !matches!(self.phase, Phase::Open) {
            return;
        }
        info!(reason, "blocking a publishing connection");
        self.blocked = true;
        if self.blocked_notify {
            encode::method(
                &mut self.shared.out,
                0,
                &AMQPClass::Connection(c::AMQPMethod::Blocked(c::Blocked {
                    reason: reason.into(),
                })),
            );
        }
    }

    /// Resumes reading once the alarms are cleared.
    fn unblock(&mut self) {
        info!("unblocking a connection");
        self.blocked = false;
        if self.blocked_notify && matches!(self.phase, Phase::Open) {
            encode::method(
                &mut self.shared.out,
                0,
                &AMQPClass::Connection(c::AMQPMethod::Unblocked(c::Unblocked {})),
            );
        }
    }

    /// Closes, with RabbitMQ's error, every channel holding a delivery that was not
    /// acknowledged in time; its unacknowledged messages go back to their queues.
    fn close_late_channels(&mut self) {
        let now = std::time::Instant::now();
        let late: Vec<(u16, ProtocolError)> = self
            .channels
            .iter()
            .flatten()
            .filter(|c| !c.is_closing())
            .filter_map(|c| Some((c.id(), c.ack_timeout(now)?)))
            .collect();
        for (id, error) in late {
            info!(channel = id, %error, "consumer timeout");
            let _ = self.channel_result(id, Err(error));
        }
        self.after_batch();
    }

    /// Sends `connection.close` and stops handling anything but the close handshake.
    fn close_connection(&mut self, error: ProtocolError) {
        if !matches!(self.phase, Phase::Open) {
            return;
        }
        info!(%error, "closing connection");
        encode::method(&mut self.shared.out, 0, &close_method(&error));
        self.phase = Phase::Closing(Instant::now() + CLOSE_TIMEOUT, error.reply_text());
    }

    /// Writes the deliveries queues left in the mailbox; those for consumers that are gone
    /// go back to their queues.
    fn drain_mailbox(&mut self) {
        self.shared.now = std::time::Instant::now();
        self.shared.mailbox.drain_into(&mut self.inbox);
        self.pending.extend(self.inbox.drain(..));
        let mut returned = Vec::new();
        let mut written = 0;
        while self.shared.out.len() < OUT_HIGH_WATER {
            let Some(item) = self.pending.pop_front() else {
                break;
            };
            match item {
                Outgoing::Deliver {
                    channel,
                    consumer,
                    queue,
                    credit,
                    message,
                } => {
                    written += 1;
                    let shared = &mut self.shared;
                    let back = match self.channels.get_mut(usize::from(channel)) {
                        Some(Some(ch)) => {
                            ch.deliver(&mut shared.context(), consumer, queue, credit, message)
                        }
                        _ => {
                            credit.written();
                            credit.release(1);
                            crate::channel::not_written(queue, &credit, message)
                        }
                    };
                    if let Some(back) = back {
                        returned.push(back);
                    }
                }
                Outgoing::GroupEvent {
                    channel,
                    consumer,
                    queue,
                    event,
                    partition,
                    group,
                } => {
                    let shared = &mut self.shared;
                    if let Some(Some(ch)) = self.channels.get_mut(usize::from(channel)) {
                        let notice = crate::channel::GroupNotice {
                            event,
                            partition,
                            group: group.as_deref(),
                        };
                        ch.group_event(&mut shared.context(), consumer, queue, notice);
                    }
                }
                Outgoing::Cancelled { channel, consumer } => {
                    let shared = &mut self.shared;
                    if let Some(Some(ch)) = self.channels.get_mut(usize::from(channel)) {
                        ch.consumer_cancelled(&mut shared.context(), consumer);
                    }
                }
                Outgoing::Wake { queue } => {
                    if !self.wakes.iter().any(|q| Arc::ptr_eq(q, &queue)) {
                        self.wakes.push(queue);
                    }
                }
            }
        }
        let shared = &mut self.shared;
        let mailbox = Arc::clone(&shared.mailbox);
        mailbox.written(written, |queue| shared.context().kick_later(queue));
        crate::channel::give_back_all(returned, &mut self.shared.effects);
        self.after_batch();
    }

    /// Gives back everything the connection held: channels' consumers and unacked
    /// deliveries, undelivered mailbox items, and its exclusive queues.
    fn release_resources(&mut self) {
        let shared = &mut self.shared;
        for channel in self.channels.iter_mut().filter_map(Option::as_mut) {
            channel.close_resources(&mut shared.context());
        }
        self.channels.clear();
        self.shared.mailbox.drain_into(&mut self.inbox);
        self.pending.extend(self.inbox.drain(..));
        let returned = self.pending.drain(..).filter_map(|item| match item {
            Outgoing::Deliver {
                queue,
                message,
                credit,
                ..
            } => crate::channel::not_written(queue, &credit, message),
            Outgoing::Cancelled { .. } | Outgoing::GroupEvent { .. } | Outgoing::Wake { .. } => {
                None
            }
        });
        crate::channel::give_back_all(returned, &mut self.shared.effects);
        for queue in std::mem::take(&mut self.shared.exclusive_queues) {
            self.shared.vhost.remove_queue(&queue);
        }
        self.kick_and_apply();
    }

    /// Dispatches the queues whose consumers regained credit, then has the vhost carry
    /// out what the batch's queue operations left to do, with no lock held.
    fn kick_and_apply(&mut self) {
        let shared = &mut self.shared;
        for queue in shared.kicks.drain(..) {
            queue.kick(&mut shared.effects);
        }
        if !shared.effects.is_empty() {
            shared.vhost.apply(std::mem::take(&mut shared.effects));
        }
    }
}

fn expected_channel_open() -> ProtocolError {
    ProtocolError::new(ReplyCode::ChannelError, "expected 'channel.open'")
}

fn expected_method_frame() -> ProtocolError {
    ProtocolError::new(
        ReplyCode::UnexpectedFrame,
        "expected method frame, got non method frame instead",
    )
}

/// Resolves when the oldest confirm group's commit reports back (at once if it needs
/// none), with whether its messages are durable.
async fn next_commit(groups: &mut VecDeque<ConfirmGroup>) -> bool {
    match groups.front_mut().and_then(|g| g.durable.as_mut()) {
        Some(committed) => committed.await.unwrap_or(false),
        None => true,
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

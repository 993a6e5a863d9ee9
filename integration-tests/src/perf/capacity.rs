//! The tool's own capacity, measured against a null broker: an in-process peer that
//! does the handshake, then swallows publishes (acking them as confirms) or streams
//! pre-stamped deliveries as fast as it can. What the producer and consumer threads
//! spend per message here is the tool's cost, with no real broker in the way.
//!
//! Run with `cargo test --release -p integration-tests --lib capacity -- --ignored --nocapture`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use amqp_codec::amq_protocol::protocol::{AMQPClass, basic, channel, confirm, connection};
use amqp_codec::amq_protocol::types::FieldTable;
use amqp_codec::encode::{self, DeliveryInfo};
use anyhow::{Result, bail};
use bytes::BytesMut;

use super::conn::{CHANNEL, Endpoint};
use super::consumer::{self, ConsumerPlan};
use super::producer::{self, ProducerPlan};
use super::shared::Shared;
use super::stamp::{Clock, MessageId, Stamp};
use super::topology::{Route, Share};
use super::wire::{self, ReadBuf};

/// Every message of the one producer goes to the one queue.
const WHOLE: Share = Share {
    offset: 0,
    stride: 1,
};

/// What the null broker does once the client is set up.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// Discard publishes, acking each read's worth when confirms are on.
    Sink,
    /// Deliver `messages` messages of `size` bytes, stamped as producer 0's.
    Source {
        messages: u64,
        size: usize,
        nonce: u8,
    },
}

/// Starts a null broker for one connection; returns its address and a handle that
/// yields the number of publishes it received.
fn null_broker(mode: Mode) -> Result<(SocketAddr, JoinHandle<Result<u64>>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let handle = thread::spawn(move || {
        let (stream, _) = listener.accept()?;
        serve(stream, mode)
    });
    Ok((addr, handle))
}

fn serve(mut stream: TcpStream, mode: Mode) -> Result<u64> {
    stream.set_nodelay(true)?;
    let mut header = [0u8; 8];
    stream.read_exact(&mut header)?;
    let mut out = BytesMut::new();
    encode::method(
        &mut out,
        0,
        &AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
            version_major: 0,
            version_minor: 9,
            server_properties: Default::default(),
            mechanisms: "PLAIN".into(),
            locales: "en_US".into(),
        })),
    );
    stream.write_all(&out)?;
    out.clear();
    let mut rbuf = ReadBuf::with_capacity(1 << 20);
    let (mut published, mut acked, mut confirms) = (0u64, 0u64, false);
    let mut source: Option<JoinHandle<Result<()>>> = None;
    loop {
        if rbuf.fill(&mut stream, 131_072)? == 0 {
            bail!("client went away");
        }
        while let Some((frame, used)) = wire::split_frame(rbuf.data(), 0)? {
            let ids = wire::method_ids(frame.payload);
            if frame.kind == wire::METHOD && ids == Some((60, 40)) {
                published += 1;
            } else if frame.kind == wire::METHOD && ids != Some(wire::BASIC_ACK) {
                let reply = match wire::parse_other(frame.payload)? {
                    AMQPClass::Connection(connection::AMQPMethod::StartOk(_)) => Some(
                        AMQPClass::Connection(connection::AMQPMethod::Tune(connection::Tune {
                            channel_max: 2047,
                            frame_max: 131_072,
                            heartbeat: 0,
                        })),
                    ),
                    AMQPClass::Connection(connection::AMQPMethod::Open(_)) => {
                        Some(AMQPClass::Connection(connection::AMQPMethod::OpenOk(
                            connection::OpenOk {},
                        )))
                    }
                    AMQPClass::Channel(channel::AMQPMethod::Open(_)) => Some(AMQPClass::Channel(
                        channel::AMQPMethod::OpenOk(channel::OpenOk {}),
                    )),
                    AMQPClass::Confirm(confirm::AMQPMethod::Select(_)) => {
                        confirms = true;
                        Some(AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(
                            confirm::SelectOk {},
                        )))
                    }
                    AMQPClass::Basic(basic::AMQPMethod::Qos(_)) => {
                        Some(AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})))
                    }
                    AMQPClass::Basic(basic::AMQPMethod::Consume(c)) => {
                        if let Mode::Source {
                            messages,
                            size,
                            nonce,
                        } = mode
                        {
                            let mut ok = BytesMut::new();
                            encode::method(
                                &mut ok,
                                CHANNEL,
                                &AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                                    consumer_tag: c.consumer_tag.clone(),
                                })),
                            );
                            stream.write_all(&ok)?;
                            let writer = stream.try_clone()?;
                            let tag = c.consumer_tag.to_string();
                            source = Some(thread::spawn(move || {
                                stream_deliveries(writer, &tag, messages, size, nonce)
                            }));
                        }
                        None
                    }
                    AMQPClass::Connection(connection::AMQPMethod::Close(_)) => {
                        encode::method(
                            &mut out,
                            0,
                            &AMQPClass::Connection(connection::AMQPMethod::CloseOk(
                                connection::CloseOk {},
                            )),
                        );
                        stream.write_all(&out)?;
                        if let Some(source) = source {
                            let _ = source.join();
                        }
                        return Ok(published);
                    }
                    _ => None,
                };
                if let Some(reply) = reply {
                    let channel = if reply.get_amqp_class_id() == 10 {
                        0
                    } else {
                        CHANNEL
                    };
                    encode::method(&mut out, channel, &reply);
                }
            }
            rbuf.consume(used);
        }
        if confirms && published > acked {
            encode::ack(&mut out, CHANNEL, published, true);
            acked = published;
        }
        if !out.is_empty() {
            stream.write_all(&out)?;
            out.clear();
        }
    }
}

fn stream_deliveries(
    mut stream: TcpStream,
    consumer_tag: &str,
    messages: u64,
    size: usize,
    nonce: u8,
) -> Result<()> {
    let mut out = BytesMut::with_capacity(1 << 20);
    let mut body = vec![0u8; size];
    for seq in 0..messages {
        Stamp {
            sent_nanos: 0,
            id: MessageId::new(nonce, 0, seq),
        }
        .write_body(&mut body);
        encode::deliver(
            &mut out,
            CHANNEL,
            consumer_tag,
            DeliveryInfo {
                delivery_tag: seq + 1,
                redelivered: false,
                exchange: "",
                routing_key: "q",
            },
        );
        encode::content(&mut out, CHANNEL, &[0, 0], &body, 131_072);
        if out.len() >= 512 * 1024 {
            stream.write_all(&out)?;
            out.clear();
        }
    }
    stream.write_all(&out)?;
    Ok(())
}

fn endpoint(addr: SocketAddr) -> Endpoint {
    Endpoint {
        addrs: vec![addr],
        username: "guest".into(),
        password: "guest".into(),
        vhost: "/".into(),
        frame_max: 131_072,
        heartbeat: 0,
    }
}

fn publish_capacity(confirm_window: u32) -> Result<()> {
    const MESSAGES: u64 = 3_000_000;
    let (addr, broker) = null_broker(Mode::Sink)?;
    let shared = Arc::new(Shared::new(Clock::start(), 7, 1, 1));
    let plan = ProducerPlan {
        index: 0,
        route: Route {
            exchange: String::new(),
            routing_keys: vec!["q".into()],
            queues: vec![0],
            fanout: false,
        },
        size: 16,
        persistent: false,
        confirm_window,
        count: MESSAGES,
        time_limit: Duration::from_secs(60),
        rate: None,
        drain_timeout: Duration::from_secs(10),
    };
    let conn = producer::connect(&endpoint(addr), &plan)?;
    let result = producer::run(conn, &plan, &shared)?;
    let received = broker
        .join()
        .map_err(|_| anyhow::anyhow!("broker panicked"))??;
    assert_eq!((result.published, received), (MESSAGES, MESSAGES));
    if let Some(tracker) = &result.confirms {
        assert_eq!(tracker.acked(), MESSAGES);
    }
    let cpu = result.cpu.unwrap_or_default().as_secs_f64();
    println!(
        "publish, 16 B, confirm window {confirm_window}: {MESSAGES} msgs in {:.2} s wall = {:.0} msg/s; \
         producer CPU {:.3} µs/msg = {:.0} msg/s per core",
        result.publish_time.as_secs_f64(),
        MESSAGES as f64 / result.publish_time.as_secs_f64(),
        cpu * 1e6 / MESSAGES as f64,
        MESSAGES as f64 / cpu,
    );
    Ok(())
}

fn consume_capacity(no_ack: bool) -> Result<()> {
    const MESSAGES: u64 = 3_000_000;
    let nonce = 9;
    let (addr, broker) = null_broker(Mode::Source {
        messages: MESSAGES,
        size: 16,
        nonce,
    })?;
    let shared = Arc::new(Shared::new(Clock::start(), nonce, 1, 1));
    shared.issued[0].store(MESSAGES, Ordering::Relaxed);
    shared.queues[0].expected.store(MESSAGES, Ordering::Relaxed);
    let plan = ConsumerPlan {
        index: 0,
        queues: vec![(0, "q".into())],
        consumers: vec![0],
        shares: vec![vec![Some(WHOLE)]],
        prefetch: 0,
        no_ack,
        ack_each: false,
        arguments: FieldTable::default(),
        producers: 1,
        drain_timeout: Duration::from_secs(10),
    };
    let conn = consumer::connect(&endpoint(addr), &plan)?;
    let start = Instant::now();
    let result = consumer::run(conn, &plan, &shared)?;
    let wall = start.elapsed().as_secs_f64();
    broker
        .join()
        .map_err(|_| anyhow::anyhow!("broker panicked"))??;
    assert_eq!(
        (result.consumed, result.duplicates, result.strays),
        (MESSAGES, 0, 0)
    );
    assert_eq!(result.seen[0][0].len(), MESSAGES);
    let cpu = result.cpu.unwrap_or_default().as_secs_f64();
    println!(
        "consume, 16 B, {}: {MESSAGES} msgs in {wall:.2} s wall = {:.0} msg/s; \
         consumer CPU {:.3} µs/msg = {:.0} msg/s per core",
        if no_ack { "auto-ack" } else { "ack per read" },
        MESSAGES as f64 / wall,
        cpu * 1e6 / MESSAGES as f64,
        MESSAGES as f64 / cpu,
    );
    Ok(())
}

#[test]
#[ignore = "a benchmark: run with --release -- --ignored --nocapture"]
fn tool_capacity() -> Result<()> {
    publish_capacity(0)?;
    publish_capacity(1000)?;
    consume_capacity(false)?;
    consume_capacity(true)?;
    Ok(())
}

#[test]
fn null_broker_round_trip() -> Result<()> {
    // A small, fast version of the benchmark that always runs: the handshake, confirms
    // and the delivery path work against the null broker.
    let (addr, broker) = null_broker(Mode::Sink)?;
    let shared = Arc::new(Shared::new(Clock::start(), 1, 1, 1));
    let plan = ProducerPlan {
        index: 0,
        route: Route {
            exchange: String::new(),
            routing_keys: vec!["q".into()],
            queues: vec![0],
            fanout: false,
        },
        size: 100,
        persistent: true,
        confirm_window: 64,
        count: 10_000,
        time_limit: Duration::from_secs(30),
        rate: None,
        drain_timeout: Duration::from_secs(5),
    };
    let result = producer::run(producer::connect(&endpoint(addr), &plan)?, &plan, &shared)?;
    assert_eq!(
        broker.join().map_err(|_| anyhow::anyhow!("panicked"))??,
        10_000
    );
    assert_eq!(result.confirms.map(|c| c.acked()), Some(10_000));

    let (addr, broker) = null_broker(Mode::Source {
        messages: 10_000,
        size: 40,
        nonce: 3,
    })?;
    let shared = Arc::new(Shared::new(Clock::start(), 3, 1, 1));
    shared.issued[0].store(10_000, Ordering::Relaxed);
    shared.queues[0].expected.store(10_000, Ordering::Relaxed);
    let plan = ConsumerPlan {
        index: 0,
        queues: vec![(0, "q".into())],
        consumers: vec![0],
        shares: vec![vec![Some(WHOLE)]],
        prefetch: 10,
        no_ack: false,
        ack_each: true,
        arguments: FieldTable::default(),
        producers: 1,
        drain_timeout: Duration::from_secs(5),
    };
    let result = consumer::run(consumer::connect(&endpoint(addr), &plan)?, &plan, &shared)?;
    broker.join().map_err(|_| anyhow::anyhow!("panicked"))??;
    assert_eq!(
        (result.consumed, result.duplicates, result.strays),
        (10_000, 0, 0)
    );
    Ok(())
}

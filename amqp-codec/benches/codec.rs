//! Micro benchmarks of the hot path through the frame layer:
//! - `decode`: frames read per second from a buffer of many publish + header + body
//!   triples (what a publisher's socket delivers), through `FrameDecoder` alone and
//!   with `ContentAssembler` on top;
//! - `encode_deliveries`: deliveries written per second with `encode::deliver` +
//!   `encode::content` (what a consumer's socket is sent).
//!
//! Each runs a few seconds: `cargo bench -p amqp-codec`.

use std::hint::black_box;
use std::time::Duration;

use amqp_codec::amq_protocol::protocol::{AMQPClass, BasicProperties, basic};
use amqp_codec::encode::{self, DeliveryInfo};
use amqp_codec::frame::{Frame, Method};
use amqp_codec::properties::encode_properties;
use amqp_codec::{ContentAssembler, FrameDecoder};
use bytes::BytesMut;
use criterion::{BatchSize, Criterion, Throughput, criterion_main};
use tokio_util::codec::Decoder;

/// Messages per iteration.
const MESSAGES: usize = 1000;
const FRAME_MAX: u32 = 131_072;
const BODY_SIZES: [(&str, usize); 2] = [("16B", 16), ("1KiB", 1024)];

fn properties() -> bytes::Bytes {
    encode_properties(
        &BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2),
    )
}

/// `MESSAGES` publishes of `body_size` bytes on channel 1, as a publisher writes them.
fn publish_stream(body_size: usize) -> Vec<u8> {
    let publish = AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
        exchange: "amq.direct".into(),
        routing_key: "orders.created".into(),
        mandatory: false,
        immediate: false,
    }));
    let properties = properties();
    let body = vec![b'x'; body_size];
    let mut out = BytesMut::new();
    for _ in 0..MESSAGES {
        encode::method(&mut out, 1, &publish);
        encode::content(&mut out, 1, &properties, &body, FRAME_MAX);
    }
    out.to_vec()
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    for (name, size) in BODY_SIZES {
        let stream = publish_stream(size);
        group.throughput(Throughput::Elements(3 * MESSAGES as u64));
        group.bench_function(format!("frames/{name}"), |b| {
            b.iter_batched_ref(
                || BytesMut::from(&stream[..]),
                |buf| {
                    let mut decoder = FrameDecoder::after_header(FRAME_MAX);
                    let mut frames = 0usize;
                    while let Ok(Some(frame)) = decoder.decode(buf) {
                        black_box(&frame);
                        frames += 1;
                    }
                    assert_eq!(frames, 3 * MESSAGES);
                },
                BatchSize::SmallInput,
            );
        });
        group.bench_function(format!("frames_assembled/{name}"), |b| {
            b.iter_batched_ref(
                || BytesMut::from(&stream[..]),
                |buf| {
                    let mut decoder = FrameDecoder::after_header(FRAME_MAX);
                    let mut assembler = ContentAssembler::default();
                    let mut messages = 0usize;
                    while let Ok(Some(frame)) = decoder.decode(buf) {
                        let done = match frame {
                            Frame::Method(_, Method::Publish(p)) => {
                                assembler.start(p).map(|()| None)
                            }
                            Frame::Header(_, h) => assembler.header(h),
                            Frame::Body(_, b) => assembler.body(b),
                            _ => Ok(None),
                        };
                        if let Ok(Some(content)) = done {
                            black_box(&content);
                            messages += 1;
                        }
                    }
                    assert_eq!(messages, MESSAGES);
                },
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}

fn encode_deliveries(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode_deliveries");
    let properties = properties();
    for (name, size) in BODY_SIZES {
        let body = vec![b'x'; size];
        let mut out = BytesMut::with_capacity(MESSAGES * (size + 200));
        group.throughput(Throughput::Elements(MESSAGES as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                for tag in 1..=MESSAGES as u64 {
                    encode::deliver(
                        &mut out,
                        1,
                        "amq.ctag-bench",
                        DeliveryInfo {
                            delivery_tag: tag,
                            redelivered: false,
                            exchange: "amq.direct",
                            routing_key: "orders.created",
                        },
                    );
                    encode::content(&mut out, 1, &properties, black_box(&body), FRAME_MAX);
                }
                black_box(out.len())
            });
        });
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}

/// Every benchmark, with the short configuration and the command line's options.
fn benches() {
    let mut criterion = config().configure_from_args();
    decode(&mut criterion);
    encode_deliveries(&mut criterion);
}

criterion_main!(benches);

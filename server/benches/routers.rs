//! Micro benchmarks of routing through an exchange, one message per iteration, so
//! criterion reports lookups (messages routed) per second:
//! - `route/topic/{100,10000}`: a topic exchange with that many bindings of realistic
//!   shapes (`stock.<sym>.*`, `*.<venue>.#`, `logs.<n>.#`, literal `orders.<r>.<c>`,
//!   `#.<event>`), routed with keys that each match one to three of them or none; the
//!   two sizes show whether the cost follows the key's depth or the binding count;
//! - `route/headers_all/10000` and `route/headers_any/10000`: a headers exchange with
//!   10,000 two-pair bindings, `x-match: all` or `any`, routed with three headers.
//!
//! Each lookup clears the reused [`Routed`] and routes into it, as the vhost does per
//! publish (its deduplication afterwards is the same for every router, so is left out).
//! Run with `cargo bench -p warren --bench routers`.

use std::hint::black_box;
use std::time::Duration;

use amqp_codec::ShortStr;
use amqp_codec::amq_protocol::protocol::BasicProperties;
use amqp_codec::amq_protocol::types::{AMQPValue, FieldTable, ShortString};
use amqp_codec::properties::encode_properties;
use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_main};
use warren::exchange::{Binding, Destination, Exchange, ExchangeKind, ExchangeSettings, Routed};
use warren::message::Message;

/// Destinations the bindings are spread over (binding `i` leads to destination
/// `i % DESTINATIONS`).
const DESTINATIONS: usize = 1000;
/// Distinct messages cycled through, so lookups do not all hit one path.
const MESSAGES: usize = 1024;

/// The destinations, as exchange names: routing to an exchange costs what routing to a
/// queue does (one reference-counted clone), and needs nothing from the queue module.
fn destinations() -> Vec<ShortStr> {
    (0..DESTINATIONS).map(|i| format!("d{i}").into()).collect()
}

fn exchange(kind: ExchangeKind) -> Exchange {
    Exchange::new(
        "bench".into(),
        ExchangeSettings {
            kind,
            durable: false,
            auto_delete: false,
            internal: false,
            delayed: false,
            arguments: FieldTable::default(),
        },
    )
}

fn bind(ex: &Exchange, destinations: &[ShortStr], i: usize, key: String, arguments: FieldTable) {
    let bound = ex.bind(Binding {
        destination: Destination::Exchange(destinations[i % DESTINATIONS].clone()),
        routing_key: key,
        arguments,
    });
    assert!(bound, "binding {i} is new");
}

fn message(routing_key: String, properties: Bytes) -> Message {
    Message::new("bench", &routing_key, &properties, Bytes::new())
}

/// Where each shape of topic pattern starts among `total` bindings, in percent: 30%
/// `stock.<sym>.*`, 20% `*.<venue>.#`, 30% `logs.<n>.#`, 19% `orders.<region>.<client>`
/// and 1% `#.<event>`.
const SHAPES: [usize; 6] = [0, 30, 50, 80, 99, 100];

/// The range of binding numbers with shape `shape`.
fn shape_range(shape: usize, total: usize) -> std::ops::Range<usize> {
    SHAPES[shape] * total / 100..SHAPES[shape + 1] * total / 100
}

/// Venue `n`'s name: the first one is the literal `nyse`.
fn venue(n: usize, total: usize) -> String {
    if n == shape_range(1, total).start {
        "nyse".to_owned()
    } else {
        format!("v{n}")
    }
}

/// The `n`th of `total` topic binding patterns.
fn topic_pattern(n: usize, total: usize) -> String {
    match n * 100 / total {
        0..30 => format!("stock.s{n}.*"),
        30..50 => format!("*.{}.#", venue(n, total)),
        50..80 => format!("logs.n{n}.#"),
        80..99 => format!("orders.r{}.c{n}", n % 20),
        _ => format!("#.e{}", n % 100),
    }
}

/// Routing key `m` for an exchange of `total` bindings: seven in eight match one or
/// two patterns (a `stock`, `logs` or `orders` pattern, a venue's and an event's, or
/// `*.nyse.#` with `#` taking no words); one in eight matches none.
fn topic_key(m: usize, total: usize) -> String {
    let pick = |shape: usize| {
        let range = shape_range(shape, total);
        range.start + m * 7919 % range.len()
    };
    match m % 8 {
        0 | 1 => format!("stock.s{}.nyse", pick(0)),
        2 => format!(
            "trade.{}.s{}.e{}",
            venue(pick(1), total),
            pick(0),
            pick(4) % 100
        ),
        3 => "quotes.nyse".to_owned(),
        4 | 5 => format!("logs.n{}.app.warn", pick(2)),
        6 => {
            let n = pick(3);
            format!("orders.r{}.c{n}", n % 20)
        }
        _ => format!("unknown.k{m}.nothing.here"),
    }
}

fn topic_case(bindings: usize) -> (Exchange, Vec<Message>) {
    let destinations = destinations();
    let ex = exchange(ExchangeKind::Topic);
    for n in 0..bindings {
        bind(
            &ex,
            &destinations,
            n,
            topic_pattern(n, bindings),
            FieldTable::default(),
        );
    }
    let properties = encode_properties(&BasicProperties::default());
    let messages = (0..MESSAGES)
        .map(|m| message(topic_key(m, bindings), properties.clone()))
        .collect();
    (ex, messages)
}

fn table(pairs: &[(&str, String)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert(
            ShortString::from(*k),
            AMQPValue::LongString(v.as_str().into()),
        );
    }
    t
}

/// 10,000 headers bindings with `x-match: mode` over `type` and `region` (5,000 values
/// each, so a message matches a few bindings), plus an `x-binding` argument that keeps
/// them distinct and that matching skips; messages carry those two headers and `prio`,
/// and one in eight matches nothing.
fn headers_case(mode: &str) -> (Exchange, Vec<Message>) {
    const BINDINGS: usize = 10_000;
    const VALUES: usize = 5_000;
    let destinations = destinations();
    let ex = exchange(ExchangeKind::Headers);
    for n in 0..BINDINGS {
        let arguments = table(&[
            ("x-match", mode.to_owned()),
            ("type", format!("t{}", n % VALUES)),
            ("region", format!("r{}", n * 7 % VALUES)),
            ("x-binding", n.to_string()),
        ]);
        bind(&ex, &destinations, n, String::new(), arguments);
    }
    let messages = (0..MESSAGES)
        .map(|m| {
            let n = m * 7919 % BINDINGS;
            let (kind, region) = if m % 8 == 7 {
                ("none".to_owned(), "none".to_owned())
            } else {
                (format!("t{}", n % VALUES), format!("r{}", n * 7 % VALUES))
            };
            let headers = table(&[
                ("type", kind),
                ("region", region),
                ("prio", format!("p{}", m % 10)),
            ]);
            let properties = encode_properties(
                &BasicProperties::default()
                    .with_content_type("application/json".into())
                    .with_headers(headers),
            );
            message(String::new(), properties)
        })
        .collect();
    (ex, messages)
}

/// Routes `messages` round-robin through `ex`, one per iteration.
fn bench_route(c: &mut Criterion, name: &str, ex: &Exchange, messages: &[Message]) {
    let mut group = c.benchmark_group("route");
    group.throughput(Throughput::Elements(1));
    let mut out = Routed::default();
    let mut next = 0usize;
    group.bench_function(name, |b| {
        b.iter(|| {
            let message = &messages[next % messages.len()];
            next = next.wrapping_add(1);
            out.clear();
            ex.route(black_box(message), &mut out);
            black_box(out.exchanges.len())
        });
    });
    group.finish();
}

/// Average distinct destinations per message, printed once so that a change in what
/// matches shows up beside the timings.
fn fan_out(ex: &Exchange, messages: &[Message]) -> f64 {
    let mut out = Routed::default();
    let mut total = 0usize;
    for message in messages {
        out.clear();
        ex.route(message, &mut out);
        out.exchanges.sort_unstable();
        out.exchanges.dedup();
        total += out.exchanges.len();
    }
    total as f64 / messages.len() as f64
}

fn topic(c: &mut Criterion) {
    for bindings in [100, 10_000] {
        let (ex, messages) = topic_case(bindings);
        eprintln!(
            "topic/{bindings}: {:.3} destinations per message",
            fan_out(&ex, &messages)
        );
        bench_route(c, &format!("topic/{bindings}"), &ex, &messages);
    }
}

fn headers(c: &mut Criterion) {
    for mode in ["all", "any"] {
        let (ex, messages) = headers_case(mode);
        eprintln!(
            "headers_{mode}/10000: {:.3} destinations per message",
            fan_out(&ex, &messages)
        );
        bench_route(c, &format!("headers_{mode}/10000"), &ex, &messages);
    }
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
}

/// Every benchmark, with the short configuration and the command line's options.
fn benches() {
    let mut criterion = config().configure_from_args();
    topic(&mut criterion);
    headers(&mut criterion);
}

criterion_main!(benches);

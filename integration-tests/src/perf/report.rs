//! The run's results — rates, latency, the tool's CPU, the verdict; or, in
//! connection-scale mode, set-up times and counts — and their two renderings: a short
//! text report for people and one JSON object for scripts.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use super::latency::Latency;
use super::verify::{Status, Verdict};

/// What was run.
#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    /// Broker host and port.
    pub broker: String,
    /// Producers.
    pub producers: u16,
    /// Consuming connections.
    pub consumers: u16,
    /// Consumers on each consuming connection.
    pub consumers_per_connection: u16,
    /// Queues.
    pub queues: u16,
    /// With `--stream`: the queues are streams, and the offset every consumer read
    /// them from (`first`, `last`, `next` or a number). Each consumer of a stream
    /// receives every message, so deliveries are messages times consumers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_offset: Option<String>,
    /// `x-partitions` of each queue, if partitioned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partitions: Option<u16>,
    /// Extra, never-matching bindings on the exchange.
    pub bindings: u32,
    /// Exchange published to (empty: the default exchange).
    pub exchange: String,
    /// Its type, if not the default exchange.
    pub exchange_type: Option<String>,
    /// Body size in bytes.
    pub size: usize,
    /// delivery-mode 2 to durable queues.
    pub persistent: bool,
    /// Unconfirmed messages allowed per producer (0: no confirms).
    pub confirm: u32,
    /// `basic.qos` prefetch (not used with auto-ack).
    pub prefetch: u16,
    /// `auto`, `multiple` (one ack per read) or `each` (one ack per delivery).
    pub ack: &'static str,
    /// Messages per second per producer, if rate-limited.
    pub rate: Option<f64>,
    /// Messages per producer, if limited.
    pub count: Option<u64>,
    /// Publishing time limit in seconds.
    pub time_limit_secs: f64,
}

/// Messages moved over some time.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    /// Messages (deliveries, for consumers).
    pub messages: u64,
    /// Seconds they took.
    pub seconds: f64,
    /// Messages per second.
    pub msgs_per_sec: f64,
    /// Body megabytes (10^6 bytes) per second.
    pub mb_per_sec: f64,
}

impl Throughput {
    /// `messages` of `size` body bytes each (or `bytes` in all) over `time`.
    pub fn new(messages: u64, bytes: u64, time: Duration) -> Self {
        let seconds = time.as_secs_f64();
        let per_sec = |x: f64| if seconds > 0.0 { x / seconds } else { 0.0 };
        Self {
            messages,
            seconds,
            msgs_per_sec: per_sec(messages as f64),
            mb_per_sec: per_sec(bytes as f64 / 1e6),
        }
    }
}

/// The tool's own CPU use during the run.
#[derive(Debug, Clone, Serialize)]
pub struct CpuUse {
    /// User-mode seconds, whole process.
    pub user_secs: f64,
    /// Kernel seconds, whole process.
    pub system_secs: f64,
    /// Wall-clock seconds of the run.
    pub wall_secs: f64,
    /// CPU seconds per wall second (1.0 = one core busy).
    pub cores: f64,
    /// Process CPU microseconds per message handled (published + consumed).
    pub us_per_msg: f64,
    /// Producer threads' CPU microseconds per message published.
    pub producer_us_per_msg: Option<f64>,
    /// Consumer threads' CPU microseconds per message consumed.
    pub consumer_us_per_msg: Option<f64>,
}

/// Everything a run found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// What was run.
    pub scenario: Scenario,
    /// Publishing: messages written over the publishing time.
    pub publish: Throughput,
    /// Consuming: deliveries (on streams, by all consumers together) from the start
    /// until the last one arrived.
    pub consume: Throughput,
    /// End-to-end latency (send stamp to receipt), if anything was consumed.
    pub latency: Option<Latency>,
    /// The tool's CPU.
    pub cpu: Option<CpuUse>,
    /// Whether the broker blocked any publisher (`connection.blocked`).
    pub publishers_blocked: bool,
    /// The correctness check.
    pub verdict: Verdict,
}

impl Report {
    /// The text report: a few lines ending with the verdict.
    pub fn to_text(&self) -> String {
        let s = &self.scenario;
        let mut out = String::new();
        let exchange = match &s.exchange_type {
            Some(kind) => format!("{kind} exchange {:?}", s.exchange),
            None => "default exchange".to_string(),
        };
        let confirms = match s.confirm {
            0 => "no confirms".to_string(),
            n => format!("confirms (window {n})"),
        };
        let ack = match s.ack {
            "auto" => "auto-ack".to_string(),
            "each" => format!("manual ack each, prefetch {}", s.prefetch),
            _ => format!(
                "manual ack (multiple, once per read), prefetch {}",
                s.prefetch
            ),
        };
        let rate = s
            .rate
            .map(|r| format!(", {r} msg/s per producer"))
            .unwrap_or_default();
        let consumers = match s.consumers_per_connection {
            1 => format!("{} consumer(s)", s.consumers),
            k => format!("{} consumer connection(s) × {k} consumers", s.consumers),
        };
        let exchange = match s.bindings {
            0 => exchange,
            n => format!("{exchange} (+{n} non-matching bindings)"),
        };
        let partitions = s
            .partitions
            .map(|n| format!(" of {n} partitions"))
            .unwrap_or_default();
        let queues = match &s.stream_offset {
            Some(offset) => format!(
                "{} stream(s) (each consumer reads all, from {offset})",
                s.queues
            ),
            None => format!("{} queue(s){partitions}", s.queues),
        };
        let _ = writeln!(
            out,
            "warren-perf → {}: {} producer(s), {consumers}, {queues} via {exchange}, {} B bodies, {}, {confirms}, {ack}{rate}",
            s.broker,
            s.producers,
            s.size,
            if s.persistent {
                "persistent"
            } else {
                "transient"
            },
        );
        for (name, t) in [("publish", &self.publish), ("consume", &self.consume)] {
            let _ = writeln!(
                out,
                "{name:<9} {:>11} msg in {:>7.2} s: {:>11.0} msg/s {:>9.2} MB/s",
                t.messages, t.seconds, t.msgs_per_sec, t.mb_per_sec
            );
        }
        match &self.latency {
            Some(l) => {
                let _ = writeln!(
                    out,
                    "latency   p50 {}  p99 {}  p99.9 {}  max {}  ({} samples)",
                    micros(l.p50_us),
                    micros(l.p99_us),
                    micros(l.p999_us),
                    micros(l.max_us),
                    l.samples
                );
            }
            None => {
                let _ = writeln!(out, "latency   (nothing consumed)");
            }
        }
        if let Some(c) = &self.cpu {
            let role = |name: &str, v: Option<f64>| {
                v.map(|v| format!(", {name} {v:.3} µs/msg"))
                    .unwrap_or_default()
            };
            let _ = writeln!(
                out,
                "tool CPU  user {:.2} s + sys {:.2} s over {:.2} s = {:.2} cores; {:.3} µs per message handled{}{}",
                c.user_secs,
                c.system_secs,
                c.wall_secs,
                c.cores,
                c.us_per_msg,
                role("producers", c.producer_us_per_msg),
                role("consumers", c.consumer_us_per_msg),
            );
        }
        if self.publishers_blocked {
            let _ = writeln!(
                out,
                "note      the broker blocked publishers (connection.blocked)"
            );
        }
        out.push_str(&verdict_line(&self.verdict, s));
        out.push('\n');
        out
    }

    /// The report as one line of JSON.
    ///
    /// # Errors
    /// Never in practice (all fields serialize).
    pub fn to_json(&self) -> serde_json::Result<String> {
        serde_json::to_string(self)
    }
}

/// "verified: published N, confirmed N, consumed N", or what went wrong.
fn verdict_line(v: &Verdict, s: &Scenario) -> String {
    let confirmed = match (v.confirmed, v.nacked) {
        (Some(c), Some(0) | None) => c.to_string(),
        (Some(c), Some(n)) => format!("{c} (nacked {n})"),
        (None, _) => "n/a (confirms off)".to_string(),
    };
    let consumed = if s.stream_offset.is_some() {
        format!(
            "{} deliveries (of {} expected: every consumer reads every message)",
            v.consumed, v.expected
        )
    } else if v.expected != v.confirmed.unwrap_or(v.published) && s.queues > 1 {
        format!("{} (of {} expected deliveries)", v.consumed, v.expected)
    } else {
        v.consumed.to_string()
    };
    let counts = format!(
        "published {}, confirmed {confirmed}, consumed {consumed}",
        v.published
    );
    match v.status {
        Status::Verified => format!("verified: {counts}"),
        Status::Unverified => format!("unverified (no consumers): {counts}"),
        Status::Failed => {
            let mut line = format!(
                "FAILED: {counts}; missing {}, duplicates {}, strays {}",
                v.missing, v.duplicates, v.strays
            );
            if v.redelivered > 0 {
                let _ = write!(line, ", redelivered {}", v.redelivered);
            }
            if v.misrouted > 0 {
                let _ = write!(line, ", {} behind non-matching bindings", v.misrouted);
            }
            if v.timed_out_consumers > 0 {
                let _ = write!(
                    line,
                    " ({} consumer(s) gave up waiting)",
                    v.timed_out_consumers
                );
            }
            line
        }
    }
}

/// What a run found, in either mode.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// A message run (boxed: it is much the larger).
    Messages(Box<Report>),
    /// A connection-scale run (`--connections`).
    Connections(ConnectionsReport),
}

impl Outcome {
    /// Whether the run passed: every message exactly once, or every connection open.
    pub fn ok(&self) -> bool {
        match self {
            Outcome::Messages(r) => r.verdict.ok(),
            Outcome::Connections(r) => r.ok(),
        }
    }

    /// The text report.
    pub fn to_text(&self) -> String {
        match self {
            Outcome::Messages(r) => r.to_text(),
            Outcome::Connections(r) => r.to_text(),
        }
    }

    /// The report as one line of JSON.
    ///
    /// # Errors
    /// Never in practice (all fields serialize).
    pub fn to_json(&self) -> serde_json::Result<String> {
        match self {
            Outcome::Messages(r) => r.to_json(),
            Outcome::Connections(r) => r.to_json(),
        }
    }
}

/// Time from starting a connection's set-up to its `consume-ok`, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct OpenLatency {
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

impl OpenLatency {
    /// Percentiles of sorted durations; `None` if there are none.
    pub fn from_sorted(sorted: &[Duration]) -> Option<Self> {
        let last = sorted.len().checked_sub(1)?;
        let at = |q: f64| sorted[((last as f64 * q).round() as usize).min(last)];
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        Some(Self {
            p50_ms: ms(at(0.5)),
            p99_ms: ms(at(0.99)),
            max_ms: ms(sorted[last]),
        })
    }
}

/// One kind of error and how many connections hit it.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorCount {
    /// The error text.
    pub error: String,
    /// Connections that hit it.
    pub count: u32,
}

/// What a connection-scale run (`--connections`) found.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionsReport {
    /// Broker host and port.
    pub broker: String,
    /// Connections asked for.
    pub requested: u32,
    /// Set-ups under way at once at most.
    pub concurrency: u32,
    /// Connections that got as far as `consume-ok`.
    pub opened: u32,
    /// Connections whose set-up failed.
    pub failed: u32,
    /// Connections not tried because too many had failed.
    pub not_attempted: u32,
    /// Seconds from the first connect to the last set-up finishing.
    pub open_secs: f64,
    /// Connections opened per second over that time.
    pub opens_per_sec: f64,
    /// Set-up time of one connection.
    pub open_latency: Option<OpenLatency>,
    /// Seconds the connections were held open.
    pub held_secs: f64,
    /// Connections the broker closed (or that failed) while held.
    pub lost_while_held: u32,
    /// Connections the tool closed.
    pub closed: u32,
    /// Of those, the ones the broker answered with `close-ok`.
    pub closed_cleanly: u32,
    /// Seconds closing took.
    pub close_secs: f64,
    /// The tool's CPU seconds while opening.
    pub tool_cpu_secs: Option<f64>,
    /// The tool's open-file soft limit, after raising it to the hard limit.
    pub nofile_limit: Option<u64>,
    /// What went wrong, most frequent first.
    pub errors: Vec<ErrorCount>,
}

impl ConnectionsReport {
    /// Whether every connection opened, stayed open and closed cleanly.
    pub fn ok(&self) -> bool {
        self.opened == self.requested
            && self.lost_while_held == 0
            && self.closed_cleanly == self.opened
    }

    /// The text report.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "warren-perf → {}: {} connections, each with one channel and one consumer on its own \
             exclusive queue, {} set-ups at a time",
            self.broker, self.requested, self.concurrency
        );
        let latency = self
            .open_latency
            .as_ref()
            .map(|l| {
                format!(
                    "; each p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                    l.p50_ms, l.p99_ms, l.max_ms
                )
            })
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "opened    {} of {} in {:.2} s: {:.0} connections/s{latency}",
            self.opened, self.requested, self.open_secs, self.opens_per_sec
        );
        let _ = writeln!(
            out,
            "held      {:.2} s, {} lost meanwhile",
            self.held_secs, self.lost_while_held
        );
        let _ = writeln!(
            out,
            "closed    {} in {:.2} s, {} with close-ok",
            self.closed, self.close_secs, self.closed_cleanly
        );
        if let Some(cpu) = self.tool_cpu_secs {
            let limit = self
                .nofile_limit
                .map(|l| format!(" (open-file limit {l})"))
                .unwrap_or_default();
            let _ = writeln!(out, "tool CPU  {cpu:.2} s while opening{limit}");
        }
        for e in &self.errors {
            let _ = writeln!(out, "error     {} × {}", e.count, e.error);
        }
        if self.ok() {
            let _ = writeln!(
                out,
                "verified: all {} consumers got consume-ok, held, closed cleanly",
                self.requested
            );
        } else {
            let _ = writeln!(
                out,
                "FAILED: {} of {} consumers got consume-ok ({} failed, {} not attempted), \
                 {} lost while held, {} closed cleanly",
                self.opened,
                self.requested,
                self.failed,
                self.not_attempted,
                self.lost_while_held,
                self.closed_cleanly
            );
        }
        out
    }

    /// The report as one line of JSON.
    ///
    /// # Errors
    /// Never in practice (all fields serialize).
    pub fn to_json(&self) -> serde_json::Result<String> {
        serde_json::to_string(self)
    }
}

fn micros(us: f64) -> String {
    if us >= 1_000_000.0 {
        format!("{:.2} s", us / 1e6)
    } else if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(queues: u16, stream_offset: Option<&str>) -> Scenario {
        Scenario {
            broker: "127.0.0.1:5672".into(),
            producers: 1,
            consumers: 3,
            consumers_per_connection: 1,
            queues,
            stream_offset: stream_offset.map(str::to_string),
            partitions: None,
            bindings: 0,
            exchange: String::new(),
            exchange_type: None,
            size: 16,
            persistent: false,
            confirm: 0,
            prefetch: 200,
            ack: "multiple",
            rate: None,
            count: Some(4),
            time_limit_secs: 3600.0,
        }
    }

    fn verdict(expected: u64, consumed: u64) -> Verdict {
        Verdict {
            status: Status::Verified,
            published: 4,
            confirmed: None,
            nacked: None,
            expected,
            consumed,
            missing: 0,
            duplicates: 0,
            strays: 0,
            redelivered: 0,
            timed_out_consumers: 0,
            misrouted: 0,
        }
    }

    #[test]
    fn stream_deliveries_are_told_apart_from_messages() {
        assert_eq!(
            verdict_line(&verdict(12, 12), &scenario(1, Some("first"))),
            "verified: published 4, confirmed n/a (confirms off), consumed 12 deliveries \
             (of 12 expected: every consumer reads every message)"
        );
        assert_eq!(
            verdict_line(&verdict(4, 4), &scenario(1, None)),
            "verified: published 4, confirmed n/a (confirms off), consumed 4"
        );
        let json = serde_json::to_string(&scenario(1, None)).expect("serializes");
        assert!(!json.contains("stream_offset"), "{json}");
        let json = serde_json::to_string(&scenario(1, Some("7"))).expect("serializes");
        assert!(json.contains(r#""stream_offset":"7""#), "{json}");
    }
}

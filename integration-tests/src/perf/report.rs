//! The run's results — rates, latency, the tool's CPU, the verdict — and their two
//! renderings: a short text report for people and one JSON object for scripts.

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
    /// Consumers.
    pub consumers: u16,
    /// Queues.
    pub queues: u16,
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
    /// Consuming: deliveries from the start until the last one arrived.
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
        let _ = writeln!(
            out,
            "warren-perf → {}: {} producer(s), {} consumer(s), {} queue(s) via {exchange}, {} B bodies, {}, {confirms}, {ack}{rate}",
            s.broker,
            s.producers,
            s.consumers,
            s.queues,
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
        out.push_str(&verdict_line(&self.verdict, s.queues));
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
fn verdict_line(v: &Verdict, queues: u16) -> String {
    let confirmed = match (v.confirmed, v.nacked) {
        (Some(c), Some(0) | None) => c.to_string(),
        (Some(c), Some(n)) => format!("{c} (nacked {n})"),
        (None, _) => "n/a (confirms off)".to_string(),
    };
    let consumed = if v.expected != v.confirmed.unwrap_or(v.published) && queues > 1 {
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

fn micros(us: f64) -> String {
    if us >= 1_000_000.0 {
        format!("{:.2} s", us / 1e6)
    } else if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

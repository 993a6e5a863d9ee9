//! `warren-perf group-member`: one member of the consumer-group churn benchmark, a
//! separate process (lapin) that the `groups` controller starts, cancels and kills.
//!
//! It consumes its queue(s) with manual acks and `basic.qos` prefetch, does some
//! simulated work per message, and prints what happens as JSON lines on stdout, each
//! stamped with CLOCK_MONOTONIC nanoseconds ([`group_check`](super::group_check) reads
//! them): `consume-ok`, `deliver`, `ack`, `cancel`, `cancel-ok`, `closed`. A delivery is
//! stamped once read, an ack before it is sent, so that a correct broker never looks as
//! if it handed a partition over early. A line `cancel` on stdin (or stdin closing)
//! makes it leave gracefully: it stops working, sends `basic.cancel`, acks every
//! delivery it still holds or that arrives before `cancel-ok`, and closes.
//!
//! The partition of a delivery is its `x-partition` header (Warren's partitioned
//! queues) or, without one, the number after the last `-` of the queue it came from
//! (RabbitMQ's nearest equivalent: one single-active-consumer queue per partition).

use std::io::{BufRead, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;

use super::group_check::monotonic_nanos;

/// The command line of a member (`bench/group_member.py` takes the same).
#[derive(Debug, Clone, Args)]
pub struct MemberOptions {
    /// Broker URI.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub uri: String,

    /// This member's id, the `m` of every line it prints.
    #[arg(long)]
    pub id: u32,

    /// Queue to consume (repeat for several, consumed in the order given).
    #[arg(long = "queue", required = true)]
    pub queues: Vec<String>,

    /// `basic.qos` prefetch count.
    #[arg(long, default_value_t = 10)]
    pub prefetch: u16,

    /// Most simulated work per message, in microseconds (each message takes a uniform
    /// random time up to this).
    #[arg(long, default_value_t = 2000)]
    pub work_max_us: u64,

    /// `x-consumer-group` to join (Warren); none: the queue's group.
    #[arg(long)]
    pub group: Option<String>,

    /// Seed of the simulated work's times.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// A delivery read by a consumer, on its way to the worker.
struct Received {
    delivery: Delivery,
    key: u32,
    seq: u32,
    partition: u16,
}

/// Runs a member until it is told to leave (or its connection fails).
///
/// # Errors
/// Connecting, consuming or acking failed.
pub fn run(opts: &MemberOptions) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(member(opts))
}

async fn member(opts: &MemberOptions) -> Result<()> {
    let id = opts.id;
    let conn = Connection::connect(&opts.uri, ConnectionProperties::default())
        .await
        .context("connecting")?;
    let channel = conn.create_channel().await.context("opening a channel")?;
    channel
        .basic_qos(opts.prefetch, BasicQosOptions::default())
        .await
        .context("basic.qos")?;
    let mut arguments = FieldTable::default();
    if let Some(group) = &opts.group {
        arguments.insert(
            "x-consumer-group".into(),
            AMQPValue::LongString(group.as_str().into()),
        );
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<Received>();
    let mut tags = Vec::new();
    for (i, queue) in opts.queues.iter().enumerate() {
        let tag = format!("member-{id}-{i}");
        let mut consumer = channel
            .basic_consume(
                queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                arguments.clone(),
            )
            .await
            .with_context(|| format!("consuming {queue}"))?;
        tags.push(tag);
        let queue_partition = queue
            .rsplit_once('-')
            .and_then(|(_, n)| n.parse::<u16>().ok())
            .unwrap_or(0);
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let t = monotonic_nanos();
                let (key, seq) = parse_body(&delivery.data).unwrap_or((u32::MAX, u32::MAX));
                let partition = header_partition(&delivery).unwrap_or(queue_partition);
                emit(&format!(
                    r#"{{"m":{id},"ev":"deliver","key":{key},"seq":{seq},"partition":{partition},"redelivered":{},"t":{t}}}"#,
                    delivery.redelivered
                ));
                if tx
                    .send(Received {
                        delivery,
                        key,
                        seq,
                        partition,
                    })
                    .is_err()
                {
                    break;
                }
            }
        });
    }
    drop(tx);
    emit(&format!(
        r#"{{"m":{id},"ev":"consume-ok","t":{}}}"#,
        monotonic_nanos()
    ));

    let leaving = Arc::new(AtomicBool::new(false));
    let (leave_tx, mut leave_rx) = mpsc::unbounded_channel::<()>();
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            for line in std::io::stdin().lock().lines() {
                match line {
                    Ok(line) if line.trim() == "cancel" => break,
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            let _ = leave_tx.send(());
        })
        .context("spawning the stdin reader")?;
    let canceller = {
        let (channel, leaving) = (channel.clone(), Arc::clone(&leaving));
        tokio::spawn(async move {
            if leave_rx.recv().await.is_none() {
                return Ok(());
            }
            leaving.store(true, Ordering::Release);
            emit(&format!(
                r#"{{"m":{id},"ev":"cancel","t":{}}}"#,
                monotonic_nanos()
            ));
            for tag in tags {
                channel
                    .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                    .await?;
            }
            emit(&format!(
                r#"{{"m":{id},"ev":"cancel-ok","t":{}}}"#,
                monotonic_nanos()
            ));
            Ok::<(), lapin::Error>(())
        })
    };

    // The worker runs on a plain thread, so that its simulated work is a real sleep
    // of the chosen length rather than a timer rounded to the millisecond.
    let handle = tokio::runtime::Handle::current();
    let work_max_us = opts.work_max_us;
    let seed = opts.seed ^ u64::from(id);
    let worker = tokio::task::spawn_blocking(move || -> Result<()> {
        let mut rng = SmallRng::seed_from_u64(seed);
        while let Some(r) = rx.blocking_recv() {
            if work_max_us > 0 && !leaving.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_micros(rng.random_range(0..=work_max_us)));
            }
            emit(&format!(
                r#"{{"m":{id},"ev":"ack","key":{},"seq":{},"partition":{},"t":{}}}"#,
                r.key,
                r.seq,
                r.partition,
                monotonic_nanos()
            ));
            handle
                .block_on(r.delivery.acker.ack(BasicAckOptions::default()))
                .context("acking")?;
        }
        Ok(())
    });
    worker.await.context("joining the worker")??;
    canceller
        .await
        .context("joining the canceller")?
        .context("basic.cancel")?;
    emit(&format!(
        r#"{{"m":{id},"ev":"closed","t":{}}}"#,
        monotonic_nanos()
    ));
    conn.close(200, "leaving".into())
        .await
        .context("closing the connection")?;
    Ok(())
}

/// `key:seq` from a body.
fn parse_body(body: &[u8]) -> Option<(u32, u32)> {
    let text = std::str::from_utf8(body).ok()?;
    let (key, seq) = text.split_once(':')?;
    Some((key.parse().ok()?, seq.parse().ok()?))
}

/// The delivery's `x-partition` header, if it has one.
pub(super) fn header_partition(delivery: &Delivery) -> Option<u16> {
    let headers = delivery.properties.headers().as_ref()?;
    let value = headers.inner().get("x-partition")?;
    let n: i64 = match value {
        AMQPValue::LongLongInt(n) => *n,
        AMQPValue::LongInt(n) => i64::from(*n),
        AMQPValue::ShortInt(n) => i64::from(*n),
        AMQPValue::LongUInt(n) => i64::from(*n),
        AMQPValue::ShortUInt(n) => i64::from(*n),
        _ => return None,
    };
    u16::try_from(n).ok()
}

/// Prints one line and flushes it, so that a SIGKILL loses at most the line being written.
fn emit(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_key_colon_seq() {
        assert_eq!(parse_body(b"9999:12"), Some((9999, 12)));
        assert_eq!(parse_body(b"abc"), None);
        assert_eq!(parse_body(b"1:x"), None);
    }
}

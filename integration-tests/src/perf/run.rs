//! One run from start to finish: declare, connect every consumer and producer, open
//! the start gate, wait for producers, tell consumers what to expect, wait for them,
//! clean up, and put the report together.

use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow};

use super::conn::Endpoint;
use super::connections;
use super::consumer::{self, ConsumerPlan, ConsumerResult};
use super::cpu;
use super::latency::{Latency, latency_histogram};
use super::options::Options;
use super::producer::{self, ProducerPlan, ProducerResult};
use super::progress::Progress;
use super::report::{CpuUse, Outcome, Report, Scenario, Throughput};
use super::shared::Shared;
use super::stamp::Clock;
use super::topology::{Reading, Route, Topology};
use super::verify;

/// Runs the load described by `opts` (or, with `--connections`, the connection-scale
/// mode) and reports on it.
///
/// # Errors
/// Invalid options, and any connection or broker failure during the run. A run that
/// completes with lost or duplicated messages, or with connections the broker
/// refused, is not an error: its report says so.
pub fn run(opts: &Options) -> Result<Outcome> {
    opts.validate()?;
    if let Some(count) = opts.connections {
        // The one mode with a TLS client: it takes `amqps://` as well.
        let (endpoint, transport) = Endpoint::parse_with_transport(&opts.uri)?;
        return connections::run(opts, &endpoint, &transport, count).map(Outcome::Connections);
    }
    let endpoint = Endpoint::parse(&opts.uri)?;
    let topology = Topology::plan(opts)?;
    topology.declare(&endpoint).context("declaring queues")?;
    let result = run_load(opts, &endpoint, &topology).and_then(|mut report| {
        if topology.sink.is_some() {
            report.verdict.misrouted = topology
                .sink_messages(&endpoint)
                .context("checking the queue behind the unmatched bindings")?
                .into();
            report.verdict.settle();
        }
        Ok(Outcome::Messages(Box::new(report)))
    });
    if !opts.keep {
        if let Err(e) = topology.delete(&endpoint) {
            eprintln!("warren-perf: warning: deleting the queues failed: {e:#}");
        }
    }
    result
}

fn run_load(opts: &Options, endpoint: &Endpoint, topology: &Topology) -> Result<Report> {
    let clock = Clock::start();
    let shared = Arc::new(Shared::new(
        clock,
        run_nonce(),
        usize::from(opts.producers),
        topology.queues.len(),
    ));
    let routes: Vec<Route> = (0..usize::from(opts.producers))
        .map(|p| topology.route(p))
        .collect();
    let (ready_tx, ready_rx) = mpsc::channel::<bool>();

    let early_consumers = if opts.backlog {
        None
    } else {
        Some(spawn_consumers(
            opts, endpoint, topology, &routes, &shared, &ready_tx,
        )?)
    };
    let producers = spawn_producers(opts, endpoint, &routes, &shared, &ready_tx)?;
    drop(ready_tx);
    let expected_ready = early_consumers.as_ref().map_or(0, Vec::len) + producers.len();
    let all_ready = (0..expected_ready).all(|_| ready_rx.recv().unwrap_or(false));

    let cpu_start = cpu::process_cpu();
    let start_nanos = clock.now_nanos();
    let start = Instant::now();
    if all_ready {
        shared.open_gate(true);
    } else {
        shared.abort();
    }
    let progress = Progress::start(&shared, all_ready && !opts.quiet);

    let producer_results = join_all(producers, &shared);
    if let Ok(results) = &producer_results {
        // Deliveries each queue's consumers must receive in all: each message once on a
        // queue, once per consumer on a stream.
        let reading = topology.reading();
        let mut expected = vec![0u64; topology.queues.len()];
        for (result, route) in results.iter().zip(&routes) {
            for &q in &route.queues {
                expected[q] += route
                    .share(q)
                    .map_or(0, |share| reading.due(share.count(result.published)));
            }
        }
        for (q, (progress, expected)) in shared.queues.iter().zip(expected).enumerate() {
            let readers = topology.readers(q, opts.total_consumers());
            progress
                .expected
                .store(expected * readers, Ordering::Release);
        }
    } else {
        shared.abort();
    }
    let (consumers, consume_start_nanos) = match early_consumers {
        Some(consumers) => (consumers, start_nanos),
        None => {
            // Backlog mode: the queues are full now; the consumers start draining.
            let (ready_tx, ready_rx) = mpsc::channel::<bool>();
            let consumers = spawn_consumers(opts, endpoint, topology, &routes, &shared, &ready_tx)?;
            drop(ready_tx);
            if !(0..consumers.len()).all(|_| ready_rx.recv().unwrap_or(false)) {
                shared.abort();
            }
            (consumers, clock.now_nanos())
        }
    };
    let consumer_results = join_all(consumers, &shared);
    let wall = start.elapsed();
    let cpu_used = cpu::process_cpu()
        .zip(cpu_start)
        .map(|(end, start)| end.since(&start));
    progress.stop();
    let (producer_results, consumer_results) = match (producer_results, consumer_results) {
        (Ok(p), Ok(c)) if all_ready => (p, c),
        (p, c) => {
            let errors = [p.err(), c.err()].into_iter().flatten();
            return Err(pick_error(errors)
                .unwrap_or_else(|| anyhow!("not every connection could be set up")));
        }
    };

    let verdict = verify::verify(
        &routes,
        topology.queues.len(),
        topology.reading(),
        &producer_results,
        &consumer_results,
    );
    let published = verdict.published;
    let publish_time = producer_results
        .iter()
        .map(|p| p.publish_time)
        .max()
        .unwrap_or_default();
    let consumed = verdict.consumed;
    let consumed_bytes = consumer_results.iter().map(|c| c.bytes).sum();
    let consume_time = consumer_results
        .iter()
        .map(|c| c.last_delivery_nanos)
        .max()
        .map(|last| Duration::from_nanos(last.saturating_sub(consume_start_nanos)))
        .unwrap_or_default();
    let mut latency = latency_histogram().context("latency histogram")?;
    for c in &consumer_results {
        latency
            .add(&c.latency)
            .context("merging latency histograms")?;
    }
    let per_msg = |cpu: Option<Duration>, msgs: u64| {
        (msgs > 0).then(|| cpu.map(|c| c.as_secs_f64() * 1e6 / msgs as f64))?
    };
    let producer_cpu = sum_cpu(producer_results.iter().map(|p| p.cpu));
    let consumer_cpu = sum_cpu(consumer_results.iter().map(|c| c.cpu));
    let cpu = cpu_used.map(|c| CpuUse {
        user_secs: c.user.as_secs_f64(),
        system_secs: c.system.as_secs_f64(),
        wall_secs: wall.as_secs_f64(),
        cores: c.total().as_secs_f64() / wall.as_secs_f64().max(1e-9),
        us_per_msg: c.total().as_secs_f64() * 1e6 / (published + consumed).max(1) as f64,
        producer_us_per_msg: per_msg(producer_cpu, published),
        consumer_us_per_msg: per_msg(consumer_cpu, consumed),
    });
    Ok(Report {
        scenario: scenario(opts, endpoint, topology),
        publish: Throughput::new(published, published * opts.size as u64, publish_time),
        consume: Throughput::new(consumed, consumed_bytes, consume_time),
        latency: Latency::from_histogram(&latency),
        cpu,
        publishers_blocked: producer_results.iter().any(|p| p.was_blocked),
        verdict,
    })
}

/// Total CPU of a group of threads; `None` if any is unknown.
fn sum_cpu(cpus: impl Iterator<Item = Option<Duration>>) -> Option<Duration> {
    cpus.sum()
}

/// The plan of consuming connection `index`: consumers `index * k .. (index + 1) * k`
/// of the run (`k` per connection), consumer `j` reading queue `j % queues`. The
/// consumers of a queue share its slot; on a stream each has its own, so that what
/// each received is checked on its own.
fn consumer_plan(
    opts: &Options,
    index: u16,
    topology: &Topology,
    routes: &[Route],
) -> ConsumerPlan {
    let per_connection = usize::from(opts.consumers_per_connection);
    let first = usize::from(index) * per_connection;
    let mut queues: Vec<(usize, String)> = Vec::new();
    let mut consumers = Vec::with_capacity(per_connection);
    for j in first..first + per_connection {
        let q = topology.consumer_queue(j);
        let shared_slot = match topology.reading() {
            Reading::Shared => queues.iter().position(|&(known, _)| known == q),
            Reading::Each { .. } => None,
        };
        let slot = match shared_slot {
            Some(slot) => slot,
            None => {
                queues.push((q, topology.queues[q].clone()));
                queues.len() - 1
            }
        };
        consumers.push(slot);
    }
    let shares = queues
        .iter()
        .map(|&(q, _)| routes.iter().map(|r| r.share(q)).collect())
        .collect();
    ConsumerPlan {
        index,
        queues,
        consumers,
        shares,
        prefetch: opts.prefetch,
        no_ack: opts.no_ack,
        ack_each: opts.ack_each,
        arguments: topology.consume_arguments(),
        producers: usize::from(opts.producers),
        drain_timeout: Duration::from_secs_f64(opts.drain_timeout),
    }
}

fn spawn_consumers(
    opts: &Options,
    endpoint: &Endpoint,
    topology: &Topology,
    routes: &[Route],
    shared: &Arc<Shared>,
    ready: &mpsc::Sender<bool>,
) -> Result<Vec<JoinHandle<Result<ConsumerResult>>>> {
    (0..opts.consumers)
        .map(|index| {
            let plan = consumer_plan(opts, index, topology, routes);
            let (endpoint, shared, ready) = (endpoint.clone(), Arc::clone(shared), ready.clone());
            thread::Builder::new()
                .name(format!("consumer-{index}"))
                .spawn(move || {
                    let conn = consumer::connect(&endpoint, &plan);
                    let _ = ready.send(conn.is_ok());
                    drop(ready);
                    let result = conn
                        .and_then(|conn| consumer::run(conn, &plan, &shared))
                        .with_context(|| format!("consumer {index}"));
                    if result.is_err() {
                        shared.abort();
                    }
                    result
                })
                .context("spawning a consumer thread")
        })
        .collect()
}

fn spawn_producers(
    opts: &Options,
    endpoint: &Endpoint,
    routes: &[Route],
    shared: &Arc<Shared>,
    ready: &mpsc::Sender<bool>,
) -> Result<Vec<JoinHandle<Result<ProducerResult>>>> {
    routes
        .iter()
        .enumerate()
        .map(|(index, route)| {
            let plan = ProducerPlan {
                index: u16::try_from(index).context("too many producers")?,
                route: route.clone(),
                size: opts.size,
                persistent: opts.persistent,
                confirm_window: opts.confirm,
                count: opts.count.unwrap_or(u64::MAX),
                time_limit: opts.publish_time_limit(),
                rate: opts.rate,
                drain_timeout: Duration::from_secs_f64(opts.drain_timeout),
            };
            let (endpoint, shared, ready) = (endpoint.clone(), Arc::clone(shared), ready.clone());
            thread::Builder::new()
                .name(format!("producer-{index}"))
                .spawn(move || {
                    let conn = producer::connect(&endpoint, &plan);
                    let _ = ready.send(conn.is_ok());
                    drop(ready);
                    let conn = conn.with_context(|| format!("producer {index}"))?;
                    if !shared.wait_at_gate() {
                        return Err(Aborted.into());
                    }
                    let result = producer::run(conn, &plan, &shared);
                    if result.is_err() {
                        shared.abort();
                    }
                    result
                })
                .context("spawning a producer thread")
        })
        .collect()
}

/// A thread that stopped because another one failed.
#[derive(Debug)]
struct Aborted;

impl std::fmt::Display for Aborted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("run aborted")
    }
}

impl std::error::Error for Aborted {}

/// The most telling of several errors: the first that is not just [`Aborted`].
fn pick_error(errors: impl IntoIterator<Item = anyhow::Error>) -> Option<anyhow::Error> {
    let mut picked: Option<anyhow::Error> = None;
    for e in errors {
        match &picked {
            Some(p) if !p.is::<Aborted>() => {}
            _ => picked = Some(e),
        }
    }
    picked
}

/// Joins every thread; the most telling error if any failed.
fn join_all<T>(threads: Vec<JoinHandle<Result<T>>>, shared: &Shared) -> Result<Vec<T>> {
    let mut results = Vec::with_capacity(threads.len());
    let mut errors = Vec::new();
    for thread in threads {
        let result = thread
            .join()
            .map_err(|_| anyhow!("a worker thread panicked"))
            .and_then(|r| r);
        match result {
            Ok(value) => results.push(value),
            Err(e) => {
                shared.abort();
                errors.push(e);
            }
        }
    }
    match pick_error(errors) {
        Some(e) => Err(e),
        None => Ok(results),
    }
}

/// A per-run byte carried in every message id, so leftovers of another run are strays.
fn run_nonce() -> u8 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    (nanos ^ std::process::id())
        .to_le_bytes()
        .iter()
        .fold(0u8, |a, &b| a ^ b)
}

fn scenario(opts: &Options, endpoint: &Endpoint, topology: &Topology) -> Scenario {
    Scenario {
        broker: endpoint
            .addrs
            .first()
            .map(ToString::to_string)
            .unwrap_or_default(),
        producers: opts.producers,
        consumers: opts.consumers,
        consumers_per_connection: opts.consumers_per_connection,
        queues: opts.queues,
        stream_offset: topology.stream.map(|offset| offset.to_string()),
        partitions: opts.partitions,
        bindings: opts.bindings,
        exchange: topology.exchange.clone(),
        exchange_type: topology.exchange_type.map(|t| t.as_str().to_string()),
        size: opts.size,
        persistent: opts.persistent,
        confirm: opts.confirm,
        prefetch: opts.prefetch,
        ack: match (opts.no_ack, opts.ack_each) {
            (true, _) => "auto",
            (false, true) => "each",
            (false, false) => "multiple",
        },
        rate: opts.rate,
        count: opts.count,
        time_limit_secs: opts.publish_time_limit().as_secs_f64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn plans(args: &[&str]) -> Vec<ConsumerPlan> {
        let mut all = vec!["warren-perf", "--queue", "q"];
        all.extend_from_slice(args);
        let opts = Options::try_parse_from(all).expect("parses");
        let topology = Topology::plan(&opts).expect("plans");
        let routes: Vec<Route> = (0..usize::from(opts.producers))
            .map(|p| topology.route(p))
            .collect();
        (0..opts.consumers)
            .map(|i| consumer_plan(&opts, i, &topology, &routes))
            .collect()
    }

    #[test]
    fn a_queue_s_consumers_share_a_slot_and_a_stream_s_each_have_one() {
        let args = [
            "--queues",
            "2",
            "-y",
            "2",
            "--consumers-per-connection",
            "3",
        ];
        let queue = plans(&args);
        assert_eq!(queue[0].queues, [(0, "q-0".into()), (1, "q-1".into())]);
        assert_eq!(queue[0].consumers, [0, 1, 0]);
        assert!(queue[0].arguments.inner().is_empty());
        let mut stream_args = vec!["--stream"];
        stream_args.extend(args);
        let stream = plans(&stream_args);
        // Connection 1 has consumers 3, 4, 5: streams 1, 0, 1.
        assert_eq!(
            stream[1].queues,
            [(1, "q-1".into()), (0, "q-0".into()), (1, "q-1".into())]
        );
        assert_eq!(stream[1].consumers, [0, 1, 2]);
        assert_eq!(stream[1].shares.len(), 3);
        assert!(stream[1].arguments.inner().contains_key("x-stream-offset"));
    }
}

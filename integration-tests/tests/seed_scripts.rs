//! The seed document's three pika scripts (`examples-python/`), run unmodified against
//! an in-process Warren on `localhost:5672`, where they connect: on a plain
//! `example_queue`, and on one that a policy partitions (issue 13).
//!
//! This is the only test file that takes port 5672; its tests take turns. It needs the
//! virtualenv `examples-python/.venv` with `requirements.txt` installed (`scripts/test.sh`
//! makes it); if it is missing the test makes it, with `python3 -m venv` and pip.
//!
//! Set `WARREN_SEED_EXTERNAL_BROKER=1` to run the same checks against a broker that
//! already listens on `localhost:5672` (a RabbitMQ node, to compare) instead of starting
//! Warren.
//!
//! The scripts connect to `localhost`; where that resolves to `::1` first, pika tries
//! `::1`, is refused (Warren listens on `0.0.0.0`), and falls back to `127.0.0.1`.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use integration_tests::python::{examples_dir, venv_python};
use integration_tests::wait_for;
use lapin::options::{BasicGetOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use tokio::runtime::Runtime;
use tokio::sync::oneshot;

/// Run against the broker already on `localhost:5672` instead of an in-process Warren.
const EXTERNAL_ENV: &str = "WARREN_SEED_EXTERNAL_BROKER";
/// The queue all three scripts use.
const QUEUE: &str = "example_queue";
/// What `producer.py` sends and the consumers print.
const RECEIVED: &str = "Received b'Hello, World!'";
/// Bound on every wait: a script starting, a message arriving, a process exiting.
const BOUND: Duration = Duration::from_secs(30);

/// The tests of this file take turns on port 5672.
static PORT_5672: Mutex<()> = Mutex::new(());

#[test]
fn seed_scripts_run_unmodified() -> Result<()> {
    with_runtime(run_scripts)
}

/// The seed's recipe for a real consumer group: a policy partitions `example_queue`
/// when the scripts first declare it, and the same unmodified scripts then publish
/// round robin over its partitions and consume it as one group.
#[test]
fn seed_scripts_share_a_policy_partitioned_queue() -> Result<()> {
    if std::env::var_os(EXTERNAL_ENV).is_some() {
        // RabbitMQ has no `partitions` policy key.
        return Ok(());
    }
    with_runtime(run_partitioned)
}

/// Runs `test` with the virtualenv's python and a runtime, holding port 5672.
fn with_runtime(test: impl FnOnce(&Runtime, &Path) -> Result<()>) -> Result<()> {
    let _port = PORT_5672
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let python = venv_python()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = test(&rt, &python);
    // Whatever lapin or the server left running must not hold the test up.
    rt.shutdown_timeout(Duration::from_secs(5));
    result
}

/// Connects the probe's lapin connection to the broker on port 5672.
fn probe(rt: &Runtime) -> Result<Probe<'_>> {
    let connect = lapin::Connection::connect(
        "amqp://guest:guest@127.0.0.1:5672/%2f",
        lapin::ConnectionProperties::default(),
    );
    let conn = bounded(rt, "lapin connecting to 127.0.0.1:5672", connect)?
        .map_err(|e| anyhow!("lapin cannot connect to the broker on 127.0.0.1:5672: {e:?}"))?;
    Ok(Probe { rt, conn })
}

fn run_scripts(rt: &Runtime, python: &Path) -> Result<()> {
    let broker = Broker::start(rt, None)?;
    let probe = probe(rt)?;
    if broker.is_external() {
        // A long-lived broker may hold an example_queue from an earlier run.
        probe.delete_queue()?;
    }

    producer_then_consumer(python, &probe).context("producer.py then consumer.py")?;
    consumer_group(python, &probe).context("two consumer_group.py and two producer.py")?;

    bounded(rt, "connection.close", probe.conn.close(200, "done".into()))??;
    broker.stop(rt)
}

fn run_partitioned(rt: &Runtime, python: &Path) -> Result<()> {
    let broker = Broker::start(rt, Some(r#"{"partitions": 4}"#))?;
    let probe = probe(rt)?;

    // Four producer.py runs: through the default exchange they have no key, so they go
    // round robin, one to each partition, and each get-ok says which.
    for _ in 0..4 {
        let out = run_to_completion(python, "producer.py")?;
        ensure!(out.is_empty(), "producer.py printed {out:?}");
    }
    probe.wait_until("example_queue holds four messages", |q| q == Some((4, 0)))?;
    let partitions = probe.get_partitions(4)?;
    ensure!(
        partitions == [0, 1, 2, 3],
        "one message in each of the policy's 4 partitions, got partitions {partitions:?}"
    );

    producer_then_consumer(python, &probe).context("producer.py then consumer.py")?;
    group_takes_turns(python, &probe).context("two consumer_group.py, producer.py twice")?;

    bounded(rt, "connection.close", probe.conn.close(200, "done".into()))??;
    broker.stop(rt)
}

/// Two `consumer_group.py` members join the queue's group and own two partitions each.
/// A `producer.py` message goes to one partition, so to one member, which prints it and
/// leaves; its partitions pass to the other, which takes the next message. (Two
/// messages published at once could land in two partitions of one member, which with
/// `auto_ack` would take both.)
fn group_takes_turns(python: &Path, probe: &Probe<'_>) -> Result<()> {
    let mut members = vec![
        Script::spawn(python, "consumer_group.py", &[("CONSUMER_GROUP_NAME", "g")])?,
        Script::spawn(python, "consumer_group.py", &[("CONSUMER_GROUP_NAME", "g")])?,
    ];
    let both = probe.wait_until("both consumer_group.py members consume", |q| {
        q == Some((0, 2))
    });
    if let Err(e) = both {
        let report: Vec<String> = members.iter_mut().map(Script::report).collect();
        bail!("{e:#}\n{}", report.join("\n"));
    }
    for left in [1, 0] {
        let out = run_to_completion(python, "producer.py")?;
        ensure!(out.is_empty(), "producer.py printed {out:?}");
        let deadline = Instant::now() + BOUND;
        let mut done = loop {
            if let Some(at) = members
                .iter_mut()
                .position(|m| m.child.try_wait().ok().flatten().is_some())
            {
                break members.remove(at);
            }
            if Instant::now() >= deadline {
                let report: Vec<String> = members.iter_mut().map(Script::report).collect();
                bail!("no member exited within {BOUND:?}\n{}", report.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let status = done.wait_exit()?;
        ensure!(
            status.success() && done.lines == [RECEIVED],
            "the member should print one message and exit 0; {}",
            done.report()
        );
        probe.wait_until("the other member still consumes", |q| q == Some((0, left)))?;
    }
    Ok(())
}

/// Runs `future` on `rt` for at most [`BOUND`].
fn bounded<F: std::future::Future>(rt: &Runtime, what: &str, future: F) -> Result<F::Output> {
    rt.block_on(async { tokio::time::timeout(BOUND, future).await })
        .map_err(|_| anyhow!("{what}: no answer within {BOUND:?}"))
}

/// `producer.py` publishes one persistent message; `consumer.py`, started afterwards,
/// prints it and keeps consuming until killed.
fn producer_then_consumer(python: &Path, probe: &Probe<'_>) -> Result<()> {
    let out = run_to_completion(python, "producer.py")?;
    ensure!(out.is_empty(), "producer.py printed {out:?}");
    probe.wait_until("example_queue holds the published message", |q| {
        q == Some((1, 0))
    })?;

    let mut consumer = Script::spawn(python, "consumer.py", &[])?;
    consumer.wait_for_line("Waiting for messages...")?;
    consumer.wait_for_line(RECEIVED)?;
    ensure!(
        consumer.lines == ["Waiting for messages...", RECEIVED],
        "consumer.py printed {:?}",
        consumer.lines
    );
    let still_running = consumer.child.try_wait()?.is_none();
    ensure!(still_running, "consumer.py should consume until killed");
    consumer.kill();

    // Its consumer must be gone before the group's two are counted.
    probe.wait_until("example_queue is empty with no consumer", |q| {
        q == Some((0, 0))
    })
}

/// Two `consumer_group.py` members share the queue: with both consuming, two
/// `producer.py` runs give each member one message, after which each exits 0.
fn consumer_group(python: &Path, probe: &Probe<'_>) -> Result<()> {
    let members = [
        Script::spawn(python, "consumer_group.py", &[("CONSUMER_GROUP_NAME", "g")])?,
        Script::spawn(python, "consumer_group.py", &[("CONSUMER_GROUP_NAME", "g")])?,
    ];
    let both = probe.wait_until("both consumer_group.py members consume", |q| {
        q == Some((0, 2))
    });
    if let Err(e) = both {
        let report: Vec<String> = members.into_iter().map(|mut m| m.report()).collect();
        bail!("{e:#}\n{}", report.join("\n"));
    }

    for _ in 0..2 {
        let out = run_to_completion(python, "producer.py")?;
        ensure!(out.is_empty(), "producer.py printed {out:?}");
    }
    for mut member in members {
        let status = member.wait_exit()?;
        ensure!(
            status.success() && member.lines == [RECEIVED],
            "each member should print one message and exit 0; {}",
            member.report()
        );
    }
    probe.wait_until("example_queue is empty with no consumer", |q| {
        q == Some((0, 0))
    })
}

/// Runs a script that should finish on its own; returns its stdout lines.
fn run_to_completion(python: &Path, script: &str) -> Result<Vec<String>> {
    let mut run = Script::spawn(python, script, &[])?;
    let status = run.wait_exit()?;
    ensure!(status.success(), "{} failed; {}", script, run.report());
    Ok(std::mem::take(&mut run.lines))
}

/// A script running as a child process, its stdout read line by line.
struct Script {
    name: String,
    child: Child,
    stdout: Receiver<String>,
    stderr: Option<JoinHandle<String>>,
    /// The stdout lines read so far.
    lines: Vec<String>,
}

impl Script {
    fn spawn(python: &Path, script: &str, env: &[(&str, &str)]) -> Result<Script> {
        let mut child = Command::new(python)
            .arg(script)
            .current_dir(examples_dir())
            // Stdout is a pipe: without this, print() output sits in Python's buffer.
            .env("PYTHONUNBUFFERED", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("start {script}"))?;
        let (tx, stdout) = mpsc::channel();
        let out = child.stdout.take().context("child stdout")?;
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut err = child.stderr.take().context("child stderr")?;
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = err.read_to_string(&mut text);
            text
        });
        Ok(Script {
            name: script.to_owned(),
            child,
            stdout,
            stderr: Some(stderr),
            lines: Vec::new(),
        })
    }

    /// Reads stdout until `expected` is a whole line, within [`BOUND`].
    fn wait_for_line(&mut self, expected: &str) -> Result<()> {
        let deadline = Instant::now() + BOUND;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) => {
                    let found = line == expected;
                    self.lines.push(line);
                    if found {
                        return Ok(());
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    bail!(
                        "no line {expected:?} within {BOUND:?} from {}",
                        self.report()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    bail!("ended without printing {expected:?}: {}", self.report())
                }
            }
        }
    }

    /// Waits for the process to exit within [`BOUND`], then collects all its stdout.
    fn wait_exit(&mut self) -> Result<ExitStatus> {
        let deadline = Instant::now() + BOUND;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() >= deadline {
                self.kill();
                bail!("no exit within {BOUND:?} from {}", self.report());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.drain_stdout();
        Ok(status)
    }

    /// Reads what is left on stdout once the process is gone.
    fn drain_stdout(&mut self) {
        while let Ok(line) = self.stdout.recv_timeout(Duration::from_secs(5)) {
            self.lines.push(line);
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Name, exit status, stdout and stderr, for failure messages.
    /// Kills the process if it still runs.
    fn report(&mut self) -> String {
        let status = match self.child.try_wait() {
            Ok(Some(status)) => status.to_string(),
            _ => {
                self.kill();
                "none (killed, it was still running)".to_owned()
            }
        };
        self.drain_stdout();
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        format!(
            "{}: exit {status}, stdout {:?}, stderr:\n{stderr}",
            self.name, self.lines
        )
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Looks at `example_queue` through lapin, as any client could.
struct Probe<'a> {
    rt: &'a Runtime,
    conn: lapin::Connection,
}

impl Probe<'_> {
    /// (messages, consumers) of `example_queue` from a passive declare; `None` while the
    /// queue does not exist (or the broker does not answer within a few seconds).
    async fn counts(conn: &lapin::Connection) -> Option<(u32, u32)> {
        tokio::time::timeout(Duration::from_secs(5), Self::declare_passive(conn))
            .await
            .ok()
            .flatten()
    }

    async fn declare_passive(conn: &lapin::Connection) -> Option<(u32, u32)> {
        let channel = conn.create_channel().await.ok()?;
        let declared = channel
            .queue_declare(
                QUEUE.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        // After a 404 the broker has closed the channel already.
        if declared.is_ok() {
            let _ = channel.close(200, "probe done".into()).await;
        }
        declared
            .ok()
            .map(|q| (q.message_count(), q.consumer_count()))
    }

    /// Polls the queue's counts until `holds` accepts them, within [`BOUND`].
    fn wait_until(&self, what: &str, holds: impl Fn(Option<(u32, u32)>) -> bool) -> Result<()> {
        let conn = &self.conn;
        let holds = &holds;
        let held = self.rt.block_on(wait_for(BOUND, || async move {
            holds(Self::counts(conn).await)
        }));
        if !held {
            let last = self.rt.block_on(Self::counts(conn));
            bail!("{what}: not within {BOUND:?}; (messages, consumers) is {last:?}");
        }
        Ok(())
    }

    /// Takes `n` messages with `basic.get` (no-ack) and returns their `x-partition`s.
    fn get_partitions(&self, n: usize) -> Result<Vec<i64>> {
        let take = async {
            let channel = self.conn.create_channel().await?;
            let mut partitions = Vec::with_capacity(n);
            for _ in 0..n {
                let message = channel
                    .basic_get(QUEUE.into(), BasicGetOptions { no_ack: true })
                    .await?
                    .ok_or_else(|| anyhow!("get-empty"))?;
                let headers = message.delivery.properties.headers().clone();
                match headers.as_ref().and_then(|h| h.inner().get("x-partition")) {
                    Some(AMQPValue::LongLongInt(p)) => partitions.push(*p),
                    other => bail!("x-partition should be a long, got {other:?}"),
                }
            }
            channel.close(200, "done".into()).await?;
            Ok(partitions)
        };
        bounded(self.rt, "basic.get", take)?
    }

    fn delete_queue(&self) -> Result<()> {
        let delete = async {
            let channel = self.conn.create_channel().await?;
            channel
                .queue_delete(QUEUE.into(), QueueDeleteOptions::default())
                .await?;
            channel.close(200, "done".into()).await
        };
        bounded(self.rt, "queue.delete", delete)??;
        Ok(())
    }
}

/// Warren on `0.0.0.0:5672` with a fresh data directory, or nothing when
/// [`EXTERNAL_ENV`] says another broker is there.
struct Broker {
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    data_dir: Option<PathBuf>,
    policies: Option<PathBuf>,
}

impl Broker {
    /// Starts Warren; with `example_queue_policy`, a policy of that definition applies to
    /// `example_queue`.
    fn start(rt: &Runtime, example_queue_policy: Option<&str>) -> Result<Broker> {
        if std::env::var_os(EXTERNAL_ENV).is_some() {
            return Ok(Broker {
                stop: None,
                task: None,
                data_dir: None,
                policies: None,
            });
        }
        let data_dir = std::env::temp_dir().join(integration_tests::unique_name("warren-seed"));
        let policies = match example_queue_policy {
            Some(definition) => {
                let file = data_dir.with_extension("policies.json");
                std::fs::write(
                    &file,
                    format!(
                        r#"{{"policies": [{{"vhost": "/", "name": "seed", "pattern": "^{QUEUE}$",
                            "apply-to": "queues", "priority": 0, "definition": {definition}}}]}}"#
                    ),
                )
                .context("write the policy file")?;
                Some(file)
            }
            None => None,
        };
        let config = warren::Config {
            bind: "0.0.0.0".parse()?,
            port: 5672,
            data_dir: data_dir.clone(),
            policies: policies.clone(),
            ..Default::default()
        };
        let listener = rt
            .block_on(tokio::net::TcpListener::bind((config.bind, config.port)))
            .with_context(|| {
                format!(
                    "bind 0.0.0.0:5672, where the seed scripts connect: is another broker \
                     running there? (set {EXTERNAL_ENV}=1 to test against it)"
                )
            })?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = rt.spawn(warren::server::run(listener, Arc::new(config), async {
            let _ = stopped.await;
        }));
        Ok(Broker {
            stop: Some(stop),
            task: Some(task),
            data_dir: Some(data_dir),
            policies,
        })
    }

    fn is_external(&self) -> bool {
        self.task.is_none()
    }

    /// Stops Warren gracefully; its `run` must return Ok.
    fn stop(mut self, rt: &Runtime) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let ended = bounded(rt, "warren::server::run stopping", task)?;
            ended.context("the server task panicked")??;
        }
        Ok(())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(dir) = self.data_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
        if let Some(file) = self.policies.take() {
            let _ = std::fs::remove_file(file);
        }
    }
}

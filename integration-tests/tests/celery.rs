//! Celery against Warren: a Celery worker (the release pinned in
//! `examples-python/requirements.txt`) runs the tasks a client sends, returns their
//! results and a task's exception through the `rpc://` result backend, publishes task
//! events, and answers `celery inspect ping`.
//!
//! The app and the client are `examples-python/celery_app/`. Warren runs in process on a
//! free loopback port; the worker, the client and `celery inspect` are Python processes
//! from the virtualenv `examples-python/.venv` (`scripts/test.sh` makes it; if celery is
//! missing there, this test installs `requirements.txt` into it). The events are watched
//! from here with lapin, on a queue bound to Celery's `celeryev` topic exchange, as
//! `celery events` or Flower would watch them.
//!
//! Set `WARREN_TEST_EXTERNAL_URI` to run the same checks against another broker, such as
//! a RabbitMQ node.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use futures_lite::StreamExt;
use integration_tests::python::{examples_dir, venv_python};
use integration_tests::{TestServer, unique_name, wait_for};
use lapin::ExchangeKind;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use serde_json::Value;
use tokio::runtime::Runtime;

/// Bound on every wait: the worker coming up (a cold Python start on a busy machine),
/// the results, the events, a process exiting.
const BOUND: Duration = Duration::from_secs(60);
/// How many `add` tasks the client sends (it sends one `fail` task besides).
const TASKS: usize = 20;
/// What the `fail` task raises, and so what the client must print.
const FAILURE_LINE: &str = "fail raised ValueError('boom from celery_app.fail')";

#[test]
fn celery_worker_runs_tasks_with_rpc_results_and_events_and_answers_ping() -> Result<()> {
    let python = venv_python()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = run_celery(&rt, &python);
    // Whatever lapin or the server left running must not hold the test up.
    rt.shutdown_timeout(Duration::from_secs(5));
    result
}

fn run_celery(rt: &Runtime, python: &Path) -> Result<()> {
    let server = rt.block_on(TestServer::start());
    let broker_url = server.uri().to_owned();
    let events = rt
        .block_on(EventWatcher::start(&server))
        .context("watch the celeryev exchange")?;
    let node = format!("warren-celery-{}@localhost", std::process::id());

    let mut worker = Worker::start(python, &broker_url, &node)?;
    let checks = worker_checks(rt, python, &broker_url, &node, &events, &mut worker);
    if let Err(e) = checks {
        bail!("{e:#}\n{}", worker.report());
    }
    let status = worker.terminate()?;
    if !status.success() {
        bail!(
            "the worker exited with {status} after SIGTERM\n{}",
            worker.report()
        );
    }
    events.wait_until(rt, "worker-offline after SIGTERM", |seen| {
        seen.node_sent(&node, "worker-offline")
    })?;

    rt.block_on(events.close())?;
    rt.block_on(server.stop());
    Ok(())
}

/// Everything checked while the worker runs.
fn worker_checks(
    rt: &Runtime,
    python: &Path,
    broker_url: &str,
    node: &str,
    events: &EventWatcher,
    worker: &mut Worker,
) -> Result<()> {
    wait_for_pong(python, broker_url, node, worker).context("the worker coming up")?;
    events.wait_until(rt, "worker-online", |seen| {
        seen.node_sent(node, "worker-online")
    })?;

    let client = run_bounded(
        celery_python(python, broker_url)
            .args(["-m", "celery_app.client", "--count", &TASKS.to_string()])
            .args(["--timeout", &BOUND.as_secs().to_string()]),
        "python -m celery_app.client",
    )?;
    ensure!(client.status.success(), "the client failed: {client}");
    for i in 0..TASKS {
        let line = format!("add({i}, {}) = {}", 10 * i, 11 * i);
        ensure!(
            client.lines().any(|l| l == line),
            "no line {line:?} from the client: {client}"
        );
    }
    ensure!(
        client.lines().any(|l| l == FAILURE_LINE),
        "the client did not see the task's ValueError: {client}"
    );

    // Every task the client sent was announced, received, started and finished.
    events.wait_until(rt, "the task events of every task", |seen| {
        let sent = seen.task_ids("task-sent");
        sent.len() == TASKS + 1
            && ["task-received", "task-started"]
                .iter()
                .all(|kind| seen.task_ids(kind) == sent)
            && seen.task_ids("task-succeeded").len() == TASKS
            && seen.task_ids("task-failed").len() == 1
            && seen
                .task_ids("task-succeeded")
                .is_disjoint(&seen.task_ids("task-failed"))
            && seen
                .task_ids("task-succeeded")
                .union(&seen.task_ids("task-failed"))
                .eq(sent.iter())
    })?;

    // Still answering after the work, with this node's pong.
    let ping = ping(python, broker_url, node)?;
    ensure!(
        is_pong(&ping, node),
        "celery inspect ping did not get {node}'s pong: {ping}"
    );
    Ok(())
}

/// Runs `celery inspect ping` until the worker answers it, within [`BOUND`]; each try
/// waits a second for replies, so this polls no faster than that.
fn wait_for_pong(python: &Path, broker_url: &str, node: &str, worker: &mut Worker) -> Result<()> {
    let deadline = Instant::now() + BOUND;
    loop {
        if let Some(status) = worker.child.try_wait()? {
            bail!("the worker exited with {status} before answering a ping");
        }
        let ping = ping(python, broker_url, node)?;
        if is_pong(&ping, node) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("no pong from {node} within {BOUND:?}; the last ping: {ping}");
        }
    }
}

/// `celery inspect ping` addressed to `node`, waiting one second for its reply.
fn ping(python: &Path, broker_url: &str, node: &str) -> Result<Output> {
    run_bounded(
        celery_python(python, broker_url)
            .args(["-m", "celery", "-A", "celery_app", "inspect", "ping"])
            .args(["--timeout", "1", "--json", "--destination", node]),
        "celery inspect ping",
    )
}

/// Whether `celery inspect ping --json` printed `{"<node>": {"ok": "pong"}}`.
fn is_pong(ping: &Output, node: &str) -> bool {
    ping.status.success()
        && ping.lines().any(|line| {
            serde_json::from_str::<Value>(line)
                .is_ok_and(|v| v.get(node).and_then(|r| r.get("ok")) == Some(&"pong".into()))
        })
}

/// The venv's python in `examples-python/` (where `celery_app` imports from), pointed
/// at the broker.
fn celery_python(python: &Path, broker_url: &str) -> Command {
    let mut command = Command::new(python);
    command
        .current_dir(examples_dir())
        .env("CELERY_BROKER_URL", broker_url)
        // Output goes to a pipe or a file: without this, it sits in Python's buffer.
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null());
    command
}

/// A finished process: how it ended and what it printed.
struct Output {
    what: String,
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Output {
    fn lines(&self) -> impl Iterator<Item = &str> {
        self.stdout.lines()
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}, stdout:\n{}stderr:\n{}",
            self.what, self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `command` to completion within [`BOUND`], killing it if it takes longer.
fn run_bounded(command: &mut Command, what: &str) -> Result<Output> {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {what}"))?;
    let stdout = read_all(child.stdout.take().context("child stdout")?);
    let stderr = read_all(child.stderr.take().context("child stderr")?);
    let status = wait_bounded(&mut child)?;
    let output = Output {
        what: what.to_owned(),
        status: status.unwrap_or_else(|| {
            let _ = child.kill();
            child.wait().expect("reap a killed child")
        }),
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    };
    ensure!(status.is_some(), "no exit within {BOUND:?} from {output}");
    Ok(output)
}

fn read_all(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}

/// Waits up to [`BOUND`] for `child` to exit; `None` if it is still running.
fn wait_bounded(child: &mut Child) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + BOUND;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `celery worker` running in the background, its output going to a log file (which
/// failure messages quote, and which goes with the worker).
struct Worker {
    child: Child,
    log: PathBuf,
}

impl Worker {
    /// Starts a worker named `node`: the solo pool (tasks run in the worker's main
    /// process, the lightest choice for a test), task events on (`-E`).
    fn start(python: &Path, broker_url: &str, node: &str) -> Result<Worker> {
        let log = std::env::temp_dir().join(format!("{}.log", unique_name("celery-worker")));
        let out = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let child = celery_python(python, broker_url)
            .args(["-m", "celery", "-A", "celery_app", "worker"])
            .args(["--pool=solo", "-E", "--loglevel=info", "--hostname", node])
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("start celery worker")?;
        Ok(Worker { child, log })
    }

    /// Sends SIGTERM (Celery's warm shutdown) and waits, within [`BOUND`], for the
    /// worker to exit.
    fn terminate(&mut self) -> Result<ExitStatus> {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .context("run kill -TERM")?;
        ensure!(sent.success(), "kill -TERM {} failed", self.child.id());
        match wait_bounded(&mut self.child)? {
            Some(status) => Ok(status),
            None => bail!(
                "the worker did not exit within {BOUND:?} of SIGTERM\n{}",
                self.report()
            ),
        }
    }

    /// The worker's state and log, for failure messages; kills it if it still runs.
    fn report(&mut self) -> String {
        let status = match self.child.try_wait() {
            Ok(Some(status)) => status.to_string(),
            _ => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                "still running (killed now)".to_owned()
            }
        };
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        format!("celery worker: {status}; its log:\n{log}")
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// The events seen on `celeryev`: for each event type, the task ids (for task events)
/// and hostnames (for all) it came with.
#[derive(Default, Debug)]
struct Seen {
    tasks: BTreeMap<String, BTreeSet<String>>,
    nodes: BTreeMap<String, BTreeSet<String>>,
}

impl Seen {
    /// Records one event, a JSON object with at least `type`.
    fn record(&mut self, event: &Value) {
        let Some(kind) = event.get("type").and_then(Value::as_str) else {
            return;
        };
        if let Some(id) = event.get("uuid").and_then(Value::as_str) {
            self.tasks
                .entry(kind.to_owned())
                .or_default()
                .insert(id.to_owned());
        }
        if let Some(host) = event.get("hostname").and_then(Value::as_str) {
            self.nodes
                .entry(kind.to_owned())
                .or_default()
                .insert(host.to_owned());
        }
    }

    /// The ids of the tasks that `kind` events were seen for.
    fn task_ids(&self, kind: &str) -> BTreeSet<String> {
        self.tasks.get(kind).cloned().unwrap_or_default()
    }

    /// Whether `node` sent a `kind` event.
    fn node_sent(&self, node: &str, kind: &str) -> bool {
        self.nodes
            .get(kind)
            .is_some_and(|hosts| hosts.contains(node))
    }
}

/// A lapin consumer on a private queue bound to every key of the `celeryev` exchange.
struct EventWatcher {
    conn: lapin::Connection,
    seen: Arc<Mutex<Seen>>,
}

impl EventWatcher {
    async fn start(server: &TestServer) -> Result<EventWatcher> {
        let conn = server.connect().await;
        let channel = conn.create_channel().await?;
        // As Celery declares it (kombu's defaults: durable, not auto-delete), so that
        // whichever of us comes first, the other's declare matches.
        channel
            .exchange_declare(
                "celeryev".into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_bind(
                queue.name().as_str().into(),
                "celeryev".into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let mut consumer = channel
            .basic_consume(
                queue.name().as_str().into(),
                "celery-events".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let record = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                // One event, or a batch of them (`task.multi`) from the worker's buffer.
                let Ok(body) = serde_json::from_slice::<Value>(&delivery.data) else {
                    continue;
                };
                let mut seen = record.lock().expect("events lock");
                match &body {
                    Value::Array(batch) => batch.iter().for_each(|e| seen.record(e)),
                    event => seen.record(event),
                }
            }
        });
        Ok(EventWatcher { conn, seen })
    }

    /// Waits, within [`BOUND`], until the events seen satisfy `holds`.
    fn wait_until(&self, rt: &Runtime, what: &str, holds: impl Fn(&Seen) -> bool) -> Result<()> {
        let seen = &self.seen;
        let holds = &holds;
        let held = rt.block_on(wait_for(BOUND, || async move {
            holds(&seen.lock().expect("events lock"))
        }));
        if !held {
            let seen = self.seen.lock().expect("events lock");
            let counts: BTreeMap<_, _> = seen.tasks.iter().map(|(k, v)| (k, v.len())).collect();
            bail!(
                "{what}: not seen on celeryev within {BOUND:?}; task ids per event type: \
                 {counts:?}; hostnames per event type: {:?}",
                seen.nodes
            );
        }
        Ok(())
    }

    async fn close(self) -> Result<()> {
        tokio::time::timeout(BOUND, self.conn.close(200, "done".into()))
            .await
            .map_err(|_| anyhow!("connection.close: no answer within {BOUND:?}"))??;
        Ok(())
    }
}

//! `warren ctl`: administration of a running broker over a Unix socket, with
//! `rabbitmqctl`'s verbs. Who may use it is decided by the file system: the socket is
//! made readable and writable by its owner only (the broker's user), so there is no
//! shared secret like Erlang's cookie.
//!
//! The protocol is one JSON line each way. The client sends the verb and its
//! arguments as given on its command line, with the vhost of `-p`; the broker answers
//! with rows (a list of objects) or an error text. The client prints the rows as a
//! table, as JSON, or not at all.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use crate::admin::AdminError;
use crate::broker::Broker;
use crate::management::{self, auth::Caller};
use crate::store::definitions::{PermissionDef, PolicyDef, TopicPermissionDef};

/// The socket's file name in the data directory.
pub const SOCKET_NAME: &str = "warren.sock";

/// One request: a verb and its arguments, and the vhost of `-p`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    /// The verb and its arguments.
    pub args: Vec<String>,
    /// The vhost (`-p`; `/` by default).
    #[serde(default = "default_vhost")]
    pub vhost: String,
}

fn default_vhost() -> String {
    "/".to_owned()
}

/// The answer: rows, or why not.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Response {
    /// Rows of the answer (empty for a change).
    #[serde(default)]
    pub rows: Vec<Value>,
    /// The rows' columns in `rabbitmqctl`'s order (or as asked); empty: by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<String>,
    /// What went wrong, as `rabbitmqctl` says it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Where the socket of a broker with data directory `data_dir` is.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_NAME)
}

/// Makes the socket at `path`, usable by its owner only (a stale one is replaced).
///
/// # Errors
/// The socket could not be made.
pub fn listen(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    tracing::info!(socket = %path.display(), "accepting warren ctl");
    Ok(listener)
}

/// Serves `warren ctl` on `listener` until the broker goes: one task per client, one
/// request per line.
///
/// # Errors
/// Accepting failed.
pub async fn serve(
    listener: tokio::net::UnixListener,
    broker: std::sync::Weak<Broker>,
) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        // Only the broker's own user (or root): the socket's mode says so too, but a
        // client could connect in the moment between its creation and its chmod.
        let uid = rustix::process::getuid().as_raw();
        let peer = stream.peer_cred().map(|c| c.uid());
        if !matches!(peer, Ok(p) if p == uid || p == 0) {
            tracing::warn!(peer_uid = ?peer.ok(), "warren ctl refused a client of another user");
            continue;
        }
        let Some(broker) = broker.upgrade() else {
            return Ok(());
        };
        tokio::spawn(async move {
            let (reader, mut writer) = stream.into_split();
            let mut lines = tokio::io::BufReader::new(reader).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let response = match serde_json::from_str::<Request>(&line) {
                    Ok(request) => answer(&broker, request).await,
                    Err(e) => Response {
                        error: Some(format!("unreadable request: {e}")),
                        ..Response::default()
                    },
                };
                let mut out = serde_json::to_vec(&response).unwrap_or_default();
                out.push(b'\n');
                if writer.write_all(&out).await.is_err() {
                    break;
                }
            }
        });
    }
}

/// Carries out one request; a change is answered once it is durable.
async fn answer(broker: &Arc<Broker>, request: Request) -> Response {
    let vhost = request.vhost.as_str();
    let args: Vec<&str> = request.args.iter().map(String::as_str).collect();
    tracing::info!(verb = args.first().copied().unwrap_or(""), "warren ctl");
    let result = run(broker, &args, vhost);
    let durable = match &result {
        Ok(Answer::Changed) => broker.commit_definitions().await,
        _ => true,
    };
    match result {
        Ok(Answer::Rows(rows)) => Response {
            rows,
            ..Response::default()
        },
        Ok(Answer::Table(columns, rows)) => Response {
            rows,
            columns,
            error: None,
        },
        Ok(Answer::Changed) if durable => Response::default(),
        Ok(Answer::Changed) => Response {
            error: Some("the change was made but could not be made durable".into()),
            ..Response::default()
        },
        Err(error) => Response {
            error: Some(error),
            ..Response::default()
        },
    }
}

enum Answer {
    Rows(Vec<Value>),
    /// Rows with their columns in order.
    Table(Vec<String>, Vec<Value>),
    Changed,
}

/// `answer`'s rows with columns in `order` (as `rabbitmqctl` prints them), then any
/// others by name.
fn in_order(answer: Answer, order: &[&str]) -> Answer {
    let Answer::Rows(rows) = answer else {
        return answer;
    };
    let mut columns: Vec<String> = order.iter().map(|&c| c.to_owned()).collect();
    if let Some(Value::Object(first)) = rows.first() {
        columns.extend(
            first
                .keys()
                .filter(|k| !order.contains(&k.as_str()))
                .cloned(),
        );
    }
    Answer::Table(columns, rows)
}

fn usage(verb: &str, shape: &str) -> String {
    format!("usage: warren ctl {verb} {shape}")
}

fn rows<T: Serialize>(items: Vec<T>) -> Answer {
    Answer::Rows(
        items
            .into_iter()
            .filter_map(|i| serde_json::to_value(i).ok())
            .collect(),
    )
}

/// `rabbitmqctl`'s column names that differ from the management API's fields.
const COLUMN_ALIASES: &[(&str, &str)] = &[
    ("source_name", "source"),
    ("destination_name", "destination"),
    ("destination_kind", "destination_type"),
    ("queue_name", "queue.name"),
    ("channel_pid", "channel_details.name"),
    ("pid", "name"),
];

/// `items` cut to `asked` columns (or `default`), named as asked.
fn columns(items: Vec<Value>, asked: &[&str], default: &[&str]) -> Answer {
    let wanted = if asked.is_empty() { default } else { asked };
    let names = wanted.iter().map(|&c| c.to_owned()).collect();
    let rows = items
        .iter()
        .map(|item| {
            let mut row = serde_json::Map::new();
            for &column in wanted {
                let path = COLUMN_ALIASES
                    .iter()
                    .find(|(alias, _)| *alias == column)
                    .map_or(column, |(_, path)| path);
                let value = path
                    .split('.')
                    .try_fold(item, |v, key| v.get(key))
                    .cloned()
                    .unwrap_or(Value::Null);
                row.insert(column.to_owned(), value);
            }
            Value::Object(row)
        })
        .collect();
    Answer::Table(names, rows)
}

/// Each partition of each queue's consumer groups, one row per partition.
fn consumer_groups(broker: &Broker, vhost: &str) -> Vec<Value> {
    let mut rows = Vec::new();
    let Some(host) = broker.vhost(vhost) else {
        return rows;
    };
    for queue in host.queues() {
        let name = queue.name().to_string();
        if let Some(group) = queue.group_snapshot() {
            for p in &group.partition_states {
                rows.push(json!({
                    "queue": name,
                    "group": group.group.clone().unwrap_or_default(),
                    "partition": p.index,
                    "owners": p.owners,
                    "draining": p.draining_to.is_some(),
                    "depth": p.depth,
                    "unacked": p.unacked,
                    "lag": p.depth,
                }));
            }
        }
        for group in queue.stream_groups() {
            for p in &group.partitions {
                rows.push(json!({
                    "queue": name,
                    "group": group.group,
                    "partition": p.index,
                    "owners": p.owner.into_iter().collect::<Vec<_>>(),
                    "draining": p.owner.is_some() && p.reading.is_none(),
                    "depth": p.end,
                    "unacked": p.unsettled,
                    "lag": p.lag,
                }));
            }
        }
    }
    rows
}

/// The verbs, as `rabbitmqctl` takes them.
fn run(broker: &Arc<Broker>, args: &[&str], vhost: &str) -> Result<Answer, String> {
    let admin = || Caller::local_administrator(broker.clone());
    let changed =
        |r: Result<(), AdminError>| r.map(|()| Answer::Changed).map_err(|e| e.to_string());
    match args {
        ["status"] => Ok(Answer::Rows(vec![json!({
            "product": "Warren",
            "version": env!("CARGO_PKG_VERSION"),
            "vhosts": broker.list_vhosts().len(),
            "users": broker.list_users().len(),
        })])),
        ["await_startup"] => Ok(Answer::Rows(Vec::new())),
        ["add_user", user, password] => changed(broker.add_user(user, password, Vec::new())),
        ["add_user", ..] => Err(usage("add_user", "<username> <password>")),
        ["delete_user", user] => changed(broker.delete_user(user)),
        ["change_password", user, password] => changed(broker.change_password(user, password)),
        ["set_user_tags", user, tags @ ..] => {
            changed(broker.set_user_tags(user, tags.iter().map(|t| (*t).to_owned()).collect()))
        }
        ["list_users"] => Ok(in_order(rows(broker.list_users()), &["user", "tags"])),
        ["add_vhost", name] => changed(broker.add_vhost(name, "")),
        ["add_vhost", name, "--description", description] => {
            changed(broker.add_vhost(name, description))
        }
        ["delete_vhost", name] => changed(broker.delete_vhost(name)),
        ["list_vhosts"] => Ok(Answer::Rows(
            broker
                .list_vhosts()
                .into_iter()
                .map(|name| json!({ "name": name }))
                .collect(),
        )),
        ["set_permissions", user, configure, write, read] => {
            changed(broker.set_permissions(PermissionDef {
                user: (*user).to_owned(),
                vhost: vhost.to_owned(),
                configure: (*configure).to_owned(),
                write: (*write).to_owned(),
                read: (*read).to_owned(),
            }))
        }
        ["set_permissions", ..] => Err(usage(
            "set_permissions",
            "[-p <vhost>] <username> <conf> <write> <read>",
        )),
        ["clear_permissions", user] => changed(broker.clear_permissions(user, vhost)),
        ["list_permissions"] => Ok(in_order(
            rows(broker.list_permissions(Some(vhost))),
            &["user", "configure", "write", "read"],
        )),
        ["list_user_permissions", user] => {
            let mut all = broker.list_permissions(None);
            all.retain(|p| p.user == *user);
            Ok(in_order(
                rows(all),
                &["vhost", "configure", "write", "read"],
            ))
        }
        ["set_topic_permissions", user, exchange, write, read] => {
            changed(broker.set_topic_permissions(TopicPermissionDef {
                user: (*user).to_owned(),
                vhost: vhost.to_owned(),
                exchange: (*exchange).to_owned(),
                write: (*write).to_owned(),
                read: (*read).to_owned(),
            }))
        }
        ["clear_topic_permissions", user] => {
            changed(broker.clear_topic_permissions(user, vhost, None))
        }
        ["clear_topic_permissions", user, exchange] => {
            changed(broker.clear_topic_permissions(user, vhost, Some(exchange)))
        }
        ["list_topic_permissions"] => Ok(in_order(
            rows(broker.list_topic_permissions(Some(vhost))),
            &["user", "exchange", "write", "read"],
        )),
        ["set_vhost_limits", json] => changed(broker.set_vhost_limits(vhost, json)),
        ["clear_vhost_limits"] => changed(broker.set_vhost_limits(vhost, "{}")),
        ["list_vhost_limits"] => Ok(in_order(
            Answer::Rows(broker.list_vhost_limits(Some(vhost))),
            &["vhost", "limits"],
        )),
        ["list_vhost_limits", "--global"] => Ok(in_order(
            Answer::Rows(broker.list_vhost_limits(None)),
            &["vhost", "limits"],
        )),
        ["set_user_limits", user, json] => changed(broker.set_user_limits(user, json)),
        ["clear_user_limits", user, "all"] => changed(broker.set_user_limits(user, "{}")),
        ["clear_user_limits", user, name] => changed(broker.change_user_limit(user, name, None)),
        ["list_user_limits"] => Ok(in_order(
            Answer::Rows(broker.list_user_limits()),
            &["user", "limits"],
        )),
        ["set_policy", ..] => set_policy(broker, &args[1..], vhost, false),
        ["clear_policy", name] => changed(broker.clear_policy(vhost, name)),
        ["list_policies"] => Ok(policy_rows(broker.list_policies(Some(vhost)))),
        ["set_operator_policy", ..] => set_policy(broker, &args[1..], vhost, true),
        ["clear_operator_policy", name] => changed(broker.clear_operator_policy(vhost, name)),
        ["list_operator_policies"] => Ok(policy_rows(broker.list_operator_policies(Some(vhost)))),
        ["set_global_parameter", name, value] => {
            let value = serde_json::from_str(value)
                .map_err(|e| format!("JSON decoding error. Reason: {e}"))?;
            broker.set_global_parameter(name, value);
            Ok(Answer::Changed)
        }
        ["clear_global_parameter", name] => changed(broker.clear_global_parameter(name)),
        ["list_global_parameters"] => Ok(in_order(
            Answer::Rows(
                broker
                    .list_global_parameters()
                    .into_iter()
                    .map(|p| json!({ "name": p.name, "value": p.value.to_string() }))
                    .collect(),
            ),
            &["name", "value"],
        )),
        ["export_definitions"] => serde_json::to_value(broker.export_definitions())
            .map(|v| Answer::Rows(vec![v]))
            .map_err(|e| e.to_string()),
        ["import_definitions", text] => changed(broker.import_definitions(text)),
        ["list_queues", asked @ ..] => Ok(columns(
            management::queues::visible(&admin(), Some(vhost)),
            asked,
            &["name", "messages"],
        )),
        ["list_exchanges", asked @ ..] => Ok(columns(
            management::exchanges::visible(&admin(), Some(vhost)),
            asked,
            &["name", "type"],
        )),
        ["list_bindings", asked @ ..] => Ok(columns(
            management::bindings::visible(&admin(), Some(vhost)),
            asked,
            &[
                "source_name",
                "destination_name",
                "destination_kind",
                "routing_key",
                "arguments",
            ],
        )),
        ["list_connections", asked @ ..] => {
            let caller = admin();
            let all = management::connections::visible(&caller, None)
                .iter()
                .map(|c| management::connections::connection_json(&caller, c))
                .collect();
            Ok(columns(
                all,
                asked,
                &["user", "peer_host", "peer_port", "state"],
            ))
        }
        ["list_channels", asked @ ..] => Ok(columns(
            management::connections::visible_channels(&admin(), None),
            asked,
            &["name", "user", "consumer_count", "messages_unacknowledged"],
        )),
        ["list_consumers", asked @ ..] => Ok(columns(
            management::connections::visible_consumers(&admin(), Some(vhost)),
            asked,
            &[
                "queue_name",
                "channel_pid",
                "consumer_tag",
                "ack_required",
                "prefetch_count",
                "active",
                "arguments",
            ],
        )),
        ["list_consumer_groups", asked @ ..] => Ok(columns(
            consumer_groups(broker, vhost),
            asked,
            &[
                "queue",
                "group",
                "partition",
                "owners",
                "draining",
                "unacked",
                "lag",
            ],
        )),
        ["purge_queue", name] => {
            let host = broker
                .vhost(vhost)
                .ok_or_else(|| format!("no_such_vhost: {vhost}"))?;
            let queue = host
                .queues()
                .into_iter()
                .find(|q| &**q.name() == *name)
                .ok_or_else(|| format!("NOT_FOUND - no queue '{name}' in vhost '{vhost}'"))?;
            queue.purge();
            Ok(Answer::Rows(Vec::new()))
        }
        ["delete_queue", name, flags @ ..] => {
            let host = broker
                .vhost(vhost)
                .ok_or_else(|| format!("no_such_vhost: {vhost}"))?;
            if !host.has_queue(name) {
                return Err(format!("NOT_FOUND - no queue '{name}' in vhost '{vhost}'"));
            }
            let if_empty = flags.contains(&"--if-empty") || flags.contains(&"-e");
            let if_unused = flags.contains(&"--if-unused") || flags.contains(&"-u");
            host.delete_queue(name, 0, if_unused, if_empty)
                .map(|_| Answer::Changed)
                .map_err(|e| e.reply_text())
        }
        ["close_connection", name, reason] => {
            let found = broker
                .registry()
                .by_name(name)
                .ok_or_else(|| format!("no connection '{name}'"))?;
            found.request_close((*reason).to_owned());
            Ok(Answer::Rows(Vec::new()))
        }
        [verb, ..] => Err(format!("unknown verb '{verb}'")),
        [] => Err("usage: warren ctl <verb> [arguments]".into()),
    }
}

/// Policies as `rabbitmqctl list_policies` and `list_operator_policies` show them.
fn policy_rows(policies: Vec<PolicyDef>) -> Answer {
    let answer = Answer::Rows(
        policies
            .into_iter()
            .map(|p| {
                json!({
                    "vhost": p.vhost,
                    "name": p.name,
                    "pattern": p.pattern,
                    "apply-to": p.apply_to,
                    "definition": p.definition.to_string(),
                    "priority": p.priority,
                })
            })
            .collect(),
    );
    in_order(
        answer,
        &[
            "vhost",
            "name",
            "pattern",
            "apply-to",
            "definition",
            "priority",
        ],
    )
}

/// `set_policy [--priority N] [--apply-to WHAT] NAME PATTERN DEFINITION`, the options
/// anywhere, as `rabbitmqctl` takes them; `set_operator_policy` when `operator`.
fn set_policy(
    broker: &Broker,
    args: &[&str],
    vhost: &str,
    operator: bool,
) -> Result<Answer, String> {
    let verb = if operator {
        "set_operator_policy"
    } else {
        "set_policy"
    };
    let shape = "[-p <vhost>] [--priority <priority>] [--apply-to <apply-to>] \
                 <name> <pattern> <definition>";
    let (mut priority, mut apply_to, mut positional) = (0, "all", Vec::new());
    let mut args = args.iter();
    while let Some(&arg) = args.next() {
        match arg {
            "--priority" => {
                priority = args
                    .next()
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(|| usage(verb, shape))?;
            }
            "--apply-to" => apply_to = args.next().ok_or_else(|| usage(verb, shape))?,
            _ => positional.push(arg),
        }
    }
    let [name, pattern, definition] = positional[..] else {
        return Err(usage(verb, shape));
    };
    let definition = serde_json::from_str(definition)
        .map_err(|e| format!("JSON decoding error. Reason: {e}"))?;
    let def = PolicyDef {
        vhost: vhost.to_owned(),
        name: name.to_owned(),
        pattern: pattern.to_owned(),
        apply_to: apply_to.to_owned(),
        priority,
        definition,
    };
    let set = if operator {
        broker.set_operator_policy(def)
    } else {
        broker.set_policy(def)
    };
    set.map(|()| Answer::Changed).map_err(|e| e.to_string())
}

/// How the client prints rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Tab-separated columns under a header.
    Table,
    /// One JSON array.
    Json,
}

/// The client: sends `args` (with `export_definitions FILE` and `import_definitions
/// FILE` reading and writing the file here) to the broker whose socket is `socket`,
/// prints the answer, and returns the exit status.
///
/// # Errors
/// The broker cannot be reached, or the answer is unreadable.
pub fn client(
    socket: &Path,
    vhost: &str,
    mut args: Vec<String>,
    format: Format,
    headers: bool,
) -> anyhow::Result<i32> {
    use anyhow::Context as _;
    let mut export_to = None;
    match args.as_slice() {
        [verb, file] if verb == "import_definitions" => {
            let text = if file == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(file).with_context(|| format!("cannot read {file}"))?
            };
            args[1] = text;
        }
        [verb, file] if verb == "export_definitions" => {
            export_to = Some(file.clone());
            args.truncate(1);
        }
        _ => {}
    }
    let stream = std::os::unix::net::UnixStream::connect(socket).with_context(|| {
        format!(
            "cannot reach the broker at {} (is it running, on this data directory?)",
            socket.display()
        )
    })?;
    let request = Request {
        args,
        vhost: vhost.to_owned(),
    };
    let mut line = serde_json::to_vec(&request)?;
    line.push(b'\n');
    (&stream).write_all(&line)?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer)?;
    let response: Response =
        crate::own_json::read(answer.as_bytes()).context("unreadable answer from the broker")?;
    if let Some(error) = response.error {
        let _ = writeln!(std::io::stderr(), "Error:\n{error}");
        return Ok(2);
    }
    if let Some(file) = export_to {
        let text = serde_json::to_string_pretty(response.rows.first().unwrap_or(&Value::Null))?;
        if file == "-" {
            emit(&format!("{text}\n"))?;
        } else {
            std::fs::write(&file, text).with_context(|| format!("cannot write {file}"))?;
        }
        return Ok(0);
    }
    match format {
        Format::Json => emit(&format!("{}\n", serde_json::to_string(&response.rows)?))?,
        Format::Table => emit(&table(&response.rows, &response.columns, headers))?,
    }
    Ok(0)
}

/// Writes the answer to stdout. A reader that went away (`warren ctl list_queues | head
/// -1`) wanted no more: not an error, and never a panic as `println!` has it.
fn emit(text: &str) -> std::io::Result<()> {
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Rows as tab-separated `columns` (empty: the first row's keys, by name), a line each,
/// under a header of their names when `headers`.
fn table(rows: &[Value], columns: &[String], headers: bool) -> String {
    let Some(Value::Object(first)) = rows.first() else {
        return String::new();
    };
    let keys: Vec<&String> = if columns.is_empty() {
        first.keys().collect()
    } else {
        columns.iter().collect()
    };
    let mut out = String::new();
    if headers {
        out = keys
            .iter()
            .map(|k| k.as_str())
            .collect::<Vec<_>>()
            .join("\t");
        out.push('\n');
    }
    for row in rows {
        let cells: Vec<String> = keys
            .iter()
            .map(|k| match row.get(k.as_str()) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
                    .collect::<Vec<_>>()
                    .join(","),
                Some(other) => other.to_string(),
                None => String::new(),
            })
            .collect();
        out.push_str(&cells.join("\t"));
        out.push('\n');
    }
    out
}

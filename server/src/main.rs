//! The `warren` binary: parse flags, set up logging, bind, and serve until SIGINT or
//! SIGTERM.

use std::io::Write as _;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use clap::error::ErrorKind;
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    match start() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // Not eprintln!, which panics when stderr is gone too.
            let _ = writeln!(std::io::stderr(), "warren: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn start() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("ctl") {
        let status = ctl(&args[2..])?;
        std::process::exit(status);
    }
    let config = match warren::Config::try_parse() {
        Ok(config) => config,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            e.exit()
        }
        Err(e) => {
            // One line, like every other start-up error; `--help` has the details.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default();
            let _ = writeln!(
                std::io::stderr(),
                "warren: {} (see warren --help)",
                first.trim_start_matches("error: ")
            );
            std::process::exit(2);
        }
    };
    let filter = EnvFilter::try_new(&config.log_level)
        .with_context(|| format!("invalid --log-level '{}'", config.log_level))?;
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A failed log write is dropped: reporting it would write to the same failing
        // stderr, and tracing-subscriber's `eprintln!` panics there, taking down
        // whichever task logged (a full disk or a closed pipe must cost lines, no more).
        .log_internal_errors(false);
    match config.log_format {
        warren::config::LogFormat::Text => logs
            // Colour codes only for a person at a terminal, never into a log file.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        warren::config::LogFormat::Json => logs.json().with_current_span(true).init(),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // Test builds (`deadlock-detection`) abort with every thread's stack on a stall.
    warren::watchdog::watch_runtime(runtime.handle());
    runtime.block_on(async {
        // From here on SIGHUP never ends the broker: clients can connect once the port is
        // bound, long before recovery ends and the reload task listens; one that comes
        // before then finds nothing yet to reload.
        #[cfg(unix)]
        let _hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("cannot handle SIGHUP")?;
        // Likewise SIGINT and SIGTERM are caught from before the port is bound: a stop
        // that comes while the broker recovers then shuts it down cleanly rather than
        // killing it.
        let stop = shutdown_signal()?;
        let bind = |port: u16| async move {
            tokio::net::TcpListener::bind((config.bind, port))
                .await
                .with_context(|| format!("cannot listen on {}:{port}", config.bind))
        };
        let amqp = if config.no_tcp {
            None
        } else {
            Some(bind(config.port).await?)
        };
        let amqps = if config.tls_cert.is_some() && config.tls_key.is_some() {
            Some(bind(config.tls_port).await?)
        } else {
            None
        };
        if amqp.is_none() && amqps.is_none() {
            anyhow::bail!("--no-tcp without --tls-cert and --tls-key leaves nothing to listen on");
        }
        let management = if config.no_management {
            None
        } else {
            Some(bind(config.management_port).await.context(
                "the management API's port is taken: give another with --management-port, \
                 or turn it off with --no-management",
            )?)
        };
        let prometheus = if config.no_prometheus {
            None
        } else {
            Some(bind(config.prometheus_port).await.context(
                "the Prometheus port is taken: give another with --prometheus-port, \
                 or turn it off with --no-prometheus",
            )?)
        };
        let listeners = warren::server::Listeners {
            amqp,
            amqps,
            management,
            prometheus,
        };
        warren::server::run_with(listeners, Arc::new(config), stop)
            .await
            .context("broker failed")
    })
}

/// A future that resolves on SIGINT or SIGTERM, both caught from this call on.
#[cfg(unix)]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

/// A future that resolves on Ctrl-C.
#[cfg(not(unix))]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

/// `warren ctl [--data-dir DIR | --socket PATH] [-p VHOST] [-q] [--formatter table|json]
/// VERB ARGS...`: the options may come anywhere, as `rabbitmqctl` takes them.
fn ctl(args: &[String]) -> anyhow::Result<i32> {
    use warren::ctl::Format;
    let mut data_dir = std::env::var_os("WARREN_DATA_DIR")
        .map_or_else(|| std::path::PathBuf::from("./warren-data"), Into::into);
    let mut socket = std::env::var_os("WARREN_CTL_SOCKET").map(std::path::PathBuf::from);
    let (mut vhost, mut headers, mut format) = ("/".to_owned(), true, Format::Table);
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .with_context(|| format!("{name} needs a value"))
        };
        match arg.as_str() {
            "-p" | "--vhost" => vhost = value(arg)?,
            // rabbitmqctl's `-q` drops its "Listing …" banners, which Warren never prints:
            // the rows still come, as scripts that read them expect.
            "-q" | "--quiet" => {}
            "--no-table-headers" => headers = false,
            "--data-dir" => data_dir = value(arg)?.into(),
            "--socket" => socket = Some(value(arg)?.into()),
            "--formatter" => {
                format = match value(arg)?.as_str() {
                    "json" => Format::Json,
                    "table" => Format::Table,
                    other => anyhow::bail!("unknown formatter '{other}' (table or json)"),
                }
            }
            _ => rest.push(arg.clone()),
        }
    }
    let socket = socket.unwrap_or_else(|| warren::ctl::socket_path(&data_dir));
    warren::ctl::client(&socket, &vhost, rest, format, headers)
}

//! Every setting, with its default, from CLI flags and `WARREN_*` environment variables.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::Parser;

/// Broker settings. `warren` with no arguments gives a working broker on 0.0.0.0:5672.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "warren",
    version,
    about = "An AMQP 0-9-1 message broker, a drop-in stand-in for RabbitMQ",
    // A flag given twice takes its last value, so wrappers can append to defaults.
    args_override_self = true
)]
pub struct Config {
    /// Address to listen on for AMQP connections.
    #[arg(long, env = "WARREN_BIND", default_value = "0.0.0.0")]
    pub bind: IpAddr,
    /// Port to listen on for AMQP connections.
    #[arg(long, env = "WARREN_PORT", default_value_t = 5672)]
    pub port: u16,
    /// Directory holding durable definitions and messages.
    #[arg(long, env = "WARREN_DATA_DIR", default_value = "./warren-data")]
    pub data_dir: PathBuf,
    /// Log filter: error, warn, info, debug, trace, or a tracing directive.
    #[arg(long, env = "WARREN_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// How log lines are written: `text` for people, `json` (one object per line) for
    /// log collectors.
    #[arg(long, env = "WARREN_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Name of the virtual host created at first start.
    #[arg(long, env = "WARREN_DEFAULT_VHOST", default_value = "/")]
    pub default_vhost: String,
    /// Name of the user created at first start.
    #[arg(long, env = "WARREN_DEFAULT_USER", default_value = "guest")]
    pub default_user: String,
    /// Password of the user created at first start.
    #[arg(
        long,
        env = "WARREN_DEFAULT_PASS",
        default_value = "guest",
        hide_env_values = true
    )]
    pub default_pass: String,
    /// Let the default user log in from any address, not only loopback
    /// (RabbitMQ's `loopback_users = none`).
    #[arg(long, env = "WARREN_ALLOW_REMOTE_DEFAULT_USER")]
    pub allow_remote_default_user: bool,
    /// Heartbeat interval in seconds proposed to clients (0 disables).
    #[arg(long, env = "WARREN_HEARTBEAT", default_value_t = 60)]
    pub heartbeat: u16,
    /// Largest frame in bytes proposed to clients (at least 4096).
    #[arg(long, env = "WARREN_FRAME_MAX", default_value_t = 131_072, value_parser = clap::value_parser!(u32).range(4096..))]
    pub frame_max: u32,
    /// Most channels per connection proposed to clients.
    #[arg(long, env = "WARREN_CHANNEL_MAX", default_value_t = 2047)]
    pub channel_max: u16,
    /// How long a delivery may stay unacknowledged, in milliseconds, before its channel
    /// is closed (RabbitMQ's `consumer_timeout`; 0 disables).
    #[arg(long, env = "WARREN_CONSUMER_TIMEOUT", default_value_t = 1_800_000)]
    pub consumer_timeout: u64,
    /// Bytes of messages queues may hold in memory before publishers are blocked
    /// (`connection.blocked`); 0 disables. By default 40% of the machine's memory, as
    /// RabbitMQ's `vm_memory_high_watermark`.
    #[arg(long, env = "WARREN_MEMORY_LIMIT", default_value_t = default_memory_limit())]
    pub memory_limit: u64,
    /// Free bytes the data directory's disk must keep; below it publishers are blocked
    /// (RabbitMQ's `disk_free_limit`, 50 MB by default); 0 disables.
    #[arg(long, env = "WARREN_DISK_FREE_LIMIT", default_value_t = 50_000_000)]
    pub disk_free_limit: u64,
    /// A JSON file of policies in the shape of RabbitMQ's definitions export (its
    /// `policies` section); read at start and again on SIGHUP.
    #[arg(long, env = "WARREN_POLICIES")]
    pub policies: Option<PathBuf>,
    /// Most connections the broker keeps open at once (RabbitMQ's `connection_max`);
    /// further `connection.open`s are refused with 530. None by default.
    #[arg(long, env = "WARREN_MAX_CONNECTIONS")]
    pub max_connections: Option<u64>,
    /// Do not accept plain TCP connections (on `--port`): TLS only.
    #[arg(long, env = "WARREN_NO_TCP")]
    pub no_tcp: bool,
    /// Port of the management HTTP API and web UI (RabbitMQ's 15672), on `--bind`.
    #[arg(long, env = "WARREN_MANAGEMENT_PORT", default_value_t = 15672)]
    pub management_port: u16,
    /// Do not serve the management HTTP API and web UI.
    #[arg(long, env = "WARREN_NO_MANAGEMENT")]
    pub no_management: bool,
    /// Port of the Prometheus metrics endpoint (`rabbitmq_prometheus`'s 15692), on
    /// `--bind`.
    #[arg(long, env = "WARREN_PROMETHEUS_PORT", default_value_t = 15692)]
    pub prometheus_port: u16,
    /// Do not serve Prometheus metrics.
    #[arg(long, env = "WARREN_NO_PROMETHEUS")]
    pub no_prometheus: bool,
    /// How often the management API samples counters for its rates, in milliseconds
    /// (RabbitMQ's `collect_statistics_interval`).
    #[arg(long, env = "WARREN_STATS_INTERVAL_MS", default_value_t = 5000)]
    pub stats_interval_ms: u64,
    /// Port of the AMQPS (TLS) listener, opened when `--tls-cert` and `--tls-key` are
    /// given.
    #[arg(long, env = "WARREN_TLS_PORT", default_value_t = 5671)]
    pub tls_port: u16,
    /// The server's certificate chain (PEM) for AMQPS.
    #[arg(long, env = "WARREN_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, env = "WARREN_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM) that client certificates are verified against; without
    /// it, none are asked for.
    #[arg(long, env = "WARREN_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// With `--tls-ca`: refuse clients without a certificate (RabbitMQ's
    /// `fail_if_no_peer_cert`).
    #[arg(long, env = "WARREN_TLS_FAIL_IF_NO_PEER_CERT")]
    pub tls_fail_if_no_peer_cert: bool,
    /// What names the user of SASL EXTERNAL in a client certificate: its whole subject
    /// or its common name (RabbitMQ's `ssl_cert_login_from`).
    #[arg(
        long,
        env = "WARREN_TLS_CERT_LOGIN_FROM",
        value_enum,
        default_value = "distinguished-name"
    )]
    pub tls_cert_login_from: crate::tls::CertLogin,
    /// Offer SASL ANONYMOUS, logging such clients in as this user (RabbitMQ 4's
    /// `anonymous_login_user`); off by default.
    #[arg(long, env = "WARREN_ANONYMOUS_LOGIN_USER")]
    pub anonymous_login_user: Option<String>,
    /// The Unix socket `warren ctl` talks to (default: `warren.sock` in the data
    /// directory), readable and writable by the broker's user only.
    #[arg(long, env = "WARREN_CTL_SOCKET")]
    pub ctl_socket: Option<PathBuf>,
    /// A RabbitMQ definitions file (`rabbitmqctl export_definitions`) applied at every
    /// start: its vhosts, users (password hashes as RabbitMQ writes them), permissions
    /// and topic permissions are created or replaced (RabbitMQ's `load_definitions`).
    #[arg(long, env = "WARREN_LOAD_DEFINITIONS")]
    pub load_definitions: Option<PathBuf>,
    /// Largest message body accepted, in bytes (RabbitMQ's `max_message_size`).
    #[arg(long, env = "WARREN_MAX_MESSAGE_SIZE", default_value_t = 128 * 1024 * 1024)]
    pub max_message_size: u64,
}

/// 40% of the machine's memory (from `/proc/meminfo`); 0 (no limit) where unknown.
fn default_memory_limit() -> u64 {
    let total_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("MemTotal:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
        })
        .unwrap_or(0);
    total_kib * 1024 / 10 * 4
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (colours only at a terminal).
    #[default]
    Text,
    /// One JSON object per line, with the span fields (connection, channel).
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Self::parse_from(["warren"])
    }
}

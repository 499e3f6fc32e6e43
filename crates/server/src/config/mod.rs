//! Typed server configuration, layered once at start-up:
//! built-in defaults < TOML file (`--config`) < `SIGMAVAULT_*` environment < flags.
//!
//! Every value is parsed from text by the same function whatever layer it came
//! from, so a bad value reads the same everywhere: one line naming the key.
//! The environment is read through a lookup function so tests can pass a map.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::Args;

pub mod security;
pub use security::{Cidr, RateSpec, SecurityArgs, SecurityConfig};

/// Flags of `sigmavault serve`. Values stay text here; [`Config::load`] parses them
/// so that flags, environment and file report errors the same way.
#[derive(Debug, Default, Clone, Args)]
pub struct ServeArgs {
    /// TOML file with any of the keys below (snake_case or kebab-case).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1].
    #[arg(long)]
    pub host: Option<String>,
    /// TCP port; 0 picks a free one [default: 12080].
    #[arg(long)]
    pub port: Option<String>,
    /// Directory for the database and secrets [default: ./data].
    #[arg(long)]
    pub data_dir: Option<String>,
    /// Deployment label shown in /api/v1/info [default: production].
    #[arg(long)]
    pub environment: Option<String>,
    /// WebSocket ping interval [default: 30s].
    #[arg(long)]
    pub ws_ping_interval: Option<String>,
    /// Extra silence tolerated after a ping before the peer is dropped [default: 10s].
    #[arg(long)]
    pub ws_pong_timeout: Option<String>,
    /// Event-class messages queued per client before it is closed with 4008 [default: 256].
    #[arg(long)]
    pub ws_queue: Option<String>,
    /// Largest inbound WebSocket message [default: 64KiB].
    #[arg(long)]
    pub ws_max_message: Option<String>,
    /// A socket write that makes no progress for this long drops the client [default: 10s].
    #[arg(long)]
    pub ws_write_timeout: Option<String>,
    /// Kernel send buffer per WebSocket (SO_SNDBUF), so a non-reader is noticed fast [default: 256KiB].
    #[arg(long)]
    pub ws_send_buffer: Option<String>,
    /// Initial read buffer per WebSocket; grows for larger messages [default: 1KiB].
    #[arg(long)]
    pub ws_read_buffer: Option<String>,
    /// Sustained inbound messages per second per connection [default: 50].
    #[arg(long)]
    pub ws_rate_limit: Option<String>,
    /// Inbound burst allowance per connection [default: 100].
    #[arg(long)]
    pub ws_rate_burst: Option<String>,
    /// Most concurrent WebSocket connections [default: open-file limit minus min(512, limit/2)].
    #[arg(long)]
    pub max_connections: Option<String>,
    /// Events kept in memory for resume [default: 10000].
    #[arg(long)]
    pub history: Option<String>,
    /// Where the event history lives: sqlite (durable, survives restarts) or memory [default: sqlite].
    #[arg(long)]
    pub history_store: Option<String>,
    /// Durable history: events older than this are pruned [default: 7d].
    #[arg(long)]
    pub history_max_age: Option<String>,
    /// Durable history: most events kept [default: 1000000].
    #[arg(long)]
    pub history_max_events: Option<String>,
    /// Notifications older than this are deleted [default: 90d].
    #[arg(long)]
    pub notifications_max_age: Option<String>,
    /// Most notifications kept; the oldest go first [default: 10000].
    #[arg(long)]
    pub notifications_max_count: Option<String>,
    /// Audit records older than this are deleted [default: 365d].
    #[arg(long)]
    pub audit_max_age: Option<String>,
    /// How often retention runs [default: 1m].
    #[arg(long)]
    pub retention_interval: Option<String>,
    /// Largest size of the database file; writes past it fail with 503 storage_full [default: 0 = no limit].
    #[arg(long)]
    pub db_max_size: Option<String>,
    /// A directory shares may live under; repeat for several (environment and file: a list, `:`-separated) [default: none].
    #[arg(long = "share-root", value_name = "DIR")]
    pub share_roots: Vec<String>,
    /// How often host data is sampled [default: 5s].
    #[arg(long)]
    pub poll_interval: Option<String>,
    /// A source's own interval, NAME=DURATION (e.g. `network=1s`; `smart` covers every
    /// `smart:<disk>`); repeat for several [default: none].
    #[arg(long = "source-interval", value_name = "NAME=DURATION")]
    pub source_intervals: Vec<String>,
    /// How often each disk's SMART health is read (spun-down drives are not woken) [default: 30m].
    #[arg(long)]
    pub smart_interval: Option<String>,
    /// Time limit for one smartctl run [default: 30s].
    #[arg(long)]
    pub smart_timeout: Option<String>,
    /// The smartctl program [default: smartctl, found on PATH].
    #[arg(long)]
    pub smartctl: Option<String>,
    /// Root of the proc filesystem the collectors read (tests use fixture trees) [default: /proc].
    #[arg(long)]
    pub procfs_root: Option<String>,
    /// Root of the sys filesystem the collectors read [default: /sys].
    #[arg(long)]
    pub sysfs_root: Option<String>,
    /// Consecutive failures that open a source's circuit breaker [default: 5].
    #[arg(long)]
    pub breaker_failures: Option<String>,
    /// How long a breaker stays open the first time; doubles per failed probe [default: 10s].
    #[arg(long)]
    pub breaker_open_base: Option<String>,
    /// Longest a breaker stays open [default: 5m].
    #[arg(long)]
    pub breaker_open_max: Option<String>,
    /// Time limit for one sample of a source; slower counts as a failure [default: 5s].
    #[arg(long)]
    pub source_timeout: Option<String>,
    /// A source nobody subscribes to or reads over REST is sampled this much less often [default: 12].
    #[arg(long)]
    pub idle_slowdown: Option<String>,
    /// Alert: filesystem used % for a warning [default: 90].
    #[arg(long)]
    pub alert_fs_warning: Option<String>,
    /// Alert: filesystem used % for critical [default: 95].
    #[arg(long)]
    pub alert_fs_critical: Option<String>,
    /// Alert: memory used % (total − available) for critical [default: 95].
    #[arg(long)]
    pub alert_memory: Option<String>,
    /// Alert: disk temperature in °C for a warning [default: 60].
    #[arg(long)]
    pub alert_disk_temperature: Option<String>,
    /// Alert: points below a threshold before an alert clears [default: 5].
    #[arg(long)]
    pub alert_hysteresis: Option<String>,
    /// Alert: a circuit breaker open this long raises a warning [default: 1m].
    #[arg(long)]
    pub alert_breaker_open: Option<String>,
    /// Interval of the `heartbeat` message [default: 30s].
    #[arg(long)]
    pub heartbeat_interval: Option<String>,
    /// Grace period for in-flight work at shutdown [default: 10s].
    #[arg(long)]
    pub shutdown_grace: Option<String>,
    /// Idle keep-alive and slow-header timeout for HTTP connections [default: 30s].
    #[arg(long)]
    pub http_idle_timeout: Option<String>,
    /// Time limit for one HTTP request [default: 30s].
    #[arg(long)]
    pub http_request_timeout: Option<String>,
    /// Largest HTTP request body [default: 1MiB].
    #[arg(long)]
    pub http_max_body: Option<String>,
    /// Most events in one POST /api/v1/events batch [default: 1000].
    #[arg(long)]
    pub max_batch: Option<String>,
    /// Log format: text or json [default: text].
    #[arg(long)]
    pub log_format: Option<String>,
    /// Log filter, as RUST_LOG [default: info].
    #[arg(long)]
    pub log_level: Option<String>,
    /// Mount the test-only echo endpoint /ws/echo (WebSocket conformance runs) [default: false].
    #[arg(long, hide = true)]
    pub ws_echo: Option<String>,
    /// Accounts, tokens, limits, TLS.
    #[command(flatten)]
    pub security: SecurityArgs,
}

/// Where the event history is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryStore {
    /// Appended to SQLite before delivery; resume works across restarts.
    Sqlite,
    /// Only the in-memory ring (benchmarks, diskless setups).
    Memory,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listen address.
    pub host: IpAddr,
    /// Listen port (0 = any).
    pub port: u16,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Deployment label.
    pub environment: String,
    /// WebSocket ping interval.
    pub ws_ping_interval: Duration,
    /// Extra silence tolerated after a ping.
    pub ws_pong_timeout: Duration,
    /// Per-client event queue bound.
    pub ws_queue: usize,
    /// Largest inbound message, bytes.
    pub ws_max_message: usize,
    /// Stalled-write limit.
    pub ws_write_timeout: Duration,
    /// SO_SNDBUF per WebSocket, bytes.
    pub ws_send_buffer: usize,
    /// Initial read buffer per WebSocket, bytes.
    pub ws_read_buffer: usize,
    /// Inbound messages per second.
    pub ws_rate_limit: u32,
    /// Inbound burst.
    pub ws_rate_burst: u32,
    /// Connection cap (resolved from the fd limit when not set).
    pub max_connections: usize,
    /// History ring size.
    pub history: usize,
    /// Where the event history lives.
    pub history_store: HistoryStore,
    /// Durable history retention by age.
    pub history_max_age: Duration,
    /// Durable history retention by count.
    pub history_max_events: u64,
    /// Notification retention by age.
    pub notifications_max_age: Duration,
    /// Notification retention by count.
    pub notifications_max_count: u64,
    /// Audit log retention by age.
    pub audit_max_age: Duration,
    /// Retention sweep interval.
    pub retention_interval: Duration,
    /// Database size cap in bytes (0 = none).
    pub db_max_size: u64,
    /// Directories shares must live under.
    pub share_roots: Vec<PathBuf>,
    /// Host data sampling interval.
    pub poll_interval: Duration,
    /// Per-source intervals, by source name or family (`smart`).
    pub source_intervals: std::collections::BTreeMap<String, Duration>,
    /// SMART sampling interval.
    pub smart_interval: Duration,
    /// smartctl time limit.
    pub smart_timeout: Duration,
    /// The smartctl program.
    pub smartctl: PathBuf,
    /// Collectors' proc root.
    pub procfs_root: PathBuf,
    /// Collectors' sys root.
    pub sysfs_root: PathBuf,
    /// Breaker: consecutive failures to open.
    pub breaker_failures: u32,
    /// Breaker: first open time.
    pub breaker_open_base: Duration,
    /// Breaker: longest open time.
    pub breaker_open_max: Duration,
    /// Per-sample time limit.
    pub source_timeout: Duration,
    /// Sampling slow-down factor without demand.
    pub idle_slowdown: u32,
    /// Alert thresholds.
    pub alert_fs_warning: f64,
    /// Alert thresholds.
    pub alert_fs_critical: f64,
    /// Alert thresholds.
    pub alert_memory: f64,
    /// Alert thresholds.
    pub alert_disk_temperature: f64,
    /// Alert hysteresis (points).
    pub alert_hysteresis: f64,
    /// Breaker-open alert delay.
    pub alert_breaker_open: Duration,
    /// Heartbeat interval.
    pub heartbeat_interval: Duration,
    /// Shutdown grace.
    pub shutdown_grace: Duration,
    /// HTTP idle / header timeout.
    pub http_idle_timeout: Duration,
    /// HTTP request timeout.
    pub http_request_timeout: Duration,
    /// HTTP body limit, bytes.
    pub http_max_body: usize,
    /// Largest publish batch.
    pub max_batch: usize,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter.
    pub log_level: String,
    /// Mount /ws/echo.
    pub ws_echo: bool,
    /// Accounts, tokens, limits, TLS.
    pub security: SecurityConfig,
}

/// A configuration value that cannot be used. Displayed as one line naming the key.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {key}: {problem}")]
pub struct ConfigError {
    /// The key, in kebab-case as on the command line.
    pub key: String,
    /// What is wrong.
    pub problem: String,
}

fn err(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.to_owned(),
        problem: problem.into(),
    }
}

/// Descriptors kept back from the connection cap for HTTP, the database and collectors.
pub const FD_RESERVE: usize = 512;

impl Default for Config {
    fn default() -> Self {
        Config {
            host: IpAddr::from([127, 0, 0, 1]),
            port: 12080,
            data_dir: PathBuf::from("./data"),
            environment: "production".into(),
            ws_ping_interval: Duration::from_secs(30),
            ws_pong_timeout: Duration::from_secs(10),
            ws_queue: 256,
            ws_max_message: 64 * 1024,
            ws_write_timeout: Duration::from_secs(10),
            ws_send_buffer: 256 * 1024,
            ws_read_buffer: 1024,
            ws_rate_limit: 50,
            ws_rate_burst: 100,
            max_connections: default_max_connections(),
            history: 10_000,
            history_store: HistoryStore::Sqlite,
            history_max_age: Duration::from_secs(7 * DAY),
            history_max_events: 1_000_000,
            notifications_max_age: Duration::from_secs(90 * DAY),
            notifications_max_count: 10_000,
            audit_max_age: Duration::from_secs(365 * DAY),
            retention_interval: Duration::from_secs(60),
            db_max_size: 0,
            share_roots: Vec::new(),
            poll_interval: Duration::from_secs(5),
            source_intervals: std::collections::BTreeMap::new(),
            smart_interval: Duration::from_secs(30 * 60),
            smart_timeout: Duration::from_secs(30),
            smartctl: PathBuf::from("smartctl"),
            procfs_root: PathBuf::from("/proc"),
            sysfs_root: PathBuf::from("/sys"),
            breaker_failures: 5,
            breaker_open_base: Duration::from_secs(10),
            breaker_open_max: Duration::from_secs(300),
            source_timeout: Duration::from_secs(5),
            idle_slowdown: 12,
            alert_fs_warning: 90.0,
            alert_fs_critical: 95.0,
            alert_memory: 95.0,
            alert_disk_temperature: 60.0,
            alert_hysteresis: 5.0,
            alert_breaker_open: Duration::from_secs(60),
            heartbeat_interval: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
            http_idle_timeout: Duration::from_secs(30),
            http_request_timeout: Duration::from_secs(30),
            http_max_body: 1024 * 1024,
            max_batch: 1000,
            log_format: LogFormat::Text,
            log_level: "info".into(),
            ws_echo: false,
            security: SecurityConfig::default(),
        }
    }
}

/// The process's open-file soft limit, from /proc (no unsafe, no libc).
pub fn open_file_limit() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_open_file_limit(&text)
}

fn parse_open_file_limit(limits: &str) -> Option<usize> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line.trim_start_matches("Max open files").split_whitespace().next()?;
    if soft == "unlimited" {
        Some(usize::MAX)
    } else {
        soft.parse().ok()
    }
}

/// Descriptors kept back at the least, on machines with a very low limit.
fn fd_reserve(limit: usize) -> usize {
    FD_RESERVE.min(limit / 2)
}

fn default_max_connections() -> usize {
    match open_file_limit() {
        Some(n) => n.saturating_sub(fd_reserve(n)).max(1),
        None => 10_000,
    }
}

/// Where configuration values come from, lowest precedence first.
struct Layers<'a> {
    file: toml::Table,
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl Layers<'_> {
    /// The highest-precedence text for `key` (kebab-case), if any layer sets it.
    fn get(&self, key: &str, flag: &Option<String>) -> Result<Option<String>, ConfigError> {
        if let Some(v) = flag {
            return Ok(Some(v.clone()));
        }
        let env_key = format!("SIGMAVAULT_{}", key.replace('-', "_").to_uppercase());
        if let Some(v) = (self.env)(&env_key) {
            return Ok(Some(v));
        }
        let snake = key.replace('-', "_");
        let value = self.file.get(key).or_else(|| self.file.get(&snake));
        match value {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s.clone())),
            Some(toml::Value::Integer(i)) => Ok(Some(i.to_string())),
            Some(toml::Value::Float(f)) => Ok(Some(f.to_string())),
            Some(toml::Value::Boolean(b)) => Ok(Some(b.to_string())),
            Some(_) => Err(err(key, "must be a string, number or boolean in the config file")),
        }
    }
}

impl Layers<'_> {
    /// A list setting: the flags if any were given, else `SIGMAVAULT_SHARE_ROOTS`
    /// style (`:`-separated), else a TOML array or string under `key` or `key`+`s`.
    fn list(&self, key: &str, flags: &[String]) -> Result<Vec<String>, ConfigError> {
        if !flags.is_empty() {
            return Ok(flags.to_vec());
        }
        let plural = match key.strip_suffix('y') {
            Some(stem) => format!("{stem}ies"),
            None => format!("{key}s"),
        };
        let env_key = format!("SIGMAVAULT_{}", plural.replace('-', "_").to_uppercase());
        if let Some(v) = (self.env)(&env_key) {
            // Paths are `:`-separated as in PATH; values that contain colons
            // themselves (origins, IPv6 networks) are separated by commas or spaces.
            let by_colon = matches!(key, "share-root" | "source-interval");
            return Ok(v
                .split(|c: char| {
                    if by_colon {
                        c == ':'
                    } else {
                        c == ',' || c.is_whitespace()
                    }
                })
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect());
        }
        let names = [
            key.to_owned(),
            key.replace('-', "_"),
            plural.clone(),
            plural.replace('-', "_"),
        ];
        let Some(value) = names.iter().find_map(|k| self.file.get(k)) else {
            return Ok(Vec::new());
        };
        match value {
            toml::Value::String(s) => Ok(vec![s.clone()]),
            toml::Value::Array(items) => items
                .iter()
                .map(|v| match v {
                    toml::Value::String(s) => Ok(s.clone()),
                    _ => Err(err(key, "must be a list of paths in the config file")),
                })
                .collect(),
            _ => Err(err(key, "must be a path or a list of paths in the config file")),
        }
    }
}

/// Keys a config file may use (kebab-case; snake_case accepted).
const KEYS: &[&str] = &[
    "host",
    "port",
    "data-dir",
    "environment",
    "ws-ping-interval",
    "ws-pong-timeout",
    "ws-queue",
    "ws-max-message",
    "ws-write-timeout",
    "ws-send-buffer",
    "ws-read-buffer",
    "ws-rate-limit",
    "ws-rate-burst",
    "max-connections",
    "history",
    "history-store",
    "history-max-age",
    "history-max-events",
    "notifications-max-age",
    "notifications-max-count",
    "audit-max-age",
    "retention-interval",
    "db-max-size",
    "share-root",
    "share-roots",
    "poll-interval",
    "smart-interval",
    "source-interval",
    "source-intervals",
    "smartctl",
    "smart-timeout",
    "procfs-root",
    "sysfs-root",
    "breaker-failures",
    "breaker-open-base",
    "breaker-open-max",
    "source-timeout",
    "idle-slowdown",
    "alert-fs-warning",
    "alert-fs-critical",
    "alert-memory",
    "alert-disk-temperature",
    "alert-hysteresis",
    "alert-breaker-open",
    "heartbeat-interval",
    "shutdown-grace",
    "http-idle-timeout",
    "http-request-timeout",
    "http-max-body",
    "max-batch",
    "log-format",
    "log-level",
    "ws-echo",
];

impl Config {
    /// Layers defaults, the TOML file named by `--config`, the environment (through
    /// `env`) and the flags, then validates the result.
    pub fn load(args: &ServeArgs, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let config_path = args
            .config
            .clone()
            .or_else(|| env("SIGMAVAULT_CONFIG").map(PathBuf::from));
        let file = match &config_path {
            Some(path) => read_toml(path)?,
            None => toml::Table::new(),
        };
        let layers = Layers { file, env };
        let mut c = Config::default();
        macro_rules! set {
            ($field:ident, $key:literal, $parse:expr) => {
                if let Some(text) = layers.get($key, &args.$field)? {
                    c.$field = $parse(text.trim()).map_err(|problem: String| err($key, problem))?;
                }
            };
        }
        set!(host, "host", |s: &str| IpAddr::from_str(s)
            .map_err(|_| format!("{s:?} is not an IP address")));
        set!(port, "port", |s: &str| s
            .parse::<u16>()
            .map_err(|_| format!("{s:?} is not a port number (0-65535)")));
        set!(data_dir, "data-dir", |s: &str| nonempty(s).map(PathBuf::from));
        set!(environment, "environment", |s: &str| nonempty(s).map(str::to_owned));
        set!(ws_ping_interval, "ws-ping-interval", duration);
        set!(ws_pong_timeout, "ws-pong-timeout", duration);
        set!(ws_queue, "ws-queue", |s| count(s, 1, 1_000_000));
        set!(ws_max_message, "ws-max-message", |s| size(s, 256, 64 << 20));
        set!(ws_write_timeout, "ws-write-timeout", duration);
        set!(ws_send_buffer, "ws-send-buffer", |s| size(s, 4096, 64 << 20));
        set!(ws_read_buffer, "ws-read-buffer", |s| size(s, 256, 16 << 20));
        set!(ws_rate_limit, "ws-rate-limit", |s| count(s, 1, 1_000_000)
            .map(|n| n as u32));
        set!(ws_rate_burst, "ws-rate-burst", |s| count(s, 1, 1_000_000)
            .map(|n| n as u32));
        set!(max_connections, "max-connections", |s| count(s, 1, 10_000_000));
        set!(history, "history", |s| count(s, 0, 100_000_000));
        set!(history_store, "history-store", |s: &str| match s {
            "sqlite" => Ok(HistoryStore::Sqlite),
            "memory" => Ok(HistoryStore::Memory),
            other => Err(format!("{other:?} is not one of: sqlite, memory")),
        });
        set!(history_max_age, "history-max-age", long_duration);
        set!(history_max_events, "history-max-events", |s| count(s, 1, 1_000_000_000)
            .map(|n| n as u64));
        set!(notifications_max_age, "notifications-max-age", long_duration);
        set!(notifications_max_count, "notifications-max-count", |s| count(
            s,
            1,
            100_000_000
        )
        .map(|n| n as u64));
        set!(audit_max_age, "audit-max-age", long_duration);
        set!(retention_interval, "retention-interval", duration);
        set!(db_max_size, "db-max-size", |s: &str| if s == "0" {
            Ok(0)
        } else {
            size(s, 1 << 20, usize::MAX).map(|n| n as u64)
        });
        c.share_roots = layers
            .list("share-root", &args.share_roots)?
            .into_iter()
            .map(PathBuf::from)
            .collect();
        for root in &c.share_roots {
            if !root.is_absolute() {
                return Err(err("share-root", format!("{} is not an absolute path", root.display())));
            }
        }
        set!(poll_interval, "poll-interval", duration);
        for item in layers.list("source-interval", &args.source_intervals)? {
            let (name, interval) = item
                .split_once('=')
                .ok_or_else(|| err("source-interval", format!("{item:?} is not NAME=DURATION")))?;
            let name = name.trim();
            let known = matches!(name, "system" | "network" | "storage" | "smart")
                || name.strip_prefix("smart:").is_some_and(|disk| !disk.is_empty());
            if !known {
                return Err(err(
                    "source-interval",
                    format!("unknown source {name:?}; expected system, network, storage, smart or smart:<disk>"),
                ));
            }
            let interval = duration(interval.trim()).map_err(|p| err("source-interval", format!("{name}: {p}")))?;
            c.source_intervals.insert(name.to_owned(), interval);
        }
        set!(smart_interval, "smart-interval", duration);
        set!(smart_timeout, "smart-timeout", duration);
        set!(smartctl, "smartctl", |s: &str| nonempty(s).map(PathBuf::from));
        set!(procfs_root, "procfs-root", |s: &str| nonempty(s).map(PathBuf::from));
        set!(sysfs_root, "sysfs-root", |s: &str| nonempty(s).map(PathBuf::from));
        set!(breaker_failures, "breaker-failures", |s| count(s, 1, 1000)
            .map(|n| n as u32));
        set!(breaker_open_base, "breaker-open-base", duration);
        set!(breaker_open_max, "breaker-open-max", duration);
        set!(source_timeout, "source-timeout", duration);
        set!(idle_slowdown, "idle-slowdown", |s| count(s, 1, 1000).map(|n| n as u32));
        if c.breaker_open_max < c.breaker_open_base {
            return Err(err("breaker-open-max", "must not be shorter than breaker-open-base"));
        }
        set!(alert_fs_warning, "alert-fs-warning", |s| number(s, 0.0, 100.0));
        set!(alert_fs_critical, "alert-fs-critical", |s| number(s, 0.0, 100.0));
        set!(alert_memory, "alert-memory", |s| number(s, 0.0, 100.0));
        set!(alert_disk_temperature, "alert-disk-temperature", |s| number(
            s, 0.0, 150.0
        ));
        set!(alert_hysteresis, "alert-hysteresis", |s| number(s, 0.0, 50.0));
        set!(alert_breaker_open, "alert-breaker-open", duration);
        if c.alert_fs_critical < c.alert_fs_warning {
            return Err(err("alert-fs-critical", "must not be below alert-fs-warning"));
        }
        set!(heartbeat_interval, "heartbeat-interval", duration);
        set!(shutdown_grace, "shutdown-grace", duration);
        set!(http_idle_timeout, "http-idle-timeout", duration);
        set!(http_request_timeout, "http-request-timeout", duration);
        set!(http_max_body, "http-max-body", |s| size(s, 1024, 1 << 30));
        set!(max_batch, "max-batch", |s| count(s, 1, 100_000));
        set!(log_format, "log-format", |s: &str| match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("{other:?} is not one of: text, json")),
        });
        set!(log_level, "log-level", |s: &str| nonempty(s).map(str::to_owned));
        set!(ws_echo, "ws-echo", |s: &str| s
            .parse::<bool>()
            .map_err(|_| format!("{s:?} is not true or false")));
        c.security = SecurityConfig::load(&args.security, &layers)?;
        c.validate()?;
        Ok(c)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !self.host.is_loopback() && !self.security.tls() && !self.security.insecure_http {
            return Err(err(
                "host",
                format!(
                    "refusing to serve plain HTTP on {}: passwords and tokens would cross the network \
                     unencrypted. Give --tls-cert and --tls-key, or --insecure-http true when a \
                     TLS-terminating proxy stands in front",
                    self.host
                ),
            ));
        }
        if let Some(limit) = open_file_limit()
            && self.max_connections > limit.saturating_sub(fd_reserve(limit) / 4)
        {
            return Err(err(
                "max-connections",
                format!(
                    "{} leaves too few descriptors: the open-file limit is {limit}",
                    self.max_connections
                ),
            ));
        }
        Ok(())
    }

    /// The address to bind.
    pub fn listen_addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::new(self.host, self.port)
    }
}

fn read_toml(path: &Path) -> Result<toml::Table, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| err("config", format!("cannot read {}: {e}", path.display())))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| err("config", format!("{}: {}", path.display(), e.message())))?;
    for key in table.keys() {
        let kebab = key.replace('_', "-");
        if !KEYS.contains(&kebab.as_str()) && !security::KEYS.contains(&kebab.as_str()) {
            return Err(err(key, format!("unknown key in {}", path.display())));
        }
    }
    Ok(table)
}

fn nonempty(s: &str) -> Result<&str, String> {
    if s.is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(s)
    }
}

/// Parses `250ms`, `30s`, `5m`, `1h` (humantime syntax); zero is refused.
pub fn duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|_| format!("{s:?} is not a duration (e.g. 250ms, 30s, 5m)"))?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    if d > Duration::from_secs(7 * 24 * 3600) {
        return Err(format!("{s:?} is longer than 7 days"));
    }
    Ok(d)
}

const DAY: u64 = 24 * 3600;

/// Like [`duration`] for retention periods: `7d`, `90d`, `1y`; at most 100 years.
pub fn long_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|_| format!("{s:?} is not a duration (e.g. 12h, 7d, 90d)"))?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    if d > Duration::from_secs(100 * 365 * DAY) {
        return Err(format!("{s:?} is longer than 100 years"));
    }
    Ok(d)
}

fn number(s: &str, min: f64, max: f64) -> Result<f64, String> {
    let n: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if !(min..=max).contains(&n) {
        return Err(format!("{n} is outside {min}..={max}"));
    }
    Ok(n)
}

fn count(s: &str, min: usize, max: usize) -> Result<usize, String> {
    let n: usize = s
        .replace('_', "")
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number"))?;
    if n < min || n > max {
        return Err(format!("{n} is outside {min}..={max}"));
    }
    Ok(n)
}

/// Parses a byte size: `65536`, `64KiB`, `64KB`, `1MiB`, `1M` (K/M/G are binary).
pub fn size(s: &str, min: usize, max: usize) -> Result<usize, String> {
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(digits_end);
    let n: usize = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 65536, 64KiB, 1MiB)"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("{s:?} has an unknown unit (use B, KiB, MiB, GiB)")),
    };
    let bytes = n.checked_mul(mult).ok_or_else(|| format!("{s:?} is too large"))?;
    if bytes < min || bytes > max {
        return Err(format!("{bytes} bytes is outside {min}..={max}"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(args: ServeArgs, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::load(&args, &|k| map.get(k).cloned())
    }

    #[test]
    fn defaults() {
        let c = load(ServeArgs::default(), &[]).unwrap();
        assert_eq!(c.port, 12080);
        assert_eq!(c.ws_ping_interval, Duration::from_secs(30));
        assert_eq!(c.ws_max_message, 65536);
        assert_eq!(c.history, 10_000);
    }

    #[test]
    fn precedence_file_env_flag() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "port = 1000\nws_queue = 10\nws-pong-timeout = \"2s\"\n").unwrap();
        let args = ServeArgs {
            config: Some(file),
            ..Default::default()
        };
        let c = load(args.clone(), &[]).unwrap();
        assert_eq!(
            (c.port, c.ws_queue, c.ws_pong_timeout),
            (1000, 10, Duration::from_secs(2))
        );
        let c = load(args.clone(), &[("SIGMAVAULT_PORT", "2000")]).unwrap();
        assert_eq!((c.port, c.ws_queue), (2000, 10));
        let args = ServeArgs {
            port: Some("3000".into()),
            ..args
        };
        let c = load(args, &[("SIGMAVAULT_PORT", "2000")]).unwrap();
        assert_eq!(c.port, 3000);
    }

    #[test]
    fn source_intervals_name_known_sources() {
        let with = |item: &str| {
            load(
                ServeArgs {
                    source_intervals: vec![item.to_owned()],
                    ..Default::default()
                },
                &[],
            )
        };
        let c = with("smart:sda=10m").unwrap();
        assert_eq!(c.source_intervals["smart:sda"], Duration::from_secs(600));
        assert_eq!(
            with(" storage = 2s").unwrap().source_intervals["storage"],
            Duration::from_secs(2)
        );
        for bad in ["systme=1s", "smart:=1s", "cpu=1s"] {
            let e = with(bad).unwrap_err();
            assert_eq!(e.key, "source-interval", "{bad}");
            assert!(e.problem.contains("unknown source"), "{bad}: {e}");
        }
    }

    #[test]
    fn plain_http_only_on_loopback_unless_told() {
        let public = |extra: &[(&str, &str)]| {
            let mut env = vec![("SIGMAVAULT_HOST", "0.0.0.0")];
            env.extend_from_slice(extra);
            load(ServeArgs::default(), &env)
        };
        let e = public(&[]).unwrap_err();
        assert_eq!(e.key, "host");
        assert!(
            e.problem.contains("--tls-cert") && e.problem.contains("--insecure-http"),
            "{e}"
        );
        assert!(public(&[("SIGMAVAULT_INSECURE_HTTP", "true")]).is_ok());
        assert!(public(&[("SIGMAVAULT_TLS_CERT", "/c.pem"), ("SIGMAVAULT_TLS_KEY", "/k.pem")]).is_ok());
        let half = public(&[("SIGMAVAULT_TLS_CERT", "/c.pem")]).unwrap_err();
        assert_eq!(half.key, "tls-cert");
        assert!(load(ServeArgs::default(), &[("SIGMAVAULT_HOST", "::1")]).is_ok());
        let c = load(
            ServeArgs::default(),
            &[
                (
                    "SIGMAVAULT_ALLOWED_ORIGINS",
                    "https://nas.example:8443, http://[::1]:3000",
                ),
                ("SIGMAVAULT_TRUSTED_PROXIES", "10.0.0.0/8,fd00::/8"),
            ],
        )
        .unwrap();
        assert_eq!(
            c.security.allowed_origins,
            vec!["https://nas.example:8443".to_owned(), "http://[::1]:3000".to_owned()]
        );
        assert_eq!(c.security.trusted_proxies.len(), 2);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "trusted-proxies = [\"10.0.0.1\", \"::1\"]\nallowed_origins = [\"https://a.example\"]\n",
        )
        .unwrap();
        let c = load(
            ServeArgs {
                config: Some(file),
                ..Default::default()
            },
            &[],
        )
        .unwrap();
        assert_eq!(c.security.trusted_proxies.len(), 2, "the file's plural key");
        assert_eq!(c.security.allowed_origins, vec!["https://a.example:443".to_owned()]);
        let c = load(
            ServeArgs::default(),
            &[("SIGMAVAULT_ADMIN_PASSWORD", "from the environment")],
        )
        .unwrap();
        assert_eq!(
            c.security.admin_password.map(|s| s.0).as_deref(),
            Some("from the environment")
        );
        assert!(
            !format!(
                "{:?}",
                load(ServeArgs::default(), &[("SIGMAVAULT_ADMIN_PASSWORD", "hunter22")]).unwrap()
            )
            .contains("hunter22")
        );
    }

    #[test]
    fn errors_name_the_key() {
        let e = load(
            ServeArgs {
                ws_ping_interval: Some("soon".into()),
                ..Default::default()
            },
            &[],
        )
        .unwrap_err();
        assert_eq!(e.key, "ws-ping-interval");
        assert!(e.to_string().starts_with("invalid configuration: ws-ping-interval:"));
        let e = load(ServeArgs::default(), &[("SIGMAVAULT_WS_QUEUE", "0")]).unwrap_err();
        assert_eq!(e.key, "ws-queue");
        let e = load(
            ServeArgs {
                log_format: Some("xml".into()),
                ..Default::default()
            },
            &[],
        )
        .unwrap_err();
        assert_eq!(e.key, "log-format");
    }

    #[test]
    fn unknown_file_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "prot = 1\n").unwrap();
        let e = load(
            ServeArgs {
                config: Some(file),
                ..Default::default()
            },
            &[],
        )
        .unwrap_err();
        assert_eq!(e.key, "prot");
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(size("64KiB", 0, usize::MAX), Ok(65536));
        assert_eq!(size("1M", 0, usize::MAX), Ok(1 << 20));
        assert!(size("12furlongs", 0, usize::MAX).is_err());
        assert_eq!(duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(duration("5m"), Ok(Duration::from_secs(300)));
        assert!(duration("0s").is_err());
    }

    #[test]
    fn parses_proc_limits() {
        let text = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            20000                20000                files\n";
        assert_eq!(parse_open_file_limit(text), Some(20000));
    }
}

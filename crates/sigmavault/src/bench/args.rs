//! The command line of `sigmavault bench`, validated once before anything connects.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use anyhow::{Result, bail};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use url::Url;

use super::proc::ProcFs;
use super::publisher::MAX_BATCH;
use super::report::Settings;
use crate::client::ConnectOptions;

/// Beyond this many sockets from one source address the ephemeral ports run out.
pub(super) const PORTS_PER_SOURCE_IP: usize = 28_000;

/// Arguments of `sigmavault bench`.
#[derive(clap::Args, Debug)]
pub(crate) struct BenchArgs {
    /// WebSocket URL of the hub; the REST base is derived from it (`http`, `/ws` removed).
    #[arg(long, env = "SIGMAVAULT_URL", default_value = "ws://127.0.0.1:12080/ws")]
    pub(super) url: Url,
    /// Bearer token for the upgrade requests and the REST calls.
    #[arg(long, env = "SIGMAVAULT_TOKEN", hide_env_values = true)]
    pub(super) token: Option<String>,
    /// Subscribers that read and check every event.
    #[arg(long, default_value_t = 100)]
    pub(super) clients: usize,
    /// Events per burst round.
    #[arg(long, default_value_t = 1000)]
    pub(super) burst: usize,
    /// Burst rounds, published back to back.
    #[arg(long, default_value_t = 3)]
    pub(super) rounds: usize,
    /// Steady phase rate in events per second (0 skips the phase).
    #[arg(long, default_value_t = 100.0)]
    pub(super) rate: f64,
    /// Steady phase length, e.g. `10s`.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub(super) duration: Duration,
    /// Hold every client idle this long after connecting and report the server's CPU
    /// over that time (the idle cost of keep-alive); `0s` skips it.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub(super) idle: Duration,
    /// Keep the default `heartbeat` subscription, as a dashboard does, instead of
    /// dropping every default: the idle phase then measures a dashboard's keep-alive
    /// cost (heartbeat and ping each interval) rather than pings alone.
    #[arg(long)]
    pub(super) heartbeat: bool,
    /// Approximate size of one event frame in bytes (the data is padded to reach it).
    #[arg(long, default_value_t = 300)]
    pub(super) size: usize,
    /// Extra clients that subscribe and never read; they must end up closed with 4008.
    #[arg(long, default_value_t = 0)]
    pub(super) slow: usize,
    /// Single events published on an idle hub to time publish → last client.
    #[arg(long, default_value_t = 5)]
    pub(super) probes: usize,
    /// Server process to sample (RSS per connection, CPU per delivery) from /proc.
    #[arg(long)]
    pub(super) server_pid: Option<u32>,
    /// Print exactly one JSON line on stdout instead of the human report.
    #[arg(long)]
    pub(super) json: bool,
    /// Connection handshakes in flight at once.
    #[arg(long, default_value_t = 256)]
    pub(super) connect_concurrency: usize,
    /// Spread client sockets over source addresses 127.0.0.1..=127.0.0.N (loopback
    /// servers only); needed beyond ~28k clients.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=254))]
    pub(super) source_ips: u8,
    /// Events per POST (the server accepts at most 1000).
    #[arg(long, default_value_t = MAX_BATCH)]
    pub(super) batch: usize,
    /// Give up waiting for deliveries after this long without progress.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub(super) drain_timeout: Duration,
    /// Hard limit on the whole run.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub(super) deadline: Duration,
    /// Runtime worker threads (two keep the bench within a 2-core box's budget).
    #[arg(long, default_value_t = 2)]
    pub(super) workers: usize,
}

impl BenchArgs {
    pub(super) fn validate(&self) -> Result<()> {
        if self.clients == 0 {
            bail!("--clients must be at least 1");
        }
        if !(1..=MAX_BATCH).contains(&self.batch) {
            bail!("--batch must be within 1..={MAX_BATCH}");
        }
        if !self.rate.is_finite() || self.rate < 0.0 {
            bail!("--rate must be a non-negative number");
        }
        if self.connect_concurrency == 0 || self.workers == 0 {
            bail!("--connect-concurrency and --workers must be at least 1");
        }
        let sockets = self.clients + self.slow;
        if let Some(limit) = ProcFs::from_env().open_files_limit() {
            let needed = sockets as u64 + 64;
            if limit < needed {
                bail!(
                    "{sockets} sockets need ~{needed} file descriptors but the limit is {limit}; raise it (ulimit -n)"
                );
            }
        }
        Ok(())
    }

    /// Client `index`'s connect options: a 4 KiB read buffer so 19k clients fit in memory,
    /// and a source address picked round-robin.
    pub(super) fn connect_options(&self, index: usize, recv_buffer: Option<u32>) -> ConnectOptions {
        let mut opts = ConnectOptions::new(self.token.clone());
        opts.ws_config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
        opts.timeout = Duration::from_secs(30);
        opts.recv_buffer = recv_buffer;
        if self.source_ips > 1 {
            let host = 1 + (index % usize::from(self.source_ips)) as u8;
            opts.local_ip = Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, host)));
        }
        opts
    }

    pub(super) fn settings(&self) -> Settings {
        Settings {
            clients: self.clients,
            burst: self.burst,
            rounds: self.rounds,
            rate: self.rate,
            duration_s: self.duration.as_secs_f64(),
            size: self.size,
            slow: self.slow,
            probes: self.probes,
            source_ips: self.source_ips,
            workers: self.workers,
            connect_concurrency: self.connect_concurrency,
            heartbeat: self.heartbeat,
        }
    }
}

//! The bench result: one JSON object (`--json`) or a short human summary.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;

use super::slow::SlowReport;
use super::stats::LatencySummary;

/// Everything a run measured. Durations are milliseconds (`_ms`), latencies microseconds
/// (`_us`), memory KiB (`_kib`) or bytes.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    /// No loss, duplicates, reordering, failed connects or unexpected slow-client endings.
    pub(crate) ok: bool,
    /// Why `ok` is false.
    pub(crate) problems: Vec<String>,
    pub(crate) run_id: u64,
    pub(crate) url: String,
    pub(crate) settings: Settings,
    pub(crate) connect: ConnectReport,
    pub(crate) burst: BurstReport,
    pub(crate) fanout: FanoutReport,
    pub(crate) steady: Option<SteadyReport>,
    /// Server CPU while every client sat idle (`--idle`).
    pub(crate) idle: Option<IdleReport>,
    pub(crate) delivery: DeliveryReport,
    pub(crate) slow: Option<SlowReport>,
    pub(crate) server: Option<ServerReport>,
    pub(crate) bench_process: ProcessReport,
    /// `GET /api/v1/hub` at the end, verbatim.
    pub(crate) hub: Option<Value>,
    pub(crate) warnings: Vec<String>,
}

/// The server's cost of idle connections (keep-alive pings, timers).
#[derive(Debug, Serialize)]
pub(crate) struct IdleReport {
    pub(crate) clients: u64,
    pub(crate) seconds: f64,
    pub(crate) server_cpu_ms: f64,
    /// Server CPU as a percentage of one core over the idle window.
    pub(crate) server_core_percent: f64,
}

/// The knobs, echoed so a JSON line stands on its own.
#[derive(Debug, Serialize)]
pub(crate) struct Settings {
    pub(crate) clients: usize,
    pub(crate) burst: usize,
    pub(crate) rounds: usize,
    pub(crate) rate: f64,
    pub(crate) duration_s: f64,
    pub(crate) size: usize,
    pub(crate) slow: usize,
    pub(crate) probes: usize,
    pub(crate) source_ips: u8,
    pub(crate) workers: usize,
    pub(crate) connect_concurrency: usize,
    pub(crate) heartbeat: bool,
}

/// Connecting: per client, TCP connect + upgrade + welcome + subscribe reply.
#[derive(Debug, Serialize)]
pub(crate) struct ConnectReport {
    pub(crate) requested: usize,
    pub(crate) connected: usize,
    pub(crate) failed: usize,
    pub(crate) total_ms: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
    pub(crate) first_error: Option<String>,
}

/// Back-to-back bursts.
#[derive(Debug, Serialize)]
pub(crate) struct BurstReport {
    pub(crate) events: usize,
    pub(crate) expected_deliveries: u64,
    pub(crate) deliveries: u64,
    /// Time to POST every batch.
    pub(crate) publish_ms: f64,
    /// First publish to last delivery.
    pub(crate) delivery_ms: f64,
    pub(crate) deliveries_per_s: f64,
    pub(crate) complete: bool,
    pub(crate) latency: LatencySummary,
}

/// Publish → last client, for single events on an idle hub.
#[derive(Debug, Serialize)]
pub(crate) struct FanoutReport {
    pub(crate) probes: usize,
    /// Probes every connected client received.
    pub(crate) complete: usize,
    pub(crate) per_probe_us: Vec<u64>,
    pub(crate) p50_us: u64,
    pub(crate) max_us: u64,
}

/// The constant-rate phase.
#[derive(Debug, Serialize)]
pub(crate) struct SteadyReport {
    pub(crate) target_rate: f64,
    pub(crate) achieved_rate: f64,
    pub(crate) events: usize,
    pub(crate) expected_deliveries: u64,
    pub(crate) deliveries: u64,
    pub(crate) complete: bool,
    pub(crate) latency: LatencySummary,
}

/// Exactly-once, in-order delivery, summed over clients.
#[derive(Debug, Default, Serialize)]
pub(crate) struct DeliveryReport {
    /// Published events missing from a client's stream: every event for a client that
    /// stayed connected; for one the server disconnected, every event up to the last seq
    /// the server says it delivered (the gap-free promise holds until the close).
    pub(crate) lost: u64,
    /// Events after a server-side disconnect, which a real client would resume.
    pub(crate) cut_off_by_disconnect: u64,
    /// 4008 closes whose `last_seq=` differs from the last event the client received.
    pub(crate) close_reason_mismatches: usize,
    pub(crate) duplicated: u64,
    pub(crate) out_of_order: u64,
    pub(crate) clients_with_loss: usize,
    /// Subscribers whose connection ended before the bench stopped them.
    pub(crate) dropped_connections: usize,
    /// Why they ended, e.g. `"4008 slow_consumer": 3`.
    pub(crate) drop_reasons: BTreeMap<String, usize>,
    /// Frames that were not events of this run (should be ~0 after unsubscribing defaults).
    pub(crate) other_frames: u64,
}

/// The server process, when `--server-pid` was given.
#[derive(Debug, Serialize)]
pub(crate) struct ServerReport {
    pub(crate) pid: u32,
    pub(crate) rss_before_kib: u64,
    pub(crate) rss_connected_kib: u64,
    pub(crate) rss_end_kib: u64,
    pub(crate) rss_per_connection_bytes: u64,
    pub(crate) cpu_burst_ms: f64,
    /// `None` when nothing was delivered.
    pub(crate) cpu_us_per_delivery: Option<f64>,
    pub(crate) cpu_total_ms: f64,
}

/// The bench's own footprint, to show it was not the bottleneck.
#[derive(Debug, Default, Serialize)]
pub(crate) struct ProcessReport {
    pub(crate) cpu_total_ms: f64,
    pub(crate) cpu_burst_ms: f64,
    /// CPU during the burst as a share of one core (200 = both cores of a 2-core box).
    pub(crate) burst_core_percent: f64,
    pub(crate) rss_kib: u64,
}

impl Report {
    /// The human summary.
    pub(crate) fn render(&self) -> String {
        let mut s = String::new();
        let c = &self.connect;
        let _ = writeln!(s, "sigmavault bench  run {}  {}", self.run_id, self.url);
        let _ = writeln!(
            s,
            "connect   {}/{} clients in {:.2} s; per client p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            c.connected,
            c.requested,
            c.total_ms / 1000.0,
            c.p50_ms,
            c.p99_ms,
            c.max_ms
        );
        if let Some(e) = &c.first_error {
            let _ = writeln!(s, "          {} failed; first error: {e}", c.failed);
        }
        if let Some(i) = &self.idle {
            let _ = writeln!(
                s,
                "idle      {} clients for {:.0} s: server CPU {:.0} ms = {:.2} % of one core",
                i.clients, i.seconds, i.server_cpu_ms, i.server_core_percent
            );
        }
        let b = &self.burst;
        let _ = writeln!(
            s,
            "burst     {} × {} events: {}/{} deliveries in {:.2} s = {:.0} deliveries/s (publish took {:.2} s){}",
            self.settings.rounds,
            self.settings.burst,
            b.deliveries,
            b.expected_deliveries,
            b.delivery_ms / 1000.0,
            b.deliveries_per_s,
            b.publish_ms / 1000.0,
            if b.complete { "" } else { " INCOMPLETE" }
        );
        let _ = writeln!(s, "          latency {}", latency(&b.latency));
        let f = &self.fanout;
        let _ = writeln!(
            s,
            "fanout    {} probes ({} complete): publish → last client p50 {}, max {}",
            f.probes,
            f.complete,
            us(f.p50_us),
            us(f.max_us)
        );
        if let Some(st) = &self.steady {
            let _ = writeln!(
                s,
                "steady    {:.0} ev/s target, {:.1} achieved: {}/{} deliveries{}",
                st.target_rate,
                st.achieved_rate,
                st.deliveries,
                st.expected_deliveries,
                if st.complete { "" } else { " INCOMPLETE" }
            );
            let _ = writeln!(s, "          latency {}", latency(&st.latency));
        }
        let d = &self.delivery;
        let _ = writeln!(
            s,
            "delivery  lost {}  duplicated {}  out-of-order {}  (clients with loss {}, cut off by disconnect {}, \
             dropped connections {}{})",
            d.lost,
            d.duplicated,
            d.out_of_order,
            d.clients_with_loss,
            d.cut_off_by_disconnect,
            d.dropped_connections,
            if d.drop_reasons.is_empty() {
                String::new()
            } else {
                format!(": {:?}", d.drop_reasons)
            }
        );
        if let Some(slow) = &self.slow {
            let _ = writeln!(
                s,
                "slow      {}/{} closed with 4008 (reason seq matched {}, e.g. {:?}); endings {:?}; {} events drained",
                slow.closed_slow_consumer,
                slow.requested,
                slow.reason_seq_matches,
                slow.example_reason.as_deref().unwrap_or(""),
                slow.outcomes,
                slow.frames_drained
            );
            if let Some(p) = &slow.first_problem {
                let _ = writeln!(s, "          {p}");
            }
        }
        if let Some(sv) = &self.server {
            let _ = writeln!(
                s,
                "server    pid {}: RSS {:.1} → {:.1} MiB connected ({:.1} KiB/connection), {:.1} MiB at end",
                sv.pid,
                sv.rss_before_kib as f64 / 1024.0,
                sv.rss_connected_kib as f64 / 1024.0,
                sv.rss_per_connection_bytes as f64 / 1024.0,
                sv.rss_end_kib as f64 / 1024.0
            );
            let _ = writeln!(
                s,
                "          CPU {:.0} ms in burst = {} µs/delivery; {:.0} ms over the run",
                sv.cpu_burst_ms,
                sv.cpu_us_per_delivery
                    .map_or_else(|| "-".to_owned(), |v| format!("{v:.2}")),
                sv.cpu_total_ms
            );
        }
        let p = &self.bench_process;
        let _ = writeln!(
            s,
            "bench     CPU {:.0} ms total, {:.0} ms in burst ({:.0}% of one core); RSS {:.1} MiB",
            p.cpu_total_ms,
            p.cpu_burst_ms,
            p.burst_core_percent,
            p.rss_kib as f64 / 1024.0
        );
        for w in &self.warnings {
            let _ = writeln!(s, "warning   {w}");
        }
        if self.ok {
            let _ = writeln!(s, "result    OK");
        } else {
            let _ = writeln!(s, "result    FAIL: {}", self.problems.join("; "));
        }
        s
    }
}

fn latency(l: &LatencySummary) -> String {
    format!(
        "p50 {}  p99 {}  p99.9 {}  max {}  ({} samples)",
        us(l.p50_us),
        us(l.p99_us),
        us(l.p999_us),
        us(l.max_us),
        l.count
    )
}

/// `850 µs`, `12.3 ms`, `2.41 s`.
fn us(v: u64) -> String {
    match v {
        0..1_000 => format!("{v} µs"),
        1_000..1_000_000 => format!("{:.1} ms", v as f64 / 1e3),
        _ => format!("{:.2} s", v as f64 / 1e6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(us(850), "850 µs");
        assert_eq!(us(12_345), "12.3 ms");
        assert_eq!(us(2_410_000), "2.41 s");
    }
}

//! Turning raw per-client outcomes and /proc samples into report sections.

use std::time::Duration;

use super::clients::ClientOutcome;
use super::phases::Fanout;
use super::proc::Sample;
use super::report::{ConnectReport, DeliveryReport, FanoutReport, ServerReport};
use super::stats::percentile;

/// Connect times over the clients that made it, and the first failure.
pub(crate) fn connect_report(outcomes: &[ClientOutcome], requested: usize, elapsed: Duration) -> ConnectReport {
    let mut times: Vec<u64> = outcomes.iter().filter_map(|o| o.connect_ns).collect();
    times.sort_unstable();
    let ms = |ns: u64| ns as f64 / 1e6;
    ConnectReport {
        requested,
        connected: times.len(),
        failed: requested - times.len().min(requested),
        total_ms: elapsed.as_secs_f64() * 1000.0,
        p50_ms: ms(percentile(&times, 0.5)),
        p99_ms: ms(percentile(&times, 0.99)),
        max_ms: ms(times.last().copied().unwrap_or(0)),
        first_error: outcomes
            .iter()
            .find(|o| o.connect_ns.is_none())
            .and_then(|o| o.error.clone()),
    }
}

/// Loss, duplication and reordering against every seq the bench published. Every
/// connected client subscribed before the first publish, so each should have them all,
/// or, if the server closed it, all of them up to the close.
pub(crate) fn delivery_report(outcomes: &[ClientOutcome], published: &[u64]) -> DeliveryReport {
    let mut report = DeliveryReport::default();
    for outcome in outcomes {
        report.other_frames += outcome.other_frames;
        let Some(tracker) = &outcome.tracker else {
            continue;
        };
        report.duplicated += tracker.duplicates;
        report.out_of_order += tracker.out_of_order;
        let reason = match (&outcome.close, &outcome.error) {
            (Some(close), _) => Some(close.to_string()),
            (None, Some(error)) => Some(error.clone()),
            (None, None) => None,
        };
        // Where the server's promise ends: the close's last_seq, else what last arrived.
        let cutoff = reason.as_ref().map(|_| {
            let claimed = outcome.close.as_ref().and_then(|c| c.last_seq());
            if let Some(claimed) = claimed {
                report.close_reason_mismatches += usize::from(!tracker.agrees_with_last_seq(claimed));
            }
            claimed.unwrap_or(tracker.highest())
        });
        let (owed, cut): (Vec<u64>, Vec<u64>) = published.iter().partition(|&&s| cutoff.is_none_or(|c| s <= c));
        let missing = tracker.missing(&owed);
        report.lost += missing;
        report.clients_with_loss += usize::from(missing > 0);
        report.cut_off_by_disconnect += tracker.missing(&cut);
        if let Some(reason) = reason {
            report.dropped_connections += 1;
            // Keep the key short and groupable: "close 4008 (slow_consumer)" without the seq.
            let key = reason.split(':').next().unwrap_or_default().trim().to_owned();
            *report.drop_reasons.entry(key).or_default() += 1;
        }
    }
    report
}

/// Samples in order: start, all connected, burst start, burst end, end.
pub(crate) fn server_report(
    pid: Option<u32>,
    samples: [Option<Sample>; 5],
    connections: u64,
    burst_deliveries: u64,
) -> Option<ServerReport> {
    let pid = pid?;
    let [start, connected, burst_start, burst_end, end] = samples;
    let (start, connected, end) = (start?, connected?, end?);
    let burst_cpu_us = match (burst_start, burst_end) {
        (Some(a), Some(b)) => b.cpu_us.saturating_sub(a.cpu_us),
        _ => 0,
    };
    Some(ServerReport {
        pid,
        rss_before_kib: start.rss_kib,
        rss_connected_kib: connected.rss_kib,
        rss_end_kib: end.rss_kib,
        rss_per_connection_bytes: connected.rss_kib.saturating_sub(start.rss_kib) * 1024 / connections.max(1),
        cpu_burst_ms: burst_cpu_us as f64 / 1000.0,
        cpu_us_per_delivery: (burst_deliveries > 0).then(|| burst_cpu_us as f64 / burst_deliveries as f64),
        cpu_total_ms: end.cpu_us.saturating_sub(start.cpu_us) as f64 / 1000.0,
    })
}

/// Per-probe delays and their median and maximum.
pub(crate) fn fanout_report(fanout: &Fanout) -> FanoutReport {
    let per_probe_us: Vec<u64> = fanout.probes.iter().map(|&(us, _)| us).collect();
    let mut sorted = per_probe_us.clone();
    sorted.sort_unstable();
    FanoutReport {
        probes: fanout.probes.len(),
        complete: fanout.probes.iter().filter(|&&(_, complete)| complete).count(),
        p50_us: percentile(&sorted, 0.5),
        max_us: sorted.last().copied().unwrap_or(0),
        per_probe_us,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::tracker::SeqTracker;
    use crate::client::CloseInfo;

    fn closed(tracker: SeqTracker, last_seq: u64) -> ClientOutcome {
        ClientOutcome {
            connect_ns: Some(2),
            tracker: Some(tracker),
            close: Some(CloseInfo {
                code: Some(4008),
                reason: format!("slow_consumer last_seq={last_seq}"),
            }),
            ..ClientOutcome::default()
        }
    }

    #[test]
    fn delivery_counts_loss_per_client() {
        let mut full = SeqTracker::new(10);
        for s in 11..=15 {
            full.record(s);
        }
        // Closed after 13, got everything up to it (one reordering, one duplicate).
        let mut partial = SeqTracker::new(10);
        for s in [11, 13, 12, 12] {
            partial.record(s);
        }
        // Closed after 13 but 12 never came, and the close claims 14.
        let mut gappy = SeqTracker::new(10);
        for s in [11, 13] {
            gappy.record(s);
        }
        let outcomes = vec![
            ClientOutcome {
                connect_ns: Some(1),
                tracker: Some(full),
                ..ClientOutcome::default()
            },
            closed(partial, 13),
            closed(gappy, 14),
            ClientOutcome {
                error: Some("refused".into()),
                ..ClientOutcome::default()
            },
        ];
        let d = delivery_report(&outcomes, &[11, 12, 13, 14, 15]);
        assert_eq!(
            (d.lost, d.duplicated, d.out_of_order, d.clients_with_loss),
            (2, 1, 1, 1)
        );
        assert_eq!((d.cut_off_by_disconnect, d.close_reason_mismatches), (3, 1));
        assert_eq!(d.dropped_connections, 2);
        assert_eq!(d.drop_reasons.get("close 4008 (slow_consumer)"), Some(&2));
        let c = connect_report(&outcomes, 4, Duration::from_millis(5));
        assert_eq!((c.connected, c.failed), (3, 1));
        assert_eq!(c.first_error.as_deref(), Some("refused"));
    }

    #[test]
    fn server_per_connection_and_per_delivery() {
        let s = |cpu_us, rss_kib| Some(Sample { cpu_us, rss_kib });
        let r = server_report(
            Some(7),
            [s(0, 1000), s(100, 2000), s(100, 2000), s(1100, 2100), s(1500, 2100)],
            1024,
            500,
        )
        .expect("all samples");
        assert_eq!(r.rss_per_connection_bytes, 1000);
        assert!(r.cpu_us_per_delivery.is_some_and(|v| (v - 2.0).abs() < 1e-9));
        assert!(server_report(None, [None, None, None, None, None], 1, 1).is_none());
    }
}

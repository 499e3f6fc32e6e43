//! The publishing side of each phase, and waiting for deliveries to catch up.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};

use super::clients::Shared;
use super::progress::Progress;
use super::publisher::Publisher;
use super::scan::Phase;

/// How often the control task samples the shared counters.
const POLL: Duration = Duration::from_millis(20);

/// What a phase published.
#[derive(Debug, Default)]
pub(crate) struct Published {
    /// Every seq the server assigned, in publish order.
    pub(crate) seqs: Vec<u64>,
    /// `sent_ns` of the first batch: the start of the delivery clock.
    pub(crate) first_sent_ns: u64,
    /// Wall time spent publishing.
    pub(crate) elapsed: Duration,
    /// Why publishing stopped early, if it did.
    pub(crate) error: Option<String>,
}

impl Published {
    /// Publishes one batch; returns its `sent_ns`, or `None` (and records why) on failure.
    async fn batch(&mut self, publisher: &Publisher, phase: Phase, first_index: u64, count: usize) -> Option<u64> {
        match publisher.publish(phase, first_index, count).await {
            Ok(batch) => {
                if self.seqs.is_empty() {
                    self.first_sent_ns = batch.sent_ns;
                }
                self.seqs.extend(batch.seqs);
                Some(batch.sent_ns)
            }
            Err(e) => {
                self.error = Some(format!("{e:#}"));
                None
            }
        }
    }
}

/// `rounds` bursts of `burst` events, back to back, in batches of at most `batch`.
pub(crate) async fn publish_burst(publisher: &Publisher, rounds: usize, burst: usize, batch: usize) -> Published {
    let started = Instant::now();
    let mut out = Published::default();
    'rounds: for round in 0..rounds {
        let mut done = 0;
        while done < burst {
            let n = batch.min(burst - done);
            let index = (round * burst + done) as u64;
            if out.batch(publisher, Phase::Burst, index, n).await.is_none() {
                break 'rounds;
            }
            done += n;
        }
    }
    out.elapsed = started.elapsed();
    out
}

/// `rate` events per second for `duration`. Each tick publishes what is due by then, so a
/// slow POST makes the next batch bigger instead of lowering the rate; ticks are 10 ms (or
/// one event's spacing when slower) to keep batches small and latency samples spread out.
pub(crate) async fn publish_steady(
    publisher: &Publisher,
    rate: f64,
    duration: Duration,
    batch: usize,
    progress: &Progress,
) -> Published {
    let total = (rate * duration.as_secs_f64()).round() as u64;
    progress.phase("steady", total);
    let tick = Duration::from_secs_f64((1.0 / rate).max(0.010));
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    // Give up if the server cannot take the rate at all, rather than running on.
    let give_up = duration + Duration::from_secs(10);
    let started = Instant::now();
    let mut out = Published::default();
    let mut sent = 0u64;
    while sent < total {
        ticker.tick().await;
        let elapsed = started.elapsed();
        if elapsed > give_up {
            out.error = Some(format!("published only {sent} of {total} events in {elapsed:?}"));
            break;
        }
        let due = ((elapsed.as_secs_f64() * rate).floor() as u64 + 1).min(total);
        while sent < due {
            let n = (batch as u64).min(due - sent) as usize;
            if out.batch(publisher, Phase::Steady, sent, n).await.is_none() {
                out.elapsed = started.elapsed();
                return out;
            }
            sent += n as u64;
        }
        progress.set(sent);
    }
    out.elapsed = started.elapsed();
    out
}

/// Publish → last receiving client for single events on an idle hub, one probe at a time.
pub(crate) struct Fanout {
    pub(crate) published: Published,
    /// Per probe: the slowest client's delay in microseconds, and whether all received it.
    pub(crate) probes: Vec<(u64, bool)>,
}

/// Publishes each probe alone and waits until every live client has it.
pub(crate) async fn run_probes(publisher: &Publisher, shared: &Shared, stall: Duration, progress: &Progress) -> Fanout {
    progress.phase("fanout", shared.probes.len() as u64);
    let mut fanout = Fanout {
        published: Published::default(),
        probes: Vec::new(),
    };
    let started = Instant::now();
    for (index, slot) in shared.probes.iter().enumerate() {
        // Let the previous probe's stragglers and any background work settle.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let Some(sent_ns) = fanout.published.batch(publisher, Phase::Probe, index as u64, 1).await else {
            break;
        };
        let live = || {
            let ready = shared.ready.load(Ordering::Relaxed);
            ready.saturating_sub(shared.dropped.load(Ordering::Relaxed)) as u64
        };
        let received = || slot.received.load(Ordering::Relaxed) as u64;
        // With no live client there is nothing to time: the probe counts as incomplete.
        let complete = live() > 0 && wait_for(received, live, stall, None).await;
        let last_ns = slot.last_ns.load(Ordering::Relaxed);
        fanout.probes.push((last_ns.saturating_sub(sent_ns) / 1000, complete));
        progress.set(index as u64 + 1);
    }
    fanout.published.elapsed = started.elapsed();
    fanout
}

/// Waits until `count() >= expected()`, or until `count` has not moved for `stall`.
/// Returns whether the target was reached.
pub(crate) async fn wait_for(
    count: impl Fn() -> u64,
    expected: impl Fn() -> u64,
    stall: Duration,
    progress: Option<&Progress>,
) -> bool {
    let mut last = count();
    let mut last_change = Instant::now();
    loop {
        let now_count = count();
        if let Some(p) = progress {
            p.set(now_count);
        }
        if now_count >= expected() {
            return true;
        }
        if now_count != last {
            last = now_count;
            last_change = Instant::now();
        } else if last_change.elapsed() >= stall {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

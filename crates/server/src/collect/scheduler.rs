//! Runs every source on its own task, behind its own breaker, and publishes.
//!
//! Per source: every poll interval, if someone wants the data (a subscriber of
//! its topic, or a REST read lately) or the idle interval has passed, take a
//! breaker permit and run `sample` on the blocking pool with the per-call
//! timeout. Success publishes the state value (`"stale": false`) and the
//! source's events; failure republishes the last good value marked
//! `"stale": true` with the error, and `rpc_error` (at most once per
//! [`RPC_ERROR_EVERY`] unless the error changes). Breaker transitions are
//! published as `circuit_breaker.*` events; OPEN → HALF_OPEN is driven by the
//! breaker's own timer, so a source recovers even if nobody is asking.
//!
//! A call that hangs past its timeout is counted as a failure and left to
//! finish on its own; the source is not called again until it has returned,
//! and its late result is discarded.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Sample, Source, SourceError};
use crate::alerts::Alerts;
use crate::breaker::{self, Breaker, BreakerConfig, BreakerSnapshot, State, Transition};
use crate::hub::{Hub, NewEvent};

/// `rpc_error` for a persisting failure is repeated at most this often.
pub const RPC_ERROR_EVERY: Duration = Duration::from_secs(30);

/// A REST read keeps a source at full rate for this many poll intervals.
const REST_DEMAND_INTERVALS: u32 = 12;

/// Scheduler settings (from `Config`).
#[derive(Debug, Clone)]
pub struct ScheduleConfig {
    /// Poll interval.
    pub interval: Duration,
    /// Per-call timeout.
    pub timeout: Duration,
    /// Interval multiplier without demand.
    pub idle_slowdown: u32,
    /// Breaker settings.
    pub breaker: BreakerConfig,
    /// `--source-interval`: by source name, or by family (`smart` for `smart:sda`).
    pub overrides: BTreeMap<String, Duration>,
    /// Per-call timeout of the SMART sources.
    pub smart_timeout: Duration,
}

impl ScheduleConfig {
    /// The interval of one source: its override, else its own, else the poll interval.
    fn interval_of(&self, name: &str, own: Option<Duration>) -> Duration {
        let family = name.split(':').next().unwrap_or(name);
        self.overrides
            .get(name)
            .or_else(|| self.overrides.get(family))
            .copied()
            .or(own)
            .unwrap_or(self.interval)
    }
}

impl From<&crate::config::Config> for ScheduleConfig {
    fn from(c: &crate::config::Config) -> Self {
        ScheduleConfig {
            interval: c.poll_interval,
            timeout: c.source_timeout,
            idle_slowdown: c.idle_slowdown,
            breaker: BreakerConfig::from(c),
            overrides: c.source_intervals.clone(),
            smart_timeout: c.smart_timeout,
        }
    }
}

/// The latest value of one source, for the REST mirrors.
#[derive(Debug, Clone)]
pub struct Latest {
    /// The published state value (with `stale`, `last_update`, and `error` when stale).
    pub value: Value,
    /// Whether it is the last good value of a failing source.
    pub stale: bool,
}

#[derive(Default)]
struct SourceSlot {
    /// The source's task ended abnormally: nothing will refresh it.
    stopped: bool,
    latest: Option<Latest>,
    breaker: Option<BreakerSnapshot>,
    /// When a REST client last read it.
    rest_read: Option<Instant>,
}

/// Handle to the collectors: latest values, breaker snapshots, demand marks.
#[derive(Clone, Default)]
pub struct Collectors {
    slots: Arc<RwLock<BTreeMap<String, SourceSlot>>>,
}

impl Collectors {
    /// The latest value of a source (by its name), marking a REST read (demand).
    pub fn read(&self, source: &str) -> Option<Latest> {
        let mut slots = self.slots.write();
        let slot = slots.get_mut(source)?;
        slot.rest_read = Some(Instant::now());
        slot.latest.clone()
    }

    /// Every breaker's snapshot, by source name.
    pub fn breakers(&self) -> Vec<BreakerSnapshot> {
        self.slots.read().values().filter_map(|s| s.breaker.clone()).collect()
    }

    /// Sources whose breaker is not closed or whose value is stale.
    pub fn degraded(&self) -> Vec<String> {
        self.slots
            .read()
            .iter()
            .filter(|(_, s)| {
                s.stopped
                    || s.latest.as_ref().is_some_and(|l| l.stale)
                    || s.breaker.as_ref().is_some_and(|b| b.state != State::Closed)
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    fn rest_demand(&self, source: &str, window: Duration) -> bool {
        self.slots
            .read()
            .get(source)
            .and_then(|s| s.rest_read)
            .is_some_and(|t| t.elapsed() < window)
    }

    fn update(&self, source: &str, f: impl FnOnce(&mut SourceSlot)) {
        f(self.slots.write().entry(source.to_owned()).or_default());
    }
}

/// Starts one task per source on `tracker`; they stop when `shutdown` fires.
pub fn spawn(
    hub: Hub,
    sources: Vec<Box<dyn Source>>,
    cfg: ScheduleConfig,
    alerts: Option<Alerts>,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) -> Collectors {
    let collectors = Collectors::default();
    for source in sources {
        let name = source.name().to_owned();
        collectors.update(&name, |_| {});
        tracker.spawn(run(
            source,
            hub.clone(),
            cfg.clone(),
            collectors.clone(),
            alerts.clone(),
            shutdown.clone(),
        ));
    }
    collectors
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Wall-clock text of a monotonic instant.
fn wall(at: Instant) -> String {
    breaker::wall_clock(at, Instant::now(), chrono::Utc::now())
}

type Call = tokio::task::JoinHandle<(Box<dyn Source>, Result<Sample, SourceError>)>;

/// One source's loop and everything it remembers between samples.
struct Runner {
    name: String,
    topic: &'static str,
    hub: Hub,
    cfg: ScheduleConfig,
    collectors: Collectors,
    breaker: Breaker,
    /// The source, while no call is running.
    idle: Option<Box<dyn Source>>,
    /// A call that outlived its timeout: the source comes back when it finishes.
    hung: Option<Call>,
    /// The last good value and its `last_update`.
    last_good: Option<(Value, String)>,
    last_sample: Option<Instant>,
    /// The error code of the last `rpc_error` sent, and when.
    rpc_error_sent: Option<(String, Instant)>,
    /// The alert engine, when this source feeds it (it always counts as a reader).
    alerts: Option<Alerts>,
    /// Since when the breaker has been away from closed.
    opened_at: Option<Instant>,
    /// When a still-running call was last counted as a failure.
    hung_counted: Option<Instant>,
}

/// One source's loop.
async fn run(
    source: Box<dyn Source>,
    hub: Hub,
    cfg: ScheduleConfig,
    collectors: Collectors,
    alerts: Option<Alerts>,
    shutdown: CancellationToken,
) {
    let name = source.name().to_owned();
    let mut r = Runner {
        alerts,
        opened_at: None,
        hung_counted: None,
        topic: source.topic(),
        breaker: Breaker::new(name.clone(), cfg.breaker),
        name,
        hub,
        cfg,
        collectors,
        idle: Some(source),
        hung: None,
        last_good: None,
        last_sample: None,
        rpc_error_sent: None,
    };
    let own = r.idle.as_ref().and_then(|s| s.interval());
    r.cfg.interval = r.cfg.interval_of(&r.name, own);
    // smartctl on a busy or sleepy disk takes seconds, not the microseconds of /proc.
    if r.name.starts_with("smart:") {
        r.cfg.timeout = r.cfg.smart_timeout;
    }
    let mut next_tick = Instant::now();
    let idle_every = r.cfg.interval * r.cfg.idle_slowdown.max(1);
    let rest_window = r.cfg.interval * REST_DEMAND_INTERVALS;
    loop {
        let wake = match r.breaker.next_deadline() {
            Some(d) if d < next_tick => d,
            _ => next_tick,
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(wake) => {}
        }
        let now = Instant::now();
        if let Some(t) = r.breaker.on_timer(now) {
            r.transition(&t, now);
        }
        r.snapshot(now);
        // Only after a real outcome since start: an alert loaded at start-up for a
        // breaker that was open must not be "resolved" before the source has answered.
        if let Some(alerts) = &r.alerts
            && (r.opened_at.is_some() || r.last_good.is_some())
        {
            alerts.on_breaker(&r.name, r.opened_at.map(|t| now.duration_since(t)));
        }
        let probing = r.breaker.state() == State::HalfOpen;
        if now < next_tick && !probing {
            continue;
        }
        if now >= next_tick {
            next_tick = now + r.cfg.interval;
        }
        if !r.reclaim().await {
            r.collectors.update(&r.name, |s| s.stopped = true);
            return;
        }
        let demanded = r.alerts.as_ref().is_some_and(|a| a.watches(&r.name))
            || r.hub.has_subscribers(r.topic)
            || r.collectors.rest_demand(&r.name, rest_window);
        let due = r.last_sample.is_none_or(|t| now.duration_since(t) >= idle_every);
        if !demanded && !due && !probing {
            continue;
        }
        // A call still running is counted as failing once per timeout period, not
        // on every tick.
        if r.idle.is_none() && r.hung_counted.is_some_and(|t| now.duration_since(t) < r.cfg.timeout) {
            continue;
        }
        let Ok(permit) = r.breaker.allow(now) else { continue };
        r.last_sample = Some(now);
        let Some(mut src) = r.idle.take() else {
            r.hung_counted = Some(now);
            // The previous call is still stuck: the source is as good as failing.
            let e = SourceError {
                code: breaker::REASON_TIMEOUT,
                message: format!("the previous sample has not returned after {:?}", r.cfg.timeout),
            };
            r.failed(permit, now, e);
            continue;
        };
        let started = std::time::Instant::now();
        let mut call: Call = tokio::task::spawn_blocking(move || {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| src.sample())).unwrap_or_else(|_| {
                Err(SourceError {
                    code: "panicked",
                    message: "the source panicked while sampling".into(),
                })
            });
            (src, result)
        });
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = tokio::time::timeout(r.cfg.timeout, &mut call) => r,
        };
        let now = Instant::now();
        match result {
            Ok(Ok((src, Ok(sample)))) => {
                r.idle = Some(src);
                tracing::debug!(source = %r.name, latency_us = started.elapsed().as_micros() as u64, "sampled");
                r.succeeded(permit, now, sample);
            }
            Ok(Ok((src, Err(e)))) => {
                r.idle = Some(src);
                r.failed(permit, now, e);
            }
            Ok(Err(_)) => {
                tracing::error!(source = %r.name, "a source's sampling task ended abnormally; it is stopped");
                r.collectors.update(&r.name, |s| s.stopped = true);
                return;
            }
            Err(_) => {
                r.hung = Some(call);
                r.hung_counted = Some(now);
                let e = SourceError {
                    code: breaker::REASON_TIMEOUT,
                    message: format!("no sample within {:?}", r.cfg.timeout),
                };
                r.failed(permit, now, e);
            }
        }
        r.snapshot(now);
    }
}

impl Runner {
    fn snapshot(&self, now: Instant) {
        let snap = self.breaker.snapshot(now, wall);
        self.collectors.update(&self.name, |s| s.breaker = Some(snap));
    }

    /// Takes the source back from a hung call that has finished (its late result
    /// is discarded: the call was already counted as a failure). False if the
    /// call's task died.
    async fn reclaim(&mut self) -> bool {
        match self.hung.take() {
            Some(call) if call.is_finished() => match call.await {
                Ok((src, _late)) => {
                    self.idle = Some(src);
                    true
                }
                Err(_) => {
                    tracing::error!(source = %self.name, "a source's sampling task ended abnormally; it is stopped");
                    false
                }
            },
            still_running => {
                self.hung = still_running;
                true
            }
        }
    }

    /// Publishes a transition and remembers since when the breaker is not closed.
    fn transition(&mut self, t: &Transition, now: Instant) {
        publish_transition(&self.hub, t);
        if t.to == State::Closed {
            self.opened_at = None;
        } else if self.opened_at.is_none() {
            self.opened_at = Some(now);
        }
    }

    fn succeeded(&mut self, permit: breaker::Permit, now: Instant, sample: Sample) {
        if let Some(t) = self.breaker.on_success(permit, now) {
            self.transition(&t, now);
        }
        if let Some(alerts) = &self.alerts {
            alerts.on_sample(&self.name, &sample.state);
        }
        let updated = now_rfc3339();
        let value = with_fields(
            sample.state,
            &[("stale", json!(false)), ("last_update", json!(updated))],
        );
        publish_state(&self.hub, self.topic, value.clone());
        for (kind, data) in sample.events {
            self.hub.publish_internal(&kind, data);
        }
        if self.rpc_error_sent.take().is_some() {
            publish_state(
                &self.hub,
                "rpc_error",
                json!({"source": self.name, "resolved": true, "at": updated}),
            );
        }
        self.last_good = Some((value.clone(), updated));
        self.collectors
            .update(&self.name, |s| s.latest = Some(Latest { value, stale: false }));
    }

    fn failed(&mut self, permit: breaker::Permit, now: Instant, e: SourceError) {
        tracing::warn!(source = %self.name, code = e.code, error = %e.message, "sampling failed");
        if let Some(t) = self.breaker.on_failure(permit, now, e.code) {
            self.transition(&t, now);
        }
        if let Some((good, updated)) = &self.last_good {
            let value = with_fields(
                good.clone(),
                &[
                    ("stale", json!(true)),
                    ("last_update", json!(updated)),
                    ("error", json!({"code": e.code, "message": e.message})),
                ],
            );
            publish_state(&self.hub, self.topic, value.clone());
            self.collectors
                .update(&self.name, |s| s.latest = Some(Latest { value, stale: true }));
        }
        let repeat = match &self.rpc_error_sent {
            Some((code, at)) => code != e.code || now.duration_since(*at) >= RPC_ERROR_EVERY,
            None => true,
        };
        if repeat {
            let snap = self.breaker.snapshot(now, wall);
            publish_state(
                &self.hub,
                "rpc_error",
                json!({
                    "source": self.name,
                    "code": e.code,
                    "message": e.message,
                    "at": now_rfc3339(),
                    "consecutive_failures": snap.consecutive_failures,
                    "breaker": snap.state,
                }),
            );
            self.rpc_error_sent = Some((e.code.to_owned(), now));
        }
    }
}

fn with_fields(mut value: Value, fields: &[(&str, Value)]) -> Value {
    if let Value::Object(o) = &mut value {
        for (k, v) in fields {
            o.insert((*k).to_owned(), v.clone());
        }
    }
    value
}

fn publish_state(hub: &Hub, topic: &str, data: Value) {
    let _ = hub.publish_now(vec![NewEvent {
        kind: topic.to_owned(),
        data,
    }]);
}

fn publish_transition(hub: &Hub, t: &Transition) {
    tracing::info!(source = %t.source, from = %t.from, to = %t.to, reason = %t.reason, "circuit breaker");
    hub.publish_internal(t.event_type(), t.to_json(wall));
}

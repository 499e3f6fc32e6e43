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
}

impl From<&crate::config::Config> for ScheduleConfig {
    fn from(c: &crate::config::Config) -> Self {
        ScheduleConfig {
            interval: c.poll_interval,
            timeout: c.source_timeout,
            idle_slowdown: c.idle_slowdown,
            breaker: BreakerConfig::from(c),
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
                s.latest.as_ref().is_some_and(|l| l.stale)
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

/// One source's loop.
async fn run(
    source: Box<dyn Source>,
    hub: Hub,
    cfg: ScheduleConfig,
    collectors: Collectors,
    shutdown: CancellationToken,
) {
    let name = source.name().to_owned();
    let topic = source.topic();
    let mut breaker = Breaker::new(name.clone(), cfg.breaker);
    let mut idle: Option<Box<dyn Source>> = Some(source);
    // A call that outlived its timeout: the source comes back when it finishes.
    let mut hung: Option<Call> = None;
    let mut last_good: Option<(Value, String)> = None;
    let mut last_sample: Option<Instant> = None;
    let mut rpc_error_sent: Option<(String, Instant)> = None;
    let mut next_tick = Instant::now();
    let idle_every = cfg.interval * cfg.idle_slowdown.max(1);
    let rest_window = cfg.interval * REST_DEMAND_INTERVALS;
    loop {
        let wake = match breaker.next_deadline() {
            Some(d) if d < next_tick => d,
            _ => next_tick,
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(wake) => {}
        }
        let now = Instant::now();
        if let Some(t) = breaker.on_timer(now) {
            publish_transition(&hub, &t);
        }
        collectors.update(&name, |s| s.breaker = Some(breaker.snapshot(now, wall)));
        let probing = breaker.state() == State::HalfOpen;
        if now < next_tick && !probing {
            continue;
        }
        if now >= next_tick {
            next_tick = now + cfg.interval;
        }
        // Take the source back from a hung call that has finished (its result is stale).
        if let Some(call) = hung.take() {
            if call.is_finished() {
                match call.await {
                    Ok((src, _late)) => idle = Some(src),
                    Err(_) => {
                        tracing::error!(source = %name, "a source's sampling task ended abnormally; it is stopped");
                        return;
                    }
                }
            } else {
                hung = Some(call);
                continue;
            }
        }
        let demanded = hub.has_subscribers(topic) || collectors.rest_demand(&name, rest_window);
        let due = last_sample.is_none_or(|t| now.duration_since(t) >= idle_every);
        if !demanded && !due && !probing {
            continue;
        }
        let Ok(permit) = breaker.allow(now) else { continue };
        let Some(mut src) = idle.take() else { continue };
        last_sample = Some(now);
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
            r = tokio::time::timeout(cfg.timeout, &mut call) => r,
        };
        let now = Instant::now();
        let outcome = match result {
            Ok(Ok((src, outcome))) => {
                idle = Some(src);
                outcome
            }
            Ok(Err(_)) => {
                tracing::error!(source = %name, "a source's sampling task ended abnormally; it is stopped");
                return;
            }
            Err(_) => {
                hung = Some(call);
                Err(SourceError {
                    code: breaker::REASON_TIMEOUT,
                    message: format!("no sample within {:?}", cfg.timeout),
                })
            }
        };
        match outcome {
            Ok(sample) => {
                tracing::debug!(source = %name, latency_us = started.elapsed().as_micros() as u64, "sampled");
                if let Some(t) = breaker.on_success(permit, now) {
                    publish_transition(&hub, &t);
                }
                let updated = now_rfc3339();
                let value = with_fields(
                    sample.state,
                    &[("stale", json!(false)), ("last_update", json!(updated))],
                );
                publish_state(&hub, topic, value.clone());
                for (kind, data) in sample.events {
                    hub.publish_internal(&kind, data);
                }
                if rpc_error_sent.take().is_some() {
                    publish_state(
                        &hub,
                        "rpc_error",
                        json!({"source": name, "resolved": true, "at": updated}),
                    );
                }
                last_good = Some((value.clone(), updated));
                collectors.update(&name, |s| {
                    s.latest = Some(Latest { value, stale: false });
                });
            }
            Err(e) => {
                tracing::warn!(source = %name, code = e.code, error = %e.message, "sampling failed");
                if let Some(t) = breaker.on_failure(permit, now, e.code) {
                    publish_transition(&hub, &t);
                }
                if let Some((good, updated)) = &last_good {
                    let value = with_fields(
                        good.clone(),
                        &[
                            ("stale", json!(true)),
                            ("last_update", json!(updated)),
                            ("error", json!({"code": e.code, "message": e.message})),
                        ],
                    );
                    publish_state(&hub, topic, value.clone());
                    collectors.update(&name, |s| s.latest = Some(Latest { value, stale: true }));
                }
                let repeat = match &rpc_error_sent {
                    Some((code, at)) => code != e.code || now.duration_since(*at) >= RPC_ERROR_EVERY,
                    None => true,
                };
                if repeat {
                    let snap = breaker.snapshot(now, wall);
                    publish_state(
                        &hub,
                        "rpc_error",
                        json!({
                            "source": name,
                            "code": e.code,
                            "message": e.message,
                            "at": now_rfc3339(),
                            "consecutive_failures": snap.consecutive_failures,
                            "breaker": snap.state,
                        }),
                    );
                    rpc_error_sent = Some((e.code.to_owned(), now));
                }
            }
        }
        collectors.update(&name, |s| s.breaker = Some(breaker.snapshot(now, wall)));
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

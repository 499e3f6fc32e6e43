//! Circuit breaker guarding one host-data source (SMART has one per disk).
//!
//! A pure state machine: no tasks, no clock of its own, no I/O. The caller
//! passes `now` to every call and drives the OPEN → HALF_OPEN timer itself
//! ([`Breaker::next_deadline`] / [`Breaker::on_timer`]), so the scheduler owns
//! every timer in one place and tests run on Tokio's paused clock.
//!
//! ```text
//!            `failures` consecutive failures
//!   CLOSED ─────────────────────────────────▶ OPEN ◀──────────┐
//!     ▲                                        │ timer        │ any probe fails
//!     │  2 probes succeed                      ▼              │ (open time doubles)
//!     └───────────────────────────────── HALF_OPEN ───────────┘
//! ```
//!
//! Every admitted call carries a [`Permit`] stamped with the breaker's
//! generation, which moves on every transition. A result reported with a permit
//! from an earlier generation is ignored: a call that hung across a transition
//! can neither flip the breaker nor count towards the next trip, and the probe
//! slots it may have held are released by the transition itself.

use std::time::Duration;

use rand::Rng;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::time::Instant;

/// Reason the caller reports when a call outlived its per-call timeout.
pub const REASON_TIMEOUT: &str = "timeout";
/// Reason of the OPEN → HALF_OPEN transition.
pub const REASON_TIMER: &str = "timer";
/// Reason of the HALF_OPEN → CLOSED transition.
pub const REASON_PROBE_SUCCEEDED: &str = "probe_succeeded";

/// Probes admitted per HALF_OPEN period; this many successes close the breaker.
const PROBES: u32 = 2;

/// Maps a nominal open time to the one actually used. Injectable so tests are
/// deterministic ([`no_jitter`]); whatever it returns is clamped to ±10 % of the
/// nominal time and to [`BreakerConfig::open_max`].
pub type Jitter = fn(Duration) -> Duration;

/// ±10 % uniformly: breakers that opened together (a shared disk controller
/// failing) should not all probe in the same instant.
pub fn default_jitter(nominal: Duration) -> Duration {
    nominal.mul_f64(rand::rng().random_range(0.9..=1.1))
}

/// The nominal time unchanged (tests, and anyone who wants exact timings).
pub fn no_jitter(nominal: Duration) -> Duration {
    nominal
}

/// Thresholds of a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures in CLOSED that open it (0 is treated as 1).
    pub failures: u32,
    /// Open time after the first trip; doubles on every failed probe.
    pub open_base: Duration,
    /// Cap of the open time, jitter included.
    pub open_max: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures: 5,
            open_base: Duration::from_secs(10),
            open_max: Duration::from_secs(300),
        }
    }
}

impl From<&crate::config::Config> for BreakerConfig {
    fn from(c: &crate::config::Config) -> Self {
        BreakerConfig {
            failures: c.breaker_failures,
            open_base: c.breaker_open_base,
            open_max: c.breaker_open_max,
        }
    }
}

/// Where a breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Calls pass.
    Closed,
    /// Calls are rejected until the timer moves it to HALF_OPEN.
    Open,
    /// A couple of probe calls decide between CLOSED and OPEN.
    HalfOpen,
}

impl State {
    /// `closed`, `open` or `half_open`, as in events and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Leave to make one call. Not `Clone`: it is consumed by the one report of the
/// call's outcome. It must always be reported (a timed-out call as a failure
/// with [`REASON_TIMEOUT`]): a probe permit that is dropped unreported keeps its
/// HALF_OPEN slot until the next transition.
#[must_use = "report the outcome with on_success or on_failure"]
#[derive(Debug, PartialEq, Eq)]
pub struct Permit {
    generation: u64,
    probe: bool,
}

impl Permit {
    /// Whether the call is a HALF_OPEN probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

/// A call refused because the breaker is open (or HALF_OPEN with its probes taken).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker is {state}")]
pub struct Rejected {
    /// `Open` or `HalfOpen`.
    pub state: State,
    /// When OPEN ends (None in HALF_OPEN: it ends with the probes in flight).
    pub next_probe: Option<Instant>,
}

/// A state change, to be published as [`Transition::event_type`] with
/// [`Transition::to_json`] as data. Counters describe the breaker right after
/// the transition (so `attempt` is 0 on `closed`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The breaker's name (the source).
    pub source: String,
    /// State before.
    pub from: State,
    /// State after.
    pub to: State,
    /// The failure's error code when opening, [`REASON_TIMER`] or [`REASON_PROBE_SUCCEEDED`].
    pub reason: String,
    /// Consecutive failures reported since the last success.
    pub consecutive_failures: u32,
    /// Times opened since last closed, 1 for the first.
    pub attempt: u32,
    /// When OPEN ends; only on transitions to OPEN.
    pub next_probe: Option<Instant>,
}

impl Transition {
    /// `circuit_breaker.open`, `circuit_breaker.half_open` or `circuit_breaker.closed`.
    pub fn event_type(&self) -> &'static str {
        match self.to {
            State::Closed => "circuit_breaker.closed",
            State::Open => "circuit_breaker.open",
            State::HalfOpen => "circuit_breaker.half_open",
        }
    }

    /// The event's data. `wall` turns `next_probe` into wall-clock text (see
    /// [`wall_clock`]); `next_probe` is always present, null unless opening, so
    /// every `circuit_breaker.*` event has the same fields.
    pub fn to_json(&self, wall: impl FnOnce(Instant) -> String) -> Value {
        json!({
            "source": self.source,
            "from": self.from.as_str(),
            "to": self.to.as_str(),
            "reason": self.reason,
            "consecutive_failures": self.consecutive_failures,
            "attempt": self.attempt,
            "next_probe": self.next_probe.map(wall),
        })
    }
}

/// A breaker as `GET /api/v1/breakers` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BreakerSnapshot {
    /// The breaker's name (the source).
    pub name: String,
    /// Current state.
    pub state: State,
    /// Consecutive failures reported since the last success.
    pub consecutive_failures: u32,
    /// Times opened since last closed.
    pub attempt: u32,
    /// Successes reported (late reports excluded).
    pub successes: u64,
    /// Failures reported (late reports excluded).
    pub failures: u64,
    /// Calls refused while OPEN or with the HALF_OPEN probes taken.
    pub rejections: u64,
    /// Outcomes reported for a permit from before the latest transition, and dropped.
    pub ignored: u64,
    /// Times opened since the breaker was created.
    pub opened: u64,
    /// Reason of the latest counted failure.
    pub last_failure: Option<String>,
    /// When OPEN ends, as wall-clock text.
    pub next_probe: Option<String>,
    /// Milliseconds until OPEN ends (clock-independent twin of `next_probe`).
    pub next_probe_in_ms: Option<u64>,
}

/// Wall-clock text (RFC 3339, milliseconds, `Z`, like message timestamps) of a
/// Tokio instant, given one instant whose wall-clock time is known (usually
/// `Instant::now()` and `Utc::now()` read together).
pub fn wall_clock(at: Instant, now: Instant, now_wall: chrono::DateTime<chrono::Utc>) -> String {
    let wall = if at >= now {
        chrono::TimeDelta::from_std(at - now)
            .ok()
            .and_then(|d| now_wall.checked_add_signed(d))
    } else {
        chrono::TimeDelta::from_std(now - at)
            .ok()
            .and_then(|d| now_wall.checked_sub_signed(d))
    };
    wall.unwrap_or(now_wall)
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// One source's breaker. See the module docs.
#[derive(Debug, Clone)]
pub struct Breaker {
    name: String,
    cfg: BreakerConfig,
    jitter: Jitter,
    state: State,
    /// Moves on every transition; permits from earlier generations are stale.
    generation: u64,
    consecutive_failures: u32,
    attempt: u32,
    /// Probes admitted in the current HALF_OPEN period, succeeded or in flight.
    probes: u32,
    probe_successes: u32,
    open_until: Option<Instant>,
    successes: u64,
    failures: u64,
    rejections: u64,
    ignored: u64,
    opened: u64,
    last_failure: Option<String>,
}

impl Breaker {
    /// A closed breaker with [`default_jitter`].
    pub fn new(name: impl Into<String>, cfg: BreakerConfig) -> Self {
        Breaker::with_jitter(name, cfg, default_jitter)
    }

    /// A closed breaker with the given jitter.
    pub fn with_jitter(name: impl Into<String>, cfg: BreakerConfig, jitter: Jitter) -> Self {
        Breaker {
            name: name.into(),
            cfg,
            jitter,
            state: State::Closed,
            generation: 0,
            consecutive_failures: 0,
            attempt: 0,
            probes: 0,
            probe_successes: 0,
            open_until: None,
            successes: 0,
            failures: 0,
            rejections: 0,
            ignored: 0,
            opened: 0,
            last_failure: None,
        }
    }

    /// The breaker's name (the source).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Asks to make a call. OPEN rejects even past its deadline: only
    /// [`Breaker::on_timer`] moves it on, so the transition is never lost in a
    /// return value that has no room for it.
    pub fn allow(&mut self, _now: Instant) -> Result<Permit, Rejected> {
        match self.state {
            State::Closed => Ok(self.permit(false)),
            State::HalfOpen if self.probes < PROBES => {
                self.probes += 1;
                Ok(self.permit(true))
            }
            state => {
                self.rejections += 1;
                Err(Rejected {
                    state,
                    next_probe: self.open_until,
                })
            }
        }
    }

    /// Reports a call that succeeded.
    pub fn on_success(&mut self, permit: Permit, _now: Instant) -> Option<Transition> {
        if !self.current(&permit) {
            return None;
        }
        self.successes += 1;
        self.consecutive_failures = 0;
        match self.state {
            State::HalfOpen => {
                self.probe_successes += 1;
                if self.probe_successes < PROBES {
                    return None;
                }
                self.attempt = 0;
                self.open_until = None;
                Some(self.transition(State::Closed, REASON_PROBE_SUCCEEDED))
            }
            State::Closed | State::Open => None,
        }
    }

    /// Reports a call that failed; `reason` is its error code ([`REASON_TIMEOUT`]
    /// for a call slower than its timeout).
    pub fn on_failure(&mut self, permit: Permit, now: Instant, reason: &str) -> Option<Transition> {
        if !self.current(&permit) {
            return None;
        }
        self.failures += 1;
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        self.last_failure = Some(reason.to_owned());
        match self.state {
            State::Closed if self.consecutive_failures < self.cfg.failures.max(1) => None,
            State::Closed | State::HalfOpen => Some(self.open(now, reason)),
            State::Open => None,
        }
    }

    /// Moves OPEN to HALF_OPEN once its deadline has passed; call it when
    /// [`Breaker::next_deadline`] is reached, traffic or not.
    pub fn on_timer(&mut self, now: Instant) -> Option<Transition> {
        match self.open_until {
            Some(until) if self.state == State::Open && now >= until => {
                self.open_until = None;
                Some(self.transition(State::HalfOpen, REASON_TIMER))
            }
            _ => None,
        }
    }

    /// When [`Breaker::on_timer`] has something to do (only while OPEN).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.open_until
    }

    /// The breaker for the API; `wall` turns the next probe into wall-clock text
    /// (see [`wall_clock`]).
    pub fn snapshot(&self, now: Instant, wall: impl FnOnce(Instant) -> String) -> BreakerSnapshot {
        BreakerSnapshot {
            name: self.name.clone(),
            state: self.state,
            consecutive_failures: self.consecutive_failures,
            attempt: self.attempt,
            successes: self.successes,
            failures: self.failures,
            rejections: self.rejections,
            ignored: self.ignored,
            opened: self.opened,
            last_failure: self.last_failure.clone(),
            next_probe: self.open_until.map(wall),
            next_probe_in_ms: self
                .open_until
                .map(|t| u64::try_from(t.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX)),
        }
    }

    fn permit(&self, probe: bool) -> Permit {
        Permit {
            generation: self.generation,
            probe,
        }
    }

    /// Whether a report belongs to the current generation; counts it as ignored if not.
    fn current(&mut self, permit: &Permit) -> bool {
        let current = permit.generation == self.generation;
        if !current {
            self.ignored += 1;
        }
        current
    }

    fn open(&mut self, now: Instant, reason: &str) -> Transition {
        self.attempt = self.attempt.saturating_add(1);
        self.opened += 1;
        self.open_until = Some(now + self.open_time());
        self.transition(State::Open, reason)
    }

    /// `open_base · 2^(attempt-1)` capped at `open_max`, jittered within ±10 %
    /// and never above `open_max`.
    fn open_time(&self) -> Duration {
        let doublings = self.attempt.saturating_sub(1).min(31);
        let nominal = self.cfg.open_base.saturating_mul(1 << doublings).min(self.cfg.open_max);
        let low = nominal.mul_f64(0.9);
        let high = nominal.mul_f64(1.1).min(self.cfg.open_max);
        (self.jitter)(nominal).max(low).min(high)
    }

    /// Every transition goes through here: the generation moves (earlier permits
    /// go stale) and the HALF_OPEN probe slots are released.
    fn transition(&mut self, to: State, reason: &str) -> Transition {
        let from = self.state;
        self.state = to;
        self.generation += 1;
        self.probes = 0;
        self.probe_successes = 0;
        Transition {
            source: self.name.clone(),
            from,
            to,
            reason: reason.to_owned(),
            consecutive_failures: self.consecutive_failures,
            attempt: self.attempt,
            next_probe: if to == State::Open { self.open_until } else { None },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    const SEC: Duration = Duration::from_secs(1);

    fn breaker() -> Breaker {
        Breaker::with_jitter("system", BreakerConfig::default(), no_jitter)
    }

    /// Fails `n` fresh calls; returns the transitions they produced.
    fn fail(b: &mut Breaker, n: u32) -> Vec<Transition> {
        (0..n)
            .filter_map(|_| {
                let p = b.allow(Instant::now()).expect("admitted");
                b.on_failure(p, Instant::now(), "read_failed")
            })
            .collect()
    }

    fn succeed(b: &mut Breaker) -> Option<Transition> {
        let p = b.allow(Instant::now()).expect("admitted");
        b.on_success(p, Instant::now())
    }

    /// Waits out OPEN and fires the timer, as the scheduler does.
    async fn wait_open(b: &mut Breaker) -> Transition {
        let deadline = b.next_deadline().expect("open");
        advance(deadline - Instant::now()).await;
        b.on_timer(Instant::now()).expect("half-open")
    }

    #[tokio::test(start_paused = true)]
    async fn trips_at_the_fifth_consecutive_failure_not_the_fourth() {
        let mut b = breaker();
        assert!(fail(&mut b, 4).is_empty());
        assert_eq!(b.state(), State::Closed);
        let t0 = Instant::now();
        let t = fail(&mut b, 1).pop().expect("opened");
        assert_eq!(b.state(), State::Open);
        assert_eq!(
            t,
            Transition {
                source: "system".into(),
                from: State::Closed,
                to: State::Open,
                reason: "read_failed".into(),
                consecutive_failures: 5,
                attempt: 1,
                next_probe: Some(t0 + 10 * SEC),
            }
        );
        assert_eq!(t.event_type(), "circuit_breaker.open");
        assert_eq!(b.next_deadline(), Some(t0 + 10 * SEC));
        let rejected = b.allow(Instant::now()).unwrap_err();
        assert_eq!(rejected.state, State::Open);
        assert_eq!(rejected.next_probe, Some(t0 + 10 * SEC));
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_count() {
        let mut b = breaker();
        assert!(fail(&mut b, 4).is_empty());
        assert_eq!(succeed(&mut b), None);
        assert_eq!(b.snapshot(Instant::now(), |_| String::new()).consecutive_failures, 0);
        assert!(fail(&mut b, 4).is_empty());
        assert_eq!(b.state(), State::Closed);
        assert_eq!(fail(&mut b, 1).len(), 1);
        assert_eq!(b.state(), State::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn recovers_through_half_open_on_the_timer_alone() {
        let mut b = breaker();
        fail(&mut b, 5);
        let opened_at = Instant::now();

        advance(10 * SEC - Duration::from_millis(1)).await;
        assert_eq!(b.on_timer(Instant::now()), None, "too early");
        assert_eq!(b.state(), State::Open);
        advance(Duration::from_millis(1)).await;
        // No call in between: the timer alone moves it.
        let t = b.on_timer(Instant::now()).expect("half-open");
        assert_eq!(Instant::now(), opened_at + 10 * SEC);
        assert_eq!(
            (t.from, t.to, t.reason.as_str()),
            (State::Open, State::HalfOpen, "timer")
        );
        assert_eq!((t.attempt, t.consecutive_failures, t.next_probe), (1, 5, None));
        assert_eq!(t.event_type(), "circuit_breaker.half_open");
        assert_eq!(b.state(), State::HalfOpen);
        assert_eq!(b.next_deadline(), None);
        assert_eq!(b.on_timer(Instant::now()), None, "no repeat");

        let p1 = b.allow(Instant::now()).expect("probe 1");
        assert!(p1.is_probe());
        assert_eq!(b.on_success(p1, Instant::now()), None, "one success is not enough");
        let t = succeed(&mut b).expect("closed");
        assert_eq!(
            (t.from, t.to, t.reason.as_str()),
            (State::HalfOpen, State::Closed, "probe_succeeded")
        );
        assert_eq!((t.attempt, t.consecutive_failures, t.next_probe), (0, 0, None));
        assert_eq!(t.event_type(), "circuit_breaker.closed");
        assert_eq!(b.state(), State::Closed);
        assert!(!b.allow(Instant::now()).expect("closed admits").is_probe());
    }

    #[tokio::test(start_paused = true)]
    async fn failed_probes_double_the_open_time_up_to_the_cap_then_reset() {
        let mut b = breaker();
        fail(&mut b, 5);
        let mut times = vec![b.next_deadline().unwrap() - Instant::now()];
        for attempt in 2..=8 {
            wait_open(&mut b).await;
            let t = fail(&mut b, 1).pop().expect("reopened");
            assert_eq!((t.from, t.to, t.attempt), (State::HalfOpen, State::Open, attempt));
            times.push(t.next_probe.unwrap() - Instant::now());
        }
        let secs: Vec<u64> = times.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [10, 20, 40, 80, 160, 300, 300, 300]);

        wait_open(&mut b).await;
        succeed(&mut b);
        assert_eq!(succeed(&mut b).map(|t| t.to), Some(State::Closed));
        let t = fail(&mut b, 5).pop().expect("opened again");
        assert_eq!(t.attempt, 1);
        assert_eq!(t.next_probe, Some(Instant::now() + 10 * SEC));
        assert_eq!(b.snapshot(Instant::now(), |_| String::new()).opened, 9);
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_call_from_before_the_trip_neither_wedges_nor_flips_it() {
        let mut b = breaker();
        let hung_ok = b.allow(Instant::now()).unwrap();
        let hung_err = b.allow(Instant::now()).unwrap();
        fail(&mut b, 5);
        assert_eq!(b.state(), State::Open);

        // Success after the breaker opened: ignored, still open on its timer.
        assert_eq!(b.on_success(hung_ok, Instant::now()), None);
        assert_eq!(b.state(), State::Open);
        wait_open(&mut b).await;

        // A stale failure in HALF_OPEN neither reopens it nor takes a probe slot.
        assert_eq!(b.on_failure(hung_err, Instant::now(), "timeout"), None);
        assert_eq!(b.state(), State::HalfOpen);
        succeed(&mut b);
        assert_eq!(succeed(&mut b).map(|t| t.to), Some(State::Closed));

        let s = b.snapshot(Instant::now(), |_| String::new());
        assert_eq!(
            (s.ignored, s.successes, s.failures, s.consecutive_failures),
            (2, 2, 5, 0)
        );
        assert_eq!(s.last_failure.as_deref(), Some("read_failed"));
    }

    #[tokio::test(start_paused = true)]
    async fn stale_results_do_not_count_towards_the_next_trip() {
        let mut b = breaker();
        let stale: Vec<Permit> = (0..10).map(|_| b.allow(Instant::now()).unwrap()).collect();
        fail(&mut b, 5);
        wait_open(&mut b).await;
        succeed(&mut b);
        succeed(&mut b);
        assert_eq!(b.state(), State::Closed);
        assert!(fail(&mut b, 4).is_empty());
        for p in stale {
            assert_eq!(b.on_failure(p, Instant::now(), "timeout"), None);
        }
        assert_eq!(b.state(), State::Closed);
        assert_eq!(b.snapshot(Instant::now(), |_| String::new()).consecutive_failures, 4);
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_admits_two_probes_and_a_timed_out_probe_reopens_it() {
        let mut b = breaker();
        fail(&mut b, 5);
        wait_open(&mut b).await;
        let p1 = b.allow(Instant::now()).unwrap();
        let p2 = b.allow(Instant::now()).unwrap();
        assert!(p1.is_probe() && p2.is_probe());
        let third = b.allow(Instant::now()).unwrap_err();
        assert_eq!(
            third,
            Rejected {
                state: State::HalfOpen,
                next_probe: None
            }
        );

        // p1 hangs; the caller's per-call timeout reports it.
        advance(3 * SEC).await;
        let t = b.on_failure(p1, Instant::now(), REASON_TIMEOUT).expect("reopened");
        assert_eq!(
            (t.from, t.to, t.reason.as_str(), t.attempt),
            (State::HalfOpen, State::Open, "timeout", 2)
        );
        assert_eq!(t.next_probe, Some(Instant::now() + 20 * SEC));
        // The other probe's late success does not close it again.
        assert_eq!(b.on_success(p2, Instant::now()), None);
        assert_eq!(b.state(), State::Open);

        // The slots were released: the next HALF_OPEN admits two fresh probes.
        wait_open(&mut b).await;
        let _a = b.allow(Instant::now()).unwrap();
        let _b = b.allow(Instant::now()).unwrap();
        assert!(b.allow(Instant::now()).is_err());
        assert_eq!(b.snapshot(Instant::now(), |_| String::new()).rejections, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn one_probe_success_then_failure_reopens() {
        let mut b = breaker();
        fail(&mut b, 5);
        wait_open(&mut b).await;
        assert_eq!(succeed(&mut b), None);
        let t = fail(&mut b, 1).pop().expect("reopened");
        assert_eq!((t.to, t.attempt, t.consecutive_failures), (State::Open, 2, 1));
        // At most two probes per HALF_OPEN period, even one after the other.
        wait_open(&mut b).await;
        succeed(&mut b);
        let p = b.allow(Instant::now()).unwrap();
        assert!(b.allow(Instant::now()).is_err());
        assert_eq!(b.on_success(p, Instant::now()).map(|t| t.to), Some(State::Closed));
    }

    #[tokio::test(start_paused = true)]
    async fn only_transitions_produce_events() {
        let mut b = breaker();
        let mut events = Vec::new();
        let extra: Vec<Permit> = (0..3).map(|_| b.allow(Instant::now()).unwrap()).collect();
        events.extend(fail(&mut b, 5));
        for p in extra {
            events.extend(b.on_failure(p, Instant::now(), "read_failed"));
        }
        for _ in 0..3 {
            assert!(b.allow(Instant::now()).is_err());
            events.extend(b.on_timer(Instant::now()));
        }
        events.push(wait_open(&mut b).await);
        events.extend(b.on_timer(Instant::now()));
        advance(SEC).await;
        events.extend(b.on_timer(Instant::now()));
        events.extend(succeed(&mut b));
        events.extend(succeed(&mut b));
        events.extend(succeed(&mut b));
        events.extend(b.on_timer(Instant::now()));
        let kinds: Vec<&str> = events.iter().map(Transition::event_type).collect();
        assert_eq!(
            kinds,
            [
                "circuit_breaker.open",
                "circuit_breaker.half_open",
                "circuit_breaker.closed"
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn jitter_stays_within_ten_percent_and_under_the_max() {
        let cfg = BreakerConfig::default();
        for _ in 0..200 {
            let mut b = Breaker::new("system", cfg);
            fail(&mut b, 5);
            let d = b.next_deadline().unwrap() - Instant::now();
            assert!(d >= 9 * SEC && d <= 11 * SEC, "{d:?}");
            for _ in 0..6 {
                wait_open(&mut b).await;
                fail(&mut b, 1);
            }
            // Nominal 300 s: only downwards.
            let d = b.next_deadline().unwrap() - Instant::now();
            assert!(d >= 270 * SEC && d <= 300 * SEC, "{d:?}");
        }

        // An injected jitter is clamped the same way.
        let mut wild = Breaker::with_jitter("system", cfg, |d| d * 3);
        fail(&mut wild, 5);
        assert_eq!(wild.next_deadline().unwrap() - Instant::now(), 11 * SEC);
        for _ in 0..6 {
            wait_open(&mut wild).await;
            fail(&mut wild, 1);
        }
        assert_eq!(wild.next_deadline().unwrap() - Instant::now(), 300 * SEC);
        let mut zero = Breaker::with_jitter("system", cfg, |_| Duration::ZERO);
        fail(&mut zero, 5);
        assert_eq!(zero.next_deadline().unwrap() - Instant::now(), 9 * SEC);
    }

    #[tokio::test(start_paused = true)]
    async fn event_data_and_snapshot_serialise() {
        let mut b = breaker();
        fail(&mut b, 5);
        let now = Instant::now();
        let wall = |t: Instant| wall_clock(t, now, chrono::DateTime::UNIX_EPOCH);
        let t = b.on_failure(
            Permit {
                generation: 0,
                probe: false,
            },
            now,
            "x",
        );
        assert_eq!(t, None);
        let open = Transition {
            source: "system".into(),
            from: State::Closed,
            to: State::Open,
            reason: "timeout".into(),
            consecutive_failures: 5,
            attempt: 1,
            next_probe: Some(now + 10 * SEC),
        };
        assert_eq!(
            open.to_json(wall),
            json!({
                "source": "system", "from": "closed", "to": "open", "reason": "timeout",
                "consecutive_failures": 5, "attempt": 1, "next_probe": "1970-01-01T00:00:10.000Z",
            })
        );
        advance(4 * SEC).await;
        let s = serde_json::to_value(b.snapshot(Instant::now(), wall)).unwrap();
        assert_eq!(
            s,
            json!({
                "name": "system", "state": "open", "consecutive_failures": 5, "attempt": 1,
                "successes": 0, "failures": 5, "rejections": 0, "ignored": 1, "opened": 1,
                "last_failure": "read_failed", "next_probe": "1970-01-01T00:00:10.000Z",
                "next_probe_in_ms": 6000,
            })
        );
        assert_eq!(serde_json::to_value(State::HalfOpen).unwrap(), json!("half_open"));
        assert_eq!(
            wall_clock(now, now + SEC, chrono::DateTime::UNIX_EPOCH),
            "1969-12-31T23:59:59.000Z"
        );
    }

    #[test]
    fn defaults_match_the_configuration_defaults() {
        assert_eq!(
            BreakerConfig::from(&crate::config::Config::default()),
            BreakerConfig::default()
        );
    }

    #[test]
    fn a_zero_threshold_trips_on_the_first_failure() {
        let cfg = BreakerConfig {
            failures: 0,
            ..BreakerConfig::default()
        };
        let mut b = Breaker::with_jitter("smart:sda", cfg, no_jitter);
        let now = Instant::now();
        let p = b.allow(now).unwrap();
        assert_eq!(b.on_failure(p, now, "tool_failed").map(|t| t.to), Some(State::Open));
    }
}

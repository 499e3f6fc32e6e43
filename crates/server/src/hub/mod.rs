//! The event hub: sequencing, history, subscriptions and fan-out.
//!
//! `publish` is the only way a message enters the hub. Under one lock it stamps
//! event-class messages with the next `seq`, encodes each message once, appends
//! events to the history ring and hands the same bytes to every matching
//! session's outbox. It never awaits a socket: a full outbox closes that client
//! (4008) instead of slowing the publisher. Sessions are registered, subscribed
//! and resumed under the same lock, which is what makes `welcome.seq`,
//! `subscribed` and the replay/live seam exact.

mod connection;
mod echo;
mod history;
mod inbound;
mod keepalive;
mod outbox;
mod ratelimit;
mod session;
mod stats;
pub mod ws;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use serde_json::Value;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use sigmavault_proto::server::{Reset, Welcome, encode};
use sigmavault_proto::topics::DEFAULT_SUBSCRIPTIONS;
use sigmavault_proto::{CloseCode, DeliveryClass, Pattern, SubscriptionSet, topic_info};

use crate::config::Config;
use history::History;
use outbox::{EventFrame, Mode, Push, StateFrame};
use session::{Session, SessionKind};
use stats::Counters;
pub use stats::HubStats;

/// Settings the hub takes from [`Config`].
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// WebSocket ping interval.
    pub ping_interval: Duration,
    /// Silence tolerated after a ping.
    pub pong_timeout: Duration,
    /// Stalled-write limit.
    pub write_timeout: Duration,
    /// Event queue bound per client.
    pub queue: usize,
    /// Largest inbound message.
    pub max_message: usize,
    /// Initial read buffer per connection.
    pub read_buffer: usize,
    /// Inbound rate limit.
    pub rate_limit: u32,
    /// Inbound burst.
    pub rate_burst: u32,
    /// History ring size.
    pub history: usize,
    /// Heartbeat interval.
    pub heartbeat_interval: Duration,
    /// Connection cap.
    pub max_connections: usize,
}

impl From<&Config> for HubConfig {
    fn from(c: &Config) -> Self {
        HubConfig {
            ping_interval: c.ws_ping_interval,
            pong_timeout: c.ws_pong_timeout,
            write_timeout: c.ws_write_timeout,
            queue: c.ws_queue,
            max_message: c.ws_max_message,
            read_buffer: c.ws_read_buffer,
            rate_limit: c.ws_rate_limit,
            rate_burst: c.ws_rate_burst,
            history: c.history,
            heartbeat_interval: c.heartbeat_interval,
            max_connections: c.max_connections,
        }
    }
}

/// A message to publish: its type and its `data` object.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Event type, e.g. `custom.backup.finished`.
    pub kind: String,
    /// The `data` payload.
    pub data: Value,
}

/// Why a publish was refused.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The hub is shutting down.
    #[error("the hub is shutting down")]
    ShuttingDown,
}

/// Handle to the hub; cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

struct HubInner {
    cfg: HubConfig,
    /// Identifies this history; seqs mean something only within one epoch.
    epoch: String,
    /// Zero point of the hub clock (milliseconds in atomics).
    start: Instant,
    /// The latest seq, stored after the history append. Writers read it under their
    /// outbox lock to decide that a replay has caught up (see `finish_replay`).
    head: AtomicU64,
    /// Serialises sequencing, registration and subscription changes.
    publish: Mutex<PublishState>,
    history: RwLock<History>,
    /// All open sessions. Written under `publish`; read by the sweeper and stats.
    sessions: RwLock<HashMap<u64, Arc<Session>>>,
    /// Latest value of every state topic and key, for new subscribers.
    state: RwLock<HashMap<(Arc<str>, Option<Arc<str>>), StateFrame>>,
    counters: Counters,
    /// The subscription set every new `/ws` connection starts with (shared).
    default_subs: Arc<SubscriptionSet>,
    next_id: AtomicU64,
    /// Connections admitted (upgrade accepted, not yet finished).
    admitted: AtomicUsize,
    closing: AtomicBool,
    /// Parent of every session's abort token: cancelled when the grace period ends.
    abort_all: CancellationToken,
    tracker: TaskTracker,
}

/// Guarded by `HubInner::publish`.
struct PublishState {
    next_seq: u64,
    /// Subscribers per event type. Cleared on any registration or subscription
    /// change; rebuilt on the next publish of that type.
    subscribers: HashMap<Arc<str>, Arc<[Arc<Session>]>>,
}

/// Result of a `resume` request.
pub(crate) enum ResumeOutcome {
    /// Replay scheduled; the writer streams it and then sends `resumed`.
    Replaying,
    /// Position cannot be honoured; `reset` was queued.
    Reset,
    /// `since` is ahead of the latest seq.
    SinceAhead { head: u64 },
}

/// A connection slot, released when dropped.
pub struct Admission {
    hub: Hub,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.hub.inner.admitted.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Formats the envelope timestamp: RFC 3339, UTC, milliseconds.
pub(crate) fn timestamp() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Hub {
    /// Creates a hub whose tasks live on `tracker` and whose connections are
    /// aborted when `abort_all` is cancelled.
    pub fn new(cfg: HubConfig, tracker: TaskTracker, abort_all: CancellationToken) -> Hub {
        Hub {
            inner: Arc::new(HubInner {
                history: RwLock::new(History::new(cfg.history)),
                cfg,
                epoch: uuid::Uuid::new_v4().to_string(),
                start: Instant::now(),
                head: AtomicU64::new(0),
                publish: Mutex::new(PublishState {
                    next_seq: 1,
                    subscribers: HashMap::new(),
                }),
                sessions: RwLock::new(HashMap::new()),
                state: RwLock::new(HashMap::new()),
                counters: Counters::default(),
                default_subs: Arc::new(SubscriptionSet::from_patterns(
                    DEFAULT_SUBSCRIPTIONS.iter().filter_map(|p| Pattern::parse(p).ok()),
                )),
                next_id: AtomicU64::new(1),
                admitted: AtomicUsize::new(0),
                closing: AtomicBool::new(false),
                abort_all,
                tracker,
            }),
        }
    }

    /// Starts the keep-alive sweeper and the heartbeat publisher.
    pub fn start_background(&self, shutdown: CancellationToken) {
        self.inner
            .tracker
            .spawn(keepalive::sweeper(self.clone(), shutdown.clone()));
        self.inner
            .tracker
            .spawn(keepalive::heartbeat(self.clone(), shutdown));
    }

    /// The hub's settings.
    pub fn config(&self) -> &HubConfig {
        &self.inner.cfg
    }

    /// The current epoch.
    pub fn epoch(&self) -> &str {
        &self.inner.epoch
    }

    /// The latest seq (0 before the first event).
    pub fn head(&self) -> u64 {
        self.inner.head.load(Ordering::Acquire)
    }

    /// Milliseconds on the hub clock.
    pub(crate) fn now_ms(&self) -> u64 {
        self.inner.start.elapsed().as_millis() as u64
    }

    /// Number of open sessions.
    pub fn client_count(&self) -> usize {
        self.inner.sessions.read().len()
    }

    /// Whether shutdown has begun.
    pub fn is_closing(&self) -> bool {
        self.inner.closing.load(Ordering::Acquire)
    }

    /// Reserves a connection slot, or `None` when `max_connections` is reached or
    /// the hub is closing.
    pub fn try_admit(&self) -> Option<Admission> {
        if self.is_closing() {
            return None;
        }
        let max = self.inner.cfg.max_connections;
        let admitted = self
            .inner
            .admitted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            });
        match admitted {
            Ok(_) => Some(Admission { hub: self.clone() }),
            Err(_) => {
                self.inner.counters.rejected.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Publishes messages in order. Returns each message's seq (`None` for
    /// state-class messages, which carry none).
    pub fn publish(&self, events: Vec<NewEvent>) -> Result<Vec<Option<u64>>, PublishError> {
        if self.is_closing() {
            return Err(PublishError::ShuttingDown);
        }
        let ts = timestamp();
        // Serialise payloads before taking the lock; only the envelope needs the seq.
        let prepared: Vec<(Arc<str>, DeliveryClass, Option<Arc<str>>, String)> = events
            .into_iter()
            .map(|e| {
                let info = topic_info(&e.kind);
                let key = info.key_field.and_then(|f| e.data.get(f)).map(|v| match v {
                    Value::String(s) => Arc::from(s.as_str()),
                    other => Arc::from(other.to_string()),
                });
                (Arc::from(e.kind), info.class, key, e.data.to_string())
            })
            .collect();

        let inner = &*self.inner;
        let mut publish = inner.publish.lock();
        let mut seqs = Vec::with_capacity(prepared.len());
        let mut frames: Vec<Frame> = Vec::with_capacity(prepared.len());
        {
            let mut history = inner.history.write();
            for (kind, class, key, data) in prepared {
                match class {
                    DeliveryClass::Event => {
                        let seq = publish.next_seq;
                        publish.next_seq += 1;
                        let bytes = Utf8Bytes::from(encode(&kind, &ts, Some(seq), None, &data));
                        let frame = EventFrame { seq, kind, bytes };
                        history.push(frame.clone());
                        seqs.push(Some(seq));
                        frames.push(Frame::Event(frame));
                    }
                    DeliveryClass::State => {
                        let bytes = Utf8Bytes::from(encode(&kind, &ts, None, None, &data));
                        let frame = StateFrame { kind, key, bytes };
                        inner
                            .state
                            .write()
                            .insert((frame.kind.clone(), frame.key.clone()), frame.clone());
                        seqs.push(None);
                        frames.push(Frame::State(frame));
                    }
                }
            }
        }
        inner.head.store(publish.next_seq - 1, Ordering::Release);
        let published = frames.len() as u64;

        // Fan out runs of consecutive events of one type together: one lock and one
        // wake per session per run instead of per event.
        let mut rest = &frames[..];
        while let Some(first) = rest.first() {
            let kind = first.kind().clone();
            let subscribers = self.subscribers(&mut publish, &kind);
            match first {
                Frame::State(state) => {
                    for s in subscribers.iter() {
                        s.with_outbox(|o| o.push_state(state.clone()));
                    }
                    rest = &rest[1..];
                }
                Frame::Event(_) => {
                    let run = rest
                        .iter()
                        .take_while(|f| matches!(f, Frame::Event(e) if e.kind == kind))
                        .count();
                    let events: Vec<&EventFrame> = rest[..run]
                        .iter()
                        .filter_map(|f| match f {
                            Frame::Event(e) => Some(e),
                            Frame::State(_) => None,
                        })
                        .collect();
                    for s in subscribers.iter() {
                        if s.with_outbox(|o| o.push_events(events.iter().copied()))
                            == Push::Overflowed
                        {
                            self.on_overflow(s);
                        }
                    }
                    rest = &rest[run..];
                }
            }
        }
        drop(publish);
        inner
            .counters
            .published
            .fetch_add(published, Ordering::Relaxed);
        Ok(seqs)
    }

    /// Publishes one message built by the server itself.
    pub fn publish_one(&self, kind: &str, data: Value) -> Result<Option<u64>, PublishError> {
        let seqs = self.publish(vec![NewEvent {
            kind: kind.to_owned(),
            data,
        }])?;
        Ok(seqs.into_iter().next().flatten())
    }

    fn on_overflow(&self, s: &Session) {
        self.inner
            .counters
            .slow_consumer_closes
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            client_id = %s.client_id,
            queue = self.inner.cfg.queue,
            last_seq = s.last_delivered_seq.load(Ordering::Relaxed),
            "client queue overflowed; closing with 4008"
        );
    }

    /// The cached subscriber list for a type, rebuilt if invalidated.
    fn subscribers(&self, publish: &mut PublishState, kind: &Arc<str>) -> Arc<[Arc<Session>]> {
        if let Some(list) = publish.subscribers.get(kind) {
            return list.clone();
        }
        let list: Arc<[Arc<Session>]> = self
            .inner
            .sessions
            .read()
            .values()
            .filter(|s| s.subs.lock().matches(kind))
            .cloned()
            .collect();
        publish.subscribers.insert(kind.clone(), list.clone());
        list
    }

    /// Registers a new session: queues `welcome` and current state values, and
    /// starts a replay when the upgrade asked for one.
    pub(crate) fn register(
        &self,
        kind: SessionKind,
        resume: Option<(String, u64)>,
    ) -> Arc<Session> {
        let inner = &*self.inner;
        let subs = match kind {
            SessionKind::Events => inner.default_subs.clone(),
            SessionKind::Echo => Arc::new(SubscriptionSet::new()),
        };
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let session = Session::new(
            id,
            kind,
            subs,
            inner.cfg.queue,
            self.now_ms(),
            inner.abort_all.child_token(),
        );

        let mut publish = inner.publish.lock();
        inner.sessions.write().insert(id, session.clone());
        publish.subscribers.clear();
        if kind == SessionKind::Events {
            let subs = session.subs.lock().clone();
            let welcome = Welcome {
                client_id: session.client_id.to_string(),
                server_version: crate::VERSION.to_owned(),
                protocol_version: sigmavault_proto::PROTOCOL_VERSION,
                epoch: inner.epoch.clone(),
                seq: self.head(),
                subscriptions: subs.to_strings(),
                ping_interval_ms: inner.cfg.ping_interval.as_millis() as u64,
                pong_timeout_ms: inner.cfg.pong_timeout.as_millis() as u64,
                limits: sigmavault_proto::server::Limits {
                    max_message_bytes: inner.cfg.max_message,
                    queue_events: inner.cfg.queue,
                    inbound_per_second: inner.cfg.rate_limit,
                    inbound_burst: inner.cfg.rate_burst,
                },
            };
            session.with_outbox(|o| o.push_control(control("welcome", None, &welcome)));
            self.push_current_state(&session, &subs, None);
            if let Some((epoch, since)) = resume {
                self.resume_locked(&session, &epoch, since, None);
            }
        }
        drop(publish);
        session
    }

    /// Removes a finished session.
    pub(crate) fn unregister(&self, session: &Session) {
        let mut publish = self.inner.publish.lock();
        self.inner.sessions.write().remove(&session.id);
        publish.subscribers.clear();
    }

    /// Queues the current value of every state topic the client newly matches.
    fn push_current_state(
        &self,
        session: &Session,
        subs: &SubscriptionSet,
        before: Option<&SubscriptionSet>,
    ) {
        let state = self.inner.state.read();
        let fresh = state
            .values()
            .filter(|f| subs.matches(&f.kind) && !before.is_some_and(|b| b.matches(&f.kind)));
        session.with_outbox(|o| fresh.for_each(|f| o.push_state(f.clone())));
    }

    /// Adds patterns; queues `subscribed` (after which matching messages flow) and
    /// the current values of newly matched state topics.
    pub(crate) fn subscribe(&self, session: &Session, patterns: Vec<Pattern>, id: Option<&Value>) {
        let mut publish = self.inner.publish.lock();
        let (before, after) = {
            let mut subs = session.subs.lock();
            let before = subs.clone();
            Arc::make_mut(&mut subs).add(patterns);
            (before, subs.clone())
        };
        publish.subscribers.clear();
        let reply = sigmavault_proto::server::Subscriptions {
            subscriptions: after.to_strings(),
        };
        session.with_outbox(|o| o.push_control(control("subscribed", id, &reply)));
        self.push_current_state(session, &after, Some(&before));
    }

    /// Removes patterns and purges queued messages that no longer match, so
    /// nothing of an unsubscribed type follows `unsubscribed`.
    pub(crate) fn unsubscribe(&self, session: &Session, patterns: &[Pattern], id: Option<&Value>) {
        let mut publish = self.inner.publish.lock();
        let after = {
            let mut subs = session.subs.lock();
            Arc::make_mut(&mut subs).remove(patterns);
            subs.clone()
        };
        publish.subscribers.clear();
        let reply = sigmavault_proto::server::Subscriptions {
            subscriptions: after.to_strings(),
        };
        session.with_outbox(|o| {
            o.purge_unsubscribed(&after);
            o.push_control(control("unsubscribed", id, &reply));
        });
    }

    /// Handles `resume`: schedules a replay, or queues `reset` / reports `since` ahead.
    pub(crate) fn resume(
        &self,
        session: &Session,
        epoch: &str,
        since: u64,
        id: Option<&Value>,
    ) -> ResumeOutcome {
        let _publish = self.inner.publish.lock();
        self.resume_locked(session, epoch, since, id)
    }

    fn resume_locked(
        &self,
        session: &Session,
        epoch: &str,
        since: u64,
        id: Option<&Value>,
    ) -> ResumeOutcome {
        let head = self.head();
        let oldest = self.inner.history.read().oldest().unwrap_or(head + 1);
        let reset = |reason: &str, message: String| {
            let body = Reset {
                reason: reason.to_owned(),
                message,
                epoch: self.inner.epoch.clone(),
                oldest_seq: oldest,
                seq: head,
            };
            session.with_outbox(|o| o.push_control(control("reset", id, &body)));
            self.inner.counters.resets.fetch_add(1, Ordering::Relaxed);
            ResumeOutcome::Reset
        };
        if epoch != self.inner.epoch {
            return reset(
                "epoch_mismatch",
                format!("epoch {epoch:?} is not the current history; refetch state"),
            );
        }
        if since > head {
            return ResumeOutcome::SinceAhead { head };
        }
        if since + 1 < oldest {
            return reset(
                "history_too_old",
                format!(
                    "events after {since} are no longer retained (oldest is {oldest}); refetch state"
                ),
            );
        }
        session.with_outbox(|o| {
            o.events.clear();
            o.mode = Mode::Replaying {
                epoch: epoch.to_owned(),
                since,
                cursor: since,
                replayed: 0,
            };
        });
        ResumeOutcome::Replaying
    }

    /// The next replay chunk after `cursor`, or `None` if the ring overtook it.
    pub(crate) fn history_after(&self, cursor: u64, max: usize) -> Option<Vec<EventFrame>> {
        self.inner.history.read().after(cursor, max)
    }

    /// Ends a replay that has reached the head: switches to live and queues
    /// `resumed`. Checked under the outbox lock against the head, which the
    /// publish path stores before it pushes to outboxes: an event published
    /// after the check is pushed live, one published before it is replayed.
    pub(crate) fn finish_replay(&self, session: &Session, cursor: u64) {
        session.with_outbox(|o| {
            let Mode::Replaying {
                epoch,
                since,
                cursor: c,
                replayed,
            } = &o.mode
            else {
                return;
            };
            if *c != cursor || self.head() != cursor {
                return;
            }
            let body = sigmavault_proto::server::Resumed {
                epoch: epoch.clone(),
                since: *since,
                through: cursor,
                replayed: *replayed,
            };
            o.mode = Mode::Live;
            o.push_control(control("resumed", None, &body));
        });
    }

    /// Queues `reset` for a replay the ring overtook, and goes live.
    pub(crate) fn replay_overrun(&self, session: &Session, cursor: u64) {
        let _publish = self.inner.publish.lock();
        let head = self.head();
        let oldest = self.inner.history.read().oldest().unwrap_or(head + 1);
        let body = Reset {
            reason: "history_overrun".into(),
            message: format!(
                "the replay fell behind the history ring at seq {cursor}; refetch state"
            ),
            epoch: self.inner.epoch.clone(),
            oldest_seq: oldest,
            seq: head,
        };
        self.inner.counters.resets.fetch_add(1, Ordering::Relaxed);
        session.with_outbox(|o| {
            o.mode = Mode::Live;
            o.push_control(control("reset", None, &body));
        });
    }

    /// Hub counters.
    pub(crate) fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    /// Asks every connection to close with 1001 and refuses new ones.
    pub fn close_all(&self) {
        self.inner.closing.store(true, Ordering::Release);
        for s in self.inner.sessions.read().values() {
            s.with_outbox(|o| o.request_close(CloseCode::GoingAway, "server shutting down"));
        }
    }

    /// A snapshot of the hub statistics.
    pub fn stats(&self) -> HubStats {
        stats::snapshot(self)
    }
}

/// A prepared frame inside `publish`.
enum Frame {
    Event(EventFrame),
    State(StateFrame),
}

impl Frame {
    fn kind(&self) -> &Arc<str> {
        match self {
            Frame::Event(e) => &e.kind,
            Frame::State(s) => &s.kind,
        }
    }
}

/// Encodes a per-connection control frame (welcome, replies, errors).
pub(crate) fn control(kind: &str, id: Option<&Value>, data: &impl serde::Serialize) -> Message {
    let data = serde_json::to_string(data).unwrap_or_else(|_| "{}".to_owned());
    Message::Text(Utf8Bytes::from(encode(kind, &timestamp(), None, id, &data)))
}

/// An `error` frame.
pub(crate) fn error_frame(id: Option<&Value>, code: &str, message: &str) -> Message {
    control(
        "error",
        id,
        &sigmavault_proto::server::ErrorFrame {
            code: code.to_owned(),
            message: message.to_owned(),
        },
    )
}

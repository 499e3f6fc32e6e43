//! The event hub: sequencing, history, subscriptions and fan-out.
//!
//! `publish` (publish.rs) is the only way a message enters the hub. Under one
//! lock it stamps event-class messages with the next `seq`, encodes each message
//! once, appends events to the history ring and hands the same bytes to every
//! matching session's outbox. It never awaits a socket: a client that falls
//! behind is closed (4008) instead of slowing the publisher. Sessions are
//! registered, subscribed (subscriptions.rs) and resumed (resume.rs) under the
//! same lock, which is what makes `welcome.seq`, `subscribed` and the
//! replay/live seam exact.

mod connection;
pub(crate) use connection::Gate;
mod delivered;
mod echo;
mod history;
mod inbound;
mod keepalive;
mod outbox;
mod publish;
mod ratelimit;
mod resume;
mod session;
mod stats;
mod subscriptions;
mod wire;
pub mod ws;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use sigmavault_proto::server::encode;
use sigmavault_proto::topics::DEFAULT_SUBSCRIPTIONS;
use sigmavault_proto::{CloseCode, Pattern, SubscriptionSet};

use crate::config::Config;
use crate::store::{HistoryStart, Store};
use history::History;
use outbox::StateFrame;
pub(crate) use publish::Sequenced;
use session::Session;
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
    /// First-message auth deadline.
    pub auth_timeout: Duration,
    /// `auth.expiring` lead time.
    pub auth_expiry_warning: Duration,
    /// Grace after a socket's token expires before it is closed.
    pub token_leeway: Duration,
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
            auth_timeout: c.security.ws_auth_timeout,
            auth_expiry_warning: c.security.auth_expiry_warning,
            token_leeway: c.security.token_leeway,
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
    /// The durable history could not take the events; nothing was published.
    #[error("the event could not be stored: {0}")]
    Store(#[from] crate::store::StoreError),
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
    /// The store: notifications always, events too when `durable`.
    store: Option<Store>,
    /// Event-class messages go through the store's durable log.
    durable: bool,
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
    state: RwLock<HashMap<StateKey, StateFrame>>,
    counters: Counters,
    /// The subscription set every new `/ws` connection starts with (shared).
    default_subs: Arc<SubscriptionSet>,
    next_id: AtomicU64,
    /// Connections admitted (upgrade accepted, not yet finished).
    admitted: AtomicUsize,
    /// Open `/ws` sessions (echo sessions excluded).
    event_clients: AtomicUsize,
    closing: AtomicBool,
    /// Cancelled when the shutdown grace period ends: every session is aborted.
    abort_all: CancellationToken,
    tracker: TaskTracker,
}

/// A state topic and the subject within it.
type StateKey = (Arc<str>, Option<Arc<str>>);

/// Guarded by `HubInner::publish`.
struct PublishState {
    next_seq: u64,
    /// Publish calls so far; the queue bound is checked once per session per call.
    publishes: u64,
    /// Subscribers per event type. Cleared on any registration or subscription
    /// change (and when it grows past a bound); rebuilt on the next publish.
    subscribers: HashMap<Arc<str>, Arc<[Arc<Session>]>>,
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

/// Why a connection slot was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdmitError {
    /// `max_connections` is reached.
    Full,
    /// Shutdown has begun.
    Closing,
}

/// Formats the envelope timestamp: RFC 3339, UTC, milliseconds.
pub(crate) fn timestamp() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Hub {
    /// Creates a hub whose tasks live on `tracker` and whose connections are
    /// aborted when `abort_all` is cancelled.
    pub fn new(cfg: HubConfig, tracker: TaskTracker, abort_all: CancellationToken) -> Hub {
        let start = HistoryStart {
            epoch: uuid::Uuid::new_v4().to_string(),
            last_seq: 0,
            recent: Vec::new(),
        };
        Hub::with_store(cfg, None, start, tracker, abort_all)
    }

    /// Creates a hub that continues the history `start` describes; with a
    /// durable store, events go through its log.
    pub fn with_store(
        cfg: HubConfig,
        store: Option<Store>,
        start: HistoryStart,
        tracker: TaskTracker,
        abort_all: CancellationToken,
    ) -> Hub {
        let default_subs =
            SubscriptionSet::from_patterns(DEFAULT_SUBSCRIPTIONS.iter().filter_map(|p| Pattern::parse(p).ok()));
        let mut history = History::new(cfg.history);
        history.resume_at(start.last_seq);
        for e in start.recent {
            history.push(outbox::EventFrame {
                seq: e.seq,
                bytes: wire::text(&encode(&e.kind, &e.timestamp, Some(e.seq), None, &e.data)),
                kind: Arc::from(e.kind),
            });
        }
        let durable = store.as_ref().is_some_and(Store::durable);
        Hub {
            inner: Arc::new(HubInner {
                history: RwLock::new(history),
                cfg,
                epoch: start.epoch,
                store,
                durable,
                start: Instant::now(),
                head: AtomicU64::new(start.last_seq),
                publish: Mutex::new(PublishState {
                    next_seq: start.last_seq + 1,
                    publishes: 0,
                    subscribers: HashMap::new(),
                }),
                sessions: RwLock::new(HashMap::new()),
                state: RwLock::new(HashMap::new()),
                counters: Counters::default(),
                default_subs: Arc::new(default_subs),
                next_id: AtomicU64::new(1),
                admitted: AtomicUsize::new(0),
                event_clients: AtomicUsize::new(0),
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
        self.inner.tracker.spawn(keepalive::heartbeat(self.clone(), shutdown));
        let hub = self.clone();
        // Not on the tracker: it must outlive the wait for the tracker.
        tokio::spawn(async move {
            tokio::select! {
                _ = hub.inner.abort_all.cancelled() => {
                    for s in hub.inner.sessions.read().values() {
                        s.abort.abort();
                    }
                }
                _ = hub.inner.tracker.wait() => {}
            }
        });
    }

    /// The hub's settings.
    pub fn config(&self) -> &HubConfig {
        &self.inner.cfg
    }

    /// The current epoch.
    pub fn epoch(&self) -> &str {
        &self.inner.epoch
    }

    /// The store, if the hub has one.
    pub fn store(&self) -> Option<&Store> {
        self.inner.store.as_ref()
    }

    /// The oldest seq a resume can still start after (minus one): the durable
    /// log's oldest with a durable store, else the ring's.
    pub(crate) fn oldest_retained(&self) -> u64 {
        let head = self.head();
        match &self.inner.store {
            Some(store) if self.inner.durable => store.oldest_seq().min(head + 1),
            _ => self.inner.history.read().oldest().unwrap_or(head + 1),
        }
    }

    /// The latest seq (0 before the first event).
    pub fn head(&self) -> u64 {
        self.inner.head.load(Ordering::Acquire)
    }

    /// Milliseconds on the hub clock.
    pub(crate) fn now_ms(&self) -> u64 {
        self.inner.start.elapsed().as_millis() as u64
    }

    /// Number of open `/ws` connections.
    pub fn client_count(&self) -> usize {
        self.inner.event_clients.load(Ordering::Relaxed)
    }

    /// Connection slots in use (`/ws` and `/ws/echo`, upgrades in progress included).
    pub fn admitted(&self) -> usize {
        self.inner.admitted.load(Ordering::Relaxed)
    }

    /// Whether shutdown has begun.
    pub fn is_closing(&self) -> bool {
        self.inner.closing.load(Ordering::Acquire)
    }

    /// Reserves a connection slot.
    pub fn try_admit(&self) -> Result<Admission, AdmitError> {
        if self.is_closing() {
            return Err(AdmitError::Closing);
        }
        let max = self.inner.cfg.max_connections;
        let admitted = self
            .inner
            .admitted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1));
        match admitted {
            Ok(_) => Ok(Admission { hub: self.clone() }),
            Err(_) => {
                self.inner.counters.rejected.fetch_add(1, Ordering::Relaxed);
                Err(AdmitError::Full)
            }
        }
    }

    /// Hub counters.
    pub(crate) fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    /// Asks every connection to close with 1001 and refuses new ones. Sessions
    /// registering concurrently see `closing` under the publish lock and close too.
    pub fn close_all(&self) {
        let _publish = self.inner.publish.lock();
        self.inner.closing.store(true, Ordering::Release);
        for s in self.inner.sessions.read().values() {
            s.with_outbox(|o| o.request_close(CloseCode::GoingAway, "server shutting down"));
        }
    }

    /// Closes (4401) every authenticated `/ws` session whose authentication
    /// matches; returns how many. Used when a session, key or user is revoked.
    pub fn close_authenticated(&self, matches: impl Fn(&crate::auth::SocketAuth) -> bool, reason: &str) -> usize {
        let mut n = 0;
        for s in self.inner.sessions.read().values() {
            let hit = s.auth.lock().as_ref().is_some_and(&matches);
            if hit && s.with_outbox(|o| o.request_close(CloseCode::Unauthorized, reason)) {
                n += 1;
            }
        }
        n
    }

    /// A snapshot of the hub statistics.
    pub fn stats(&self) -> HubStats {
        stats::snapshot(self)
    }
}

/// Encodes a per-connection control frame (welcome, replies, errors).
pub(crate) fn control(kind: &str, id: Option<&Value>, data: &impl serde::Serialize) -> Bytes {
    let data = serde_json::to_string(data).unwrap_or_else(|_| "{}".to_owned());
    wire::text(&encode(kind, &timestamp(), None, id, &data))
}

/// An `error` frame.
pub(crate) fn error_frame(id: Option<&Value>, code: &str, message: &str) -> Bytes {
    control(
        "error",
        id,
        &sigmavault_proto::server::ErrorFrame {
            code: code.to_owned(),
            message: message.to_owned(),
        },
    )
}

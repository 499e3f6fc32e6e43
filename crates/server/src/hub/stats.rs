//! Hub statistics, served at `GET /api/v1/hub`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use super::Hub;
use super::session::SessionKind;

/// Monotonic counters, bumped with relaxed atomics on the hot paths.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) published: AtomicU64,
    pub(crate) delivered: AtomicU64,
    pub(crate) slow_consumer_closes: AtomicU64,
    pub(crate) keepalive_timeouts: AtomicU64,
    pub(crate) write_stalls: AtomicU64,
    pub(crate) rate_limited: AtomicU64,
    pub(crate) resets: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) connections_total: AtomicU64,
}

/// A snapshot of the hub.
#[derive(Debug, Clone, Serialize)]
pub struct HubStats {
    /// Open `/ws` connections.
    pub clients: usize,
    /// Connection cap.
    pub max_connections: usize,
    /// Connections opened since start.
    pub connections_total: u64,
    /// How many clients hold each pattern.
    pub subscriptions: BTreeMap<String, usize>,
    /// The current epoch.
    pub epoch: String,
    /// The latest seq.
    pub seq: u64,
    /// Oldest seq retained for resume (durable log or ring); absent when nothing is retained.
    pub history_oldest_seq: Option<u64>,
    /// Oldest seq in the in-memory ring.
    pub ring_oldest_seq: Option<u64>,
    /// Whether events are kept in the durable log.
    pub durable_history: bool,
    /// The store writer: commits, events appended, commit time.
    pub store: Option<crate::store::writer::StoreStats>,
    /// Messages published (events and state).
    pub events_published: u64,
    /// Messages written to client sockets.
    pub events_delivered: u64,
    /// Clients closed with 4008 because their queue overflowed; their undelivered
    /// events were dropped by that close, never silently.
    pub dropped_by_close: u64,
    /// Clients closed for not answering pings.
    pub keepalive_timeouts: u64,
    /// Clients dropped because a socket write made no progress.
    pub write_stalls: u64,
    /// Rate-limit warnings sent.
    pub rate_limited: u64,
    /// `reset` replies sent.
    pub resets: u64,
    /// Upgrades refused at the connection cap.
    pub rejected_connections: u64,
}

pub(super) fn snapshot(hub: &Hub) -> HubStats {
    let inner = &*hub.inner;
    let mut subscriptions = BTreeMap::new();
    let mut clients = 0;
    for s in inner.sessions.read().values() {
        if s.kind != SessionKind::Events {
            continue;
        }
        clients += 1;
        for p in s.subs.lock().iter() {
            *subscriptions.entry(p.to_string()).or_insert(0) += 1;
        }
    }
    let c = &inner.counters;
    HubStats {
        clients,
        max_connections: inner.cfg.max_connections,
        connections_total: c.connections_total.load(Ordering::Relaxed),
        subscriptions,
        epoch: inner.epoch.clone(),
        seq: hub.head(),
        history_oldest_seq: Some(hub.oldest_retained()).filter(|o| *o <= hub.head()),
        ring_oldest_seq: inner.history.read().oldest(),
        durable_history: inner.durable,
        store: inner.store.as_ref().map(|s| s.store_stats()),
        events_published: c.published.load(Ordering::Relaxed),
        events_delivered: c.delivered.load(Ordering::Relaxed),
        dropped_by_close: c.slow_consumer_closes.load(Ordering::Relaxed),
        keepalive_timeouts: c.keepalive_timeouts.load(Ordering::Relaxed),
        write_stalls: c.write_stalls.load(Ordering::Relaxed),
        rate_limited: c.rate_limited.load(Ordering::Relaxed),
        resets: c.resets.load(Ordering::Relaxed),
        rejected_connections: c.rejected.load(Ordering::Relaxed),
    }
}

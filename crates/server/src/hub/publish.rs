//! The publish path: sequence, encode once, record, fan out. Never awaits.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::Value;

use sigmavault_proto::server::encode;
use sigmavault_proto::{DeliveryClass, topic_info};

use super::outbox::{EventFrame, Push, StateFrame};
use super::session::Session;
use super::wire;
use super::{Hub, NewEvent, PublishError, PublishState, timestamp};
use crate::store::events::EventRow;

/// Bound of the per-type subscriber cache; past it the cache starts over, so
/// publishing many distinct `custom.*` types cannot grow memory without limit.
const SUBSCRIBER_CACHE_MAX: usize = 1024;

/// A message with its payload encoded, waiting for its seq.
struct Prepared {
    kind: Arc<str>,
    class: DeliveryClass,
    key: Option<Arc<str>>,
    data: String,
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

/// Event-class messages stamped with their seqs by the store's writer, waiting
/// for the commit before [`Hub::deliver`] fans them out.
pub(crate) struct Sequenced {
    frames: Vec<Frame>,
    rows: Vec<EventRow>,
    seqs: Vec<Option<u64>>,
}

impl Sequenced {
    /// The rows to append to the durable log.
    pub(crate) fn rows(&self) -> &[EventRow] {
        &self.rows
    }
}

/// Serialises payloads and looks up delivery classes (no lock needed).
fn prepare(events: Vec<NewEvent>) -> Vec<Prepared> {
    events
        .into_iter()
        .map(|e| {
            let info = topic_info(&e.kind);
            let key = info.key_field.and_then(|f| e.data.get(f)).map(|v| match v {
                Value::String(s) => Arc::from(s.as_str()),
                other => Arc::from(other.to_string()),
            });
            Prepared {
                kind: Arc::from(e.kind),
                class: info.class,
                key,
                data: e.data.to_string(),
            }
        })
        .collect()
}

/// Encodes each message once; event-class ones take seqs from `next_seq`.
fn build(
    prepared: Vec<Prepared>,
    ts: &str,
    next_seq: &mut u64,
    mut rows: Option<&mut Vec<EventRow>>,
) -> (Vec<Frame>, Vec<Option<u64>>) {
    let mut seqs = Vec::with_capacity(prepared.len());
    let mut frames: Vec<Frame> = Vec::with_capacity(prepared.len());
    for Prepared { kind, class, key, data } in prepared {
        match class {
            DeliveryClass::Event => {
                let seq = *next_seq;
                *next_seq += 1;
                let bytes = wire::text(&encode(&kind, ts, Some(seq), None, &data));
                if let Some(rows) = rows.as_deref_mut() {
                    rows.push(EventRow {
                        seq,
                        kind: kind.clone(),
                        timestamp: ts.to_owned(),
                        data,
                    });
                }
                seqs.push(Some(seq));
                frames.push(Frame::Event(EventFrame { seq, kind, bytes }));
            }
            DeliveryClass::State => {
                let bytes = wire::text(&encode(&kind, ts, None, None, &data));
                seqs.push(None);
                frames.push(Frame::State(StateFrame { kind, key, bytes }));
            }
        }
    }
    (frames, seqs)
}

impl Hub {
    /// Publishes messages in order and returns each one's seq (`None` for
    /// state-class messages). With the durable history, event-class messages
    /// are appended to the store first (group commit) and delivered after the
    /// commit; if the append fails nothing is delivered and no seq is used.
    /// Notifications are always stored as records.
    pub async fn publish(&self, events: Vec<NewEvent>) -> Result<Vec<Option<u64>>, PublishError> {
        if self.is_closing() {
            return Err(PublishError::ShuttingDown);
        }
        match &self.inner.store {
            Some(store) if self.needs_store(&events) => store.append(events).await.map_err(PublishError::Store),
            _ => self.publish_now(events),
        }
    }

    /// [`Hub::publish`] for a client's request, with its audit record: in the
    /// same transaction when the events are stored; otherwise (state messages,
    /// or memory history) written right after delivery without holding up the
    /// reply, so the memory-history path keeps its speed.
    pub async fn publish_audited(
        &self,
        events: Vec<NewEvent>,
        actor: crate::store::audit::Actor,
    ) -> Result<Vec<Option<u64>>, PublishError> {
        if self.is_closing() {
            return Err(PublishError::ShuttingDown);
        }
        let mut types: Vec<String> = events.iter().map(|e| e.kind.clone()).collect();
        types.sort_unstable();
        types.dedup();
        types.truncate(20);
        let detail = serde_json::json!({"count": events.len(), "types": types});
        let Some(store) = self.inner.store.clone() else {
            return self.publish_now(events);
        };
        let audit = move |tx: &mut crate::store::WriteTx<'_>| {
            crate::store::audit::record(tx, &actor, "events.publish", "events", detail)
        };
        if self.needs_store(&events) {
            let (_, seqs) = store
                .write(move |tx| {
                    for e in events {
                        tx.publish(e.kind, e.data)?;
                    }
                    audit(tx)
                })
                .await?;
            return Ok(seqs);
        }
        let seqs = self.publish_now(events)?;
        tokio::spawn(async move {
            if let Err(e) = store.write(audit).await {
                tracing::warn!(error = %e, "could not write the audit record of a publish");
            }
        });
        Ok(seqs)
    }

    /// Whether publishing these messages writes to the store.
    fn needs_store(&self, events: &[NewEvent]) -> bool {
        events.iter().any(|e| {
            e.kind == "notification" || (self.inner.durable && topic_info(&e.kind).class == DeliveryClass::Event)
        })
    }

    /// Publishes one message built by the server itself, without waiting. If the
    /// store cannot take it, an event-class message is still delivered live,
    /// without a seq and marked `"durable": false`.
    pub fn publish_internal(&self, kind: &str, data: Value) {
        let events = vec![NewEvent {
            kind: kind.to_owned(),
            data,
        }];
        // Every event-class message the server raises goes through the store's
        // queue (stored or not), so they keep their order among themselves.
        let queued = events
            .iter()
            .any(|e| e.kind == "notification" || topic_info(&e.kind).class == DeliveryClass::Event);
        match &self.inner.store {
            Some(store) if queued => {
                if let Err(events) = store.append_internal(events) {
                    self.deliver_unsequenced(events, true);
                }
            }
            _ => {
                let _ = self.publish_now(events);
            }
        }
    }

    /// Publishes at once, sequencing in memory (the memory-history path, and
    /// state-class messages, which are never persisted).
    pub(crate) fn publish_now(&self, events: Vec<NewEvent>) -> Result<Vec<Option<u64>>, PublishError> {
        // With the durable history only the store's writer may number events: an
        // event-class message that reaches this path goes to the store's queue.
        if self.inner.durable && events.iter().any(|e| topic_info(&e.kind).class == DeliveryClass::Event) {
            let (state, durable): (Vec<NewEvent>, Vec<NewEvent>) = events
                .into_iter()
                .partition(|e| topic_info(&e.kind).class == DeliveryClass::State);
            for e in durable {
                self.publish_internal(&e.kind, e.data);
            }
            return if state.is_empty() {
                Ok(Vec::new())
            } else {
                self.publish_memory(state, true)
            };
        }
        self.publish_memory(events, true)
    }

    /// Publishes what the store has just committed (memory history): during
    /// shutdown too, since the caller has been told it is stored.
    pub(crate) fn publish_committed(&self, events: Vec<NewEvent>) -> Vec<Option<u64>> {
        self.publish_memory(events, false).unwrap_or_default()
    }

    fn publish_memory(
        &self,
        events: Vec<NewEvent>,
        refuse_when_closing: bool,
    ) -> Result<Vec<Option<u64>>, PublishError> {
        // Serialise payloads before taking the lock; only the envelope needs the seq.
        let prepared = prepare(events);
        let mut publish = self.inner.publish.lock();
        if refuse_when_closing && self.is_closing() {
            return Err(PublishError::ShuttingDown);
        }
        // Taken under the lock so timestamps never go backwards as seq goes forwards.
        let ts = timestamp();
        let mut next_seq = publish.next_seq;
        let (frames, seqs) = build(prepared, &ts, &mut next_seq, None);
        self.record_and_fan_out(&mut publish, frames, next_seq);
        Ok(seqs)
    }

    /// Stamps messages with seqs from the store writer's counter and encodes
    /// them; nothing is delivered until [`Hub::deliver`].
    pub(crate) fn sequence(&self, events: Vec<NewEvent>, next_seq: &mut u64) -> Sequenced {
        let prepared = prepare(events);
        let ts = timestamp();
        let mut rows = Vec::new();
        let (frames, seqs) = build(prepared, &ts, next_seq, Some(&mut rows));
        Sequenced { frames, rows, seqs }
    }

    /// Delivers committed messages (the writer calls this in seq order).
    pub(crate) fn deliver(&self, s: Sequenced) -> Vec<Option<u64>> {
        let mut publish = self.inner.publish.lock();
        let next_seq = s.rows.last().map_or(publish.next_seq, |r| r.seq + 1);
        self.record_and_fan_out(&mut publish, s.frames, next_seq);
        s.seqs
    }

    /// Delivers messages live only, without a seq, outside the resumable
    /// sequence: server-internal events that could not be persisted (marked
    /// `"durable": false`), and streams with their own durable cursor (audit).
    pub(crate) fn deliver_unsequenced(&self, events: Vec<NewEvent>, not_durable: bool) {
        let ts = timestamp();
        let mut publish = self.inner.publish.lock();
        for e in events {
            let kind: Arc<str> = Arc::from(e.kind.as_str());
            let mut text = String::with_capacity(e.kind.len() + 96);
            text.push_str("{\"type\":");
            text.push_str(&Value::String(e.kind).to_string());
            text.push_str(",\"timestamp\":\"");
            text.push_str(&ts);
            text.push_str(if not_durable {
                "\",\"durable\":false,\"data\":"
            } else {
                "\",\"data\":"
            });
            text.push_str(&e.data.to_string());
            text.push('}');
            let bytes = wire::text(&text);
            // The cached subscriber list: audit events have few or no subscribers,
            // and walking every session per event would cost the publish lock dearly.
            for s in self.subscribers(&mut publish, &kind).iter() {
                s.with_outbox(|o| o.push_control(bytes.clone()));
            }
            self.inner.counters.published.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records frames in the history ring and the state cache, advances the head,
    /// and hands the frames to every subscriber. Called under the publish lock.
    fn record_and_fan_out(&self, publish: &mut PublishState, frames: Vec<Frame>, next_seq: u64) {
        let inner = &*self.inner;
        {
            let mut history = inner.history.write();
            for f in &frames {
                match f {
                    Frame::Event(e) => history.push(e.clone()),
                    Frame::State(st) => {
                        inner
                            .state
                            .write()
                            .insert((st.kind.clone(), st.key.clone()), st.clone());
                    }
                }
            }
        }
        publish.next_seq = next_seq;
        inner.head.store(next_seq - 1, Ordering::Release);
        publish.publishes += 1;
        let publish_no = publish.publishes;
        let published = frames.len() as u64;

        // Fan out runs of consecutive events of one type together: one lock and one
        // wake per session per run instead of per event.
        let mut rest = &frames[..];
        while let Some(first) = rest.first() {
            let kind = first.kind().clone();
            let subscribers = self.subscribers(publish, &kind);
            match first {
                Frame::State(state) => {
                    for s in subscribers.iter() {
                        s.with_outbox(|o| o.push_state(state.clone()));
                    }
                    rest = &rest[1..];
                }
                Frame::Event(_) => {
                    let events: Vec<&EventFrame> = rest
                        .iter()
                        .map_while(|f| match f {
                            Frame::Event(e) if e.kind == kind => Some(e),
                            _ => None,
                        })
                        .collect();
                    for s in subscribers.iter() {
                        if s.with_outbox(|o| o.push_events(publish_no, events.iter().copied())) == Push::Overflowed {
                            self.on_overflow(s);
                        }
                    }
                    rest = &rest[events.len()..];
                }
            }
        }
        inner.counters.published.fetch_add(published, Ordering::Relaxed);
    }

    fn on_overflow(&self, s: &Session) {
        self.inner.counters.slow_consumer_closes.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            client_id = %s.client_id,
            queue = self.inner.cfg.queue,
            last_seq = s.last_delivered_seq.load(Ordering::Relaxed),
            "client queue overflowed; closing with 4008"
        );
    }

    /// Whether any `/ws` client is subscribed to `kind` (collectors sample less
    /// often without one). Uses, and fills, the publish path's subscriber cache.
    pub fn has_subscribers(&self, kind: &str) -> bool {
        let mut publish = self.inner.publish.lock();
        !self.subscribers(&mut publish, &Arc::from(kind)).is_empty()
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
            .filter(|s| s.receives(kind))
            .cloned()
            .collect();
        if publish.subscribers.len() >= SUBSCRIBER_CACHE_MAX {
            publish.subscribers.clear();
        }
        publish.subscribers.insert(kind.clone(), list.clone());
        list
    }
}

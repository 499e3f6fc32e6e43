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

impl Hub {
    /// Publishes messages in order. Returns each message's seq (`None` for
    /// state-class messages, which carry none).
    pub fn publish(&self, events: Vec<NewEvent>) -> Result<Vec<Option<u64>>, PublishError> {
        // Serialise payloads before taking the lock; only the envelope needs the seq.
        let prepared: Vec<Prepared> = events
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
            .collect();

        let inner = &*self.inner;
        let mut publish = inner.publish.lock();
        if self.is_closing() {
            return Err(PublishError::ShuttingDown);
        }
        // Taken under the lock so timestamps never go backwards as seq goes forwards.
        let ts = timestamp();
        let mut seqs = Vec::with_capacity(prepared.len());
        let mut frames: Vec<Frame> = Vec::with_capacity(prepared.len());
        {
            let mut history = inner.history.write();
            for Prepared { kind, class, key, data } in prepared {
                match class {
                    DeliveryClass::Event => {
                        let seq = publish.next_seq;
                        publish.next_seq += 1;
                        let bytes = wire::text(&encode(&kind, &ts, Some(seq), None, &data));
                        let frame = EventFrame { seq, kind, bytes };
                        history.push(frame.clone());
                        seqs.push(Some(seq));
                        frames.push(Frame::Event(frame));
                    }
                    DeliveryClass::State => {
                        let bytes = wire::text(&encode(&kind, &ts, None, None, &data));
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
        publish.publishes += 1;
        let publish_no = publish.publishes;
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
        drop(publish);
        inner.counters.published.fetch_add(published, Ordering::Relaxed);
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
        self.inner.counters.slow_consumer_closes.fetch_add(1, Ordering::Relaxed);
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
        if publish.subscribers.len() >= SUBSCRIBER_CACHE_MAX {
            publish.subscribers.clear();
        }
        publish.subscribers.insert(kind.clone(), list.clone());
        list
    }
}

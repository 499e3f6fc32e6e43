//! What one connection still has to send: the meeting point of the publish path
//! (many writers, never blocking) and the connection's writer task (one reader).
//!
//! A plain `Mutex` + `Waker` instead of a channel: state messages must be
//! conflated in place (latest value per topic and key), unsubscribing must purge
//! queued messages, and a replay must be able to switch to live delivery
//! atomically. An empty outbox allocates nothing, which keeps idle connections small.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::Waker;

use bytes::Bytes;
use serde_json::Value;

use sigmavault_proto::{CloseCode, SubscriptionSet};

use super::delivered::DeliveredLog;

/// Most bytes of replies queued for a `/ws` client that does not read them; past
/// it the client is closed as a slow consumer (4008) instead of growing server memory.
pub(crate) const CONTROL_MAX_BYTES: usize = 1 << 20;

/// Memory one queued frame costs beyond its bytes (queue slot and allocation).
const CONTROL_ENTRY_COST: usize = 64;

/// An event-class frame: its seq, its type (for filtering) and the shared,
/// already framed WebSocket bytes.
#[derive(Clone, Debug)]
pub(crate) struct EventFrame {
    pub(crate) seq: u64,
    pub(crate) kind: Arc<str>,
    pub(crate) bytes: Bytes,
}

/// A state-class frame; `key` is the subject within the topic (disk, job), if any.
#[derive(Clone, Debug)]
pub(crate) struct StateFrame {
    pub(crate) kind: Arc<str>,
    pub(crate) key: Option<Arc<str>>,
    pub(crate) bytes: Bytes,
}

/// Why and how the connection is to be closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CloseRequest {
    pub(crate) code: CloseCode,
    pub(crate) reason: String,
    /// The peer closed (or vanished): only flush tungstenite's automatic reply.
    pub(crate) by_peer: bool,
}

/// Whether event-class messages flow live or come from the history.
#[derive(Clone, Debug)]
pub(crate) enum Mode {
    /// The publish path queues events here.
    Live,
    /// The writer streams the history from `cursor`; the publish path skips events.
    Replaying {
        epoch: String,
        since: u64,
        cursor: u64,
        replayed: u64,
        /// The request id, echoed in `resumed`.
        id: Option<Value>,
        /// Events the live stream delivered before the resume, not to be sent twice.
        skip: Arc<DeliveredLog>,
    },
}

/// The pending work of one connection. Guarded by the session's mutex.
pub(crate) struct Outbox {
    /// Framed replies and per-connection frames (welcome, subscribed, error, echo,
    /// tungstenite's pong and close replies), in order. Bounded by `control_max`.
    pub(crate) control: VecDeque<Bytes>,
    /// Cost of `control`: bytes plus [`CONTROL_ENTRY_COST`] per frame, so a flood of
    /// tiny pongs is counted at what it really occupies.
    pub(crate) control_bytes: usize,
    /// Bound of `control_bytes`.
    pub(crate) control_max: usize,
    /// Latest value per (topic, key); replaced in place, never grows past the set of subjects.
    pub(crate) state: Vec<StateFrame>,
    /// Event-class frames in seq order; bounded by `limit` (plus one publish batch).
    pub(crate) events: VecDeque<EventFrame>,
    /// Bound of `events` (`--ws-queue`).
    pub(crate) limit: usize,
    /// The last publish whose events were checked against `limit`.
    pub(crate) checked_publish: u64,
    pub(crate) mode: Mode,
    /// What this connection has been sent, for exact resumes.
    pub(crate) delivered: DeliveredLog,
    /// The sweeper asked for a WebSocket ping.
    pub(crate) ping_due: bool,
    /// Set once; the writer sends it after flushing what is already owed (or at once for 4008).
    pub(crate) close: Option<CloseRequest>,
    /// The writer task, parked waiting for work.
    pub(crate) waker: Option<Waker>,
}

/// The outcome of queueing events for one connection.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Push {
    /// Queued (or skipped because closing or replaying); the writer may need waking.
    Queued,
    /// The queue overflowed just now: the connection is being closed with 4008.
    Overflowed,
}

/// A replay round for the writer.
pub(crate) struct ReplayRound {
    pub(crate) cursor: u64,
    pub(crate) skip: Arc<DeliveredLog>,
}

/// One round of work for the writer task.
#[derive(Default)]
pub(crate) struct Batch {
    pub(crate) control: VecDeque<Bytes>,
    pub(crate) state: Vec<StateFrame>,
    pub(crate) events: VecDeque<EventFrame>,
    pub(crate) ping: bool,
    pub(crate) close: Option<CloseRequest>,
    /// Replaying: stream the next history chunk.
    pub(crate) replay: Option<ReplayRound>,
}

impl Outbox {
    pub(crate) fn new(limit: usize, control_max: usize) -> Self {
        Outbox {
            control: VecDeque::new(),
            control_bytes: 0,
            control_max,
            state: Vec::new(),
            events: VecDeque::new(),
            limit,
            checked_publish: 0,
            mode: Mode::Live,
            delivered: DeliveredLog::default(),
            ping_due: false,
            close: None,
            waker: None,
        }
    }

    /// Whether the writer has anything to do.
    pub(crate) fn has_work(&self) -> bool {
        !self.control.is_empty()
            || !self.state.is_empty()
            || !self.events.is_empty()
            || self.ping_due
            || self.close.is_some()
            || matches!(self.mode, Mode::Replaying { .. })
    }

    /// Takes the waker if there is work for it (call `wake` after unlocking).
    pub(crate) fn take_waker(&mut self) -> Option<Waker> {
        if self.has_work() { self.waker.take() } else { None }
    }

    /// Queues a run of event-class frames from publish number `publish`. The
    /// client is too slow when it still has `limit` undelivered events as a new
    /// publish reaches it; checked once per publish, so one large batch (of one
    /// type or many) into a healthy client's queue is not a reason to close it.
    pub(crate) fn push_events<'a>(&mut self, publish: u64, frames: impl IntoIterator<Item = &'a EventFrame>) -> Push {
        if self.close.is_some() || matches!(self.mode, Mode::Replaying { .. }) {
            return Push::Queued;
        }
        if self.checked_publish != publish {
            self.checked_publish = publish;
            if self.events.len() >= self.limit {
                self.events = VecDeque::new();
                self.close = Some(CloseRequest {
                    code: CloseCode::SlowConsumer,
                    reason: String::new(),
                    by_peer: false,
                });
                return Push::Overflowed;
            }
        }
        self.events.extend(frames.into_iter().cloned());
        Push::Queued
    }

    /// Replaces the pending value of the same topic and key, or adds it.
    pub(crate) fn push_state(&mut self, frame: StateFrame) {
        if self.close.is_some() {
            return;
        }
        match self
            .state
            .iter_mut()
            .find(|s| s.kind == frame.kind && s.key == frame.key)
        {
            Some(slot) => *slot = frame,
            None => self.state.push(frame),
        }
    }

    /// Queues a per-connection frame.
    pub(crate) fn push_control(&mut self, msg: Bytes) {
        if self.close.is_some() {
            return;
        }
        self.control_bytes += msg.len() + CONTROL_ENTRY_COST;
        self.control.push_back(msg);
        if self.control_bytes > self.control_max {
            self.control = VecDeque::new();
            self.control_bytes = 0;
            self.request_close(CloseCode::SlowConsumer, "replies are not being read");
        }
    }

    /// Asks the writer to close; the first request wins. Returns whether this one did.
    pub(crate) fn request_close(&mut self, code: CloseCode, reason: impl Into<String>) -> bool {
        if self.close.is_some() {
            return false;
        }
        self.close = Some(CloseRequest {
            code,
            reason: reason.into(),
            by_peer: false,
        });
        true
    }

    /// The peer sent a close frame or went away: the writer only flushes the reply.
    pub(crate) fn peer_closed(&mut self) {
        if self.close.is_none() {
            self.close = Some(CloseRequest {
                code: CloseCode::Normal,
                reason: String::new(),
                by_peer: true,
            });
        }
    }

    /// tungstenite's reply to the peer's close frame: the last thing this
    /// connection sends. Nothing queued after it may go out, so drop the rest.
    pub(crate) fn peer_close_reply(&mut self, frame: Bytes) {
        if self.close.is_some() {
            // We closed first; the peer's close is the reply to ours.
            return;
        }
        self.control.push_back(frame);
        self.close = Some(CloseRequest {
            code: CloseCode::Normal,
            reason: String::new(),
            by_peer: true,
        });
        self.events = VecDeque::new();
        self.state = Vec::new();
        self.ping_due = false;
        self.mode = Mode::Live;
    }

    /// Takes everything the writer should send now.
    pub(crate) fn take_batch(&mut self) -> Batch {
        let close = self.close.clone();
        if close.as_ref().is_some_and(|c| c.code == CloseCode::SlowConsumer) {
            // The client is behind: close at once rather than after a backlog it cannot read.
            return Batch {
                close,
                ..Batch::default()
            };
        }
        self.control_bytes = 0;
        if close.as_ref().is_some_and(|c| c.by_peer) {
            // Only what precedes the close reply; nothing may follow it.
            return Batch {
                control: std::mem::take(&mut self.control),
                close,
                ..Batch::default()
            };
        }
        let replay = match &self.mode {
            Mode::Replaying { cursor, skip, .. } if close.is_none() => Some(ReplayRound {
                cursor: *cursor,
                skip: skip.clone(),
            }),
            _ => None,
        };
        if let Some(last) = self.events.back() {
            self.delivered.take(last.seq);
        }
        Batch {
            control: std::mem::take(&mut self.control),
            state: std::mem::take(&mut self.state),
            events: std::mem::take(&mut self.events),
            ping: std::mem::take(&mut self.ping_due),
            close,
            replay,
        }
    }

    /// Drops queued messages the new subscription set no longer matches.
    pub(crate) fn purge_unsubscribed(&mut self, subs: &SubscriptionSet) {
        self.events.retain(|e| subs.matches(&e.kind));
        self.state.retain(|s| subs.matches(&s.kind));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: u64) -> EventFrame {
        EventFrame {
            seq,
            kind: Arc::from("custom.x"),
            bytes: Bytes::from(format!("{seq}")),
        }
    }

    #[test]
    fn overflow_closes_with_4008_and_frees_queue() {
        let mut o = Outbox::new(3, CONTROL_MAX_BYTES);
        assert_eq!(o.push_events(1, &[ev(1), ev(2), ev(3)]), Push::Queued);
        assert_eq!(o.push_events(2, &[ev(4)]), Push::Overflowed);
        assert!(o.events.is_empty());
        assert_eq!(o.close.as_ref().map(|c| c.code), Some(CloseCode::SlowConsumer));
        assert_eq!(o.push_events(3, &[ev(5)]), Push::Queued);
        assert!(o.events.is_empty());
    }

    #[test]
    fn one_large_batch_into_an_empty_queue_is_not_slowness() {
        let mut o = Outbox::new(3, CONTROL_MAX_BYTES);
        let batch: Vec<EventFrame> = (1..=10).map(ev).collect();
        assert_eq!(o.push_events(1, &batch), Push::Queued);
        assert_eq!(o.events.len(), 10);
        // The same publish's next run (another type) is not checked again.
        assert_eq!(o.push_events(1, &batch), Push::Queued);
        assert_eq!(o.events.len(), 20);
    }

    #[test]
    fn unread_replies_are_bounded() {
        let mut o = Outbox::new(3, CONTROL_MAX_BYTES);
        for _ in 0..20_000 {
            o.push_control(Bytes::from_static(&[0x8a, 0]));
        }
        assert!(o.control.is_empty(), "a pong flood is counted at its real cost");
        assert_eq!(o.close.as_ref().map(|c| c.code), Some(CloseCode::SlowConsumer));
        let mut o = Outbox::new(3, CONTROL_MAX_BYTES);
        let reply = Bytes::from(vec![b'x'; 64 * 1024]);
        for _ in 0..17 {
            o.push_control(reply.clone());
        }
        assert!(o.control.is_empty());
        assert_eq!(o.close.as_ref().map(|c| c.code), Some(CloseCode::SlowConsumer));
    }

    #[test]
    fn state_conflates_per_key() {
        let mut o = Outbox::new(3, CONTROL_MAX_BYTES);
        let st = |key: Option<&str>, v: &str| StateFrame {
            kind: Arc::from("compression.update"),
            key: key.map(Arc::from),
            bytes: Bytes::from(v.to_owned()),
        };
        o.push_state(st(Some("a"), "1"));
        o.push_state(st(Some("b"), "1"));
        o.push_state(st(Some("a"), "2"));
        assert_eq!(o.state.len(), 2);
        assert_eq!(&o.state[0].bytes[..], b"2");
    }

    #[test]
    fn replaying_skips_live_events() {
        let mut o = Outbox::new(3, CONTROL_MAX_BYTES);
        o.mode = Mode::Replaying {
            epoch: "e".into(),
            since: 0,
            cursor: 0,
            replayed: 0,
            id: None,
            skip: Arc::default(),
        };
        o.push_events(1, &[ev(1)]);
        assert!(o.events.is_empty());
    }
}

//! Registering sessions and changing what they receive. Everything here runs
//! under the publish lock, so a publish sees a session's old or new set, never
//! half of a change, and `welcome.seq` / `subscribed` are exact cut points.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::Value;

use sigmavault_proto::server::{Limits, Subscriptions, Welcome};
use sigmavault_proto::{CloseCode, Pattern, SubscriptionSet};

use super::delivered::DeliveredLog;
use super::outbox::Mode;
use super::resume::ResumeOutcome;
use super::session::{Session, SessionKind};
use super::{Hub, control, error_frame};

/// Most patterns one connection may hold.
pub(crate) const MAX_PATTERNS_PER_CLIENT: usize = 256;

/// How a new connection starts, from the upgrade request.
#[derive(Debug, Clone, Default)]
pub(crate) struct Opening {
    /// `?types=`: the initial subscription set instead of the defaults.
    pub(crate) types: Option<Vec<Pattern>>,
    /// `?epoch=&since=`: replay from here before going live.
    pub(crate) resume: Option<(String, u64)>,
}

impl Hub {
    /// Registers a new session: queues `welcome` and current state values, and
    /// starts a replay when the upgrade asked for one.
    pub(crate) fn new_session(&self, kind: SessionKind) -> Arc<Session> {
        let inner = &*self.inner;
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        Session::new(
            id,
            kind,
            Arc::new(SubscriptionSet::new()),
            inner.cfg.queue,
            self.now_ms(),
        )
    }

    /// Registers an authenticated session (see [`Hub::new_session`]): from here
    /// on it receives what it is subscribed to, starting with `welcome`.
    pub(crate) fn register(&self, session: &Arc<Session>, opening: Opening) {
        let inner = &*self.inner;
        let kind = session.kind;
        let admin = session.admin.load(Ordering::Relaxed);
        let mut refused = Vec::new();
        let subs = match (kind, opening.types) {
            (SessionKind::Echo, _) => Arc::new(SubscriptionSet::new()),
            (SessionKind::Events, Some(types)) => {
                let (forbidden, allowed): (Vec<Pattern>, Vec<Pattern>) =
                    types.into_iter().partition(|p| !admin && p.admin_only());
                refused = forbidden;
                Arc::new(SubscriptionSet::from_patterns(allowed))
            }
            (SessionKind::Events, None) => inner.default_subs.clone(),
        };
        *session.subs.lock() = subs.clone();
        session.touch(self.now_ms());
        session.last_ping_ms.store(self.now_ms(), Ordering::Relaxed);
        let id = session.id;

        let mut publish = inner.publish.lock();
        inner.sessions.write().insert(id, session.clone());
        publish.subscribers.clear();
        if kind == SessionKind::Events {
            inner.event_clients.fetch_add(1, Ordering::Relaxed);
            let head = self.head();
            let welcome = Welcome {
                client_id: session.client_id.to_string(),
                server_version: crate::VERSION.to_owned(),
                protocol_version: sigmavault_proto::PROTOCOL_VERSION,
                epoch: inner.epoch.clone(),
                seq: head,
                subscriptions: subs.to_strings(),
                ping_interval_ms: inner.cfg.ping_interval.as_millis() as u64,
                pong_timeout_ms: inner.cfg.pong_timeout.as_millis() as u64,
                limits: Limits {
                    max_message_bytes: inner.cfg.max_message,
                    queue_events: inner.cfg.queue,
                    inbound_per_second: inner.cfg.rate_limit,
                    inbound_burst: inner.cfg.rate_burst,
                },
            };
            session.with_outbox(|o| {
                o.push_control(control("welcome", None, &welcome));
                o.delivered = DeliveredLog::live_from(head, subs.clone());
            });
            if !refused.is_empty() {
                let msg = forbidden_message(&refused, "they were left out of the subscriptions");
                session.with_outbox(|o| o.push_control(error_frame(None, "forbidden", &msg)));
            }
            self.push_current_state(session, &subs, None);
            if let Some((epoch, since)) = opening.resume
                && let ResumeOutcome::SinceAhead { head } = self.resume_locked(session, &epoch, since, None)
            {
                let msg = format!("since {since} is ahead of the latest seq {head}");
                session.with_outbox(|o| o.push_control(error_frame(None, "since_ahead", &msg)));
            }
        }
        if self.is_closing() {
            session.with_outbox(|o| o.request_close(CloseCode::GoingAway, "server shutting down"));
        }
        if inner.abort_all.is_cancelled() {
            // Registered after the grace period's sweep of aborts.
            session.abort.abort();
        }
        drop(publish);
    }

    /// Removes a finished session.
    pub(crate) fn unregister(&self, session: &Session) {
        let mut publish = self.inner.publish.lock();
        if self.inner.sessions.write().remove(&session.id).is_some() && session.kind == SessionKind::Events {
            self.inner.event_clients.fetch_sub(1, Ordering::Relaxed);
        }
        publish.subscribers.clear();
    }

    /// Queues the current value of every state topic the client newly matches.
    fn push_current_state(&self, session: &Session, subs: &SubscriptionSet, before: Option<&SubscriptionSet>) {
        let state = self.inner.state.read();
        let fresh = state.values().filter(|f| {
            subs.matches(&f.kind) && session.may_see(&f.kind) && !before.is_some_and(|b| b.matches(&f.kind))
        });
        session.with_outbox(|o| fresh.for_each(|f| o.push_state(f.clone())));
    }

    /// Adds patterns; queues `subscribed` (after which matching messages flow) and
    /// the current values of newly matched state topics.
    pub(crate) fn subscribe(&self, session: &Session, patterns: Vec<Pattern>, id: Option<&Value>) {
        if !session.admin.load(Ordering::Relaxed) {
            let refused: Vec<Pattern> = patterns.iter().filter(|p| p.admin_only()).cloned().collect();
            if !refused.is_empty() {
                let msg = forbidden_message(&refused, "nothing was subscribed");
                session.with_outbox(|o| o.push_control(error_frame(id, "forbidden", &msg)));
                return;
            }
        }
        let mut publish = self.inner.publish.lock();
        let (before, after) = {
            let mut subs = session.subs.lock();
            let mut next = (**subs).clone();
            next.add(patterns);
            if next.len() > MAX_PATTERNS_PER_CLIENT {
                drop(subs);
                let msg = format!("a connection may hold at most {MAX_PATTERNS_PER_CLIENT} patterns");
                session.with_outbox(|o| o.push_control(error_frame(id, "bad_request", &msg)));
                return;
            }
            let before = std::mem::replace(&mut *subs, Arc::new(next));
            (before, subs.clone())
        };
        publish.subscribers.clear();
        let head = self.head();
        let reply = Subscriptions {
            subscriptions: after.to_strings(),
        };
        session.with_outbox(|o| {
            if matches!(o.mode, Mode::Live) {
                o.delivered.subscribed(head, after.clone());
            }
            o.push_control(control("subscribed", id, &reply));
        });
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
        let head = self.head();
        let reply = Subscriptions {
            subscriptions: after.to_strings(),
        };
        session.with_outbox(|o| {
            o.purge_unsubscribed(&after);
            if matches!(o.mode, Mode::Live) {
                o.delivered.unsubscribed(head, after.clone());
            }
            o.push_control(control("unsubscribed", id, &reply));
        });
    }
}

/// The error for a viewer asking for admin-only types.
fn forbidden_message(refused: &[Pattern], outcome: &str) -> String {
    let names: Vec<String> = refused.iter().map(ToString::to_string).collect();
    format!(
        "{} admin-only (audit.*) and this connection's role is viewer: {outcome}",
        names.join(", ") + if names.len() == 1 { " is" } else { " are" }
    )
}

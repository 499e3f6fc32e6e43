//! `resume`: replaying missed events from the history, then going live with no
//! gap and no duplicate at the seam.
//!
//! The writer streams the history at the socket's pace while the publish path
//! skips the session's event queue. Events this connection was already sent
//! (see `delivered.rs`) are skipped. The switch back to live happens under the
//! publish lock once the cursor equals the head, so every event is either
//! replayed or pushed live, never both.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::Value;

use sigmavault_proto::server::{Reset, Resumed};

use super::outbox::{EventFrame, Mode};
use super::session::Session;
use super::{Hub, control, error_frame, wire};
use sigmavault_proto::server::encode;

/// A replay chunk, or why there is none.
pub(crate) enum HistoryRead {
    /// Events after the cursor (empty: the replay has caught up).
    Frames(Vec<EventFrame>),
    /// The events after the cursor are no longer retained.
    Gone,
}

/// Result of a `resume` request.
pub(crate) enum ResumeOutcome {
    /// Replay scheduled; the writer streams it and then sends `resumed`.
    Replaying,
    /// Position cannot be honoured; `reset` was queued.
    Reset,
    /// `since` is ahead of the latest seq.
    SinceAhead { head: u64 },
    /// Too many subscription changes since the connection went live to tell
    /// exactly what it already received; an error was queued.
    Untracked,
}

impl Hub {
    /// Handles `resume`: schedules a replay, or queues `reset` / reports `since` ahead.
    pub(crate) fn resume(&self, session: &Session, epoch: &str, since: u64, id: Option<&Value>) -> ResumeOutcome {
        let _publish = self.inner.publish.lock();
        self.resume_locked(session, epoch, since, id)
    }

    pub(super) fn resume_locked(
        &self,
        session: &Session,
        epoch: &str,
        since: u64,
        id: Option<&Value>,
    ) -> ResumeOutcome {
        let head = self.head();
        let oldest = self.oldest_retained();
        if epoch != self.inner.epoch {
            self.queue_reset(
                session,
                id,
                "epoch_mismatch",
                format!("epoch {epoch:?} is not the current history; refetch state"),
            );
            return ResumeOutcome::Reset;
        }
        if since > head {
            return ResumeOutcome::SinceAhead { head };
        }
        if since + 1 < oldest {
            self.queue_reset(
                session,
                id,
                "history_too_old",
                format!("events after {since} are no longer retained (oldest is {oldest}); refetch state"),
            );
            return ResumeOutcome::Reset;
        }
        let subs = session.subs.lock().clone();
        session.with_outbox(|o| {
            // What this connection has been sent so far (live, or a replay cut short).
            let sent = match &o.mode {
                Mode::Live => o.delivered.frozen(),
                Mode::Replaying {
                    since, cursor, skip, ..
                } => skip.with_replayed(*since, *cursor, subs.clone()),
            };
            if sent.overflowed() {
                let msg = "too many subscription changes before resume to replay exactly; \
                           reconnect and resume first (or use /ws?epoch=&since=)";
                o.push_control(error_frame(id, "resume_unavailable", msg));
                return ResumeOutcome::Untracked;
            }
            o.events.clear();
            o.mode = Mode::Replaying {
                epoch: epoch.to_owned(),
                since,
                cursor: since,
                replayed: 0,
                id: id.cloned(),
                skip: Arc::new(sent),
            };
            ResumeOutcome::Replaying
        })
    }

    fn queue_reset(&self, session: &Session, id: Option<&Value>, reason: &str, message: String) {
        let head = self.head();
        let body = Reset {
            reason: reason.to_owned(),
            message,
            epoch: self.inner.epoch.clone(),
            oldest_seq: self.oldest_retained(),
            seq: head,
        };
        self.inner.counters.resets.fetch_add(1, Ordering::Relaxed);
        session.with_outbox(|o| o.push_control(control("reset", id, &body)));
    }

    /// The next replay chunk after `cursor`: from the ring, or from the durable
    /// log when the ring no longer reaches back that far.
    pub(crate) async fn history_after(&self, cursor: u64, max: usize) -> HistoryRead {
        if let Some(frames) = self.inner.history.read().after(cursor, max) {
            return HistoryRead::Frames(frames);
        }
        let Some(store) = self.inner.store.as_ref().filter(|_| self.inner.durable) else {
            return HistoryRead::Gone;
        };
        // Read only what has been delivered: committed rows beyond the head are
        // still on their way to the hub.
        let head = self.head();
        if cursor >= head {
            // The ring moved on before the head did (a publish in progress): caught up.
            return HistoryRead::Frames(Vec::new());
        }
        let mut read = store.events_after(cursor, head, max).await;
        // A busy or briefly unavailable database is retried before the client is
        // told its position is lost.
        for pause_ms in [50, 200, 1000] {
            if read.as_ref().is_err_and(|e| e.is_unavailable()) {
                tokio::time::sleep(std::time::Duration::from_millis(pause_ms)).await;
                read = store.events_after(cursor, head, max).await;
            }
        }
        match read {
            Ok(rows) if rows.first().is_some_and(|r| r.seq == cursor + 1) => HistoryRead::Frames(
                rows.into_iter()
                    .map(|e| EventFrame {
                        seq: e.seq,
                        bytes: wire::text(&encode(&e.kind, &e.timestamp, Some(e.seq), None, &e.data)),
                        kind: Arc::from(e.kind),
                    })
                    .collect(),
            ),
            // Pruned (by retention) while the replay was under way.
            Ok(_) => HistoryRead::Gone,
            Err(e) => {
                tracing::warn!(error = %e, cursor, "reading the durable history for a replay failed");
                HistoryRead::Gone
            }
        }
    }

    /// Ends a replay that has reached the head: switches to live and queues
    /// `resumed`. Under the publish lock, so no fan-out is half-way through: an
    /// event is either in the history the replay read, or published after the
    /// switch and pushed live.
    pub(crate) fn finish_replay(&self, session: &Session, cursor: u64) {
        let _publish = self.inner.publish.lock();
        let subs = session.subs.lock().clone();
        session.with_outbox(|o| {
            let Mode::Replaying {
                epoch,
                since,
                cursor: c,
                replayed,
                id,
                skip,
            } = &o.mode
            else {
                return;
            };
            if *c != cursor || self.head() != cursor {
                return;
            }
            let body = Resumed {
                epoch: epoch.clone(),
                since: *since,
                through: cursor,
                replayed: *replayed,
            };
            let reply = control("resumed", id.as_ref(), &body);
            o.delivered = skip.with_replayed(*since, cursor, subs.clone()).then_live(cursor, subs);
            o.mode = Mode::Live;
            o.push_control(reply);
        });
    }

    /// Queues `reset` for a replay the ring overtook, and goes live.
    pub(crate) fn replay_overrun(&self, session: &Session, cursor: u64) {
        let _publish = self.inner.publish.lock();
        let head = self.head();
        let subs = session.subs.lock().clone();
        let (id, sent) = match &session.outbox.lock().mode {
            // Only the replay that hit the overrun: a newer resume replaces it.
            Mode::Replaying {
                id,
                since,
                skip,
                cursor: c,
                ..
            } if *c == cursor => (id.clone(), skip.with_replayed(*since, cursor, subs.clone())),
            _ => return,
        };
        self.queue_reset(
            session,
            id.as_ref(),
            "history_overrun",
            format!("the replay fell behind the history ring at seq {cursor}; refetch state"),
        );
        session.with_outbox(|o| {
            o.mode = Mode::Live;
            o.delivered = sent.then_live(head, subs);
        });
    }
}

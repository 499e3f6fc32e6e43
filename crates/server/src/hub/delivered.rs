//! What one connection has already received, so `resume` never sends an event twice.
//!
//! A connection's stream is gap-free for the subscriptions in force, so what it
//! received can be described without remembering seqs: a few segments of the seq
//! line, each with the subscription sets an event had to match to be sent, cut
//! off at `taken` (the highest seq the writer has taken; queued-but-untaken
//! events are dropped when a resume starts). Replays add a segment for the range
//! they streamed. Unsubscribing purges queued events, so the untaken part of
//! every segment must also match the new set.

use std::sync::Arc;

use sigmavault_proto::SubscriptionSet;

/// Most segments kept; a client that changes its subscriptions more often than
/// this before resuming gets `resume_unavailable` instead of a guess.
pub(crate) const MAX_SEGMENTS: usize = 64;

/// Seqs in `(after, through]` matching every set in `subs` were sent.
#[derive(Clone, Debug)]
struct Segment {
    after: u64,
    /// `u64::MAX` for the open (live) segment.
    through: u64,
    subs: Vec<Arc<SubscriptionSet>>,
}

/// See the module docs.
#[derive(Clone, Debug, Default)]
pub(crate) struct DeliveredLog {
    segments: Vec<Segment>,
    taken: u64,
    /// Too many segments to stay exact.
    overflowed: bool,
}

impl DeliveredLog {
    /// A connection that goes live at `head` with `subs`.
    pub(crate) fn live_from(head: u64, subs: Arc<SubscriptionSet>) -> Self {
        DeliveredLog {
            segments: vec![Segment {
                after: head,
                through: u64::MAX,
                subs: vec![subs],
            }],
            taken: head,
            overflowed: false,
        }
    }

    /// Whether this event was already sent on this connection.
    pub(crate) fn delivered(&self, seq: u64, kind: &str) -> bool {
        seq <= self.taken
            && self
                .segments
                .iter()
                .any(|g| g.after < seq && seq <= g.through && g.subs.iter().all(|s| s.matches(kind)))
    }

    /// Whether the log can no longer tell exactly what was sent.
    pub(crate) fn overflowed(&self) -> bool {
        self.overflowed
    }

    /// The writer took events up to `seq` from the live queue.
    pub(crate) fn take(&mut self, seq: u64) {
        self.taken = self.taken.max(seq);
    }

    fn push(&mut self, segment: Segment) {
        if segment.after >= segment.through {
            return;
        }
        self.segments.push(segment);
        self.normalize();
        if self.segments.len() > MAX_SEGMENTS {
            self.overflowed = true;
            self.segments.truncate(MAX_SEGMENTS);
        }
    }

    /// Merges segments with the same subscription sets whose ranges touch or
    /// overlap, so resuming again and again keeps the log at one segment.
    fn normalize(&mut self) {
        self.segments.sort_by_key(|g| g.after);
        let mut merged: Vec<Segment> = Vec::with_capacity(self.segments.len());
        for g in self.segments.drain(..) {
            let same = |m: &Segment| {
                m.subs.len() == g.subs.len() && m.subs.iter().zip(&g.subs).all(|(a, b)| Arc::ptr_eq(a, b) || a == b)
            };
            match merged.iter_mut().rev().find(|m| same(m) && g.after <= m.through) {
                Some(m) => m.through = m.through.max(g.through),
                None => merged.push(g),
            }
        }
        self.segments = merged;
    }

    fn close_open(&mut self, head: u64) {
        for g in &mut self.segments {
            g.through = g.through.min(head);
        }
    }

    /// Patterns were added at `head`: queued events stay and will be sent.
    pub(crate) fn subscribed(&mut self, head: u64, subs: Arc<SubscriptionSet>) {
        self.close_open(head);
        self.segments.retain(|g| g.after < g.through);
        self.push(Segment {
            after: head,
            through: u64::MAX,
            subs: vec![subs],
        });
    }

    /// Patterns were removed at `head`: untaken queued events that no longer match were purged.
    pub(crate) fn unsubscribed(&mut self, head: u64, subs: Arc<SubscriptionSet>) {
        self.close_open(head);
        let taken = self.taken;
        let old = std::mem::take(&mut self.segments);
        for g in old {
            if g.through <= taken {
                self.push(g);
                continue;
            }
            if g.after < taken {
                self.push(Segment {
                    after: g.after,
                    through: taken,
                    subs: g.subs.clone(),
                });
            }
            let mut kept = g.subs;
            kept.push(subs.clone());
            self.push(Segment {
                after: g.after.max(taken),
                through: g.through,
                subs: kept,
            });
        }
        self.push(Segment {
            after: head,
            through: u64::MAX,
            subs: vec![subs],
        });
    }

    /// What was sent, frozen at a resume: nothing beyond `taken` (the queue is dropped).
    pub(crate) fn frozen(&self) -> Self {
        let mut out = self.clone();
        out.close_open(self.taken);
        out.segments.retain(|g| g.after < g.through);
        out
    }

    /// This (frozen) log plus a replay that streamed `(since, through]` for `subs`.
    pub(crate) fn with_replayed(&self, since: u64, through: u64, subs: Arc<SubscriptionSet>) -> Self {
        let mut out = self.clone();
        out.push(Segment {
            after: since,
            through,
            subs: vec![subs],
        });
        out.taken = out.taken.max(through);
        out
    }

    /// This log, continuing live from `head`.
    pub(crate) fn then_live(mut self, head: u64, subs: Arc<SubscriptionSet>) -> Self {
        self.push(Segment {
            after: head,
            through: u64::MAX,
            subs: vec![subs],
        });
        self.taken = self.taken.max(head);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sigmavault_proto::Pattern;

    fn set(p: &[&str]) -> Arc<SubscriptionSet> {
        Arc::new(SubscriptionSet::from_patterns(
            p.iter().map(|s| Pattern::parse(s).unwrap()),
        ))
    }

    #[test]
    fn live_segments_follow_subscriptions() {
        let mut log = DeliveredLog::live_from(10, set(&["notification"]));
        log.subscribed(20, set(&["notification", "custom.*"]));
        log.take(30);
        assert!(!log.delivered(5, "notification"), "before the connection went live");
        assert!(log.delivered(15, "notification"));
        assert!(!log.delivered(15, "custom.x"), "custom.* was subscribed at 20");
        assert!(log.delivered(21, "custom.x"));
        assert!(!log.delivered(31, "custom.x"), "not yet taken by the writer");
    }

    #[test]
    fn unsubscribe_purge_is_not_delivery() {
        let mut log = DeliveredLog::live_from(0, set(&["custom.*", "notification"]));
        log.take(5);
        // Events 6..=10 were queued when custom.* was dropped at head 10: custom ones purged.
        log.unsubscribed(10, set(&["notification"]));
        log.take(10);
        assert!(log.delivered(4, "custom.x"));
        assert!(!log.delivered(8, "custom.x"), "purged from the queue");
        assert!(log.delivered(8, "notification"));
        assert!(!log.delivered(12, "custom.x"));
    }

    #[test]
    fn replays_count_as_delivered() {
        let log = DeliveredLog::live_from(100, set(&["custom.*"])).frozen();
        let after = log
            .with_replayed(50, 120, set(&["custom.*"]))
            .then_live(120, set(&["custom.*"]));
        assert!(after.delivered(60, "custom.x"));
        assert!(after.delivered(120, "custom.x"));
        assert!(!after.delivered(121, "custom.x"));
        assert!(!after.delivered(40, "custom.x"));
    }

    #[test]
    fn repeated_resumes_stay_one_segment() {
        let subs = set(&["notification"]);
        let mut log = DeliveredLog::live_from(0, subs.clone());
        for round in 1..200u64 {
            log.take(round * 10);
            let frozen = log.frozen();
            log = frozen
                .with_replayed(round * 10 - 5, round * 10 + 3, subs.clone())
                .then_live(round * 10 + 3, subs.clone());
        }
        assert!(!log.overflowed());
        assert_eq!(log.segments.len(), 1);
        assert!(log.delivered(1000, "notification"));
    }

    #[test]
    fn frozen_drops_the_untaken_tail() {
        let mut log = DeliveredLog::live_from(0, set(&["*"]));
        log.take(7);
        let frozen = log.frozen();
        assert!(frozen.delivered(7, "a"));
        assert!(!frozen.delivered(8, "a"));
    }
}

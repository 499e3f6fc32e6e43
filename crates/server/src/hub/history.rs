//! The in-memory ring of recent event-class frames that `resume` replays from.

use std::collections::VecDeque;

use super::outbox::EventFrame;

/// Contiguous seqs `first..=last`; the oldest fall off when `capacity` is reached.
pub(crate) struct History {
    frames: VecDeque<EventFrame>,
    capacity: usize,
    /// The last seq pushed, retained or not (so an empty ring still knows what it lost).
    last: u64,
}

impl History {
    pub(crate) fn new(capacity: usize) -> Self {
        History {
            frames: VecDeque::with_capacity(capacity.min(4096)),
            capacity,
            last: 0,
        }
    }

    /// Continues a history whose last seq was `last` (before the ring is filled).
    pub(crate) fn resume_at(&mut self, last: u64) {
        self.last = last;
    }

    /// Appends the next frame (seqs must arrive in order, gap-free).
    pub(crate) fn push(&mut self, frame: EventFrame) {
        self.last = frame.seq;
        if self.capacity == 0 {
            return;
        }
        debug_assert!(self.frames.back().is_none_or(|b| b.seq + 1 == frame.seq));
        if self.frames.len() == self.capacity {
            self.frames.pop_front();
        }
        self.frames.push_back(frame);
    }

    /// The oldest retained seq, if any.
    pub(crate) fn oldest(&self) -> Option<u64> {
        self.frames.front().map(|f| f.seq)
    }

    /// Up to `max` frames with seq > `after`, in order. `None` when `after + 1` has
    /// already fallen out of the ring (the caller must `reset`).
    pub(crate) fn after(&self, after: u64, max: usize) -> Option<Vec<EventFrame>> {
        if after >= self.last {
            return Some(Vec::new());
        }
        let first = self.oldest()?;
        if after + 1 < first {
            return None;
        }
        let start = (after + 1 - first) as usize;
        Some(self.frames.iter().skip(start).take(max).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::sync::Arc;

    fn ev(seq: u64) -> EventFrame {
        EventFrame {
            seq,
            kind: Arc::from("custom.x"),
            bytes: Bytes::new(),
        }
    }

    #[test]
    fn ring_evicts_and_reports_gaps() {
        let mut h = History::new(3);
        for s in 1..=5 {
            h.push(ev(s));
        }
        assert_eq!(h.oldest(), Some(3));
        assert!(h.after(1, 10).is_none());
        let seqs: Vec<u64> = h.after(2, 10).unwrap().iter().map(|f| f.seq).collect();
        assert_eq!(seqs, vec![3, 4, 5]);
        let seqs: Vec<u64> = h.after(3, 1).unwrap().iter().map(|f| f.seq).collect();
        assert_eq!(seqs, vec![4]);
        assert!(h.after(5, 10).unwrap().is_empty());
    }

    #[test]
    fn zero_capacity_knows_what_it_lost() {
        let mut h = History::new(0);
        assert!(h.after(0, 10).unwrap().is_empty());
        h.push(ev(1));
        assert!(h.after(0, 10).is_none());
        assert!(h.after(1, 10).unwrap().is_empty());
    }
}

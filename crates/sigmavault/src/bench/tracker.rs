//! Per-client bookkeeping of which seqs arrived, to count lost, duplicated and
//! out-of-order deliveries.

/// How a received seq relates to what this client already had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// First time, and above everything before it.
    InOrder,
    /// First time, but below a seq already received.
    OutOfOrder,
    /// Already received (or at/below the client's starting point).
    Duplicate,
}

/// A bitmap of seqs above the client's welcome seq.
///
/// One bit per seq instead of a list of received seqs: 19k clients × 6k events would be
/// ~1 GB as `Vec<u64>` but is ~14 MB as bits, and membership stays O(1).
#[derive(Debug, Clone)]
pub(crate) struct SeqTracker {
    /// The welcome's `seq`: every event this client can receive is above it.
    base: u64,
    bits: Vec<u64>,
    highest: u64,
    pub(crate) out_of_order: u64,
    pub(crate) duplicates: u64,
}

impl SeqTracker {
    /// A tracker for a client that connected when the latest seq was `base`.
    pub(crate) fn new(base: u64) -> Self {
        SeqTracker {
            base,
            bits: Vec::new(),
            highest: base,
            out_of_order: 0,
            duplicates: 0,
        }
    }

    /// Records a seq and classifies it.
    pub(crate) fn record(&mut self, seq: u64) -> Seen {
        let Some(offset) = seq.checked_sub(self.base.saturating_add(1)) else {
            self.duplicates += 1;
            return Seen::Duplicate;
        };
        let Ok(offset) = usize::try_from(offset) else {
            self.duplicates += 1;
            return Seen::Duplicate;
        };
        let (word, bit) = (offset / 64, offset % 64);
        if word >= self.bits.len() {
            // Grow geometrically; seqs arrive mostly in order.
            self.bits.resize((word + 1).max(self.bits.len() * 2), 0);
        }
        let mask = 1u64 << bit;
        if self.bits[word] & mask != 0 {
            self.duplicates += 1;
            return Seen::Duplicate;
        }
        self.bits[word] |= mask;
        if seq > self.highest {
            self.highest = seq;
            Seen::InOrder
        } else {
            self.out_of_order += 1;
            Seen::OutOfOrder
        }
    }

    /// Whether `seq` was received.
    pub(crate) fn contains(&self, seq: u64) -> bool {
        let Some(offset) = seq.checked_sub(self.base.saturating_add(1)) else {
            return false;
        };
        let Ok(offset) = usize::try_from(offset) else {
            return false;
        };
        self.bits
            .get(offset / 64)
            .is_some_and(|w| w & (1u64 << (offset % 64)) != 0)
    }

    /// Whether a server's "last delivered seq" claim (a 4008 close reason) agrees with
    /// what arrived: the highest seq received, or anything at/below the starting point
    /// when nothing arrived at all.
    pub(crate) fn agrees_with_last_seq(&self, claimed: u64) -> bool {
        claimed == self.highest || (self.highest == self.base && claimed <= self.base)
    }

    /// The highest seq received (the starting point if none).
    pub(crate) fn highest(&self) -> u64 {
        self.highest
    }

    /// How many of `expected` never arrived.
    pub(crate) fn missing(&self, expected: &[u64]) -> u64 {
        expected.iter().filter(|&&s| !self.contains(s)).count() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies() {
        let mut t = SeqTracker::new(100);
        assert_eq!(t.record(101), Seen::InOrder);
        assert_eq!(t.record(300), Seen::InOrder);
        assert_eq!(t.record(200), Seen::OutOfOrder);
        assert_eq!(t.record(200), Seen::Duplicate);
        assert_eq!(t.record(100), Seen::Duplicate);
        assert_eq!(t.record(5), Seen::Duplicate);
        assert_eq!((t.out_of_order, t.duplicates), (1, 3));
        assert!(t.contains(101) && t.contains(200) && t.contains(300));
        assert!(!t.contains(102) && !t.contains(100) && !t.contains(10_000));
        assert_eq!(t.missing(&[101, 102, 200, 300, 301]), 2);
        assert!(t.agrees_with_last_seq(300) && !t.agrees_with_last_seq(200));
        let empty = SeqTracker::new(50);
        assert!(empty.agrees_with_last_seq(0) && empty.agrees_with_last_seq(50));
        assert!(!empty.agrees_with_last_seq(51));
    }

    #[test]
    fn grows_for_far_seqs() {
        let mut t = SeqTracker::new(0);
        for s in (1..=10_000).step_by(7) {
            assert_eq!(t.record(s), Seen::InOrder);
        }
        assert_eq!(t.missing(&(1..=10_000).step_by(7).collect::<Vec<_>>()), 0);
        assert!(t.bits.len() <= 2 * (10_000 / 64 + 1));
    }
}

//! Reconnect delays: exponential with "equal jitter".

use std::time::Duration;

use rand::Rng;

/// Exponential backoff from `base` doubling up to `cap`, jittered.
///
/// Half of each step is fixed and half random: when a server restarts, all its clients
/// lose the connection at the same instant, and un-jittered retries would hit the new
/// process in synchronised waves; the fixed half keeps any client from retrying at once.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff whose first delay is about `base`.
    pub(crate) fn new(base: Duration, cap: Duration) -> Self {
        Backoff { base, cap, attempt: 0 }
    }

    /// How many delays were handed out since the last reset.
    pub(crate) fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The next delay, in `[step/2, step]` where `step = min(cap, base * 2^attempt)`.
    pub(crate) fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let factor = 1u32 << self.attempt.min(20);
        let step = self.base.saturating_mul(factor).min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        let half = step / 2;
        let jitter_nanos = rng.random_range(0..=u64::try_from(half.as_nanos()).unwrap_or(u64::MAX));
        half + Duration::from_nanos(jitter_nanos)
    }

    /// Starts over after a connection proved healthy.
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn grows_to_the_cap_with_bounded_jitter() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
        let mut steps = Vec::new();
        for _ in 0..15 {
            steps.push(b.next_delay(&mut rng));
        }
        assert!(steps[0] >= Duration::from_millis(50) && steps[0] <= Duration::from_millis(100));
        assert!(steps[3] >= Duration::from_millis(400) && steps[3] <= Duration::from_millis(800));
        for d in &steps[9..] {
            assert!(*d >= Duration::from_secs(15) && *d <= Duration::from_secs(30), "{d:?}");
        }
        assert_eq!(b.attempt(), 15);
        b.reset();
        assert!(b.next_delay(&mut rng) <= Duration::from_millis(100));
    }

    #[test]
    fn never_overflows() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        for _ in 0..200 {
            assert!(b.next_delay(&mut rng) <= Duration::from_secs(60));
        }
    }
}

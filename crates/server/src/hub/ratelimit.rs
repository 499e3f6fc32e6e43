//! Inbound message rate limit of one connection: a token bucket owned by the
//! reader task (no sharing, no atomics).

use tokio::time::Instant;

/// What to do with an inbound message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Within the limit.
    Allow,
    /// Over the limit: refuse it and tell the client (first time in a strike).
    Refuse { notify: bool },
    /// The client ignored the warning and kept sending: close with 4429.
    Close,
}

/// Token bucket: `burst` tokens, refilled at `per_second`.
pub(crate) struct RateLimit {
    tokens: f64,
    burst: f64,
    per_second: f64,
    last: Instant,
    /// Messages refused since the bucket last had tokens.
    strikes: u32,
}

impl RateLimit {
    pub(crate) fn new(per_second: u32, burst: u32) -> Self {
        RateLimit {
            tokens: f64::from(burst),
            burst: f64::from(burst),
            per_second: f64::from(per_second),
            last: Instant::now(),
            strikes: 0,
        }
    }

    pub(crate) fn check(&mut self, now: Instant) -> Verdict {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.strikes = 0;
            return Verdict::Allow;
        }
        self.strikes += 1;
        // Sustained: as many refused messages as a whole burst, without a pause.
        if f64::from(self.strikes) > self.burst {
            Verdict::Close
        } else {
            Verdict::Refuse {
                notify: self.strikes == 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn burst_then_refuse_then_close() {
        let mut rl = RateLimit::new(10, 5);
        let t = Instant::now();
        for _ in 0..5 {
            assert_eq!(rl.check(t), Verdict::Allow);
        }
        assert_eq!(rl.check(t), Verdict::Refuse { notify: true });
        for _ in 0..4 {
            assert_eq!(rl.check(t), Verdict::Refuse { notify: false });
        }
        assert_eq!(rl.check(t), Verdict::Close);
    }

    #[tokio::test(start_paused = true)]
    async fn refills_over_time() {
        let mut rl = RateLimit::new(10, 2);
        let t = Instant::now();
        assert_eq!(rl.check(t), Verdict::Allow);
        assert_eq!(rl.check(t), Verdict::Allow);
        assert_eq!(rl.check(t), Verdict::Refuse { notify: true });
        assert_eq!(rl.check(t + Duration::from_millis(150)), Verdict::Allow);
    }
}

//! Rate limits keyed by client (GCRA buckets from `governor`), and who the
//! client is when a reverse proxy stands in front.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use axum::http::HeaderMap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::{Cidr, RateSpec};

/// A keyed bucket limiter; `None` spec means unlimited.
pub struct Limiter<K: Hash + Eq + Clone> {
    inner: Option<DefaultKeyedRateLimiter<K>>,
    clock: DefaultClock,
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    /// A limiter for `spec`.
    pub fn new(spec: Option<RateSpec>) -> Limiter<K> {
        let inner = spec.and_then(|s| {
            let burst = NonZeroU32::new(s.burst)?;
            let per = (s.period / s.burst).max(Duration::from_nanos(1));
            Quota::with_period(per).map(|q| RateLimiter::keyed(q.allow_burst(burst)))
        });
        Limiter {
            inner,
            clock: DefaultClock::default(),
        }
    }

    /// Takes one token for `key`; `Err` says how long until one is available.
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        match &self.inner {
            None => Ok(()),
            Some(l) => l.check_key(key).map_err(|nu| nu.wait_time_from(self.clock.now())),
        }
    }

    /// Forgets keys whose buckets are full again (bounds memory under a spray of addresses).
    pub fn forget_idle(&self) {
        if let Some(l) = &self.inner {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

/// The client's address: the peer, unless the peer is a trusted proxy, in
/// which case the right-most `X-Forwarded-For` entry that is not itself a
/// trusted proxy. Entries left of an untrusted one are client-supplied and
/// never believed.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let mut client = peer;
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    for hop in hops.iter().rev() {
        let Ok(ip) = hop.parse::<IpAddr>() else {
            break;
        };
        client = ip;
        if !is_trusted(ip) {
            break;
        }
    }
    client
}

/// Seconds for a `Retry-After` header (at least 1).
pub fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_refuse_then_recover() {
        let l = Limiter::new(Some(RateSpec {
            burst: 2,
            period: Duration::from_millis(100),
        }));
        assert!(l.check(&1).is_ok());
        assert!(l.check(&1).is_ok());
        let wait = l.check(&1).unwrap_err();
        assert!(wait <= Duration::from_millis(50), "{wait:?}");
        assert!(l.check(&2).is_ok(), "keys are independent");
        std::thread::sleep(Duration::from_millis(60));
        assert!(l.check(&1).is_ok());
        assert!(Limiter::<u8>::new(None).check(&1).is_ok());
    }

    #[test]
    fn forwarded_for() {
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap()];
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "6.6.6.6, 1.2.3.4, 10.0.0.2".parse().unwrap());
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(client_ip(proxy, &h, &trusted), "1.2.3.4".parse::<IpAddr>().unwrap());
        let outsider: IpAddr = "5.5.5.5".parse().unwrap();
        assert_eq!(
            client_ip(outsider, &h, &trusted),
            outsider,
            "untrusted peers' headers are ignored"
        );
        assert_eq!(client_ip(proxy, &HeaderMap::new(), &trusted), proxy);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}

//! WebSocket caps per client IP and per user.
//!
//! A slot is taken when a socket is let in (per IP at the upgrade, per user
//! once it has authenticated) and given back when the socket's task ends, by
//! dropping the [`SocketSlot`].

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;

/// Open sockets per key.
pub struct Counts<K: Hash + Eq> {
    open: Mutex<HashMap<K, usize>>,
}

impl<K: Hash + Eq> Default for Counts<K> {
    fn default() -> Self {
        Counts {
            open: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq + Clone> Counts<K> {
    fn take(&self, key: &K, max: usize) -> bool {
        let mut open = self.open.lock();
        let n = open.entry(key.clone()).or_insert(0);
        if max != 0 && *n >= max {
            if *n == 0 {
                open.remove(key);
            }
            return false;
        }
        *n += 1;
        true
    }

    fn give_back(&self, key: &K) {
        let mut open = self.open.lock();
        if let Some(n) = open.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                open.remove(key);
            }
        }
    }
}

/// The counters and their limits (0 = no limit).
#[derive(Clone)]
pub struct SocketCaps {
    by_ip: Arc<Counts<IpAddr>>,
    by_user: Arc<Counts<i64>>,
    max_per_ip: usize,
    max_per_user: usize,
}

/// One taken slot; dropping it gives the slot back.
pub enum SocketSlot {
    /// Counted against an IP.
    Ip(Arc<Counts<IpAddr>>, IpAddr),
    /// Counted against a user.
    User(Arc<Counts<i64>>, i64),
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        match self {
            SocketSlot::Ip(c, ip) => c.give_back(ip),
            SocketSlot::User(c, id) => c.give_back(id),
        }
    }
}

impl SocketCaps {
    /// Caps of `max_per_ip` and `max_per_user`.
    pub fn new(max_per_ip: usize, max_per_user: usize) -> SocketCaps {
        SocketCaps {
            by_ip: Arc::default(),
            by_user: Arc::default(),
            max_per_ip,
            max_per_user,
        }
    }

    /// Takes a slot for `ip`, or `None` at the cap.
    pub fn take_ip(&self, ip: IpAddr) -> Option<SocketSlot> {
        self.by_ip
            .take(&ip, self.max_per_ip)
            .then(|| SocketSlot::Ip(self.by_ip.clone(), ip))
    }

    /// Takes a slot for a user, or `None` at the cap.
    pub fn take_user(&self, user_id: i64) -> Option<SocketSlot> {
        self.by_user
            .take(&user_id, self.max_per_user)
            .then(|| SocketSlot::User(self.by_user.clone(), user_id))
    }

    /// The per-IP cap.
    pub fn max_per_ip(&self) -> usize {
        self.max_per_ip
    }

    /// The per-user cap.
    pub fn max_per_user(&self) -> usize {
        self.max_per_user
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_and_release() {
        let caps = SocketCaps::new(2, 0);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let a = caps.take_ip(ip).unwrap();
        let _b = caps.take_ip(ip).unwrap();
        assert!(caps.take_ip(ip).is_none());
        assert!(caps.take_ip("127.0.0.2".parse().unwrap()).is_some());
        drop(a);
        assert!(caps.take_ip(ip).is_some());
        let slots: Vec<_> = (0..1000).filter_map(|_| caps.take_user(1)).collect();
        assert_eq!(slots.len(), 1000, "0 means no limit");
    }
}

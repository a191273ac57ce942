//! Failed password checks, counted per client address and per username within
//! `failure_window`. Once either count reaches `captcha_after_failures`, attempts for that
//! address or username must carry a solved captcha. A success clears the username's count
//! (NIST SP 800-63B), so the real user is never locked out; counts also lapse with time.
//!
//! Memory: a key is added only by a password check (so at most the hash pool's rate times the
//! window), holds at most `threshold` timestamps, and is dropped once its newest failure leaves
//! the window. A hard cap ([`MAX_KEYS`]) stops new keys beyond it.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use crate::rate_limit::username_digest;

/// Most keys tracked per kind.
pub const MAX_KEYS: usize = 250_000;

struct Counts<K> {
    map: Mutex<HashMap<K, VecDeque<u64>>>,
}

impl<K: Hash + Eq + Clone> Counts<K> {
    fn new() -> Self {
        Counts { map: Mutex::new(HashMap::new()) }
    }

    fn count(&self, key: &K, since: u64) -> usize {
        let Ok(map) = self.map.lock() else { return 0 };
        map.get(key).map_or(0, |t| t.iter().filter(|&&x| x > since).count())
    }

    /// Adds a failure and returns the count within the window.
    fn add(&self, key: &K, now: u64, since: u64, keep: usize) -> usize {
        let Ok(mut map) = self.map.lock() else { return 0 };
        if !map.contains_key(key) && map.len() >= MAX_KEYS {
            map.retain(|_, t| t.back().is_some_and(|&x| x > since));
            if map.len() >= MAX_KEYS {
                return 0;
            }
        }
        let times = map.entry(key.clone()).or_default();
        times.retain(|&x| x > since);
        times.push_back(now);
        while times.len() > keep {
            times.pop_front();
        }
        times.len()
    }

    fn clear(&self, key: &K) -> usize {
        self.map.lock().ok().and_then(|mut m| m.remove(key)).map_or(0, |t| t.len())
    }

    fn prune(&self, since: u64) {
        if let Ok(mut map) = self.map.lock() {
            map.retain(|_, t| t.back().is_some_and(|&x| x > since));
            map.shrink_to_fit();
        }
    }

    fn len(&self) -> usize {
        self.map.lock().map_or(0, |m| m.len())
    }
}

pub struct FailureTracker {
    window_ms: u64,
    threshold: usize,
    by_address: Counts<IpAddr>,
    by_username: Counts<u128>,
}

/// What recording a failure changed.
#[derive(Debug, PartialEq, Eq)]
pub struct Recorded {
    /// This failure made a count reach the threshold (OWASP `authn_login_fail_max`).
    pub reached_threshold: bool,
}

impl FailureTracker {
    pub fn new(window: Duration, threshold: u32) -> Self {
        FailureTracker {
            window_ms: window.as_millis() as u64,
            threshold: threshold as usize,
            by_address: Counts::new(),
            by_username: Counts::new(),
        }
    }

    fn since(&self, now: u64) -> u64 {
        now.saturating_sub(self.window_ms)
    }

    /// Whether attempts from this address must carry a captcha.
    pub fn address_needs_captcha(&self, ip: IpAddr, now: u64) -> bool {
        self.by_address.count(&ip, self.since(now)) >= self.threshold
    }

    /// Whether attempts for this username (normalised key) must carry a captcha.
    pub fn username_needs_captcha(&self, user_key: &str, now: u64) -> bool {
        self.by_username.count(&username_digest(user_key), self.since(now)) >= self.threshold
    }

    pub fn needs_captcha(&self, ip: IpAddr, user_key: &str, now: u64) -> bool {
        self.address_needs_captcha(ip, now) || self.username_needs_captcha(user_key, now)
    }

    /// Counts a failed password check.
    pub fn record_failure(&self, ip: IpAddr, user_key: &str, now: u64) -> Recorded {
        let keep = self.threshold.max(1);
        let since = self.since(now);
        let a = self.by_address.add(&ip, now, since, keep);
        let u = self.by_username.add(&username_digest(user_key), now, since, keep);
        Recorded { reached_threshold: a == self.threshold || u == self.threshold }
    }

    /// A successful login clears the username's count; returns how many failures it had.
    pub fn record_success(&self, user_key: &str) -> usize {
        self.by_username.clear(&username_digest(user_key))
    }

    /// `user unlock`: clears the username's count and so its captcha demand.
    pub fn clear_username(&self, user_key: &str) {
        self.by_username.clear(&username_digest(user_key));
    }

    pub fn prune(&self, now: u64) {
        let since = self.since(now);
        self.by_address.prune(since);
        self.by_username.prune(since);
    }

    /// Keys tracked: (addresses, usernames).
    pub fn len(&self) -> (usize, usize) {
        (self.by_address.len(), self.by_username.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const OTHER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn the_threshold_triggers_per_address_and_per_username() {
        let t = FailureTracker::new(Duration::from_secs(60), 3);
        assert!(!t.record_failure(IP, "alice", 1000).reached_threshold);
        assert!(!t.record_failure(IP, "bob", 1001).reached_threshold);
        assert!(!t.needs_captcha(IP, "carol", 1002));
        assert!(t.record_failure(IP, "carol", 1002).reached_threshold);
        assert!(t.address_needs_captcha(IP, 1003));
        assert!(!t.username_needs_captcha("alice", 1003));
        // The same username from other addresses.
        t.record_failure(OTHER, "dave", 1);
        let t2 = FailureTracker::new(Duration::from_secs(60), 2);
        t2.record_failure(IP, "dave", 1000);
        t2.record_failure(OTHER, "dave", 1001);
        assert!(t2.username_needs_captcha("dave", 1002));
    }

    #[test]
    fn counts_lapse_after_the_window_and_a_success_clears_the_username() {
        let t = FailureTracker::new(Duration::from_secs(60), 2);
        t.record_failure(IP, "alice", 1000);
        t.record_failure(IP, "alice", 2000);
        assert!(t.username_needs_captcha("alice", 3000));
        assert!(!t.username_needs_captcha("alice", 2000 + 60_001));
        assert_eq!(t.record_success("alice"), 2);
        assert!(!t.username_needs_captcha("alice", 3000));
        assert!(t.address_needs_captcha(IP, 3000), "the address still has its count");
        t.prune(10_000_000);
        assert_eq!(t.len(), (0, 0));
    }
}

//! Per-core rate limits by source address and by network prefix (/24 for IPv4, /56 for IPv6),
//! as token buckets (DESIGN §4.1 `VOTES_RATE_PER_ADDR`, `VOTES_RATE_PER_PREFIX`). Sans-IO: the
//! caller passes the time, so the limiter is tested without a clock.
//!
//! Each core limits the connections it owns; SO_REUSEPORT spreads one client's connections over
//! the cores, so a node admits up to `cores ×` the configured rate from one source. Tables are
//! bounded: when one is full, buckets that have refilled completely (idle sources) are dropped;
//! if that frees nothing, the table is cleared — failing open for a moment rather than turning
//! honest voters away because an attacker filled the table.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Sources tracked per table and core.
pub const MAX_TRACKED: usize = 262_144;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// One token-bucket table: `rate` tokens per second, bursts of `2 × rate`.
#[derive(Debug)]
struct Buckets {
    rate: f64,
    burst: f64,
    table: HashMap<u128, Bucket>,
    capacity: usize,
}

impl Buckets {
    fn new(rate: u32, capacity: usize) -> Self {
        let rate = f64::from(rate);
        Self {
            rate,
            burst: 2.0 * rate,
            table: HashMap::new(),
            capacity,
        }
    }

    /// Takes one token for `key`, or says how long until one is available.
    fn take(&mut self, key: u128, now: Instant) -> Result<(), Duration> {
        if self.table.len() >= self.capacity && !self.table.contains_key(&key) {
            self.evict(now);
        }
        let b = self.table.entry(key).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.rate).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / self.rate))
        }
    }

    fn evict(&mut self, now: Instant) {
        let (rate, burst) = (self.rate, self.burst);
        self.table.retain(|_, b| {
            b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst
        });
        if self.table.len() >= self.capacity {
            self.table.clear();
        }
    }
}

/// The limits of one core. A rate of 0 switches that limit off.
#[derive(Debug)]
pub struct RateLimiter {
    per_addr: Option<Buckets>,
    per_prefix: Option<Buckets>,
}

/// The address key: the whole address, IPv4 mapped into IPv6 space so both share one table.
/// `ip` is canonical (an IPv4-mapped IPv6 address arrives as IPv4).
fn addr_key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The prefix key: /24 of an IPv4 address, /56 of an IPv6 one (`ip` canonical).
fn prefix_key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()) & !0xff,
        IpAddr::V6(v6) => u128::from(v6) & (!0u128 << 72),
    }
}

impl RateLimiter {
    pub fn new(per_addr: u32, per_prefix: u32) -> Self {
        Self::with_capacity(per_addr, per_prefix, MAX_TRACKED)
    }

    pub fn with_capacity(per_addr: u32, per_prefix: u32, capacity: usize) -> Self {
        assert!(capacity > 0, "a table tracks at least one source");
        Self {
            per_addr: (per_addr > 0).then(|| Buckets::new(per_addr, capacity)),
            per_prefix: (per_prefix > 0).then(|| Buckets::new(per_prefix, capacity)),
        }
    }

    /// Admits one request from `ip` at `now`, or returns how long the client should wait.
    pub fn check(&mut self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let ip = ip.to_canonical();
        if let Some(b) = &mut self.per_addr {
            b.take(addr_key(ip), now)?;
        }
        if let Some(b) = &mut self.per_prefix {
            b.take(prefix_key(ip), now)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn bursts_twice_the_rate_then_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(10, 0);
        for _ in 0..20 {
            assert!(l.check(ip("10.0.0.1"), t0).is_ok());
        }
        let wait = l.check(ip("10.0.0.1"), t0).unwrap_err();
        assert!(
            wait > Duration::from_millis(90) && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        assert!(
            l.check(ip("10.0.0.2"), t0).is_ok(),
            "another address has its own bucket"
        );
        assert!(
            l.check(ip("10.0.0.1"), t0 + Duration::from_millis(100))
                .is_ok()
        );
        assert!(
            l.check(ip("10.0.0.1"), t0 + Duration::from_millis(100))
                .is_err()
        );
    }

    #[test]
    fn a_prefix_shares_one_bucket() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(0, 2);
        assert!(l.check(ip("192.0.2.1"), t0).is_ok());
        assert!(l.check(ip("192.0.2.2"), t0).is_ok());
        assert!(l.check(ip("192.0.2.3"), t0).is_ok());
        assert!(l.check(ip("192.0.2.200"), t0).is_ok());
        assert!(l.check(ip("192.0.2.9"), t0).is_err(), "same /24");
        assert!(l.check(ip("192.0.3.9"), t0).is_ok(), "another /24");
        assert!(
            l.check(ip("::ffff:192.0.2.7"), t0).is_err(),
            "IPv4-mapped IPv6 is the same source"
        );
        for i in 0..4 {
            assert!(l.check(ip(&format!("2001:db8:0:ab{i:02x}::1")), t0).is_ok());
        }
        assert!(l.check(ip("2001:db8:0:abff::1"), t0).is_err(), "same /56");
        assert!(l.check(ip("2001:db8:0:ac00::1"), t0).is_ok(), "another /56");
    }

    #[test]
    fn off_when_zero_and_tables_stay_bounded() {
        let t0 = Instant::now();
        let mut off = RateLimiter::new(0, 0);
        for _ in 0..1000 {
            assert!(off.check(ip("10.0.0.1"), t0).is_ok());
        }
        let mut l = RateLimiter::with_capacity(1, 0, 4);
        for i in 0..100u8 {
            assert!(
                l.check(ip(&format!("10.0.1.{i}")), t0).is_ok(),
                "a new source always starts full"
            );
            assert!(l.per_addr.as_ref().unwrap().table.len() <= 4);
        }
    }
}

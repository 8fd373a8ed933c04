//! Per-core rate limits by source address and by network prefix, as token buckets (docs/design.md §4.1
//! `VOTES_RATE_PER_ADDR`, `VOTES_RATE_PER_PREFIX`). An IPv4 "address" is the address; an IPv6
//! one is its /64, since one host is handed a whole /64 and may rotate through it at will. The
//! prefixes are /24 (IPv4) and /56 (IPv6). Sans-IO: the caller passes the time, so the limiter
//! is tested without a clock.
//!
//! Each core limits the connections it owns; SO_REUSEPORT spreads one client's connections over
//! the cores, so a node admits up to `cores ×` the configured rate from one source. Tables are
//! bounded: when one is full, buckets that have refilled completely (idle sources) are dropped;
//! if that frees too little, the eighth of the table nearest to full is evicted — the sources
//! least held back, so a flood of fresh addresses cannot flush the ones being throttled (a
//! table cleared whole would let every throttled source burst again).

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

    /// Frees room for at least one source, and for an eighth of the table when it evicts
    /// (the scan then runs once per `capacity / 8` new sources, not once per source).
    fn evict(&mut self, now: Instant) {
        let (rate, burst) = (self.rate, self.burst);
        let projected =
            |b: &Bucket| b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate;
        self.table.retain(|_, b| projected(b) < burst);
        if self.table.len() < self.capacity {
            return;
        }
        let evict = (self.capacity / 8).max(1);
        let mut fill: Vec<f64> = self.table.values().map(projected).collect();
        let keep = fill.len() - evict;
        // The `keep`-th fullest from the bottom: everything fuller than it goes.
        let (_, threshold, _) = fill.select_nth_unstable_by(keep, f64::total_cmp);
        let threshold = *threshold;
        // Everything fuller than the threshold goes, and as many at it as make up `evict`.
        let mut ties = evict - fill.iter().filter(|p| **p > threshold).count();
        self.table.retain(|_, b| {
            let p = projected(b);
            if p > threshold {
                false
            } else if p == threshold && ties > 0 {
                ties -= 1;
                false
            } else {
                true
            }
        });
        assert!(
            self.table.len() < self.capacity,
            "eviction freed room: {} of {}",
            self.table.len(),
            self.capacity
        );
    }
}

/// The limits of one core. A rate of 0 switches that limit off.
#[derive(Debug)]
pub struct RateLimiter {
    per_addr: Option<Buckets>,
    per_prefix: Option<Buckets>,
}

/// The address key: an IPv4 address mapped into IPv6 space (both share one table), or an
/// IPv6 address's /64. `ip` is canonical (an IPv4-mapped IPv6 address arrives as IPv4).
fn addr_key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6) & (!0u128 << 64),
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
    fn an_ipv6_host_is_its_slash_64() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(1, 0);
        assert!(l.check(ip("2001:db8:1:2::1"), t0).is_ok());
        assert!(l.check(ip("2001:db8:1:2:ffff::9"), t0).is_ok());
        assert!(
            l.check(ip("2001:db8:1:2:abcd:1234:5678:9abc"), t0).is_err(),
            "a host rotating inside its /64 is one source"
        );
        assert!(l.check(ip("2001:db8:1:3::1"), t0).is_ok(), "another /64");
    }

    #[test]
    fn a_full_table_keeps_the_sources_it_is_holding_back() {
        let t0 = Instant::now();
        let mut l = RateLimiter::with_capacity(1, 0, 16);
        // A source that used its burst is being held back.
        let throttled = ip("10.9.9.9");
        assert!(l.check(throttled, t0).is_ok());
        assert!(l.check(throttled, t0).is_ok());
        assert!(l.check(throttled, t0).is_err());
        // A flood of fresh sources, far more than the table holds.
        for i in 0..1_000u32 {
            let fresh = IpAddr::from(std::net::Ipv4Addr::from(0x0b00_0000 + i));
            assert!(l.check(fresh, t0).is_ok(), "a new source starts full");
            assert!(l.per_addr.as_ref().unwrap().table.len() <= 16);
        }
        assert!(
            l.check(throttled, t0).is_err(),
            "the flood did not flush the throttled source"
        );
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

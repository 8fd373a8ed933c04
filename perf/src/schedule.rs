//! The open-loop send schedule: request `i` is intended at the time the offered-rate curve has
//! accumulated `i` requests, whatever happened to the earlier ones (no coordinated omission).
//!
//! `none` offers `rate` for the whole duration; `tv:RISE,HOLD,FALL` rises linearly from 0 to
//! `rate`, holds, then falls linearly to 0, like a TV show's call to vote.

use std::time::Duration;

use crate::duration::parse_duration;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Ramp {
    /// Constant rate for `--duration`.
    None,
    /// Linear rise, hold, linear fall; the run lasts `rise + hold + fall`.
    Tv {
        rise: Duration,
        hold: Duration,
        fall: Duration,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RampError {
    #[error(
        "unknown ramp profile {0:?}: expected `none` or `tv:RISE,HOLD,FALL` (e.g. tv:10s,30s,5s)"
    )]
    Unknown(String),
    #[error("bad duration in ramp profile: {0}")]
    Duration(String),
    #[error("a tv ramp lasts some time")]
    Empty,
}

impl std::str::FromStr for Ramp {
    type Err = RampError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "none" {
            return Ok(Self::None);
        }
        let Some(rest) = s.strip_prefix("tv:") else {
            return Err(RampError::Unknown(s.to_string()));
        };
        let parts: Vec<&str> = rest.split(',').collect();
        let [rise, hold, fall] = parts[..] else {
            return Err(RampError::Unknown(s.to_string()));
        };
        let d = |p: &str| parse_duration(p).map_err(|e| RampError::Duration(e.to_string()));
        let (rise, hold, fall) = (d(rise)?, d(hold)?, d(fall)?);
        if (rise + hold + fall).is_zero() {
            return Err(RampError::Empty);
        }
        Ok(Self::Tv { rise, hold, fall })
    }
}

/// When each request of a run is due, relative to the run's start.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    rate: f64,
    /// Seconds: rise, hold, fall (for `Ramp::None`: 0, duration, 0).
    rise: f64,
    hold: f64,
    fall: f64,
}

impl Schedule {
    /// `duration` is ignored by a tv ramp (its length is the sum of its phases).
    pub fn new(rate: f64, duration: Duration, ramp: Ramp) -> Self {
        assert!(rate.is_finite() && rate > 0.0, "a positive rate");
        let (rise, hold, fall) = match ramp {
            Ramp::None => (0.0, duration.as_secs_f64(), 0.0),
            Ramp::Tv { rise, hold, fall } => {
                (rise.as_secs_f64(), hold.as_secs_f64(), fall.as_secs_f64())
            }
        };
        Self {
            rate,
            rise,
            hold,
            fall,
        }
    }

    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.rise + self.hold + self.fall)
    }

    /// The offered rate (requests/s) at `t` seconds.
    pub fn rate_at(&self, t: f64) -> f64 {
        let (a, h, f, r) = (self.rise, self.hold, self.fall, self.rate);
        if t < 0.0 || t >= a + h + f {
            0.0
        } else if t < a {
            r * t / a
        } else if t < a + h {
            r
        } else {
            r * (1.0 - (t - a - h) / f)
        }
    }

    /// Requests offered by time `t` seconds: the integral of the rate curve.
    pub fn offered_by(&self, t: f64) -> f64 {
        let (a, h, f, r) = (self.rise, self.hold, self.fall, self.rate);
        let t = t.clamp(0.0, a + h + f);
        if t <= a {
            if a == 0.0 { 0.0 } else { r * t * t / (2.0 * a) }
        } else if t <= a + h {
            r * a / 2.0 + r * (t - a)
        } else {
            let tau = t - a - h;
            r * a / 2.0 + r * h + r * (tau - tau * tau / (2.0 * f))
        }
    }

    /// Number of requests in the run: those whose intended time falls inside it.
    pub fn total(&self) -> u64 {
        // Requests 0..N(T) are due strictly inside the run; the epsilon absorbs float error on
        // exact products such as 100/s × 3 s.
        (self.offered_by(self.rise + self.hold + self.fall) - 1e-6)
            .ceil()
            .max(0.0) as u64
    }

    /// The intended send time of request `i` (0-based): the `t` with `offered_by(t) == i`.
    pub fn intended(&self, i: u64) -> Duration {
        let (a, h, f, r) = (self.rise, self.hold, self.fall, self.rate);
        let n = i as f64;
        let rise_n = r * a / 2.0;
        let hold_n = rise_n + r * h;
        let t = if n <= rise_n && a > 0.0 {
            (2.0 * a * n / r).sqrt()
        } else if n <= hold_n || f == 0.0 {
            a + (n - rise_n) / r
        } else {
            // r(τ - τ²/2f) = m  ⇒  τ = f - sqrt(f² - 2fm/r), the root inside [0, f].
            let m = n - hold_n;
            let disc = (f * f - 2.0 * f * m / r).max(0.0);
            a + h + f - disc.sqrt()
        };
        Duration::from_secs_f64(t.max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: Duration, b_s: f64) -> bool {
        (a.as_secs_f64() - b_s).abs() < 1e-6
    }

    #[test]
    fn constant_rate_spaces_requests_evenly() {
        let s = Schedule::new(100.0, Duration::from_secs(3), Ramp::None);
        assert_eq!(s.total(), 300);
        assert!(close(s.intended(0), 0.0));
        assert!(close(s.intended(1), 0.01));
        assert!(close(s.intended(150), 1.5));
        assert!(close(s.intended(299), 2.99));
        assert_eq!(s.duration(), Duration::from_secs(3));
    }

    #[test]
    fn parses_profiles() {
        assert_eq!("none".parse::<Ramp>(), Ok(Ramp::None));
        assert_eq!(
            "tv:10s,30s,500ms".parse::<Ramp>(),
            Ok(Ramp::Tv {
                rise: Duration::from_secs(10),
                hold: Duration::from_secs(30),
                fall: Duration::from_millis(500)
            })
        );
        assert!("tv:10s,30s".parse::<Ramp>().is_err());
        assert!("tv:1x,1s,1s".parse::<Ramp>().is_err());
        assert!("tv:0s,0s,0s".parse::<Ramp>().is_err());
        assert!("square".parse::<Ramp>().is_err());
    }

    #[test]
    fn tv_profile_follows_the_integral_of_its_rate() {
        // Rise 10 s to 1000/s, hold 30 s, fall 5 s.
        let ramp: Ramp = "tv:10s,30s,5s".parse().unwrap();
        let s = Schedule::new(1000.0, Duration::from_secs(999), ramp);
        assert_eq!(s.duration(), Duration::from_secs(45));
        // 1000·10/2 + 1000·30 + 1000·5/2 requests.
        assert_eq!(s.total(), 5_000 + 30_000 + 2_500);
        // Rise: N(t) = r t²/2a, so request n is due at sqrt(2 a n / r).
        assert!(close(s.intended(0), 0.0));
        assert!(close(s.intended(50), 1.0)); // 1000·1²/20 = 50
        assert!(close(s.intended(1250), 5.0)); // 1000·25/20
        assert!(close(s.intended(5000), 10.0)); // end of the rise
        // Hold: one request per millisecond.
        assert!(close(s.intended(5001), 10.001));
        assert!(close(s.intended(35_000), 40.0));
        // Fall: N = 35000 + r(τ - τ²/2f); at τ = 1 s: 35000 + 1000·(1 - 0.1) = 35900.
        assert!(close(s.intended(35_900), 41.0));
        assert!(close(s.intended(37_500), 45.0));
        // Due times never go back, and the rate seen between consecutive requests matches.
        let mut prev = Duration::ZERO;
        for i in 0..s.total() {
            let t = s.intended(i);
            assert!(t >= prev, "request {i} at {t:?} before {prev:?}");
            prev = t;
        }
        let gap = (s.intended(2001) - s.intended(2000)).as_secs_f64();
        let t = s.intended(2000).as_secs_f64();
        assert!((1.0 / gap - s.rate_at(t)).abs() / s.rate_at(t) < 0.01);
        // Round trip with the integral.
        for i in [1u64, 17, 4_999, 20_000, 36_123, 37_499] {
            let t = s.intended(i).as_secs_f64();
            assert!((s.offered_by(t) - i as f64).abs() < 1e-3, "{i}");
        }
    }

    #[test]
    fn tv_profile_without_rise_or_fall() {
        let s = Schedule::new(10.0, Duration::ZERO, "tv:0s,2s,0s".parse().unwrap());
        assert_eq!(s.total(), 20);
        assert!(close(s.intended(0), 0.0));
        assert!(close(s.intended(19), 1.9));
        let s = Schedule::new(10.0, Duration::ZERO, "tv:2s,0s,0s".parse().unwrap());
        assert_eq!(s.total(), 10);
        assert!(close(s.intended(10), 2.0));
    }
}

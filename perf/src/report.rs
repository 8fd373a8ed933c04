//! The load report of docs/design.md §4.1:
//! `{"sent":n,"achieved_rate":r,"by_status":{"202":n,…},"latency_ms":{"p50","p90","p99","p999","max"}}`.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;

/// Latencies are recorded in microseconds, up to one minute, with 3 significant digits.
pub const LATENCY_MAX_US: u64 = 60_000_000;

pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("static bounds are valid")
}

/// Records `d` in a histogram of [`latency_histogram`]'s bounds, clamped into them.
pub fn record_latency(h: &mut Histogram<u64>, d: std::time::Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    h.saturating_record(us.clamp(1, LATENCY_MAX_US));
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LatencyMs {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl LatencyMs {
    /// The percentiles of a histogram recorded in microseconds.
    pub fn of(us: &Histogram<u64>) -> Self {
        let ms = |v: u64| v as f64 / 1000.0;
        Self {
            p50: ms(us.value_at_quantile(0.5)),
            p90: ms(us.value_at_quantile(0.9)),
            p99: ms(us.value_at_quantile(0.99)),
            p999: ms(us.value_at_quantile(0.999)),
            max: ms(us.max()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Report {
    pub sent: u64,
    pub achieved_rate: f64,
    /// Answers by HTTP status; transport failures under `"error"`.
    pub by_status: BTreeMap<String, u64>,
    pub latency_ms: LatencyMs,
}

impl Report {
    /// Builds the report of a run of `elapsed_s` seconds. `achieved_rate` counts answered
    /// requests (any status), not requests merely attempted.
    pub fn new(
        sent: u64,
        elapsed_s: f64,
        by_status: BTreeMap<String, u64>,
        latency_us: &Histogram<u64>,
    ) -> Self {
        assert!(elapsed_s > 0.0, "a run lasts some time");
        let answered: u64 = by_status
            .iter()
            .filter(|(k, _)| k.as_str() != "error")
            .map(|(_, v)| v)
            .sum();
        Self {
            sent,
            achieved_rate: answered as f64 / elapsed_s,
            by_status,
            latency_ms: LatencyMs::of(latency_us),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_the_documented_shape() {
        let mut h = latency_histogram();
        for us in 1..=1000u64 {
            h.record(us * 1000).unwrap();
        }
        let mut by_status = BTreeMap::new();
        by_status.insert("202".to_string(), 900);
        by_status.insert("409".to_string(), 100);
        by_status.insert("error".to_string(), 5);
        let r = Report::new(1005, 2.0, by_status, &h);
        assert_eq!(r.achieved_rate, 500.0);
        assert!((r.latency_ms.p50 - 500.0).abs() < 1.0, "{:?}", r.latency_ms);
        assert!((r.latency_ms.p99 - 990.0).abs() < 1.0, "{:?}", r.latency_ms);
        let v = serde_json::to_value(&r).unwrap();
        for key in ["sent", "achieved_rate", "by_status", "latency_ms"] {
            assert!(v.get(key).is_some(), "{key}");
        }
        for key in ["p50", "p90", "p99", "p999", "max"] {
            assert!(v["latency_ms"].get(key).is_some(), "{key}");
        }
    }
}

//! Prometheus text exposition (format 0.0.4), written in one place for every page the binary
//! serves (`votes serve`'s `/metrics`, the persister's): a family is its `# HELP` and `# TYPE`
//! lines followed by its samples, label values are escaped, and a histogram's samples come
//! from an HDR histogram.

use std::fmt::{Display, Write};

use hdrhistogram::Histogram;

/// What a family's samples mean to Prometheus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A page being written.
#[derive(Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    pub fn new() -> Self {
        Self {
            out: String::with_capacity(4096),
        }
    }

    /// Starts the family `name`: its help and type, then the samples written through it.
    pub fn family<'a>(&'a mut self, name: &'a str, kind: Kind, help: &str) -> Family<'a> {
        debug_assert!(
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':'),
            "a metric name: {name:?}"
        );
        debug_assert!(!help.contains('\n'), "help is one line");
        let _ = writeln!(
            self.out,
            "# HELP {name} {help}\n# TYPE {name} {}",
            kind.as_str()
        );
        Family {
            out: &mut self.out,
            name,
            kind,
        }
    }

    /// One family with one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: impl Display) {
        self.family(name, kind, help).sample(&[], value);
    }

    pub fn into_string(self) -> String {
        self.out
    }
}

/// The samples of one family.
pub struct Family<'a> {
    out: &'a mut String,
    name: &'a str,
    kind: Kind,
}

/// A sample's labels: names and values (values are escaped as they are written).
pub type Labels<'l> = [(&'l str, &'l dyn Display)];

impl Family<'_> {
    /// `name{labels} value`.
    pub fn sample(&mut self, labels: &Labels<'_>, value: impl Display) -> &mut Self {
        debug_assert_ne!(
            self.kind,
            Kind::Histogram,
            "a histogram writes its own samples"
        );
        write_series(self.out, self.name, "", labels, None);
        let _ = writeln!(self.out, " {value}");
        self
    }

    /// A histogram's samples (`_bucket` per bound and `+Inf`, `_sum`, `_count`) from an HDR
    /// histogram that counts since the start, so every sample only grows and `rate()` over it
    /// gives the recent distribution. A recorded value falls in the first bucket at or above
    /// the lowest value it stands for (HDR keeps 2-3 significant digits), and the sum adds
    /// those same values, so both are within the histogram's precision of the exact figures.
    /// `scale` turns recorded units into the unit of `le`.
    pub fn histogram(
        &mut self,
        labels: &Labels<'_>,
        h: &Histogram<u64>,
        bounds: &[u64],
        scale: f64,
    ) -> &mut Self {
        debug_assert_eq!(self.kind, Kind::Histogram);
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]), "bounds ascend");
        let mut in_bucket = vec![0u64; bounds.len()];
        let mut sum: u128 = 0;
        for v in h.iter_recorded() {
            let value = h.lowest_equivalent(v.value_iterated_to());
            let count = v.count_at_value();
            sum += u128::from(value) * u128::from(count);
            if let Some(i) = bounds.iter().position(|b| value <= *b) {
                in_bucket[i] += count;
            }
        }
        let mut cumulative = 0u64;
        for (bound, n) in bounds.iter().zip(&in_bucket) {
            cumulative += n;
            let le = *bound as f64 / scale;
            write_series(self.out, self.name, "_bucket", labels, Some(&le));
            let _ = writeln!(self.out, " {cumulative}");
        }
        let total = h.len();
        debug_assert!(
            cumulative <= total,
            "buckets never hold more than the histogram"
        );
        write_series(self.out, self.name, "_bucket", labels, Some(&"+Inf"));
        let _ = writeln!(self.out, " {total}");
        write_series(self.out, self.name, "_sum", labels, None);
        let _ = writeln!(self.out, " {}", sum as f64 / scale);
        write_series(self.out, self.name, "_count", labels, None);
        let _ = writeln!(self.out, " {total}");
        self
    }
}

/// `name{suffix}{labels[,le="…"]}`, without the value.
fn write_series(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: &Labels<'_>,
    le: Option<&dyn Display>,
) {
    out.push_str(name);
    out.push_str(suffix);
    if labels.is_empty() && le.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    let le = le.map(|v| ("le", v));
    for (label, value) in labels.iter().copied().chain(le) {
        debug_assert!(
            label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "a label name: {label:?}"
        );
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(label);
        out.push_str("=\"");
        escape_into(out, &value.to_string());
        out.push('"');
    }
    out.push('}');
}

/// A label value as the format wants it: backslash, double quote and line feed escaped.
fn escape_into(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS_US: [u64; 6] = [1_000, 5_000, 20_000, 25_000, 100_000, 10_000_000];
    const MAX_US: u64 = 60_000_000;

    fn samples(page: &str) -> Vec<(&str, f64)> {
        page.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .map(|(k, v)| (k, v.parse().unwrap()))
            .collect()
    }

    #[test]
    fn families_have_help_and_type_and_label_values_are_escaped() {
        let mut page = Exposition::new();
        page.family("votes_total", Kind::Counter, "Votes, by outcome.")
            .sample(&[("outcome", &"accepted")], 3)
            .sample(&[("outcome", &"we\"ird\\\nname")], 1);
        page.single("votes_ready", Kind::Gauge, "Ready.", 1);
        let text = page.into_string();
        assert_eq!(
            text,
            "# HELP votes_total Votes, by outcome.\n# TYPE votes_total counter\n\
             votes_total{outcome=\"accepted\"} 3\n\
             votes_total{outcome=\"we\\\"ird\\\\\\nname\"} 1\n\
             # HELP votes_ready Ready.\n# TYPE votes_ready gauge\nvotes_ready 1\n"
        );
    }

    #[test]
    fn a_histogram_is_cumulative_and_ends_with_its_count_and_sum() {
        let mut h = Histogram::<u64>::new_with_bounds(1, MAX_US, 3).unwrap();
        for us in [500, 1_000, 4_000, 19_000, 21_000, 90_000_000] {
            h.saturating_record(us.min(MAX_US));
        }
        let mut page = Exposition::new();
        page.family("t_seconds", Kind::Histogram, "T.").histogram(
            &[("route", &"local")],
            &h,
            &BOUNDS_US,
            1e6,
        );
        let out = page.into_string();
        let s = samples(&out);
        let get = |k: &str| s.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
        for (le, n) in [
            ("0.001", 2.0),
            ("0.005", 3.0),
            ("0.02", 4.0),
            ("0.025", 5.0),
            ("10", 5.0),
            ("+Inf", 6.0),
        ] {
            let key = format!("t_seconds_bucket{{route=\"local\",le=\"{le}\"}}");
            assert_eq!(get(&key), Some(n), "{key}\n{out}");
        }
        assert_eq!(get("t_seconds_count{route=\"local\"}"), Some(6.0));
        let sum = get("t_seconds_sum{route=\"local\"}").unwrap();
        let exact = (500 + 1_000 + 4_000 + 19_000 + 21_000 + MAX_US) as f64 / 1e6;
        assert!((sum - exact).abs() / exact < 0.001, "{sum} against {exact}");
        let buckets: Vec<f64> = s
            .iter()
            .filter(|(n, _)| n.contains("_bucket"))
            .map(|(_, v)| *v)
            .collect();
        assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{out}");
    }

    #[test]
    fn an_empty_histogram_without_labels_has_every_sample_at_zero() {
        let h = Histogram::<u64>::new_with_bounds(1, 1 << 20, 2).unwrap();
        let mut page = Exposition::new();
        page.family("b", Kind::Histogram, "B.")
            .histogram(&[], &h, &[1, 2, 4], 1.0);
        let out = page.into_string();
        assert!(out.contains("b_bucket{le=\"1\"} 0\n"), "{out}");
        assert!(out.contains("b_bucket{le=\"+Inf\"} 0\n"), "{out}");
        assert!(
            out.contains("b_sum 0\n") && out.contains("b_count 0\n"),
            "{out}"
        );
        assert_eq!(out.lines().count(), 2 + 3 + 3);
    }
}

//! What the voter-set and snapshot benches share: the voter ids they draw and the median.

/// A deterministic permutation-ish stream of voter ids within 0..population (xorshift).
pub fn voters(n: u64, population: u64, seed: u64) -> impl Iterator<Item = u64> {
    let mut x = seed | 1;
    (0..n).map(move |_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % population
    })
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

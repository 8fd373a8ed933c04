//! The request mix: which voter each request speaks for and whether it is a first vote, a
//! duplicate of an already-sent voter, or one of the malformed requests the API must refuse
//! with its own 4xx (docs/design.md §4.2).

use serde::Serialize;

/// What a request is, and so which status it should get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A voter's first vote: `202`.
    Fresh,
    /// Again a voter that already sent a vote: `409 already_voted`.
    Dup,
    /// Body that is not JSON: `400 invalid_request`.
    BadJson,
    /// An option the election does not have: `422 invalid_option`.
    UnknownOption,
    /// No `Authorization` header: `401 unauthorized`.
    MissingToken,
    /// A body over 1 KiB: `413 too_large`.
    Oversize,
    /// `GET …/votes/me` of a voter (a read from DynamoDB, not a vote): `200`.
    Lookup,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Fresh,
        Kind::Dup,
        Kind::BadJson,
        Kind::UnknownOption,
        Kind::MissingToken,
        Kind::Oversize,
        Kind::Lookup,
    ];
    /// The malformed kinds, used in rotation.
    pub const INVALID: [Kind; 4] = [
        Kind::BadJson,
        Kind::UnknownOption,
        Kind::MissingToken,
        Kind::Oversize,
    ];

    pub fn expected_status(self) -> u16 {
        match self {
            Kind::Fresh => 202,
            Kind::Dup => 409,
            Kind::BadJson => 400,
            Kind::UnknownOption => 422,
            Kind::MissingToken => 401,
            Kind::Oversize => 413,
            Kind::Lookup => 200,
        }
    }

    pub fn is_invalid(self) -> bool {
        Kind::INVALID.contains(&self)
    }

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Fresh => "fresh",
            Kind::Dup => "dup",
            Kind::BadJson => "bad_json",
            Kind::UnknownOption => "unknown_option",
            Kind::MissingToken => "missing_token",
            Kind::Oversize => "oversize",
            Kind::Lookup => "lookup",
        }
    }
}

/// SplitMix64, the shard simulation's generator: tiny, fast, and deterministic for a seed, which
/// is all a load mix needs. It starts at the seed itself, so a seed draws what it always drew.
#[derive(Debug, Clone)]
pub struct Rng(votes_tally::sim::Rng);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(votes_tally::sim::Rng::from_state(seed))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, n); `n > 0`.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MixError {
    #[error("--dup-ratio and --invalid-ratio must each be within [0, 1] and sum to at most 1")]
    Ratios,
    #[error("--voters must be at least 1")]
    NoVoters,
    #[error("--voter-base + --voters overflows u64")]
    Overflow,
    #[error("at least one option is needed")]
    NoOptions,
}

/// One planned request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub kind: Kind,
    pub voter: u64,
    /// Index into the election's options (ignored by kinds that send no valid option).
    pub option: usize,
}

/// Draws plans: a request is malformed with probability `invalid`, a duplicate with
/// probability `dup`, otherwise the next unused voter of `base..base+voters`. Malformed kinds
/// rotate. A duplicate before any voter was sent, and a fresh vote once all voters are used,
/// become the other kind: the latter because no unused voter is left.
#[derive(Debug, Clone)]
pub struct Mix {
    rng: Rng,
    dup: f64,
    invalid: f64,
    base: u64,
    voters: u64,
    options: usize,
    fresh_sent: u64,
    invalid_sent: u64,
    lookups: bool,
}

impl Mix {
    pub fn new(
        seed: u64,
        dup: f64,
        invalid: f64,
        base: u64,
        voters: u64,
        options: usize,
    ) -> Result<Self, MixError> {
        let ok = |r: f64| (0.0..=1.0).contains(&r);
        if !ok(dup) || !ok(invalid) || dup + invalid > 1.0 + 1e-9 {
            return Err(MixError::Ratios);
        }
        if voters == 0 {
            return Err(MixError::NoVoters);
        }
        base.checked_add(voters).ok_or(MixError::Overflow)?;
        if options == 0 {
            return Err(MixError::NoOptions);
        }
        Ok(Self {
            rng: Rng::new(seed),
            dup,
            invalid,
            base,
            voters,
            options,
            fresh_sent: 0,
            invalid_sent: 0,
            lookups: false,
        })
    }

    /// Every request a lookup (`GET …/votes/me`) of a voter drawn uniformly from the range,
    /// instead of a vote: the read path's latency at an offered rate.
    pub fn lookups_only(mut self) -> Self {
        self.lookups = true;
        self
    }

    /// Voters that got a first vote so far.
    pub fn fresh_sent(&self) -> u64 {
        self.fresh_sent
    }

    pub fn draw(&mut self) -> Plan {
        let u = self.rng.unit();
        let option = self.rng.below(self.options as u64) as usize;
        if self.lookups {
            let voter = self.base + self.rng.below(self.voters);
            return Plan {
                kind: Kind::Lookup,
                voter,
                option,
            };
        }
        if u < self.invalid {
            let kind = Kind::INVALID[(self.invalid_sent % 4) as usize];
            self.invalid_sent += 1;
            let voter = self.base + self.rng.below(self.voters);
            return Plan {
                kind,
                voter,
                option,
            };
        }
        let want_dup = u < self.invalid + self.dup;
        if (want_dup && self.fresh_sent > 0) || self.fresh_sent == self.voters {
            let voter = self.base + self.rng.below(self.fresh_sent);
            return Plan {
                kind: Kind::Dup,
                voter,
                option,
            };
        }
        let voter = self.base + self.fresh_sent;
        self.fresh_sent += 1;
        Plan {
            kind: Kind::Fresh,
            voter,
            option,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn counts(mix: &mut Mix, n: usize) -> ([usize; 7], Vec<Plan>) {
        let mut c = [0; 7];
        let plans: Vec<Plan> = (0..n).map(|_| mix.draw()).collect();
        for p in &plans {
            c[p.kind.index()] += 1;
        }
        (c, plans)
    }

    #[test]
    fn a_seed_draws_splitmix64_from_the_seed_itself() {
        // Vigna's splitmix64.c from state 42: the draws every recorded seed depends on.
        let mut rng = Rng::new(42);
        assert_eq!(
            [rng.next_u64(), rng.next_u64(), rng.next_u64()],
            [
                0xbdd7_3226_2feb_6e95,
                0x28ef_e333_b266_f103,
                0x4752_6757_130f_9f52
            ]
        );
    }

    #[test]
    fn a_lookup_mix_only_reads_voters_of_the_range() {
        let mut mix = Mix::new(3, 0.0, 0.0, 100, 50, 2).unwrap().lookups_only();
        let (c, plans) = counts(&mut mix, 500);
        assert_eq!(c[Kind::Lookup.index()], 500);
        assert!(plans.iter().all(|p| (100..150).contains(&p.voter)));
    }

    #[test]
    fn ratios_hold_over_ten_thousand_draws() {
        let n = 10_000;
        let mut mix = Mix::new(42, 0.2, 0.1, 1_000, 1_000_000, 3).unwrap();
        let (c, plans) = counts(&mut mix, n);
        let frac = |k: usize| k as f64 / n as f64;
        let invalid: usize = Kind::INVALID.iter().map(|k| c[k.index()]).sum();
        assert!((frac(c[Kind::Dup.index()]) - 0.2).abs() < 0.015, "{c:?}");
        assert!((frac(invalid) - 0.1).abs() < 0.01, "{c:?}");
        assert!((frac(c[Kind::Fresh.index()]) - 0.7).abs() < 0.015, "{c:?}");
        // The malformed kinds rotate: each within one of a quarter.
        for k in Kind::INVALID {
            assert!(c[k.index()].abs_diff(invalid / 4) <= 1, "{c:?}");
        }
        // Fresh voters are distinct, consecutive from the base; duplicates repeat sent voters.
        let mut seen = HashSet::new();
        for p in &plans {
            match p.kind {
                Kind::Fresh => {
                    assert_eq!(p.voter, 1_000 + seen.len() as u64);
                    assert!(seen.insert(p.voter));
                }
                Kind::Dup => assert!(seen.contains(&p.voter), "{p:?}"),
                _ => assert!((1_000..1_001_000).contains(&p.voter)),
            }
            assert!(p.option < 3);
        }
        assert_eq!(mix.fresh_sent(), seen.len() as u64);
        // Options are used evenly enough.
        let mut per_option = [0usize; 3];
        for p in &plans {
            per_option[p.option] += 1;
        }
        for o in per_option {
            assert!(
                (o as f64 / n as f64 - 1.0 / 3.0).abs() < 0.02,
                "{per_option:?}"
            );
        }
    }

    #[test]
    fn same_seed_same_mix() {
        let a = counts(&mut Mix::new(7, 0.3, 0.3, 0, 500, 2).unwrap(), 1_000).1;
        let b = counts(&mut Mix::new(7, 0.3, 0.3, 0, 500, 2).unwrap(), 1_000).1;
        assert_eq!(a, b);
    }

    #[test]
    fn exhausted_voters_become_duplicates() {
        let mut mix = Mix::new(1, 0.0, 0.0, 10, 5, 2).unwrap();
        let (c, _) = counts(&mut mix, 100);
        assert_eq!(c[Kind::Fresh.index()], 5);
        assert_eq!(c[Kind::Dup.index()], 95);
    }

    #[test]
    fn pure_mixes_and_bad_ratios() {
        let (c, _) = counts(&mut Mix::new(3, 0.0, 1.0, 0, 10, 2).unwrap(), 400);
        assert_eq!(c[Kind::BadJson.index()], 100);
        assert_eq!(c[Kind::Oversize.index()], 100);
        assert!(Mix::new(0, 0.6, 0.5, 0, 1, 1).is_err());
        assert!(Mix::new(0, -0.1, 0.0, 0, 1, 1).is_err());
        assert!(Mix::new(0, 0.0, 0.0, 0, 0, 1).is_err());
        assert!(Mix::new(0, 0.0, 0.0, u64::MAX, 2, 1).is_err());
        assert!(Mix::new(0, 0.0, 0.0, 0, 1, 0).is_err());
    }
}

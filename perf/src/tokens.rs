//! Voter tokens for the load: `Authorization: Bearer <JWT>` header values minted with
//! `votes_core::token::issue`, lazily, and kept in a bounded cache so a voter's token is
//! minted once per run (its duplicate votes and its PoW challenge reuse it) and minting does
//! not dominate the generator's CPU. Voters beyond the cache are minted on each use.

use std::sync::OnceLock;

use hyper::header::HeaderValue;
use votes_core::VoterId;
use votes_core::token::{self, KeyError, TokenKeys};

pub struct Tokens {
    keys: TokenKeys,
    base: u64,
    issued_at_s: u64,
    ttl_s: u64,
    slots: Box<[OnceLock<HeaderValue>]>,
}

impl Tokens {
    /// Tokens for voters `base..`, valid `ttl_s` from `issued_at_s`; the first `cache` voters
    /// are kept once minted.
    pub fn new(
        secret: &[u8],
        base: u64,
        cache: usize,
        issued_at_s: u64,
        ttl_s: u64,
    ) -> Result<Self, KeyError> {
        let keys = TokenKeys::hs256(secret)?;
        Ok(Self {
            keys,
            base,
            issued_at_s,
            ttl_s,
            slots: (0..cache).map(|_| OnceLock::new()).collect(),
        })
    }

    fn mint(&self, voter: u64) -> HeaderValue {
        let jwt = token::issue(
            self.keys.signing_key(),
            VoterId(voter),
            self.ttl_s,
            self.issued_at_s,
        );
        let mut v = String::with_capacity(7 + jwt.len());
        v.push_str("Bearer ");
        v.push_str(&jwt);
        HeaderValue::try_from(v).expect("a JWT is a valid header value")
    }

    /// The `Authorization` header value for `voter`.
    pub fn bearer(&self, voter: u64) -> HeaderValue {
        match usize::try_from(voter.wrapping_sub(self.base))
            .ok()
            .and_then(|i| self.slots.get(i))
        {
            Some(slot) => slot.get_or_init(|| self.mint(voter)).clone(),
            None => self.mint(voter),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn tokens_verify_and_are_cached() {
        let t = Tokens::new(SECRET, 100, 4, 1_000, 3_600).unwrap();
        let keys = TokenKeys::hs256(SECRET).unwrap();
        for voter in [100, 103, 104, 5] {
            let h = t.bearer(voter);
            let jwt = h.to_str().unwrap().strip_prefix("Bearer ").unwrap();
            assert_eq!(token::verify(&keys, jwt, 2_000), Ok(VoterId(voter)));
        }
        // Cached: the same bytes (shared, not re-minted).
        assert_eq!(t.bearer(101), t.bearer(101));
        assert!(t.slots[1].get().is_some());
        assert!(t.slots[2].get().is_none());
    }

    #[test]
    fn a_short_secret_is_refused() {
        assert!(Tokens::new(b"short", 0, 1, 0, 1).is_err());
    }
}

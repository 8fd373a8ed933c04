//! The catalogue of bad vote requests: each kind, the answer the contract gives it
//! (docs/design.md §4.2), and the malformed parts that make it. `votes-flood` sends them at a running node
//! beside honest voters; `tests/edge_attack.rs` does the same in `make test`. Both build their
//! requests from here, so they flood with the same requests and hold the server to the same
//! answers.

use votes_core::vote_body::VOTE_BODY_MAX;

/// One kind of bad request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Attack {
    MissingToken,
    /// A token signed with a key the server does not know.
    BadSignature,
    /// Not a JWT at all.
    GarbageToken,
    ExpiredToken,
    BadJson,
    UnknownField,
    BadUtf8,
    UnknownOption,
    /// A body twice the limit.
    Oversize,
    WrongContentType,
    UnknownElection,
    /// A second vote of a voter who voted.
    Duplicate,
    /// A PoW election's vote without its proof of work.
    PowMissing,
    /// A challenge no server issued.
    PowForged,
    /// A genuine challenge with a nonce that does not solve it.
    PowUnsolved,
    /// A genuine, solved challenge issued to another voter.
    PowOtherVoter,
}

impl Attack {
    /// Every kind: the base ones, then a duplicate, then the proof-of-work ones.
    pub const ALL: [Attack; 16] = {
        let mut all = [Attack::Duplicate; 16];
        let (base, rest) = all.split_at_mut(Self::BASE.len());
        base.copy_from_slice(&Self::BASE);
        let (_duplicate, pow) = rest.split_at_mut(1);
        pow.copy_from_slice(&Self::POW);
        all
    };
    /// The kinds that need only an open election without proof of work.
    pub const BASE: [Attack; 11] = [
        Attack::MissingToken,
        Attack::BadSignature,
        Attack::GarbageToken,
        Attack::ExpiredToken,
        Attack::BadJson,
        Attack::UnknownField,
        Attack::BadUtf8,
        Attack::UnknownOption,
        Attack::Oversize,
        Attack::WrongContentType,
        Attack::UnknownElection,
    ];
    /// The kinds aimed at an election that asks for proof of work.
    pub const POW: [Attack; 4] = [
        Attack::PowMissing,
        Attack::PowForged,
        Attack::PowUnsolved,
        Attack::PowOtherVoter,
    ];

    /// The kind's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Attack::MissingToken => "missing_token",
            Attack::BadSignature => "bad_signature",
            Attack::GarbageToken => "garbage_token",
            Attack::ExpiredToken => "expired_token",
            Attack::BadJson => "bad_json",
            Attack::UnknownField => "unknown_field",
            Attack::BadUtf8 => "bad_utf8",
            Attack::UnknownOption => "unknown_option",
            Attack::Oversize => "oversize",
            Attack::WrongContentType => "wrong_content_type",
            Attack::UnknownElection => "unknown_election",
            Attack::Duplicate => "duplicate",
            Attack::PowMissing => "pow_missing",
            Attack::PowForged => "pow_forged",
            Attack::PowUnsolved => "pow_unsolved",
            Attack::PowOtherVoter => "pow_other_voter",
        }
    }

    /// The status and `error.code` the contract gives this request.
    pub fn expected(self) -> (u16, &'static str) {
        match self {
            Attack::MissingToken
            | Attack::BadSignature
            | Attack::GarbageToken
            | Attack::ExpiredToken => (401, "unauthorized"),
            Attack::BadJson | Attack::UnknownField | Attack::BadUtf8 => (400, "invalid_request"),
            Attack::UnknownOption => (422, "invalid_option"),
            Attack::Oversize => (413, "too_large"),
            Attack::WrongContentType => (415, "unsupported_media_type"),
            Attack::UnknownElection => (404, "not_found"),
            Attack::Duplicate => (409, "already_voted"),
            Attack::PowMissing => (403, "challenge_required"),
            Attack::PowForged | Attack::PowUnsolved | Attack::PowOtherVoter => {
                (403, "challenge_failed")
            }
        }
    }

    /// The body of a kind whose body is what is wrong with it, voting for `option` (a real
    /// option of the election); `None` for the kinds whose body is an honest vote.
    pub fn malformed_body(self, option: &str) -> Option<Vec<u8>> {
        Some(match self {
            Attack::BadJson => format!(r#"{{"option": "{option}""#).into_bytes(),
            Attack::UnknownField => {
                format!(r#"{{"option":"{option}","weight":1000}}"#).into_bytes()
            }
            Attack::BadUtf8 => b"{\"option\":\"a\xff\xfe\"}".to_vec(),
            Attack::UnknownOption => br#"{"option":"no-such-option-flood"}"#.to_vec(),
            Attack::Oversize => {
                let mut body = format!(r#"{{"option":"{option}","padding":""#).into_bytes();
                body.resize(body.len() + 2 * VOTE_BODY_MAX, b'x');
                body.extend_from_slice(br#""}"#);
                body
            }
            Attack::PowForged => serde_json::json!({
                "option": option,
                // Well-formed base64url that no server issued: refused at the tag check.
                "pow": {"challenge": "AQZmbG9vZA".repeat(6), "nonce": "42"},
            })
            .to_string()
            .into_bytes(),
            _ => return None,
        })
    }
}

/// The `Authorization` of [`Attack::GarbageToken`].
pub const GARBAGE_AUTHORIZATION: &str = "Bearer not-a.jwt-at.all";
/// The election of [`Attack::UnknownElection`].
pub const UNKNOWN_ELECTION: &str = "no-such-election-flood";
/// The content type of [`Attack::WrongContentType`].
pub const WRONG_CONTENT_TYPE: &str = "text/plain";

/// A nonce that does not solve `challenge` at any difficulty above 7: its work hash starts
/// with a non-zero byte ([`Attack::PowUnsolved`]).
pub fn unsolving_nonce(challenge: &str) -> String {
    (0u64..)
        .map(|i| i.to_string())
        .find(|n| votes_core::pow::work_hash(challenge, n)[0] != 0)
        .expect("most nonces fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalogue_is_whole_and_each_body_is_what_its_kind_says() {
        let mut kinds: Vec<Attack> = Attack::BASE.to_vec();
        kinds.push(Attack::Duplicate);
        kinds.extend(Attack::POW);
        assert_eq!(kinds, Attack::ALL.to_vec());
        let names: std::collections::BTreeSet<&str> =
            Attack::ALL.iter().map(|a| a.name()).collect();
        assert_eq!(names.len(), Attack::ALL.len());
        let parse = |a: Attack| {
            votes_core::VoteBody::parse(&a.malformed_body("blue").unwrap()).map(|b| b.option)
        };
        assert!(parse(Attack::BadJson).is_err());
        assert!(parse(Attack::UnknownField).is_err());
        assert!(parse(Attack::BadUtf8).is_err());
        assert!(parse(Attack::Oversize).is_err());
        assert_eq!(
            parse(Attack::UnknownOption).unwrap().as_str(),
            "no-such-option-flood"
        );
        assert!(
            Attack::Oversize.malformed_body("blue").unwrap().len() > VOTE_BODY_MAX,
            "over the limit"
        );
        assert_eq!(Attack::MissingToken.malformed_body("blue"), None);
        let challenge = "AQZmbG9vZA";
        assert_ne!(
            votes_core::pow::work_hash(challenge, &unsolving_nonce(challenge))[0],
            0
        );
    }
}

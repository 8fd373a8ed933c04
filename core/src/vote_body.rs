//! The body of `POST /v1/elections/{id}/votes` (docs/design.md §4.2):
//! `{"option":"<id>","pow":{"challenge":"…","nonce":"…"}}`, `pow` only when the election asks
//! for proof of work.
//!
//! [`VoteBody::parse`] turns untrusted bytes into a validated body or an error that already
//! knows its API code:
//!
//! | input                                                        | code                  |
//! |--------------------------------------------------------------|-----------------------|
//! | more than [`VOTE_BODY_MAX`] bytes                            | 413 `too_large`       |
//! | not UTF-8, not JSON, trailing data                           | 400 `invalid_request` |
//! | unknown or duplicate field, wrong type, missing `option`     | 400 `invalid_request` |
//! | `challenge`/`nonce` empty, longer than [`POW_FIELD_MAX`] or not printable ASCII | 400 `invalid_request` |
//! | `option` not `[a-z0-9-]{1,32}`                               | 422 `invalid_option`  |
//!
//! `"pow": null` is read as an absent `pow`. Whether a `pow` is required, and whether the
//! option belongs to the election, are decided later with the election's state.

use serde::{Deserialize, Serialize};

use crate::api_error::ErrorCode;
use crate::ids::{IdError, OptionId};
use crate::json::ObjectOnly;

/// Largest body accepted (docs/design.md §4.2: "body > 1 KiB" is `413`). Listeners should stop reading
/// after `VOTE_BODY_MAX + 1` bytes and hand those over, which is enough to answer `413`.
pub const VOTE_BODY_MAX: usize = 1024;
/// Longest `pow.challenge` or `pow.nonce`.
pub const POW_FIELD_MAX: usize = 256;

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct VoteBody {
    pub option: OptionId,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pow: Option<PowSolution>,
}

/// A proof-of-work answer, opaque here: the challenge the server handed out and the nonce the
/// client found. Both are 1..=[`POW_FIELD_MAX`] printable ASCII characters (no spaces), so
/// they can be logged and compared byte-wise without escaping.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct PowSolution {
    pub challenge: String,
    pub nonce: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("request body is {len} bytes; at most {VOTE_BODY_MAX} are accepted")]
    TooLarge { len: usize },
    #[error("request body is not valid UTF-8")]
    NotUtf8,
    /// Syntax: not JSON, truncated, trailing characters (serde_json's text, with position).
    #[error("request body is not valid JSON: {0}")]
    Malformed(String),
    /// Shape: unknown, duplicate or missing fields, wrong types (serde_json's text).
    #[error("request body does not match {{\"option\",\"pow\"?:{{\"challenge\",\"nonce\"}}}}: {0}")]
    Invalid(String),
    #[error("`pow.{field}` must be 1 to {POW_FIELD_MAX} printable ASCII characters")]
    BadPowField { field: &'static str },
    #[error("`option` is not a valid option id: {0}")]
    InvalidOption(#[source] IdError),
}

impl BodyError {
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::TooLarge { .. } => ErrorCode::TooLarge,
            Self::InvalidOption(_) => ErrorCode::InvalidOption,
            Self::NotUtf8 | Self::Malformed(_) | Self::Invalid(_) | Self::BadPowField { .. } => {
                ErrorCode::InvalidRequest
            }
        }
    }

    pub fn message(&self) -> String {
        self.to_string()
    }
}

// Wire shapes. Derived structs refuse duplicate fields, and `deny_unknown_fields` refuses
// typos (`"opiton"`) instead of reading them as a missing field later.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireBody {
    option: String,
    #[serde(default)]
    pow: Option<ObjectOnly<WirePow>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WirePow {
    challenge: String,
    nonce: String,
}

impl VoteBody {
    pub fn parse(bytes: &[u8]) -> Result<Self, BodyError> {
        if bytes.len() > VOTE_BODY_MAX {
            return Err(BodyError::TooLarge { len: bytes.len() });
        }
        // Checked first so bad UTF-8 gets its own message rather than a JSON syntax error.
        let text = std::str::from_utf8(bytes).map_err(|_| BodyError::NotUtf8)?;
        let ObjectOnly(wire): ObjectOnly<WireBody> = serde_json::from_str(text).map_err(|e| {
            if e.is_data() {
                BodyError::Invalid(e.to_string())
            } else {
                BodyError::Malformed(e.to_string())
            }
        })?;
        let pow = match wire.pow {
            None => None,
            Some(ObjectOnly(p)) => Some(PowSolution {
                challenge: pow_field(p.challenge, "challenge")?,
                nonce: pow_field(p.nonce, "nonce")?,
            }),
        };
        let option = OptionId::new(wire.option).map_err(BodyError::InvalidOption)?;
        Ok(Self { option, pow })
    }

    /// The body as a client sends it; [`VoteBody::parse`] reads it back unchanged.
    pub fn to_json(&self) -> String {
        let json = serde_json::to_string(self).expect("strings serialize");
        debug_assert!(json.len() <= VOTE_BODY_MAX);
        json
    }
}

fn pow_field(value: String, field: &'static str) -> Result<String, BodyError> {
    let ok =
        (1..=POW_FIELD_MAX).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(value)
    } else {
        Err(BodyError::BadPowField { field })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(s: &str) -> Result<VoteBody, BodyError> {
        VoteBody::parse(s.as_bytes())
    }

    fn blue() -> OptionId {
        OptionId::new("blue").unwrap()
    }

    #[test]
    fn parses_both_documented_shapes() {
        assert_eq!(
            parse(r#"{"option":"blue"}"#),
            Ok(VoteBody {
                option: blue(),
                pow: None
            })
        );
        assert_eq!(
            parse(r#" { "pow" : { "nonce":"17", "challenge":"c-1.x" }, "option":"blue" } "#),
            Ok(VoteBody {
                option: blue(),
                pow: Some(PowSolution {
                    challenge: "c-1.x".into(),
                    nonce: "17".into()
                })
            })
        );
        assert_eq!(parse(r#"{"option":"blue","pow":null}"#).unwrap().pow, None);
        // JSON escapes are decoded before validation.
        assert_eq!(parse(r#"{"option":"\u0062lue"}"#).unwrap().option, blue());
    }

    #[test]
    fn maps_every_rejection_to_its_code() {
        let cases: &[(&str, ErrorCode)] = &[
            ("", ErrorCode::InvalidRequest),
            ("{", ErrorCode::InvalidRequest),
            ("null", ErrorCode::InvalidRequest),
            ("[]", ErrorCode::InvalidRequest),
            (r#"{"option":"blue"} x"#, ErrorCode::InvalidRequest),
            (r#"{"option":"blue"}{}"#, ErrorCode::InvalidRequest),
            ("{}", ErrorCode::InvalidRequest),
            (r#"{"option":null}"#, ErrorCode::InvalidRequest),
            (r#"{"option":1}"#, ErrorCode::InvalidRequest),
            (r#"{"option":["blue"]}"#, ErrorCode::InvalidRequest),
            (r#"["blue"]"#, ErrorCode::InvalidRequest),
            (
                r#"{"option":"blue","pow":["c","n"]}"#,
                ErrorCode::InvalidRequest,
            ),
            (
                r#"{"option":"blue","opiton":"red"}"#,
                ErrorCode::InvalidRequest,
            ),
            (
                r#"{"option":"blue","option":"red"}"#,
                ErrorCode::InvalidRequest,
            ),
            (r#"{"option":"blue","pow":{}}"#, ErrorCode::InvalidRequest),
            (r#"{"option":"blue","pow":"x"}"#, ErrorCode::InvalidRequest),
            (
                r#"{"option":"blue","pow":{"challenge":"c"}}"#,
                ErrorCode::InvalidRequest,
            ),
            (
                r#"{"option":"blue","pow":{"challenge":"c","nonce":"n","extra":1}}"#,
                ErrorCode::InvalidRequest,
            ),
            (
                r#"{"option":"blue","pow":{"challenge":"c","nonce":"n","nonce":"m"}}"#,
                ErrorCode::InvalidRequest,
            ),
            (
                r#"{"option":"blue","pow":{"challenge":"","nonce":"n"}}"#,
                ErrorCode::InvalidRequest,
            ),
            (
                r#"{"option":"blue","pow":{"challenge":"c","nonce":"a b"}}"#,
                ErrorCode::InvalidRequest,
            ),
            (
                r#"{"option":"blue","pow":{"challenge":"c","nonce":"é"}}"#,
                ErrorCode::InvalidRequest,
            ),
            (r#"{"option":""}"#, ErrorCode::InvalidOption),
            (r#"{"option":"Blue"}"#, ErrorCode::InvalidOption),
            (r#"{"option":"blue "}"#, ErrorCode::InvalidOption),
            (r#"{"option":"a_b"}"#, ErrorCode::InvalidOption),
        ];
        for (body, code) in cases {
            let err = parse(body).unwrap_err();
            assert_eq!(err.code(), *code, "{body}: {err}");
        }
        let long_option = format!(r#"{{"option":"{}"}}"#, "x".repeat(33));
        assert_eq!(
            parse(&long_option).unwrap_err().code(),
            ErrorCode::InvalidOption
        );
    }

    #[test]
    fn messages_are_precise() {
        assert_eq!(
            VoteBody::parse(b"{\"option\":\"\xff\"}"),
            Err(BodyError::NotUtf8)
        );
        let unknown = parse(r#"{"option":"blue","opiton":"red"}"#).unwrap_err();
        assert!(
            unknown.message().contains("unknown field `opiton`"),
            "{unknown}"
        );
        let dup = parse(r#"{"option":"blue","option":"red"}"#).unwrap_err();
        assert!(dup.message().contains("duplicate field `option`"), "{dup}");
        let missing = parse("{}").unwrap_err();
        assert!(
            missing.message().contains("missing field `option`"),
            "{missing}"
        );
        let syntax = parse("{").unwrap_err();
        assert!(matches!(syntax, BodyError::Malformed(_)), "{syntax}");
        assert_eq!(
            parse(r#"{"option":"blue","pow":{"challenge":"c","nonce":""}}"#),
            Err(BodyError::BadPowField { field: "nonce" })
        );
        assert_eq!(
            parse(r#"{"option":"UP"}"#),
            Err(BodyError::InvalidOption(IdError::BadCharacter {
                kind: "option"
            }))
        );
    }

    #[test]
    fn enforces_the_size_limits() {
        let pad = |n: usize| {
            let base = r#"{"option":"blue"}"#;
            format!("{base}{}", " ".repeat(n - base.len()))
        };
        assert!(parse(&pad(VOTE_BODY_MAX)).is_ok());
        let err = parse(&pad(VOTE_BODY_MAX + 1)).unwrap_err();
        assert_eq!(
            err,
            BodyError::TooLarge {
                len: VOTE_BODY_MAX + 1
            }
        );
        assert_eq!(err.code(), ErrorCode::TooLarge);
        assert_eq!(err.code().status(), 413);
        let body = |n: usize| {
            format!(
                r#"{{"option":"blue","pow":{{"challenge":"{}","nonce":"n"}}}}"#,
                "c".repeat(n)
            )
        };
        assert!(parse(&body(POW_FIELD_MAX)).is_ok());
        assert_eq!(
            parse(&body(POW_FIELD_MAX + 1)),
            Err(BodyError::BadPowField { field: "challenge" })
        );
    }

    #[test]
    fn the_largest_valid_body_fits_the_limit() {
        let body = VoteBody {
            option: OptionId::new("x".repeat(32)).unwrap(),
            pow: Some(PowSolution {
                challenge: "c".repeat(POW_FIELD_MAX),
                nonce: "n".repeat(POW_FIELD_MAX),
            }),
        };
        let json = body.to_json();
        assert!(json.len() <= VOTE_BODY_MAX, "{}", json.len());
        assert_eq!(parse(&json), Ok(body));
    }

    fn any_body() -> impl Strategy<Value = VoteBody> {
        (
            "[a-z0-9-]{1,32}",
            proptest::option::of(("[!-~]{1,256}", "[!-~]{1,256}")),
        )
            .prop_map(|(option, pow)| VoteBody {
                option: OptionId::new(option).unwrap(),
                pow: pow.map(|(challenge, nonce)| PowSolution { challenge, nonce }),
            })
    }

    proptest! {
        #[test]
        fn any_valid_body_round_trips(body in any_body()) {
            prop_assert_eq!(parse(&body.to_json()), Ok(body));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1100)) {
            match VoteBody::parse(&bytes) {
                Ok(body) => prop_assert_eq!(VoteBody::parse(body.to_json().as_bytes()), Ok(body)),
                Err(e) => prop_assert!(e.code().status() >= 400),
            }
        }

        #[test]
        fn json_like_text_never_panics(s in r#"[{}\[\]":,a-z0-9 \\-]{0,200}"#) {
            if let Ok(body) = parse(&s) {
                prop_assert_eq!(parse(&body.to_json()), Ok(body));
            }
        }
    }
}

//! Identifiers of the domain, validated once at the edge so the rest of the code can trust them.

use std::fmt;

/// Longest election id (docs/design.md §4.3: `[a-z0-9-]{1,64}`).
pub const ELECTION_ID_MAX: usize = 64;
/// Longest option id (docs/design.md §4.3: `[a-z0-9-]{1,32}`).
pub const OPTION_ID_MAX: usize = 32;

/// A voter, as named by the `sub` claim of their token: a decimal u64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VoterId(pub u64);

impl fmt::Display for VoterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} id is empty")]
    Empty { kind: &'static str },
    #[error("{kind} id is longer than {max} characters")]
    TooLong { kind: &'static str, max: usize },
    #[error("{kind} id may contain only a-z, 0-9 and '-'")]
    BadCharacter { kind: &'static str },
}

fn validate(kind: &'static str, max: usize, s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if s.len() > max {
        return Err(IdError::TooLong { kind, max });
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(IdError::BadCharacter { kind });
    }
    Ok(())
}

macro_rules! slug_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                validate($kind, $max, &s)?;
                Ok(Self(s))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        // The derived `Hash`, `Eq` and `Ord` are those of the string, so maps keyed by the id
        // can be searched with a `&str` (no allocation per lookup).
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

slug_id!(
    /// An election, `[a-z0-9-]{1,64}`.
    ElectionId,
    "election",
    ELECTION_ID_MAX
);
slug_id!(
    /// An option of an election, `[a-z0-9-]{1,32}`.
    OptionId,
    "option",
    OPTION_ID_MAX
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_alphabet() {
        assert!(ElectionId::new("tv-final-2026").is_ok());
        assert!(ElectionId::new("a".repeat(64)).is_ok());
        assert!(OptionId::new("x".repeat(32)).is_ok());
    }

    #[test]
    fn rejects_everything_else() {
        assert_eq!(
            ElectionId::new(""),
            Err(IdError::Empty { kind: "election" })
        );
        assert_eq!(
            ElectionId::new("a".repeat(65)),
            Err(IdError::TooLong {
                kind: "election",
                max: 64
            })
        );
        assert_eq!(
            OptionId::new("x".repeat(33)),
            Err(IdError::TooLong {
                kind: "option",
                max: 32
            })
        );
        for bad in ["Tv", "a b", "a_b", "é", "a/b"] {
            assert_eq!(
                ElectionId::new(bad),
                Err(IdError::BadCharacter { kind: "election" }),
                "{bad:?}"
            );
        }
    }
}

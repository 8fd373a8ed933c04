//! Elections: their configuration and life cycle (docs/design.md §4.3), as stored (JSON) on the
//! compacted `elections` topic and served by the voter API.

use crate::ids::{ElectionId, OptionId};

/// Fewest and most options an election may offer (docs/design.md §4.3).
pub const OPTIONS_MIN: usize = 2;
pub const OPTIONS_MAX: usize = 64;
/// Longest title and option label, in bytes.
pub const TITLE_MAX: usize = 200;
pub const LABEL_MAX: usize = 100;
/// Highest proof-of-work difficulty (leading zero bits): 2^32 hashes is already minutes.
pub const POW_DIFFICULTY_MAX: u8 = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ElectionState {
    Draft,
    Open,
    Closed,
    Final,
}

impl ElectionState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Draft => "draft",
            Self::Open => "open",
            Self::Closed => "closed",
            Self::Final => "final",
        }
    }

    /// The life cycle only moves forward: draft → open → closed → final.
    pub fn can_become(self, next: ElectionState) -> bool {
        matches!(
            (self, next),
            (Self::Draft, Self::Open) | (Self::Open, Self::Closed) | (Self::Closed, Self::Final)
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ElectionOption {
    pub id: OptionId,
    pub label: String,
}

/// An election as the `elections` topic holds it. `version` grows by one with every change, so
/// a reader that sees two states keeps the newer whatever order they arrive in.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Election {
    pub id: ElectionId,
    pub title: String,
    pub state: ElectionState,
    pub options: Vec<ElectionOption>,
    #[serde(default)]
    pub pow_difficulty: u8,
    pub version: u64,
    #[serde(default)]
    pub updated_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElectionError {
    #[error("an election has {OPTIONS_MIN} to {OPTIONS_MAX} options, this one has {0}")]
    OptionCount(usize),
    #[error("option {0} appears twice")]
    DuplicateOption(String),
    #[error("the title must be 1 to {TITLE_MAX} bytes")]
    Title,
    #[error("option labels must be 1 to {LABEL_MAX} bytes")]
    Label,
    #[error("pow_difficulty must be at most {POW_DIFFICULTY_MAX}")]
    PowDifficulty,
    #[error("an election cannot go from {from} to {to}")]
    Transition {
        from: &'static str,
        to: &'static str,
    },
}

impl Election {
    /// Checks everything a new or changed election must satisfy.
    pub fn validate(&self) -> Result<(), ElectionError> {
        if !(OPTIONS_MIN..=OPTIONS_MAX).contains(&self.options.len()) {
            return Err(ElectionError::OptionCount(self.options.len()));
        }
        if self.title.is_empty() || self.title.len() > TITLE_MAX {
            return Err(ElectionError::Title);
        }
        let mut seen = std::collections::HashSet::with_capacity(self.options.len());
        for o in &self.options {
            if o.label.is_empty() || o.label.len() > LABEL_MAX {
                return Err(ElectionError::Label);
            }
            if !seen.insert(o.id.as_str()) {
                return Err(ElectionError::DuplicateOption(o.id.to_string()));
            }
        }
        if self.pow_difficulty > POW_DIFFICULTY_MAX {
            return Err(ElectionError::PowDifficulty);
        }
        Ok(())
    }

    pub fn has_option(&self, option: &OptionId) -> bool {
        self.options.iter().any(|o| &o.id == option)
    }

    /// The next version of this election in state `next`.
    pub fn transition(&self, next: ElectionState, now_ms: u64) -> Result<Election, ElectionError> {
        if !self.state.can_become(next) {
            return Err(ElectionError::Transition {
                from: self.state.as_str(),
                to: next.as_str(),
            });
        }
        Ok(Election {
            state: next,
            version: self.version + 1,
            updated_at_ms: now_ms,
            ..self.clone()
        })
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an election always serializes")
    }

    /// Parses a value of the `elections` topic; anything invalid is an error, never a panic.
    pub fn from_json(bytes: &[u8]) -> Result<Election, String> {
        let e: Election = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        e.validate().map_err(|e| e.to_string())?;
        Ok(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Election {
        Election {
            id: ElectionId::new("final").unwrap(),
            title: "Final".into(),
            state: ElectionState::Draft,
            options: vec![
                ElectionOption {
                    id: OptionId::new("red").unwrap(),
                    label: "Red".into(),
                },
                ElectionOption {
                    id: OptionId::new("blue").unwrap(),
                    label: "Blue".into(),
                },
            ],
            pow_difficulty: 0,
            version: 1,
            updated_at_ms: 5,
        }
    }

    #[test]
    fn round_trips_as_json() {
        let e = sample();
        assert_eq!(Election::from_json(&e.to_json()), Ok(e.clone()));
        let v: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
        assert_eq!(v["state"], "draft");
        assert_eq!(v["options"][1]["id"], "blue");
    }

    #[test]
    fn moves_only_forward() {
        let e = sample();
        let open = e.transition(ElectionState::Open, 9).unwrap();
        assert_eq!(
            (open.state, open.version, open.updated_at_ms),
            (ElectionState::Open, 2, 9)
        );
        assert_eq!(
            e.transition(ElectionState::Closed, 9),
            Err(ElectionError::Transition {
                from: "draft",
                to: "closed"
            })
        );
        assert!(open.transition(ElectionState::Open, 9).is_err());
        let closed = open.transition(ElectionState::Closed, 10).unwrap();
        assert!(closed.transition(ElectionState::Final, 11).is_ok());
    }

    #[test]
    fn rejects_invalid_configurations() {
        let mut e = sample();
        e.options.truncate(1);
        assert_eq!(e.validate(), Err(ElectionError::OptionCount(1)));
        let mut e = sample();
        e.options[1].id = OptionId::new("red").unwrap();
        assert_eq!(
            e.validate(),
            Err(ElectionError::DuplicateOption("red".into()))
        );
        let mut e = sample();
        e.title = String::new();
        assert_eq!(e.validate(), Err(ElectionError::Title));
        let mut e = sample();
        e.pow_difficulty = 33;
        assert_eq!(e.validate(), Err(ElectionError::PowDifficulty));
        assert!(Election::from_json(br#"{"id":"BAD"}"#).is_err());
    }
}

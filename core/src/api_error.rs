//! Error codes of the public and admin APIs (docs/design.md §4.2). Every rejection a client can see is
//! one of these; the HTTP layer renders `{"error":{"code","message"}}` from them.

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    InvalidRequest,
    Unauthorized,
    ChallengeRequired,
    ChallengeFailed,
    NotFound,
    AlreadyVoted,
    ElectionNotOpen,
    TooLarge,
    UnsupportedMediaType,
    InvalidOption,
    RateLimited,
    Unavailable,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 12] = [
        Self::InvalidRequest,
        Self::Unauthorized,
        Self::ChallengeRequired,
        Self::ChallengeFailed,
        Self::NotFound,
        Self::AlreadyVoted,
        Self::ElectionNotOpen,
        Self::TooLarge,
        Self::UnsupportedMediaType,
        Self::InvalidOption,
        Self::RateLimited,
        Self::Unavailable,
    ];

    /// The machine-readable code of the JSON body.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::Unauthorized => "unauthorized",
            Self::ChallengeRequired => "challenge_required",
            Self::ChallengeFailed => "challenge_failed",
            Self::NotFound => "not_found",
            Self::AlreadyVoted => "already_voted",
            Self::ElectionNotOpen => "election_not_open",
            Self::TooLarge => "too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::InvalidOption => "invalid_option",
            Self::RateLimited => "rate_limited",
            Self::Unavailable => "unavailable",
        }
    }

    /// The code named `name` by [`Self::as_str`]; `None` for any other string. Derived from
    /// [`Self::ALL`] and `as_str`, so a new variant cannot be forgotten here.
    pub fn from_name(name: &str) -> Option<ErrorCode> {
        Self::ALL.into_iter().find(|c| c.as_str() == name)
    }

    /// The HTTP status that carries the code.
    pub fn status(self) -> u16 {
        match self {
            Self::InvalidRequest => 400,
            Self::Unauthorized => 401,
            Self::ChallengeRequired | Self::ChallengeFailed => 403,
            Self::NotFound => 404,
            Self::AlreadyVoted | Self::ElectionNotOpen => 409,
            Self::TooLarge => 413,
            Self::UnsupportedMediaType => 415,
            Self::InvalidOption => 422,
            Self::RateLimited => 429,
            Self::Unavailable => 503,
        }
    }

    /// Whether the answer must carry `Retry-After` (docs/design.md §4.2).
    pub fn needs_retry_after(self) -> bool {
        matches!(self, Self::RateLimited | Self::Unavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_contract_table() {
        let table: Vec<(u16, &str)> = ErrorCode::ALL
            .iter()
            .map(|c| (c.status(), c.as_str()))
            .collect();
        assert_eq!(
            table,
            vec![
                (400, "invalid_request"),
                (401, "unauthorized"),
                (403, "challenge_required"),
                (403, "challenge_failed"),
                (404, "not_found"),
                (409, "already_voted"),
                (409, "election_not_open"),
                (413, "too_large"),
                (415, "unsupported_media_type"),
                (422, "invalid_option"),
                (429, "rate_limited"),
                (503, "unavailable"),
            ]
        );
        assert!(
            ErrorCode::ALL
                .iter()
                .all(|c| c.status() >= 400 && c.status() < 600)
        );
    }

    #[test]
    fn every_code_round_trips_through_its_name() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_name(code.as_str()), Some(code));
        }
        for other in ["", "Unavailable", "unavailable ", "not-found", "ok"] {
            assert_eq!(ErrorCode::from_name(other), None, "{other:?}");
        }
    }
}

//! The wall clock, read in one place: milliseconds since the Unix epoch, as the API's
//! `*_at_ms` fields, the results' `as_of` and the export's manifest carry them.

/// Milliseconds since the Unix epoch; 0 for a clock set before it, `u64::MAX` past the year
/// 584,000,000 (neither is an error worth failing a request or a recount over).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    #[test]
    fn after_the_day_this_was_written_and_moving_forward() {
        let a = super::unix_ms();
        assert!(a > 1_790_000_000_000, "2026-09 or later: {a}");
        let b = super::unix_ms();
        assert!(b >= a);
    }
}

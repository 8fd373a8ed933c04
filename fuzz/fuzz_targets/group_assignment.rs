//! parse_assignment on consumer-group member assignments: never panics, and whatever parses
//! re-encodes to its bytes up to user_data. The property lives in
//! `votes_core::fuzz_check::group_assignment`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| votes_core::fuzz_check::group_assignment(data));

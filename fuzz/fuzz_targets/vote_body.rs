//! VoteBody::parse: never a 5xx, and a parsed body survives to_json -> parse.
//! The property lives in `votes_core::fuzz_check::vote_body`, which a unit test also runs on every
//! file of `fuzz/seeds/vote_body/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| votes_core::fuzz_check::vote_body(data));

//! token::verify with a fixed key, raw tokens and tokens signed by the harness.
//! The property lives in `votes_core::fuzz_check::token_verify`, which a unit test also runs on every
//! file of `fuzz/seeds/token_verify/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| votes_core::fuzz_check::token_verify(data));

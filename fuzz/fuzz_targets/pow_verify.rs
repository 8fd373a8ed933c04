//! pow::verify: never panics, and an accepted solution really has the required work.
//! The property lives in `votes_core::fuzz_check::pow_verify`, which a unit test also runs on
//! every file of `fuzz/seeds/pow_verify/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| votes_core::fuzz_check::pow_verify(data));

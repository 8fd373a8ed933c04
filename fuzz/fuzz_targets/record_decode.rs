//! VoteRecord::decode: strict, and whatever decodes re-encodes to the same bytes.
//! The property lives in `votes_core::fuzz_check::record_decode`, which a unit test also runs on every
//! file of `fuzz/seeds/record_decode/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| votes_core::fuzz_check::record_decode(data));

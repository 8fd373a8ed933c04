//! Leaf::decode: strict, canonical, and its hash is that of its bytes.
//! The property lives in `votes_core::fuzz_check::leaf_decode`, which a unit test also runs on every
//! file of `fuzz/seeds/leaf_decode/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| votes_core::fuzz_check::leaf_decode(data));

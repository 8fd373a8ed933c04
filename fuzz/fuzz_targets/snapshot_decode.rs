//! ShardSnapshot::decode on damaged or hostile files: never panics, and whatever decodes
//! re-encodes to the same bytes. The property lives in `votes_core::fuzz_check::snapshot_decode`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| votes_core::fuzz_check::snapshot_decode(data));

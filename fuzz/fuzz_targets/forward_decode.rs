//! decode_frame on bytes from a forwarding peer: never panics, and whatever decodes is
//! canonical. The property lives in `votes_core::fuzz_check::forward_decode`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| votes_core::fuzz_check::forward_decode(data));

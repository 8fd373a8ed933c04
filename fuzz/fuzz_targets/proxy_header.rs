//! The PROXY protocol v2 header a balancer (or anyone who reaches a `--proxy-protocol`
//! listener) sends first: never panics, and whatever parses is one canonical header. The
//! property lives in `votes_core::fuzz_check::proxy_header`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| votes_core::fuzz_check::proxy_header(data));

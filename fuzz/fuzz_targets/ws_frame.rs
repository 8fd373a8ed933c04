//! A client's WebSocket frames on `GET …/results/ws` (anyone can open one): never panic,
//! never read past the bytes given, and whatever parses is canonical. The property lives in
//! `votes_core::fuzz_check::ws_frame`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| votes_core::fuzz_check::ws_frame(data));

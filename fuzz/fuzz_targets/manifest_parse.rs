//! Manifest::from_bytes (an auditor's `manifest.json`): strict, bounded, and whatever parses
//! survives its own serialisation; the manifest-only checks run on it without panicking.
//! The property lives in `votes_audit::fuzz_check::manifest_parse`, which a unit test also runs on
//! every file of `fuzz/seeds/manifest_parse/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| votes_audit::fuzz_check::manifest_parse(data));

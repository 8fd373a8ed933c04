//! VotesReader (an auditor's `votes.parquet`): any bytes are refused or read within the bounds
//! the footer was checked against, and the row checks run on what is read, without panicking.
//! The property lives in `votes_audit::fuzz_check::votes_parquet`, which a unit test also runs on
//! every file of `fuzz/seeds/votes_parquet/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| votes_audit::fuzz_check::votes_parquet(data));

//! The committed seeds of the fuzz targets (`fuzz/seeds/<target>/`), replayed by the unit tests
//! of the crates the targets check (votes-core, and votes-audit through a `#[path]` to this
//! file), so a seed that breaks a property fails `cargo test`, not only a fuzzing run.

use std::path::PathBuf;

/// `fuzz/seeds/`, found from the crate's manifest directory (both crates sit at the root).
pub fn seed_root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("../fuzz/seeds")
}

/// Every file of `fuzz/seeds/<target>/`, sorted, with its name.
pub fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = seed_root().join(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("seed directory {}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("readable seed directory").path();
            let bytes = std::fs::read(&path).expect("readable seed");
            (path.display().to_string(), bytes)
        })
        .collect();
    out.sort();
    assert!(out.len() >= 3, "{target} has a few seeds");
    out
}

/// Runs `check` on every seed of `target`; none may panic. The seeds, for the caller to check
/// that they hold both kinds of input.
pub fn replay(target: &str, check: fn(&[u8])) -> Vec<(String, Vec<u8>)> {
    let seeds = seeds(target);
    for (name, bytes) in &seeds {
        let outcome = std::panic::catch_unwind(|| check(bytes));
        assert!(outcome.is_ok(), "seed {name} breaks a property of {target}");
    }
    seeds
}

/// [`replay`], then checks that the seeds hold inputs `accepted` takes and inputs it refuses:
/// the fuzzer starts from both sides of the format.
pub fn replay_both_kinds(target: &str, check: fn(&[u8]), accepted: impl Fn(&[u8]) -> bool) {
    let seeds = replay(target, check);
    assert!(
        seeds.iter().any(|(_, b)| accepted(b)),
        "{target} has a seed it takes"
    );
    assert!(
        seeds.iter().any(|(_, b)| !accepted(b)),
        "{target} has a seed it refuses"
    );
}

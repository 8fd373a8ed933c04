//! The auditors' library (docs/design.md §4.5): the files of an export (`manifest.json`, its signature,
//! `votes.parquet`) and the checks that verify one offline. Everything that reads them takes
//! hostile bytes: it never panics and never allocates from a size the input's own length does
//! not bound, and `fuzz/` holds a target per parser (`fuzz_check`, behind the `fuzzing`
//! feature). The exporter (which reads the log) lives in the binary; this crate does no I/O but
//! reading the files it is given.

pub mod manifest;
pub mod signing;
pub mod table;
pub mod verify;

#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz_check;

use std::io::Read;
use std::path::Path;

/// Reads at most `max` bytes of `path`; a longer file is an error, not a truncation.
pub fn read_bounded(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    if len > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{len} bytes, more than the {max} such a file may hold"),
        ));
    }
    let mut out = Vec::with_capacity(len as usize);
    f.take(max + 1).read_to_end(&mut out)?;
    if out.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("more than the {max} bytes such a file may hold"),
        ));
    }
    Ok(out)
}

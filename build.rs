//! Embeds the web pages (src/serve/web/, flat) into the binary: no build step and no files to
//! deploy beside it. Generates `web_files.rs`, a sorted table of (file name, bytes).

use std::fmt::Write;
use std::path::Path;

fn main() {
    // Read when the script runs: clones share one warm target directory, and a script built in
    // another clone would otherwise list that clone's pages.
    let root = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let dir = Path::new(&root).join("src/serve/web");
    // A directory: cargo rescans it and reruns this script when any file in it changes.
    println!("cargo:rerun-if-changed=src/serve/web");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let mut out = String::from("pub static FILES: &[(&str, &[u8])] = &[\n");
    for name in &names {
        // The name becomes a URL path segment and a Rust string literal: keep it plain.
        assert!(
            !name.starts_with('.')
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')),
            "web file {name:?}: use only a-z, 0-9, '.', '-' and '_'"
        );
        writeln!(
            out,
            "    ({name:?}, include_bytes!(concat!(env!(\"CARGO_MANIFEST_DIR\"), \"/src/serve/web/{name}\"))),"
        )
        .expect("write to a String");
    }
    out.push_str("];\n");
    let dest =
        Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("web_files.rs");
    std::fs::write(dest, out).expect("OUT_DIR is writable");
}

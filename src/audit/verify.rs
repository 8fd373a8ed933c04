//! `votes audit verify DIR [--pubkey FILE] [--root HEX]`: the checks of `votes_audit::verify`,
//! one line each, exit 0 only when every check holds.

use std::path::PathBuf;

use anyhow::{Context, Result};
use votes_audit::signing::{PublicKey, read_key_file};
use votes_audit::verify::{Signer, VerifyOptions, verify_export};

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// The export's directory (votes.parquet, manifest.json, manifest.sig).
    pub dir: PathBuf,
    /// The exporter's public key: the PEM that `votes audit pubkey` (or `openssl pkey -pubout`)
    /// prints. Without it the signature is not checked and verify fails, unless
    /// `--no-signature`.
    #[arg(long)]
    pub pubkey: Option<PathBuf>,
    /// Do not check the signature (and do not fail for it): for an export whose public key
    /// you do not have yet. Everything else is still checked.
    #[arg(long, conflicts_with = "pubkey")]
    pub no_signature: bool,
    /// A Merkle root (64 hex digits) obtained elsewhere than from the export, e.g. the one
    /// `GET /v1/elections/{id}/results` showed: the manifest's root and the rows' must equal it.
    #[arg(long, value_parser = parse_root)]
    pub root: Option<[u8; 32]>,
    /// Read the rows even when votes.parquet is not the file the manifest describes, to name
    /// the rows that changed. Without it a file whose hash fails is not read.
    #[arg(long)]
    pub diagnose: bool,
}

fn parse_root(text: &str) -> Result<[u8; 32], String> {
    let bytes = hex::decode(text.trim()).map_err(|e| format!("not hex: {e}"))?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("{} bytes, a root has 32", b.len()))
}

pub fn run(args: &VerifyArgs) -> Result<std::process::ExitCode> {
    let signer = match (&args.pubkey, args.no_signature) {
        (Some(path), _) => {
            let text = read_key_file(path, "the public key")?;
            Signer::Key(PublicKey::from_pem(&text).with_context(|| format!("{}", path.display()))?)
        }
        (None, true) => Signer::NotChecked,
        (None, false) => Signer::Missing,
    };
    let opts = VerifyOptions {
        signer,
        root: args.root,
        diagnose: args.diagnose,
    };
    let checks = verify_export(&args.dir, &opts, |c| println!("{c}"))?;
    let failed = checks.iter().filter(|c| c.failed()).count();
    if failed == 0 {
        println!("verified: every check holds");
        Ok(std::process::ExitCode::SUCCESS)
    } else {
        println!("NOT VERIFIED: {failed} of {} checks failed", checks.len());
        Ok(std::process::ExitCode::FAILURE)
    }
}

//! `votes audit` (docs/design.md §4.5): the auditors' tools. `export` writes a signed offline copy of
//! a final election's counted votes, `verify` checks one without any service, `pubkey` prints
//! the public key that verifies the signatures. The files and the checks are the `votes-audit`
//! library; what each check proves is in `docs/auditors.md`.

pub mod export;
pub mod verify;

use votes_audit::signing;

use std::path::PathBuf;

use anyhow::Result;

use crate::Common;

#[derive(clap::Args, Debug)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: AuditCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum AuditCommand {
    /// Export a final election for auditors: votes.parquet, manifest.json, manifest.sig.
    Export(export::ExportArgs),
    /// Check an export offline: signature, file hash, rows, totals, Merkle root, official result.
    Verify(verify::VerifyArgs),
    /// Print the public key (SubjectPublicKeyInfo PEM) of VOTES_AUDIT_SIGNING_KEY.
    Pubkey(PubkeyArgs),
    /// Replay the election's votes into a fresh prefix and compare with the official result.
    Reprocess(crate::reprocess::ReprocessArgs),
}

#[derive(clap::Args, Debug)]
pub struct PubkeyArgs {
    /// PKCS#8 PEM file of the Ed25519 key that signs exports.
    #[arg(long, env = "VOTES_AUDIT_SIGNING_KEY")]
    pub audit_signing_key: PathBuf,
}

pub fn run(common: &Common, args: &AuditArgs) -> Result<std::process::ExitCode> {
    match &args.command {
        AuditCommand::Export(a) => export::run(common, a),
        AuditCommand::Verify(a) => verify::run(a),
        AuditCommand::Reprocess(a) => crate::reprocess::run(common, a),
        AuditCommand::Pubkey(a) => {
            let key = signing::SigningKey::from_pem_file(&a.audit_signing_key)?;
            print!("{}", key.public_key().to_pem());
            Ok(std::process::ExitCode::SUCCESS)
        }
    }
}

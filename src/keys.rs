//! The voter-token keys of this process (docs/design.md §4.1-4.2): `VOTES_TOKEN_KEY` (HS256, no key id,
//! the key this node issues with) plus, during a rotation or with an external issuer, the keys
//! listed in `VOTES_TOKEN_KEYS_FILE` (`<kid> <alg> <path>` per line, see
//! `votes_core::token::parse_key_file`). Key bytes are read from files, never logged.

use anyhow::{Context, Result, anyhow};
use votes_core::{TokenKey, TokenKeys};

pub fn token_keys(secret: &[u8]) -> Result<TokenKeys> {
    let mut keys = vec![TokenKey::hs256(secret).map_err(|e| anyhow!("VOTES_TOKEN_KEY: {e}"))?];
    if let Some(path) = std::env::var_os("VOTES_TOKEN_KEYS_FILE").filter(|p| !p.is_empty()) {
        let path = std::path::PathBuf::from(path);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading VOTES_TOKEN_KEYS_FILE {}", path.display()))?;
        let listed = votes_core::token::parse_key_file(&text, |p| {
            std::fs::read(p).map_err(|e| e.to_string())
        })
        .map_err(|e| anyhow!("VOTES_TOKEN_KEYS_FILE {}: {e}", path.display()))?;
        keys.extend(listed);
    }
    let keys = TokenKeys::new(keys).map_err(|e| anyhow!("token keys: {e}"))?;
    for k in keys.keys() {
        tracing::info!(alg = k.algorithm().as_str(), kid = ?k.kid(), "voter tokens accepted from this key");
    }
    Ok(keys)
}

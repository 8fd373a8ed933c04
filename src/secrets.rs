//! The process's secrets (`VOTES_TOKEN_KEY`, `VOTES_AUDIT_KEY`, `VOTES_ADMIN_TOKEN`,
//! `VOTES_FORWARD_KEY`, `VOTES_REDIS_PASSWORD`): from the
//! environment, or else from a systemd credential of the same name (`LoadCredential=` puts it
//! in `$CREDENTIALS_DIRECTORY`, readable by this service only, never in its environment, where
//! `/proc/<pid>/environ` and every child would see it).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

/// Longest credential file read: a key or a token, never a document.
const CREDENTIAL_MAX: u64 = 64 * 1024;

/// The secret `name`, at least `min` bytes.
pub fn read(name: &str, min: usize) -> Result<String> {
    let value = match std::env::var(name) {
        // An empty variable (`KEY=` left in an env file) is no value: the credential may be.
        Ok(v) if !v.is_empty() => v,
        Ok(_) | Err(std::env::VarError::NotPresent) => match credential_path(name) {
            Some(path) => read_credential(&path)
                .with_context(|| format!("reading {name} from {}", path.display()))?,
            None => bail!(
                "{name} must be set (in the environment, or as a systemd credential of that name)"
            ),
        },
        Err(std::env::VarError::NotUnicode(_)) => bail!("{name} must be UTF-8"),
    };
    if value.len() < min {
        bail!("{name} must be at least {min} bytes");
    }
    Ok(value)
}

/// The secret `name` when one is given (environment or credential, neither empty), else `None`.
pub fn optional(name: &str) -> Result<Option<String>> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => return Ok(Some(v)),
        Err(std::env::VarError::NotUnicode(_)) => bail!("{name} must be UTF-8"),
        Ok(_) | Err(std::env::VarError::NotPresent) => {}
    }
    match credential_path(name) {
        Some(path) => {
            let value = read_credential(&path)
                .with_context(|| format!("reading {name} from {}", path.display()))?;
            Ok(Some(value).filter(|v| !v.is_empty()))
        }
        None => Ok(None),
    }
}

/// `$CREDENTIALS_DIRECTORY/<name>` when it exists.
fn credential_path(name: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("CREDENTIALS_DIRECTORY").filter(|d| !d.is_empty())?;
    let path = PathBuf::from(dir).join(name);
    path.is_file().then_some(path)
}

fn read_credential(path: &std::path::Path) -> Result<String> {
    let len = std::fs::metadata(path)?.len();
    if len > CREDENTIAL_MAX {
        bail!("{len} bytes is not a key (at most {CREDENTIAL_MAX})");
    }
    let text = std::fs::read_to_string(path)?;
    // A file written by `echo` or an editor ends with a newline that is not part of the key.
    Ok(text.trim_end_matches(['\n', '\r']).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credential_file_loses_its_final_newline_and_is_bounded() {
        let dir = std::env::temp_dir().join(format!("votes-cred-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("KEY");
        std::fs::write(&key, "0123456789abcdef0123456789abcdef\n").unwrap();
        assert_eq!(
            read_credential(&key).unwrap(),
            "0123456789abcdef0123456789abcdef"
        );
        std::fs::write(&key, vec![b'x'; 70_000]).unwrap();
        assert!(read_credential(&key).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

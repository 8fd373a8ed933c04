//! Settings come from flags, then `VOTES_*` environment variables, then a TOML file, then
//! defaults (DESIGN §4.1). clap handles the first two and the last; the file is folded in by
//! placing its settings as flags *before* the user's own, so anything the user typed wins
//! (`args_override_self`), and a key whose `VOTES_*` variable is set is left out so the
//! environment wins over the file.
//!
//! File layout: top-level keys are the global flags (`kafka-brokers = "…"`); a table per
//! subcommand holds that subcommand's flags (`[init] partitions = 16`, `[tune.check] cores = 2`).

use std::ffi::OsString;
use std::path::Path;

use anyhow::{Context, Result, bail};

/// The environment variable that may name the file when `--config` is not given.
pub const CONFIG_ENV: &str = "VOTES_CONFIG";

/// The flag's environment variable: `partitions` → `VOTES_PARTITIONS`.
pub fn env_name(key: &str) -> String {
    format!("VOTES_{}", key.to_ascii_uppercase().replace('-', "_"))
}

/// Returns `args` with the file's settings inserted where clap expects them.
pub fn expand_args(
    args: Vec<OsString>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Vec<OsString>> {
    let Some(path) = config_path(&args).or_else(|| env(CONFIG_ENV).map(OsString::from)) else {
        return Ok(args);
    };
    let text = std::fs::read_to_string(Path::new(&path))
        .with_context(|| format!("reading config file {}", Path::new(&path).display()))?;
    let table: toml::Table = toml::from_str(&text)
        .with_context(|| format!("parsing config file {}", Path::new(&path).display()))?;
    let mut out = args;
    insert_section(&mut out, &table, &[], &env)?;
    Ok(out)
}

fn config_path(args: &[OsString]) -> Option<OsString> {
    let mut it = args.iter().skip(1);
    while let Some(arg) = it.next() {
        let s = arg.to_string_lossy();
        if s == "--config" {
            return it.next().cloned();
        }
        if let Some(v) = s.strip_prefix("--config=") {
            return Some(v.into());
        }
    }
    None
}

/// Inserts the scalar keys of `table` right after the subcommand path `path`, and recurses
/// into sub-tables for nested subcommands. A section for a subcommand not on the command line
/// is ignored: it configures a command that is not being run.
fn insert_section(
    args: &mut Vec<OsString>,
    table: &toml::Table,
    path: &[&str],
    env: &impl Fn(&str) -> Option<String>,
) -> Result<()> {
    let Some(at) = subcommand_end(args, path) else {
        return Ok(());
    };
    let mut flags: Vec<OsString> = Vec::new();
    for (key, value) in table {
        let flag = format!("--{}", key.replace('_', "-"));
        let values: Vec<&toml::Value> = match value {
            toml::Value::Table(_) => continue,
            toml::Value::Array(items) => items.iter().collect(),
            v => vec![v],
        };
        if env(&env_name(key)).is_some() {
            continue;
        }
        for v in values {
            match v {
                toml::Value::Boolean(true) => flags.push(flag.clone().into()),
                toml::Value::Boolean(false) => {}
                toml::Value::String(s) => flags.extend([flag.clone().into(), s.into()]),
                toml::Value::Integer(i) => {
                    flags.extend([flag.clone().into(), i.to_string().into()])
                }
                toml::Value::Float(f) => flags.extend([flag.clone().into(), f.to_string().into()]),
                other => bail!("config key {key:?}: unsupported value {other}"),
            }
        }
    }
    args.splice(at..at, flags);
    for (key, value) in table {
        if let toml::Value::Table(sub) = value {
            let mut sub_path = path.to_vec();
            sub_path.push(key);
            insert_section(args, sub, &sub_path, env)?;
        }
    }
    Ok(())
}

/// Index just after the tokens naming `path` (in order) on the command line.
fn subcommand_end(args: &[OsString], path: &[&str]) -> Option<usize> {
    let mut at = 1;
    for name in path {
        let pos = args[at..].iter().position(|a| a.to_str() == Some(*name))?;
        at += pos + 1;
    }
    Some(at.min(args.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    fn with_file(text: &str) -> (tempfile_path::TempPath, String) {
        let p = tempfile_path::TempPath::new(text);
        let s = p.0.to_string_lossy().into_owned();
        (p, s)
    }

    mod tempfile_path {
        pub struct TempPath(pub std::path::PathBuf);
        impl TempPath {
            pub fn new(text: &str) -> Self {
                let p = std::env::temp_dir().join(format!(
                    "votes-config-test-{}-{}.toml",
                    std::process::id(),
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_nanos()
                ));
                std::fs::write(&p, text).unwrap();
                Self(p)
            }
        }
        impl Drop for TempPath {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn file_settings_go_before_the_users_flags() {
        let (_keep, path) = with_file(
            "prefix = \"file-\"\n[init]\npartitions = 16\nreplication_factor = 3\n[tune.check]\ncores = 2\n",
        );
        let got = expand_args(
            os(&["votes", "--config", &path, "init", "--partitions", "4"]),
            |_| None,
        )
        .unwrap();
        assert_eq!(
            got,
            os(&[
                "votes",
                "--prefix",
                "file-",
                "--config",
                &path,
                "init",
                "--partitions",
                "16",
                "--replication-factor",
                "3",
                "--partitions",
                "4"
            ])
        );
        let got = expand_args(os(&["votes", "tune", "check"]), |k| {
            (k == CONFIG_ENV).then(|| path.clone())
        })
        .unwrap();
        assert_eq!(
            got,
            os(&[
                "votes", "--prefix", "file-", "tune", "check", "--cores", "2"
            ])
        );
    }

    #[test]
    fn environment_beats_the_file() {
        let (_keep, path) = with_file("prefix = \"file-\"\nkafka-brokers = \"a:1\"\n");
        let got = expand_args(os(&["votes", "--config", &path, "init"]), |k| {
            (k == "VOTES_PREFIX").then(|| "env-".to_string())
        })
        .unwrap();
        assert_eq!(
            got,
            os(&["votes", "--kafka-brokers", "a:1", "--config", &path, "init"])
        );
    }

    #[test]
    fn a_broken_file_is_named() {
        let (_keep, path) = with_file("prefix = ");
        let err = expand_args(os(&["votes", "--config", &path, "init"]), |_| None).unwrap_err();
        assert!(format!("{err:#}").contains(&path), "{err:#}");
    }
}

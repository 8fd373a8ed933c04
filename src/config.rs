//! Settings come from flags, then `VOTES_*` environment variables, then a TOML file, then
//! defaults (docs/design.md §4.1). clap handles the first two and the last; the file is folded in by
//! placing its settings as flags *before* the user's own, so anything the user typed wins
//! (`args_override_self`), and a key whose environment variable is set is left out so the
//! environment wins over the file.
//!
//! File layout: top-level keys are the global flags (`kafka-brokers = "…"`); a table per
//! subcommand holds that subcommand's flags (`[init] partitions = 16`, `[tune.check] cores = 2`).
//! Every key must name a flag of its command and every table a command, whichever command runs:
//! a misspelt key of another role would otherwise wait, silently, for the day that role starts.
//! `votes config check` prints the settings in effect and where each came from: `flag` for
//! what its caller typed for the checked command (after `--`), `file`, `env VOTES_…`, `default`.

use std::ffi::OsString;
use std::fmt::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};
use clap::parser::ValueSource;

/// The environment variable that may name the file when `--config` is not given.
pub const CONFIG_ENV: &str = "VOTES_CONFIG";

/// Where the package's units load their credentials from (`LoadCredential=`): what
/// `config check` looks at for a secret the environment lacks, outside a unit.
const PACKAGE_CREDENTIALS: &str = "/etc/votes/credentials";

/// Secrets, read from the environment or a systemd credential (never flags, never the file):
/// shown as set or not, never their value.
const SECRETS: [&str; 6] = [
    "VOTES_TOKEN_KEY",
    "VOTES_AUDIT_KEY",
    "VOTES_ADMIN_TOKEN",
    "VOTES_FORWARD_KEY",
    "VOTES_REDIS_PASSWORD",
    "VOTES_KAFKA_PASSWORD",
];

/// Why `votes config check` will not report on a command line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CheckError {
    /// Flags after `--` belong to one command; with several, whose would they be?
    #[error(
        "flags after `--` are the checked command's: name exactly one command (got {0}), e.g. `votes config check serve -- --http 0.0.0.0:80`"
    )]
    FlagsNeedOneCommand(usize),
    /// A setting typed for `config check` itself would be silently left out of the report
    /// (or shown with another source): it goes after `--`, with the command it is for.
    #[error(
        "--{0} was given to `config check` itself; give the checked command's flags after `--` (votes config check serve -- --{0} …)"
    )]
    FlagBeforeCheck(String),
}

/// Refuses a setting typed on `votes config check`'s own command line (`raw`, before the file
/// is folded in) other than `--config`: the report is of the checked command's line, which
/// would not hold it.
pub fn refuse_flags_before_check(cli: &clap::Command, raw: &[OsString]) -> Result<(), CheckError> {
    let Ok(m) = cli.clone().ignore_errors(true).try_get_matches_from(raw) else {
        return Ok(());
    };
    // Global flags are propagated to the subcommands' matches: the top level holds them all.
    for arg in cli.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if matches!(long, "help" | "version" | "config") {
            continue;
        }
        if m.value_source(arg.get_id().as_str()) == Some(ValueSource::CommandLine) {
            return Err(CheckError::FlagBeforeCheck(long.to_owned()));
        }
    }
    Ok(())
}

/// Returns `args` with the file's settings inserted where clap expects them. `cli` is the
/// command line's definition: keys are checked against it, and a key is left out when the
/// environment variable of its flag is set.
pub fn expand_args(
    args: Vec<OsString>,
    cli: &clap::Command,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Vec<OsString>> {
    let Some(path) = config_path(&args).or_else(|| env(CONFIG_ENV).map(OsString::from)) else {
        return Ok(args);
    };
    let table = read(Path::new(&path))?;
    let mut cli = cli.clone();
    cli.build();
    validate(&table, &cli, &[])
        .with_context(|| format!("config file {}", Path::new(&path).display()))?;
    let chain = subcommands_of(&cli, &args);
    let mut out = args;
    insert_section(&mut out, &table, &cli, &chain, 0, &env)?;
    Ok(out)
}

/// The subcommand chain the command line runs (`["tune", "check"]`), as clap reads it: a
/// command's name that appears as a value (`votes config check serve`) is not one.
fn subcommands_of(cli: &clap::Command, args: &[OsString]) -> Vec<String> {
    let Ok(mut m) = cli.clone().ignore_errors(true).try_get_matches_from(args) else {
        return Vec::new();
    };
    let mut chain = Vec::new();
    while let Some((name, sub)) = m.subcommand() {
        chain.push(name.to_owned());
        let sub = sub.clone();
        m = sub;
    }
    chain
}

fn read(path: &Path) -> Result<toml::Table> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
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

/// The flag of `cmd` a file key names (`replication_factor` and `replication-factor` alike).
fn flag_of<'a>(cmd: &'a clap::Command, key: &str) -> Option<&'a clap::Arg> {
    let long = key.replace('_', "-");
    cmd.get_arguments().find(|a| {
        a.get_long() == Some(long.as_str())
            && !matches!(long.as_str(), "help" | "version" | "config")
    })
}

/// Refuses a key that names no flag of its command and a table that names no command.
fn validate(table: &toml::Table, cmd: &clap::Command, path: &[&str]) -> Result<()> {
    let section = if path.is_empty() {
        "top level".to_owned()
    } else {
        format!("[{}]", path.join("."))
    };
    let mut unknown = Vec::new();
    for (key, value) in table {
        match value {
            toml::Value::Table(sub) => match cmd.find_subcommand(key) {
                Some(sub_cmd) => {
                    let mut sub_path = path.to_vec();
                    sub_path.push(key);
                    validate(sub, sub_cmd, &sub_path)?;
                }
                None => unknown.push(format!(
                    "[{}] is not a command (commands: {})",
                    path.iter()
                        .copied()
                        .chain([key.as_str()])
                        .collect::<Vec<_>>()
                        .join("."),
                    cmd.get_subcommands()
                        .map(|c| c.get_name())
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            },
            _ if flag_of(cmd, key).is_some() => {}
            _ => {
                let near = nearest(key, cmd.get_arguments().filter_map(clap::Arg::get_long));
                unknown.push(match near {
                    Some(n) => format!("{section}: unknown key {key:?} (did you mean {n:?}?)"),
                    None => format!("{section}: unknown key {key:?}"),
                });
            }
        }
    }
    if !unknown.is_empty() {
        bail!("{}", unknown.join("; "));
    }
    Ok(())
}

/// The flag closest to a misspelt key, if one is close (edit distance at most 2).
fn nearest<'a>(key: &str, flags: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let key = key.replace('_', "-");
    flags
        .map(|f| (edit_distance(&key, f), f))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, f)| f)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// Inserts the scalar keys of `table` right after the first `depth` commands of `chain` on
/// the command line, and recurses into the sub-table of the next command of the chain. A
/// section of a command that is not running is checked by [`validate`], not inserted.
fn insert_section(
    args: &mut Vec<OsString>,
    table: &toml::Table,
    cmd: &clap::Command,
    chain: &[String],
    depth: usize,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<()> {
    let Some(at) = subcommand_end(args, &chain[..depth]) else {
        return Ok(());
    };
    let mut flags: Vec<OsString> = Vec::new();
    for (key, value) in table {
        let values: Vec<&toml::Value> = match value {
            toml::Value::Table(_) => continue,
            toml::Value::Array(items) => items.iter().collect(),
            v => vec![v],
        };
        let arg = flag_of(cmd, key).expect("validated");
        if arg
            .get_env()
            .and_then(|name| env(&name.to_string_lossy()))
            .is_some()
        {
            continue;
        }
        let flag = format!("--{}", arg.get_long().expect("found by its long name"));
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
    if let Some(next) = chain.get(depth)
        && let Some(toml::Value::Table(sub)) = table.get(next)
    {
        let sub_cmd = cmd.find_subcommand(next).expect("validated");
        insert_section(args, sub, sub_cmd, chain, depth + 1, env)?;
    }
    Ok(())
}

/// Index just after the tokens naming `path` (in order) on the command line.
fn subcommand_end(args: &[OsString], path: &[String]) -> Option<usize> {
    let mut at = 1;
    for name in path {
        let pos = args[at..]
            .iter()
            .position(|a| a.to_str() == Some(name.as_str()))?;
        at += pos + 1;
    }
    Some(at.min(args.len()))
}

/// `votes config check`: the settings each of `commands` would run with, given `flags` (typed
/// for the one command named), the file (if any) and the environment, and where each came
/// from (flag, file, env VOTES_…, default, unset);
/// the environment-only secrets as set or not, never their values; passwords in URLs masked.
/// Fails on a file that does not parse or holds an unknown key, and on a value its flag
/// refuses.
pub fn check(
    cli: &clap::Command,
    file: Option<&Path>,
    commands: &[String],
    flags: &[String],
    env: impl Fn(&str) -> Option<String>,
) -> Result<String> {
    if !flags.is_empty() && commands.len() != 1 {
        return Err(CheckError::FlagsNeedOneCommand(commands.len()).into());
    }
    let mut cli = cli.clone();
    cli.build();
    let file = file
        .map(Path::to_path_buf)
        .or_else(|| env(CONFIG_ENV).map(Into::into));
    let mut out = String::new();
    match &file {
        Some(f) => {
            let table = read(f)?;
            validate(&table, &cli, &[]).with_context(|| format!("config file {}", f.display()))?;
            let _ = writeln!(out, "config file: {} (every key known)", f.display());
        }
        None => out.push_str("config file: none (--config or VOTES_CONFIG)\n"),
    }
    secrets_report(&mut out, &env);
    for name in commands {
        command_report(&mut out, &cli, file.as_deref(), name, flags, &env)?;
    }
    Ok(out)
}

/// The secrets: set or not, and from where, never their values.
fn secrets_report(out: &mut String, env: &impl Fn(&str) -> Option<String>) {
    out.push_str("\nsecrets (environment, else a systemd credential)\n");
    // Inside a unit its own credentials; outside, the files the package's units load.
    let credentials = env("CREDENTIALS_DIRECTORY")
        .filter(|d| !d.is_empty())
        .map_or_else(|| Path::new(PACKAGE_CREDENTIALS).to_path_buf(), Into::into);
    for name in SECRETS {
        let state = match env(name).filter(|v| !v.is_empty()) {
            Some(v) => format!("set, {} bytes (environment)", v.len()),
            None => {
                let path = credentials.join(name);
                match std::fs::metadata(&path) {
                    Ok(m) if m.len() > 0 => {
                        format!("set, {} bytes (credential {})", m.len(), path.display())
                    }
                    Ok(_) => format!("not set (credential {} is empty)", path.display()),
                    Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => format!(
                        "unknown (credential {} is not readable by this user)",
                        path.display()
                    ),
                    Err(_) => "not set".to_owned(),
                }
            }
        };
        let _ = writeln!(out, "  {name:<24} {state}");
    }
}

/// The settings `votes <name>` would run with, each with where it came from; an error when
/// the command would refuse them.
fn command_report(
    out: &mut String,
    cli: &clap::Command,
    file: Option<&Path>,
    name: &str,
    flags: &[String],
    env: &impl Fn(&str) -> Option<String>,
) -> Result<()> {
    let sub = cli
        .find_subcommand(name)
        .with_context(|| format!("{name:?} is not a command of votes"))?;
    // The command line as typed, and the same with the file folded in (its settings go
    // before the typed flags, which win). A value the typed line alone sets is a flag's;
    // one only the folded line sets came from the file.
    let typed: Vec<OsString> = ["votes", name]
        .into_iter()
        .chain(flags.iter().map(String::as_str))
        .map(OsString::from)
        .collect();
    let typed_matches = cli
        .clone()
        .ignore_errors(true)
        .try_get_matches_from(&typed)
        .context("reading the typed flags")?;
    let mut args: Vec<OsString> = vec!["votes".into()];
    if let Some(f) = file {
        args.extend(["--config".into(), f.as_os_str().to_owned()]);
    }
    args.extend(typed.into_iter().skip(1));
    let args = expand_args(args, cli, env)?;
    // The command's own required arguments (an election to recount) are the caller's
    // business; any other refusal is a setting that would not start.
    let matches = match cli.clone().try_get_matches_from(&args) {
        Ok(m) => m,
        Err(e) if e.kind() == clap::error::ErrorKind::MissingRequiredArgument => cli
            .clone()
            .ignore_errors(true)
            .try_get_matches_from(&args)
            .context("reading the settings")?,
        Err(e) => bail!("votes {name} would refuse these settings:\n{e}"),
    };
    let sub_matches = matches
        .subcommand_matches(name)
        .expect("the command is on the line");
    let _ = writeln!(out, "\nvotes {name}");
    for arg in sub.get_arguments() {
        let id = arg.get_id().as_str();
        let Some(long) = arg.get_long() else { continue };
        if matches!(long, "help" | "version" | "config") {
            continue;
        }
        let (from, typed_from) = if arg.is_global_set() {
            (&matches, Some(&typed_matches))
        } else {
            (sub_matches, typed_matches.subcommand_matches(name))
        };
        let typed = typed_from.and_then(|m| m.value_source(id)) == Some(ValueSource::CommandLine);
        let (value, source) = describe(from, id, arg, typed);
        let _ = writeln!(out, "  {long:<28} {value:<40} {source}");
    }
    Ok(())
}

/// The value `m` holds for `id` and where it came from; `typed`: the caller typed it.
fn describe(m: &clap::ArgMatches, id: &str, arg: &clap::Arg, typed: bool) -> (String, String) {
    let value = m
        .get_raw(id)
        .map(|vals| {
            vals.map(|v| mask_url_password(&v.to_string_lossy()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .map(|v| if v.is_empty() { "\"\"".to_owned() } else { v })
        .unwrap_or_else(|| "-".to_owned());
    let source = match m.value_source(id) {
        Some(ValueSource::CommandLine) if typed => "flag".to_owned(),
        // On the command line but not typed: the file put it there.
        Some(ValueSource::CommandLine) => "file".to_owned(),
        Some(ValueSource::EnvVariable) => format!(
            "env {}",
            arg.get_env()
                .map(|e| e.to_string_lossy())
                .unwrap_or_default()
        ),
        Some(ValueSource::DefaultValue) => "default".to_owned(),
        _ => "unset".to_owned(),
    };
    (value, source)
}

/// `redis://user:secret@host` → `redis://user:***@host`; anything else as it is.
fn mask_url_password(v: &str) -> String {
    let Some((scheme, rest)) = v.split_once("://") else {
        return v.to_owned();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return v.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => v.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn cli() -> clap::Command {
        crate::Cli::command()
    }

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
            &cli(),
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
        let got = expand_args(os(&["votes", "tune", "check"]), &cli(), |k| {
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

    /// `votes --config <a file holding text> <command>` expanded with `var` set to `value` in
    /// the environment: the arguments, and the file's path.
    fn expanded_with(text: &str, command: &str, var: &str, value: &str) -> (Vec<OsString>, String) {
        let (_keep, path) = with_file(text);
        let got = expand_args(os(&["votes", "--config", &path, command]), &cli(), |k| {
            (k == var).then(|| value.to_string())
        })
        .unwrap();
        (got, path)
    }

    #[test]
    fn environment_beats_the_file() {
        let (got, path) = expanded_with(
            "prefix = \"file-\"\nkafka-brokers = \"a:1\"\n",
            "init",
            "VOTES_PREFIX",
            "env-",
        );
        assert_eq!(
            got,
            os(&["votes", "--kafka-brokers", "a:1", "--config", &path, "init"])
        );
    }

    /// The error `votes --config <a file holding text> init` refuses the file with, and the
    /// file's path.
    fn refused(text: &str) -> (String, String) {
        let (_keep, path) = with_file(text);
        let err =
            expand_args(os(&["votes", "--config", &path, "init"]), &cli(), |_| None).unwrap_err();
        (format!("{err:#}"), path)
    }

    #[test]
    fn a_broken_file_is_named() {
        let (msg, path) = refused("prefix = ");
        assert!(msg.contains(&path), "{msg}");
    }

    #[test]
    fn an_unknown_key_or_command_is_refused_whichever_command_runs() {
        let (msg, _) = refused("[init]\npartitions = 4\n[persist]\nbatch-maxx = 10\n");
        assert!(
            msg.contains("[persist]: unknown key \"batch-maxx\" (did you mean \"batch-max\"?)"),
            "{msg}"
        );
        let (msg, _) = refused("prefix = \"p-\"\n[serv]\nhttp = \"0.0.0.0:1\"\n");
        assert!(msg.contains("[serv] is not a command"), "{msg}");
        let (msg, _) = refused("kafka_brokerz = \"a:1\"\n");
        assert!(msg.contains("top level: unknown key"), "{msg}");
    }

    #[test]
    fn a_flag_whose_own_variable_is_set_is_left_to_the_environment() {
        // persist's --batch-max reads VOTES_PERSIST_BATCH_MAX, not VOTES_BATCH_MAX.
        let (got, path) = expanded_with(
            "[persist]\nbatch-max = 10\n",
            "persist",
            "VOTES_PERSIST_BATCH_MAX",
            "99",
        );
        assert_eq!(got, os(&["votes", "--config", &path, "persist"]));
    }

    #[test]
    fn check_names_where_each_setting_came_from_and_masks_secrets() {
        let (_keep, path) = with_file(
            "prefix = \"file-\"\nredis-url = \"redis://ops:hunter2@10.0.0.9:6379\"\n[serve]\nhttp = \"0.0.0.0:80\"\n",
        );
        // A credential directory holding one secret, and an empty one (a password left blank).
        let creds = std::env::temp_dir().join(format!("votes-check-creds-{}", std::process::id()));
        std::fs::create_dir_all(&creds).unwrap();
        std::fs::write(creds.join("VOTES_ADMIN_TOKEN"), "y".repeat(20)).unwrap();
        std::fs::write(creds.join("VOTES_REDIS_PASSWORD"), "").unwrap();
        let creds_dir = creds.display().to_string();
        let out = check(
            &cli(),
            Some(Path::new(&path)),
            &["serve".to_string(), "recount".to_string()],
            &[],
            // Secrets are read through `env`; clap reads flags' variables from the process
            // (tests/config_check.rs runs the binary with them).
            |k| match k {
                "VOTES_TOKEN_KEY" => Some("x".repeat(40)),
                "CREDENTIALS_DIRECTORY" => Some(creds_dir.clone()),
                _ => None,
            },
        )
        .unwrap();
        std::fs::remove_dir_all(&creds).unwrap();
        let line = |flag: &str| {
            out.lines()
                .find(|l| l.trim_start().starts_with(&format!("{flag} ")))
                .unwrap_or_else(|| panic!("no line for {flag}:\n{out}"))
                .split_whitespace()
                .collect::<Vec<_>>()
        };
        assert_eq!(line("http"), ["http", "0.0.0.0:80", "file"]);
        assert_eq!(line("prefix"), ["prefix", "file-", "file"]);
        assert_eq!(
            line("kafka-brokers"),
            ["kafka-brokers", "127.0.0.1:9092", "default"]
        );
        assert_eq!(line("redis-url")[1], "redis://ops:***@10.0.0.9:6379");
        assert!(!out.contains("hunter2"), "{out}");
        assert_eq!(
            line("VOTES_TOKEN_KEY"),
            ["VOTES_TOKEN_KEY", "set,", "40", "bytes", "(environment)"]
        );
        assert_eq!(
            line("VOTES_ADMIN_TOKEN")[..5],
            ["VOTES_ADMIN_TOKEN", "set,", "20", "bytes", "(credential"]
        );
        assert_eq!(
            line("VOTES_REDIS_PASSWORD")[..3],
            ["VOTES_REDIS_PASSWORD", "not", "set"]
        );
        assert_eq!(line("VOTES_AUDIT_KEY"), ["VOTES_AUDIT_KEY", "not", "set"]);
        assert!(
            out.contains("\nvotes recount\n"),
            "a command with required flags is shown too"
        );
    }

    #[test]
    fn check_refuses_a_value_its_flag_refuses() {
        let (_keep, path) = with_file("[init]\npartitions = \"many\"\n");
        let err = check_with(&path, "init", &[]).unwrap_err();
        assert!(
            format!("{err:#}").contains("votes init would refuse"),
            "{err:#}"
        );
    }

    /// The words of `flag`'s line in a report.
    fn words<'a>(report: &'a str, flag: &str) -> Vec<&'a str> {
        report
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{flag} ")))
            .unwrap_or_else(|| panic!("no line for {flag}:\n{report}"))
            .split_whitespace()
            .collect()
    }

    /// `votes config check <command> -- <flags>` against the file at `path`, no environment.
    fn check_with(path: &str, command: &str, flags: &[String]) -> Result<String> {
        check(
            &cli(),
            Some(Path::new(path)),
            &[command.to_string()],
            flags,
            |_| None,
        )
    }

    #[test]
    fn check_names_a_typed_flag_a_flag_and_the_file_the_file() {
        let (_keep, path) = with_file(
            "prefix = \"file-\"\n[serve]\nhttp = \"0.0.0.0:80\"\nadmin = \"10.0.0.1:9090\"\n",
        );
        let flags: Vec<String> = ["--http", "0.0.0.0:81", "--prefix", "typed-", "--cores", "2"]
            .map(String::from)
            .to_vec();
        let out = check_with(&path, "serve", &flags).unwrap();
        // Typed over the file's value, a global one too, and one the file lacks.
        assert_eq!(words(&out, "http"), ["http", "0.0.0.0:81", "flag"]);
        assert_eq!(words(&out, "prefix"), ["prefix", "typed-", "flag"]);
        assert_eq!(words(&out, "cores"), ["cores", "2", "flag"]);
        // The file's, untouched by the typed flags, stays the file's.
        assert_eq!(words(&out, "admin"), ["admin", "10.0.0.1:9090", "file"]);
        assert_eq!(
            words(&out, "kafka-brokers"),
            ["kafka-brokers", "127.0.0.1:9092", "default"]
        );
        // Without typed flags nothing is a flag's.
        let out = check_with(&path, "serve", &[]).unwrap();
        assert!(!out.contains(" flag\n"), "{out}");
        assert_eq!(words(&out, "http"), ["http", "0.0.0.0:80", "file"]);
    }

    #[test]
    fn check_refuses_flags_it_could_not_place() {
        let flags = ["--http".to_string(), "0.0.0.0:81".to_string()];
        let err = check(
            &cli(),
            None,
            &["serve".to_string(), "persist".to_string()],
            &flags,
            |_| None,
        )
        .unwrap_err();
        assert_eq!(
            err.downcast_ref::<CheckError>(),
            Some(&CheckError::FlagsNeedOneCommand(2))
        );
        // A flag of another command is refused by the command, as it would be at start.
        let err = check(&cli(), None, &["init".to_string()], &flags, |_| None).unwrap_err();
        assert!(
            format!("{err:#}").contains("votes init would refuse"),
            "{err:#}"
        );
        // Typed for `config check` itself: refused, never shown under another source.
        assert_eq!(
            refuse_flags_before_check(
                &cli(),
                &os(&["votes", "--prefix", "p-", "config", "check", "serve"])
            ),
            Err(CheckError::FlagBeforeCheck("prefix".into()))
        );
        assert_eq!(
            refuse_flags_before_check(
                &cli(),
                &os(&["votes", "config", "check", "--kafka-brokers", "k:1"])
            ),
            Err(CheckError::FlagBeforeCheck("kafka-brokers".into()))
        );
        assert_eq!(
            refuse_flags_before_check(
                &cli(),
                &os(&[
                    "votes", "--config", "f.toml", "config", "check", "serve", "--", "--prefix",
                    "p-"
                ])
            ),
            Ok(())
        );
    }
}

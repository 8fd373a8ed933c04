//! The configuration as an operator meets it, through the binary: `votes config check` names
//! where each setting came from (a typed flag, a flag's own environment variable included), a misspelt key
//! stops any command, and the man pages and completions come from the same CLI definition.
//! No service is needed.

use std::process::{Command, Output};

fn votes(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_votes"));
    c.args(args);
    // Only what the test sets: a VOTES_* of the machine running the tests would change the
    // sources shown.
    for (k, _) in std::env::vars() {
        if k.starts_with("VOTES_") {
            c.env_remove(k);
        }
    }
    c.envs(env.iter().copied());
    c.output().expect("the votes binary runs")
}

/// The stdout of a run that must have succeeded; its whole output in the failure otherwise.
fn succeeded(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn temp_file(name: &str, text: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("votes-config-check-{}-{name}", std::process::id()));
    std::fs::write(&p, text).unwrap();
    p
}

/// The words of the first line of `flag` in a check report.
fn line<'a>(report: &'a str, flag: &str) -> Vec<&'a str> {
    line_in(report, "", flag)
}

/// The words of the line of `flag` in the part of the report after `section`.
fn line_in<'a>(report: &'a str, section: &str, flag: &str) -> Vec<&'a str> {
    let at = report
        .find(section)
        .unwrap_or_else(|| panic!("no {section}:\n{report}"));
    report[at..]
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{flag} ")))
        .unwrap_or_else(|| panic!("no line for {flag}:\n{report}"))
        .split_whitespace()
        .collect()
}

#[test]
fn config_check_shows_each_settings_source_flags_own_variables_included() {
    let file = temp_file(
        "sources.toml",
        "prefix = \"file-\"\n[serve]\nhttp = \"0.0.0.0:80\"\nadmin = \"10.0.0.1:9090\"\n[persist]\nbatch-max = 10\n",
    );
    let out = votes(
        &[
            "--config",
            file.to_str().unwrap(),
            "config",
            "check",
            "serve",
            "persist",
        ],
        &[
            ("VOTES_ADMIN", "127.0.0.1:9999"),
            ("VOTES_PERSIST_BATCH_MAX", "77"),
            ("VOTES_ADMIN_TOKEN", "an-admin-token-of-32-bytes-000000"),
        ],
    );
    let report = succeeded(&out);
    assert_eq!(line(&report, "http"), ["http", "0.0.0.0:80", "file"]);
    // The environment beats the file, under each flag's own variable name.
    assert_eq!(
        line(&report, "admin"),
        ["admin", "127.0.0.1:9999", "env", "VOTES_ADMIN"]
    );
    assert_eq!(
        line_in(&report, "votes persist", "batch-max"),
        ["batch-max", "77", "env", "VOTES_PERSIST_BATCH_MAX"]
    );
    assert_eq!(line(&report, "prefix"), ["prefix", "file-", "file"]);
    assert_eq!(line(&report, "cores"), ["cores", "-", "unset"]);
    assert_eq!(
        line(&report, "VOTES_ADMIN_TOKEN"),
        ["VOTES_ADMIN_TOKEN", "set,", "33", "bytes", "(environment)"]
    );
    assert!(
        !report.contains("an-admin-token"),
        "a secret's value is never shown"
    );
    let _ = std::fs::remove_file(file);
}

#[test]
fn config_check_calls_the_checked_commands_typed_flags_flags() {
    let file = temp_file(
        "flags.toml",
        "prefix = \"file-\"\n[serve]\nhttp = \"0.0.0.0:80\"\nadmin = \"10.0.0.1:9090\"\n",
    );
    let config = file.to_str().unwrap();
    let out = votes(
        &[
            "--config",
            config,
            "config",
            "check",
            "serve",
            "--",
            "--http",
            "0.0.0.0:81",
            "--prefix",
            "typed-",
            "--admin",
            "127.0.0.1:1",
        ],
        // A flag beats its variable, and is still reported as the flag.
        &[("VOTES_ADMIN", "127.0.0.1:9999")],
    );
    let report = succeeded(&out);
    assert_eq!(line(&report, "http"), ["http", "0.0.0.0:81", "flag"]);
    assert_eq!(line(&report, "prefix"), ["prefix", "typed-", "flag"]);
    assert_eq!(line(&report, "admin"), ["admin", "127.0.0.1:1", "flag"]);
    assert_eq!(
        line(&report, "kafka-brokers"),
        ["kafka-brokers", "127.0.0.1:9092", "default"]
    );
    // A setting typed for `config check` itself is refused rather than left out of the
    // report or shown under another source.
    let out = votes(
        &[
            "--config", config, "--prefix", "p-", "config", "check", "serve",
        ],
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("--prefix was given to `config check` itself"),
        "{err}"
    );
    // Flags for several commands at once: whose would they be?
    let out = votes(
        &[
            "config", "check", "serve", "persist", "--", "--prefix", "p-",
        ],
        &[],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("name exactly one command"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_file(file);
}

#[test]
fn a_misspelt_key_stops_every_command_and_names_the_flag_meant() {
    let file = temp_file("typo.toml", "[serve]\nhtpp = \"0.0.0.0:80\"\n");
    for args in [
        &["init", "--help"][..],
        &["config", "check"][..],
        &["tune", "check"][..],
    ] {
        let mut all = vec!["--config", file.to_str().unwrap()];
        all.extend_from_slice(args);
        let out = votes(&all, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "votes {args:?} ran with a misspelt key"
        );
        assert!(
            err.contains("[serve]: unknown key \"htpp\" (did you mean \"http\"?)"),
            "votes {args:?}: {err}"
        );
    }
    let _ = std::fs::remove_file(file);
}

#[test]
fn man_pages_and_completions_come_from_the_cli_definition() {
    let dir = std::env::temp_dir().join(format!("votes-man-{}", std::process::id()));
    succeeded(&votes(&["man", "--out", dir.to_str().unwrap()], &[]));
    for page in [
        "votes.1",
        "votes-serve.1",
        "votes-config-check.1",
        "votes-tune-check.1",
    ] {
        let text = std::fs::read_to_string(dir.join(page)).unwrap_or_default();
        assert!(text.starts_with(".ie"), "{page} is a roff page: {text:.80}");
    }
    let serve = std::fs::read_to_string(dir.join("votes-serve.1")).unwrap();
    assert!(
        serve.contains("group\\-session\\-timeout\\-ms"),
        "every flag of serve is on its page"
    );
    let _ = std::fs::remove_dir_all(dir);
    let out = votes(&["completions", "bash"], &[]);
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && script.contains("complete -F"),
        "{script:.200}"
    );
    assert!(script.contains("--snapshot-dir"), "serve's flags complete");
}

/// Secrets come from the environment, or else from a systemd credential of the same name
/// (`LoadCredential=` in the units): the environment of a process is readable by its children
/// and in `/proc`, a credential only by the service.
#[test]
fn a_secret_comes_from_a_systemd_credential_when_the_environment_lacks_it() {
    let dir = std::env::temp_dir().join(format!("votes-credentials-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = "credential-token-key-0123456789abcdef";
    std::fs::write(dir.join("VOTES_TOKEN_KEY"), format!("{key}\n")).unwrap();
    let credentials = dir.to_str().unwrap();
    let from_file = votes(
        &["token", "--voter", "7"],
        &[("CREDENTIALS_DIRECTORY", credentials)],
    );
    assert!(
        from_file.status.success(),
        "{}",
        String::from_utf8_lossy(&from_file.stderr)
    );
    // The token verifies with the key the credential holds.
    let token = String::from_utf8_lossy(&from_file.stdout).trim().to_owned();
    let keys = votes_core::TokenKeys::hs256(key.as_bytes()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert_eq!(
        votes_core::token::verify(&keys, &token, now),
        Ok(votes_core::VoterId(7))
    );
    let neither = votes(&["token", "--voter", "7"], &[]);
    assert!(!neither.status.success());
    let why = String::from_utf8_lossy(&neither.stderr);
    assert!(
        why.contains("VOTES_TOKEN_KEY") && why.contains("credential"),
        "{why}"
    );
    std::fs::write(dir.join("VOTES_TOKEN_KEY"), "short\n").unwrap();
    let short = votes(
        &["token", "--voter", "7"],
        &[("CREDENTIALS_DIRECTORY", credentials)],
    );
    assert!(
        !short.status.success(),
        "a short key is refused wherever it comes from"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

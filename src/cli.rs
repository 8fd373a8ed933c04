//! The command line (docs/design.md §4.1): the flags every role reads ([`Common`]), the
//! subcommands, and [`main`], which runs one of them. Subcommands wire the crates into roles;
//! `anyhow` lives only at this edge and in the roles it calls.

use std::ffi::OsString;

use anyhow::{Context, Result, bail};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::{audit, config, init, keys, persist, recount, secrets, serve};

#[derive(Parser, Debug)]
#[command(
    name = "votes",
    version,
    about = "Real-time voting appliance on Kafka, DynamoDB and Redis"
)]
#[command(args_override_self = true)]
pub struct Cli {
    /// TOML file with settings (top-level keys: global flags; `[command]` tables: its flags).
    #[arg(long, global = true, env = "VOTES_CONFIG")]
    config: Option<std::path::PathBuf>,
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: Command,
}

/// Settings every role reads (docs/design.md §4.1).
#[derive(clap::Args, Debug, Clone)]
pub struct Common {
    /// Kafka bootstrap servers.
    #[arg(
        long,
        global = true,
        env = "VOTES_KAFKA_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    pub kafka_brokers: String,
    /// Redis URL of the read model.
    #[arg(
        long,
        global = true,
        env = "VOTES_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,
    /// PEM certificate authority of a `rediss://` Redis whose certificate the system does not
    /// trust (a password goes in the URL: `rediss://:password@host:6380`).
    #[arg(long, global = true, env = "VOTES_REDIS_CA")]
    pub redis_ca: Option<std::path::PathBuf>,
    /// DynamoDB endpoint; set it empty to use real DynamoDB with the AWS credential chain.
    #[arg(
        long,
        global = true,
        env = "VOTES_DYNAMODB_ENDPOINT",
        default_value = "http://127.0.0.1:8000"
    )]
    pub dynamodb_endpoint: String,
    /// Prefix of topics, tables and Redis keys, so several deployments share the services.
    #[arg(long, global = true, env = "VOTES_PREFIX", default_value = "")]
    pub prefix: String,
    /// How every Kafka client connects: plaintext, ssl (TLS), sasl_plaintext or sasl_ssl
    /// (TLS and SASL; the production choice).
    #[arg(long, global = true, env = "VOTES_KAFKA_SECURITY_PROTOCOL", value_enum, default_value_t = KafkaProtocolArg::Plaintext)]
    pub kafka_security_protocol: KafkaProtocolArg,
    /// PEM certificate authority of the brokers' certificates, when the system does not trust
    /// it already (ssl and sasl_ssl).
    #[arg(long, global = true, env = "VOTES_KAFKA_CA")]
    pub kafka_ca: Option<std::path::PathBuf>,
    /// SASL mechanism (sasl_ssl and sasl_plaintext).
    #[arg(long, global = true, env = "VOTES_KAFKA_SASL_MECHANISM", value_enum, default_value_t = SaslMechanismArg::ScramSha512)]
    pub kafka_sasl_mechanism: SaslMechanismArg,
    /// SASL user; its password is the secret `VOTES_KAFKA_PASSWORD` (environment or systemd
    /// credential).
    #[arg(long, global = true, env = "VOTES_KAFKA_SASL_USERNAME")]
    pub kafka_sasl_username: Option<String>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum KafkaProtocolArg {
    Plaintext,
    Ssl,
    #[value(name = "sasl_plaintext")]
    SaslPlaintext,
    #[value(name = "sasl_ssl")]
    SaslSsl,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaslMechanismArg {
    #[value(name = "SCRAM-SHA-512")]
    ScramSha512,
    #[value(name = "SCRAM-SHA-256")]
    ScramSha256,
    #[value(name = "PLAIN")]
    Plain,
}

impl Common {
    pub fn names(&self) -> Result<votes_core::Names> {
        Ok(votes_core::Names::new(&self.prefix)?)
    }

    /// How this process's Kafka clients connect, from the flags and `VOTES_KAFKA_PASSWORD`.
    pub fn kafka_security(&self) -> Result<votes_tally::kafka::KafkaSecurity> {
        use votes_tally::kafka::{KafkaProtocol, KafkaSecurity, SaslLogin};
        let protocol = match self.kafka_security_protocol {
            KafkaProtocolArg::Plaintext => KafkaProtocol::Plaintext,
            KafkaProtocolArg::Ssl => KafkaProtocol::Ssl,
            KafkaProtocolArg::SaslPlaintext => KafkaProtocol::SaslPlaintext,
            KafkaProtocolArg::SaslSsl => KafkaProtocol::SaslSsl,
        };
        let password = secrets::optional("VOTES_KAFKA_PASSWORD")?;
        let login = match (&self.kafka_sasl_username, password) {
            (None, None) => None,
            (Some(username), Some(password)) => Some(SaslLogin {
                mechanism: match self.kafka_sasl_mechanism {
                    SaslMechanismArg::ScramSha512 => "SCRAM-SHA-512",
                    SaslMechanismArg::ScramSha256 => "SCRAM-SHA-256",
                    SaslMechanismArg::Plain => "PLAIN",
                },
                username: username.clone(),
                password,
            }),
            (Some(_), None) => bail!("--kafka-sasl-username needs VOTES_KAFKA_PASSWORD"),
            (None, Some(_)) => bail!("VOTES_KAFKA_PASSWORD needs --kafka-sasl-username"),
        };
        Ok(KafkaSecurity::new(
            protocol,
            self.kafka_ca.as_deref(),
            login,
        )?)
    }

    /// Sets the process's Kafka security and, when it is not plaintext, checks it against the
    /// cluster: wrong credentials or an untrusted certificate stop the command here, saying
    /// so, instead of every client retrying them forever.
    pub fn connect_kafka(&self) -> Result<()> {
        let security = self.kafka_security()?;
        let plaintext = security.is_plaintext();
        votes_tally::kafka::set_security(security);
        if plaintext {
            return Ok(());
        }
        match votes_tally::kafka::check(&self.kafka_brokers, std::time::Duration::from_secs(10)) {
            Ok(()) => Ok(()),
            Err(votes_tally::kafka::KafkaCheck::Refused(why)) => bail!(
                "Kafka at {} refused this process ({why}): check --kafka-sasl-username, \
                 VOTES_KAFKA_PASSWORD, --kafka-ca and --kafka-security-protocol",
                self.kafka_brokers
            ),
            Err(votes_tally::kafka::KafkaCheck::Unreachable(why)) => {
                tracing::warn!(brokers = %self.kafka_brokers, %why, "Kafka does not answer yet; its clients retry");
                Ok(())
            }
        }
    }

    /// The Redis read model: URL, and the certificate authority for TLS when given.
    pub fn redis(&self) -> Result<votes_tally::RedisTarget> {
        let ca = match &self.redis_ca {
            None => None,
            Some(path) => Some(
                std::fs::read(path)
                    .with_context(|| format!("reading --redis-ca {}", path.display()))?,
            ),
        };
        // A credential, so that the password need not sit in the URL of a readable config file.
        let password = secrets::optional("VOTES_REDIS_PASSWORD")?;
        Ok(votes_tally::RedisTarget::new(&self.redis_url, ca)?.with_password(password))
    }

    pub fn dynamodb_endpoint(&self) -> Option<&str> {
        Some(self.dynamodb_endpoint.as_str()).filter(|e| !e.is_empty())
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create the Kafka topics and DynamoDB tables (idempotent).
    Init(init::InitArgs),
    /// Run the appliance.
    Serve(Box<serve::ServeArgs>),
    /// Persist committed votes from Kafka to DynamoDB (a consumer group).
    Persist(persist::PersistArgs),
    /// Official recount of closed elections: Kafka replay, DynamoDB and the live tally must agree.
    Recount(recount::RecountArgs),
    /// Print a voter token signed with VOTES_TOKEN_KEY (development and tests).
    Token {
        /// Voter id (decimal u64).
        #[arg(long)]
        voter: u64,
        /// Lifetime, e.g. 3600s, 60m, 1h.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Sign with this key of VOTES_TOKEN_KEYS_FILE (an HS256 secret or an Ed25519
        /// private key) instead of VOTES_TOKEN_KEY.
        #[arg(long)]
        kid: Option<String>,
    },
    /// Auditors' tools (docs/design.md §4.5): signed offline export, its verification, the public key.
    Audit(audit::AuditArgs),
    /// Write a self-signed development certificate and key (`cert.pem`, `key.pem`) for
    /// `--https` to DIR, and print the base64 SHA-256 of its public key (what Chromium's
    /// `--ignore-certificate-errors-spki-list` takes). Development and tests only.
    DevCert {
        /// Directory to write cert.pem and key.pem to (created if missing).
        #[arg(long)]
        out: std::path::PathBuf,
        /// Names and addresses the certificate is for.
        #[arg(long, value_delimiter = ',', default_value = "localhost,127.0.0.1,::1")]
        names: Vec<String>,
    },
    /// Host tuning.
    Tune {
        #[command(subcommand)]
        command: TuneCommand,
    },
    /// Print a shell completion script (`votes completions bash > /etc/bash_completion.d/votes`).
    Completions { shell: clap_complete::Shell },
    /// Write the man pages of votes and of each command (votes.1, votes-serve.1, …) to DIR.
    Man {
        /// Directory to write the pages to (created if missing).
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// The configuration file and environment.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Print the settings each command would run with, and where each came from (flag, file,
    /// env, default); secrets only as set or not. Fails on an unknown key or a refused value.
    Check {
        /// Commands to show.
        #[arg(default_values_t = ["init".to_string(), "serve".to_string(), "persist".to_string(), "recount".to_string()])]
        commands: Vec<String>,
        /// The checked command's flags as you would type them, after `--` (one command only):
        /// shown with the source `flag`.
        #[arg(last = true, allow_hyphen_values = true)]
        flags: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
enum TuneCommand {
    /// Print the host's readiness: cores, placement, memlock, io_uring, socket buffers.
    Check {
        /// Reactor cores that `serve` would start.
        #[arg(long, env = "VOTES_CORES")]
        cores: Option<usize>,
    },
}

/// The whole `votes` process after its allocator: logging, the TLS provider, the command line,
/// and the command it names; errors are printed here and become the exit code.
pub fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VOTES_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    // The AWS SDK brings aws-lc-rs and our TLS uses ring, so rustls cannot pick a process
    // default by itself; the Redis client's TLS (rediss://) asks for one. Ring, like the rest.
    // Err only when a default is set already, which is as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match run() {
        Ok(code) => code,
        Err(err) => {
            eprintln!("votes: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<std::process::ExitCode> {
    let raw: Vec<OsString> = std::env::args_os().collect();
    let args = config::expand_args(raw.clone(), &Cli::command(), |k| std::env::var(k).ok())?;
    let matches = Cli::command().get_matches_from(args);
    let cli = Cli::from_arg_matches(&matches).context("reading the command line")?;
    // The commands that talk to Kafka (an audit verify reads files only).
    let kafka = match &cli.command {
        Command::Init(_) | Command::Serve(_) | Command::Persist(_) | Command::Recount(_) => true,
        Command::Audit(a) => matches!(a.command, audit::AuditCommand::Export(_)),
        _ => false,
    };
    if kafka {
        cli.common.connect_kafka()?;
    }
    match cli.command {
        Command::Init(args) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(init::run(&cli.common, &args))?;
        }
        Command::Serve(args) => serve::run(&cli.common, &args)?,
        Command::Persist(args) => persist::run(&cli.common, &args)?,
        Command::Recount(args) => return recount::run(&cli.common, &args),
        Command::Audit(args) => return audit::run(&cli.common, &args),
        Command::Token { voter, ttl, kid } => println!("{}", token(voter, &ttl, kid)?),
        Command::DevCert { out, names } => println!("{}", dev_cert(&out, &names)?),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "votes", &mut std::io::stdout());
        }
        Command::Man { out } => {
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let written = write_man_pages(Cli::command(), "votes", &out)?;
            eprintln!("{written} man pages in {}", out.display());
        }
        Command::Config {
            command: ConfigCommand::Check { commands, flags },
        } => {
            config::refuse_flags_before_check(&Cli::command(), &raw)?;
            let report = config::check(
                &Cli::command(),
                cli.config.as_deref(),
                &commands,
                &flags,
                |k| std::env::var(k).ok(),
            )?;
            print!("{report}");
        }
        Command::Tune {
            command: TuneCommand::Check { cores },
        } => tune_check(cores),
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// `votes token`: a voter token signed with `VOTES_TOKEN_KEY`, or with the key `kid` of
/// `VOTES_TOKEN_KEYS_FILE`.
fn token(voter: u64, ttl: &str, kid: Option<String>) -> Result<String> {
    let secret = secrets::read("VOTES_TOKEN_KEY", 32)?;
    let keys = keys::token_keys(secret.as_bytes())?;
    let key = match &kid {
        None => keys.signing_key(),
        Some(kid) => keys
            .keys()
            .iter()
            .find(|k| k.kid() == Some(kid.as_str()) && k.can_sign())
            .with_context(|| format!("no key {kid:?} that can sign in VOTES_TOKEN_KEYS_FILE"))?,
    };
    let now = votes_core::clock::unix_ms() / 1000;
    Ok(votes_core::token::issue(
        key,
        votes_core::VoterId(voter),
        parse_ttl(ttl)?,
        now,
    ))
}

/// `votes dev-cert`: writes `cert.pem` and `key.pem` (owner-only) to `out`; returns the
/// base64 SHA-256 of the public key.
fn dev_cert(out: &std::path::Path, names: &[String]) -> Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let (cert, key, spki) = votes_net::self_signed_dev_cert_with_spki(&names)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(out.join("cert.pem"), cert)?;
    let key_path = out.join("key.pem");
    std::fs::write(&key_path, key)?;
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))?;
    Ok(spki)
}

/// `votes tune check`: each finding on the host, then how many warn.
fn tune_check(cores: Option<usize>) {
    let facts = votes_tuning::probe();
    let findings = votes_tuning::judge(&facts, cores);
    for f in &findings {
        println!("{f}");
    }
    let warnings = findings
        .iter()
        .filter(|f| f.verdict == votes_tuning::Verdict::Warn)
        .count();
    println!("{warnings} warning(s)");
}

/// The page of `cmd` (named `name`, e.g. `votes-tune-check`) and of every command under it;
/// returns how many were written.
fn write_man_pages(cmd: clap::Command, name: &str, dir: &std::path::Path) -> Result<usize> {
    let cmd = cmd.name(name.to_owned());
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut page)?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
    let mut written = 1;
    for sub in cmd.get_subcommands().filter(|c| c.get_name() != "help") {
        let sub_name = format!("{name}-{}", sub.get_name());
        written += write_man_pages(sub.clone(), &sub_name, dir)?;
    }
    Ok(written)
}

/// `90s`, `15m`, `1h`, `2d` or plain seconds.
fn parse_ttl(s: &str) -> Result<u64> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, ""), |i| s.split_at(i));
    let n: u64 = num
        .parse()
        .with_context(|| format!("invalid duration {s:?}"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => anyhow::bail!("invalid duration unit in {s:?} (s, m, h or d)"),
    };
    n.checked_mul(mult)
        .with_context(|| format!("duration {s:?} is too long"))
}

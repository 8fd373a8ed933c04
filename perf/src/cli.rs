//! What the harness's client binaries (`votes-load`, `votes-sse`, `votes-flood`) share on their
//! command lines, in how they run and at their end: one definition of the target, election and
//! TLS trust flags, so the binaries name, document and read them (`VOTES_LOAD_*`) alike, one
//! runtime bounded by `--threads`, and one way to write a run's JSON report.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::client::{Target, Trust};

/// The node and the election a run drives (`votes-load`, `votes-sse`): a script sets
/// `VOTES_LOAD_TARGET` and `VOTES_LOAD_ELECTION` once for both.
#[derive(clap::Args, Debug, Clone)]
pub struct RunTarget {
    /// Base URL of a public listener: http://HOST:PORT (HTTP/1.1 or h2c) or https://HOST:PORT
    /// (TLS: HTTP/1.1, h2 or h3; needs --ca-cert or --insecure).
    #[arg(
        long,
        env = "VOTES_LOAD_TARGET",
        default_value = "http://127.0.0.1:8080"
    )]
    pub target: Target,
    /// Election id to vote in.
    #[arg(long, env = "VOTES_LOAD_ELECTION")]
    pub election: String,
    #[command(flatten)]
    pub trust: TrustArgs,
}

impl RunTarget {
    /// The target, with the trust its `https://` needs.
    pub fn trusted(&self) -> Target {
        self.target.clone().with_trust(self.trust.trust())
    }
}

/// How an `https://` target's certificate is checked: `--ca-cert FILE` or `--insecure`
/// (`#[command(flatten)]` it into a binary's arguments).
#[derive(clap::Args, Debug, Clone)]
pub struct TrustArgs {
    /// Trust this PEM certificate (a CA, or the server's self-signed certificate) for an
    /// https:// target.
    #[arg(long, env = "VOTES_LOAD_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// https:// without any certificate verification. TESTING ONLY: anyone on the path can
    /// impersonate the server; never use it across a network you do not control.
    #[arg(long)]
    pub insecure: bool,
}

impl TrustArgs {
    /// The [`Trust`] the flags ask for.
    pub fn trust(&self) -> Trust {
        Trust::from_flags(self.ca_cert.clone(), self.insecure)
    }
}

/// The runtime a client binary runs on: `threads` workers (at least one), and at most
/// `blocking` threads in its blocking pool when given (`votes-load` solves proofs of work there).
pub fn client_runtime(threads: usize, blocking: Option<usize>) -> Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(threads.max(1));
    if let Some(blocking) = blocking {
        builder.max_blocking_threads(blocking.max(1));
    }
    builder
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

/// Runs `run` to its end as a task of `rt`, not only under `block_on`: its dispatcher then runs
/// on a worker too (from outside the pool every spawn would have to wake a worker) and
/// `--threads` bounds all of the generator's cores. `what` names it if it panics.
pub fn run_as_task<T: Send + 'static>(
    rt: &tokio::runtime::Runtime,
    what: &str,
    run: impl Future<Output = T> + Send + 'static,
) -> Result<T> {
    rt.block_on(async { tokio::spawn(run).await })
        .with_context(|| format!("{what} panicked"))
}

/// Writes `report` as pretty JSON to `path` (`--report`), when one was given.
pub fn write_report(path: Option<&Path>, report: &impl serde::Serialize) -> Result<()> {
    if let Some(path) = path {
        let json = serde_json::to_vec_pretty(report).context("serializing the report")?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

//! `votes audit reprocess --election ID [--into PREFIX]` (docs/design.md §4.5): replays the election's
//! committed votes from Kafka into a fresh prefix (DynamoDB tables and Redis keys of their own),
//! counts them back from there and compares with the official result. Exit 0 only if every
//! count and the Merkle root agree.

use std::time::Duration;

use anyhow::{Result, bail};
use votes_tally::reprocess::{ReprocessConfig, reprocess};

use crate::Common;

#[derive(clap::Args, Debug)]
pub struct ReprocessArgs {
    /// The election to reprocess.
    #[arg(long)]
    pub election: String,
    /// Prefix of the fresh tables and keys (default `{prefix}rp{unix seconds}-`); it must not
    /// be the deployment's own.
    #[arg(long)]
    pub into: Option<String>,
}

pub fn run(common: &Common, args: &ReprocessArgs) -> Result<std::process::ExitCode> {
    let source = common.names()?;
    let into = match &args.into {
        Some(p) => votes_core::Names::new(p.clone())?,
        None => {
            let now = votes_core::clock::unix_ms() / 1000;
            votes_core::Names::new(format!("{}rp{now}-", source.prefix()))?
        }
    };
    if into == source {
        bail!("--into must name a prefix other than the deployment's own");
    }
    let election = votes_core::ElectionId::new(args.election.clone())
        .map_err(|e| anyhow::anyhow!("--election: {e}"))?;
    let audit_key = crate::secrets::read("VOTES_AUDIT_KEY", 32)?;
    let cfg = ReprocessConfig {
        brokers: common.kafka_brokers.clone(),
        redis: common.redis()?,
        source,
        into: into.clone(),
        audit_key: audit_key.into_bytes(),
        kafka_timeout: Duration::from_secs(30),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = rt.block_on(async {
        let dynamo = votes_tally::dynamo::client(common.dynamodb_endpoint()).await;
        reprocess(&cfg, &dynamo, &election).await
    })?;
    println!("reprocessed {election} into prefix {}", into.prefix());
    let mut options: Vec<&String> = report
        .replay
        .keys()
        .chain(report.dynamodb.keys())
        .chain(report.redis.keys())
        .chain(report.official.iter().flat_map(|o| o.keys()))
        .collect();
    options.sort();
    options.dedup();
    println!(
        "  {:<32} {:>12} {:>12} {:>12} {:>12}",
        "option", "kafka replay", "dynamodb", "redis", "official"
    );
    let get = |m: &std::collections::BTreeMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
    for o in options {
        let official = report
            .official
            .as_ref()
            .map_or("-".to_owned(), |m| get(m, o).to_string());
        println!(
            "  {o:<32} {:>12} {:>12} {:>12} {official:>12}",
            get(&report.replay, o),
            get(&report.dynamodb, o),
            get(&report.redis, o)
        );
    }
    let root = hex::encode(report.root);
    println!(
        "  merkle root {root} ({} leaves); official {}",
        report.tree_size,
        report.official_root.as_deref().unwrap_or("none")
    );
    if report.agrees() {
        println!("  agree: the reprocessed tallies and root match the official result");
        Ok(std::process::ExitCode::SUCCESS)
    } else if report.official.is_none() {
        bail!("{election} has no official result to compare with");
    } else {
        bail!("the reprocessed tallies or root differ from the official result");
    }
}

//! `votes recount` (docs/design.md §4.1): the official count of closed elections, printed as a table of
//! the three sources; exit 0 only when they agree.

use std::time::Duration;

use anyhow::{Result, bail};
use votes_tally::recount::{RecountConfig, Report, Verdict, closed_elections, load_election};

use crate::Common;

#[derive(clap::Args, Debug)]
#[command(group = clap::ArgGroup::new("which").required(true).args(["election", "all_closed"]))]
pub struct RecountArgs {
    /// The election to recount (it must be closed; a final one is checked, not rewritten).
    #[arg(long)]
    pub election: Option<String>,
    /// Recount every election that is closed and not yet final (the scheduled recount).
    #[arg(long)]
    pub all_closed: bool,
    /// Seconds to wait for the persisters to reach the end of the votes log.
    #[arg(long, env = "VOTES_RECOUNT_CATCH_UP_S", default_value_t = 120)]
    pub catch_up_s: u64,
    /// Seconds the live tally (Redis) may take to match the replay.
    #[arg(long, env = "VOTES_RECOUNT_REDIS_SETTLE_S", default_value_t = 10)]
    pub redis_settle_s: u64,
    /// The persisters' consumer group (default `{prefix}persist`).
    #[arg(long, env = "VOTES_PERSIST_GROUP")]
    pub persist_group: Option<String>,
}

pub fn config(common: &Common, args: &RecountArgs) -> Result<RecountConfig> {
    let names = common.names()?;
    let audit_key = crate::secrets::read("VOTES_AUDIT_KEY", 32)?;
    Ok(RecountConfig {
        audit_key: audit_key.into_bytes(),
        brokers: common.kafka_brokers.clone(),
        redis: common.redis()?,
        persist_group: args
            .persist_group
            .clone()
            .unwrap_or_else(|| crate::persist::default_group(&names)),
        names,
        catch_up_timeout: Duration::from_secs(args.catch_up_s),
        redis_settle: Duration::from_secs(args.redis_settle_s),
        kafka_timeout: Duration::from_secs(30),
    })
}

pub fn run(common: &Common, args: &RecountArgs) -> Result<std::process::ExitCode> {
    let cfg = config(common, args)?;
    let elections = match &args.election {
        Some(id) => vec![load_election(&cfg, id)?],
        None => closed_elections(&cfg)?,
    };
    if elections.is_empty() {
        println!("no closed election waits for its recount");
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut all_agree = true;
    rt.block_on(async {
        let dynamo = votes_tally::dynamo::client(common.dynamodb_endpoint()).await;
        for e in &elections {
            let report = votes_tally::recount::recount(&cfg, &dynamo, e).await?;
            print_report(&report);
            all_agree &= matches!(report.verdict, Verdict::Official { .. });
        }
        anyhow::Ok(())
    })?;
    if !all_agree {
        bail!("the counts disagree: nothing official was written");
    }
    Ok(std::process::ExitCode::SUCCESS)
}

pub fn print_report(r: &Report) {
    println!(
        "recount of {}: {} committed records read, {} duplicate records of this election ignored",
        r.election, r.records_read, r.log_duplicates
    );
    let mut options: Vec<&String> = r
        .counts
        .replay
        .keys()
        .chain(r.counts.dynamodb.keys())
        .chain(r.counts.redis.keys())
        .collect();
    options.sort();
    options.dedup();
    println!(
        "  {:<32} {:>12} {:>12} {:>12}",
        "option", "kafka replay", "dynamodb", "redis live"
    );
    let get = |m: &std::collections::BTreeMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
    for o in options {
        let (a, b, c) = (
            get(&r.counts.replay, o),
            get(&r.counts.dynamodb, o),
            get(&r.counts.redis, o),
        );
        let mark = if a == b && b == c { "" } else { "  <- differs" };
        println!("  {o:<32} {a:>12} {b:>12} {c:>12}{mark}");
    }
    println!(
        "  merkle tree of the counted votes: {} leaves, root {}",
        r.tree_size,
        hex::encode(r.root)
    );
    for (step, took) in &r.timings {
        println!("  {step}: {:.3} s", took.as_secs_f64());
    }
    match &r.verdict {
        Verdict::Official {
            official,
            already: false,
        } => println!(
            "  agree: official result written ({} votes), election {} is final",
            official.total, r.election
        ),
        Verdict::Official {
            official,
            already: true,
        } => println!(
            "  agree: matches the official result already recorded ({} votes)",
            official.total
        ),
        Verdict::Disagree(diffs) => {
            println!(
                "  DISAGREE on {} option(s); nothing official was written:",
                diffs.len()
            );
            for d in diffs {
                println!(
                    "    {}: replay {} / dynamodb {} / redis {}",
                    d.option, d.replay, d.dynamodb, d.redis
                );
            }
        }
    }
}

//! `votes persist` (docs/design.md §4.1): the committed `votes` log → DynamoDB, as a consumer group.
//! The work is `votes_tally::persist`; this is its process: runtime, signals, progress and
//! `/metrics`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use votes_tally::persist::{PersistConfig, PersistStats};

use crate::Common;

#[derive(clap::Args, Debug)]
pub struct PersistArgs {
    /// Consumer group shared by every persister of the deployment (default `{prefix}persist`).
    #[arg(long, env = "VOTES_PERSIST_GROUP")]
    pub group: Option<String>,
    /// Static membership id (`group.instance.id`): a quick restart keeps its partitions.
    #[arg(long, env = "VOTES_PERSIST_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// Records per round; offsets are committed after each round is durable.
    #[arg(long, env = "VOTES_PERSIST_BATCH_MAX", default_value_t = 5_000)]
    pub batch_max: usize,
    /// Batch calls in flight (BatchGetItem of 100 keys, BatchWriteItem of 25 items).
    #[arg(long, env = "VOTES_PERSIST_CONCURRENCY", default_value_t = 16)]
    pub concurrency: usize,
    /// Prometheus `/metrics` on this address (items, retries, lag per partition).
    #[arg(long, env = "VOTES_PERSIST_METRICS")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Exit once this persister holds every partition and each is persisted to its end (one
    /// persister: tests, measurements).
    #[arg(long)]
    pub exit_when_caught_up: bool,
}

pub fn default_group(names: &votes_core::Names) -> String {
    format!("{}persist", names.prefix())
}

pub fn run(common: &Common, args: &PersistArgs) -> Result<()> {
    anyhow::ensure!(
        args.batch_max > 0 && args.concurrency > 0,
        "--batch-max and --concurrency must be positive"
    );
    let names = common.names()?;
    let audit_key = crate::secrets::read("VOTES_AUDIT_KEY", 32)?;
    let cfg = PersistConfig {
        brokers: common.kafka_brokers.clone(),
        group: args.group.clone().unwrap_or_else(|| default_group(&names)),
        names,
        audit_key: audit_key.into_bytes(),
        instance_id: args.instance_id.clone(),
        batch_max: args.batch_max,
        concurrency: args.concurrency,
        exit_when_caught_up: args.exit_when_caught_up,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let dynamo = votes_tally::dynamo::client(common.dynamodb_endpoint()).await;
        let stats = Arc::new(PersistStats::default());
        if let Some(addr) = args.metrics {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding --metrics {addr}"))?;
            tokio::spawn(serve_metrics(listener, stats.clone()));
        }
        tokio::spawn(progress(stats.clone()));
        let stop = async {
            crate::stop::requested().await;
            tracing::info!("stopping after the current round");
        };
        tracing::info!(group = %cfg.group, "persisting votes to DynamoDB");
        let started = Instant::now();
        votes_tally::persist::run(cfg, dynamo, stats.clone(), stop).await?;
        let items = stats.items.load(Ordering::Relaxed);
        let secs = started.elapsed().as_secs_f64();
        println!(
            "persisted {items} items in {secs:.1} s ({:.0} items/s), {} retries",
            items as f64 / secs.max(1e-9),
            stats.retries.load(Ordering::Relaxed)
        );
        Ok(())
    })
}

/// A progress line every 10 s: items/s over the interval, retries, the largest lag.
async fn progress(stats: Arc<PersistStats>) {
    let mut last = 0u64;
    loop {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let items = stats.items.load(Ordering::Relaxed);
        let lag = stats.lag.lock().unwrap_or_else(|p| p.into_inner()).clone();
        tracing::info!(
            items,
            items_per_s = (items - last) / 10,
            retries = stats.retries.load(Ordering::Relaxed),
            max_lag = lag.values().max().copied().unwrap_or(0),
            "persist progress"
        );
        last = items;
    }
}

fn render(stats: &PersistStats) -> String {
    use crate::prom::{Exposition, Kind};
    let mut page = Exposition::new();
    let counters = [
        (
            "votes_persist_items_total",
            "Vote items written to DynamoDB.",
            &stats.items,
        ),
        (
            "votes_persist_rounds_total",
            "Rounds (write, then commit offsets).",
            &stats.rounds,
        ),
        (
            "votes_persist_retries_total",
            "DynamoDB call retries (throttling, transient failures, batch items or keys left unprocessed).",
            &stats.retries,
        ),
        (
            "votes_persist_undecodable_total",
            "Committed records that did not decode.",
            &stats.undecodable,
        ),
        (
            "votes_persist_kept_first_total",
            "Items left alone because an earlier record of their voter holds the item (rewrites after a restart, a voter's later record).",
            &stats.kept_first,
        ),
        (
            "votes_persist_rejoins_total",
            "Consumers replaced after their client left the group for good (FENCED_INSTANCE_ID across a coordinator failover and the like).",
            &stats.rejoins,
        ),
    ];
    for (name, help, v) in counters {
        page.single(name, Kind::Counter, help, v.load(Ordering::Relaxed));
    }
    let mut lag = page.family(
        "votes_persist_lag",
        Kind::Gauge,
        "Records of a partition not yet persisted.",
    );
    for (p, n) in stats.lag.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        lag.sample(&[("partition", p)], n);
    }
    page.into_string()
}

/// A minimal HTTP/1.0 `/metrics`: one request per connection, bounded head, bounded time.
async fn serve_metrics(listener: tokio::net::TcpListener, stats: Arc<PersistStats>) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let stats = stats.clone();
        tokio::spawn(async move {
            let mut head = [0u8; 2048];
            let read = tokio::time::timeout(Duration::from_secs(5), sock.read(&mut head)).await;
            let Ok(Ok(n)) = read else { return };
            let ok = head[..n].starts_with(b"GET /metrics ");
            let (status, body) = if ok {
                ("200 OK", render(&stats))
            } else {
                ("404 Not Found", "only GET /metrics here\n".to_owned())
            };
            let resp = format!(
                "HTTP/1.0 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
}

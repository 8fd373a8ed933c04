//! `votes audit export --election ID --out DIR`: the signed offline export of a final election
//! (docs/design.md §4.5): `votes.parquet` streamed from the committed log in tree order,
//! `manifest.json` (what the export claims, with the official result it was checked against)
//! and `manifest.sig` (Ed25519 over the manifest's bytes).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use votes_core::clock::unix_ms;

use anyhow::{Context, Result, anyhow, bail};
use aws_sdk_dynamodb::types::AttributeValue;
use votes_core::{Election, ElectionId, ElectionState, MerkleBuilder};
use votes_tally::audit::{Counted, LogSummary, for_each_counted};
use votes_tally::elections_log::{ElectionsReader, ElectionsView};

use crate::Common;
use votes_audit::manifest::{
    ElectionInfo, FORMAT, FORMAT_VERSION, MANIFEST_FILE, Manifest, MerkleInfo, OfficialInfo,
    OptionInfo, PartitionRange, SIGNATURE_FILE, VOTES_FILE, VotesFileInfo, rfc3339_utc,
};
use votes_audit::signing::SigningKey;
use votes_audit::table::{RowRef, VotesWriter};

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// The election to export; it must be `final` (closed, and the recount agreed).
    #[arg(long)]
    pub election: String,
    /// Directory to write votes.parquet, manifest.json and manifest.sig into (created).
    #[arg(long)]
    pub out: PathBuf,
    /// PKCS#8 PEM file of the Ed25519 key that signs the manifest
    /// (`openssl genpkey -algorithm ed25519 -out FILE`).
    #[arg(long, env = "VOTES_AUDIT_SIGNING_KEY")]
    pub audit_signing_key: PathBuf,
    /// Replace an export already in `--out`.
    #[arg(long)]
    pub force: bool,
    /// Bound on the silence of a Kafka read, in seconds.
    #[arg(long, default_value_t = 30)]
    pub kafka_timeout_s: u64,
}

/// A sink that hashes (SHA-256) and counts what goes through it.
struct Hashing<W> {
    inner: W,
    digest: ring::digest::Context,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.digest.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Progress on stderr: a line rewritten in place on a terminal, one summary line otherwise.
struct Progress {
    tty: bool,
    started: Instant,
    last: Instant,
}

impl Progress {
    fn new() -> Self {
        let now = Instant::now();
        Self {
            tty: std::io::stderr().is_terminal(),
            started: now,
            last: now,
        }
    }

    fn tick(&mut self, rows: u64, partition: u32) {
        if !self.tty
            || !rows.is_multiple_of(4096)
            || self.last.elapsed() < Duration::from_millis(250)
        {
            return;
        }
        self.last = Instant::now();
        let secs = self.started.elapsed().as_secs_f64();
        eprint!(
            "\r  exported {rows} votes (partition {partition}), {:.0} votes/s   ",
            rows as f64 / secs.max(1e-9)
        );
    }

    fn done(&self, line: &str) {
        if self.tty {
            eprintln!("\r{line}                    ");
        } else {
            eprintln!("{line}");
        }
    }
}

pub fn run(common: &Common, args: &ExportArgs) -> Result<std::process::ExitCode> {
    let names = common.names()?;
    let audit_key = crate::secrets::read("VOTES_AUDIT_KEY", 32)?;
    // The key first: a missing key should not cost a pass over the log.
    let key = SigningKey::from_pem_file(&args.audit_signing_key)?;
    let id = ElectionId::new(args.election.as_str())
        .map_err(|e| anyhow!("--election {:?}: {e}", args.election))?;
    let kafka_timeout = Duration::from_secs(args.kafka_timeout_s);
    let election = final_election(common, &names, &id, kafka_timeout)?;
    let official = official_result(common, &names, &id)?;
    let dir = &args.out;
    let partial = prepare_out_dir(dir, args.force)?;
    let mut progress = Progress::new();
    let written = write_votes(
        common,
        &names,
        audit_key.as_bytes(),
        &id,
        kafka_timeout,
        &partial,
        &mut progress,
    )?;
    std::fs::rename(&partial, dir.join(VOTES_FILE))?;
    let manifest = manifest(&election, &written, official, &key)?;
    let manifest_bytes = manifest.to_bytes();
    write_file(&dir.join(MANIFEST_FILE), &manifest_bytes)?;
    write_file(
        &dir.join(SIGNATURE_FILE),
        key.sign_text(&manifest_bytes).as_bytes(),
    )?;
    progress.done(&format!(
        "exported {} votes of {id} in {:.1} s: {} ({} bytes), {} records of the log read",
        written.rows,
        progress.started.elapsed().as_secs_f64(),
        dir.join(VOTES_FILE).display(),
        written.bytes,
        written.summary.records
    ));
    print_report(dir, &election, &manifest);
    let official = votes_audit::verify::check_official(&manifest);
    println!("{official}");
    if official.failed() {
        bail!(
            "the export disagrees with the official result it records; the files are kept in {} for investigation",
            dir.display()
        );
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// The election as the elections topic ends: only a final one is exported.
fn final_election(
    common: &Common,
    names: &votes_core::Names,
    id: &ElectionId,
    kafka_timeout: Duration,
) -> Result<Election> {
    let t = Instant::now();
    let mut view = ElectionsView::default();
    ElectionsReader::new(&common.kafka_brokers, names)?.load_to_end(&mut view, kafka_timeout)?;
    let election = view
        .get(id)
        .cloned()
        .ok_or_else(|| anyhow!("no election {id}"))?;
    if election.state != ElectionState::Final {
        bail!(
            "election {id} is {}: only a final election is exported (close it; the recount makes it final once the counts agree)",
            election.state.as_str()
        );
    }
    tracing::debug!(took = ?t.elapsed(), "elections topic read");
    Ok(election)
}

/// The official result the recount wrote to the results table; a final election has one.
fn official_result(
    common: &Common,
    names: &votes_core::Names,
    id: &ElectionId,
) -> Result<OfficialInfo> {
    let t = Instant::now();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let table = names.results_table();
    let official = rt
        .block_on(async {
            let dynamo = votes_tally::dynamo::client(common.dynamodb_endpoint()).await;
            read_official(&dynamo, &table, id).await
        })?
        .ok_or_else(|| {
            anyhow!("election {id} is final but the results table {table} holds no result for it")
        })?;
    tracing::debug!(took = ?t.elapsed(), "official result read");
    Ok(official)
}

/// Makes `dir`, refuses to overwrite an export unless `force`, and removes a manifest left
/// there: a failed export never leaves a manifest that names a file it did not finish.
/// Returns the path the votes are written to until they are complete.
fn prepare_out_dir(dir: &Path, force: bool) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for f in [VOTES_FILE, MANIFEST_FILE, SIGNATURE_FILE] {
        if dir.join(f).exists() && !force {
            bail!(
                "{} already holds an export ({f}); choose another --out or pass --force",
                dir.display()
            );
        }
    }
    for f in [MANIFEST_FILE, SIGNATURE_FILE] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    Ok(dir.join(format!("{VOTES_FILE}.partial")))
}

/// The votes file as written and checked against the pass over the log that wrote it.
struct WrittenVotes {
    summary: LogSummary,
    /// Per partition: votes, first and last offset.
    per_partition: BTreeMap<u32, (u64, u64, u64)>,
    root: votes_core::merkle::Hash,
    tree_size: u64,
    rows: u64,
    sha256: String,
    bytes: u64,
}

/// One pass over the committed log writes every counted vote of the election to `partial`
/// in tree order, synced; what the file holds must be what the pass counted.
fn write_votes(
    common: &Common,
    names: &votes_core::Names,
    audit_key: &[u8],
    id: &ElectionId,
    kafka_timeout: Duration,
    partial: &Path,
    progress: &mut Progress,
) -> Result<WrittenVotes> {
    let sink = Hashing {
        inner: File::create(partial).with_context(|| format!("creating {}", partial.display()))?,
        digest: ring::digest::Context::new(&ring::digest::SHA256),
        bytes: 0,
    };
    let mut writer = VotesWriter::new(sink, id.as_str())?;
    let mut failed: Option<anyhow::Error> = None;
    let mut tree = MerkleBuilder::new();
    let mut per_partition: BTreeMap<u32, (u64, u64, u64)> = BTreeMap::new();
    let summary = for_each_counted(
        &common.kafka_brokers,
        names,
        audit_key,
        id,
        kafka_timeout,
        |c: &Counted| {
            if failed.is_some() {
                return;
            }
            let l = &c.leaf;
            tree.push(c.leaf_hash);
            let e = per_partition
                .entry(l.partition)
                .or_insert((0, l.offset, l.offset));
            e.0 += 1;
            e.2 = l.offset;
            if let Err(err) = writer.push(RowRef {
                pseudonym: &l.pseudonym,
                option: l.option.as_str(),
                partition: l.partition,
                offset: l.offset,
                received_at_ms: c.received_at_ms,
                nonce: &l.nonce,
                leaf_hash: &c.leaf_hash,
            }) {
                failed = Some(err.into());
            }
            progress.tick(writer.rows(), l.partition);
        },
    )
    .context("reading the committed votes log")?;
    tracing::debug!(took = ?progress.started.elapsed(), "votes log read and rows written");
    if let Some(err) = failed {
        return Err(err.context(format!("writing {}", partial.display())));
    }
    let (sink, rows) = writer.finish()?;
    sink.inner.sync_all()?;
    let (root, tree_size) = tree.finish();
    check_rows_are_the_count(&summary, &per_partition, root, tree_size, rows)?;
    Ok(WrittenVotes {
        summary,
        per_partition,
        root,
        tree_size,
        rows,
        sha256: hex::encode(sink.digest.finish()),
        bytes: sink.bytes,
    })
}

/// What the file holds must be what the pass over the log counted: the same leaves in the
/// same order (the root), as many rows, the same offset ranges per partition.
fn check_rows_are_the_count(
    summary: &LogSummary,
    per_partition: &BTreeMap<u32, (u64, u64, u64)>,
    root: votes_core::merkle::Hash,
    tree_size: u64,
    rows: u64,
) -> Result<()> {
    let ranges: Vec<Option<(u64, u64)>> = (0..summary.ranges.len() as u32)
        .map(|p| per_partition.get(&p).map(|(_, f, l)| (*f, *l)))
        .collect();
    anyhow::ensure!(
        root == summary.root && tree_size == summary.tree_size && rows == tree_size,
        "the rows written ({rows}, root {}) are not the votes counted ({}, root {})",
        hex::encode(root),
        summary.tree_size,
        hex::encode(summary.root)
    );
    anyhow::ensure!(
        ranges == summary.ranges,
        "the partitions' offset ranges of the rows differ from the log's"
    );
    Ok(())
}

/// What the export claims: the election, the file, the totals per option of the election
/// (a vote for any other option in the log is refused), the partitions' ranges, the root,
/// and the official result it is checked against.
fn manifest(
    election: &Election,
    written: &WrittenVotes,
    official: OfficialInfo,
    key: &SigningKey,
) -> Result<Manifest> {
    let summary = &written.summary;
    let totals: BTreeMap<String, u64> = election
        .options
        .iter()
        .map(|o| {
            let k = o.id.as_str().to_owned();
            let n = summary.totals.get(&k).copied().unwrap_or(0);
            (k, n)
        })
        .collect();
    let stray: Vec<&String> = summary
        .totals
        .keys()
        .filter(|k| !totals.contains_key(*k))
        .collect();
    anyhow::ensure!(
        stray.is_empty(),
        "the log counts votes for options the election does not have: {stray:?}"
    );
    Ok(Manifest {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        created_at: rfc3339_utc(unix_ms()),
        election: ElectionInfo {
            id: election.id.to_string(),
            title: election.title.clone(),
            options: election
                .options
                .iter()
                .map(|o| OptionInfo {
                    id: o.id.to_string(),
                    label: o.label.clone(),
                })
                .collect(),
        },
        votes_file: VotesFileInfo {
            name: VOTES_FILE.into(),
            sha256: written.sha256.clone(),
            bytes: written.bytes,
            rows: written.rows,
        },
        total: totals.values().sum(),
        totals,
        partitions: summary
            .ranges
            .iter()
            .enumerate()
            .map(|(p, r)| PartitionRange {
                partition: p as u32,
                first_offset: r.map(|r| r.0),
                last_offset: r.map(|r| r.1),
                votes: written.per_partition.get(&(p as u32)).map_or(0, |x| x.0),
                frontier: summary.frontiers.get(p).copied().flatten(),
            })
            .collect(),
        merkle: MerkleInfo {
            root: hex::encode(written.root),
            tree_size: written.tree_size,
        },
        duplicate_records_ignored: summary.duplicates,
        votes_past_frontier: summary.past_frontier,
        official,
        signing_key_sha256: key.public_key().fingerprint(),
    })
}

/// What an auditor reads first: the election, the file and its digest, the root, the signer.
fn print_report(dir: &Path, election: &Election, manifest: &Manifest) {
    println!("election   {} ({:?})", election.id, election.title);
    println!(
        "votes      {} in {}",
        manifest.votes_file.rows,
        dir.join(VOTES_FILE).display()
    );
    println!("sha256     {}", manifest.votes_file.sha256);
    println!(
        "merkle     {} over {} leaves",
        manifest.merkle.root, manifest.merkle.tree_size
    );
    println!(
        "manifest   {} signed by the key {} ({})",
        dir.join(MANIFEST_FILE).display(),
        manifest.signing_key_sha256,
        dir.join(SIGNATURE_FILE).display()
    );
    // A vote committed past the close barrier is not counted, but it is the system's own
    // promise broken: the export says so at once, as verify will.
    println!(
        "frontier   {}",
        votes_audit::verify::check_frontier(manifest)
    );
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

/// The item the recount wrote to the results table, if any.
async fn read_official(
    dynamo: &aws_sdk_dynamodb::Client,
    table: &str,
    election: &ElectionId,
) -> Result<Option<OfficialInfo>> {
    let item = dynamo
        .get_item()
        .table_name(table)
        .key("pk", AttributeValue::S(election.to_string()))
        .consistent_read(true)
        .send()
        .await
        .map_err(|e| {
            anyhow!(
                "reading {table}: {}",
                aws_sdk_dynamodb::error::DisplayErrorContext(e)
            )
        })?
        .item;
    let Some(item) = item else { return Ok(None) };
    let bad = |field: &str| anyhow!("the result of {election} in {table} has no valid {field:?}");
    let number = |v: &AttributeValue| -> Option<u64> {
        match v {
            AttributeValue::N(n) | AttributeValue::S(n) => n.parse().ok(),
            _ => None,
        }
    };
    let field = |name: &str| item.get(name).and_then(number).ok_or_else(|| bad(name));
    let mut totals = BTreeMap::new();
    for (k, v) in item
        .get("totals")
        .and_then(|v| v.as_m().ok())
        .ok_or_else(|| bad("totals"))?
    {
        totals.insert(k.clone(), number(v).ok_or_else(|| bad("totals"))?);
    }
    let merkle_root = match item.get("merkle_root") {
        None => None,
        Some(v) => Some(v.as_s().map_err(|_| bad("merkle_root"))?.clone()),
    };
    let merkle_tree_size = match item.get("merkle_tree_size") {
        None => None,
        Some(v) => Some(number(v).ok_or_else(|| bad("merkle_tree_size"))?),
    };
    // Written by the recount as `{"<partition>": offset}` (votes_tally::recount::frontier_json).
    let frontier = item
        .get("frontier")
        .and_then(|v| v.as_s().ok())
        .and_then(|s| serde_json::from_str(s).ok())
        .ok_or_else(|| bad("frontier"))?;
    Ok(Some(OfficialInfo {
        source: format!("dynamodb:{table}"),
        totals,
        total: field("total")?,
        decided_at_ms: field("decided_at_ms")?,
        merkle_root,
        merkle_tree_size,
        frontier,
    }))
}

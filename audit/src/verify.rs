//! The checks of an export, offline, one line per check (docs/design.md §4.5); the `votes audit verify`
//! command prints them and exits 0 only when every check holds.
//!
//! The checks, in order: the manifest parses (known format version, at most
//! [`MANIFEST_MAX_BYTES`]); the Ed25519 signature over the exact bytes of `manifest.json`; the
//! SHA-256 and size of `votes.parquet`; then, only if the file is the one the manifest describes
//! (or with `diagnose`), in one pass over the rows: the row count, one row per pseudonym, each
//! row's leaf hash recomputed from its fields, the rows in strictly increasing (partition,
//! offset) order within the manifest's per-partition ranges, the per-option totals, times kept
//! to the minute, the Merkle root, no row at or past its partition's close frontier; then the
//! manifest against the official result it records, the close frontier (every partition
//! closed, where the official result says, no vote committed past it), and, when the auditor
//! has one from elsewhere, against a root given by hand.
//!
//! Every input is hostile: sizes come from the files only after they are bounded by the files'
//! lengths (`table::VotesReader`), and nothing here panics on any bytes.
//!
//! Memory: one row group at a time, plus 16 bytes per row to find repeated pseudonyms (sorted
//! at the end): 1.6 GB for 10^8 votes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use votes_core::{ElectionId, Leaf, MerkleBuilder, OptionId};

use crate::manifest::{MANIFEST_FILE, MANIFEST_MAX_BYTES, Manifest, SIGNATURE_FILE, VOTES_FILE};
use crate::read_bounded;
use crate::signing::PublicKey;
use crate::table::{RECEIVED_AT_RESOLUTION_MS, Row, TableError, VotesReader};

/// `manifest.sig` is 89 bytes of base64; a larger one is not read.
pub const SIGNATURE_MAX_BYTES: u64 = 4096;

/// Which key the signature is checked under.
#[derive(Clone, Copy, Debug)]
pub enum Signer {
    /// The exporter's public key, obtained before the export.
    Key(PublicKey),
    /// Not checked on purpose: reported as skipped, does not fail the verification.
    NotChecked,
    /// No key given: the signature check fails.
    Missing,
}

/// What `verify` checks beyond the files themselves.
#[derive(Clone, Debug)]
pub struct VerifyOptions {
    pub signer: Signer,
    /// A Merkle root the auditor got from elsewhere (a receipt page, a newspaper): the
    /// manifest's root and the rows' must both equal it.
    pub root: Option<[u8; 32]>,
    /// Reads the rows even when `votes.parquet` is not the file the manifest describes, to name
    /// what changed in it (still within every bound).
    pub diagnose: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
}

/// How a check came out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok(String),
    Fail(String),
    /// Not checked, on purpose (does not fail the verification).
    Skip(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub outcome: Outcome,
}

impl Check {
    fn ok(name: &'static str, detail: impl Into<String>) -> Self {
        Self {
            name,
            outcome: Outcome::Ok(detail.into()),
        }
    }

    fn fail(name: &'static str, detail: impl Into<String>) -> Self {
        Self {
            name,
            outcome: Outcome::Fail(detail.into()),
        }
    }

    fn skip(name: &'static str, detail: impl Into<String>) -> Self {
        Self {
            name,
            outcome: Outcome::Skip(detail.into()),
        }
    }

    fn judge(name: &'static str, problems: Vec<String>, ok: impl Into<String>) -> Self {
        if problems.is_empty() {
            Self::ok(name, ok)
        } else {
            Self::fail(name, problems.join("; "))
        }
    }

    pub fn failed(&self) -> bool {
        matches!(self.outcome, Outcome::Fail(_))
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (mark, detail) = match &self.outcome {
            Outcome::Ok(d) => ("ok  ", d),
            Outcome::Fail(d) => ("FAIL", d),
            Outcome::Skip(d) => ("skip", d),
        };
        write!(f, "{mark} {}: {detail}", self.name)
    }
}

/// At most this many examples are named per failing check.
const EXAMPLES: usize = 3;

fn with_examples(count: u64, what: &str, examples: &[String]) -> String {
    let mut s = format!("{count} {what}");
    if !examples.is_empty() {
        s.push_str(&format!(" (first: {})", examples.join(", ")));
    }
    s
}

fn short(hash: &[u8]) -> String {
    hex::encode(hash)
}

/// The per-row checks of an export: feed rows in file order, then [`RowChecker::finish`].
pub struct RowChecker<'m> {
    manifest: &'m Manifest,
    election: ElectionId,
    options: BTreeSet<String>,
    rows: u64,
    pseudonyms: Vec<u128>,
    leaf_bad: (u64, Vec<String>),
    order_bad: (u64, Vec<String>),
    last: Option<(u32, u64)>,
    /// Per partition: rows, first and last offset seen.
    seen: BTreeMap<u32, (u64, u64, u64)>,
    totals: BTreeMap<String, u64>,
    unknown_options: BTreeMap<String, u64>,
    /// Rows whose time is finer than [`RECEIVED_AT_RESOLUTION_MS`].
    fine_times: (u64, Vec<String>),
    merkle: MerkleBuilder,
}

/// What the rows showed: the checks, and the root they give (for a root given by hand).
pub struct RowReport {
    pub checks: Vec<Check>,
    pub root: [u8; 32],
    pub tree_size: u64,
}

impl<'m> RowChecker<'m> {
    pub fn new(manifest: &'m Manifest, election: ElectionId, expected_rows: u64) -> Self {
        // The footer's row count sizes the pseudonym list, but a damaged footer must not make
        // the verifier allocate without bound: beyond 2^27 rows it grows as it goes.
        let cap = usize::try_from(expected_rows.min(1 << 27)).unwrap_or(0);
        Self {
            manifest,
            election,
            options: manifest
                .election
                .options
                .iter()
                .map(|o| o.id.clone())
                .collect(),
            rows: 0,
            pseudonyms: Vec::with_capacity(cap),
            leaf_bad: (0, Vec::new()),
            order_bad: (0, Vec::new()),
            last: None,
            seen: BTreeMap::new(),
            totals: BTreeMap::new(),
            unknown_options: BTreeMap::new(),
            fine_times: (0, Vec::new()),
            merkle: MerkleBuilder::new(),
        }
    }

    /// Long because it is every check of one row, in the order of its columns, each noting its
    /// examples.
    pub fn push(&mut self, r: &Row) {
        let index = self.rows;
        self.rows += 1;
        let at = || {
            format!(
                "row {index} (partition {}, offset {})",
                r.partition, r.offset
            )
        };
        self.pseudonyms.push(u128::from_be_bytes(r.pseudonym));

        // The leaf hash, recomputed from the row's fields and the manifest's election id.
        let leaf = OptionId::new(r.option.as_str()).map(|option| Leaf {
            election: self.election.clone(),
            pseudonym: r.pseudonym,
            option,
            partition: r.partition,
            offset: r.offset,
            nonce: r.nonce,
        });
        match leaf {
            Ok(leaf) if leaf.leaf_hash() == r.leaf_hash => {}
            Ok(_) => note(&mut self.leaf_bad, at),
            Err(_) => note(&mut self.leaf_bad, || {
                format!("{} has an invalid option id {:?}", at(), r.option)
            }),
        }

        // Tree order, within the manifest's ranges.
        let here = (r.partition, r.offset);
        if let Some(prev) = self.last
            && here <= prev
        {
            note(&mut self.order_bad, || {
                format!(
                    "{} does not follow (partition {}, offset {})",
                    at(),
                    prev.0,
                    prev.1
                )
            });
        }
        self.last = Some(here);
        let range = self
            .manifest
            .partitions
            .iter()
            .find(|p| p.partition == r.partition);
        if let Some(frontier) = range.and_then(|p| p.frontier)
            && r.offset >= frontier
        {
            note(&mut self.order_bad, || {
                format!(
                    "{} is at or past its partition's close frontier {frontier}",
                    at()
                )
            });
        }
        match range.map(|p| (p.first_offset, p.last_offset)) {
            Some((Some(first), Some(last))) if (first..=last).contains(&r.offset) => {}
            Some((Some(first), Some(last))) => note(&mut self.order_bad, || {
                format!(
                    "{} is outside the manifest's range {first}..={last} of partition {}",
                    at(),
                    r.partition
                )
            }),
            Some(_) => note(&mut self.order_bad, || {
                format!(
                    "{} is in partition {}, which the manifest says holds no vote",
                    at(),
                    r.partition
                )
            }),
            None => note(&mut self.order_bad, || {
                format!("{} is in a partition the manifest does not list", at())
            }),
        }
        let e = self
            .seen
            .entry(r.partition)
            .or_insert((0, r.offset, r.offset));
        e.0 += 1;
        e.1 = e.1.min(r.offset);
        e.2 = e.2.max(r.offset);

        if self.options.contains(&r.option) {
            *self.totals.entry(r.option.clone()).or_default() += 1;
        } else {
            *self.unknown_options.entry(r.option.clone()).or_default() += 1;
        }
        if !r.received_at_ms.is_multiple_of(RECEIVED_AT_RESOLUTION_MS) {
            note(&mut self.fine_times, at);
        }
        // The tree is built from the stored leaf hashes (what receipts name); the leaf check
        // above ties each of them to its row.
        self.merkle.push(r.leaf_hash);
    }

    pub fn finish(mut self) -> RowReport {
        self.pseudonyms.sort_unstable();
        let mut checks = vec![
            self.row_count(),
            self.one_row_per_pseudonym(),
            self.leaf_hashes(),
            self.order_and_ranges(),
            self.totals(),
            self.times_to_the_minute(),
        ];
        let (root, tree_size) = self.merkle.finish();
        checks.push(merkle_root(self.manifest, root, tree_size));
        RowReport {
            checks,
            root,
            tree_size,
        }
    }

    /// The file holds as many rows as the manifest says, and the manifest agrees with itself.
    fn row_count(&self) -> Check {
        let m = self.manifest;
        let n = self.rows;
        let mut problems = Vec::new();
        if n != m.votes_file.rows {
            problems.push(format!(
                "{VOTES_FILE} holds {n} rows, the manifest says {}",
                m.votes_file.rows
            ));
        }
        if m.total != m.votes_file.rows || m.merkle.tree_size != m.votes_file.rows {
            problems.push(format!(
                "the manifest disagrees with itself: total {}, tree size {}, rows {}",
                m.total, m.merkle.tree_size, m.votes_file.rows
            ));
        }
        Check::judge("row count", problems, format!("{n} rows"))
    }

    /// No voter twice: every pseudonym in one row (the pseudonyms are sorted by now).
    fn one_row_per_pseudonym(&self) -> Check {
        let n = self.rows;
        let (mut repeated, mut extra_rows, mut examples) = (0u64, 0u64, Vec::new());
        for run in self.pseudonyms.chunk_by(|a, b| a == b) {
            if run.len() > 1 {
                repeated += 1;
                extra_rows += run.len() as u64 - 1;
                if examples.len() < EXAMPLES {
                    examples.push(format!(
                        "{} in {} rows",
                        short(&run[0].to_be_bytes()),
                        run.len()
                    ));
                }
            }
        }
        if repeated == 0 {
            Check::ok("one row per pseudonym", format!("{n} distinct pseudonyms"))
        } else {
            Check::fail(
                "one row per pseudonym",
                format!(
                    "{repeated} pseudonym(s) appear in more than one row, {extra_rows} row(s) too many: {}",
                    examples.join(", ")
                ),
            )
        }
    }

    /// Every stored leaf hash is the hash of its row's fields.
    fn leaf_hashes(&self) -> Check {
        if self.leaf_bad.0 == 0 {
            Check::ok(
                "leaf hashes",
                format!(
                    "every leaf_hash matches its row's fields in election {}",
                    self.election
                ),
            )
        } else {
            Check::fail(
                "leaf hashes",
                with_examples(
                    self.leaf_bad.0,
                    "row(s) whose leaf_hash does not match their fields",
                    &self.leaf_bad.1,
                ),
            )
        }
    }

    /// Rows in (partition, offset) order, each partition's count and range the manifest's.
    fn order_and_ranges(&self) -> Check {
        let m = self.manifest;
        let mut problems = Vec::new();
        if self.order_bad.0 > 0 {
            problems.push(with_examples(
                self.order_bad.0,
                "row(s) out of (partition, offset) order or range",
                &self.order_bad.1,
            ));
        }
        for p in &m.partitions {
            let got = self.seen.get(&p.partition).copied();
            let want = match (p.first_offset, p.last_offset) {
                (Some(f), Some(l)) => Some((p.votes, f, l)),
                _ if p.votes == 0 => None,
                _ => {
                    problems.push(format!(
                        "the manifest gives partition {} {} votes but no offsets",
                        p.partition, p.votes
                    ));
                    continue;
                }
            };
            if got != want {
                let show = |x: Option<(u64, u64, u64)>| match x {
                    Some((c, f, l)) => format!("{c} rows at offsets {f}..={l}"),
                    None => "no row".to_owned(),
                };
                problems.push(format!(
                    "partition {}: the file has {}, the manifest says {}",
                    p.partition,
                    show(got),
                    show(want)
                ));
            }
        }
        let partitions_used = m.partitions.iter().filter(|p| p.votes > 0).count();
        Check::judge(
            "order and ranges",
            problems,
            format!(
                "rows in (partition, offset) order, within the ranges of {partitions_used} of {} partitions",
                m.partitions.len()
            ),
        )
    }

    /// The totals recomputed from the rows are the manifest's, over the election's options only.
    fn totals(&self) -> Check {
        let m = self.manifest;
        let mut problems = Vec::new();
        for (option, count) in &self.unknown_options {
            problems.push(format!(
                "{count} row(s) for {option:?}, which is not an option of the election"
            ));
        }
        let keys: BTreeSet<&String> = m.totals.keys().chain(self.options.iter()).collect();
        let mut diffs = Vec::new();
        for k in keys {
            let (rows, claimed) = (
                self.totals.get(k).copied().unwrap_or(0),
                m.totals.get(k).copied().unwrap_or(0),
            );
            if rows != claimed {
                diffs.push(format!("{k}: rows {rows}, manifest {claimed}"));
            }
            if !self.options.contains(k) {
                problems.push(format!(
                    "the manifest counts {k:?}, which is not an option of the election"
                ));
            }
        }
        if !diffs.is_empty() {
            problems.push(format!(
                "the rows' counts differ from the manifest's totals: {}",
                diffs.join(", ")
            ));
        }
        // Summed wide: a hostile manifest's counts may overflow a u64.
        let sum: u128 = m.totals.values().map(|&v| u128::from(v)).sum();
        if sum != u128::from(m.total) {
            problems.push(format!(
                "the manifest's totals add up to {sum}, its total says {}",
                m.total
            ));
        }
        let shown: Vec<String> = self
            .options
            .iter()
            .map(|o| format!("{o} {}", self.totals.get(o).copied().unwrap_or(0)))
            .collect();
        Check::judge(
            "totals",
            problems,
            format!("recomputed from the rows: {}", shown.join(", ")),
        )
    }

    /// No row's time is finer than the minute (a finer one helps link rows to voters).
    fn times_to_the_minute(&self) -> Check {
        if self.fine_times.0 == 0 {
            Check::ok(
                "times to the minute",
                "no row carries a time finer than the minute it was received in",
            )
        } else {
            Check::fail(
                "times to the minute",
                with_examples(
                    self.fine_times.0,
                    "row(s) whose received_at_ms is finer than the minute, which helps link rows to voters",
                    &self.fine_times.1,
                ),
            )
        }
    }
}

/// The root of the rows' leaf hashes, in file order, is the manifest's.
fn merkle_root(m: &Manifest, root_bytes: votes_core::merkle::Hash, size: u64) -> Check {
    let root = hex::encode(root_bytes);
    if root == m.merkle.root && size == m.merkle.tree_size {
        Check::ok("merkle root", format!("{root} over {size} leaves"))
    } else {
        Check::fail(
            "merkle root",
            format!(
                "the rows give {root} over {size} leaves, the manifest says {} over {}",
                m.merkle.root, m.merkle.tree_size
            ),
        )
    }
}

fn note(slot: &mut (u64, Vec<String>), describe: impl FnOnce() -> String) {
    slot.0 += 1;
    if slot.1.len() < EXAMPLES {
        slot.1.push(describe());
    }
}

/// The manifest's result against the official one it records.
pub fn check_official(m: &Manifest) -> Check {
    let o = &m.official;
    let mut problems = Vec::new();
    let keys: BTreeSet<&String> = m.totals.keys().chain(o.totals.keys()).collect();
    let diffs: Vec<String> = keys
        .into_iter()
        .filter_map(|k| {
            let (ours, theirs) = (
                m.totals.get(k).copied().unwrap_or(0),
                o.totals.get(k).copied().unwrap_or(0),
            );
            (ours != theirs).then(|| format!("{k}: manifest {ours}, official {theirs}"))
        })
        .collect();
    if !diffs.is_empty() {
        problems.push(format!("totals differ: {}", diffs.join(", ")));
    }
    if m.total != o.total {
        problems.push(format!(
            "total differs: manifest {}, official {}",
            m.total, o.total
        ));
    }
    let official_sum: u128 = o.totals.values().map(|&v| u128::from(v)).sum();
    if official_sum != u128::from(o.total) {
        problems.push(format!(
            "the official totals add up to {official_sum}, its total says {}",
            o.total
        ));
    }
    match &o.merkle_root {
        Some(root) if *root != m.merkle.root => problems.push(format!(
            "Merkle root differs: manifest {}, official {root}",
            m.merkle.root
        )),
        _ => {}
    }
    match o.merkle_tree_size {
        Some(size) if size != m.merkle.tree_size => problems.push(format!(
            "tree size differs: manifest {}, official {size}",
            m.merkle.tree_size
        )),
        _ => {}
    }
    let what = if o.merkle_root.is_some() {
        "totals, total and Merkle root"
    } else {
        "totals and total (it records no Merkle root)"
    };
    Check::judge(
        "official result",
        problems,
        format!(
            "{what} match the official result decided at {} ({})",
            crate::manifest::rfc3339_utc(o.decided_at_ms),
            o.source
        ),
    )
}

/// The close frontier: every partition closed, before the last vote it counts nowhere, where
/// the official result says, and no vote committed past it.
pub fn check_frontier(m: &Manifest) -> Check {
    let mut problems = Vec::new();
    let mut ours = BTreeMap::new();
    for p in &m.partitions {
        match (p.frontier, p.last_offset) {
            (None, _) => problems.push(format!(
                "partition {} has no close frontier (a final election is closed in every partition)",
                p.partition
            )),
            (Some(f), Some(last)) if last >= f => problems.push(format!(
                "partition {} counts a vote at offset {last}, at or past its frontier {f}",
                p.partition
            )),
            (Some(f), _) => {
                ours.insert(p.partition, f);
            }
        }
    }
    if problems.is_empty() && ours != m.official.frontier {
        let show = |f: &BTreeMap<u32, u64>| {
            f.iter()
                .map(|(p, o)| format!("{p}:{o}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        problems.push(format!(
            "the log's frontiers are [{}], the official result's [{}]",
            show(&ours),
            show(&m.official.frontier)
        ));
    }
    if m.votes_past_frontier > 0 {
        problems.push(format!(
            "{} vote(s) of the election were committed after their partition's frontier and not counted: the system broke its close barrier",
            m.votes_past_frontier
        ));
    }
    Check::judge(
        "close frontier",
        problems,
        format!(
            "all {} partitions closed at the official result's frontier, no vote committed past it",
            m.partitions.len()
        ),
    )
}

/// SHA-256 (hex) and size of a file, streamed.
pub fn file_sha256(path: &Path) -> std::io::Result<(String, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok((hex::encode(ctx.finish()), bytes))
}

/// The root given by hand against the manifest's and, when read, the rows'.
pub fn check_given_root(given: &[u8; 32], m: &Manifest, rows: Option<&RowReport>) -> Check {
    let given = hex::encode(given);
    let mut problems = Vec::new();
    if m.merkle.root != given {
        problems.push(format!("the manifest's root is {}", m.merkle.root));
    }
    match rows {
        Some(r) if hex::encode(r.root) != given => {
            problems.push(format!("the rows give {}", hex::encode(r.root)));
        }
        Some(_) => {}
        None => problems.push("the rows were not read".to_owned()),
    }
    if problems.is_empty() {
        Check::ok(
            "given root",
            format!("{given}, given by hand, is the manifest's root and the rows'"),
        )
    } else {
        Check::fail(
            "given root",
            format!("{given} was given, but {}", problems.join(" and ")),
        )
    }
}

/// Runs every check of the export in `dir`, handing each line to `print` as it is decided;
/// returns the checks.
pub fn verify_export(
    dir: &Path,
    opts: &VerifyOptions,
    mut print: impl FnMut(&Check),
) -> Result<Vec<Check>, VerifyError> {
    let mut checks = Vec::new();
    let mut emit = |c: Check, checks: &mut Vec<Check>| {
        print(&c);
        checks.push(c);
    };
    if !dir.is_dir() {
        return Err(VerifyError::NotADirectory(dir.to_owned()));
    }
    let manifest_bytes = read_bounded(&dir.join(MANIFEST_FILE), MANIFEST_MAX_BYTES);
    let (check, manifest) = manifest_check(&manifest_bytes);
    emit(check, &mut checks);
    // The signature covers the bytes, so it is checked even when they do not parse.
    emit(
        signature_check(dir, &opts.signer, &manifest_bytes, manifest.as_ref()),
        &mut checks,
    );
    let Some((manifest, election)) = manifest else {
        return Ok(checks);
    };
    let votes_path = dir.join(VOTES_FILE);
    let (check, file_is_described) = file_hash_check(&votes_path, &manifest);
    emit(check, &mut checks);
    let report = if file_is_described || opts.diagnose {
        match read_rows(&votes_path, &manifest, election) {
            Ok(r) => {
                for c in &r.checks {
                    emit(c.clone(), &mut checks);
                }
                Some(r)
            }
            Err(e) => {
                emit(
                    Check::fail(
                        "rows",
                        format!("{VOTES_FILE} cannot be read, no row was checked: {e}"),
                    ),
                    &mut checks,
                );
                None
            }
        }
    } else {
        emit(
            Check::skip(
                "rows",
                format!(
                    "not read: {VOTES_FILE} is not the file the manifest describes (--diagnose reads it anyway to name what changed)"
                ),
            ),
            &mut checks,
        );
        None
    };
    emit(check_official(&manifest), &mut checks);
    emit(check_frontier(&manifest), &mut checks);
    if let Some(given) = &opts.root {
        emit(
            check_given_root(given, &manifest, report.as_ref()),
            &mut checks,
        );
    }
    Ok(checks)
}

/// The manifest parsed, with its election id checked, or why not.
fn manifest_check(
    bytes: &Result<Vec<u8>, std::io::Error>,
) -> (Check, Option<(Manifest, ElectionId)>) {
    let unreadable = |e: &dyn std::fmt::Display| {
        Check::fail("manifest", format!("{MANIFEST_FILE} cannot be read: {e}"))
    };
    let m = match bytes {
        Err(e) => return (unreadable(e), None),
        Ok(bytes) => match Manifest::from_bytes(bytes) {
            Err(e) => return (unreadable(&e), None),
            Ok(m) => m,
        },
    };
    match ElectionId::new(m.election.id.as_str()) {
        Ok(id) => (
            Check::ok(
                "manifest",
                format!(
                    "format version {}, election {} ({:?}), created {}",
                    m.format_version, id, m.election.title, m.created_at
                ),
            ),
            Some((m, id)),
        ),
        Err(e) => (
            Check::fail("manifest", format!("election id {:?}: {e}", m.election.id)),
            None,
        ),
    }
}

/// The Ed25519 signature of the manifest's bytes by the key the auditor gave.
fn signature_check(
    dir: &Path,
    signer: &Signer,
    manifest_bytes: &Result<Vec<u8>, std::io::Error>,
    manifest: Option<&(Manifest, ElectionId)>,
) -> Check {
    let (key, bytes) = match (signer, manifest_bytes) {
        (Signer::NotChecked, _) => {
            return Check::skip("signature", "not checked (--no-signature)");
        }
        (Signer::Missing, _) => {
            return Check::fail(
                "signature",
                "not checked: no --pubkey given (pass the exporter's public key, or --no-signature to skip this check)",
            );
        }
        (Signer::Key(_), Err(_)) => {
            return Check::fail("signature", format!("{MANIFEST_FILE} cannot be read"));
        }
        (Signer::Key(key), Ok(bytes)) => (key, bytes),
    };
    let sig = match read_bounded(&dir.join(SIGNATURE_FILE), SIGNATURE_MAX_BYTES) {
        Err(e) => {
            return Check::fail("signature", format!("{SIGNATURE_FILE} cannot be read: {e}"));
        }
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
    };
    if let Err(e) = key.verify_text(bytes, &sig) {
        return Check::fail("signature", e);
    }
    let mut detail = format!(
        "Ed25519 over {MANIFEST_FILE} by the key {}",
        key.fingerprint()
    );
    if let Some((m, _)) = manifest
        && m.signing_key_sha256 != key.fingerprint()
    {
        detail.push_str(&format!(
            " (the manifest names {} as its signer)",
            m.signing_key_sha256
        ));
    }
    Check::ok("signature", detail)
}

/// The votes file's SHA-256 and size against the manifest's; `true` when it is the file the
/// manifest describes.
fn file_hash_check(votes_path: &Path, manifest: &Manifest) -> (Check, bool) {
    let (sha, bytes) = match file_sha256(votes_path) {
        Err(e) => {
            return (
                Check::fail("file hash", format!("{VOTES_FILE} cannot be read: {e}")),
                false,
            );
        }
        Ok(x) => x,
    };
    let mut problems = Vec::new();
    if sha != manifest.votes_file.sha256 {
        problems.push(format!(
            "SHA-256 of {VOTES_FILE} is {sha}, the manifest says {}",
            manifest.votes_file.sha256
        ));
    }
    if bytes != manifest.votes_file.bytes {
        problems.push(format!(
            "{VOTES_FILE} has {bytes} bytes, the manifest says {}",
            manifest.votes_file.bytes
        ));
    }
    let described = problems.is_empty();
    let check = Check::judge(
        "file hash",
        problems,
        format!("SHA-256 {sha} of {VOTES_FILE} ({bytes} bytes)"),
    );
    (check, described)
}

/// Every row of the votes file through the [`RowChecker`].
fn read_rows(
    votes_path: &Path,
    manifest: &Manifest,
    election: ElectionId,
) -> Result<RowReport, TableError> {
    let reader = VotesReader::open(votes_path)?;
    let mut checker = RowChecker::new(manifest, election, reader.num_rows());
    for g in 0..reader.num_row_groups() {
        for row in reader.row_group(g)? {
            checker.push(&row);
        }
    }
    Ok(checker.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{MerkleInfo, OptionInfo, PartitionRange};
    use votes_core::VoterId;

    const KEY: &[u8] = b"unit-test audit key";

    fn rows(election: &ElectionId) -> Vec<Row> {
        // 2 partitions; partition 0 offsets 10, 12, 14; partition 1 offsets 3, 4.
        let at = [(0u32, 10u64), (0, 12), (0, 14), (1, 3), (1, 4)];
        at.iter()
            .enumerate()
            .map(|(i, (partition, offset))| {
                let pseudonym = votes_core::pseudonym(KEY, election, VoterId(i as u64));
                let option = ["a", "b"][i % 2];
                let leaf = Leaf {
                    election: election.clone(),
                    pseudonym,
                    option: OptionId::new(option).unwrap(),
                    partition: *partition,
                    offset: *offset,
                    nonce: [i as u8; 16],
                };
                Row {
                    pseudonym,
                    option: option.into(),
                    partition: *partition,
                    offset: *offset,
                    received_at_ms: (1000 + i as u64) * RECEIVED_AT_RESOLUTION_MS,
                    nonce: leaf.nonce,
                    leaf_hash: leaf.leaf_hash(),
                }
            })
            .collect()
    }

    fn manifest_for(election: &ElectionId, rows: &[Row]) -> Manifest {
        let mut m = crate::manifest::tests::sample();
        m.election.id = election.to_string();
        m.election.options = ["a", "b"]
            .iter()
            .map(|o| OptionInfo {
                id: (*o).into(),
                label: o.to_uppercase(),
            })
            .collect();
        m.votes_file.rows = rows.len() as u64;
        m.total = rows.len() as u64;
        m.totals = [("a".to_owned(), 3), ("b".to_owned(), 2)].into();
        m.partitions = vec![
            PartitionRange {
                partition: 0,
                first_offset: Some(10),
                last_offset: Some(14),
                votes: 3,
                frontier: Some(20),
            },
            PartitionRange {
                partition: 1,
                first_offset: Some(3),
                last_offset: Some(4),
                votes: 2,
                frontier: Some(9),
            },
            PartitionRange {
                partition: 2,
                first_offset: None,
                last_offset: None,
                votes: 0,
                frontier: Some(0),
            },
        ];
        let mut b = MerkleBuilder::new();
        b.extend(rows.iter().map(|r| r.leaf_hash));
        let (root, size) = b.finish();
        m.merkle = MerkleInfo {
            root: hex::encode(root),
            tree_size: size,
        };
        m.official.totals = m.totals.clone();
        m.official.total = m.total;
        m.official.merkle_root = Some(m.merkle.root.clone());
        m.official.merkle_tree_size = Some(size);
        m.official.frontier = [(0, 20), (1, 9), (2, 0)].into();
        m
    }

    /// The rows of the "unit" election and the manifest that describes them.
    fn unit_export() -> (Vec<Row>, Manifest) {
        let rows = unit_rows();
        let m = manifest_for(&unit(), &rows);
        (rows, m)
    }

    fn unit() -> ElectionId {
        ElectionId::new("unit").unwrap()
    }

    fn unit_rows() -> Vec<Row> {
        rows(&unit())
    }

    fn run_checks(m: &Manifest, rows: &[Row]) -> Vec<Check> {
        let id = ElectionId::new(m.election.id.as_str()).unwrap();
        let mut c = RowChecker::new(m, id, rows.len() as u64);
        for r in rows {
            c.push(r);
        }
        let mut checks = c.finish().checks;
        checks.push(check_official(m));
        checks.push(check_frontier(m));
        checks
    }

    fn failures(checks: &[Check]) -> Vec<String> {
        checks
            .iter()
            .filter(|c| c.failed())
            .map(|c| c.to_string())
            .collect()
    }

    #[test]
    fn a_clean_export_passes_every_check() {
        let (rows, m) = unit_export();
        let checks = run_checks(&m, &rows);
        assert_eq!(failures(&checks), Vec::<String>::new());
        assert_eq!(checks.len(), 9);
        assert!(checks.iter().all(|c| c.to_string().starts_with("ok   ")));
    }

    #[test]
    fn a_vote_past_the_close_frontier_or_another_frontier_fails() {
        let (rows, m) = unit_export();

        // A row at its partition's frontier: counted though the owner had closed.
        let mut early = m.clone();
        early.partitions[1].frontier = Some(4);
        early.official.frontier.insert(1, 4);
        assert_eq!(
            failures(&run_checks(&early, &rows)),
            vec![
                "FAIL order and ranges: 1 row(s) out of (partition, offset) order or range (first: row 4 (partition 1, offset 4) is at or past its partition's close frontier 4)",
                "FAIL close frontier: partition 1 counts a vote at offset 4, at or past its frontier 4",
            ]
        );

        // The log's frontier is not the one the official result counted to.
        let mut moved = m.clone();
        moved.official.frontier.insert(2, 7);
        assert_eq!(
            failures(&run_checks(&moved, &rows)),
            vec![
                "FAIL close frontier: the log's frontiers are [0:20 1:9 2:0], the official result's [0:20 1:9 2:7]"
            ]
        );

        // A partition never closed, and votes committed past the barrier.
        let mut open = m.clone();
        open.partitions[2].frontier = None;
        open.votes_past_frontier = 2;
        assert_eq!(
            failures(&run_checks(&open, &rows)),
            vec![
                "FAIL close frontier: partition 2 has no close frontier (a final election is closed in every partition); 2 vote(s) of the election were committed after their partition's frontier and not counted: the system broke its close barrier"
            ]
        );
    }

    #[test]
    fn a_changed_option_fails_the_leaf_hash_and_the_totals() {
        let (mut rows, m) = unit_export();
        rows[1].option = "a".into();
        let f = failures(&run_checks(&m, &rows));
        assert_eq!(f.len(), 2, "{f:#?}");
        assert!(f[0].starts_with("FAIL leaf hashes: 1 row(s)"), "{f:#?}");
        assert!(f[0].contains("row 1 (partition 0, offset 12)"), "{f:#?}");
        assert!(f[1].contains("a: rows 4, manifest 3"), "{f:#?}");
    }

    #[test]
    fn a_deleted_or_repeated_row_is_named() {
        let (all, m) = unit_export();
        let mut deleted = all.clone();
        deleted.remove(2);
        let f = failures(&run_checks(&m, &deleted)).join("\n");
        assert!(f.contains("FAIL row count: votes.parquet holds 4 rows, the manifest says 5"));
        assert!(f.contains("partition 0: the file has 2 rows at offsets 10..=12, the manifest says 3 rows at offsets 10..=14"), "{f}");
        assert!(f.contains("FAIL merkle root"), "{f}");

        let mut repeated = all.clone();
        repeated.insert(2, all[1].clone());
        let f = failures(&run_checks(&m, &repeated)).join("\n");
        assert!(
            f.contains("FAIL one row per pseudonym: 1 pseudonym(s) appear in more than one row"),
            "{f}"
        );
        assert!(
            f.contains("row 2 (partition 0, offset 12) does not follow (partition 0, offset 12)"),
            "{f}"
        );
        assert!(
            !f.contains("leaf hashes"),
            "the repeated row itself is intact: {f}"
        );
    }

    #[test]
    fn an_edited_manifest_disagrees_with_the_rows_and_the_official_result() {
        let (rows, mut m) = unit_export();
        m.totals.insert("a".into(), 4);
        m.totals.insert("b".into(), 1);
        let f = failures(&run_checks(&m, &rows)).join("\n");
        assert!(f.contains("FAIL totals: the rows' counts differ from the manifest's totals: a: rows 3, manifest 4, b: rows 2, manifest 1"), "{f}");
        assert!(
            f.contains("FAIL official result: totals differ: a: manifest 4, official 3"),
            "{f}"
        );

        let mut m = unit_export().1;
        m.official.merkle_root = Some("00".repeat(32));
        let f = failures(&run_checks(&m, &rows)).join("\n");
        assert!(
            f.contains("FAIL official result: Merkle root differs"),
            "{f}"
        );
        m.official.merkle_root = None;
        m.official.merkle_tree_size = None;
        let checks = run_checks(&m, &rows);
        assert!(failures(&checks).is_empty());
        assert!(
            checks
                .iter()
                .any(|c| c.to_string().contains("records no Merkle root"))
        );
    }

    #[test]
    fn rows_outside_the_ranges_or_options_are_named() {
        let (mut rows, m) = unit_export();
        rows[4].partition = 2;
        rows[3].option = "zz".into();
        let f = failures(&run_checks(&m, &rows)).join("\n");
        assert!(f.contains("row 4 (partition 2, offset 4) is in partition 2, which the manifest says holds no vote"), "{f}");
        assert!(
            f.contains("1 row(s) for \"zz\", which is not an option of the election"),
            "{f}"
        );
    }

    /// An export of `rows` in a fresh directory: votes.parquet as the exporter writes it, and a
    /// manifest that describes it (unsigned: these tests use `Signer::NotChecked`).
    fn export(name: &str, rows: &[Row]) -> (PathBuf, Manifest) {
        let dir = std::env::temp_dir().join(format!("votes-verify-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        write_votes(&dir, rows);
        let mut m = manifest_for(&unit(), rows);
        describe(&dir, &mut m);
        (dir, m)
    }

    /// Writes `rows` as the votes file of `dir`, as the exporter does.
    fn write_votes(dir: &Path, rows: &[Row]) {
        let mut w = crate::table::VotesWriter::new(
            std::fs::File::create(dir.join(VOTES_FILE)).unwrap(),
            "unit",
        )
        .unwrap();
        for r in rows {
            w.push_row(r).unwrap();
        }
        w.finish().unwrap();
    }

    /// Points the manifest at the votes file as it now is, and writes it.
    fn describe(dir: &Path, m: &mut Manifest) {
        let (sha, bytes) = file_sha256(&dir.join(VOTES_FILE)).unwrap();
        m.votes_file.sha256 = sha;
        m.votes_file.bytes = bytes;
        std::fs::write(dir.join(MANIFEST_FILE), m.to_bytes()).unwrap();
    }

    fn unsigned() -> VerifyOptions {
        VerifyOptions {
            signer: Signer::NotChecked,
            root: None,
            diagnose: false,
        }
    }

    fn lines(dir: &Path, opts: &VerifyOptions) -> Vec<String> {
        verify_export(dir, opts, |_| {})
            .unwrap()
            .iter()
            .map(|c| c.to_string())
            .collect()
    }

    fn fails(lines: &[String]) -> Vec<&String> {
        lines.iter().filter(|l| l.starts_with("FAIL")).collect()
    }

    #[test]
    fn an_export_written_by_the_library_verifies_and_a_given_root_is_checked() {
        let (dir, m) = export("clean", &unit_rows());
        let l = lines(&dir, &unsigned());
        assert!(fails(&l).is_empty(), "{l:#?}");
        let mut root = [0u8; 32];
        hex::decode_to_slice(&m.merkle.root, &mut root).unwrap();
        let opts = VerifyOptions {
            root: Some(root),
            ..unsigned()
        };
        let l = lines(&dir, &opts);
        assert!(l.last().unwrap().starts_with("ok   given root: "), "{l:#?}");
        let opts = VerifyOptions {
            root: Some([7; 32]),
            ..unsigned()
        };
        let l = lines(&dir, &opts);
        assert_eq!(
            fails(&l),
            [&format!(
                "FAIL given root: {} was given, but the manifest's root is {} and the rows give {}",
                "07".repeat(32),
                m.merkle.root,
                m.merkle.root
            )]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_that_fails_its_hash_is_not_read_unless_diagnosed() {
        let rows = unit_rows();
        let (dir, _) = export("hash", &rows);
        let mut changed = rows.clone();
        changed[1].option = "a".into();
        write_votes(&dir, &changed);
        let l = lines(&dir, &unsigned());
        let f = fails(&l);
        assert_eq!(f.len(), 1, "{l:#?}");
        assert!(f[0].starts_with("FAIL file hash: SHA-256 of votes.parquet is"));
        assert!(
            l.iter().any(|x| x.starts_with(
                "skip rows: not read: votes.parquet is not the file the manifest describes"
            )),
            "{l:#?}"
        );
        let diagnosed = VerifyOptions {
            diagnose: true,
            ..unsigned()
        };
        let l = lines(&dir, &diagnosed);
        assert!(
            l.iter()
                .any(|x| x.starts_with("FAIL leaf hashes: 1 row(s)")),
            "{l:#?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn hostile_files_fail_with_a_precise_line_and_no_panic() {
        let rows = unit_rows();
        let (dir, m) = export("hostile", &rows);
        let file = std::fs::read(dir.join(VOTES_FILE)).unwrap();
        let len = file.len();

        // A footer announcing more rows than the file holds, with a manifest that agrees (no
        // signature checked): refused before any row is read or any memory is sized from it.
        let mut hostile = m.clone();
        hostile.votes_file.rows = 65_536;
        std::fs::write(dir.join(VOTES_FILE), crate::table::refooter(&file, 65_536)).unwrap();
        describe(&dir, &mut hostile);
        let l = lines(&dir, &unsigned());
        assert_eq!(
            fails(&l)[0],
            &format!(
                "FAIL rows: votes.parquet cannot be read, no row was checked: the footer announces 65536 rows, more than a file of {} bytes holds (64 bytes of random columns per row)",
                std::fs::metadata(dir.join(VOTES_FILE)).unwrap().len()
            ),
            "{l:#?}"
        );

        // A truncated file.
        let mut hostile = m.clone();
        std::fs::write(dir.join(VOTES_FILE), &file[..len / 2]).unwrap();
        describe(&dir, &mut hostile);
        let l = lines(&dir, &unsigned());
        assert!(
            fails(&l)[0].starts_with("FAIL rows: votes.parquet cannot be read, no row was checked: not a readable Parquet file: "),
            "{l:#?}"
        );

        // A footer claiming compressed columns: decompressing would size a buffer from each
        // page's say-so, so no page is read.
        let mut hostile = m.clone();
        std::fs::write(
            dir.join(VOTES_FILE),
            crate::table::claim_compression(&file, parquet::basic::Compression::SNAPPY),
        )
        .unwrap();
        describe(&dir, &mut hostile);
        let l = lines(&dir, &unsigned());
        assert_eq!(
            fails(&l)[0],
            "FAIL rows: votes.parquet cannot be read, no row was checked: row group 0, column \"pseudonym\": compressed with SNAPPY (an exporter writes every column uncompressed)",
            "{l:#?}"
        );

        // A manifest nested deeper than any manifest is: refused at its first level (the
        // strict schema never descends into what it does not expect).
        std::fs::write(dir.join(VOTES_FILE), &file).unwrap();
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        std::fs::write(dir.join(MANIFEST_FILE), deep).unwrap();
        let l = lines(&dir, &unsigned());
        assert!(
            l[0].starts_with("FAIL manifest: manifest.json cannot be read: invalid type: sequence, expected a string at line 1 column 1"),
            "{l:#?}"
        );

        // A manifest larger than any manifest is: not read at all.
        let f = std::fs::File::create(dir.join(MANIFEST_FILE)).unwrap();
        f.set_len(MANIFEST_MAX_BYTES + 1).unwrap();
        drop(f);
        let l = lines(&dir, &unsigned());
        assert_eq!(
            l[0],
            format!(
                "FAIL manifest: manifest.json cannot be read: {} bytes, more than the {MANIFEST_MAX_BYTES} such a file may hold",
                MANIFEST_MAX_BYTES + 1
            )
        );

        // Counts that overflow when added.
        let mut hostile = m.clone();
        hostile.totals = [("a".to_owned(), u64::MAX), ("b".to_owned(), 2)].into();
        hostile.official.totals = hostile.totals.clone();
        describe(&dir, &mut hostile);
        let l = lines(&dir, &unsigned());
        assert!(
            l.iter()
                .any(|x| x.contains("the manifest's totals add up to 18446744073709551617")),
            "{l:#?}"
        );

        // A signature file far larger than a signature.
        let key = PublicKey([1; 32]);
        let f = std::fs::File::create(dir.join(SIGNATURE_FILE)).unwrap();
        f.set_len(1 << 30).unwrap();
        drop(f);
        let opts = VerifyOptions {
            signer: Signer::Key(key),
            ..unsigned()
        };
        let l = lines(&dir, &opts);
        assert!(
            l[1].starts_with(
                "FAIL signature: manifest.sig cannot be read: 1073741824 bytes, more than the 4096"
            ),
            "{l:#?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn times_finer_than_the_minute_are_named() {
        let (mut rows, m) = unit_export();
        rows[2].received_at_ms += 1;
        let f = failures(&run_checks(&m, &rows)).join("\n");
        assert!(
            f.contains("FAIL times to the minute: 1 row(s) whose received_at_ms is finer than the minute, which helps link rows to voters (first: row 2 (partition 0, offset 14))"),
            "{f}"
        );
    }
}

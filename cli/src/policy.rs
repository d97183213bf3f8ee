//! `cartdb policy`: run a policy component outside the gateway.
//!
//! - `place` prints the devices for each placement key.
//! - `verify` replays conformance vectors and ends with the line `N passed, M failed`: per
//!   placement key (`x,replicas,reweights,devices` rows, as in `shared/crush/*-vectors.csv`)
//!   or per placement group (`pg_num,pool,pg,size,out,devices` rows, made by Ceph's
//!   `osdmaptool`, as in `shared/crush/*-pg-vectors.csv`). A PG row is checked through the
//!   host's PG arithmetic (`cartdb_model::pg`): the policy is asked to place the PG's `pps`.
//! - `verify-merge` checks a merge policy against the merge laws
//!   (`cartdb_gateway::policy::merge_laws`): one line per law, `N passed, M failed`, then
//!   the smallest counterexample of each broken law.
//!
//! Reweights are written `DEVICE=W` with W a fraction of 1.0 (`0`, `0.25`, `1`), turned
//! into 16.16 fixed point as `(W * 65536) as u32`, exactly like the vector files and
//! crushtool's `--weight`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use cartdb_core::pg::Pool;
use cartdb_gateway::policy::merge_laws::{self, Outcome};
use cartdb_gateway::policy::{MergePolicy, PlacementPolicy, Placer, PolicyEngine};
use clap::{Args, Subcommand};

/// Mismatches printed in full by `verify`; later ones are only counted.
const SHOWN_MISMATCHES: usize = 10;
/// `verify` reports progress on stderr every this many rows.
const PROGRESS_EVERY: usize = 10_000;

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Print the devices the policy chooses for each placement key X.
    ///
    /// Prints one line per X: `X: D1 D2 D3`, devices primary first (the line has only
    /// `X:` when the policy chooses none). With `--pg-num`, X is mapped as cartdb maps an
    /// item: to its placement group, whose placement seed (pps) the policy places:
    /// `X: pg P pps S: D1 D2 D3`.
    Place(PlaceArgs),
    /// Check the policy against conformance vectors; exit non-zero on any mismatch.
    ///
    /// The vectors file is CSV. With the header `x,replicas,reweights,devices` each row is
    /// one placement key: reweights are `DEV=W;DEV=W` (W a fraction, empty = all in),
    /// devices `A|B|C`, primary first. With the header `pg_num,pool,pg,size,out,devices`
    /// each row is one placement group (Ceph's `osdmaptool --test-map-pgs-dump`): the
    /// policy places the PG's placement seed (pps, hashpspool) with `size` replicas and
    /// the device `out` (if any) reweighted to 0. Prints the first mismatches, then
    /// exactly `N passed, M failed`.
    Verify(VerifyArgs),
    /// Check a merge policy against the merge laws; exit non-zero if it breaks any.
    ///
    /// Runs the policy on random replica histories (retried operations, colliding
    /// versions, replicas that missed writes, compacted bases) and checks that merging is
    /// commutative, associative and idempotent and drops no acknowledged operation.
    /// Prints one line per law, then exactly `N passed, M failed`, then the smallest
    /// counterexample found for each broken law. The same seed gives the same cases.
    VerifyMerge(VerifyMergeArgs),
    /// Deploy a policy to the running cluster: store it in ZooKeeper by sha256, verify it on
    /// every gateway, then activate it at one new map epoch (a placement policy's moved PGs
    /// backfill). If any gateway refuses, nothing changes and each refusal is printed.
    Deploy(crate::policy_deploy::DeployArgs),
    /// Return a policy of the running cluster to the version active before the current
    /// one (verified on every gateway first, like a deploy).
    Rollback(crate::policy_deploy::RollbackArgs),
    /// The active policies, what each gateway runs, and the last activations.
    History(crate::policy_deploy::HistoryArgs),
}

/// What every policy subcommand loads.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// The placement policy component (.wasm).
    #[arg(long, value_name = "P.wasm")]
    policy: PathBuf,
    /// The CRUSH map (python-crush JSON).
    #[arg(long, value_name = "M.json")]
    map: PathBuf,
    /// The rule to use; default: the map's only rule.
    #[arg(long, value_name = "NAME")]
    rule: Option<String>,
}

#[derive(Debug, Args)]
pub struct PlaceArgs {
    #[command(flatten)]
    policy: PolicyArgs,
    /// Number of replicas to place.
    #[arg(long, value_name = "N")]
    replicas: u32,
    /// Reweight a device: DEV=W with W a fraction of 1.0 (0 = out). Repeatable.
    #[arg(long = "reweight", value_name = "DEV=W", value_parser = parse_reweight)]
    reweights: Vec<(u32, u32)>,
    /// Map each X through the placement groups of a pool with this many PGs.
    #[arg(long, value_name = "N")]
    pg_num: Option<u32>,
    /// The pool id of the placement seeds (with --pg-num).
    #[arg(long, value_name = "ID", default_value_t = 1, requires = "pg_num")]
    pool: u32,
    /// Placement keys (u32), e.g. 72916709 for user1/pork.
    #[arg(value_name = "X", required = true)]
    xs: Vec<u32>,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    policy: PolicyArgs,
    /// The conformance vectors (CSV).
    #[arg(long, value_name = "V.csv")]
    vectors: PathBuf,
}

#[derive(Debug, Args)]
pub struct VerifyMergeArgs {
    /// The merge policy component (.wasm, world cartdb:policy/merge-policy).
    #[arg(long, value_name = "P.wasm")]
    policy: PathBuf,
    /// Random cases per law.
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    cases: u32,
    /// Seed of the random cases.
    #[arg(long, value_name = "S", default_value_t = 0)]
    seed: u64,
}

/// Runs a `policy` subcommand.
///
/// # Errors
/// An unloadable policy or map, a policy error while placing, or a malformed vectors file.
pub fn run(command: PolicyCommand) -> Result<ExitCode> {
    match command {
        PolicyCommand::Place(args) => place(&args),
        PolicyCommand::Verify(args) => verify(&args),
        PolicyCommand::VerifyMerge(args) => verify_merge(&args),
        PolicyCommand::Deploy(args) => crate::policy_deploy::deploy(&args),
        PolicyCommand::Rollback(args) => crate::policy_deploy::rollback(&args),
        PolicyCommand::History(args) => crate::policy_deploy::history(&args),
    }
}

/// `cartdb policy verify` of `policy` with `map` against `vectors` (for a deploy's
/// `--vectors`).
///
/// # Errors
/// As `verify`.
pub fn verify_vectors(
    policy: &std::path::Path,
    map: &std::path::Path,
    vectors: &std::path::Path,
) -> Result<ExitCode> {
    verify(&VerifyArgs {
        policy: PolicyArgs {
            policy: policy.to_owned(),
            map: map.to_owned(),
            rule: None,
        },
        vectors: vectors.to_owned(),
    })
}

/// The loaded policy plus the map it places with.
struct Session {
    policy: PlacementPolicy,
    map_json: String,
    rule: Option<String>,
}

impl Session {
    fn open(args: &PolicyArgs) -> Result<Self> {
        let engine = PolicyEngine::new()?;
        let policy = PlacementPolicy::load(&engine, &args.policy)?;
        let map_json = std::fs::read_to_string(&args.map)
            .with_context(|| format!("cannot read the map {}", args.map.display()))?;
        Ok(Self {
            policy,
            map_json,
            rule: args.rule.clone(),
        })
    }

    fn placer(&self, reweights: &[(u32, u32)]) -> Result<Placer> {
        Ok(self
            .policy
            .placer(&self.map_json, self.rule.as_deref(), reweights)?)
    }
}

fn place(args: &PlaceArgs) -> Result<ExitCode> {
    let pool = args
        .pg_num
        .map(|pg_num| Pool::new(args.pool, pg_num))
        .transpose()
        .map_err(|e| anyhow::anyhow!("--pg-num: {e}"))?;
    let session = Session::open(&args.policy)?;
    let mut placer = session.placer(&args.reweights)?;
    for &x in &args.xs {
        let (label, input) = match pool {
            Some(pool) => {
                let pg = pool.pg_of(x);
                (format!("{x}: pg {pg} pps {}", pool.pps(pg)), pool.pps(pg))
            }
            None => (x.to_string(), x),
        };
        let devices = placer.place(input, args.replicas)?;
        println!(
            "{label}:{}",
            devices.iter().map(|d| format!(" {d}")).collect::<String>()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Which kind of vectors a file holds, from its header line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VectorFormat {
    /// `x,replicas,reweights,devices`: one placement key per row.
    Keys,
    /// `pg_num,pool,pg,size,out,devices`: one placement group per row.
    Pgs,
}

const KEYS_HEADER: &str = "x,replicas,reweights,devices";
const PGS_HEADER: &str = "pg_num,pool,pg,size,out,devices";

impl VectorFormat {
    fn of_header(line: &str) -> Option<Self> {
        match line.trim_end_matches('\r').trim() {
            KEYS_HEADER => Some(Self::Keys),
            PGS_HEADER => Some(Self::Pgs),
            _ => None,
        }
    }

    fn parse(self, line: &str) -> Result<Row> {
        match self {
            Self::Keys => parse_row(line),
            Self::Pgs => parse_pg_row(line),
        }
    }
}

/// One parsed vectors row.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    /// For a PG row, `pg_num=.. pool=.. pg=..`; the placement key is then the PG's pps.
    pg: Option<String>,
    x: u32,
    replicas: u32,
    /// The reweights field as written: rows with the same text share a placer.
    reweights_text: String,
    reweights: Vec<(u32, u32)>,
    devices: Vec<u32>,
}

fn verify(args: &VerifyArgs) -> Result<ExitCode> {
    let session = Session::open(&args.policy)?;
    let path = &args.vectors;
    let file =
        File::open(path).with_context(|| format!("cannot read the vectors {}", path.display()))?;
    let mut placers: HashMap<String, Placer> = HashMap::new();
    let (mut passed, mut failed) = (0_usize, 0_usize);
    let started = Instant::now();
    let mut format = None;
    for (index, line) in BufReader::new(file).lines().enumerate() {
        let number = index + 1;
        let line = line.with_context(|| format!("{}:{number}: cannot read", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let Some(format) = format else {
            format = Some(VectorFormat::of_header(&line).with_context(|| {
                format!(
                    "{}:{number}: the header {line:?} is neither {KEYS_HEADER:?} nor {PGS_HEADER:?}",
                    path.display()
                )
            })?);
            continue;
        };
        let row = format
            .parse(&line)
            .with_context(|| format!("{}:{number}: malformed row {line:?}", path.display()))?;
        let placer = match placers.entry(row.reweights_text.clone()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(session.placer(&row.reweights)?)
            }
        };
        let got = placer.place(row.x, row.replicas).map_err(|e| e.to_string());
        if got.as_ref() == Ok(&row.devices) {
            passed += 1;
        } else {
            failed += 1;
            if failed <= SHOWN_MISMATCHES {
                println!("{}", describe_mismatch(path, number, &row, &got));
            }
        }
        if (passed + failed) % PROGRESS_EVERY == 0 {
            eprintln!("... {} rows checked", passed + failed);
        }
    }
    report_timing(passed + failed, started);
    if failed > SHOWN_MISMATCHES {
        println!("({} more mismatches not shown)", failed - SHOWN_MISMATCHES);
    }
    println!("{passed} passed, {failed} failed");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn verify_merge(args: &VerifyMergeArgs) -> Result<ExitCode> {
    let engine = PolicyEngine::new()?;
    let policy = MergePolicy::load(&engine, &args.policy)?;
    eprintln!(
        "checking {} ({}, sha256 {}): {} cases per law, seed {}",
        args.policy.display(),
        policy.name(),
        policy.sha256(),
        args.cases,
        args.seed
    );
    let started = Instant::now();
    let report = merge_laws::check_laws(&|states| policy.merge(states), args.cases, args.seed);
    eprintln!("checked in {:.2?}", started.elapsed());
    for result in &report.results {
        let verdict = match result.outcome {
            Outcome::Passed => "passed",
            Outcome::Failed { .. } => "FAILED",
            Outcome::Aborted { .. } => "ABORTED",
        };
        println!("{}: {verdict}", result.law);
    }
    println!("{} passed, {} failed", report.passed(), report.failed());
    for result in &report.results {
        match &result.outcome {
            Outcome::Passed => {}
            Outcome::Failed {
                reason,
                counterexample,
            } => {
                println!("\n{} ({}):", result.law, result.law.statement());
                println!("  counterexample: {counterexample}");
                println!("  {reason}");
            }
            Outcome::Aborted { reason } => {
                println!("\n{} ({}):", result.law, result.law.statement());
                println!("  aborted: {reason}");
            }
        }
    }
    Ok(if report.all_passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn describe_mismatch(
    path: &Path,
    line: usize,
    row: &Row,
    got: &Result<Vec<u32>, String>,
) -> String {
    let got = match got {
        Ok(devices) => join(devices),
        Err(e) => format!("error: {e}"),
    };
    let subject = match &row.pg {
        Some(pg) => format!("{pg} (pps {})", row.x),
        None => format!("x={}", row.x),
    };
    format!(
        "mismatch at {}:{line}: {subject} replicas={} reweights={:?}: expected {}, got {got}",
        path.display(),
        row.replicas,
        row.reweights_text,
        join(&row.devices),
    )
}

fn join(devices: &[u32]) -> String {
    devices
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join("|")
}

fn report_timing(rows: usize, started: Instant) {
    let elapsed = started.elapsed();
    if let Some(per_row) = elapsed.checked_div(u32::try_from(rows).unwrap_or(u32::MAX).max(1)) {
        eprintln!(
            "checked {rows} rows in {elapsed:.2?} ({per_row:.2?} per row, placer loads included)"
        );
    }
}

/// Parses `x,replicas,reweights,devices`.
fn parse_row(line: &str) -> Result<Row> {
    let fields: Vec<&str> = line.trim_end_matches('\r').split(',').collect();
    let [x, replicas, reweights_text, devices] = fields[..] else {
        bail!("expected 4 comma-separated fields, found {}", fields.len());
    };
    let x = x
        .trim()
        .parse()
        .with_context(|| format!("x {x:?} is not a u32"))?;
    let replicas = replicas
        .trim()
        .parse()
        .with_context(|| format!("replicas {replicas:?} is not a u32"))?;
    let reweights = reweights_text
        .split(';')
        .filter(|s| !s.trim().is_empty())
        .map(parse_reweight)
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    Ok(Row {
        pg: None,
        x,
        replicas,
        reweights_text: reweights_text.to_owned(),
        reweights,
        devices: parse_devices(devices)?,
    })
}

/// Parses `pg_num,pool,pg,size,out,devices` into the placement call it stands for: the
/// PG's pps as the key, `size` replicas, the `out` device (if any) reweighted to 0.
fn parse_pg_row(line: &str) -> Result<Row> {
    let fields: Vec<&str> = line.trim_end_matches('\r').split(',').collect();
    let [pg_num, pool, pg, size, out, devices] = fields[..] else {
        bail!("expected 6 comma-separated fields, found {}", fields.len());
    };
    let number = |name: &str, text: &str| -> Result<u32> {
        text.trim()
            .parse()
            .with_context(|| format!("{name} {text:?} is not a u32"))
    };
    let (pg_num, pool_id, pg) = (
        number("pg_num", pg_num)?,
        number("pool", pool)?,
        number("pg", pg)?,
    );
    let pool = Pool::new(pool_id, pg_num).map_err(|e| anyhow::anyhow!("{e}"))?;
    if pg >= pg_num {
        bail!("pg {pg} is not below pg_num {pg_num}");
    }
    let reweights = match out.trim() {
        "" => Vec::new(),
        device => vec![(number("out", device)?, 0)],
    };
    Ok(Row {
        pg: Some(format!("pg_num={pg_num} pool={pool_id} pg={pg}")),
        x: pool.pps(pg),
        replicas: number("size", size)?,
        reweights_text: out.trim().to_owned(),
        reweights,
        devices: parse_devices(devices)?,
    })
}

/// Parses `A|B|C`.
fn parse_devices(devices: &str) -> Result<Vec<u32>> {
    devices
        .split('|')
        .filter(|s| !s.trim().is_empty())
        .map(|d| {
            d.trim()
                .parse()
                .with_context(|| format!("device {d:?} is not a u32"))
        })
        .collect()
}

/// Parses `DEV=W` (W a fraction of 1.0) into `(device, 16.16 weight)`.
fn parse_reweight(text: &str) -> Result<(u32, u32), String> {
    let (device, weight) = text
        .split_once('=')
        .ok_or_else(|| format!("reweight {text:?} is not DEV=W"))?;
    let device = device
        .trim()
        .parse()
        .map_err(|_| format!("device {device:?} in {text:?} is not a u32"))?;
    let weight: f64 = weight
        .trim()
        .parse()
        .map_err(|_| format!("weight {weight:?} in {text:?} is not a number"))?;
    if !weight.is_finite() || weight < 0.0 {
        return Err(format!("weight in {text:?} must be a fraction >= 0"));
    }
    // Saturating float-to-int conversion, as crushtool's `(int)(w * 0x10000)` for sane w.
    Ok((device, (weight * 65536.0) as u32))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_rows() {
        let row = parse_row("72916709,3,1=0.5;6=0.25,1|3|6").unwrap();
        assert_eq!(row.x, 72_916_709);
        assert_eq!(row.replicas, 3);
        assert_eq!(row.reweights, vec![(1, 32768), (6, 16384)]);
        assert_eq!(row.devices, vec![1, 3, 6]);
        let empty = parse_row("0,1,,\r").unwrap();
        assert!(empty.reweights.is_empty() && empty.devices.is_empty());
    }

    #[test]
    fn malformed_rows_say_what_is_wrong() {
        for (line, expected) in [
            ("1,2,3", "4 comma-separated fields"),
            ("a,1,,1", "x \"a\""),
            ("1,-1,,1", "replicas"),
            ("1,1,3,1", "not DEV=W"),
            ("1,1,3=x,1", "not a number"),
            ("1,1,3=-1,1", ">= 0"),
            ("1,1,,1|z", "device \"z\""),
        ] {
            let message = format!("{:#}", parse_row(line).unwrap_err());
            assert!(message.contains(expected), "{line}: {message}");
        }
    }

    #[test]
    fn pg_rows_place_the_pgs_pps() {
        let row = parse_pg_row("64,1,0,3,,5|2|1").unwrap();
        assert_eq!(row.x, Pool::new(1, 64).unwrap().pps(0));
        assert_eq!((row.replicas, row.devices), (3, vec![5, 2, 1]));
        assert!(row.reweights.is_empty());
        let out = parse_pg_row("100,1,99,3,4,1|2|3\r").unwrap();
        assert_eq!(out.reweights, vec![(4, 0)]);
        for (line, expected) in [
            ("64,1,0,3,5|2|1", "6 comma-separated fields"),
            ("0,1,0,3,,1", "pg_num 0 is not in"),
            ("64,1,64,3,,1", "pg 64 is not below pg_num 64"),
            ("64,1,0,3,x,1", "out \"x\""),
        ] {
            let message = format!("{:#}", parse_pg_row(line).unwrap_err());
            assert!(message.contains(expected), "{line}: {message}");
        }
        assert_eq!(VectorFormat::of_header(PGS_HEADER), Some(VectorFormat::Pgs));
        assert_eq!(
            VectorFormat::of_header("x,replicas,reweights,devices\r"),
            Some(VectorFormat::Keys)
        );
        assert_eq!(VectorFormat::of_header("a,b"), None);
    }

    #[test]
    fn reweights_are_fractions() {
        assert_eq!(parse_reweight("3=0"), Ok((3, 0)));
        assert_eq!(parse_reweight("3=1"), Ok((3, 65536)));
        assert_eq!(parse_reweight("3=0.999"), Ok((3, 65470)));
        assert!(parse_reweight("3=NaN").is_err());
    }
}

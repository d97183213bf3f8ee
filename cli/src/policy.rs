//! `cartdb policy`: run a policy component outside the gateway.
//!
//! - `place` prints the devices for each placement key.
//! - `verify` replays conformance vectors (`x,replicas,reweights,devices` rows, as in
//!   `shared/crush/*-vectors.csv`) and ends with the line `N passed, M failed`.
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
    /// `X:` when the policy chooses none).
    Place(PlaceArgs),
    /// Check the policy against conformance vectors; exit non-zero on any mismatch.
    ///
    /// The vectors file is CSV with the header `x,replicas,reweights,devices`; reweights
    /// are `DEV=W;DEV=W` (W a fraction, empty = all in), devices `A|B|C`, primary first.
    /// Prints the first mismatches, then exactly `N passed, M failed`.
    Verify(VerifyArgs),
    /// Check a merge policy against the merge laws; exit non-zero if it breaks any.
    ///
    /// Runs the policy on random replica histories (retried operations, colliding
    /// versions, replicas that missed writes, compacted bases) and checks that merging is
    /// commutative, associative and idempotent and drops no acknowledged operation.
    /// Prints one line per law, then exactly `N passed, M failed`, then the smallest
    /// counterexample found for each broken law. The same seed gives the same cases.
    VerifyMerge(VerifyMergeArgs),
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
    }
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
    let session = Session::open(&args.policy)?;
    let mut placer = session.placer(&args.reweights)?;
    for &x in &args.xs {
        let devices = placer.place(x, args.replicas)?;
        println!(
            "{x}:{}",
            devices.iter().map(|d| format!(" {d}")).collect::<String>()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// One parsed vectors row.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
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
    for (index, line) in BufReader::new(file).lines().enumerate() {
        let number = index + 1;
        let line = line.with_context(|| format!("{}:{number}: cannot read", path.display()))?;
        if line.trim().is_empty() || (number == 1 && line.starts_with("x,")) {
            continue;
        }
        let row = parse_row(&line)
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
    format!(
        "mismatch at {}:{line}: x={} replicas={} reweights={:?}: expected {}, got {got}",
        path.display(),
        row.x,
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
    let devices = devices
        .split('|')
        .filter(|s| !s.trim().is_empty())
        .map(|d| {
            d.trim()
                .parse()
                .with_context(|| format!("device {d:?} is not a u32"))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Row {
        x,
        replicas,
        reweights_text: reweights_text.to_owned(),
        reweights,
        devices,
    })
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
    fn reweights_are_fractions() {
        assert_eq!(parse_reweight("3=0"), Ok((3, 0)));
        assert_eq!(parse_reweight("3=1"), Ok((3, 65536)));
        assert_eq!(parse_reweight("3=0.999"), Ok((3, 65470)));
        assert!(parse_reweight("3=NaN").is_err());
    }
}

//! `cartdb policy deploy|rollback|history`: the policy lifecycle of a running cluster,
//! through the API server (`/api/admin/policies`, admin token).
//!
//! A deploy uploads the component; the API server stores it in ZooKeeper by sha256, asks
//! every gateway to verify it against the current map, and only if all accept makes the map
//! name it (one new epoch). `--vectors` first checks a placement policy against conformance
//! vectors here, like `cartdb policy verify`. `--dry-run` stops after the verification and
//! prints what the change would move. A refusal names each refusing gateway and its reason;
//! the previous policy then stays in force.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use cartdb_core::wire::MapPreview;
use clap::{Args, ValueEnum};
use serde_json::Value;

use crate::api_client::{ApiArgs, get_json, post_bytes, post_query, print_document};
use crate::map::preview_text;

/// Which policy a lifecycle command is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    Placement,
    Merge,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Placement => "placement",
            Self::Merge => "merge",
        }
    }
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// What the component is.
    #[arg(value_enum)]
    kind: Kind,
    /// The component (.wasm).
    #[arg(value_name = "P.wasm")]
    file: PathBuf,
    /// Verify on every gateway and print what would change; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Check a placement policy against these conformance vectors (CSV, as for
    /// `cartdb policy verify`) before uploading it; needs `--map`.
    #[arg(long, value_name = "V.csv", requires = "map")]
    vectors: Option<PathBuf>,
    /// The CRUSH map the vectors were made with.
    #[arg(long, value_name = "M.json")]
    map: Option<PathBuf>,
    /// Who deploys, for the history (default: $USER).
    #[arg(long)]
    by: Option<String>,
    /// Print the API's JSON document.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Which policy to roll back to its previous version.
    #[arg(value_enum)]
    kind: Kind,
    /// Verify on every gateway and print what would change; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Who rolls back, for the history (default: $USER).
    #[arg(long)]
    by: Option<String>,
    /// Print the API's JSON document.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Print the API's JSON document.
    #[arg(long)]
    json: bool,
}

/// `cartdb policy deploy`.
///
/// # Errors
/// The file unreadable, a vector mismatch, the API unreachable, or a refusal (409, naming
/// each refusing gateway).
pub fn deploy(args: &DeployArgs) -> Result<ExitCode> {
    let bytes = std::fs::read(&args.file)
        .with_context(|| format!("cannot read the policy {}", args.file.display()))?;
    if let (Some(vectors), Some(map)) = (&args.vectors, &args.map) {
        if args.kind != Kind::Placement {
            bail!("--vectors: only a placement policy is checked against vectors");
        }
        let code = crate::policy::verify_vectors(&args.file, map, vectors)?;
        if code != ExitCode::SUCCESS {
            bail!(
                "the policy {} fails the vectors {}; not deployed",
                args.file.display(),
                vectors.display()
            );
        }
    }
    let name = args.file.file_name().map_or_else(
        || "upload.wasm".to_owned(),
        |n| n.to_string_lossy().into_owned(),
    );
    let mut query = vec![("name", name), ("by", who(args.by.as_deref()))];
    if args.dry_run {
        query.push(("dry_run", "true".to_owned()));
    }
    eprintln!(
        "deploying the {} policy {} ({} bytes): storing it, then verifying on every gateway...",
        args.kind.name(),
        args.file.display(),
        bytes.len()
    );
    let path = format!("/api/admin/policies/{}", args.kind.name());
    let report = post_bytes(&args.api, &path, &query, bytes)?;
    print_document(&report, args.json, report_text);
    Ok(ExitCode::SUCCESS)
}

/// `cartdb policy rollback`.
///
/// # Errors
/// The API unreachable, or a refusal (409: nothing to roll back to, or a gateway refuses).
pub fn rollback(args: &RollbackArgs) -> Result<ExitCode> {
    let path = format!("/api/admin/policies/{}/rollback", args.kind.name());
    let mut query = vec![("by", who(args.by.as_deref()))];
    if args.dry_run {
        query.push(("dry_run", "true".to_owned()));
    }
    let report = post_query(&args.api, &path, &query)?;
    print_document(&report, args.json, report_text);
    Ok(ExitCode::SUCCESS)
}

/// `cartdb policy history`.
///
/// # Errors
/// The API unreachable or refusing.
pub fn history(args: &HistoryArgs) -> Result<ExitCode> {
    let document = get_json(&args.api, "/api/admin/policies", &[])?;
    print_document(&document, args.json, history_text);
    Ok(ExitCode::SUCCESS)
}

/// `--by`, or the user running the command.
fn who(by: Option<&str>) -> String {
    by.map(str::to_owned)
        .or_else(|| std::env::var("USER").ok())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "operator".to_owned())
}

fn short(sha256: &Value) -> String {
    sha256
        .as_str()
        .map_or_else(|| "built-in".to_owned(), |s| s.chars().take(12).collect())
}

fn report_text(report: &Value) -> String {
    let mut out = String::new();
    let kind = report["kind"].as_str().unwrap_or("?");
    for verdict in report["verdicts"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "gateway {}: accepts {} ({})\n",
            verdict["gateway"],
            verdict["name"].as_str().unwrap_or("?"),
            verdict["checked"].as_str().unwrap_or("")
        ));
    }
    if let Some(preview) = report
        .get("preview")
        .filter(|p| !p.is_null())
        .and_then(|p| serde_json::from_value::<MapPreview>(p.clone()).ok())
    {
        out.push_str(&preview_text(&preview, &format!("{kind} policy change")));
    }
    let what = format!(
        "{kind} policy {} (sha256 {})",
        report["name"].as_str().unwrap_or("?"),
        short(&report["sha256"])
    );
    if report["dry_run"].as_bool() == Some(true) {
        out.push_str(&format!("dry run: {what} was verified; nothing changed\n"));
    } else {
        let running: Vec<String> = report["running_on"]
            .as_array()
            .into_iter()
            .flatten()
            .map(Value::to_string)
            .collect();
        out.push_str(&format!(
            "{} {what}: active from map epoch {}, running on gateway(s) {}\n",
            report["action"].as_str().unwrap_or("?"),
            report["applied_epoch"],
            running.join(", ")
        ));
    }
    out
}

fn history_text(document: &Value) -> String {
    let mut out = String::new();
    let named = &document["named"];
    out.push_str(&format!(
        "active: placement {} ({}), merge {}\n",
        named["placement"]["name"].as_str().unwrap_or("?"),
        short(&named["placement"]["sha256"]),
        named["merge"]["name"].as_str().map_or_else(
            || "built-in".to_owned(),
            |n| format!("{n} ({})", short(&named["merge"]["sha256"]))
        ),
    ));
    for gateway in document["gateways"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "gateway {} runs placement {}, merge {} (epoch {})\n",
            gateway["gateway"],
            short(&gateway["running"]["placement"]["sha256"]),
            short(&gateway["running"]["merge"]["sha256"]),
            gateway["epoch"]
        ));
    }
    if document["agree"].as_bool() != Some(true) {
        out.push_str("WARNING: the gateways do not all run what the map names\n");
    }
    out.push_str("history (oldest first):\n");
    for event in document["history"].as_array().into_iter().flatten() {
        let policy = &event["policy"];
        out.push_str(&format!(
            "  epoch {:>5}  {:<9} {:<9} {:<16} {:<12} at {} ms by {}\n",
            event["epoch"],
            event["kind"].as_str().unwrap_or("?"),
            event["action"].as_str().unwrap_or("?"),
            policy["name"].as_str().unwrap_or("built-in"),
            short(&policy["sha256"]),
            event["at_ms"],
            event["by"].as_str().unwrap_or("?")
        ));
    }
    out
}

//! `cartdb status`: the cluster as `GET /api/cluster` reports it, for a terminal.
//!
//! Prints the devices (up or down, in or out, PG count, addresses), the gateways, the map
//! epoch, the placement groups, the policies, and the convergence work: read repairs,
//! compaction and the anti-entropy sweep's progress. The document is read into the typed
//! [`ClusterStatus`] the gateways send, so a field the API stops sending is an error here,
//! not a silent `?`. `--json` prints the API's document unchanged.

use std::process::ExitCode;

use anyhow::Context;
use cartdb_core::wire::{ClusterStatus, SweepStatus};
use clap::Args;
use serde::Deserialize;

use crate::api_client::{ApiArgs, get_json};

/// Arguments of `cartdb status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Print the API's JSON document instead of the summary.
    #[arg(long)]
    json: bool,
}

/// `GET /api/cluster`: a gateway's [`ClusterStatus`] plus the API server's own view.
#[derive(Debug, Deserialize)]
struct ClusterDocument {
    #[serde(flatten)]
    status: ClusterStatus,
    api: ApiView,
}

/// The API server's part of the document.
#[derive(Debug, Deserialize)]
struct ApiView {
    answered_by: u32,
}

/// Fetches and prints the status; fails when the API cannot be reached, answers an error,
/// or answers a document of another shape.
pub fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let document = get_json(&args.api, "/api/cluster", &[])?;
    if args.json {
        println!("{document:#}");
        return Ok(ExitCode::SUCCESS);
    }
    let document: ClusterDocument = serde_json::from_value(document)
        .context("GET /api/cluster answered a document this cartdb does not understand")?;
    print!("{}", summary(&document));
    Ok(ExitCode::SUCCESS)
}

/// An address, or `-` when there is none or it is for admins only (the API empties it).
fn address(value: Option<&str>) -> &str {
    value.filter(|a| !a.is_empty()).unwrap_or("-")
}

/// The human-readable summary of a `/api/cluster` document.
fn summary(doc: &ClusterDocument) -> String {
    let status = &doc.status;
    let mut out = String::new();
    let up = status.devices.iter().filter(|d| d.up).count();
    out += &format!(
        "map epoch {}; {up}/{} devices up\n",
        status.map_epoch,
        status.devices.len()
    );
    for d in &status.devices {
        let state = if d.up { "up" } else { "DOWN" };
        let placement = if d.reweight == 0 { "out" } else { "in" };
        out += &format!(
            "  {:<10} {state:<4} {placement:<3} {:>4} PGs  {}  metrics {}\n",
            d.name,
            d.pgs,
            address(d.address.as_deref()),
            address(d.metrics.as_deref()),
        );
    }
    let pgs = &status.placement_groups;
    out += &format!(
        "placement groups: {} (pool {}); {} with a past set (read from former devices until clean), {} undersized, {} without a write quorum\n",
        pgs.pg_num, pgs.pool, pgs.with_past, pgs.undersized, pgs.without_write_quorum,
    );
    out += &format!("gateways: {}\n", status.gateways.len());
    for g in &status.gateways {
        out += &format!(
            "  gw-{:<3} {}  metrics {}\n",
            g.id,
            address(Some(&g.address)),
            address(g.metrics.as_deref()),
        );
    }
    let m = &status.maintenance;
    out += &format!(
        "placement policy: {} ({})\n",
        status.placement_policy.name, status.placement_policy.sha256
    );
    out += &match &m.merge_policy {
        None => "merge policy: built-in reference merge\n".to_owned(),
        Some(p) => format!("merge policy: {} ({})\n", p.name, p.sha256),
    };
    out += &format!(
        "gw-{}: {} repairs ({} operations), {} failed; {} merge fallbacks; {} compactions ({} operations folded)\n",
        doc.api.answered_by,
        m.repairs,
        m.repaired_ops,
        m.repair_failures,
        m.merge_fallbacks,
        m.compactions,
        m.folded_ops,
    );
    out += &match &m.anti_entropy {
        None => "anti-entropy: no progress from its leader\n".to_owned(),
        Some(SweepStatus {
            leader,
            pgs_done,
            pgs_total,
            sweeps_completed,
            repairs,
            pgs_cleaned,
            handed_back,
            ..
        }) => format!(
            "anti-entropy (led by gw-{leader}): pass {pgs_done}/{pgs_total} PGs, {sweeps_completed} passes done, {repairs} repairs, {pgs_cleaned} PGs cleaned, {handed_back} items handed back\n"
        ),
    };
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]
mod tests {
    use serde_json::json;

    use super::*;

    fn document(value: serde_json::Value) -> ClusterDocument {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn the_summary_names_devices_policies_and_sweep_progress() {
        let doc = document(json!({
            "map_epoch": 4,
            "devices": [
                {"id": 1, "name": "device_1", "up": true, "reweight": 65536,
                 "address": "127.0.0.1:7001", "pgs": 128, "metrics": "127.0.0.1:9101"},
                {"id": 2, "name": "device_2", "up": false, "reweight": 0, "address": null, "pgs": 0}
            ],
            "placement_groups": {"pool": 1, "pg_num": 256, "with_past": 3, "undersized": 0},
            "gateways": [{"id": 0, "address": ""}],
            "placement_policy": {"name": "crush-straw2", "sha256": "ab"},
            "replication": {"replicas": 3, "write_quorum": 2, "read_quorum": 2},
            "maintenance": {
                "merge_policy": null, "repairs": 3, "repaired_ops": 5, "repair_failures": 0,
                "merge_fallbacks": 0, "compactions": 2, "folded_ops": 9,
                "anti_entropy": {"leader": 0, "pgs_done": 1, "pgs_total": 4,
                                 "sweeps_completed": 2, "repairs": 1, "pgs_cleaned": 3,
                                 "handed_back": 7, "updated_ms": 0}
            },
            "api": {"gateways": [], "answered_by": 0}
        }));
        let text = summary(&doc);
        assert!(text.contains("1/2 devices up"), "{text}");
        assert!(
            text.contains("device_2   DOWN out    0 PGs  -  metrics -"),
            "{text}"
        );
        assert!(
            text.contains("device_1   up   in   128 PGs  127.0.0.1:7001  metrics 127.0.0.1:9101"),
            "{text}"
        );
        assert!(text.contains("gw-0   -  metrics -"), "{text}");
        assert!(text.contains("256 (pool 1); 3 with a past set"), "{text}");
        assert!(text.contains("0 without a write quorum"), "{text}");
        assert!(text.contains("built-in reference merge"), "{text}");
        assert!(text.contains("gw-0: 3 repairs (5 operations)"), "{text}");
        assert!(
            text.contains("pass 1/4 PGs, 2 passes done, 1 repairs, 3 PGs cleaned, 7 items"),
            "{text}"
        );
    }

    #[test]
    fn a_document_of_another_shape_is_refused() {
        assert!(serde_json::from_value::<ClusterDocument>(json!({})).is_err());
    }
}

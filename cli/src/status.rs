//! `cartdb status`: the cluster as `GET /api/cluster` reports it, for a terminal.
//!
//! Prints the devices (up or down, in or out, PG count, addresses), the gateways, the map
//! epoch and flags, the placement groups by state with the backfill's progress, the
//! policies, and the convergence work: read repairs, compaction and the anti-entropy sweep. The document is read into the typed
//! [`ClusterStatus`] the gateways send, so a field the API stops sending is an error here,
//! not a silent `?`. `--json` prints the API's document unchanged.

use std::process::ExitCode;

use anyhow::Context;
use cartdb_core::coord::FULL_WEIGHT;
use cartdb_core::wire::{ClusterStatus, PolicyStatus, SweepStatus};
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
    /// What each live gateway runs.
    #[serde(default)]
    policies: Vec<PolicyStatus>,
    #[serde(default = "agree")]
    policies_agree: bool,
}

fn agree() -> bool {
    true
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

/// A 20-character progress bar for `done` of `total`.
fn bar(done: u32, total: u32) -> String {
    const WIDTH: u32 = 20;
    let filled = if total == 0 {
        WIDTH
    } else {
        u32::try_from(u64::from(done) * u64::from(WIDTH) / u64::from(total)).unwrap_or(WIDTH)
    };
    let filled = filled.min(WIDTH) as usize;
    format!(
        "[{}{}]",
        "#".repeat(filled),
        ".".repeat(WIDTH as usize - filled)
    )
}

/// The human-readable summary of a `/api/cluster` document.
fn summary(doc: &ClusterDocument) -> String {
    let status = &doc.status;
    let mut out = String::new();
    let up = status.devices.iter().filter(|d| d.up).count();
    let flags = if status.flags.is_empty() {
        "none".to_owned()
    } else {
        status.flags.join(",")
    };
    out += &format!(
        "map epoch {}; {up}/{} devices up; flags: {flags}\n",
        status.map_epoch,
        status.devices.len()
    );
    for d in &status.devices {
        let state = if d.up { "up" } else { "DOWN" };
        let placement = match (d.reweight, d.auto_out) {
            (0, true) => "out (auto)".to_owned(),
            (0, false) => "out".to_owned(),
            (FULL_WEIGHT, _) => "in".to_owned(),
            (w, _) => format!("in {:.2}", f64::from(w) / f64::from(FULL_WEIGHT)),
        };
        let past = if d.past_pgs > 0 {
            format!(" (+{} past)", d.past_pgs)
        } else {
            String::new()
        };
        out += &format!(
            "  {:<10} {state:<4} {placement:<10} {:>4} PGs{past}  {}  metrics {}\n",
            d.name,
            d.pgs,
            address(d.address.as_deref()),
            address(d.metrics.as_deref()),
        );
    }
    let pgs = &status.placement_groups;
    out += &format!(
        "placement groups: {} (pool {}): {} clean, {} degraded, {} remapped ({} backfilling), {} undersized, {} without a write quorum\n",
        pgs.pg_num,
        pgs.pool,
        pgs.clean,
        pgs.degraded,
        pgs.remapped,
        pgs.backfilling,
        pgs.undersized,
        pgs.without_write_quorum,
    );
    if let Some(b) = &pgs.backfill {
        let done = b.pgs_total - b.pgs_left;
        let eta = b
            .eta_secs
            .map_or_else(|| "unknown".to_owned(), |s| format!("~{s}s"));
        out += &format!(
            "backfill: {done}/{} PGs done {}, {} left, running {}s, time left {eta}\n",
            b.pgs_total,
            bar(done, b.pgs_total),
            b.pgs_left,
            b.elapsed_secs,
        );
    }
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
    let short = |sha: &str| sha.chars().take(12).collect::<String>();
    for p in &doc.api.policies {
        out += &format!(
            "  gw-{:<3} runs placement {} merge {} at epoch {}\n",
            p.gateway,
            short(&p.running.placement.sha256),
            p.running
                .merge
                .as_ref()
                .map_or_else(|| "built-in".to_owned(), |m| short(&m.sha256)),
            p.epoch
        );
    }
    if !doc.api.policies_agree {
        out += &format!(
            "WARNING: the gateways do not all run the policies the map names (placement {}, merge {})\n",
            short(&status.policies.placement.sha256),
            status
                .policies
                .merge
                .as_ref()
                .map_or_else(|| "built-in".to_owned(), |m| short(&m.sha256))
        );
    }
    for p in &m.policy_calls {
        let mean = p.total_micros.checked_div(p.calls).unwrap_or(0);
        out += &format!(
            "{} policy {}: {} calls, {} traps, {} timeouts, {} out of fuel, {} invalid, {} other failures, {} fallbacks; mean {mean} us, max {} us\n",
            p.kind,
            p.sha256.get(..12).unwrap_or(&p.sha256),
            p.calls,
            p.traps,
            p.timeouts,
            p.out_of_fuel,
            p.invalid,
            p.other_failures,
            p.fallbacks,
            p.max_micros,
        );
    }
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
            items_streamed,
            ops_repaired,
            rounds_running,
            last_pass_ms,
            items_per_sec,
            ..
        }) => format!(
            "anti-entropy (led by gw-{leader}, {items_per_sec} items/s): pass {pgs_done}/{pgs_total} PGs, {sweeps_completed} passes done (the last in {:.1} s), {rounds_running} PGs streaming, {items_streamed} items streamed, {repairs} repairs ({ops_repaired} operations), {pgs_cleaned} PGs cleaned, {handed_back} items handed back\n",
            *last_pass_ms as f64 / 1000.0
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
                 "address": "127.0.0.1:7001", "pgs": 128, "metrics": "127.0.0.1:9101",
                 "auto_out": false, "past_pgs": 3},
                {"id": 2, "name": "device_2", "up": false, "reweight": 0, "address": null,
                 "pgs": 0, "auto_out": true, "past_pgs": 0},
                {"id": 3, "name": "device_3", "up": true, "reweight": 32768, "address": null,
                 "pgs": 40, "auto_out": false, "past_pgs": 0}
            ],
            "placement_groups": {"pool": 1, "pg_num": 256, "clean": 250, "degraded": 0,
                                 "remapped": 3, "backfilling": 3, "undersized": 0,
                                 "without_write_quorum": 0,
                                 "backfill": {"pgs_total": 12, "pgs_left": 3,
                                              "started_ms": 0, "elapsed_secs": 30,
                                              "eta_secs": 10}},
            "flags": ["noout"],
            "gateways": [{"id": 0, "address": ""}],
            "placement_policy": {"name": "crush-straw2", "sha256": "ab"},
            "policies": {"placement": {"name": "crush-straw2", "sha256": "ab"}, "merge": null},
            "replication": {"replicas": 3, "write_quorum": 2, "read_quorum": 2},
            "maintenance": {
                "merge_policy": null, "repairs": 3, "repaired_ops": 5, "repair_failures": 0,
                "merge_fallbacks": 0, "compactions": 2, "folded_ops": 9,
                "policy_calls": [{"kind": "placement", "sha256": "623be87f54e75dd52d7a",
                                  "calls": 256, "ok": 255, "traps": 0, "timeouts": 0,
                                  "out_of_fuel": 1, "invalid": 0, "other_failures": 0,
                                  "fallbacks": 0, "total_micros": 5120, "max_micros": 90}],
                "anti_entropy": {"leader": 0, "pgs_done": 1, "pgs_total": 4,
                                 "sweeps_completed": 2, "repairs": 1, "pgs_cleaned": 3,
                                 "handed_back": 7, "updated_ms": 0}
            },
            "api": {"gateways": [], "answered_by": 0}
        }));
        let text = summary(&doc);
        assert!(text.contains("2/3 devices up; flags: noout"), "{text}");
        assert!(
            text.contains("device_2   DOWN out (auto)    0 PGs  -  metrics -"),
            "{text}"
        );
        assert!(
            text.contains(
                "device_1   up   in          128 PGs (+3 past)  127.0.0.1:7001  metrics 127.0.0.1:9101"
            ),
            "{text}"
        );
        assert!(
            text.contains("device_3   up   in 0.50      40 PGs"),
            "{text}"
        );
        assert!(
            text.contains("backfill: 9/12 PGs done [###############.....], 3 left, running 30s, time left ~10s"),
            "{text}"
        );
        assert!(text.contains("gw-0   -  metrics -"), "{text}");
        assert!(
            text.contains("256 (pool 1): 250 clean, 0 degraded, 3 remapped (3 backfilling)"),
            "{text}"
        );
        assert!(text.contains("0 without a write quorum"), "{text}");
        assert!(text.contains("built-in reference merge"), "{text}");
        assert!(
            text.contains("placement policy 623be87f54e7: 256 calls, 0 traps, 0 timeouts, 1 out of fuel, 0 invalid, 0 other failures, 0 fallbacks; mean 20 us, max 90 us"),
            "{text}"
        );
        assert!(text.contains("gw-0: 3 repairs (5 operations)"), "{text}");
        assert!(
            text.contains("pass 1/4 PGs, 2 passes done (the last in 0.0 s), 0 PGs streaming, 0 items streamed, 1 repairs (0 operations), 3 PGs cleaned, 7 items"),
            "{text}"
        );
    }

    #[test]
    fn a_document_of_another_shape_is_refused() {
        assert!(serde_json::from_value::<ClusterDocument>(json!({})).is_err());
    }
}

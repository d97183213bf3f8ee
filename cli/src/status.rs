//! `cartdb status`: the cluster as `GET /api/cluster` reports it, for a terminal.
//!
//! Prints the devices (up or down, in or out, PG count), the gateways, the map epoch, the
//! placement groups, the policies, and the convergence work: read repairs, compaction and
//! the anti-entropy sweep's progress.
//! `--json` prints the API's document unchanged.

use std::process::ExitCode;

use clap::Args;
use serde_json::Value;

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

/// Fetches and prints the status; fails when the API cannot be reached or answers an error.
pub fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let document = get_json(&args.api, "/api/cluster", &[])?;
    if args.json {
        println!("{document:#}");
    } else {
        print!("{}", summary(&document));
    }
    Ok(ExitCode::SUCCESS)
}

/// The human-readable summary of a `/api/cluster` document. Missing fields print as `?`.
fn summary(doc: &Value) -> String {
    let text = |v: &Value| match v {
        Value::Null => "?".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut out = String::new();
    let devices = doc["devices"].as_array().cloned().unwrap_or_default();
    let up = devices
        .iter()
        .filter(|d| d["up"] == Value::Bool(true))
        .count();
    out += &format!(
        "map epoch {}; {up}/{} devices up\n",
        text(&doc["map_epoch"]),
        devices.len()
    );
    for d in &devices {
        let state = if d["up"] == Value::Bool(true) {
            "up"
        } else {
            "DOWN"
        };
        let weight = d["reweight"].as_u64().unwrap_or(0);
        let placement = if weight == 0 { "out" } else { "in" };
        out += &format!(
            "  {:<10} {state:<4} {placement:<3} {:>4} PGs  {}\n",
            text(&d["name"]),
            text(&d["pgs"]),
            text(&d["address"])
        );
    }
    let pgs = &doc["placement_groups"];
    out += &format!(
        "placement groups: {} (pool {}); {} with a past set (read from former devices until clean), {} undersized\n",
        text(&pgs["pg_num"]),
        text(&pgs["pool"]),
        text(&pgs["with_past"]),
        text(&pgs["undersized"]),
    );
    let gateways = doc["gateways"].as_array().cloned().unwrap_or_default();
    out += &format!("gateways: {}\n", gateways.len());
    for g in &gateways {
        out += &format!("  gw-{:<3} {}\n", text(&g["id"]), text(&g["address"]));
    }
    let m = &doc["maintenance"];
    out += &format!(
        "placement policy: {} ({})\n",
        text(&doc["placement_policy"]["name"]),
        text(&doc["placement_policy"]["sha256"])
    );
    out += &match &m["merge_policy"] {
        Value::Null => "merge policy: built-in reference merge\n".to_owned(),
        p => format!(
            "merge policy: {} ({})\n",
            text(&p["name"]),
            text(&p["sha256"])
        ),
    };
    out += &format!(
        "answering gateway: {} repairs ({} operations), {} failed; {} merge fallbacks; {} compactions ({} operations folded)\n",
        text(&m["repairs"]),
        text(&m["repaired_ops"]),
        text(&m["repair_failures"]),
        text(&m["merge_fallbacks"]),
        text(&m["compactions"]),
        text(&m["folded_ops"]),
    );
    out += &match &m["anti_entropy"] {
        Value::Null => "anti-entropy: no progress published yet\n".to_owned(),
        s => format!(
            "anti-entropy (led by gw-{}): pass {}/{} PGs, {} passes done, {} repairs, {} PGs cleaned, {} items handed back\n",
            text(&s["leader"]),
            text(&s["pgs_done"]),
            text(&s["pgs_total"]),
            text(&s["sweeps_completed"]),
            text(&s["repairs"]),
            text(&s["pgs_cleaned"]),
            text(&s["handed_back"]),
        ),
    };
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_summary_names_devices_policies_and_sweep_progress() {
        let doc = json!({
            "map_epoch": 4,
            "devices": [
                {"name": "device_1", "up": true, "reweight": 65536, "address": "127.0.0.1:7001", "pgs": 128},
                {"name": "device_2", "up": false, "reweight": 0, "address": null, "pgs": 0}
            ],
            "placement_groups": {"pool": 1, "pg_num": 256, "with_past": 3, "undersized": 0},
            "gateways": [{"id": 0, "address": "127.0.0.1:7101"}],
            "placement_policy": {"name": "crush-straw2", "sha256": "ab"},
            "maintenance": {
                "merge_policy": null, "repairs": 3, "repaired_ops": 5, "repair_failures": 0,
                "merge_fallbacks": 0, "compactions": 2, "folded_ops": 9,
                "anti_entropy": {"leader": 0, "pgs_done": 1, "pgs_total": 4,
                                 "sweeps_completed": 2, "repairs": 1, "pgs_cleaned": 3,
                                 "handed_back": 7}
            }
        });
        let text = summary(&doc);
        assert!(text.contains("1/2 devices up"), "{text}");
        assert!(text.contains("device_2   DOWN out    0 PGs"), "{text}");
        assert!(text.contains("device_1   up   in   128 PGs"), "{text}");
        assert!(text.contains("256 (pool 1); 3 with a past set"), "{text}");
        assert!(text.contains("built-in reference merge"), "{text}");
        assert!(text.contains("3 repairs (5 operations)"), "{text}");
        assert!(
            text.contains("pass 1/4 PGs, 2 passes done, 1 repairs, 3 PGs cleaned, 7 items"),
            "{text}"
        );
    }

    #[test]
    fn a_document_without_fields_still_prints() {
        let text = summary(&json!({}));
        assert!(text.contains("map epoch ?; 0/0 devices up"), "{text}");
    }
}

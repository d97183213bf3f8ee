//! `cartdb status`: the cluster as `GET /api/cluster` reports it, for a terminal.
//!
//! Prints the devices (up or down, in or out), the gateways, the map epoch, the policies,
//! and the convergence work: read repairs, compaction and the anti-entropy sweep's progress.
//! `--json` prints the API's document unchanged.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use serde_json::Value;

/// Arguments of `cartdb status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Base URL of the API server.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    api: String,
    /// Print the API's JSON document instead of the summary.
    #[arg(long)]
    json: bool,
}

/// Fetches and prints the status; fails when the API cannot be reached or answers an error.
pub fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let url = format!("{}/api/cluster", args.api.trim_end_matches('/'));
    let document: Value = runtime.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .context("cannot build the HTTP client")?;
        let reply = client
            .get(&url)
            .send()
            .await
            .with_context(|| format!("cannot reach {url}"))?;
        let status = reply.status();
        let body: Value = reply
            .json()
            .await
            .with_context(|| format!("{url} did not answer JSON"))?;
        if !status.is_success() {
            bail!("{url} answered {status}: {}", body["error"]);
        }
        Ok(body)
    })?;
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
            "  {:<10} {state:<4} {placement:<3} {}\n",
            text(&d["name"]),
            text(&d["address"])
        );
    }
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
            "anti-entropy (led by gw-{}): pass {}/{} users, {} passes done, {} repairs\n",
            text(&s["leader"]),
            text(&s["users_done"]),
            text(&s["users_total"]),
            text(&s["sweeps_completed"]),
            text(&s["repairs"]),
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
                {"name": "device_1", "up": true, "reweight": 65536, "address": "127.0.0.1:7001"},
                {"name": "device_2", "up": false, "reweight": 0, "address": null}
            ],
            "gateways": [{"id": 0, "address": "127.0.0.1:7101"}],
            "placement_policy": {"name": "crush-straw2", "sha256": "ab"},
            "maintenance": {
                "merge_policy": null, "repairs": 3, "repaired_ops": 5, "repair_failures": 0,
                "merge_fallbacks": 0, "compactions": 2, "folded_ops": 9,
                "anti_entropy": {"leader": 0, "users_done": 1, "users_total": 4,
                                 "sweeps_completed": 2, "repairs": 1}
            }
        });
        let text = summary(&doc);
        assert!(text.contains("1/2 devices up"), "{text}");
        assert!(text.contains("device_2   DOWN out"), "{text}");
        assert!(text.contains("built-in reference merge"), "{text}");
        assert!(text.contains("3 repairs (5 operations)"), "{text}");
        assert!(
            text.contains("pass 1/4 users, 2 passes done, 1 repairs"),
            "{text}"
        );
    }

    #[test]
    fn a_document_without_fields_still_prints() {
        let text = summary(&json!({}));
        assert!(text.contains("map epoch ?; 0/0 devices up"), "{text}");
    }
}

//! `cartdb traffic`: the cart operations the API server answered over the last ten minutes,
//! per 5-second bucket, with p50 and p99 latency (`GET /api/admin/traffic`, admin; what the
//! dashboard charts). Idle buckets are left out of the table; `--json` prints the API's
//! document, all of them.

use clap::Args;
use serde_json::Value;

use crate::api_client::{ApiArgs, get_json, print_document};

/// Arguments of `cartdb traffic`.
#[derive(Debug, Args)]
pub struct TrafficArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Print the API's JSON document.
    #[arg(long)]
    json: bool,
}

/// Prints the busy buckets.
///
/// # Errors
/// The API unreachable or answering an error.
pub fn run(args: TrafficArgs) -> anyhow::Result<()> {
    let document = get_json(&args.api, "/api/admin/traffic", &[])?;
    print_document(&document, args.json, traffic_table);
    Ok(())
}

fn traffic_table(document: &Value) -> String {
    let mut out = String::from("start (unix s)   ops/s   p50 ms   p99 ms   5xx\n");
    let ms = |v: &Value| {
        v.as_f64()
            .map_or_else(|| "-".to_owned(), |x| format!("{x:.1}"))
    };
    for point in document["points"].as_array().into_iter().flatten() {
        if point["ops_per_sec"].as_f64().unwrap_or(0.0) == 0.0 {
            continue;
        }
        out.push_str(&format!(
            "{:<16} {:>6.1} {:>8} {:>8} {:>5}\n",
            point["start_secs"].as_u64().unwrap_or(0),
            point["ops_per_sec"].as_f64().unwrap_or(0.0),
            ms(&point["p50_ms"]),
            ms(&point["p99_ms"]),
            point["server_errors"].as_u64().unwrap_or(0)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn idle_buckets_are_left_out() {
        let document = json!({"bucket_secs": 5, "points": [
            {"start_secs": 100, "ops_per_sec": 0.0, "server_errors": 0, "p50_ms": null, "p99_ms": null},
            {"start_secs": 105, "ops_per_sec": 12.4, "server_errors": 1, "p50_ms": 3.25, "p99_ms": 20.0},
        ]});
        let table = traffic_table(&document);
        assert_eq!(table.lines().count(), 2, "{table}");
        assert!(
            table.ends_with("105                12.4      3.2     20.0     1\n"),
            "{table}"
        );
    }
}

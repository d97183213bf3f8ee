//! `cartdb replicas U`: every live data node's own, unmerged state of a user's items
//! (`GET /api/admin/replicas`, admin), to check that the replicas agree. `--json` prints
//! the API's document.

use cartdb_core::cart::ItemState;
use clap::Args;
use serde_json::Value;

use crate::api_client::{ApiArgs, get_json, print_document};

/// Arguments of `cartdb replicas`.
#[derive(Debug, Args)]
pub struct ReplicasArgs {
    /// The user.
    #[arg(value_name = "USERID")]
    user: String,
    #[command(flatten)]
    api: ApiArgs,
    /// Print the API's JSON document.
    #[arg(long)]
    json: bool,
}

/// Prints each device's items with their quantity and log length.
///
/// # Errors
/// The API unreachable or answering an error.
pub fn run(args: ReplicasArgs) -> anyhow::Result<()> {
    let document = get_json(&args.api, "/api/admin/replicas", &[("userid", args.user)])?;
    print_document(&document, args.json, replica_lines);
    Ok(())
}

/// `device D: PRODUCT qty Q (N ops) ...` per replica, or why it did not answer.
fn replica_lines(document: &Value) -> String {
    let mut out = String::new();
    for replica in document["replicas"].as_array().into_iter().flatten() {
        let device = &replica["device"];
        let Some(items) = replica["items"].as_array() else {
            let error = replica["error"].as_str().unwrap_or("no answer");
            out.push_str(&format!("device {device}: {error}\n"));
            continue;
        };
        let held: Vec<String> = items
            .iter()
            .filter_map(|item| serde_json::from_value::<ItemState>(item.clone()).ok())
            .map(|item| {
                format!(
                    "{} qty {} ({} ops)",
                    item.product,
                    item.qty(),
                    item.ops.len()
                )
            })
            .collect();
        let held = if held.is_empty() {
            "nothing".to_owned()
        } else {
            held.join(", ")
        };
        out.push_str(&format!("device {device}: {held}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn each_replica_on_a_line_with_its_folded_quantity() {
        let version = json!({"hlc": 65536, "gateway": 1});
        let document = json!({"userid": "u", "replicas": [
            {"device": 1, "items": [{
                "product": "1", "meta": {"price": 61, "category": "1"},
                "base": {"qty": 2, "version": version},
                "ops": [{"id": "00000000000000000000000000000007", "kind": "Add", "version": {"hlc": 131072, "gateway": 1}}],
            }], "error": null},
            {"device": 2, "items": [], "error": null},
            {"device": 3, "items": null, "error": "unreachable"},
        ]});
        assert_eq!(
            replica_lines(&document),
            "device 1: 1 qty 3 (1 ops)\ndevice 2: nothing\ndevice 3: unreachable\n"
        );
    }
}

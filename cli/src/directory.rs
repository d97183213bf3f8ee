//! The seed's two directory views, served by the data tier through the API server's admin
//! endpoints:
//!
//! - `cartdb locate U [NAME]`: USERID/PRODUCTID/DEVICEID, each item's placement group and
//!   which devices are in its up set (`current`) or past set (`past`), with what each holds
//!   (`GET /api/admin/locate`);
//! - `cartdb device-items D`: DEVICEID/USERID/PRODUCTID, from that data node's own store,
//!   every page of it (`GET /api/admin/device-items`).
//!
//! `--json` prints the API's documents instead (for `device-items`, one per page).

use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use serde_json::Value;

use crate::api_client::{ApiArgs, get_json, print_document};

/// Arguments of `cartdb locate`.
#[derive(Debug, Args)]
pub struct LocateArgs {
    /// The user whose items to locate.
    #[arg(value_name = "USERID")]
    user: String,
    /// Only the item with this product name.
    #[arg(value_name = "NAME")]
    item: Option<String>,
    #[command(flatten)]
    api: ApiArgs,
    /// Print the API's JSON document.
    #[arg(long)]
    json: bool,
}

/// Arguments of `cartdb device-items`.
#[derive(Debug, Args)]
pub struct DeviceItemsArgs {
    /// The device (CRUSH device id) whose store to list.
    #[arg(value_name = "DEVICEID")]
    device: u32,
    #[command(flatten)]
    api: ApiArgs,
    /// Print the API's JSON documents, one per page.
    #[arg(long)]
    json: bool,
}

/// Prints where a user's items live.
///
/// # Errors
/// The API unreachable or answering an error (an unknown product: 404).
pub fn locate(args: LocateArgs) -> anyhow::Result<ExitCode> {
    let mut query = vec![("userid", args.user.clone())];
    if let Some(item) = &args.item {
        query.push(("item", item.clone()));
    }
    let document = get_json(&args.api, "/api/admin/locate", &query)?;
    print_document(&document, args.json, locate_lines);
    Ok(ExitCode::SUCCESS)
}

/// Prints every item a device holds, page by page.
///
/// # Errors
/// The API unreachable or answering an error (a device not in the map: 400; a device that
/// is down: 503).
pub fn device_items(args: DeviceItemsArgs) -> anyhow::Result<ExitCode> {
    let mut after: Option<(String, String)> = None;
    let mut total = 0_usize;
    loop {
        let mut query = vec![("device", args.device.to_string())];
        if let Some((user, product)) = &after {
            query.push(("after_userid", user.clone()));
            query.push(("after_productid", product.clone()));
        }
        let page = get_json(&args.api, "/api/admin/device-items", &query)?;
        if args.json {
            println!("{page}");
        } else {
            for line in page["paths"].as_array().into_iter().flatten() {
                println!("{}", line.as_str().unwrap_or_default());
            }
        }
        total += page["items"].as_array().map_or(0, Vec::len);
        after = match &page["next"] {
            Value::Null => break,
            next => Some((
                next["user"].as_str().context("next.user")?.to_owned(),
                next["product"].as_str().context("next.product")?.to_owned(),
            )),
        };
    }
    eprintln!("device {}: {total} items", args.device);
    Ok(ExitCode::SUCCESS)
}

/// The text of a `locate` document: per item a header with its PG, then one
/// `USERID/PRODUCTID/DEVICEID` line per device of its up and past sets.
fn locate_lines(doc: &Value) -> String {
    let user = doc["userid"].as_str().unwrap_or("?");
    let mut out = String::new();
    for item in doc["items"].as_array().into_iter().flatten() {
        let product = item["product"].as_str().unwrap_or("?");
        let what = match product.strip_prefix('@') {
            Some(recorded) => format!("cart-index entry for product {recorded}"),
            None => format!(
                "{} (product {product})",
                item["name"].as_str().unwrap_or("(not in the catalog)")
            ),
        };
        out += &format!("{user} {what}: x={} pg={}\n", item["x"], item["pg"]);
        for replica in item["replicas"].as_array().into_iter().flatten() {
            let role = if replica["current"] == Value::Bool(true) {
                "current"
            } else {
                "past"
            };
            let holds = match (&replica["answered"], &replica["qty"]) {
                (Value::Bool(false), _) => "no answer".to_owned(),
                (_, Value::Null) => "does not hold it".to_owned(),
                (_, qty) => format!("qty {qty}"),
            };
            let path = format!("{user}/{product}/{}", replica["device"]);
            out += &format!("  {path:<14} {role:<7} {holds}\n");
        }
    }
    if out.is_empty() {
        out = format!("{user}: no items\n");
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn locate_prints_the_seed_paths_with_roles() {
        let doc = json!({
            "userid": "user1",
            "items": [{
                "product": "1", "name": "pork", "x": 72916709, "pg": 37,
                "replicas": [
                    {"device": 1, "current": true, "answered": true, "qty": 2},
                    {"device": 3, "current": true, "answered": false, "qty": null},
                    {"device": 4, "current": true, "answered": true, "qty": null},
                    {"device": 6, "current": false, "answered": true, "qty": 1}
                ]
            }, {
                "product": "@1", "name": null, "x": 5, "pg": 5,
                "replicas": [{"device": 2, "current": true, "answered": true, "qty": 1}]
            }]
        });
        let text = locate_lines(&doc);
        assert!(
            text.contains("user1 pork (product 1): x=72916709 pg=37"),
            "{text}"
        );
        assert!(text.contains("  user1/1/1      current qty 2\n"), "{text}");
        assert!(
            text.contains("  user1/1/3      current no answer\n"),
            "{text}"
        );
        assert!(
            text.contains("  user1/1/4      current does not hold it\n"),
            "{text}"
        );
        assert!(text.contains("  user1/1/6      past    qty 1\n"), "{text}");
        assert!(
            text.contains("user1 cart-index entry for product 1: x=5 pg=5\n"),
            "{text}"
        );
        assert!(text.contains("  user1/@1/2     current qty 1\n"), "{text}");
        assert_eq!(
            locate_lines(&json!({"userid": "u", "items": []})),
            "u: no items\n"
        );
    }
}

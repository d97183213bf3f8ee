//! The operator CLI covers the admin API: `cartdb product set|list`, `cartdb category`,
//! `cartdb replicas`, `cartdb traffic`, `cartdb status`, `cartdb pace set|unset`,
//! `cartdb map pgs|preview` (the
//! map changes are in `data_movement.rs`) and `cartdb bench --fill`, in text and with
//! `--json`, on a
//! running cluster, with `--api` given and the token taken from `CARTDB_ADMIN_TOKEN`.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Result, ensure};
use cartdb_tests::cli::{cartdb, cartdb_json, fill_carts};
use cartdb_tests::{Cluster, ClusterOptions, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_action_has_a_command() -> Result<()> {
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    let url = cluster.api_url().to_owned();
    let api = cluster.client().clone();

    // A new product, through the CLI, is then sold through the API.
    let set = cartdb_json(
        &url,
        &[
            "product",
            "set",
            "--productid",
            "900",
            "--name",
            "cli-tea",
            "--category",
            "tea",
            "--price",
            "7",
        ],
    )?;
    ensure!(set["name"] == "cli-tea" && set["price"] == 7, "{set}");
    let listed = cartdb(&url, &["product", "list"])?;
    ensure!(
        listed.contains("900 cli-tea category tea price 7"),
        "{listed}"
    );
    let catalog = cartdb_json(&url, &["product", "list"])?;
    ensure!(
        catalog["products"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["productid"] == "900")),
        "{catalog}"
    );
    let refused = cartdb(
        &url,
        &[
            "product",
            "set",
            "--productid",
            "a/b",
            "--name",
            "x",
            "--category",
            "c",
            "--price",
            "1",
        ],
    )
    .unwrap_err()
    .to_string();
    ensure!(
        refused.contains("400") && refused.contains("productid"),
        "{refused}"
    );

    // The catalog reaches the gateways through a ZooKeeper watch: wait until it sells.
    wait_until(
        "the new product to sell",
        Duration::from_secs(30),
        || async { Ok((api.insert("cli-user", "cli-tea").await?.status == 200).then_some(())) },
    )
    .await?;

    ensure!(cartdb(&url, &["category", "tea"])? == "cli-user\n");
    let users = cartdb_json(&url, &["category", "tea"])?;
    ensure!(users["users"] == serde_json::json!(["cli-user"]), "{users}");

    let replicas = cartdb(&url, &["replicas", "cli-user"])?;
    // " 900": the item itself, not its cart-index entry "@900".
    ensure!(
        replicas.matches(" 900 qty 1 ").count() == 3,
        "three replicas hold it: {replicas}"
    );
    let replicas = cartdb_json(&url, &["replicas", "cli-user"])?;
    ensure!(replicas["userid"] == "cli-user", "{replicas}");

    // The traffic window shows the insert once its 5-second bucket has closed.
    let busy = wait_until(
        "the insert in the traffic table",
        Duration::from_secs(30),
        || {
            let url = url.clone();
            async move {
                let table = cartdb(&url, &["traffic"])?;
                Ok((table.lines().count() > 1).then_some(table))
            }
        },
    )
    .await?;
    ensure!(busy.starts_with("start (unix s)"), "{busy}");
    let traffic = cartdb_json(&url, &["traffic"])?;
    ensure!(traffic["bucket_secs"] == 5, "{traffic}");

    let status = cartdb_json(&url, &["status"])?;
    ensure!(
        status["devices"].as_array().map(Vec::len) == Some(6),
        "{status}"
    );

    // The map: every PG's sets, and a preview that changes nothing.
    let pgs = cartdb_json(&url, &["map", "pgs"])?;
    ensure!(pgs["pgs"].as_array().map(Vec::len) == Some(256), "{pgs}");
    let table = cartdb(&url, &["map", "pgs"])?;
    ensure!(table.contains("pg   255  up "), "{table}");
    let epoch = pgs["epoch"].clone();
    let preview = cartdb(&url, &["map", "preview", "--out", "3"])?;
    ensure!(preview.contains("PGs change placement"), "{preview}");
    let after = cartdb_json(&url, &["map", "pgs"])?;
    ensure!(
        after["epoch"] == epoch,
        "a preview changed the map: {after}"
    );

    // The sweep's pace, changed at runtime: the leader keeps the map's, then its own again.
    wait_pace(&url, 20_000).await?;
    ensure!(cartdb(&url, &["pace", "set", "1234"])?.contains("1234 items/s"));
    wait_pace(&url, 1_234).await?;
    ensure!(cartdb(&url, &["status"])?.contains("1234 items/s"));
    let refused = cartdb(&url, &["pace", "set", "0"]).unwrap_err().to_string();
    ensure!(
        refused.contains("400") && refused.contains("items_per_sec"),
        "{refused}"
    );
    cartdb(&url, &["pace", "unset"])?;
    wait_pace(&url, 20_000).await?;

    // `cartdb bench --fill` gives every shopper one item before the run; a run that only
    // reads the catalog leaves exactly those carts, which the category index then lists.
    fill_carts(&url, 40, 4)?;
    let catalog = cartdb_json(&url, &["product", "list"])?;
    let categories: BTreeSet<&str> = catalog["products"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|product| product["category"].as_str())
        .collect();
    let mut shoppers = BTreeSet::new();
    for category in categories {
        let listed = cartdb_json(&url, &["category", category])?;
        shoppers.extend(
            listed["users"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|user| user.as_str())
                .filter(|user| user.starts_with("bench-"))
                .map(str::to_owned),
        );
    }
    ensure!(
        shoppers.len() == 40,
        "the category index lists {} loaded shoppers, not 40: {shoppers:?}",
        shoppers.len()
    );
    Ok(())
}

/// Waits until `cartdb status` shows the sweep's leader keeping `want` items per second.
async fn wait_pace(url: &str, want: u64) -> Result<()> {
    wait_until(
        &format!("the sweep's leader at {want} items/s"),
        Duration::from_secs(30),
        || async {
            let status = cartdb_json(url, &["status"])?;
            let pace = status["maintenance"]["anti_entropy"]["items_per_sec"].as_u64();
            Ok((pace == Some(want)).then_some(()))
        },
    )
    .await
}

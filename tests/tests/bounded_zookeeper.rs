//! ZooKeeper holds bounded metadata only: cart items never become znodes, and no cart
//! request reaches ZooKeeper. Counted, not timed: ZooKeeper's own `zk_znode_count` (`mntr`)
//! and every session's last request id (`cons`), which heartbeats do not move.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use cartdb_tests::zookeeper::{last_requests, znode_count};
use cartdb_tests::{ApiClient, Cluster, ClusterOptions, wait_until};
use tokio::task::JoinSet;

/// Concurrent API clients inserting.
const CLIENTS: usize = 32;

/// Inserts one item for each user `prefix-i`, i in `range`, cycling through the catalog,
/// with [`CLIENTS`] requests in flight.
async fn insert_distinct(
    api: &ApiClient,
    names: &[String],
    prefix: &str,
    range: std::ops::Range<usize>,
) -> Result<()> {
    let mut tasks = JoinSet::new();
    for client in 0..CLIENTS {
        let (api, names, prefix) = (api.clone(), names.to_vec(), prefix.to_owned());
        let range = range.clone();
        tasks.spawn(async move {
            for i in range.skip(client).step_by(CLIENTS) {
                let user = format!("{prefix}-{i}");
                let item = &names[i % names.len()];
                let reply = api.insert(&user, item).await?;
                ensure!(reply.status == 200, "insert {user}/{item}: {reply:?}");
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

/// Inserting 20,000 distinct (user, product) items leaves ZooKeeper's znode count where
/// 100 left it, and while they run no session (data nodes, gateways, API server) makes a
/// request but heartbeats.
///
/// The anti-entropy sweep runs, as by default: its progress stays with its leader. The
/// sweep changes the map only to clear the past sets of clean PGs, so the count starts once
/// no PG has one (devices registering one by one at start can leave some behind).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_does_not_grow_with_cart_items() -> Result<()> {
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    let api = cluster.client().clone();
    let port = cluster.zookeeper().port();
    let products = api.products().await?;
    let names: Vec<String> = products
        .products()
        .iter()
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect();
    ensure!(!names.is_empty(), "no products: {products:?}");

    insert_distinct(&api, &names, "zk", 0..100).await?;
    wait_until("no PG with a past set", Duration::from_secs(60), || {
        let api = api.clone();
        async move {
            let status = api.cluster().await?;
            let remapped = status.json["placement_groups"]["remapped"].as_u64();
            ensure!(
                remapped.is_some(),
                "no placement_groups.remapped: {status:?}"
            );
            Ok((remapped == Some(0)).then_some(()))
        }
    })
    .await?;
    let after_100 = znode_count(port).await.context("mntr after 100 items")?;
    let sessions_before: BTreeMap<String, i64> =
        last_requests(port).await.context("cons after 100 items")?;
    ensure!(
        sessions_before.len() >= 9,
        "expected the sessions of 6 data nodes, 2 gateways and the API server: {sessions_before:?}"
    );

    insert_distinct(&api, &names, "zk", 100..20_100).await?;
    let after_20_100 = znode_count(port).await.context("mntr after 20,100 items")?;
    let sessions_after = last_requests(port)
        .await
        .context("cons after 20,100 items")?;

    assert!(
        after_20_100.abs_diff(after_100) <= 2,
        "znodes: {after_100} after 100 items, {after_20_100} after 20,100"
    );
    for (session, last) in &sessions_before {
        let now = sessions_after.get(session);
        assert_eq!(
            now,
            Some(last),
            "session {session} made ZooKeeper requests while the inserts ran (or left)"
        );
    }
    // The items are really there: a sample read back through the API.
    for i in [0, 99, 100, 10_000, 20_099] {
        let user = format!("zk-{i}");
        let name = &names[i % names.len()];
        let cart = wait_until(&format!("{user}'s cart"), Duration::from_secs(10), || {
            let api = api.clone();
            let user = user.clone();
            async move { Ok(Some(api.list_all(&user).await?)) }
        })
        .await?;
        assert_eq!(cart.qty_of(name), 1, "{user}: {cart:?}");
    }
    Ok(())
}

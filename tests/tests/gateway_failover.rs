//! Gateway failover: the API server spreads requests over both gateways and, when one dies,
//! keeps serving through the other, without the client seeing an error; a restarted gateway
//! rejoins; with no gateway at all the API answers 503 with a JSON error instead of hanging.

use std::time::Duration;

use anyhow::Result;
use cartdb_tests::{Cluster, ClusterOptions, wait_until};

const ITEMS: [&str; 4] = ["pork", "soap", "yogurt", "cereals"];
const VIEW_TIMEOUT: Duration = Duration::from_secs(60);

/// Right after one of the two gateways is killed (-9), and after it has dropped out of
/// `/api/cluster`, every insert and every `list_all` still succeeds, and the carts hold
/// exactly what was inserted.
#[tokio::test]
async fn the_api_keeps_serving_through_the_other_gateway() -> Result<()> {
    let mut cluster = Cluster::start(ClusterOptions::default()).await?;
    let api = cluster.client().clone();
    for item in ITEMS {
        api.insert("before", item).await?.expect_status(200);
    }
    cluster.kill_gateway(1)?;
    for round in 1..=5 {
        for item in ITEMS {
            let reply = api.insert("during", item).await?;
            reply.expect_status(200);
            assert_eq!(reply.qty(), Some(round), "{reply}");
        }
        let cart = api.list_all("before").await?;
        cart.expect_status(200);
        assert_eq!(cart.items().len(), ITEMS.len(), "{cart}");
    }
    cluster
        .wait_for_view(
            "the killed gateway to leave /api/cluster",
            VIEW_TIMEOUT,
            |view| view.gateways == 1,
        )
        .await?;
    for item in ITEMS {
        api.insert("after", item).await?.expect_status(200);
    }
    for user in ["before", "during", "after"] {
        let cart = api.list_all(user).await?;
        cart.expect_status(200);
        let expected = if user == "during" { 5 } else { 1 };
        for item in ITEMS {
            assert_eq!(cart.qty_of(item), expected, "{user} {item}: {cart}");
        }
    }
    Ok(())
}

/// A killed gateway that is restarted registers again, and then carries the traffic alone
/// when the other gateway is killed.
#[tokio::test]
async fn a_restarted_gateway_rejoins_and_serves() -> Result<()> {
    let mut cluster = Cluster::start(ClusterOptions::default()).await?;
    let api = cluster.client().clone();
    cluster.kill_gateway(1)?;
    cluster
        .wait_for_view("gateway 1 to leave", VIEW_TIMEOUT, |view| {
            view.gateways == 1
        })
        .await?;
    cluster.restart_gateway(1)?;
    cluster
        .wait_for_view("gateway 1 to rejoin", VIEW_TIMEOUT, |view| {
            view.gateways == 2
        })
        .await?;
    cluster.kill_gateway(2)?;
    for item in ITEMS {
        api.insert("rejoin", item).await?.expect_status(200);
    }
    let cart = api.list_all("rejoin").await?;
    cart.expect_status(200);
    assert_eq!(cart.items().len(), ITEMS.len(), "{cart}");
    Ok(())
}

/// With both gateways killed, inserts and reads are answered promptly with 503 and a JSON
/// error; once a gateway is back, inserts succeed again.
#[tokio::test]
async fn without_any_gateway_the_api_answers_503_then_recovers() -> Result<()> {
    let mut cluster = Cluster::start(ClusterOptions::default()).await?;
    let api = cluster.client().clone();
    cluster.kill_gateway(1)?;
    cluster.kill_gateway(2)?;
    for reply in [
        api.insert("nobody-home", "pork").await?,
        api.list_all("nobody-home").await?,
    ] {
        reply.expect_status(503);
        assert!(reply.error().is_some_and(|e| !e.is_empty()), "{reply}");
    }
    cluster.restart_gateway(2)?;
    wait_until(
        "an insert to succeed again",
        Duration::from_secs(30),
        || async {
            let reply = api.insert("nobody-home", "pork").await?;
            Ok((reply.status == 200).then_some(()))
        },
    )
    .await?;
    assert!(api.list_all("nobody-home").await?.qty_of("pork") >= 1);
    Ok(())
}

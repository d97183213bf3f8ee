//! Real-time order across gateways whose clocks differ: an operation acknowledged after
//! another on the same item is ordered after it ("Safety" in docs/design.md).

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use cartdb_tests::prometheus::scrape;
use cartdb_tests::replica_check::converged;
use cartdb_tests::{Cluster, ClusterOptions, wait_until};

/// how far ahead gateway 1's clock runs: well inside the 10 s skew the data nodes allow,
/// and far more than the milliseconds between an acknowledgement and the next request.
const AHEAD_MS: i64 = 50;
const USERS: usize = 200;

/// Gateway 1 runs 50 ms ahead. For each user, an insert through one gateway is acknowledged,
/// then a delete of the same item goes through the other; half the users take each order.
/// Every delete must be reflected in the final cart: a delete stamped by the slower clock
/// below the insert it follows would be folded before it, and the item would stay (76 of
/// 400 carts kept it at 200 ms before replicas refused operations out of order).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_after_an_insert_through_a_faster_clock_stays_deleted() -> Result<()> {
    let options = ClusterOptions::default().with_gateway_clock_offset(1, AHEAD_MS);
    let cluster = Cluster::start(options).await?;
    let gateways: Vec<_> = cluster.gateway_clients().await?.into_values().collect();
    ensure!(gateways.len() == 2, "expected 2 gateways");
    for n in 0..USERS {
        let user = format!("skew-{n}");
        let (first, second) = if n % 2 == 0 {
            (&gateways[0], &gateways[1])
        } else {
            (&gateways[1], &gateways[0])
        };
        let qty = first.insert(&user, "pork").await?;
        ensure!(qty == 1, "{user}: insert answered qty {qty}");
        let qty = second.delete(&user, "pork").await?;
        ensure!(qty == 0, "{user}: delete answered qty {qty}");
    }
    let api = cluster.client();
    let mut kept = Vec::new();
    for n in 0..USERS {
        let user = format!("skew-{n}");
        let cart = api.list_all(&user).await?;
        ensure!(cart.status == 200, "{user}: {cart:?}");
        if cart.qty_of("pork") != 0 {
            kept.push(user);
        }
    }
    ensure!(
        kept.is_empty(),
        "{} of {USERS} carts kept an item whose delete was acknowledged after its insert: {kept:?}",
        kept.len()
    );
    // The order was kept by stamping deletes again, not by luck: the slower gateway was
    // refused below the faster one's inserts and said so.
    let view = cluster.view().await?;
    let mut restamped = 0.0;
    for gateway in view.raw["gateways"].as_array().into_iter().flatten() {
        let metrics = gateway["metrics"].as_str().context("a gateway's metrics")?;
        restamped += scrape(metrics)
            .await?
            .sum("cartdb_gateway_restamped_writes_total", &[]);
    }
    ensure!(restamped > 0.0, "no write was stamped again");
    // Replicas agree afterwards: every user's replicas converge on the deleted item.
    wait_until(
        "every skewed user's replicas agree",
        Duration::from_secs(60),
        || {
            let api = api.clone();
            async move {
                for n in 0..USERS {
                    converged(&api, &format!("skew-{n}"), 3).await?;
                }
                Ok(Some(()))
            }
        },
    )
    .await?;
    Ok(())
}

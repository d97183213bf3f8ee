//! Copies left on a substitute device are found: a device that leaves a placement group's
//! up set joins its past set, which reads, repairs and the anti-entropy sweep consult until
//! the PG is clean, when the substitute's copy is handed back (deleted).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use cartdb_tests::replica_check::converged;
use cartdb_tests::{ApiClient, Cluster, ClusterOptions, wait_until};
use serde_json::Value;

const PHASE_TIMEOUT: Duration = Duration::from_secs(60);

/// The devices of `user`'s `item` (a product name), from `GET /api/admin/locate`:
/// `(device, current, qty held)`.
async fn located(api: &ApiClient, user: &str, item: &str) -> Result<Vec<(u64, bool, u64)>> {
    let reply = api
        .get(&format!("/api/admin/locate?userid={user}&item={item}"))
        .await?;
    if reply.status != 200 {
        bail!("locate {user} {item}: {reply:?}");
    }
    let items = reply.json["items"].as_array().context("no items")?;
    let Some(entry) = items.first() else {
        return Ok(Vec::new());
    };
    Ok(entry["replicas"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r: &Value| {
            (
                r["device"].as_u64().unwrap_or(u64::MAX),
                r["current"] == Value::Bool(true),
                r["qty"].as_u64().unwrap_or(0),
            )
        })
        .collect())
}

/// A replica is killed; writes made meanwhile, and the repair that follows a read, put the
/// item on a substitute. The replica returns (the substitute leaves the up set), the item
/// is deleted down to 0. Then every replica converges, `list_category` no longer lists the
/// user, and the substitute's copy is handed back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_on_a_substitute_is_found_after_the_device_returns() -> Result<()> {
    let mut cluster = Cluster::start(ClusterOptions::default()).await?;
    let api = cluster.client().clone();
    let user = "substituted";
    // pork: product 1, category 1.
    api.insert(user, "pork").await?.expect_status(200);
    let before = located(&api, user, "pork").await?;
    let up_before: Vec<u64> = before.iter().filter(|r| r.1).map(|r| r.0).collect();
    let victim = up_before[0];
    cluster.kill_datanode(usize::try_from(victim)?)?;
    cluster
        .wait_for_view("the victim to be marked out", PHASE_TIMEOUT, |view| {
            view.device(u32::try_from(victim).unwrap_or(u32::MAX))
                .is_some_and(|d| d.is_down_and_out())
        })
        .await?;
    api.insert(user, "pork").await?.expect_status(200);
    // A read finds the substitute lacking the first insert; its follow-up repairs it.
    let substitute = wait_until("repair to fill the substitute", PHASE_TIMEOUT, || async {
        api.list_all(user).await?.expect_status(200);
        let now = located(&api, user, "pork").await?;
        Ok(now
            .iter()
            .find(|(d, current, qty)| *current && !up_before.contains(d) && *qty == 2)
            .map(|(d, _, _)| *d))
    })
    .await?;

    cluster.restart_datanode(usize::try_from(victim)?)?;
    cluster
        .wait_for_view("every device up and in again", PHASE_TIMEOUT, |view| {
            view.devices_up_and_in() == 6
        })
        .await?;
    // The substitute is no longer in the up set but still holds the item.
    let back = located(&api, user, "pork").await?;
    assert!(
        back.iter().any(|(d, current, _)| *d == victim && *current),
        "the victim is back in the up set: {back:?}"
    );
    for _ in 0..2 {
        api.delete(user, "pork").await?.expect_status(200);
    }
    api.delete(user, "pork").await?.expect_status(404);

    wait_until("the replicas to converge", PHASE_TIMEOUT, || {
        converged(&api, user, 3)
    })
    .await?;
    wait_until("list_category to drop the user", PHASE_TIMEOUT, || async {
        let users = api.list_category("1").await?.users();
        Ok((!users.iter().any(|u| u == user)).then_some(()))
    })
    .await?;
    wait_until(
        "the substitute's copy to be handed back",
        PHASE_TIMEOUT,
        || async {
            let now = located(&api, user, "pork").await?;
            let still = now.iter().any(|(d, _, _)| *d == substitute);
            Ok((!still).then_some(()))
        },
    )
    .await?;
    let cart = api.list_all(user).await?;
    assert_eq!(cart.qty_of("pork"), 0, "{cart:?}");
    Ok(())
}

//! Membership through ZooKeeper, Ceph style: a data node whose ZooKeeper session expires
//! (frozen with SIGSTOP past the session timeout, or killed) is shown down and is marked out
//! (CRUSH reweight 0, a new map epoch) in `/api/cluster`; writes keep being acknowledged
//! meanwhile; when the node comes back (SIGCONT, or a restart on the same data directory) it
//! is shown up and marked in again.

use std::time::Duration;

use anyhow::Result;
use cartdb_tests::{ApiClient, Cluster, ClusterOptions, ClusterView};

const VIEW_TIMEOUT: Duration = Duration::from_secs(60);
const ITEMS: [&str; 4] = ["pork", "soap", "yogurt", "cereals"];

/// Inserts one of each item for `user` and checks every insert is acknowledged.
async fn insert_all(api: &ApiClient, user: &str) -> Result<()> {
    for item in ITEMS {
        api.insert(user, item).await?.expect_status(200);
    }
    Ok(())
}

/// Checks that `user` holds `qty` of every item.
async fn assert_cart(api: &ApiClient, user: &str, qty: u64) -> Result<()> {
    let cart = api.list_all(user).await?;
    cart.expect_status(200);
    for item in ITEMS {
        assert_eq!(cart.qty_of(item), qty, "{user} {item}: {cart}");
    }
    Ok(())
}

fn is_out(view: &ClusterView, id: usize) -> bool {
    view.device(id as u32).is_some_and(|d| d.is_down_and_out())
}

fn all_in(view: &ClusterView) -> bool {
    view.devices.len() == 6 && view.devices_up_and_in() == 6
}

/// A data node frozen with SIGSTOP beyond the ZooKeeper session timeout is shown down with
/// reweight 0 under a newer map epoch; writes are acknowledged while it is frozen (before
/// and after it is marked out); after SIGCONT it re-registers, is shown up and in under a
/// still newer epoch, and every acknowledged write is readable.
#[tokio::test]
async fn a_paused_datanode_is_marked_out_and_back_in_after_resume() -> Result<()> {
    const VICTIM: usize = 4;
    let mut cluster = Cluster::start(ClusterOptions::default()).await?;
    let api = cluster.client().clone();
    let start_epoch = cluster.view().await?.map_epoch;
    insert_all(&api, "m-before").await?;

    cluster.pause_datanode(VICTIM)?;
    insert_all(&api, "m-frozen").await?;
    let out = cluster
        .wait_for_view("the frozen device to be down and out", VIEW_TIMEOUT, |v| {
            is_out(v, VICTIM)
        })
        .await?;
    assert!(
        out.map_epoch > start_epoch,
        "marking out must make a new map epoch: {}",
        out.raw
    );
    assert_eq!(
        out.devices_up_and_in(),
        5,
        "only the frozen device is out: {}",
        out.raw
    );
    insert_all(&api, "m-out").await?;

    cluster.resume_datanode(VICTIM)?;
    let back = cluster
        .wait_for_view("the device to be up and in again", VIEW_TIMEOUT, all_in)
        .await?;
    assert!(
        back.map_epoch > out.map_epoch,
        "marking in must make a new map epoch: {}",
        back.raw
    );
    insert_all(&api, "m-back").await?;
    for user in ["m-before", "m-frozen", "m-out", "m-back"] {
        assert_cart(&api, user, 1).await?;
    }
    Ok(())
}

/// A data node killed with -9 is shown down and out; writes are acknowledged meanwhile;
/// restarted on the same port and data directory it is shown up and in again, and the
/// writes acknowledged before, during and after its absence are all readable.
#[tokio::test]
async fn a_killed_datanode_is_marked_out_and_rejoins_after_restart() -> Result<()> {
    const VICTIM: usize = 1;
    let mut cluster = Cluster::start(ClusterOptions::default()).await?;
    let api = cluster.client().clone();
    insert_all(&api, "k-before").await?;
    cluster.kill_datanode(VICTIM)?;
    insert_all(&api, "k-dead").await?;
    cluster
        .wait_for_view("the killed device to be down and out", VIEW_TIMEOUT, |v| {
            is_out(v, VICTIM)
        })
        .await?;
    insert_all(&api, "k-out").await?;
    cluster.restart_datanode(VICTIM)?;
    cluster
        .wait_for_view("the device to be up and in again", VIEW_TIMEOUT, all_in)
        .await?;
    insert_all(&api, "k-back").await?;
    for user in ["k-before", "k-dead", "k-out", "k-back"] {
        assert_cart(&api, user, 1).await?;
    }
    Ok(())
}

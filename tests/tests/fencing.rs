//! Map changes fenced by epoch ("Safety" in docs/design.md): a gateway that missed a map
//! change is refused by the data nodes instead of writing where the placement groups no
//! longer are.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use cartdb_core::wire::GatewayResponse;
use cartdb_policies::RENDEZVOUS_POLICY_WASM;
use cartdb_tests::cli::cartdb_json;
use cartdb_tests::replica_check::{wait_all_clean, wait_settled};
use cartdb_tests::{Cluster, ClusterOptions, Workload, WorkloadOptions, wait_until};

/// Bound on a backfill after a placement swap (most PGs move) and on a reconnection.
const SETTLE: Duration = Duration::from_secs(300);
/// Shoppers written through the stale gateway.
const STALE_USERS: usize = 24;

/// Waits until `n` gateways are registered.
async fn wait_for_gateways(cluster: &mut Cluster, n: usize) -> Result<()> {
    cluster
        .wait_for_view(&format!("{n} gateways registered"), SETTLE, |view| {
            view.gateways == n
        })
        .await?;
    Ok(())
}

/// Gateway 2 is cut from ZooKeeper (and from nothing else) while a placement swap moves most
/// PGs and the backfill hands their old copies back. It keeps its old map and still reaches
/// every data node, so it goes on placing with the old map: every write sent through it
/// must be refused by the data nodes, which know the PGs moved, rather than acknowledged on
/// devices the cluster no longer reads (before the fence, those writes were acknowledged and
/// then missing from every cart). The Jepsen-style workload runs through the API meanwhile;
/// once the gate heals, every acknowledged operation is in its cart, and every item is on
/// exactly its up set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_cut_from_zookeeper_during_a_placement_swap_is_refused() -> Result<()> {
    let options = ClusterOptions::default()
        .with_sweep(10_000)
        .with_gateway_zk_gate(2);
    let mut cluster = Cluster::start(options).await?;
    let url = cluster.api_url().to_owned();
    let api = cluster.client().clone();
    let before = cluster.gateway_clients().await?;
    ensure!(before.len() == 2, "expected 2 gateways");
    let workload = Workload::start_with(api.clone(), WorkloadOptions::new("swap", 16).clients(4));
    workload.advance(30, SETTLE).await?;

    // Cut gateway 2 from ZooKeeper: its session expires and it leaves the membership (the
    // API server stops choosing it), but it stays reachable, with the map it had.
    cluster.gateway_zk_gate(2)?.cut();
    wait_for_gateways(&mut cluster, 1).await?;
    let remaining = cluster.gateway_clients().await?;
    let (stale_id, stale) = before
        .into_iter()
        .find(|(id, _)| !remaining.contains_key(id))
        .context("which gateway was cut")?;
    eprintln!("gateway id {stale_id} cut from ZooKeeper");

    // CRUSH -> rendezvous moves most PGs; the backfill copies them and hands back.
    let swap = cartdb_json(
        &url,
        &[
            "policy",
            "deploy",
            "placement",
            RENDEZVOUS_POLICY_WASM,
            "--by",
            "test",
        ],
    )?;
    ensure!(swap["applied_epoch"].as_u64().is_some(), "{swap}");
    wait_all_clean(&api, SETTLE).await?;
    workload.advance(30, SETTLE).await?;

    // Writes through the stale gateway: each is refused (it cannot learn the new map), or,
    // for a PG the swap left in place, acknowledged where it belongs.
    let mut refused = Vec::new();
    let mut acknowledged = Vec::new();
    for n in 0..STALE_USERS {
        let (user, key) = (format!("stale-{n}"), format!("stale-key-{n}"));
        match stale.insert_keyed(&user, "pork", &key).await? {
            GatewayResponse::Updated { qty } => {
                ensure!(qty == 1, "{user}: qty {qty}");
                acknowledged.push(user);
            }
            GatewayResponse::Failed(failure) => refused.push((user, key, failure.to_string())),
            other => bail!("{user}: {other:?}"),
        }
    }
    eprintln!(
        "through the stale gateway: {} acknowledged, {} refused",
        acknowledged.len(),
        refused.len()
    );
    // What it acknowledged must be where the cluster reads.
    for user in &acknowledged {
        let cart = api.list_all(user).await?;
        ensure!(
            cart.qty_of("pork") == 1,
            "{user}: acknowledged through the stale gateway, but not in the cart (lost): {cart:?}"
        );
    }
    ensure!(
        !refused.is_empty(),
        "the stale gateway's writes were all acknowledged: nothing fenced them"
    );
    let named = refused
        .iter()
        .any(|(_, _, why)| why.contains("placed with map epoch"));
    ensure!(named, "no refusal names the stale epoch: {refused:?}");

    // Healed, gateway 2 registers again with the current map; the refused writes are
    // retried with the same keys through the API, as a client does after a 503.
    cluster.gateway_zk_gate(2)?.heal();
    wait_for_gateways(&mut cluster, 2).await?;
    for (user, key, _) in &refused {
        wait_until(&format!("{user}'s retried insert"), SETTLE, || async {
            let reply = api.insert_with_key(user, "pork", key).await?;
            Ok((reply.status == 200).then_some(()))
        })
        .await?;
    }
    workload.advance(30, SETTLE).await?;
    let history = workload.stop().await?;
    wait_all_clean(&api, SETTLE).await?;
    history.check(&api).await?;
    for n in 0..STALE_USERS {
        let user = format!("stale-{n}");
        let cart = api.list_all(&user).await?;
        ensure!(
            cart.qty_of("pork") == 1,
            "{user}: an acknowledged insert was lost or applied twice: {cart:?}"
        );
    }
    let users: Vec<String> = history
        .users()
        .into_iter()
        .chain((0..STALE_USERS).map(|n| format!("stale-{n}")))
        .collect();
    wait_settled(&api, &users, 3, SETTLE).await?;
    Ok(())
}

/// ZooKeeper stopped (a quorum lost, in production): the processes keep the map they have,
/// every request is placed with it and no data node is ahead of it, so cart reads and
/// writes go on being served, by choice, rather than failing with 503; when ZooKeeper
/// returns, nothing acknowledged meanwhile is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carts_are_served_on_the_last_map_while_zookeeper_is_down() -> Result<()> {
    let mut cluster = Cluster::start(ClusterOptions::default()).await?;
    let api = cluster.client().clone();
    let workload = Workload::start(api.clone(), "zk-down", 16);
    workload.advance(20, SETTLE).await?;
    cluster.zookeeper_mut().service_mut().kill()?;
    // Served with ZooKeeper gone: every operation acknowledged, within the usual time.
    workload.advance(60, Duration::from_secs(60)).await?;
    let cart = api.list_all("zk-down-0").await?;
    ensure!(cart.status == 200, "list_all without ZooKeeper: {cart:?}");
    cluster.zookeeper_mut().service_mut().restart()?;
    cluster
        .wait_for_view("every device up and in again", SETTLE, |view| {
            view.devices_up_and_in() == 6 && view.gateways == 2
        })
        .await?;
    workload.advance(20, SETTLE).await?;
    let history = workload.stop().await?;
    history.check(&api).await?;
    wait_all_clean(&api, SETTLE).await?;
    wait_settled(&api, history.users(), 3, SETTLE).await?;
    Ok(())
}

/// The sweep's leader is cut from ZooKeeper (not from the data nodes) while a placement swap
/// is still backfilling, and the swap is rolled back through the other gateway. The cut
/// leader's view still holds the swap's past sets: the devices the rollback made current
/// again. It must not hand them back: it stops leading once its session is not connected,
/// and the drops it might still send carry an epoch older than the PGs' intervals, which the
/// data nodes refuse. The workload's acknowledged operations, written to the rolled-back
/// placement meanwhile, all survive, and every item ends on exactly its up set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_leader_cut_from_zookeeper_during_a_rollback_deletes_nothing() -> Result<()> {
    // The default sweep pace (20 shoppers a second) keeps the swap's backfill going for
    // tens of seconds, long enough to cut its leader in the middle of it.
    let options = ClusterOptions::default()
        .with_gateway_zk_gate(1)
        .with_gateway_zk_gate(2);
    let mut cluster = Cluster::start(options).await?;
    let url = cluster.api_url().to_owned();
    let api = cluster.client().clone();
    let workload = Workload::start(api.clone(), "leader", 48);
    workload.advance(60, SETTLE).await?;
    let gateways = cluster.gateway_clients().await?;
    let (&leader_id, _) = gateways.iter().next().context("no gateway")?;
    let view = cluster.view().await?;
    let leader_address = view.raw["gateways"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|g| g["id"].as_u64() == Some(leader_id))
        .and_then(|g| g["address"].as_str())
        .context("the leader's address")?
        .to_owned();
    let leader = cluster
        .gateway_number(&leader_address)
        .context("which process leads")?;

    let swap = cartdb_json(
        &url,
        &[
            "policy",
            "deploy",
            "placement",
            RENDEZVOUS_POLICY_WASM,
            "--by",
            "test",
        ],
    )?;
    ensure!(swap["applied_epoch"].as_u64().is_some(), "{swap}");
    let pgs = api.cluster().await?.json["placement_groups"].clone();
    ensure!(
        pgs["remapped"].as_u64() > Some(0),
        "nothing to backfill: {pgs}"
    );
    cluster.gateway_zk_gate(leader)?.cut();
    wait_for_gateways(&mut cluster, 1).await?;
    let back = cartdb_json(&url, &["policy", "rollback", "placement", "--by", "test"])?;
    ensure!(back["sha256"].is_string(), "{back}");
    // The rollback's backfill ends (the other gateway leads now) and its past sets are
    // cleared, while the cut leader still has the swap's view, in which the rolled-back up
    // sets are past devices to hand back; writes land on them meanwhile.
    wait_all_clean(&api, SETTLE).await?;
    workload.advance(120, SETTLE).await?;
    let history = workload.stop().await?;
    history.check(&api).await?;
    cluster.gateway_zk_gate(leader)?.heal();
    wait_for_gateways(&mut cluster, 2).await?;
    wait_all_clean(&api, SETTLE).await?;
    history.check(&api).await?;
    wait_settled(&api, history.users(), 3, SETTLE).await?;
    Ok(())
}

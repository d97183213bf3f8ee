//! Data that moves itself, with real processes: a device lost for good, a device that comes
//! back (handback), `noout`, a seventh device added after a preview, a device removed under
//! load, and a mass expiry of ZooKeeper sessions held back by the minimum in ratio.
//!
//! Every test runs the Jepsen-style [`Workload`] through the faults and ends with its check
//! (every acknowledged insert and delete reflected exactly, nothing resurrected) and with
//! every replica of every item identical and on its PG's up set only
//! (`/api/admin/replicas`, [`settled`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use cartdb_core::pg::Pool;
use cartdb_core::placement_key::placement_key;
use cartdb_tests::cli::{cartdb, cartdb_json, fill_carts};
use cartdb_tests::replica_check::{device_items, replica_states, settled};
use cartdb_tests::workload::ITEMS;
use cartdb_tests::{ApiClient, Cluster, ClusterOptions, Deadline, History, Workload, wait_until};
use serde_json::{Value, json};

/// The gateways' default down -> out grace (`--down-out-secs`), which these tests keep.
const GRACE: Duration = Duration::from_secs(10);
/// Bound on reaching a state after its cause (beyond the grace where there is one).
const SETTLE: Duration = Duration::from_secs(120);
/// Shoppers of each workload.
const USERS: usize = 24;

fn options() -> ClusterOptions {
    ClusterOptions::default()
        .with_quick_compaction()
        .with_sweep(5_000)
}

/// `GET /api/admin/pgs`: PG -> (up set, past set).
async fn pg_table(api: &ApiClient) -> Result<BTreeMap<u64, (Vec<u64>, Vec<u64>)>> {
    let reply = api.get("/api/admin/pgs").await?;
    ensure!(reply.status == 200, "pgs: {reply}");
    let numbers = |v: &Value| -> Vec<u64> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_u64)
            .collect()
    };
    Ok(reply.json["pgs"]
        .as_array()
        .context("no pgs")?
        .iter()
        .map(|pg| {
            (
                pg["pg"].as_u64().unwrap_or(u64::MAX),
                (numbers(&pg["up"]), numbers(&pg["past"])),
            )
        })
        .collect())
}

/// The `placement_groups` part of `/api/cluster`.
async fn pg_states(api: &ApiClient) -> Result<Value> {
    let reply = api.cluster().await?;
    ensure!(reply.status == 200, "cluster: {reply}");
    Ok(reply.json["placement_groups"].clone())
}

/// Waits until every PG is clean (no past set, `size` live devices) on devices of `live`.
async fn wait_all_clean(api: &ApiClient, live: &BTreeSet<u64>) -> Result<()> {
    wait_until("every PG clean on live devices", SETTLE, || async {
        let states = pg_states(api).await?;
        let pg_num = states["pg_num"].as_u64();
        if states["clean"].as_u64() != pg_num || states["remapped"].as_u64() != Some(0) {
            bail!("not clean yet: {states}");
        }
        for (pg, (up, _)) in pg_table(api).await? {
            ensure!(
                up.len() == 3 && up.iter().all(|d| live.contains(d)),
                "PG {pg} is on {up:?}"
            );
        }
        Ok(Some(()))
    })
    .await
}

/// The workload's check, then every shopper settled, then `list_category` exact.
async fn final_checks(api: &ApiClient, history: &History) -> Result<()> {
    history.check(api).await?;
    for user in history.users() {
        wait_until(&format!("{user} settled"), SETTLE, || {
            settled(api, &user, 3)
        })
        .await?;
    }
    let products = api.products().await?;
    for item in ITEMS {
        let category = products
            .product(item)
            .and_then(|p| p["category"].as_str())
            .with_context(|| format!("{item} has no category"))?
            .to_owned();
        let in_category: BTreeSet<String> = ITEMS
            .iter()
            .filter(|other| {
                products.product(other).and_then(|p| p["category"].as_str())
                    == Some(category.as_str())
            })
            .flat_map(|other| history.holders_of(other))
            .collect();
        let listed: BTreeSet<String> = api
            .list_category(&category)
            .await?
            .users()
            .into_iter()
            .filter(|u| history.used(u))
            .collect();
        ensure!(
            listed == in_category,
            "list_category {category}: listed {listed:?}, holders {in_category:?}"
        );
    }
    Ok(())
}

/// Lets the workload make `n` more acknowledged operations.
async fn run_for(workload: &Workload, n: u64) -> Result<()> {
    workload.advance(n, SETTLE).await
}

/// A shopper whose cereals (product "4") live in a PG whose up set in `table` holds
/// `device`, found by the same placement arithmetic as the gateways'.
fn shopper_on(table: &BTreeMap<u64, (Vec<u64>, Vec<u64>)>, device: u64) -> Result<String> {
    let pool = Pool::new(1, u32::try_from(table.len())?)?;
    (0..10_000)
        .map(|n| format!("compact-{n}"))
        .find(|user| {
            let pg = u64::from(pool.pg_of(placement_key(user, "4")));
            table.get(&pg).is_some_and(|(up, _)| up.contains(&device))
        })
        .context("no shopper found")
}

/// A data node killed with -9 and never brought back: within the grace plus a bounded time
/// its device is out and every PG is clean on 3 live devices; compaction works again for
/// items whose PG held the lost device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_lost_for_good_is_backfilled_and_compaction_resumes() -> Result<()> {
    const LOST: u64 = 3;
    let mut cluster = Cluster::start(options()).await?;
    let api = cluster.client().clone();
    let compacted = shopper_on(&pg_table(&api).await?, LOST)?;
    api.insert(&compacted, "cereals").await?.expect_status(200);
    let workload = Workload::start(api.clone(), "lost", USERS);
    run_for(&workload, 20).await?;
    cluster.kill_datanode(LOST as usize)?;
    let down = cluster
        .wait_for_view("the lost device down, still in", GRACE, |v| {
            v.device(LOST as u32)
                .is_some_and(|d| !d.up && d.reweight != Some(0.0))
        })
        .await?;
    ensure!(down.devices_up_and_in() == 5, "{}", down.raw);
    cluster
        .wait_for_view("the lost device out", GRACE + SETTLE, |v| {
            v.device(LOST as u32).is_some_and(|d| d.is_down_and_out())
        })
        .await?;
    let live: BTreeSet<u64> = (1..=6).filter(|&d| d != LOST).collect();
    wait_all_clean(&api, &live).await?;
    run_for(&workload, 20).await?;
    let history = workload.stop().await?;
    final_checks(&api, &history).await?;

    // Compaction again for an item whose PG held the lost device.
    let user = compacted;
    for _ in 0..6 {
        api.insert(&user, "cereals").await?.expect_status(200);
    }
    wait_until("reads to compact the log", SETTLE, || async {
        api.list_all(&user).await?.expect_status(200);
        let items = replica_states(&api, &user).await?;
        let states = items.get("4").context("no cereals")?;
        let folded = states
            .values()
            .all(|s| s["base"]["qty"].as_u64().unwrap_or(0) > 0);
        Ok((folded && states.len() == 3).then_some(()))
    })
    .await?;
    Ok(())
}

/// A data node stopped past the grace (so marked out, its PGs backfilled elsewhere), writes
/// continuing, then brought back: once settled every PG is clean on its original devices,
/// no device holds a copy outside its PG's up set, and `list_category` lists exactly the
/// shoppers with qty > 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_device_gets_its_pgs_back_and_the_substitutes_hand_back() -> Result<()> {
    const AWAY: usize = 2;
    let mut cluster = Cluster::start(options()).await?;
    let api = cluster.client().clone();
    let original = pg_table(&api).await?;
    let workload = Workload::start(api.clone(), "handback", USERS);
    run_for(&workload, 20).await?;
    cluster.kill_datanode(AWAY)?;
    cluster
        .wait_for_view("the stopped device out", GRACE + SETTLE, |v| {
            v.device(AWAY as u32).is_some_and(|d| d.is_down_and_out())
        })
        .await?;
    run_for(&workload, 30).await?;
    cluster.restart_datanode(AWAY)?;
    cluster
        .wait_for_view("every device up and in", SETTLE, |v| {
            v.devices_up_and_in() == 6
        })
        .await?;
    run_for(&workload, 20).await?;
    let history = workload.stop().await?;
    wait_all_clean(&api, &(1..=6).collect()).await?;
    let now = pg_table(&api).await?;
    for (pg, (up, _)) in &original {
        let back = now.get(pg).map(|(up, _)| up.clone()).unwrap_or_default();
        ensure!(back == *up, "PG {pg} was on {up:?}, is on {back:?}");
    }
    final_checks(&api, &history).await
}

/// With `noout` set, a data node down for longer than the grace is not marked out and
/// nothing is backfilled: the map epoch does not move and no PG is ever remapped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noout_keeps_a_restarted_device_in_and_moves_nothing() -> Result<()> {
    const RESTARTED: usize = 5;
    let mut cluster = Cluster::start(options()).await?;
    let api = cluster.client().clone();
    let api_url = cluster.api_url().to_owned();
    cartdb(&api_url, &["flags", "set", "noout"])?;
    let flagged = wait_until("the flag shown", SETTLE, || async {
        let view = cluster.view().await?;
        Ok((view.raw["flags"] == json!(["noout"])).then_some(view))
    })
    .await?;
    let epoch = flagged.map_epoch;
    let workload = Workload::start(api.clone(), "noout", USERS);
    run_for(&workload, 20).await?;
    cluster.kill_datanode(RESTARTED)?;
    // Watch for twice the grace: down all along, never out, never remapped.
    let mut watch = Deadline::after(2 * GRACE);
    let mut seen_down = false;
    while !watch.has_passed() {
        let view = cluster.view().await?;
        let device = view.device(RESTARTED as u32).context("device gone")?;
        seen_down |= !device.up;
        ensure!(
            device.reweight != Some(0.0),
            "marked out despite noout: {}",
            view.raw
        );
        ensure!(view.map_epoch == epoch, "the map moved: {}", view.raw);
        ensure!(
            view.raw["placement_groups"]["remapped"] == json!(0),
            "backfill under noout: {}",
            view.raw
        );
        watch.pause().await;
    }
    ensure!(seen_down, "the killed device was never shown down");
    cluster.restart_datanode(RESTARTED)?;
    let back = cluster
        .wait_for_view("every device up and in", SETTLE, |v| {
            v.devices_up_and_in() == 6
        })
        .await?;
    ensure!(back.map_epoch == epoch, "the map moved: {}", back.raw);
    run_for(&workload, 20).await?;
    let history = workload.stop().await?;
    cartdb(&api_url, &["flags", "unset", "noout"])?;
    final_checks(&api, &history).await
}

/// `norebalance` holds a seventh device's PGs where they are (their past devices are all
/// up: moving them only rebalances) through two whole passes of the sweep; unset, they
/// move and the PGs end clean on their up sets, with the workload's history exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn norebalance_holds_a_new_devices_pgs_until_unset() -> Result<()> {
    let mut cluster = Cluster::start(options()).await?;
    let api = cluster.client().clone();
    let api_url = cluster.api_url().to_owned();
    let workload = Workload::start(api.clone(), "hold", USERS);
    run_for(&workload, 20).await?;
    cartdb(&api_url, &["flags", "set", "norebalance"])?;
    let id = cluster.add_datanode()?;
    cartdb_json(
        &api_url,
        &["device", "add", "--id", &id.to_string(), "--host", "host6"],
    )?;
    let sweep = |view: &cartdb_tests::ClusterView| -> (u64, u64) {
        let status = &view.raw["maintenance"]["anti_entropy"];
        let number = |field: &str| status[field].as_u64().unwrap_or(0);
        (number("sweeps_completed"), number("handed_back"))
    };
    let remapped = |view: &cartdb_tests::ClusterView| {
        view.raw["placement_groups"]["remapped"]
            .as_u64()
            .unwrap_or(0)
    };
    let held = cluster
        .wait_for_view("the new device's PGs remapped", SETTLE, |v| remapped(v) > 0)
        .await?;
    let (passes, handed_back) = sweep(&held);
    let later = cluster
        .wait_for_view("two more passes of the sweep", SETTLE, |v| {
            sweep(v).0 >= passes + 2
        })
        .await?;
    ensure!(
        remapped(&later) == remapped(&held) && sweep(&later).1 == handed_back,
        "data moved under norebalance: {} remapped before, {} after; {}",
        remapped(&held),
        remapped(&later),
        later.raw
    );
    cartdb(&api_url, &["flags", "unset", "norebalance"])?;
    wait_all_clean(&api, &(1..=7).collect()).await?;
    run_for(&workload, 20).await?;
    let history = workload.stop().await?;
    final_checks(&api, &history).await
}

/// One placement group holding more items than a PG scan used to return (10,000 per
/// device): a pool of one PG and 10,500 carts, so 21,000 items with their cart-index
/// entries. One of its devices is killed for good; the PG is streamed onto its new up set
/// a chunk at a time, ends clean, and the new device holds every item the survivors hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pg_larger_than_the_old_scan_cap_is_backfilled_and_ends_clean() -> Result<()> {
    const CARTS: usize = 10_500;
    let mut options = options().with_sweep(200_000);
    options
        .gateway_args
        .extend(["--pg-num".to_owned(), "1".to_owned()]);
    let mut cluster = Cluster::start(options).await?;
    let api = cluster.client().clone();
    let api_url = cluster.api_url().to_owned();
    fill_carts(&api_url, CARTS, 16)?;
    let table = pg_table(&api).await?;
    let (up, _) = table.get(&0).context("no PG 0")?.clone();
    let victim = *up.first().context("an empty up set")?;
    let survivor = *up.last().context("an empty up set")?;
    let held = device_items(&api, survivor).await?.len();
    ensure!(held > 20_000, "device {survivor} holds {held} items");
    cluster.kill_datanode(usize::try_from(victim)?)?;
    let live: BTreeSet<u64> = (1..=6).filter(|d| *d != victim).collect();
    wait_all_clean(&api, &live).await?;
    let (after, _) = pg_table(&api).await?.get(&0).context("no PG 0")?.clone();
    for device in after {
        let now = device_items(&api, device).await?.len();
        ensure!(
            now == held,
            "device {device} holds {now} items after the backfill, the survivors {held}"
        );
    }
    Ok(())
}

/// A seventh device: `cartdb map preview --add` predicts the share of PGs that move;
/// `cartdb device add` moves exactly those; the PGs end balanced within 30 % of the mean
/// per device (CRUSH's straw2 with 256 PGs over 7 equal devices: about ±3 standard
/// deviations of a binomial spread).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seventh_device_moves_the_previewed_pgs() -> Result<()> {
    let mut cluster = Cluster::start(options()).await?;
    let api = cluster.client().clone();
    let api_url = cluster.api_url().to_owned();
    let workload = Workload::start(api.clone(), "grow", USERS);
    run_for(&workload, 20).await?;
    let before = pg_table(&api).await?;
    let preview = cartdb_json(&api_url, &["map", "preview", "--add", "7:device_7:host6"])?;
    let predicted = preview["pgs_moved"].as_u64().context("no pgs_moved")?;
    ensure!(predicted > 0, "{preview}");
    let text = cartdb(&api_url, &["map", "preview", "--add", "7:device_7:host6"])?;
    ensure!(text.contains("PGs change placement"), "{text}");

    let id = cluster.add_datanode()?;
    ensure!(id == 7, "the new data node is device {id}");
    let added = cartdb_json(&api_url, &["device", "add", "--id", "7", "--host", "host6"])?;
    ensure!(added["applied_epoch"].is_u64(), "{added}");
    ensure!(
        added["pgs_moved"] == preview["pgs_moved"],
        "{added} vs {preview}"
    );
    let after = wait_until("the new map placed", SETTLE, || async {
        let table = pg_table(&api).await?;
        Ok(table
            .values()
            .any(|(up, _)| up.contains(&7))
            .then_some(table))
    })
    .await?;
    let moved = before
        .iter()
        .filter(|(pg, (up, _))| {
            let old: BTreeSet<_> = up.iter().collect();
            let new: BTreeSet<_> = after[*pg].0.iter().collect();
            old != new
        })
        .count() as u64;
    ensure!(
        moved == predicted,
        "{moved} PGs moved, {predicted} predicted"
    );
    let mut per_device: BTreeMap<u64, u64> = BTreeMap::new();
    for (up, _) in after.values() {
        for d in up {
            *per_device.entry(*d).or_default() += 1;
        }
    }
    let mean = (after.len() * 3) as f64 / 7.0;
    for (device, &pgs) in &per_device {
        let off = (pgs as f64 - mean).abs() / mean;
        ensure!(
            off <= 0.30,
            "device {device} has {pgs} PGs, mean {mean:.1}: {per_device:?}"
        );
    }
    ensure!(per_device.len() == 7, "{per_device:?}");
    wait_all_clean(&api, &(1..=7).collect()).await?;
    let history = workload.stop().await?;
    final_checks(&api, &history).await
}

/// `cartdb device remove` drains a device under load (out, backfill, handback) with no lost
/// acknowledged operation and no failed request beyond the retryable 503, then takes it
/// out of the map.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_is_drained_under_load_then_removed() -> Result<()> {
    const REMOVED: u64 = 6;
    let mut cluster = Cluster::start(options()).await?;
    let api = cluster.client().clone();
    let api_url = cluster.api_url().to_owned();
    let workload = Workload::start(api.clone(), "drain", USERS);
    run_for(&workload, 20).await?;
    let url = api_url.clone();
    let removal = tokio::task::spawn_blocking(move || {
        cartdb(
            &url,
            &[
                "device",
                "remove",
                &REMOVED.to_string(),
                "--timeout",
                "180s",
            ],
        )
    });
    let out = removal.await??;
    ensure!(out.contains("removed"), "{out}");
    // `/api/cluster` speaks for the leader gateway, which may see the new epoch a moment
    // after the gateway that made the change.
    cluster
        .wait_for_view("the device gone from the map", SETTLE, |v| {
            v.device(REMOVED as u32).is_none() && v.devices.len() == 5
        })
        .await?;
    run_for(&workload, 20).await?;
    let history = workload.stop().await?;
    wait_all_clean(&api, &(1..=5).collect()).await?;
    final_checks(&api, &history).await?;
    // The removed device's data node still runs; it holds nothing of the workload's.
    for user in history.users() {
        let items = replica_states(&api, &user).await?;
        for (product, devices) in items {
            ensure!(
                !devices.contains_key(&REMOVED),
                "the removed device still holds {user}/{product}"
            );
        }
    }
    Ok(())
}

/// ZooKeeper stopped while every data node is frozen: when it returns, every data node's
/// session expires and every device is down, but the gateways mark out at most the share
/// the minimum in ratio allows (0.75 of 6: one device). Once the nodes resume, all are in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mass_expiry_marks_out_at_most_the_allowed_share() -> Result<()> {
    let mut cluster = Cluster::start(options()).await?;
    let api = cluster.client().clone();
    let workload = Workload::start(api.clone(), "expiry", USERS);
    run_for(&workload, 20).await?;
    let history_so_far = workload.stop().await?;
    cluster.zookeeper_mut().service_mut().kill()?;
    for id in 1..=6 {
        cluster.pause_datanode(id)?;
    }
    cluster.zookeeper_mut().service_mut().restart()?;
    cluster
        .wait_for_view("every device down", SETTLE, |v| {
            v.devices.iter().all(|d| !d.up)
        })
        .await?;
    // Watch for twice the grace: never more than one device out.
    let mut watch = Deadline::after(2 * GRACE);
    let mut most_out = 0;
    while !watch.has_passed() {
        let view = cluster.view().await?;
        let out = view
            .devices
            .iter()
            .filter(|d| d.reweight == Some(0.0))
            .count();
        ensure!(out <= 1, "{out} devices out: {}", view.raw);
        most_out = most_out.max(out);
        watch.pause().await;
    }
    ensure!(
        most_out == 1,
        "the one device the ratio allows was never marked out"
    );
    for id in 1..=6 {
        cluster.resume_datanode(id)?;
    }
    cluster
        .wait_for_view("every device up and in", SETTLE, |v| {
            v.devices_up_and_in() == 6
        })
        .await?;
    wait_all_clean(&api, &(1..=6).collect()).await?;
    final_checks(&api, &history_so_far).await
}

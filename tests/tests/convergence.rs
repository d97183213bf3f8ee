//! Replicas that converge: read repair, anti-entropy and concurrent writers, with real
//! processes. Every check compares the replicas' own states through the admin endpoint
//! `GET /api/admin/replicas`, not just the merged answer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Result, bail, ensure};
use cartdb_tests::cli::{cartdb, fill_carts};
use cartdb_tests::replica_check::{converged, device_items, holders, replica_states, wait_settled};
use cartdb_tests::{ApiClient, Cluster, ClusterOptions, Workload, WorkloadOptions, wait_until};
use serde_json::Value;

const PHASE_TIMEOUT: Duration = Duration::from_secs(60);

fn options() -> ClusterOptions {
    // A sweep that leaves the read-repair test to read repair: it would otherwise race the
    // read this test makes. The anti-entropy test turns it on.
    ClusterOptions::default().with_sweep(0)
}

/// Writes made while a replica is dead (kill -9) reach it through read repair: after it
/// returns, a list_all answers the full cart and, shortly after, every replica of every
/// item holds the same state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_repair_brings_a_restarted_replica_up_to_date() -> Result<()> {
    let mut cluster = Cluster::start(options()).await?;
    let api = cluster.client().clone();
    let user = "repair-user";
    api.insert(user, "pork").await?.expect_status(200);
    // pork is product 1 in the default catalog.
    let devices = holders(&api, user, "1").await?;
    let victim = devices[0] as usize;
    cluster.kill_datanode(victim)?;
    for _ in 0..3 {
        api.insert(user, "pork").await?.expect_status(200);
    }
    api.insert(user, "soap").await?.expect_status(200);
    cluster.restart_datanode(victim)?;
    cluster
        .wait_for_view("every device up again", PHASE_TIMEOUT, |view| {
            view.devices_up_and_in() == 6
        })
        .await?;
    let stale = wait_until(
        "every replica to answer the dump",
        PHASE_TIMEOUT,
        || async { replica_states(&api, user).await.map(Some) },
    )
    .await?;
    let pork_on_victim = stale["1"].get(&(victim as u64)).cloned();
    let fresh = stale["1"]
        .values()
        .find(|s| Some(*s) != pork_on_victim.as_ref());
    assert!(fresh.is_some(), "the victim missed writes: {stale:?}");

    // Each gateway learns from its own watch that the device is back; until both have, a
    // read through the other may not reach it yet. So: read, then check the replicas,
    // until they agree.
    wait_until(
        "list_all to repair every replica",
        PHASE_TIMEOUT,
        || async {
            let cart = api.list_all(user).await?;
            cart.expect_status(200);
            assert_eq!(
                cart.qty_of("pork"),
                4,
                "the full cart, whatever the replicas hold"
            );
            assert_eq!(cart.qty_of("soap"), 1);
            converged(&api, user, 3).await
        },
    )
    .await?;
    let again = api.list_all(user).await?;
    assert_eq!(
        again.qty_of("pork"),
        4,
        "a read after repair sees the same cart"
    );
    // Counters are per gateway: add up every gateway's own.
    let gateways = cluster.gateway_clients().await?;
    wait_until("a gateway to count its repairs", PHASE_TIMEOUT, || async {
        let mut repairs = 0;
        for gateway in gateways.values() {
            repairs += gateway.maintenance().await?.repairs;
        }
        Ok((repairs >= 1).then_some(()))
    })
    .await?;
    Ok(())
}

/// An item that is never read again still converges: the anti-entropy sweep, run by one
/// gateway, repairs it, and its progress shows in /api/cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_entropy_repairs_items_nobody_reads() -> Result<()> {
    let mut cluster = Cluster::start(ClusterOptions::default()).await?;
    let api = cluster.client().clone();
    let user = "unread-user";
    api.insert(user, "yogurt").await?.expect_status(200);
    let victim = holders(&api, user, "3").await?[0] as usize;
    cluster.kill_datanode(victim)?;
    api.insert(user, "yogurt").await?.expect_status(200);
    api.insert(user, "yogurt").await?.expect_status(200);
    cluster.restart_datanode(victim)?;
    cluster
        .wait_for_view("every device up again", PHASE_TIMEOUT, |view| {
            view.devices_up_and_in() == 6
        })
        .await?;
    // Nobody reads the cart from here on; only the sweep can repair the victim.
    wait_until(
        "anti-entropy to repair the unread item",
        PHASE_TIMEOUT,
        || converged(&api, user, 3),
    )
    .await?;
    let sweep = wait_until("sweep progress in /api/cluster", PHASE_TIMEOUT, || async {
        let status = api.cluster().await?;
        let sweep = status.json["maintenance"]["anti_entropy"].clone();
        Ok((sweep["repairs"].as_u64().unwrap_or(0) >= 1).then_some(sweep))
    })
    .await?;
    assert!(sweep["pgs_total"].as_u64().unwrap_or(0) >= 1, "{sweep}");
    Ok(())
}

/// The anti-entropy sweep's status in `GET /api/cluster` once `passes` more whole passes
/// than now have completed.
async fn after_passes(api: &ApiClient, passes: u64) -> Result<Value> {
    let sweep = |reply: &Value| reply["maintenance"]["anti_entropy"].clone();
    let number = |sweep: &Value, field: &str| sweep[field].as_u64().unwrap_or(0);
    let start = number(&sweep(&api.cluster().await?.json), "sweeps_completed");
    wait_until(
        &format!("{passes} more sweep passes"),
        PHASE_TIMEOUT,
        || async {
            let now = sweep(&api.cluster().await?.json);
            Ok((number(&now, "sweeps_completed") >= start + passes).then_some(now))
        },
    )
    .await
}

/// Anti-entropy by digests: a pass over agreeing copies streams and repairs nothing; after
/// a replica was stopped while writes went on and then restarted, the next passes repair
/// exactly the items it missed (the items it holds now and did not hold before), once each,
/// and every replica ends identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_digest_pass_repairs_exactly_the_items_a_stopped_replica_missed() -> Result<()> {
    const VICTIM: u64 = 2;
    let mut cluster = Cluster::start(ClusterOptions::default()).await?;
    let api = cluster.client().clone();
    let api_url = cluster.api_url().to_owned();
    fill_carts(&api_url, 300, 4)?;
    // The victim stays in: its PGs keep their up sets, so only the digest pass repairs it.
    cartdb(&api_url, &["flags", "set", "noout"])?;
    let number = |sweep: &Value, field: &str| sweep[field].as_u64().unwrap_or(0);
    let settled = after_passes(&api, 1).await?;
    let quiet = after_passes(&api, 1).await?;
    for field in ["items_streamed", "repairs"] {
        ensure!(
            number(&quiet, field) == number(&settled, field),
            "a pass over agreeing copies changed {field}: {settled} then {quiet}"
        );
    }

    let before = device_items(&api, VICTIM).await?;
    cluster.kill_datanode(usize::try_from(VICTIM)?)?;
    let workload =
        Workload::start_with(api.clone(), WorkloadOptions::new("stopped", 40).clients(2));
    workload.advance(300, PHASE_TIMEOUT).await?;
    let history = workload.stop().await?;
    ensure!(
        history.unknown() == 0 && history.failures().is_empty(),
        "every write is acknowledged by both live replicas: {} unknown, {:?}",
        history.unknown(),
        history.failures()
    );
    cluster.restart_datanode(usize::try_from(VICTIM)?)?;
    cluster
        .wait_for_view("every device up again", PHASE_TIMEOUT, |view| {
            view.devices_up_and_in() == 6
        })
        .await?;
    let repaired = after_passes(&api, 2).await?;
    let missed: Vec<(String, String)> = device_items(&api, VICTIM)
        .await?
        .difference(&before)
        .cloned()
        .collect();
    ensure!(!missed.is_empty(), "the victim missed nothing");
    ensure!(
        missed.iter().all(|(user, _)| user.starts_with("stopped-")),
        "the victim gained items written before it stopped: {missed:?}"
    );
    let repairs = number(&repaired, "repairs") - number(&quiet, "repairs");
    eprintln!(
        "{} items missed, {repairs} repaired, {} items streamed",
        missed.len(),
        number(&repaired, "items_streamed") - number(&quiet, "items_streamed")
    );
    ensure!(
        repairs == missed.len() as u64,
        "the passes repaired {repairs} items, the victim missed {}",
        missed.len()
    );
    wait_settled(&api, history.users(), 3, PHASE_TIMEOUT).await?;
    history.check(&api).await
}

/// Clients add and remove the same items through both gateways while a data node is
/// killed and restarted. At the end each item's quantity is what replaying the acknowledged
/// operations gives and every replica agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_through_both_gateways_converge() -> Result<()> {
    const ITEMS: [&str; 2] = ["pork", "soap"];
    let mut cluster = Cluster::start(options()).await?;
    let api = cluster.client().clone();
    let user = "shared-cart";
    // A cushion, and each client only ever deletes what it added itself and saw
    // acknowledged: two gateways' versions of a client's add and its next delete may
    // order either way within a millisecond, and the cushion keeps such a reordering from
    // clamping at 0. So the version-order replay is simply adds minus deletes.
    const CUSHION: i64 = 5;
    for item in ITEMS {
        for _ in 0..CUSHION {
            api.insert(user, item).await?.expect_status(200);
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (api, stop) = (api.clone(), stop.clone());
            tokio::spawn(async move {
                let mut net: BTreeMap<&str, i64> = BTreeMap::new();
                let mut unknown = 0usize;
                for op in 0..400 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let item = ITEMS[(op + c) % ITEMS.len()];
                    let mine = net.get(item).copied().unwrap_or(0);
                    let delete = op % 3 == 2 && mine > 0;
                    let reply = if delete {
                        api.delete(user, item).await
                    } else {
                        api.insert(user, item).await
                    };
                    match reply {
                        Ok(r) if r.status == 200 => {
                            *net.entry(item).or_insert(0) += if delete { -1 } else { 1 };
                        }
                        // Not acknowledged: it may or may not have landed.
                        _ => unknown += 1,
                    }
                }
                (net, unknown)
            })
        })
        .collect();
    wait_until("some load", PHASE_TIMEOUT, || async {
        let cart = api.list_all(user).await?;
        Ok((cart.qty_of("pork") + cart.qty_of("soap") >= 20).then_some(()))
    })
    .await?;
    cluster.kill_datanode(3)?;
    wait_until("load with a replica dead", PHASE_TIMEOUT, || async {
        let cart = api.list_all(user).await?;
        Ok((cart.qty_of("pork") + cart.qty_of("soap") >= 50).then_some(()))
    })
    .await?;
    cluster.restart_datanode(3)?;
    cluster
        .wait_for_view("every device up again", PHASE_TIMEOUT, |view| {
            view.devices_up_and_in() == 6
        })
        .await?;
    stop.store(true, Ordering::SeqCst);
    let mut expected: BTreeMap<&str, i64> = ITEMS.iter().map(|i| (*i, CUSHION)).collect();
    let mut unknown = 0;
    for client in clients {
        let (net, u) = client.await?;
        unknown += u;
        for (item, n) in net {
            *expected.entry(item).or_insert(0) += n;
        }
    }
    assert_eq!(unknown, 0, "no write was refused with 2 of 3 replicas up");
    let cart = api.list_all(user).await?;
    for item in ITEMS {
        let want = u64::try_from(expected.get(item).copied().unwrap_or(0))?;
        assert_eq!(
            cart.qty_of(item),
            want,
            "{item}: replay of the acknowledged operations"
        );
    }
    wait_until("every replica to agree", PHASE_TIMEOUT, || {
        converged(&api, user, 3)
    })
    .await?;
    Ok(())
}

/// Compaction keeps logs bounded under add/remove churn without changing the cart: with a
/// short grace, reads fold old operations into the base on every replica alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_folds_old_operations_on_every_replica_alike() -> Result<()> {
    let cluster = Cluster::start(options().with_quick_compaction()).await?;
    let api = cluster.client().clone();
    let user = "churn-user";
    for round in 0..6 {
        api.insert(user, "cereals").await?.expect_status(200);
        api.insert(user, "cereals").await?.expect_status(200);
        if round % 2 == 1 {
            api.delete(user, "cereals").await?.expect_status(200);
        }
    }
    // 12 adds, 3 deletes.
    let folded = wait_until("reads to compact the log", PHASE_TIMEOUT, || async {
        let cart = api.list_all(user).await?;
        assert_eq!(
            cart.qty_of("cereals"),
            9,
            "compaction never changes the answer"
        );
        converged(&api, user, 3).await?;
        let items = replica_states(&api, user).await?;
        let state = items["4"].values().next().cloned().unwrap_or_default();
        let base_qty = state["base"]["qty"].as_u64().unwrap_or(0);
        let logged = state["ops"].as_array().map_or(0, Vec::len);
        Ok((base_qty > 0 && logged < 15).then_some((base_qty, logged)))
    })
    .await?;
    eprintln!(
        "compacted: base qty {}, {} operations left in the log",
        folded.0, folded.1
    );
    // Later operations apply on top of the base as usual.
    api.insert(user, "cereals").await?.expect_status(200);
    assert_eq!(api.list_all(user).await?.qty_of("cereals"), 10);
    Ok(())
}

/// A retried insert (same Idempotency-Key) applies once, whichever gateway each attempt
/// reaches (the API picks one at random per request) and although a replica died between
/// attempts and came back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_insert_applies_once_across_gateways_and_a_replica_failure() -> Result<()> {
    let mut cluster = Cluster::start(options()).await?;
    let api = cluster.client().clone();
    let user = "retrying-user";
    api.insert_with_key(user, "beef", "order-17")
        .await?
        .expect_status(200);
    let victim = holders(&api, user, "5").await?[0] as usize;
    cluster.kill_datanode(victim)?;
    // Eight retries: with a random gateway each, both gateways see the key (the chance that
    // one never does is 2^-7).
    for _ in 0..8 {
        let reply = api.insert_with_key(user, "beef", "order-17").await?;
        reply.expect_status(200);
        assert_eq!(
            reply.qty(),
            Some(1),
            "a retry reports the quantity, not a new add"
        );
    }
    cluster.restart_datanode(victim)?;
    cluster
        .wait_for_view("every device up again", PHASE_TIMEOUT, |view| {
            view.devices_up_and_in() == 6
        })
        .await?;
    wait_until("replicas to agree on one add", PHASE_TIMEOUT, || async {
        let cart = api.list_all(user).await?;
        assert_eq!(cart.qty_of("beef"), 1, "applied exactly once");
        converged(&api, user, 3).await
    })
    .await?;
    Ok(())
}

/// A retry can stamp one operation twice: the first attempt reached two replicas while the
/// third was dead, the retry (a new request, so a new version) reached the third once it was
/// back. The merge keeps the larger version; read repair must move the other replicas'
/// copies to it, or the replicas would answer alike but never hold the same state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_operation_stamped_twice_by_a_retry_ends_at_one_version() -> Result<()> {
    let mut cluster = Cluster::start(options()).await?;
    let api = cluster.client().clone();
    let user = "stamped-twice";
    api.insert_with_key(user, "beef", "order-1")
        .await?
        .expect_status(200);
    let victim = holders(&api, user, "5").await?[0] as usize;
    cluster.kill_datanode(victim)?;
    // Once the gateways have seen it go, order-2 goes to a substitute instead, and the
    // gateways stop calling the victim (a call to a dead peer backs off its reconnects,
    // which could make the retry below skip the victim).
    cluster
        .wait_for_view("the victim out", PHASE_TIMEOUT, |view| {
            view.devices_up_and_in() == 5
        })
        .await?;
    api.insert_with_key(user, "beef", "order-2")
        .await?
        .expect_status(200);
    cluster.restart_datanode(victim)?;
    cluster
        .wait_for_view("every device up again", PHASE_TIMEOUT, |view| {
            view.devices_up_and_in() == 6
        })
        .await?;
    // Nothing has read the cart since, so the victim still lacks order-2: the retry gives
    // it order-2 under a newer version than the other replicas hold.
    let retry = api.insert_with_key(user, "beef", "order-2").await?;
    retry.expect_status(200);
    assert_eq!(retry.qty(), Some(2), "the retry is recognised");
    // The retry was answered once two replicas acknowledged; the victim's copy may lag.
    wait_until("the victim to take the retry", PHASE_TIMEOUT, || async {
        let states = &replica_states(&api, user).await?["5"];
        let ops = |device: &u64| {
            states[device]["ops"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        };
        let victim_ops = ops(&(victim as u64));
        if victim_ops.len() < 2 {
            bail!(
                "the victim holds {} operations: {states:?}",
                victim_ops.len()
            );
        }
        assert!(
            states
                .keys()
                .any(|d| ops(d).len() == 2 && ops(d) != victim_ops),
            "another replica holds order-2 under its first version: {states:?}"
        );
        Ok(Some(()))
    })
    .await?;
    wait_until(
        "replicas to hold one version of order-2",
        PHASE_TIMEOUT,
        || async {
            let cart = api.list_all(user).await?;
            assert_eq!(cart.qty_of("beef"), 2, "two adds, each applied once");
            converged(&api, user, 3).await
        },
    )
    .await?;
    Ok(())
}

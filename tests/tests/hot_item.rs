//! A hot item: many clients writing one shopper's item at once. Its log stays bounded
//! ("Safety" in docs/design.md, the cap of unfolded operations), its cart keeps answering,
//! and a replica that missed the burst is repaired afterwards.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use cartdb_tests::replica_check::{converged, placement_sets, replica_states};
use cartdb_tests::{ApiClient, Cluster, ClusterOptions, wait_until};

const USER: &str = "hot-shopper";
/// Pork's product id in the default catalog.
const PORK: &str = "1";
const CLIENTS: usize = 50;
const BURST: Duration = Duration::from_secs(60);
/// The data nodes' default `--max-item-ops`: a replica applies no new operation beyond it.
const CAP: usize = 4096;
/// The bound on a replica's log: a repair still brings what other replicas applied under
/// their own cap (refusing it would keep the replicas apart, and compaction needs them
/// equal), so a log holds at most the replicas' caps together; in practice a few above one.
const BOUND: usize = 3 * CAP;

/// What the clients were answered: counts by status, and the first error of each status.
type Answers = (BTreeMap<u16, u64>, BTreeMap<u16, String>);

/// One client: insert and delete pork in turn until `stop`, counting answers by status.
async fn alternate(api: ApiClient, stop: Arc<AtomicBool>) -> Result<Answers> {
    let mut statuses = BTreeMap::new();
    let mut errors = BTreeMap::new();
    let mut insert = true;
    while !stop.load(Ordering::Relaxed) {
        let reply = if insert {
            api.insert(USER, "pork").await?
        } else {
            api.delete(USER, "pork").await?
        };
        *statuses.entry(reply.status).or_default() += 1;
        if reply.status != 200 {
            errors
                .entry(reply.status)
                .or_insert_with(|| reply.error().unwrap_or_default().to_owned());
        }
        insert = !insert;
    }
    Ok((statuses, errors))
}

/// 50 clients alternate insert and delete on one item for a minute while one replica of it
/// is down (its device kept in: `--down-out-secs` is longer than the test). Every replica's
/// log stays bounded (before the cap, 48 clients built 258,000 unfolded operations in
/// 20 s, and the replicas' answer outgrew the 16 MiB frame), the cart answers throughout,
/// nothing answers 500, and the returning replica is repaired to the others' state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_item_stays_bounded_and_its_missed_replica_is_repaired() -> Result<()> {
    let mut options = ClusterOptions::default();
    options
        .gateway_args
        .extend(["--down-out-secs".to_owned(), "3600".to_owned()]);
    let mut cluster = Cluster::start(options).await?;
    let api = cluster.client().clone();
    ensure!(api.insert(USER, "pork").await?.status == 200);
    let sets = placement_sets(&api, USER).await?;
    let up = &sets.get(PORK).context("pork not located")?.up;
    let victim = usize::try_from(*up.first().context("no up set")?)?;
    cluster.kill_datanode(victim)?;
    cluster
        .wait_for_view("the victim down", Duration::from_secs(30), |view| {
            view.device(u32::try_from(victim).unwrap_or(u32::MAX))
                .is_some_and(|d| !d.up)
        })
        .await?;

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| tokio::spawn(alternate(api.clone(), stop.clone())))
        .collect();
    let started = Instant::now();
    let mut reads = 0;
    let mut longest = 0;
    while started.elapsed() < BURST {
        let cart = api.list_all(USER).await?;
        ensure!(cart.status == 200, "list_all during the burst: {cart:?}");
        reads += 1;
        let states = replica_states(&api, USER).await?;
        for (device, state) in states.get(PORK).into_iter().flatten() {
            let ops = state["ops"].as_array().map_or(0, Vec::len);
            ensure!(
                ops <= BOUND,
                "device {device} holds {ops} unfolded operations"
            );
            longest = longest.max(ops);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
    let mut errors: BTreeMap<u16, String> = BTreeMap::new();
    for client in clients {
        let (counts, first) = client.await??;
        for (status, n) in counts {
            *statuses.entry(status).or_default() += n;
        }
        for (status, error) in first {
            errors.entry(status).or_insert(error);
        }
    }
    eprintln!(
        "{reads} cart reads; longest log {longest} (cap {CAP}); answers by status: {statuses:?}; first errors: {errors:?}"
    );
    // 503 is a retryable answer (writes racing on one item can exhaust their restamps).
    ensure!(
        statuses.keys().all(|s| [200, 404, 429, 503].contains(s)),
        "answers other than 200, 404 (not in cart), 429 (busy) and 503: {statuses:?} {errors:?}"
    );
    ensure!(
        statuses.get(&429).is_some_and(|n| *n > 0),
        "the cap never applied: {statuses:?}"
    );

    cluster.restart_datanode(victim)?;
    wait_until(
        "the returning replica repaired",
        Duration::from_secs(120),
        || {
            let api = api.clone();
            async move {
                // Reads schedule the follow-up that repairs; converged() says what differs.
                let cart = api.list_all(USER).await?;
                ensure!(cart.status == 200, "{cart:?}");
                converged(&api, USER, 3).await
            }
        },
    )
    .await?;
    Ok(())
}

//! Every process serves Prometheus metrics, found through the membership in
//! `GET /api/cluster`, and the counters move by what a scripted workload implies: HTTP
//! requests, gateway and data node RPCs, group commits and read repairs.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use cartdb_tests::prometheus::{Scrape, scrape};
use cartdb_tests::replica_check::{converged, holders};
use cartdb_tests::{ApiClient, Cluster, ClusterOptions, wait_until};

const PHASE_TIMEOUT: Duration = Duration::from_secs(60);

/// Inserts through the API in the workload (distinct users, so every one is a first add).
const INSERTS: usize = 40;

/// The scrapes of every process at one moment.
struct Scrapes {
    api: Scrape,
    gateways: Vec<Scrape>,
    datanodes: Vec<Scrape>,
}

impl Scrapes {
    /// Scrapes the API server and every data node and gateway the cluster document lists.
    async fn take(api: &ApiClient, api_address: &str) -> Result<Self> {
        let status = api.cluster().await?;
        ensure!(status.status == 200, "GET /api/cluster: {status:?}");
        let addresses = |list: &str| -> Result<Vec<String>> {
            status.json[list]
                .as_array()
                .with_context(|| format!("no {list} in {}", status.text))?
                .iter()
                .map(|entry| {
                    entry["metrics"]
                        .as_str()
                        .map(str::to_owned)
                        .with_context(|| format!("{list} entry without metrics: {entry}"))
                })
                .collect()
        };
        let (device_addresses, gateway_addresses) = (addresses("devices")?, addresses("gateways")?);
        ensure!(device_addresses.len() == 6, "devices: {device_addresses:?}");
        ensure!(
            gateway_addresses.len() == 2,
            "gateways: {gateway_addresses:?}"
        );
        let mut datanodes = Vec::new();
        for address in &device_addresses {
            datanodes.push(scrape(address).await?);
        }
        let mut gateways = Vec::new();
        for address in &gateway_addresses {
            gateways.push(scrape(address).await?);
        }
        Ok(Self {
            api: scrape(api_address).await?,
            gateways,
            datanodes,
        })
    }

    fn gateways_sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.gateways.iter().map(|s| s.sum(name, labels)).sum()
    }

    fn datanodes_sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.datanodes.iter().map(|s| s.sum(name, labels)).sum()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_by_what_the_workload_implies() -> Result<()> {
    let mut cluster = Cluster::start(ClusterOptions {
        // Only the workload writes or repairs: no sweep in the background.
        gateway_args: vec!["--anti-entropy-items-per-sec".into(), "0".into()],
        ..ClusterOptions::default()
    })
    .await?;
    let api = cluster.client().clone();
    let api_address = api
        .base()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();

    let before = Scrapes::take(&api, &api_address).await?;
    for scrape in before
        .datanodes
        .iter()
        .chain(&before.gateways)
        .chain([&before.api])
    {
        for standard in ["process_resident_memory_bytes", "process_cpu_seconds_total"] {
            assert!(scrape.has(standard), "{standard} missing");
        }
    }
    assert!(before.gateways_sum("cartdb_pgs", &[("state", "clean")]) > 0.0);
    assert!(before.gateways_sum("cartdb_zookeeper_connected", &[]) >= 2.0);

    for i in 0..INSERTS {
        let reply = api.insert(&format!("metrics-{i}"), "pork").await?;
        ensure!(reply.status == 200, "insert {i}: {reply:?}");
    }
    let after = Scrapes::take(&api, &api_address).await?;
    let inserts = INSERTS as f64;
    let moved = |b: f64, a: f64| a - b;

    let http = [
        ("endpoint", "/api/insert"),
        ("method", "POST"),
        ("status", "200"),
    ];
    assert_eq!(
        moved(
            before.api.sum("cartdb_http_requests_total", &http),
            after.api.sum("cartdb_http_requests_total", &http)
        ),
        inserts,
        "API server: HTTP inserts answered 200"
    );
    let gateway_inserts = [("service", "gateway"), ("request", "insert")];
    assert_eq!(
        moved(
            before.gateways_sum("cartdb_rpc_server_requests_total", &gateway_inserts),
            after.gateways_sum("cartdb_rpc_server_requests_total", &gateway_inserts)
        ),
        inserts,
        "gateways: insert RPCs served"
    );
    // Every first insert writes the item and its cart-index entry, each to 3 replicas.
    let applies = [("service", "datanode"), ("request", "apply")];
    let replica_writes = inserts * 6.0;
    assert_eq!(
        moved(
            before.datanodes_sum("cartdb_rpc_server_requests_total", &applies),
            after.datanodes_sum("cartdb_rpc_server_requests_total", &applies)
        ),
        replica_writes,
        "data nodes: apply RPCs served"
    );
    assert_eq!(
        moved(
            before.gateways_sum("cartdb_gateway_rpc_seconds_count", &[("request", "apply")]),
            after.gateways_sum("cartdb_gateway_rpc_seconds_count", &[("request", "apply")])
        ),
        replica_writes,
        "gateways: apply RPCs sent and timed"
    );
    assert_eq!(
        moved(
            before.datanodes_sum("cartdb_datanode_write_requests_total", &[]),
            after.datanodes_sum("cartdb_datanode_write_requests_total", &[])
        ),
        replica_writes,
        "data nodes: writes through the group commit"
    );
    // Group commit: at least one fsync'd commit, at most one per write.
    let commits = moved(
        before.datanodes_sum("cartdb_datanode_commits_total", &[("result", "ok")]),
        after.datanodes_sum("cartdb_datanode_commits_total", &[("result", "ok")]),
    );
    assert!(
        (1.0..=replica_writes).contains(&commits),
        "commits: {commits}"
    );
    assert_eq!(
        moved(
            before.datanodes_sum("cartdb_datanode_commit_seconds_count", &[]),
            after.datanodes_sum("cartdb_datanode_commit_seconds_count", &[])
        ),
        commits,
        "every commit timed"
    );

    // Read repair: a write missed by a dead replica is repaired by the next read.
    let user = "metrics-repair";
    ensure!(api.insert(user, "pork").await?.status == 200);
    // pork is product 1 in the default catalog.
    let victim = holders(&api, user, "1").await?[0] as usize;
    cluster.kill_datanode(victim)?;
    ensure!(api.insert(user, "pork").await?.status == 200);
    cluster.restart_datanode(victim)?;
    cluster
        .wait_for_view("every device up again", PHASE_TIMEOUT, |view| {
            view.devices_up_and_in() == 6
        })
        .await?;
    wait_until("list_all to repair the replica", PHASE_TIMEOUT, || async {
        let cart = api.list_all(user).await?;
        ensure!(cart.status == 200, "{cart:?}");
        converged(&api, user, 3).await
    })
    .await?;
    let repaired = wait_until("the repair counters", PHASE_TIMEOUT, || async {
        let now = Scrapes::take(&api, &api_address).await?;
        let repairs = now.gateways_sum("cartdb_gateway_repairs_total", &[("result", "ok")]);
        Ok((repairs >= 1.0).then_some(now))
    })
    .await?;
    assert!(
        repaired.datanodes_sum("cartdb_rpc_server_requests_total", &[("request", "repair")]) >= 1.0,
        "a repair RPC served"
    );
    assert!(repaired.gateways_sum("cartdb_gateway_repaired_ops_total", &[]) >= 1.0);
    Ok(())
}

//! A network partition between one gateway and some data nodes, while everything else
//! (ZooKeeper included) still sees them all: the gateway cannot reach a write quorum for
//! the PGs those nodes share, fails those writes with 503 rather than acknowledging them
//! short, and the client's retries with the same key are applied once.

use std::time::Duration;

use anyhow::Result;
use cartdb_tests::replica_check::wait_settled;
use cartdb_tests::{Cluster, ClusterOptions, Deadline, Workload};

const SETTLE: Duration = Duration::from_secs(300);
const PARTITION: Duration = Duration::from_secs(20);

/// Gateway 1 is partitioned from data nodes 1 and 2 for 20 s under the Jepsen-style
/// workload; the partition heals. No acknowledged operation is lost or applied twice, and
/// every item's replicas converge on exactly its up set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_partitioned_from_two_data_nodes_loses_nothing() -> Result<()> {
    let cluster = Cluster::start(ClusterOptions::default().with_gateway_data_gates(1)).await?;
    let api = cluster.client().clone();
    let workload = Workload::start(api.clone(), "partition", 32);
    workload.advance(30, SETTLE).await?;
    cluster.partition(1, &[1, 2], true)?;
    let mut partitioned = Deadline::after(PARTITION);
    let mut during = 0;
    while !partitioned.has_passed() {
        workload.advance(1, SETTLE).await?;
        during += 1;
        partitioned.pause().await;
    }
    cluster.partition(1, &[1, 2], false)?;
    eprintln!("{during} polls of progress during the partition");
    workload.advance(30, SETTLE).await?;
    let history = workload.stop().await?;
    history.check(&api).await?;
    wait_settled(&api, history.users(), 3, SETTLE).await
}

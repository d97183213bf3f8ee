//! A network partition between one gateway and some data nodes, while everything else
//! (ZooKeeper included) still sees them all: the gateway cannot reach a write quorum for
//! the PGs those nodes share, fails those writes with 503 rather than acknowledging them
//! short. A client that retries with the same key gets each operation applied once; one
//! that gives up after a 503 leaves it unknown, and the cart then holds something the
//! acknowledged and unknown operations allow.

use std::time::Duration;

use anyhow::Result;
use cartdb_tests::replica_check::wait_settled;
use cartdb_tests::{Cluster, ClusterOptions, Deadline, Workload, WorkloadOptions};

const SETTLE: Duration = Duration::from_secs(300);
const PARTITION: Duration = Duration::from_secs(20);

/// Gateway 1 is partitioned from data nodes 1 and 2 for 20 s under two Jepsen-style
/// workloads of two concurrent clients each, one retrying until acknowledged and one
/// giving up after a single attempt; the partition heals. No acknowledged operation is
/// lost or applied twice, and every item's replicas converge on exactly its up set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_partitioned_from_two_data_nodes_loses_nothing() -> Result<()> {
    let cluster = Cluster::start(ClusterOptions::default().with_gateway_data_gates(1)).await?;
    let api = cluster.client().clone();
    let workload = Workload::start_with(
        api.clone(),
        WorkloadOptions::new("partition", 32).clients(2),
    );
    let once = Workload::start_with(
        api.clone(),
        WorkloadOptions::new("partition-once", 16).clients(2).once(),
    );
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
    once.advance(30, SETTLE).await?;
    let history = workload.stop().await?;
    let gave_up = once.stop().await?;
    eprintln!(
        "retrying: {} acknowledged; single attempts: {} acknowledged, {} unknown",
        history.acknowledged(),
        gave_up.acknowledged(),
        gave_up.unknown()
    );
    history.check(&api).await?;
    gave_up.check(&api).await?;
    wait_settled(&api, history.users(), 3, SETTLE).await?;
    wait_settled(&api, gave_up.users(), 3, SETTLE).await
}

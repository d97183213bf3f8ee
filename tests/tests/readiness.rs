//! `/readyz` follows what the cluster can do: 503 naming the cause while ZooKeeper is down
//! or too few data nodes are up for a write quorum, 200 again once they are back.
//! (`/healthz` stays liveness: 200 throughout while a gateway is known.)

use std::time::Duration;

use anyhow::Result;
use cartdb_tests::{ApiClient, Cluster, ClusterOptions, wait_until};

const PHASE_TIMEOUT: Duration = Duration::from_secs(60);

/// Polls `/readyz` until it answers `status`, then returns its `error` text (if any).
async fn wait_ready(api: &ApiClient, what: &str, status: u16) -> Result<String> {
    wait_until(what, PHASE_TIMEOUT, || async {
        let reply = api.get("/readyz").await?;
        Ok((reply.status == status).then(|| reply.error().unwrap_or_default().to_owned()))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_zookeeper_and_write_quorums() -> Result<()> {
    let mut cluster = Cluster::start(ClusterOptions::default()).await?;
    let api = cluster.client().clone();
    wait_ready(&api, "ready at start", 200).await?;

    cluster.zookeeper_mut().service_mut().kill()?;
    let error = wait_ready(&api, "not ready without ZooKeeper", 503).await?;
    assert!(error.contains("ZooKeeper"), "{error}");
    cluster.zookeeper_mut().service_mut().restart()?;
    wait_ready(&api, "ready with ZooKeeper back", 200).await?;

    // Five of six data nodes down: every PG has at most one live device, below W = 2.
    for device in 2..=6 {
        cluster.kill_datanode(device)?;
    }
    let error = wait_ready(&api, "not ready without write quorums", 503).await?;
    assert!(error.contains("write quorum"), "{error}");
    assert_eq!(
        api.get("/healthz").await?.status,
        200,
        "liveness is unaffected"
    );
    for device in 2..=6 {
        cluster.restart_datanode(device)?;
    }
    wait_ready(&api, "ready with the data nodes back", 200).await?;
    Ok(())
}

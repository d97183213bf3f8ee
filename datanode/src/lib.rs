//! The cartdb data node: stores cart item operation logs and the category index in fjall,
//! and serves gateways over cartdb's framed RPC.
//!
//! # Layout
//! - [`config`]: [`DataNodeConfig`], the command line / environment, validated once.
//! - [`store`]: [`store::CartStore`], the synchronous fjall wrapper (items + category index).
//! - [`group_commit`]: [`group_commit::GroupCommit`], the single writer that batches fsyncs.
//! - [`fence`]: the map-epoch fence every request passes first (pure).
//! - [`head_cache`]: the heads of recently read carts.
//! - [`service`]: [`service::DataNodeService`], the RPC handler for gateway requests.
//! - [`run`]: the node's life: open, register, serve, and shut down in order.

pub mod config;
pub mod fence;
pub mod group_commit;
pub mod head_cache;
pub mod service;
pub mod store;

use std::sync::Arc;

use anyhow::Context;
use cartdb_core::coord::Coordinator;
use cartdb_core::coord::ZkCredentials;
use cartdb_core::rpc::{ClusterKey, serve};
use cartdb_core::telemetry::Metrics;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::DataNodeConfig;
use config::NodeSettings;
use group_commit::GroupCommitSettings;
use service::DataNodeService;

/// Runs a data node on an already-bound `listener` until `shutdown` is cancelled (or the
/// store fails a commit), then shuts down in order:
///
/// 1. stop accepting connections and drain the requests already received;
/// 2. deregister the device from ZooKeeper and close the session;
/// 3. commit what the writer still holds, fsync and close the store.
///
/// # Errors
/// A refused configuration, a store that cannot be opened, ZooKeeper being unreachable at
/// start, or a failed commit or writer thread (the store then refuses writes and the process
/// should be restarted).
pub async fn run(
    config: DataNodeConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut settings = config.settings()?;
    let key = config.secret.key()?;
    settings.coord.credentials = Some(ZkCredentials::from_key(&key));
    let bound = listener
        .local_addr()
        .context("reading the listener's address")?;
    let advertise = settings.advertise_addr(bound);
    let metrics = Metrics::bind(config.metrics.metrics_listen, &advertise).await?;
    let group_commit = GroupCommitSettings {
        device: settings.device,
        max_batch: settings.max_batch,
        timing: settings.timing,
    };
    let node = DataNodeService::open(&settings.data_dir, group_commit)
        .await
        .with_context(|| format!("opening the store in {}", settings.data_dir.display()))?;
    let metrics_stop = CancellationToken::new();
    let metrics_served = tokio::spawn(
        metrics
            .telemetry
            .serve(metrics.listener, metrics_stop.clone()),
    );
    let served = serve_registered(
        &key,
        &settings,
        &advertise,
        &metrics.address,
        listener,
        &node,
        &shutdown,
    )
    .await;
    metrics_stop.cancel();
    if let Ok(Err(e)) = metrics_served.await {
        tracing::warn!(error = %e, "the metrics endpoint failed");
    }
    let closed = node.close().await.context("closing the store");
    let batches = node.counters();
    tracing::info!(
        device = settings.device,
        writes = batches.requests,
        batches = batches.batches,
        fsyncs = batches.commits,
        largest_batch = batches.largest,
        "data node stopped"
    );
    served.and(closed)
}

/// Registers the device (with its metrics address), serves until shutdown, drains, and
/// deregisters.
async fn serve_registered(
    key: &ClusterKey,
    settings: &NodeSettings,
    advertise: &str,
    metrics_address: &str,
    listener: TcpListener,
    node: &Arc<DataNodeService>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    // Our own token, not `shutdown`: the session must outlive the drain so that
    // deregistering comes after it.
    let zk_stop = CancellationToken::new();
    let coord = tokio::select! {
        coord = Coordinator::connect(settings.coord.clone(), zk_stop.clone()) => {
            coord.context("connecting to ZooKeeper")?
        }
        () = shutdown.cancelled() => return Ok(()),
    };
    coord
        .set_metrics_address(metrics_address)
        .await
        .with_context(|| format!("--metrics-listen: cannot register {metrics_address}"))?;
    node.follow_map(coord.map());
    node.watch_journals();
    coord
        .register_device(settings.device, advertise)
        .await
        .with_context(|| format!("registering device {} at {advertise}", settings.device))?;
    tracing::info!(device = settings.device, %advertise, "data node serving");
    let served = serve_until_stopped(listener, node, key, shutdown).await;
    // Closing the session removes the ephemeral znode anyway; this only makes it prompt.
    if let Err(e) = coord.deregister_device(settings.device).await {
        tracing::warn!(error = %e, "cannot deregister; the session close will remove it");
    }
    zk_stop.cancel();
    served
}

/// Serves until `shutdown` is cancelled or the store fails, then stops accepting and waits
/// for the requests already received to be answered.
async fn serve_until_stopped(
    listener: TcpListener,
    node: &Arc<DataNodeService>,
    key: &ClusterKey,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    let server = serve(listener, node.clone(), key.clone(), stop.clone());
    tokio::pin!(server);
    let storage_failed = tokio::select! {
        served = &mut server => return served.context("serving gateways"),
        () = shutdown.cancelled() => false,
        () = node.storage_failed() => true,
    };
    stop.cancel();
    server.await.context("serving gateways")?;
    anyhow::ensure!(
        !storage_failed,
        "the write path failed (see the log) and refuses writes; restart the data node"
    );
    Ok(())
}

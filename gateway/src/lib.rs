//! cartdb gateway: places cart items with a WebAssembly placement policy (CRUSH), writes each
//! operation to W of its RF replicas, and reads carts by merging R or more replicas.
//!
//! ```text
//! API server --GatewayRequest--> service --placement--> write / read --DataRequest--> data nodes
//!                                   |                        ^
//!                 catalog (local copy)               cluster view (map + members + up sets)
//!                                   |                        ^
//!                             coordination <------ ZooKeeper ------> cluster keeper (background)
//! ```
//!
//! # Layout
//! - [`config`]: [`GatewayConfig`], the command line, validated into [`GatewaySettings`].
//! - [`service`]: [`GatewayService`], the `rpc::Service` answering API servers.
//! - [`write`](mod@write): the insert/delete fan-out; [`write_quorum`]: its pure decision
//!   ([`write_quorum::QuorumTracker`]).
//! - [`read`]: `list_all` and `list_category`; [`read_resolution`]: the pure read plan,
//!   per-item read quorum and merge; [`cart_lines`]: the cart a shopper sees;
//!   [`category_page`]: the pure merge of the data nodes' category pages.
//! - [`anti_entropy`]: the sweep (backfill, anti-entropy, handback); [`pg_stream`]: its
//!   pure window of a placement group's stream.
//! - [`op_id`]: operation ids from idempotency keys.
//! - [`replicas`]: connections to the data nodes.
//! - [`placement`]: the up set of every placement group at one map epoch.
//! - [`cluster_view`]: the current map, membership and up sets; reweight decisions.
//! - [`cluster_keeper`]: the background task that keeps the cluster view current.
//! - [`coordination`]: the narrow trait the request path uses to reach ZooKeeper.
//! - `policy`: the WebAssembly policy host and [`policy::PolicyLibrary`].
//! - [`policy_admin`]: storing, verifying and reporting policies (the lifecycle).

pub mod anti_entropy;
pub mod backfill;
pub mod cart_lines;
pub mod category_page;
pub mod cluster_keeper;
pub mod cluster_view;
pub mod compaction;
pub mod config;
pub mod coordination;
pub mod down_out;
pub mod map_change;
pub mod merger;
pub mod op_id;
pub mod pg_stream;
pub mod placement;
pub mod policy;
pub mod policy_admin;
pub mod read;
pub mod read_repair;
pub mod read_resolution;
pub mod replicas;
pub mod service;
pub mod write;
pub mod write_quorum;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cartdb_core::catalog::Catalog;
use cartdb_core::coord::policy_store::PolicyKind;
use cartdb_core::coord::{ActivePolicies, ClusterMap, Coordinator, PolicyRef, ZkCredentials};
use cartdb_core::rpc::{self, ClusterKey};
use cartdb_core::telemetry::Metrics;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{GatewayConfig, GatewaySettings};
pub use service::{GatewayService, ServiceParts};

use crate::anti_entropy::AntiEntropy;
use crate::cluster_keeper::ClusterKeeper;
use crate::cluster_view::{ClusterView, Topology};
use crate::coordination::Coordination;
use crate::merger::Merger;
use crate::placement::build_placement;
use crate::policy::{MergePolicy, PlacementPolicy, PolicyEngine, PolicyLibrary};
use crate::replicas::Replicas;

/// Longest wait for a TCP connection to a data node. Connections are made on loopback or a
/// LAN, where anything slower is a dead or unreachable node; while one attempt runs, other
/// requests to the same node wait for it.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Runs a gateway on `listener` until `shutdown` is cancelled.
///
/// Start-up: validate the configuration, load the placement policy, connect to ZooKeeper,
/// bootstrap the map and catalog from files when ZooKeeper has none, wait until both exist,
/// register the gateway (its id orders its versions) and serve. Shutdown: stop accepting,
/// finish the requests in flight, stop the background tasks, then close the ZooKeeper
/// session, which deregisters the gateway.
///
/// # Errors
/// Invalid configuration, an unloadable policy or map, ZooKeeper unreachable at start, or an
/// unreadable bootstrap file; each with context.
pub async fn run(
    config: GatewayConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut settings = config.validate()?;
    let key = config.secret.key()?;
    settings.coord.credentials = Some(ZkCredentials::from_key(&key));
    // First, so that everything recorded from here on (the ZooKeeper session's state among
    // it) reaches the recorder.
    let address = advertised_address(&settings, &listener)?;
    let metrics = Metrics::bind(config.metrics.metrics_listen, &address).await?;
    let (engine, policy, merge_policy) =
        load_policies(&settings.placement_policy, settings.merge_policy.as_deref()).await?;
    let merge_policy = merge_policy.map(Arc::new);
    // The session outlives `shutdown` on purpose: it is closed only after the drain.
    let session = CancellationToken::new();
    let bootstrap_policies = (&policy, merge_policy.as_deref());
    let Some(coordinator) = connect(&settings, bootstrap_policies, &session, &shutdown).await?
    else {
        return Ok(());
    };
    let Some(map) = wait_until_ready(&coordinator, &shutdown).await? else {
        return Ok(());
    };
    let coordination: Arc<dyn Coordination> = Arc::new(coordinator.clone());
    let library = Arc::new(PolicyLibrary::new(
        engine,
        coordination.clone(),
        policy,
        merge_policy,
    ));
    let merger = Arc::new(Merger::new(
        library
            .merge(map.policies.merge.as_ref().map(|p| p.sha256.as_str()))
            .await
            .context("cannot load the merge policy the map names")?,
    ));
    let (view, replicas) = initial_view(&coordinator, &library, map, &settings, &key).await?;
    coordinator
        .set_metrics_address(&metrics.address)
        .await
        .with_context(|| format!("--metrics-listen: cannot register {}", metrics.address))?;
    let metrics_served = tokio::spawn(metrics.telemetry.serve(metrics.listener, shutdown.clone()));
    let gateway_id = coordinator
        .register_gateway(&address)
        .await
        .context("cannot register the gateway in ZooKeeper")?;
    let keeper = ClusterKeeper {
        coordinator: coordinator.clone(),
        view: view.clone(),
        replicas: replicas.clone(),
        library: library.clone(),
        merger: merger.clone(),
        rule: settings.rule.clone(),
        down_out: settings.down_out,
    };
    let keeper = tokio::spawn(keeper.run(shutdown.clone()));
    let service = GatewayService::new(ServiceParts {
        view: view.clone(),
        replicas: replicas.clone(),
        coordination: coordination.clone(),
        catalog: coordinator.catalog(),
        gateway_id,
        replication: settings.replication,
        request_timeout: settings.request_timeout,
        library,
        merger,
        rule: settings.rule.clone(),
        compaction: settings.compaction,
        clock_offset_ms: settings.clock_offset_ms,
    });
    let sweep = settings.anti_entropy_items_per_sec.map(|rate| {
        let sweep = AntiEntropy {
            service: service.clone(),
            view,
            replicas: replicas.clone(),
            coordination,
            gateway_id,
            items_per_sec: rate.get(),
            max_backfills: settings.max_backfills,
            request_timeout: settings.request_timeout * anti_entropy::SWEEP_TIMEOUT_FACTOR,
            write_quorum: settings.replication.write_quorum,
        };
        tokio::spawn(sweep.run(shutdown.clone()))
    });
    tracing::info!(%address, gateway = gateway_id, "gateway serving");
    let served = rpc::serve(listener, service, key, shutdown.clone()).await;
    if let Err(e) = keeper.await {
        tracing::error!(error = %e, "the cluster keeper failed");
    }
    if let Some(Err(e)) = match sweep {
        Some(task) => Some(task.await),
        None => None,
    } {
        tracing::error!(error = %e, "the anti-entropy sweep failed");
    }
    if let Ok(Err(e)) = metrics_served.await {
        tracing::warn!(error = %e, "the metrics endpoint failed");
    }
    session.cancel();
    drop(coordinator);
    tracing::info!("gateway stopped");
    served.context("serving API servers failed")
}

/// Connects to ZooKeeper (the session ends when `session` is cancelled) and bootstraps the
/// map (with `policies`) and catalog; `None` when `shutdown` came first.
async fn connect(
    settings: &GatewaySettings,
    policies: (&PlacementPolicy, Option<&MergePolicy>),
    session: &CancellationToken,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Coordinator>> {
    let connect = Coordinator::connect(settings.coord.clone(), session.clone());
    let coordinator = tokio::select! {
        () = shutdown.cancelled() => return Ok(None),
        connected = connect => connected.context("cannot connect to ZooKeeper")?,
    };
    bootstrap(&coordinator, settings, policies).await?;
    Ok(Some(coordinator))
}

/// The first cluster view (placers for `map`, the current membership) and the data node
/// connections.
async fn initial_view(
    coordinator: &Coordinator,
    library: &PolicyLibrary,
    map: Arc<ClusterMap>,
    settings: &GatewaySettings,
    key: &ClusterKey,
) -> anyhow::Result<(Arc<ClusterView>, Arc<Replicas>)> {
    if usize::try_from(map.settings.size).ok() != Some(settings.replication.replicas) {
        anyhow::bail!(
            "invalid configuration: replicas: {} differs from the pool size {} the cluster was bootstrapped with (pg_num {}); start the gateway with --replicas {}",
            settings.replication.replicas,
            map.settings.size,
            map.settings.pg_num,
            map.settings.size
        );
    }
    let policy = library
        .placement(&map.policies.placement.sha256)
        .await
        .context("cannot load the placement policy the map names")?;
    if policy.path() != settings.placement_policy {
        tracing::info!(
            policy = policy.name(),
            sha256 = policy.sha256(),
            "placing with the policy the map names, not --placement-policy (the bootstrap only)"
        );
    }
    let placement = build_placement(policy, map.clone(), settings.rule.clone(), None)
        .await
        .with_context(|| format!("cannot place with the map at epoch {}", map.epoch))?;
    let members = coordinator.members().borrow().clone();
    let connect_timeout = settings.request_timeout.min(MAX_CONNECT_TIMEOUT);
    let replicas = Arc::new(
        Replicas::new(key.clone(), connect_timeout).with_routes(settings.peer_routes.clone()),
    );
    replicas.refresh(&members.devices);
    let topology = Topology::new(map, members, Arc::new(placement));
    let view = ClusterView::new(topology, settings.replication.write_quorum);
    Ok((Arc::new(view), replicas))
}

/// Compiles both policy components off the async workers, with one engine (each engine has
/// its own instance pool and epoch ticker thread), which every policy of this gateway then
/// runs on.
async fn load_policies(
    placement: &Path,
    merge: Option<&Path>,
) -> anyhow::Result<(PolicyEngine, PlacementPolicy, Option<MergePolicy>)> {
    let (placement, merge) = (placement.to_owned(), merge.map(Path::to_owned));
    let (engine, placement, merge) = tokio::task::spawn_blocking(move || {
        let engine = PolicyEngine::new().context("cannot start the policy engine")?;
        let placement = PlacementPolicy::load(&engine, &placement)
            .context("cannot load the placement policy")?;
        let merge = merge
            .map(|path| MergePolicy::load(&engine, &path))
            .transpose()
            .context("cannot load the merge policy")?;
        anyhow::Ok((engine, placement, merge))
    })
    .await
    .context("loading the policies failed")??;
    tracing::info!(
        policy = placement.name(),
        sha256 = placement.sha256(),
        "placement policy loaded"
    );
    if let Some(merge) = &merge {
        tracing::info!(
            policy = merge.name(),
            sha256 = merge.sha256(),
            "merge policy loaded"
        );
    }
    Ok((engine, placement, merge))
}

/// Writes the map (naming `policies`, stored first) and catalog files to ZooKeeper when it
/// has none yet.
async fn bootstrap(
    coordinator: &Coordinator,
    settings: &GatewaySettings,
    (placement, merge): (&PlacementPolicy, Option<&MergePolicy>),
) -> anyhow::Result<()> {
    if let Some(path) = &settings.map_file
        && coordinator.map().borrow().is_none()
    {
        let bytes = read_file(path)
            .await
            .with_context(|| format!("cannot read the map file {}", path.display()))?;
        let json = String::from_utf8(bytes)
            .with_context(|| format!("the map file {} is not UTF-8", path.display()))?;
        let by = "gateway bootstrap";
        let placement = PolicyRef {
            sha256: store_file(coordinator, PolicyKind::Placement, placement.path(), by).await?,
            name: placement.name().to_owned(),
        };
        let merge = match merge {
            Some(merge) => Some(PolicyRef {
                sha256: store_file(coordinator, PolicyKind::Merge, merge.path(), by).await?,
                name: merge.name().to_owned(),
            }),
            None => None,
        };
        let policies = ActivePolicies { placement, merge };
        coordinator
            .bootstrap_map(&json, settings.pool, &policies, by)
            .await
            .with_context(|| format!("cannot bootstrap the map from {}", path.display()))?;
    }
    if let Some(path) = &settings.catalog_file {
        let bytes = read_file(path)
            .await
            .with_context(|| format!("cannot read the catalog file {}", path.display()))?;
        let catalog = Catalog::from_json(&bytes)
            .with_context(|| format!("invalid catalog file {}", path.display()))?;
        coordinator
            .bootstrap_catalog(&catalog)
            .await
            .with_context(|| format!("cannot bootstrap the catalog from {}", path.display()))?;
    }
    Ok(())
}

/// Stores the policy component at `path` in the policy store; its sha256.
async fn store_file(
    coordinator: &Coordinator,
    kind: PolicyKind,
    path: &Path,
    by: &str,
) -> anyhow::Result<String> {
    let bytes = read_file(path)
        .await
        .with_context(|| format!("cannot read the policy {}", path.display()))?;
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let now = cartdb_core::version::wall_clock_millis();
    coordinator
        .store_policy(kind, &name, &bytes, by, now)
        .await
        .with_context(|| format!("cannot store the policy {} in ZooKeeper", path.display()))
}

/// Reads a whole file off the async workers.
async fn read_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    let path = path.to_owned();
    Ok(tokio::task::spawn_blocking(move || std::fs::read(path)).await??)
}

/// The address to register: `--advertise`, or else the bound address.
fn advertised_address(
    settings: &GatewaySettings,
    listener: &TcpListener,
) -> anyhow::Result<String> {
    if let Some(address) = &settings.advertise {
        return Ok(address.clone());
    }
    let bound = listener
        .local_addr()
        .context("cannot read the listener's address")?;
    if bound.ip().is_unspecified() {
        tracing::warn!(%bound, "listening on a wildcard address; set --advertise to an address other processes can reach");
    }
    Ok(bound.to_string())
}

/// Waits until ZooKeeper holds a map and a non-empty catalog; `None` when `shutdown` came
/// first.
///
/// # Errors
/// When the coordinator stops publishing before both are present.
async fn wait_until_ready(
    coordinator: &Coordinator,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Arc<ClusterMap>>> {
    let mut map = coordinator.map();
    let mut catalog = coordinator.catalog();
    let mut logged = false;
    loop {
        let current = map.borrow_and_update().clone();
        let has_catalog = !catalog.borrow_and_update().is_empty();
        if let (Some(current), true) = (current, has_catalog) {
            return Ok(Some(current));
        }
        if !logged {
            tracing::info!(
                has_map = map.borrow().is_some(),
                has_catalog,
                "waiting for a CRUSH map and a catalog in ZooKeeper \
                 (start a gateway with --map-file and --catalog-file to provide them)"
            );
            logged = true;
        }
        let changed = tokio::select! {
            () = shutdown.cancelled() => return Ok(None),
            changed = map.changed() => changed,
            changed = catalog.changed() => changed,
        };
        changed.context("the coordinator stopped before a map and a catalog were present")?;
    }
}

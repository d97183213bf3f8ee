//! ZooKeeper coordination: membership, the cluster map (CRUSH map, reweights, pool and past
//! sets) and the catalog: bounded metadata only, never anything that grows with the carts.
//!
//! [`Coordinator`] is the only way cartdb talks to ZooKeeper. Data nodes register their device,
//! gateways register themselves and change the map, everyone reads the map and the catalog.
//! The znode layout, data formats and the reasons behind them are in `docs/zookeeper.md`.
//!
//! Reads never touch the network: [`Coordinator::members`], [`Coordinator::map`] and
//! [`Coordinator::catalog`] hand out in-memory copies that background followers keep fresh
//! from persistent watches. Writes are bounded ZooKeeper calls that return a [`CoordError`]
//! naming the operation and the znode; none is made per cart request.
//!
//! # Layout
//! - [`error`]: the error type, [`CoordError`].
//! - [`map`]: the cluster map document, [`ClusterMap`] (pure).
//! - [`map_edit`]: devices added to and removed from the CRUSH map JSON (pure).
//! - [`membership`]: who is up, [`Membership`], and the registration data format (pure).
//! - [`policy_store`]: policy components stored by sha256, in chunks.
//! - `layout`: the znode paths.
//! - `zk`: one session behind timeouts and typed outcomes.
//! - `follow`: the watch-driven tasks that keep the in-memory copies fresh.
//! - `supervisor`: the task that owns the session and replaces it after an expiry.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{debug, info, warn};
use zookeeper_client::{CreateMode, SessionId, SessionState};

use crate::cart::{DeviceId, Product};
use crate::catalog::Catalog;
use crate::pg_table::intervals_after;

pub mod error;
mod follow;
mod layout;
pub mod map;
pub mod map_edit;
pub mod membership;
pub mod policy_store;
mod supervisor;
mod zk;

pub use error::CoordError;
pub use map::{
    ActivePolicies, ClusterFlags, ClusterMap, FULL_WEIGHT, MAP_FORMAT, MAX_PACE, MapError,
    Placement, PolicyEvent, PolicyRef, PoolSettings, check_pace,
};
pub use membership::Membership;

use supervisor::{Inner, Slot};
use zk::{Created, OP_TIMEOUT, Zk};

/// Validated ZooKeeper settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoordConfig {
    pub servers: String,
    pub chroot: String,
    pub session_timeout: Duration,
    /// The digest identity the session authenticates with. With it, every znode the
    /// session creates is writable only by sessions holding it, and readable by anyone;
    /// without it (tests of the coordination logic only), znodes are open to all.
    pub credentials: Option<ZkCredentials>,
}

/// The ZooKeeper digest identity of a cartdb cluster: user [`ZkCredentials::USER`] with a
/// password derived from the cluster secret, so that the one secret every process already
/// holds also guards ZooKeeper ([`crate::rpc::ClusterKey::zookeeper_password`]).
#[derive(Clone, PartialEq, Eq)]
pub struct ZkCredentials {
    password: String,
}

impl std::fmt::Debug for ZkCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ZkCredentials(cartdb:..)")
    }
}

impl ZkCredentials {
    /// The digest user of every cartdb process.
    pub const USER: &'static str = "cartdb";

    /// The identity whose password is derived from the cluster secret `key`.
    pub fn from_key(key: &crate::rpc::ClusterKey) -> Self {
        Self {
            password: key.zookeeper_password(),
        }
    }

    /// `user:password`, what ZooKeeper's digest scheme takes at authentication.
    pub fn digest_auth(&self) -> Vec<u8> {
        format!("{}:{}", Self::USER, self.password).into_bytes()
    }
}

/// How long [`Coordinator::connect`] waits for the first read of the watched state.
const INITIAL_LOAD_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a starting process keeps trying to reach ZooKeeper. Processes may start before
/// ZooKeeper does (compose starts them together), and a ZooKeeper that is still writing its
/// first snapshot can time out a request or two.
const STARTUP_DEADLINE: Duration = Duration::from_secs(60);

/// Opens the first session, retrying failures that a ZooKeeper still starting up causes
/// until [`STARTUP_DEADLINE`]; a configuration error (a bad chroot) fails at once.
async fn open_with_retries(
    config: &CoordConfig,
    shutdown: &CancellationToken,
) -> Result<Zk, CoordError> {
    let deadline = tokio::time::Instant::now() + STARTUP_DEADLINE;
    let mut delay = Duration::from_millis(100);
    loop {
        let error = match Zk::open(config).await {
            Ok(zk) => return Ok(zk),
            Err(e) => e,
        };
        // Only a bad chroot is final; anything ZooKeeper says while starting may pass.
        let retryable = !matches!(error, CoordError::InvalidName { .. });
        if !retryable || tokio::time::Instant::now() + delay > deadline {
            return Err(error);
        }
        warn!(servers = %config.servers, error = %error, "ZooKeeper not reachable yet; retrying");
        tokio::select! {
            () = shutdown.cancelled() => return Err(CoordError::ShuttingDown),
            // A back-off between attempts, not synchronisation.
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// Rounds of read-modify-compare-and-set before a catalog update gives up.
const CAS_ATTEMPTS: u32 = 10;

/// A handle on cartdb's coordination state in ZooKeeper. Cheap to clone; the background tasks
/// stop when the `shutdown` token given to [`Coordinator::connect`] is cancelled or the last
/// handle is dropped, and the session is then closed, which removes this process's
/// registrations at once.
#[derive(Clone)]
pub struct Coordinator {
    inner: Arc<Inner>,
    _stop_on_drop: Arc<DropGuard>,
}

impl fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Coordinator")
            .field("servers", &self.inner.config.servers)
            .field("chroot", &self.inner.config.chroot)
            .finish_non_exhaustive()
    }
}

impl Coordinator {
    /// Connects, creates the chroot and the layout's parent znodes, and starts the supervisor
    /// (which owns the session and replaces it after an expiry, re-creating this process's
    /// registrations and re-reading all watched state). Returns once the members, map and
    /// catalog have been read once (or after 30 s with a warning).
    ///
    /// # Errors
    /// [`CoordError::Connect`] or [`CoordError::Timeout`] when no session can be opened, or
    /// the failed call when the layout cannot be created.
    pub async fn connect(
        config: CoordConfig,
        shutdown: CancellationToken,
    ) -> Result<Coordinator, CoordError> {
        let zk = open_with_retries(&config, &shutdown).await?;
        info!(servers = %config.servers, chroot = %config.chroot, session = %zk.session_id(), "connected to ZooKeeper");
        let stop = shutdown.child_token();
        let stop_on_drop = Arc::new(stop.clone().drop_guard());
        let inner = Arc::new(Inner::new(config));
        let (tasks, ready) = supervisor::start_session(&inner, &zk, &stop);
        tokio::spawn(supervisor::supervise(inner.clone(), zk, tasks, stop));
        let first_reads = futures::future::join_all(ready);
        if tokio::time::timeout(INITIAL_LOAD_TIMEOUT, first_reads)
            .await
            .is_err()
        {
            warn!("coordination state not fully read after {INITIAL_LOAD_TIMEOUT:?}; continuing");
        }
        Ok(Coordinator {
            inner,
            _stop_on_drop: stop_on_drop,
        })
    }

    /// Whether a session is established and currently connected.
    pub fn is_connected(&self) -> bool {
        matches!(&*self.inner.session.borrow(), Slot::Live(zk) if zk.state() == SessionState::SyncConnected)
    }

    /// Sets where this process serves `GET /metrics` (`host:port`); the registrations made
    /// after this call carry it, so operators and Prometheus find every endpoint through
    /// the membership. Call it before registering.
    ///
    /// # Errors
    /// [`CoordError::InvalidAddress`].
    pub async fn set_metrics_address(&self, address: &str) -> Result<(), CoordError> {
        check_address(address)?;
        self.inner.registrations.lock().await.metrics = Some(address.to_owned());
        Ok(())
    }

    /// Registers this data node's device at `address` (`host:port`) with an ephemeral znode.
    /// An ephemeral for this device left by an older session (say, this node before a kill -9
    /// and a restart within the session timeout) is replaced. The registration is remembered,
    /// also when this call fails, and re-created after a session expiry.
    ///
    /// # Errors
    /// [`CoordError::InvalidAddress`], or the failed ZooKeeper call.
    pub async fn register_device(&self, device: DeviceId, address: &str) -> Result<(), CoordError> {
        check_address(address)?;
        let mut registrations = self.inner.registrations.lock().await;
        registrations.devices.insert(device, address.to_owned());
        let path = &layout::device(device);
        let data = &membership::encode(address, registrations.metrics.as_deref());
        self.run("register device", |zk| async move {
            supervisor::ensure_ephemeral(&zk, path, data).await
        })
        .await?;
        info!(device, address, "device registered");
        Ok(())
    }

    /// Removes this process's registration of `device` and forgets it. A registration of the
    /// device by another session is left alone.
    ///
    /// # Errors
    /// The failed ZooKeeper call (the device is forgotten all the same).
    pub async fn deregister_device(&self, device: DeviceId) -> Result<(), CoordError> {
        let mut registrations = self.inner.registrations.lock().await;
        registrations.devices.remove(&device);
        let path = &layout::device(device);
        self.run("deregister device", |zk| async move {
            supervisor::remove_own_ephemeral(&zk, path).await
        })
        .await?;
        info!(device, "device deregistered");
        Ok(())
    }

    /// Registers this gateway at `address` and returns its id. The id is allocated from a
    /// persistent-sequential znode the first time (ids are never reused, even across
    /// restarts) and kept for the life of the process: later calls and re-registration after
    /// a session expiry use the same id.
    ///
    /// # Errors
    /// [`CoordError::InvalidAddress`], [`CoordError::GatewayIdsExhausted`], or the failed
    /// ZooKeeper call.
    pub async fn register_gateway(&self, address: &str) -> Result<u32, CoordError> {
        check_address(address)?;
        let mut registrations = self.inner.registrations.lock().await;
        let id = match &registrations.gateway {
            Some((id, _)) => *id,
            None => self.allocate_gateway_id().await?,
        };
        registrations.gateway = Some((id, address.to_owned()));
        let path = &layout::gateway(id);
        let data = &membership::encode(address, registrations.metrics.as_deref());
        self.run("register gateway", |zk| async move {
            supervisor::ensure_ephemeral(&zk, path, data).await
        })
        .await?;
        info!(gateway = id, address, "gateway registered");
        Ok(id)
    }

    async fn allocate_gateway_id(&self) -> Result<u32, CoordError> {
        const OP: &str = "allocate gateway id";
        let created = self
            .run(OP, |zk| async move {
                zk.create(
                    layout::GATEWAY_ID_PREFIX,
                    &[],
                    CreateMode::PersistentSequential,
                )
                .await
            })
            .await?;
        match created {
            Created::New(sequence) => {
                u32::try_from(sequence).map_err(|_| CoordError::GatewayIdsExhausted { sequence })
            }
            other => Err(unexpected(OP, layout::GATEWAY_ID_PREFIX, other)),
        }
    }

    /// The live data nodes and gateways. Never touches the network.
    pub fn members(&self) -> watch::Receiver<Arc<Membership>> {
        self.inner.members.subscribe()
    }

    /// Creates `/map` from a CRUSH map (python-crush JSON, as in `config/crush-map.json`),
    /// the pool's settings and the policies (stored before, with
    /// [`Coordinator::store_policy`]), with no reweights and no past sets, at epoch 1; `by`
    /// is recorded in the policy history. Does nothing when `/map` already exists: the map in
    /// ZooKeeper (pool and policies included) is the one every gateway places with, whatever
    /// the local files and flags say.
    ///
    /// # Errors
    /// [`CoordError::InvalidMap`] when `map_json` is not a valid map or `pool` or `policies`
    /// are invalid (checked before anything is written), or the failed ZooKeeper call.
    pub async fn bootstrap_map(
        &self,
        map_json: &str,
        pool: PoolSettings,
        policies: &ActivePolicies,
        by: &str,
    ) -> Result<(), CoordError> {
        let now = crate::version::wall_clock_millis();
        let (doc, map) = map::bootstrap_document(map_json, pool, policies, now, by)
            .map_err(CoordError::InvalidMap)?;
        let doc = &doc;
        let created = self
            .run("bootstrap map", |zk| async move {
                create_once(&zk, "bootstrap map", layout::MAP, doc).await
            })
            .await?;
        if created {
            info!(
                devices = map.devices.len(),
                pg_num = pool.pg_num,
                pool = pool.id,
                size = pool.size,
                "cluster map bootstrapped at epoch 1"
            );
            self.inner.map.publish(map.epoch, Some(Arc::new(map)));
        } else {
            debug!("CRUSH map already present; bootstrap skipped");
        }
        Ok(())
    }

    /// The CRUSH map, `None` until one is loaded. Never touches the network.
    pub fn map(&self) -> watch::Receiver<Option<Arc<ClusterMap>>> {
        self.inner.map.subscribe()
    }

    /// Replaces the reweights and past sets of the map at `expected_epoch` in one
    /// compare-and-set on `/map`'s version, so a new up set and the past sets that go with
    /// it are never seen apart. Returns `Ok(false)` when the map is no longer at that epoch:
    /// someone else changed it first; re-read [`Coordinator::map`] and decide again. Writing
    /// what the map already has changes nothing and returns `Ok(true)` without a new epoch.
    ///
    /// # Errors
    /// [`CoordError::UnknownDevice`] when a reweight or past set names a device not in the
    /// map, [`CoordError::NotBootstrapped`], [`CoordError::InvalidMapData`] when `/map` holds
    /// an invalid document, or the failed ZooKeeper call.
    pub async fn set_placement(
        &self,
        expected_epoch: u64,
        placement: Placement,
    ) -> Result<bool, CoordError> {
        let placement = &placement;
        let written = self
            .run("set placement", |zk| async move {
                write_placement(&zk, expected_epoch, placement).await
            })
            .await?;
        let Some(map) = written else {
            return Ok(false);
        };
        info!(
            epoch = map.epoch,
            past_pgs = map.past.len(),
            "placement set"
        );
        self.inner.map.publish(map.epoch, Some(Arc::new(map)));
        Ok(true)
    }

    /// Creates `/catalog` from `catalog`; does nothing when it already exists.
    ///
    /// # Errors
    /// The failed ZooKeeper call.
    pub async fn bootstrap_catalog(&self, catalog: &Catalog) -> Result<(), CoordError> {
        let json = &catalog.to_json();
        let created = self
            .run("bootstrap catalog", |zk| async move {
                create_once(&zk, "bootstrap catalog", layout::CATALOG, json).await
            })
            .await?;
        if created {
            info!(products = catalog.len(), "catalog bootstrapped");
            self.inner.catalog.publish(1, Arc::new(catalog.clone()));
        } else {
            debug!("catalog already present; bootstrap skipped");
        }
        Ok(())
    }

    /// The catalog; empty until loaded. Never touches the network.
    pub fn catalog(&self) -> watch::Receiver<Arc<Catalog>> {
        self.inner.catalog.subscribe()
    }

    /// Adds `product` to the catalog or replaces the product with the same id, with a
    /// read-modify-compare-and-set loop (several API servers may edit the catalog at once).
    /// Returns the catalog as written.
    ///
    /// # Errors
    /// [`CoordError::InvalidCatalog`] when the product is invalid or its name belongs to
    /// another product, [`CoordError::NotBootstrapped`], [`CoordError::InvalidCatalogData`],
    /// [`CoordError::Contended`] after 10 lost races, or the failed ZooKeeper call.
    pub async fn upsert_product(&self, product: Product) -> Result<Arc<Catalog>, CoordError> {
        const OP: &str = "upsert product";
        let product = &product;
        for _ in 0..CAS_ATTEMPTS {
            let written = self
                .run(OP, |zk| async move { try_upsert(&zk, product).await })
                .await?;
            if let Some((generation, catalog)) = written {
                self.inner.catalog.publish(generation, catalog.clone());
                return Ok(catalog);
            }
        }
        Err(CoordError::Contended {
            op: OP,
            path: layout::CATALOG.to_owned(),
            attempts: CAS_ATTEMPTS,
        })
    }

    /// Runs `call` with the live session; if that session expired during the call, runs it
    /// once more with the next session (every call passed here is idempotent).
    async fn run<T, F, Fut>(&self, op: &'static str, call: F) -> Result<T, CoordError>
    where
        F: Fn(Zk) -> Fut,
        Fut: Future<Output = Result<T, CoordError>>,
    {
        let zk = self.live_session(op, None).await?;
        let expired = zk.session_id();
        match call(zk).await {
            Err(CoordError::SessionExpired) => {
                call(self.live_session(op, Some(expired)).await?).await
            }
            result => result,
        }
    }

    /// The live session (other than `not`), waiting up to [`OP_TIMEOUT`] for the supervisor
    /// to establish one.
    async fn live_session(
        &self,
        op: &'static str,
        not: Option<SessionId>,
    ) -> Result<Zk, CoordError> {
        let mut slots = self.inner.session.subscribe();
        let usable = |slot: &Slot| match slot {
            Slot::Live(zk) => Some(zk.session_id()) != not,
            Slot::Closed => true,
            Slot::Connecting => false,
        };
        let waited = tokio::time::timeout(OP_TIMEOUT, slots.wait_for(usable)).await;
        let slot = match waited {
            Err(_) => {
                return Err(CoordError::NoSession {
                    op,
                    waited: OP_TIMEOUT,
                });
            }
            Ok(Err(_)) => return Err(CoordError::ShuttingDown),
            Ok(Ok(slot)) => slot.clone(),
        };
        match slot {
            Slot::Live(zk) => Ok(zk),
            Slot::Connecting | Slot::Closed => Err(CoordError::ShuttingDown),
        }
    }
}

/// Creates a persistent znode; `false` when it already existed.
async fn create_once(
    zk: &Zk,
    op: &'static str,
    path: &str,
    data: &[u8],
) -> Result<bool, CoordError> {
    match zk.create(path, data, CreateMode::Persistent).await? {
        Created::New(_) => Ok(true),
        Created::Existed => Ok(false),
        other => Err(unexpected(op, path, other)),
    }
}

/// One compare-and-set of `/map`'s placement; `None` when the map is not at
/// `expected_epoch`.
async fn write_placement(
    zk: &Zk,
    expected_epoch: u64,
    placement: &Placement,
) -> Result<Option<ClusterMap>, CoordError> {
    const OP: &str = "set placement";
    let Some((data, stat)) = zk.get(layout::MAP).await? else {
        return Err(CoordError::NotBootstrapped {
            op: OP,
            path: layout::MAP.to_owned(),
        });
    };
    if zk::generation(&stat) != expected_epoch {
        return Ok(None);
    }
    let current =
        ClusterMap::parse(&data, expected_epoch).map_err(|source| CoordError::InvalidMapData {
            path: layout::MAP.to_owned(),
            source,
        })?;
    // With a new CRUSH map, the devices are checked by parsing the result below.
    if placement.crush.is_none()
        && let Some(&device) = placement
            .devices()
            .find(|d| !current.devices.contains_key(d))
    {
        return Err(CoordError::UnknownDevice { op: OP, device });
    }
    let mut placement = placement.clone();
    placement.intervals = intervals_after(
        &current.intervals,
        &current.past,
        &placement.past,
        expected_epoch + 1,
    );
    if placement.is_that_of(&current) {
        return Ok(Some(current));
    }
    let crush = placement.crush.as_deref().unwrap_or(&current.map_json);
    let doc = map::document(crush, current.settings, &placement);
    // Re-parsed so that nothing is published that a reader would refuse (a past set naming
    // a PG beyond pg_num, say).
    let checked = ClusterMap::parse(&doc, expected_epoch + 1).map_err(CoordError::InvalidMap)?;
    let written = zk.set(layout::MAP, &doc, stat.version).await?;
    Ok(written.map(|stat| ClusterMap {
        epoch: zk::generation(&stat),
        ..checked
    }))
}

/// One read-modify-compare-and-set of `/catalog`; `None` when another writer won the race.
async fn try_upsert(zk: &Zk, product: &Product) -> Result<Option<(u64, Arc<Catalog>)>, CoordError> {
    let Some((data, stat)) = zk.get(layout::CATALOG).await? else {
        return Err(CoordError::NotBootstrapped {
            op: "upsert product",
            path: layout::CATALOG.to_owned(),
        });
    };
    let mut catalog =
        Catalog::from_json(&data).map_err(|source| CoordError::InvalidCatalogData {
            path: layout::CATALOG.to_owned(),
            source,
        })?;
    if catalog.by_id(&product.productid) == Some(product) {
        return Ok(Some((zk::generation(&stat), Arc::new(catalog))));
    }
    catalog
        .upsert(product.clone())
        .map_err(CoordError::InvalidCatalog)?;
    let written = zk
        .set(layout::CATALOG, &catalog.to_json(), stat.version)
        .await?;
    Ok(written.map(|stat| (zk::generation(&stat), Arc::new(catalog))))
}

fn check_address(address: &str) -> Result<(), CoordError> {
    membership::check_address(address).map_err(|problem| CoordError::InvalidAddress {
        address: address.to_owned(),
        problem,
    })
}

/// A create outcome that the layout rules out (a parent created at connect is gone, or a
/// sequential znode "already existed").
fn unexpected(op: &'static str, path: &str, outcome: Created) -> CoordError {
    let source = match outcome {
        Created::Existed => zookeeper_client::Error::NodeExists,
        _ => zookeeper_client::Error::NoNode,
    };
    CoordError::Zk {
        op,
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Handlers call the coordinator from spawned tasks, so its futures must be `Send`.
    #[allow(dead_code, clippy::let_underscore_future)]
    fn api_futures_are_send(c: &Coordinator, product: Product, catalog: &Catalog) {
        fn send<T: Send>(_: T) {}
        send(Coordinator::connect(
            c.inner.config.clone(),
            CancellationToken::new(),
        ));
        send(c.register_device(1, "h:1"));
        send(c.deregister_device(1));
        send(c.register_gateway("h:1"));
        send(c.bootstrap_map(
            "{}",
            PoolSettings {
                id: 1,
                pg_num: 1,
                size: 1,
            },
            &ActivePolicies::default(),
            "test",
        ));
        send(c.set_placement(1, Placement::default()));
        send(c.bootstrap_catalog(catalog));
        send(c.upsert_product(product));
    }

    #[test]
    fn the_coordinator_is_shareable() {
        fn shareable<T: Send + Sync + Clone + 'static>() {}
        shareable::<Coordinator>();
    }
}

//! Data nodes for the gateway's behaviour tests: the real [`DataNodeService`] (its fence,
//! group commit and fjall store, in a temporary directory) served in-process on a loopback
//! port, behind fault hooks at its edge that make it answer slowly, refuse, or lose its
//! data; and [`eventually`], for waiting on something that happens after the gateway has
//! already answered.

#![allow(dead_code, reason = "each test file uses a different part")]
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cartdb_core::cart::{DeviceId, ItemKey, ItemState};
use cartdb_core::coord::ClusterMap;
use cartdb_core::rpc;
use cartdb_core::wire::{DataCall, DataFailure, DataRequest, DataResponse, ServiceKind};
use cartdb_datanode::DataNodeConfig;
use cartdb_datanode::group_commit::GroupCommitSettings;
use cartdb_datanode::service::DataNodeService;
use clap::Parser;
use tempfile::TempDir;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

/// One data node under test: the real service, and the faults the test injects in front
/// of it.
pub struct TestNode {
    pub device: DeviceId,
    /// The service now serving, and the directories of every store it has had (kept until
    /// the node is dropped, so a replaced store's files outlive its writer).
    serving: Mutex<(Arc<DataNodeService>, Vec<TempDir>)>,
    /// The map the node fences with (`None`: only epoch-0 calls are served).
    map: watch::Sender<Option<Arc<ClusterMap>>>,
    /// Milliseconds every answer is delayed by.
    delay_ms: AtomicU64,
    /// Answer every request with `Failed(Storage)`.
    failing: AtomicBool,
    /// Apply requests received (including refused and duplicate ones).
    pub applies: AtomicUsize,
}

/// Opens the real data node service for `device` over a fresh store, with the data node's
/// own default settings, fencing with the maps `map` publishes.
async fn open_service(
    device: DeviceId,
    map: &watch::Sender<Option<Arc<ClusterMap>>>,
) -> (Arc<DataNodeService>, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = DataNodeConfig::parse_from([
        "cartdb-datanode",
        "--device-id",
        &device.to_string(),
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    let settings = config.settings().unwrap();
    let group_commit = GroupCommitSettings {
        device,
        max_batch: settings.max_batch,
        timing: settings.timing,
    };
    let service = DataNodeService::open(dir.path(), group_commit)
        .await
        .unwrap();
    service.follow_map(map.subscribe());
    (service, dir)
}

impl TestNode {
    fn current(&self) -> Arc<DataNodeService> {
        self.serving.lock().unwrap().0.clone()
    }

    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms
            .store(u64::try_from(delay.as_millis()).unwrap(), Ordering::SeqCst);
    }

    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// The quantity this replica's store holds for the item (0 when it has never seen it).
    pub fn qty(&self, user: &str, product: &str) -> u64 {
        let key = ItemKey {
            user: user.into(),
            product: product.into(),
        };
        let node = self.current();
        node.store()
            .read_item(&key)
            .unwrap()
            .as_ref()
            .map_or(0, ItemState::qty)
    }

    /// Replaces the store with an empty one (a replica whose disk was replaced, or that
    /// never got the data).
    pub async fn wipe(&self) {
        let (fresh, dir) = open_service(self.device, &self.map).await;
        let old = {
            let mut serving = self.serving.lock().unwrap();
            serving.1.push(dir);
            std::mem::replace(&mut serving.0, fresh)
        };
        old.close().await.unwrap();
    }
}

/// The rpc service in front of a shared [`TestNode`]: the faults first, then the real
/// service.
struct FaultyService(Arc<TestNode>);

impl rpc::Service for FaultyService {
    type Request = DataCall;
    type Response = DataResponse;
    const KIND: ServiceKind = ServiceKind::DataNode;

    fn request_name(call: &DataCall) -> &'static str {
        call.request.name()
    }

    async fn call(self: Arc<Self>, call: DataCall) -> DataResponse {
        let node = &self.0;
        let delay = node.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if matches!(call.request, DataRequest::Apply { .. }) {
            node.applies.fetch_add(1, Ordering::SeqCst);
        }
        if node.failing.load(Ordering::SeqCst) {
            return DataResponse::Failed(DataFailure::Storage {
                device: node.device,
                detail: "disk on fire".into(),
            });
        }
        node.current().call(call).await
    }
}

/// A running data node under test.
pub struct RunningNode {
    pub node: Arc<TestNode>,
    pub address: String,
    stop: CancellationToken,
}

/// The cluster secret the data nodes and the gateways under test share.
pub fn cluster_key() -> rpc::ClusterKey {
    rpc::ClusterKey::new(b"gateway-test-cluster-secret", "test").unwrap()
}

impl RunningNode {
    /// Starts a data node for `device` on a free loopback port, fencing with `map` (`None`:
    /// it serves only calls placed with epoch 0).
    pub async fn start(device: DeviceId, map: Option<Arc<ClusterMap>>) -> RunningNode {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let map = watch::Sender::new(map);
        let (service, dir) = open_service(device, &map).await;
        let node = Arc::new(TestNode {
            device,
            serving: Mutex::new((service, vec![dir])),
            map,
            delay_ms: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            applies: AtomicUsize::new(0),
        });
        let stop = CancellationToken::new();
        let service = Arc::new(FaultyService(node.clone()));
        tokio::spawn(rpc::serve(listener, service, cluster_key(), stop.clone()));
        RunningNode {
            node,
            address,
            stop,
        }
    }

    /// Stops accepting connections (existing ones close once their requests are answered).
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Stops the node and waits until its address refuses connections, so the next request
    /// sent to it finds it down.
    pub async fn stop_and_wait(&self) {
        self.stop();
        let what = format!(
            "device {} at {} to refuse connections",
            self.node.device, self.address
        );
        eventually_async(&what, || async {
            TcpStream::connect(&self.address).await.is_err()
        })
        .await;
    }
}

impl Drop for RunningNode {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Data nodes for devices `1..=n`, fencing with `map`, and their addresses by device id.
pub async fn start_nodes(
    n: DeviceId,
    map: Option<Arc<ClusterMap>>,
) -> (BTreeMap<DeviceId, RunningNode>, BTreeMap<DeviceId, String>) {
    let mut nodes = BTreeMap::new();
    let mut addresses = BTreeMap::new();
    for device in 1..=n {
        let node = RunningNode::start(device, map.clone()).await;
        addresses.insert(device, node.address.clone());
        nodes.insert(device, node);
    }
    (nodes, addresses)
}

/// An address where nothing listens (a port that was just free).
pub async fn dead_address() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().to_string()
}

/// How long [`eventually`] waits before failing the test. Generous, because it only bounds
/// how long a failing test takes: a passing one goes on as soon as its condition holds.
pub const PATIENCE: Duration = Duration::from_secs(5);

/// How often [`eventually`] checks its condition.
const POLL_EVERY: Duration = Duration::from_millis(5);

/// Waits until `check` holds, checking every few milliseconds; fails the test, naming `what`
/// it waited for, if it still does not hold after [`PATIENCE`].
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    eventually_async(what, || std::future::ready(check())).await;
}

/// [`eventually`] for a condition that has to be awaited.
pub async fn eventually_async<F>(what: &str, mut check: impl FnMut() -> F)
where
    F: Future<Output = bool>,
{
    let give_up = Instant::now() + PATIENCE;
    let mut polls = tokio::time::interval(POLL_EVERY);
    polls.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        // The first tick is immediate: a condition that already holds costs no wait.
        polls.tick().await;
        if check().await {
            return;
        }
        assert!(
            Instant::now() < give_up,
            "gave up after {PATIENCE:?} waiting for {what}"
        );
    }
}

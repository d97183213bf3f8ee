//! A fake data node for the gateway's behaviour tests: a real [`rpc::Service`] on a loopback
//! port that keeps item operation logs in memory (no fsync, no ZooKeeper), and can be told
//! to answer slowly, to refuse, or to stop; and [`eventually`], for waiting on something
//! that happens after the gateway has already answered.

#![allow(dead_code, reason = "each test file uses a different part")]
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cartdb_core::cart::{DeviceId, ItemKey, ItemState};
use cartdb_core::rpc;
use cartdb_core::wire::{DataCall, DataFailure, DataRequest, DataResponse, ServiceKind};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

/// The state and behaviour of one fake data node.
#[derive(Default)]
pub struct FakeNode {
    pub device: DeviceId,
    items: Mutex<BTreeMap<ItemKey, ItemState>>,
    /// Milliseconds every answer is delayed by.
    delay_ms: AtomicU64,
    /// Answer every request with `Failed(Storage)`.
    failing: AtomicBool,
    /// Apply requests received (including refused and duplicate ones).
    pub applies: AtomicUsize,
}

impl FakeNode {
    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms
            .store(u64::try_from(delay.as_millis()).unwrap(), Ordering::SeqCst);
    }

    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// The quantity this replica holds for the item (0 when it has never seen it).
    pub fn qty(&self, user: &str, product: &str) -> u64 {
        let key = ItemKey {
            user: user.into(),
            product: product.into(),
        };
        self.items
            .lock()
            .unwrap()
            .get(&key)
            .map_or(0, ItemState::qty)
    }

    /// Forgets every item (a replica that lost its data, or never got it).
    pub fn wipe(&self) {
        self.items.lock().unwrap().clear();
    }

    fn answer(&self, request: DataRequest) -> DataResponse {
        if self.failing.load(Ordering::SeqCst) {
            return DataResponse::Failed(DataFailure::Storage {
                device: self.device,
                detail: "disk on fire".into(),
            });
        }
        let mut items = self.items.lock().unwrap();
        match request {
            DataRequest::Apply {
                key,
                meta,
                op,
                require_in_cart,
                ..
            } => {
                self.applies.fetch_add(1, Ordering::SeqCst);
                let state = items
                    .entry(key.clone())
                    .or_insert_with(|| ItemState::new(key.product.clone(), meta));
                if require_in_cart && state.qty() == 0 && !state.contains(op.id) {
                    return DataResponse::NotInCart;
                }
                let duplicate = !state.apply(op);
                DataResponse::Applied {
                    qty: state.qty(),
                    duplicate,
                    held: op.version,
                }
            }
            DataRequest::ReadUser { user } => DataResponse::UserItems {
                items: items
                    .iter()
                    .filter(|(k, _)| k.user == user)
                    .map(|(_, s)| s.clone())
                    .collect(),
            },
            DataRequest::ReadSummaries { user } => DataResponse::Summaries {
                items: items
                    .iter()
                    .filter(|(k, _)| k.user == user)
                    .map(|(_, s)| s.summary())
                    .collect(),
            },
            DataRequest::ReadItems { user, products } => DataResponse::UserItems {
                items: items
                    .iter()
                    .filter(|(k, _)| k.user == user && products.contains(&k.product))
                    .map(|(_, s)| s.clone())
                    .collect(),
            },
            DataRequest::Repair {
                key,
                meta,
                base,
                ops,
            } => {
                let state = items
                    .entry(key.clone())
                    .or_insert_with(|| ItemState::new(key.product.clone(), meta));
                if let Some(base) = base.filter(|b| b.version > state.base.version) {
                    state.base = base;
                    state.ops.retain(|op| Some(op.version) > base.version);
                }
                let added = ops.into_iter().filter(|op| state.apply(*op)).count();
                DataResponse::Repaired {
                    added: u32::try_from(added).unwrap(),
                }
            }
            // The fake never compacts: folding is the data node's business, tested there.
            DataRequest::Compact { .. } => DataResponse::Compacted { folded: 0 },
            DataRequest::ListCategory { category } => DataResponse::CategoryItems {
                items: items
                    .iter()
                    .filter(|(_, s)| s.meta.category == category && s.qty() > 0)
                    .map(|(k, _)| k.clone())
                    .collect(),
            },
            // Placement-group scans, listings and handback are the data node's business,
            // tested against the real one (datanode/tests, the cluster tests).
            DataRequest::ScanPg { .. } | DataRequest::ListItems { .. } => DataResponse::Held {
                items: Vec::new(),
                more: false,
            },
            DataRequest::DropItems { .. } => DataResponse::Dropped {
                items: 0,
                changed: 0,
            },
        }
    }
}

/// The rpc service wrapper around a shared [`FakeNode`].
struct FakeService(Arc<FakeNode>);

impl rpc::Service for FakeService {
    type Request = DataCall;
    type Response = DataResponse;
    const KIND: ServiceKind = ServiceKind::DataNode;

    fn request_name(call: &DataCall) -> &'static str {
        call.request.name()
    }

    async fn call(self: Arc<Self>, call: DataCall) -> DataResponse {
        let delay = self.0.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        self.0.answer(call.request)
    }
}

/// A running fake data node.
pub struct RunningNode {
    pub node: Arc<FakeNode>,
    pub address: String,
    stop: CancellationToken,
}

/// The cluster secret the fake data nodes and the gateways under test share.
pub fn cluster_key() -> rpc::ClusterKey {
    rpc::ClusterKey::new(b"gateway-test-cluster-secret", "test").unwrap()
}

impl RunningNode {
    /// Starts a fake data node for `device` on a free loopback port.
    pub async fn start(device: DeviceId) -> RunningNode {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let node = Arc::new(FakeNode {
            device,
            ..FakeNode::default()
        });
        let stop = CancellationToken::new();
        let service = Arc::new(FakeService(node.clone()));
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

/// Fake data nodes for devices `1..=n`, and their addresses by device id.
pub async fn start_nodes(
    n: DeviceId,
) -> (BTreeMap<DeviceId, RunningNode>, BTreeMap<DeviceId, String>) {
    let mut nodes = BTreeMap::new();
    let mut addresses = BTreeMap::new();
    for device in 1..=n {
        let node = RunningNode::start(device).await;
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

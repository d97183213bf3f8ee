//! Connections to the data nodes: one multiplexed [`PeerClient`] per live device.
//!
//! The set of clients follows the membership: the cluster keeper calls
//! [`Replicas::refresh`] whenever a device registers, leaves or moves to another address. A
//! request only takes a snapshot of the current set (an atomic pointer load), so the per
//! request path never waits for a lock or makes a connection map.
//!
//! Every request travels in a [`DataCall`] with the epoch of the map it was placed with.
//! A data node that refuses one as placed with a stale map names its own epoch; the
//! newest such epoch is kept ([`Replicas::epoch_heard`]) so that the request can wait for
//! this gateway's view to reach it and be placed again (see `GatewayService::handle`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use cartdb_core::cart::DeviceId;
use cartdb_core::rpc::{ClusterKey, Faults, PeerClient, RpcError};
use cartdb_core::wire::{DataCall, DataFailure, DataResponse, ServiceKind};

/// A connection to one data node.
pub type DataClient = PeerClient<DataCall, DataResponse>;

/// Why a request to one replica got no usable answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicaError {
    /// No data node is registered for the device.
    #[error("device {device} is down (no data node registered)")]
    Down { device: DeviceId },
    /// The request or its reply was lost: connection, time-out or handshake trouble.
    #[error(transparent)]
    Rpc(#[from] RpcError),
    /// The data node answered that it could not serve the request.
    #[error(transparent)]
    Refused(DataFailure),
    /// The data node answered with a response of the wrong kind (a bug on either side).
    #[error("device {device} answered {request} with an unexpected {response}")]
    Unexpected {
        device: DeviceId,
        request: &'static str,
        response: &'static str,
    },
}

/// Every live data node, by device id.
pub struct Replicas {
    peers: ArcSwap<BTreeMap<DeviceId, Arc<DataClient>>>,
    key: ClusterKey,
    connect_timeout: Duration,
    /// The newest map epoch a data node named when it refused a request as stale.
    epoch_heard: Arc<AtomicU64>,
    /// Test-only: registered data node address -> the address to connect to instead (a
    /// gate a partition test cuts). Empty in production.
    routes: BTreeMap<String, String>,
    /// Test-only: faults injected into calls to chosen data nodes. `None` in production.
    faults: Option<Faults>,
}

/// One live device's connection, usable outside a borrow of [`Replicas`] (a request that
/// must reach its replica even after its caller stopped waiting runs in a task of its own).
#[derive(Clone)]
pub struct Peer {
    device: DeviceId,
    client: Arc<DataClient>,
    epoch_heard: Arc<AtomicU64>,
}

impl Replicas {
    /// No peers yet; connections made later prove the cluster secret `key` and give up
    /// after `connect_timeout`.
    pub fn new(key: ClusterKey, connect_timeout: Duration) -> Self {
        Self {
            peers: ArcSwap::from_pointee(BTreeMap::new()),
            key,
            connect_timeout,
            epoch_heard: Arc::new(AtomicU64::new(0)),
            routes: BTreeMap::new(),
            faults: None,
        }
    }

    /// The same, with every call to a data node suffering the faults `faults` names for its
    /// address (in-process tests: a partition, lost replies, slow links).
    #[must_use]
    pub fn with_faults(mut self, faults: Faults) -> Self {
        self.faults = Some(faults);
        self
    }

    /// The same, connecting to `routes[address]` instead of a data node registered at
    /// `address` (the hidden test-only `--test-peer-route`).
    #[must_use]
    pub fn with_routes(mut self, routes: BTreeMap<String, String>) -> Self {
        self.routes = routes;
        self
    }

    /// Where to connect for a data node registered at `address`.
    fn route<'a>(&'a self, address: &'a String) -> &'a String {
        self.routes.get(address).unwrap_or(address)
    }

    /// Makes the peer set match `devices` (device id -> address): keeps the client of every
    /// device whose address is unchanged, makes clients for new or moved devices (they
    /// connect on first use) and drops the rest, closing their connections.
    pub fn refresh(&self, devices: &BTreeMap<DeviceId, String>) {
        let current = self.peers.load();
        let devices: BTreeMap<DeviceId, String> = devices
            .iter()
            .map(|(device, addr)| (*device, self.route(addr).clone()))
            .collect();
        if same_addresses(&current, &devices) {
            return;
        }
        let next = devices
            .iter()
            .map(|(device, addr)| {
                let client = match current.get(device) {
                    Some(client) if client.addr() == addr => client.clone(),
                    _ => {
                        let client = DataClient::new(
                            addr.clone(),
                            ServiceKind::DataNode,
                            self.key.clone(),
                            self.connect_timeout,
                        );
                        Arc::new(match &self.faults {
                            Some(faults) => client.with_faults(faults.clone()),
                            None => client,
                        })
                    }
                };
                (*device, client)
            })
            .collect();
        self.peers.store(Arc::new(next));
    }

    /// The newest map epoch a data node named in a [`DataFailure::StaleEpoch`] refusal: this
    /// gateway's view is behind while its map is older.
    pub fn epoch_heard(&self) -> u64 {
        self.epoch_heard.load(Ordering::Relaxed)
    }

    /// The connection of `device`, if a data node is registered for it.
    pub fn peer(&self, device: DeviceId) -> Option<Peer> {
        self.peers.load().get(&device).map(|client| Peer {
            device,
            client: client.clone(),
            epoch_heard: self.epoch_heard.clone(),
        })
    }

    /// Every live device's id, in order.
    pub fn devices(&self) -> Vec<DeviceId> {
        self.peers.load().keys().copied().collect()
    }

    /// Sends `request` to `device` and waits up to `timeout` for the answer.
    ///
    /// # Errors
    /// [`ReplicaError::Down`] when no data node is registered for the device, otherwise the
    /// RPC's error or the data node's refusal.
    pub async fn call(
        &self,
        device: DeviceId,
        call: &DataCall,
        timeout: Duration,
    ) -> Result<DataResponse, ReplicaError> {
        let Some(peer) = self.peer(device) else {
            count_error(device, call, "down");
            return Err(ReplicaError::Down { device });
        };
        peer.call(call, timeout).await
    }
}

impl Peer {
    /// Sends one call on this connection; a `Failed` answer becomes an error. Every call is
    /// timed (`cartdb_gateway_rpc_seconds`) and every failure counted
    /// (`cartdb_gateway_rpc_errors_total`), by device and request kind.
    ///
    /// # Errors
    /// As [`Replicas::call`].
    pub async fn call(
        &self,
        call: &DataCall,
        timeout: Duration,
    ) -> Result<DataResponse, ReplicaError> {
        let device = self.device;
        let started = std::time::Instant::now();
        let answer = self.client.call(call, timeout).await;
        metrics::histogram!(
            "cartdb_gateway_rpc_seconds",
            "device" => device.to_string(),
            "request" => call.request.name(),
        )
        .record(started.elapsed().as_secs_f64());
        match answer {
            Ok(DataResponse::Failed(failure)) => {
                if let DataFailure::StaleEpoch { current, .. } = failure {
                    self.epoch_heard.fetch_max(current, Ordering::Relaxed);
                    count_error(device, call, "stale_epoch");
                } else {
                    count_error(device, call, "refused");
                }
                Err(ReplicaError::Refused(failure))
            }
            Ok(response) => Ok(response),
            Err(e) => {
                count_error(device, call, "transport");
                Err(e.into())
            }
        }
    }
}

fn count_error(device: DeviceId, call: &DataCall, kind: &'static str) {
    metrics::counter!(
        "cartdb_gateway_rpc_errors_total",
        "device" => device.to_string(),
        "request" => call.request.name(),
        "kind" => kind,
    )
    .increment(1);
}

fn same_addresses(
    current: &BTreeMap<DeviceId, Arc<DataClient>>,
    devices: &BTreeMap<DeviceId, String>,
) -> bool {
    current.len() == devices.len()
        && current
            .iter()
            .zip(devices)
            .all(|((d1, client), (d2, addr))| d1 == d2 && client.addr() == addr)
}

/// The name of a response variant, for error messages.
pub fn response_name(response: &DataResponse) -> &'static str {
    match response {
        DataResponse::Applied { .. } => "Applied",
        DataResponse::NotInCart => "NotInCart",
        DataResponse::UserItems { .. } => "UserItems",
        DataResponse::Summaries { .. } => "Summaries",
        DataResponse::Repaired { .. } => "Repaired",
        DataResponse::Compacted { .. } => "Compacted",
        DataResponse::CategoryItems { .. } => "CategoryItems",
        DataResponse::Held { .. } => "Held",
        DataResponse::Dropped { .. } => "Dropped",
        DataResponse::PgStates { .. } => "PgStates",
        DataResponse::PgDigests { .. } => "PgDigests",
        DataResponse::Failed(_) => "Failed",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]
mod tests {
    fn test_key() -> cartdb_core::rpc::ClusterKey {
        cartdb_core::rpc::ClusterKey::new(b"unit-test-cluster-secret", "test").unwrap()
    }

    use super::*;

    fn addrs(entries: &[(DeviceId, &str)]) -> BTreeMap<DeviceId, String> {
        entries.iter().map(|(d, a)| (*d, (*a).to_owned())).collect()
    }

    #[tokio::test]
    async fn refresh_keeps_unchanged_clients_and_replaces_moved_ones() {
        let replicas = Replicas::new(test_key(), Duration::from_millis(100));
        replicas.refresh(&addrs(&[(1, "127.0.0.1:1"), (2, "127.0.0.1:2")]));
        let one = replicas.peer(1).unwrap();
        let two = replicas.peer(2).unwrap();
        replicas.refresh(&addrs(&[
            (1, "127.0.0.1:1"),
            (2, "127.0.0.1:22"),
            (3, "127.0.0.1:3"),
        ]));
        assert!(Arc::ptr_eq(&one.client, &replicas.peer(1).unwrap().client));
        assert!(!Arc::ptr_eq(&two.client, &replicas.peer(2).unwrap().client));
        assert_eq!(replicas.peer(2).unwrap().client.addr(), "127.0.0.1:22");
        assert_eq!(replicas.devices(), vec![1, 2, 3]);
        replicas.refresh(&addrs(&[(3, "127.0.0.1:3")]));
        assert!(replicas.peer(1).is_none());
    }

    #[tokio::test]
    async fn a_device_without_a_data_node_is_down() {
        let replicas = Replicas::new(test_key(), Duration::from_millis(100));
        let request = DataCall {
            epoch: 0,
            request: cartdb_core::wire::DataRequest::ReadUser { user: "u".into() },
        };
        let error = replicas
            .call(7, &request, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(matches!(error, ReplicaError::Down { device: 7 }));
    }
}

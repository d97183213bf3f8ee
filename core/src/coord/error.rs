//! The error type of every coordination call.

use std::time::Duration;

use crate::cart::DeviceId;
use crate::catalog::CatalogError;

use super::map::MapError;

/// Why a coordination call failed. Each variant says which operation and which znode.
///
/// Callers on a request path usually map every variant to "coordination unavailable"
/// (HTTP 503); [`CoordError::SessionExpired`], [`CoordError::NoSession`],
/// [`CoordError::Timeout`] and [`CoordError::Contended`] are worth retrying.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoordError {
    /// No ZooKeeper session could be established at start-up.
    #[error("cannot connect to ZooKeeper at {servers}: {source}")]
    Connect {
        servers: String,
        #[source]
        source: zookeeper_client::Error,
    },
    /// A ZooKeeper call did not complete in time (typically: the ensemble is unreachable and
    /// the client is reconnecting).
    #[error("ZooKeeper {op} on {path} timed out after {after:?}")]
    Timeout {
        op: &'static str,
        path: String,
        after: Duration,
    },
    /// ZooKeeper refused or failed a call.
    #[error("ZooKeeper {op} on {path} failed: {source}")]
    Zk {
        op: &'static str,
        path: String,
        #[source]
        source: zookeeper_client::Error,
    },
    /// The session expired during the call (and again on the one retry with the next
    /// session). The supervisor is establishing a new session; retry later.
    #[error("the ZooKeeper session expired")]
    SessionExpired,
    /// No live session appeared within `waited` (the supervisor is still reconnecting).
    #[error("no ZooKeeper session for {op} within {waited:?}")]
    NoSession { op: &'static str, waited: Duration },
    /// The coordinator was shut down.
    #[error("the coordinator is shutting down")]
    ShuttingDown,
    /// A compare-and-set loop lost the race `attempts` times in a row.
    #[error("{op} on {path} lost {attempts} compare-and-set races in a row")]
    Contended {
        op: &'static str,
        path: String,
        attempts: u32,
    },
    /// The znode must exist for this operation (it is created by a bootstrap call).
    #[error("{op}: znode {path} does not exist yet; bootstrap it first")]
    NotBootstrapped { op: &'static str, path: String },
    /// A policy component that cannot be stored, or is not (intact) in the store.
    #[error("policy component {sha256}: {problem}")]
    InvalidPolicy { sha256: String, problem: String },
    /// A CRUSH map document in ZooKeeper is invalid, so it cannot be updated safely.
    #[error("znode {path} holds an invalid CRUSH map document: {source}")]
    InvalidMapData {
        path: String,
        #[source]
        source: MapError,
    },
    /// The catalog in ZooKeeper is invalid, so it cannot be updated safely.
    #[error("znode {path} holds an invalid catalog: {source}")]
    InvalidCatalogData {
        path: String,
        #[source]
        source: CatalogError,
    },
    /// A CRUSH map handed to [`super::Coordinator::bootstrap_map`] is invalid.
    #[error("invalid CRUSH map: {0}")]
    InvalidMap(#[source] MapError),
    /// A catalog or product handed to the coordinator is invalid.
    #[error("invalid catalog: {0}")]
    InvalidCatalog(#[source] CatalogError),
    /// A value cannot be used as a znode name.
    #[error("{op}: {field} {value:?} cannot be a znode name: {problem}")]
    InvalidName {
        op: &'static str,
        field: &'static str,
        value: String,
        problem: &'static str,
    },
    /// A registration address is unusable.
    #[error("address {address:?}: {problem}")]
    InvalidAddress {
        address: String,
        problem: &'static str,
    },
    /// A reweight names a device that is not in the CRUSH map.
    #[error("{op}: device {device} is not in the CRUSH map")]
    UnknownDevice { op: &'static str, device: DeviceId },
    /// ZooKeeper handed out a gateway id sequence number that does not fit a `u32`.
    #[error("gateway id sequence {sequence} does not fit in 32 bits")]
    GatewayIdsExhausted { sequence: i64 },
}

impl CoordError {
    /// Whether retrying the same call later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            CoordError::Timeout { .. }
                | CoordError::SessionExpired
                | CoordError::NoSession { .. }
                | CoordError::Contended { .. }
                | CoordError::Zk {
                    source: zookeeper_client::Error::ConnectionLoss,
                    ..
                }
        )
    }
}

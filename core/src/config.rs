//! Configuration pieces shared by several binaries: how to reach ZooKeeper, and the
//! replication settings a gateway validates at start.

use std::time::Duration;

use clap::Args;

use crate::coord::CoordConfig;

/// Where a data node or gateway serves Prometheus metrics (flattened into their configs;
/// the API server serves them on its own HTTP port).
#[derive(Debug, Clone, Args)]
pub struct MetricsArgs {
    /// Address to serve Prometheus metrics on (`GET /metrics`). Port 0 picks a free port;
    /// the address is registered in ZooKeeper, so `GET /api/cluster` lists it either way.
    /// Default: 127.0.0.1:0.
    #[arg(long, env = "CARTDB_METRICS_LISTEN", default_value = "127.0.0.1:0")]
    pub metrics_listen: std::net::SocketAddr,
}

/// How a process reaches ZooKeeper (flattened into each binary's config).
#[derive(Debug, Clone, Args)]
pub struct ZkArgs {
    /// ZooKeeper servers, comma-separated `host:port` list.
    #[arg(long = "zk", env = "CARTDB_ZK", default_value = "127.0.0.1:2181")]
    pub servers: String,
    /// Znode under which all of cartdb's state lives.
    #[arg(
        long = "zk-chroot",
        env = "CARTDB_ZK_CHROOT",
        default_value = "/cartdb"
    )]
    pub chroot: String,
    /// ZooKeeper session timeout in milliseconds: how long a silent process keeps its
    /// ephemeral znodes (and so stays "up").
    #[arg(
        long = "zk-session-timeout-ms",
        env = "CARTDB_ZK_SESSION_TIMEOUT_MS",
        default_value_t = 4000
    )]
    pub session_timeout_ms: u64,
}

impl ZkArgs {
    /// The validated coordination settings, without credentials: a process adds those
    /// from its cluster key ([`crate::coord::ZkCredentials::from_key`]).
    ///
    /// # Errors
    /// [`ConfigError`] naming the field when the server list is empty, the chroot is not an
    /// absolute path, or the session timeout is out of ZooKeeper's range.
    pub fn coord_config(&self) -> Result<CoordConfig, ConfigError> {
        if self.servers.trim().is_empty() {
            return Err(ConfigError::new("zk", "must list at least one host:port"));
        }
        if !self.chroot.starts_with('/') || self.chroot.len() < 2 || self.chroot.ends_with('/') {
            return Err(ConfigError::new(
                "zk-chroot",
                "must be an absolute znode path such as /cartdb",
            ));
        }
        if !(1_000..=120_000).contains(&self.session_timeout_ms) {
            return Err(ConfigError::new(
                "zk-session-timeout-ms",
                "must be between 1000 and 120000",
            ));
        }
        Ok(CoordConfig {
            servers: self.servers.clone(),
            chroot: self.chroot.clone(),
            session_timeout: Duration::from_millis(self.session_timeout_ms),
            credentials: None,
        })
    }
}

/// Replication factor and quorum sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replication {
    /// Replicas of every item (RF).
    pub replicas: usize,
    /// Acknowledgements an insert or delete needs (W).
    pub write_quorum: usize,
    /// Replies a read needs (R).
    pub read_quorum: usize,
}

impl Replication {
    /// Checks `1 <= W <= RF`, `1 <= R <= RF` and `R + W > RF`, so that every read quorum
    /// overlaps every write quorum.
    ///
    /// # Errors
    /// [`ConfigError`] naming the offending setting.
    pub fn new(
        replicas: usize,
        write_quorum: usize,
        read_quorum: usize,
    ) -> Result<Self, ConfigError> {
        if replicas == 0 {
            return Err(ConfigError::new("replicas", "must be at least 1"));
        }
        if write_quorum == 0 || write_quorum > replicas {
            return Err(ConfigError::new(
                "write-quorum",
                "must be between 1 and replicas",
            ));
        }
        if read_quorum == 0 || read_quorum > replicas {
            return Err(ConfigError::new(
                "read-quorum",
                "must be between 1 and replicas",
            ));
        }
        if read_quorum + write_quorum <= replicas {
            return Err(ConfigError::new(
                "read-quorum",
                "read-quorum + write-quorum must exceed replicas, or a read can miss an acknowledged write",
            ));
        }
        Ok(Self {
            replicas,
            write_quorum,
            read_quorum,
        })
    }
}

/// A configuration value that was refused at start-up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {field}: {problem}")]
pub struct ConfigError {
    pub field: &'static str,
    /// What is wrong, naming the value where it helps.
    pub problem: std::borrow::Cow<'static, str>,
}

impl ConfigError {
    pub fn new(field: &'static str, problem: impl Into<std::borrow::Cow<'static, str>>) -> Self {
        Self {
            field,
            problem: problem.into(),
        }
    }
}

/// Where a process finds the cluster secret it proves in every RPC hello (flattened into
/// the data node's, gateway's and API server's configs; see [`crate::rpc::secret`]).
#[derive(Debug, Clone, Args)]
pub struct SecretArgs {
    /// File holding the cluster secret (at least 16 bytes; surrounding whitespace is
    /// ignored) that every data node, gateway and API server of the cluster shares. Without
    /// it, the secret itself is read from CARTDB_CLUSTER_SECRET. scripts/start-cluster.sh
    /// generates <cluster dir>/cluster-secret.
    #[arg(long, env = "CARTDB_CLUSTER_SECRET_FILE")]
    pub cluster_secret_file: Option<std::path::PathBuf>,
}

impl SecretArgs {
    /// The cluster key.
    ///
    /// # Errors
    /// [`ConfigError`] on `cluster-secret-file` naming the file or variable and the problem.
    pub fn key(&self) -> Result<crate::rpc::ClusterKey, ConfigError> {
        crate::rpc::ClusterKey::load(self.cluster_secret_file.as_deref())
            .map_err(|e| ConfigError::new("cluster-secret-file", e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorums_must_overlap() {
        assert!(Replication::new(3, 2, 2).is_ok());
        assert_eq!(Replication::new(3, 2, 1).unwrap_err().field, "read-quorum");
        assert_eq!(Replication::new(3, 4, 2).unwrap_err().field, "write-quorum");
        assert_eq!(Replication::new(0, 1, 1).unwrap_err().field, "replicas");
    }
}

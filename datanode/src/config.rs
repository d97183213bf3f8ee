//! [`DataNodeConfig`]: the data node's command line and `CARTDB_*` environment, validated
//! once at start into [`NodeSettings`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use cartdb_core::cart::DeviceId;
use cartdb_core::config::{ConfigError, MetricsArgs, SecretArgs, ZkArgs};
use cartdb_core::coord::CoordConfig;
use clap::Parser;

use crate::group_commit::Timing;

/// Largest accepted `--max-batch`: a batch is one fjall batch held in memory.
const MAX_BATCH_LIMIT: usize = 65_536;

/// Configuration of one data node.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "cartdb-datanode",
    version,
    about = "cartdb data node: stores cart items in fjall and serves gateways"
)]
pub struct DataNodeConfig {
    /// This node's CRUSH device id (`device_<id>` in the map). Required.
    #[arg(long, env = "CARTDB_DEVICE_ID")]
    pub device_id: DeviceId,
    /// Address to listen on for gateways. Default: 127.0.0.1:7001.
    #[arg(long, env = "CARTDB_LISTEN", default_value = "127.0.0.1:7001")]
    pub listen: SocketAddr,
    /// `host:port` gateways use to reach this node, registered in ZooKeeper. Default: the
    /// bound listen address; required when listening on 0.0.0.0 or :: (containers).
    #[arg(long, env = "CARTDB_ADVERTISE")]
    pub advertise: Option<String>,
    /// Directory of the node's fjall database, created if missing. Required.
    #[arg(long, env = "CARTDB_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Most write requests committed together with one fsync. Default: 512.
    #[arg(long, env = "CARTDB_MAX_BATCH", default_value_t = 512)]
    pub max_batch: usize,
    /// Seconds after its version's clock reading that an operation is still accepted;
    /// older ones are refused. Must exceed the gateways' request time limit plus clock
    /// skew between machines. Default: 30.
    #[arg(long, env = "CARTDB_ACCEPT_WINDOW_SECS", default_value_t = 30)]
    pub accept_window_secs: u64,
    /// Seconds an operation's version may be ahead of this node's clock; operations dated
    /// further ahead are refused, so one gateway's runaway clock cannot order its writes
    /// after everyone else's. Must be above 0. Default: 10.
    #[arg(long, env = "CARTDB_MAX_CLOCK_SKEW_SECS", default_value_t = 10)]
    pub max_clock_skew_secs: u64,
    /// Seconds an operation stays in the log before compaction may fold it into the
    /// item's base. Must exceed --accept-window-secs. Default: 60.
    #[arg(long, env = "CARTDB_COMPACTION_GRACE_SECS", default_value_t = 60)]
    pub compaction_grace_secs: u64,
    /// Seconds a folded operation's id is remembered, so a retry with the same
    /// Idempotency-Key is still recognised. Default: 3600.
    #[arg(long, env = "CARTDB_IDEMPOTENCY_WINDOW_SECS", default_value_t = 3600)]
    pub idempotency_window_secs: u64,
    /// Most operations an item's log may hold unfolded: an insert or delete of an item at
    /// the cap is refused (the API answers 429) until compaction folds its old operations,
    /// which it does once the item's replicas agree and the operations are older than
    /// --compaction-grace-secs. Bounds every answer that carries an item's log. Between 64
    /// and 1000000. Default: 4096.
    #[arg(long, env = "CARTDB_MAX_ITEM_OPS", default_value_t = 4096)]
    pub max_item_ops: u32,
    #[command(flatten)]
    pub metrics: MetricsArgs,
    #[command(flatten)]
    pub zk: ZkArgs,
    #[command(flatten)]
    pub secret: SecretArgs,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    pub device: DeviceId,
    pub data_dir: PathBuf,
    /// `None`: advertise the bound address (see [`NodeSettings::advertise_addr`]).
    pub advertise: Option<String>,
    pub max_batch: usize,
    pub timing: Timing,
    pub coord: CoordConfig,
}

impl DataNodeConfig {
    /// Checks every field.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first field that is refused.
    pub fn settings(&self) -> Result<NodeSettings, ConfigError> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::new("data-dir", "must not be empty"));
        }
        if !(1..=MAX_BATCH_LIMIT).contains(&self.max_batch) {
            return Err(ConfigError::new("max-batch", "must be between 1 and 65536"));
        }
        if self.accept_window_secs == 0 {
            return Err(ConfigError::new("accept-window-secs", "must be above 0"));
        }
        if self.max_clock_skew_secs == 0 {
            return Err(ConfigError::new("max-clock-skew-secs", "must be above 0"));
        }
        if self.compaction_grace_secs <= self.accept_window_secs {
            return Err(ConfigError::new(
                "compaction-grace-secs",
                "must exceed --accept-window-secs",
            ));
        }
        if self.idempotency_window_secs < self.compaction_grace_secs {
            return Err(ConfigError::new(
                "idempotency-window-secs",
                "must be at least --compaction-grace-secs",
            ));
        }
        if !(64..=1_000_000).contains(&self.max_item_ops) {
            return Err(ConfigError::new(
                "max-item-ops",
                format!("{} is not between 64 and 1000000", self.max_item_ops),
            ));
        }
        if let Some(advertise) = &self.advertise {
            check_host_port(advertise)?;
        } else if self.listen.ip().is_unspecified() {
            return Err(ConfigError::new(
                "advertise",
                "is required when --listen is an unspecified address such as 0.0.0.0",
            ));
        }
        Ok(NodeSettings {
            device: self.device_id,
            data_dir: self.data_dir.clone(),
            advertise: self.advertise.clone(),
            max_batch: self.max_batch,
            timing: Timing {
                accept_window: Some(Duration::from_secs(self.accept_window_secs)),
                grace: Duration::from_secs(self.compaction_grace_secs),
                id_retention: Duration::from_secs(self.idempotency_window_secs),
                max_skew: Some(Duration::from_secs(self.max_clock_skew_secs)),
                max_log_ops: Some(self.max_item_ops),
            },
            coord: self.zk.coord_config()?,
        })
    }
}

impl NodeSettings {
    /// The address to register: `--advertise`, or else the address the listener is bound to
    /// (which differs from `--listen` when that asks for port 0).
    pub fn advertise_addr(&self, bound: SocketAddr) -> String {
        self.advertise.clone().unwrap_or_else(|| bound.to_string())
    }
}

/// Checks `host:port` (a name or an address; IPv6 in brackets) with a non-zero port.
fn check_host_port(value: &str) -> Result<(), ConfigError> {
    let refused = || ConfigError::new("advertise", "must be host:port with a non-zero port");
    let (host, port) = value.rsplit_once(':').ok_or_else(refused)?;
    let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
    let host_ok = !host.is_empty() && !host.chars().any(|c| c.is_whitespace() || c == '/');
    if port_ok && host_ok {
        Ok(())
    } else {
        Err(refused())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> DataNodeConfig {
        let mut argv = vec![
            "cartdb-datanode",
            "--device-id",
            "3",
            "--data-dir",
            "/tmp/x",
        ];
        argv.extend_from_slice(args);
        DataNodeConfig::try_parse_from(argv).unwrap()
    }

    #[test]
    fn defaults_are_valid() {
        let settings = parse(&[]).settings().unwrap();
        assert_eq!(settings.device, 3);
        assert_eq!(settings.max_batch, 512);
        let bound: SocketAddr = "127.0.0.1:7001".parse().unwrap();
        assert_eq!(settings.advertise_addr(bound), "127.0.0.1:7001");
    }

    #[test]
    fn refusals_name_the_field() {
        let field = |args: &[&str]| parse(args).settings().unwrap_err().field;
        assert_eq!(field(&["--max-batch", "0"]), "max-batch");
        assert_eq!(field(&["--max-item-ops", "10"]), "max-item-ops");
        assert_eq!(field(&["--listen", "0.0.0.0:7001"]), "advertise");
        assert_eq!(field(&["--advertise", "node1"]), "advertise");
        assert_eq!(field(&["--advertise", "node1:0"]), "advertise");
        assert_eq!(field(&["--zk-chroot", "cartdb"]), "zk-chroot");
        assert_eq!(field(&["--accept-window-secs", "0"]), "accept-window-secs");
        assert_eq!(
            field(&["--compaction-grace-secs", "30"]),
            "compaction-grace-secs",
            "the grace must exceed the 30 s default window"
        );
        assert_eq!(
            field(&["--idempotency-window-secs", "10"]),
            "idempotency-window-secs"
        );
    }

    #[test]
    fn an_advertised_name_is_accepted_on_any_listen_address() {
        let settings = parse(&["--listen", "0.0.0.0:7001", "--advertise", "datanode1:7001"])
            .settings()
            .unwrap();
        let bound: SocketAddr = "0.0.0.0:7001".parse().unwrap();
        assert_eq!(settings.advertise_addr(bound), "datanode1:7001");
    }

    #[test]
    fn the_device_id_and_data_dir_are_required() {
        assert!(DataNodeConfig::try_parse_from(["cartdb-datanode", "--data-dir", "/x"]).is_err());
        assert!(DataNodeConfig::try_parse_from(["cartdb-datanode", "--device-id", "1"]).is_err());
    }
}

//! The gateway's command line and environment: one [`GatewayConfig`], validated once into
//! [`GatewaySettings`] so that every component receives only checked values.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use cartdb_core::config::{ConfigError, MetricsArgs, Replication, SecretArgs, ZkArgs};
use cartdb_core::coord::{CoordConfig, PoolSettings};
use cartdb_core::pg::MAX_PG_NUM;
use clap::Parser;

use crate::compaction::CompactionSettings;
use crate::down_out::DownOutRules;

/// Configuration of one gateway process. Every flag can also be set by its `CARTDB_*`
/// environment variable.
#[derive(Debug, Clone, Parser)]
#[command(name = "cartdb-gateway", version, about)]
pub struct GatewayConfig {
    /// Address the gateway listens on for API servers. Default: 127.0.0.1:7100.
    #[arg(long, env = "CARTDB_LISTEN", default_value = "127.0.0.1:7100")]
    pub listen: String,

    /// Address other processes should use to reach this gateway, registered in ZooKeeper.
    /// Default: the address the listener is bound to.
    #[arg(long, env = "CARTDB_ADVERTISE")]
    pub advertise: Option<String>,

    /// Path to the placement policy, a WebAssembly component of the
    /// `cartdb:policy/placement-policy` world. Required. It only bootstraps a new cluster
    /// (stored in ZooKeeper and named in the first map); once the map names a policy, the
    /// gateway runs that one (`cartdb policy deploy` changes it).
    #[arg(long, env = "CARTDB_PLACEMENT_POLICY")]
    pub placement_policy: PathBuf,

    /// CRUSH map JSON written to ZooKeeper at start when the cluster has no map yet
    /// (ignored when it has one). Default: none.
    #[arg(long, env = "CARTDB_MAP_FILE")]
    pub map_file: Option<PathBuf>,

    /// Catalog JSON (a list of products) written to ZooKeeper at start when the cluster has
    /// no catalog yet (ignored when it has one). Default: none.
    #[arg(long, env = "CARTDB_CATALOG_FILE")]
    pub catalog_file: Option<PathBuf>,

    /// Rule of the CRUSH map used for placement; an empty value selects the map's only
    /// rule. Default: data.
    #[arg(long, env = "CARTDB_RULE", default_value = "data")]
    pub rule: String,

    /// Placement groups of the pool, written to ZooKeeper with the map when the cluster has
    /// none (ignored afterwards: pg_num is fixed at bootstrap). 256 suits 6 devices and 3
    /// replicas: Ceph's sizing rule of ~100 PGs per device gives 6 x 100 / 3 = 200, and the
    /// next power of two is 256 (128 PGs per device). Default: 256.
    #[arg(long, env = "CARTDB_PG_NUM", default_value_t = 256)]
    pub pg_num: u32,

    /// Pool id written with the map at bootstrap: the second word of every PG's placement
    /// seed, as in Ceph. Default: 1.
    #[arg(long, env = "CARTDB_POOL_ID", default_value_t = 1)]
    pub pool_id: u32,

    /// Replicas of every cart item (RF); written with the map as the pool's size at
    /// bootstrap, and must equal that size afterwards. Default: 3.
    #[arg(long, env = "CARTDB_REPLICAS", default_value_t = 3)]
    pub replicas: usize,

    /// Durable acknowledgements an insert or delete waits for (W). Default: 2.
    #[arg(long, env = "CARTDB_WRITE_QUORUM", default_value_t = 2)]
    pub write_quorum: usize,

    /// Replicas of an item a cart read must hear from (R); R + W must exceed RF.
    /// Default: 2.
    #[arg(long, env = "CARTDB_READ_QUORUM", default_value_t = 2)]
    pub read_quorum: usize,

    /// Time limit of one request, from its arrival to its answer, in milliseconds. It must
    /// stay below the data nodes' --accept-window-secs. Default: 2000.
    #[arg(long, env = "CARTDB_REQUEST_TIMEOUT_MS", default_value_t = 2000)]
    pub request_timeout_ms: u64,

    /// Path to a merge policy, a WebAssembly component of the `cartdb:policy/merge-policy`
    /// world, used to merge replicas that disagree. Default: none (the built-in reference
    /// merge, which the gateway also falls back to whenever the policy fails). Like
    /// `--placement-policy`, it only bootstraps a new cluster; the map decides afterwards.
    #[arg(long, env = "CARTDB_MERGE_POLICY")]
    pub merge_policy: Option<PathBuf>,

    /// Seconds an operation stays in an item's log before compaction may fold it into the
    /// base; must match the data nodes' --compaction-grace-secs. Default: 60.
    #[arg(long, env = "CARTDB_COMPACTION_GRACE_SECS", default_value_t = 60)]
    pub compaction_grace_secs: u64,

    /// Compact an item once its log holds at least this many operations. Default: 32.
    #[arg(long, env = "CARTDB_COMPACT_MIN_OPS", default_value_t = 32)]
    pub compact_min_ops: u32,

    /// Items the anti-entropy sweep (backfill, repair and handback) streams per second, on
    /// the gateway that leads it: each placement group is read a chunk at a time from every
    /// device of its read set, and a chunk costs at least 100, as does comparing a PG's
    /// digests (a PG whose copies agree is not streamed). 0 turns the sweep off.
    /// Default: 20000.
    #[arg(
        long,
        env = "CARTDB_ANTI_ENTROPY_ITEMS_PER_SEC",
        default_value_t = 20_000
    )]
    pub anti_entropy_items_per_sec: u32,

    /// Most placement groups with a past set (backfilling or handing back) the sweep streams
    /// at once that share a device: each device takes part in at most this many (Ceph's
    /// `osd_max_backfills`). Between 1 and 64. Default: 2.
    #[arg(long, env = "CARTDB_MAX_BACKFILLS", default_value_t = 2)]
    pub max_backfills: usize,

    /// Seconds a device must stay down (its data node's registration gone) before the
    /// cluster marks it out and moves its placement groups to other devices. Ceph waits
    /// 600 s; this default suits a local cluster, where a restart takes a second or two.
    /// Set the `noout` flag (`cartdb flags set noout`) for longer planned restarts.
    /// Default: 10.
    #[arg(long, env = "CARTDB_DOWN_OUT_SECS", default_value_t = 10)]
    pub down_out_secs: u64,

    /// Least share of the map's devices that must stay in: the cluster never marks a device
    /// out automatically if fewer would remain (Ceph's mon_osd_min_in_ratio), so that a mass
    /// expiry of ZooKeeper sessions does not move every PG. With 6 devices, 0.75 lets one go
    /// out by itself. Between 0 and 1. Default: 0.75.
    #[arg(long, env = "CARTDB_MIN_IN_RATIO", default_value_t = 0.75)]
    pub min_in_ratio: f64,

    /// For tests only: milliseconds added to this gateway's wall clock when it stamps
    /// versions (negative: behind), so that a test on one host can run gateways whose
    /// clocks differ. Between -10000 and 10000. Default: 0.
    #[arg(
        long,
        env = "CARTDB_TEST_CLOCK_OFFSET_MS",
        default_value_t = 0,
        hide = true,
        allow_negative_numbers = true
    )]
    pub test_clock_offset_ms: i64,

    /// For tests only: `REGISTERED=VIA`, connect to VIA for the data node registered at
    /// REGISTERED (a gate a partition test can cut between this gateway and that node).
    /// Repeatable. Default: none.
    #[arg(
        long,
        env = "CARTDB_TEST_PEER_ROUTES",
        value_delimiter = ',',
        hide = true
    )]
    pub test_peer_route: Vec<String>,

    #[command(flatten)]
    pub metrics: MetricsArgs,
    #[command(flatten)]
    pub zk: ZkArgs,
    #[command(flatten)]
    pub secret: SecretArgs,
}

/// Longest accepted down -> out grace: a day.
const MAX_DOWN_OUT_SECS: u64 = 86_400;

/// Largest test clock offset: the data nodes' clock skew bound.
const MAX_TEST_CLOCK_OFFSET_MS: i64 = 10_000;

/// Shortest and longest accepted request time limits.
const REQUEST_TIMEOUT_RANGE_MS: std::ops::RangeInclusive<u64> = 10..=20_000;

/// A [`GatewayConfig`] that passed [`GatewayConfig::validate`].
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    pub advertise: Option<String>,
    pub placement_policy: PathBuf,
    pub map_file: Option<PathBuf>,
    pub catalog_file: Option<PathBuf>,
    /// `None`: the map's only rule.
    pub rule: Option<String>,
    pub replication: Replication,
    /// The pool to bootstrap the map with.
    pub pool: PoolSettings,
    pub request_timeout: Duration,
    pub merge_policy: Option<PathBuf>,
    pub compaction: CompactionSettings,
    /// `None`: no anti-entropy sweep.
    pub anti_entropy_items_per_sec: Option<NonZeroU32>,
    pub max_backfills: usize,
    pub down_out: DownOutRules,
    pub coord: CoordConfig,
    /// Test-only offset of the gateway's clock, in milliseconds.
    pub clock_offset_ms: i64,
    /// Test-only data node routes: registered address -> address to connect to.
    pub peer_routes: std::collections::BTreeMap<String, String>,
}

impl GatewayConfig {
    /// Checks every field once.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first refused field: quorums that do not overlap
    /// (`R + W <= RF`), an out-of-range request time-out, an empty advertised address, or
    /// bad ZooKeeper settings.
    pub fn validate(&self) -> Result<GatewaySettings, ConfigError> {
        let replication = Replication::new(self.replicas, self.write_quorum, self.read_quorum)?;
        if !REQUEST_TIMEOUT_RANGE_MS.contains(&self.request_timeout_ms) {
            return Err(ConfigError::new(
                "request-timeout-ms",
                "must be between 10 and 20000 (below the data nodes' acceptance window)",
            ));
        }
        if self.compaction_grace_secs == 0 {
            return Err(ConfigError::new("compaction-grace-secs", "must be above 0"));
        }
        if self.compact_min_ops == 0 {
            return Err(ConfigError::new("compact-min-ops", "must be above 0"));
        }
        if self
            .merge_policy
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err(ConfigError::new(
                "merge-policy",
                "must name a .wasm component when set",
            ));
        }
        if self
            .advertise
            .as_deref()
            .is_some_and(|a| a.trim().is_empty())
        {
            return Err(ConfigError::new("advertise", "must not be empty when set"));
        }
        if self.placement_policy.as_os_str().is_empty() {
            return Err(ConfigError::new(
                "placement-policy",
                "must name a .wasm component",
            ));
        }
        if self.down_out_secs == 0 || self.down_out_secs > MAX_DOWN_OUT_SECS {
            return Err(ConfigError::new(
                "down-out-secs",
                format!(
                    "{} is not between 1 and {MAX_DOWN_OUT_SECS}",
                    self.down_out_secs
                ),
            ));
        }
        if !(0.0..=1.0).contains(&self.min_in_ratio) {
            return Err(ConfigError::new(
                "min-in-ratio",
                format!("{} is not between 0 and 1", self.min_in_ratio),
            ));
        }
        if self.test_clock_offset_ms.abs() > MAX_TEST_CLOCK_OFFSET_MS {
            return Err(ConfigError::new(
                "test-clock-offset-ms",
                format!(
                    "{} is not between -{MAX_TEST_CLOCK_OFFSET_MS} and {MAX_TEST_CLOCK_OFFSET_MS}",
                    self.test_clock_offset_ms
                ),
            ));
        }
        let mut peer_routes = std::collections::BTreeMap::new();
        for route in &self.test_peer_route {
            let Some((registered, via)) = route.split_once('=') else {
                return Err(ConfigError::new(
                    "test-peer-route",
                    format!("{route:?} is not REGISTERED=VIA"),
                ));
            };
            peer_routes.insert(registered.to_owned(), via.to_owned());
        }
        if self.pg_num == 0 || self.pg_num > MAX_PG_NUM {
            return Err(ConfigError::new("pg-num", "must be between 1 and 65536"));
        }
        if !(1..=64).contains(&self.max_backfills) {
            return Err(ConfigError::new(
                "max-backfills",
                format!("{} is not between 1 and 64", self.max_backfills),
            ));
        }
        let rule = Some(self.rule.trim())
            .filter(|r| !r.is_empty())
            .map(str::to_owned);
        Ok(GatewaySettings {
            advertise: self.advertise.clone(),
            placement_policy: self.placement_policy.clone(),
            map_file: self.map_file.clone(),
            catalog_file: self.catalog_file.clone(),
            rule,
            replication,
            pool: PoolSettings {
                id: self.pool_id,
                pg_num: self.pg_num,
                size: u32::try_from(self.replicas).unwrap_or(u32::MAX),
            },
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            merge_policy: self.merge_policy.clone(),
            compaction: CompactionSettings {
                grace: Duration::from_secs(self.compaction_grace_secs),
                min_ops: self.compact_min_ops,
            },
            anti_entropy_items_per_sec: NonZeroU32::new(self.anti_entropy_items_per_sec),
            max_backfills: self.max_backfills,
            down_out: DownOutRules {
                grace: Duration::from_secs(self.down_out_secs),
                min_in_ratio: self.min_in_ratio,
            },
            coord: self.zk.coord_config()?,
            clock_offset_ms: self.test_clock_offset_ms,
            peer_routes,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> GatewayConfig {
        let mut argv = vec!["cartdb-gateway", "--placement-policy", "crush.wasm"];
        argv.extend_from_slice(args);
        GatewayConfig::try_parse_from(argv).unwrap()
    }

    #[test]
    fn defaults_are_valid() {
        let settings = parse(&[]).validate().unwrap();
        assert_eq!(settings.replication, Replication::new(3, 2, 2).unwrap());
        assert_eq!(settings.request_timeout, Duration::from_millis(2000));
        assert_eq!(settings.rule.as_deref(), Some("data"));
        assert_eq!(
            settings.pool,
            PoolSettings {
                id: 1,
                pg_num: 256,
                size: 3
            }
        );
    }

    #[test]
    fn quorums_that_do_not_overlap_are_refused() {
        let error = parse(&["--read-quorum", "1"]).validate().unwrap_err();
        assert_eq!(error.field, "read-quorum");
        let error = parse(&["--write-quorum", "4"]).validate().unwrap_err();
        assert_eq!(error.field, "write-quorum");
    }

    #[test]
    fn other_fields_are_named_in_errors() {
        let error = parse(&["--request-timeout-ms", "0"])
            .validate()
            .unwrap_err();
        assert_eq!(error.field, "request-timeout-ms");
        let error = parse(&["--advertise", " "]).validate().unwrap_err();
        assert_eq!(error.field, "advertise");
        let error = parse(&["--zk", ""]).validate().unwrap_err();
        assert_eq!(error.field, "zk");
        let field = |args: &[&str]| parse(args).validate().unwrap_err().field;
        assert_eq!(
            field(&["--request-timeout-ms", "30000"]),
            "request-timeout-ms",
            "must stay below the data nodes' acceptance window"
        );
        assert_eq!(
            field(&["--compaction-grace-secs", "0"]),
            "compaction-grace-secs"
        );
        assert_eq!(field(&["--compact-min-ops", "0"]), "compact-min-ops");
        assert_eq!(field(&["--pg-num", "0"]), "pg-num");
        assert_eq!(field(&["--down-out-secs", "0"]), "down-out-secs");
        assert_eq!(field(&["--min-in-ratio", "1.5"]), "min-in-ratio");
        assert_eq!(field(&["--min-in-ratio", "NaN"]), "min-in-ratio");
        let error = parse(&["--min-in-ratio=-0.1"]).validate().unwrap_err();
        assert!(error.problem.contains("-0.1"), "{error:?}");
        assert_eq!(field(&["--pg-num", "65537"]), "pg-num");
        assert_eq!(
            field(&["--test-clock-offset-ms", "-10001"]),
            "test-clock-offset-ms"
        );
        // clap itself refuses an empty path, naming the flag.
        let argv = [
            "cartdb-gateway",
            "--placement-policy",
            "p.wasm",
            "--merge-policy",
            "",
        ];
        let error = GatewayConfig::try_parse_from(argv).unwrap_err();
        assert!(error.to_string().contains("--merge-policy"), "{error}");
    }

    #[test]
    fn max_backfills_is_bounded_and_named() {
        let err = parse(&["--max-backfills", "0"]).validate().unwrap_err();
        assert!(err.to_string().contains("max-backfills"), "{err}");
        let settings = parse(&["--max-backfills", "4"]).validate().unwrap();
        assert_eq!(settings.max_backfills, 4);
    }

    #[test]
    fn zero_items_per_second_turns_the_sweep_off() {
        let settings = parse(&["--anti-entropy-items-per-sec", "0"])
            .validate()
            .unwrap();
        assert_eq!(settings.anti_entropy_items_per_sec, None);
        assert_eq!(
            parse(&[])
                .validate()
                .unwrap()
                .anti_entropy_items_per_sec
                .map(|r| r.get()),
            Some(20_000)
        );
    }

    #[test]
    fn an_empty_rule_means_the_maps_only_rule() {
        assert_eq!(parse(&["--rule", ""]).validate().unwrap().rule, None);
    }

    #[test]
    fn the_policy_is_required() {
        assert!(GatewayConfig::try_parse_from(["cartdb-gateway"]).is_err());
    }
}

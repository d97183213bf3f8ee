//! The cluster as this gateway currently sees it: the cluster map, who is live, and the up
//! set of every placement group at the map's epoch. Replaced as a whole by the cluster
//! keeper; read with one atomic load per request.

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use cartdb_core::cart::{DeviceId, ItemKey};
use cartdb_core::config::Replication;
use cartdb_core::coord::{ClusterMap, FULL_WEIGHT, Membership};
use cartdb_core::wire::{
    ClusterStatus, DeviceStatus, GatewayInfo, MaintenanceStatus, PgStatus, PolicyInfo,
    ReplicationInfo,
};

use crate::placement::{EpochPlacement, pg_of};

/// One consistent snapshot: a map, the membership seen with it, and the up sets computed
/// from that map.
pub struct Topology {
    pub map: Arc<ClusterMap>,
    pub members: Arc<Membership>,
    placement: Arc<EpochPlacement>,
}

impl Topology {
    /// A snapshot; `placement` must have been built from `map`.
    pub fn new(
        map: Arc<ClusterMap>,
        members: Arc<Membership>,
        placement: Arc<EpochPlacement>,
    ) -> Self {
        Self {
            map,
            members,
            placement,
        }
    }

    /// The up sets of this snapshot (shared with the next one while the epoch is unchanged).
    pub fn placement(&self) -> &Arc<EpochPlacement> {
        &self.placement
    }

    /// The placement group of `key`.
    pub fn pg_of(&self, key: &ItemKey) -> u32 {
        pg_of(&self.map, key)
    }

    /// The up set of `key`'s PG, primary first: where its writes go.
    pub fn up_set(&self, key: &ItemKey) -> &[DeviceId] {
        self.up_of_pg(self.pg_of(key))
    }

    /// The up set of `pg`, primary first.
    pub fn up_of_pg(&self, pg: u32) -> &[DeviceId] {
        self.placement.table().up(pg)
    }

    /// Where `key` may be held: its PG's up set (primary first), then its past set.
    pub fn read_set(&self, key: &ItemKey) -> Vec<DeviceId> {
        self.read_set_of_pg(self.pg_of(key))
    }

    /// The up set of `pg`, then its past set.
    pub fn read_set_of_pg(&self, pg: u32) -> Vec<DeviceId> {
        let mut devices = self.up_of_pg(pg).to_vec();
        if let Some(past) = self.map.past_of(pg) {
            for device in past {
                if !devices.contains(device) {
                    devices.push(*device);
                }
            }
        }
        devices
    }

    /// The `Cluster` answer: every device of the map with its state, the live gateways, the
    /// map epoch, the pool's PGs, the policy and the replication settings.
    pub fn status(&self, policy: PolicyInfo, replication: Replication) -> ClusterStatus {
        let pgs = self.placement.table().pgs_per_device();
        let devices = self
            .map
            .devices
            .iter()
            .map(|(&id, name)| DeviceStatus {
                id,
                name: name.clone(),
                up: self.members.is_live(id),
                reweight: self.map.reweight_of(id),
                address: self.members.devices.get(&id).cloned(),
                pgs: u32::try_from(pgs.get(&id).copied().unwrap_or(0)).unwrap_or(u32::MAX),
                metrics: self.members.device_metrics.get(&id).cloned(),
            })
            .collect();
        let size = usize::try_from(self.map.settings.size).unwrap_or(usize::MAX);
        let undersized = self
            .placement
            .table()
            .iter()
            .filter(|(_, up)| up.len() < size)
            .count();
        let without_write_quorum = self
            .placement
            .table()
            .iter()
            .filter(|(_, up)| {
                up.iter().filter(|&&d| self.members.is_live(d)).count() < replication.write_quorum
            })
            .count();
        let gateways = self
            .members
            .gateways
            .iter()
            .map(|(&id, address)| GatewayInfo {
                id,
                address: address.clone(),
                metrics: self.members.gateway_metrics.get(&id).cloned(),
            })
            .collect();
        ClusterStatus {
            devices,
            gateways,
            map_epoch: self.map.epoch,
            placement_policy: policy,
            replication: ReplicationInfo {
                replicas: replication.replicas,
                write_quorum: replication.write_quorum,
                read_quorum: replication.read_quorum,
            },
            maintenance: MaintenanceStatus::default(),
            placement_groups: PgStatus {
                pool: self.map.pool.id(),
                pg_num: self.map.pool.pg_num(),
                with_past: u32::try_from(self.map.past.len()).unwrap_or(u32::MAX),
                undersized: u32::try_from(undersized).unwrap_or(u32::MAX),
                without_write_quorum: u32::try_from(without_write_quorum).unwrap_or(u32::MAX),
            },
        }
    }
}

/// The current [`Topology`], swapped atomically.
pub struct ClusterView {
    current: ArcSwap<Topology>,
}

impl ClusterView {
    pub fn new(topology: Topology) -> Self {
        topology.record_gauges();
        Self {
            current: ArcSwap::from_pointee(topology),
        }
    }

    /// The current snapshot. Hold it for the whole request so that every step of the
    /// request uses the same map epoch.
    pub fn current(&self) -> Arc<Topology> {
        self.current.load_full()
    }

    /// Makes `topology` current, and publishes its gauges: the map epoch, devices up and
    /// down, and PGs by state (`clean`, `remapped`: with a past set, `undersized`: fewer
    /// devices than the pool's size; a PG can be both of the last two).
    pub fn replace(&self, topology: Topology) {
        topology.record_gauges();
        self.current.store(Arc::new(topology));
    }
}

impl Topology {
    fn record_gauges(&self) {
        #[allow(
            clippy::cast_precision_loss,
            reason = "epochs and counts stay far below 2^52"
        )]
        let gauge = |value: usize| value as f64;
        metrics::gauge!("cartdb_map_epoch").set(self.map.epoch as f64);
        let up = self
            .map
            .devices
            .keys()
            .filter(|&&d| self.members.is_live(d))
            .count();
        metrics::gauge!("cartdb_devices", "state" => "up").set(gauge(up));
        metrics::gauge!("cartdb_devices", "state" => "down")
            .set(gauge(self.map.devices.len() - up));
        let size = usize::try_from(self.map.settings.size).unwrap_or(usize::MAX);
        let table = self.placement.table();
        let (mut clean, mut undersized) = (0, 0);
        for (pg, devices) in table.iter() {
            let short = devices.len() < size;
            undersized += usize::from(short);
            clean += usize::from(!short && self.map.past_of(pg).is_none());
        }
        metrics::gauge!("cartdb_pgs", "state" => "clean").set(gauge(clean));
        metrics::gauge!("cartdb_pgs", "state" => "remapped").set(gauge(self.map.past.len()));
        metrics::gauge!("cartdb_pgs", "state" => "undersized").set(gauge(undersized));
    }
}

/// The reweights the map should carry for `members`, or `None` when it already does.
///
/// A device that is not live is out (0). A live device is fully in, except that an explicit
/// partial reweight (between 0 and [`FULL_WEIGHT`], an operator draining it) is kept.
pub fn reweight_update(map: &ClusterMap, members: &Membership) -> Option<BTreeMap<DeviceId, u32>> {
    let desired: BTreeMap<DeviceId, u32> = map
        .reweights_for(members)
        .into_iter()
        .map(|(device, weight)| {
            let current = map.reweight_of(device);
            let keep_partial = weight == FULL_WEIGHT && current > 0 && current < FULL_WEIGHT;
            (device, if keep_partial { current } else { weight })
        })
        .collect();
    let unchanged = desired
        .iter()
        .all(|(&device, &weight)| map.reweight_of(device) == weight);
    (!unchanged).then_some(desired)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    fn map(reweights: &[(DeviceId, u32)]) -> ClusterMap {
        let settings = cartdb_core::coord::PoolSettings {
            id: 1,
            pg_num: 8,
            size: 3,
        };
        ClusterMap {
            epoch: 3,
            map_json: "{}".into(),
            devices: (1..=4).map(|d| (d, format!("device_{d}"))).collect(),
            reweights: reweights.iter().copied().collect(),
            settings,
            pool: settings.pool().unwrap(),
            past: Default::default(),
        }
    }

    fn live(devices: &[DeviceId]) -> Membership {
        let mut m = Membership::default();
        for d in devices {
            m.devices.insert(*d, format!("127.0.0.1:{}", 7000 + d));
        }
        m
    }

    #[test]
    fn nothing_changes_when_every_device_is_live_and_in() {
        assert_eq!(reweight_update(&map(&[]), &live(&[1, 2, 3, 4])), None);
        // An explicit full weight is the same as none.
        assert_eq!(
            reweight_update(&map(&[(2, FULL_WEIGHT)]), &live(&[1, 2, 3, 4])),
            None
        );
    }

    #[test]
    fn a_dead_device_is_marked_out() {
        let update = reweight_update(&map(&[]), &live(&[1, 2, 4])).unwrap();
        assert_eq!(
            update,
            BTreeMap::from([(1, FULL_WEIGHT), (2, FULL_WEIGHT), (3, 0), (4, FULL_WEIGHT)])
        );
        // Once the map says so, nothing more to do.
        assert_eq!(reweight_update(&map(&[(3, 0)]), &live(&[1, 2, 4])), None);
    }

    #[test]
    fn a_device_that_comes_back_is_marked_in() {
        let update = reweight_update(&map(&[(3, 0)]), &live(&[1, 2, 3, 4])).unwrap();
        assert_eq!(update[&3], FULL_WEIGHT);
    }

    #[test]
    fn a_partial_reweight_of_a_live_device_is_kept() {
        assert_eq!(
            reweight_update(&map(&[(2, 0x8000)]), &live(&[1, 2, 3, 4])),
            None
        );
        let update = reweight_update(&map(&[(2, 0x8000)]), &live(&[1, 3, 4])).unwrap();
        assert_eq!(update[&2], 0);
    }
}

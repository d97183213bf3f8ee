//! The cluster as this gateway currently sees it: the CRUSH map, who is live, and placement
//! at the map's epoch. Replaced as a whole by the cluster keeper; read with one atomic load
//! per request.

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use cartdb_core::cart::{DeviceId, ItemKey};
use cartdb_core::config::Replication;
use cartdb_core::coord::{ClusterMap, FULL_WEIGHT, Membership};
use cartdb_core::wire::{
    ClusterStatus, DeviceStatus, GatewayInfo, MaintenanceStatus, PolicyInfo, ReplicationInfo,
};

use crate::placement::PlacerPool;
use crate::policy::PolicyError;

/// One consistent snapshot: a map, the membership seen with it, and placers loaded with it.
pub struct Topology {
    pub map: Arc<ClusterMap>,
    pub members: Arc<Membership>,
    placers: Arc<PlacerPool>,
}

impl Topology {
    /// A snapshot; `placers` must have been built from `map`.
    pub fn new(map: Arc<ClusterMap>, members: Arc<Membership>, placers: Arc<PlacerPool>) -> Self {
        Self {
            map,
            members,
            placers,
        }
    }

    /// The placers of this snapshot (shared with the next one while the epoch is unchanged).
    pub fn placers(&self) -> &Arc<PlacerPool> {
        &self.placers
    }

    /// The replicas of `key`, primary first.
    ///
    /// # Errors
    /// The placement policy's error.
    pub fn replicas_for(
        &self,
        key: &ItemKey,
        replicas: usize,
    ) -> Result<Vec<DeviceId>, PolicyError> {
        self.placers.replicas_for(key, replicas)
    }

    /// The `Cluster` answer: every device of the map with its state, the live gateways, the
    /// map epoch, the policy and the replication settings.
    pub fn status(&self, policy: PolicyInfo, replication: Replication) -> ClusterStatus {
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
            })
            .collect();
        let gateways = self
            .members
            .gateways
            .iter()
            .map(|(&id, address)| GatewayInfo {
                id,
                address: address.clone(),
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
        }
    }
}

/// The current [`Topology`], swapped atomically.
pub struct ClusterView {
    current: ArcSwap<Topology>,
}

impl ClusterView {
    pub fn new(topology: Topology) -> Self {
        Self {
            current: ArcSwap::from_pointee(topology),
        }
    }

    /// The current snapshot. Hold it for the whole request so that every step of the
    /// request uses the same map epoch.
    pub fn current(&self) -> Arc<Topology> {
        self.current.load_full()
    }

    /// Makes `topology` current.
    pub fn replace(&self, topology: Topology) {
        self.current.store(Arc::new(topology));
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
        ClusterMap {
            epoch: 3,
            map_json: "{}".into(),
            devices: (1..=4).map(|d| (d, format!("device_{d}"))).collect(),
            reweights: reweights.iter().copied().collect(),
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

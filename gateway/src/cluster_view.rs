//! The cluster as this gateway currently sees it: the cluster map, who is live, and the up
//! set of every placement group at the map's epoch. Replaced as a whole by the cluster
//! keeper; read with one atomic load per request.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use cartdb_core::cart::{DeviceId, ItemKey};
use cartdb_core::config::Replication;
use cartdb_core::coord::{ClusterMap, Membership};
use cartdb_core::version::wall_clock_millis;
use cartdb_core::wire::{
    BackfillProgress, ClusterStatus, DeviceStatus, GatewayInfo, MaintenanceStatus, PgStatus,
    PolicyInfo, ReplicationInfo,
};

use crate::backfill::BackfillTracker;
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
    /// map epoch, the pool's PGs by state, the policy, the replication settings and the
    /// flags. `backfill` is the view's progress of the current backfill.
    pub fn status(
        &self,
        policy: PolicyInfo,
        replication: Replication,
        backfill: Option<BackfillProgress>,
    ) -> ClusterStatus {
        let table = self.placement.table();
        let pgs = table.pgs_per_device();
        let mut past_pgs: BTreeMap<DeviceId, u32> = BTreeMap::new();
        for device in self.map.past.values().flatten() {
            *past_pgs.entry(*device).or_default() += 1;
        }
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
                auto_out: self.map.auto_out.contains(&id),
                past_pgs: past_pgs.get(&id).copied().unwrap_or(0),
            })
            .collect();
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
            policies: self.map.policies.clone(),
            replication: ReplicationInfo {
                replicas: replication.replicas,
                write_quorum: replication.write_quorum,
                read_quorum: replication.read_quorum,
            },
            maintenance: MaintenanceStatus::default(),
            placement_groups: PgStatus {
                backfill,
                ..pg_states(self, replication.write_quorum)
            },
            flags: self
                .map
                .flags
                .names()
                .into_iter()
                .map(str::to_owned)
                .collect(),
        }
    }
}

/// The pool's PGs counted by state (Ceph's names), for a write quorum of `write_quorum`,
/// as [`PgStatus`] (without the backfill, which the view tracks). A PG may be in several
/// states (degraded and remapped, say); `clean` excludes all the others.
pub fn pg_states(topology: &Topology, write_quorum: usize) -> PgStatus {
    let size = usize::try_from(topology.map.settings.size).unwrap_or(usize::MAX);
    let mut states = PgStatus {
        pool: topology.map.pool.id(),
        pg_num: topology.map.pool.pg_num(),
        ..PgStatus::default()
    };
    for (pg, up) in topology.placement.table().iter() {
        let live = up.iter().filter(|&&d| topology.members.is_live(d)).count();
        let remapped = topology.map.past_of(pg).is_some();
        let degraded = live < size;
        states.undersized += u32::from(up.len() < size);
        states.degraded += u32::from(degraded);
        states.remapped += u32::from(remapped);
        states.backfilling += u32::from(remapped && live == up.len() && !up.is_empty());
        states.without_write_quorum += u32::from(live < write_quorum);
        states.clean += u32::from(!degraded && !remapped);
    }
    states
}

/// The current [`Topology`], swapped atomically.
pub struct ClusterView {
    current: ArcSwap<Topology>,
    /// The current snapshot's map epoch, for requests waiting to be placed again.
    epoch: tokio::sync::watch::Sender<u64>,
    /// The write quorum, for the PG state gauges.
    write_quorum: usize,
    backfill: Mutex<BackfillTracker>,
}

impl ClusterView {
    pub fn new(topology: Topology, write_quorum: usize) -> Self {
        let view = Self {
            epoch: tokio::sync::watch::Sender::new(topology.map.epoch),
            current: ArcSwap::from_pointee(topology),
            write_quorum,
            backfill: Mutex::default(),
        };
        view.observe(&view.current());
        view
    }

    /// The current backfill's progress, if any PG is remapped.
    pub fn backfill(&self) -> Option<BackfillProgress> {
        self.tracker().progress(Instant::now())
    }

    fn tracker(&self) -> std::sync::MutexGuard<'_, BackfillTracker> {
        // The tracker holds no invariant a panic could break halfway.
        self.backfill
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The current snapshot. Hold it for the whole request so that every step of the
    /// request uses the same map epoch.
    pub fn current(&self) -> Arc<Topology> {
        self.current.load_full()
    }

    /// Makes `topology` current, and publishes its gauges: the map epoch, devices up and
    /// down, PGs by state ([`pg_states`]) and the backfill's PGs left.
    pub fn replace(&self, topology: Topology) {
        self.observe(&topology);
        let epoch = topology.map.epoch;
        self.current.store(Arc::new(topology));
        self.epoch.send_if_modified(|current| {
            let newer = *current != epoch;
            *current = epoch;
            newer
        });
    }

    /// Waits until the current snapshot's map epoch is at least `epoch`, or `deadline`
    /// passes: `false` then (this gateway cannot learn that map in time, ZooKeeper being
    /// out of its reach, say).
    pub async fn wait_for_epoch(&self, epoch: u64, deadline: tokio::time::Instant) -> bool {
        let mut epochs = self.epoch.subscribe();
        let reached = epochs.wait_for(|current| *current >= epoch);
        matches!(tokio::time::timeout_at(deadline, reached).await, Ok(Ok(_)))
    }

    /// Publishes `topology`'s gauges and feeds the backfill tracker.
    fn observe(&self, topology: &Topology) {
        let states = pg_states(topology, self.write_quorum);
        topology.record_gauges(&states);
        let mut tracker = self.tracker();
        tracker.observe(states.remapped, Instant::now(), wall_clock_millis());
        if let Some(progress) = tracker.progress(Instant::now()) {
            metrics::gauge!("cartdb_backfill_pgs_left").set(f64::from(progress.pgs_left));
        } else {
            metrics::gauge!("cartdb_backfill_pgs_left").set(0.0);
        }
    }
}

impl Topology {
    fn record_gauges(&self, states: &PgStatus) {
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
        for (state, count) in [
            ("clean", states.clean),
            ("degraded", states.degraded),
            ("remapped", states.remapped),
            ("backfilling", states.backfilling),
            ("undersized", states.undersized),
            ("without_write_quorum", states.without_write_quorum),
        ] {
            metrics::gauge!("cartdb_pgs", "state" => state).set(f64::from(count));
        }
    }
}

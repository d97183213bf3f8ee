//! Operator changes of the cluster map (flags, reweights, devices added and removed), each
//! one previewable before it is made: `crushtool --compare` and Ceph's `osd out`/`osd in`/
//! `osd reweight`/`osd crush add`/`osd crush remove`, and Riak's `cluster plan`/`commit`.
//!
//! ```text
//! changes --apply (pure)-----------> the next map (CRUSH JSON, reweights, auto_out, flags)
//!         --policy, blocking thread--> the next PG table
//!         --compare (pure)-----------> MapPreview: PGs and copies moved, PGs per device
//!         --past_after (pure)--------> past sets, then one compare-and-set of /map
//! ```
//!
//! The preview and the change are computed the same way from the same map epoch, so the
//! share of PGs a change moves is exactly the share its preview announced (the policy is
//! deterministic). A device may be removed only once it holds nothing the cluster needs:
//! it is out and no PG's up or past set names it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use cartdb_core::cart::DeviceId;
use cartdb_core::coord::map::record_policy_event;
use cartdb_core::coord::map_edit::{self, MapEditError, NewDevice};
use cartdb_core::coord::policy_store::PolicyKind;
use cartdb_core::coord::{ClusterMap, FULL_WEIGHT, Placement, PolicyEvent, check_pace};
use cartdb_core::pg_table::PgTable;
use cartdb_core::wire::{DevicePreview, GatewayFailure, MapChange, MapPreview, PgEntry};

use crate::cluster_view::{ClusterView, Topology};
use crate::coordination::Coordination;
use crate::placement::{BuildError, build_placement};
use crate::policy::{PlacementPolicy, PolicyLibrary};

/// How many times a change is recomputed when the map moves under it (another gateway
/// marking a device out, the sweep clearing past sets) before the caller is told to retry.
const ATTEMPTS: usize = 5;

/// What a map change needs from its gateway.
pub struct MapChanger {
    pub view: Arc<ClusterView>,
    /// Where the placement policy of the changed map comes from: the current one, or the
    /// one a policy change names.
    pub library: Arc<PolicyLibrary>,
    pub rule: Option<String>,
    pub coordination: Arc<dyn Coordination>,
}

impl MapChanger {
    /// Previews `changes` against the current map, and makes them when `commit`: one
    /// compare-and-set of the map with the past sets the move requires, recomputed from
    /// scratch if the map changed meanwhile.
    ///
    /// # Errors
    /// As [`apply`]; [`GatewayFailure::InvalidInput`] when the policy refuses the new map,
    /// [`GatewayFailure::CoordinationUnavailable`] when ZooKeeper refuses or the map keeps
    /// changing.
    pub async fn run(
        &self,
        changes: &[MapChange],
        commit: bool,
    ) -> Result<MapPreview, GatewayFailure> {
        for _ in 0..ATTEMPTS {
            let topology = self.view.current();
            let (next, mut placement) =
                apply(&topology.map, topology.placement().table(), changes)?;
            let next = Arc::new(next);
            let policy = self.policy_of(&topology, &next).await?;
            let table = build_placement(policy, next.clone(), self.rule.clone(), None)
                .await
                .map_err(|e| match e {
                    // The policy refusing the changed map is the change's fault.
                    BuildError::Policy(e) => invalid(
                        "changes",
                        &format!("the placement policy refuses the changed map: {e}"),
                    ),
                    BuildError::Task(detail) => GatewayFailure::Internal { detail },
                })?;
            let current = topology.placement().table();
            let mut preview = compare(&topology.map, current, &next, table.table());
            if !commit {
                return Ok(preview);
            }
            placement.past = current.past_after(table.table(), &topology.map.past);
            let epoch = topology.map.epoch;
            match self.coordination.set_placement(epoch, placement).await {
                Ok(true) => {
                    preview.applied_epoch = Some(epoch + 1);
                    tracing::info!(
                        epoch,
                        ?changes,
                        pgs_moved = preview.pgs_moved,
                        "map changed by an operator"
                    );
                    metrics::counter!("cartdb_map_changes_total").increment(1);
                    return Ok(preview);
                }
                Ok(false) => wait_for_newer(&self.view, epoch).await,
                Err(e) => {
                    return Err(GatewayFailure::CoordinationUnavailable {
                        detail: e.to_string(),
                    });
                }
            }
        }
        Err(GatewayFailure::CoordinationUnavailable {
            detail: format!(
                "the map changed {ATTEMPTS} times while this change was computed; try again"
            ),
        })
    }
}

impl MapChanger {
    /// The placement policy `next` names: the current topology's, or the one a policy
    /// change names (verified by every gateway before, so compiled here already).
    async fn policy_of(
        &self,
        topology: &Topology,
        next: &ClusterMap,
    ) -> Result<PlacementPolicy, GatewayFailure> {
        let current = topology.placement().policy();
        if current.sha256() == next.policies.placement.sha256 {
            return Ok(current.clone());
        }
        self.library
            .placement(&next.policies.placement.sha256)
            .await
            .map_err(|e| GatewayFailure::MapChangeRefused {
                problem: format!("the placement policy cannot be loaded here: {e}"),
            })
    }
}

/// Waits (briefly) until this gateway's view has a map newer than `epoch`, which another
/// writer's compare-and-set just made.
async fn wait_for_newer(view: &ClusterView, epoch: u64) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
    while view.current().map.epoch <= epoch && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Every PG's up and past sets in `topology`.
pub fn pg_dump(topology: &Topology) -> Vec<PgEntry> {
    topology
        .placement()
        .table()
        .iter()
        .map(|(pg, up)| PgEntry {
            pg,
            up: up.to_vec(),
            past: topology
                .map
                .past_of(pg)
                .map(|past| past.iter().copied().collect())
                .unwrap_or_default(),
        })
        .collect()
}

/// The map `changes` make of `map`, whose up sets are `table`, as the [`Placement`] to
/// write (with its past sets still those of `map`: they depend on the next table).
///
/// # Errors
/// [`GatewayFailure::InvalidInput`] for a bad flag, weight or new device,
/// [`GatewayFailure::UnknownDevice`] for a device the map lacks, and
/// [`GatewayFailure::MapChangeRefused`] for removing a device that is still in or still
/// holds a PG.
pub fn apply(
    map: &ClusterMap,
    table: &PgTable,
    changes: &[MapChange],
) -> Result<(ClusterMap, Placement), GatewayFailure> {
    if changes.is_empty() {
        return Err(invalid("changes", "no change given"));
    }
    let mut placement = Placement::of(map);
    let mut crush = map.map_json.clone();
    let mut devices: BTreeSet<DeviceId> = map.devices.keys().copied().collect();
    for change in changes {
        match change {
            MapChange::Flag { flag, on } => placement
                .flags
                .set(flag, *on)
                .map_err(|e| invalid("flag", &e.to_string()))?,
            MapChange::Pace { items_per_sec } => {
                check_pace(*items_per_sec).map_err(|e| invalid("items_per_sec", &e.to_string()))?;
                placement.pace = *items_per_sec;
            }
            MapChange::Reweight { device, weight } => {
                known(&devices, *device)?;
                if *weight > FULL_WEIGHT {
                    return Err(invalid(
                        "weight",
                        &format!("{weight} is above 65536 (1.0, fully in)"),
                    ));
                }
                if *weight == FULL_WEIGHT {
                    placement.reweights.remove(device);
                } else {
                    placement.reweights.insert(*device, *weight);
                }
                // The operator's word replaces the cluster's own out.
                placement.auto_out.remove(device);
            }
            MapChange::AddDevice {
                device,
                name,
                host,
                weight,
            } => {
                let new = NewDevice {
                    id: *device,
                    name: name.clone(),
                    host: host.clone(),
                    weight: *weight,
                };
                crush = map_edit::add_device(&crush, &new).map_err(edit_error)?;
                devices.insert(*device);
            }
            MapChange::RemoveDevice { device } => {
                known(&devices, *device)?;
                removable(map, table, &placement, *device)?;
                crush = map_edit::remove_device(&crush, *device).map_err(edit_error)?;
                placement.reweights.remove(device);
                placement.auto_out.remove(device);
                devices.remove(device);
            }
            MapChange::Policy {
                kind,
                policy,
                action,
                by,
                at_ms,
            } => {
                match (kind, policy) {
                    (PolicyKind::Placement, Some(policy)) => {
                        placement.policies.placement = policy.clone();
                    }
                    (PolicyKind::Placement, None) => {
                        return Err(invalid("policy", "a placement policy is required"));
                    }
                    (PolicyKind::Merge, policy) => placement.policies.merge.clone_from(policy),
                }
                record_policy_event(
                    &mut placement.policy_history,
                    PolicyEvent {
                        kind: *kind,
                        policy: policy.clone(),
                        action: action.clone(),
                        epoch: map.epoch + 1,
                        at_ms: *at_ms,
                        by: by.clone(),
                    },
                );
            }
        }
    }
    if crush != map.map_json {
        placement.crush = Some(crush);
    }
    let next = map
        .with_placement(&placement)
        .map_err(|e| invalid("changes", &e.to_string()))?;
    Ok((next, placement))
}

/// Compares the up sets of `before` (`table_before`) with those of `after`.
pub fn compare(
    before: &ClusterMap,
    table_before: &PgTable,
    after: &ClusterMap,
    table_after: &PgTable,
) -> MapPreview {
    let mut pgs_moved = 0;
    let mut copies_moved = 0;
    let mut copies_total = 0;
    for (pg, up_after) in table_after.iter() {
        let old: BTreeSet<DeviceId> = table_before.up(pg).iter().copied().collect();
        let new: BTreeSet<DeviceId> = up_after.iter().copied().collect();
        pgs_moved += u32::from(old != new);
        copies_moved += count(new.difference(&old).count());
        copies_total += count(new.len());
    }
    let pgs_before = table_before.pgs_per_device();
    let pgs_after = table_after.pgs_per_device();
    let mut names: BTreeMap<DeviceId, &str> = BTreeMap::new();
    for (id, name) in before.devices.iter().chain(after.devices.iter()) {
        names.insert(*id, name);
    }
    let devices = names
        .into_iter()
        .map(|(id, name)| DevicePreview {
            id,
            name: name.to_owned(),
            reweight_before: before
                .devices
                .contains_key(&id)
                .then(|| before.reweight_of(id)),
            reweight_after: after
                .devices
                .contains_key(&id)
                .then(|| after.reweight_of(id)),
            pgs_before: count(pgs_before.get(&id).copied().unwrap_or(0)),
            pgs_after: count(pgs_after.get(&id).copied().unwrap_or(0)),
        })
        .collect();
    MapPreview {
        epoch: before.epoch,
        applied_epoch: None,
        pg_num: after.pool.pg_num(),
        size: after.settings.size,
        pgs_moved,
        copies_moved,
        copies_total,
        devices,
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn known(devices: &BTreeSet<DeviceId>, device: DeviceId) -> Result<(), GatewayFailure> {
    if devices.contains(&device) {
        Ok(())
    } else {
        Err(GatewayFailure::UnknownDevice { device })
    }
}

/// Whether `device` can leave the map now: out, and in no PG's up or past set.
fn removable(
    map: &ClusterMap,
    table: &PgTable,
    placement: &Placement,
    device: DeviceId,
) -> Result<(), GatewayFailure> {
    let refuse = |problem: String| Err(GatewayFailure::MapChangeRefused { problem });
    if placement
        .reweights
        .get(&device)
        .copied()
        .unwrap_or(FULL_WEIGHT)
        != 0
    {
        return refuse(format!(
            "device {device} is still in; mark it out and let it drain first (cartdb device remove does both)"
        ));
    }
    let up = table.iter().filter(|(_, up)| up.contains(&device)).count();
    let past = map
        .past
        .values()
        .filter(|past| past.contains(&device))
        .count();
    if up > 0 || past > 0 {
        return refuse(format!(
            "device {device} still holds data the cluster needs: it is in the up set of {up} and the past set of {past} placement groups; wait for backfill to finish"
        ));
    }
    Ok(())
}

fn invalid(field: &str, problem: &str) -> GatewayFailure {
    GatewayFailure::InvalidInput {
        field: field.to_owned(),
        problem: problem.to_owned(),
    }
}

fn edit_error(e: MapEditError) -> GatewayFailure {
    match e {
        MapEditError::UnknownDevice { id } => GatewayFailure::UnknownDevice { device: id },
        other => invalid("device", &other.to_string()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    const SEED_MAP: &str = include_str!("../../config/crush-map.json");
    /// The placement policy the test maps name (nothing is placed with it here).
    const SHA: &str = "5555555555555555555555555555555555555555555555555555555555555555";

    fn seed() -> ClusterMap {
        let doc = format!(
            r#"{{"format": 4, "map": {SEED_MAP}, "pool": {{"id": 1, "pg_num": 4, "size": 3}}, "policies": {{"placement": {{"sha256": "{SHA}", "name": "crush"}}}}, "past": {{"2": [6]}}}}"#
        );
        ClusterMap::parse(doc.as_bytes(), 7).unwrap()
    }

    fn table(up: &[&[DeviceId]]) -> PgTable {
        PgTable::new(up.iter().map(|u| u.to_vec()).collect())
    }

    #[test]
    fn flags_and_reweights_change_the_placement_only() {
        let map = seed();
        let t = table(&[&[1, 2, 3], &[4, 5, 6], &[1, 4, 5], &[2, 3, 4]]);
        let (next, placement) = apply(
            &map,
            &t,
            &[
                MapChange::Flag {
                    flag: "noout".into(),
                    on: true,
                },
                MapChange::Reweight {
                    device: 3,
                    weight: 0,
                },
                MapChange::Reweight {
                    device: 5,
                    weight: 0x8000,
                },
            ],
        )
        .unwrap();
        assert!(next.flags.noout);
        assert_eq!((next.reweight_of(3), next.reweight_of(5)), (0, 0x8000));
        assert_eq!(placement.crush, None);
        assert_eq!(next.past, map.past, "past sets are the caller's to compute");
        let err = apply(
            &map,
            &t,
            &[MapChange::Reweight {
                device: 9,
                weight: 0,
            }],
        )
        .unwrap_err();
        assert_eq!(err, GatewayFailure::UnknownDevice { device: 9 });
        let err = apply(
            &map,
            &t,
            &[MapChange::Reweight {
                device: 1,
                weight: 70_000,
            }],
        )
        .unwrap_err();
        assert!(err.to_string().contains("70000 is above 65536"), "{err}");
        let err = apply(
            &map,
            &t,
            &[MapChange::Flag {
                flag: "nodown".into(),
                on: true,
            }],
        )
        .unwrap_err();
        assert!(err.to_string().contains("nodown"), "{err}");
        assert!(apply(&map, &t, &[]).is_err());
    }

    #[test]
    fn an_operator_reweight_replaces_the_clusters_own_out() {
        let doc = format!(
            r#"{{"format": 4, "map": {SEED_MAP}, "pool": {{"id": 1, "pg_num": 4, "size": 3}}, "policies": {{"placement": {{"sha256": "{SHA}", "name": "crush"}}}}, "reweights": {{"2": 0}}, "auto_out": [2]}}"#
        );
        let map = ClusterMap::parse(doc.as_bytes(), 3).unwrap();
        let t = table(&[&[1, 3, 4], &[1, 3, 4], &[1, 3, 4], &[1, 3, 4]]);
        let (next, _) = apply(
            &map,
            &t,
            &[MapChange::Reweight {
                device: 2,
                weight: 0,
            }],
        )
        .unwrap();
        assert!(next.auto_out.is_empty(), "now the operator's out: it stays");
    }

    #[test]
    fn a_device_is_added_and_removed_only_once_drained() {
        let map = seed();
        let t = table(&[&[1, 2, 3], &[4, 5, 6], &[1, 4, 5], &[2, 3, 4]]);
        let add = MapChange::AddDevice {
            device: 7,
            name: "device_7".into(),
            host: "host6".into(),
            weight: FULL_WEIGHT,
        };
        let (next, placement) = apply(&map, &t, std::slice::from_ref(&add)).unwrap();
        assert_eq!(next.devices.len(), 7);
        assert!(placement.crush.is_some());
        let err = apply(&map, &t, &[add.clone(), add]).unwrap_err();
        assert!(err.to_string().contains("id 7 is already used"), "{err}");

        let remove = MapChange::RemoveDevice { device: 6 };
        let err = apply(&map, &t, std::slice::from_ref(&remove)).unwrap_err();
        assert!(err.to_string().contains("still in"), "{err}");
        let drained = table(&[&[1, 2, 3], &[4, 5, 1], &[1, 4, 5], &[2, 3, 4]]);
        let reweighted = [
            MapChange::Reweight {
                device: 6,
                weight: 0,
            },
            remove.clone(),
        ];
        // Still in PG 2's past set.
        let err = apply(&map, &drained, &reweighted).unwrap_err();
        assert!(
            err.to_string()
                .contains("up set of 0 and the past set of 1 placement groups"),
            "{err}"
        );
        let mut clean = map.clone();
        clean.past.clear();
        let (next, _) = apply(&clean, &drained, &reweighted).unwrap();
        assert_eq!(next.devices.len(), 5);
        assert!(!next.devices.contains_key(&6));
        assert_eq!(next.reweight_of(6), 0);
    }

    #[test]
    fn the_comparison_counts_moved_pgs_copies_and_per_device_pgs() {
        let map = seed();
        let before = table(&[&[1, 2, 3], &[4, 5, 6], &[1, 4, 5], &[2, 3, 4]]);
        // PG 0 reordered only (not moved), PG 1 loses 6 for 7, PG 3 loses 3 and 4 for 7, 1.
        let after = table(&[&[2, 1, 3], &[4, 5, 7], &[1, 4, 5], &[2, 7, 1]]);
        let (next, _) = apply(
            &map,
            &before,
            &[MapChange::AddDevice {
                device: 7,
                name: "device_7".into(),
                host: "host6".into(),
                weight: FULL_WEIGHT,
            }],
        )
        .unwrap();
        let preview = compare(&map, &before, &next, &after);
        assert_eq!(preview.epoch, 7);
        assert_eq!((preview.pgs_moved, preview.pg_num), (2, 4));
        assert_eq!((preview.copies_moved, preview.copies_total), (3, 12));
        let seven = preview.devices.iter().find(|d| d.id == 7).unwrap();
        assert_eq!(
            (seven.reweight_before, seven.reweight_after),
            (None, Some(FULL_WEIGHT))
        );
        assert_eq!((seven.pgs_before, seven.pgs_after), (0, 2));
        let six = preview.devices.iter().find(|d| d.id == 6).unwrap();
        assert_eq!((six.pgs_before, six.pgs_after), (1, 0));
    }
}

//! The cluster map as every gateway must see it: the CRUSH map JSON, its epoch, the
//! reweights, the pool's placement-group settings and every PG's past set.
//!
//! The `/map` znode holds one document (format 4):
//!
//! ```json
//! {"format": 4, "map": {...}, "reweights": {"3": 0},
//!  "pool": {"id": 1, "pg_num": 256, "size": 3}, "past": {"17": [3]},
//!  "intervals": {"17": 9}, "auto_out": [3], "flags": ["noout"],
//!  "policies": {"placement": {"sha256": "5f0c...", "name": "crush"}, "merge": null},
//!  "policy_history": [{"kind": "placement", "policy": {...}, "action": "bootstrap",
//!                      "epoch": 1, "at_ms": 1764662400000, "by": "gateway 1"}, ...]}
//! ```
//!
//! the map in python-crush JSON (the seed's format, `config/crush-map.json`), Ceph-style
//! reweights in 16.16 fixed point (0 = out, `0x10000` = in), the pool (fixed at bootstrap),
//! the past sets of the PGs that have one (see `cartdb_model::pg_table`), the epoch at which
//! each PG's up or past set last changed (`intervals`, absent for PGs unchanged since
//! bootstrap; written by [`Placement`]'s writer, never by hand), the devices the
//! cluster marked out by itself after their down grace (they are marked in again when they
//! return; a device an operator marked out is not listed and stays out), and the cluster
//! flags ([`ClusterFlags`]), and the sweep's pace if an operator set one (`"pace": 50000`,
//! items per second). `auto_out`, `flags` and `pace` may be absent (none). `policies` names
//! the placement and merge policy components every gateway must run, by sha256 (their
//! bytes are in the policy store, `super::policy_store`; `merge: null` is the built-in
//! merge), and `policy_history` the last [`MAX_POLICY_HISTORY`] activations. Keeping all of
//! it in one znode makes a change atomic and gives it one epoch, the znode's version + 1: a
//! new up set and the past set that goes with it are never seen apart, and a new placement
//! policy takes effect on every gateway at the same epoch. Its size depends on the number of
//! devices and `pg_num`, never on the number of carts.
//!
//! Everything here is pure; [`ClusterMap::parse`] treats its input as untrusted.

use std::collections::{BTreeMap, BTreeSet};

use cartdb_model::pg::{Pool, PoolError};
use cartdb_model::pg_table::{Intervals, PastSets};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::policy_store::{PolicyKind, is_sha256};
use crate::cart::{DeviceId, ItemKey};
use crate::placement_key::placement_key;

/// Reweight of a device that is fully in (1.0 in 16.16 fixed point).
pub const FULL_WEIGHT: u32 = 0x10000;

/// Largest map document accepted (ZooKeeper's own limit is 1 MiB).
pub const MAX_MAP_BYTES: usize = 1 << 20;

/// The `/map` document format this build reads and writes. Format 1 (no `format` field) was
/// the map of the per-item directory era; format 2 had no `auto_out`, so a device marked out
/// by the cluster could not be told from one an operator marked out; format 3 did not name
/// the policies, so each gateway ran the files of its own flags. All are refused, not
/// migrated.
pub const MAP_FORMAT: u32 = 4;

/// Policy activations kept in the map's `policy_history` (older ones are dropped).
pub const MAX_POLICY_HISTORY: usize = 32;

/// Longest policy name, `by` or action text kept in the map (longer ones are refused).
const MAX_POLICY_TEXT: usize = 128;

/// A policy component, by content: the sha256 of its bytes and the name it reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PolicyRef {
    pub sha256: String,
    pub name: String,
}

/// The policies the cluster runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ActivePolicies {
    pub placement: PolicyRef,
    /// `None`: the built-in merge.
    pub merge: Option<PolicyRef>,
}

impl ActivePolicies {
    /// The policy of `kind` (`None` for the built-in merge).
    pub fn of(&self, kind: PolicyKind) -> Option<&PolicyRef> {
        match kind {
            PolicyKind::Placement => Some(&self.placement),
            PolicyKind::Merge => self.merge.as_ref(),
        }
    }
}

/// One activation of a policy, as kept in the map's `policy_history`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PolicyEvent {
    pub kind: PolicyKind,
    /// What became active (`None`: the built-in merge).
    pub policy: Option<PolicyRef>,
    /// `bootstrap`, `deploy` or `rollback`.
    pub action: String,
    /// The map epoch it took effect at.
    pub epoch: u64,
    /// Wall-clock milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Who asked (the CLI's `--by`, the user name by default).
    pub by: String,
}

/// Appends `event` to `history`, dropping the oldest beyond [`MAX_POLICY_HISTORY`].
pub fn record_policy_event(history: &mut Vec<PolicyEvent>, event: PolicyEvent) {
    history.push(event);
    let excess = history.len().saturating_sub(MAX_POLICY_HISTORY);
    history.drain(..excess);
}

/// The policy of `kind` that was active before the current one: what a rollback returns to.
/// `None` when the history holds no earlier activation of that kind.
pub fn previous_policy(history: &[PolicyEvent], kind: PolicyKind) -> Option<Option<PolicyRef>> {
    let mut of_kind = history.iter().rev().filter(|e| e.kind == kind);
    of_kind.next()?;
    of_kind.next().map(|e| e.policy.clone())
}

/// Most replicas a pool may keep per PG.
pub const MAX_POOL_SIZE: u32 = 16;

/// The pool's settings as stored with the map: fixed when the cluster is bootstrapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolSettings {
    /// Ceph's pool id: the second word of every PG's placement seed.
    pub id: u32,
    /// Number of placement groups.
    pub pg_num: u32,
    /// Replicas per placement group (the replication factor).
    pub size: u32,
}

impl PoolSettings {
    /// Checks the settings.
    ///
    /// # Errors
    /// [`MapError::Pool`] for a bad `pg_num`, [`MapError::PoolSize`] for a bad `size`.
    pub fn pool(&self) -> Result<Pool, MapError> {
        if self.size == 0 || self.size > MAX_POOL_SIZE {
            return Err(MapError::PoolSize { size: self.size });
        }
        Pool::new(self.id, self.pg_num).map_err(MapError::Pool)
    }
}

/// The CRUSH map at one epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterMap {
    /// `/map`'s znode version + 1: increases with every change of the map or reweights.
    pub epoch: u64,
    /// The CRUSH map JSON text alone, for the placement policy.
    pub map_json: String,
    /// Every device of the map: id -> name.
    pub devices: BTreeMap<DeviceId, String>,
    /// Reweights set explicitly; a device not listed is fully in ([`FULL_WEIGHT`]).
    pub reweights: BTreeMap<DeviceId, u32>,
    /// The pool's settings, as bootstrapped.
    pub settings: PoolSettings,
    /// The pool, checked.
    pub pool: Pool,
    /// Devices that held a PG at an earlier epoch and may hold data its up set lacks.
    pub past: PastSets,
    /// The epoch each PG's up or past set last changed at (PGs unchanged since bootstrap
    /// have no entry): what data nodes fence requests placed with older maps by.
    pub intervals: Intervals,
    /// Devices the cluster marked out itself (down past the grace), to be marked in again
    /// when they return.
    pub auto_out: BTreeSet<DeviceId>,
    /// The cluster flags.
    pub flags: ClusterFlags,
    /// The anti-entropy sweep's pace in items per second, set at runtime by an operator
    /// (`cartdb pace`); `None`: each gateway's `--anti-entropy-items-per-sec`.
    pub pace: Option<u32>,
    /// The policies every gateway runs at this epoch.
    pub policies: ActivePolicies,
    /// The last policy activations, oldest first.
    pub policy_history: Vec<PolicyEvent>,
}

/// Cluster-wide switches an operator sets, Ceph's `ceph osd set <flag>`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClusterFlags {
    /// Devices that go down are not marked out, however long they stay down: for planned
    /// restarts (Ceph's `noout`).
    pub noout: bool,
    /// The sweep moves no data: no PG with a past set is streamed onto its up set or
    /// handed back (Ceph's `nobackfill`).
    pub nobackfill: bool,
    /// The sweep moves only data that lacks a copy: a PG with a past set is streamed only
    /// if a device of that past set is down; one whose past devices are all up (a new or
    /// returning device, a reweight) waits (Ceph's `norebalance`).
    pub norebalance: bool,
}

impl ClusterFlags {
    /// Every flag's name, as written in the map document and taken by the CLI.
    pub const NAMES: [&'static str; 3] = ["noout", "nobackfill", "norebalance"];

    /// The names of the flags that are set.
    pub fn names(&self) -> Vec<&'static str> {
        let set = [self.noout, self.nobackfill, self.norebalance];
        Self::NAMES
            .iter()
            .zip(set)
            .filter(|(_, on)| *on)
            .map(|(name, _)| *name)
            .collect()
    }

    /// Sets or clears the flag called `name`.
    ///
    /// # Errors
    /// [`MapError::UnknownFlag`] for a name not in [`ClusterFlags::NAMES`].
    pub fn set(&mut self, name: &str, on: bool) -> Result<(), MapError> {
        let flag = match name {
            "noout" => &mut self.noout,
            "nobackfill" => &mut self.nobackfill,
            "norebalance" => &mut self.norebalance,
            _ => {
                return Err(MapError::UnknownFlag {
                    name: name.to_owned(),
                });
            }
        };
        *flag = on;
        Ok(())
    }

    /// Whether the sweep may move a PG's data onto its up set and hand it back: always for
    /// a PG without a past set (`past` is `None`); for one with a past set, unless
    /// `nobackfill` is set, or `norebalance` is and every past device is `live`.
    pub fn allow_movement(
        &self,
        past: Option<&BTreeSet<DeviceId>>,
        live: impl Fn(DeviceId) -> bool,
    ) -> bool {
        let Some(past) = past else {
            return true;
        };
        let rebalance_only = past.iter().all(|d| live(*d));
        !(self.nobackfill || self.norebalance && rebalance_only)
    }
}

/// The znode document as read; `map` is checked by hand to give precise errors.
#[derive(Deserialize)]
struct MapDoc {
    format: Option<u64>,
    map: Value,
    #[serde(default)]
    reweights: BTreeMap<String, u32>,
    pool: Option<PoolSettings>,
    #[serde(default)]
    past: BTreeMap<String, Vec<DeviceId>>,
    #[serde(default)]
    intervals: BTreeMap<String, u64>,
    #[serde(default)]
    auto_out: BTreeSet<DeviceId>,
    #[serde(default)]
    flags: Vec<String>,
    #[serde(default)]
    pace: Option<u32>,
    policies: Option<ActivePolicies>,
    #[serde(default)]
    policy_history: Vec<PolicyEvent>,
}

impl ClusterMap {
    /// Parses and checks a `/map` document: the map must have `trees` (devices are collected
    /// recursively from them: nodes with `id >= 0` and a `name`) and `rules`; device ids and
    /// names must be unique; reweights may only name devices of the map.
    ///
    /// # Errors
    /// [`MapError`] naming the problem and, where there is one, the JSON path.
    pub fn parse(data: &[u8], epoch: u64) -> Result<ClusterMap, MapError> {
        if data.len() > MAX_MAP_BYTES {
            return Err(MapError::TooLarge {
                len: data.len(),
                max: MAX_MAP_BYTES,
            });
        }
        let doc: MapDoc = serde_json::from_slice(data).map_err(MapError::Json)?;
        if doc.format != Some(u64::from(MAP_FORMAT)) {
            return Err(MapError::Format { found: doc.format });
        }
        let devices = devices_of(&doc.map)?;
        let reweights = reweights_of(doc.reweights, &devices)?;
        let settings = doc.pool.ok_or(MapError::Missing {
            path: "pool".to_owned(),
        })?;
        let pool = settings.pool()?;
        let past = past_of(doc.past, &devices, pool.pg_num())?;
        let intervals = intervals_of(doc.intervals, pool.pg_num(), epoch)?;
        if let Some(&device) = doc.auto_out.iter().find(|d| !devices.contains_key(d)) {
            return Err(MapError::UnknownAutoOutDevice { device });
        }
        let mut flags = ClusterFlags::default();
        for name in &doc.flags {
            flags.set(name, true)?;
        }
        check_pace(doc.pace)?;
        let policies = doc.policies.ok_or(MapError::Missing {
            path: "policies".to_owned(),
        })?;
        check_policy(Some(&policies.placement), "policies.placement")?;
        check_policy(policies.merge.as_ref(), "policies.merge")?;
        if doc.policy_history.len() > MAX_POLICY_HISTORY {
            return Err(MapError::PolicyHistory {
                len: doc.policy_history.len(),
            });
        }
        for (i, event) in doc.policy_history.iter().enumerate() {
            let path = format!("policy_history[{i}]");
            check_policy(event.policy.as_ref(), &path)?;
            if event.action.len() > MAX_POLICY_TEXT || event.by.len() > MAX_POLICY_TEXT {
                return Err(wrong_type(
                    &path,
                    "an event with texts of at most 128 bytes",
                ));
            }
        }
        Ok(ClusterMap {
            epoch,
            map_json: doc.map.to_string(),
            devices,
            reweights,
            settings,
            pool,
            past,
            intervals,
            auto_out: doc.auto_out,
            flags,
            pace: doc.pace,
            policies,
            policy_history: doc.policy_history,
        })
    }

    /// The devices `pg` must be read from besides its up set.
    pub fn past_of(&self, pg: u32) -> Option<&BTreeSet<DeviceId>> {
        self.past.get(&pg)
    }

    /// The placement group of a stored item (a cart item, or a cart-index entry).
    pub fn pg_of(&self, key: &ItemKey) -> u32 {
        self.pool.pg_of(placement_key(&key.user, &key.product))
    }

    /// The epoch `pg`'s current interval started at: a request for it placed with an older
    /// map is refused (0: unchanged since bootstrap).
    pub fn interval_of(&self, pg: u32) -> u64 {
        self.intervals.get(&pg).copied().unwrap_or(0)
    }

    /// The newest interval of any PG: a request that spans PGs (a user's cart, a scan) is
    /// refused when it was placed with an older map.
    pub fn newest_interval(&self) -> u64 {
        self.intervals.values().copied().max().unwrap_or(0)
    }

    /// This map with `placement` in place of its own (and its CRUSH map replaced when
    /// `placement.crush` is set), at the same epoch: what a change would make of it.
    ///
    /// # Errors
    /// [`MapError`] when the result is not a valid map (a reweight naming a device the new
    /// CRUSH map lacks, say).
    pub fn with_placement(&self, placement: &Placement) -> Result<ClusterMap, MapError> {
        let crush = placement.crush.as_deref().unwrap_or(&self.map_json);
        ClusterMap::parse(&document(crush, self.settings, placement), self.epoch)
    }

    /// The reweight of every device of the map, by id, for the placement policy.
    pub fn reweight_vec(&self) -> Vec<(DeviceId, u32)> {
        self.devices
            .keys()
            .map(|&id| (id, self.reweight_of(id)))
            .collect()
    }

    /// The reweight of one device: its explicit reweight, [`FULL_WEIGHT`] when none is set, 0
    /// for a device that is not in the map.
    pub fn reweight_of(&self, device: DeviceId) -> u32 {
        match self.reweights.get(&device) {
            Some(&w) => w,
            None if self.devices.contains_key(&device) => FULL_WEIGHT,
            None => 0,
        }
    }
}

/// What a map change writes: the reweights, the past sets that go with them, the devices
/// marked out automatically, the flags and, when devices are added or removed, a new CRUSH
/// map. Start from [`Placement::of`] the map being changed, so that what a change does not
/// touch is written back as it was.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    pub reweights: BTreeMap<DeviceId, u32>,
    pub past: PastSets,
    /// Carried over from the map; the writer starts new intervals for the PGs whose past
    /// set it changes ([`cartdb_model::pg_table::intervals_after`]).
    pub intervals: Intervals,
    pub auto_out: BTreeSet<DeviceId>,
    pub flags: ClusterFlags,
    /// The sweep's pace set by an operator ([`ClusterMap::pace`]).
    pub pace: Option<u32>,
    /// A new CRUSH map JSON; `None` keeps the map's.
    pub crush: Option<String>,
    pub policies: ActivePolicies,
    pub policy_history: Vec<PolicyEvent>,
}

impl Placement {
    /// The placement `map` has now.
    pub fn of(map: &ClusterMap) -> Self {
        Self {
            reweights: map.reweights.clone(),
            past: map.past.clone(),
            intervals: map.intervals.clone(),
            auto_out: map.auto_out.clone(),
            flags: map.flags,
            pace: map.pace,
            crush: None,
            policies: map.policies.clone(),
            policy_history: map.policy_history.clone(),
        }
    }

    /// Whether `map` already has exactly this placement.
    pub fn is_that_of(&self, map: &ClusterMap) -> bool {
        self.crush
            .as_ref()
            .is_none_or(|crush| *crush == map.map_json)
            && Self {
                crush: None,
                ..self.clone()
            } == Self::of(map)
    }

    /// Every device this placement names.
    pub fn devices(&self) -> impl Iterator<Item = &DeviceId> {
        self.reweights
            .keys()
            .chain(self.past.values().flatten())
            .chain(self.auto_out.iter())
    }
}

/// The `/map` document for a map, its pool and a placement.
pub(crate) fn document(map_json: &str, settings: PoolSettings, placement: &Placement) -> Vec<u8> {
    let reweights: serde_json::Map<String, Value> = placement
        .reweights
        .iter()
        .map(|(id, w)| (id.to_string(), Value::from(*w)))
        .collect();
    let past: serde_json::Map<String, Value> = placement
        .past
        .iter()
        .map(|(pg, devices)| {
            (
                pg.to_string(),
                Value::from(devices.iter().copied().collect::<Vec<_>>()),
            )
        })
        .collect();
    let settings = format!(
        r#"{{"id":{},"pg_num":{},"size":{}}}"#,
        settings.id, settings.pg_num, settings.size
    );
    let intervals: serde_json::Map<String, Value> = placement
        .intervals
        .iter()
        .map(|(pg, epoch)| (pg.to_string(), Value::from(*epoch)))
        .collect();
    let auto_out = Value::from(placement.auto_out.iter().copied().collect::<Vec<_>>());
    let flags = Value::from(placement.flags.names());
    let pace = placement
        .pace
        .map_or_else(String::new, |pace| format!(r#","pace":{pace}"#));
    // Plain structs of strings and integers: serialising them cannot fail.
    let policies = serde_json::to_string(&placement.policies).unwrap_or_default();
    let history = serde_json::to_string(&placement.policy_history).unwrap_or_default();
    format!(
        r#"{{"format":{MAP_FORMAT},"map":{map_json},"reweights":{},"pool":{settings},"past":{},"intervals":{},"auto_out":{auto_out},"flags":{flags}{pace},"policies":{policies},"policy_history":{history}}}"#,
        Value::Object(reweights),
        Value::Object(past),
        Value::Object(intervals)
    )
    .into_bytes()
}

/// Fastest pace an operator may set, in items per second: far above what a data node
/// streams, so it only means "as fast as the devices go".
pub const MAX_PACE: u32 = 10_000_000;

/// Checks an operator's pace: `None`, or 1 to [`MAX_PACE`] items per second.
///
/// # Errors
/// [`MapError::Pace`] naming the value.
pub fn check_pace(pace: Option<u32>) -> Result<(), MapError> {
    match pace {
        Some(value) if !(1..=MAX_PACE).contains(&value) => Err(MapError::Pace { value }),
        _ => Ok(()),
    }
}

/// Checks a policy named in the map: a sha256 and a short name.
fn check_policy(policy: Option<&PolicyRef>, path: &str) -> Result<(), MapError> {
    let Some(policy) = policy else {
        return Ok(());
    };
    if !is_sha256(&policy.sha256) {
        return Err(wrong_type(
            &format!("{path}.sha256"),
            "64 lowercase hex digits",
        ));
    }
    if policy.name.len() > MAX_POLICY_TEXT {
        return Err(wrong_type(
            &format!("{path}.name"),
            "a name of at most 128 bytes",
        ));
    }
    Ok(())
}

/// The initial `/map` document for a CRUSH map given as JSON text, a pool and the policies
/// (no reweights: all in; no past sets; the policies' bootstrap in the history), checked by
/// [`ClusterMap::parse`].
///
/// # Errors
/// [`MapError`] when `map_json` is not a valid map, or the pool settings or policies are
/// invalid.
pub(crate) fn bootstrap_document(
    map_json: &str,
    settings: PoolSettings,
    policies: &ActivePolicies,
    at_ms: u64,
    by: &str,
) -> Result<(Vec<u8>, ClusterMap), MapError> {
    let map: Value = serde_json::from_str(map_json).map_err(MapError::Json)?;
    let event = |kind, policy: Option<&PolicyRef>| PolicyEvent {
        kind,
        policy: policy.cloned(),
        action: "bootstrap".to_owned(),
        epoch: 1,
        at_ms,
        by: by.to_owned(),
    };
    let placement = Placement {
        policies: policies.clone(),
        policy_history: vec![
            event(PolicyKind::Placement, Some(&policies.placement)),
            event(PolicyKind::Merge, policies.merge.as_ref()),
        ],
        ..Placement::default()
    };
    let doc = document(&map.to_string(), settings, &placement);
    let parsed = ClusterMap::parse(&doc, 1)?;
    Ok((doc, parsed))
}

fn devices_of(map: &Value) -> Result<BTreeMap<DeviceId, String>, MapError> {
    let trees = field(map, "map", "trees")?
        .as_array()
        .ok_or_else(|| wrong_type("map.trees", "an array"))?;
    if !field(map, "map", "rules")?.is_object() {
        return Err(wrong_type("map.rules", "an object"));
    }
    let mut devices = Devices::default();
    for (i, tree) in trees.iter().enumerate() {
        devices.collect(tree, format!("map.trees[{i}]"))?;
    }
    if devices.by_id.is_empty() {
        return Err(MapError::NoDevices);
    }
    Ok(devices.by_id)
}

/// Devices found so far while walking the trees.
#[derive(Default)]
struct Devices {
    by_id: BTreeMap<DeviceId, String>,
    paths_by_name: BTreeMap<String, String>,
}

impl Devices {
    /// Walks one bucket or device. Recursion depth is bounded by serde_json's nesting limit.
    fn collect(&mut self, node: &Value, path: String) -> Result<(), MapError> {
        let id = field(node, &path, "id")?
            .as_i64()
            .ok_or_else(|| wrong_type(&format!("{path}.id"), "an integer"))?;
        if id >= 0 {
            return self.add_device(node, id, path);
        }
        let Some(children) = node.get("children") else {
            return Ok(());
        };
        let children = children
            .as_array()
            .ok_or_else(|| wrong_type(&format!("{path}.children"), "an array"))?;
        for (i, child) in children.iter().enumerate() {
            self.collect(child, format!("{path}.children[{i}]"))?;
        }
        Ok(())
    }

    fn add_device(&mut self, node: &Value, id: i64, path: String) -> Result<(), MapError> {
        let id = DeviceId::try_from(id).map_err(|_| wrong_type(&format!("{path}.id"), "a u32"))?;
        let name = field(node, &path, "name")?
            .as_str()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| wrong_type(&format!("{path}.name"), "a non-empty string"))?;
        if let Some(weight) = node.get("weight")
            && weight.as_u64().is_none_or(|w| w > u64::from(u32::MAX))
        {
            return Err(wrong_type(
                &format!("{path}.weight"),
                "a 16.16 fixed-point u32",
            ));
        }
        if let Some(first) = self.paths_by_name.insert(name.to_owned(), path.clone()) {
            return Err(MapError::DuplicateDeviceName {
                name: name.to_owned(),
                first,
                path,
            });
        }
        if self.by_id.insert(id, name.to_owned()).is_some() {
            return Err(MapError::DuplicateDeviceId { id, path });
        }
        Ok(())
    }
}

fn reweights_of(
    raw: BTreeMap<String, u32>,
    devices: &BTreeMap<DeviceId, String>,
) -> Result<BTreeMap<DeviceId, u32>, MapError> {
    raw.into_iter()
        .map(|(key, weight)| match key.parse::<DeviceId>() {
            Ok(id) if devices.contains_key(&id) => Ok((id, weight)),
            _ => Err(MapError::UnknownReweightDevice { key }),
        })
        .collect()
}

fn past_of(
    raw: BTreeMap<String, Vec<DeviceId>>,
    devices: &BTreeMap<DeviceId, String>,
    pg_num: u32,
) -> Result<PastSets, MapError> {
    raw.into_iter()
        .map(|(key, members)| {
            let pg = pg_key(&key, pg_num).ok_or_else(|| MapError::UnknownPg {
                key: key.clone(),
                pg_num,
            })?;
            if let Some(&device) = members.iter().find(|d| !devices.contains_key(d)) {
                return Err(MapError::UnknownPastDevice { pg, device });
            }
            Ok((pg, members.into_iter().collect()))
        })
        .filter(|entry| !matches!(entry, Ok((_, members)) if BTreeSet::is_empty(members)))
        .collect()
}

fn intervals_of(
    raw: BTreeMap<String, u64>,
    pg_num: u32,
    epoch: u64,
) -> Result<Intervals, MapError> {
    raw.into_iter()
        .map(|(key, start)| {
            let pg = pg_key(&key, pg_num).ok_or_else(|| MapError::UnknownIntervalPg {
                key: key.clone(),
                pg_num,
            })?;
            if start > epoch {
                return Err(MapError::IntervalAhead { pg, start, epoch });
            }
            Ok((pg, start))
        })
        .collect()
}

/// The PG a document key names, if it is one below `pg_num`.
fn pg_key(key: &str, pg_num: u32) -> Option<u32> {
    key.parse::<u32>().ok().filter(|pg| *pg < pg_num)
}

fn field<'v>(node: &'v Value, path: &str, name: &str) -> Result<&'v Value, MapError> {
    node.get(name).ok_or_else(|| MapError::Missing {
        path: format!("{path}.{name}"),
    })
}

fn wrong_type(path: &str, expected: &'static str) -> MapError {
    MapError::WrongType {
        path: path.to_owned(),
        expected,
    }
}

/// Why a CRUSH map document was refused. Paths look like `map.trees[0].children[2].id`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MapError {
    #[error("map document is {len} bytes, more than the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error(
        "not JSON of the form {{\"format\": 4, \"map\": {{...}}, \"reweights\": {{...}}, \"pool\": {{...}}, \"past\": {{...}}, \"auto_out\": [...], \"flags\": [...], \"policies\": {{...}}, \"policy_history\": [...]}}: {0}"
    )]
    Json(#[source] serde_json::Error),
    #[error(
        "the map document has format {}, this build reads format {MAP_FORMAT} (placement groups, automatic out, policies named by sha256); it is not migrated: bootstrap a new cluster (a new ZooKeeper chroot and empty data directories)",
        found.map_or_else(|| "1 (no \"format\" field)".to_owned(), |f| f.to_string())
    )]
    Format { found: Option<u64> },
    #[error("pool: {0}")]
    Pool(#[source] PoolError),
    #[error("pool: size {size} is not in 1..={MAX_POOL_SIZE}")]
    PoolSize { size: u32 },
    #[error("past: {key:?} is not a placement group below pg_num {pg_num}")]
    UnknownPg { key: String, pg_num: u32 },
    #[error("intervals: {key:?} is not a placement group below pg_num {pg_num}")]
    UnknownIntervalPg { key: String, pg_num: u32 },
    #[error(
        "intervals: placement group {pg} starts its interval at epoch {start}, after the map's own epoch {epoch}"
    )]
    IntervalAhead { pg: u32, start: u64, epoch: u64 },
    #[error("past: placement group {pg} names device {device}, which is not in the map")]
    UnknownPastDevice { pg: u32, device: DeviceId },
    #[error("{path} is missing")]
    Missing { path: String },
    #[error("{path} must be {expected}")]
    WrongType {
        path: String,
        expected: &'static str,
    },
    #[error("{path}: device id {id} appears twice")]
    DuplicateDeviceId { id: DeviceId, path: String },
    #[error("{path}: device name {name:?} is already used at {first}")]
    DuplicateDeviceName {
        name: String,
        first: String,
        path: String,
    },
    #[error("the map has no devices")]
    NoDevices,
    #[error("reweights: {key:?} is not the id of a device in the map")]
    UnknownReweightDevice { key: String },
    #[error("auto_out: device {device} is not in the map")]
    UnknownAutoOutDevice { device: DeviceId },
    #[error("flags: {name:?} is not a cluster flag (known: noout, nobackfill, norebalance)")]
    UnknownFlag { name: String },
    #[error("pace: {value} is not in 1..={MAX_PACE} items per second")]
    Pace { value: u32 },
    #[error("policy_history has {len} entries, more than {MAX_POLICY_HISTORY}")]
    PolicyHistory { len: usize },
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED_MAP: &str = include_str!("../../../config/crush-map.json");

    const POOL: PoolSettings = PoolSettings {
        id: 1,
        pg_num: 64,
        size: 3,
    };

    /// The `policies` of a test document.
    const POLICIES: &str = r#""policies": {"placement": {"sha256": "0000000000000000000000000000000000000000000000000000000000000001", "name": "crush"}, "merge": null}"#;

    fn policies() -> ActivePolicies {
        ActivePolicies {
            placement: PolicyRef {
                sha256: format!("{:064}", 1),
                name: "crush".to_owned(),
            },
            merge: None,
        }
    }

    fn seed_doc() -> Vec<u8> {
        bootstrap_document(SEED_MAP, POOL, &policies(), 7, "test")
            .unwrap()
            .0
    }

    fn parse_map(map: &str) -> Result<ClusterMap, MapError> {
        let doc = format!(
            r#"{{"format": 4, "map": {map}, "pool": {{"id": 1, "pg_num": 8, "size": 3}}, {POLICIES}}}"#
        );
        ClusterMap::parse(doc.as_bytes(), 1)
    }

    fn placement(reweights: &[(DeviceId, u32)], past: &[(u32, &[DeviceId])]) -> Placement {
        Placement {
            reweights: reweights.iter().copied().collect(),
            past: past
                .iter()
                .map(|(pg, devices)| (*pg, devices.iter().copied().collect()))
                .collect(),
            ..Placement::of(&ClusterMap::parse(&seed_doc(), 1).unwrap())
        }
    }

    #[test]
    fn policies_and_their_history_survive_the_document() {
        let map = ClusterMap::parse(&seed_doc(), 1).unwrap();
        assert_eq!(map.policies, policies());
        assert_eq!(map.policy_history.len(), 2, "both kinds bootstrapped");
        assert_eq!(
            previous_policy(&map.policy_history, PolicyKind::Placement),
            None
        );
        let mut change = Placement::of(&map);
        let rendezvous = PolicyRef {
            sha256: format!("{:064}", 2),
            name: "rendezvous-hrw".to_owned(),
        };
        change.policies.placement = rendezvous.clone();
        for n in 0..40 {
            record_policy_event(
                &mut change.policy_history,
                PolicyEvent {
                    kind: PolicyKind::Placement,
                    policy: Some(if n % 2 == 0 {
                        policies().placement
                    } else {
                        rendezvous.clone()
                    }),
                    action: "deploy".to_owned(),
                    epoch: n + 2,
                    at_ms: n,
                    by: "test".to_owned(),
                },
            );
        }
        assert_eq!(change.policy_history.len(), MAX_POLICY_HISTORY);
        let map = ClusterMap::parse(&document(&map.map_json, POOL, &change), 2).unwrap();
        assert_eq!(map.policies.placement, rendezvous);
        assert_eq!(Placement::of(&map), change);
        assert_eq!(
            previous_policy(&map.policy_history, PolicyKind::Placement),
            Some(Some(policies().placement))
        );
        assert_eq!(
            previous_policy(&map.policy_history, PolicyKind::Merge),
            None
        );
    }

    #[test]
    fn bad_policies_are_refused_by_path() {
        let map = ClusterMap::parse(&seed_doc(), 1).unwrap();
        let doc = |policies: &str| {
            let doc = format!(
                r#"{{"format": 4, "map": {}, "pool": {{"id": 1, "pg_num": 8, "size": 3}}{policies}}}"#,
                map.map_json
            );
            ClusterMap::parse(doc.as_bytes(), 1)
                .map(|_| ())
                .unwrap_err()
                .to_string()
        };
        assert!(doc("").contains("policies is missing"));
        assert!(
            doc(r#", "policies": {"placement": {"sha256": "../x", "name": "a"}}"#)
                .contains("policies.placement.sha256 must be 64 lowercase hex digits")
        );
        let long = "n".repeat(200);
        let named = format!(
            r#", "policies": {{"placement": {{"sha256": "{:064}", "name": "{long}"}}}}"#,
            1
        );
        assert!(doc(&named).contains("policies.placement.name"));
    }

    #[test]
    fn the_seed_map_has_six_devices() {
        let map = ClusterMap::parse(&seed_doc(), 4).unwrap();
        assert_eq!(map.epoch, 4);
        assert_eq!(map.devices.len(), 6);
        assert_eq!(map.devices[&3], "device_3");
        assert!(map.reweights.is_empty());
        assert_eq!(
            (map.pool.pg_num(), map.pool.id(), map.settings.size),
            (64, 1, 3)
        );
        assert!(map.past.is_empty());
        // The map JSON alone is handed on, and still parses as the same map.
        let again = ClusterMap::parse(&document(&map.map_json, POOL, &Placement::of(&map)), 4);
        assert_eq!(again.unwrap(), map);
    }

    #[test]
    fn movement_flags_pause_backfill_or_only_rebalancing() {
        let past = BTreeSet::from([4, 5]);
        let mut flags = ClusterFlags::default();
        assert!(flags.allow_movement(Some(&past), |_| true));
        flags.set("norebalance", true).unwrap();
        assert!(
            !flags.allow_movement(Some(&past), |_| true),
            "a rebalance waits"
        );
        assert!(
            flags.allow_movement(Some(&past), |d| d != 5),
            "a lost copy is restored"
        );
        assert!(
            flags.allow_movement(None, |_| true),
            "no past set, nothing to move"
        );
        flags.set("nobackfill", true).unwrap();
        assert!(!flags.allow_movement(Some(&past), |d| d != 5));
        assert_eq!(flags.names(), ["nobackfill", "norebalance"]);
    }

    #[test]
    fn auto_out_flags_and_pace_survive_the_document() {
        let map = ClusterMap::parse(&seed_doc(), 1).unwrap();
        assert_eq!(
            (map.auto_out.len(), map.flags),
            (0, ClusterFlags::default())
        );
        let mut change = placement(&[(2, 0)], &[]);
        change.auto_out.insert(2);
        change.flags.set("noout", true).unwrap();
        change.pace = Some(5_000);
        let map = ClusterMap::parse(&document(&map.map_json, POOL, &change), 2).unwrap();
        assert_eq!(map.auto_out, BTreeSet::from([2]));
        assert!(map.flags.noout);
        assert_eq!(map.pace, Some(5_000));
        assert!(change.is_that_of(&map));
        assert_eq!(Placement::of(&map), change);
        assert!(matches!(
            change.flags.set("pause", true),
            Err(MapError::UnknownFlag { .. })
        ));
    }

    #[test]
    fn reweights_survive_the_document() {
        let map = ClusterMap::parse(&seed_doc(), 1).unwrap();
        let change = placement(&[(2, 0), (5, 0x8000)], &[(7, &[2]), (63, &[1, 6])]);
        let doc = document(&map.map_json, POOL, &change);
        let map = ClusterMap::parse(&doc, 2).unwrap();
        assert_eq!(map.reweights, change.reweights);
        assert_eq!(map.past, change.past);
        assert_eq!(map.past_of(63), Some(&BTreeSet::from([1, 6])));
        assert_eq!(
            map.reweight_vec(),
            vec![
                (1, FULL_WEIGHT),
                (2, 0),
                (3, FULL_WEIGHT),
                (4, FULL_WEIGHT),
                (5, 0x8000),
                (6, FULL_WEIGHT)
            ]
        );
        assert_eq!(map.reweight_of(99), 0);
    }

    #[test]
    fn errors_name_the_problem() {
        let err = |map: &str| parse_map(map).unwrap_err().to_string();
        assert!(err(r#"{"rules": {}}"#).contains("map.trees is missing"));
        assert!(err(r#"{"trees": {}, "rules": {}}"#).contains("map.trees must be an array"));
        assert!(err(r#"{"trees": []}"#).contains("map.rules is missing"));
        assert!(err(r#"{"trees": [], "rules": {}}"#).contains("no devices"));
        assert!(
            err(r#"{"trees": [{"name": "x"}], "rules": {}}"#)
                .contains("map.trees[0].id is missing")
        );
        let nested = r#"{"trees": [{"id": -1, "children": [{"id": 1, "name": "a"}, {"id": 2}]}], "rules": {}}"#;
        assert!(err(nested).contains("map.trees[0].children[1].name is missing"));
        let dup = r#"{"trees": [{"id": -1, "children": [{"id": 1, "name": "a"}, {"id": 1, "name": "b"}]}], "rules": {}}"#;
        assert!(matches!(
            parse_map(dup),
            Err(MapError::DuplicateDeviceId { id: 1, .. })
        ));
        let dup_name = r#"{"trees": [{"id": -1, "children": [{"id": 1, "name": "a"}, {"id": 2, "name": "a"}]}], "rules": {}}"#;
        assert!(matches!(
            parse_map(dup_name),
            Err(MapError::DuplicateDeviceName { .. })
        ));
        let weight = r#"{"trees": [{"id": 1, "name": "a", "weight": -1}], "rules": {}}"#;
        assert!(err(weight).contains("map.trees[0].weight"));
        let huge = format!(
            r#"{{"trees": [{{"id": {}, "name": "a"}}], "rules": {{}}}}"#,
            u64::MAX
        );
        assert!(parse_map(&huge).is_err());
    }

    /// A map of the per-item directory era (no format field) is refused by name.
    #[test]
    fn older_formats_are_refused_with_the_format_named() {
        let old = format!(r#"{{"map": {SEED_MAP}, "reweights": {{}}}}"#);
        let err = ClusterMap::parse(old.as_bytes(), 1).unwrap_err();
        assert!(matches!(err, MapError::Format { found: None }));
        assert!(
            err.to_string().contains("format 1 (no \"format\" field)"),
            "{err}"
        );
        assert!(err.to_string().contains("reads format 4"), "{err}");
        for other in [2, 3, 5] {
            let doc = format!(r#"{{"format": {other}, "map": {SEED_MAP}}}"#);
            let err = ClusterMap::parse(doc.as_bytes(), 1).unwrap_err();
            assert!(
                err.to_string().contains(&format!("has format {other}")),
                "{err}"
            );
        }
    }

    #[test]
    fn malformed_documents_are_refused() {
        assert!(matches!(ClusterMap::parse(b"", 1), Err(MapError::Json(_))));
        assert!(matches!(
            ClusterMap::parse(b"[1, 2]", 1),
            Err(MapError::Json(_))
        ));
        assert!(matches!(
            ClusterMap::parse(br#"{"reweights": {}}"#, 1),
            Err(MapError::Json(_))
        ));
        let map = ClusterMap::parse(&seed_doc(), 1).unwrap();
        let with = |extra: &str| {
            let doc = format!(
                r#"{{"format": 4, "map": {}, "pool": {{"id": 1, "pg_num": 64, "size": 3}}, {POLICIES}{extra}}}"#,
                map.map_json
            );
            ClusterMap::parse(doc.as_bytes(), 1)
        };
        assert!(with("").is_ok());
        assert!(matches!(
            with(r#", "reweights": {"9": 0}"#),
            Err(MapError::UnknownReweightDevice { .. })
        ));
        assert!(with(r#", "reweights": {"1": -5}"#).is_err());
        let err = |extra: &str| with(extra).unwrap_err().to_string();
        assert!(
            err(r#", "past": {"64": [1]}"#)
                .contains("\"64\" is not a placement group below pg_num 64")
        );
        assert!(err(r#", "past": {"x": [1]}"#).contains("not a placement group"));
        assert!(err(r#", "past": {"3": [9]}"#).contains("placement group 3 names device 9"));
        assert!(with(r#", "past": {"3": []}"#).unwrap().past.is_empty());
        assert!(err(r#", "auto_out": [9]"#).contains("auto_out: device 9 is not in the map"));
        assert!(err(r#", "flags": ["nodown"]"#).contains("\"nodown\" is not a cluster flag"));
        assert!(err(r#", "pace": 0"#).contains("pace: 0 is not in 1..=10000000"));
        assert!(err(r#", "pace": -3"#).contains("not JSON of the form"));
        assert!(err(r#", "flags": "noout""#).contains("not JSON of the form"));
        let pool = |pool: &str| {
            let doc = format!(
                r#"{{"format": 4, "map": {}, "pool": {pool}, {POLICIES}}}"#,
                map.map_json
            );
            ClusterMap::parse(doc.as_bytes(), 1)
                .unwrap_err()
                .to_string()
        };
        assert!(pool(r#"{"id": 1, "pg_num": 0, "size": 3}"#).contains("pg_num 0 is not in"));
        assert!(pool(r#"{"id": 1, "pg_num": 8, "size": 0}"#).contains("size 0 is not in"));
        let no_pool = format!(r#"{{"format": 4, "map": {}, {POLICIES}}}"#, map.map_json);
        assert!(
            ClusterMap::parse(no_pool.as_bytes(), 1)
                .unwrap_err()
                .to_string()
                .contains("pool is missing")
        );
        let big = vec![b' '; MAX_MAP_BYTES + 1];
        assert!(matches!(
            ClusterMap::parse(&big, 1),
            Err(MapError::TooLarge { .. })
        ));
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(ClusterMap::parse(deep.as_bytes(), 1).is_err());
    }
}

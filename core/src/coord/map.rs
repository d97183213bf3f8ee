//! The CRUSH map as every gateway must see it: the map JSON, its epoch and the reweights.
//!
//! The `/map` znode holds one document, `{"map": <CRUSH map>, "reweights": {"<id>": w}}`:
//! the map in python-crush JSON (the seed's format, `config/crush-map.json`) and Ceph-style
//! reweights in 16.16 fixed point (0 = out, `0x10000` = in). Keeping both in one znode makes a
//! change to either one atomic and gives it one epoch: the znode's version + 1.
//!
//! Everything here is pure; [`ClusterMap::parse`] treats its input as untrusted.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::cart::DeviceId;

use super::Membership;

/// Reweight of a device that is fully in (1.0 in 16.16 fixed point).
pub const FULL_WEIGHT: u32 = 0x10000;

/// Largest map document accepted (ZooKeeper's own limit is 1 MiB).
pub const MAX_MAP_BYTES: usize = 1 << 20;

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
}

/// The znode document as read; `map` is checked by hand to give precise errors.
#[derive(Deserialize)]
struct MapDoc {
    map: Value,
    #[serde(default)]
    reweights: BTreeMap<String, u32>,
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
        let devices = devices_of(&doc.map)?;
        let reweights = reweights_of(doc.reweights, &devices)?;
        Ok(ClusterMap {
            epoch,
            map_json: doc.map.to_string(),
            devices,
            reweights,
        })
    }

    /// The reweights that mark exactly the live devices in: [`FULL_WEIGHT`] for each device of
    /// the map that is registered in `live`, 0 (Ceph's "out") for the others.
    pub fn reweights_for(&self, live: &Membership) -> BTreeMap<DeviceId, u32> {
        self.devices
            .keys()
            .map(|&id| {
                let weight = if live.devices.contains_key(&id) {
                    FULL_WEIGHT
                } else {
                    0
                };
                (id, weight)
            })
            .collect()
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

/// The `/map` document for a map and reweights.
pub(crate) fn document(map_json: &str, reweights: &BTreeMap<DeviceId, u32>) -> Vec<u8> {
    let reweights: serde_json::Map<String, Value> = reweights
        .iter()
        .map(|(id, w)| (id.to_string(), Value::from(*w)))
        .collect();
    format!(
        r#"{{"map":{map_json},"reweights":{}}}"#,
        Value::Object(reweights)
    )
    .into_bytes()
}

/// The initial `/map` document for a CRUSH map given as JSON text (no reweights: all in),
/// checked by [`ClusterMap::parse`].
///
/// # Errors
/// [`MapError`] when `map_json` is not a valid map.
pub(crate) fn bootstrap_document(map_json: &str) -> Result<(Vec<u8>, ClusterMap), MapError> {
    let map: Value = serde_json::from_str(map_json).map_err(MapError::Json)?;
    let doc = document(&map.to_string(), &BTreeMap::new());
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
    #[error("not JSON of the form {{\"map\": {{...}}, \"reweights\": {{...}}}}: {0}")]
    Json(#[source] serde_json::Error),
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
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED_MAP: &str = include_str!("../../../config/crush-map.json");

    fn seed_doc() -> Vec<u8> {
        bootstrap_document(SEED_MAP).unwrap().0
    }

    fn parse_map(map: &str) -> Result<ClusterMap, MapError> {
        ClusterMap::parse(format!(r#"{{"map": {map}}}"#).as_bytes(), 1)
    }

    #[test]
    fn the_seed_map_has_six_devices() {
        let map = ClusterMap::parse(&seed_doc(), 4).unwrap();
        assert_eq!(map.epoch, 4);
        assert_eq!(map.devices.len(), 6);
        assert_eq!(map.devices[&3], "device_3");
        assert!(map.reweights.is_empty());
        // The map JSON alone is handed on, and still parses as the same map.
        let again = ClusterMap::parse(&document(&map.map_json, &map.reweights), 4).unwrap();
        assert_eq!(again, map);
    }

    #[test]
    fn reweights_survive_the_document() {
        let map = ClusterMap::parse(&seed_doc(), 1).unwrap();
        let reweights = BTreeMap::from([(2, 0), (5, 0x8000)]);
        let doc = document(&map.map_json, &reweights);
        let map = ClusterMap::parse(&doc, 2).unwrap();
        assert_eq!(map.reweights, reweights);
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
    fn reweights_for_marks_dead_devices_out() {
        let map = ClusterMap::parse(&seed_doc(), 1).unwrap();
        let mut live = Membership::default();
        live.devices.insert(1, "127.0.0.1:7001".into());
        live.devices.insert(4, "127.0.0.1:7004".into());
        live.devices.insert(42, "127.0.0.1:7042".into()); // not in the map: ignored
        let weights = map.reweights_for(&live);
        assert_eq!(
            weights,
            BTreeMap::from([
                (1, FULL_WEIGHT),
                (2, 0),
                (3, 0),
                (4, FULL_WEIGHT),
                (5, 0),
                (6, 0)
            ])
        );
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
        let bad_key = format!(r#"{{"map": {}, "reweights": {{"9": 0}}}}"#, map.map_json);
        assert!(matches!(
            ClusterMap::parse(bad_key.as_bytes(), 1),
            Err(MapError::UnknownReweightDevice { .. })
        ));
        let bad_value = format!(r#"{{"map": {}, "reweights": {{"1": -5}}}}"#, map.map_json);
        assert!(ClusterMap::parse(bad_value.as_bytes(), 1).is_err());
        let big = vec![b' '; MAX_MAP_BYTES + 1];
        assert!(matches!(
            ClusterMap::parse(&big, 1),
            Err(MapError::TooLarge { .. })
        ));
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(ClusterMap::parse(deep.as_bytes(), 1).is_err());
    }
}

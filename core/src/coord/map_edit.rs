//! Edits of the CRUSH map JSON, for `cartdb device add` and `cartdb device remove`: a device
//! added under a host bucket (created under the first root when it does not exist), and a
//! device removed (with its host bucket, when that is left empty).
//!
//! Buckets without a `weight` weigh the sum of their children, so adding or removing a
//! device changes their weight by itself. A bucket with an explicit `weight` on the way from
//! the device to its root is adjusted by the device's weight, as Ceph's `crush add` does, so
//! that the new device is not weightless at that level. Everything here is pure; the result
//! is checked again by [`ClusterMap::parse`](super::ClusterMap::parse) before it is written.

use serde_json::{Map, Value};

use crate::cart::DeviceId;

/// A device to add.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewDevice {
    pub id: DeviceId,
    pub name: String,
    /// The host bucket it goes under.
    pub host: String,
    /// CRUSH weight, 16.16 fixed point (`0x10000` = 1.0).
    pub weight: u32,
}

/// Why a map edit was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum MapEditError {
    #[error("the map is not JSON with a \"trees\" array")]
    Shape,
    #[error("id {id} is already used in the map")]
    IdTaken { id: DeviceId },
    #[error("name {name:?} is already used in the map")]
    NameTaken { name: String },
    #[error("{name:?} names a device, not a host bucket")]
    NotABucket { name: String },
    #[error("the map's first tree is not a bucket to create host {host:?} under")]
    NoRoot { host: String },
    #[error("device {id} is not in the map")]
    UnknownDevice { id: DeviceId },
    #[error("a weight in the map does not fit in 16.16 fixed point after the change")]
    Weight,
    #[error("the weight of a new device must be above 0")]
    ZeroWeight,
}

/// Positions of a node: its tree's index, then an index into each `children` array.
type NodePath = Vec<usize>;

/// `map_json` with `new` added under its host.
///
/// # Errors
/// [`MapEditError`] when the id or name is taken, the host names a device, or the map has
/// no root bucket to create the host under.
pub fn add_device(map_json: &str, new: &NewDevice) -> Result<String, MapEditError> {
    if new.weight == 0 {
        return Err(MapEditError::ZeroWeight);
    }
    let mut map: Value = serde_json::from_str(map_json).map_err(|_| MapEditError::Shape)?;
    let trees = trees_mut(&mut map)?;
    let mut ids = Vec::new();
    let mut names = Vec::new();
    for tree in trees.iter() {
        collect(tree, &mut ids, &mut names);
    }
    if ids.contains(&i64::from(new.id)) {
        return Err(MapEditError::IdTaken { id: new.id });
    }
    if names.iter().any(|n| *n == new.name) {
        return Err(MapEditError::NameTaken {
            name: new.name.clone(),
        });
    }
    let device = serde_json::json!({"id": new.id, "name": new.name, "weight": new.weight});
    let host_path = find(trees, &|node| name_of(node) == Some(new.host.as_str()));
    let parent = match host_path {
        Some(path) => {
            if id_of(node_at(trees, &path)?).is_none_or(|id| id >= 0) {
                return Err(MapEditError::NotABucket {
                    name: new.host.clone(),
                });
            }
            path
        }
        None => {
            let root = trees.first().filter(|t| id_of(t).is_some_and(|id| id < 0));
            if root.is_none() {
                return Err(MapEditError::NoRoot {
                    host: new.host.clone(),
                });
            }
            let bucket_id = ids.iter().copied().min().unwrap_or(0).min(0) - 1;
            let host = serde_json::json!({
                "type": "host", "name": new.host, "id": bucket_id, "children": []
            });
            children_mut(node_at_mut(trees, &[0])?)?.push(host);
            let index = children_mut(node_at_mut(trees, &[0])?)?.len() - 1;
            vec![0, index]
        }
    };
    children_mut(node_at_mut(trees, &parent)?)?.push(device);
    adjust_explicit_weights(trees, &parent, i64::from(new.weight))?;
    Ok(map.to_string())
}

/// `map_json` without device `id` (and without its host bucket, if that is left empty).
///
/// # Errors
/// [`MapEditError::UnknownDevice`] when the map has no such device.
pub fn remove_device(map_json: &str, id: DeviceId) -> Result<String, MapEditError> {
    let mut map: Value = serde_json::from_str(map_json).map_err(|_| MapEditError::Shape)?;
    let trees = trees_mut(&mut map)?;
    let path = find(trees, &|node| id_of(node) == Some(i64::from(id)))
        .filter(|path| path.len() > 1)
        .ok_or(MapEditError::UnknownDevice { id })?;
    let weight = node_at(trees, &path)?
        .get("weight")
        .and_then(Value::as_i64)
        .unwrap_or(0x10000);
    let (parent, index) = path.split_at(path.len() - 1);
    children_mut(node_at_mut(trees, parent)?)?.remove(index[0]);
    adjust_explicit_weights(trees, parent, -weight)?;
    // A host left with no device goes too (a root stays, even empty).
    if parent.len() > 1 && children_mut(node_at_mut(trees, parent)?)?.is_empty() {
        let (grandparent, index) = parent.split_at(parent.len() - 1);
        children_mut(node_at_mut(trees, grandparent)?)?.remove(index[0]);
    }
    Ok(map.to_string())
}

fn trees_mut(map: &mut Value) -> Result<&mut Vec<Value>, MapEditError> {
    map.get_mut("trees")
        .and_then(Value::as_array_mut)
        .ok_or(MapEditError::Shape)
}

fn id_of(node: &Value) -> Option<i64> {
    node.get("id").and_then(Value::as_i64)
}

fn name_of(node: &Value) -> Option<&str> {
    node.get("name").and_then(Value::as_str)
}

fn children(node: &Value) -> &[Value] {
    node.get("children")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// The `children` array of a bucket, created when absent.
fn children_mut(node: &mut Value) -> Result<&mut Vec<Value>, MapEditError> {
    node.as_object_mut()
        .ok_or(MapEditError::Shape)?
        .entry("children")
        .or_insert_with(|| Value::Array(Vec::new()))
        .as_array_mut()
        .ok_or(MapEditError::Shape)
}

fn collect<'v>(node: &'v Value, ids: &mut Vec<i64>, names: &mut Vec<&'v str>) {
    if let Some(id) = id_of(node) {
        ids.push(id);
    }
    if let Some(name) = name_of(node) {
        names.push(name);
    }
    for child in children(node) {
        collect(child, ids, names);
    }
}

/// The path of the first node (depth first) that `wanted` accepts.
fn find(trees: &[Value], wanted: &dyn Fn(&Value) -> bool) -> Option<NodePath> {
    fn walk(node: &Value, wanted: &dyn Fn(&Value) -> bool, path: &mut NodePath) -> bool {
        if wanted(node) {
            return true;
        }
        for (i, child) in children(node).iter().enumerate() {
            path.push(i);
            if walk(child, wanted, path) {
                return true;
            }
            path.pop();
        }
        false
    }
    trees.iter().enumerate().find_map(|(i, tree)| {
        let mut path = vec![i];
        walk(tree, wanted, &mut path).then_some(path)
    })
}

fn node_at<'v>(trees: &'v [Value], path: &[usize]) -> Result<&'v Value, MapEditError> {
    let (first, rest) = path.split_first().ok_or(MapEditError::Shape)?;
    let mut node = trees.get(*first).ok_or(MapEditError::Shape)?;
    for &i in rest {
        node = children(node).get(i).ok_or(MapEditError::Shape)?;
    }
    Ok(node)
}

fn node_at_mut<'v>(trees: &'v mut [Value], path: &[usize]) -> Result<&'v mut Value, MapEditError> {
    let (first, rest) = path.split_first().ok_or(MapEditError::Shape)?;
    let mut node = trees.get_mut(*first).ok_or(MapEditError::Shape)?;
    for &i in rest {
        node = node
            .get_mut("children")
            .and_then(Value::as_array_mut)
            .and_then(|c| c.get_mut(i))
            .ok_or(MapEditError::Shape)?;
    }
    Ok(node)
}

/// Adds `delta` to the explicit `weight` of the bucket at `path` and of every bucket above.
fn adjust_explicit_weights(
    trees: &mut [Value],
    path: &[usize],
    delta: i64,
) -> Result<(), MapEditError> {
    for depth in (1..=path.len()).rev() {
        let node = node_at_mut(trees, &path[..depth])?;
        let Some(object) = node.as_object_mut() else {
            continue;
        };
        adjust(object, delta)?;
    }
    Ok(())
}

fn adjust(object: &mut Map<String, Value>, delta: i64) -> Result<(), MapEditError> {
    let Some(weight) = object.get("weight").and_then(Value::as_i64) else {
        return Ok(());
    };
    let adjusted = weight
        .checked_add(delta)
        .filter(|w| (0..=i64::from(u32::MAX)).contains(w))
        .ok_or(MapEditError::Weight)?;
    object.insert("weight".to_owned(), Value::from(adjusted));
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]
mod tests {
    use super::*;
    use crate::coord::map::{PoolSettings, bootstrap_document};

    const SEED_MAP: &str = include_str!("../../../config/crush-map.json");

    fn devices(map_json: &str) -> Vec<(DeviceId, String)> {
        let pool = PoolSettings {
            id: 1,
            pg_num: 8,
            size: 3,
        };
        let policies = crate::coord::map::ActivePolicies {
            placement: crate::coord::map::PolicyRef {
                sha256: "a".repeat(64),
                name: "crush".to_owned(),
            },
            merge: None,
        };
        let (_, map) = bootstrap_document(map_json, pool, &policies, 0, "test").unwrap();
        map.devices.into_iter().collect()
    }

    fn new(id: DeviceId, host: &str) -> NewDevice {
        NewDevice {
            id,
            name: format!("device_{id}"),
            host: host.to_owned(),
            weight: 0x10000,
        }
    }

    #[test]
    fn a_device_goes_under_a_new_host_and_comes_out_again() {
        let added = add_device(SEED_MAP, &new(7, "host6")).unwrap();
        let listed = devices(&added);
        assert_eq!(listed.len(), 7);
        assert_eq!(listed[6], (7, "device_7".to_owned()));
        let map: Value = serde_json::from_str(&added).unwrap();
        let host = &map["trees"][0]["children"][6];
        assert_eq!(host["name"], "host6");
        assert_eq!(host["id"], -11, "below every id in use (the root is -10)");
        assert_eq!(host["children"][0]["weight"], 0x10000);
        let removed = remove_device(&added, 7).unwrap();
        assert_eq!(devices(&removed).len(), 6);
        let map: Value = serde_json::from_str(&removed).unwrap();
        assert_eq!(
            map["trees"][0]["children"].as_array().unwrap().len(),
            6,
            "the emptied host went with it"
        );
    }

    #[test]
    fn a_device_joins_an_existing_host_and_explicit_weights_follow() {
        let map = r#"{"trees": [{"type": "root", "name": "r", "id": -1, "weight": 131072,
            "children": [{"type": "host", "name": "h", "id": -2, "weight": 131072,
                "children": [{"id": 0, "name": "a", "weight": 65536},
                             {"id": 1, "name": "b", "weight": 65536}]}]}],
            "rules": {"data": [["take", "r"], ["chooseleaf", "firstn", 0, "type", "host"], ["emit"]]}}"#;
        let added = add_device(
            map,
            &NewDevice {
                weight: 0x8000,
                ..new(5, "h")
            },
        )
        .unwrap();
        let value: Value = serde_json::from_str(&added).unwrap();
        assert_eq!(value["trees"][0]["weight"], 131072 + 0x8000);
        assert_eq!(value["trees"][0]["children"][0]["weight"], 131072 + 0x8000);
        assert_eq!(
            value["trees"][0]["children"][0]["children"]
                .as_array()
                .unwrap()
                .len(),
            3
        );
        let removed: Value = serde_json::from_str(&remove_device(&added, 0).unwrap()).unwrap();
        assert_eq!(removed["trees"][0]["weight"], 0x8000 + 65536);
    }

    #[test]
    fn bad_edits_are_refused_with_the_reason() {
        assert_eq!(
            add_device(SEED_MAP, &new(3, "host9")),
            Err(MapEditError::IdTaken { id: 3 })
        );
        let taken = NewDevice {
            name: "device_2".into(),
            ..new(9, "host9")
        };
        assert!(matches!(
            add_device(SEED_MAP, &taken),
            Err(MapEditError::NameTaken { .. })
        ));
        assert!(matches!(
            add_device(SEED_MAP, &new(9, "device_1")),
            Err(MapEditError::NotABucket { .. })
        ));
        let zero = NewDevice {
            weight: 0,
            ..new(9, "host0")
        };
        assert_eq!(add_device(SEED_MAP, &zero), Err(MapEditError::ZeroWeight));
        assert_eq!(
            remove_device(SEED_MAP, 42),
            Err(MapEditError::UnknownDevice { id: 42 })
        );
        assert_eq!(remove_device("[]", 1), Err(MapEditError::Shape));
        let flat = r#"{"trees": [{"id": 0, "name": "a"}], "rules": {}}"#;
        assert!(matches!(
            add_device(flat, &new(1, "h")),
            Err(MapEditError::NoRoot { .. })
        ));
        assert_eq!(
            remove_device(flat, 0),
            Err(MapEditError::UnknownDevice { id: 0 }),
            "a tree's top node is not a device that can be removed"
        );
    }
}

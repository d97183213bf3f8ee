//! Checking a guest's answer: pure functions, no WebAssembly.
//!
//! The host never trusts a policy: each placement must name only devices of the map that
//! are in (reweight > 0), each once, at most `replicas` of them, and at least one when any
//! device is in. It does not demand exactly `min(replicas, in devices)`: failure domains
//! make fewer legitimate (`chooseleaf ... type host` with 3 hosts of 2 devices returns 3
//! devices for 4 replicas), as do rules with a fixed count or maps with several roots.
//! (Every row of the shared conformance vectors does meet the strict count.)
//!
//! The device ids come from a minimal, independent reading of the map JSON: every node
//! with an `id >= 0` anywhere under `trees` is a device.

use std::collections::HashMap;

use serde_json::Value;
use thiserror::Error;

/// 1.0 in 16.16 fixed point: the reweight of a device that has none.
const FULL_WEIGHT: u32 = 0x1_0000;

/// Why the host could not read a map's devices.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum MapProblem {
    #[error("not valid JSON: {detail}")]
    Json { detail: String },
    #[error("the map has no \"trees\" array")]
    NoTrees,
    #[error("{at} is not a JSON object")]
    NotAnObject { at: String },
    #[error("{at}.children is not an array")]
    ChildrenNotArray { at: String },
    #[error("{at}.id is missing or not an integer in the 32-bit range")]
    BadId { at: String },
}

/// Why a guest's placement was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum InvalidPlacement {
    #[error("{id} is not a device id (devices are >= 0)")]
    NotADevice { id: i32 },
    #[error("device {id} is not in the map")]
    UnknownDevice { id: u32 },
    #[error("device {id} is out (reweight 0)")]
    OutDevice { id: u32 },
    #[error("device {id} appears twice")]
    Duplicate { id: u32 },
    #[error("{count} devices for {replicas} replicas")]
    TooMany { count: usize, replicas: u32 },
    #[error("no device although {in_devices} devices are in")]
    Empty { in_devices: usize },
}

/// The devices of one map with their reweights, as far as validation needs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeviceView {
    /// `(device id, 16.16 reweight)` sorted by id: a binary search is cheaper than hashing
    /// on this per-request path.
    reweights: Vec<(u32, u32)>,
    in_devices: usize,
}

impl DeviceView {
    /// Reads the device ids of `map_json` and applies `reweights` (ids the map lacks are
    /// ignored, like the reference guest does).
    pub(crate) fn new(map_json: &str, reweights: &[(u32, u32)]) -> Result<Self, MapProblem> {
        let map: Value = serde_json::from_str(map_json).map_err(|e| MapProblem::Json {
            detail: e.to_string(),
        })?;
        let trees = map
            .get("trees")
            .and_then(Value::as_array)
            .ok_or(MapProblem::NoTrees)?;
        let mut devices = HashMap::new();
        for (i, node) in trees.iter().enumerate() {
            collect_devices(node, &format!("trees[{i}]"), &mut devices)?;
        }
        for &(device, weight) in reweights {
            if let Some(w) = devices.get_mut(&device) {
                *w = weight;
            }
        }
        let mut reweights: Vec<(u32, u32)> = devices.into_iter().collect();
        reweights.sort_unstable();
        let in_devices = reweights.iter().filter(|&&(_, w)| w > 0).count();
        Ok(Self {
            reweights,
            in_devices,
        })
    }

    fn reweight(&self, device: u32) -> Option<u32> {
        let index = self
            .reweights
            .binary_search_by_key(&device, |&(id, _)| id)
            .ok()?;
        Some(self.reweights[index].1)
    }
}

fn collect_devices(
    node: &Value,
    at: &str,
    devices: &mut HashMap<u32, u32>,
) -> Result<(), MapProblem> {
    let obj = node
        .as_object()
        .ok_or_else(|| MapProblem::NotAnObject { at: at.to_owned() })?;
    let id = obj
        .get("id")
        .and_then(Value::as_i64)
        .and_then(|id| i32::try_from(id).ok())
        .ok_or_else(|| MapProblem::BadId { at: at.to_owned() })?;
    if let Ok(device) = u32::try_from(id) {
        devices.insert(device, FULL_WEIGHT);
    }
    match obj.get("children") {
        None => Ok(()),
        Some(Value::Array(children)) => children.iter().enumerate().try_for_each(|(i, child)| {
            collect_devices(child, &format!("{at}.children[{i}]"), devices)
        }),
        Some(_) => Err(MapProblem::ChildrenNotArray { at: at.to_owned() }),
    }
}

/// Checks a guest's answer for `replicas` replicas and converts it to device ids.
pub(crate) fn validate_placement(
    view: &DeviceView,
    placed: &[i32],
    replicas: u32,
) -> Result<Vec<u32>, InvalidPlacement> {
    if placed.len() > replicas as usize {
        return Err(InvalidPlacement::TooMany {
            count: placed.len(),
            replicas,
        });
    }
    if placed.is_empty() && replicas > 0 && view.in_devices > 0 {
        return Err(InvalidPlacement::Empty {
            in_devices: view.in_devices,
        });
    }
    let mut devices = Vec::with_capacity(placed.len());
    for &id in placed {
        let device = u32::try_from(id).map_err(|_| InvalidPlacement::NotADevice { id })?;
        match view.reweight(device) {
            None => return Err(InvalidPlacement::UnknownDevice { id: device }),
            Some(0) => return Err(InvalidPlacement::OutDevice { id: device }),
            Some(_) => {}
        }
        // Replica counts are tiny: a linear scan beats hashing.
        if devices.contains(&device) {
            return Err(InvalidPlacement::Duplicate { id: device });
        }
        devices.push(device);
    }
    Ok(devices)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const MAP: &str = r#"{"trees": [{"type": "root", "name": "r", "id": -1, "children": [
        {"type": "host", "name": "h0", "id": -2, "children": [{"id": 0, "name": "d0"}, {"id": 1, "name": "d1"}]},
        {"type": "host", "name": "h1", "id": -3, "children": [{"id": 2, "name": "d2"}]}]}],
        "rules": {}}"#;

    fn view(reweights: &[(u32, u32)]) -> DeviceView {
        DeviceView::new(MAP, reweights).unwrap()
    }

    #[test]
    fn accepts_valid_placements() {
        let v = view(&[]);
        assert_eq!(validate_placement(&v, &[2, 0, 1], 3), Ok(vec![2, 0, 1]));
        assert_eq!(
            validate_placement(&v, &[1], 3),
            Ok(vec![1]),
            "fewer than min(replicas, in) is allowed"
        );
        assert_eq!(validate_placement(&v, &[], 0), Ok(vec![]));
        let partial = view(&[(1, 0x8000)]);
        assert_eq!(
            validate_placement(&partial, &[1], 1),
            Ok(vec![1]),
            "a partly-in device is in"
        );
    }

    #[test]
    fn refuses_invalid_placements() {
        let v = view(&[(1, 0), (77, 0)]);
        let cases: [(&[i32], u32, InvalidPlacement); 6] = [
            (&[-2], 3, InvalidPlacement::NotADevice { id: -2 }),
            (&[9], 3, InvalidPlacement::UnknownDevice { id: 9 }),
            (&[1], 3, InvalidPlacement::OutDevice { id: 1 }),
            (&[0, 2, 0], 3, InvalidPlacement::Duplicate { id: 0 }),
            (
                &[0, 2],
                1,
                InvalidPlacement::TooMany {
                    count: 2,
                    replicas: 1,
                },
            ),
            (&[], 2, InvalidPlacement::Empty { in_devices: 2 }),
        ];
        for (placed, replicas, expected) in cases {
            assert_eq!(validate_placement(&v, placed, replicas), Err(expected));
        }
    }

    #[test]
    fn empty_is_fine_when_every_device_is_out() {
        let v = view(&[(0, 0), (1, 0), (2, 0)]);
        assert_eq!(validate_placement(&v, &[], 3), Ok(vec![]));
    }

    #[test]
    fn malformed_maps_are_refused() {
        let cases = [
            ("nope", "not valid JSON"),
            ("{}", "no \"trees\""),
            (r#"{"trees": [1]}"#, "trees[0] is not a JSON object"),
            (r#"{"trees": [{"name": "x"}]}"#, "trees[0].id is missing"),
            (
                r#"{"trees": [{"id": 4294967296}]}"#,
                "trees[0].id is missing",
            ),
            (
                r#"{"trees": [{"id": -1, "children": {}}]}"#,
                "trees[0].children is not an array",
            ),
            (
                r#"{"trees": [{"id": -1, "children": [{"id": "0"}]}]}"#,
                "trees[0].children[0].id",
            ),
        ];
        for (map, expected) in cases {
            let problem = DeviceView::new(map, &[]).unwrap_err().to_string();
            assert!(problem.contains(expected), "{map}: {problem}");
        }
    }
}

//! The CRUSH map model and its parser for the python-crush JSON format.
//!
//! ```text
//! { "trees": [bucket | device, ...],              roots, children keep their JSON order
//!   "rules": { name: [step, ...], ... },          see `rule`
//!   "tunables": { name: integer, ... } }          optional, defaults = "optimal" profile
//! bucket = { "type", "name", "id" < 0, "algorithm"? = "straw2", "weight"?, "children"? }
//! device = { "id" >= 0, "name", "weight"? = 65536 }
//! ```
//! Weights are 16.16 fixed point integers (65536 = 1.0); a bucket without a weight weighs
//! the sum of its children. Type names are numbered by first appearance (pre-order),
//! devices are type 0; the numbers only serve to match `type X` in rules.
//!
//! Items are stored densely (devices and buckets indexed by position, never by id) so a
//! hostile id such as `-2147483648` cannot make the parser allocate a huge table.

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::error::MapError;
use crate::rule::{Rule, Tunables, parse_rules, parse_tunables};

/// Largest device id: `0x7ffffffe` and `0x7fffffff` are CRUSH's "undefined"/"none" markers.
const MAX_DEVICE_ID: i64 = 0x7fff_fffd;
/// The default device weight, 1.0 in 16.16 fixed point.
pub(crate) const WEIGHT_ONE: u32 = 0x1_0000;

/// What an item of the hierarchy is, by dense index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    Device(usize),
    Bucket(usize),
}

/// One child of a bucket (or a root): its CRUSH id, its weight in this bucket and what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Child {
    pub(crate) id: i32,
    pub(crate) weight: u32,
    pub(crate) target: Target,
}

/// A straw2 bucket.
#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    pub(crate) name: String,
    pub(crate) type_id: u32,
    pub(crate) children: Vec<Child>,
}

/// A device (leaf). A device may appear under several buckets; it is stored once.
#[derive(Debug, Clone)]
pub(crate) struct Device {
    pub(crate) id: i32,
    pub(crate) name: String,
}

/// A parsed, validated CRUSH map.
#[derive(Debug, Clone)]
pub struct CrushMap {
    pub(crate) buckets: Vec<Bucket>,
    pub(crate) devices: Vec<Device>,
    pub(crate) rules: Vec<Rule>,
    pub(crate) tunables: Tunables,
    /// Device id -> dense index, to apply reweights.
    pub(crate) device_by_id: HashMap<i32, usize>,
}

impl CrushMap {
    /// Parses and validates a map in python-crush JSON form.
    ///
    /// # Errors
    /// [`MapError`] naming the first problem found: invalid JSON, a missing or mistyped field,
    /// an unsupported feature (non-straw2 buckets, references, `choose_args`), a bad id or
    /// weight, a duplicate, or a malformed rule or tunable.
    pub fn from_json(text: &str) -> Result<Self, MapError> {
        let value: Value = serde_json::from_str(text).map_err(|e| MapError::Json {
            detail: e.to_string(),
        })?;
        let top = as_object(&value, "map")?;
        check_fields(top, "map", &["trees", "rules", "tunables"])?;
        let trees = as_array(required(top, "map", "trees")?, "trees")?;
        let mut tree = TreeBuilder::default();
        for (i, node) in trees.iter().enumerate() {
            tree.node(node, &format!("trees[{i}]"))?;
        }
        let tunables = parse_tunables(top.get("tunables"))?;
        let rules = parse_rules(required(top, "map", "rules")?, &tree.names())?;
        Ok(tree.finish(rules, tunables))
    }

    /// The ids of every device of the map, in order of first appearance.
    pub fn device_ids(&self) -> impl Iterator<Item = i32> + '_ {
        self.devices.iter().map(|d| d.id)
    }

    /// The rule names, sorted.
    pub fn rule_names(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| r.name.as_str())
    }

    /// Index of the rule named `name`, or of the only rule when `name` is `None`.
    ///
    /// # Errors
    /// [`MapError::RuleNotFound`] or, without a name, [`MapError::AmbiguousRule`] when the map
    /// does not have exactly one rule.
    pub(crate) fn rule_index(&self, name: Option<&str>) -> Result<usize, MapError> {
        let available = || self.rule_names().collect::<Vec<_>>().join(", ");
        match name {
            Some(name) => self
                .rules
                .iter()
                .position(|r| r.name == name)
                .ok_or_else(|| MapError::RuleNotFound {
                    name: name.to_owned(),
                    available: available(),
                }),
            None if self.rules.len() == 1 => Ok(0),
            None => Err(MapError::AmbiguousRule {
                count: self.rules.len(),
                available: available(),
            }),
        }
    }

    /// CRUSH type of a target: 0 for devices.
    #[inline]
    pub(crate) fn type_of(&self, target: Target) -> u32 {
        match target {
            Target::Device(_) => 0,
            Target::Bucket(i) => self.buckets[i].type_id,
        }
    }
}

/// Name lookups the rule parser needs.
pub(crate) struct Names<'a> {
    pub(crate) items: &'a HashMap<String, Child>,
    pub(crate) types: &'a HashMap<String, u32>,
}

/// Accumulates the hierarchy while walking the JSON trees.
#[derive(Default)]
struct TreeBuilder {
    buckets: Vec<Bucket>,
    devices: Vec<Device>,
    bucket_by_id: HashMap<i32, usize>,
    device_by_id: HashMap<i32, usize>,
    /// Every named item, as a `take` step would see it (weight is irrelevant there).
    by_name: HashMap<String, Child>,
    types: HashMap<String, u32>,
}

impl TreeBuilder {
    fn names(&self) -> Names<'_> {
        Names {
            items: &self.by_name,
            types: &self.types,
        }
    }

    fn finish(self, rules: Vec<Rule>, tunables: Tunables) -> CrushMap {
        CrushMap {
            buckets: self.buckets,
            devices: self.devices,
            rules,
            tunables,
            device_by_id: self.device_by_id,
        }
    }

    /// Parses one node (device or bucket) and returns it as a child of its parent.
    fn node(&mut self, value: &Value, at: &str) -> Result<Child, MapError> {
        let obj = as_object(value, at)?;
        if obj.contains_key("reference_id") {
            return Err(MapError::Unsupported {
                at: at.to_owned(),
                feature: "reference_id",
            });
        }
        let id = as_i64(required(obj, at, "id")?, &format!("{at}.id"))?;
        if id >= 0 {
            self.device(obj, id, at)
        } else {
            self.bucket(obj, id, at)
        }
    }

    fn device(&mut self, obj: &Map<String, Value>, id: i64, at: &str) -> Result<Child, MapError> {
        check_fields(obj, at, &["id", "name", "weight", "children"])?;
        let id = i32::try_from(id)
            .ok()
            .filter(|&id| i64::from(id) <= MAX_DEVICE_ID)
            .ok_or_else(|| MapError::BadId {
                at: at.to_owned(),
                id,
                expected: "devices are 0..=2147483645",
            })?;
        if obj
            .get("children")
            .is_some_and(|c| !c.as_array().is_some_and(Vec::is_empty))
        {
            return Err(MapError::DeviceWithChildren {
                at: at.to_owned(),
                id,
            });
        }
        let name = as_str(required(obj, at, "name")?, &format!("{at}.name"))?;
        let weight = weight_field(obj, at)?.unwrap_or(WEIGHT_ONE);
        let index = self.device_index(id, name, at)?;
        Ok(Child {
            id,
            weight,
            target: Target::Device(index),
        })
    }

    /// Dense index of device `id`, registering it on first sight.
    fn device_index(&mut self, id: i32, name: &str, at: &str) -> Result<usize, MapError> {
        if let Some(&index) = self.device_by_id.get(&id) {
            let first = &self.devices[index].name;
            if first != name {
                return Err(MapError::DeviceNameConflict {
                    at: at.to_owned(),
                    id,
                    first: first.clone(),
                    second: name.to_owned(),
                });
            }
            return Ok(index);
        }
        let index = self.devices.len();
        self.claim_name(
            name,
            Child {
                id,
                weight: WEIGHT_ONE,
                target: Target::Device(index),
            },
            at,
        )?;
        self.devices.push(Device {
            id,
            name: name.to_owned(),
        });
        self.device_by_id.insert(id, index);
        Ok(index)
    }

    fn bucket(&mut self, obj: &Map<String, Value>, id: i64, at: &str) -> Result<Child, MapError> {
        check_fields(
            obj,
            at,
            &["id", "name", "type", "algorithm", "weight", "children"],
        )?;
        let id = i32::try_from(id).map_err(|_| MapError::BadId {
            at: at.to_owned(),
            id,
            expected: "buckets are -2147483648..=-1",
        })?;
        let name = as_str(required(obj, at, "name")?, &format!("{at}.name"))?;
        if let Some(algorithm) = obj.get("algorithm") {
            let algorithm = as_str(algorithm, &format!("{at}.algorithm"))?;
            if algorithm != "straw2" {
                let algorithm = algorithm.to_owned();
                return Err(MapError::UnsupportedAlgorithm {
                    at: at.to_owned(),
                    algorithm,
                });
            }
        }
        let type_name = as_str(required(obj, at, "type")?, &format!("{at}.type"))?;
        let type_id = self.type_id(type_name);
        let children = self.children(obj, at)?;
        let weight = match weight_field(obj, at)? {
            Some(weight) => weight,
            None => sum_weights(&children, at)?,
        };
        // Checked after the children so that a descendant reusing this id is caught too.
        if let Some(&other) = self.bucket_by_id.get(&id) {
            let other = self.buckets[other].name.clone();
            return Err(MapError::DuplicateBucketId {
                at: at.to_owned(),
                id,
                other,
            });
        }
        let index = self.buckets.len();
        let child = Child {
            id,
            weight,
            target: Target::Bucket(index),
        };
        self.claim_name(name, child, at)?;
        self.buckets.push(Bucket {
            name: name.to_owned(),
            type_id,
            children,
        });
        self.bucket_by_id.insert(id, index);
        Ok(child)
    }

    fn children(&mut self, obj: &Map<String, Value>, at: &str) -> Result<Vec<Child>, MapError> {
        let Some(children) = obj.get("children") else {
            return Ok(Vec::new());
        };
        let children = as_array(children, &format!("{at}.children"))?;
        children
            .iter()
            .enumerate()
            .map(|(i, child)| self.node(child, &format!("{at}.children[{i}]")))
            .collect()
    }

    /// Type ids by first appearance; 0 is reserved for devices.
    fn type_id(&mut self, name: &str) -> u32 {
        let next = u32::try_from(self.types.len() + 1).unwrap_or(u32::MAX);
        *self.types.entry(name.to_owned()).or_insert(next)
    }

    fn claim_name(&mut self, name: &str, child: Child, at: &str) -> Result<(), MapError> {
        if self.by_name.insert(name.to_owned(), child).is_some() {
            return Err(MapError::DuplicateName {
                at: at.to_owned(),
                name: name.to_owned(),
            });
        }
        Ok(())
    }
}

fn sum_weights(children: &[Child], at: &str) -> Result<u32, MapError> {
    children
        .iter()
        .try_fold(0_u32, |sum, c| sum.checked_add(c.weight))
        .ok_or_else(|| MapError::WeightOverflow { at: at.to_owned() })
}

/// The optional `weight` field as 16.16 fixed point.
fn weight_field(obj: &Map<String, Value>, at: &str) -> Result<Option<u32>, MapError> {
    let Some(value) = obj.get("weight") else {
        return Ok(None);
    };
    value
        .as_u64()
        .and_then(|w| u32::try_from(w).ok())
        .map(Some)
        .ok_or_else(|| MapError::BadWeight {
            at: at.to_owned(),
            value: value.to_string(),
        })
}

/// Refuses fields outside `allowed`, with a dedicated message for `choose_args`.
pub(crate) fn check_fields(
    obj: &Map<String, Value>,
    at: &str,
    allowed: &[&str],
) -> Result<(), MapError> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) if k == "choose_args" => Err(MapError::Unsupported {
            at: at.to_owned(),
            feature: "choose_args",
        }),
        Some(k) => Err(MapError::UnknownField {
            at: at.to_owned(),
            field: k.clone(),
        }),
        None => Ok(()),
    }
}

pub(crate) fn required<'v>(
    obj: &'v Map<String, Value>,
    at: &str,
    field: &'static str,
) -> Result<&'v Value, MapError> {
    obj.get(field).ok_or_else(|| MapError::MissingField {
        at: at.to_owned(),
        field,
    })
}

pub(crate) fn as_object<'v>(
    value: &'v Value,
    at: &str,
) -> Result<&'v Map<String, Value>, MapError> {
    value.as_object().ok_or_else(|| wrong(at, "a JSON object"))
}

pub(crate) fn as_array<'v>(value: &'v Value, at: &str) -> Result<&'v Vec<Value>, MapError> {
    value.as_array().ok_or_else(|| wrong(at, "a JSON array"))
}

pub(crate) fn as_str<'v>(value: &'v Value, at: &str) -> Result<&'v str, MapError> {
    value.as_str().ok_or_else(|| wrong(at, "a string"))
}

pub(crate) fn as_i64(value: &Value, at: &str) -> Result<i64, MapError> {
    value.as_i64().ok_or_else(|| wrong(at, "an integer"))
}

fn wrong(at: &str, expected: &'static str) -> MapError {
    MapError::WrongType {
        at: at.to_owned(),
        expected,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const SMALL: &str = r#"{
        "trees": [{"type": "root", "name": "r", "id": -1, "children": [
            {"type": "host", "name": "h0", "id": -2, "children": [
                {"id": 0, "name": "d0"}, {"id": 1, "name": "d1", "weight": 131072}]},
            {"type": "host", "name": "h1", "id": -3, "weight": 5, "children": [
                {"id": 2, "name": "d2"}]}]}],
        "rules": {"data": [["take", "r"], ["chooseleaf", "firstn", 0, "type", "host"], ["emit"]]}
    }"#;

    fn err(text: &str) -> String {
        match CrushMap::from_json(text) {
            Ok(_) => panic!("map unexpectedly accepted: {text}"),
            Err(e) => e.to_string(),
        }
    }

    fn with_trees(trees: &str) -> String {
        format!(r#"{{"trees": {trees}, "rules": {{}}}}"#)
    }

    #[test]
    fn parses_weights_types_and_devices() {
        let map = CrushMap::from_json(SMALL).unwrap();
        assert_eq!(map.device_ids().collect::<Vec<_>>(), vec![0, 1, 2]);
        let bucket = |name: &str| map.buckets.iter().find(|b| b.name == name).unwrap();
        let root = bucket("r");
        let weights: Vec<u32> = root.children.iter().map(|c| c.weight).collect();
        assert_eq!(weights, vec![3 * 65536, 5], "sum bottom-up unless given");
        assert_eq!(root.type_id, 1);
        assert_eq!(bucket("h0").type_id, 2);
        assert_eq!(map.rule_index(None).unwrap(), 0);
    }

    #[test]
    fn malformed_maps_name_the_problem() {
        let cases = [
            ("not json", "not valid JSON"),
            ("[]", "map must be a JSON object"),
            (r#"{"rules": {}}"#, "lacks the mandatory field \"trees\""),
            (
                r#"{"trees": [], "rules": {}, "extra": 1}"#,
                "unknown field \"extra\"",
            ),
            (
                r#"{"trees": [], "rules": {}, "choose_args": {}}"#,
                "choose_args is not supported",
            ),
            (
                &with_trees(r#"[{"name": "x"}]"#),
                "trees[0] lacks the mandatory field \"id\"",
            ),
            (
                &with_trees(r#"[{"id": 1.5, "name": "x"}]"#),
                "trees[0].id must be an integer",
            ),
            (
                &with_trees(r#"[{"id": 2147483647, "name": "x"}]"#),
                "out of range",
            ),
            (
                &with_trees(r#"[{"id": -1, "name": "b"}]"#),
                "mandatory field \"type\"",
            ),
            (
                &with_trees(r#"[{"id": -1, "name": "b", "type": "t", "algorithm": "straw"}]"#),
                "algorithm \"straw\" is not supported (only straw2)",
            ),
            (
                &with_trees(r#"[{"id": 0, "name": "d", "weight": 1.0}]"#),
                "weight 1.0 is not",
            ),
            (
                &with_trees(r#"[{"id": 0, "name": "d", "weight": -1}]"#),
                "weight -1 is not",
            ),
            (
                &with_trees(r#"[{"id": 0, "name": "d"}, {"id": 0, "name": "e"}]"#),
                "named both \"d\" and \"e\"",
            ),
            (
                &with_trees(r#"[{"id": 0, "name": "d"}, {"id": 1, "name": "d"}]"#),
                "name \"d\" is already used",
            ),
            (
                &with_trees(
                    r#"[{"id": -1, "name": "a", "type": "t"}, {"id": -1, "name": "b", "type": "t"}]"#,
                ),
                "bucket id -1 is already used by bucket \"a\"",
            ),
            (
                &with_trees(r#"[{"id": 0, "name": "d", "children": [{"id": 1, "name": "e"}]}]"#),
                "device 0 cannot have children",
            ),
            (
                &with_trees(r#"[{"reference_id": -1}]"#),
                "reference_id is not supported",
            ),
            (
                &with_trees(
                    r#"[{"id": -1, "name": "b", "type": "t", "children": [
                        {"id": 0, "name": "d", "weight": 4294967295},
                        {"id": 1, "name": "e", "weight": 1}]}]"#,
                ),
                "overflows 32 bits",
            ),
            (
                &with_trees(r#"[{"id": -1, "name": "b", "type": "t", "children": {}}]"#),
                "array",
            ),
        ];
        for (text, expected) in cases {
            let message = err(text);
            assert!(
                message.contains(expected),
                "{text}: got {message:?}, want {expected:?}"
            );
        }
    }

    #[test]
    fn a_device_may_appear_under_two_buckets() {
        let text = with_trees(
            r#"[{"id": -1, "name": "a", "type": "t", "children": [{"id": 0, "name": "d"}]},
                {"id": -2, "name": "b", "type": "t", "children": [{"id": 0, "name": "d"}]}]"#,
        );
        let map = CrushMap::from_json(&text).unwrap();
        assert_eq!(map.devices.len(), 1);
    }

    #[test]
    fn deeply_nested_json_is_an_error_not_a_stack_overflow() {
        let text = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(err(&text).contains("recursion limit"));
    }
}

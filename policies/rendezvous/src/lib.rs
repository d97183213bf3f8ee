//! A second placement policy of cartdb: weighted rendezvous hashing (highest random weight)
//! with at most one replica per failure domain.
//!
//! For a placement seed `x`, every device that is in draws a score from
//! `rjenkins1(x, device)`: `ln(u) / w`, with `u` the hash mapped into (0, 1] and `w` the
//! device's CRUSH weight times its reweight. Devices are taken in score order, skipping any
//! whose failure domain (its ancestor bucket of the rule's `chooseleaf` type, `host` in the
//! seed map) already holds a replica. This is the weighted form of Thaler and Ravishankar's
//! HRW (the `-ln(u)/w` draw that makes a device's share proportional to its weight), as
//! Tail-at-Scale-era stores and Ceph's own `straw2` use it; straw2 draws the same way per
//! bucket, level by level, while this policy draws once over all devices. What it gives:
//!
//! - a device joining or leaving moves only the placements that gain or lose it (the
//!   minimal disruption of rendezvous hashing), without CRUSH's hierarchy;
//! - the same map JSON, rules and reweights as the CRUSH policy, so the two can be swapped
//!   on a running cluster.
//!
//! Built for `wasm32-unknown-unknown` it is the `cartdb:policy/placement-policy` component;
//! on the host it is a plain library, unit-tested natively.

#[cfg(target_arch = "wasm32")]
mod guest;

use cartdb_model::rjenkins::hash2;
use serde_json::Value;

/// The policy name the component reports.
pub const POLICY_NAME: &str = "rendezvous-hrw";

/// Most replicas one placement returns.
pub const MAX_REPLICAS: u32 = 16;

/// 1.0 in 16.16 fixed point: a device's default weight and the "fully in" reweight.
const WEIGHT_ONE: u32 = 0x10000;

/// Why a map could not be loaded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MapError {
    #[error("the map is not JSON: {0}")]
    Json(String),
    #[error("{0}")]
    Shape(String),
    #[error("rule {0:?} is not in the map")]
    UnknownRule(String),
    #[error("the map has {0} rules; name one")]
    AmbiguousRule(usize),
    #[error("reweight for device {0}, which is not in the map")]
    UnknownReweight(i32),
}

/// One device that can hold replicas.
#[derive(Clone, Debug, PartialEq)]
struct Candidate {
    id: u32,
    /// Index of its failure domain.
    domain: usize,
    /// CRUSH weight times reweight, as a fraction of 1.0; above 0.
    weight: f64,
}

/// A loaded map, rule and reweights.
#[derive(Clone, Debug, PartialEq)]
pub struct Placer {
    candidates: Vec<Candidate>,
}

/// Loads `map_json` (python-crush JSON, as the CRUSH policy reads it), the rule named
/// `rule` (or the only one) and `reweights` (16.16: 0 out, 0x10000 in).
///
/// The rule's `take` names the root whose devices are candidates; its `chooseleaf` (or
/// `choose`) step's `type` names the failure domain. A rule without them takes every tree
/// and uses each device's parent bucket.
///
/// # Errors
/// [`MapError`] for malformed JSON, an unknown or ambiguous rule, or a reweight naming a
/// device that is not in the map.
pub fn load(
    map_json: &str,
    rule: Option<&str>,
    reweights: &[(i32, u32)],
) -> Result<Placer, MapError> {
    let map: Value = serde_json::from_str(map_json).map_err(|e| MapError::Json(e.to_string()))?;
    let trees = map
        .get("trees")
        .and_then(Value::as_array)
        .ok_or_else(|| MapError::Shape("map.trees must be an array".to_owned()))?;
    let (root, domain_type) = rule_steps(&map, rule)?;
    let mut walk = Walk::default();
    for tree in trees {
        let taken = root.as_deref().is_none_or(|r| tree_name(tree) == Some(r));
        walk.visit(
            tree,
            taken,
            root.as_deref(),
            domain_type.as_deref(),
            None,
            0,
        );
    }
    let mut candidates = Vec::new();
    for (id, domain, weight) in walk.devices {
        let reweight = reweights
            .iter()
            .find(|(d, _)| u32::try_from(*d).ok() == Some(id))
            .map_or(WEIGHT_ONE, |(_, w)| *w)
            .min(WEIGHT_ONE);
        let weight =
            f64::from(weight) / f64::from(WEIGHT_ONE) * f64::from(reweight) / f64::from(WEIGHT_ONE);
        if weight > 0.0 {
            candidates.push(Candidate { id, domain, weight });
        }
    }
    if let Some(&(device, _)) = reweights.iter().find(|(d, _)| {
        !walk
            .all_ids
            .contains(&u32::try_from(*d).unwrap_or(u32::MAX))
    }) {
        return Err(MapError::UnknownReweight(device));
    }
    Ok(Placer { candidates })
}

fn tree_name(node: &Value) -> Option<&str> {
    node.get("name").and_then(Value::as_str)
}

/// The rule's root (`take`) and failure-domain type (`chooseleaf`/`choose` ... `type` T).
fn rule_steps(
    map: &Value,
    rule: Option<&str>,
) -> Result<(Option<String>, Option<String>), MapError> {
    let Some(rules) = map.get("rules").and_then(Value::as_object) else {
        return Ok((None, None));
    };
    let steps = match rule {
        Some(name) => rules
            .get(name)
            .ok_or_else(|| MapError::UnknownRule(name.to_owned()))?,
        None if rules.len() == 1 => rules.values().next().unwrap_or(&Value::Null),
        None if rules.is_empty() => return Ok((None, None)),
        None => return Err(MapError::AmbiguousRule(rules.len())),
    };
    let mut root = None;
    let mut domain = None;
    for step in steps.as_array().into_iter().flatten() {
        let words: Vec<&Value> = step.as_array().into_iter().flatten().collect();
        match words.first().and_then(|w| w.as_str()) {
            Some("take") => root = words.get(1).and_then(|w| w.as_str()).map(str::to_owned),
            Some("chooseleaf" | "choose") => {
                let at = words.iter().position(|w| w.as_str() == Some("type"));
                domain = at
                    .and_then(|i| words.get(i + 1))
                    .and_then(|w| w.as_str())
                    .map(str::to_owned);
            }
            _ => {}
        }
    }
    Ok((root, domain))
}

/// What walking the trees found.
#[derive(Default)]
struct Walk {
    /// (device id, failure domain index, weight 16.16) of the devices under the root.
    devices: Vec<(u32, usize, u32)>,
    /// Every device id of the map.
    all_ids: Vec<u32>,
    domains: usize,
}

impl Walk {
    /// Visits `node`; `taken`: under the rule's root; `domain`: the failure domain index of
    /// the nearest ancestor of the domain type.
    fn visit(
        &mut self,
        node: &Value,
        taken: bool,
        root: Option<&str>,
        domain_type: Option<&str>,
        domain: Option<usize>,
        depth: usize,
    ) {
        if depth > 32 {
            return;
        }
        let Some(id) = node.get("id").and_then(Value::as_i64) else {
            return;
        };
        let taken = taken || root.is_some_and(|r| tree_name(node) == Some(r));
        if id >= 0 {
            let Ok(id) = u32::try_from(id) else { return };
            self.all_ids.push(id);
            if taken {
                let weight = node
                    .get("weight")
                    .and_then(Value::as_u64)
                    .and_then(|w| u32::try_from(w).ok())
                    .unwrap_or(WEIGHT_ONE);
                let domain = domain.unwrap_or_else(|| self.new_domain());
                self.devices.push((id, domain, weight));
            }
            return;
        }
        let children = node.get("children").and_then(Value::as_array);
        let is_domain = match domain_type {
            Some(t) => node.get("type").and_then(Value::as_str) == Some(t),
            // No domain type: a bucket whose children are devices is a domain.
            None => children.is_some_and(|c| {
                c.iter().any(|child| {
                    child
                        .get("id")
                        .and_then(Value::as_i64)
                        .is_some_and(|i| i >= 0)
                })
            }),
        };
        let domain = if is_domain && taken {
            Some(self.new_domain())
        } else {
            domain
        };
        for child in children.into_iter().flatten() {
            self.visit(child, taken, root, domain_type, domain, depth + 1);
        }
    }

    fn new_domain(&mut self) -> usize {
        self.domains += 1;
        self.domains
    }
}

impl Placer {
    /// Up to `replicas` devices for placement seed `x`, primary first, one per failure
    /// domain; fewer when there are fewer domains with a device in.
    pub fn place(&self, x: u32, replicas: u32) -> Vec<u32> {
        let mut scored: Vec<(f64, u32, usize)> = self
            .candidates
            .iter()
            .map(|c| (score(x, c.id, c.weight), c.id, c.domain))
            .collect();
        // Highest score first; equal scores (vanishingly rare) by device id.
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let wanted = replicas.min(MAX_REPLICAS) as usize;
        let mut chosen: Vec<u32> = Vec::with_capacity(wanted);
        let mut domains: Vec<usize> = Vec::with_capacity(wanted);
        for (_, id, domain) in scored {
            if chosen.len() == wanted {
                break;
            }
            if !domains.contains(&domain) {
                chosen.push(id);
                domains.push(domain);
            }
        }
        chosen
    }
}

/// The weighted rendezvous draw: `ln(u) / weight`, `u` in (0, 1]; higher wins.
fn score(x: u32, device: u32, weight: f64) -> f64 {
    let u = (f64::from(hash2(x, device)) + 1.0) / 4_294_967_296.0;
    u.ln() / weight
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    const SEED_MAP: &str = include_str!("../../../config/crush-map.json");

    fn seven_hosts() -> String {
        SEED_MAP.replace(
            r#"{"type": "host", "name": "host5", "id": -6, "children": [{"id": 6, "name": "device_6", "weight": 65536}]}"#,
            r#"{"type": "host", "name": "host5", "id": -6, "children": [{"id": 6, "name": "device_6", "weight": 65536}]},
           {"type": "host", "name": "host6", "id": -7, "children": [{"id": 7, "name": "device_7", "weight": 65536}]}"#,
        )
    }

    #[test]
    fn placements_are_distinct_hosts_and_deterministic() {
        let placer = load(SEED_MAP, None, &[]).unwrap();
        assert_eq!(placer.candidates.len(), 6);
        for x in 0..2000 {
            let up = placer.place(x, 3);
            assert_eq!(up.len(), 3, "x {x}: {up:?}");
            let mut sorted = up.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), 3);
            assert_eq!(placer.place(x, 3), up);
            assert!(up.iter().all(|d| (1..=6).contains(d)));
        }
        assert_eq!(placer.place(1, 10).len(), 6, "one per host, six hosts");
        assert_eq!(placer.place(1, 0), Vec::<u32>::new());
    }

    #[test]
    fn shares_follow_weights_and_out_devices_get_nothing() {
        let placer = load(SEED_MAP, Some("data"), &[(3, 0), (4, 0x8000)]).unwrap();
        let mut primaries = [0u32; 7];
        for x in 0..60_000 {
            let up = placer.place(x, 3);
            assert!(!up.contains(&3));
            primaries[up[0] as usize] += 1;
        }
        // Four devices of weight 1 and one of 0.5 share the primaries: 1/4.5 each, 0.5/4.5.
        let share = |d: usize| f64::from(primaries[d]) / 60_000.0;
        assert!((share(1) - 1.0 / 4.5).abs() < 0.01, "{primaries:?}");
        assert!((share(4) - 0.5 / 4.5).abs() < 0.01, "{primaries:?}");
    }

    #[test]
    fn a_new_device_moves_only_what_it_takes() {
        let six = load(SEED_MAP, None, &[]).unwrap();
        let seven = load(&seven_hosts(), None, &[]).unwrap();
        let mut moved = 0;
        for x in 0..20_000 {
            let (before, after) = (six.place(x, 3), seven.place(x, 3));
            if before != after {
                moved += 1;
                // Only device 7 came in; everything else kept its order.
                let kept: Vec<u32> = after.iter().copied().filter(|d| *d != 7).collect();
                assert!(after.contains(&7), "x {x}: {before:?} -> {after:?}");
                assert_eq!(kept, before[..kept.len()], "x {x}: {before:?} -> {after:?}");
            }
        }
        // Device 7 is in a set of 3 of 7 equal devices: 3/7 of the sets.
        let share = f64::from(moved) / 20_000.0;
        assert!((share - 3.0 / 7.0).abs() < 0.02, "{share}");
    }

    #[test]
    fn bad_maps_and_rules_are_refused() {
        assert!(matches!(load("nope", None, &[]), Err(MapError::Json(_))));
        assert!(matches!(load("{}", None, &[]), Err(MapError::Shape(_))));
        assert_eq!(
            load(SEED_MAP, Some("other"), &[]),
            Err(MapError::UnknownRule("other".to_owned()))
        );
        assert_eq!(
            load(SEED_MAP, None, &[(42, 0)]),
            Err(MapError::UnknownReweight(42))
        );
    }
}

//! Which replicas a cart read asks, and what their answers add up to. Pure; no sockets.
//!
//! # The read quorum of `list_all`
//! The replicas of an item are the devices the directory recorded for it (every device that
//! acknowledged a write of it) plus the devices its current placement chooses. An item counts
//! only when at least R of those replicas answered (all of them, in the unusual case that an
//! item has fewer than R). A device that is down does **not** count: a read that heard from
//! fewer than R replicas cannot be sure it saw every acknowledged write, because only
//! `R + W > RF` guarantees that a read quorum meets every write quorum. One item short of its
//! quorum fails the whole read with `QuorumNotReached`, rather than returning a cart that
//! silently lacks it.
//!
//! When the directory knows nothing of the user, the read asks every live device, so that an
//! item recorded by the other gateway a moment ago (before this gateway's directory cache
//! heard of it) is still found. That broadcast must then hear from all but at most W - 1 live
//! devices: a write acknowledged by W devices cannot hide among fewer.
//!
//! Items found in answers that the plan did not know of get their replicas from the current
//! placement ([`ReadPlan::unknown_products`]); the caller asks those replicas too. The read
//! stops waiting once [`ReadPlan::is_decided`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use cartdb_core::cart::{DeviceId, ItemState};
use cartdb_core::merge::merge_replies;

/// The replicas a cart read asks, per item.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadPlan {
    replicas_of: BTreeMap<String, BTreeSet<DeviceId>>,
    /// Devices asked regardless of items (the broadcast to every live device).
    broadcast: BTreeSet<DeviceId>,
}

impl ReadPlan {
    /// A plan for the items the directory knows of; `None` when it knows of none.
    pub fn from_directory(items: BTreeMap<String, BTreeSet<DeviceId>>) -> Option<Self> {
        (!items.is_empty()).then(|| Self {
            replicas_of: items,
            broadcast: BTreeSet::new(),
        })
    }

    /// A plan that asks every live device, for a user the directory knows nothing of.
    pub fn broadcast(live: impl IntoIterator<Item = DeviceId>) -> Self {
        Self {
            replicas_of: BTreeMap::new(),
            broadcast: live.into_iter().collect(),
        }
    }

    /// Adds replicas (for example the current placement) to `product`'s replica set.
    pub fn add_replicas(&mut self, product: &str, devices: impl IntoIterator<Item = DeviceId>) {
        match self.replicas_of.get_mut(product) {
            Some(set) => set.extend(devices),
            None => {
                self.replicas_of
                    .insert(product.to_owned(), devices.into_iter().collect());
            }
        }
    }

    /// The products the plan knows of.
    pub fn products(&self) -> impl Iterator<Item = &str> {
        self.replicas_of.keys().map(String::as_str)
    }

    /// Every device the plan asks.
    pub fn devices(&self) -> BTreeSet<DeviceId> {
        let mut devices = self.broadcast.clone();
        devices.extend(self.replicas_of.values().flatten());
        devices
    }

    /// Products in one device's answer that the plan has no replicas for, without
    /// duplicates.
    pub fn unknown_products(&self, states: &[ItemState]) -> Vec<String> {
        let found: BTreeSet<&str> = states
            .iter()
            .map(|s| s.product.as_str())
            .filter(|p| !self.replicas_of.contains_key(*p))
            .collect();
        found.into_iter().map(str::to_owned).collect()
    }

    /// Whether the read can stop waiting: every item has its read quorum among the devices
    /// for which `has_answered` holds, and fewer than W asked devices are `silent` (so no
    /// acknowledged write can be hidden on them alone). Waiting longer could only add
    /// unacknowledged writes.
    pub fn is_decided(
        &self,
        has_answered: impl Fn(DeviceId) -> bool,
        silent: usize,
        read_quorum: usize,
        write_quorum: usize,
    ) -> bool {
        silent < write_quorum
            && self.replicas_of.values().all(|replicas| {
                let answered = replicas.iter().filter(|d| has_answered(**d)).count();
                answered >= read_quorum.min(replicas.len())
            })
    }
}

/// A replica whose state of an item differs from the merged state: what read repair (a later
/// step, not done yet) would write back.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct StaleReplica {
    pub device: DeviceId,
    pub product: String,
}

/// The merged answer of a cart read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadResolution {
    /// One state per product, sorted by product id, holding every operation any replica held.
    pub merged: Vec<ItemState>,
    /// Answering replicas that lack part of the merged state.
    pub stale: Vec<StaleReplica>,
}

/// A cart read that did not hear from enough replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadShortfall {
    /// Answers needed.
    pub required: usize,
    /// Answers received.
    pub answered: usize,
    /// The first item short of its quorum; `None` when the broadcast itself fell short.
    pub product: Option<String>,
    /// Devices that did not answer, and why.
    pub failures: Vec<(DeviceId, String)>,
}

impl fmt::Display for ReadShortfall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.product {
            Some(product) => write!(
                f,
                "item {product} heard from {} of the {} replicas it needs",
                self.answered, self.required
            )?,
            None => write!(
                f,
                "heard from {} live devices, {} needed",
                self.answered, self.required
            )?,
        }
        for (device, reason) in &self.failures {
            write!(f, "; device {device}: {reason}")?;
        }
        Ok(())
    }
}

impl ReadResolution {
    /// Checks every item's read quorum (see the module docs) and merges the answers.
    ///
    /// # Errors
    /// [`ReadShortfall`] naming the first item (by product id) short of its quorum, or the
    /// broadcast when too many live devices were silent.
    pub fn resolve(
        plan: &ReadPlan,
        answers: &BTreeMap<DeviceId, Vec<ItemState>>,
        failures: &[(DeviceId, String)],
        read_quorum: usize,
        write_quorum: usize,
    ) -> Result<Self, ReadShortfall> {
        let shortfall = |required, answered, product| ReadShortfall {
            required,
            answered,
            product,
            failures: failures.to_vec(),
        };
        let silent = plan
            .broadcast
            .iter()
            .filter(|d| !answers.contains_key(d))
            .count();
        if silent >= write_quorum {
            let live = plan.broadcast.len();
            return Err(shortfall(live + 1 - write_quorum, live - silent, None));
        }
        for (product, replicas) in &plan.replicas_of {
            let required = read_quorum.min(replicas.len());
            let answered = replicas.iter().filter(|d| answers.contains_key(d)).count();
            if answered < required {
                return Err(shortfall(required, answered, Some(product.clone())));
            }
        }
        let replies: Vec<Vec<ItemState>> = answers.values().cloned().collect();
        let merged = merge_replies(&replies);
        let stale = stale_replicas(plan, answers, &merged);
        Ok(Self { merged, stale })
    }
}

/// Answering replicas of each merged item whose state is not the merged one.
fn stale_replicas(
    plan: &ReadPlan,
    answers: &BTreeMap<DeviceId, Vec<ItemState>>,
    merged: &[ItemState],
) -> Vec<StaleReplica> {
    let mut stale = Vec::new();
    for item in merged {
        let Some(replicas) = plan.replicas_of.get(&item.product) else {
            continue;
        };
        for device in replicas {
            let Some(states) = answers.get(device) else {
                continue;
            };
            let held = states.iter().find(|s| s.product == item.product);
            if held != Some(item) {
                stale.push(StaleReplica {
                    device: *device,
                    product: item.product.clone(),
                });
            }
        }
    }
    stale
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]
mod tests {
    use cartdb_core::cart::{ItemMeta, OpId, OpKind, Operation};
    use cartdb_core::version::Version;

    use super::*;

    fn state(product: &str, ops: &[(u128, OpKind)]) -> ItemState {
        let mut s = ItemState::new(
            product,
            ItemMeta {
                price: 10,
                category: "1".into(),
            },
        );
        for (i, (id, kind)) in ops.iter().enumerate() {
            s.apply(Operation {
                id: OpId(*id),
                kind: *kind,
                version: Version {
                    hlc: 100 + i as u64,
                    gateway: 1,
                },
            });
        }
        s
    }

    fn plan(items: &[(&str, &[DeviceId])]) -> ReadPlan {
        ReadPlan::from_directory(
            items
                .iter()
                .map(|(p, d)| ((*p).to_owned(), d.iter().copied().collect()))
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn an_empty_directory_gives_no_plan() {
        assert_eq!(ReadPlan::from_directory(BTreeMap::new()), None);
    }

    #[test]
    fn the_plan_asks_the_union_of_replicas() {
        let mut p = plan(&[("1", &[1, 3]), ("2", &[2, 3])]);
        p.add_replicas("1", [6]);
        assert_eq!(p.devices(), BTreeSet::from([1, 2, 3, 6]));
        assert_eq!(p.products().collect::<Vec<_>>(), ["1", "2"]);
    }

    #[test]
    fn products_found_only_in_answers_are_unknown() {
        let p = plan(&[("1", &[1, 3])]);
        let answer = [state("7", &[]), state("1", &[]), state("7", &[])];
        assert_eq!(p.unknown_products(&answer), ["7"]);
    }

    #[test]
    fn a_read_is_decided_once_every_item_has_r_and_fewer_than_w_are_silent() {
        let p = plan(&[("1", &[1, 3, 6]), ("2", &[2, 3, 5])]);
        let answered = |set: &'static [DeviceId]| move |d: DeviceId| set.contains(&d);
        // Item 2 has only device 3.
        assert!(!p.is_decided(answered(&[1, 3]), 3, 2, 2));
        // Both items have two answers, but two asked devices are silent.
        assert!(!p.is_decided(answered(&[1, 3, 5, 6]), 2, 2, 2));
        assert!(p.is_decided(answered(&[1, 3, 5, 6]), 1, 2, 2));
        // A broadcast with no items only needs fewer than W silent devices.
        let b = ReadPlan::broadcast([1, 2, 3]);
        assert!(b.is_decided(answered(&[1, 2]), 1, 2, 2));
        assert!(!b.is_decided(answered(&[1]), 2, 2, 2));
    }

    #[test]
    fn r_answers_merge_and_name_the_stale_replica() {
        let add = (1, OpKind::Add);
        let p = plan(&[("1", &[1, 3, 6])]);
        let answers = BTreeMap::from([
            (1, vec![state("1", &[add, (2, OpKind::Add)])]),
            (3, vec![state("1", &[add])]),
        ]);
        let r = ReadResolution::resolve(&p, &answers, &[(6, "down".into())], 2, 2).unwrap();
        assert_eq!(r.merged.len(), 1);
        assert_eq!(r.merged[0].qty(), 2);
        assert_eq!(
            r.stale,
            vec![StaleReplica {
                device: 3,
                product: "1".into()
            }]
        );
    }

    #[test]
    fn a_replica_that_lacks_the_item_is_stale_but_counts_as_an_answer() {
        let p = plan(&[("1", &[1, 3, 6])]);
        let answers = BTreeMap::from([(1, vec![state("1", &[(1, OpKind::Add)])]), (3, vec![])]);
        let r = ReadResolution::resolve(&p, &answers, &[], 2, 2).unwrap();
        assert_eq!(r.merged[0].qty(), 1);
        assert_eq!(r.stale.len(), 1);
        assert_eq!(r.stale[0].device, 3);
    }

    #[test]
    fn an_item_short_of_r_fails_the_read() {
        let p = plan(&[("1", &[1, 3, 6]), ("2", &[2, 4, 5])]);
        let answers = BTreeMap::from([(1, vec![]), (3, vec![]), (2, vec![])]);
        let failures = [(4, "timed out".to_owned()), (5, "down".to_owned())];
        let e = ReadResolution::resolve(&p, &answers, &failures, 2, 2).unwrap_err();
        assert_eq!(e.product.as_deref(), Some("2"));
        assert_eq!((e.required, e.answered), (2, 1));
        assert_eq!(
            e.to_string(),
            "item 2 heard from 1 of the 2 replicas it needs; device 4: timed out; device 5: down"
        );
    }

    #[test]
    fn an_item_with_fewer_replicas_than_r_needs_all_of_them() {
        let p = plan(&[("1", &[4])]);
        let answers = BTreeMap::from([(4, vec![state("1", &[(1, OpKind::Add)])])]);
        assert!(ReadResolution::resolve(&p, &answers, &[], 2, 2).is_ok());
    }

    #[test]
    fn a_broadcast_tolerates_fewer_than_w_silent_devices() {
        let mut p = ReadPlan::broadcast([1, 2, 3, 4, 5, 6]);
        p.add_replicas("1", [1, 3, 6]);
        let mut answers: BTreeMap<DeviceId, Vec<ItemState>> =
            (1..=5).map(|d| (d, Vec::new())).collect();
        answers.insert(1, vec![state("1", &[(1, OpKind::Add)])]);
        assert!(ReadResolution::resolve(&p, &answers, &[], 2, 2).is_ok());
        answers.remove(&5);
        let e = ReadResolution::resolve(&p, &answers, &[], 2, 2).unwrap_err();
        assert_eq!((e.product, e.required, e.answered), (None, 5, 4));
    }
}

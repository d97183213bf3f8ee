//! Which replicas a cart read asks, and what their answers add up to. Pure; no sockets.
//!
//! # The read quorum of `list_all`
//! The replicas of an item are the devices of its placement group's up set (where writes go)
//! and past set (devices that held the PG at earlier epochs and may hold writes the up set
//! lacks). An item counts only when at least R of those replicas answered (all of them, in
//! the unusual case that an item has fewer than R). A device that is down does **not**
//! count: a read that heard from fewer than R replicas cannot be sure it saw every
//! acknowledged write, because only `R + W > RF` guarantees that a read quorum meets every
//! write quorum. One item short of its quorum fails the whole read with `QuorumNotReached`,
//! rather than returning a cart that silently lacks it. And since the replicas may be more
//! than RF, the read also waits until fewer than W asked devices are silent: a write
//! acknowledged by W devices then cannot hide among the silent ones.
//!
//! The read starts from the user's cart index: the devices of the index's PG are asked
//! first (the plan's *broadcast* set, which must likewise hear from all but W - 1), and
//! every product their answers list, as an index entry or as an item, gets its own replicas
//! added ([`ReadPlan::unknown_products`]); the caller asks those too. The read stops waiting
//! once [`ReadPlan::is_decided`].
//!
//! Past devices are read, never repaired: a replica that lacks an item or holds an older
//! state counts as stale only when it is in the item's up set ([`ReadPlan::is_up`]). What a
//! past device holds that the up set lacks reaches the up set through the repairs of the
//! up-set devices; the anti-entropy sweep hands the past copies back once the PG is clean.
//!
//! # Summaries first, logs only where replicas disagree
//! Replicas first answer with item summaries ([`ItemSummary`]: quantity, base, newest
//! version, digest of the log). [`SummaryCheck`] finds the items whose answering replicas
//! agree (equal summaries; most items, most of the time) and those that differ or that some
//! answering replica lacks. Only for the latter does the read fetch full states, merge them
//! ([`Repairs::plan`]) and work out what each stale replica lacks, which read repair then
//! sends. This is Cassandra's digest read: the common case moves a few dozen bytes per item
//! instead of whole operation logs.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use cartdb_core::cart::{Base, DeviceId, ItemMeta, ItemState, ItemSummary, Operation};

/// The replicas a cart read asks, per item.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadPlan {
    replicas_of: BTreeMap<String, BTreeSet<DeviceId>>,
    /// The up-set part of `replicas_of`, per item: the replicas that are repaired. An item
    /// without an entry has only up-set replicas.
    up_of: BTreeMap<String, BTreeSet<DeviceId>>,
    /// Devices asked regardless of items (the devices of the user's cart-index PG).
    broadcast: BTreeSet<DeviceId>,
}

impl ReadPlan {
    /// A plan for known items and their replicas (all of them up-set replicas).
    pub fn from_items(items: BTreeMap<String, BTreeSet<DeviceId>>) -> Self {
        Self {
            replicas_of: items,
            up_of: BTreeMap::new(),
            broadcast: BTreeSet::new(),
        }
    }

    /// A plan that asks `devices` whatever items they hold (the cart index's devices).
    pub fn broadcast(devices: impl IntoIterator<Item = DeviceId>) -> Self {
        Self {
            replicas_of: BTreeMap::new(),
            up_of: BTreeMap::new(),
            broadcast: devices.into_iter().collect(),
        }
    }

    /// Adds up-set replicas to `product`'s replica set.
    pub fn add_replicas(&mut self, product: &str, devices: impl IntoIterator<Item = DeviceId>) {
        let devices: Vec<DeviceId> = devices.into_iter().collect();
        self.add_item(product, &devices, &[]);
    }

    /// Adds an item's up set and past set to its replicas.
    pub fn add_item(&mut self, product: &str, up: &[DeviceId], past: &[DeviceId]) {
        self.replicas_of
            .entry(product.to_owned())
            .or_default()
            .extend(up.iter().chain(past));
        if !past.is_empty() || self.up_of.contains_key(product) {
            self.up_of.entry(product.to_owned()).or_default().extend(up);
        }
    }

    /// Whether `device` is in `product`'s up set (and so is repaired when stale).
    pub fn is_up(&self, product: &str, device: DeviceId) -> bool {
        self.up_of
            .get(product)
            .is_none_or(|up| up.contains(&device))
    }

    /// The replicas of `product`, if the plan knows of it.
    pub fn replicas_of(&self, product: &str) -> Option<&BTreeSet<DeviceId>> {
        self.replicas_of.get(product)
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
    pub fn unknown_products<'a>(&self, products: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        let found: BTreeSet<&str> = products
            .into_iter()
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

/// The summaries of a cart read, sorted into items whose replicas agree and items whose
/// replicas need their full states fetched and merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SummaryCheck {
    /// Items whose answering replicas all hold this same summary.
    pub agreed: Vec<ItemSummary>,
    /// Items whose answering replicas differ (or some lack the item), with the answering
    /// replicas that hold it: where to fetch full states from.
    pub divergent: BTreeMap<String, BTreeSet<DeviceId>>,
}

/// What one replica lacks of an item's merged state: what read repair sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repair {
    pub device: DeviceId,
    pub product: String,
    pub meta: ItemMeta,
    /// The merged base, when it is newer than the replica's.
    pub base: Option<Base>,
    /// Operations of the merged state the replica does not hold.
    pub ops: Vec<Operation>,
}

/// The merged divergent items of a cart read and the repairs that make their replicas agree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repairs {
    /// One merged summary per divergent item.
    pub merged: Vec<ItemSummary>,
    pub repairs: Vec<Repair>,
    /// Items whose merge left out an operation some replica holds (neither in the merged
    /// log nor folded into its base): the merge policy broke the "no operation dropped" law,
    /// and the built-in merge was used for them instead. The read-set's operation ids, not
    /// the policy, decide what the up set must hold.
    pub dropped_by_merge: usize,
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

impl SummaryCheck {
    /// Checks every item's read quorum (see the module docs) and sorts the items into agreed
    /// and divergent ones.
    ///
    /// # Errors
    /// [`ReadShortfall`] naming the first item (by product id) short of its quorum, or the
    /// broadcast when too many live devices were silent.
    pub fn resolve(
        plan: &ReadPlan,
        answers: &BTreeMap<DeviceId, Vec<ItemSummary>>,
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
        let mut held: BTreeMap<&str, Vec<(DeviceId, &ItemSummary)>> = BTreeMap::new();
        for (device, summaries) in answers {
            for summary in summaries {
                held.entry(summary.product.as_str())
                    .or_default()
                    .push((*device, summary));
            }
        }
        let mut check = Self {
            agreed: Vec::new(),
            divergent: BTreeMap::new(),
        };
        for (product, holders) in held {
            let first = holders[0].1;
            let all_equal = holders.iter().all(|(_, s)| *s == first);
            // An up-set replica of the item that answered without it lacks it (a past
            // device without it is as it should be).
            let all_hold = plan.replicas_of.get(product).is_none_or(|replicas| {
                replicas
                    .iter()
                    .filter(|d| answers.contains_key(d) && plan.is_up(product, **d))
                    .all(|d| holders.iter().any(|(h, _)| h == d))
            });
            if all_equal && all_hold {
                check.agreed.push(first.clone());
            } else {
                check.divergent.insert(
                    product.to_owned(),
                    holders.iter().map(|(d, _)| *d).collect(),
                );
            }
        }
        Ok(check)
    }
}

impl Repairs {
    /// Merges the full states fetched for the divergent items with `merge`, and works out
    /// what every answering replica of each item lacks.
    ///
    /// `summaries` are the first round's answers (a replica of an item that answered without
    /// it lacks all of it); `states` the full states fetched for the divergent items.
    pub fn plan(
        plan: &ReadPlan,
        summaries: &BTreeMap<DeviceId, Vec<ItemSummary>>,
        states: &BTreeMap<DeviceId, Vec<ItemState>>,
        merge: impl Fn(&[&ItemState]) -> ItemState,
    ) -> Self {
        let by_product = by_product(states);
        let mut out = Self {
            merged: Vec::new(),
            repairs: Vec::new(),
            dropped_by_merge: 0,
        };
        for (product, held) in by_product {
            let inputs: Vec<&ItemState> = held.iter().map(|(_, s)| *s).collect();
            let mut merged = merge(&inputs);
            if !covers(&merged, &inputs) {
                out.dropped_by_merge += 1;
                merged = cartdb_core::merge::merge_states(&inputs).unwrap_or(merged);
            }
            let mut replicas: BTreeSet<DeviceId> = held.iter().map(|(d, _)| *d).collect();
            if let Some(planned) = plan.replicas_of.get(product) {
                replicas.extend(planned.iter().filter(|d| summaries.contains_key(d)));
            }
            for device in replicas.into_iter().filter(|d| plan.is_up(product, *d)) {
                let own = held.iter().find(|(d, _)| *d == device).map(|(_, s)| *s);
                if let Some(repair) = Repair::between(device, own, &merged) {
                    out.repairs.push(repair);
                }
            }
            out.merged.push(merged.summary());
        }
        out
    }
}

/// Whether `merged` holds every operation of `inputs`, by id: in its log, or at or below its
/// base's version (folded; a base only folds operations every replica held).
pub(crate) fn covers(merged: &ItemState, inputs: &[&ItemState]) -> bool {
    inputs
        .iter()
        .flat_map(|s| &s.ops)
        .all(|op| merged.contains(op.id) || merged.base.version.is_some_and(|v| op.version <= v))
}

/// The fetched states grouped by item (product), in product order, with their devices.
fn by_product(
    states: &BTreeMap<DeviceId, Vec<ItemState>>,
) -> BTreeMap<&str, Vec<(DeviceId, &ItemState)>> {
    let mut by_product: BTreeMap<&str, Vec<(DeviceId, &ItemState)>> = BTreeMap::new();
    for (device, items) in states {
        for state in items {
            by_product
                .entry(state.product.as_str())
                .or_default()
                .push((*device, state));
        }
    }
    by_product
}

/// The states [`Repairs::plan`] merges, one group per item in product order: what to hand
/// the merge ahead of the plan when merging is asynchronous.
pub fn merge_groups(states: &BTreeMap<DeviceId, Vec<ItemState>>) -> Vec<Vec<ItemState>> {
    by_product(states)
        .into_values()
        .map(|held| held.into_iter().map(|(_, state)| state.clone()).collect())
        .collect()
}

impl Repair {
    /// What `device`, holding `own` (`None`: nothing), lacks of `merged`; `None` if nothing.
    pub(crate) fn between(
        device: DeviceId,
        own: Option<&ItemState>,
        merged: &ItemState,
    ) -> Option<Self> {
        if own == Some(merged) {
            return None;
        }
        let own_base = own.map(|s| s.base).unwrap_or_default();
        let base = (merged.base.version > own_base.version).then_some(merged.base);
        let ops: Vec<Operation> = merged
            .ops
            .iter()
            // Held at another version counts as lacking: the replica moves it to the merged
            // (larger) one, or the replicas would never hold identical states.
            .filter(|op| own.is_none_or(|s| !s.holds(op)))
            .copied()
            .collect();
        let meta_differs = own.is_some_and(|s| s.meta != merged.meta);
        if base.is_none() && ops.is_empty() && !meta_differs {
            // It holds everything merged holds (and perhaps more, which merge folded away
            // under a newer base it also holds): nothing to send.
            return None;
        }
        Some(Self {
            device,
            product: merged.product.clone(),
            meta: merged.meta.clone(),
            base,
            ops,
        })
    }
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
        ReadPlan::from_items(
            items
                .iter()
                .map(|(p, d)| ((*p).to_owned(), d.iter().copied().collect()))
                .collect(),
        )
    }

    #[test]
    fn past_devices_are_read_but_not_up() {
        let mut p = ReadPlan::broadcast([1, 2, 3]);
        p.add_item("7", &[1, 2, 4], &[3]);
        assert_eq!(p.replicas_of("7"), Some(&BTreeSet::from([1, 2, 3, 4])));
        assert!(p.is_up("7", 4) && !p.is_up("7", 3));
        // Items without a past set treat every replica as up.
        p.add_replicas("8", [5]);
        assert!(p.is_up("8", 5));
    }

    /// A past device that lacks an item (or holds it stale) is neither "lacking" for the
    /// agreement check nor sent a repair; a stale up-set device is.
    #[test]
    fn only_up_set_devices_are_repaired() {
        let mut p = ReadPlan::broadcast([]);
        p.add_item("1", &[1, 2, 4], &[3]);
        let fresh = state("1", &[(1, OpKind::Add), (2, OpKind::Add)]);
        let old = state("1", &[(1, OpKind::Add)]);
        // Device 3 (past) answered without the item: still agreed.
        let answers = BTreeMap::from([
            (1, vec![fresh.summary()]),
            (2, vec![fresh.summary()]),
            (3, vec![]),
            (4, vec![fresh.summary()]),
        ]);
        let check = SummaryCheck::resolve(&p, &answers, &[], 2, 2).unwrap();
        assert!(check.divergent.is_empty(), "{check:?}");
        // Device 3 holds an older state and device 4 lacks it: only 4 is repaired.
        let summaries = BTreeMap::from([
            (1, vec![fresh.summary()]),
            (2, vec![fresh.summary()]),
            (3, vec![old.summary()]),
            (4, vec![]),
        ]);
        let states = BTreeMap::from([
            (1, vec![fresh.clone()]),
            (2, vec![fresh.clone()]),
            (3, vec![old]),
        ]);
        let repairs = Repairs::plan(&p, &summaries, &states, |s| {
            cartdb_core::merge::merge_states(s).unwrap()
        });
        let repaired: Vec<DeviceId> = repairs.repairs.iter().map(|r| r.device).collect();
        assert_eq!(repaired, [4]);
        assert_eq!(repairs.merged, [fresh.summary()]);
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
        assert_eq!(p.unknown_products(["7", "1", "7"]), ["7"]);
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

    fn summaries(answers: &[(DeviceId, Vec<ItemState>)]) -> BTreeMap<DeviceId, Vec<ItemSummary>> {
        answers
            .iter()
            .map(|(d, states)| (*d, states.iter().map(ItemState::summary).collect()))
            .collect()
    }

    fn merge(states: &[&ItemState]) -> ItemState {
        cartdb_core::merge::merge_states(states).unwrap()
    }

    #[test]
    fn equal_summaries_agree_and_need_no_logs() {
        let p = plan(&[("1", &[1, 3, 6])]);
        let s = state("1", &[(1, OpKind::Add)]);
        let answers = summaries(&[(1, vec![s.clone()]), (3, vec![s.clone()])]);
        let check = SummaryCheck::resolve(&p, &answers, &[], 2, 2).unwrap();
        assert_eq!(check.agreed, [s.summary()]);
        assert!(check.divergent.is_empty());
    }

    #[test]
    fn differing_replicas_are_merged_and_the_stale_one_gets_what_it_lacks() {
        let add = (1, OpKind::Add);
        let p = plan(&[("1", &[1, 3, 6])]);
        let full = state("1", &[add, (2, OpKind::Add)]);
        let stale = state("1", &[add]);
        let answers = [(1, vec![full.clone()]), (3, vec![stale])];
        let sums = summaries(&answers);
        let check = SummaryCheck::resolve(&p, &sums, &[(6, "down".into())], 2, 2).unwrap();
        assert!(check.agreed.is_empty());
        assert_eq!(check.divergent["1"], BTreeSet::from([1, 3]));
        let states: BTreeMap<DeviceId, Vec<ItemState>> = answers.into_iter().collect();
        let r = Repairs::plan(&p, &sums, &states, merge);
        assert_eq!(r.merged, [full.summary()]);
        assert_eq!(r.merged[0].qty, 2);
        assert_eq!(r.repairs.len(), 1);
        assert_eq!(r.repairs[0].device, 3);
        assert_eq!(r.repairs[0].ops, [full.ops[1]]);
        assert_eq!(r.repairs[0].base, None);
    }

    /// The clean proof rests on operation ids, not on the merge policy: a merge that drops
    /// an operation only a past device holds would leave the up set "equal to the merge",
    /// need no repair, and let handback delete the last copy. The plan sees the id missing
    /// from the merged state, counts it, merges that item with the built-in merge instead,
    /// and repairs the up set with the operation.
    #[test]
    fn a_merge_that_drops_an_operation_is_overruled_by_the_ids() {
        let mut p = ReadPlan::broadcast([1, 2, 3]);
        p.add_item("1", &[1, 2, 4], &[3]);
        let on_up = state("1", &[(1, OpKind::Add)]);
        let on_past = state("1", &[(1, OpKind::Add), (2, OpKind::Add)]);
        let answers = [
            (1, vec![on_up.clone()]),
            (2, vec![on_up.clone()]),
            (4, vec![on_up.clone()]),
            (3, vec![on_past.clone()]),
        ];
        let states: BTreeMap<DeviceId, Vec<ItemState>> = answers.iter().cloned().collect();
        // A law-breaking merge: it keeps the first input's log.
        let first_only = |inputs: &[&ItemState]| inputs[0].clone();
        let r = Repairs::plan(&p, &summaries(&answers), &states, first_only);
        assert_eq!(r.dropped_by_merge, 1);
        assert_eq!(r.merged, [on_past.summary()], "the built-in merge's answer");
        let repaired: BTreeSet<DeviceId> = r.repairs.iter().map(|r| r.device).collect();
        assert_eq!(repaired, BTreeSet::from([1, 2, 4]), "every up-set device");
        assert!(r.repairs.iter().all(|r| r.ops == [on_past.ops[1]]));
        // A merge that keeps every id (or folds it into its base) is left alone.
        let r = Repairs::plan(&p, &summaries(&answers), &states, merge);
        assert_eq!(r.dropped_by_merge, 0);
    }

    #[test]
    fn a_replica_that_lacks_the_item_is_sent_all_of_it() {
        let p = plan(&[("1", &[1, 3, 6])]);
        let s = state("1", &[(1, OpKind::Add)]);
        let answers = [(1, vec![s.clone()]), (3, vec![])];
        let sums = summaries(&answers);
        let check = SummaryCheck::resolve(&p, &sums, &[], 2, 2).unwrap();
        assert_eq!(
            check.divergent["1"],
            BTreeSet::from([1]),
            "fetch from the holder"
        );
        let states = BTreeMap::from([(1, vec![s.clone()])]);
        let r = Repairs::plan(&p, &sums, &states, merge);
        assert_eq!(r.merged[0].qty, 1);
        assert_eq!(r.repairs.len(), 1);
        assert_eq!((r.repairs[0].device, &r.repairs[0].ops), (3, &s.ops));
    }

    #[test]
    fn a_newer_base_is_sent_with_the_repair() {
        let p = plan(&[("1", &[1, 3])]);
        let mut compacted = state("1", &[(1, OpKind::Add), (2, OpKind::Add)]);
        let behind = compacted.clone();
        compacted.base = Base {
            qty: 1,
            version: Some(compacted.ops[0].version),
        };
        compacted.ops.remove(0);
        let answers = [(1, vec![compacted.clone()]), (3, vec![behind])];
        let states: BTreeMap<DeviceId, Vec<ItemState>> = answers.iter().cloned().collect();
        let r = Repairs::plan(&p, &summaries(&answers), &states, merge);
        assert_eq!(r.merged, [compacted.summary()]);
        assert_eq!(r.repairs.len(), 1);
        assert_eq!(r.repairs[0].base, Some(compacted.base));
        assert!(
            r.repairs[0].ops.is_empty(),
            "it holds every newer operation"
        );
    }

    #[test]
    fn an_operation_held_under_a_smaller_version_is_sent_at_the_merged_one() {
        let p = plan(&[("1", &[1, 3])]);
        let early = state("1", &[(1, OpKind::Add), (2, OpKind::Add)]);
        // The same two operations, the second stamped again later (a restamp or a retry):
        // the merge keeps the larger version.
        let mut late = early.clone();
        late.ops[1].version.hlc += 50;
        let answers = [(1, vec![early]), (3, vec![late.clone()])];
        let states: BTreeMap<DeviceId, Vec<ItemState>> = answers.iter().cloned().collect();
        let r = Repairs::plan(&p, &summaries(&answers), &states, merge);
        assert_eq!(r.merged, [late.summary()]);
        assert_eq!(r.repairs.len(), 1);
        assert_eq!(
            (r.repairs[0].device, &r.repairs[0].ops),
            (1, &vec![late.ops[1]])
        );
    }

    #[test]
    fn an_item_short_of_r_fails_the_read() {
        let p = plan(&[("1", &[1, 3, 6]), ("2", &[2, 4, 5])]);
        let answers = BTreeMap::from([(1, vec![]), (3, vec![]), (2, vec![])]);
        let failures = [(4, "timed out".to_owned()), (5, "down".to_owned())];
        let e = SummaryCheck::resolve(&p, &answers, &failures, 2, 2).unwrap_err();
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
        let answers = summaries(&[(4, vec![state("1", &[(1, OpKind::Add)])])]);
        assert!(SummaryCheck::resolve(&p, &answers, &[], 2, 2).is_ok());
    }

    #[test]
    fn a_broadcast_tolerates_fewer_than_w_silent_devices() {
        let mut p = ReadPlan::broadcast([1, 2, 3, 4, 5, 6]);
        p.add_replicas("1", [1, 3, 6]);
        let mut answers: BTreeMap<DeviceId, Vec<ItemSummary>> =
            (1..=5).map(|d| (d, Vec::new())).collect();
        answers.insert(1, vec![state("1", &[(1, OpKind::Add)]).summary()]);
        assert!(SummaryCheck::resolve(&p, &answers, &[], 2, 2).is_ok());
        answers.remove(&5);
        let e = SummaryCheck::resolve(&p, &answers, &[], 2, 2).unwrap_err();
        assert_eq!((e.product, e.required, e.answered), (None, 5, 4));
    }
}

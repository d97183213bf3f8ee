//! One window of a placement group's stream, pure: how the sweep compares a PG's copies a
//! chunk at a time and decides what each up-set device lacks.
//!
//! Every device of the PG's read set streams its items' full states in placement order
//! (`ReadPg`, a chunk at a time). A device that had more than its chunk may still hold
//! items before another device's last one, so a *window* ends at the smallest last item of
//! the devices that had more ([`window_end`], the same rule that pages `list_category`):
//! up to it every answer is complete, and the next window starts after it. Within a
//! window each item is
//!
//! - *agreed* when every answering device of the read set holds the same state and every
//!   answering up-set device holds it: nothing to do; *settled* (a compaction candidate)
//!   when, on top of that, every device of the read set answered;
//! - *divergent* otherwise: when its holders disagree, their states are merged (the merge
//!   policy, checked on operation ids as a cart read does,
//!   [`Repairs::plan`](crate::read_resolution::Repairs::plan)); when they agree and an
//!   up-set device lacks it (backfill), the agreed state is the target with no merge. Every
//!   answering up-set device is sent what it lacks of the target.
//!
//! Past devices are never repaired; what they hold, with its digest, is what a clean PG's
//! handback may drop.
//!
//! Before it streams a PG with no past set, a round compares the digest buckets of its
//! copies ([`buckets_to_read`]) and streams only the buckets that differ.

use std::collections::{BTreeMap, BTreeSet};

use cartdb_core::cart::{DeviceId, ItemKey, ItemState, StateDigest};
use cartdb_core::placement_key::placement_order;
use cartdb_core::wire::{BucketDigest, HeldState, ItemRepair};

use crate::compaction::SettledItem;
use crate::read_resolution::{Repair, covers};

/// Where a window ends: the smallest last key among the pages that had more, or `None`
/// when none had (the window holds everything left). Shared with `list_category`'s pages.
pub fn window_end<'a, K: Ord + ?Sized + 'a>(
    pages: impl IntoIterator<Item = (Option<&'a K>, bool)>,
) -> Option<&'a K> {
    pages
        .into_iter()
        .filter(|(_, more)| *more)
        .filter_map(|(last, _)| last)
        .min()
}

/// An item's place in the stream.
pub type StreamKey = (u32, String, String);

fn stream_key(user: &str, product: &str) -> StreamKey {
    let (placed, user, product) = placement_order(user, product);
    (placed, user.to_owned(), product.to_owned())
}

/// One device's chunk: its items in placement order, and whether more follow.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chunk {
    pub items: Vec<HeldState>,
    pub more: bool,
}

/// The items of one window, each with the state every device holding it holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Window {
    pub items: BTreeMap<StreamKey, BTreeMap<DeviceId, ItemState>>,
    /// Where the next window starts (after this item); `None` when the PG is done.
    pub next: Option<ItemKey>,
}

impl Window {
    /// The window the answering devices' `chunks` cover completely.
    pub fn of(chunks: BTreeMap<DeviceId, Chunk>) -> Self {
        let lasts: Vec<(Option<StreamKey>, bool)> = chunks
            .values()
            .map(|chunk| {
                let last = chunk
                    .items
                    .last()
                    .map(|held| stream_key(&held.user, &held.state.product));
                (last, chunk.more)
            })
            .collect();
        let end = window_end(lasts.iter().map(|(last, more)| (last.as_ref(), *more))).cloned();
        let mut items: BTreeMap<StreamKey, BTreeMap<DeviceId, ItemState>> = BTreeMap::new();
        for (device, chunk) in chunks {
            for held in chunk.items {
                let key = stream_key(&held.user, &held.state.product);
                if end.as_ref().is_none_or(|end| key <= *end) {
                    items.entry(key).or_default().insert(device, held.state);
                }
            }
        }
        let next = end.map(|(_, user, product)| ItemKey { user, product });
        Self { items, next }
    }

    /// The states to merge: of the items whose holders disagree. An item its holders agree
    /// on needs no merge even when an up-set device lacks it (backfill): that device is
    /// sent the agreed state.
    pub fn to_merge(&self) -> Vec<(StreamKey, Vec<ItemState>)> {
        self.items
            .iter()
            .filter(|(_, held)| same_state(held).is_none())
            .map(|(key, held)| (key.clone(), held.values().cloned().collect()))
            .collect()
    }
}

/// The state every holder holds, if they all hold the same.
fn same_state(held: &BTreeMap<DeviceId, ItemState>) -> Option<&ItemState> {
    let mut states = held.values();
    let first = states.next()?;
    states.all(|s| s == first).then_some(first)
}

/// Whether every holder holds the same state and every answering up-set device (`up`,
/// already cut to those that answered) holds it.
fn agreed(held: &BTreeMap<DeviceId, ItemState>, up: &BTreeSet<DeviceId>) -> bool {
    same_state(held).is_some() && up.iter().all(|device| held.contains_key(device))
}

/// What a window asks of the devices, and what it proved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WindowPlan {
    /// Per up-set device, the repairs to send it in one `RepairMany`.
    pub repairs: BTreeMap<DeviceId, Vec<ItemRepair>>,
    /// Items every device of the read set answered with the same state, by user.
    pub settled: BTreeMap<String, Vec<SettledItem>>,
    /// Per past device, what it holds and in which state (for the handback).
    pub past: BTreeMap<DeviceId, Vec<(ItemKey, StateDigest)>>,
    /// Divergent items whose merge dropped an operation a device holds; the built-in merge
    /// was used for them.
    pub dropped_by_merge: usize,
    /// Items in the window.
    pub items: usize,
}

impl WindowPlan {
    /// Plans `window` for a PG whose up set is `up`, where `answered` devices answered and
    /// `all_answered` says whether that is the whole read set. `merged` holds the merge of
    /// each divergent item's states (from [`Window::to_merge`]); an item missing there,
    /// or whose merge leaves out an operation, is merged with the built-in merge; an item
    /// every holder holds in the same state needs no merge.
    pub fn new(
        window: &Window,
        up: &BTreeSet<DeviceId>,
        answered: &BTreeSet<DeviceId>,
        all_answered: bool,
        merged: &BTreeMap<StreamKey, ItemState>,
    ) -> Self {
        let live_up: BTreeSet<DeviceId> = up.intersection(answered).copied().collect();
        let mut plan = Self {
            items: window.items.len(),
            ..Self::default()
        };
        for (key, held) in &window.items {
            let (_, user, product) = key;
            let item = ItemKey {
                user: user.clone(),
                product: product.clone(),
            };
            for (device, state) in held.iter().filter(|(d, _)| !up.contains(d)) {
                plan.past
                    .entry(*device)
                    .or_default()
                    .push((item.clone(), state.summary().digest));
            }
            if agreed(held, &live_up) {
                if all_answered && let Some(state) = held.values().next() {
                    plan.settled
                        .entry(user.clone())
                        .or_default()
                        .push(SettledItem {
                            summary: state.summary(),
                            replicas: held.keys().copied().collect(),
                        });
                }
                continue;
            }
            let target = match same_state(held) {
                Some(agreed) => Some(agreed.clone()),
                None => {
                    let inputs: Vec<&ItemState> = held.values().collect();
                    let mut target = merged.get(key).cloned();
                    if target.as_ref().is_none_or(|m| !covers(m, &inputs)) {
                        if target.is_some() {
                            plan.dropped_by_merge += 1;
                        }
                        target = cartdb_core::merge::merge_states(&inputs);
                    }
                    target
                }
            };
            let Some(target) = target else { continue };
            for device in &live_up {
                if let Some(repair) = Repair::between(*device, held.get(device), &target) {
                    plan.repairs.entry(*device).or_default().push(ItemRepair {
                        key: item.clone(),
                        meta: repair.meta,
                        base: repair.base,
                        ops: repair.ops,
                    });
                }
            }
        }
        plan
    }

    /// How many repairs the window sends.
    pub fn repair_count(&self) -> usize {
        self.repairs.values().map(Vec::len).sum()
    }
}

/// The buckets of a PG a round must stream (`buckets`, the PG's, in key order), given each
/// answering device's digests of them (`answers`, one per bucket, in the same order): those
/// whose digests differ between devices, and those in which a device counts a long log
/// (whose item may be due for compaction, which only a stream finds). A PG whose copies
/// agree costs its digest requests and nothing more. An answer of the wrong length cannot
/// be compared and is left out by the caller.
pub fn buckets_to_read(buckets: &[u32], answers: &[&[BucketDigest]]) -> Vec<u32> {
    buckets
        .iter()
        .enumerate()
        .filter(|(at, _)| {
            let mut digests = answers.iter().filter_map(|answer| answer.get(*at));
            let first = digests.next();
            first.is_some_and(|first| first.long_logs > 0)
                || digests.any(|d| first.is_some_and(|f| d.digest != f.digest) || d.long_logs > 0)
        })
        .map(|(_, bucket)| *bucket)
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]
mod tests {
    use cartdb_core::cart::{ItemMeta, OpId, OpKind, Operation};
    use cartdb_core::version::Version;

    use super::*;

    fn state(product: &str, ids: &[u128]) -> ItemState {
        let mut s = ItemState::new(
            product,
            ItemMeta {
                price: 1,
                category: "c".into(),
            },
        );
        for &id in ids {
            s.apply(Operation {
                id: OpId(id),
                kind: OpKind::Add,
                version: Version {
                    hlc: 100 + id as u64,
                    gateway: 1,
                },
            });
        }
        s
    }

    fn held(user: &str, product: &str, ids: &[u128]) -> HeldState {
        HeldState {
            user: user.into(),
            state: state(product, ids),
        }
    }

    fn sorted(mut items: Vec<HeldState>) -> Vec<HeldState> {
        items.sort_by(|a, b| {
            placement_order(&a.user, &a.state.product)
                .cmp(&placement_order(&b.user, &b.state.product))
        });
        items
    }

    #[test]
    fn a_window_ends_where_every_chunk_is_complete() {
        let all = sorted((0..10).map(|n| held(&format!("u{n}"), "p", &[1])).collect());
        // Device 1 sent its first 3, device 2 everything.
        let chunks = BTreeMap::from([
            (
                1,
                Chunk {
                    items: all[..3].to_vec(),
                    more: true,
                },
            ),
            (
                2,
                Chunk {
                    items: all.clone(),
                    more: false,
                },
            ),
        ]);
        let window = Window::of(chunks);
        assert_eq!(window.items.len(), 3);
        let last = &all[2];
        assert_eq!(
            window.next,
            Some(ItemKey {
                user: last.user.clone(),
                product: "p".into()
            })
        );
        let done = Window::of(BTreeMap::from([(
            2,
            Chunk {
                items: all,
                more: false,
            },
        )]));
        assert_eq!((done.items.len(), done.next), (10, None));
    }

    #[test]
    fn a_device_lacking_an_item_or_an_operation_is_repaired_and_past_copies_are_listed() {
        let up = BTreeSet::from([1, 2, 3]);
        let answered = BTreeSet::from([1, 2, 3, 4]);
        let items = |ids: &[u128]| vec![held("u", "p", ids)];
        let window = Window::of(BTreeMap::from([
            (
                1,
                Chunk {
                    items: items(&[1, 2]),
                    more: false,
                },
            ),
            (
                2,
                Chunk {
                    items: items(&[1]),
                    more: false,
                },
            ),
            (
                3,
                Chunk {
                    items: Vec::new(),
                    more: false,
                },
            ),
            (
                4,
                Chunk {
                    items: items(&[1, 2, 3]),
                    more: false,
                },
            ),
        ]));
        assert_eq!(window.to_merge().len(), 1);
        let plan = WindowPlan::new(&window, &up, &answered, true, &BTreeMap::new());
        let ops = |device: DeviceId| -> Vec<u128> {
            plan.repairs[&device][0]
                .ops
                .iter()
                .map(|op| op.id.0)
                .collect()
        };
        assert_eq!(ops(1), [3]);
        assert_eq!(ops(2), [2, 3]);
        assert_eq!(ops(3), [1, 2, 3]);
        assert!(
            !plan.repairs.contains_key(&4),
            "past devices are not repaired"
        );
        assert_eq!(plan.past[&4].len(), 1);
        assert!(plan.settled.is_empty());
        assert_eq!(plan.repair_count(), 3);
    }

    #[test]
    fn agreed_items_need_nothing_and_settle_only_when_everyone_answered() {
        let up = BTreeSet::from([1, 2]);
        let both = BTreeSet::from([1, 2]);
        let chunk = || Chunk {
            items: vec![held("u", "p", &[1])],
            more: false,
        };
        let window = Window::of(BTreeMap::from([(1, chunk()), (2, chunk())]));
        assert!(window.to_merge().is_empty());
        let plan = WindowPlan::new(&window, &up, &both, true, &BTreeMap::new());
        assert_eq!((plan.repair_count(), plan.settled["u"].len()), (0, 1));
        let partial = WindowPlan::new(&window, &up, &both, false, &BTreeMap::new());
        assert!(partial.settled.is_empty());
    }

    /// Backfill: the holders agree and a new up-set device lacks the item; it gets the
    /// agreed state, with no merge.
    #[test]
    fn an_item_its_holders_agree_on_is_copied_without_a_merge() {
        let up = BTreeSet::from([1, 2, 3]);
        let chunk = || Chunk {
            items: vec![held("u", "p", &[1, 2])],
            more: false,
        };
        let empty = Chunk::default();
        let window = Window::of(BTreeMap::from([(1, chunk()), (2, chunk()), (3, empty)]));
        assert!(window.to_merge().is_empty());
        let plan = WindowPlan::new(&window, &up, &up, true, &BTreeMap::new());
        assert_eq!(plan.repair_count(), 1);
        let repair = &plan.repairs[&3][0];
        let ids: Vec<u128> = repair.ops.iter().map(|op| op.id.0).collect();
        assert_eq!(ids, [1, 2]);
        assert_eq!(plan.dropped_by_merge, 0);
    }

    #[test]
    fn a_merge_that_drops_an_operation_is_overruled() {
        let up = BTreeSet::from([1, 2]);
        let window = Window::of(BTreeMap::from([
            (
                1,
                Chunk {
                    items: vec![held("u", "p", &[1])],
                    more: false,
                },
            ),
            (
                2,
                Chunk {
                    items: vec![held("u", "p", &[2])],
                    more: false,
                },
            ),
        ]));
        let key = window.items.keys().next().unwrap().clone();
        let lossy = BTreeMap::from([(key, state("p", &[1]))]);
        let plan = WindowPlan::new(&window, &up, &up, true, &lossy);
        assert_eq!(plan.dropped_by_merge, 1);
        assert_eq!(
            plan.repairs[&1][0].ops[0].id.0, 2,
            "the built-in merge keeps both"
        );
        assert_eq!(plan.repairs[&2][0].ops[0].id.0, 1);
    }

    #[test]
    fn window_end_is_the_smallest_last_of_those_with_more() {
        let pages = [
            (Some(&5), true),
            (Some(&3), true),
            (Some(&1), false),
            (None, false),
        ];
        assert_eq!(window_end(pages), Some(&3));
        assert_eq!(window_end([(Some(&1), false)]), None);
    }

    #[test]
    fn only_buckets_that_differ_or_hold_long_logs_are_read() {
        let d = |digest, long_logs| BucketDigest { digest, long_logs };
        let a = [d(1, 0), d(2, 0), d(3, 0), d(4, 0)];
        let b = [d(1, 0), d(9, 0), d(3, 1), d(4, 0)];
        let c = [d(1, 0), d(2, 0), d(3, 0), d(4, 0)];
        assert_eq!(
            buckets_to_read(&[10, 11, 12, 13], &[&a, &b, &c]),
            vec![11, 12]
        );
        assert_eq!(
            buckets_to_read(&[10, 11, 12, 13], &[&a, &c]),
            Vec::<u32>::new()
        );
        // One device alone: only its long logs.
        assert_eq!(buckets_to_read(&[10, 11, 12, 13], &[&b]), vec![12]);
        assert_eq!(buckets_to_read(&[10, 11], &[]), Vec::<u32>::new());
    }
}

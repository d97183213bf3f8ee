//! The built-in merge of replica states of one cart item.
//!
//! Replicas of an item can differ: one missed a write while it was down, another received two
//! operations in the opposite order. A merge takes the states several replicas returned and
//! produces the state that holds everything any of them held.
//!
//! # Merge laws
//! For states `a`, `b`, `c` of the same item, [`merge`] is
//! - commutative: `merge(a, b) == merge(b, a)`;
//! - associative: `merge(merge(a, b), c) == merge(a, merge(b, c))`;
//! - idempotent: `merge(a, a) == a`;
//!
//! and it never drops an operation that any input holds (unless a base already folds it).
//! So the answer does not depend on which replicas answered first, and merging again
//! after read repair changes nothing.
//!
//! How: operations are unioned by [`OpId`]; when two replicas hold the same operation under
//! different versions (a retry that reached them through different gateways, or an
//! operation its gateway stamped again above a newer one it had been refused behind), the
//! larger version wins (and, for inputs no gateway would produce, the larger kind): the
//! version a write quorum acknowledged is the largest its gateway issued, and only it is
//! above every operation acknowledged before ("Safety" in docs/design.md). The base with
//! the newest version wins, because a base only ever folds
//! operations that every replica had acknowledged. Product facts come from the state with the
//! newest version.

use std::collections::BTreeMap;

use crate::cart::{ItemState, OpId, Operation};

/// Merges two states of the same item. See the module docs for the laws it keeps.
pub fn merge(a: &ItemState, b: &ItemState) -> ItemState {
    merge_many(&[a, b])
}

/// Merges any number of states of one item in one pass; `states` must not be empty.
///
/// Equal states (the common case: replicas that agree) are merged by returning a copy of
/// the first, which is what the union below would give anyway.
fn merge_many(states: &[&ItemState]) -> ItemState {
    let first = states[0];
    if states[1..].iter().all(|s| *s == first) {
        return first.clone();
    }
    let base = states
        .iter()
        .map(|s| s.base)
        .max_by_key(|b| (b.version, b.qty))
        .unwrap_or(first.base);
    let mut by_id: BTreeMap<OpId, Operation> = BTreeMap::new();
    for op in states.iter().flat_map(|s| &s.ops) {
        by_id
            .entry(op.id)
            .and_modify(|held| {
                if (op.version, op.kind) > (held.version, held.kind) {
                    *held = *op;
                }
            })
            .or_insert(*op);
    }
    let mut ops: Vec<Operation> = by_id
        .into_values()
        .filter(|op| base.version.is_none_or(|v| op.version > v))
        .collect();
    ops.sort_by_key(Operation::log_order);
    ItemState {
        product: first.product.clone(),
        meta: newest_meta(states),
        base,
        ops,
    }
}

/// Product facts of the state that saw the newest operation; ties go to the larger facts so
/// the choice does not depend on argument order.
fn newest_meta(states: &[&ItemState]) -> crate::cart::ItemMeta {
    let key = |s: &ItemState| (s.latest_version(), s.meta.price, s.meta.category.clone());
    states
        .iter()
        .max_by_key(|s| key(s))
        .map_or_else(|| states[0].meta.clone(), |s| s.meta.clone())
}

/// Merges all states of one item; `None` for no states.
pub fn merge_all<'a>(states: impl IntoIterator<Item = &'a ItemState>) -> Option<ItemState> {
    let states: Vec<&ItemState> = states.into_iter().collect();
    merge_states(&states)
}

/// Merges the states of one item in one pass; `None` for no states.
pub fn merge_states(states: &[&ItemState]) -> Option<ItemState> {
    (!states.is_empty()).then(|| merge_many(states))
}

/// Merges the answers of several replicas, each a list of item states, into one state per
/// product, sorted by product id.
pub fn merge_replies<'a>(replies: impl IntoIterator<Item = &'a [ItemState]>) -> Vec<ItemState> {
    let mut by_product: BTreeMap<&str, Vec<&ItemState>> = BTreeMap::new();
    for state in replies.into_iter().flatten() {
        by_product
            .entry(state.product.as_str())
            .or_default()
            .push(state);
    }
    by_product
        .into_values()
        .map(|states| merge_many(&states))
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::cart::{ItemMeta, OpKind};
    use crate::version::Version;

    fn op_strategy() -> impl Strategy<Value = Operation> {
        (0u128..12, any::<bool>(), 0u64..40, 0u32..3).prop_map(|(id, add, hlc, gateway)| {
            Operation {
                id: OpId(id),
                kind: if add { OpKind::Add } else { OpKind::Delete },
                version: Version { hlc, gateway },
            }
        })
    }

    fn state_strategy() -> impl Strategy<Value = ItemState> {
        prop::collection::vec(op_strategy(), 0..10).prop_map(|ops| {
            let mut state = ItemState::new(
                "1",
                ItemMeta {
                    price: 61,
                    category: "1".into(),
                },
            );
            for op in ops {
                state.apply(op);
            }
            state
        })
    }

    proptest! {
        #[test]
        fn merge_is_commutative(a in state_strategy(), b in state_strategy()) {
            prop_assert_eq!(merge(&a, &b), merge(&b, &a));
        }

        #[test]
        fn merge_is_associative(a in state_strategy(), b in state_strategy(), c in state_strategy()) {
            prop_assert_eq!(merge(&merge(&a, &b), &c), merge(&a, &merge(&b, &c)));
        }

        #[test]
        fn merge_is_idempotent(a in state_strategy()) {
            prop_assert_eq!(merge(&a, &a), a);
        }

        #[test]
        fn merge_keeps_every_operation(a in state_strategy(), b in state_strategy()) {
            let merged = merge(&a, &b);
            for op in a.ops.iter().chain(&b.ops) {
                prop_assert!(merged.contains(op.id));
            }
        }
    }

    #[test]
    fn a_replica_that_missed_writes_is_outvoted() {
        let v = |hlc| Version { hlc, gateway: 1 };
        let meta = ItemMeta {
            price: 28,
            category: "2".into(),
        };
        let mut full = ItemState::new("3", meta.clone());
        let mut stale = ItemState::new("3", meta);
        for (id, hlc) in [(1, 10), (2, 20)] {
            full.apply(Operation {
                id: OpId(id),
                kind: OpKind::Add,
                version: v(hlc),
            });
        }
        stale.apply(full.ops[0]);
        let merged = merge_replies([&[stale][..], &[full][..]]);
        assert_eq!(merged.len(), 1);
        assert_eq!(merged[0].qty(), 2);
    }
}

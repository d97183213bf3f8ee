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
//! different versions (a retry that reached them through different gateways), the smaller
//! version wins (and, for inputs no gateway would produce, the smaller kind). The base with the newest version wins, because a base only ever folds
//! operations that every replica had acknowledged. Product facts come from the state with the
//! newest version.

use std::collections::BTreeMap;

use crate::cart::{ItemState, OpId, Operation};

/// Merges two states of the same item. See the module docs for the laws it keeps.
pub fn merge(a: &ItemState, b: &ItemState) -> ItemState {
    let base = if b.base.version > a.base.version {
        b.base
    } else {
        a.base
    };
    let mut by_id: BTreeMap<OpId, Operation> = BTreeMap::new();
    for op in a.ops.iter().chain(&b.ops) {
        by_id
            .entry(op.id)
            .and_modify(|held| {
                if (op.version, op.kind) < (held.version, held.kind) {
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
    let meta = newest_meta(a, b);
    ItemState {
        product: a.product.clone(),
        meta,
        base,
        ops,
    }
}

/// Product facts of the state that saw the newest operation; ties go to the larger facts so
/// the choice does not depend on argument order.
fn newest_meta(a: &ItemState, b: &ItemState) -> crate::cart::ItemMeta {
    let key = |s: &ItemState| (s.latest_version(), s.meta.price, s.meta.category.clone());
    if key(b) > key(a) {
        b.meta.clone()
    } else {
        a.meta.clone()
    }
}

/// Merges all states of one item; `None` for no states.
pub fn merge_all<'a>(states: impl IntoIterator<Item = &'a ItemState>) -> Option<ItemState> {
    let mut states = states.into_iter();
    let first = states.next()?.clone();
    Some(states.fold(first, |acc, s| merge(&acc, s)))
}

/// Merges the answers of several replicas, each a list of item states, into one state per
/// product, sorted by product id.
pub fn merge_replies(replies: &[Vec<ItemState>]) -> Vec<ItemState> {
    let mut by_product: BTreeMap<&str, ItemState> = BTreeMap::new();
    for state in replies.iter().flatten() {
        by_product
            .entry(state.product.as_str())
            .and_modify(|held| *held = merge(held, state))
            .or_insert_with(|| state.clone());
    }
    by_product.into_values().collect()
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
        let merged = merge_replies(&[vec![stale], vec![full]]);
        assert_eq!(merged.len(), 1);
        assert_eq!(merged[0].qty(), 2);
    }
}

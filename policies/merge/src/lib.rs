//! The reference merge policy of cartdb: the gateway's built-in merge
//! (`cartdb_core::merge`), as a `cartdb:policy/merge-policy` component.
//!
//! Operations are unioned by op id; when replicas hold one id under different versions (a
//! retry that reached them through different gateways, or an operation stamped again above a
//! newer one) the larger `(version, kind)` wins.
//! The base with the largest `(version, qty)` wins, because a base only ever folds
//! operations every replica had acknowledged; operations at or below its version are
//! already in it and are dropped. The log is sorted by `(version, id)`.
//!
//! This crate cannot use `cartdb-core` (which needs tokio and the network, not available
//! on `wasm32-unknown-unknown`), so it restates the semantics on plain types; the gateway's
//! tests check that the component agrees with `cartdb_core::merge::merge_all`.
//!
//! # Layout
//! - this module: the types and [`merge`].
//! - `guest` (wasm32 only): the wit-bindgen glue exporting the component interface.

use std::collections::BTreeMap;

#[cfg(target_arch = "wasm32")]
mod guest;

/// The policy name the component reports.
pub const POLICY_NAME: &str = "union-by-op-id";

/// Orders the operations of an item: clock reading first, then the gateway id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub hlc: u64,
    pub gateway: u32,
}

/// Add sorts before delete, as in `cartdb_core::cart::OpKind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OpKind {
    Add,
    Delete,
}

/// One entry of an operation log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Operation {
    pub id: u128,
    pub kind: OpKind,
    pub version: Version,
}

/// The folded prefix of a log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Base {
    pub qty: u64,
    pub version: Option<Version>,
}

/// One replica's state of one item.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ItemState {
    pub base: Base,
    pub ops: Vec<Operation>,
}

/// Why [`merge`] gave no state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    #[error("no states to merge")]
    NoStates,
}

/// Merges the states of one item; the answer does not depend on their order.
///
/// # Errors
/// [`MergeError::NoStates`] when `states` is empty.
pub fn merge(states: &[ItemState]) -> Result<ItemState, MergeError> {
    let base = states
        .iter()
        .map(|s| s.base)
        .max_by_key(|b| (b.version, b.qty))
        .ok_or(MergeError::NoStates)?;
    let mut by_id: BTreeMap<u128, Operation> = BTreeMap::new();
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
    ops.sort_by_key(|op| (op.version, op.id));
    Ok(ItemState { base, ops })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(id: u128, kind: OpKind, hlc: u64) -> Operation {
        Operation {
            id,
            kind,
            version: Version { hlc, gateway: 1 },
        }
    }

    fn state(base: Base, ops: &[Operation]) -> ItemState {
        ItemState {
            base,
            ops: ops.to_vec(),
        }
    }

    #[test]
    fn no_states_is_an_error() {
        assert_eq!(merge(&[]), Err(MergeError::NoStates));
    }

    #[test]
    fn unions_by_id_and_keeps_the_larger_version() {
        let a = state(
            Base::default(),
            &[op(1, OpKind::Add, 10), op(2, OpKind::Add, 20)],
        );
        let b = state(
            Base::default(),
            &[op(2, OpKind::Add, 5), op(3, OpKind::Delete, 30)],
        );
        let merged = merge(&[a.clone(), b.clone()]);
        assert_eq!(merged, merge(&[b, a]));
        let expected = [
            op(1, OpKind::Add, 10),
            op(2, OpKind::Add, 20),
            op(3, OpKind::Delete, 30),
        ];
        assert_eq!(merged.map(|m| m.ops), Ok(expected.to_vec()));
    }

    #[test]
    fn the_newest_base_wins_and_drops_what_it_folded() {
        let folded = Base {
            qty: 2,
            version: Some(Version {
                hlc: 20,
                gateway: 1,
            }),
        };
        let a = state(folded, &[op(3, OpKind::Delete, 30)]);
        let b = state(
            Base::default(),
            &[
                op(1, OpKind::Add, 10),
                op(2, OpKind::Add, 20),
                op(3, OpKind::Delete, 30),
            ],
        );
        assert_eq!(merge(&[b, a.clone()]), Ok(a));
    }

    #[test]
    fn the_same_version_with_two_kinds_keeps_delete() {
        let a = state(Base::default(), &[op(1, OpKind::Delete, 10)]);
        let b = state(Base::default(), &[op(1, OpKind::Add, 10)]);
        assert_eq!(merge(&[a.clone(), b]), Ok(a));
    }
}

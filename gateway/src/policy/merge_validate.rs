//! Checking a merge guest's answer against its inputs: pure functions, no WebAssembly.
//!
//! The host does not recompute the merge (then the policy would be pointless); it checks
//! that the answer is made only of what the inputs hold, so a policy can choose, order and
//! drop, but never invent: the base must be the base of some input (a policy cannot make
//! up a quantity), every operation must be one some input holds with the same id, kind and
//! version, the log must be sorted by (version, id) with each id once, and no operation may
//! be at or below the base's version (the base already folds those). Whether the choice is
//! a *good* merge is what the laws of `merge_laws` test.

use std::collections::{HashMap, HashSet};

use cartdb_core::cart::{Base, ItemState, OpId, OpKind, Operation};
use cartdb_core::version::Version;
use thiserror::Error;

/// Why a merge guest's answer was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum InvalidMerge {
    #[error("its base ({}) is the base of no input", base_text(.base))]
    BaseNotFromInput { base: Base },
    #[error("operation {} is in no input", op_text(.op))]
    UnknownOperation { op: Operation },
    #[error("operation {} is in no input with that kind and version", op_text(.op))]
    AlteredOperation { op: Operation },
    #[error("operation {} appears twice", .id)]
    DuplicateOperation { id: OpId },
    #[error("operation {} comes after operation {} but sorts before it: the log must be sorted by (version, id)", op_text(.op), .previous)]
    OutOfOrder { op: Operation, previous: OpId },
    #[error("operation {} is at or below the base version {}, which already folds it", op_text(.op), version_text(.base))]
    FoldedOperation { op: Operation, base: Version },
}

/// Checks that `base` and `ops` are made of what `inputs` hold (see the module docs).
pub(crate) fn validate_merge(
    inputs: &[ItemState],
    base: &Base,
    ops: &[Operation],
) -> Result<(), InvalidMerge> {
    if !inputs.iter().any(|s| s.base == *base) {
        return Err(InvalidMerge::BaseNotFromInput { base: *base });
    }
    let mut held: HashMap<OpId, Vec<(OpKind, Version)>> = HashMap::new();
    for op in inputs.iter().flat_map(|s| &s.ops) {
        held.entry(op.id).or_default().push((op.kind, op.version));
    }
    let mut seen: HashSet<OpId> = HashSet::with_capacity(ops.len());
    let mut previous: Option<&Operation> = None;
    for op in ops {
        if !seen.insert(op.id) {
            return Err(InvalidMerge::DuplicateOperation { id: op.id });
        }
        if let Some(earlier) = previous.filter(|p| p.log_order() > op.log_order()) {
            return Err(InvalidMerge::OutOfOrder {
                op: *op,
                previous: earlier.id,
            });
        }
        match held.get(&op.id) {
            None => return Err(InvalidMerge::UnknownOperation { op: *op }),
            Some(copies) if !copies.contains(&(op.kind, op.version)) => {
                return Err(InvalidMerge::AlteredOperation { op: *op });
            }
            Some(_) => {}
        }
        if let Some(at) = base.version.filter(|&v| op.version <= v) {
            return Err(InvalidMerge::FoldedOperation { op: *op, base: at });
        }
        previous = Some(op);
    }
    Ok(())
}

fn version_text(v: &Version) -> String {
    format!("(hlc {}, gateway {})", v.hlc, v.gateway)
}

fn op_text(op: &Operation) -> String {
    let kind = match op.kind {
        OpKind::Add => "add",
        OpKind::Delete => "delete",
    };
    format!("{} ({kind} at {})", op.id, version_text(&op.version))
}

fn base_text(base: &Base) -> String {
    match &base.version {
        Some(v) => format!("quantity {} at {}", base.qty, version_text(v)),
        None => format!("quantity {}, no version", base.qty),
    }
}

#[cfg(test)]
mod tests {
    use cartdb_core::cart::ItemMeta;

    use super::*;

    fn v(hlc: u64) -> Version {
        Version { hlc, gateway: 1 }
    }

    fn op(id: u128, kind: OpKind, hlc: u64) -> Operation {
        Operation {
            id: OpId(id),
            kind,
            version: v(hlc),
        }
    }

    fn state(base: Base, ops: &[Operation]) -> ItemState {
        ItemState {
            product: "1".into(),
            meta: ItemMeta {
                price: 61,
                category: "1".into(),
            },
            base,
            ops: ops.to_vec(),
        }
    }

    fn folded(qty: u64, hlc: u64) -> Base {
        Base {
            qty,
            version: Some(v(hlc)),
        }
    }

    fn inputs() -> Vec<ItemState> {
        vec![
            state(
                Base::default(),
                &[
                    op(1, OpKind::Add, 10),
                    op(2, OpKind::Add, 20),
                    op(3, OpKind::Delete, 30),
                ],
            ),
            state(folded(2, 20), &[op(3, OpKind::Delete, 25)]),
        ]
    }

    #[test]
    fn accepts_any_choice_made_of_the_inputs() {
        let inputs = inputs();
        let good = [
            (Base::default(), vec![]),
            (
                Base::default(),
                vec![op(1, OpKind::Add, 10), op(3, OpKind::Delete, 25)],
            ),
            (folded(2, 20), vec![op(3, OpKind::Delete, 30)]),
        ];
        for (base, ops) in good {
            assert_eq!(validate_merge(&inputs, &base, &ops), Ok(()), "{ops:?}");
        }
    }

    #[test]
    fn refuses_what_no_input_holds_and_bad_logs() {
        let inputs = inputs();
        let cases = [
            (
                folded(3, 20),
                vec![],
                InvalidMerge::BaseNotFromInput {
                    base: folded(3, 20),
                },
            ),
            (
                Base::default(),
                vec![op(9, OpKind::Add, 10)],
                InvalidMerge::UnknownOperation {
                    op: op(9, OpKind::Add, 10),
                },
            ),
            (
                Base::default(),
                vec![op(1, OpKind::Delete, 10)],
                InvalidMerge::AlteredOperation {
                    op: op(1, OpKind::Delete, 10),
                },
            ),
            (
                Base::default(),
                vec![op(3, OpKind::Delete, 25), op(3, OpKind::Delete, 30)],
                InvalidMerge::DuplicateOperation { id: OpId(3) },
            ),
            (
                Base::default(),
                vec![op(2, OpKind::Add, 20), op(1, OpKind::Add, 10)],
                InvalidMerge::OutOfOrder {
                    op: op(1, OpKind::Add, 10),
                    previous: OpId(2),
                },
            ),
            (
                folded(2, 20),
                vec![op(2, OpKind::Add, 20)],
                InvalidMerge::FoldedOperation {
                    op: op(2, OpKind::Add, 20),
                    base: v(20),
                },
            ),
        ];
        for (base, ops, expected) in cases {
            assert_eq!(validate_merge(&inputs, &base, &ops), Err(expected));
        }
    }

    #[test]
    fn messages_say_what_is_wrong() {
        let huge = InvalidMerge::BaseNotFromInput {
            base: Base {
                qty: 1 << 63,
                version: None,
            },
        };
        assert_eq!(
            huge.to_string(),
            "its base (quantity 9223372036854775808, no version) is the base of no input"
        );
        let unknown = InvalidMerge::UnknownOperation {
            op: op(0xbeef, OpKind::Add, 1),
        };
        assert_eq!(
            unknown.to_string(),
            "operation 0000000000000000000000000000beef (add at (hlc 1, gateway 1)) is in no input"
        );
    }
}

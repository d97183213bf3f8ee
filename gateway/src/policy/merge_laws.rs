//! The merge laws as a conformance suite for any merge function: a merge policy component
//! (through [`MergePolicy::merge`](super::MergePolicy::merge)), the built-in
//! `cartdb_core::merge::merge_all`, or anything else with the same shape.
//!
//! A gateway merges whichever replicas answered, in whatever order they answered, and may
//! merge a merged state again later. So a merge must be
//! - **commutative**: `merge([a, b]) == merge([b, a])`, and every order of `[a, b, c]`
//!   gives the same state;
//! - **associative**: `merge([merge([a, b]), c]) == merge([a, merge([b, c])])`;
//! - **idempotent**: `merge([a, a]) == a` and `merge([a]) == a`;
//! - **keeping every acknowledged operation**: every operation an input holds above the
//!   merged base is in the result, and the merged quantity equals the replay of the union
//!   of the inputs (from the newest base, each op id once at its smallest version, in
//!   version order, clamping at zero).
//!
//! [`check_laws`] tests each law on the same random cases with proptest's [`TestRunner`]
//! and reports, per law, a pass or the smallest counterexample shrinking found.
//!
//! The cases are histories of three replicas: a few client requests (each op id always
//! means the same kind), each sent one or more times (a retry reaches replicas under a new
//! version), every send reaching a random subset of the replicas; optionally a prefix every
//! replica holds is compacted into a base on some of them. Bases are never random numbers:
//! as in a real cluster, a base only folds operations that every replica had. Versions come
//! from a small range so that they collide, which a cluster never does (a gateway never
//! issues one version twice), but a merge must not break on it either.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use cartdb_core::cart::{Base, ItemMeta, ItemState, OpId, OpKind, Operation, fold_qty};
use cartdb_core::version::Version;
use proptest::prelude::*;
use proptest::test_runner::{
    Config, RngAlgorithm, TestCaseError, TestCaseResult, TestError, TestRng, TestRunner,
};

/// Distinct client requests in one case; few, so that op ids collide often.
const REQUESTS: usize = 6;
/// Most sends (first tries and retries) in one history.
const MAX_SENDS: usize = 12;
/// Clock readings are drawn from `1..MAX_HLC`; few, so that versions collide often.
const MAX_HLC: u64 = 24;
/// Gateways issuing versions.
const GATEWAYS: u32 = 3;
/// Bound on shrinking steps per failed law, so a slow merge cannot stall the report.
const MAX_SHRINK_ITERS: u32 = 4096;
/// The product every case is about (a merge is per item).
const PRODUCT: &str = "1";

/// A law every merge must keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Law {
    Commutative,
    Associative,
    Idempotent,
    KeepsAcknowledgedOps,
}

impl Law {
    /// Every law, in report order.
    pub const ALL: [Law; 4] = [
        Law::Commutative,
        Law::Associative,
        Law::Idempotent,
        Law::KeepsAcknowledgedOps,
    ];

    /// The law's name in reports.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Law::Commutative => "commutative",
            Law::Associative => "associative",
            Law::Idempotent => "idempotent",
            Law::KeepsAcknowledgedOps => "no acknowledged op dropped",
        }
    }

    /// What the law demands, in one line.
    #[must_use]
    pub fn statement(self) -> &'static str {
        match self {
            Law::Commutative => "merge([a, b]) == merge([b, a]); every order of [a, b, c] agrees",
            Law::Associative => "merge([merge([a, b]), c]) == merge([a, merge([b, c])])",
            Law::Idempotent => "merge([a, a]) == a and merge([a]) == a",
            Law::KeepsAcknowledgedOps => {
                "every op above the merged base is kept; qty == replay of the union"
            }
        }
    }
}

impl fmt::Display for Law {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How one law fared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every case kept the law.
    Passed,
    /// A case broke it: why, and the smallest such case found, in `Debug` form.
    Failed {
        reason: String,
        counterexample: String,
    },
    /// The runner gave up before finding a verdict (it never should: no case is rejected).
    Aborted { reason: String },
}

/// One law's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LawResult {
    pub law: Law,
    /// Cases asked for.
    pub cases: u32,
    pub outcome: Outcome,
}

impl LawResult {
    /// Whether the law held on every case.
    #[must_use]
    pub fn passed(&self) -> bool {
        self.outcome == Outcome::Passed
    }
}

/// The result of every law, in [`Law::ALL`] order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LawReport {
    pub results: Vec<LawResult>,
}

impl LawReport {
    /// Laws that held.
    #[must_use]
    pub fn passed(&self) -> usize {
        self.results.iter().filter(|r| r.passed()).count()
    }

    /// Laws that were broken (or could not be decided).
    #[must_use]
    pub fn failed(&self) -> usize {
        self.results.len() - self.passed()
    }

    /// Whether every law held.
    #[must_use]
    pub fn all_passed(&self) -> bool {
        self.failed() == 0
    }

    /// The result of `law`.
    #[must_use]
    pub fn result(&self, law: Law) -> Option<&LawResult> {
        self.results.iter().find(|r| r.law == law)
    }
}

/// Checks every [`Law`] of `merge` on `cases` random cases each; the same `seed` gives the
/// same cases. A merge that returns an error or panics on a case breaks the law being
/// checked.
pub fn check_laws<E: fmt::Display>(
    merge: &dyn Fn(&[ItemState]) -> Result<ItemState, E>,
    cases: u32,
    seed: u64,
) -> LawReport {
    let merge = |states: &[ItemState]| {
        merge(states).map_err(|e| TestCaseError::fail(format!("the merge failed: {e}")))
    };
    let results = Law::ALL
        .into_iter()
        .map(|law| {
            let mut runner = runner(cases, seed);
            let run = runner.run(&case_strategy(), |case| match law {
                Law::Commutative => commutative(&merge, &case),
                Law::Associative => associative(&merge, &case),
                Law::Idempotent => idempotent(&merge, &case),
                Law::KeepsAcknowledgedOps => keeps_acknowledged_ops(&merge, &case),
            });
            let outcome = match run {
                Ok(()) => Outcome::Passed,
                Err(TestError::Fail(reason, case)) => Outcome::Failed {
                    reason: reason.message().to_owned(),
                    counterexample: format!("{case:?}"),
                },
                Err(TestError::Abort(reason)) => Outcome::Aborted {
                    reason: reason.message().to_owned(),
                },
            };
            LawResult {
                law,
                cases,
                outcome,
            }
        })
        .collect();
    LawReport { results }
}

/// A runner whose cases depend on `seed` only (no persistence files, no environment).
fn runner(cases: u32, seed: u64) -> TestRunner {
    let config = Config {
        cases,
        max_shrink_iters: MAX_SHRINK_ITERS,
        failure_persistence: None,
        ..Config::default()
    };
    // ChaCha takes exactly 32 bytes of seed.
    let mut bytes = [0_u8; 32];
    for chunk in bytes.chunks_exact_mut(8) {
        chunk.copy_from_slice(&seed.to_le_bytes());
    }
    TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &bytes))
}

/// The states three replicas hold for one item.
#[derive(Clone, PartialEq, Eq)]
pub struct Case {
    pub replicas: [ItemState; 3],
}

/// Compact, so a counterexample reads at a glance: `+3@7.1` is op id 3, an add, at hlc 7
/// from gateway 1; a base is `qty@version`.
impl fmt::Debug for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, state) in ["a", "b", "c"].iter().zip(&self.replicas) {
            if *name != "a" {
                f.write_str("; ")?;
            }
            write!(f, "{name} = {}", StateText(state))?;
        }
        Ok(())
    }
}

/// An item state in the compact form of [`Case`]'s `Debug`.
struct StateText<'a>(&'a ItemState);

impl fmt::Display for StateText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.0;
        write!(f, "{{base {}", state.base.qty)?;
        if let Some(v) = state.base.version {
            write!(f, "@{}.{}", v.hlc, v.gateway)?;
        }
        f.write_str(", ops [")?;
        for (i, op) in state.ops.iter().enumerate() {
            let kind = match op.kind {
                OpKind::Add => '+',
                OpKind::Delete => '-',
            };
            let space = if i == 0 { "" } else { " " };
            write!(
                f,
                "{space}{kind}{}@{}.{}",
                op.id.0, op.version.hlc, op.version.gateway
            )?;
        }
        f.write_str("]}")
    }
}

/// One send of a request: which request, its version, and which replicas it reached
/// (bit i: replica i).
type Send = (usize, u64, u32, u8);

fn case_strategy() -> impl Strategy<Value = Case> {
    // proptest shrinks a tuple's members in order and does not come back to earlier ones,
    // so the compaction comes first (a counterexample without it is simpler to read) and
    // the kinds last (they only get simpler once the history is short).
    (
        // The compaction cut (a clock reading), if any.
        prop::option::of(0..MAX_HLC),
        // Which replicas have compacted up to the cut.
        prop::array::uniform3(any::<bool>()),
        prop::collection::vec(
            (0..REQUESTS, 1..MAX_HLC, 0..GATEWAYS, 0_u8..8),
            0..=MAX_SENDS,
        ),
        // Per request: false is an add, so shrinking heads for adds.
        prop::array::uniform6(any::<bool>()),
    )
        .prop_map(|(cut, compacted, sends, deletes)| build_case(deletes, &sends, cut, compacted))
}

/// Plays a history onto three replicas (see the module docs).
fn build_case(
    deletes: [bool; REQUESTS],
    sends: &[Send],
    cut: Option<u64>,
    compacted: [bool; 3],
) -> Case {
    let op = |&(request, hlc, gateway, _): &Send| Operation {
        // Small ids (1..=6) keep counterexamples readable.
        id: OpId(request as u128 + 1),
        kind: if deletes[request] {
            OpKind::Delete
        } else {
            OpKind::Add
        },
        version: Version { hlc, gateway },
    };
    let in_prefix = |send: &Send| cut.is_some_and(|cut| send.1 <= cut);
    // Compaction may only fold what every replica holds, so the prefix reaches them all.
    let prefix: Vec<Operation> = sends.iter().filter(|s| in_prefix(s)).map(op).collect();
    let folded_ids: HashSet<OpId> = prefix.iter().map(|o| o.id).collect();
    let meta = ItemMeta {
        price: 61,
        category: "1".into(),
    };
    let replicas = [0, 1, 2].map(|replica| {
        let mut state = ItemState::new(PRODUCT, meta.clone());
        for &o in &prefix {
            state.apply(o);
        }
        if compacted[replica] && !state.ops.is_empty() {
            state.base = Base {
                qty: state.qty(),
                version: state.latest_version(),
            };
            state.ops.clear();
        }
        // A retry of a folded request is left out: a compacted replica no longer knows its
        // id and would count it twice, which is a compaction matter, not a merge one.
        for send in sends.iter().filter(|s| !in_prefix(s)) {
            let o = op(send);
            if send.3 & (1 << replica) != 0 && !folded_ids.contains(&o.id) {
                state.apply(o);
            }
        }
        state
    });
    Case { replicas }
}

/// `Err` with both states shown when they differ.
fn expect_equal(what: &str, left: &ItemState, right: &ItemState) -> TestCaseResult {
    if left == right {
        Ok(())
    } else {
        Err(TestCaseError::fail(format!(
            "{what}: {} != {}",
            StateText(left),
            StateText(right)
        )))
    }
}

type Merge<'a> = dyn Fn(&[ItemState]) -> Result<ItemState, TestCaseError> + 'a;

fn commutative(merge: &Merge<'_>, case: &Case) -> TestCaseResult {
    let [a, b, c] = &case.replicas;
    let ab = merge(&[a.clone(), b.clone()])?;
    let ba = merge(&[b.clone(), a.clone()])?;
    expect_equal("merge([a, b]) != merge([b, a])", &ab, &ba)?;
    let abc = merge(&case.replicas)?;
    for (order, states) in [
        ("a, c, b", [a, c, b]),
        ("b, a, c", [b, a, c]),
        ("b, c, a", [b, c, a]),
        ("c, a, b", [c, a, b]),
        ("c, b, a", [c, b, a]),
    ] {
        let other = merge(&states.map(Clone::clone))?;
        expect_equal(
            &format!("merge([a, b, c]) != merge([{order}])"),
            &abc,
            &other,
        )?;
    }
    Ok(())
}

fn associative(merge: &Merge<'_>, case: &Case) -> TestCaseResult {
    let [a, b, c] = &case.replicas;
    let left = merge(&[merge(&[a.clone(), b.clone()])?, c.clone()])?;
    let right = merge(&[a.clone(), merge(&[b.clone(), c.clone()])?])?;
    expect_equal(
        "merge([merge([a, b]), c]) != merge([a, merge([b, c])])",
        &left,
        &right,
    )
}

fn idempotent(merge: &Merge<'_>, case: &Case) -> TestCaseResult {
    for (name, state) in ["a", "b", "c"].iter().zip(&case.replicas) {
        let twice = merge(&[state.clone(), state.clone()])?;
        expect_equal(&format!("merge([{name}, {name}]) != {name}"), &twice, state)?;
        let once = merge(std::slice::from_ref(state))?;
        expect_equal(&format!("merge([{name}]) != {name}"), &once, state)?;
    }
    Ok(())
}

fn keeps_acknowledged_ops(merge: &Merge<'_>, case: &Case) -> TestCaseResult {
    let merged = merge(&case.replicas)?;
    for (name, state) in ["a", "b", "c"].iter().zip(&case.replicas) {
        let above_base = |op: &&Operation| merged.base.version.is_none_or(|v| op.version > v);
        if let Some(op) = state
            .ops
            .iter()
            .filter(above_base)
            .find(|op| !merged.contains(op.id))
        {
            return Err(TestCaseError::fail(format!(
                "op {} held by {name} is above the merged base but not in {}",
                op.id.0,
                StateText(&merged)
            )));
        }
    }
    let expected = replay(&case.replicas);
    let got = merged.qty();
    if got == expected {
        Ok(())
    } else {
        Err(TestCaseError::fail(format!(
            "qty {got} of {}, but replaying the union gives {expected}",
            StateText(&merged)
        )))
    }
}

/// The quantity the union of `states` stands for: the newest base, then every operation
/// above it, each id once at its largest (version, kind), in (version, id) order.
fn replay(states: &[ItemState]) -> u64 {
    let base = states
        .iter()
        .map(|s| s.base)
        .max_by_key(|b| (b.version, b.qty))
        .unwrap_or_default();
    let mut by_id: BTreeMap<OpId, (Version, OpKind)> = BTreeMap::new();
    for op in states.iter().flat_map(|s| &s.ops) {
        let candidate = (op.version, op.kind);
        by_id
            .entry(op.id)
            .and_modify(|held| *held = (*held).max(candidate))
            .or_insert(candidate);
    }
    let mut ops: Vec<(Version, OpId, OpKind)> = by_id
        .into_iter()
        .filter(|(_, (version, _))| base.version.is_none_or(|b| *version > b))
        .map(|(id, (version, kind))| (version, id, kind))
        .collect();
    ops.sort_unstable();
    fold_qty(base.qty, ops.into_iter().map(|(_, _, kind)| kind))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::convert::Infallible;

    use proptest::strategy::ValueTree;

    use super::*;

    fn builtin(states: &[ItemState]) -> Result<ItemState, &'static str> {
        cartdb_core::merge::merge_all(states).ok_or("no states")
    }

    #[test]
    fn the_builtin_merge_keeps_every_law() {
        let report = check_laws(&builtin, 256, 7);
        assert!(report.all_passed(), "{report:#?}");
        assert_eq!(report.passed(), 4);
    }

    #[test]
    fn the_first_state_is_no_merge_and_gets_a_small_counterexample() {
        let first =
            |states: &[ItemState]| -> Result<ItemState, Infallible> { Ok(states[0].clone()) };
        let report = check_laws(&first, 256, 7);
        let result = report.result(Law::KeepsAcknowledgedOps).unwrap();
        let Outcome::Failed {
            reason,
            counterexample,
        } = &result.outcome
        else {
            panic!("expected a failure: {result:?}");
        };
        assert!(reason.contains("above the merged base"), "{reason}");
        // Shrunk to one send, reaching b or c but not a.
        assert!(
            counterexample.starts_with("a = {base 0, ops []}"),
            "{counterexample}"
        );
        assert!(counterexample.matches('@').count() <= 2, "{counterexample}");
        assert!(!report.result(Law::Commutative).unwrap().passed());
        assert!(report.result(Law::Associative).unwrap().passed());
        assert!(report.result(Law::Idempotent).unwrap().passed());
        assert_eq!(report.failed(), 2, "{report:#?}");
    }

    #[test]
    fn errors_break_the_law_being_checked() {
        let refuse = |_: &[ItemState]| -> Result<ItemState, String> { Err("nope".into()) };
        let report = check_laws(&refuse, 8, 1);
        assert_eq!(report.failed(), 4);
        for result in &report.results {
            match &result.outcome {
                Outcome::Failed { reason, .. } => {
                    assert_eq!(reason, "the merge failed: nope")
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_cases() {
        let strategy = case_strategy();
        let draw = |seed| {
            let mut runner = runner(1, seed);
            (0..20)
                .map(|_| strategy.new_tree(&mut runner).unwrap().current())
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(42), draw(42));
        assert_ne!(draw(42), draw(43));
    }

    #[test]
    fn cases_are_histories_a_cluster_can_produce() {
        let mut runner = runner(1, 3);
        let strategy = case_strategy();
        let mut compacted = 0;
        for _ in 0..500 {
            let case = strategy.new_tree(&mut runner).unwrap().current();
            let bases: HashSet<Base> = case
                .replicas
                .iter()
                .map(|s| s.base)
                .filter(|b| b.version.is_some())
                .collect();
            assert!(bases.len() <= 1, "one compaction cut: {case:?}");
            compacted += usize::from(!bases.is_empty());
            for state in &case.replicas {
                assert!(state.ops.is_sorted_by_key(Operation::log_order), "{case:?}");
                let ids: HashSet<OpId> = state.ops.iter().map(|o| o.id).collect();
                assert_eq!(ids.len(), state.ops.len(), "{case:?}");
            }
        }
        assert!(compacted > 50, "compaction happens in {compacted} of 500");
    }

    #[test]
    fn replay_starts_from_the_newest_base() {
        let state = |base: Base, ops: &[(u128, OpKind, u64)]| {
            let mut s = ItemState::new(
                PRODUCT,
                ItemMeta {
                    price: 1,
                    category: "1".into(),
                },
            );
            s.base = base;
            s.ops = ops
                .iter()
                .map(|&(id, kind, hlc)| Operation {
                    id: OpId(id),
                    kind,
                    version: Version { hlc, gateway: 0 },
                })
                .collect();
            s
        };
        let folded = Base {
            qty: 2,
            version: Some(Version { hlc: 5, gateway: 0 }),
        };
        let states = [
            state(
                Base::default(),
                &[
                    (1, OpKind::Add, 3),
                    (2, OpKind::Add, 5),
                    (3, OpKind::Delete, 9),
                ],
            ),
            state(folded, &[(3, OpKind::Delete, 9), (4, OpKind::Delete, 10)]),
        ];
        // 2, then -1 -1 (ops 1 and 2 are in the base).
        assert_eq!(replay(&states), 0);
        assert_eq!(replay(&states[..1]), 1);
    }
}

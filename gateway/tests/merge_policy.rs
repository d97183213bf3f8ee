//! The merge policy host against real components: the reference merge guest, the
//! last-writer-wins example and the misbehaving merge test guests built by
//! `cartdb-policies`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cartdb_core::cart::{Base, ItemMeta, ItemState, OpId, OpKind, Operation};
use cartdb_core::merge::merge_all;
use cartdb_core::version::Version;
use cartdb_gateway::policy::merge_laws::{Law, Outcome, check_laws};
use cartdb_gateway::policy::{InvalidMerge, MergePolicy, PolicyEngine, PolicyError, PolicyLimits};
use cartdb_policies::{MERGE_LWW_POLICY_WASM, MERGE_POLICY_WASM, test_guests};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// Call deadline of this binary's engine: short, so the spinning guest is cut off fast.
const CALL_TIMEOUT: Duration = Duration::from_millis(50);

/// One engine for the whole test binary: each engine reserves its own instance pool.
fn engine() -> &'static PolicyEngine {
    static ENGINE: OnceLock<PolicyEngine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let limits = PolicyLimits {
            call_timeout: CALL_TIMEOUT,
            // Fuel is tested with placement; here the spinning guest meets the deadline.
            call_fuel: u64::MAX / 2,
            ..PolicyLimits::default()
        };
        PolicyEngine::with_limits(limits).unwrap()
    })
}

fn load(path: &str) -> MergePolicy {
    MergePolicy::load(engine(), Path::new(path)).unwrap()
}

fn meta(price: u64) -> ItemMeta {
    ItemMeta {
        price,
        category: "1".into(),
    }
}

fn op(id: u128, kind: OpKind, hlc: u64, gateway: u32) -> Operation {
    Operation {
        id: OpId(id),
        kind,
        version: Version { hlc, gateway },
    }
}

fn state(ops: &[Operation]) -> ItemState {
    let mut state = ItemState::new("7", meta(61));
    for &o in ops {
        state.apply(o);
    }
    state
}

/// Two replicas that each missed one add.
fn diverged() -> [ItemState; 2] {
    [
        state(&[op(1, OpKind::Add, 10, 1), op(2, OpKind::Add, 20, 1)]),
        state(&[op(1, OpKind::Add, 10, 1), op(3, OpKind::Add, 30, 2)]),
    ]
}

#[test]
fn the_reference_guest_loads_with_name_and_sha256() {
    let policy = load(MERGE_POLICY_WASM);
    assert_eq!(policy.name(), "union-by-op-id");
    assert_eq!(policy.sha256().len(), 64);
    assert_eq!(policy.path(), Path::new(MERGE_POLICY_WASM));
    let lww = load(MERGE_LWW_POLICY_WASM);
    assert_eq!(lww.name(), "last-writer-wins");
    assert_ne!(lww.sha256(), policy.sha256());
}

#[test]
fn the_reference_guest_merges_like_the_builtin() {
    let policy = load(MERGE_POLICY_WASM);
    let states = diverged();
    let merged = policy.merge(&states).unwrap();
    assert_eq!(merged.qty(), 3);
    assert_eq!(Some(merged), merge_all(&states));
}

#[test]
fn the_reference_guest_keeps_every_law() {
    let policy = load(MERGE_POLICY_WASM);
    let report = check_laws(&|states| policy.merge(states), 128, 11);
    assert!(report.all_passed(), "{report:#?}");
    assert_eq!((report.passed(), report.failed()), (4, 0));
}

/// Replica states as a cluster could hold them, with product facts that differ between
/// replicas (a price change), so the host's choice of facts is compared too.
fn replica_states() -> impl Strategy<Value = Vec<ItemState>> {
    // Ids and versions from small ranges, so they collide; one id may even come with both
    // kinds, which no gateway does, but both merges must still agree.
    let op = (1_u128..8, any::<bool>(), 1_u64..30, 0_u32..3).prop_map(|(id, delete, hlc, gw)| {
        let kind = if delete { OpKind::Delete } else { OpKind::Add };
        op(id, kind, hlc, gw)
    });
    let replica = (
        prop::collection::vec(op, 0..8),
        prop::option::of(1_u64..30),
        60_u64..63,
    )
        .prop_map(|(ops, base, price)| {
            let mut s = ItemState::new("7", meta(price));
            if let Some(hlc) = base {
                // One version, one folded quantity: replicas compacted at the same point
                // agree on what it folds, so two bases never differ in quantity alone.
                s.base = Base {
                    qty: hlc % 4,
                    version: Some(Version { hlc, gateway: 0 }),
                };
            }
            for o in ops {
                s.apply(o);
            }
            s
        });
    prop::collection::vec(replica, 1..5)
}

#[test]
fn the_reference_guest_agrees_with_the_builtin_on_random_states() {
    let policy = load(MERGE_POLICY_WASM);
    let mut runner = TestRunner::new(Config {
        cases: 512,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&replica_states(), |states| {
            let from_policy = policy
                .merge(&states)
                .map_err(|e| proptest::test_runner::TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(Some(from_policy), merge_all(&states));
            Ok(())
        })
        .unwrap();
}

#[test]
fn last_writer_wins_drops_acknowledged_ops() {
    let policy = load(MERGE_LWW_POLICY_WASM);
    // The replica with the newest write wins whole: op 2 (acknowledged by the other
    // replica) is lost.
    let merged = policy.merge(&diverged()).unwrap();
    assert_eq!(merged, diverged()[1]);
    assert_eq!(merged.qty(), 2);
    let report = check_laws(&|states| policy.merge(states), 128, 11);
    let kept = report.result(Law::KeepsAcknowledgedOps).unwrap();
    match &kept.outcome {
        Outcome::Failed {
            reason,
            counterexample,
        } => {
            assert!(
                reason.contains("not in") || reason.contains("replaying"),
                "{reason}"
            );
            assert!(counterexample.starts_with("a = {"), "{counterexample}");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    assert!(!report.all_passed());
}

#[test]
fn the_host_attaches_product_and_the_newest_facts() {
    let policy = load(MERGE_POLICY_WASM);
    let [mut old, mut new] = diverged();
    old.meta = meta(50);
    new.meta = meta(70);
    for states in [[old.clone(), new.clone()], [new.clone(), old.clone()]] {
        let merged = policy.merge(&states).unwrap();
        assert_eq!(merged.product, "7");
        assert_eq!(merged.meta, meta(70), "the state that saw hlc 30 decides");
    }
}

#[test]
fn bad_requests_are_errors_naming_the_file() {
    let policy = load(MERGE_POLICY_WASM);
    let err = policy.merge(&[]).unwrap_err();
    assert!(matches!(err, PolicyError::NothingToMerge { .. }), "{err:?}");
    assert!(err.to_string().contains(MERGE_POLICY_WASM), "{err}");
    let [a, mut b] = diverged();
    b.product = "8".into();
    let err = policy.merge(&[a, b]).unwrap_err();
    assert!(matches!(err, PolicyError::MixedProducts { .. }), "{err:?}");
    assert!(err.to_string().contains("\"7\" and \"8\""), "{err}");
}

/// Loads a misbehaving guest and merges two states with it.
fn misbehave(path: &str) -> (MergePolicy, PolicyError) {
    let policy = load(path);
    let err = policy.merge(&diverged()).unwrap_err();
    let message = err.to_string();
    assert!(message.contains(path), "{message}");
    (policy, err)
}

/// The host still works after `policy` failed: the reference guest merges, and `policy`
/// itself answers a lone state (all misbehaving guests but the invalid ones return it).
fn still_works(policy: &MergePolicy) {
    let good = load(MERGE_POLICY_WASM);
    assert_eq!(good.merge(&diverged()).unwrap().qty(), 3);
    let lone = diverged()[0].clone();
    assert_eq!(policy.merge(std::slice::from_ref(&lone)).unwrap(), lone);
}

#[test]
fn a_trapping_guest_is_an_error_and_its_instance_is_replaced() {
    let (policy, err) = misbehave(test_guests::MERGE_TRAP_WASM);
    match &err {
        PolicyError::Trapped { detail, .. } => assert!(detail.contains("unreachable"), "{detail}"),
        other => panic!("expected a trap, got {other:?}"),
    }
    assert!(err.to_string().contains("trapped"), "{err}");
    // The trapped instance could not be entered again; the next call gets a new one.
    still_works(&policy);
    let again = policy.merge(&diverged()).unwrap_err();
    assert!(matches!(again, PolicyError::Trapped { .. }), "{again:?}");
    still_works(&policy);
}

#[test]
fn a_guest_growing_to_a_gibibyte_traps_and_the_next_call_gets_a_fresh_instance() {
    let (policy, err) = misbehave(test_guests::MERGE_GROW_WASM);
    assert!(matches!(err, PolicyError::Trapped { .. }), "{err:?}");
    // A lone state needs no growth: a fresh instance answers it.
    still_works(&policy);
}

#[test]
fn a_spinning_guest_hits_the_deadline() {
    let started = Instant::now();
    let (policy, err) = misbehave(test_guests::MERGE_SPIN_WASM);
    assert!(
        matches!(err, PolicyError::TimedOut { timeout, .. } if timeout == CALL_TIMEOUT),
        "{err:?}"
    );
    assert!(err.to_string().contains("did not answer within"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    still_works(&policy);
}

#[test]
fn an_invented_operation_is_refused() {
    let (policy, err) = misbehave(test_guests::MERGE_UNKNOWN_OP_WASM);
    match &err {
        PolicyError::InvalidMerge {
            problem: InvalidMerge::UnknownOperation { op },
            ..
        } => {
            assert_eq!(op.id, OpId((0xdead << 64) | 0xbeef));
            assert_eq!(op.version, Version { hlc: 1, gateway: 0 });
        }
        other => panic!("expected an unknown operation, got {other:?}"),
    }
    assert!(
        err.to_string()
            .ends_with("returned an invalid merge: operation 000000000000dead000000000000beef (add at (hlc 1, gateway 0)) is in no input"),
        "{err}"
    );
    // The guest did not trap, so its instance stays and keeps answering (wrongly).
    let again = policy.merge(&diverged()).unwrap_err();
    assert!(
        matches!(again, PolicyError::InvalidMerge { .. }),
        "{again:?}"
    );
    assert_eq!(load(MERGE_POLICY_WASM).merge(&diverged()).unwrap().qty(), 3);
}

#[test]
fn an_invented_base_is_refused() {
    let (_policy, err) = misbehave(test_guests::MERGE_BAD_BASE_WASM);
    assert!(
        matches!(
            err,
            PolicyError::InvalidMerge {
                problem: InvalidMerge::BaseNotFromInput {
                    base: Base {
                        qty: 0x8000_0000_0000_0000,
                        version: None
                    }
                },
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("(quantity 9223372036854775808, no version) is the base of no input"),
        "{err}"
    );
}

#[test]
fn a_guest_error_is_passed_on() {
    let (policy, err) = misbehave(test_guests::MERGE_REFUSES_WASM);
    match &err {
        PolicyError::MergeRefused { message, .. } => assert_eq!(message, "evil says no"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(
        err.to_string().contains("refused to merge: evil says no"),
        "{err}"
    );
    // A refusal is an answer, not a trap: the same instance answers the next call.
    let again = policy.merge(&diverged()).unwrap_err();
    assert!(
        matches!(again, PolicyError::MergeRefused { .. }),
        "{again:?}"
    );
}

#[test]
fn garbage_and_placement_components_are_load_errors() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"definitely not wasm").unwrap();
    let err = MergePolicy::load(engine(), &garbage).unwrap_err();
    assert!(matches!(err, PolicyError::Compile { .. }), "{err:?}");
    assert!(
        err.to_string().starts_with(&format!(
            "policy {} is not a valid WebAssembly component",
            garbage.display()
        )),
        "{err}"
    );
    // A core module is not a component either.
    let core = core_module();
    let err = MergePolicy::from_bytes(engine(), "inline core module", &core).unwrap_err();
    assert!(matches!(err, PolicyError::Compile { .. }), "{err:?}");
    assert!(err.to_string().contains("inline core module"), "{err}");
    // A placement policy is a component, of the wrong world.
    let err =
        MergePolicy::load(engine(), Path::new(cartdb_policies::CRUSH_POLICY_WASM)).unwrap_err();
    assert!(matches!(err, PolicyError::WrongWorld { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("does not implement cartdb:policy/merge-policy@0.1.0"),
        "{err}"
    );
    let err = MergePolicy::load(engine(), Path::new("/nonexistent/merge.wasm")).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("cannot read policy /nonexistent/merge.wasm"),
        "{err}"
    );
}

/// The smallest valid core module: the magic number and version 1.
fn core_module() -> Vec<u8> {
    b"\0asm\x01\0\0\0".to_vec()
}

#[test]
fn from_bytes_loads_like_load() {
    let bytes = std::fs::read(MERGE_POLICY_WASM).unwrap();
    let policy = MergePolicy::from_bytes(engine(), "in memory", &bytes).unwrap();
    assert_eq!(policy.sha256(), load(MERGE_POLICY_WASM).sha256());
    assert_eq!(policy.path(), Path::new("in memory"));
    assert_eq!(policy.merge(&diverged()).unwrap().qty(), 3);
}

#[test]
fn one_policy_serves_many_threads() {
    let policy = load(MERGE_POLICY_WASM);
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                for _ in 0..50 {
                    assert_eq!(policy.merge(&diverged()).unwrap().qty(), 3);
                }
            });
        }
    });
}

/// The clean proof does not trust the merge guest: last-writer-wins keeps the newest
/// replica whole and so drops an operation only a past device holds. The read's plan sees
/// the operation id missing from the merged state, merges that item with the built-in merge
/// instead, and repairs every up-set device with it; the sweep then does not call the PG
/// clean, so handback cannot delete the operation's last copy.
#[test]
fn a_merge_guest_that_drops_an_operation_does_not_decide_the_repairs() {
    use std::collections::{BTreeMap, BTreeSet};

    use cartdb_gateway::read_resolution::{ReadPlan, Repairs};

    let policy = load(MERGE_LWW_POLICY_WASM);
    let on_up = state(&[op(1, OpKind::Add, 10, 1), op(3, OpKind::Add, 30, 1)]);
    let on_past = state(&[op(1, OpKind::Add, 10, 1), op(2, OpKind::Add, 20, 2)]);
    let mut plan = ReadPlan::broadcast([1, 2, 3, 4]);
    plan.add_item("7", &[1, 2, 4], &[3]);
    let answers: BTreeMap<u32, Vec<ItemState>> = [
        (1, vec![on_up.clone()]),
        (2, vec![on_up.clone()]),
        (4, vec![on_up.clone()]),
        (3, vec![on_past.clone()]),
    ]
    .into_iter()
    .collect();
    let summaries = answers
        .iter()
        .map(|(d, states)| (*d, states.iter().map(ItemState::summary).collect()))
        .collect();
    let through_guest = |inputs: &[&ItemState]| {
        let owned: Vec<ItemState> = inputs.iter().map(|s| (*s).clone()).collect();
        policy.merge(&owned).unwrap()
    };
    assert_eq!(
        through_guest(&[&on_up, &on_past]),
        on_up,
        "the guest drops operation 2"
    );
    let repairs = Repairs::plan(&plan, &summaries, &answers, through_guest);
    assert_eq!(repairs.dropped_by_merge, 1);
    assert_eq!(repairs.merged[0].qty, 3, "ops 1, 2 and 3");
    let repaired: BTreeSet<u32> = repairs.repairs.iter().map(|r| r.device).collect();
    assert_eq!(repaired, BTreeSet::from([1, 2, 4]));
    assert!(repairs.repairs.iter().all(|r| r.ops == [on_past.ops[1]]));
}

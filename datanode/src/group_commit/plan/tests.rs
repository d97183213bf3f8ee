//! The plan's tests, against [`MemoryLog`]: an in-memory log that commits [`ItemWrite`]s
//! the way the store does (and can be told to fail), shared with the writer's tests.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::Ordering;

use cartdb_core::cart::{ItemState, OpKind};

use super::*;
use crate::group_commit::ItemLog;

pub(crate) fn op(id: u128, kind: OpKind, hlc: u64) -> Operation {
    Operation {
        id: OpId(id),
        kind,
        version: Version { hlc, gateway: 1 },
    }
}

pub(crate) fn key() -> ItemKey {
    ItemKey {
        user: "u1".into(),
        product: "p1".into(),
    }
}

pub(crate) fn meta(category: &str) -> ItemMeta {
    ItemMeta {
        price: 5,
        category: category.into(),
    }
}

fn request(id: u128, kind: OpKind, hlc: u64, require_in_cart: bool) -> WriteRequest {
    WriteRequest::Apply(ApplyRequest {
        key: key(),
        meta: meta("c1"),
        op: op(id, kind, hlc),
        require_in_cart,
        restamped: false,
    })
}

/// An apply's outcome; `hlc` the clock reading the replica holds the operation under.
fn applied(qty: u64, duplicate: bool, hlc: u64) -> Outcome {
    Outcome::Applied {
        qty,
        duplicate,
        held: Version { hlc, gateway: 1 },
    }
}

/// An in-memory log: full item states, committed from [`ItemWrite`]s the way the store
/// does it. Commits fail while `failing` is set.
#[derive(Default)]
pub(crate) struct MemoryLog {
    items: Mutex<HashMap<ItemKey, ItemState>>,
    /// The id entries: every operation ever added, until forgotten.
    ids: Mutex<HashMap<ItemKey, Vec<Operation>>>,
    pub(crate) failing: std::sync::atomic::AtomicBool,
    reads_fail: bool,
}

impl MemoryLog {
    pub(crate) fn state(&self) -> Option<ItemState> {
        self.items.lock().unwrap().get(&key()).cloned()
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.reads_fail {
            return Err(StoreError::Persist {
                source: fjall::Error::Poisoned,
            });
        }
        Ok(())
    }

    fn run(&self, requests: &[WriteRequest]) -> (Vec<Outcome>, Vec<ItemWrite>) {
        let mut plan = BatchPlan::new(Timing::ANY_AGE, 0);
        let outcomes = requests
            .iter()
            .map(|r| plan.decide(r, self).unwrap())
            .collect();
        let writes = plan.into_writes();
        self.commit(&writes).unwrap();
        (outcomes, writes)
    }
}

impl ItemReader for MemoryLog {
    fn read_summary(&self, key: &ItemKey) -> Result<Option<ItemSummary>, StoreError> {
        self.check()?;
        Ok(self.items.lock().unwrap().get(key).map(ItemState::summary))
    }

    fn find_op(&self, key: &ItemKey, id: OpId) -> Result<Option<Operation>, StoreError> {
        self.check()?;
        let ids = self.ids.lock().unwrap();
        Ok(ids
            .get(key)
            .and_then(|ops| ops.iter().find(|o| o.id == id).copied()))
    }

    fn read_log(&self, key: &ItemKey) -> Result<Vec<Operation>, StoreError> {
        self.check()?;
        Ok(self
            .items
            .lock()
            .unwrap()
            .get(key)
            .map(|s| s.ops.clone())
            .unwrap_or_default())
    }

    fn read_ids(&self, key: &ItemKey) -> Result<Vec<Operation>, StoreError> {
        self.check()?;
        Ok(self
            .ids
            .lock()
            .unwrap()
            .get(key)
            .cloned()
            .unwrap_or_default())
    }
}

impl ItemLog for MemoryLog {
    fn drop_items(&self, keys: &[(ItemKey, StateDigest)]) -> Result<(u32, u32), StoreError> {
        let mut items = self.items.lock().unwrap();
        let mut ids = self.ids.lock().unwrap();
        let (mut dropped, mut changed) = (0, 0);
        for (key, digest) in keys {
            match items.get(key) {
                Some(state) if state.summary().digest == *digest => {
                    items.remove(key);
                    ids.remove(key);
                    dropped += 1;
                }
                Some(_) => changed += 1,
                None => {}
            }
        }
        Ok((dropped, changed))
    }

    fn commit(&self, writes: &[ItemWrite]) -> Result<(), StoreError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(StoreError::Commit {
                writes: writes.len(),
                source: fjall::Error::Poisoned,
            });
        }
        let mut items = self.items.lock().unwrap();
        let mut ids = self.ids.lock().unwrap();
        for w in writes {
            // As the store: one id entry per id, the last write wins.
            let known = ids.entry(w.key.clone()).or_default();
            known.retain(|o| !w.added.iter().any(|a| a.id == o.id));
            known.extend(&w.added);
            known.retain(|o| !w.forgotten.contains(&o.id));
            let state = items
                .entry(w.key.clone())
                .or_insert_with(|| ItemState::new(w.head.product.clone(), w.head.meta.clone()));
            state.ops.retain(|o| !w.folded.contains(o));
            for op in w.added.iter().filter(|o| !w.folded.contains(o)) {
                let at = state
                    .ops
                    .partition_point(|o| o.log_order() < op.log_order());
                state.ops.insert(at, *op);
            }
            state.base = w.head.base;
            state.meta = w.head.meta.clone();
            assert_eq!(
                state.summary(),
                w.head,
                "the head matches the log it summarises"
            );
        }
        Ok(())
    }
}

#[test]
fn a_new_item_takes_the_request_meta() {
    let log = MemoryLog::default();
    let (outcomes, writes) = log.run(&[request(1, OpKind::Add, 1, false)]);
    assert_eq!(outcomes, [applied(1, false, 1)]);
    assert_eq!(writes[0].head.meta.category, "c1");
    assert_eq!(writes[0].index.insert.as_deref(), Some("c1"));
}

#[test]
fn meta_follows_the_newest_request() {
    let log = MemoryLog::default();
    log.run(&[request(1, OpKind::Add, 1, false)]);
    let WriteRequest::Apply(mut moved) = request(2, OpKind::Add, 2, false) else {
        unreachable!()
    };
    moved.meta.category = "c2".into();
    log.run(&[WriteRequest::Apply(moved)]);
    assert_eq!(log.state().unwrap().meta.category, "c2");
}

#[test]
fn a_retry_is_a_duplicate_even_when_the_item_is_now_empty() {
    let log = MemoryLog::default();
    log.run(&[request(1, OpKind::Add, 1, false)]);
    let delete = request(2, OpKind::Delete, 2, true);
    assert_eq!(
        log.run(std::slice::from_ref(&delete)).0,
        [applied(0, false, 2)]
    );
    let (outcomes, writes) = log.run(&[delete, request(3, OpKind::Delete, 3, true)]);
    assert_eq!(outcomes, [applied(0, true, 2), Outcome::NotInCart]);
    assert!(writes.is_empty());
}

#[test]
fn a_delete_of_an_unknown_item_is_not_in_cart_and_writes_nothing() {
    let log = MemoryLog::default();
    let (outcomes, writes) = log.run(&[request(1, OpKind::Delete, 1, true)]);
    assert_eq!(outcomes, [Outcome::NotInCart]);
    assert!(writes.is_empty());
}

#[test]
fn operations_in_one_batch_compose() {
    let log = MemoryLog::default();
    let add = request(1, OpKind::Add, 1, false);
    let (outcomes, writes) = log.run(&[add.clone(), add, request(2, OpKind::Add, 2, false)]);
    assert_eq!(
        outcomes,
        [
            applied(1, false, 1),
            applied(1, true, 1),
            applied(2, false, 2)
        ]
    );
    assert_eq!(writes.len(), 1, "one write per item");
    assert_eq!(writes[0].added.len(), 2);
    assert_eq!(writes[0].index.insert.as_deref(), Some("c1"));
}

#[test]
fn an_apply_below_the_newest_operation_is_refused_and_writes_nothing() {
    let log = MemoryLog::default();
    log.run(&[
        request(1, OpKind::Add, 10, false),
        request(2, OpKind::Delete, 30, false),
    ]);
    let newest = Version {
        hlc: 30,
        gateway: 1,
    };
    for hlc in [20, 30, 5] {
        let (outcomes, writes) = log.run(&[request(3, OpKind::Add, hlc, false)]);
        let version = Version { hlc, gateway: 1 };
        assert_eq!(outcomes, [Outcome::OutOfOrder { version, newest }]);
        assert!(writes.is_empty(), "nothing is written below the newest");
    }
    // Stamped again above it, the same operation is added.
    assert_eq!(
        log.run(&[request(3, OpKind::Add, 31, false)]).0,
        [applied(1, false, 31)]
    );
}

#[test]
fn a_repair_out_of_version_order_refolds_the_log() {
    let log = MemoryLog::default();
    log.run(&[
        request(1, OpKind::Add, 10, false),
        request(2, OpKind::Delete, 30, false),
    ]);
    // add@10, delete@30 -> 0; a delete@20 in between makes add, delete, delete -> 0
    // (clamped); an add@5 before everything makes add, add, delete, delete -> 0, where
    // appending it would have given 1.
    let (outcomes, _) = log.run(&[repair_with(vec![
        op(3, OpKind::Delete, 20),
        op(4, OpKind::Add, 5),
    ])]);
    assert_eq!(outcomes, [Outcome::Repaired { added: 2 }]);
    let state = log.state().unwrap();
    assert_eq!(state.qty(), 0);
    assert_eq!(state.ops.len(), 4);
}

#[test]
fn an_item_at_its_cap_of_unfolded_operations_refuses_new_ones_but_not_retries_or_repairs() {
    let log = MemoryLog::default();
    let timing = Timing {
        max_log_ops: Some(3),
        ..Timing::ANY_AGE
    };
    for (id, hlc) in [(1, 10), (2, 20), (3, 30)] {
        run_at(&log, timing, 0, &request(id, OpKind::Add, hlc, false));
    }
    assert_eq!(
        run_at(&log, timing, 0, &request(4, OpKind::Add, 40, false)),
        Outcome::Busy { ops: 3, cap: 3 }
    );
    assert_eq!(log.state().unwrap().ops.len(), 3, "nothing written");
    assert_eq!(
        run_at(&log, timing, 0, &request(3, OpKind::Add, 30, false)),
        applied(3, true, 30),
        "a retry is still recognised"
    );
    // A repair brings operations other replicas acknowledged: never refused.
    assert_eq!(
        run_at(&log, timing, 0, &repair_with(vec![op(5, OpKind::Add, 50)])),
        Outcome::Repaired { added: 1 }
    );
}

#[test]
fn a_restamped_apply_moves_the_operation_up_and_a_plain_retry_does_not() {
    let log = MemoryLog::default();
    log.run(&[request(1, OpKind::Add, 10, false)]);
    let (outcomes, writes) = log.run(&[request(1, OpKind::Add, 20, false)]);
    assert_eq!(outcomes, [applied(1, true, 10)], "a retry is a duplicate");
    assert!(writes.is_empty());
    let WriteRequest::Apply(mut restamped) = request(1, OpKind::Add, 20, false) else {
        unreachable!()
    };
    restamped.restamped = true;
    let restamped = WriteRequest::Apply(restamped);
    let (outcomes, writes) = log.run(std::slice::from_ref(&restamped));
    assert_eq!(outcomes, [applied(1, false, 20)]);
    assert_eq!(writes[0].folded, [op(1, OpKind::Add, 10)]);
    assert_eq!(log.state().unwrap().ops, [op(1, OpKind::Add, 20)]);
    let (outcomes, writes) = log.run(&[restamped]);
    assert_eq!(outcomes, [applied(1, true, 20)], "moved once");
    assert!(writes.is_empty());
}

#[test]
fn an_item_that_ends_the_batch_as_it_started_keeps_its_index_entry() {
    let log = MemoryLog::default();
    log.run(&[request(1, OpKind::Add, 1, false)]);
    let (outcomes, writes) = log.run(&[
        request(2, OpKind::Delete, 2, true),
        request(3, OpKind::Delete, 3, true),
        request(4, OpKind::Add, 4, false),
    ]);
    assert_eq!(
        outcomes,
        [
            applied(0, false, 2),
            Outcome::NotInCart,
            applied(1, false, 4)
        ]
    );
    assert_eq!(writes.len(), 1);
    assert!(writes[0].index.is_empty(), "qty went 1 -> 0 -> 1");
}

#[test]
fn a_repair_adds_only_what_is_missing_and_adopts_a_newer_base() {
    let log = MemoryLog::default();
    log.run(&[request(1, OpKind::Add, 10, false)]);
    let base = Base {
        qty: 2,
        version: Some(Version {
            hlc: 20,
            gateway: 1,
        }),
    };
    let repair = WriteRequest::Repair(RepairRequest {
        key: key(),
        meta: meta("c1"),
        base: Some(base),
        ops: vec![op(1, OpKind::Add, 10), op(5, OpKind::Add, 30)],
    });
    assert_eq!(
        log.run(std::slice::from_ref(&repair)).0,
        [Outcome::Repaired { added: 1 }]
    );
    let state = log.state().unwrap();
    assert_eq!(state.base, base);
    assert_eq!(state.ops, [op(5, OpKind::Add, 30)]);
    assert_eq!(state.qty(), 3);
    let (outcomes, writes) = log.run(&[repair]);
    assert_eq!(outcomes, [Outcome::Repaired { added: 0 }]);
    assert!(writes.is_empty(), "a repeated repair writes nothing");
    assert!(matches!(
        log.run(&[request(9, OpKind::Add, 15, false)]).0[..],
        [Outcome::TooOld { .. }]
    ));
}

fn repair_with(ops: Vec<Operation>) -> WriteRequest {
    WriteRequest::Repair(RepairRequest {
        key: key(),
        meta: meta("c1"),
        base: None,
        ops,
    })
}

#[test]
fn a_repair_moves_an_operation_held_under_a_smaller_version_to_the_larger() {
    let log = MemoryLog::default();
    log.run(&[
        request(2, OpKind::Delete, 5, false),
        request(1, OpKind::Add, 10, false),
    ]);
    // Operation 2 reached the other replicas stamped again above operation 1: the merge
    // keeps that version, so this replica must move it.
    let merged = vec![op(1, OpKind::Add, 10), op(2, OpKind::Delete, 30)];
    let (outcomes, writes) = log.run(&[repair_with(merged.clone())]);
    assert_eq!(outcomes, [Outcome::Repaired { added: 1 }]);
    assert_eq!(writes[0].folded, [op(2, OpKind::Delete, 5)]);
    let state = log.state().unwrap();
    assert_eq!(state.ops, merged);
    assert_eq!(state.qty(), 0, "the delete now comes after the add");
    assert_eq!(
        log.find_op(&key(), OpId(2)).unwrap(),
        Some(op(2, OpKind::Delete, 30))
    );
    let (outcomes, writes) = log.run(&[repair_with(merged)]);
    assert_eq!(outcomes, [Outcome::Repaired { added: 0 }]);
    assert!(writes.is_empty(), "a repeated repair writes nothing");
    let (outcomes, writes) = log.run(&[repair_with(vec![op(2, OpKind::Delete, 3)])]);
    assert_eq!(outcomes, [Outcome::Repaired { added: 0 }]);
    assert!(
        writes.is_empty(),
        "a smaller version never replaces a larger one"
    );
}

#[test]
fn an_operation_added_and_moved_in_one_batch_is_written_once_at_the_larger_version() {
    let log = MemoryLog::default();
    let (outcomes, writes) = log.run(&[
        request(1, OpKind::Add, 5, false),
        repair_with(vec![op(1, OpKind::Add, 30)]),
    ]);
    assert_eq!(
        outcomes,
        [applied(1, false, 5), Outcome::Repaired { added: 1 }]
    );
    assert_eq!(writes[0].added, [op(1, OpKind::Add, 30)]);
    assert!(writes[0].folded.is_empty(), "nothing was written to remove");
    assert_eq!(log.state().unwrap().ops, [op(1, OpKind::Add, 30)]);
}

#[test]
fn a_folded_operation_is_not_moved() {
    let log = MemoryLog::default();
    log.run(&[request(1, OpKind::Add, 10, false)]);
    let base = Base {
        qty: 1,
        version: Some(Version {
            hlc: 20,
            gateway: 1,
        }),
    };
    log.run(&[WriteRequest::Repair(RepairRequest {
        key: key(),
        meta: meta("c1"),
        base: Some(base),
        ops: Vec::new(),
    })]);
    let (outcomes, writes) = log.run(&[repair_with(vec![op(1, OpKind::Add, 25)])]);
    assert_eq!(outcomes, [Outcome::Repaired { added: 0 }]);
    assert!(writes.is_empty());
    assert_eq!(log.state().unwrap().qty(), 1);
}

fn run_at(log: &MemoryLog, timing: Timing, now_ms: u64, request: &WriteRequest) -> Outcome {
    let mut plan = BatchPlan::new(timing, now_ms);
    let outcome = plan.decide(request, log).unwrap();
    log.commit(&plan.into_writes()).unwrap();
    outcome
}

/// Versions whose clock reading is `ms` milliseconds.
fn at_ms(id: u128, kind: OpKind, ms: u64) -> WriteRequest {
    request(id, kind, ms << 16, false)
}

#[test]
fn compaction_folds_only_old_operations_of_the_state_the_gateway_saw() {
    let log = MemoryLog::default();
    let timing = Timing {
        max_log_ops: None,
        accept_window: Some(Duration::from_secs(30)),
        grace: Duration::from_secs(60),
        id_retention: Duration::from_secs(3600),
        max_skew: Some(Duration::from_secs(10)),
    };
    let now = 1_000_000;
    for (id, kind, ms) in [
        (1, OpKind::Add, now - 90_000),
        (2, OpKind::Add, now - 80_000),
    ] {
        // Accepted when they were new.
        assert_eq!(
            run_at(&log, timing, ms, &at_ms(id, kind, ms)),
            applied(id as u64, false, ms << 16)
        );
    }
    assert_eq!(
        run_at(&log, timing, now, &at_ms(3, OpKind::Delete, now - 1_000)),
        applied(1, false, (now - 1_000) << 16)
    );
    let digest = log.state().unwrap().summary().digest;
    let compact = |upto_ms: u64, digest| {
        WriteRequest::Compact(CompactRequest {
            key: key(),
            upto: Version {
                hlc: upto_ms << 16,
                gateway: u32::MAX,
            },
            digest,
        })
    };
    let stale_digest = StateDigest(digest.0 ^ 1);
    assert_eq!(
        run_at(&log, timing, now, &compact(now - 61_000, stale_digest)),
        Outcome::Compacted { folded: 0 },
        "the state changed since the gateway compared replicas"
    );
    assert_eq!(
        run_at(&log, timing, now, &compact(now - 10_000, digest)),
        Outcome::Compacted { folded: 0 },
        "younger than the grace"
    );
    assert_eq!(
        run_at(&log, timing, now, &compact(now - 61_000, digest)),
        Outcome::Compacted { folded: 2 }
    );
    let state = log.state().unwrap();
    assert_eq!((state.base.qty, state.ops.len(), state.qty()), (2, 1, 1));
    // An operation at or below the base is refused; so is one outside the window.
    assert!(matches!(
        run_at(&log, timing, now, &at_ms(4, OpKind::Add, now - 70_000)),
        Outcome::Expired { .. }
    ));
    let mut no_window = timing;
    no_window.accept_window = None;
    assert!(matches!(
        run_at(&log, no_window, now, &at_ms(4, OpKind::Add, now - 70_000)),
        Outcome::TooOld { .. }
    ));
    // A retry of a folded operation is still a duplicate.
    assert_eq!(
        run_at(&log, timing, now, &at_ms(1, OpKind::Add, now - 500)),
        applied(1, true, (now - 90_000) << 16)
    );
}

#[test]
fn a_failed_read_fails_only_that_request() {
    let log = MemoryLog {
        reads_fail: true,
        ..MemoryLog::default()
    };
    let mut plan = BatchPlan::new(Timing::ANY_AGE, 0);
    assert!(
        plan.decide(&request(1, OpKind::Add, 1, false), &log)
            .is_err()
    );
    assert!(plan.into_writes().is_empty());
}

//! The write quorum: which replica answers decide an insert or a delete. Pure; no sockets.
//!
//! An insert is sent to every replica the placement chose and succeeds once W of them
//! applied it durably. A delete is first sent with `require_in_cart`, so a replica whose
//! quantity is 0 refuses it with `NotInCart` and writes nothing:
//!
//! ```text
//! replies of the first round          decision
//! ----------------------------------  ------------------------------------------------------
//! at least one Applied                the delete is legitimate: re-send it without
//!                                     `require_in_cart` to every NotInCart replica (they are
//!                                     stale); success once W replicas applied it
//! no Applied, >= R NotInCart, settled NotInCart: nothing was applied anywhere (unless a
//!                                     replica refused it out of order: it holds the item,
//!                                     so the delete is stamped again, see below)
//! anything else                       QuorumNotReached
//! ```
//!
//! "Settled" means every replica answered, or the request's deadline passed
//! ([`QuorumTracker::close`]). A not-in-cart answer waits for the slowest replica on purpose:
//! deciding earlier could tell the client "not in cart" while the last replica applies the
//! delete. (A replica that times out may still have applied it; the client cannot be told
//! more than "not in cart" then, and the operation id keeps a retry from applying twice.)
//! Successful writes never wait for the slowest replica.
//!
//! **Real-time order.** A replica refuses an operation below the newest one it holds of the
//! item (`OutOfOrder`), and says when it already holds the operation under a larger
//! version (a retry's earlier attempt). Either can mean the operation would be ordered
//! before one that was acknowledged before it was issued, so the tracker then decides
//! [`WriteOutcome::Restamp`]: the gateway stamps it again above every version it was told
//! of and sends it again (`restamped`), and only that round can acknowledge it. A refusal
//! by one replica while W others applied it does not: an operation acknowledged earlier is
//! held by one replica of every write quorum, and those W applied it above it.

use std::fmt;

use cartdb_core::cart::{DeviceId, OpKind};
use cartdb_core::config::Replication;
use cartdb_core::version::Version;

/// One replica's answer to an apply, as the quorum sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyReply {
    /// The operation is durable there; `qty` is that replica's quantity afterwards, and
    /// `held` the version the replica holds it under.
    Applied { qty: u64, held: Version },
    /// A `require_in_cart` delete found quantity 0 there and wrote nothing.
    NotInCart,
    /// The replica holds an operation of the item at `newest`, at or above this one's
    /// version, and wrote nothing.
    OutOfOrder { newest: Version },
    /// The item's log is at the replica's cap of unfolded operations; nothing written.
    Busy(String),
    /// No usable answer: why.
    Failed(String),
}

/// Where one replica stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ReplicaState {
    /// Waiting for the answer to the first request.
    Pending,
    Applied {
        qty: u64,
    },
    /// Refused a `require_in_cart` delete and was not (yet) asked again.
    NotInCart,
    /// Refused the first request, is stale, and is being sent the delete again without
    /// `require_in_cart`.
    Resending,
    Failed(String),
}

/// A replica that did not acknowledge, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaFailure {
    pub device: DeviceId,
    pub reason: String,
}

/// A write that did not reach its quorum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumFailure {
    /// Acknowledgements needed (W).
    pub required: usize,
    /// Acknowledgements received.
    pub acked: usize,
    /// Every chosen replica that did not acknowledge, by device id.
    pub failures: Vec<ReplicaFailure>,
    /// Replicas the placement could not choose at all (fewer devices than RF are in).
    pub unplaced: usize,
    /// Replicas that refused because the item's log is at their cap (a hot item): the
    /// client should slow down rather than retry at once (HTTP 429).
    pub busy: usize,
}

impl fmt::Display for QuorumFailure {
    /// The `errors` text of `GatewayFailure::QuorumNotReached`: `device 2: <reason>; ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for failure in &self.failures {
            if !first {
                f.write_str("; ")?;
            }
            first = false;
            write!(f, "device {}: {}", failure.device, failure.reason)?;
        }
        if self.unplaced > 0 {
            if !first {
                f.write_str("; ")?;
            }
            write!(f, "{} replica(s) could not be placed", self.unplaced)?;
        } else if first {
            f.write_str("no replica answered")?;
        }
        Ok(())
    }
}

/// How a write ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// W replicas applied the operation. `qty` is the largest quantity they reported;
    /// `acked` lists them in placement order.
    Acknowledged { qty: u64, acked: Vec<DeviceId> },
    /// A delete of an item that is not in the cart; no replica applied it.
    NotInCart,
    /// Too few replicas acknowledged.
    QuorumNotReached(QuorumFailure),
    /// The operation must be stamped again above `above` and sent again (see "Real-time
    /// order" in the module docs). `failure` is what this round reached.
    Restamp {
        above: Version,
        failure: QuorumFailure,
    },
}

/// Tracks the answers to one insert or delete and decides it.
///
/// Drive it like this: send the first request to [`QuorumTracker::replicas`]; feed every
/// answer to [`QuorumTracker::record`]; after each, send the delete again (without
/// `require_in_cart`) to the devices [`QuorumTracker::take_stale_replicas`] returns, and
/// stop as soon as [`QuorumTracker::outcome`] is `Some`. When the deadline passes, call
/// [`QuorumTracker::close`]; the outcome is then always decided.
#[derive(Debug, Clone)]
pub struct QuorumTracker {
    kind: OpKind,
    replication: Replication,
    replicas: Vec<(DeviceId, ReplicaState)>,
    /// Some replica applied a `require_in_cart` delete (inserts: always).
    legitimate: bool,
    /// The version the operation was sent with.
    version: Version,
    /// The newest version an `OutOfOrder` refusal named.
    refused_below: Option<Version>,
    /// The largest version above `version` a replica already held the operation under.
    held_above: Option<Version>,
    /// Replicas that answered `Busy`.
    busy: usize,
}

impl QuorumTracker {
    /// A tracker for an operation of `kind` stamped `version`, sent to `devices` (the
    /// placement's choice).
    pub fn new(
        kind: OpKind,
        version: Version,
        devices: &[DeviceId],
        replication: Replication,
    ) -> Self {
        Self {
            kind,
            replication,
            replicas: devices
                .iter()
                .map(|d| (*d, ReplicaState::Pending))
                .collect(),
            legitimate: kind == OpKind::Add,
            version,
            refused_below: None,
            held_above: None,
            busy: 0,
        }
    }

    /// The devices the operation goes to, in placement order.
    pub fn replicas(&self) -> impl Iterator<Item = DeviceId> + '_ {
        self.replicas.iter().map(|(d, _)| *d)
    }

    /// Records `device`'s answer. Answers from devices that are not awaited (unknown, or
    /// already answered) are ignored.
    pub fn record(&mut self, device: DeviceId, reply: ApplyReply) {
        let kind = self.kind;
        let awaited = self.replicas.iter().any(|(d, s)| {
            *d == device && matches!(s, ReplicaState::Pending | ReplicaState::Resending)
        });
        match reply {
            ApplyReply::Applied { held, .. } if awaited && held > self.version => {
                self.held_above = self.held_above.max(Some(held));
            }
            ApplyReply::OutOfOrder { newest } if awaited => {
                self.refused_below = self.refused_below.max(Some(newest));
            }
            ApplyReply::Busy(_) if awaited => self.busy += 1,
            _ => {}
        }
        let Some(state) = self.state_mut(device) else {
            return;
        };
        let next = match (&*state, reply) {
            (ReplicaState::Pending | ReplicaState::Resending, ApplyReply::Applied { qty, .. }) => {
                ReplicaState::Applied { qty }
            }
            (
                ReplicaState::Pending | ReplicaState::Resending,
                ApplyReply::OutOfOrder { newest },
            ) => ReplicaState::Failed(format!(
                "refused: it holds a newer operation of the item, {newest:?}"
            )),
            (ReplicaState::Pending, ApplyReply::NotInCart) if kind == OpKind::Delete => {
                ReplicaState::NotInCart
            }
            (ReplicaState::Pending | ReplicaState::Resending, ApplyReply::NotInCart) => {
                ReplicaState::Failed("answered not-in-cart to an unconditional write".to_owned())
            }
            (
                ReplicaState::Pending | ReplicaState::Resending,
                ApplyReply::Failed(reason) | ApplyReply::Busy(reason),
            ) => ReplicaState::Failed(reason),
            _ => return,
        };
        let applied = matches!(next, ReplicaState::Applied { .. });
        *state = next;
        if applied {
            self.legitimate = true;
        }
    }

    /// Stale replicas to send the delete to again, without `require_in_cart`: those that
    /// answered `NotInCart` once another replica applied the delete. Each is returned once.
    pub fn take_stale_replicas(&mut self) -> Vec<DeviceId> {
        if !self.legitimate {
            return Vec::new();
        }
        self.replicas
            .iter_mut()
            .filter(|(_, s)| *s == ReplicaState::NotInCart)
            .map(|(device, state)| {
                *state = ReplicaState::Resending;
                *device
            })
            .collect()
    }

    /// The deadline passed: every replica still awaited has failed. The outcome is decided
    /// afterwards.
    pub fn close(&mut self) {
        let legitimate = self.legitimate;
        for (_, state) in &mut self.replicas {
            let awaited = match state {
                ReplicaState::Pending | ReplicaState::Resending => true,
                ReplicaState::NotInCart => legitimate,
                ReplicaState::Applied { .. } | ReplicaState::Failed(_) => false,
            };
            if awaited {
                *state = ReplicaState::Failed("no answer within the request time limit".into());
            }
        }
    }

    /// Whether W replicas applied the operation.
    pub fn is_satisfied(&self) -> bool {
        self.applied() >= self.replication.write_quorum
    }

    /// Whether the operation is decided and did not succeed.
    pub fn has_failed(&self) -> bool {
        matches!(
            self.outcome(),
            Some(WriteOutcome::NotInCart | WriteOutcome::QuorumNotReached(_))
        )
    }

    /// The decision, once there is one.
    pub fn outcome(&self) -> Option<WriteOutcome> {
        if self.is_satisfied() {
            return Some(match self.held_above {
                Some(held) => self.restamp(self.refused_below.max(Some(held)).unwrap_or(held)),
                None => self.acknowledged(),
            });
        }
        let short = if self.is_settled() {
            let refused = self.count(|s| *s == ReplicaState::NotInCart);
            // A replica that refused a delete out of order holds the item (quantity above
            // 0, or it would have answered not-in-cart): the delete is legitimate, and is
            // stamped again rather than answered "not in cart".
            let in_cart_somewhere = self.refused_below.is_some();
            if !self.legitimate && !in_cart_somewhere && refused >= self.replication.read_quorum {
                return Some(WriteOutcome::NotInCart);
            }
            true
        } else {
            self.legitimate && self.reachable() < self.replication.write_quorum
        };
        if !short {
            return None;
        }
        Some(match self.refused_below.max(self.held_above) {
            Some(above) => self.restamp(above),
            None => WriteOutcome::QuorumNotReached(self.failure()),
        })
    }

    fn restamp(&self, above: Version) -> WriteOutcome {
        WriteOutcome::Restamp {
            above,
            failure: self.failure(),
        }
    }

    fn state_mut(&mut self, device: DeviceId) -> Option<&mut ReplicaState> {
        self.replicas
            .iter_mut()
            .find(|(d, _)| *d == device)
            .map(|(_, s)| s)
    }

    fn count(&self, pred: impl Fn(&ReplicaState) -> bool) -> usize {
        self.replicas.iter().filter(|(_, s)| pred(s)).count()
    }

    fn applied(&self) -> usize {
        self.count(|s| matches!(s, ReplicaState::Applied { .. }))
    }

    /// The most acknowledgements still possible for a legitimate write.
    fn reachable(&self) -> usize {
        self.count(|s| !matches!(s, ReplicaState::Failed(_)))
    }

    /// Every replica answered and no re-send is outstanding or due.
    fn is_settled(&self) -> bool {
        self.replicas.iter().all(|(_, s)| match s {
            ReplicaState::Pending | ReplicaState::Resending => false,
            ReplicaState::NotInCart => !self.legitimate,
            ReplicaState::Applied { .. } | ReplicaState::Failed(_) => true,
        })
    }

    fn acknowledged(&self) -> WriteOutcome {
        let mut qty = 0;
        let mut acked = Vec::with_capacity(self.replicas.len());
        for (device, state) in &self.replicas {
            if let ReplicaState::Applied { qty: q } = state {
                qty = qty.max(*q);
                acked.push(*device);
            }
        }
        WriteOutcome::Acknowledged { qty, acked }
    }

    /// What this round reached, as a failure: every replica that did not apply it.
    pub fn failure(&self) -> QuorumFailure {
        let failures = self
            .replicas
            .iter()
            .filter_map(|(device, state)| {
                let reason = match state {
                    ReplicaState::Failed(reason) => reason.clone(),
                    ReplicaState::NotInCart => "item not in cart on this replica".to_owned(),
                    ReplicaState::Pending | ReplicaState::Resending => "no answer yet".to_owned(),
                    ReplicaState::Applied { .. } => return None,
                };
                Some(ReplicaFailure {
                    device: *device,
                    reason,
                })
            })
            .collect();
        QuorumFailure {
            required: self.replication.write_quorum,
            acked: self.applied(),
            failures,
            unplaced: self
                .replication
                .replicas
                .saturating_sub(self.replicas.len()),
            busy: self.busy,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    fn rf3() -> Replication {
        Replication::new(3, 2, 2).unwrap()
    }

    fn v(hlc: u64) -> Version {
        Version { hlc, gateway: 1 }
    }

    fn applied(qty: u64) -> ApplyReply {
        ApplyReply::Applied { qty, held: v(10) }
    }

    fn failed(reason: &str) -> ApplyReply {
        ApplyReply::Failed(reason.to_owned())
    }

    fn quorum_failure(outcome: Option<WriteOutcome>) -> QuorumFailure {
        match outcome {
            Some(WriteOutcome::QuorumNotReached(failure)) => failure,
            other => panic!("expected QuorumNotReached, got {other:?}"),
        }
    }

    #[test]
    fn an_insert_succeeds_after_w_acks_without_the_slowest() {
        let mut t = QuorumTracker::new(OpKind::Add, v(10), &[1, 3, 6], rf3());
        t.record(3, applied(2));
        assert_eq!(t.outcome(), None);
        t.record(1, applied(3));
        assert!(t.is_satisfied());
        assert_eq!(
            t.outcome(),
            Some(WriteOutcome::Acknowledged {
                qty: 3,
                acked: vec![1, 3]
            })
        );
    }

    #[test]
    fn an_insert_fails_as_soon_as_w_is_out_of_reach() {
        let mut t = QuorumTracker::new(OpKind::Add, v(10), &[1, 3, 6], rf3());
        t.record(1, failed("connection refused"));
        assert_eq!(t.outcome(), None);
        t.record(6, failed("timed out"));
        assert!(t.has_failed());
        let failure = quorum_failure(t.outcome());
        assert_eq!((failure.required, failure.acked), (2, 0));
        assert_eq!(
            failure.to_string(),
            "device 1: connection refused; device 3: no answer yet; device 6: timed out"
        );
    }

    #[test]
    fn closing_fails_the_silent_replicas() {
        let mut t = QuorumTracker::new(OpKind::Add, v(10), &[1, 3, 6], rf3());
        t.record(1, applied(1));
        t.close();
        let failure = quorum_failure(t.outcome());
        assert_eq!(failure.acked, 1);
        assert!(failure.to_string().contains("device 3: no answer within"));
    }

    #[test]
    fn too_few_placed_devices_fail_at_once() {
        let t = QuorumTracker::new(OpKind::Add, v(10), &[4], rf3());
        let failure = quorum_failure(t.outcome());
        assert_eq!(failure.unplaced, 2);
        assert!(
            failure
                .to_string()
                .ends_with("2 replica(s) could not be placed")
        );
    }

    #[test]
    fn an_answer_from_an_unknown_or_answered_device_is_ignored() {
        let mut t = QuorumTracker::new(OpKind::Add, v(10), &[1, 3, 6], rf3());
        t.record(9, applied(1));
        t.record(1, applied(1));
        t.record(1, applied(1));
        assert!(!t.is_satisfied());
    }

    #[test]
    fn a_delete_applied_everywhere_succeeds() {
        let mut t = QuorumTracker::new(OpKind::Delete, v(10), &[1, 3, 6], rf3());
        t.record(1, applied(0));
        t.record(6, applied(0));
        assert_eq!(
            t.outcome(),
            Some(WriteOutcome::Acknowledged {
                qty: 0,
                acked: vec![1, 6]
            })
        );
    }

    #[test]
    fn a_legitimate_delete_is_resent_to_stale_replicas_which_count_toward_w() {
        let mut t = QuorumTracker::new(OpKind::Delete, v(10), &[1, 3, 6], rf3());
        t.record(3, ApplyReply::NotInCart);
        assert!(t.take_stale_replicas().is_empty(), "not legitimate yet");
        t.record(1, applied(1));
        assert_eq!(t.take_stale_replicas(), vec![3]);
        assert!(t.take_stale_replicas().is_empty(), "returned once");
        assert_eq!(t.outcome(), None);
        t.record(3, applied(0));
        assert_eq!(
            t.outcome(),
            Some(WriteOutcome::Acknowledged {
                qty: 1,
                acked: vec![1, 3]
            })
        );
    }

    #[test]
    fn a_stale_replica_answering_late_is_resent_too() {
        let mut t = QuorumTracker::new(OpKind::Delete, v(10), &[1, 3, 6], rf3());
        t.record(1, applied(1));
        t.record(6, failed("down"));
        t.record(3, ApplyReply::NotInCart);
        assert_eq!(t.take_stale_replicas(), vec![3]);
        t.record(3, failed("timed out"));
        let failure = quorum_failure(t.outcome());
        assert_eq!(failure.acked, 1);
    }

    #[test]
    fn a_delete_refused_by_r_replicas_is_not_in_cart_once_settled() {
        let mut t = QuorumTracker::new(OpKind::Delete, v(10), &[1, 3, 6], rf3());
        t.record(1, ApplyReply::NotInCart);
        t.record(3, ApplyReply::NotInCart);
        assert_eq!(t.outcome(), None, "the last replica might still apply it");
        t.record(6, ApplyReply::NotInCart);
        assert_eq!(t.outcome(), Some(WriteOutcome::NotInCart));
        assert!(t.has_failed());
    }

    #[test]
    fn a_delete_refused_by_r_replicas_with_the_rest_down_is_not_in_cart() {
        let mut t = QuorumTracker::new(OpKind::Delete, v(10), &[1, 3, 6], rf3());
        t.record(1, ApplyReply::NotInCart);
        t.record(6, ApplyReply::NotInCart);
        t.close();
        assert_eq!(t.outcome(), Some(WriteOutcome::NotInCart));
    }

    #[test]
    fn one_refusal_and_no_other_answer_is_a_quorum_failure() {
        let mut t = QuorumTracker::new(OpKind::Delete, v(10), &[1, 3, 6], rf3());
        t.record(1, ApplyReply::NotInCart);
        t.record(3, failed("down"));
        t.record(6, failed("down"));
        let failure = quorum_failure(t.outcome());
        assert!(failure.to_string().contains("device 1: item not in cart"));
    }

    #[test]
    fn a_late_apply_makes_refusals_stale_instead_of_not_in_cart() {
        let mut t = QuorumTracker::new(OpKind::Delete, v(10), &[1, 3, 6], rf3());
        t.record(1, ApplyReply::NotInCart);
        t.record(3, ApplyReply::NotInCart);
        t.record(6, applied(4));
        let mut stale = t.take_stale_replicas();
        stale.sort_unstable();
        assert_eq!(stale, vec![1, 3]);
        t.record(1, applied(0));
        assert!(t.is_satisfied());
    }

    #[test]
    fn every_combination_of_answers_is_decided_once_closed() {
        let answers = [
            None,
            Some(applied(1)),
            Some(ApplyReply::NotInCart),
            Some(failed("x")),
        ];
        for kind in [OpKind::Add, OpKind::Delete] {
            for a in &answers {
                for b in &answers {
                    for c in &answers {
                        let mut t = QuorumTracker::new(kind, v(10), &[1, 2, 3], rf3());
                        for (device, answer) in [(1, a), (2, b), (3, c)] {
                            if let Some(answer) = answer {
                                t.record(device, answer.clone());
                            }
                        }
                        t.take_stale_replicas();
                        t.close();
                        assert!(t.outcome().is_some(), "{kind:?} {a:?} {b:?} {c:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn an_insert_never_reports_not_in_cart() {
        let mut t = QuorumTracker::new(OpKind::Add, v(10), &[1, 3, 6], rf3());
        t.record(1, ApplyReply::NotInCart);
        t.record(3, ApplyReply::NotInCart);
        t.record(6, ApplyReply::NotInCart);
        assert!(matches!(
            t.outcome(),
            Some(WriteOutcome::QuorumNotReached(_))
        ));
    }

    #[test]
    fn a_refusal_out_of_order_that_leaves_the_quorum_short_asks_for_a_restamp() {
        let mut t = QuorumTracker::new(OpKind::Add, v(10), &[1, 3, 6], rf3());
        t.record(1, ApplyReply::OutOfOrder { newest: v(30) });
        t.record(3, applied(1));
        assert_eq!(t.outcome(), None);
        t.record(6, ApplyReply::OutOfOrder { newest: v(20) });
        match t.outcome() {
            Some(WriteOutcome::Restamp { above, failure }) => {
                assert_eq!(above, v(30));
                assert_eq!(failure.acked, 1);
            }
            other => panic!("expected Restamp, got {other:?}"),
        }
    }

    #[test]
    fn a_refusal_out_of_order_beside_a_write_quorum_is_acknowledged() {
        let mut t = QuorumTracker::new(OpKind::Add, v(10), &[1, 3, 6], rf3());
        t.record(1, ApplyReply::OutOfOrder { newest: v(30) });
        t.record(3, applied(1));
        t.record(6, applied(1));
        assert!(matches!(
            t.outcome(),
            Some(WriteOutcome::Acknowledged { .. })
        ));
    }

    #[test]
    fn an_operation_held_under_a_larger_version_is_stamped_again_above_it() {
        let mut t = QuorumTracker::new(OpKind::Delete, v(10), &[1, 3, 6], rf3());
        t.record(
            1,
            ApplyReply::Applied {
                qty: 0,
                held: v(50),
            },
        );
        t.record(3, applied(0));
        assert!(matches!(
            t.outcome(),
            Some(WriteOutcome::Restamp { above, .. }) if above == v(50)
        ));
    }

    /// A delete refused out of order by a replica that holds the item, and as not in cart
    /// by two that do not (not backfilled yet, or missed the insert), is legitimate: it is
    /// stamped again, not answered "not in cart". (Answering 404 here lost a delete during
    /// a placement swap, in CI's run of `policy_lifecycle.rs`.)
    #[test]
    fn a_delete_refused_out_of_order_by_a_holder_is_stamped_again_not_refused() {
        let mut t = QuorumTracker::new(OpKind::Delete, v(10), &[1, 3, 6], rf3());
        t.record(1, ApplyReply::OutOfOrder { newest: v(12) });
        t.record(3, ApplyReply::NotInCart);
        t.record(6, ApplyReply::NotInCart);
        assert!(matches!(
            t.outcome(),
            Some(WriteOutcome::Restamp { above, .. }) if above == v(12)
        ));
    }
}

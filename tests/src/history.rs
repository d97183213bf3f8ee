//! A Jepsen-style history of cart operations and its checker, pure: the [`History`] of
//! every operation the [`Workload`](crate::Workload)'s clients invoked (when, through which
//! client, and how it ended), and the check of final cart quantities against it.
//!
//! An operation ends in one of three [`Outcome`]s: acknowledged (it took effect exactly
//! once), failed (it was refused and took no effect) or unknown (a time-out or a 503 after
//! which it may or may not have taken effect, possibly later, through repair). So the
//! final quantity of an item is not one number but a range:
//!
//! ```text
//! acked inserts - acked deletes - unknown deletes  <=  qty  <=  acked inserts + unknown inserts - acked deletes
//! ```
//!
//! A quantity below the range is a lost acknowledged insert (or a delete applied twice);
//! one above it is a resurrected item or an insert applied twice. With no unknown
//! operations the range is a single number.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use anyhow::{bail, ensure};

/// What an operation does to its item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Insert,
    Delete,
}

/// How an operation ended, as its client saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged (200): applied exactly once.
    Ok,
    /// Refused with an answer that promises nothing was applied, and that the workload
    /// never expects (anything but 200 and 503): the reply.
    Failed(String),
    /// No acknowledgement, and no promise either way: a time-out, a lost connection or a
    /// 503 on the last attempt.
    Unknown(String),
}

/// One operation: what, through which client, when invoked and completed (since the
/// workload started), and how it ended.
#[derive(Clone, Debug)]
pub struct Event {
    pub client: usize,
    pub user: String,
    pub item: String,
    pub kind: Kind,
    /// The `Idempotency-Key` every attempt of the operation carried.
    pub key: String,
    pub invoked: Duration,
    pub completed: Duration,
    pub outcome: Outcome,
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "client {} {:?} {} {} ({}) [{:?} .. {:?}] -> {:?}",
            self.client,
            self.kind,
            self.user,
            self.item,
            self.key,
            self.invoked,
            self.completed,
            self.outcome
        )
    }
}

/// Counts of one item's operations by kind and outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub acked_inserts: u64,
    pub acked_deletes: u64,
    pub unknown_inserts: u64,
    pub unknown_deletes: u64,
}

impl Tally {
    /// Counts one ended operation.
    pub fn record(&mut self, kind: Kind, outcome: &Outcome) {
        let count = match (kind, outcome) {
            (_, Outcome::Failed(_)) => return,
            (Kind::Insert, Outcome::Ok) => &mut self.acked_inserts,
            (Kind::Delete, Outcome::Ok) => &mut self.acked_deletes,
            (Kind::Insert, Outcome::Unknown(_)) => &mut self.unknown_inserts,
            (Kind::Delete, Outcome::Unknown(_)) => &mut self.unknown_deletes,
        };
        *count += 1;
    }

    /// The quantities the item may end with: `(least, most)`.
    pub fn bounds(&self) -> (u64, u64) {
        let least = self
            .acked_inserts
            .saturating_sub(self.acked_deletes + self.unknown_deletes);
        let most = (self.acked_inserts + self.unknown_inserts).saturating_sub(self.acked_deletes);
        (least, most)
    }

    /// How many instances the item surely holds even if every unknown delete and the
    /// `pending` deletes in flight took effect: a delete is only sent while this is above 0,
    /// so a correct cluster never answers it "not in cart".
    pub fn surely_held(&self, pending: u64) -> u64 {
        self.bounds().0.saturating_sub(pending)
    }
}

/// Every operation of a workload, in completion order, and what was retried.
#[derive(Clone, Debug, Default)]
pub struct History {
    pub events: Vec<Event>,
    /// Attempts answered with a retryable status and tried again, by status (0: no answer).
    pub retried: BTreeMap<u16, u64>,
}

impl History {
    /// The tallies by user and item.
    pub fn tallies(&self) -> BTreeMap<&str, BTreeMap<&str, Tally>> {
        let mut tallies: BTreeMap<&str, BTreeMap<&str, Tally>> = BTreeMap::new();
        for event in &self.events {
            tallies
                .entry(&event.user)
                .or_default()
                .entry(&event.item)
                .or_default()
                .record(event.kind, &event.outcome);
        }
        tallies
    }

    /// Operations acknowledged.
    pub fn acknowledged(&self) -> usize {
        self.count(|o| *o == Outcome::Ok)
    }

    /// Operations whose outcome is unknown.
    pub fn unknown(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Unknown(_)))
    }

    fn count(&self, which: impl Fn(&Outcome) -> bool) -> usize {
        self.events.iter().filter(|e| which(&e.outcome)).count()
    }

    /// The operations that failed, as text.
    pub fn failures(&self) -> Vec<String> {
        self.events
            .iter()
            .filter(|e| matches!(e.outcome, Outcome::Failed(_)))
            .map(ToString::to_string)
            .collect()
    }

    /// The shoppers the workload used.
    pub fn users(&self) -> Vec<String> {
        self.tallies().keys().map(|u| (*u).to_owned()).collect()
    }

    /// Whether the workload used `user`.
    pub fn used(&self, user: &str) -> bool {
        self.events.iter().any(|e| e.user == user)
    }

    /// The shoppers that surely hold at least one of `item`.
    pub fn holders_of(&self, item: &str) -> Vec<String> {
        self.tallies()
            .into_iter()
            .filter(|(_, cart)| cart.get(item).is_some_and(|t| t.bounds().0 > 0))
            .map(|(user, _)| user.to_owned())
            .collect()
    }

    /// Checks the quantities `carts` holds (user -> item -> qty, as a quorum read answered)
    /// against the history: no failed operation, at least one acknowledged, every item of
    /// every user the workload touched within its bounds, and no item it never inserted.
    ///
    /// # Errors
    /// The failures, or the first item out of bounds with the operations on it.
    pub fn check_carts(
        &self,
        carts: &BTreeMap<String, BTreeMap<String, u64>>,
    ) -> anyhow::Result<()> {
        let failures = self.failures();
        ensure!(
            failures.is_empty(),
            "{} operations failed beyond the retryable: {failures:#?}",
            failures.len()
        );
        ensure!(self.acknowledged() > 0, "the workload acknowledged nothing");
        for (user, cart) in self.tallies() {
            let held = carts.get(user);
            for (item, tally) in &cart {
                let qty = held.and_then(|c| c.get(*item)).copied().unwrap_or(0);
                let (least, most) = tally.bounds();
                if !(least..=most).contains(&qty) {
                    let what = if qty < least {
                        "lost"
                    } else {
                        "resurrected or applied twice"
                    };
                    bail!(
                        "{user} holds {qty} {item}, the operations allow {least}..={most} \
                         ({what}); {tally:?}; operations:\n{}",
                        self.operations_on(user, item)
                    );
                }
            }
            for (item, qty) in held.into_iter().flatten() {
                ensure!(
                    cart.contains_key(item.as_str()) || *qty == 0,
                    "{user} holds {qty} {item}, which the workload never inserted"
                );
            }
        }
        Ok(())
    }

    /// The operations on one item, one per line.
    fn operations_on(&self, user: &str, item: &str) -> String {
        self.events
            .iter()
            .filter(|e| e.user == user && e.item == item)
            .map(|e| format!("  {e}\n"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: Kind, outcome: Outcome) -> Event {
        Event {
            client: 0,
            user: "u".into(),
            item: "pork".into(),
            kind,
            key: "k".into(),
            invoked: Duration::ZERO,
            completed: Duration::ZERO,
            outcome,
        }
    }

    fn history(events: Vec<Event>) -> History {
        History {
            events,
            retried: BTreeMap::new(),
        }
    }

    fn cart(qty: u64) -> BTreeMap<String, BTreeMap<String, u64>> {
        BTreeMap::from([("u".into(), BTreeMap::from([("pork".into(), qty)]))])
    }

    fn unknown() -> Outcome {
        Outcome::Unknown("timed out".into())
    }

    #[test]
    fn acknowledged_operations_fix_the_quantity() {
        let h = history(vec![
            event(Kind::Insert, Outcome::Ok),
            event(Kind::Insert, Outcome::Ok),
            event(Kind::Delete, Outcome::Ok),
        ]);
        h.check_carts(&cart(1)).unwrap();
        let lost = h.check_carts(&cart(0)).unwrap_err().to_string();
        assert!(lost.contains("lost"), "{lost}");
        let twice = h.check_carts(&cart(2)).unwrap_err().to_string();
        assert!(twice.contains("resurrected"), "{twice}");
    }

    #[test]
    fn unknown_operations_widen_the_range_both_ways() {
        let h = history(vec![
            event(Kind::Insert, Outcome::Ok),
            event(Kind::Insert, Outcome::Ok),
            event(Kind::Insert, unknown()),
            event(Kind::Delete, unknown()),
        ]);
        for qty in 1..=3 {
            h.check_carts(&cart(qty)).unwrap();
        }
        assert!(h.check_carts(&cart(0)).is_err());
        assert!(h.check_carts(&cart(4)).is_err());
        assert_eq!(h.unknown(), 2);
    }

    #[test]
    fn failures_and_strangers_fail_the_check() {
        let failed = history(vec![
            event(Kind::Insert, Outcome::Ok),
            event(Kind::Delete, Outcome::Failed("404 not in cart".into())),
        ]);
        let text = failed.check_carts(&cart(1)).unwrap_err().to_string();
        assert!(text.contains("404"), "{text}");
        let ok = history(vec![event(Kind::Insert, Outcome::Ok)]);
        let mut carts = cart(1);
        carts.get_mut("u").unwrap().insert("soap".into(), 1);
        let text = ok.check_carts(&carts).unwrap_err().to_string();
        assert!(text.contains("never inserted"), "{text}");
        assert!(history(Vec::new()).check_carts(&cart(0)).is_err());
    }

    #[test]
    fn a_delete_is_sent_only_while_an_instance_is_sure() {
        let mut tally = Tally::default();
        tally.record(Kind::Insert, &Outcome::Ok);
        tally.record(Kind::Insert, &unknown());
        assert_eq!(tally.surely_held(0), 1);
        assert_eq!(tally.surely_held(1), 0, "one delete already in flight");
        tally.record(Kind::Delete, &unknown());
        assert_eq!(tally.surely_held(0), 0);
    }
}

//! Which devices hold each placement group: the *up set* now, and the *past set*, the
//! devices that held it at earlier map epochs and may still hold data the up set lacks
//! (Ceph's "past intervals", kept as the union of their devices).
//!
//! Writes go to the up set. Reads, read repair and the anti-entropy sweep also consult the
//! past set, so a copy written while a device was out, or left on a substitute while it was
//! away, is still found. A PG's past set is emptied once the PG is *clean*: every device of
//! its up set answered and holds every item that any device of its up or past set holds,
//! in the same state (see the sweep in the gateway). Everything here is pure.

use std::collections::{BTreeMap, BTreeSet};

/// Past sets by PG; a PG without past devices has no entry.
pub type PastSets = BTreeMap<u32, BTreeSet<u32>>;

/// The map epoch at which each PG's current *interval* started: the last epoch that changed
/// its up or past set (Ceph's `same_interval_since`). A PG without an entry has not changed
/// since the map was bootstrapped. A data node refuses a request for a PG placed with a map
/// older than the PG's interval: whoever sent it placed the PG where it no longer is.
pub type Intervals = BTreeMap<u32, u64>;

/// The intervals after a map change at `epoch` takes the past sets from `before` to
/// `after`: every PG whose past set differs starts a new interval at `epoch`.
///
/// That covers every change of an up set's members too: a device leaving the up set joins
/// the past set, and a device joining it leaves the past set or replaces one that joins it
/// (the one exception, an up set that only grows because devices were too few, moves no
/// data: the devices it had are still read). Clearing a past set after handback starts a
/// new interval as well, so a request placed before the handback is refused by the devices
/// it dropped copies from.
pub fn intervals_after(
    intervals: &Intervals,
    before: &PastSets,
    after: &PastSets,
    epoch: u64,
) -> Intervals {
    let mut result = intervals.clone();
    for pg in before.keys().chain(after.keys()) {
        if before.get(pg) != after.get(pg) {
            result.insert(*pg, epoch);
        }
    }
    result
}

/// The up set of every placement group of a pool at one map epoch, indexed by PG.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PgTable {
    up: Vec<Vec<u32>>,
}

impl PgTable {
    /// A table from the up set of each PG in order (PG 0 first).
    pub fn new(up: Vec<Vec<u32>>) -> Self {
        Self { up }
    }

    /// The up set of `pg`, primary first; empty for a PG the table does not have.
    pub fn up(&self, pg: u32) -> &[u32] {
        usize::try_from(pg)
            .ok()
            .and_then(|pg| self.up.get(pg))
            .map_or(&[], Vec::as_slice)
    }

    /// Every PG with its up set.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &[u32])> {
        (0u32..).zip(self.up.iter().map(Vec::as_slice))
    }

    /// How many PGs each device is in the up set of.
    pub fn pgs_per_device(&self) -> BTreeMap<u32, usize> {
        let mut counts = BTreeMap::new();
        for device in self.up.iter().flatten() {
            *counts.entry(*device).or_default() += 1;
        }
        counts
    }

    /// The past sets after the up sets change from `self` to `next`: a device that leaves a
    /// PG's up set joins its past set (it still holds the PG's data), and a device in the
    /// new up set leaves the past set (it is read as a member of the up set anyway). PGs
    /// whose up set did not change keep their past set as it was.
    pub fn past_after(&self, next: &PgTable, past: &PastSets) -> PastSets {
        let mut result = past.clone();
        for (pg, new_up) in next.iter() {
            let old_up = self.up(pg);
            if old_up == new_up {
                continue;
            }
            let mut devices = result.remove(&pg).unwrap_or_default();
            devices.extend(old_up.iter().copied());
            devices.retain(|d| !new_up.contains(d));
            if !devices.is_empty() {
                result.insert(pg, devices);
            }
        }
        result
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    fn table(up: &[&[u32]]) -> PgTable {
        PgTable::new(up.iter().map(|s| s.to_vec()).collect())
    }

    #[test]
    fn a_device_that_leaves_joins_the_past_set() {
        let before = table(&[&[1, 2, 3], &[4, 5, 6]]);
        let after = table(&[&[1, 2, 4], &[4, 5, 6]]);
        let past = before.past_after(&after, &PastSets::new());
        assert_eq!(past, PastSets::from([(0, BTreeSet::from([3]))]));
    }

    #[test]
    fn a_device_that_returns_leaves_the_past_set_and_its_substitute_joins() {
        // Device 3 went out (4 substituted), then came back.
        let original = table(&[&[1, 2, 3]]);
        let substituted = table(&[&[1, 2, 4]]);
        let past = original.past_after(&substituted, &PastSets::new());
        let past = substituted.past_after(&original, &past);
        assert_eq!(past, PastSets::from([(0, BTreeSet::from([4]))]));
    }

    #[test]
    fn unchanged_pgs_keep_their_past_set_and_order_changes_count_as_changes() {
        let past = PastSets::from([(0, BTreeSet::from([9]))]);
        let same = table(&[&[1, 2, 3], &[4, 5, 6]]);
        assert_eq!(same.past_after(&same, &past), past);
        let reordered = table(&[&[1, 2, 3], &[5, 4, 6]]);
        // Same members: nobody left, so nothing is added.
        assert_eq!(same.past_after(&reordered, &past), past);
    }

    #[test]
    fn a_changed_past_set_starts_a_new_interval() {
        let before = PastSets::from([(0, BTreeSet::from([3])), (1, BTreeSet::from([5]))]);
        // PG 0 handed back (cleared), PG 1 unchanged, PG 2 moved (device 4 joins its past).
        let after = PastSets::from([(1, BTreeSet::from([5])), (2, BTreeSet::from([4]))]);
        let intervals = Intervals::from([(1, 7), (9, 3)]);
        assert_eq!(
            intervals_after(&intervals, &before, &after, 12),
            Intervals::from([(0, 12), (1, 7), (2, 12), (9, 3)])
        );
        assert_eq!(intervals_after(&intervals, &after, &after, 13), intervals);
    }

    #[test]
    fn counts_and_lookups() {
        let t = table(&[&[1, 2, 3], &[1, 2, 4]]);
        assert_eq!(t.up(1), &[1, 2, 4]);
        assert_eq!(t.up(7), &[] as &[u32]);
        assert_eq!(
            t.pgs_per_device(),
            BTreeMap::from([(1, 2), (2, 2), (3, 1), (4, 1)])
        );
    }
}

//! Down, then out: when the cluster marks a device out of the map by itself, and back in.
//!
//! A device whose data node's ZooKeeper registration is gone is **down** at once: requests
//! skip it, and writes to its PGs succeed with W of the remaining replicas; the operations
//! it missed reach it when it returns (read repair and the anti-entropy sweep). It is marked
//! **out** (reweight 0, so that CRUSH moves its PGs to other devices and backfill starts)
//! only once it has been down for the grace, `--down-out-secs`, as Ceph's monitors do after
//! `mon_osd_down_out_interval`. Two rules hold marking out back:
//!
//! - the `noout` flag ([`ClusterFlags::noout`]), for planned restarts;
//! - the minimum in ratio (Ceph's `mon_osd_min_in_ratio`): a device is marked out only if at
//!   least that share of the map's devices is still in afterwards. When ZooKeeper sessions
//!   expire en masse (ZooKeeper itself stopped, or a network partition), every device looks
//!   down at once, and moving all their data would do more harm than waiting.
//!
//! A device the cluster marked out (listed in the map's `auto_out`) is marked in again as
//! soon as it returns; one an operator marked out (`cartdb device out`) stays out.
//!
//! [`decide`] is pure; the cluster keeper applies its answer with one compare-and-set of the
//! map (with the past sets that follow), and both gateways may decide: the loser's
//! compare-and-set fails and it decides again on the winner's map. Each gateway keeps its
//! own [`DownClock`], so a gateway that starts late waits a full grace before marking out.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use cartdb_core::cart::DeviceId;
use cartdb_core::coord::{ClusterFlags, ClusterMap, FULL_WEIGHT, Membership};

/// The settings of [`decide`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DownOutRules {
    /// How long a device must be down before it is marked out.
    pub grace: Duration,
    /// Least share of the map's devices that must stay in (0.0..=1.0).
    pub min_in_ratio: f64,
}

/// When this gateway first saw each device of the map down.
#[derive(Debug, Default)]
pub struct DownClock {
    since: BTreeMap<DeviceId, Instant>,
}

impl DownClock {
    /// Notes which devices of `map` are down in `members` at `now`, and answers how long
    /// each has been down (a device seen live is forgotten: its next absence starts afresh).
    pub fn observe(
        &mut self,
        map: &ClusterMap,
        members: &Membership,
        now: Instant,
    ) -> BTreeMap<DeviceId, Duration> {
        self.since
            .retain(|device, _| map.devices.contains_key(device) && !members.is_live(*device));
        for &device in map.devices.keys() {
            if !members.is_live(device) {
                self.since.entry(device).or_insert(now);
            }
        }
        self.since
            .iter()
            .map(|(&device, &since)| (device, now.saturating_duration_since(since)))
            .collect()
    }
}

/// The reweights and `auto_out` set the map should carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutChange {
    /// Every device of the map with its reweight.
    pub reweights: BTreeMap<DeviceId, u32>,
    /// The devices the cluster has marked out itself.
    pub auto_out: BTreeSet<DeviceId>,
    /// Devices this change marks out.
    pub marked_out: Vec<DeviceId>,
    /// Devices this change marks in again.
    pub marked_in: Vec<DeviceId>,
}

/// What [`decide`] concluded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutDecision {
    /// The map change to make, or `None` when the map already says the right thing.
    pub change: Option<OutChange>,
    /// Devices down past the grace and still in, kept in by `noout` or the minimum in ratio.
    pub held_in: Vec<DeviceId>,
    /// When to decide again though nothing else changes: when the next down device's grace
    /// ends.
    pub recheck_in: Option<Duration>,
}

/// Decides which devices to mark out or back in, given how long each device has been down
/// (`down_for`, from [`DownClock::observe`]).
pub fn decide(
    map: &ClusterMap,
    members: &Membership,
    down_for: &BTreeMap<DeviceId, Duration>,
    rules: &DownOutRules,
) -> OutDecision {
    let mut reweights: BTreeMap<DeviceId, u32> = map
        .devices
        .keys()
        .map(|&device| (device, map.reweight_of(device)))
        .collect();
    let mut auto_out = map.auto_out.clone();
    let mut marked_in = Vec::new();
    for &device in &map.auto_out {
        if members.is_live(device) {
            reweights.insert(device, FULL_WEIGHT);
            auto_out.remove(&device);
            marked_in.push(device);
        }
    }
    let mut recheck_in: Option<Duration> = None;
    let mut due: Vec<(Duration, DeviceId)> = Vec::new();
    for (&device, &down) in down_for {
        let is_in = reweights.get(&device).is_some_and(|&w| w > 0);
        if !is_in || members.is_live(device) {
            continue;
        }
        if down >= rules.grace {
            due.push((down, device));
        } else {
            let left = rules.grace - down;
            recheck_in = Some(recheck_in.map_or(left, |r| r.min(left)));
        }
    }
    // The longest down goes first when the ratio lets only some go.
    due.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let total = map.devices.len();
    let mut in_count = reweights.values().filter(|&&w| w > 0).count();
    let mut marked_out = Vec::new();
    let mut held_in = Vec::new();
    for (_, device) in due {
        if !may_mark_out(map.flags, in_count, total, rules.min_in_ratio) {
            held_in.push(device);
            continue;
        }
        reweights.insert(device, 0);
        auto_out.insert(device);
        marked_out.push(device);
        in_count -= 1;
    }
    let change = (!marked_out.is_empty() || !marked_in.is_empty()).then_some(OutChange {
        reweights,
        auto_out,
        marked_out,
        marked_in,
    });
    OutDecision {
        change,
        held_in,
        recheck_in,
    }
}

/// Whether one more of `in_count` in devices (of `total`) may be marked out.
fn may_mark_out(flags: ClusterFlags, in_count: usize, total: usize, min_in_ratio: f64) -> bool {
    if flags.noout || in_count == 0 || total == 0 {
        return false;
    }
    #[allow(clippy::cast_precision_loss, reason = "device counts are small")]
    let after = (in_count - 1) as f64 / total as f64;
    // Ceph's test, `(in - 1) / total < ratio` refuses; a little slack for 0.5 == 3/6.
    after + 1e-9 >= min_in_ratio
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(10);

    fn rules(min_in_ratio: f64) -> DownOutRules {
        DownOutRules {
            grace: GRACE,
            min_in_ratio,
        }
    }

    fn map(devices: u32, reweights: &[(DeviceId, u32)], auto_out: &[DeviceId]) -> ClusterMap {
        let settings = cartdb_core::coord::PoolSettings {
            id: 1,
            pg_num: 8,
            size: 3,
        };
        ClusterMap {
            epoch: 3,
            map_json: "{}".into(),
            devices: (1..=devices).map(|d| (d, format!("device_{d}"))).collect(),
            reweights: reweights.iter().copied().collect(),
            settings,
            pool: settings.pool().unwrap(),
            past: BTreeMap::default(),
            intervals: BTreeMap::default(),
            auto_out: auto_out.iter().copied().collect(),
            flags: ClusterFlags::default(),
            pace: None,
            policies: cartdb_core::coord::ActivePolicies::default(),
            policy_history: Vec::new(),
        }
    }

    fn live(devices: &[DeviceId]) -> Membership {
        let mut m = Membership::default();
        for d in devices {
            m.devices.insert(*d, format!("127.0.0.1:{}", 7000 + d));
        }
        m
    }

    fn down(entries: &[(DeviceId, u64)]) -> BTreeMap<DeviceId, Duration> {
        entries
            .iter()
            .map(|&(d, secs)| (d, Duration::from_secs(secs)))
            .collect()
    }

    #[test]
    fn nothing_changes_when_every_device_is_live_and_in() {
        let decision = decide(
            &map(4, &[], &[]),
            &live(&[1, 2, 3, 4]),
            &down(&[]),
            &rules(0.5),
        );
        assert_eq!(decision.change, None);
        assert_eq!(decision.recheck_in, None);
    }

    #[test]
    fn a_down_device_waits_for_the_grace_then_is_marked_out() {
        let m = map(4, &[], &[]);
        let members = live(&[1, 2, 4]);
        let early = decide(&m, &members, &down(&[(3, 4)]), &rules(0.5));
        assert_eq!(early.change, None, "down, but not out yet");
        assert_eq!(early.recheck_in, Some(Duration::from_secs(6)));
        let late = decide(&m, &members, &down(&[(3, 10)]), &rules(0.5));
        let change = late.change.unwrap();
        assert_eq!(change.reweights[&3], 0);
        assert_eq!(change.reweights[&1], FULL_WEIGHT);
        assert_eq!(change.auto_out, BTreeSet::from([3]));
        assert_eq!(change.marked_out, vec![3]);
    }

    #[test]
    fn noout_keeps_a_down_device_in() {
        let mut m = map(4, &[], &[]);
        m.flags.noout = true;
        let decision = decide(&m, &live(&[1, 2, 4]), &down(&[(3, 3600)]), &rules(0.5));
        assert_eq!(decision.change, None);
        assert_eq!(decision.held_in, vec![3]);
    }

    #[test]
    fn the_min_in_ratio_caps_how_many_go_out_longest_down_first() {
        // Six devices, ratio 0.75: one may go ((6-1)/6 = 0.83), a second may not (4/6).
        let m = map(6, &[], &[]);
        let decision = decide(
            &m,
            &live(&[1, 2]),
            &down(&[(3, 20), (4, 50), (5, 30), (6, 40)]),
            &rules(0.75),
        );
        let change = decision.change.unwrap();
        assert_eq!(change.marked_out, vec![4]);
        assert_eq!(decision.held_in, vec![6, 5, 3]);
        // Ratio 0.5: three may go (3/6 = 0.5), the fourth may not.
        let decision = decide(
            &m,
            &live(&[1, 2]),
            &down(&[(3, 20), (4, 50), (5, 30), (6, 40)]),
            &rules(0.5),
        );
        assert_eq!(decision.change.unwrap().marked_out, vec![4, 6, 5]);
        assert_eq!(decision.held_in, vec![3]);
        // Devices already out count against the ratio.
        let m = map(6, &[(1, 0)], &[]);
        let decision = decide(&m, &live(&[2, 3, 4, 5]), &down(&[(6, 20)]), &rules(0.75));
        assert_eq!(decision.change, None);
        assert_eq!(decision.held_in, vec![6]);
    }

    #[test]
    fn a_device_the_cluster_marked_out_is_marked_in_when_it_returns() {
        let m = map(4, &[(3, 0)], &[3]);
        let change = decide(&m, &live(&[1, 2, 3, 4]), &down(&[]), &rules(0.5))
            .change
            .unwrap();
        assert_eq!(change.reweights[&3], FULL_WEIGHT);
        assert!(change.auto_out.is_empty());
        assert_eq!(change.marked_in, vec![3]);
        // Still down: stays out, nothing to do.
        let still = decide(&m, &live(&[1, 2, 4]), &down(&[(3, 99)]), &rules(0.5));
        assert_eq!(still.change, None);
    }

    #[test]
    fn an_operator_out_or_partial_reweight_is_kept() {
        // Device 3 was marked out by an operator (not in auto_out): it stays out when live.
        let m = map(4, &[(3, 0), (2, 0x8000)], &[]);
        let decision = decide(&m, &live(&[1, 2, 3, 4]), &down(&[]), &rules(0.5));
        assert_eq!(decision.change, None);
        // A draining device (partial weight) that goes down is marked out like any other,
        // and comes back fully in.
        let change = decide(&m, &live(&[1, 3, 4]), &down(&[(2, 10)]), &rules(0.25))
            .change
            .unwrap();
        assert_eq!(change.reweights[&2], 0);
        assert_eq!(change.auto_out, BTreeSet::from([2]));
    }

    #[test]
    fn the_clock_counts_from_the_first_absence_and_forgets_a_return() {
        let m = map(3, &[], &[]);
        let mut clock = DownClock::default();
        let t0 = Instant::now();
        assert!(clock.observe(&m, &live(&[1, 2, 3]), t0).is_empty());
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(clock.observe(&m, &live(&[1, 2]), t1)[&3], Duration::ZERO);
        let t2 = t0 + Duration::from_secs(5);
        assert_eq!(
            clock.observe(&m, &live(&[1, 2]), t2)[&3],
            Duration::from_secs(4)
        );
        assert!(clock.observe(&m, &live(&[1, 2, 3]), t2).is_empty());
        let t3 = t0 + Duration::from_secs(9);
        assert_eq!(clock.observe(&m, &live(&[1, 2]), t3)[&3], Duration::ZERO);
    }
}

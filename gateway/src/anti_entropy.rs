//! The anti-entropy sweep: repairs items nobody reads, and makes placement groups clean.
//!
//! Read repair only fixes what shoppers read. The sweep walks the pool's placement groups,
//! those with a past set first, and for each one
//!
//! ```text
//! scan     ScanPg to every device of the PG's up and past sets: which items it holds
//! compare  per user, a read of those items that waits for every replica
//!          ([`GatewayService::sweep`]): summaries compared, divergent items merged,
//!          stale up-set replicas repaired, settled logs compacted
//! clean?   the PG's round was clean when every read was complete and needed no repair,
//!          every up-set device answered the scan, fewer than W devices of the read set
//!          were silent, and the PG's up and past sets did not change meanwhile
//! handback if the PG has a past set and the round was clean: DropItems to each past
//!          device for the items it held, each only if still in the state the scan saw;
//!          a second scan of those devices must then find nothing of the PG; its past set
//!          is then cleared in ZooKeeper, in a batch with the other PGs found clean lately
//!          (one compare-and-set on the map, every [`CLEAR_EVERY`]), as long as its sets
//!          are still the ones the round saw
//! ```
//!
//! A round that needed repairs is not clean; the PG is tried again (PGs with a past set go
//! first, least recently tried first, each at most once per [`PAST_RETRY`]), and the second
//! round, with nothing left to repair, is. Batching the clears keeps one map epoch for
//! many clean PGs: after a device returns, half the PGs of a small cluster have a past set,
//! and one epoch per PG would make every gateway recompute its PG table as often. Why a
//! clean round proves the up set holds everything: each read merged every live copy in the
//! up and past sets and found each up-set device already equal to the merge; the reads'
//! quorum rule tolerates fewer than W silent devices, so every acknowledged write had a copy
//! among those read. Past devices take no writes placed with the current map, and every
//! request carries the epoch it was placed with, so a past device that answered the scan
//! (and so knows the PG's current interval) refuses a gateway still placing with an older
//! map ("Safety" in docs/design.md). A write such a gateway sent before that lands at most
//! in the writer's queue: the conditional drop keeps an item whose state changed since the
//! scan, and the second scan finds an item created since; either leaves the PG unclean for
//! another round. A past device that is down cannot be handed back to; its copies are
//! ignored by reads once the past set is cleared (`list_category` believes a device only for
//! items of PGs it belongs to).
//!
//! Only one gateway sweeps: the live gateway with the smallest id, ZooKeeper's
//! lowest-ephemeral-node election recipe over the `/gateways/gw-<id>` registrations every
//! gateway already holds, and only while its ZooKeeper session is connected (a leader cut
//! off from ZooKeeper stops at its next step instead of trusting a membership it can no
//! longer see change). Two gateways that briefly both believe they lead only repeat work:
//! repairs and conditional drops are idempotent, clearing a past set is a compare-and-set
//! on the map's epoch, and every scan and drop carries the epoch the leader placed it with,
//! so a leader whose map is older than a PG's interval (a rollback elsewhere made the past
//! devices current again) is refused by the data nodes instead of deleting live copies.
//!
//! The leader keeps its progress to itself: its `Cluster` answers carry it, and the API
//! server asks the smallest-id gateway first for `GET /api/cluster`. Progress used to be
//! published to a znode every few seconds and read back by every gateway; that kept
//! ZooKeeper busy while carts were served, for a status only operators read.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use cartdb_core::cart::{DeviceId, ItemKey, StateDigest};
use cartdb_core::coord::Placement;
use cartdb_core::pg_table::PastSets;
use cartdb_core::version::wall_clock_millis;
use cartdb_core::wire::{DataCall, DataRequest, DataResponse, HeldItem, SweepStatus};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::cluster_view::{ClusterView, Topology};
use crate::coordination::Coordination;
use crate::replicas::Replicas;
use crate::service::GatewayService;

/// How often the progress shown in `Cluster` answers is brought up to date.
const PUBLISH_EVERY: Duration = Duration::from_secs(1);

/// Shortest time between two rounds of one PG with a past set.
pub const PAST_RETRY: Duration = Duration::from_secs(1);

/// How often the past sets of PGs found clean are cleared, in one map change.
pub const CLEAR_EVERY: Duration = Duration::from_secs(2);

/// Most items one scan answer carries (the data nodes cap it there too); a PG with more on
/// one device is swept in part and not declared clean in that round. With the default 256
/// PGs, 3 replicas and 6 devices (128 PGs each) that is 1.28 million items per device.
const SCAN_LIMIT: u32 = 10_000;

/// Everything the sweep needs.
pub struct AntiEntropy {
    pub service: Arc<GatewayService>,
    pub view: Arc<ClusterView>,
    pub replicas: Arc<Replicas>,
    pub coordination: Arc<dyn Coordination>,
    pub gateway_id: u32,
    /// Users compared per second while leading.
    pub users_per_sec: u32,
    /// Time limit of one scan or drop request.
    pub request_timeout: Duration,
    /// Acknowledgements a write needs (W): a PG is clean only if fewer than W devices of
    /// its read set were silent, so every acknowledged write had a copy among those read.
    pub write_quorum: usize,
}

/// One PG being swept.
#[derive(Debug)]
struct Round {
    pg: u32,
    /// The PG's up and past sets when it was scanned.
    sets: PgSets,
    /// Users left to compare, with their items in this PG.
    pending: Vec<(String, Vec<String>)>,
    /// What each past device held of the PG, and in which state, for the handback.
    past_items: BTreeMap<DeviceId, Vec<(ItemKey, StateDigest)>>,
    /// The map epoch the round was placed with: its scans and drops carry it.
    epoch: u64,
    /// Whether everything so far allows calling the PG clean.
    clean: bool,
}

/// A PG's up and past sets.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PgSets {
    up: Vec<DeviceId>,
    past: Option<BTreeSet<DeviceId>>,
}

impl PgSets {
    fn of(topology: &Topology, pg: u32) -> Self {
        Self {
            up: topology.up_of_pg(pg).to_vec(),
            past: topology.map.past_of(pg).cloned(),
        }
    }
}

impl AntiEntropy {
    /// Whether this gateway leads the sweep: its ZooKeeper session is connected, and it has
    /// the smallest id among live gateways.
    fn leads(&self) -> bool {
        if !self.coordination.is_connected() {
            return false;
        }
        let topology = self.view.current();
        topology
            .members
            .gateways
            .keys()
            .next()
            .is_none_or(|&smallest| smallest >= self.gateway_id)
    }

    /// Sweeps while leading, and keeps the progress shown in `Cluster` answers, until
    /// `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let pace = Duration::from_secs(1) / self.users_per_sec.max(1);
        let mut ticks = tokio::time::interval(pace);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut status = SweepStatus {
            leader: self.gateway_id,
            ..SweepStatus::default()
        };
        let mut pass: Vec<u32> = Vec::new();
        let mut round: Option<Round> = None;
        let mut attempted: HashMap<u32, Instant> = HashMap::new();
        let mut clean: Vec<(u32, PgSets)> = Vec::new();
        let mut last_publish = Instant::now() - PUBLISH_EVERY;
        let mut last_clear = Instant::now();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            if self.leads() {
                let topology = self.view.current();
                match round.take() {
                    Some(current) => {
                        round = self.step(current, &topology, &mut status, &mut clean).await;
                    }
                    None => {
                        let pg = next_pg(&topology.map.past, &attempted, Instant::now())
                            .or_else(|| self.next_in_pass(&mut pass, &topology, &mut status));
                        if let Some(pg) = pg {
                            attempted.insert(pg, Instant::now());
                            round = Some(self.scan(pg, &topology).await);
                        }
                    }
                }
            } else if round.is_some() || !pass.is_empty() {
                round = None;
                pass.clear();
                clean.clear();
                tracing::info!("no longer the smallest live gateway; anti-entropy handed over");
            }
            if !clean.is_empty() && last_clear.elapsed() >= CLEAR_EVERY {
                last_clear = Instant::now();
                self.clear_past_sets(&mut clean, &mut status).await;
            }
            if last_publish.elapsed() >= PUBLISH_EVERY {
                last_publish = Instant::now();
                self.publish_progress(&status);
            }
        }
    }

    /// The next PG of the current pass over every PG, starting a new pass when it is done.
    fn next_in_pass(
        &self,
        pass: &mut Vec<u32>,
        topology: &Topology,
        status: &mut SweepStatus,
    ) -> Option<u32> {
        if pass.is_empty() {
            if status.pgs_total > 0 && status.pgs_done >= status.pgs_total {
                status.sweeps_completed += 1;
            }
            let pg_num = topology.map.pool.pg_num();
            *pass = (0..pg_num).rev().collect();
            status.pgs_total = u64::from(pg_num);
            status.pgs_done = 0;
        }
        let pg = pass.pop()?;
        status.pgs_done += 1;
        Some(pg)
    }

    /// Scans every device of `pg`'s up and past sets and plans the round.
    async fn scan(&self, pg: u32, topology: &Topology) -> Round {
        let up: BTreeSet<DeviceId> = topology
            .placement()
            .table()
            .up(pg)
            .iter()
            .copied()
            .collect();
        let devices = topology.read_set_of_pg(pg);
        let request = scan_request(topology, pg, SCAN_LIMIT);
        let calls = devices.iter().map(|&device| {
            let request = &request;
            async move {
                let answer = self
                    .replicas
                    .call(device, request, self.request_timeout)
                    .await;
                (device, answer)
            }
        });
        let mut by_user: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut past_items = BTreeMap::new();
        let mut tally = ScanTally::default();
        for (device, answer) in futures::future::join_all(calls).await {
            let items = match answer {
                Ok(DataResponse::Held { items, more }) => {
                    tally.truncated |= more;
                    items
                }
                other => {
                    tally.silent.insert(device);
                    tracing::debug!(pg, device, answer = ?other.err(), "cannot scan a device of the PG");
                    continue;
                }
            };
            for HeldItem { user, summary } in &items {
                by_user
                    .entry(user.clone())
                    .or_default()
                    .insert(summary.product.clone());
            }
            if !up.contains(&device) {
                let held = items
                    .into_iter()
                    .map(|item| {
                        let digest = item.summary.digest;
                        (held_key(item), digest)
                    })
                    .collect();
                past_items.insert(device, held);
            }
        }
        let clean = tally.allows_clean(&up, self.write_quorum);
        let mut pending: Vec<(String, Vec<String>)> = by_user
            .into_iter()
            .map(|(user, products)| (user, products.into_iter().collect()))
            .collect();
        pending.reverse();
        Round {
            pg,
            sets: PgSets::of(topology, pg),
            pending,
            past_items,
            epoch: topology.map.epoch,
            clean,
        }
    }

    /// Compares one user of the round, or finishes the round (handing a clean PG's past
    /// copies back and queueing its past set to be cleared); `None` when it is over.
    async fn step(
        &self,
        mut round: Round,
        topology: &Topology,
        status: &mut SweepStatus,
        clean: &mut Vec<(u32, PgSets)>,
    ) -> Option<Round> {
        if PgSets::of(topology, round.pg) != round.sets {
            // The PG moved while it was swept: start it again from a new scan.
            return None;
        }
        if let Some((user, products)) = round.pending.pop() {
            match self.service.sweep(&user, Some(&products)).await {
                Ok(outcome) => {
                    status.repairs += outcome.repairs as u64;
                    // Clean is decided on operation ids: a merge that dropped one (and was
                    // overruled by the built-in merge) does not prove anything either.
                    round.clean &=
                        outcome.complete && outcome.repairs == 0 && outcome.dropped_by_merge == 0;
                }
                Err(e) => {
                    round.clean = false;
                    tracing::debug!(%user, pg = round.pg, error = %e, "anti-entropy could not compare this user; a later round retries");
                }
            }
            return Some(round);
        }
        if round.clean && round.sets.past.is_some() && self.hand_back(&round, status).await {
            clean.push((round.pg, round.sets));
        }
        None
    }

    /// The PG is clean on its up set: deletes the copies its past devices held, each only
    /// if still in the state the scan saw, then scans those devices again: `true` when they
    /// hold nothing of the PG any more. `false` when a device refused or failed, kept an
    /// item that changed, or holds one that arrived since the scan; the PG then stays
    /// unclean and its next round copies what arrived.
    async fn hand_back(&self, round: &Round, status: &mut SweepStatus) -> bool {
        for (device, items) in &round.past_items {
            if items.is_empty() {
                continue;
            }
            let call = DataCall {
                epoch: round.epoch,
                request: DataRequest::DropItems {
                    items: items.clone(),
                },
            };
            match self
                .replicas
                .call(*device, &call, self.request_timeout)
                .await
            {
                Ok(DataResponse::Dropped { items, changed }) => {
                    status.handed_back += u64::from(items);
                    if changed > 0 {
                        metrics::counter!("cartdb_anti_entropy_drops_kept_total")
                            .increment(u64::from(changed));
                        tracing::info!(
                            pg = round.pg,
                            device,
                            changed,
                            "items changed since the scan were kept; the PG stays unclean"
                        );
                        return false;
                    }
                }
                other => {
                    tracing::debug!(pg = round.pg, device, answer = ?other, "handback failed; the PG stays unclean");
                    return false;
                }
            }
        }
        let topology = self.view.current();
        let rescan = DataCall {
            epoch: round.epoch,
            request: scan_request(&topology, round.pg, 1).request,
        };
        for device in round.past_items.keys() {
            match self
                .replicas
                .call(*device, &rescan, self.request_timeout)
                .await
            {
                Ok(DataResponse::Held { items, .. }) if items.is_empty() => {}
                other => {
                    tracing::info!(pg = round.pg, device, answer = ?other, "a past device holds items of the PG again after the handback; the PG stays unclean");
                    return false;
                }
            }
        }
        true
    }

    /// Clears, in one map change, the past sets of the PGs found clean whose sets are still
    /// the ones their rounds saw; the others are swept again.
    async fn clear_past_sets(&self, clean: &mut Vec<(u32, PgSets)>, status: &mut SweepStatus) {
        let topology = self.view.current();
        let mut past = topology.map.past.clone();
        let cleared: Vec<u32> = clean
            .drain(..)
            .filter(|(pg, sets)| PgSets::of(&topology, *pg) == *sets)
            .map(|(pg, _)| pg)
            .filter(|pg| past.remove(pg).is_some())
            .collect();
        if cleared.is_empty() {
            return;
        }
        let placement = Placement {
            past,
            ..Placement::of(&topology.map)
        };
        let epoch = topology.map.epoch;
        match self.coordination.set_placement(epoch, placement).await {
            Ok(true) => {
                status.pgs_cleaned += cleared.len() as u64;
                tracing::info!(epoch, pgs = ?cleared, "placement groups clean; past sets cleared");
            }
            Ok(false) => tracing::debug!(epoch, "the map changed first; those PGs are swept again"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot clear past sets; those PGs are swept again")
            }
        }
    }

    /// Shows this gateway's progress in its `Cluster` answers while it leads, and none
    /// while another gateway does (its own would be stale).
    fn publish_progress(&self, status: &SweepStatus) {
        let leads = self.leads();
        metrics::gauge!("cartdb_anti_entropy_leader").set(if leads { 1.0 } else { 0.0 });
        if leads {
            #[allow(clippy::cast_precision_loss, reason = "PG counts stay far below 2^52")]
            {
                metrics::gauge!("cartdb_anti_entropy_pgs_done").set(status.pgs_done as f64);
                metrics::gauge!("cartdb_anti_entropy_pgs_total").set(status.pgs_total as f64);
            }
            metrics::counter!("cartdb_anti_entropy_passes_total").absolute(status.sweeps_completed);
            metrics::counter!("cartdb_anti_entropy_repairs_total").absolute(status.repairs);
            metrics::counter!("cartdb_anti_entropy_pgs_cleaned_total").absolute(status.pgs_cleaned);
            metrics::counter!("cartdb_anti_entropy_handed_back_total").absolute(status.handed_back);
        }
        let shown = self.leads().then(|| SweepStatus {
            updated_ms: wall_clock_millis(),
            ..status.clone()
        });
        self.service.set_sweep_status(shown);
    }
}

/// What a PG's scan heard, for deciding whether its round can prove it clean.
#[derive(Debug, Default)]
struct ScanTally {
    /// Devices of the read set that did not answer.
    silent: BTreeSet<DeviceId>,
    /// Some answer was cut short by its limit.
    truncated: bool,
}

impl ScanTally {
    /// Whether the scan allows the round to call the PG clean: every answer whole, every
    /// up-set device answered (the up set must be proved complete), and fewer than W devices
    /// of the read set silent, so that a write acknowledged by W of them has a copy on one
    /// that answered.
    fn allows_clean(&self, up: &BTreeSet<DeviceId>, write_quorum: usize) -> bool {
        !self.truncated && self.silent.is_disjoint(up) && self.silent.len() < write_quorum
    }
}

/// The PG with a past set to sweep next: of those not attempted within [`PAST_RETRY`] of
/// `now`, the one attempted longest ago (never attempted first, then by PG number), so that
/// every such PG gets its turn however many there are.
fn next_pg(past: &PastSets, attempted: &HashMap<u32, Instant>, now: Instant) -> Option<u32> {
    past.keys()
        .copied()
        .filter(|pg| attempted.get(pg).is_none_or(|at| *at + PAST_RETRY <= now))
        .min_by_key(|pg| (attempted.get(pg).copied(), *pg))
}

/// A scan of `pg`'s items, at most `limit`, placed with `topology`'s map.
fn scan_request(topology: &Topology, pg: u32, limit: u32) -> DataCall {
    DataCall {
        epoch: topology.map.epoch,
        request: DataRequest::ScanPg {
            ranges: topology
                .map
                .pool
                .key_ranges(pg)
                .into_iter()
                .map(|r| (r.first, r.last))
                .collect(),
            limit,
        },
    }
}

fn held_key(item: HeldItem) -> ItemKey {
    ItemKey {
        user: item.user,
        product: item.summary.product,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    #[test]
    fn pgs_with_a_past_set_come_first_and_are_retried_after_a_pause() {
        let now = Instant::now();
        let past = PastSets::from([(3, BTreeSet::from([1])), (9, BTreeSet::from([2]))]);
        assert_eq!(next_pg(&past, &HashMap::new(), now), Some(3));
        let attempted = HashMap::from([(3, now)]);
        assert_eq!(next_pg(&past, &attempted, now), Some(9));
        let both = HashMap::from([(3, now), (9, now)]);
        assert_eq!(next_pg(&past, &both, now), None);
        assert_eq!(next_pg(&past, &both, now + PAST_RETRY), Some(3));
        assert_eq!(next_pg(&PastSets::new(), &HashMap::new(), now), None);
    }

    #[test]
    fn a_scan_proves_a_pg_clean_only_with_the_up_set_and_all_but_w_minus_1() {
        let up = BTreeSet::from([1, 2, 3]);
        let heard = |silent: &[DeviceId], truncated| ScanTally {
            silent: silent.iter().copied().collect(),
            truncated,
        };
        assert!(heard(&[], false).allows_clean(&up, 2));
        // One past device down: every acknowledged write still has a copy that answered.
        assert!(heard(&[5], false).allows_clean(&up, 2));
        // An up-set device silent, two past devices silent, or a cut-short answer: not clean.
        assert!(!heard(&[2], false).allows_clean(&up, 2));
        assert!(!heard(&[4, 5], false).allows_clean(&up, 2));
        assert!(!heard(&[], true).allows_clean(&up, 2));
        // An empty up set that answered while every past device is down proves nothing.
        let lone = BTreeSet::from([1]);
        assert!(!heard(&[2, 3, 4, 5, 6], false).allows_clean(&lone, 2));
    }

    /// With more PGs than can be swept within the retry pause, the ones tried longest ago
    /// come first: no PG waits forever behind lower-numbered ones.
    #[test]
    fn no_pg_with_a_past_set_is_starved() {
        let start = Instant::now();
        let past: PastSets = (0..50).map(|pg| (pg, BTreeSet::from([1]))).collect();
        let mut attempted = HashMap::new();
        let mut now = start;
        let mut order = Vec::new();
        for _ in 0..100 {
            // Each round takes 100 ms, far less than the 50 PGs need to get one each.
            now += Duration::from_millis(100);
            if let Some(pg) = next_pg(&past, &attempted, now) {
                attempted.insert(pg, now);
                order.push(pg);
            }
        }
        let swept: BTreeSet<u32> = order.iter().copied().collect();
        assert_eq!(swept.len(), 50, "every PG had a turn: {order:?}");
    }
}

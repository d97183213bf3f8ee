//! The anti-entropy sweep: backfill, repair of items nobody reads, and handback; it makes
//! placement groups clean.
//!
//! Read repair only fixes what shoppers read. The sweep walks the pool's placement groups,
//! those with a past set first, and streams each one, a window at a time
//! ([`crate::pg_stream`]):
//!
//! ```text
//! digests  a PG with no past set: PgDigests to every device of its read set (its up set),
//!          one digest per bucket (`cartdb_model::digest_bucket`, kept by each data node
//!          as writes land); only the buckets whose digests differ, or that hold a long log
//!          to compact, are streamed, and a PG whose copies agree is done
//! stream   ReadPg to every device of the PG's up and past sets: the full states of its
//!          items after the cursor, a chunk each (data format 5 keeps a PG contiguous)
//! compare  per item of the window: states equal everywhere and on every up-set device, or
//!          merged (the merge policy, overruled by the built-in merge if it drops an
//!          operation id); what each up-set device lacks goes to it in one RepairMany,
//!          one commit for the chunk; settled logs are compacted
//! clean?   the PG's round was clean when every up-set device answered every window and
//!          acknowledged every repair it was sent (so it now holds every operation id any
//!          device of the read set held), no merge dropped an operation, fewer than W
//!          devices of the read set were silent, and the PG's up and past sets did not
//!          change meanwhile
//! handback if the PG has a past set and the round was clean: DropItems to each past
//!          device for the items it held, each only if still in the state the stream saw;
//!          a second scan of those devices must then find nothing of the PG; its past set
//!          is then cleared in ZooKeeper, in a batch with the other PGs found clean lately
//!          (one compare-and-set on the map, every [`CLEAR_EVERY`]), as long as its sets
//!          are still the ones the round saw
//! ```
//!
//! There is no per-shopper round trip and no item cap: a PG of any size is a sequence of
//! chunks. The pace is `--anti-entropy-items-per-sec` (a window costs its items, and at
//! least [`WINDOW_COST`], as does a PG's digest comparison); an operator may change it at
//! runtime (`cartdb pace`, kept in the map). Background passes start at most every
//! [`PASS_INTERVAL`]; over agreeing copies a pass is one digest request per device and PG,
//! so at a million carts it takes seconds and reads no item. An earlier sweep read one
//! shopper at a time through the cart read path, paced in users per second: at a million
//! carts a pass took about 14 hours, and a PG with more than 10,000 items on a device was
//! never declared clean.
//!
//! A round whose repair failed, or that could not hear enough devices, is not clean; the PG
//! is tried again (PGs with a past set go first, least recently tried first, each at most
//! once per [`PAST_RETRY`]). Batching the clears keeps one map epoch for many clean PGs:
//! after a device returns, half the PGs of a small cluster have a past set, and one epoch
//! per PG would make every gateway recompute its PG table as often. Why a clean round
//! proves the up set holds everything: each window merged every live copy in the up and
//! past sets, and each up-set device either already held the merge or acknowledged (durably)
//! the repair that gave it what it lacked; the quorum rule tolerates fewer than W silent
//! devices, so every acknowledged write had a copy among those read. (An earlier sweep
//! asked for a second round with nothing to repair; the acknowledged repairs prove the same,
//! and at a million carts the second round took a third of the recovery.) Past devices take
//! no writes placed with the current map, and every
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

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use cartdb_core::cart::DeviceId;
use cartdb_core::coord::Placement;
use cartdb_core::pg_table::PastSets;
use cartdb_core::version::wall_clock_millis;
use cartdb_core::wire::SweepStatus;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cluster_view::{ClusterView, Topology};
use crate::coordination::Coordination;
use crate::replicas::Replicas;
use crate::service::GatewayService;

mod round;

use round::{PgSets, Round};

/// How often the progress shown in `Cluster` answers is brought up to date.
const PUBLISH_EVERY: Duration = Duration::from_secs(1);

/// Shortest time between two rounds of one PG with a past set.
pub const PAST_RETRY: Duration = Duration::from_secs(1);

/// How often the past sets of PGs found clean are cleared, in one map change.
pub const CLEAR_EVERY: Duration = Duration::from_secs(2);

/// Items one device sends per window (the data nodes also bound a chunk at about
/// `PG_CHUNK_BYTES`).
const CHUNK_ITEMS: u32 = 1_000;

/// What a window costs the pace at least, in items: one request to every device of the
/// read set, even for an empty PG.
pub const WINDOW_COST: u32 = 100;

/// How many times the cart requests' time limit a sweep request gets: a chunk of 1,000
/// items read from disk, or committed, under foreground load took over 2 s at a million
/// carts (docs/benchmarks.md, the handback run), and a timed-out window only makes the
/// round start again.
pub const SWEEP_TIMEOUT_FACTOR: u32 = 5;

/// Shortest time between the starts of two background passes. Over agreeing copies a pass
/// costs one digest request per device of each PG and takes a second or two; back to back,
/// passes would keep hundreds of requests a second going to find nothing.
pub const PASS_INTERVAL: Duration = Duration::from_secs(5);

/// The pause between steps while this gateway does not lead, or has nothing to do.
const IDLE: Duration = Duration::from_millis(200);

/// Everything the sweep needs.
pub struct AntiEntropy {
    pub service: Arc<GatewayService>,
    pub view: Arc<ClusterView>,
    pub replicas: Arc<Replicas>,
    pub coordination: Arc<dyn Coordination>,
    pub gateway_id: u32,
    /// Items streamed per second while leading (see [`WINDOW_COST`]).
    pub items_per_sec: u32,
    /// Most PG rounds with a past set any one device takes part in at once.
    pub max_backfills: usize,
    /// Time limit of one stream, repair, scan or drop request: a chunk of up to
    /// [`CHUNK_ITEMS`] items, so [`SWEEP_TIMEOUT_FACTOR`] times the cart requests' limit.
    pub request_timeout: Duration,
    /// Acknowledgements a write needs (W): a PG is clean only if fewer than W devices of
    /// its read set were silent, so every acknowledged write had a copy among those read.
    pub write_quorum: usize,
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
    ///
    /// PGs with a past set are streamed several at once, each device taking part in at
    /// most `max_backfills` of them (Ceph's `osd_max_backfills`); the background pass over
    /// every PG runs one PG at a time, when no PG has a past set to stream.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut status = SweepStatus {
            leader: self.gateway_id,
            ..SweepStatus::default()
        };
        let mut pass: Vec<u32> = Vec::new();
        let mut pass_started: Option<Instant> = None;
        let mut rounds: Vec<Round> = Vec::new();
        let mut attempted: HashMap<u32, Instant> = HashMap::new();
        let mut clean: Vec<(u32, PgSets)> = Vec::new();
        let mut last_publish = Instant::now() - PUBLISH_EVERY;
        let mut last_clear = Instant::now();
        let mut pause = Duration::ZERO;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
            pause = IDLE;
            if self.leads() {
                let topology = self.view.current();
                self.start_rounds(
                    &mut rounds,
                    &mut attempted,
                    &mut pass,
                    &mut pass_started,
                    &topology,
                    &mut status,
                );
                if !rounds.is_empty() {
                    let started = Instant::now();
                    let steps = rounds.drain(..).map(|round| self.step(round, &topology));
                    let mut cost = 0u32;
                    for (next, step) in futures::future::join_all(steps).await {
                        status.repairs += step.repairs;
                        status.handed_back += step.handed_back;
                        status.items_streamed += step.items;
                        status.ops_repaired += step.ops_repaired;
                        clean.extend(step.cleaned);
                        cost = cost.saturating_add(step.cost);
                        rounds.extend(next);
                    }
                    pause = self.pace(cost, &topology).saturating_sub(started.elapsed());
                }
                status.rounds_running = rounds.len() as u64;
                status.items_per_sec = u64::from(self.items_per_sec(&self.view.current()));
            } else if !rounds.is_empty() || !pass.is_empty() {
                rounds.clear();
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

    /// Starts rounds of the PGs with a past set that are due, as long as every device of
    /// each one's read set takes part in fewer than `max_backfills` rounds; with none
    /// running and none due, the next PG of the background pass.
    fn start_rounds(
        &self,
        rounds: &mut Vec<Round>,
        attempted: &mut HashMap<u32, Instant>,
        pass: &mut Vec<u32>,
        pass_started: &mut Option<Instant>,
        topology: &Topology,
        status: &mut SweepStatus,
    ) {
        let mut load: HashMap<DeviceId, usize> = HashMap::new();
        for round in rounds.iter() {
            for device in busy_devices(topology, round.pg) {
                *load.entry(device).or_default() += 1;
            }
        }
        loop {
            let now = Instant::now();
            let running: BTreeSet<u32> = rounds.iter().map(|r| r.pg).collect();
            let eligible = |pg: u32| {
                !running.contains(&pg)
                    && may_move(topology, pg)
                    && busy_devices(topology, pg)
                        .iter()
                        .all(|d| load.get(d).copied().unwrap_or(0) < self.max_backfills)
            };
            let Some(pg) = next_pg(&topology.map.past, attempted, now, eligible) else {
                break;
            };
            attempted.insert(pg, now);
            for device in busy_devices(topology, pg) {
                *load.entry(device).or_default() += 1;
            }
            rounds.push(Round::new(pg, topology));
        }
        if rounds.is_empty()
            && let Some(pg) = self.next_in_pass(pass, pass_started, topology, status)
            && may_move(topology, pg)
        {
            rounds.push(Round::new(pg, topology));
        }
    }

    /// How long steps that cost `items` must take at least, to keep to the pace: the
    /// sweep pauses for what is left of it after the steps themselves (so a pace the
    /// devices can keep up with is the rate, not the rate less the steps' own latency).
    fn pace(&self, items: u32, topology: &Topology) -> Duration {
        Duration::from_secs(1) * items / self.items_per_sec(topology).max(1)
    }

    /// The pace in items per second: the map's, set by an operator (`cartdb pace`), or this
    /// gateway's `--anti-entropy-items-per-sec`.
    fn items_per_sec(&self, topology: &Topology) -> u32 {
        topology.map.pace.unwrap_or(self.items_per_sec)
    }

    /// The next PG of the current pass over every PG, starting a new pass when it is done.
    fn next_in_pass(
        &self,
        pass: &mut Vec<u32>,
        pass_started: &mut Option<Instant>,
        topology: &Topology,
        status: &mut SweepStatus,
    ) -> Option<u32> {
        if pass.is_empty() {
            if status.pgs_total > 0 && status.pgs_done >= status.pgs_total {
                status.sweeps_completed += 1;
                status.pgs_done = 0;
                let took = pass_started.map_or(Duration::ZERO, |at| at.elapsed());
                status.last_pass_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
                metrics::gauge!("cartdb_anti_entropy_last_pass_seconds").set(took.as_secs_f64());
                tracing::info!(
                    pass = status.sweeps_completed,
                    seconds = took.as_secs_f64(),
                    items_streamed = status.items_streamed,
                    repairs = status.repairs,
                    "anti-entropy pass complete"
                );
            }
            if pass_started.is_some_and(|at| at.elapsed() < PASS_INTERVAL) {
                return None;
            }
            *pass_started = Some(Instant::now());
            let pg_num = topology.map.pool.pg_num();
            *pass = (0..pg_num).rev().collect();
            status.pgs_total = u64::from(pg_num);
            status.pgs_done = 0;
        }
        let pg = pass.pop()?;
        status.pgs_done += 1;
        Some(pg)
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
            metrics::counter!("cartdb_anti_entropy_items_streamed_total")
                .absolute(status.items_streamed);
            metrics::counter!("cartdb_anti_entropy_ops_repaired_total")
                .absolute(status.ops_repaired);
            #[allow(clippy::cast_precision_loss, reason = "a handful of rounds")]
            metrics::gauge!("cartdb_anti_entropy_rounds_running").set(status.rounds_running as f64);
        }
        let shown = self.leads().then(|| SweepStatus {
            updated_ms: wall_clock_millis(),
            ..status.clone()
        });
        self.service.set_sweep_status(shown);
    }
}

/// The devices a round of `pg` keeps busy: its read set's live devices. A down device
/// serves nothing, so it takes no share of `--max-backfills`: after a device dies it is in
/// the past set of every PG it held, and counting it would stream them two at a time.
fn busy_devices(topology: &Topology, pg: u32) -> Vec<DeviceId> {
    let mut devices = topology.read_set_of_pg(pg);
    devices.retain(|device| topology.members.devices.contains_key(device));
    devices
}

/// Whether the cluster flags let the sweep stream `pg` (`nobackfill`, `norebalance`).
fn may_move(topology: &Topology, pg: u32) -> bool {
    topology
        .map
        .flags
        .allow_movement(topology.map.past_of(pg), |device| {
            topology.members.devices.contains_key(&device)
        })
}

/// The PG with a past set to sweep next: of those not attempted within [`PAST_RETRY`] of
/// `now`, the one attempted longest ago (never attempted first, then by PG number), so that
/// every such PG gets its turn however many there are.
fn next_pg(
    past: &PastSets,
    attempted: &HashMap<u32, Instant>,
    now: Instant,
    eligible: impl Fn(u32) -> bool,
) -> Option<u32> {
    past.keys()
        .copied()
        .filter(|pg| attempted.get(pg).is_none_or(|at| *at + PAST_RETRY <= now))
        .filter(|pg| eligible(*pg))
        .min_by_key(|pg| (attempted.get(pg).copied(), *pg))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    #[test]
    fn pgs_with_a_past_set_come_first_and_are_retried_after_a_pause() {
        let now = Instant::now();
        let past = PastSets::from([(3, BTreeSet::from([1])), (9, BTreeSet::from([2]))]);
        assert_eq!(next_pg(&past, &HashMap::new(), now, |_| true), Some(3));
        let attempted = HashMap::from([(3, now)]);
        assert_eq!(next_pg(&past, &attempted, now, |_| true), Some(9));
        let both = HashMap::from([(3, now), (9, now)]);
        assert_eq!(next_pg(&past, &both, now, |_| true), None);
        assert_eq!(next_pg(&past, &both, now + PAST_RETRY, |_| true), Some(3));
        assert_eq!(
            next_pg(&PastSets::new(), &HashMap::new(), now, |_| true),
            None
        );
        // A PG whose devices are busy with other rounds waits its turn.
        assert_eq!(next_pg(&past, &HashMap::new(), now, |pg| pg != 3), Some(9));
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
            if let Some(pg) = next_pg(&past, &attempted, now, |_| true) {
                attempted.insert(pg, now);
                order.push(pg);
            }
        }
        let swept: BTreeSet<u32> = order.iter().copied().collect();
        assert_eq!(swept.len(), 50, "every PG had a turn: {order:?}");
    }
}

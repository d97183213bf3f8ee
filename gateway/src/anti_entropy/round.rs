//! One round of the sweep over one placement group: stream it a window at a time from its
//! read set, repair the up set, and hand a clean PG's past copies back (the steps in
//! [`super`]'s docs). The window's decisions are pure, in [`crate::pg_stream`]; this file
//! sends the requests.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use cartdb_core::cart::{DeviceId, ItemKey, ItemState, StateDigest};
use cartdb_core::digest_bucket::{buckets_of, ranges_of};
use cartdb_core::wire::{BucketDigest, DataCall, DataRequest, DataResponse, ItemRepair};

use super::{AntiEntropy, CHUNK_ITEMS, WINDOW_COST};
use crate::cluster_view::Topology;
use crate::pg_stream::{Chunk, StreamKey, Window, WindowPlan, buckets_to_read};
use crate::replicas::ReplicaError;

/// One PG being swept.
#[derive(Debug)]
pub(super) struct Round {
    pub(super) pg: u32,
    /// The PG's up and past sets when the round began.
    sets: PgSets,
    /// The key ranges to stream: the PG's, or after the digests were compared only the
    /// buckets that differ.
    ranges: Vec<(u32, u32)>,
    /// The digests were compared (or need not be: a PG with a past set is streamed whole,
    /// since its handback needs every item the past devices hold).
    compared: bool,
    /// Where the next window starts (after this item); `None` before the first.
    cursor: Option<ItemKey>,
    /// The last window has been compared.
    done: bool,
    /// Devices of the read set that failed to answer some window.
    silent: BTreeSet<DeviceId>,
    /// What each past device held of the PG, and in which state, for the handback.
    past_items: BTreeMap<DeviceId, Vec<(ItemKey, StateDigest)>>,
    /// The map epoch the round was placed with: its reads, repairs and drops carry it.
    epoch: u64,
    /// Whether everything so far allows calling the PG clean.
    clean: bool,
}

/// A PG's up and past sets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct PgSets {
    up: Vec<DeviceId>,
    past: Option<BTreeSet<DeviceId>>,
}

impl PgSets {
    pub(super) fn of(topology: &Topology, pg: u32) -> Self {
        Self {
            up: topology.up_of_pg(pg).to_vec(),
            past: topology.map.past_of(pg).cloned(),
        }
    }
}

impl AntiEntropy {
    /// Compares the round's next window, or finishes the round (handing a clean PG's past
    /// copies back; the PG is then in [`Step::cleaned`], for its past set to be cleared).
    /// Returns the round if it goes on, and what the step did.
    pub(super) async fn step(
        &self,
        mut round: Round,
        topology: &Topology,
    ) -> (Option<Round>, Step) {
        let mut step = Step::default();
        if PgSets::of(topology, round.pg) != round.sets || !super::may_move(topology, round.pg) {
            // The PG moved while it was swept, or a flag paused data movement: start it
            // again later, from the beginning.
            return (None, step);
        }
        if !round.compared {
            let started = Instant::now();
            self.compare_digests(&mut round, topology).await;
            timed("digests", started);
            step.cost = WINDOW_COST;
            return (Some(round), step);
        }
        if !round.done {
            let items = self.compare_window(&mut round, topology, &mut step).await;
            step.cost = u32::try_from(items).unwrap_or(u32::MAX).max(WINDOW_COST);
            return (Some(round), step);
        }
        let up: BTreeSet<DeviceId> = round.sets.up.iter().copied().collect();
        round.clean &= round.silent.is_disjoint(&up) && round.silent.len() < self.write_quorum;
        if round.clean && round.sets.past.is_some() {
            let started = Instant::now();
            if self.hand_back(&round, &mut step).await {
                step.cleaned = Some((round.pg, round.sets));
            }
            timed("handback", started);
        }
        (None, step)
    }

    /// Sends `request`, placed with `epoch`, to every device of `read_set` at once.
    async fn call_read_set(
        &self,
        epoch: u64,
        read_set: &[DeviceId],
        request: DataRequest,
    ) -> Vec<(DeviceId, Result<DataResponse, ReplicaError>)> {
        let call = DataCall { epoch, request };
        let calls = read_set.iter().map(|&device| {
            let call = &call;
            async move {
                let answer = self.replicas.call(device, call, self.request_timeout).await;
                (device, answer)
            }
        });
        futures::future::join_all(calls).await
    }

    /// Sends `request` to every device of the PG's read set and returns the answers `pick`
    /// accepts. A device that fails, or answers otherwise, is silent for the round.
    async fn ask_read_set<T>(
        &self,
        round: &mut Round,
        read_set: &[DeviceId],
        request: DataRequest,
        pick: impl Fn(DataResponse) -> Option<T>,
    ) -> BTreeMap<DeviceId, T> {
        let mut answers = BTreeMap::new();
        for (device, answer) in self.call_read_set(round.epoch, read_set, request).await {
            let failure = match answer.map(&pick) {
                Ok(Some(answer)) => {
                    answers.insert(device, answer);
                    continue;
                }
                Ok(None) => None,
                Err(e) => Some(e),
            };
            round.silent.insert(device);
            // A device that is down (not registered) may stay down for good: the quorum
            // rule covers it. A live one that did not answer still holds items the round
            // has not seen, so its copies cannot be handed back this round.
            if !matches!(failure, Some(ReplicaError::Down { .. })) {
                round.clean = false;
            }
            tracing::debug!(pg = round.pg, device, error = ?failure, "a device of the PG did not answer the sweep");
        }
        answers
    }

    /// Compares the digest buckets of the round's PG on every device of its read set and
    /// narrows the round to the buckets that differ ([`buckets_to_read`]); a PG whose
    /// copies all agree is done. The PG is streamed whole when a live device gave no
    /// digests (still rebuilding them after a restart, or failing): the stream then
    /// decides. A round of a PG with a past set never comes here ([`Round::new`]).
    async fn compare_digests(&self, round: &mut Round, topology: &Topology) {
        round.compared = true;
        let buckets = match buckets_of(&round.ranges) {
            Ok(buckets) => buckets,
            Err(e) => {
                tracing::warn!(pg = round.pg, error = %e, "cannot compare the PG's digests; streaming it whole");
                return;
            }
        };
        let read_set = topology.read_set_of_pg(round.pg);
        let request = DataRequest::PgDigests {
            ranges: round.ranges.clone(),
        };
        let mut answers = Vec::new();
        for (device, answer) in self.call_read_set(round.epoch, &read_set, request).await {
            match answer {
                Ok(DataResponse::PgDigests { buckets: digests })
                    if digests.len() == buckets.len() =>
                {
                    answers.push(digests);
                }
                // A down device answers neither this nor the stream.
                Err(ReplicaError::Down { .. }) => {}
                other => {
                    tracing::debug!(pg = round.pg, device, answer = ?other, "no digests from a device of the PG; streaming it whole");
                    return;
                }
            }
        }
        if answers.is_empty() {
            return;
        }
        let answers: Vec<&[BucketDigest]> = answers.iter().map(Vec::as_slice).collect();
        let read = buckets_to_read(&buckets, &answers);
        metrics::counter!("cartdb_anti_entropy_buckets_compared_total")
            .increment(buckets.len() as u64);
        metrics::counter!("cartdb_anti_entropy_buckets_read_total").increment(read.len() as u64);
        round.ranges = ranges_of(&read);
        round.done = round.ranges.is_empty();
    }

    /// Streams one window of the round's PG from every device of its read set, repairs the
    /// up-set devices, compacts settled logs and remembers the past devices' items. Returns
    /// how many items the window held.
    async fn compare_window(
        &self,
        round: &mut Round,
        topology: &Topology,
        step: &mut Step,
    ) -> usize {
        let read_set = topology.read_set_of_pg(round.pg);
        let up: BTreeSet<DeviceId> = round.sets.up.iter().copied().collect();
        let request = DataRequest::ReadPg {
            ranges: round.ranges.clone(),
            after: round.cursor.clone(),
            limit: CHUNK_ITEMS,
        };
        let started = Instant::now();
        let chunks = self
            .ask_read_set(round, &read_set, request, |answer| match answer {
                DataResponse::PgStates { items, more } => Some(Chunk { items, more }),
                _ => None,
            })
            .await;
        let started = timed("stream", started);
        if chunks.is_empty() {
            round.clean = false;
            round.done = true;
            return 0;
        }
        let answered: BTreeSet<DeviceId> = chunks.keys().copied().collect();
        let all_answered = answered.len() == read_set.len();
        let window = Window::of(chunks);
        let to_merge = window.to_merge();
        let keys: Vec<StreamKey> = to_merge.iter().map(|(key, _)| key.clone()).collect();
        let merges = if to_merge.is_empty() {
            Vec::new()
        } else {
            self.service
                .merge_all(to_merge.into_iter().map(|(_, states)| states).collect())
                .await
        };
        let merged: BTreeMap<StreamKey, ItemState> = keys.into_iter().zip(merges).collect();
        let plan = WindowPlan::new(&window, &up, &answered, all_answered, &merged);
        let repairs = plan.repair_count();
        step.repairs += repairs as u64;
        // Repairs do not make the round unclean: each is acknowledged (durably applied) by its
        // up-set device before the round goes on, and a failed one makes it unclean. What
        // does is a merge that dropped an operation: the proof is on ids, not on the policy.
        round.clean &= plan.dropped_by_merge == 0;
        if plan.dropped_by_merge > 0 {
            metrics::counter!("cartdb_gateway_merge_dropped_total")
                .increment(plan.dropped_by_merge as u64);
        }
        step.items += plan.items as u64;
        let started = timed("plan", started);
        self.send_repairs(round, plan.repairs, step).await;
        let started = timed("repair", started);
        for (user, settled) in plan.settled {
            self.service
                .compact_settled(&user, settled, round.epoch)
                .await;
        }
        timed("compact", started);
        for (device, items) in plan.past {
            round.past_items.entry(device).or_default().extend(items);
        }
        round.cursor = window.next;
        round.done = round.cursor.is_none();
        plan.items
    }

    /// Sends each up-set device its repairs in one `RepairMany`; a device that fails leaves
    /// the round unclean (it was unclean anyway: it needed repairs).
    async fn send_repairs(
        &self,
        round: &mut Round,
        repairs: BTreeMap<DeviceId, Vec<ItemRepair>>,
        step: &mut Step,
    ) {
        let epoch = round.epoch;
        let calls = repairs.into_iter().map(|(device, items)| {
            let call = DataCall {
                epoch,
                request: DataRequest::RepairMany { items },
            };
            async move {
                let answer = self
                    .replicas
                    .call(device, &call, self.request_timeout)
                    .await;
                (device, answer)
            }
        });
        for (device, answer) in futures::future::join_all(calls).await {
            match answer {
                Ok(DataResponse::Repaired { added }) => step.ops_repaired += u64::from(added),
                other => {
                    round.clean = false;
                    tracing::debug!(pg = round.pg, device, answer = ?other, "a repair failed; a later round retries");
                }
            }
        }
    }

    /// The PG is clean on its up set: deletes the copies its past devices held, each only
    /// if still in the state the scan saw, then scans those devices again: `true` when they
    /// hold nothing of the PG any more. `false` when a device refused or failed, kept an
    /// item that changed, or holds one that arrived since the scan; the PG then stays
    /// unclean and its next round copies what arrived.
    async fn hand_back(&self, round: &Round, step: &mut Step) -> bool {
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
                    step.handed_back += u64::from(items);
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
            request: DataRequest::ScanPg {
                ranges: pg_ranges(&topology, round.pg),
                limit: 1,
            },
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
}

/// Records how long a phase of a round took since `started`
/// (`cartdb_anti_entropy_phase_seconds`), and returns now, for the next phase.
fn timed(phase: &'static str, started: Instant) -> Instant {
    let now = Instant::now();
    metrics::histogram!("cartdb_anti_entropy_phase_seconds", "phase" => phase)
        .record(now.duration_since(started).as_secs_f64());
    now
}

/// What one step of a round did, for the sweep's status and pace.
#[derive(Debug, Default)]
pub(super) struct Step {
    /// Items the step cost the pace.
    pub(super) cost: u32,
    pub(super) repairs: u64,
    pub(super) handed_back: u64,
    /// Items in the step's window, and operations its repairs added.
    pub(super) items: u64,
    pub(super) ops_repaired: u64,
    /// The PG, handed back and clean, whose past set may be cleared.
    pub(super) cleaned: Option<(u32, PgSets)>,
}

/// The key ranges that hold exactly `pg`'s items, as requests name them.
fn pg_ranges(topology: &Topology, pg: u32) -> Vec<(u32, u32)> {
    topology
        .map
        .pool
        .key_ranges(pg)
        .into_iter()
        .map(|r| (r.first, r.last))
        .collect()
}

impl Round {
    /// A round of `pg` as `topology` places it, before its first window.
    pub(super) fn new(pg: u32, topology: &Topology) -> Self {
        Self {
            pg,
            sets: PgSets::of(topology, pg),
            ranges: pg_ranges(topology, pg),
            // A PG with a past set is streamed whole: its handback needs every item the
            // past devices hold.
            compared: topology.map.past_of(pg).is_some(),
            cursor: None,
            done: false,
            silent: BTreeSet::new(),
            past_items: BTreeMap::new(),
            epoch: topology.map.epoch,
            clean: true,
        }
    }
}

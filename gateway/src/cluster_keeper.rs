//! The background task that keeps the gateway's view of the cluster current.
//!
//! Whenever the membership or the map changes, it
//! 1. points the data node connections ([`Replicas`]) at the live devices' addresses;
//! 2. computes every PG's up set when the map epoch changed (off the async workers), with
//!    the placement policy the map names (fetched from the policy store and compiled
//!    first if this gateway has not got it: [`PolicyLibrary`]), and publishes the new
//!    [`Topology`]; and swaps the merge policy when the map names another. A policy that
//!    cannot be had keeps the previous one in force (a deploy's verification makes that
//!    rare), and is tried again;
//! 3. marks devices down past their grace out, and returning ones in (the rules are in
//!    [`crate::down_out`]): it computes the up sets the new reweights give, the past sets
//!    that follow (`PgTable::past_after`: a device leaving a PG's up set joins its past
//!    set), and writes both with one compare-and-set of the map. Both gateways may race to
//!    do so; the loser's CAS fails harmlessly and it re-decides on the map the winner wrote.
//!    Every gateway thus places with the same reweights at the same epoch, and no reader
//!    sees a new up set without the past set that still holds the PG's data. It wakes up
//!    by itself when a down device's grace ends.
//!
//! None of this runs on the request path.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cartdb_core::coord::{ClusterMap, Coordinator, FULL_WEIGHT, Membership, Placement};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cluster_view::{ClusterView, Topology};
use crate::down_out::{DownClock, DownOutRules, decide};
use crate::merger::Merger;
use crate::placement::{EpochPlacement, build_placement};
use crate::policy::{PolicyLibrary, short};
use crate::replicas::Replicas;

/// How soon a failed reweight update is tried again when nothing else changes.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Keeps a [`ClusterView`] and the [`Replicas`] in step with ZooKeeper.
pub struct ClusterKeeper {
    pub coordinator: Coordinator,
    pub view: Arc<ClusterView>,
    pub replicas: Arc<Replicas>,
    pub library: Arc<PolicyLibrary>,
    pub merger: Arc<Merger>,
    pub rule: Option<String>,
    pub down_out: DownOutRules,
}

/// When the keeper should look again though nothing changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wake {
    /// Only on a change.
    OnChange,
    /// After this long (a failed update to retry, or a grace ending).
    After(Duration),
}

impl ClusterKeeper {
    /// Follows the membership and the map until `shutdown` is cancelled or the coordinator
    /// stops publishing.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut members = self.coordinator.members();
        let mut map = self.coordinator.map();
        let mut clock = DownClock::default();
        loop {
            let current_members = members.borrow_and_update().clone();
            let current_map = map.borrow_and_update().clone();
            let wake = match current_map {
                Some(current_map) => self.refresh(current_members, current_map, &mut clock).await,
                None => {
                    self.replicas.refresh(&current_members.devices);
                    Wake::OnChange
                }
            };
            if !wait_for_change(&mut members, &mut map, wake, &shutdown).await {
                return;
            }
        }
    }

    /// Applies one (members, map) pair, and says when to look again by itself.
    async fn refresh(
        &self,
        members: Arc<Membership>,
        map: Arc<ClusterMap>,
        clock: &mut DownClock,
    ) -> Wake {
        self.replicas.refresh(&members.devices);
        let current = self.view.current();
        let placement = if current.placement().epoch() == map.epoch {
            Some(current.placement().clone())
        } else {
            self.rebuild(&map).await
        };
        let merge_followed = self.follow_merge(&map).await;
        let placed = placement.is_some();
        match placement {
            Some(placement) => {
                self.view
                    .replace(Topology::new(map.clone(), members.clone(), placement));
            }
            // Keep placing with the previous map, but with the new membership.
            None => self.view.replace(Topology::new(
                current.map.clone(),
                members.clone(),
                current.placement().clone(),
            )),
        }
        let wake = self.update_reweights(&map, &members, clock).await;
        if placed && merge_followed {
            wake
        } else {
            Wake::After(RETRY_AFTER)
        }
    }

    /// Swaps the merge policy when the map names another; `false` when it cannot be had.
    async fn follow_merge(&self, map: &ClusterMap) -> bool {
        let named = map.policies.merge.as_ref();
        let running = self.merger.policy();
        if running.as_ref().map(|p| p.sha256()) == named.map(|p| p.sha256.as_str()) {
            return true;
        }
        match self.library.merge(named.map(|p| p.sha256.as_str())).await {
            Ok(policy) => {
                tracing::info!(
                    epoch = map.epoch,
                    sha256 = named.map_or("built-in", |p| short(&p.sha256)),
                    "merge policy switched"
                );
                metrics::counter!("cartdb_policy_activations_total", "kind" => "merge")
                    .increment(1);
                self.merger.set(policy);
                true
            }
            Err(e) => {
                tracing::error!(epoch = map.epoch, error = %e, "cannot load the merge policy the map names; keeping the previous one");
                metrics::counter!("cartdb_policy_load_failures_total", "kind" => "merge")
                    .increment(1);
                false
            }
        }
    }

    async fn rebuild(&self, map: &Arc<ClusterMap>) -> Option<Arc<EpochPlacement>> {
        let policy = match self.library.placement(&map.policies.placement.sha256).await {
            Ok(policy) => policy,
            Err(e) => {
                tracing::error!(epoch = map.epoch, error = %e, "cannot load the placement policy the map names; keeping the previous map");
                metrics::counter!("cartdb_policy_load_failures_total", "kind" => "placement")
                    .increment(1);
                return None;
            }
        };
        let switched = self.view.current().placement().policy().sha256() != policy.sha256();
        let built = build_placement(policy, map.clone(), self.rule.clone(), None).await;
        match built {
            Ok(placement) => {
                tracing::info!(
                    epoch = map.epoch,
                    pgs_with_past = map.past.len(),
                    policy = placement.policy().name(),
                    "placing with a new map epoch"
                );
                if switched {
                    metrics::counter!("cartdb_policy_activations_total", "kind" => "placement")
                        .increment(1);
                }
                Some(Arc::new(placement))
            }
            Err(e) => {
                tracing::error!(epoch = map.epoch, error = %e, "cannot place with the new map; keeping the previous one");
                None
            }
        }
    }

    /// Marks devices out or in by the down/out rules, with the past sets that follow.
    async fn update_reweights(
        &self,
        map: &Arc<ClusterMap>,
        members: &Membership,
        clock: &mut DownClock,
    ) -> Wake {
        let down_for = clock.observe(map, members, Instant::now());
        let decision = decide(map, members, &down_for, &self.down_out);
        #[allow(clippy::cast_precision_loss, reason = "device counts are small")]
        metrics::gauge!("cartdb_devices_held_in").set(decision.held_in.len() as f64);
        if !decision.held_in.is_empty() {
            tracing::warn!(
                devices = ?decision.held_in,
                noout = map.flags.noout,
                min_in_ratio = self.down_out.min_in_ratio,
                "devices down past the grace are kept in (noout, or the minimum in ratio)"
            );
        }
        let on_time = decision.recheck_in.map_or(Wake::OnChange, Wake::After);
        let Some(change) = decision.change else {
            return on_time;
        };
        let current = self.view.current();
        if current.placement().epoch() != map.epoch {
            // No up sets for this epoch (the policy refused the map): nothing to compare.
            return Wake::After(RETRY_AFTER);
        }
        let reweights = change
            .reweights
            .into_iter()
            .filter(|&(_, w)| w != FULL_WEIGHT)
            .collect::<std::collections::BTreeMap<_, _>>();
        let weights = map
            .devices
            .keys()
            .map(|&d| (d, reweights.get(&d).copied().unwrap_or(FULL_WEIGHT)))
            .collect();
        let next = build_placement(
            current.placement().policy().clone(),
            map.clone(),
            self.rule.clone(),
            Some(weights),
        )
        .await;
        let next = match next {
            Ok(next) => next,
            Err(e) => {
                tracing::error!(error = %e, "cannot place with the new reweights; retrying");
                return Wake::After(RETRY_AFTER);
            }
        };
        let past = current
            .placement()
            .table()
            .past_after(next.table(), &map.past);
        let placement = Placement {
            reweights,
            past,
            auto_out: change.auto_out,
            ..Placement::of(map)
        };
        match self.coordinator.set_placement(map.epoch, placement).await {
            Ok(true) => {
                tracing::info!(
                    epoch = map.epoch,
                    marked_out = ?change.marked_out,
                    marked_in = ?change.marked_in,
                    "devices marked out or in"
                );
                metrics::counter!("cartdb_devices_marked_out_total")
                    .increment(change.marked_out.len() as u64);
                metrics::counter!("cartdb_devices_marked_in_total")
                    .increment(change.marked_in.len() as u64);
                on_time
            }
            Ok(false) => {
                tracing::debug!(epoch = map.epoch, "the map changed first; deciding again");
                on_time
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot update the reweights; retrying");
                Wake::After(RETRY_AFTER)
            }
        }
    }
}

/// Waits until the membership or the map changes, or `wake` is due; `false` when the task
/// should stop.
async fn wait_for_change(
    members: &mut watch::Receiver<Arc<Membership>>,
    map: &mut watch::Receiver<Option<Arc<ClusterMap>>>,
    wake: Wake,
    shutdown: &CancellationToken,
) -> bool {
    let retry_timer = async {
        match wake {
            Wake::After(after) => tokio::time::sleep(after).await,
            Wake::OnChange => std::future::pending::<()>().await,
        }
    };
    let changed = tokio::select! {
        () = shutdown.cancelled() => return false,
        changed = members.changed() => changed,
        changed = map.changed() => changed,
        () = retry_timer => Ok(()),
    };
    if changed.is_err() {
        tracing::warn!("the coordinator stopped publishing; the cluster view is frozen");
        return false;
    }
    true
}

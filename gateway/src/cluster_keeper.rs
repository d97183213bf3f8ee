//! The background task that keeps the gateway's view of the cluster current.
//!
//! Whenever the membership or the map changes, it
//! 1. points the data node connections ([`Replicas`]) at the live devices' addresses;
//! 2. computes every PG's up set when the map epoch changed (off the async workers) and
//!    publishes the new [`Topology`];
//! 3. marks dead devices out and returning devices in (see [`reweight_update`]): it computes
//!    the up sets the new reweights give, the past sets that follow
//!    (`PgTable::past_after`: a device leaving a PG's up set joins its past set), and
//!    writes both with one compare-and-set of the map. Both gateways may race to do so; the
//!    loser's CAS fails harmlessly and it re-decides on the map the winner wrote. Every
//!    gateway thus places with the same reweights at the same epoch, and no reader sees a
//!    new up set without the past set that still holds the PG's data.
//!
//! None of this runs on the request path.

use std::sync::Arc;
use std::time::Duration;

use cartdb_core::coord::{ClusterMap, Coordinator, Membership, Placement};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cluster_view::{ClusterView, Topology, reweight_update};
use crate::placement::{EpochPlacement, build_placement};
use crate::policy::PlacementPolicy;
use crate::replicas::Replicas;

/// How soon a failed reweight update is tried again when nothing else changes.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Keeps a [`ClusterView`] and the [`Replicas`] in step with ZooKeeper.
pub struct ClusterKeeper {
    pub coordinator: Coordinator,
    pub view: Arc<ClusterView>,
    pub replicas: Arc<Replicas>,
    pub policy: PlacementPolicy,
    pub rule: Option<String>,
}

impl ClusterKeeper {
    /// Follows the membership and the map until `shutdown` is cancelled or the coordinator
    /// stops publishing.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut members = self.coordinator.members();
        let mut map = self.coordinator.map();
        loop {
            let current_members = members.borrow_and_update().clone();
            let current_map = map.borrow_and_update().clone();
            let retry = match current_map {
                Some(current_map) => !self.refresh(current_members, current_map).await,
                None => {
                    self.replicas.refresh(&current_members.devices);
                    false
                }
            };
            if !wait_for_change(&mut members, &mut map, retry, &shutdown).await {
                return;
            }
        }
    }

    /// Applies one (members, map) pair; `false` when the reweight update should be retried.
    async fn refresh(&self, members: Arc<Membership>, map: Arc<ClusterMap>) -> bool {
        self.replicas.refresh(&members.devices);
        let current = self.view.current();
        let placement = if current.placement().epoch() == map.epoch {
            Some(current.placement().clone())
        } else {
            self.rebuild(&map).await
        };
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
        self.update_reweights(&map, &members).await
    }

    async fn rebuild(&self, map: &Arc<ClusterMap>) -> Option<Arc<EpochPlacement>> {
        let built =
            build_placement(self.policy.clone(), map.clone(), self.rule.clone(), None).await;
        match built {
            Ok(placement) => {
                tracing::info!(
                    epoch = map.epoch,
                    pgs_with_past = map.past.len(),
                    "placing with a new map epoch"
                );
                Some(Arc::new(placement))
            }
            Err(e) => {
                tracing::error!(epoch = map.epoch, error = %e, "cannot place with the new map; keeping the previous one");
                None
            }
        }
    }

    /// Marks devices in or out to match `members`, with the past sets that follow; `false`
    /// when that failed.
    async fn update_reweights(&self, map: &Arc<ClusterMap>, members: &Membership) -> bool {
        let Some(reweights) = reweight_update(map, members) else {
            return true;
        };
        let current = self.view.current();
        if current.placement().epoch() != map.epoch {
            // No up sets for this epoch (the policy refused the map): nothing to compare.
            return false;
        }
        let weights = reweights.iter().map(|(d, w)| (*d, *w)).collect();
        let next = build_placement(
            self.policy.clone(),
            map.clone(),
            self.rule.clone(),
            Some(weights),
        )
        .await;
        let next = match next {
            Ok(next) => next,
            Err(e) => {
                tracing::error!(error = %e, "cannot place with the new reweights; retrying");
                return false;
            }
        };
        let past = current
            .placement()
            .table()
            .past_after(next.table(), &map.past);
        let out: Vec<_> = reweights
            .iter()
            .filter(|(_, w)| **w == 0)
            .map(|(d, _)| *d)
            .collect();
        let placement = Placement { reweights, past };
        match self.coordinator.set_placement(map.epoch, placement).await {
            Ok(true) => {
                tracing::info!(
                    epoch = map.epoch,
                    ?out,
                    "reweights updated for the live devices"
                );
                true
            }
            Ok(false) => {
                tracing::debug!(epoch = map.epoch, "the map changed first; deciding again");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot update the reweights; retrying");
                false
            }
        }
    }
}

/// Waits until the membership or the map changes, or `retry` is due; `false` when the task
/// should stop.
async fn wait_for_change(
    members: &mut watch::Receiver<Arc<Membership>>,
    map: &mut watch::Receiver<Option<Arc<ClusterMap>>>,
    retry: bool,
    shutdown: &CancellationToken,
) -> bool {
    let retry_timer = async {
        if retry {
            tokio::time::sleep(RETRY_AFTER).await;
        } else {
            std::future::pending::<()>().await;
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

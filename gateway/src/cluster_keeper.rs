//! The background task that keeps the gateway's view of the cluster current.
//!
//! Whenever the membership or the map changes, it
//! 1. points the data node connections ([`Replicas`]) at the live devices' addresses;
//! 2. rebuilds the placers when the map epoch changed (off the async workers) and publishes
//!    the new [`Topology`];
//! 3. marks dead devices out and returning devices in, with a compare-and-set of the map's
//!    reweights (see [`reweight_update`]). Both gateways may race to do so; the loser's CAS
//!    fails harmlessly and it re-decides on the map the winner wrote. Every gateway thus
//!    places with the same reweights at the same epoch.
//!
//! None of this runs on the request path.

use std::sync::Arc;
use std::time::Duration;

use cartdb_core::coord::{ClusterMap, Coordinator, Membership};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cluster_view::{ClusterView, Topology, reweight_update};
use crate::placement::PlacerPool;
use crate::policy::{PlacementPolicy, PolicyError};
use crate::replicas::Replicas;

/// How soon a failed reweight update is tried again when nothing else changes.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Builds the placers for `map` on a blocking thread (it instantiates WebAssembly).
///
/// # Errors
/// [`BuildError::Policy`] when the policy refuses the map or the rule,
/// [`BuildError::Task`] when the blocking task panicked or was cancelled.
pub async fn build_placers(
    policy: PlacementPolicy,
    map: Arc<ClusterMap>,
    rule: Option<String>,
) -> Result<PlacerPool, BuildError> {
    tokio::task::spawn_blocking(move || PlacerPool::build(policy, &map, rule.as_deref()))
        .await
        .map_err(|e| BuildError::Task(e.to_string()))?
        .map_err(BuildError::Policy)
}

/// Why placers could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    #[error("the placement policy refused the map: {0}")]
    Policy(#[source] PolicyError),
    #[error("building placers failed: {0}")]
    Task(String),
}

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
        let placers = if current.placers().epoch() == map.epoch {
            Some(current.placers().clone())
        } else {
            self.rebuild(&map).await
        };
        match placers {
            Some(placers) => {
                self.view
                    .replace(Topology::new(map.clone(), members.clone(), placers));
            }
            // Keep placing with the previous map, but with the new membership.
            None => self.view.replace(Topology::new(
                current.map.clone(),
                members.clone(),
                current.placers().clone(),
            )),
        }
        self.update_reweights(&map, &members).await
    }

    async fn rebuild(&self, map: &Arc<ClusterMap>) -> Option<Arc<PlacerPool>> {
        let built = build_placers(self.policy.clone(), map.clone(), self.rule.clone()).await;
        match built {
            Ok(placers) => {
                tracing::info!(epoch = map.epoch, "placing with a new map epoch");
                Some(Arc::new(placers))
            }
            Err(e) => {
                tracing::error!(epoch = map.epoch, error = %e, "cannot place with the new map; keeping the previous one");
                None
            }
        }
    }

    /// Marks devices in or out to match `members`; `false` when that failed.
    async fn update_reweights(&self, map: &ClusterMap, members: &Membership) -> bool {
        let Some(reweights) = reweight_update(map, members) else {
            return true;
        };
        let out: Vec<_> = reweights
            .iter()
            .filter(|(_, w)| **w == 0)
            .map(|(d, _)| *d)
            .collect();
        match self.coordinator.set_reweights(map.epoch, reweights).await {
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

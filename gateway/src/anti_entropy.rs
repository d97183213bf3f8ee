//! The anti-entropy sweep: repairs items nobody reads.
//!
//! Read repair only fixes what shoppers read. The sweep walks every user in the directory,
//! a few per second, and for each runs a read that waits for *every* replica
//! ([`GatewayService::sweep_user`]): replicas are compared item by item through their
//! summaries (digests), divergent items are merged and repaired, settled logs compacted.
//!
//! Only one gateway sweeps: the live gateway with the smallest id, ZooKeeper's
//! lowest-ephemeral-node election recipe over the `/gateways/gw-<id>` registrations every
//! gateway already holds (ids come from a sequential znode, so they order by start-up).
//! When the leader dies its ephemeral node goes, the next gateway sees itself smallest at
//! its next check and takes over. Two gateways that briefly both believe they lead (one
//! has not heard of the other yet) only repeat work: repairs are idempotent.
//!
//! The leader publishes its progress to `/anti-entropy` every few seconds; every gateway
//! reads it back for `GET /api/cluster`, so the status does not depend on which gateway
//! answers.

use std::sync::Arc;
use std::time::Duration;

use cartdb_core::coord::Directory;
use cartdb_core::version::wall_clock_millis;
use cartdb_core::wire::SweepStatus;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::cluster_view::ClusterView;
use crate::coordination::Coordination;
use crate::service::GatewayService;

/// How often progress is published and read back.
const PUBLISH_EVERY: Duration = Duration::from_secs(2);

/// Everything the sweep needs.
pub struct AntiEntropy {
    pub service: Arc<GatewayService>,
    pub view: Arc<ClusterView>,
    pub directory: Arc<Directory>,
    pub coordination: Arc<dyn Coordination>,
    pub gateway_id: u32,
    /// Users compared per second while leading.
    pub users_per_sec: u32,
}

impl AntiEntropy {
    /// Whether this gateway leads the sweep: it has the smallest id among live gateways.
    fn leads(&self) -> bool {
        let topology = self.view.current();
        topology
            .members
            .gateways
            .keys()
            .next()
            .is_none_or(|&smallest| smallest >= self.gateway_id)
    }

    /// Sweeps while leading, publishes and reads back progress, until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let pace = Duration::from_secs(1) / self.users_per_sec.max(1);
        let mut ticks = tokio::time::interval(pace);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut status = SweepStatus {
            leader: self.gateway_id,
            ..SweepStatus::default()
        };
        let mut pending: Vec<String> = Vec::new();
        let mut last_publish = Instant::now() - PUBLISH_EVERY;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            if self.leads() {
                if pending.is_empty() {
                    if status.users_total > 0 && status.users_done >= status.users_total {
                        status.sweeps_completed += 1;
                    }
                    pending = self.directory.users();
                    pending.reverse();
                    status.users_total = pending.len() as u64;
                    status.users_done = 0;
                }
                if let Some(user) = pending.pop() {
                    match self.service.sweep_user(&user).await {
                        Ok(repairs) => status.repairs += repairs as u64,
                        Err(e) => {
                            tracing::debug!(%user, error = %e, "anti-entropy could not compare this user; next pass retries")
                        }
                    }
                    status.users_done += 1;
                }
            } else if !pending.is_empty() {
                pending.clear();
                tracing::info!("no longer the smallest live gateway; anti-entropy handed over");
            }
            if last_publish.elapsed() >= PUBLISH_EVERY {
                last_publish = Instant::now();
                self.exchange_progress(&mut status).await;
            }
        }
    }

    /// Publishes this gateway's progress if it leads, then reads back the published one.
    async fn exchange_progress(&self, status: &mut SweepStatus) {
        if self.leads() {
            status.updated_ms = wall_clock_millis();
            if let Err(e) = self.coordination.publish_sweep(status).await {
                tracing::debug!(error = %e, "cannot publish anti-entropy progress");
            }
        }
        match self.coordination.read_sweep().await {
            Ok(published) => self.service.set_sweep_status(published),
            Err(e) => tracing::debug!(error = %e, "cannot read anti-entropy progress"),
        }
    }
}

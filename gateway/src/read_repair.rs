//! Read repair: sending stale replicas what a cart read found they lack.
//!
//! As in Garage, the shopper's answer does not wait for the repair. A read that finds its
//! replicas differing (or that answered before every live replica did) schedules a
//! *follow-up*: a read of every live replica of the user's items, a moment later in the
//! background, which sends each stale replica what it lacks ([`ReadRepair::send`]). The
//! delay matters under load: most differences a quick read sees are acknowledged writes
//! still on their way to their third replica, and repairing those would only duplicate
//! them. A read that follows still sees the merged state, because it merges the same
//! replicas again until the repair has landed. Repairs are idempotent on the data node
//! (operations it already holds at the merged version are skipped), so a repair that races
//! another, or is sent twice, is harmless.
//!
//! Follow-ups are paced per user ([`FOLLOW_UP_EVERY`]), so a hot cart costs at most one
//! extra full read per interval.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use cartdb_core::cart::ItemKey;
use cartdb_core::wire::{DataCall, DataRequest, DataResponse};

use crate::read_resolution::Repair;
use crate::replicas::Replicas;

/// Counters of the repairs this gateway sent, for `GET /api/cluster`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RepairCounters {
    /// Repairs a replica confirmed.
    pub repaired: u64,
    /// Operations those repairs added.
    pub ops_added: u64,
    /// Repairs that failed (the replica was down or refused); the next read retries them.
    pub failed: u64,
}

/// Shortest time between two follow-up reads of one user.
pub const FOLLOW_UP_EVERY: Duration = Duration::from_secs(2);

/// Most users with a follow-up pending or recent; beyond it old entries are dropped.
const FOLLOW_UP_LIMIT: usize = 100_000;

/// Sends repairs in the background and counts them.
pub struct ReadRepair {
    replicas: Arc<Replicas>,
    timeout: Duration,
    /// user -> when its last follow-up was scheduled to run.
    follow_ups: Mutex<HashMap<String, Instant>>,
    repaired: AtomicU64,
    ops_added: AtomicU64,
    failed: AtomicU64,
}

impl ReadRepair {
    /// Repairs through `replicas`, each given up after `timeout`.
    pub fn new(replicas: Arc<Replicas>, timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            replicas,
            timeout,
            follow_ups: Mutex::new(HashMap::new()),
            repaired: AtomicU64::new(0),
            ops_added: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        })
    }

    /// When a follow-up read of `user` should run: now, or [`FOLLOW_UP_EVERY`] after the
    /// last one. `None` when one is scheduled and has not run yet: it will see everything
    /// this read saw.
    pub fn schedule_follow_up(&self, user: &str) -> Option<Instant> {
        let now = Instant::now();
        let mut follow_ups = self
            .follow_ups
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if follow_ups.len() > FOLLOW_UP_LIMIT {
            follow_ups.retain(|_, at| *at + FOLLOW_UP_EVERY > now);
        }
        let at = match follow_ups.get(user) {
            // Scheduled and not run yet: it will see everything this read saw.
            Some(at) if *at > now => return None,
            Some(at) => (*at + FOLLOW_UP_EVERY).max(now),
            None => now,
        };
        follow_ups.insert(user.to_owned(), at);
        Some(at)
    }

    /// Sends one repair now and waits for its answer.
    pub async fn send(&self, user: &str, repair: Repair, epoch: u64) {
        let device = repair.device;
        let request = DataCall {
            epoch,
            request: DataRequest::Repair {
                key: ItemKey {
                    user: user.to_owned(),
                    product: repair.product,
                },
                meta: repair.meta,
                base: repair.base,
                ops: repair.ops,
            },
        };
        match self.replicas.call(device, &request, self.timeout).await {
            Ok(DataResponse::Repaired { added }) => {
                self.repaired.fetch_add(1, Ordering::Relaxed);
                self.ops_added
                    .fetch_add(u64::from(added), Ordering::Relaxed);
                metrics::counter!("cartdb_gateway_repairs_total", "result" => "ok").increment(1);
                metrics::counter!("cartdb_gateway_repaired_ops_total").increment(u64::from(added));
            }
            Ok(other) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("cartdb_gateway_repairs_total", "result" => "error").increment(1);
                tracing::warn!(device, response = ?other, "read repair got an unexpected answer");
            }
            Err(e) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("cartdb_gateway_repairs_total", "result" => "error").increment(1);
                tracing::debug!(device, error = %e, "read repair failed; the next read retries it");
            }
        }
    }

    /// The counters so far.
    pub fn counters(&self) -> RepairCounters {
        RepairCounters {
            repaired: self.repaired.load(Ordering::Relaxed),
            ops_added: self.ops_added.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

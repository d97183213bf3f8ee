//! Log compaction, driven by reads: when every replica of an item answered a read with the
//! same summary and the item's log has grown, the gateway asks each replica to fold the
//! operations older than the compaction grace into the item's base.
//!
//! Why this is safe (the full argument is in docs/design.md, "Compaction"):
//! - every replica holds the same log, checked by its digest on the replica itself, so
//!   every replica folds the same operations into the same base;
//! - data nodes refuse operations older than their acceptance window (shorter than the
//!   grace), so no operation at or below the base's version can arrive afterwards;
//! - folded operations' ids stay on the replicas for the idempotency window, so a retry is
//!   still recognised.
//!
//! A replica whose log changed in between refuses (its digest differs); the next read sees
//! the replicas disagree and read repair hands it the newer base.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cartdb_core::cart::{DeviceId, ItemKey, ItemSummary};
use cartdb_core::version::{Version, wall_clock_millis};
use cartdb_core::wire::{DataCall, DataRequest, DataResponse};
use tokio::time::Instant;

use crate::replicas::Replicas;

/// When to compact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompactionSettings {
    /// Operations younger than this stay in the log (must match the data nodes').
    pub grace: Duration,
    /// Compact an item only once its log holds at least this many operations.
    pub min_ops: u32,
}

/// An item every replica agreed on, and those replicas.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SettledItem {
    pub summary: ItemSummary,
    pub replicas: BTreeSet<DeviceId>,
}

/// Sends compactions and counts them.
pub struct Compactor {
    replicas: Arc<Replicas>,
    settings: CompactionSettings,
    timeout: Duration,
    /// When each item was last sent a compaction, so a hot item is not asked on every read.
    recent: Mutex<HashMap<ItemKey, Instant>>,
    folded: AtomicU64,
    sent: AtomicU64,
}

/// Most items remembered in `recent` before old entries are dropped.
const RECENT_LIMIT: usize = 100_000;

impl Compactor {
    pub fn new(
        replicas: Arc<Replicas>,
        settings: CompactionSettings,
        timeout: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            replicas,
            settings,
            timeout,
            recent: Mutex::new(HashMap::new()),
            folded: AtomicU64::new(0),
            sent: AtomicU64::new(0),
        })
    }

    /// The newest version a compaction started now may fold up to.
    pub fn horizon(&self) -> Version {
        let now_ms = wall_clock_millis();
        let grace_ms = u64::try_from(self.settings.grace.as_millis()).unwrap_or(u64::MAX);
        horizon_at(now_ms.saturating_sub(grace_ms))
    }

    /// The settled items of `user` worth compacting now, marking them as sent.
    fn due(&self, user: &str, settled: Vec<SettledItem>) -> Vec<SettledItem> {
        let now = Instant::now();
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        if recent.len() > RECENT_LIMIT {
            let grace = self.settings.grace;
            recent.retain(|_, at| now.duration_since(*at) < grace);
        }
        settled
            .into_iter()
            .filter(|item| item.summary.ops >= self.settings.min_ops)
            .filter(|item| {
                let key = ItemKey {
                    user: user.to_owned(),
                    product: item.summary.product.clone(),
                };
                // Half the grace: by then a good share of the log has aged past it.
                let wait = self.settings.grace / 2;
                match recent.get(&key) {
                    Some(at) if now.duration_since(*at) < wait => false,
                    _ => {
                        recent.insert(key, now);
                        true
                    }
                }
            })
            .collect()
    }

    /// Compacts the due items of `user`, read with map `epoch`, in the background.
    pub fn spawn(self: &Arc<Self>, user: &str, settled: Vec<SettledItem>, epoch: u64) {
        let due = self.due(user, settled);
        if due.is_empty() {
            return;
        }
        let this = self.clone();
        let user = user.to_owned();
        tokio::spawn(async move { this.compact(&user, due, epoch).await });
    }

    /// Compacts those of `settled` that are due (see [`Compactor::spawn`]) and waits for
    /// the replicas' answers.
    pub async fn compact_due(&self, user: &str, settled: Vec<SettledItem>, epoch: u64) {
        let due = self.due(user, settled);
        if !due.is_empty() {
            self.compact(user, due, epoch).await;
        }
    }

    /// Compacts `items` of `user` now and waits for the replicas' answers.
    async fn compact(&self, user: &str, items: Vec<SettledItem>, epoch: u64) {
        let upto = self.horizon();
        let mut calls = Vec::new();
        for item in items {
            let request = DataRequest::Compact {
                key: ItemKey {
                    user: user.to_owned(),
                    product: item.summary.product.clone(),
                },
                upto,
                digest: item.summary.digest,
            };
            for device in item.replicas {
                let call = DataCall {
                    epoch,
                    request: request.clone(),
                };
                calls.push((device, call));
            }
        }
        let sends = calls.iter().map(|(device, request)| async move {
            let answer = self.replicas.call(*device, request, self.timeout).await;
            self.sent.fetch_add(1, Ordering::Relaxed);
            let result = if matches!(answer, Ok(DataResponse::Compacted { .. })) {
                "ok"
            } else {
                "error"
            };
            metrics::counter!("cartdb_gateway_compactions_total", "result" => result).increment(1);
            match answer {
                Ok(DataResponse::Compacted { folded }) => {
                    self.folded.fetch_add(u64::from(folded), Ordering::Relaxed);
                    metrics::counter!("cartdb_gateway_folded_ops_total")
                        .increment(u64::from(folded));
                }
                Ok(other) => {
                    tracing::warn!(device, response = ?other, "compaction got an unexpected answer")
                }
                Err(e) => {
                    tracing::debug!(device, error = %e, "compaction failed; a later read retries")
                }
            }
        });
        futures::future::join_all(sends).await;
    }

    /// Compaction requests sent and log entries folded so far.
    pub fn counters(&self) -> (u64, u64) {
        (
            self.sent.load(Ordering::Relaxed),
            self.folded.load(Ordering::Relaxed),
        )
    }
}

/// The largest version whose clock reading is `millis`: folding "up to" it folds every
/// operation issued at or before that millisecond, by any gateway.
fn horizon_at(millis: u64) -> Version {
    Version {
        hlc: (millis << 16) | 0xffff,
        gateway: u32::MAX,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]
mod tests {
    fn test_key() -> cartdb_core::rpc::ClusterKey {
        cartdb_core::rpc::ClusterKey::new(b"unit-test-cluster-secret", "test").unwrap()
    }

    use cartdb_core::cart::{Base, ItemMeta, StateDigest};

    use super::*;

    fn settled(product: &str, ops: u32) -> SettledItem {
        SettledItem {
            summary: ItemSummary {
                product: product.into(),
                meta: ItemMeta {
                    price: 1,
                    category: "c".into(),
                },
                base: Base::default(),
                qty: 1,
                latest: None,
                ops,
                digest: StateDigest(7),
            },
            replicas: BTreeSet::from([1, 2, 3]),
        }
    }

    #[test]
    fn the_horizon_covers_every_version_of_its_millisecond() {
        let h = horizon_at(5);
        assert!(
            Version {
                hlc: (5 << 16) | 0xffff,
                gateway: 9
            } <= h
        );
        assert!(
            Version {
                hlc: 6 << 16,
                gateway: 0
            } > h
        );
    }

    #[tokio::test]
    async fn only_long_logs_are_due_and_not_again_right_away() {
        let settings = CompactionSettings {
            grace: Duration::from_secs(60),
            min_ops: 8,
        };
        let replicas = Arc::new(Replicas::new(test_key(), Duration::from_millis(10)));
        let c = Compactor::new(replicas, settings, Duration::from_millis(10));
        let due = c.due("u", vec![settled("short", 3), settled("long", 8)]);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].summary.product, "long");
        assert!(
            c.due("u", vec![settled("long", 9)]).is_empty(),
            "sent a moment ago"
        );
        assert_eq!(
            c.due("v", vec![settled("long", 9)]).len(),
            1,
            "another user's item"
        );
    }
}

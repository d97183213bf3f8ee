//! [`Merger`]: merges the replica states of divergent items, with the merge policy when
//! there is one and the built-in merge otherwise, or when the policy fails (counted).
//!
//! Policy calls run on a blocking thread, never on the gateway's runtime thread: a guest
//! call may take up to its deadline (`PolicyLimits::call_timeout`), and the gateway serves
//! every request, and keeps its ZooKeeper session alive, from one runtime thread. A read that
//! needs no merge never waits for one. The built-in merge is pure and fast, and runs inline.
//!
//! The policy is swapped whole when the map names another ([`Merger::set`], from the
//! cluster keeper): a merge that started with the old one finishes with it, the next one
//! uses the new one, and no request fails for it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwapOption;

use cartdb_core::cart::ItemState;
use cartdb_core::merge::merge_states;

use crate::policy::{MergePolicy, PolicyError};

/// Merges divergent items.
#[derive(Debug, Default)]
pub struct Merger {
    policy: ArcSwapOption<MergePolicy>,
    fallbacks: AtomicU64,
}

impl Merger {
    /// A merger with `policy`, or the built-in merge alone.
    pub fn new(policy: Option<Arc<MergePolicy>>) -> Self {
        Self {
            policy: ArcSwapOption::new(policy),
            fallbacks: AtomicU64::new(0),
        }
    }

    /// The merge policy, if any.
    pub fn policy(&self) -> Option<Arc<MergePolicy>> {
        self.policy.load_full()
    }

    /// Merges with `policy` from the next merge on (`None`: the built-in merge).
    pub fn set(&self, policy: Option<Arc<MergePolicy>>) {
        self.policy.store(policy);
    }

    /// Merges that fell back to the built-in merge since start.
    pub fn fallbacks(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }

    /// Merges each group (the states of one item, from its replicas), in order.
    pub async fn merge_all(&self, groups: Vec<Vec<ItemState>>) -> Vec<ItemState> {
        let Some(policy) = self.policy.load_full() else {
            return groups.iter().map(|group| builtin(group)).collect();
        };
        let inputs = groups.clone();
        let worker = policy.clone();
        let answers = tokio::task::spawn_blocking(move || {
            groups
                .iter()
                .map(|group| worker.merge(group))
                .collect::<Vec<_>>()
        })
        .await;
        match answers {
            Ok(answers) => answers
                .into_iter()
                .zip(&inputs)
                .map(|(answer, group)| {
                    answer.unwrap_or_else(|error| self.fall_back(&policy, &error, group))
                })
                .collect(),
            // Only a panic inside wasmtime gets here: every group falls back.
            Err(joined) => inputs
                .iter()
                .map(|group| {
                    let error = PolicyError::Engine {
                        detail: format!("the merge task failed: {joined}"),
                    };
                    self.fall_back(&policy, &error, group)
                })
                .collect(),
        }
    }

    fn fall_back(
        &self,
        policy: &MergePolicy,
        error: &PolicyError,
        group: &[ItemState],
    ) -> ItemState {
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
        policy.engine().stats().fallback(policy.sha256());
        metrics::counter!("cartdb_gateway_merge_fallbacks_total").increment(1);
        tracing::warn!(%error, "merge policy failed; using the built-in merge");
        builtin(group)
    }
}

/// The built-in merge of one item's states (a group is never empty; an empty one merges to
/// an empty state of no product rather than panicking).
fn builtin(group: &[ItemState]) -> ItemState {
    let refs: Vec<&ItemState> = group.iter().collect();
    merge_states(&refs).unwrap_or_else(|| ItemState {
        product: String::new(),
        meta: cartdb_core::cart::ItemMeta {
            price: 0,
            category: String::new(),
        },
        base: cartdb_core::cart::Base::default(),
        ops: Vec::new(),
    })
}

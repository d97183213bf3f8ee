//! [`PolicyStats`]: per-policy call counts kept in process, for `GET /api/cluster`,
//! `cartdb status` and the dashboard. They count the same events as the
//! `cartdb_policy_calls_total` and `cartdb_policy_call_seconds` metrics, which Prometheus
//! scrapes; these are for an operator who asks one gateway what its policies are doing.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use cartdb_core::wire::PolicyCallStats;

/// Most policies counted at once: one per component loaded, and deploys are rare. Beyond
/// it, new policies are counted by the metrics only.
const MAX_POLICIES: usize = 64;

/// Counts by (kind, sha256).
#[derive(Debug, Default)]
pub struct PolicyStats {
    by_policy: Mutex<BTreeMap<(&'static str, String), PolicyCallStats>>,
}

impl PolicyStats {
    fn with<R>(
        &self,
        kind: &'static str,
        sha256: &str,
        update: impl FnOnce(&mut PolicyCallStats) -> R,
    ) -> Option<R> {
        // Counters hold no invariant a panic elsewhere could break.
        let mut map = self
            .by_policy
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let key = (kind, sha256.to_owned());
        if !map.contains_key(&key) && map.len() >= MAX_POLICIES {
            return None;
        }
        let entry = map.entry(key).or_insert_with(|| PolicyCallStats {
            kind: kind.to_owned(),
            sha256: sha256.to_owned(),
            ..PolicyCallStats::default()
        });
        Some(update(entry))
    }

    /// One call of policy `sha256` of `kind`, which ended with `outcome`
    /// (`PolicyError::outcome`, or `ok`) after `took`.
    pub(crate) fn record(&self, kind: &'static str, sha256: &str, outcome: &str, took: Duration) {
        self.with(kind, sha256, |s| {
            s.calls += 1;
            match outcome {
                "ok" => s.ok += 1,
                "trap" => s.traps += 1,
                "timeout" => s.timeouts += 1,
                "fuel" => s.out_of_fuel += 1,
                "invalid" => s.invalid += 1,
                _ => s.other_failures += 1,
            }
            let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
            s.total_micros = s.total_micros.saturating_add(micros);
            s.max_micros = s.max_micros.max(micros);
        });
    }

    /// A merge by policy `sha256` that fell back to the built-in merge.
    pub fn fallback(&self, sha256: &str) {
        self.with("merge", sha256, |s| s.fallbacks += 1);
    }

    /// Every policy's counts, by kind then sha256.
    pub fn snapshot(&self) -> Vec<PolicyCallStats> {
        let map = self
            .by_policy
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.values().cloned().collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    #[test]
    fn calls_are_counted_by_outcome_and_policy() {
        let stats = PolicyStats::default();
        let ms = Duration::from_millis;
        stats.record("placement", "aa", "ok", ms(1));
        stats.record("placement", "aa", "fuel", ms(3));
        stats.record("merge", "bb", "timeout", ms(100));
        stats.record("merge", "bb", "refused", ms(2));
        stats.fallback("bb");
        let snapshot = stats.snapshot();
        assert_eq!(snapshot.len(), 2);
        let merge = snapshot.iter().find(|s| s.kind == "merge").unwrap();
        assert_eq!(
            (
                merge.calls,
                merge.timeouts,
                merge.other_failures,
                merge.fallbacks
            ),
            (2, 1, 1, 1)
        );
        assert_eq!(merge.max_micros, 100_000);
        let placement = snapshot.iter().find(|s| s.kind == "placement").unwrap();
        assert_eq!((placement.ok, placement.out_of_fuel), (1, 1));
        assert_eq!(placement.total_micros, 4_000);
        for i in 0..100 {
            stats.record("merge", &format!("{i}"), "ok", ms(1));
        }
        assert_eq!(stats.snapshot().len(), MAX_POLICIES);
    }
}

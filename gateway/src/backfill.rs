//! Backfill progress: how much of the current data movement is done, and an estimate of
//! the time left.
//!
//! Backfill itself is the anti-entropy sweep's work on *remapped* PGs (those with a past
//! set): it copies what the past devices hold onto the up set, hands the past copies back
//! and clears the past set (see `anti_entropy`). This module only watches the number of
//! remapped PGs: a backfill starts when it rises above zero, its size is the most PGs
//! remapped at once since, and it ends when none is left. The estimate assumes the PGs
//! still to go take as long on average as those done so far, Ceph's "recovery ETA" style.
//! Everything here is pure; the cluster view feeds it each new map.

use std::time::{Duration, Instant};

use cartdb_core::wire::BackfillProgress;

/// Follows the number of remapped PGs across map changes.
#[derive(Debug, Default)]
pub struct BackfillTracker {
    current: Option<Run>,
}

/// One backfill: from the first remapped PG to none.
#[derive(Debug)]
struct Run {
    started: Instant,
    started_ms: u64,
    /// Most PGs remapped at once since it started.
    peak: u32,
    left: u32,
}

impl BackfillTracker {
    /// Notes that `remapped` PGs have a past set at `now` (`now_ms`: the same instant in
    /// wall-clock milliseconds, for display).
    pub fn observe(&mut self, remapped: u32, now: Instant, now_ms: u64) {
        if remapped == 0 {
            self.current = None;
            return;
        }
        let run = self.current.get_or_insert(Run {
            started: now,
            started_ms: now_ms,
            peak: 0,
            left: remapped,
        });
        run.peak = run.peak.max(remapped);
        run.left = remapped;
    }

    /// The current backfill's progress at `now`, if one is under way.
    pub fn progress(&self, now: Instant) -> Option<BackfillProgress> {
        let run = self.current.as_ref()?;
        let done = run.peak - run.left;
        let elapsed = now.saturating_duration_since(run.started);
        let eta_secs = (done > 0).then(|| {
            let per_pg = elapsed.as_secs_f64() / f64::from(done);
            Duration::from_secs_f64(per_pg * f64::from(run.left)).as_secs()
        });
        Some(BackfillProgress {
            pgs_total: run.peak,
            pgs_left: run.left,
            started_ms: run.started_ms,
            elapsed_secs: elapsed.as_secs(),
            eta_secs,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    #[test]
    fn no_remapped_pgs_means_no_backfill() {
        let mut tracker = BackfillTracker::default();
        let now = Instant::now();
        tracker.observe(0, now, 0);
        assert_eq!(tracker.progress(now), None);
    }

    #[test]
    fn progress_and_eta_follow_the_remapped_count() {
        let mut tracker = BackfillTracker::default();
        let t0 = Instant::now();
        tracker.observe(40, t0, 1_000);
        let first = tracker.progress(t0).unwrap();
        assert_eq!(
            (first.pgs_total, first.pgs_left, first.eta_secs),
            (40, 40, None)
        );
        // More PGs move while it runs: the total grows with them.
        tracker.observe(64, t0 + Duration::from_secs(1), 2_000);
        // 16 of 64 done in 20 s: 48 left at 1.25 s each.
        let t1 = t0 + Duration::from_secs(20);
        tracker.observe(48, t1, 21_000);
        let later = tracker.progress(t1).unwrap();
        assert_eq!((later.pgs_total, later.pgs_left), (64, 48));
        assert_eq!(later.started_ms, 1_000);
        assert_eq!(later.elapsed_secs, 20);
        assert_eq!(later.eta_secs, Some(60));
        tracker.observe(0, t1 + Duration::from_secs(5), 26_000);
        assert_eq!(tracker.progress(t1 + Duration::from_secs(5)), None);
        // The next backfill starts afresh.
        tracker.observe(3, t1 + Duration::from_secs(9), 30_000);
        assert_eq!(
            tracker
                .progress(t1 + Duration::from_secs(9))
                .unwrap()
                .pgs_total,
            3
        );
    }
}

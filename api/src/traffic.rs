//! [`Traffic`]: the cart operations this API server answered over the last minutes, in
//! five-second buckets of request count, server errors and latency, for the dashboard's
//! charts (`GET /api/admin/traffic`).
//!
//! Prometheus keeps the long history (`cartdb_http_request_seconds` on `/metrics`); this is
//! the short window a dashboard needs without a Prometheus server, so it is bounded: at most
//! [`KEPT_BUCKETS`] buckets, each one latency histogram of a few KiB, whatever the traffic.
//! The clock is passed in, so the bucketing is tested without waiting.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Width of one bucket.
pub const BUCKET_SECS: u64 = 5;
/// Buckets kept: ten minutes.
pub const KEPT_BUCKETS: usize = 120;
/// Latencies are recorded in microseconds up to a minute (longer ones count as a minute),
/// with two significant digits.
const MAX_LATENCY_MICROS: u64 = 60_000_000;

/// The wall clock in Unix seconds (0 before 1970: a clock that wrong charts nothing useful
/// anyway).
pub fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// One finished bucket as the dashboard charts it.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct TrafficPoint {
    /// Unix time of the bucket's start, in seconds.
    pub start_secs: u64,
    /// Cart operations answered per second over the bucket.
    pub ops_per_sec: f64,
    /// Of those, answered with a 5xx status.
    pub server_errors: u64,
    /// Latency percentiles in milliseconds; `None` for a bucket without requests.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

struct Bucket {
    start_secs: u64,
    requests: u64,
    server_errors: u64,
    latency: Histogram<u64>,
}

impl Bucket {
    fn new(start_secs: u64) -> Self {
        Self {
            start_secs,
            requests: 0,
            server_errors: 0,
            // Bounds are constants that hdrhistogram accepts (1 <= low, high >= 2 * low,
            // 0..=5 significant digits); a failure here is a bug, caught by the unit tests.
            #[allow(clippy::expect_used)]
            latency: Histogram::new_with_bounds(1, MAX_LATENCY_MICROS, 2)
                .expect("constant histogram bounds are valid"),
        }
    }

    fn point(&self) -> TrafficPoint {
        let percentile =
            |q: f64| (self.requests > 0).then(|| self.latency.value_at_quantile(q) as f64 / 1000.0);
        TrafficPoint {
            start_secs: self.start_secs,
            ops_per_sec: self.requests as f64 / BUCKET_SECS as f64,
            server_errors: self.server_errors,
            p50_ms: percentile(0.5),
            p99_ms: percentile(0.99),
        }
    }
}

/// The window of recent buckets; shared by every request handler.
#[derive(Default)]
pub struct Traffic {
    buckets: Mutex<VecDeque<Bucket>>,
}

impl std::fmt::Debug for Traffic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Traffic").finish_non_exhaustive()
    }
}

impl Traffic {
    /// Counts one operation answered at `now_secs` (Unix seconds) after `latency`.
    pub fn record(&self, now_secs: u64, latency: Duration, server_error: bool) {
        let start = now_secs - now_secs % BUCKET_SECS;
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.back().is_none_or(|b| b.start_secs < start) {
            buckets.push_back(Bucket::new(start));
            while buckets.len() > KEPT_BUCKETS {
                buckets.pop_front();
            }
        }
        // A clock that stepped back lands in the newest bucket rather than reordering them.
        if let Some(bucket) = buckets.back_mut() {
            bucket.requests += 1;
            bucket.server_errors += u64::from(server_error);
            bucket.latency.saturating_record(micros.max(1));
        }
    }

    /// The finished buckets of the last [`KEPT_BUCKETS`] × [`BUCKET_SECS`] seconds before
    /// `now_secs`, oldest first, with a zero point for every bucket without requests, so a
    /// chart shows idle time as idle. The bucket still filling is left out: its rate would
    /// read low.
    pub fn series(&self, now_secs: u64) -> Vec<TrafficPoint> {
        let current = now_secs - now_secs % BUCKET_SECS;
        let first = current.saturating_sub(KEPT_BUCKETS as u64 * BUCKET_SECS);
        let buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let mut recorded = buckets
            .iter()
            .filter(|b| b.start_secs >= first && b.start_secs < current)
            .peekable();
        let mut points = Vec::with_capacity(KEPT_BUCKETS);
        let mut start = first;
        while start < current {
            match recorded.next_if(|b| b.start_secs == start) {
                Some(bucket) => points.push(bucket.point()),
                None => points.push(TrafficPoint {
                    start_secs: start,
                    ops_per_sec: 0.0,
                    server_errors: 0,
                    p50_ms: None,
                    p99_ms: None,
                }),
            }
            start += BUCKET_SECS;
        }
        points
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_800_000_000; // a multiple of BUCKET_SECS

    #[test]
    fn requests_land_in_five_second_buckets_with_their_rate_and_percentiles() {
        let traffic = Traffic::default();
        for ms in 1..=100 {
            traffic.record(T0 + 1, Duration::from_millis(ms), ms > 98);
        }
        traffic.record(T0 + BUCKET_SECS, Duration::from_millis(7), false);
        let series = traffic.series(T0 + 2 * BUCKET_SECS);
        let [.., first, second] = series.as_slice() else {
            panic!("expected at least two points, got {series:?}");
        };
        assert_eq!(first.start_secs, T0);
        assert_eq!(first.ops_per_sec, 20.0);
        assert_eq!(first.server_errors, 2);
        let p50 = first.p50_ms.unwrap_or_default();
        let p99 = first.p99_ms.unwrap_or_default();
        assert!((49.0..=51.0).contains(&p50), "p50 {p50}");
        assert!((98.0..=100.0).contains(&p99), "p99 {p99}");
        assert_eq!(second.start_secs, T0 + BUCKET_SECS);
        assert_eq!(second.ops_per_sec, 0.2);
    }

    #[test]
    fn the_series_covers_the_window_with_idle_buckets_and_without_the_one_filling() {
        let traffic = Traffic::default();
        traffic.record(T0, Duration::from_millis(3), false);
        traffic.record(T0 + 3 * BUCKET_SECS, Duration::from_millis(3), false);
        let series = traffic.series(T0 + 3 * BUCKET_SECS + 1);
        assert_eq!(series.len(), KEPT_BUCKETS);
        let tail: Vec<_> = series[KEPT_BUCKETS - 3..]
            .iter()
            .map(|p| (p.start_secs, p.ops_per_sec, p.p50_ms.is_some()))
            .collect();
        assert_eq!(
            tail,
            [
                (T0, 0.2, true),
                (T0 + BUCKET_SECS, 0.0, false),
                (T0 + 2 * BUCKET_SECS, 0.0, false),
            ]
        );
    }

    #[test]
    fn the_window_stays_bounded_and_a_clock_step_back_does_not_reorder_it() {
        let traffic = Traffic::default();
        for i in 0..(3 * KEPT_BUCKETS as u64) {
            traffic.record(T0 + i * BUCKET_SECS, Duration::from_secs(120), false);
        }
        traffic.record(T0, Duration::ZERO, false);
        let buckets = traffic.buckets.lock().unwrap_or_else(|e| e.into_inner());
        assert_eq!(buckets.len(), KEPT_BUCKETS);
        assert!(
            buckets
                .iter()
                .zip(buckets.iter().skip(1))
                .all(|(a, b)| a.start_secs < b.start_secs)
        );
        assert_eq!(buckets.back().map(|b| b.requests), Some(2));
    }
}

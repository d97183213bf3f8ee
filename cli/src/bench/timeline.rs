//! The measured rate over time: requests counted by the second of the measured time in which
//! they were sent, summed into each whole minute's rate, and a least-squares trend of the
//! per-second rates. A long run answers "does the rate hold as the store fills?"; one minute
//! compared with another is at the mercy of a busy second or two on a two-core machine, the
//! trend over every second is not.

use std::time::Duration;

use serde::Serialize;

/// Requests per second of the measured time.
#[derive(Debug, Default, Clone)]
pub struct Timeline {
    per_second: Vec<u64>,
}

/// The slope of a straight line fitted to the per-second rates.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Trend {
    /// Change of the rate per minute, in ops/s.
    pub ops_per_sec_per_minute: f64,
    /// The same change as a percentage of the fitted line's start.
    pub percent_per_minute: f64,
    /// Half-width of the 95 % confidence interval of `percent_per_minute`.
    pub percent_per_minute_ci95: f64,
}

impl Timeline {
    /// Counts one request sent in `second` (from the start of the measured time).
    pub fn count(&mut self, second: u64) {
        let second = usize::try_from(second).unwrap_or(usize::MAX);
        if self.per_second.len() <= second {
            self.per_second.resize(second.saturating_add(1), 0);
        }
        if let Some(count) = self.per_second.get_mut(second) {
            *count += 1;
        }
    }

    /// Adds another worker's counts.
    pub fn merge(&mut self, other: &Timeline) {
        if self.per_second.len() < other.per_second.len() {
            self.per_second.resize(other.per_second.len(), 0);
        }
        for (mine, theirs) in self.per_second.iter_mut().zip(&other.per_second) {
            *mine += theirs;
        }
    }

    /// The seconds wholly inside `measured` (requests sent in the last, part second would
    /// read low by its length alone).
    fn whole_seconds(&self, measured: Duration) -> &[u64] {
        let whole = usize::try_from(measured.as_secs()).unwrap_or(usize::MAX);
        &self.per_second[..whole.min(self.per_second.len())]
    }

    /// The rate of each whole minute of `measured`.
    pub fn minute_rates(&self, measured: Duration) -> Vec<f64> {
        self.whole_seconds(measured)
            .chunks_exact(60)
            .map(|minute| minute.iter().sum::<u64>() as f64 / 60.0)
            .collect()
    }

    /// The least-squares slope of the per-second rates over `measured`; `None` under a
    /// minute or when the fitted line starts at or below zero.
    pub fn trend(&self, measured: Duration) -> Option<Trend> {
        let rates = self.whole_seconds(measured);
        if rates.len() < 60 {
            return None;
        }
        let n = rates.len() as f64;
        let mean_t = (n - 1.0) / 2.0;
        let mean_r = rates.iter().sum::<u64>() as f64 / n;
        let (mut sxx, mut sxy) = (0.0, 0.0);
        for (t, &rate) in rates.iter().enumerate() {
            let dt = t as f64 - mean_t;
            sxx += dt * dt;
            sxy += dt * (rate as f64 - mean_r);
        }
        let slope = sxy / sxx;
        let start = mean_r - slope * mean_t;
        if start <= 0.0 {
            return None;
        }
        let residuals: f64 = rates
            .iter()
            .enumerate()
            .map(|(t, &rate)| (rate as f64 - (start + slope * t as f64)).powi(2))
            .sum();
        let slope_error = (residuals / (n - 2.0) / sxx).sqrt();
        Some(Trend {
            ops_per_sec_per_minute: slope * 60.0,
            percent_per_minute: slope * 60.0 / start * 100.0,
            percent_per_minute_ci95: 1.96 * slope_error * 60.0 / start * 100.0,
        })
    }
}

/// "ops/s by minute" with each whole minute's rate, the last minute's share of the first,
/// the slowest minute's share of the fastest, and the trend; `None` under two whole minutes.
pub fn minute_line(rates: &[f64], trend: Option<Trend>) -> Option<String> {
    let (first, last) = (rates.first()?, rates.last()?);
    if rates.len() < 2 {
        return None;
    }
    let fastest = rates.iter().copied().fold(f64::MIN, f64::max);
    let slowest = rates.iter().copied().fold(f64::MAX, f64::min);
    let each: Vec<String> = rates.iter().map(|rate| format!("{rate:.0}")).collect();
    let mut line = format!(
        "ops/s by minute: {}; last minute {:.0}% of the first, slowest {:.0}% of the fastest",
        each.join(" "),
        last / first.max(f64::EPSILON) * 100.0,
        slowest / fastest.max(f64::EPSILON) * 100.0
    );
    if let Some(trend) = trend {
        line.push_str(&format!(
            "; trend {:+.1}%/min (±{:.1}, 95%)",
            trend.percent_per_minute, trend.percent_per_minute_ci95
        ));
    }
    line.push('\n');
    Some(line)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn timeline(rates: impl IntoIterator<Item = u64>) -> Timeline {
        let mut timeline = Timeline::default();
        for (second, rate) in rates.into_iter().enumerate() {
            for _ in 0..rate {
                timeline.count(second as u64);
            }
        }
        timeline
    }

    #[test]
    fn workers_merge_and_a_part_minute_is_left_out() {
        let mut one = timeline(std::iter::repeat_n(2, 60));
        let two = timeline(std::iter::repeat_n(0, 60).chain(std::iter::repeat_n(1, 120)));
        one.merge(&two);
        assert_eq!(one.minute_rates(Duration::from_secs(150)), [2.0, 1.0]);
        assert_eq!(one.minute_rates(Duration::from_secs(180)), [2.0, 1.0, 1.0]);
    }

    #[test]
    fn a_steady_rate_has_no_trend_and_a_falling_one_has_its_slope() {
        let steady = timeline(std::iter::repeat_n(100, 300)).trend(Duration::from_secs(300));
        let steady = steady.unwrap();
        assert!(steady.percent_per_minute.abs() < 1e-9, "{steady:?}");
        assert!(steady.percent_per_minute_ci95.abs() < 1e-9, "{steady:?}");
        // 1,000 ops/s falling by 1 ops/s each second: -60 ops/s, -6 % of the start, a minute.
        let falling = timeline((0..300).map(|t| 1_000 - t)).trend(Duration::from_secs(300));
        let falling = falling.unwrap();
        assert!(
            (falling.ops_per_sec_per_minute + 60.0).abs() < 1e-6,
            "{falling:?}"
        );
        assert!(
            (falling.percent_per_minute + 6.0).abs() < 1e-6,
            "{falling:?}"
        );
        assert_eq!(timeline([5; 59]).trend(Duration::from_secs(59)), None);
    }

    #[test]
    fn noise_widens_the_interval_around_a_flat_trend() {
        let noisy = timeline((0..300).map(|t| if t % 2 == 0 { 900 } else { 1_100 }));
        let trend = noisy.trend(Duration::from_secs(300)).unwrap();
        assert!(trend.percent_per_minute.abs() < trend.percent_per_minute_ci95);
        assert!(trend.percent_per_minute_ci95 > 0.1, "{trend:?}");
    }

    #[test]
    fn the_line_needs_two_minutes() {
        let trend = Trend {
            ops_per_sec_per_minute: -20.0,
            percent_per_minute: -1.0,
            percent_per_minute_ci95: 0.5,
        };
        let line = minute_line(&[200.0, 100.0], Some(trend)).unwrap();
        assert!(
            line.contains("by minute: 200 100; last minute 50% of the first, slowest 50%"),
            "{line}"
        );
        assert!(line.contains("trend -1.0%/min (±0.5, 95%)"), "{line}");
        assert_eq!(minute_line(&[3.0], None), None);
        assert_eq!(minute_line(&[], None), None);
    }
}

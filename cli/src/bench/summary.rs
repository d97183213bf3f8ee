//! What a run measured: each worker's [`Stats`] (latency histograms, outcomes, the
//! [`Timeline`]), merged, and the [`Summary`] printed at the end, as text or JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use serde::Serialize;

use super::mix::OpKind;
use super::timeline::{Timeline, Trend, minute_line};
use super::{BenchArgs, MAX_FAILURE_RATE, Outcome};

/// Latencies are recorded in microseconds, up to a minute, to 3 significant digits.
fn latency_histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 60_000_000, 3).context("cannot create a latency histogram")
}

/// Measured results of one worker, or of all of them merged.
pub struct Stats {
    all: Histogram<u64>,
    latency: BTreeMap<OpKind, Histogram<u64>>,
    /// Non-OK outcomes by label ("503", "transport", "not in cart", ...).
    outcomes: BTreeMap<String, u64>,
    /// Requests by the second of the measured time in which they were sent.
    timeline: Timeline,
    /// The load phase, when `--fill` ran one.
    pub fill: Option<FillReport>,
    pub elapsed: Duration,
}

/// What the load phase of `--fill` did.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct FillReport {
    /// Carts that got their item (inserts acknowledged).
    pub items: u64,
    /// Loading inserts that failed (5xx, transport or refused).
    pub failed: u64,
    pub secs: f64,
}

impl Stats {
    pub fn new() -> anyhow::Result<Self> {
        let mut latency = BTreeMap::new();
        for kind in OpKind::ALL {
            latency.insert(kind, latency_histogram()?);
        }
        Ok(Self {
            all: latency_histogram()?,
            latency,
            outcomes: BTreeMap::new(),
            timeline: Timeline::default(),
            fill: None,
            elapsed: Duration::ZERO,
        })
    }

    /// Records a request sent in `second` of the measured time that took `took`.
    pub fn record(&mut self, kind: OpKind, outcome: Outcome, second: u64, took: Duration) {
        self.timeline.count(second);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        self.all.saturating_record(micros);
        if let Some(histogram) = self.latency.get_mut(&kind) {
            histogram.saturating_record(micros);
        }
        let label = match outcome {
            Outcome::Ok => return,
            Outcome::NotInCart => NOT_IN_CART.to_owned(),
            Outcome::Status(code) => code.to_string(),
            Outcome::Transport => TRANSPORT.to_owned(),
        };
        *self.outcomes.entry(label).or_default() += 1;
    }

    pub fn merge(&mut self, other: &Stats) -> anyhow::Result<()> {
        self.all
            .add(&other.all)
            .context("cannot merge latency histograms")?;
        for (kind, histogram) in &other.latency {
            if let Some(mine) = self.latency.get_mut(kind) {
                mine.add(histogram)
                    .context("cannot merge latency histograms")?;
            }
        }
        for (label, n) in &other.outcomes {
            *self.outcomes.entry(label.clone()).or_default() += n;
        }
        self.timeline.merge(&other.timeline);
        Ok(())
    }
}

const NOT_IN_CART: &str = "not in cart";
const TRANSPORT: &str = "transport";

/// Latency percentiles in milliseconds.
#[derive(Debug, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Latency {
    fn of(histogram: &Histogram<u64>) -> Self {
        let ms = |micros: u64| micros as f64 / 1_000.0;
        Self {
            p50: ms(histogram.value_at_quantile(0.50)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
        }
    }
}

/// Results of one operation kind.
#[derive(Debug, Serialize)]
pub struct KindSummary {
    pub ops: u64,
    pub ops_per_sec: f64,
    pub latency_ms: Latency,
}

/// The summary of a run, as printed (`--json` prints this structure).
#[derive(Debug, Serialize)]
pub struct Summary {
    pub api: String,
    pub clients: u32,
    pub users: u32,
    pub seed: u64,
    pub warmup_secs: f64,
    pub measured_secs: f64,
    pub total_ops: u64,
    pub ops_per_sec: f64,
    pub latency_ms: Latency,
    pub per_kind: BTreeMap<&'static str, KindSummary>,
    /// Deletes answered 404 "not in cart": a valid answer, not an error.
    pub not_in_cart: u64,
    /// Other non-2xx answers by status code, and `transport` for requests with no answer.
    pub errors: BTreeMap<String, u64>,
    /// Requests that count as failed: 5xx and transport.
    pub failed: u64,
    pub failure_rate: f64,
    /// Ops/s of each whole minute measured (empty for runs under a minute).
    pub per_minute: Vec<f64>,
    /// The least-squares trend of the per-second rates (runs of a minute or more).
    pub trend: Option<Trend>,
    /// The load phase before the run (`--fill`).
    pub fill: Option<FillReport>,
}

impl Summary {
    pub fn new(args: &BenchArgs, seed: u64, stats: &Stats) -> Self {
        let secs = stats.elapsed.as_secs_f64().max(f64::EPSILON);
        let mut per_kind = BTreeMap::new();
        for (kind, histogram) in &stats.latency {
            if !histogram.is_empty() {
                per_kind.insert(
                    kind.name(),
                    KindSummary {
                        ops: histogram.len(),
                        ops_per_sec: histogram.len() as f64 / secs,
                        latency_ms: Latency::of(histogram),
                    },
                );
            }
        }
        let mut errors = stats.outcomes.clone();
        let not_in_cart = errors.remove(NOT_IN_CART).unwrap_or(0);
        let failed = errors
            .iter()
            .filter(|(label, _)| *label == TRANSPORT || label.starts_with('5'))
            .map(|(_, n)| n)
            .sum();
        let total_ops = stats.all.len();
        Self {
            api: args.api.to_string(),
            clients: args.clients,
            users: args.users,
            seed,
            warmup_secs: args.warmup.as_secs_f64(),
            measured_secs: secs,
            total_ops,
            ops_per_sec: total_ops as f64 / secs,
            latency_ms: Latency::of(&stats.all),
            per_kind,
            not_in_cart,
            errors,
            failed,
            failure_rate: failed as f64 / total_ops.max(1) as f64,
            per_minute: stats.timeline.minute_rates(stats.elapsed),
            trend: stats.timeline.trend(stats.elapsed),
            fill: stats.fill,
        }
    }

    /// The summary as a human-readable report.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let l = &self.latency_ms;
        let _ = writeln!(
            out,
            "\ncartdb bench: {} clients, {} users, {:.1}s measured after {:.1}s warm-up, seed {}, {}",
            self.clients, self.users, self.measured_secs, self.warmup_secs, self.seed, self.api
        );
        if let Some(fill) = &self.fill {
            let _ = writeln!(
                out,
                "fill       {:>10} carts loaded first in {:.0}s ({:.0} inserts/s), {} failed",
                fill.items,
                fill.secs,
                fill.items as f64 / fill.secs.max(f64::EPSILON),
                fill.failed
            );
        }
        let _ = writeln!(
            out,
            "total      {:>10} ops  {:>10.1} ops/s",
            self.total_ops, self.ops_per_sec
        );
        let _ = writeln!(
            out,
            "latency ms  p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
            l.p50, l.p99, l.p999, l.max
        );
        let _ = writeln!(
            out,
            "\n{:<14}{:>10}{:>12}{:>9}{:>9}{:>9}{:>9}",
            "operation", "ops", "ops/s", "p50", "p99", "p99.9", "max"
        );
        for (name, k) in &self.per_kind {
            let l = &k.latency_ms;
            let _ = writeln!(
                out,
                "{name:<14}{:>10}{:>12.1}{:>9.2}{:>9.2}{:>9.2}{:>9.2}",
                k.ops, k.ops_per_sec, l.p50, l.p99, l.p999, l.max
            );
        }
        out.push('\n');
        if self.errors.is_empty() {
            out.push_str("errors: none\n");
        } else {
            let list: Vec<String> = self
                .errors
                .iter()
                .map(|(k, n)| format!("{k}: {n}"))
                .collect();
            let _ = writeln!(out, "errors by status: {}", list.join(", "));
        }
        let _ = writeln!(
            out,
            "deletes answered \"not in cart\" (not errors): {}",
            self.not_in_cart
        );
        let _ = writeln!(
            out,
            "failed (5xx or transport): {} of {} ({:.3}%)",
            self.failed,
            self.total_ops,
            self.failure_rate * 100.0
        );
        if let Some(line) = minute_line(&self.per_minute, self.trend) {
            out.push_str(&line);
        }
        out
    }

    /// # Errors
    /// When more than 1% of the requests failed, or none was measured.
    pub fn check_failure_rate(&self) -> anyhow::Result<()> {
        if self.total_ops == 0 {
            bail!("no request completed during the measured time");
        }
        if self.failure_rate > MAX_FAILURE_RATE {
            bail!(
                "{} of {} requests failed ({:.2}%), more than the {:.0}% allowed",
                self.failed,
                self.total_ops,
                self.failure_rate * 100.0,
                MAX_FAILURE_RATE * 100.0
            );
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::bench::parse_api_url;

    #[test]
    fn the_failure_rate_decides_the_exit() {
        let mut stats = Stats::new().unwrap();
        for _ in 0..99 {
            stats.record(OpKind::Insert, Outcome::Ok, 0, Duration::from_millis(1));
        }
        stats.record(
            OpKind::Delete,
            Outcome::NotInCart,
            0,
            Duration::from_millis(1),
        );
        stats.record(
            OpKind::Insert,
            Outcome::Status(503),
            0,
            Duration::from_millis(2),
        );
        stats.elapsed = Duration::from_secs(1);
        let args = BenchArgs {
            api: parse_api_url("http://127.0.0.1:8080").unwrap(),
            clients: 1,
            duration: Duration::from_secs(1),
            users: 1,
            mix: "insert=1".parse().unwrap(),
            fill: false,
            warmup: Duration::ZERO,
            seed: Some(1),
            admin_token: None,
            json: false,
            zk: None,
        };
        let summary = Summary::new(&args, 1, &stats);
        assert_eq!(summary.total_ops, 101);
        assert_eq!(summary.not_in_cart, 1);
        assert_eq!(summary.failed, 1);
        assert!(summary.check_failure_rate().is_ok(), "1 of 101 is under 1%");
        stats.record(
            OpKind::Insert,
            Outcome::Transport,
            0,
            Duration::from_millis(2),
        );
        let summary = Summary::new(&args, 1, &stats);
        assert!(summary.check_failure_rate().is_err(), "2 of 102 is over 1%");
        assert!(summary.to_text().contains("transport: 1"));
    }
}

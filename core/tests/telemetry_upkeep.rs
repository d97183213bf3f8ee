//! Histogram samples do not pile up in a process that nobody scrapes: the recorder's upkeep
//! thread folds them into their buckets. (The exporter buffers every sample until an upkeep;
//! with upkeep only at render, a gateway under load grew by about 60 bytes an operation.)
//!
//! Its own test binary: the recorder is process-wide.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cartdb_core::telemetry::Telemetry;

/// Resident memory of this process, in bytes.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    kib * 1024
}

#[test]
fn histogram_samples_are_drained_without_a_scrape() {
    let telemetry = Telemetry::install_with_upkeep(Duration::from_millis(5)).unwrap();
    let histogram = metrics::histogram!("cartdb_test_upkeep_seconds");
    // 20 million samples: 160 MB of f64 if they were all kept until a render. Recorded in
    // slices, each followed by a pause of a few upkeep periods, as a process under load
    // records them between its idle moments.
    let before = rss_bytes();
    let mut peak = before;
    for _ in 0..200 {
        for i in 0..100_000u32 {
            histogram.record(f64::from(i % 1000) / 1e6);
        }
        std::thread::sleep(Duration::from_millis(20));
        peak = peak.max(rss_bytes());
    }
    let grown = peak.saturating_sub(before);
    assert!(
        grown < 64 * 1024 * 1024,
        "RSS grew by {} MiB while recording 20,000,000 samples",
        grown / (1024 * 1024)
    );
    // The samples were counted, not thrown away wholesale. The exporter's lock-free buffer
    // loses a few recorded at the very moment an upkeep drains it: 9 of 20,000,000 on an
    // idle machine, 30,294 (0.15 %) with CI's build competing for the two cores, and once
    // more than 0.05 % with other test binaries' processes still exiting; 2 % is far from
    // "thrown away wholesale" and far from flaky.
    let text = telemetry.render();
    let count: u64 = text
        .lines()
        .find_map(|line| line.strip_prefix("cartdb_test_upkeep_seconds_count "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap();
    assert!(
        count >= 19_600_000,
        "only {count} of 20,000,000 samples counted"
    );
}

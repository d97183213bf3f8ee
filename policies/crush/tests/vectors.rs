//! Conformance: every row of the shared `crushtool` vector files, run natively.
//!
//! Rows are `x,replicas,reweights,devices` with reweights `dev=w;dev=w` (w a fraction,
//! turned into 16.16 as `(w * 65536) as u32` like crushtool's `--weight`) and devices
//! `a|b|c`, primary first.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::path::PathBuf;

use cartdb_policy_crush::load;

fn shared(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/crush")
        .join(name)
}

struct Row {
    x: u32,
    replicas: u32,
    reweights: Vec<(i32, u32)>,
    devices: Vec<i32>,
}

fn parse_row(line: &str) -> Row {
    let fields: Vec<&str> = line.split(',').collect();
    assert_eq!(fields.len(), 4, "row {line:?}");
    let reweights = fields[2]
        .split(';')
        .filter(|s| !s.is_empty())
        .map(|pair| {
            let (dev, w) = pair.split_once('=').unwrap();
            (
                dev.parse().unwrap(),
                (w.parse::<f64>().unwrap() * 65536.0) as u32,
            )
        })
        .collect();
    let devices = fields[3]
        .split('|')
        .filter(|s| !s.is_empty())
        .map(|d| d.parse().unwrap())
        .collect();
    Row {
        x: fields[0].parse().unwrap(),
        replicas: fields[1].parse().unwrap(),
        reweights,
        devices,
    }
}

fn check(map_file: &str, vectors_file: &str) {
    let map = std::fs::read_to_string(shared(map_file)).unwrap();
    let vectors = std::fs::read_to_string(shared(vectors_file)).unwrap();
    let mut failures = Vec::new();
    let mut rows = 0;
    for (n, line) in vectors.lines().enumerate().skip(1) {
        let row = parse_row(line);
        // Loading per row keeps the test simple; the rows share few reweight sets anyway.
        let placer = load(&map, None, &row.reweights).unwrap();
        let got = placer.place(row.x, row.replicas);
        if got != row.devices {
            failures.push(format!("line {}: {line} -> got {got:?}", n + 1));
        }
        rows += 1;
    }
    assert!(rows > 1000, "{vectors_file}: only {rows} rows");
    assert!(
        failures.is_empty(),
        "{} of {rows} rows differ:\n{}",
        failures.len(),
        failures[..failures.len().min(20)].join("\n")
    );
}

#[test]
fn seed_vectors() {
    check("seed-map.json", "seed-vectors.csv");
}

#[test]
fn two_weight_vectors() {
    check("two-weight-map.json", "two-weight-vectors.csv");
}

/// Native cost of one placement, the baseline for the component's (run with `--release
/// -- --ignored --nocapture`).
#[test]
#[ignore = "a measurement, not a check"]
fn native_place_latency() {
    let map = std::fs::read_to_string(shared("seed-map.json")).unwrap();
    let placer = load(&map, None, &[]).unwrap();
    // CRUSH_BENCH_CALLS lowers the count for instruction counting under valgrind.
    let calls: u32 = std::env::var("CRUSH_BENCH_CALLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let start = std::time::Instant::now();
    for x in 0..calls {
        std::hint::black_box(placer.place(x, 3));
    }
    println!(
        "native place(x, 3) on the seed map: {:?} per call",
        start.elapsed() / calls
    );
}

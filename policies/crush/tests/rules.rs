//! Conformance beyond the shared vectors: every rule feature (chooseleaf firstn/indep,
//! choose chains, each `set_*` step, negative N, two take/emit pairs) on a 3-level map of
//! unequal weights, against `crushtool` 16.2 output (`fixtures/gen-rules-vectors.py`).
//!
//! Rows: `rule,x,replicas,reweights,devices`; `indep` holes are written `none`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::collections::HashMap;

use cartdb_policy_crush::{ITEM_NONE, Placer, load};

const MAP: &str = include_str!("fixtures/rules-map.json");
const VECTORS: &str = include_str!("fixtures/rules-vectors.csv");

fn reweights(text: &str) -> Vec<(i32, u32)> {
    text.split(';')
        .filter(|s| !s.is_empty())
        .map(|pair| {
            let (dev, w) = pair.split_once('=').unwrap();
            (
                dev.parse().unwrap(),
                (w.parse::<f64>().unwrap() * 65536.0) as u32,
            )
        })
        .collect()
}

fn devices(text: &str) -> Vec<i32> {
    text.split('|')
        .filter(|s| !s.is_empty())
        .map(|d| {
            if d == "none" {
                ITEM_NONE
            } else {
                d.parse().unwrap()
            }
        })
        .collect()
}

#[test]
fn every_rule_matches_crushtool() {
    let mut placers: HashMap<(String, String), Placer> = HashMap::new();
    let mut failures = Vec::new();
    let mut rows = 0;
    for (n, line) in VECTORS.lines().enumerate().skip(1) {
        let [rule, x, replicas, rw, expected] = line.split(',').collect::<Vec<_>>()[..] else {
            panic!("line {}: {line}", n + 1);
        };
        let placer = placers
            .entry((rule.to_owned(), rw.to_owned()))
            .or_insert_with(|| load(MAP, Some(rule), &reweights(rw)).unwrap());
        let got = placer.do_rule(x.parse().unwrap(), replicas.parse().unwrap());
        if got != devices(expected) {
            failures.push(format!("line {}: {line} -> got {got:?}", n + 1));
        }
        rows += 1;
    }
    assert!(rows > 10_000, "only {rows} rows");
    assert!(
        failures.is_empty(),
        "{} of {rows} rows differ:\n{}",
        failures.len(),
        failures[..failures.len().min(20)].join("\n")
    );
}

//! `cartdb policy verify|place` end to end: the built binary, the reference CRUSH component
//! and the shared conformance vectors.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::path::PathBuf;
use std::process::{Command, Output};

use cartdb_policies::CRUSH_POLICY_WASM;

fn shared(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/crush")
        .join(name)
}

fn cartdb(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cartdb"))
        .args(args)
        .output()
        .unwrap()
}

fn verify(map: &str, vectors: &str) -> Output {
    let map = shared(map);
    cartdb(&[
        "policy",
        "verify",
        "--policy",
        CRUSH_POLICY_WASM,
        "--map",
        map.to_str().unwrap(),
        "--vectors",
        vectors,
    ])
}

fn last_line(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn seed_vectors_all_pass() {
    let vectors = shared("seed-vectors.csv");
    let output = verify("seed-map.json", vectors.to_str().unwrap());
    assert!(output.status.success(), "{output:?}");
    assert_eq!(last_line(&output), "6300 passed, 0 failed");
}

/// Every placement group row made by Ceph's osdmaptool (pg_num 64, 100, 224 and 256, with
/// and without a device out) passes through the host's PG arithmetic and the .wasm.
#[test]
fn pg_vectors_all_pass() {
    for (map, vectors) in [
        ("seed-map.json", "seed-pg-vectors.csv"),
        ("two-weight-map.json", "two-weight-pg-vectors.csv"),
    ] {
        let vectors = shared(vectors);
        let output = verify(map, vectors.to_str().unwrap());
        assert!(output.status.success(), "{output:?}");
        assert_eq!(last_line(&output), "1932 passed, 0 failed", "{vectors:?}");
    }
}

#[test]
fn two_weight_vectors_all_pass() {
    let vectors = shared("two-weight-vectors.csv");
    let output = verify("two-weight-map.json", vectors.to_str().unwrap());
    assert!(output.status.success(), "{output:?}");
    assert_eq!(last_line(&output), "3600 passed, 0 failed");
}

#[test]
fn a_wrong_vector_fails_and_is_shown() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wrong.csv");
    // user1/pork: the right answer is 1|3|6.
    std::fs::write(
        &path,
        "x,replicas,reweights,devices\n72916709,2,,1|3\n72916709,3,,1|6|3\n",
    )
    .unwrap();
    let output = verify("seed-map.json", path.to_str().unwrap());
    assert!(!output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("wrong.csv:3"), "{stdout}");
    assert!(stdout.contains("expected 1|6|3, got 1|3|6"), "{stdout}");
    assert_eq!(last_line(&output), "1 passed, 1 failed");
}

#[test]
fn a_malformed_row_names_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.csv");
    std::fs::write(&path, "x,replicas,reweights,devices\n1,1,,5\nnot,a,row\n").unwrap();
    let output = verify("seed-map.json", path.to_str().unwrap());
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("error: ") && stderr.contains("bad.csv:3"),
        "{stderr}"
    );
}

#[test]
fn place_prints_one_line_per_key() {
    let map = shared("seed-map.json");
    let map = map.to_str().unwrap();
    let args = [
        "policy",
        "place",
        "--policy",
        CRUSH_POLICY_WASM,
        "--map",
        map,
        "--replicas",
        "3",
    ];
    let output = cartdb(&[&args[..], &["72916709", "1"]].concat());
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "72916709: 1 3 6\n1: 6 3 1\n"
    );
    let output = cartdb(&[&args[..], &["--reweight", "3=0", "72916709"]].concat());
    assert_eq!(String::from_utf8_lossy(&output.stdout), "72916709: 1 6 4\n");
}

#[test]
fn a_missing_policy_is_an_error_not_a_panic() {
    let map = shared("seed-map.json");
    let output = cartdb(&[
        "policy",
        "place",
        "--policy",
        "/nonexistent.wasm",
        "--map",
        map.to_str().unwrap(),
        "--replicas",
        "1",
        "1",
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with("error: cannot read policy /nonexistent.wasm"),
        "{stderr}"
    );
}

//! `cartdb policy verify-merge` end to end: the built binary against the reference merge
//! component (every law holds) and the last-writer-wins example (it drops operations).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::process::{Command, Output};

use cartdb_policies::{MERGE_LWW_POLICY_WASM, MERGE_POLICY_WASM};

fn verify_merge(extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cartdb"))
        .args(["policy", "verify-merge"])
        .args(extra)
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn the_reference_merge_keeps_every_law() {
    let output = verify_merge(&["--policy", MERGE_POLICY_WASM, "--cases", "64"]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        stdout(&output),
        "commutative: passed\nassociative: passed\nidempotent: passed\n\
         no acknowledged op dropped: passed\n4 passed, 0 failed\n"
    );
}

#[test]
fn last_writer_wins_fails_with_counterexamples() {
    let output = verify_merge(&[
        "--policy",
        MERGE_LWW_POLICY_WASM,
        "--cases",
        "64",
        "--seed",
        "5",
    ]);
    assert!(!output.status.success(), "{output:?}");
    let out = stdout(&output);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.len() > 5, "{out}");
    assert_eq!(lines[3], "no acknowledged op dropped: FAILED", "{out}");
    let summary: Vec<&str> = lines[4].split(' ').collect();
    assert!(
        matches!(summary[..], [_, "passed,", failed, "failed"] if failed != "0"),
        "{out}"
    );
    assert!(
        out.contains(
            "\nno acknowledged op dropped (every op above the merged base is kept; \
             qty == replay of the union):\n  counterexample: a = {"
        ),
        "{out}"
    );
    // The same seed gives the same report.
    let again = verify_merge(&[
        "--policy",
        MERGE_LWW_POLICY_WASM,
        "--cases",
        "64",
        "--seed",
        "5",
    ]);
    assert_eq!(stdout(&again), out);
}

#[test]
fn an_unloadable_policy_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, "not a component").unwrap();
    let output = verify_merge(&["--policy", garbage.to_str().unwrap()]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with(&format!(
            "error: policy {} is not a valid WebAssembly component",
            garbage.display()
        )),
        "{stderr}"
    );
    assert!(output.stdout.is_empty());
}

#[test]
fn help_explains_the_laws_and_the_output() {
    let output = verify_merge(&["--help"]);
    assert!(output.status.success());
    let help = stdout(&output);
    for expected in [
        "commutative",
        "N passed, M failed",
        "--cases <N>",
        "--seed <S>",
    ] {
        assert!(help.contains(expected), "{expected}: {help}");
    }
}

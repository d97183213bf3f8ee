//! The API contract: Schemathesis (PyPI) fuzzes every operation of `GET /openapi.json` (but
//! the map change, which rearranges the cluster) on a
//! running cluster, with the admin token, and finds no server error and no answer that
//! violates the document. The seed and the number of examples are fixed, so a failure
//! reproduces; the run keeps its report under `target/schemathesis/`.
//!
//! Schemathesis comes from `scripts/install-deps.sh --for-tests` (a virtualenv in
//! `target/tools/schemathesis`), or from `CARTDB_SCHEMATHESIS`.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use cartdb_tests::cluster::{TEST_ADMIN_TOKEN, workspace_root};
use cartdb_tests::{Cluster, ClusterOptions};

/// Fixed so that a failure reproduces with the same inputs.
const SEED: &str = "20261202";
/// Test cases per operation and phase; 19 operations after the exclusions, about a minute
/// on two cores with one worker.
const EXAMPLES: &str = "300";

/// The sections of Schemathesis's report that name problems (ERRORS, FAILURES, WARNINGS)
/// and its summary, without the progress lines before them.
fn findings(stdout: &str) -> &str {
    ["= ERRORS =", "= FAILURES =", "= WARNINGS =", "= SUMMARY ="]
        .iter()
        .filter_map(|heading| stdout.find(heading))
        .min()
        .and_then(|at| stdout[..at].rfind('\n'))
        .map_or(stdout, |start| &stdout[start + 1..])
}

fn schemathesis() -> Result<PathBuf> {
    let path = std::env::var_os("CARTDB_SCHEMATHESIS").map_or_else(
        || workspace_root().join("target/tools/schemathesis/bin/schemathesis"),
        PathBuf::from,
    );
    if !path.exists() {
        bail!(
            "{} not found: run scripts/install-deps.sh --for-tests (or set CARTDB_SCHEMATHESIS)",
            path.display()
        );
    }
    Ok(path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_keeps_its_openapi_contract() -> Result<()> {
    let program = schemathesis()?;
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    let document = cluster.client().get("/openapi.json").await?;
    ensure!(document.status == 200, "GET /openapi.json: {document:?}");
    ensure!(
        document.json["openapi"] == "3.1.0",
        "{}",
        document.json["openapi"]
    );

    let reports = workspace_root().join("target/schemathesis");
    std::fs::create_dir_all(&reports)?;
    let (api, report_dir) = (cluster.api_url().to_owned(), reports.clone());
    let output = tokio::task::spawn_blocking(move || {
        Command::new(&program)
            .args(["run", &format!("{api}/openapi.json")])
            .args(["--checks", "not_a_server_error,response_schema_conformance"])
            .args([
                "--header",
                &format!("Authorization: Bearer {TEST_ADMIN_TOKEN}"),
            ])
            // Map changes rearrange the cluster under the fuzzer (random devices marked
            // out, hosts added with no data node behind them), after which writes rightly
            // answer 503; tests/tests/data_movement.rs covers them. Their preview, which
            // changes nothing, is fuzzed.
            .args(["--exclude-path", "/api/admin/map/change"])
            // Policy deploys and rollbacks take a WebAssembly body and swap the cluster's
            // policies; tests/tests/policy_lifecycle.rs covers them, hostile bodies included.
            .args(["--exclude-path", "/api/admin/policies/{kind}"])
            .args(["--exclude-path", "/api/admin/policies/{kind}/rollback"])
            .args(["--seed", SEED, "--max-examples", EXAMPLES])
            .args(["--phases", "examples,coverage,fuzzing"])
            // One worker: with two, Hypothesis describes lambdas by parsing source on both
            // threads at once, and Python 3.11's ast module (Debian 12's python3) then
            // fails with "AST constructor recursion depth mismatch" (CPython gh-106905)
            // on a loaded machine: a runtime error in the fuzzer, not in the API.
            .args(["--workers", "1", "--request-timeout", "30"])
            .args(["--generation-database", "none", "--no-color"])
            .args(["--report", "junit"])
            .arg("--report-dir")
            .arg(&report_dir)
            .output()
            .with_context(|| format!("running {}", program.display()))
    })
    .await??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    std::fs::write(reports.join("output.txt"), format!("{stdout}\n{stderr}"))?;
    if !output.status.success() {
        // The harness prints the cluster's log tails when it drops; the error keeps to
        // what Schemathesis found, so it is not lost among them.
        bail!(
            "Schemathesis found problems (exit {:?}); whole output in {}\n{}\n{stderr}",
            output.status.code(),
            reports.join("output.txt").display(),
            findings(&stdout)
        );
    }
    eprintln!("{stdout}");
    Ok(())
}

#[test]
fn findings_start_at_the_first_problem_section() {
    let report = "Schemathesis v4\n ✅ Fuzzing\n\n===== ERRORS =====\nGET /x\nRuntime Error\n\n===== SUMMARY =====\nTest cases: 3\n";
    assert!(findings(report).starts_with("===== ERRORS ====="));
    assert!(findings(report).ends_with("Test cases: 3\n"));
    assert_eq!(findings("no sections\n"), "no sections\n");
}

//! The policy lifecycle on a running cluster, through `cartdb policy deploy|rollback|
//! history`: a merge-policy swap, a placement-policy swap (CRUSH -> rendezvous) and a
//! rollback while `cartdb bench` and the Jepsen-style [`Workload`] run, with no failed
//! request and every acknowledged operation present afterwards; hostile guests refused by
//! every gateway with the previous policy still in force; and a gateway started later running
//! what the map names, not what its flags say.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use cartdb_policies::{
    CRUSH_POLICY_WASM, MERGE_LWW_POLICY_WASM, MERGE_POLICY_WASM, RENDEZVOUS_POLICY_WASM,
    test_guests,
};
use cartdb_tests::cli::{cartdb, cartdb_json};
use cartdb_tests::cluster::{TEST_ADMIN_TOKEN, bin_dir};
use cartdb_tests::replica_check::{wait_all_clean, wait_settled};
use cartdb_tests::{ApiClient, Cluster, ClusterOptions, Workload, wait_until};
use serde_json::Value;

/// Bound on a backfill (a placement swap moves most PGs) or a switch.
const SETTLE: Duration = Duration::from_secs(300);
/// Shoppers of the workload.
const USERS: usize = 16;

/// `cartdb policy history --json`.
fn history(url: &str) -> Result<Value> {
    cartdb_json(url, &["policy", "history"])
}

/// `cartdb policy deploy KIND FILE [extra] --json`.
fn deploy(url: &str, kind: &str, file: &str, extra: &[&str]) -> Result<Value> {
    let mut args = vec!["policy", "deploy", kind, file, "--by", "test"];
    args.extend_from_slice(extra);
    cartdb_json(url, &args)
}

/// The sha256 of a file, as the policy store names it.
fn sha256_of(path: &str) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {path}"))?;
    Ok(cartdb_core::coord::policy_store::policy_sha256(&bytes))
}

/// Checks that every gateway runs the placement `placement` and merge `merge` (`None`:
/// built-in) and that the map names them.
fn all_run(url: &str, placement: &str, merge: Option<&str>) -> Result<()> {
    let doc = history(url)?;
    ensure!(doc["agree"] == true, "gateways disagree: {doc}");
    ensure!(doc["named"]["placement"]["sha256"] == placement, "{doc}");
    ensure!(
        doc["named"]["merge"]["sha256"].as_str() == merge,
        "merge {merge:?}: {doc}"
    );
    let gateways = doc["gateways"].as_array().context("no gateways")?;
    ensure!(gateways.len() == 2, "{doc}");
    Ok(())
}

/// Prints what a swap moved, for docs/design.md: the preview, the backfill's time and the
/// sweep's repairs and handed-back copies so far.
async fn report_movement(
    api: &ApiClient,
    what: &str,
    report: &Value,
    started: std::time::Instant,
) -> Result<()> {
    let status = api.cluster().await?;
    let sweep = &status.json["maintenance"]["anti_entropy"];
    eprintln!(
        "{what}: {} of {} PGs and {} of {} copies moved (preview), clean after {:.1} s; sweep so far: {} repairs, {} copies handed back",
        report["preview"]["pgs_moved"],
        report["preview"]["pg_num"],
        report["preview"]["copies_moved"],
        report["preview"]["copies_total"],
        started.elapsed().as_secs_f64(),
        sweep["repairs"],
        sweep["handed_back"]
    );
    Ok(())
}

/// `merge.wasm` with a custom section appended: the same merge, a new sha256 (a rebuild).
fn rebuilt_merge(dir: &Path) -> Result<PathBuf> {
    let mut bytes = std::fs::read(MERGE_POLICY_WASM)?;
    let (name, payload) = (b"cartdb-build".as_slice(), b"v2".as_slice());
    let content = 1 + name.len() + payload.len();
    // Section id 0 (custom), size and name length as one-byte LEB128s.
    bytes.extend([0, u8::try_from(content)?, u8::try_from(name.len())?]);
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(payload);
    let path = dir.join("merge-v2.wasm");
    std::fs::File::create(&path)?.write_all(&bytes)?;
    Ok(path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_swap_under_load_and_roll_back() -> Result<()> {
    let cluster = Cluster::start(ClusterOptions::default().with_sweep(10_000)).await?;
    let url = cluster.api_url().to_owned();
    let api = cluster.client().clone();
    let crush = sha256_of(CRUSH_POLICY_WASM)?;
    let merge = sha256_of(MERGE_POLICY_WASM)?;
    let rendezvous = sha256_of(RENDEZVOUS_POLICY_WASM)?;
    all_run(&url, &crush, Some(&merge))?;

    let bench = Command::new(bin_dir().join("cartdb"))
        .args(["bench", "--api", &url, "--clients", "4", "--users", "50"])
        // Stopped with SIGTERM once the swaps are done; the duration only bounds it.
        .args(["--duration", "15m", "--warmup", "0s", "--json"])
        .env("CARTDB_ADMIN_TOKEN", TEST_ADMIN_TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting cartdb bench")?;
    let workload = Workload::start(api.clone(), "swap", USERS);
    workload.advance(40, SETTLE).await?;

    // A new build of the merge policy: every gateway verifies it, then all switch.
    let dir = tempfile::tempdir()?;
    let merge_v2 = rebuilt_merge(dir.path())?;
    let merge_v2_sha = sha256_of(&merge_v2.to_string_lossy())?;
    let report = deploy(&url, "merge", &merge_v2.to_string_lossy(), &[])?;
    ensure!(
        report["verdicts"].as_array().map(Vec::len) == Some(2),
        "{report}"
    );
    ensure!(
        report["running_on"].as_array().map(Vec::len) == Some(2),
        "{report}"
    );
    all_run(&url, &crush, Some(&merge_v2_sha))?;
    workload.advance(40, SETTLE).await?;

    // CRUSH -> rendezvous: the dry run's prediction is what the swap then moves.
    let dry = deploy(&url, "placement", RENDEZVOUS_POLICY_WASM, &["--dry-run"])?;
    ensure!(dry["applied_epoch"].is_null(), "{dry}");
    let predicted = dry["preview"]["pgs_moved"].as_u64().context("no preview")?;
    ensure!(predicted > 0, "{dry}");
    all_run(&url, &crush, Some(&merge_v2_sha))?;
    let swap = deploy(&url, "placement", RENDEZVOUS_POLICY_WASM, &[])?;
    ensure!(swap["preview"]["pgs_moved"] == predicted, "{swap} vs {dry}");
    ensure!(swap["applied_epoch"].as_u64().is_some(), "{swap}");
    all_run(&url, &rendezvous, Some(&merge_v2_sha))?;
    let started = std::time::Instant::now();
    wait_all_clean(&api, SETTLE).await?;
    report_movement(&api, "CRUSH -> rendezvous", &swap, started).await?;
    workload.advance(40, SETTLE).await?;

    // Back to CRUSH.
    let back = cartdb_json(&url, &["policy", "rollback", "placement", "--by", "test"])?;
    ensure!(back["sha256"] == crush.as_str(), "{back}");
    all_run(&url, &crush, Some(&merge_v2_sha))?;
    let started = std::time::Instant::now();
    wait_all_clean(&api, SETTLE).await?;
    report_movement(&api, "rendezvous -> CRUSH", &back, started).await?;
    workload.advance(40, SETTLE).await?;
    ensure!(
        Command::new("kill")
            .args(["-s", "TERM", &bench.id().to_string()])
            .status()?
            .success(),
        "cannot stop the bench"
    );

    let text = cartdb(&url, &["policy", "history"])?;
    ensure!(
        text.contains("deploy") && text.contains("rollback") && text.contains("rendezvous"),
        "{text}"
    );
    let history = workload.stop().await?;
    let output = tokio::task::spawn_blocking(move || bench.wait_with_output()).await??;
    let summary: Value = serde_json::from_slice(&output.stdout)
        .with_context(|| String::from_utf8_lossy(&output.stdout).into_owned())?;
    ensure!(summary["failed"] == 0, "the bench saw failures: {summary}");
    ensure!(summary["total_ops"].as_u64() > Some(100), "{summary}");
    history.check(&api).await?;
    wait_settled(&api, history.users(), 3, SETTLE).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_policies_fail_static_and_a_new_gateway_runs_what_the_map_names() -> Result<()> {
    let mut cluster = Cluster::start(ClusterOptions::default()).await?;
    let url = cluster.api_url().to_owned();
    let crush = sha256_of(CRUSH_POLICY_WASM)?;
    let merge = sha256_of(MERGE_POLICY_WASM)?;
    let hostile = [
        ("merge", test_guests::MERGE_SPIN_WASM, "did not answer"),
        ("placement", test_guests::SPIN_WASM, "did not answer"),
        ("placement", test_guests::GROW_WASM, "growing memory"),
        ("placement", test_guests::TRAP_WASM, "unreachable"),
        (
            "placement",
            test_guests::DUP_DEVICE_WASM,
            "device 1 appears twice",
        ),
        (
            "placement",
            test_guests::BAD_DEVICE_WASM,
            "device 99 is not in the map",
        ),
        (
            "placement",
            test_guests::IMPORTS_WASM,
            "a policy must import nothing",
        ),
        ("merge", MERGE_LWW_POLICY_WASM, "breaks the merge laws"),
        ("merge", test_guests::MERGE_GROW_WASM, "growing memory"),
    ];
    for (kind, file, problem) in hostile {
        let refused = deploy(&url, kind, file, &[]).unwrap_err().to_string();
        ensure!(refused.contains("409 Conflict"), "{file}: {refused}");
        ensure!(
            refused.contains("the previous policy stays in force")
                && refused.contains("gateway 0 refuses it")
                && refused.contains("gateway 1 refuses it")
                && refused.contains(problem),
            "{file} should be refused by both gateways for {problem:?}: {refused}"
        );
        all_run(&url, &crush, Some(&merge))?;
    }

    // A gateway restarted later, its flags still naming CRUSH, runs what the map names.
    let rendezvous = sha256_of(RENDEZVOUS_POLICY_WASM)?;
    deploy(&url, "placement", RENDEZVOUS_POLICY_WASM, &[])?;
    cluster.restart_gateway(1)?;
    wait_until(
        "the restarted gateway to run rendezvous",
        SETTLE,
        || async { Ok(all_run(&url, &rendezvous, Some(&merge)).ok()) },
    )
    .await?;
    let status = cartdb(&url, &["status"])?;
    ensure!(!status.contains("WARNING"), "{status}");
    ensure!(status.matches(&rendezvous[..12]).count() >= 2, "{status}");
    Ok(())
}

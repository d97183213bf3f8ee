//! Running the operator CLI, `cartdb`, against a test cluster as an operator would: the
//! binary from [`crate::cluster::bin_dir`], `--api` pointing at the cluster, and the test
//! admin token in `CARTDB_ADMIN_TOKEN`.

use std::process::Command;

use anyhow::{Context, ensure};

use crate::cluster::{TEST_ADMIN_TOKEN, bin_dir};

/// Runs `cartdb ARGS --api API` and returns its stdout.
///
/// # Errors
/// When the binary cannot run or exits non-zero (the error carries its stderr).
pub fn cartdb(api: &str, args: &[&str]) -> anyhow::Result<String> {
    let binary = bin_dir().join("cartdb");
    let output = Command::new(&binary)
        .args(args)
        .args(["--api", api])
        .env("CARTDB_ADMIN_TOKEN", TEST_ADMIN_TOKEN)
        .output()
        .with_context(|| format!("running {}", binary.display()))?;
    ensure!(
        output.status.success(),
        "cartdb {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

/// [`cartdb`] with `--json`, its output parsed.
///
/// # Errors
/// As [`cartdb`], or output that is not JSON.
pub fn cartdb_json(api: &str, args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let mut with_json = args.to_vec();
    with_json.push("--json");
    let out = cartdb(api, &with_json)?;
    serde_json::from_str(&out).with_context(|| format!("cartdb {args:?} --json printed {out}"))
}

/// Puts one item in each of `carts` new shoppers' carts with `cartdb bench --fill` (`clients`
/// at once, then a one-second run that only reads the catalog, so the carts stay as
/// filled), and checks that every insert was acknowledged.
///
/// # Errors
/// As [`cartdb_json`], or a fill that did not put exactly `carts` items.
pub fn fill_carts(api: &str, carts: usize, clients: usize) -> anyhow::Result<serde_json::Value> {
    let (carts_arg, clients_arg) = (carts.to_string(), clients.to_string());
    let bench = cartdb_json(
        api,
        &[
            "bench",
            "--fill",
            "--users",
            &carts_arg,
            "--clients",
            &clients_arg,
            "--mix",
            "products=1",
            "--duration",
            "1s",
            "--warmup",
            "0s",
        ],
    )?;
    ensure!(
        bench["fill"]["items"] == carts && bench["fill"]["failed"] == 0,
        "the fill of {carts} carts: {bench}"
    );
    Ok(bench)
}

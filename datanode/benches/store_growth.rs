//! Does a data node's cost per write grow with its data? One real store (a fresh directory
//! under `target/`, fsync'd group commit) driven by 64 writers with the cluster benchmark's
//! mix at a million shoppers, as one data node sees it: half the operations add an item for a
//! new shopper, a quarter delete one of the writer's earlier items (picked uniformly, so
//! older and older data as the store grows), a quarter read a random shopper's cart. Every
//! `BENCH_REPORT` operations (default 100,000) it prints the rate, the process's CPU time per
//! 1,000 operations and the store's size on disk; the run stops after `BENCH_OPS` operations
//! (default 1,500,000: about what one data node of the local cluster stores in a 15-minute
//! `cartdb bench` at 1,000,000 users).
//!
//! `cargo bench -p cartdb-datanode --bench store_growth`. The CPU figure is the one to
//! compare between builds: on a shared two-core machine the rate moves with everything else,
//! the CPU spent per operation much less.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use cartdb_core::cart::{ItemKey, ItemMeta, OpId, OpKind, Operation};
use cartdb_core::version::Version;
use cartdb_core::wire::DataResponse;
use cartdb_datanode::group_commit::{ApplyRequest, GroupCommit};
use cartdb_datanode::store::CartStore;

mod setup;

const WRITERS: u64 = 64;
/// The catalog's size in the cluster benchmark.
const PRODUCTS: u64 = 26;

fn main() -> anyhow::Result<()> {
    let setting = |name: &str, default: u64| -> anyhow::Result<u64> {
        std::env::var(name).map_or(Ok(default), |v| {
            v.parse()
                .map_err(|e| anyhow::anyhow!("{name}={v:?} is not a count: {e}"))
        })
    };
    let total = setting("BENCH_OPS", 1_500_000)?;
    let report = setting("BENCH_REPORT", 100_000)?.max(1);
    let setup::BenchStore { dir, store, writer } = setup::open()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let done = Arc::new(AtomicU64::new(0));
    println!("      ops   ops/s  CPU ms/1k ops  disk MiB  RSS MiB");
    runtime.block_on(async {
        let workers: Vec<_> = (0..WRITERS)
            .map(|w| tokio::spawn(work(writer.clone(), store.clone(), w, done.clone(), total)))
            .collect();
        let reporter = tokio::spawn(progress(done.clone(), total, report, dir.path().into()));
        for worker in workers {
            worker.await??;
        }
        reporter.await??;
        anyhow::Ok(())
    })?;
    runtime.block_on(writer.shutdown())?;
    Ok(())
}

/// Prints a line each time `report` more operations are done.
async fn progress(
    done: Arc<AtomicU64>,
    total: u64,
    report: u64,
    dir: std::path::PathBuf,
) -> anyhow::Result<()> {
    let mut next = report;
    let (mut at, mut cpu) = (Instant::now(), cpu_ms());
    while next <= total {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        if done.load(Ordering::Relaxed) < next {
            continue;
        }
        let (now, cpu_now) = (Instant::now(), cpu_ms());
        #[expect(clippy::cast_precision_loss, reason = "approximate rates for a report")]
        let (rate, per_k) = (
            report as f64 / (now - at).as_secs_f64(),
            (cpu_now - cpu) as f64 * 1000.0 / report as f64,
        );
        println!(
            "{next:>9}  {rate:>6.0}  {per_k:>13.1}  {:>8}  {:>7}",
            disk_bytes(&dir) >> 20,
            rss_kib() / 1024
        );
        (at, cpu, next) = (now, cpu_now, next + report);
    }
    Ok(())
}

/// One writer's share of the mix until `total` operations are done between all of them.
async fn work(
    writer: Arc<GroupCommit>,
    store: Arc<CartStore>,
    w: u64,
    done: Arc<AtomicU64>,
    total: u64,
) -> anyhow::Result<()> {
    let mut in_carts: Vec<ItemKey> = Vec::new();
    let mut rng = 0x9e37_79b9_7f4a_7c15 ^ w;
    let mut n = 0u64;
    while done.fetch_add(1, Ordering::Relaxed) < total {
        n += 1;
        rng = xorshift(rng);
        let (meta, id, version) = (
            ItemMeta {
                price: 42,
                category: format!("cat-{}", rng % 7),
            },
            OpId((u128::from(w) << 64) | u128::from(n)),
            Version { hlc: n, gateway: 1 },
        );
        match rng % 4 {
            0 | 1 => {
                let key = ItemKey {
                    user: format!("bench-{w}-{}", rng % 1_000_000_000),
                    product: format!("product-{}", (rng >> 32) % PRODUCTS),
                };
                apply(&writer, &key, meta, id, version, OpKind::Add).await?;
                in_carts.push(key);
            }
            2 if !in_carts.is_empty() => {
                let pick = usize::try_from((rng >> 16) % in_carts.len() as u64)?;
                let key = in_carts.swap_remove(pick);
                apply(&writer, &key, meta, id, version, OpKind::Delete).await?;
            }
            _ => {
                let user = format!("bench-{}-{}", rng % WRITERS, (rng >> 8) % 1_000_000_000);
                let store = store.clone();
                tokio::task::spawn_blocking(move || store.read_user(&user, None)).await??;
            }
        }
    }
    Ok(())
}

async fn apply(
    writer: &GroupCommit,
    key: &ItemKey,
    meta: ItemMeta,
    id: OpId,
    version: Version,
    kind: OpKind,
) -> anyhow::Result<()> {
    let reply = writer
        .apply(ApplyRequest {
            key: key.clone(),
            meta,
            op: Operation { id, kind, version },
            require_in_cart: kind == OpKind::Delete,
            restamped: false,
        })
        .await;
    anyhow::ensure!(
        matches!(reply, DataResponse::Applied { .. }),
        "unexpected {reply:?}"
    );
    Ok(())
}

fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^ (x << 17)
}

/// This process's user and system CPU time so far, from /proc/self/stat (clock ticks of
/// 10 ms on Linux).
fn cpu_ms() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name (which may hold spaces) start after its ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) * 10
}

fn disk_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .map(|e| match e.metadata() {
                Ok(m) if m.is_dir() => disk_bytes(&e.path()),
                Ok(m) => m.len(),
                Err(_) => 0,
            })
            .sum()
    })
}

/// This process's resident memory from /proc/self/status, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

//! Group-commit throughput and latency at 1, 16 and 64 concurrent writers, on a real fjall
//! store in a fresh directory per run, plus the process's peak RSS.
//!
//! `cargo bench -p cartdb-datanode --bench group_commit` (set `BENCH_SECS` to change the
//! length of each run; default 5). The store directory is made under `target/` so the fsyncs
//! hit the same disk as a real node (not a tmpfs).

use std::sync::Arc;
use std::time::{Duration, Instant};

use cartdb_core::cart::{ItemKey, ItemMeta, OpId, OpKind, Operation};
use cartdb_core::version::Version;
use cartdb_core::wire::DataResponse;
use cartdb_datanode::group_commit::{ApplyRequest, GroupCommit};
use cartdb_datanode::store::CartStore;
use hdrhistogram::Histogram;

mod setup;

/// Writer counts to run, unless `BENCH_WRITERS` lists others (comma-separated).
const WRITER_COUNTS: [u64; 3] = [1, 16, 64];
const USERS_PER_WRITER: u64 = 1_000;
const PRODUCTS: u64 = 20;

fn main() -> anyhow::Result<()> {
    let secs: u64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let counts: Vec<u64> = match std::env::var("BENCH_WRITERS") {
        Ok(list) => list.split(',').map(str::parse).collect::<Result<_, _>>()?,
        Err(_) => WRITER_COUNTS.to_vec(),
    };
    println!("writers  ops/s     p50(ms)  p99(ms)  max(ms)  avg batch  fsyncs/s");
    for (i, &writers) in counts.iter().enumerate() {
        let then_read = i + 1 == counts.len();
        runtime.block_on(run(writers, Duration::from_secs(secs), then_read))?;
    }
    println!("peak RSS: {} MiB", rss_kib("VmHWM:") / 1024);
    Ok(())
}

async fn run(writers: u64, length: Duration, then_read: bool) -> anyhow::Result<()> {
    let setup::BenchStore {
        dir: _dir,
        store,
        writer,
    } = setup::open()?;
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| tokio::spawn(write_for(writer.clone(), w, started + length)))
        .collect();
    let mut latency = Histogram::<u64>::new(3)?;
    for task in tasks {
        latency.add(task.await??)?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let counters = writer.counters();
    writer.shutdown().await?;
    #[expect(clippy::cast_precision_loss, reason = "approximate rates for a report")]
    let (ops, batch, fsyncs) = (
        latency.len() as f64 / elapsed,
        counters.requests as f64 / counters.batches.max(1) as f64,
        counters.commits as f64 / elapsed,
    );
    let ms = |q: f64| Duration::from_micros(latency.value_at_quantile(q)).as_secs_f64() * 1e3;
    println!(
        "{writers:>7}  {ops:>8.0}  {:>7.2}  {:>7.2}  {:>7.2}  {batch:>9.1}  {fsyncs:>8.0}",
        ms(0.5),
        ms(0.99),
        ms(1.0)
    );
    println!("         RSS now {} MiB", rss_kib("VmRSS:") / 1024);
    if then_read {
        read_for(&store, writers, length).await?;
    }
    Ok(())
}

/// Reads random users' carts from 16 blocking tasks for `length`, and reports the rate.
async fn read_for(store: &Arc<CartStore>, writers: u64, length: Duration) -> anyhow::Result<()> {
    let until = Instant::now() + length;
    let readers: Vec<_> = (0..16u64)
        .map(|r| {
            let store = store.clone();
            tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
                let mut reads = 0u64;
                while Instant::now() < until {
                    let user = format!(
                        "user-{}-{}",
                        (reads + r) % writers,
                        (reads * 7919) % USERS_PER_WRITER
                    );
                    store.read_user(&user, None)?;
                    reads += 1;
                }
                Ok(reads)
            })
        })
        .collect();
    let mut reads = 0;
    for reader in readers {
        reads += reader.await??;
    }
    #[expect(clippy::cast_precision_loss, reason = "approximate rates for a report")]
    let rate = reads as f64 / length.as_secs_f64();
    println!("read_user from 16 blocking readers: {rate:.0} reads/s");
    Ok(())
}

/// One writer: adds to its own users' items until `until`, recording each latency in us.
async fn write_for(
    writer: Arc<GroupCommit>,
    w: u64,
    until: Instant,
) -> anyhow::Result<Histogram<u64>> {
    let mut latency = Histogram::<u64>::new(3)?;
    let mut n = 0u64;
    while Instant::now() < until {
        let started = Instant::now();
        let reply = writer.apply(request(w, n)).await;
        anyhow::ensure!(
            matches!(reply, DataResponse::Applied { .. }),
            "unexpected {reply:?}"
        );
        latency.record(u64::try_from(started.elapsed().as_micros())?)?;
        n += 1;
    }
    Ok(latency)
}

fn request(w: u64, n: u64) -> ApplyRequest {
    ApplyRequest {
        key: ItemKey {
            user: format!("user-{w}-{}", n % USERS_PER_WRITER),
            product: format!("product-{}", n % PRODUCTS),
        },
        meta: ItemMeta {
            price: 42,
            category: format!("cat-{}", n % 7),
        },
        op: Operation {
            id: OpId((u128::from(w) << 64) | u128::from(n)),
            kind: OpKind::Add,
            version: Version {
                hlc: n + 1,
                gateway: 1,
            },
        },
        require_in_cart: false,
        restamped: false,
    }
}

/// A memory figure of this process from /proc/self/status (`VmHWM:` is the peak RSS), in KiB.
fn rss_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

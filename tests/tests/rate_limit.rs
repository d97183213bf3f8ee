//! The per-shopper request rate limit at the API server (`--shopper-rate-limit`, off by
//! default): a shopper over it is answered 429 naming the field, without the request
//! reaching a gateway, and other shoppers are not held back.

use anyhow::{Result, ensure};
use cartdb_tests::{Cluster, ClusterOptions};

/// With a limit of 5 requests a second, 20 cart reads of one shopper sent at once get
/// at most 5 plus what the bucket refills meanwhile; the refusals are 429 naming `userid`,
/// and another shopper is served at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shopper_over_the_rate_limit_gets_429_and_others_are_served() -> Result<()> {
    let mut options = ClusterOptions::default();
    options
        .api_args
        .extend(["--shopper-rate-limit".to_owned(), "5".to_owned()]);
    let cluster = Cluster::start(options).await?;
    let api = cluster.client();
    let started = std::time::Instant::now();
    let (mut served, mut refused) = (0u32, 0u32);
    // Sent at once, so that the bucket has no time to refill between them.
    let mut reads = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let api = api.clone();
        reads.spawn(async move { api.list_all("eager").await });
    }
    while let Some(reply) = reads.join_next().await {
        let reply = reply??;
        match reply.status {
            200 => served += 1,
            429 => {
                refused += 1;
                let error = reply.error().unwrap_or_default();
                ensure!(error.contains("userid"), "{error}");
                ensure!(error.contains("5 requests a second"), "{error}");
            }
            other => anyhow::bail!("list_all answered {other}: {reply:?}"),
        }
    }
    // The bucket holds 5 and refills 5 a second: whatever the 20 reads took, no more
    // than 5 + 5 x seconds were served.
    let allowed = 5.0 + 5.0 * started.elapsed().as_secs_f64();
    ensure!(
        f64::from(served) <= allowed.floor(),
        "{served} served, {refused} refused in {:?}",
        started.elapsed()
    );
    ensure!(refused > 0, "nothing was refused");
    let other = api.insert("patient", "pork").await?;
    ensure!(other.status == 200, "another shopper: {other:?}");
    Ok(())
}

//! One rule for identifiers, everywhere: what the API accepts, every store it reaches
//! accepts too (the ids that ZooKeeper's path rules once refused after the replicas had the
//! operation now round-trip), and what it refuses gets a 400 naming the field.

use anyhow::Result;
use cartdb_tests::{Cluster, ClusterOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_ids_round_trip_and_refused_ones_name_the_field() -> Result<()> {
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    let api = cluster.client();
    // ".", "..", private-use and specials code points: ZooKeeper refused these as path
    // components when the directory lived there. Also the longest id accepted.
    let longest = "u".repeat(256);
    for user in [
        ".",
        "..",
        "\u{E000}",
        "a\u{F8FF}b",
        "\u{FFF0}",
        "\u{FFFF}",
        &longest,
    ] {
        let reply = api.insert(user, "pork").await?;
        assert_eq!(reply.status, 200, "insert for {user:?}: {reply:?}");
        let cart = api.list_all(user).await?;
        assert_eq!(cart.status, 200, "list_all for {user:?}: {cart:?}");
        assert_eq!(cart.qty_of("pork"), 1, "{user:?}: {cart:?}");
    }
    let too_long = "u".repeat(257);
    for (user, problem) in [
        ("", "empty"),
        ("a/b", "'/'"),
        ("a\u{0}b", "control"),
        ("tab\there", "control"),
        (too_long.as_str(), "256"),
    ] {
        let reply = api.insert(user, "pork").await?;
        assert_eq!(reply.status, 400, "insert for {user:?}: {reply:?}");
        let error = reply.error().unwrap_or_default();
        assert!(error.contains("userid"), "{user:?}: {error}");
        assert!(error.contains(problem), "{user:?}: {error}");
    }
    Ok(())
}

//! One rule for identifiers, everywhere: what the API accepts, every store it reaches
//! accepts too (the ids that ZooKeeper's path rules once refused after the replicas had the
//! operation now round-trip), and what it refuses gets a 400 naming the field.

use std::time::Duration;

use anyhow::Result;
use cartdb_core::cart::MAX_PRODUCT_ID_BYTES;
use cartdb_tests::{Cluster, ClusterOptions, wait_until};
use serde_json::json;

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

/// The longest product id the catalog accepts can be inserted and listed: its cart-index
/// entry (`@` + product id) fits the stores' limit too. One byte more is refused when the
/// product is added, with a 400 naming the field, so no insert can fail after the item is
/// durable (a 256-byte product id was accepted, and every insert of it answered 503).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_longest_product_id_inserts_and_lists() -> Result<()> {
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    let api = cluster.client();
    let longest = "p".repeat(MAX_PRODUCT_ID_BYTES);
    let product = json!({"productid": longest, "name": "long-id", "category": "9", "price": 3});
    api.add_product(&product).await?.expect_status(200);
    // The gateway that did not write the catalog learns the product through its watch a
    // moment later; until then an insert through it is a 404 that writes nothing.
    wait_until("the long id inserted", Duration::from_secs(15), || async {
        let reply = api.insert("long-id-user", "long-id").await?;
        match reply.status {
            200 => Ok(Some(())),
            404 => Ok(None),
            _ => anyhow::bail!("insert: {reply:?}"),
        }
    })
    .await?;
    let cart = api.list_all("long-id-user").await?;
    assert_eq!(cart.qty_of("long-id"), 1, "{cart:?}");
    assert_eq!(api.delete("long-id-user", "long-id").await?.status, 200);

    let one_more = format!("{longest}p");
    let product = json!({"productid": one_more, "name": "longer-id", "category": "9", "price": 3});
    let reply = api.add_product(&product).await?;
    assert_eq!(reply.status, 400, "{reply:?}");
    let error = reply.error().unwrap_or_default();
    assert!(error.contains("productid"), "{error}");
    assert!(error.contains(&MAX_PRODUCT_ID_BYTES.to_string()), "{error}");
    Ok(())
}

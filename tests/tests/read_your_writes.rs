//! Read-your-writes across gateways: once an insert or delete is acknowledged through one
//! gateway, a `list_all` through the other reflects it, at once and whatever any cache holds.
//! Each gateway is driven directly over its RPC (the API server would pick one at random).

use anyhow::{Context, Result, ensure};
use cartdb_tests::{Cluster, ClusterOptions, GatewayClient};

/// Users whose first items are written through one gateway and read through the other.
const USERS: usize = 300;

fn qty(cart: &[(String, u64)], name: &str) -> u64 {
    cart.iter()
        .find(|(n, _)| n == name)
        .map_or(0, |(_, qty)| *qty)
}

/// For many users' first items, alternating the direction: an insert through A is listed by
/// an immediate `list_all` through B; a second item through A likewise; a delete through B
/// is reflected by an immediate `list_all` through A. A gateway that answered from a lagging
/// cache of which users hold which items would miss a first item.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_one_gateway_are_read_at_once_through_the_other() -> Result<()> {
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    let gateways = cluster.gateway_clients().await?;
    let clients: Vec<&GatewayClient> = gateways.values().collect();
    ensure!(clients.len() == 2, "expected two gateways");
    for i in 0..USERS {
        let user = format!("ryw-{i}");
        let (writer, reader) = if i % 2 == 0 {
            (clients[0], clients[1])
        } else {
            (clients[1], clients[0])
        };
        writer.insert(&user, "pork").await?;
        let cart = reader.cart(&user).await.context("first read")?;
        assert_eq!(qty(&cart, "pork"), 1, "{user}'s first item: {cart:?}");
        writer.insert(&user, "soap").await?;
        let cart = reader.cart(&user).await.context("second read")?;
        assert_eq!(
            (qty(&cart, "pork"), qty(&cart, "soap")),
            (1, 1),
            "{user}'s second item: {cart:?}"
        );
        reader.delete(&user, "pork").await?;
        let cart = writer.cart(&user).await.context("read after the delete")?;
        assert_eq!(cart, [("soap".to_owned(), 1)], "{user} after the delete");
    }
    Ok(())
}

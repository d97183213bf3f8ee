//! The gateway service end to end, in process: the real CRUSH policy component, six data
//! nodes (the real service, in-process) over real sockets, and an in-memory coordination service.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use cartdb_core::cart::{DeviceId, ItemKey, Product};
use cartdb_core::catalog::Catalog;
use cartdb_core::config::Replication;
use cartdb_core::coord::policy_store::{PolicyKind, StoredPolicy};
use cartdb_core::coord::{ClusterMap, CoordError, Membership, Placement};
use cartdb_core::placement_key::index_entry;
use cartdb_core::wire::{GatewayFailure, GatewayRequest, GatewayResponse};
use cartdb_gateway::cluster_view::{ClusterView, Topology};
use cartdb_gateway::coordination::Coordination;
use cartdb_gateway::merger::Merger;
use cartdb_gateway::placement::EpochPlacement;
use cartdb_gateway::policy::{
    MergePolicy, PlacementPolicy, PolicyEngine, PolicyLibrary, PolicyLimits,
};
use cartdb_gateway::replicas::Replicas;
use cartdb_gateway::{GatewayService, ServiceParts};
use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::watch;

use common::{RunningNode, eventually, start_nodes};

/// Coordination kept in memory: edits the catalog and counts the map changes asked for.
struct FakeCoordination {
    map_changes: AtomicUsize,
    catalog: watch::Sender<Arc<Catalog>>,
}

impl Coordination for FakeCoordination {
    fn is_connected(&self) -> bool {
        true
    }

    fn set_placement(
        &self,
        _expected_epoch: u64,
        _placement: Placement,
    ) -> BoxFuture<'_, Result<bool, CoordError>> {
        self.map_changes.fetch_add(1, Ordering::SeqCst);
        async { Ok(false) }.boxed()
    }

    fn upsert_product(&self, product: Product) -> BoxFuture<'_, Result<Arc<Catalog>, CoordError>> {
        let mut catalog = (**self.catalog.borrow()).clone();
        let result = catalog
            .upsert(product)
            .map(|()| {
                let catalog = Arc::new(catalog);
                self.catalog.send_replace(catalog.clone());
                catalog
            })
            .map_err(CoordError::InvalidCatalog);
        async move { result }.boxed()
    }

    fn store_policy<'a>(
        &'a self,
        _kind: PolicyKind,
        _name: &'a str,
        _bytes: &'a [u8],
        _deployed_by: &'a str,
    ) -> BoxFuture<'a, Result<String, CoordError>> {
        async { Err(CoordError::ShuttingDown) }.boxed()
    }

    fn fetch_policy<'a>(
        &'a self,
        _sha256: &'a str,
    ) -> BoxFuture<'a, Result<StoredPolicy, CoordError>> {
        async { Err(CoordError::ShuttingDown) }.boxed()
    }

    fn prune_policies<'a>(
        &'a self,
        _keep: &'a [String],
    ) -> BoxFuture<'a, Result<usize, CoordError>> {
        async { Ok(0) }.boxed()
    }
}

/// The reference CRUSH policy, compiled once for all tests of this file.
static POLICY: LazyLock<PlacementPolicy> = LazyLock::new(|| {
    let engine = PolicyEngine::new().unwrap();
    PlacementPolicy::load(&engine, Path::new(cartdb_policies::CRUSH_POLICY_WASM)).unwrap()
});

struct TestGateway {
    service: Arc<GatewayService>,
    topology: Arc<ClusterView>,
    coordination: Arc<FakeCoordination>,
    nodes: BTreeMap<DeviceId, RunningNode>,
}

fn config_file(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../config")
            .join(name),
    )
    .unwrap()
}

impl TestGateway {
    async fn start() -> TestGateway {
        Self::start_with(None).await
    }

    /// A gateway merging with `merge_policy` (`None`: the built-in merge).
    async fn start_with(merge_policy: Option<Arc<MergePolicy>>) -> TestGateway {
        let policy = POLICY.clone();
        let map_json = String::from_utf8(config_file("crush-map.json")).unwrap();
        let doc = format!(
            r#"{{"format": 4, "map": {map_json}, "pool": {{"id": 1, "pg_num": 64, "size": 3}}, "policies": {{"placement": {{"sha256": "{}", "name": "crush"}}}}}}"#,
            policy.sha256()
        );
        let map = Arc::new(ClusterMap::parse(doc.as_bytes(), 1).unwrap());
        let (nodes, addresses) = start_nodes(6, Some(map.clone())).await;
        let placement = EpochPlacement::build(&policy, &map, Some("data"), None).unwrap();
        let members = Membership {
            devices: addresses.clone(),
            gateways: BTreeMap::from([(1, "127.0.0.1:7100".to_owned())]),
            ..Membership::default()
        };
        let replicas = Arc::new(Replicas::new(common::cluster_key(), Duration::from_secs(1)));
        replicas.refresh(&addresses);
        let catalog = Catalog::from_json(&config_file("catalog.json")).unwrap();
        let (catalog_tx, catalog_rx) = watch::channel(Arc::new(catalog));
        let coordination = Arc::new(FakeCoordination {
            map_changes: AtomicUsize::new(0),
            catalog: catalog_tx,
        });
        let topology = Arc::new(ClusterView::new(
            Topology::new(map, Arc::new(members), Arc::new(placement)),
            2,
        ));
        let service = GatewayService::new(ServiceParts {
            view: topology.clone(),
            replicas,
            coordination: coordination.clone(),
            catalog: catalog_rx,
            gateway_id: 1,
            replication: Replication::new(3, 2, 2).unwrap(),
            request_timeout: Duration::from_secs(2),
            library: Arc::new(PolicyLibrary::new(
                POLICY.engine().clone(),
                coordination.clone(),
                POLICY.clone(),
                merge_policy.clone(),
            )),
            merger: Arc::new(Merger::new(merge_policy)),
            rule: Some("data".to_owned()),
            compaction: cartdb_gateway::compaction::CompactionSettings {
                grace: Duration::from_secs(60),
                min_ops: 32,
            },
            clock_offset_ms: 0,
        });
        TestGateway {
            service,
            topology,
            coordination,
            nodes,
        }
    }

    /// The replicas of `user`'s item with product id `productid`.
    fn replicas_of(&self, user: &str, productid: &str) -> Vec<DeviceId> {
        let key = ItemKey {
            user: user.into(),
            product: productid.into(),
        };
        self.topology.current().up_set(&key).to_vec()
    }

    /// Waits until every replica of `user`'s item with product id `productid` holds `qty`:
    /// the gateway answers at W acknowledgements, possibly before the last replica has it.
    async fn until_replicated(&self, user: &str, productid: &str, qty: u64) {
        let placed = self.replicas_of(user, productid);
        let what =
            format!("every replica {placed:?} of {user}'s product {productid} to hold {qty}");
        eventually(&what, || {
            placed
                .iter()
                .all(|device| self.nodes[device].node.qty(user, productid) == qty)
        })
        .await;
    }

    async fn insert(&self, user: &str, item: &str, key: Option<&str>) -> GatewayResponse {
        self.service
            .handle(GatewayRequest::Insert {
                user: user.into(),
                item_name: item.into(),
                idempotency_key: key.map(str::to_owned),
            })
            .await
    }

    async fn delete(&self, user: &str, item: &str) -> GatewayResponse {
        self.service
            .handle(GatewayRequest::Delete {
                user: user.into(),
                item_name: item.into(),
                idempotency_key: None,
            })
            .await
    }

    /// The cart as (name, qty) pairs.
    async fn cart(&self, user: &str) -> Vec<(String, u64)> {
        match self
            .service
            .handle(GatewayRequest::ListAll { user: user.into() })
            .await
        {
            GatewayResponse::Cart { items } => items.into_iter().map(|l| (l.name, l.qty)).collect(),
            other => panic!("expected a cart, got {other:?}"),
        }
    }

    async fn list_category(&self, category: &str) -> GatewayResponse {
        self.category_page(category, None, 1000).await
    }

    async fn category_page(
        &self,
        category: &str,
        after: Option<&str>,
        limit: u32,
    ) -> GatewayResponse {
        self.service
            .handle(GatewayRequest::ListCategory {
                category: category.into(),
                after: after.map(str::to_owned),
                limit,
            })
            .await
    }
}

fn failure(response: GatewayResponse) -> GatewayFailure {
    match response {
        GatewayResponse::Failed(failure) => failure,
        other => panic!("expected a failure, got {other:?}"),
    }
}

/// Inserts and deletes change the quantity one at a time, and the cart shows the result
/// with the catalog's facts.
#[tokio::test]
async fn inserts_and_deletes_update_the_cart() {
    let gw = TestGateway::start().await;
    assert_eq!(
        gw.insert("user1", "pork", None).await,
        GatewayResponse::Updated { qty: 1 }
    );
    assert_eq!(
        gw.insert("user1", "pork", None).await,
        GatewayResponse::Updated { qty: 2 }
    );
    assert_eq!(
        gw.insert("user1", "soap", None).await,
        GatewayResponse::Updated { qty: 1 }
    );
    assert_eq!(
        gw.delete("user1", "pork").await,
        GatewayResponse::Updated { qty: 1 }
    );
    assert_eq!(
        gw.cart("user1").await,
        [("pork".to_owned(), 1), ("soap".to_owned(), 1)]
    );
    let GatewayResponse::Cart { items } = gw
        .service
        .handle(GatewayRequest::ListAll {
            user: "user1".into(),
        })
        .await
    else {
        panic!("expected a cart");
    };
    assert_eq!(
        (
            items[0].productid.as_str(),
            items[0].price,
            items[0].category.as_str()
        ),
        ("1", 61, "1")
    );
    assert!(gw.cart("nobody").await.is_empty());
}

/// An item is written to the up set of its placement group (keyed by user and product id),
/// and its cart-index entry to the up set of the user's index PG; no coordination call is
/// made for either.
#[tokio::test]
async fn items_and_their_index_entries_go_to_their_placement_groups() {
    let gw = TestGateway::start().await;
    let placed = gw.replicas_of("user1", "1");
    assert_eq!(placed.len(), 3);
    let index = index_entry("1");
    let indexed = gw.replicas_of("user1", &index);
    assert_eq!(indexed, gw.replicas_of("user1", &index_entry("2")));
    gw.insert("user1", "pork", None).await;
    gw.until_replicated("user1", "1", 1).await;
    gw.until_replicated("user1", &index, 1).await;
    for (device, node) in &gw.nodes {
        let expected = u64::from(placed.contains(device));
        assert_eq!(node.node.qty("user1", "1"), expected, "device {device}");
        let expected = u64::from(indexed.contains(device));
        assert_eq!(node.node.qty("user1", &index), expected, "device {device}");
    }
    // A second insert of the item is a duplicate on the index replicas.
    gw.insert("user1", "pork", None).await;
    gw.until_replicated("user1", "1", 2).await;
    for device in &indexed {
        assert_eq!(gw.nodes[device].node.qty("user1", &index), 1);
    }
    assert_eq!(gw.coordination.map_changes.load(Ordering::SeqCst), 0);
}

/// A retry with the same idempotency key is applied once.
#[tokio::test]
async fn a_retried_insert_is_applied_once() {
    let gw = TestGateway::start().await;
    assert_eq!(
        gw.insert("user1", "pork", Some("k-1")).await,
        GatewayResponse::Updated { qty: 1 }
    );
    assert_eq!(
        gw.insert("user1", "pork", Some("k-1")).await,
        GatewayResponse::Updated { qty: 1 }
    );
    assert_eq!(
        gw.insert("user1", "pork", Some("k-2")).await,
        GatewayResponse::Updated { qty: 2 }
    );
}

/// Deleting what is not in the cart is refused and changes nothing.
#[tokio::test]
async fn deleting_an_item_not_in_the_cart_is_refused() {
    let gw = TestGateway::start().await;
    let refused = failure(gw.delete("user1", "pork").await);
    assert_eq!(
        refused,
        GatewayFailure::NotInCart {
            name: "pork".into()
        }
    );
    gw.insert("user1", "pork", None).await;
    gw.delete("user1", "pork").await;
    let refused = failure(gw.delete("user1", "pork").await);
    assert_eq!(refused.to_string(), "product is not available in cart");
    assert!(gw.cart("user1").await.is_empty());
}

/// Unknown products and bad identifiers are refused before any replica is asked.
#[tokio::test]
async fn bad_requests_are_refused() {
    let gw = TestGateway::start().await;
    let unknown = failure(gw.insert("user1", "caviar", None).await);
    assert_eq!(unknown.to_string(), "product not available in inventory");
    let invalid = failure(gw.insert("a/b", "pork", None).await);
    assert!(
        matches!(invalid, GatewayFailure::InvalidInput { ref field, .. } if field == "userid"),
        "{invalid:?}"
    );
    let invalid = failure(gw.insert("user1", "pork", Some("")).await);
    assert!(
        matches!(invalid, GatewayFailure::InvalidInput { ref field, .. } if field == "idempotency_key")
    );
    for node in gw.nodes.values() {
        assert_eq!(
            node.node.applies.load(std::sync::atomic::Ordering::SeqCst),
            0
        );
    }
}

/// With one replica of an item down, writes and reads still reach their quorums.
#[tokio::test]
async fn one_replica_down_is_tolerated() {
    let gw = TestGateway::start().await;
    let placed = gw.replicas_of("user1", "1");
    gw.nodes[&placed[0]].stop_and_wait().await;
    assert_eq!(
        gw.insert("user1", "pork", None).await,
        GatewayResponse::Updated { qty: 1 }
    );
    assert_eq!(gw.cart("user1").await, [("pork".to_owned(), 1)]);
}

/// With two of an item's three replicas down, a write fails with a quorum error naming them.
#[tokio::test]
async fn two_replicas_down_fail_the_write() {
    let gw = TestGateway::start().await;
    let placed = gw.replicas_of("user1", "1");
    gw.nodes[&placed[1]].stop_and_wait().await;
    gw.nodes[&placed[2]].stop_and_wait().await;
    let GatewayFailure::QuorumNotReached {
        operation, errors, ..
    } = failure(gw.insert("user1", "pork", None).await)
    else {
        panic!("expected a quorum failure");
    };
    assert_eq!(operation, "insert");
    for device in &placed[1..] {
        assert!(errors.contains(&format!("device {device}:")), "{errors}");
    }
}

/// A category lists every user holding one of its products, once, sorted.
#[tokio::test]
async fn categories_list_their_users() {
    let gw = TestGateway::start().await;
    gw.insert("user2", "pork", None).await;
    gw.insert("user1", "soap", None).await;
    gw.insert("user1", "pork", None).await;
    gw.until_replicated("user2", "1", 1).await;
    gw.until_replicated("user1", "2", 1).await;
    gw.until_replicated("user1", "1", 1).await;
    assert_eq!(
        gw.list_category("1").await,
        GatewayResponse::CategoryUsers {
            users: vec!["user1".into(), "user2".into()],
            next: None,
        }
    );
}

/// A category's users come a page at a time, in order, each exactly once.
#[tokio::test]
async fn categories_list_their_users_a_page_at_a_time() {
    let gw = TestGateway::start().await;
    let users: Vec<String> = (0..12).map(|n| format!("shopper{n:02}")).collect();
    for user in &users {
        gw.insert(user, "pork", None).await;
    }
    for user in &users {
        gw.until_replicated(user, "1", 1).await;
    }
    let mut listed = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let GatewayResponse::CategoryUsers { users, next } =
            gw.category_page("1", after.as_deref(), 5).await
        else {
            panic!("expected a page of users");
        };
        assert!(users.len() <= 5, "{users:?}");
        listed.extend(users);
        pages += 1;
        match next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(listed, users);
    assert!(pages >= 3, "{pages} pages of at most 5 for 12 users");
}

/// A new product can be sold at once; a product that clashes with another's name is
/// refused as bad input.
#[tokio::test]
async fn products_can_be_added() {
    let gw = TestGateway::start().await;
    let product = Product {
        productid: "900".into(),
        name: "truffle".into(),
        category: "9".into(),
        price: 500,
    };
    let response = gw
        .service
        .handle(GatewayRequest::UpsertProduct { product })
        .await;
    let GatewayResponse::Products { products } = response else {
        panic!("expected the catalog, got {response:?}");
    };
    assert!(products.iter().any(|p| p.name == "truffle"));
    assert_eq!(
        gw.insert("user1", "truffle", None).await,
        GatewayResponse::Updated { qty: 1 }
    );

    let clash = Product {
        productid: "901".into(),
        name: "pork".into(),
        category: "1".into(),
        price: 1,
    };
    let refused = failure(
        gw.service
            .handle(GatewayRequest::UpsertProduct { product: clash })
            .await,
    );
    assert!(
        matches!(refused, GatewayFailure::InvalidInput { .. }),
        "{refused:?}"
    );
}

/// The cluster status lists the map's devices, the epoch and the policy.
#[tokio::test]
async fn the_cluster_status_describes_the_map() {
    let gw = TestGateway::start().await;
    let GatewayResponse::Cluster(status) = gw.service.handle(GatewayRequest::Cluster).await else {
        panic!("expected the cluster status");
    };
    assert_eq!(status.devices.len(), 6);
    assert!(status.devices.iter().all(|d| d.up && d.reweight == 0x10000));
    assert_eq!(status.map_epoch, 1);
    assert_eq!(status.placement_policy.sha256.len(), 64);
    assert_eq!(status.replication.write_quorum, 2);
    assert_eq!(status.gateways.len(), 1);
}

/// A slow replica holds up neither writes nor reads once their quorums are reached.
#[tokio::test]
async fn a_slow_replica_does_not_hold_up_requests() {
    let gw = TestGateway::start().await;
    gw.insert("user1", "pork", None).await;
    let placed = gw.replicas_of("user1", "1");
    gw.nodes[&placed[0]]
        .node
        .set_delay(Duration::from_millis(1500));
    let started = tokio::time::Instant::now();
    assert_eq!(
        gw.insert("user1", "pork", None).await,
        GatewayResponse::Updated { qty: 2 }
    );
    assert_eq!(gw.cart("user1").await, [("pork".to_owned(), 2)]);
    assert_eq!(
        gw.list_category("1").await,
        GatewayResponse::CategoryUsers {
            users: vec!["user1".into()],
            next: None,
        }
    );
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "{:?}",
        started.elapsed()
    );
}

/// Median and maximum time of `GET /api/products`-like requests (`Products`, answered from
/// memory) made while `reads` divergent carts are read and merged on the same runtime.
async fn products_latency_during_merges(
    gw: &TestGateway,
    users: &[String],
) -> (Duration, Duration) {
    let reads = async {
        for user in users {
            let _ = gw.cart(user).await;
        }
    };
    let probes = async {
        let mut took = Vec::new();
        // Each probe is due 10 ms after the last: what it measures beyond those 10 ms is
        // the time the runtime thread was not free to wake it and answer it.
        const PAUSE: Duration = Duration::from_millis(10);
        for _ in 0..20 {
            let started = std::time::Instant::now();
            tokio::time::sleep(PAUSE).await;
            let answer = gw.service.handle(GatewayRequest::Products).await;
            took.push(started.elapsed().saturating_sub(PAUSE));
            assert!(
                matches!(answer, GatewayResponse::Products { .. }),
                "{answer:?}"
            );
        }
        took.sort();
        (took[took.len() / 2], took[took.len() - 1])
    };
    let ((), latency) = tokio::join!(reads, probes);
    latency
}

/// Users whose pork went to two of its three replicas only (device 1 refused it), so that
/// reading their carts needs a merge.
async fn divergent_users(gw: &TestGateway, prefix: &str) -> Vec<String> {
    gw.nodes[&1].node.set_failing(true);
    let mut users = Vec::new();
    for i in 0..60 {
        let user = format!("{prefix}-{i}");
        if gw.replicas_of(&user, "1").contains(&1) {
            assert_eq!(
                gw.insert(&user, "pork", None).await,
                GatewayResponse::Updated { qty: 1 }
            );
            users.push(user);
        }
    }
    gw.nodes[&1].node.set_failing(false);
    assert!(users.len() > 10, "{users:?}");
    users
}

/// A merge policy whose every call is slow (it spins until its deadline) does not delay
/// unrelated requests: merges run off the gateway's runtime thread. Compared, in the same
/// test, with the fast reference merge policy. (Before merges moved to a blocking thread,
/// each `Products` request waited behind whole merges: a median of the deadline.)
#[tokio::test]
async fn a_slow_merge_policy_does_not_delay_unrelated_requests() {
    let engine = PolicyEngine::with_limits(PolicyLimits {
        call_timeout: Duration::from_millis(200),
        call_fuel: u64::MAX / 2,
        max_instances: 8,
        ..PolicyLimits::default()
    })
    .unwrap();
    let load = |path: &str| Arc::new(MergePolicy::load(&engine, Path::new(path)).unwrap());
    let fast = TestGateway::start_with(Some(load(cartdb_policies::MERGE_POLICY_WASM))).await;
    let users = divergent_users(&fast, "fast").await;
    let (fast_median, _) = products_latency_during_merges(&fast, &users).await;
    let spinning = load(cartdb_policies::test_guests::MERGE_SPIN_WASM);
    let slow = TestGateway::start_with(Some(spinning.clone())).await;
    let users = divergent_users(&slow, "slow").await;
    let (slow_median, slow_max) = products_latency_during_merges(&slow, &users).await;
    assert!(
        slow_median <= fast_median + Duration::from_millis(50),
        "slow policy: median {slow_median:?} (max {slow_max:?}), fast policy: {fast_median:?}"
    );
    // The slow merges did happen, and fell back to the built-in merge.
    match slow.service.handle(GatewayRequest::Cluster).await {
        GatewayResponse::Cluster(status) => {
            assert!(status.maintenance.merge_fallbacks > 0, "{status:?}");
            let merge = status
                .maintenance
                .policy_calls
                .iter()
                .find(|p| p.sha256 == spinning.sha256())
                .expect("the spinning policy's calls are counted");
            assert!(merge.timeouts > 0 && merge.fallbacks > 0, "{merge:?}");
            assert!(
                status
                    .maintenance
                    .policy_calls
                    .iter()
                    .any(|p| p.kind == "placement"),
                "{status:?}"
            );
        }
        other => panic!("{other:?}"),
    }
}

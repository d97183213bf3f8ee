//! Coordination through a real ZooKeeper: membership, the cluster map (reweights, pool and past
//! sets), the catalog, recovery from session expiry, and refusal of malformed or older-format
//! znode data.
//!
//! Every test uses its own chroot on one shared server (see `support::zk`) and waits for
//! conditions with a deadline instead of sleeping.

// Test code: a failed step should panic with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use cartdb_core::cart::Product;
use cartdb_core::catalog::Catalog;
use cartdb_core::coord::{
    ActivePolicies, CoordConfig, CoordError, Coordinator, FULL_WEIGHT, Placement, PolicyRef,
    PoolSettings,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use zookeeper_client::{Acls, Client, CreateMode};

use support::gate::Gate;
use support::zk::ZkServer;

const DEADLINE: Duration = Duration::from_secs(20);
const SEED_MAP: &str = include_str!("../../config/crush-map.json");
const DEFAULT_CATALOG: &[u8] = include_bytes!("../../config/catalog.json");

/// A coordinator and the token that shuts it down (cancelled on drop).
struct Node {
    coord: Coordinator,
    shutdown: CancellationToken,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn config(chroot: &str) -> CoordConfig {
    CoordConfig {
        credentials: None,
        servers: ZkServer::shared().address().to_string(),
        chroot: format!("/{chroot}"),
        session_timeout: Duration::from_secs(4),
    }
}

async fn node(config: &CoordConfig) -> Node {
    let shutdown = CancellationToken::new();
    let coord = Coordinator::connect(config.clone(), shutdown.clone())
        .await
        .expect("connect a coordinator");
    Node { coord, shutdown }
}

/// A plain ZooKeeper client in the test's chroot, for looking behind the coordinator's back.
async fn raw_client(config: &CoordConfig) -> Client {
    let client = Client::connect(&config.servers)
        .await
        .expect("connect a raw client");
    client.chroot(config.chroot.as_str()).expect("chroot")
}

/// Waits until the channel's value satisfies `check`, then returns it.
async fn until<T: Clone>(
    rx: &mut watch::Receiver<T>,
    what: &str,
    check: impl FnMut(&T) -> bool,
) -> T {
    tokio::time::timeout(DEADLINE, rx.wait_for(check))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .expect("coordinator channel open")
        .clone()
}

fn product(id: &str, name: &str, price: u64) -> Product {
    Product {
        productid: id.into(),
        name: name.into(),
        category: "4".into(),
        price,
    }
}

/// Registrations appear in and disappear from every coordinator's membership; gateway ids are
/// unique and stable; shutting a coordinator down removes its registrations at once (well
/// before its session timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_and_gateways_are_seen_through_members() {
    let mut slow_expiry = config("members");
    slow_expiry.session_timeout = Duration::from_secs(10);
    let a = node(&slow_expiry).await;
    let b = node(&config("members")).await;
    let mut members = b.coord.members();

    a.coord.register_device(1, "127.0.0.1:7001").await.unwrap();
    a.coord.register_device(2, "127.0.0.1:7002").await.unwrap();
    until(&mut members, "devices 1 and 2", |m| {
        m.devices == BTreeMap::from([(1, "127.0.0.1:7001".into()), (2, "127.0.0.1:7002".into())])
    })
    .await;
    a.coord.deregister_device(2).await.unwrap();
    until(&mut members, "device 2 to leave", |m| {
        m.is_live(1) && !m.is_live(2)
    })
    .await;

    let gw_a = a.coord.register_gateway("127.0.0.1:8001").await.unwrap();
    assert_eq!(
        a.coord.register_gateway("127.0.0.1:8001").await.unwrap(),
        gw_a
    );
    let gw_b = b.coord.register_gateway("127.0.0.1:8002").await.unwrap();
    assert_ne!(gw_a, gw_b);
    until(&mut members, "both gateways", |m| m.gateways.len() == 2).await;

    assert!(matches!(
        a.coord.register_device(3, "no port").await,
        Err(CoordError::InvalidAddress { .. })
    ));

    let handle = a.coord.clone();
    a.shutdown.cancel();
    let gone = tokio::time::timeout(
        Duration::from_secs(5),
        members.wait_for(|m| m.devices.is_empty() && !m.gateways.contains_key(&gw_a)),
    );
    assert!(
        gone.await.is_ok(),
        "a's registrations outlived its shutdown"
    );
    assert!(matches!(
        handle.register_device(1, "127.0.0.1:7001").await,
        Err(CoordError::ShuttingDown)
    ));
}

const POOL: PoolSettings = PoolSettings {
    id: 1,
    pg_num: 64,
    size: 3,
};

/// The policies the test maps name (nothing is placed with them here).
fn policies() -> ActivePolicies {
    ActivePolicies {
        placement: PolicyRef {
            sha256: "c".repeat(64),
            name: "crush".to_owned(),
        },
        merge: None,
    }
}

/// A placement change with the test maps' policies and nothing else.
fn base() -> Placement {
    Placement {
        policies: policies(),
        ..Placement::default()
    }
}

fn reweights(weights: &[(u32, u32)]) -> Placement {
    Placement {
        reweights: weights.iter().copied().collect(),
        ..base()
    }
}

/// The map is bootstrapped once, validated first, and its reweights and past sets change
/// only by a compare-and-set on the epoch that exactly one of two racing writers wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_is_bootstrapped_once_and_changed_by_compare_and_set() {
    let a = node(&config("map")).await;
    let b = node(&config("map")).await;
    assert!(matches!(
        a.coord
            .bootstrap_map(r#"{"trees": []}"#, POOL, &policies(), "test")
            .await,
        Err(CoordError::InvalidMap(_))
    ));
    let no_pgs = PoolSettings { pg_num: 0, ..POOL };
    assert!(matches!(
        a.coord
            .bootstrap_map(SEED_MAP, no_pgs, &policies(), "test")
            .await,
        Err(CoordError::InvalidMap(_))
    ));
    a.coord
        .bootstrap_map(SEED_MAP, POOL, &policies(), "test")
        .await
        .unwrap();
    let map = until(&mut b.coord.map(), "the map", Option::is_some)
        .await
        .unwrap();
    assert_eq!((map.epoch, map.devices.len()), (1, 6));
    assert_eq!(map.devices[&6], "device_6");
    assert_eq!(map.settings, POOL);

    let other = r#"{"trees": [{"id": -1, "name": "r", "children": [{"id": 9, "name": "device_9"}]}], "rules": {}}"#;
    b.coord
        .bootstrap_map(other, POOL, &policies(), "test")
        .await
        .unwrap();
    let (_, stat) = raw_client(&config("map"))
        .await
        .get_data("/map")
        .await
        .unwrap();
    assert_eq!(
        stat.version, 0,
        "a second bootstrap must not overwrite the map"
    );

    let out = Placement {
        reweights: BTreeMap::from([(3, 0)]),
        past: BTreeMap::from([(17, BTreeSet::from([3]))]),
        ..base()
    };
    assert!(a.coord.set_placement(1, out).await.unwrap());
    assert_eq!(a.coord.map().borrow().as_ref().unwrap().epoch, 2);
    let seen = until(&mut b.coord.map(), "epoch 2", |m| {
        m.as_ref().is_some_and(|m| m.epoch == 2)
    })
    .await;
    let seen = seen.unwrap();
    assert_eq!((seen.reweight_of(3), seen.reweight_of(1)), (0, FULL_WEIGHT));
    assert_eq!(seen.past_of(17), Some(&BTreeSet::from([3])));
    assert!(
        !b.coord.set_placement(1, reweights(&[])).await.unwrap(),
        "stale epoch"
    );
    assert!(matches!(
        a.coord.set_placement(2, reweights(&[(42, 0)])).await,
        Err(CoordError::UnknownDevice { device: 42, .. })
    ));
    let beyond_pg_num = Placement {
        reweights: BTreeMap::new(),
        past: BTreeMap::from([(64, BTreeSet::from([1]))]),
        ..base()
    };
    assert!(matches!(
        a.coord.set_placement(2, beyond_pg_num).await,
        Err(CoordError::InvalidMap(_))
    ));

    let (x, y) = tokio::join!(
        a.coord.set_placement(2, reweights(&[(1, 0)])),
        b.coord.set_placement(2, reweights(&[(2, 0)])),
    );
    assert!(x.unwrap() ^ y.unwrap(), "exactly one racing writer wins");
    let map = until(&mut a.coord.map(), "epoch 3", |m| {
        m.as_ref().is_some_and(|m| m.epoch == 3)
    })
    .await;
    let map = map.unwrap();
    assert_eq!(map.reweights.len(), 1);
    assert!(map.past.is_empty(), "the winner cleared the past set");
}

/// A map document of the per-item directory era (format 1) is refused by every reader:
/// nothing is published, so no process places with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_map_of_an_older_format_is_refused() {
    let config = config("old-format");
    // Connecting creates the chroot; the raw client then writes what an older build wrote.
    drop(node(&config).await);
    let raw = raw_client(&config).await;
    let old = format!(r#"{{"map": {SEED_MAP}, "reweights": {{}}}}"#);
    raw.create(
        "/map",
        old.as_bytes(),
        &CreateMode::Persistent.with_acls(Acls::anyone_all()),
    )
    .await
    .unwrap();
    let a = node(&config).await;
    assert!(
        a.coord.map().borrow().is_none(),
        "a format-1 map was published"
    );
    // Bootstrapping does not overwrite it either: the operator must start a new cluster.
    a.coord
        .bootstrap_map(SEED_MAP, POOL, &policies(), "test")
        .await
        .unwrap();
    assert!(a.coord.map().borrow().is_none());
}

/// The catalog is bootstrapped once; upserts (also concurrent ones) land and reach every
/// coordinator through its watch; invalid products are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_bootstrap_and_upserts_are_seen_through_the_watch() {
    let a = node(&config("catalog")).await;
    let b = node(&config("catalog")).await;
    let kiwi = product("100", "kiwi", 7);
    assert!(matches!(
        a.coord.upsert_product(kiwi.clone()).await,
        Err(CoordError::NotBootstrapped { .. })
    ));

    let default = Catalog::from_json(DEFAULT_CATALOG).unwrap();
    a.coord.bootstrap_catalog(&default).await.unwrap();
    until(&mut b.coord.catalog(), "the catalog", |c| {
        c.len() == default.len()
    })
    .await;
    let tiny = Catalog::new(vec![product("1", "other", 1)]).unwrap();
    b.coord.bootstrap_catalog(&tiny).await.unwrap();

    let written = b.coord.upsert_product(kiwi.clone()).await.unwrap();
    assert_eq!(written.by_name("kiwi"), Some(&kiwi));
    assert_eq!(written.len(), default.len() + 1);
    until(&mut a.coord.catalog(), "kiwi", |c| {
        c.by_name("kiwi").is_some()
    })
    .await;

    let (x, y) = tokio::join!(
        a.coord.upsert_product(product("101", "plum", 5)),
        b.coord.upsert_product(product("102", "pear", 6)),
    );
    x.unwrap();
    y.unwrap();
    let both = |c: &Arc<Catalog>| c.by_name("plum").is_some() && c.by_name("pear").is_some();
    until(&mut a.coord.catalog(), "plum and pear on a", both).await;
    until(&mut b.coord.catalog(), "plum and pear on b", both).await;

    assert!(matches!(
        a.coord.upsert_product(product("103", "pork", 1)).await,
        Err(CoordError::InvalidCatalog(_))
    ));
    assert!(matches!(
        a.coord.upsert_product(product("", "nameless", 1)).await,
        Err(CoordError::InvalidCatalog(_))
    ));
}

/// When a coordinator's session expires (here: cut off from ZooKeeper for longer than the
/// session timeout), it opens a new session, re-creates its device and gateway registrations
/// (same gateway id) and re-installs its watches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_and_watches_come_back_after_session_expiry() {
    let gate = Gate::start(ZkServer::shared().address()).await;
    let mut cut_off = config("expiry");
    cut_off.servers = gate.address().to_string();
    cut_off.session_timeout = Duration::from_secs(2);
    let a = node(&cut_off).await;
    let observer = node(&config("expiry")).await;
    let mut members = observer.coord.members();

    a.coord.register_device(5, "127.0.0.1:7005").await.unwrap();
    let gw = a.coord.register_gateway("127.0.0.1:8005").await.unwrap();
    until(&mut members, "a's registrations", |m| {
        m.is_live(5) && m.gateways.contains_key(&gw)
    })
    .await;

    gate.close();
    until(&mut members, "the session to expire", |m| {
        !m.is_live(5) && m.gateways.is_empty()
    })
    .await;
    // Written while `a` is cut off: only a re-read after the new session can reveal it.
    observer
        .coord
        .bootstrap_map(SEED_MAP, POOL, &policies(), "test")
        .await
        .unwrap();
    gate.open();

    until(&mut members, "a's registrations to come back", |m| {
        m.devices.get(&5).map(String::as_str) == Some("127.0.0.1:7005")
            && m.gateways.get(&gw).map(String::as_str) == Some("127.0.0.1:8005")
    })
    .await;
    until(&mut a.coord.map(), "a to re-read the map", |m| {
        m.as_ref().is_some_and(|m| m.epoch == 1)
    })
    .await;
    assert!(
        observer
            .coord
            .set_placement(1, reweights(&[(4, 0)]))
            .await
            .unwrap()
    );
    until(&mut a.coord.map(), "a's new watch to fire", |m| {
        m.as_ref().is_some_and(|m| m.epoch == 2)
    })
    .await;
    assert!(a.coord.set_placement(2, reweights(&[])).await.unwrap());
    assert_eq!(
        a.coord.register_gateway("127.0.0.1:8005").await.unwrap(),
        gw
    );
}

/// A coordinator that loses its connection and gets it back within the session timeout
/// (same session) keeps receiving watch events: the membership of another process's
/// registrations made after the reconnect reaches it. (zookeeper-client does not re-register
/// persistent watches on such a reconnect; the followers install them again.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_keep_firing_after_a_reconnect_that_keeps_the_session() {
    let gate = Gate::start(ZkServer::shared().address()).await;
    let mut flaky = config("reconnect");
    flaky.servers = gate.address().to_string();
    flaky.session_timeout = Duration::from_secs(10);
    let a = node(&flaky).await;
    let observer = node(&config("reconnect")).await;
    let mut members = a.coord.members();
    observer
        .coord
        .register_device(1, "127.0.0.1:7001")
        .await
        .unwrap();
    until(&mut members, "device 1 through the watch", |m| m.is_live(1)).await;

    // The connection drops; the client reconnects at once with the same session.
    gate.close_and_drain().await;
    gate.open();
    observer
        .coord
        .register_device(2, "127.0.0.1:7002")
        .await
        .unwrap();
    // Seen through the new connection (by the watch, or by the re-read after reconnecting).
    until(&mut members, "device 2 after the reconnect", |m| {
        m.is_live(2)
    })
    .await;
    // Only a watch registered on the new connection can report this one.
    observer
        .coord
        .register_device(3, "127.0.0.1:7003")
        .await
        .unwrap();
    until(&mut members, "device 3 through the watch", |m| m.is_live(3)).await;
}

/// A registration left behind by an older session of the same device (a kill -9 and a
/// restart within the session timeout) is replaced rather than blocking the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_registration_of_the_same_device_is_replaced() {
    let config = config("takeover");
    let a = node(&config).await;
    let old = raw_client(&config).await;
    let ephemeral = CreateMode::Ephemeral.with_acls(Acls::anyone_all());
    old.create(
        "/live/ephemeral_4",
        br#"{"address":"127.0.0.1:1"}"#,
        &ephemeral,
    )
    .await
    .unwrap();

    a.coord.register_device(4, "127.0.0.1:7004").await.unwrap();
    let (_, stat) = old.get_data("/live/ephemeral_4").await.unwrap();
    assert_ne!(stat.ephemeral_owner, old.session_id().0);
    until(&mut a.coord.members(), "the new address", |m| {
        m.devices.get(&4).map(String::as_str) == Some("127.0.0.1:7004")
    })
    .await;
}

/// Malformed znode data is refused: the previous map stays published and later valid maps
/// are still followed; a malformed registration is ignored; a corrupt catalog is not
/// overwritten by an upsert.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_znode_data_is_refused() {
    let config = config("malformed");
    let a = node(&config).await;
    let raw = raw_client(&config).await;
    a.coord
        .bootstrap_map(SEED_MAP, POOL, &policies(), "test")
        .await
        .unwrap();
    let mut map = a.coord.map();
    let first = until(&mut map, "epoch 1", Option::is_some).await.unwrap();

    raw.set_data("/map", b"{not json", None).await.unwrap();
    let valid = format!(
        r#"{{"format": 4, "map": {}, "reweights": {{"1": 0}}, "pool": {{"id": 1, "pg_num": 64, "size": 3}}, "policies": {{"placement": {{"sha256": "{}", "name": "crush"}}}}}}"#,
        first.map_json,
        "c".repeat(64)
    );
    raw.set_data("/map", valid.as_bytes(), None).await.unwrap();
    let third = until(&mut map, "epoch 3", |m| {
        m.as_ref().is_some_and(|m| m.epoch == 3)
    })
    .await;
    assert_eq!(third.unwrap().reweight_of(1), 0);
    assert!(map.borrow().is_some(), "the map was never withdrawn");

    let ephemeral = CreateMode::Ephemeral.with_acls(Acls::anyone_all());
    raw.create("/live/ephemeral_7", b"garbage", &ephemeral)
        .await
        .unwrap();
    a.coord.register_device(8, "127.0.0.1:7008").await.unwrap();
    let members = until(&mut a.coord.members(), "device 8", |m| m.is_live(8)).await;
    assert!(!members.is_live(7));

    a.coord
        .bootstrap_catalog(&Catalog::from_json(DEFAULT_CATALOG).unwrap())
        .await
        .unwrap();
    raw.set_data("/catalog", b"[]", None).await.unwrap();
    assert!(matches!(
        a.coord.upsert_product(product("100", "kiwi", 7)).await,
        Err(CoordError::InvalidCatalogData { .. })
    ));
    let (data, _) = raw.get_data("/catalog").await.unwrap();
    assert_eq!(data, b"[]");
    assert!(
        !a.coord.catalog().borrow().is_empty(),
        "the last good catalog stays"
    );
}

/// Policy components larger than ZooKeeper's 1 MiB znode limit are stored in chunks under
/// their sha256, read back whole, checked against the hash (a corrupted chunk is refused,
/// naming the component), stored once however often they are deployed, and pruned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_components_are_stored_in_chunks_and_checked() {
    use cartdb_core::coord::policy_store::{CHUNK_BYTES, PolicyKind, policy_sha256};
    let config = config("policies");
    let a = node(&config).await;
    // 2.5 chunks of bytes that are not all alike.
    let bytes: Vec<u8> = (0..CHUNK_BYTES * 5 / 2)
        .map(|i| (i % 251) as u8 ^ (i / 7919) as u8)
        .collect();
    let sha = a
        .coord
        .store_policy(PolicyKind::Placement, "big.wasm", &bytes, "test", 7)
        .await
        .unwrap();
    assert_eq!(sha, policy_sha256(&bytes));
    let again = a
        .coord
        .store_policy(PolicyKind::Placement, "renamed.wasm", &bytes, "other", 8)
        .await
        .unwrap();
    assert_eq!(again, sha);
    let stored = a.coord.fetch_policy(&sha).await.unwrap();
    assert_eq!(stored.bytes, bytes);
    assert_eq!(stored.header.chunks, 3);
    assert_eq!(
        stored.header.name, "big.wasm",
        "the first deploy's header stays"
    );

    let raw = raw_client(&config).await;
    raw.set_data(&format!("/policies/{sha}/1"), b"tampered", None)
        .await
        .unwrap();
    let refused = a.coord.fetch_policy(&sha).await.unwrap_err();
    let message = refused.to_string();
    assert!(message.contains(&sha), "{message}");
    assert!(message.contains("bytes stored"), "{message}");
    let unknown = a.coord.fetch_policy(&"0".repeat(64)).await.unwrap_err();
    assert!(
        unknown.to_string().contains("no such component"),
        "{unknown}"
    );
    assert!(a.coord.fetch_policy("../map").await.is_err());

    let small = a
        .coord
        .store_policy(PolicyKind::Merge, "small.wasm", b"small", "test", 9)
        .await
        .unwrap();
    assert_eq!(
        a.coord
            .prune_policies(std::slice::from_ref(&small))
            .await
            .unwrap(),
        1
    );
    assert!(a.coord.fetch_policy(&sha).await.is_err());
    assert_eq!(a.coord.fetch_policy(&small).await.unwrap().bytes, b"small");
    assert!(
        a.coord
            .store_policy(PolicyKind::Merge, "empty.wasm", b"", "test", 9)
            .await
            .is_err()
    );
}

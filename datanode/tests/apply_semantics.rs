//! Apply semantics through the store: quantities fold in version order, retries are not
//! applied twice, and a delete of an item not in the cart writes nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use cartdb_core::cart::{ItemKey, OpKind};
use cartdb_core::wire::{DataFailure, DataResponse};
use cartdb_datanode::group_commit::RepairRequest;
use cartdb_datanode::store::CartStore;
use common::{applied, apply_qty, close, duplicate, op, open, open_timed};

fn key(user: &str, product: &str) -> ItemKey {
    ItemKey {
        user: user.into(),
        product: product.into(),
    }
}

/// Operations that arrive out of version order (a replica catching up through repair)
/// still fold in version order: the replica ends with the quantity of the version-ordered
/// log, clamped at zero along the way.
#[tokio::test]
async fn quantity_folds_in_version_order() {
    let dir = tempfile::tempdir().unwrap();
    let (store, writer) = open(dir.path(), 16);
    // Version order: add(10), add(20), delete(30), delete(40), delete(50), add(60) -> 1.
    // Arrival order differs.
    let arrivals = [
        (6, OpKind::Add, 60),
        (3, OpKind::Delete, 30),
        (1, OpKind::Add, 10),
        (5, OpKind::Delete, 50),
        (2, OpKind::Add, 20),
        (4, OpKind::Delete, 40),
    ];
    for (id, kind, hlc) in arrivals {
        let request = op("u1", "p1", "c1", id, kind, hlc);
        let repair = RepairRequest {
            key: request.key,
            meta: request.meta,
            base: None,
            ops: vec![request.op],
        };
        assert_eq!(
            writer.repair(repair).await,
            DataResponse::Repaired { added: 1 }
        );
    }
    let item = store.read_item(&key("u1", "p1")).unwrap().unwrap();
    assert_eq!(item.qty(), 1);
    assert!(item.ops.windows(2).all(|w| w[0].version < w[1].version));
    let head = store.read_summary(&key("u1", "p1")).unwrap().unwrap();
    assert_eq!(
        head,
        item.summary(),
        "the stored head summarises the stored log"
    );
    assert_eq!(store.read_user_summaries("u1").unwrap(), [head]);
    close(store, writer).await;
    let reopened = CartStore::open(dir.path()).unwrap();
    assert_eq!(
        reopened.read_item(&key("u1", "p1")).unwrap().unwrap().qty(),
        1
    );
}

/// A repair adds only the missing operations, adopts a newer base (dropping the log
/// entries it folds) and leaves a head that still summarises the log; a retry of a folded
/// operation is still recognised; an operation older than the base is refused.
#[tokio::test]
async fn a_repair_fills_gaps_and_adopts_a_newer_base() {
    use cartdb_core::cart::Base;
    use cartdb_core::version::Version;

    let dir = tempfile::tempdir().unwrap();
    let (store, writer) = open(dir.path(), 16);
    let add = |id, hlc| {
        let mut request = op("u1", "p1", "c1", id, OpKind::Add, hlc);
        request.require_in_cart = false;
        request
    };
    assert_eq!(apply_qty(&writer, add(1, 10)).await, applied(1));
    assert_eq!(apply_qty(&writer, add(2, 20)).await, applied(2));
    let base = Base {
        qty: 2,
        version: Some(Version {
            hlc: 20,
            gateway: 1,
        }),
    };
    let repair = RepairRequest {
        key: key("u1", "p1"),
        meta: add(0, 0).meta,
        base: Some(base),
        ops: vec![add(2, 20).op, add(3, 30).op],
    };
    assert_eq!(
        writer.repair(repair).await,
        DataResponse::Repaired { added: 1 }
    );
    let item = store.read_item(&key("u1", "p1")).unwrap().unwrap();
    assert_eq!(item.base, base);
    assert_eq!(item.ops, [add(3, 30).op]);
    assert_eq!(item.qty(), 3);
    let head = store.read_summary(&key("u1", "p1")).unwrap().unwrap();
    assert_eq!(head, item.summary());
    assert_eq!(
        apply_qty(&writer, add(1, 10)).await,
        duplicate(3),
        "folded, still known"
    );
    assert!(matches!(
        apply_qty(&writer, add(9, 15)).await,
        DataResponse::Failed(DataFailure::TooOld { .. })
    ));
    close(store, writer).await;
}

/// A retried operation (same id) is answered as a duplicate with the current quantity and
/// not logged twice, in the same batch or a later one.
#[tokio::test]
async fn a_retry_is_applied_once() {
    let dir = tempfile::tempdir().unwrap();
    let (store, writer) = open(dir.path(), 16);
    let add = op("u1", "p1", "c1", 1, OpKind::Add, 10);
    let (first, second) = tokio::join!(
        apply_qty(&writer, add.clone()),
        apply_qty(&writer, add.clone())
    );
    let mut replies = [first, second];
    replies.sort_by_key(|r| format!("{r:?}"));
    assert_eq!(replies, [applied(1), duplicate(1)]);
    assert_eq!(apply_qty(&writer, add).await, duplicate(1));
    let item = store.read_item(&key("u1", "p1")).unwrap().unwrap();
    assert_eq!(item.ops.len(), 1);
}

/// A retried delete that took the quantity to zero is a duplicate, not "not in cart".
#[tokio::test]
async fn a_retried_delete_is_a_duplicate_at_zero() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, writer) = open(dir.path(), 16);
    assert_eq!(
        apply_qty(&writer, op("u1", "p1", "c1", 1, OpKind::Add, 10)).await,
        applied(1)
    );
    let delete = op("u1", "p1", "c1", 2, OpKind::Delete, 20);
    assert_eq!(apply_qty(&writer, delete.clone()).await, applied(0));
    assert_eq!(apply_qty(&writer, delete).await, duplicate(0));
}

/// A delete of an item that is not in the cart (never added, or back at zero) is refused
/// with NotInCart and writes nothing.
#[tokio::test]
async fn a_delete_not_in_cart_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (store, writer) = open(dir.path(), 16);
    let delete = op("u1", "p1", "c1", 1, OpKind::Delete, 10);
    assert_eq!(apply_qty(&writer, delete).await, DataResponse::NotInCart);
    assert_eq!(store.read_item(&key("u1", "p1")).unwrap(), None);
    assert!(store.read_user("u1", None).unwrap().is_empty());

    assert_eq!(
        apply_qty(&writer, op("u1", "p1", "c1", 2, OpKind::Add, 20)).await,
        applied(1)
    );
    assert_eq!(
        apply_qty(&writer, op("u1", "p1", "c1", 3, OpKind::Delete, 30)).await,
        applied(0)
    );
    let before = store.read_item(&key("u1", "p1")).unwrap();
    assert_eq!(
        apply_qty(&writer, op("u1", "p1", "c1", 4, OpKind::Delete, 40)).await,
        DataResponse::NotInCart
    );
    assert_eq!(store.read_item(&key("u1", "p1")).unwrap(), before);
}

/// A user's items come back sorted by product id, and other users' items never leak into
/// a prefix scan (even when one user id is a prefix of another).
#[tokio::test]
async fn read_user_is_sorted_and_exact() {
    let dir = tempfile::tempdir().unwrap();
    let (store, writer) = open(dir.path(), 16);
    for (id, (user, product)) in [("u1", "p3"), ("u1", "p1"), ("u10", "p2"), ("u1", "p2")]
        .into_iter()
        .enumerate()
    {
        let id = u128::try_from(id).unwrap() + 1;
        assert_eq!(
            apply_qty(&writer, op(user, product, "c", id, OpKind::Add, 1)).await,
            applied(1)
        );
    }
    let products: Vec<String> = store
        .read_user("u1", None)
        .unwrap()
        .into_iter()
        .map(|i| i.product)
        .collect();
    assert_eq!(products, ["p1", "p2", "p3"]);
    assert_eq!(store.read_user("u10", None).unwrap().len(), 1);
}

/// Identifiers that could break the key layout are refused before they reach a batch, and
/// the store keeps accepting valid writes.
#[tokio::test]
async fn invalid_identifiers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, writer) = open(dir.path(), 16);
    for bad in [
        op("u\0x", "p", "c", 1, OpKind::Add, 1),
        op("u", "p", "", 2, OpKind::Add, 1),
    ] {
        let reply = apply_qty(&writer, bad).await;
        assert!(
            matches!(
                reply,
                DataResponse::Failed(DataFailure::InvalidRequest { .. })
            ),
            "{reply:?}"
        );
    }
    assert_eq!(
        apply_qty(&writer, op("u", "p", "c", 3, OpKind::Add, 1)).await,
        applied(1)
    );
}

/// An operation dated further ahead of the node's clock than the allowed skew is refused
/// with a named error and writes nothing; one within the skew is applied.
#[tokio::test]
async fn a_version_from_the_future_is_refused() {
    use std::time::Duration;

    use cartdb_core::version::wall_clock_millis;
    use cartdb_datanode::group_commit::Timing;

    let dir = tempfile::tempdir().unwrap();
    let timing = Timing {
        max_log_ops: None,
        accept_window: Some(Duration::from_secs(30)),
        grace: Duration::from_secs(60),
        id_retention: Duration::from_secs(3600),
        max_skew: Some(Duration::from_secs(10)),
    };
    let (store, writer) = open_timed(dir.path(), 16, timing);
    let now = wall_clock_millis();
    let future = op("u1", "p1", "c1", 1, OpKind::Add, (now + 3_600_000) << 16);
    match apply_qty(&writer, future).await {
        DataResponse::Failed(DataFailure::FromTheFuture {
            ahead_ms,
            max_skew_ms,
            ..
        }) => {
            assert!(ahead_ms > 3_500_000, "{ahead_ms}");
            assert_eq!(max_skew_ms, 10_000);
        }
        other => panic!("a version an hour ahead was answered {other:?}"),
    }
    assert_eq!(store.read_item(&key("u1", "p1")).unwrap(), None);
    let near = op("u1", "p1", "c1", 2, OpKind::Add, (now + 1_000) << 16);
    assert!(matches!(
        apply_qty(&writer, near).await,
        DataResponse::Applied {
            duplicate: false,
            ..
        }
    ));
    close(store, writer).await;
}

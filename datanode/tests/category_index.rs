//! The category index follows quantities: a user is listed under a category exactly while
//! one of their items of that category has a quantity above zero on this replica.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use cartdb_core::cart::OpKind;
use cartdb_datanode::store::CartStore;
use common::{applied, apply_qty, close, op, open};

/// A user leaves the category when the quantity drops to zero and comes back on an add.
#[tokio::test]
async fn a_user_leaves_at_zero_and_returns_on_add() {
    let dir = tempfile::tempdir().unwrap();
    let (store, writer) = open(dir.path(), 16);
    assert_eq!(
        apply_qty(&writer, op("u1", "p1", "fruit", 1, OpKind::Add, 1)).await,
        applied(1)
    );
    assert_eq!(store.users_in_category("fruit").unwrap(), ["u1"]);
    assert_eq!(
        apply_qty(&writer, op("u1", "p1", "fruit", 2, OpKind::Delete, 2)).await,
        applied(0)
    );
    assert!(store.users_in_category("fruit").unwrap().is_empty());
    assert_eq!(
        apply_qty(&writer, op("u1", "p1", "fruit", 3, OpKind::Add, 3)).await,
        applied(1)
    );
    assert_eq!(store.users_in_category("fruit").unwrap(), ["u1"]);
    close(store, writer).await;
    let reopened = CartStore::open(dir.path()).unwrap();
    assert_eq!(reopened.users_in_category("fruit").unwrap(), ["u1"]);
}

/// A user with several items of one category is listed once, and stays listed until the
/// last of them reaches zero; users come back sorted.
#[tokio::test]
async fn users_are_listed_once_and_sorted() {
    let dir = tempfile::tempdir().unwrap();
    let (store, writer) = open(dir.path(), 16);
    let adds = [
        ("u2", "p1", 1),
        ("u1", "p1", 2),
        ("u1", "p2", 3),
        ("u1 b", "p1", 4),
    ];
    for (user, product, id) in adds {
        assert_eq!(
            apply_qty(&writer, op(user, product, "fruit", id, OpKind::Add, 1)).await,
            applied(1)
        );
    }
    assert_eq!(
        store.users_in_category("fruit").unwrap(),
        ["u1", "u1 b", "u2"]
    );
    assert_eq!(
        apply_qty(&writer, op("u1", "p1", "fruit", 5, OpKind::Delete, 2)).await,
        applied(0)
    );
    assert_eq!(
        store.users_in_category("fruit").unwrap(),
        ["u1", "u1 b", "u2"]
    );
    assert_eq!(
        apply_qty(&writer, op("u1", "p2", "fruit", 6, OpKind::Delete, 2)).await,
        applied(0)
    );
    assert_eq!(store.users_in_category("fruit").unwrap(), ["u1 b", "u2"]);
    assert!(
        store.users_in_category("fru").unwrap().is_empty(),
        "prefix of a category"
    );
}

/// When the catalog moves a product to another category, the next operation moves the
/// item's index entry with it.
#[tokio::test]
async fn a_category_change_moves_the_entry() {
    let dir = tempfile::tempdir().unwrap();
    let (store, writer) = open(dir.path(), 16);
    assert_eq!(
        apply_qty(&writer, op("u1", "p1", "fruit", 1, OpKind::Add, 1)).await,
        applied(1)
    );
    assert_eq!(
        apply_qty(&writer, op("u1", "p1", "veg", 2, OpKind::Add, 2)).await,
        applied(2)
    );
    assert!(store.users_in_category("fruit").unwrap().is_empty());
    assert_eq!(store.users_in_category("veg").unwrap(), ["u1"]);
}

/// Several operations on one item in one batch leave the index as their net effect says.
#[tokio::test]
async fn one_batch_nets_out_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let (store, writer) = open(dir.path(), 64);
    assert_eq!(
        apply_qty(&writer, op("u1", "p1", "fruit", 1, OpKind::Add, 1)).await,
        applied(1)
    );
    let (a, b, c) = tokio::join!(
        apply_qty(&writer, op("u1", "p1", "fruit", 2, OpKind::Delete, 2)),
        apply_qty(&writer, op("u1", "p1", "fruit", 3, OpKind::Add, 3)),
        apply_qty(&writer, op("u2", "p1", "fruit", 4, OpKind::Add, 1)),
    );
    assert!(
        [a, b, c]
            .iter()
            .all(|r| matches!(r, cartdb_core::wire::DataResponse::Applied { .. }))
    );
    assert_eq!(store.users_in_category("fruit").unwrap(), ["u1", "u2"]);
}

/// A category is read a page of users at a time: every item of each user in the page, the
/// next page starting after the last user (even a user whose name extends another's), and
/// `more` until the last page.
#[tokio::test]
async fn a_category_is_paged_by_user() {
    let dir = tempfile::tempdir().unwrap();
    let (store, writer) = open(dir.path(), 16);
    let adds = [
        ("u1", "p1", 1),
        ("u1", "p2", 2),
        ("u1 b", "p1", 3),
        ("u2", "p1", 4),
        ("u3", "p3", 5),
    ];
    for (user, product, id) in adds {
        apply_qty(&writer, op(user, product, "fruit", id, OpKind::Add, 1)).await;
    }
    let users = |items: &[cartdb_core::cart::ItemKey]| -> Vec<String> {
        items
            .iter()
            .map(|k| format!("{}/{}", k.user, k.product))
            .collect()
    };
    let (first, more) = store.category_page("fruit", None, 2).unwrap();
    assert_eq!(users(&first), ["u1/p1", "u1/p2", "u1 b/p1"]);
    assert!(more);
    let (second, more) = store.category_page("fruit", Some("u1 b"), 2).unwrap();
    assert_eq!(users(&second), ["u2/p1", "u3/p3"]);
    assert!(!more);
    let (after_u1, _) = store.category_page("fruit", Some("u1"), 1).unwrap();
    assert_eq!(users(&after_u1), ["u1 b/p1"]);
    let (none, more) = store.category_page("fruit", Some("u3"), 5).unwrap();
    assert!(none.is_empty() && !more);
    assert!(store.category_page("fruit", Some("bad\u{1}"), 5).is_err());
    close(store, writer).await;
}

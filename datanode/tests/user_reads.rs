//! A cart read of a user finds every item this replica holds of them, whichever write made
//! it (an operation or a repair), after a restart (no cached heads), and until a drop takes
//! the user's last item; a read of a user the replica holds nothing of is empty.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use cartdb_core::cart::{ItemKey, OpKind, StateDigest};
use cartdb_core::wire::DataResponse;
use cartdb_datanode::group_commit::RepairRequest;
use cartdb_datanode::store::CartStore;
use common::{applied, apply_qty, close, op, open};

/// The item and the digest of its state on `store`: what a handback's drop names.
fn held(store: &CartStore, user: &str, product: &str) -> (ItemKey, StateDigest) {
    let key = key(user, product);
    let digest = store.read_summary(&key).unwrap().unwrap().digest;
    (key, digest)
}

fn key(user: &str, product: &str) -> ItemKey {
    ItemKey {
        user: user.into(),
        product: product.into(),
    }
}

fn products(store: &CartStore, user: &str) -> Vec<String> {
    store
        .read_user(user, None)
        .unwrap()
        .into_iter()
        .map(|item| item.product)
        .collect()
}

#[tokio::test]
async fn every_users_items_are_read_after_restarts_and_drops() {
    let dir = tempfile::tempdir().unwrap();
    let (store, writer) = open(dir.path(), 16);
    assert_eq!(
        apply_qty(&writer, op("a", "p1", "c", 1, OpKind::Add, 10)).await,
        applied(1)
    );
    assert_eq!(
        apply_qty(&writer, op("a", "p2", "c", 2, OpKind::Add, 11)).await,
        applied(1)
    );
    // A repair is the first write of b's item on this replica.
    let added = op("b", "p1", "c", 3, OpKind::Add, 12);
    let repair = RepairRequest {
        key: added.key.clone(),
        meta: added.meta.clone(),
        base: None,
        ops: vec![added.op],
    };
    assert_eq!(
        writer.repair(repair).await,
        DataResponse::Repaired { added: 1 }
    );
    close(store, writer).await;

    // Reopened: nothing is cached, every read goes to fjall.
    let (store, writer) = open(dir.path(), 16);
    assert_eq!(products(&store, "a"), ["p1", "p2"]);
    assert_eq!(products(&store, "b"), ["p1"]);
    assert!(products(&store, "nobody").is_empty());
    assert!(products(&store, "a ").is_empty(), "a user id's prefix");

    // A drop whose digest is not the item's state keeps the item.
    let stale = (key("a", "p1"), StateDigest(held(&store, "a", "p1").1.0 ^ 1));
    let dropped = writer.drop_items(vec![stale]).await;
    assert_eq!(
        dropped,
        DataResponse::Dropped {
            items: 0,
            changed: 1
        }
    );
    let dropped = writer.drop_items(vec![held(&store, "a", "p1")]).await;
    assert_eq!(
        dropped,
        DataResponse::Dropped {
            items: 1,
            changed: 0
        }
    );
    close(store, writer).await;
    let (store, writer) = open(dir.path(), 16);
    assert_eq!(
        products(&store, "a"),
        ["p2"],
        "a keeps the item not dropped"
    );

    let dropped = writer
        .drop_items(vec![held(&store, "a", "p2"), held(&store, "b", "p1")])
        .await;
    assert_eq!(
        dropped,
        DataResponse::Dropped {
            items: 2,
            changed: 0
        }
    );
    assert!(products(&store, "a").is_empty());
    // A user dropped entirely and written again is read again.
    assert_eq!(
        apply_qty(&writer, op("b", "p3", "c", 4, OpKind::Add, 13)).await,
        applied(1)
    );
    close(store, writer).await;
    let (store, writer) = open(dir.path(), 16);
    assert!(products(&store, "a").is_empty());
    assert_eq!(products(&store, "b"), ["p3"]);
    close(store, writer).await;
}

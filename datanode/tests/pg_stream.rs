//! A placement group is read as a stream: `read_pg` pages through its items' full states in
//! placement order with a cursor, bounded by items and bytes but with no cap on how many a
//! PG may hold, and each item comes exactly once; `RepairMany` applies many repairs in the
//! writer's batches.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::collections::BTreeSet;

use cartdb_core::cart::{ItemKey, OpKind};
use cartdb_core::pg::Pool;
use cartdb_core::placement_key::{placement_key, placement_order};
use common::{apply_qty, close, op, open};

fn ranges(pool: &Pool, pg: u32) -> Vec<(u32, u32)> {
    pool.key_ranges(pg)
        .iter()
        .map(|r| (r.first, r.last))
        .collect()
}

/// Every PG of a store of 400 items (including index entries), read a page of 7 at a time:
/// exactly its items, each once, in placement order; a byte bound of 1 gives one item a page.
#[tokio::test]
async fn a_pg_is_paged_through_in_placement_order_with_no_item_cap() {
    let dir = tempfile::tempdir().unwrap();
    let (store, writer) = open(dir.path(), 64);
    let mut all = Vec::new();
    for n in 0..200u64 {
        let user = format!("shopper {}", n % 37);
        for product in [format!("p{n}"), format!("@p{n}")] {
            apply_qty(
                &writer,
                op(&user, &product, "c", u128::from(n) + 1, OpKind::Add, n + 1),
            )
            .await;
            all.push(ItemKey {
                user: user.clone(),
                product,
            });
        }
    }
    // One item with a longer log: its neighbours' logs must not leak into it.
    for id in [1_000, 1_001] {
        let hlc = u64::try_from(id).unwrap();
        apply_qty(&writer, op("shopper 7", "p7", "c", id, OpKind::Add, hlc)).await;
    }
    let pool = Pool::new(1, 8).unwrap();
    let mut seen = BTreeSet::new();
    for pg in 0..8 {
        let mut expected: Vec<&ItemKey> = all
            .iter()
            .filter(|k| pool.pg_of(placement_key(&k.user, &k.product)) == pg)
            .collect();
        expected.sort_by(|a, b| {
            placement_order(&a.user, &a.product).cmp(&placement_order(&b.user, &b.product))
        });
        let mut streamed: Vec<ItemKey> = Vec::new();
        let mut after: Option<ItemKey> = None;
        loop {
            let (page, more) = store
                .read_pg(&ranges(&pool, pg), after.as_ref(), 7, usize::MAX)
                .unwrap();
            assert!(page.len() <= 7);
            for held in &page {
                let key = ItemKey {
                    user: held.user.clone(),
                    product: held.state.product.clone(),
                };
                // The stream's logs (one scan alongside the heads) are the item's own.
                assert_eq!(Some(&held.state), store.read_item(&key).unwrap().as_ref());
                let expected_qty = if key.product == "p7" { 3 } else { 1 };
                assert_eq!(held.state.qty(), expected_qty, "{}", held.user);
                streamed.push(ItemKey {
                    user: held.user.clone(),
                    product: held.state.product.clone(),
                });
            }
            after = streamed.last().cloned();
            if !more {
                break;
            }
        }
        let streamed_refs: Vec<&ItemKey> = streamed.iter().collect();
        assert_eq!(streamed_refs, expected, "PG {pg}");
        seen.extend(streamed);
        let (one, more) = store.read_pg(&ranges(&pool, pg), None, 100, 1).unwrap();
        assert_eq!(one.len(), 1, "the byte bound still returns one item");
        assert_eq!(more, expected.len() > 1);
    }
    assert_eq!(seen.len(), all.len(), "every item in exactly one PG");
    close(store, writer).await;
}

/// A handback's drop of most of a store (more than the range-scan threshold): exactly the
/// named items still in the state named go, with their logs, category entries and emptied
/// users; changed items stay and are counted; items not held are skipped.
#[tokio::test]
async fn a_large_drop_removes_exactly_the_named_items_in_their_state() {
    let dir = tempfile::tempdir().unwrap();
    let (store, writer) = open(dir.path(), 64);
    let key = |n: u64| ItemKey {
        user: format!("shopper {}", n % 150),
        product: format!("p{}", n % 4),
    };
    // An add of `key`'s item with op id and version `id`.
    let add = |key: &ItemKey, id: u64| {
        op(
            &key.user,
            &key.product,
            "c",
            u128::from(id),
            OpKind::Add,
            id,
        )
    };
    for n in 0..600u64 {
        apply_qty(&writer, add(&key(n), n + 1)).await;
    }
    // Named: every item of the first 140 shoppers, and three never written.
    let mut named: Vec<_> = (0..600u64)
        .map(key)
        .filter(|k| {
            k.user
                .trim_start_matches("shopper ")
                .parse::<u64>()
                .unwrap()
                < 140
        })
        .map(|k| {
            let digest = store.read_summary(&k).unwrap().unwrap().digest;
            (k, digest)
        })
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named.dedup_by(|a, b| a.0 == b.0);
    for n in 0..3 {
        let nobody = ItemKey {
            user: format!("nobody {n}"),
            product: "p0".into(),
        };
        named.push((nobody, cartdb_core::cart::StateDigest(n)));
    }
    // Five of them change after the handback's scan.
    for n in 0..5u64 {
        apply_qty(&writer, add(&key(n), 50_000 + n)).await;
    }
    let reply = writer.drop_items(named.clone()).await;
    let held_named = named.len() as u32 - 3;
    assert_eq!(
        reply,
        cartdb_core::wire::DataResponse::Dropped {
            items: held_named - 5,
            changed: 5
        }
    );
    let changed: BTreeSet<ItemKey> = (0..5).map(key).collect();
    for (k, _) in &named {
        let kept = store.read_item(k).unwrap();
        assert_eq!(kept.is_some(), changed.contains(k), "{k:?}");
    }
    let (left, more) = store
        .read_pg(&[(0, u32::MAX)], None, 10_000, usize::MAX)
        .unwrap();
    assert!(!more);
    // The ten untouched shoppers' items and the five changed ones, each with its log.
    let all: BTreeSet<ItemKey> = (0..600).map(key).collect();
    let expected = all.len() - (held_named as usize - 5);
    assert_eq!(left.len(), expected);
    for held in &left {
        let k = ItemKey {
            user: held.user.clone(),
            product: held.state.product.clone(),
        };
        assert_eq!(Some(&held.state), store.read_item(&k).unwrap().as_ref());
    }
    let (listed, _) = store.category_page("c", None, usize::MAX).unwrap();
    assert_eq!(
        listed.len(),
        expected,
        "category entries went with their items"
    );
    assert!(store.read_user_summaries("shopper 139").unwrap().is_empty());
    close(store, writer).await;
}

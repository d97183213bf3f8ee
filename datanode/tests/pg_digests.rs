//! A store's digest buckets follow its writes: two replicas given the same operations in
//! different orders and batches agree on every bucket, an operation one of them lacks
//! changes exactly its item's bucket, a handback drop takes the item's fingerprint out, a
//! long log is counted, and reopening the store rebuilds the same digests from disk, with
//! the writes made while it rebuilds.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::time::{Duration, Instant};

use cartdb_core::cart::{ItemKey, OpKind};
use cartdb_core::digest_bucket::{bucket_of, buckets_of};
use cartdb_core::placement_key::placement_key;
use cartdb_core::wire::{BucketDigest, DataResponse, LONG_LOG_OPS};
use cartdb_datanode::group_commit::ApplyRequest;
use cartdb_datanode::store::{CartStore, DigestError};
use common::{apply_qty, close, op, open};

const EVERYTHING: [(u32, u32); 1] = [(0, u32::MAX)];

fn ops() -> Vec<ApplyRequest> {
    (0..300u64)
        .map(|n| {
            let user = format!("shopper {}", n % 41);
            op(
                &user,
                &format!("p{}", n % 17),
                "c",
                u128::from(n) + 1,
                OpKind::Add,
                n + 1,
            )
        })
        .collect()
}

/// The store's digests of every bucket, once its rebuild after opening has finished.
fn digests(store: &CartStore) -> Vec<BucketDigest> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match store.pg_digests(&EVERYTHING) {
            Ok(digests) => return digests,
            Err(DigestError::NotReady) if Instant::now() < deadline => std::thread::yield_now(),
            Err(e) => panic!("no digests: {e}"),
        }
    }
}

/// The indexes of the buckets where `a` and `b` differ.
fn differing(a: &[BucketDigest], b: &[BucketDigest]) -> Vec<u32> {
    let buckets = buckets_of(&EVERYTHING).unwrap();
    buckets
        .into_iter()
        .zip(a.iter().zip(b))
        .filter(|(_, (a, b))| a != b)
        .map(|(bucket, _)| bucket)
        .collect()
}

fn bucket_of_item(user: &str, product: &str) -> u32 {
    bucket_of(placement_key(user, product).reverse_bits())
}

#[tokio::test]
async fn digests_follow_writes_and_survive_a_restart() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, writer_a) = open(dir_a.path(), 64);
    let (b, writer_b) = open(dir_b.path(), 1);
    for request in ops() {
        apply_qty(&writer_a, request).await;
    }
    for request in ops().into_iter().rev() {
        apply_qty(&writer_b, request).await;
    }
    assert!(differing(&digests(&a), &digests(&b)).is_empty());
    assert!(digests(&a).iter().any(|d| d.digest != 0));

    // One more operation on one replica: exactly its item's bucket differs.
    apply_qty(
        &writer_a,
        op("shopper 3", "p3", "c", 10_000, OpKind::Add, 10_000),
    )
    .await;
    assert_eq!(
        differing(&digests(&a), &digests(&b)),
        vec![bucket_of_item("shopper 3", "p3")]
    );

    // A drop takes the item out of its bucket, as if it had never been written.
    let key = ItemKey {
        user: "shopper 3".into(),
        product: "p3".into(),
    };
    let head = a.read_summary(&key).unwrap().unwrap();
    let answer = writer_a.drop_items(vec![(key.clone(), head.digest)]).await;
    assert_eq!(
        answer,
        DataResponse::Dropped {
            items: 1,
            changed: 0
        }
    );
    let head_b = b.read_summary(&key).unwrap().unwrap();
    writer_b.drop_items(vec![(key, head_b.digest)]).await;
    assert!(differing(&digests(&a), &digests(&b)).is_empty());

    // A long log is counted in its bucket.
    let hot = bucket_of_item("hot", "p");
    for n in 0..u64::from(LONG_LOG_OPS) {
        apply_qty(
            &writer_a,
            op(
                "hot",
                "p",
                "c",
                20_000 + u128::from(n),
                OpKind::Add,
                20_000 + n,
            ),
        )
        .await;
    }
    let before = digests(&a);
    let long: Vec<u32> = buckets_of(&EVERYTHING)
        .unwrap()
        .into_iter()
        .zip(&before)
        .filter(|(_, d)| d.long_logs > 0)
        .map(|(bucket, _)| bucket)
        .collect();
    assert_eq!(long, vec![hot]);

    // Reopened, the store rebuilds the same digests from what is on disk, and writes made
    // while it rebuilds count as well: the same write on both sides still agrees.
    close(a, writer_a).await;
    let (a, writer_a) = open(dir_a.path(), 64);
    let late = || op("late", "p", "c", 30_000, OpKind::Add, 30_000);
    apply_qty(&writer_a, late()).await;
    apply_qty(&writer_b, late()).await;
    let after = digests(&a);
    assert_eq!(
        differing(&after, &before),
        vec![bucket_of_item("late", "p")]
    );

    // A request that does not name whole buckets is refused, by range.
    let refused = a.pg_digests(&[(5, 7)]).unwrap_err().to_string();
    assert!(refused.contains("0x00000005..=0x00000007"), "{refused}");
    close(a, writer_a).await;
    close(b, writer_b).await;
}

//! The write path against fake data nodes over real sockets: quorum, stale replicas on
//! delete, and failures that name the devices.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use cartdb_core::cart::{DeviceId, ItemKey, ItemMeta, OpId, OpKind, Operation};
use cartdb_core::config::Replication;
use cartdb_core::version::HybridClock;
use cartdb_gateway::replicas::Replicas;
use cartdb_gateway::write::{ItemWrite, replicate};
use cartdb_gateway::write_quorum::WriteOutcome;
use tokio::time::Instant;

use common::{dead_address, start_nodes};

const DEVICES: [DeviceId; 3] = [1, 2, 3];

fn rf3() -> Replication {
    Replication::new(3, 2, 2).unwrap()
}

fn write(kind: OpKind, id: u128, clock: &HybridClock) -> Arc<ItemWrite> {
    Arc::new(ItemWrite {
        key: ItemKey {
            user: "user1".into(),
            product: "1".into(),
        },
        meta: ItemMeta {
            price: 61,
            category: "1".into(),
        },
        op: Operation {
            id: OpId(id),
            kind,
            version: clock.now(),
        },
    })
}

fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(2)
}

/// An insert is acknowledged once W replicas applied it, without waiting for a slow third,
/// and the slow replica still receives it.
#[tokio::test]
async fn an_insert_does_not_wait_for_the_slowest_replica() {
    let (nodes, addresses) = start_nodes(3).await;
    let replicas = Replicas::new(Duration::from_secs(1));
    replicas.refresh(&addresses);
    nodes[&3].node.set_delay(Duration::from_millis(800));
    let clock = HybridClock::new(1);

    let started = Instant::now();
    let outcome = replicate(
        &replicas,
        &DEVICES,
        write(OpKind::Add, 1, &clock),
        rf3(),
        deadline(),
    )
    .await;
    assert_eq!(
        outcome,
        WriteOutcome::Acknowledged {
            qty: 1,
            acked: vec![1, 2]
        }
    );
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );

    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        nodes[&3].node.qty("user1", "1"),
        1,
        "the slow replica got the write"
    );
}

/// A retried operation (same op id) is applied once on every replica.
#[tokio::test]
async fn a_retry_with_the_same_op_id_is_not_applied_twice() {
    let (nodes, addresses) = start_nodes(3).await;
    let replicas = Replicas::new(Duration::from_secs(1));
    replicas.refresh(&addresses);
    let clock = HybridClock::new(1);
    for _ in 0..2 {
        let outcome = replicate(
            &replicas,
            &DEVICES,
            write(OpKind::Add, 7, &clock),
            rf3(),
            deadline(),
        )
        .await;
        assert!(
            matches!(outcome, WriteOutcome::Acknowledged { qty: 1, .. }),
            "{outcome:?}"
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    for device in DEVICES {
        assert_eq!(nodes[&device].node.qty("user1", "1"), 1);
    }
}

/// A delete that one replica applies is legitimate: a replica that missed the insert (and
/// says not-in-cart) is sent the delete again unconditionally and counts toward W.
#[tokio::test]
async fn a_delete_is_resent_to_a_stale_replica() {
    let (nodes, addresses) = start_nodes(3).await;
    let replicas = Replicas::new(Duration::from_secs(1));
    replicas.refresh(&addresses);
    let clock = HybridClock::new(1);
    let insert = replicate(
        &replicas,
        &DEVICES,
        write(OpKind::Add, 1, &clock),
        rf3(),
        deadline(),
    )
    .await;
    assert!(matches!(insert, WriteOutcome::Acknowledged { .. }));
    tokio::time::sleep(Duration::from_millis(50)).await;
    nodes[&2].node.wipe();
    nodes[&3].node.set_failing(true);

    let outcome = replicate(
        &replicas,
        &DEVICES,
        write(OpKind::Delete, 2, &clock),
        rf3(),
        deadline(),
    )
    .await;
    assert_eq!(
        outcome,
        WriteOutcome::Acknowledged {
            qty: 0,
            acked: vec![1, 2]
        }
    );
    assert_eq!(
        nodes[&2].node.applies.load(Ordering::SeqCst),
        3,
        "insert, refused delete, forced delete"
    );
}

/// A delete of an item no replica holds is "not in cart", and nothing is written.
#[tokio::test]
async fn a_delete_of_an_absent_item_is_not_in_cart() {
    let (nodes, addresses) = start_nodes(3).await;
    let replicas = Replicas::new(Duration::from_secs(1));
    replicas.refresh(&addresses);
    let clock = HybridClock::new(1);
    let outcome = replicate(
        &replicas,
        &DEVICES,
        write(OpKind::Delete, 1, &clock),
        rf3(),
        deadline(),
    )
    .await;
    assert_eq!(outcome, WriteOutcome::NotInCart);
    for device in DEVICES {
        assert_eq!(nodes[&device].node.qty("user1", "1"), 0);
    }
}

/// With two of three replicas unreachable the write fails at once, naming both devices and
/// why.
#[tokio::test]
async fn too_few_replicas_fail_the_write_and_name_the_devices() {
    let (nodes, mut addresses) = start_nodes(3).await;
    addresses.insert(2, dead_address().await);
    addresses.remove(&3);
    let replicas = Replicas::new(Duration::from_secs(1));
    replicas.refresh(&addresses);
    let clock = HybridClock::new(1);
    let outcome = replicate(
        &replicas,
        &DEVICES,
        write(OpKind::Add, 1, &clock),
        rf3(),
        deadline(),
    )
    .await;
    let WriteOutcome::QuorumNotReached(failure) = outcome else {
        panic!("expected a quorum failure, got {outcome:?}");
    };
    // Decided as soon as W became unreachable, possibly before device 1 answered.
    assert_eq!(failure.required, 2);
    assert!(failure.acked <= 1);
    let text = failure.to_string();
    assert!(text.contains("device 2: cannot connect"), "{text}");
    assert!(text.contains("device 3: device 3 is down"), "{text}");
    drop(nodes);
}

/// A replica that answers after the deadline counts as failed.
#[tokio::test]
async fn replicas_slower_than_the_deadline_fail_the_write() {
    let (nodes, addresses) = start_nodes(3).await;
    let replicas = Replicas::new(Duration::from_secs(1));
    replicas.refresh(&addresses);
    nodes[&1].node.set_delay(Duration::from_millis(500));
    nodes[&2].node.set_delay(Duration::from_millis(500));
    let clock = HybridClock::new(1);
    let started = Instant::now();
    let deadline = Instant::now() + Duration::from_millis(150);
    let outcome = replicate(
        &replicas,
        &DEVICES,
        write(OpKind::Add, 1, &clock),
        rf3(),
        deadline,
    )
    .await;
    assert!(started.elapsed() < Duration::from_millis(400));
    let WriteOutcome::QuorumNotReached(failure) = outcome else {
        panic!("expected a quorum failure, got {outcome:?}");
    };
    assert_eq!(failure.acked, 1);
}

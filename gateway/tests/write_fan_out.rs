//! The write path against real data nodes (in-process) over real sockets: quorum, stale replicas on
//! delete, and failures that name the devices.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use cartdb_core::cart::{DeviceId, ItemKey, ItemMeta, OpId, OpKind, Operation};
use cartdb_core::config::Replication;
use cartdb_core::rpc::{Fault, Faults};
use cartdb_core::version::HybridClock;
use cartdb_gateway::replicas::Replicas;
use cartdb_gateway::write::{ItemWrite, Placed, replicate};
use cartdb_gateway::write_quorum::WriteOutcome;
use tokio::time::Instant;

use common::{RunningNode, dead_address, eventually, start_nodes};

const DEVICES: [DeviceId; 3] = [1, 2, 3];

/// Three data nodes (the devices of [`DEVICES`]), the gateway's connections to them
/// and a clock for the operations' versions.
struct Fixture {
    nodes: BTreeMap<DeviceId, RunningNode>,
    replicas: Replicas,
    /// Faults injected into the gateway's calls to the data nodes.
    faults: Faults,
    clock: HybridClock,
}

impl Fixture {
    async fn start() -> Fixture {
        let (nodes, addresses) = start_nodes(3, None).await;
        let faults = Faults::new();
        let replicas = Replicas::new(common::cluster_key(), Duration::from_secs(1))
            .with_faults(faults.clone());
        replicas.refresh(&addresses);
        Fixture {
            nodes,
            replicas,
            faults,
            clock: HybridClock::new(1),
        }
    }

    /// The nodes' addresses by device id.
    fn addresses(&self) -> BTreeMap<DeviceId, String> {
        self.nodes
            .iter()
            .map(|(device, node)| (*device, node.address.clone()))
            .collect()
    }

    /// Replicates operation `id` of `kind` on user1's pork to every device, with 2 s to go.
    async fn write(&self, kind: OpKind, id: u128) -> WriteOutcome {
        self.write_by(kind, id, Instant::now() + Duration::from_secs(2))
            .await
    }

    /// As [`Fixture::write`], giving up at `deadline`.
    async fn write_by(&self, kind: OpKind, id: u128, deadline: Instant) -> WriteOutcome {
        let write = Arc::new(ItemWrite {
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
                version: self.clock.now(),
            },
        });
        let rf3 = Replication::new(3, 2, 2).unwrap();
        let placed = Placed {
            devices: DEVICES.to_vec(),
            epoch: 0,
        };
        replicate(&self.replicas, &placed, write, rf3, &self.clock, deadline).await
    }

    /// The quantity of user1's pork on `device`.
    fn qty(&self, device: DeviceId) -> u64 {
        self.nodes[&device].node.qty("user1", "1")
    }

    /// The apply requests `device` has received.
    fn applies(&self, device: DeviceId) -> usize {
        self.nodes[&device].node.applies.load(Ordering::SeqCst)
    }
}

/// An insert is acknowledged once W replicas applied it, without waiting for a slow third,
/// and the slow replica still receives it.
#[tokio::test]
async fn an_insert_does_not_wait_for_the_slowest_replica() {
    let fx = Fixture::start().await;
    fx.nodes[&3].node.set_delay(Duration::from_millis(800));

    let started = Instant::now();
    let outcome = fx.write(OpKind::Add, 1).await;
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

    eventually("the slow replica (device 3) to get the write", || {
        fx.qty(3) == 1
    })
    .await;
}

/// A retried operation (same op id) is applied once on every replica.
#[tokio::test]
async fn a_retry_with_the_same_op_id_is_not_applied_twice() {
    let fx = Fixture::start().await;
    for _ in 0..2 {
        let outcome = fx.write(OpKind::Add, 7).await;
        assert!(
            matches!(outcome, WriteOutcome::Acknowledged { qty: 1, .. }),
            "{outcome:?}"
        );
    }
    eventually("both attempts to reach every replica", || {
        DEVICES.iter().all(|&device| fx.applies(device) >= 2)
    })
    .await;
    for device in DEVICES {
        assert_eq!(fx.qty(device), 1, "device {device}");
    }
}

/// A write whose replies are all lost fails without the gateway knowing its outcome,
/// although every replica applied it; its retry with the same op id is recognised as
/// already applied everywhere.
#[tokio::test]
async fn a_write_whose_replies_were_lost_is_applied_once_when_retried() {
    let fx = Fixture::start().await;
    for node in fx.nodes.values() {
        fx.faults.set(&node.address, Fault::DropReply);
    }
    let outcome = fx
        .write_by(OpKind::Add, 9, Instant::now() + Duration::from_millis(300))
        .await;
    assert!(
        matches!(outcome, WriteOutcome::QuorumNotReached(_)),
        "{outcome:?}"
    );
    eventually(
        "every replica to have applied the write whose reply was lost",
        || DEVICES.iter().all(|&device| fx.qty(device) == 1),
    )
    .await;
    fx.faults.heal();
    let retry = fx.write(OpKind::Add, 9).await;
    assert!(
        matches!(retry, WriteOutcome::Acknowledged { qty: 1, .. }),
        "{retry:?}"
    );
    for device in DEVICES {
        assert_eq!(fx.qty(device), 1, "device {device}");
    }
}

/// A gateway cut off from two of three replicas cannot reach W: the write fails, and only
/// the replica it reaches holds it (repair spreads it later).
#[tokio::test]
async fn a_gateway_cut_off_from_two_replicas_fails_the_write() {
    let fx = Fixture::start().await;
    fx.faults.set(&fx.nodes[&1].address, Fault::DropRequest);
    fx.faults.set(&fx.nodes[&2].address, Fault::DropRequest);
    let outcome = fx
        .write_by(OpKind::Add, 1, Instant::now() + Duration::from_millis(300))
        .await;
    let WriteOutcome::QuorumNotReached(failure) = outcome else {
        panic!("expected a quorum failure, got {outcome:?}");
    };
    assert!(failure.acked <= 1, "{failure}");
    assert_eq!(
        (fx.applies(1), fx.applies(2)),
        (0, 0),
        "the cut replicas saw nothing"
    );
    eventually("the reachable replica to hold the write", || fx.qty(3) == 1).await;
}

/// A delete that one replica applies is legitimate: a replica that missed the insert (and
/// says not-in-cart) is sent the delete again unconditionally and counts toward W.
#[tokio::test]
async fn a_delete_is_resent_to_a_stale_replica() {
    let fx = Fixture::start().await;
    let insert = fx.write(OpKind::Add, 1).await;
    assert!(matches!(insert, WriteOutcome::Acknowledged { .. }));
    eventually("the insert to reach every replica", || {
        DEVICES.iter().all(|&device| fx.qty(device) == 1)
    })
    .await;
    fx.nodes[&2].node.wipe().await;
    fx.nodes[&3].node.set_failing(true);

    let outcome = fx.write(OpKind::Delete, 2).await;
    assert_eq!(
        outcome,
        WriteOutcome::Acknowledged {
            qty: 0,
            acked: vec![1, 2]
        }
    );
    assert_eq!(fx.applies(2), 3, "insert, refused delete, forced delete");
}

/// A delete of an item no replica holds is "not in cart", and nothing is written.
#[tokio::test]
async fn a_delete_of_an_absent_item_is_not_in_cart() {
    let fx = Fixture::start().await;
    let outcome = fx.write(OpKind::Delete, 1).await;
    assert_eq!(outcome, WriteOutcome::NotInCart);
    for device in DEVICES {
        assert_eq!(fx.qty(device), 0);
    }
}

/// With two of three replicas unreachable the write fails at once, naming both devices and
/// why.
#[tokio::test]
async fn too_few_replicas_fail_the_write_and_name_the_devices() {
    let fx = Fixture::start().await;
    let mut addresses = fx.addresses();
    addresses.insert(2, dead_address().await);
    addresses.remove(&3);
    fx.replicas.refresh(&addresses);
    let outcome = fx.write(OpKind::Add, 1).await;
    let WriteOutcome::QuorumNotReached(failure) = outcome else {
        panic!("expected a quorum failure, got {outcome:?}");
    };
    // Decided as soon as W became unreachable, possibly before device 1 answered.
    assert_eq!(failure.required, 2);
    assert!(failure.acked <= 1);
    let text = failure.to_string();
    assert!(text.contains("device 2: cannot connect"), "{text}");
    assert!(text.contains("device 3: device 3 is down"), "{text}");
}

/// A replica that answers after the deadline counts as failed.
#[tokio::test]
async fn replicas_slower_than_the_deadline_fail_the_write() {
    let fx = Fixture::start().await;
    fx.nodes[&1].node.set_delay(Duration::from_millis(500));
    fx.nodes[&2].node.set_delay(Duration::from_millis(500));
    let started = Instant::now();
    let deadline = Instant::now() + Duration::from_millis(150);
    let outcome = fx.write_by(OpKind::Add, 1, deadline).await;
    assert!(started.elapsed() < Duration::from_millis(400));
    let WriteOutcome::QuorumNotReached(failure) = outcome else {
        panic!("expected a quorum failure, got {outcome:?}");
    };
    assert_eq!(failure.acked, 1);
}

//! Group commit: concurrent writes share fsyncs, every one is acknowledged, and every
//! acknowledged write survives closing and reopening the store.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::sync::Arc;

use cartdb_core::cart::{ItemKey, OpId, OpKind};
use cartdb_core::wire::{DataFailure, DataResponse};
use cartdb_datanode::store::CartStore;
use common::{applied, apply_qty, close, op, open};

const TASKS: usize = 64;
const OPS_PER_TASK: usize = 50;
const PRODUCTS: usize = 5;

fn user(task: usize) -> String {
    format!("user{task}")
}

fn product(n: usize) -> String {
    format!("p{}", n % PRODUCTS)
}

fn op_id(task: usize, n: usize) -> u128 {
    u128::try_from(task * OPS_PER_TASK + n + 1).unwrap()
}

/// 64 concurrent writers x 50 adds each: all acknowledged, batched (more than one request
/// per fsync), and all present after a reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_are_batched_acknowledged_and_durable() {
    let dir = tempfile::tempdir().unwrap();
    let (store, writer) = open(dir.path(), 512);
    let writer = Arc::new(writer);
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let writer = writer.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..OPS_PER_TASK {
                let hlc = u64::try_from(n + 1).unwrap();
                let request = op(
                    &user(task),
                    &product(n),
                    "c1",
                    op_id(task, n),
                    OpKind::Add,
                    hlc,
                );
                let reply = apply_qty(&writer, request).await;
                let DataResponse::Applied {
                    duplicate: false, ..
                } = reply
                else {
                    panic!("unexpected reply {reply:?}");
                };
            }
        }));
    }
    for task in futures::future::join_all(tasks).await {
        task.unwrap();
    }

    let counters = writer.counters();
    assert_eq!(
        counters.requests,
        u64::try_from(TASKS * OPS_PER_TASK).unwrap()
    );
    assert!(
        counters.largest > 1,
        "no batch held more than one request: {counters:?}"
    );
    assert!(
        counters.commits < counters.requests,
        "one fsync per request: {counters:?}"
    );

    let writer = Arc::into_inner(writer).unwrap();
    close(store, writer).await;
    let store = CartStore::open(dir.path()).unwrap();
    for task in 0..TASKS {
        let items = store.read_user(&user(task), None).unwrap();
        assert_eq!(items.len(), PRODUCTS);
        for n in 0..OPS_PER_TASK {
            let item = items.iter().find(|i| i.product == product(n)).unwrap();
            assert!(item.contains(OpId(op_id(task, n))), "lost op {task}/{n}");
        }
        let total: u64 = items.iter().map(|i| i.qty()).sum();
        assert_eq!(total, u64::try_from(OPS_PER_TASK).unwrap());
    }
}

/// Many writers adding to one item concurrently: every add counts exactly once, even when
/// several land in the same batch. An add that arrives below one already held is refused
/// out of order and stamped again above it, as a gateway does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_to_one_item_compose() {
    let dir = tempfile::tempdir().unwrap();
    let (store, writer) = open(dir.path(), 512);
    let writer = Arc::new(writer);
    let tasks: Vec<_> = (0..32u64)
        .map(|task| {
            let writer = writer.clone();
            tokio::spawn(async move {
                for n in 0..10u64 {
                    let id = u128::from(task * 10 + n + 1);
                    let mut request = op("u1", "p1", "c1", id, OpKind::Add, task * 10 + n + 1);
                    loop {
                        match apply_qty(&writer, request.clone()).await {
                            DataResponse::Applied { .. } => break,
                            DataResponse::Failed(DataFailure::OutOfOrder { newest, .. }) => {
                                request.op.version.hlc = newest.hlc + 1;
                            }
                            other => panic!("unexpected {other:?}"),
                        }
                    }
                }
            })
        })
        .collect();
    for task in futures::future::join_all(tasks).await {
        task.unwrap();
    }
    let key = ItemKey {
        user: "u1".into(),
        product: "p1".into(),
    };
    assert_eq!(store.read_item(&key).unwrap().unwrap().qty(), 320);
    assert_eq!(
        apply_qty(
            &writer,
            op("u1", "p1", "c1", 999, OpKind::Add, u64::MAX >> 1)
        )
        .await,
        applied(321)
    );
}

/// After shutdown, queued writes have been committed and later ones are refused.
#[tokio::test]
async fn writes_after_shutdown_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, writer) = open(dir.path(), 8);
    assert_eq!(
        apply_qty(&writer, op("u", "p", "c", 1, OpKind::Add, 1)).await,
        applied(1)
    );
    writer.shutdown().await.unwrap();
    let reply = apply_qty(&writer, op("u", "p", "c", 2, OpKind::Add, 2)).await;
    assert!(
        matches!(
            reply,
            DataResponse::Failed(cartdb_core::wire::DataFailure::ShuttingDown {
                device: common::DEVICE
            })
        ),
        "{reply:?}"
    );
}

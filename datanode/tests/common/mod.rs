//! Helpers shared by the behaviour tests: request builders and a store with its writer.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]
#![allow(clippy::expect_used, reason = "tests fail loudly")]

use std::path::Path;
use std::sync::Arc;

use cartdb_core::cart::{ItemKey, ItemMeta, OpId, OpKind, Operation};
use cartdb_core::version::Version;
use cartdb_core::wire::DataResponse;
use cartdb_datanode::group_commit::{ApplyRequest, GroupCommit, GroupCommitSettings, Timing};
use cartdb_datanode::store::CartStore;

pub const DEVICE: u32 = 7;

/// An operation on `user`'s `product` in `category`, with version `hlc`.
pub fn op(
    user: &str,
    product: &str,
    category: &str,
    id: u128,
    kind: OpKind,
    hlc: u64,
) -> ApplyRequest {
    ApplyRequest {
        key: ItemKey {
            user: user.into(),
            product: product.into(),
        },
        meta: ItemMeta {
            price: 10,
            category: category.into(),
        },
        op: Operation {
            id: OpId(id),
            kind,
            version: Version { hlc, gateway: 1 },
        },
        require_in_cart: kind == OpKind::Delete,
        restamped: false,
    }
}

/// Opens the store in `dir` and starts a writer over it.
pub fn open(dir: &Path, max_batch: usize) -> (Arc<CartStore>, GroupCommit) {
    open_timed(dir, max_batch, Timing::ANY_AGE)
}

/// [`open`] with the clock rules `timing`.
pub fn open_timed(dir: &Path, max_batch: usize, timing: Timing) -> (Arc<CartStore>, GroupCommit) {
    let store = Arc::new(CartStore::open(dir).expect("open store"));
    let settings = GroupCommitSettings {
        device: DEVICE,
        max_batch,
        timing,
    };
    let writer = GroupCommit::start(store.clone(), settings).expect("start writer");
    (store, writer)
}

/// Stops the writer and drops the store, so the directory can be opened again.
pub async fn close(store: Arc<CartStore>, writer: GroupCommit) {
    writer.shutdown().await.expect("stop writer");
    drop(writer);
    assert_eq!(
        Arc::strong_count(&store),
        1,
        "the writer thread still holds the store"
    );
    drop(store);
}

/// The version [`apply_qty`] puts in every `Applied` reply, and [`applied`] and
/// [`duplicate`] expect.
const ANY_VERSION: Version = Version { hlc: 0, gateway: 0 };

/// `writer`'s reply to `request`, with the version an `Applied` reply names replaced by
/// [`ANY_VERSION`]: for tests of quantities and duplicates (`apply_semantics.rs` checks
/// the versions).
pub async fn apply_qty(writer: &GroupCommit, request: ApplyRequest) -> DataResponse {
    match writer.apply(request).await {
        DataResponse::Applied { qty, duplicate, .. } => DataResponse::Applied {
            qty,
            duplicate,
            held: ANY_VERSION,
        },
        other => other,
    }
}

pub fn applied(qty: u64) -> DataResponse {
    DataResponse::Applied {
        qty,
        duplicate: false,
        held: ANY_VERSION,
    }
}

pub fn duplicate(qty: u64) -> DataResponse {
    DataResponse::Applied {
        qty,
        duplicate: true,
        held: ANY_VERSION,
    }
}

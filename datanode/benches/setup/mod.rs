//! What the data node's benchmarks share: a real store in a fresh directory under `target/`
//! (so the fsyncs hit the same disk as a real node, not a tmpfs) and its group-commit writer.

use std::sync::Arc;

use cartdb_datanode::group_commit::{GroupCommit, GroupCommitSettings, Timing};
use cartdb_datanode::store::CartStore;

/// A store and its writer, and the directory they live in (removed when dropped).
pub struct BenchStore {
    pub dir: tempfile::TempDir,
    pub store: Arc<CartStore>,
    pub writer: Arc<GroupCommit>,
}

/// Opens a store in a fresh directory and starts its writer.
///
/// # Errors
/// The directory or the store cannot be made.
pub fn open() -> anyhow::Result<BenchStore> {
    let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-tmp");
    std::fs::create_dir_all(&base)?;
    let dir = tempfile::tempdir_in(base)?;
    let store = Arc::new(CartStore::open(dir.path())?);
    let settings = GroupCommitSettings {
        device: 1,
        max_batch: 512,
        timing: Timing::ANY_AGE,
    };
    let writer = Arc::new(GroupCommit::start(store.clone(), settings)?);
    Ok(BenchStore { dir, store, writer })
}

//! [`DataNodeService`]: answers [`DataRequest`]s from gateways.
//!
//! ```text
//! rpc::serve --> DataNodeService::call
//!                  Apply       --> GroupCommit (writer thread, one fsync per batch)
//!                  ReadUser    --> spawn_blocking --> CartStore::read_user
//!                  ListCategory--> spawn_blocking --> CartStore::users_in_category
//! ```
//!
//! fjall calls block, so reads run on tokio's blocking pool and never on a worker thread.

use std::path::Path;
use std::sync::Arc;

use cartdb_core::cart::DeviceId;
use cartdb_core::rpc::Service;
use cartdb_core::wire::{DataFailure, DataRequest, DataResponse, ServiceKind};
use tokio::task::JoinError;

use crate::group_commit::{
    ApplyRequest, BatchCounters, GroupCommit, GroupCommitSettings, StopError,
};
use crate::store::{CartStore, StoreError};

/// Why the node's storage could not be opened or closed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot start the group commit writer thread: {0}")]
    SpawnWriter(#[source] std::io::Error),
    #[error(transparent)]
    StopWriter(#[from] StopError),
    #[error("a blocking storage task failed: {0}")]
    Blocking(#[from] JoinError),
}

/// The store and its write path, serving one device.
pub struct DataNodeService {
    device: DeviceId,
    store: Arc<CartStore>,
    writer: GroupCommit,
}

impl DataNodeService {
    /// Opens the store in `data_dir` (recovering it after a crash) and starts the writer.
    ///
    /// # Errors
    /// [`NodeError::Store`] when fjall cannot open the directory, [`NodeError::SpawnWriter`]
    /// when the writer thread cannot start.
    pub async fn open(
        data_dir: &Path,
        settings: GroupCommitSettings,
    ) -> Result<Arc<Self>, NodeError> {
        let path = data_dir.to_owned();
        let store = Arc::new(tokio::task::spawn_blocking(move || CartStore::open(&path)).await??);
        let writer = GroupCommit::start(store.clone(), settings).map_err(NodeError::SpawnWriter)?;
        Ok(Arc::new(Self {
            device: settings.device,
            store,
            writer,
        }))
    }

    /// Counters of the group commit so far.
    pub fn counters(&self) -> BatchCounters {
        self.writer.counters()
    }

    /// Resolves once the write path has failed (a commit, or the writer thread) and every
    /// later write is refused.
    pub async fn storage_failed(&self) {
        self.writer.failed().await;
    }

    /// Commits and answers every queued write, stops the writer, and fsyncs everything.
    /// Later writes are answered with `ShuttingDown`.
    ///
    /// # Errors
    /// [`NodeError::StopWriter`] when the writer thread panicked; [`NodeError::Store`] when
    /// the final fsync fails.
    pub async fn close(&self) -> Result<(), NodeError> {
        self.writer.shutdown().await?;
        if self.writer.has_failed() {
            // fjall refuses to persist a poisoned database; there is nothing more to save.
            return Ok(());
        }
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.persist()).await??;
        Ok(())
    }

    /// Runs a read on the blocking pool; every failure becomes a `Storage` reply.
    async fn read(
        &self,
        read: impl FnOnce(&CartStore) -> Result<DataResponse, StoreError> + Send + 'static,
    ) -> DataResponse {
        let store = self.store.clone();
        let detail = match tokio::task::spawn_blocking(move || read(&store)).await {
            Ok(Ok(response)) => return response,
            Ok(Err(e)) => e.to_string(),
            Err(e) => format!("read task failed: {e}"),
        };
        tracing::warn!(%detail, "read failed");
        DataResponse::Failed(DataFailure::Storage {
            device: self.device,
            detail,
        })
    }
}

impl Service for DataNodeService {
    type Request = DataRequest;
    type Response = DataResponse;
    const KIND: ServiceKind = ServiceKind::DataNode;

    async fn call(self: Arc<Self>, request: DataRequest) -> DataResponse {
        match request {
            DataRequest::Apply {
                key,
                meta,
                op,
                require_in_cart,
            } => {
                let request = ApplyRequest {
                    key,
                    meta,
                    op,
                    require_in_cart,
                };
                self.writer.apply(request).await
            }
            DataRequest::ReadUser { user } => {
                self.read(move |store| {
                    let items = store.read_user(&user)?;
                    Ok(DataResponse::UserItems { items })
                })
                .await
            }
            DataRequest::ListCategory { category } => {
                self.read(move |store| {
                    let users = store.users_in_category(&category)?;
                    Ok(DataResponse::CategoryUsers { users })
                })
                .await
            }
        }
    }
}

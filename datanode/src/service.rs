//! [`DataNodeService`]: answers [`DataRequest`]s from gateways.
//!
//! ```text
//! rpc::serve --> DataNodeService::call
//!                  fence: the call's map epoch against the PGs it touches (crate::fence);
//!                  a newer epoch than this node's waits until the node has learnt it
//!                  Apply, Repair, RepairMany, Compact, DropItems
//!                                    --> GroupCommit (writer thread, one fsync per batch)
//!                  ReadSummaries, ReadItems, ReadUser, PgDigests --> CartStore, inline
//!                  ListCategory, ScanPg, ReadPg, ListItems --> CartStore, on the blocking pool
//! ```
//!
//! Cart reads run inline on the runtime thread although fjall calls block: a cart read is a
//! prefix scan of recent data (memtable and block cache) that takes microseconds, while a
//! hop to tokio's blocking pool costs two thread wake-ups per read. Profiled under the
//! cluster benchmark, those wake-ups were the largest single cost of a data node. The
//! operator and sweep listings (`ScanPg`, `ListItems`) read up to 10,000 items and run on
//! the blocking pool instead, so that they never hold cart requests up, and so do category
//! pages (up to [`MAX_CATEGORY_PAGE`] users' items).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cartdb_core::cart::DeviceId;
use cartdb_core::coord::ClusterMap;
use cartdb_core::rpc::Service;
use cartdb_core::wire::{
    DataCall, DataFailure, DataRequest, DataResponse, ItemRepair, MAX_CATEGORY_PAGE,
    PG_CHUNK_BYTES, ServiceKind,
};
use tokio::sync::watch;
use tokio::task::JoinError;

use crate::fence::{FenceMap, Verdict, verdict};

use crate::group_commit::{
    ApplyRequest, BatchCounters, CompactRequest, GroupCommit, GroupCommitSettings, RepairRequest,
    StopError,
};
use crate::store::{CartStore, DigestError, StoreError};

/// How long a request placed with a map newer than this node's waits for the node to learn
/// it (a ZooKeeper watch usually delivers it within milliseconds).
const MAP_WAIT: Duration = Duration::from_secs(2);

/// How often [`DataNodeService::watch_journals`] looks.
const JOURNAL_WATCH_EVERY: Duration = Duration::from_secs(10);

/// Journal files beyond which the store is not flushing (normally one or two).
const JOURNAL_ALARM: usize = 8;

/// Most items one `ScanPg` or `ListItems` answer carries, whatever the request asks: a
/// few hundred bytes each keeps an answer well under the RPC frame limit.
const MAX_LISTED: usize = 10_000;

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
    /// The cluster map as this node last read it (`None` before the first read), for the
    /// epoch fence.
    map: watch::Sender<Option<Arc<FenceMap>>>,
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
            map: watch::Sender::new(None),
        }))
    }

    /// Watches the store's journal count every [`JOURNAL_WATCH_EVERY`] while the service
    /// lives: the gauge `cartdb_datanode_journals`, and an error in the log once more than
    /// [`JOURNAL_ALARM`] pile up (fjall stopped flushing; see `WORKER_THREADS` in
    /// `store.rs`). Restarting the node replays and flushes them.
    pub fn watch_journals(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut alarmed = false;
            loop {
                tokio::time::sleep(JOURNAL_WATCH_EVERY).await;
                let Some(me) = me.upgrade() else { return };
                let journals = me.store.journal_count();
                #[allow(clippy::cast_precision_loss, reason = "a handful of files")]
                metrics::gauge!("cartdb_datanode_journals").set(journals as f64);
                if journals > JOURNAL_ALARM && !alarmed {
                    tracing::error!(
                        journals,
                        "the store's journals are not being flushed (fjall's workers are stuck); writes stay durable, but memory and disk grow until the data node is restarted"
                    );
                }
                alarmed = journals > JOURNAL_ALARM;
            }
        });
    }

    /// Fences requests with the maps `maps` publishes (the coordinator's copy of `/map`)
    /// until it closes.
    pub fn follow_map(self: &Arc<Self>, mut maps: watch::Receiver<Option<Arc<ClusterMap>>>) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let map = maps.borrow_and_update().clone();
                let Some(me) = me.upgrade() else { return };
                if let Some(map) = &map {
                    #[allow(clippy::cast_precision_loss, reason = "epochs stay far below 2^52")]
                    metrics::gauge!("cartdb_datanode_map_epoch").set(map.epoch as f64);
                }
                me.map
                    .send_replace(map.map(|map| Arc::new(FenceMap::new(map))));
                drop(me);
                if maps.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    /// Checks `call` against the epoch fence, learning a newer map first if the call was
    /// placed with one; the refusal to answer instead, if any.
    async fn fence(&self, call: &DataCall) -> Option<DataResponse> {
        let mut decided = verdict(self.map.borrow().as_deref(), call.epoch, &call.request);
        if decided == Verdict::Ahead {
            let mut maps = self.map.subscribe();
            let learnt = maps.wait_for(|map| map.as_ref().is_some_and(|m| m.epoch() >= call.epoch));
            if let Ok(Ok(map)) = tokio::time::timeout(MAP_WAIT, learnt).await {
                decided = verdict(map.as_deref(), call.epoch, &call.request);
            }
            drop(maps);
        }
        let current = self.map.borrow().as_ref().map_or(0, |m| m.epoch());
        let failure = match decided {
            Verdict::Serve => return None,
            Verdict::Stale { interval } => DataFailure::StaleEpoch {
                device: self.device,
                epoch: call.epoch,
                interval,
                current,
            },
            Verdict::Ahead => DataFailure::MapUnknown {
                device: self.device,
                epoch: call.epoch,
                current,
            },
        };
        let reason = if decided == Verdict::Ahead {
            "unknown"
        } else {
            "stale"
        };
        metrics::counter!("cartdb_datanode_fenced_total", "reason" => reason).increment(1);
        tracing::debug!(%failure, request = call.request.name(), "fenced");
        Some(DataResponse::Failed(failure))
    }

    /// The node's store, for inspection by tests and tools (writes go through the service).
    pub fn store(&self) -> &CartStore {
        &self.store
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

    /// Hands every repair to the writer at once, so they share its batches (one commit for
    /// up to `--max-batch` of them), and answers their total, or the first failure.
    async fn repair_many(&self, items: Vec<ItemRepair>) -> DataResponse {
        let repairs = items.into_iter().map(|item| {
            self.writer.repair(RepairRequest {
                key: item.key,
                meta: item.meta,
                base: item.base,
                ops: item.ops,
            })
        });
        let mut added = 0u32;
        for reply in futures::future::join_all(repairs).await {
            match reply {
                DataResponse::Repaired { added: n } => added = added.saturating_add(n),
                failure => return failure,
            }
        }
        DataResponse::Repaired { added }
    }

    /// Runs a read; every failure becomes a `Storage` reply.
    fn read(
        &self,
        read: impl FnOnce(&CartStore) -> Result<DataResponse, StoreError>,
    ) -> DataResponse {
        let detail = match read(&self.store) {
            Ok(response) => return response,
            Err(e) => e.to_string(),
        };
        self.storage_failure(detail)
    }

    /// Runs a long read on tokio's blocking pool; every failure becomes a `Storage` reply.
    async fn read_blocking(
        &self,
        read: impl FnOnce(&CartStore) -> Result<DataResponse, StoreError> + Send + 'static,
    ) -> DataResponse {
        let store = self.store.clone();
        let detail = match tokio::task::spawn_blocking(move || read(&store)).await {
            Ok(Ok(response)) => return response,
            Ok(Err(e)) => e.to_string(),
            Err(e) => format!("the read task failed: {e}"),
        };
        self.storage_failure(detail)
    }

    fn storage_failure(&self, detail: String) -> DataResponse {
        tracing::warn!(%detail, "read failed");
        DataResponse::Failed(DataFailure::Storage {
            device: self.device,
            detail,
        })
    }
}

impl Service for DataNodeService {
    type Request = DataCall;
    type Response = DataResponse;
    const KIND: ServiceKind = ServiceKind::DataNode;

    fn request_name(call: &DataCall) -> &'static str {
        call.request.name()
    }

    async fn call(self: Arc<Self>, call: DataCall) -> DataResponse {
        if let Some(refusal) = self.fence(&call).await {
            return refusal;
        }
        match call.request {
            DataRequest::Apply {
                key,
                meta,
                op,
                require_in_cart,
                restamped,
            } => {
                let request = ApplyRequest {
                    key,
                    meta,
                    op,
                    require_in_cart,
                    restamped,
                };
                self.writer.apply(request).await
            }
            DataRequest::ReadUser { user } => self.read(move |store| {
                let items = store.read_user(&user, None)?;
                Ok(DataResponse::UserItems { items })
            }),
            DataRequest::ListCategory {
                category,
                after,
                limit,
            } => {
                self.read_blocking(move |store| {
                    let users = limit.clamp(1, MAX_CATEGORY_PAGE) as usize;
                    let (items, more) = store.category_page(&category, after.as_deref(), users)?;
                    Ok(DataResponse::CategoryItems { items, more })
                })
                .await
            }
            DataRequest::ReadSummaries { user } => self.read(move |store| {
                let items = store.read_user_summaries(&user)?;
                Ok(DataResponse::Summaries { items })
            }),
            DataRequest::ReadItems { user, products } => self.read(move |store| {
                let items = store.read_user(&user, Some(&products))?;
                Ok(DataResponse::UserItems { items })
            }),
            DataRequest::Repair {
                key,
                meta,
                base,
                ops,
            } => {
                let request = RepairRequest {
                    key,
                    meta,
                    base,
                    ops,
                };
                self.writer.repair(request).await
            }
            DataRequest::Compact { key, upto, digest } => {
                let request = CompactRequest { key, upto, digest };
                self.writer.compact(request).await
            }
            DataRequest::ScanPg { ranges, limit } => {
                self.read_blocking(move |store| {
                    let limit = usize::try_from(limit).unwrap_or(usize::MAX).min(MAX_LISTED);
                    let (items, more) = store.scan_placement(&ranges, limit)?;
                    Ok(DataResponse::Held { items, more })
                })
                .await
            }
            DataRequest::ListItems { after, limit } => {
                self.read_blocking(move |store| {
                    let limit = usize::try_from(limit).unwrap_or(usize::MAX).min(MAX_LISTED);
                    let (items, more) = store.list_items(after.as_ref(), limit)?;
                    Ok(DataResponse::Held { items, more })
                })
                .await
            }
            DataRequest::DropItems { items } => self.writer.drop_items(items).await,
            DataRequest::ReadPg {
                ranges,
                after,
                limit,
            } => {
                self.read_blocking(move |store| {
                    let limit = usize::try_from(limit).unwrap_or(usize::MAX).min(MAX_LISTED);
                    let (items, more) =
                        store.read_pg(&ranges, after.as_ref(), limit, PG_CHUNK_BYTES)?;
                    Ok(DataResponse::PgStates { items, more })
                })
                .await
            }
            DataRequest::RepairMany { items } => self.repair_many(items).await,
            // Inline: the buckets are in memory, a PG's few hundred atomic loads.
            DataRequest::PgDigests { ranges } => match self.store.pg_digests(&ranges) {
                Ok(buckets) => DataResponse::PgDigests { buckets },
                Err(DigestError::NotReady) => DataResponse::Failed(DataFailure::DigestsNotReady {
                    device: self.device,
                }),
                Err(problem) => DataResponse::Failed(DataFailure::InvalidRequest {
                    device: self.device,
                    problem: problem.to_string(),
                }),
            },
        }
    }
}

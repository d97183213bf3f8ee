//! Application-level group commit: many concurrent writes, one fsync.
//!
//! fjall has no group commit and holds its journal lock while it fsyncs, so writers that each
//! fsync run one after another. Here one dedicated thread owns the write path instead:
//!
//! ```text
//! apply() --+                      writer thread
//! apply() --+--> queue --> drain up to max_batch requests
//! apply() --+              decide each, in arrival order, against an in-batch overlay
//!                          one fjall batch (items + categories), SyncData   <- one fsync
//!      <-------- replies   answer every request of the batch
//! ```
//!
//! Nothing is answered before the batch holding it is durable. Requests that arrive while a
//! batch is being fsync'd wait in the queue and form the next batch, so batches grow with the
//! load and no timer is needed. If a commit fails, fjall has poisoned the database: every
//! request of that batch and every later write is answered with [`DataFailure::Storage`], and
//! [`GroupCommit::failed`] resolves so the node can shut down and be restarted.
//!
//! The decisions are pure and live in `group_commit/plan.rs`: what one request decides
//! against an item's state, and [`BatchPlan`], a batch of them against an overlay; they are
//! tested without fjall. This module is the threads and the queue around them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use cartdb_core::cart::{DeviceId, InputError, ItemKey, StateDigest, validate_id};
use cartdb_core::version::wall_clock_millis;
use cartdb_core::wire::{DataFailure, DataResponse};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::store::{CartStore, ItemWrite, StoreError};

mod plan;

pub use plan::{
    ApplyRequest, BatchPlan, CompactRequest, ItemReader, Outcome, RepairRequest, Timing,
    WriteRequest,
};

/// What the writer needs from the store: [`CartStore`] in production; tests use a fake
/// whose commits fail, since a real fsync failure cannot be provoked on demand.
pub trait ItemLog: ItemReader + Send + Sync + 'static {
    /// See [`CartStore::commit`]: atomic and durable before it returns.
    ///
    /// # Errors
    /// As [`CartStore::commit`].
    fn commit(&self, writes: &[ItemWrite]) -> Result<(), StoreError>;

    /// See [`CartStore::drop_items`]: atomic and durable before it returns.
    ///
    /// # Errors
    /// As [`CartStore::drop_items`].
    fn drop_items(&self, items: &[(ItemKey, StateDigest)]) -> Result<(u32, u32), StoreError>;
}

impl ItemLog for CartStore {
    fn commit(&self, writes: &[ItemWrite]) -> Result<(), StoreError> {
        CartStore::commit(self, writes)
    }

    fn drop_items(&self, items: &[(ItemKey, StateDigest)]) -> Result<(u32, u32), StoreError> {
        CartStore::drop_items(self, items)
    }
}

/// Settings of the write path.
#[derive(Clone, Copy, Debug)]
pub struct GroupCommitSettings {
    /// Named in failure replies.
    pub device: DeviceId,
    /// Most requests in one batch (one fsync).
    pub max_batch: usize,
    pub timing: Timing,
}

/// Counters of the write path, for tests, benchmarks and logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchCounters {
    /// Batches processed (each is at most one fsync).
    pub batches: u64,
    /// Requests answered through batches.
    pub requests: u64,
    /// Batches that wrote something (one fjall commit with SyncData each).
    pub commits: u64,
    /// The largest batch so far, in requests.
    pub largest: u64,
}

#[derive(Debug, Default)]
struct Counters {
    batches: AtomicU64,
    requests: AtomicU64,
    commits: AtomicU64,
    largest: AtomicU64,
}

impl Counters {
    fn record(&self, requests: usize, committed: bool) {
        let requests = u64::try_from(requests).unwrap_or(u64::MAX);
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(requests, Ordering::Relaxed);
        self.commits
            .fetch_add(u64::from(committed), Ordering::Relaxed);
        self.largest.fetch_max(requests, Ordering::Relaxed);
    }

    fn snapshot(&self) -> BatchCounters {
        BatchCounters {
            batches: self.batches.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            commits: self.commits.load(Ordering::Relaxed),
            largest: self.largest.load(Ordering::Relaxed),
        }
    }
}

/// Why the write path did not stop cleanly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StopError {
    /// The writer thread panicked (a bug); requests it held were answered with a failure.
    #[error("the group commit writer thread panicked")]
    WriterPanicked,
    /// The blocking task that waits for the writer thread could not run.
    #[error("cannot wait for the group commit writer: {0}")]
    Join(#[from] tokio::task::JoinError),
}

enum Message {
    Write(Job),
    /// Handback: delete these items, after the batch it arrives with is committed.
    Drop(DropJob),
    /// Stop accepting; commit what is queued, then end the thread.
    Stop,
}

struct Job {
    request: WriteRequest,
    reply: oneshot::Sender<DataResponse>,
}

struct DropJob {
    items: Vec<(ItemKey, StateDigest)>,
    reply: oneshot::Sender<DataResponse>,
}

/// The handle to the write path. Dropping it lets the writer finish the queue and exit; call
/// [`GroupCommit::shutdown`] to wait for that.
pub struct GroupCommit {
    device: DeviceId,
    queue: mpsc::Sender<Message>,
    counters: Arc<Counters>,
    failed: CancellationToken,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl GroupCommit {
    /// Starts the writer thread over `store`.
    ///
    /// # Errors
    /// The I/O error of spawning the thread.
    pub fn start(store: Arc<dyn ItemLog>, settings: GroupCommitSettings) -> std::io::Result<Self> {
        let max_batch = settings.max_batch.max(1);
        // Twice a batch: enough to form the next batch while one is fsync'd; beyond that,
        // callers wait in `send`, which is the back-pressure.
        let (queue, receiver) = mpsc::channel(max_batch.saturating_mul(2));
        let counters = Arc::new(Counters::default());
        let failed = CancellationToken::new();
        let writer = Writer {
            store,
            device: settings.device,
            max_batch,
            timing: settings.timing,
            queue: receiver,
            counters: counters.clone(),
            failed: failed.clone(),
            failure: None,
            drops: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("cartdb-group-commit".into())
            .spawn(move || writer.run())?;
        Ok(Self {
            device: settings.device,
            queue,
            counters,
            failed,
            writer: Mutex::new(Some(thread)),
        })
    }

    /// Applies one operation and answers once it is durable (or refused, or failed).
    ///
    /// Dropping the future after the request was queued does not cancel the write.
    /// A request whose identifiers cannot be key parts is refused here, so it never reaches
    /// (and fails) a batch.
    pub async fn apply(&self, request: ApplyRequest) -> DataResponse {
        self.write(WriteRequest::Apply(request)).await
    }

    /// Adds what the replica lacks of a merged state and answers once it is durable.
    /// Cancellation and refusals as for [`GroupCommit::apply`].
    pub async fn repair(&self, request: RepairRequest) -> DataResponse {
        self.write(WriteRequest::Repair(request)).await
    }

    /// Folds the item's old operations into its base if it is still in the state the
    /// gateway saw (see [`CompactRequest`]) and answers once that is durable.
    pub async fn compact(&self, request: CompactRequest) -> DataResponse {
        self.write(WriteRequest::Compact(request)).await
    }

    /// Deletes these items if they are still in the state given (handback, see
    /// `DataRequest::DropItems`) and answers once that is durable. The writer runs it after
    /// the batch it arrives with, so it never races a write.
    pub async fn drop_items(&self, items: Vec<(ItemKey, StateDigest)>) -> DataResponse {
        for (key, _) in &items {
            if let Err(e) = validate_id("userid", &key.user)
                .and_then(|()| validate_id("productid", &key.product))
            {
                return DataResponse::Failed(DataFailure::InvalidRequest {
                    device: self.device,
                    problem: e.to_string(),
                });
            }
        }
        let (reply, answer) = oneshot::channel();
        self.send(Message::Drop(DropJob { items, reply }), answer)
            .await
    }

    async fn write(&self, request: WriteRequest) -> DataResponse {
        if let Err(e) = check_ids(&request) {
            return DataResponse::Failed(DataFailure::InvalidRequest {
                device: self.device,
                problem: e.to_string(),
            });
        }
        let (reply, answer) = oneshot::channel();
        self.send(Message::Write(Job { request, reply }), answer)
            .await
    }

    /// Queues `message` for the writer and waits for its `answer`.
    async fn send(
        &self,
        message: Message,
        answer: oneshot::Receiver<DataResponse>,
    ) -> DataResponse {
        if self.queue.send(message).await.is_err() {
            return DataResponse::Failed(DataFailure::ShuttingDown {
                device: self.device,
            });
        }
        answer.await.unwrap_or_else(|_| {
            storage_failure(
                self.device,
                "the write path stopped before answering".into(),
            )
        })
    }

    /// Counters of the batches so far.
    pub fn counters(&self) -> BatchCounters {
        self.counters.snapshot()
    }

    /// Resolves once a commit has failed (or the writer thread panicked); every later write
    /// is refused.
    pub async fn failed(&self) {
        self.failed.cancelled().await;
    }

    /// Whether a commit has failed.
    pub fn has_failed(&self) -> bool {
        self.failed.is_cancelled()
    }

    /// Stops accepting writes (later [`GroupCommit::apply`] calls get `ShuttingDown`),
    /// commits and answers everything already queued, and waits for the writer thread.
    ///
    /// # Errors
    /// [`StopError`] when the writer thread panicked or could not be waited for.
    pub async fn shutdown(&self) -> Result<(), StopError> {
        // An error means the writer is already gone, which is the goal.
        let _ = self.queue.send(Message::Stop).await;
        let thread = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(thread) = thread else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || thread.join())
            .await?
            .map_err(|_| StopError::WriterPanicked)
    }
}

/// The writer thread's state.
struct Writer {
    store: Arc<dyn ItemLog>,
    device: DeviceId,
    max_batch: usize,
    timing: Timing,
    queue: mpsc::Receiver<Message>,
    counters: Arc<Counters>,
    failed: CancellationToken,
    /// Set by the first failed commit; every later write is refused with it.
    failure: Option<String>,
    /// Drops received with the current batch, run after its commit.
    drops: Vec<DropJob>,
}

/// Cancels the failure token if the writer thread panics, so the node stops instead of
/// answering every later write with `ShuttingDown`.
struct PanicAlarm(CancellationToken);

impl Drop for PanicAlarm {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!("the group commit writer panicked; the node refuses writes");
            self.0.cancel();
        }
    }
}

impl Writer {
    fn run(mut self) {
        let _alarm = PanicAlarm(self.failed.clone());
        while let Some(jobs) = self.next_batch() {
            self.process(jobs);
            self.run_drops();
        }
        tracing::debug!("group commit writer stopped");
    }

    /// Waits for a request, then takes whatever else is queued, up to `max_batch`.
    /// `None` once the queue is closed and empty.
    fn next_batch(&mut self) -> Option<Vec<Job>> {
        let first = self.queue.blocking_recv()?;
        let mut jobs = Vec::new();
        self.take(first, &mut jobs);
        while jobs.len() + self.drops.len() < self.max_batch {
            match self.queue.try_recv() {
                Ok(message) => self.take(message, &mut jobs),
                Err(_) => break,
            }
        }
        Some(jobs)
    }

    fn take(&mut self, message: Message, jobs: &mut Vec<Job>) {
        match message {
            Message::Write(job) => jobs.push(job),
            Message::Drop(job) => self.drops.push(job),
            // Queued requests are still received (and committed) after `close`.
            Message::Stop => self.queue.close(),
        }
    }

    fn process(&mut self, jobs: Vec<Job>) {
        if jobs.is_empty() {
            return;
        }
        if let Some(failure) = &self.failure {
            let detail = format!("writes refused since a commit failed: {failure}");
            answer_all(jobs, &storage_failure(self.device, detail));
            return;
        }
        let mut plan = BatchPlan::new(self.timing, wall_clock_millis());
        let replies: Vec<DataResponse> = jobs
            .iter()
            .map(|job| self.decide(&mut plan, &job.request))
            .collect();
        let writes = plan.into_writes();
        let started = std::time::Instant::now();
        let outcome = self.store.commit(&writes);
        // Counted before answering, so a caller that saw its reply also sees its batch.
        self.counters.record(jobs.len(), !writes.is_empty());
        metrics::histogram!("cartdb_datanode_group_commit_batch_size").record(jobs.len() as f64);
        metrics::counter!("cartdb_datanode_write_requests_total").increment(jobs.len() as u64);
        if !writes.is_empty() {
            // One fjall commit with SyncData: the memtable inserts and the journal's fdatasync.
            metrics::histogram!("cartdb_datanode_commit_seconds")
                .record(started.elapsed().as_secs_f64());
            let result = if outcome.is_ok() { "ok" } else { "error" };
            metrics::counter!("cartdb_datanode_commits_total", "result" => result).increment(1);
        }
        match outcome {
            Ok(()) => answer_each(jobs, replies),
            Err(e @ StoreError::Commit { .. }) => self.fail(jobs, &e),
            // Refused before anything reached fjall (a bug, since `apply` checks the ids):
            // this batch fails, the store is intact.
            Err(e) => {
                tracing::error!(error = %e, "cannot stage a batch");
                answer_all(jobs, &storage_failure(self.device, e.to_string()));
            }
        }
    }

    /// Runs the drops received with the last batch, each as its own fsync'd batch.
    fn run_drops(&mut self) {
        for job in std::mem::take(&mut self.drops) {
            let reply = match &self.failure {
                Some(failure) => storage_failure(
                    self.device,
                    format!("writes refused since a commit failed: {failure}"),
                ),
                None => match self.store.drop_items(&job.items) {
                    Ok((items, changed)) => DataResponse::Dropped { items, changed },
                    Err(e @ StoreError::Commit { .. }) => {
                        self.fail(Vec::new(), &e);
                        storage_failure(self.device, e.to_string())
                    }
                    Err(e) => storage_failure(self.device, e.to_string()),
                },
            };
            // A caller that went away: the drop happened (or failed) all the same.
            let _ = job.reply.send(reply);
        }
    }

    /// Decides one request; a failed read fails only that request.
    fn decide(&self, plan: &mut BatchPlan, request: &WriteRequest) -> DataResponse {
        match plan.decide(request, self.store.as_ref()) {
            Ok(outcome) => outcome.reply(self.device),
            Err(e) => {
                tracing::error!(key = ?request.key(), error = %e, "cannot read an item to apply an operation");
                storage_failure(self.device, e.to_string())
            }
        }
    }

    /// A commit failed: fjall has poisoned the database, so no later write can succeed.
    fn fail(&mut self, jobs: Vec<Job>, error: &StoreError) {
        tracing::error!(
            error = %error,
            requests = jobs.len(),
            "COMMIT FAILED: the store refuses all further writes; restart the data node"
        );
        answer_all(jobs, &storage_failure(self.device, error.to_string()));
        self.failure = Some(error.to_string());
        self.failed.cancel();
    }
}

/// The identifiers that become key parts: anything `validate_id` refuses could break the
/// store's key layout.
fn check_ids(request: &WriteRequest) -> Result<(), InputError> {
    validate_id("userid", &request.key().user)?;
    validate_id("productid", &request.key().product)?;
    match request.meta() {
        Some(meta) => validate_id("category", &meta.category),
        None => Ok(()),
    }
}

fn answer_each(jobs: Vec<Job>, replies: Vec<DataResponse>) {
    for (job, reply) in jobs.into_iter().zip(replies) {
        // A caller that went away still had its write applied; there is no one to tell.
        let _ = job.reply.send(reply);
    }
}

fn answer_all(jobs: Vec<Job>, reply: &DataResponse) {
    for job in jobs {
        // As in `answer_each`.
        let _ = job.reply.send(reply.clone());
    }
}

fn storage_failure(device: DeviceId, detail: String) -> DataResponse {
    DataResponse::Failed(DataFailure::Storage { device, detail })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]
mod tests {
    use std::sync::atomic::Ordering;

    use cartdb_core::cart::OpKind;

    use super::plan::tests::{MemoryLog, key, meta, op};
    use super::*;

    fn is_storage_failure(reply: &DataResponse) -> bool {
        matches!(
            reply,
            DataResponse::Failed(DataFailure::Storage { device: 9, .. })
        )
    }

    fn apply(id: u128, hlc: u64) -> ApplyRequest {
        ApplyRequest {
            key: key(),
            meta: meta("c1"),
            op: op(id, OpKind::Add, hlc),
            require_in_cart: false,
            restamped: false,
        }
    }

    #[tokio::test]
    async fn a_failed_commit_fails_its_batch_and_refuses_later_writes() {
        let log = Arc::new(MemoryLog::default());
        let settings = GroupCommitSettings {
            device: 9,
            max_batch: 8,
            timing: Timing::ANY_AGE,
        };
        let writer = GroupCommit::start(log.clone(), settings).unwrap();
        assert_eq!(
            writer.apply(apply(1, 1)).await,
            DataResponse::Applied {
                qty: 1,
                duplicate: false,
                held: op(1, OpKind::Add, 1).version,
            }
        );
        assert!(!writer.has_failed());

        log.failing.store(true, Ordering::SeqCst);
        let (a, b) = tokio::join!(writer.apply(apply(2, 2)), writer.apply(apply(1, 1)));
        assert!(is_storage_failure(&a), "{a:?}");
        assert!(
            is_storage_failure(&b),
            "a duplicate in (or after) a failed batch fails too: {b:?}"
        );
        writer.failed().await;

        // fjall stays poisoned after a failed fsync, so the writer refuses even if the
        // underlying store would now accept the write.
        log.failing.store(false, Ordering::SeqCst);
        assert!(is_storage_failure(&writer.apply(apply(3, 3)).await));
        assert_eq!(log.state().map(|s| s.qty()), Some(1));
        writer.shutdown().await.unwrap();
    }
}

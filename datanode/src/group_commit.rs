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
//! The decisions are pure: [`Decision::decide`] (one request against one item state) and
//! [`BatchPlan`] (a batch of them against an overlay) are tested without fjall.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use cartdb_core::cart::{
    DeviceId, InputError, ItemKey, ItemMeta, ItemState, Operation, validate_id,
};
use cartdb_core::wire::{DataFailure, DataResponse};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::store::{CartStore, IndexChange, ItemWrite, StoreError};

/// One `DataRequest::Apply`: append `op` to the item's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplyRequest {
    pub key: ItemKey,
    pub meta: ItemMeta,
    pub op: Operation,
    /// Refuse (and write nothing) when the item's quantity is 0 here.
    pub require_in_cart: bool,
}

/// What one [`ApplyRequest`] does to an item, decided from the item's current state alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The operation is already in the log (or folded into its base): nothing to write.
    Duplicate { qty: u64 },
    /// `require_in_cart` was set and the quantity is 0: nothing to write.
    NotInCart,
    /// Write this new state.
    Write(ItemState),
}

impl Decision {
    /// Decides `request` against the item's `current` state (`None`: never seen here).
    ///
    /// A retry is recognised before `require_in_cart` is checked, so a retried delete that
    /// took the quantity to 0 is answered as a duplicate, not as "not in cart".
    pub fn decide(current: Option<&ItemState>, request: &ApplyRequest) -> Self {
        let mut state = match current {
            Some(state) => state.clone(),
            None => ItemState::new(request.key.product.clone(), request.meta.clone()),
        };
        if state.contains(request.op.id) {
            return Self::Duplicate { qty: state.qty() };
        }
        if request.require_in_cart && state.qty() == 0 {
            return Self::NotInCart;
        }
        if !state.apply(request.op) {
            // Older than the folded base: it (or its effect) is already accounted for.
            return Self::Duplicate { qty: state.qty() };
        }
        // The gateway sends the catalog's current facts; the newest ones win.
        state.meta = request.meta.clone();
        Self::Write(state)
    }

    /// The answer to the request, once the write (if any) is durable.
    pub fn reply(&self) -> DataResponse {
        match self {
            Self::Duplicate { qty } => DataResponse::Applied {
                qty: *qty,
                duplicate: true,
            },
            Self::NotInCart => DataResponse::NotInCart,
            Self::Write(state) => DataResponse::Applied {
                qty: state.qty(),
                duplicate: false,
            },
        }
    }
}

/// The items one batch touches: their state before the batch and as the batch leaves them.
///
/// Requests are decided in arrival order against this overlay, so two operations on the same
/// item in one batch compose, and the batch writes each item once, with the index change
/// from its state before the batch to its state after.
#[derive(Debug, Default)]
pub struct BatchPlan {
    items: BTreeMap<ItemKey, Slot>,
}

#[derive(Debug)]
struct Slot {
    before: Option<ItemState>,
    /// The state after this batch's writes so far; `None` while unchanged.
    after: Option<ItemState>,
}

impl Slot {
    fn current(&self) -> Option<&ItemState> {
        self.after.as_ref().or(self.before.as_ref())
    }
}

impl BatchPlan {
    /// Decides `request` against the overlay, loading the item with `load` the first time the
    /// batch touches it, and returns the reply to send once the batch is durable.
    ///
    /// # Errors
    /// Whatever `load` returns; the overlay is left unchanged.
    pub fn apply<E>(
        &mut self,
        request: &ApplyRequest,
        load: impl FnOnce(&ItemKey) -> Result<Option<ItemState>, E>,
    ) -> Result<DataResponse, E> {
        let slot = match self.items.entry(request.key.clone()) {
            std::collections::btree_map::Entry::Occupied(slot) => slot.into_mut(),
            std::collections::btree_map::Entry::Vacant(slot) => slot.insert(Slot {
                before: load(&request.key)?,
                after: None,
            }),
        };
        let decision = Decision::decide(slot.current(), request);
        let reply = decision.reply();
        if let Decision::Write(state) = decision {
            slot.after = Some(state);
        }
        Ok(reply)
    }

    /// The writes that make the batch's changes, one per changed item.
    pub fn into_writes(self) -> Vec<ItemWrite> {
        self.items
            .into_iter()
            .filter_map(|(key, slot)| {
                let state = slot.after?;
                let index = IndexChange::between(slot.before.as_ref(), &state);
                Some(ItemWrite { key, state, index })
            })
            .collect()
    }
}

/// What the writer needs from the store: [`CartStore`] in production; tests use a fake
/// whose commits fail, since a real fsync failure cannot be provoked on demand.
pub trait ItemLog: Send + Sync + 'static {
    /// See [`CartStore::read_item`].
    ///
    /// # Errors
    /// As [`CartStore::read_item`].
    fn read_item(&self, key: &ItemKey) -> Result<Option<ItemState>, StoreError>;

    /// See [`CartStore::commit`]: atomic and durable before it returns.
    ///
    /// # Errors
    /// As [`CartStore::commit`].
    fn commit(&self, writes: &[ItemWrite]) -> Result<(), StoreError>;
}

impl ItemLog for CartStore {
    fn read_item(&self, key: &ItemKey) -> Result<Option<ItemState>, StoreError> {
        CartStore::read_item(self, key)
    }

    fn commit(&self, writes: &[ItemWrite]) -> Result<(), StoreError> {
        CartStore::commit(self, writes)
    }
}

/// Settings of the write path.
#[derive(Clone, Copy, Debug)]
pub struct GroupCommitSettings {
    /// Named in failure replies.
    pub device: DeviceId,
    /// Most requests in one batch (one fsync).
    pub max_batch: usize,
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
    Apply(Job),
    /// Stop accepting; commit what is queued, then end the thread.
    Stop,
}

struct Job {
    request: ApplyRequest,
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
            queue: receiver,
            counters: counters.clone(),
            failed: failed.clone(),
            failure: None,
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
        if let Err(e) = check_ids(&request) {
            return DataResponse::Failed(DataFailure::InvalidRequest {
                device: self.device,
                problem: e.to_string(),
            });
        }
        let (reply, answer) = oneshot::channel();
        let job = Job { request, reply };
        if self.queue.send(Message::Apply(job)).await.is_err() {
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
    queue: mpsc::Receiver<Message>,
    counters: Arc<Counters>,
    failed: CancellationToken,
    /// Set by the first failed commit; every later write is refused with it.
    failure: Option<String>,
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
        }
        tracing::debug!("group commit writer stopped");
    }

    /// Waits for a request, then takes whatever else is queued, up to `max_batch`.
    /// `None` once the queue is closed and empty.
    fn next_batch(&mut self) -> Option<Vec<Job>> {
        let first = self.queue.blocking_recv()?;
        let mut jobs = Vec::new();
        self.take(first, &mut jobs);
        while jobs.len() < self.max_batch {
            match self.queue.try_recv() {
                Ok(message) => self.take(message, &mut jobs),
                Err(_) => break,
            }
        }
        Some(jobs)
    }

    fn take(&mut self, message: Message, jobs: &mut Vec<Job>) {
        match message {
            Message::Apply(job) => jobs.push(job),
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
        let mut plan = BatchPlan::default();
        let replies: Vec<DataResponse> = jobs
            .iter()
            .map(|job| self.decide(&mut plan, &job.request))
            .collect();
        let writes = plan.into_writes();
        let outcome = self.store.commit(&writes);
        // Counted before answering, so a caller that saw its reply also sees its batch.
        self.counters.record(jobs.len(), !writes.is_empty());
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

    /// Decides one request; a failed read fails only that request.
    fn decide(&self, plan: &mut BatchPlan, request: &ApplyRequest) -> DataResponse {
        plan.apply(request, |key| self.store.read_item(key))
            .unwrap_or_else(|e| {
                tracing::error!(key = ?request.key, error = %e, "cannot read an item to apply an operation");
                storage_failure(self.device, e.to_string())
            })
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
fn check_ids(request: &ApplyRequest) -> Result<(), InputError> {
    validate_id("userid", &request.key.user)?;
    validate_id("productid", &request.key.product)?;
    validate_id("category", &request.meta.category)
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
    use std::collections::HashMap;
    use std::convert::Infallible;
    use std::sync::atomic::Ordering;

    use cartdb_core::cart::{OpId, OpKind};
    use cartdb_core::version::Version;

    use super::*;

    fn request(id: u128, kind: OpKind, hlc: u64, require_in_cart: bool) -> ApplyRequest {
        ApplyRequest {
            key: ItemKey {
                user: "u1".into(),
                product: "p1".into(),
            },
            meta: ItemMeta {
                price: 5,
                category: "c1".into(),
            },
            op: Operation {
                id: OpId(id),
                kind,
                version: Version { hlc, gateway: 1 },
            },
            require_in_cart,
        }
    }

    fn applied(qty: u64, duplicate: bool) -> DataResponse {
        DataResponse::Applied { qty, duplicate }
    }

    fn empty(_: &ItemKey) -> Result<Option<ItemState>, Infallible> {
        Ok(None)
    }

    #[test]
    fn a_new_item_takes_the_request_meta() {
        let Decision::Write(state) = Decision::decide(None, &request(1, OpKind::Add, 1, false))
        else {
            panic!("expected a write");
        };
        assert_eq!(state.qty(), 1);
        assert_eq!(state.product, "p1");
        assert_eq!(state.meta.category, "c1");
    }

    #[test]
    fn meta_follows_the_newest_request() {
        let Decision::Write(old) = Decision::decide(None, &request(1, OpKind::Add, 1, false))
        else {
            panic!("expected a write");
        };
        let mut moved = request(2, OpKind::Add, 2, false);
        moved.meta.category = "c2".into();
        let Decision::Write(new) = Decision::decide(Some(&old), &moved) else {
            panic!("expected a write");
        };
        assert_eq!(new.meta.category, "c2");
    }

    #[test]
    fn a_retry_is_a_duplicate_even_when_the_item_is_now_empty() {
        let Decision::Write(state) = Decision::decide(None, &request(1, OpKind::Add, 1, false))
        else {
            panic!("expected a write");
        };
        let delete = request(2, OpKind::Delete, 2, true);
        let Decision::Write(state) = Decision::decide(Some(&state), &delete) else {
            panic!("expected a write");
        };
        assert_eq!(
            Decision::decide(Some(&state), &delete),
            Decision::Duplicate { qty: 0 }
        );
        assert_eq!(
            Decision::decide(Some(&state), &request(3, OpKind::Delete, 3, true)),
            Decision::NotInCart
        );
    }

    #[test]
    fn a_delete_of_an_unknown_item_is_not_in_cart() {
        assert_eq!(
            Decision::decide(None, &request(1, OpKind::Delete, 1, true)),
            Decision::NotInCart
        );
    }

    #[test]
    fn operations_in_one_batch_compose() {
        let mut plan = BatchPlan::default();
        let add = request(1, OpKind::Add, 1, false);
        assert_eq!(plan.apply(&add, empty), Ok(applied(1, false)));
        assert_eq!(plan.apply(&add, empty), Ok(applied(1, true)));
        let add2 = request(2, OpKind::Add, 2, false);
        assert_eq!(plan.apply(&add2, empty), Ok(applied(2, false)));
        let writes = plan.into_writes();
        assert_eq!(writes.len(), 1, "one write per item");
        assert_eq!(writes[0].state.ops.len(), 2);
        assert_eq!(writes[0].index.insert.as_deref(), Some("c1"));
    }

    #[test]
    fn an_item_that_ends_the_batch_as_it_started_keeps_its_index_entry() {
        let mut store = HashMap::new();
        let mut seed = BatchPlan::default();
        let _ = seed.apply(&request(1, OpKind::Add, 1, false), empty);
        for w in seed.into_writes() {
            store.insert(w.key, w.state);
        }
        let load = |k: &ItemKey| Ok::<_, Infallible>(store.get(k).cloned());
        let mut plan = BatchPlan::default();
        assert_eq!(
            plan.apply(&request(2, OpKind::Delete, 2, true), load),
            Ok(applied(0, false))
        );
        assert_eq!(
            plan.apply(&request(3, OpKind::Delete, 3, true), load),
            Ok(DataResponse::NotInCart)
        );
        assert_eq!(
            plan.apply(&request(4, OpKind::Add, 4, false), load),
            Ok(applied(1, false))
        );
        let writes = plan.into_writes();
        assert_eq!(writes.len(), 1);
        assert!(writes[0].index.is_empty(), "qty went 1 -> 0 -> 1");
    }

    #[test]
    fn refusals_and_duplicates_write_nothing() {
        let mut plan = BatchPlan::default();
        assert_eq!(
            plan.apply(&request(1, OpKind::Delete, 1, true), empty),
            Ok(DataResponse::NotInCart)
        );
        assert!(plan.into_writes().is_empty());
    }

    #[test]
    fn a_failed_load_fails_only_that_request() {
        let mut plan = BatchPlan::default();
        let failed = plan.apply(&request(1, OpKind::Add, 1, false), |_| Err("disk"));
        assert_eq!(failed, Err("disk"));
        assert!(plan.into_writes().is_empty());
    }

    /// An in-memory log whose commits fail while `failing` is set.
    #[derive(Default)]
    struct FlakyLog {
        items: Mutex<HashMap<ItemKey, ItemState>>,
        failing: std::sync::atomic::AtomicBool,
    }

    impl ItemLog for FlakyLog {
        fn read_item(&self, key: &ItemKey) -> Result<Option<ItemState>, StoreError> {
            Ok(self.items.lock().unwrap().get(key).cloned())
        }

        fn commit(&self, writes: &[ItemWrite]) -> Result<(), StoreError> {
            if self.failing.load(Ordering::SeqCst) {
                return Err(StoreError::Commit {
                    writes: writes.len(),
                    source: fjall::Error::Poisoned,
                });
            }
            let mut items = self.items.lock().unwrap();
            for w in writes {
                items.insert(w.key.clone(), w.state.clone());
            }
            Ok(())
        }
    }

    fn is_storage_failure(reply: &DataResponse) -> bool {
        matches!(
            reply,
            DataResponse::Failed(DataFailure::Storage { device: 9, .. })
        )
    }

    #[tokio::test]
    async fn a_failed_commit_fails_its_batch_and_refuses_later_writes() {
        let log = Arc::new(FlakyLog::default());
        let settings = GroupCommitSettings {
            device: 9,
            max_batch: 8,
        };
        let writer = GroupCommit::start(log.clone(), settings).unwrap();
        let add = |id, hlc| request(id, OpKind::Add, hlc, false);
        assert_eq!(writer.apply(add(1, 1)).await, applied(1, false));
        assert!(!writer.has_failed());

        log.failing.store(true, Ordering::SeqCst);
        let (a, b) = tokio::join!(writer.apply(add(2, 2)), writer.apply(add(1, 1)));
        assert!(is_storage_failure(&a), "{a:?}");
        assert!(
            is_storage_failure(&b),
            "a duplicate in (or after) a failed batch fails too: {b:?}"
        );
        writer.failed().await;

        // fjall stays poisoned after a failed fsync, so the writer refuses even if the
        // underlying store would now accept the write.
        log.failing.store(false, Ordering::SeqCst);
        assert!(is_storage_failure(&writer.apply(add(3, 3)).await));
        assert_eq!(
            log.items
                .lock()
                .unwrap()
                .values()
                .next()
                .map(ItemState::qty),
            Some(1)
        );
        writer.shutdown().await.unwrap();
    }
}

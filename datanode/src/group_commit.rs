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
use std::time::Duration;

use cartdb_core::cart::{
    Base, DeviceId, InputError, ItemKey, ItemMeta, ItemSummary, OpId, Operation, StateDigest,
    fold_qty, validate_id,
};
use cartdb_core::version::{Version, wall_clock_millis};
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

/// One `DataRequest::Repair`: add what this replica lacks of a merged state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepairRequest {
    pub key: ItemKey,
    pub meta: ItemMeta,
    /// A folded base newer than this replica's, if the merged state has one.
    pub base: Option<Base>,
    pub ops: Vec<Operation>,
}

/// One `DataRequest::Compact`: fold the log up to `upto` into the base, if the item is
/// still in the state (`digest`) the gateway saw on every replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompactRequest {
    pub key: ItemKey,
    pub upto: Version,
    pub digest: StateDigest,
}

/// A write the writer thread serialises with every other write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteRequest {
    Apply(ApplyRequest),
    Repair(RepairRequest),
    Compact(CompactRequest),
}

/// The clock rules that make compaction safe (see "Compaction" in docs/design.md).
///
/// Compaction folds operations older than `grace` into the base once every replica holds
/// the same log. That is only safe if no operation that old can still arrive later: so an
/// operation older than `accept_window` (< `grace`) is refused. Folded operations' ids are
/// remembered for `id_retention`, so retries are recognised that long.
///
/// An operation dated more than `max_skew` ahead of this node's clock is refused too: its
/// version would outrank every operation issued for as long as the skew lasts, and a gateway
/// that read it would drag its own clock forward that far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// `None`: accept operations of any age (tests that use small synthetic versions).
    pub accept_window: Option<Duration>,
    pub grace: Duration,
    pub id_retention: Duration,
    /// `None`: accept operations from any future (tests with synthetic versions).
    pub max_skew: Option<Duration>,
}

impl Timing {
    /// For tests with synthetic versions: any age is accepted and anything may be folded.
    pub const ANY_AGE: Self = Self {
        accept_window: None,
        grace: Duration::ZERO,
        id_retention: Duration::from_secs(365 * 24 * 3600),
        max_skew: None,
    };
}

impl WriteRequest {
    fn key(&self) -> &ItemKey {
        match self {
            Self::Apply(r) => &r.key,
            Self::Repair(r) => &r.key,
            Self::Compact(r) => &r.key,
        }
    }

    /// The product facts the request carries, if any.
    fn meta(&self) -> Option<&ItemMeta> {
        match self {
            Self::Apply(r) => Some(&r.meta),
            Self::Repair(r) => Some(&r.meta),
            Self::Compact(_) => None,
        }
    }
}

/// What a write did, decided against the item's state alone; the reply once it is durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The operation was added (`duplicate: false`) or was already there; `qty` afterwards.
    Applied { qty: u64, duplicate: bool },
    /// `require_in_cart` was set and the quantity is 0: nothing written.
    NotInCart,
    /// The operation is not newer than the folded base: nothing written.
    TooOld { version: Version, base: Version },
    /// A repair added this many operations, or moved them to a smaller version.
    Repaired { added: u32 },
    /// The operation is older than the acceptance window: nothing written.
    Expired { age_ms: u64, window_ms: u64 },
    /// The operation is dated further ahead of this node's clock than the allowed skew:
    /// nothing written.
    FromTheFuture { ahead_ms: u64, max_skew_ms: u64 },
    /// A compaction folded this many log entries.
    Compacted { folded: u32 },
}

impl Outcome {
    /// The reply to send for this outcome on `device`.
    pub fn reply(&self, device: DeviceId) -> DataResponse {
        match *self {
            Self::Applied { qty, duplicate } => DataResponse::Applied { qty, duplicate },
            Self::NotInCart => DataResponse::NotInCart,
            Self::TooOld { version, base } => DataResponse::Failed(DataFailure::TooOld {
                device,
                version,
                base,
            }),
            Self::Repaired { added } => DataResponse::Repaired { added },
            Self::Expired { age_ms, window_ms } => DataResponse::Failed(DataFailure::Expired {
                device,
                age_ms,
                window_ms,
            }),
            Self::FromTheFuture {
                ahead_ms,
                max_skew_ms,
            } => DataResponse::Failed(DataFailure::FromTheFuture {
                device,
                ahead_ms,
                max_skew_ms,
            }),
            Self::Compacted { folded } => DataResponse::Compacted { folded },
        }
    }
}

/// What the writer reads from the store while deciding: [`CartStore`] in production.
pub trait ItemReader {
    /// See [`CartStore::read_summary`].
    ///
    /// # Errors
    /// As [`CartStore::read_summary`].
    fn read_summary(&self, key: &ItemKey) -> Result<Option<ItemSummary>, StoreError>;

    /// See [`CartStore::find_op`].
    ///
    /// # Errors
    /// As [`CartStore::find_op`].
    fn find_op(&self, key: &ItemKey, id: OpId) -> Result<Option<Operation>, StoreError>;

    /// See [`CartStore::read_log`].
    ///
    /// # Errors
    /// As [`CartStore::read_log`].
    fn read_log(&self, key: &ItemKey) -> Result<Vec<Operation>, StoreError>;

    /// See [`CartStore::read_ids`].
    ///
    /// # Errors
    /// As [`CartStore::read_ids`].
    fn read_ids(&self, key: &ItemKey) -> Result<Vec<Operation>, StoreError>;
}

/// The items one batch touches: each item's head before the batch and as the batch leaves
/// it, and the log entries the batch adds or folds.
///
/// Requests are decided in arrival order against this overlay, so two operations on the same
/// item in one batch compose, and the batch writes each item's head once, with the index
/// change from its state before the batch to its state after.
///
/// An operation newer than the item's newest one (the common case) updates the head in
/// place: quantity, version, count and digest. Only an operation that arrives out of version
/// order, or a repair that brings a newer base, reads the item's log to fold it again.
#[derive(Debug)]
pub struct BatchPlan {
    items: BTreeMap<ItemKey, Slot>,
    timing: Timing,
    /// Wall-clock milliseconds when the batch is decided.
    now_ms: u64,
}

#[derive(Debug)]
struct Slot {
    before: Option<ItemSummary>,
    head: ItemSummary,
    added: Vec<Operation>,
    folded: Vec<Operation>,
    /// Ids of folded operations to forget (older than the idempotency window).
    forgotten: Vec<OpId>,
    /// The whole log as the batch leaves it so far, once something needed it.
    log: Option<Vec<Operation>>,
    changed: bool,
}

impl Slot {
    fn load(
        key: &ItemKey,
        meta: Option<&ItemMeta>,
        reader: &dyn ItemReader,
    ) -> Result<Self, StoreError> {
        let before = reader.read_summary(key)?;
        let head = before.clone().unwrap_or_else(|| ItemSummary {
            product: key.product.clone(),
            meta: meta.cloned().unwrap_or(ItemMeta {
                price: 0,
                category: String::new(),
            }),
            base: Base::default(),
            qty: 0,
            latest: None,
            ops: 0,
            digest: StateDigest::of(&Base::default(), []),
        });
        Ok(Self {
            before,
            head,
            added: Vec::new(),
            folded: Vec::new(),
            forgotten: Vec::new(),
            log: None,
            changed: false,
        })
    }

    /// Whether the item holds (or has folded) an operation with this id.
    fn holds(&self, key: &ItemKey, id: OpId, reader: &dyn ItemReader) -> Result<bool, StoreError> {
        Ok(self.find(key, id, reader)?.is_some())
    }

    /// The operation with this id the item holds (or has folded), as the batch leaves it.
    fn find(
        &self,
        key: &ItemKey,
        id: OpId,
        reader: &dyn ItemReader,
    ) -> Result<Option<Operation>, StoreError> {
        if let Some(op) = self.added.iter().rev().find(|op| op.id == id) {
            return Ok(Some(*op));
        }
        if self.before.is_none() {
            return Ok(None);
        }
        reader.find_op(key, id)
    }

    fn log(
        &mut self,
        key: &ItemKey,
        reader: &dyn ItemReader,
    ) -> Result<&mut Vec<Operation>, StoreError> {
        if self.log.is_none() {
            let mut log = if self.before.is_some() {
                reader.read_log(key)?
            } else {
                Vec::new()
            };
            log.retain(|op| !self.folded.contains(op));
            log.extend(self.added.iter().filter(|op| !self.folded.contains(op)));
            log.sort_by_key(Operation::log_order);
            self.log = Some(log);
        }
        Ok(self.log.get_or_insert_with(Vec::new))
    }

    /// Adds an operation the item does not hold yet. `false` when it is too old.
    fn add(
        &mut self,
        key: &ItemKey,
        op: Operation,
        reader: &dyn ItemReader,
    ) -> Result<bool, StoreError> {
        if self
            .head
            .base
            .version
            .is_some_and(|base| op.version <= base)
        {
            return Ok(false);
        }
        if self.head.latest.is_none_or(|latest| op.version > latest) {
            self.head.qty = fold_qty(self.head.qty, [op.kind]);
            self.head.latest = Some(op.version);
            if let Some(log) = &mut self.log {
                log.push(op);
            }
        } else {
            let base_qty = self.head.base.qty;
            let log = self.log(key, reader)?;
            let at = log.partition_point(|o| o.log_order() < op.log_order());
            log.insert(at, op);
            self.head.qty = fold_qty(base_qty, log.iter().map(|o| o.kind));
        }
        self.head.ops = self.head.ops.saturating_add(1);
        self.head.digest = self.head.digest.with(&op);
        self.added.push(op);
        self.changed = true;
        Ok(true)
    }

    /// Adopts `base`, newer than the item's own: its operations up to the base's version are
    /// folded into it (their log entries go; their id entries stay, to recognise retries).
    fn rebase(
        &mut self,
        key: &ItemKey,
        base: Base,
        reader: &dyn ItemReader,
    ) -> Result<(), StoreError> {
        let log = self.log(key, reader)?;
        let cut = log.partition_point(|op| base.version.is_some_and(|v| op.version <= v));
        let folded: Vec<Operation> = log.drain(..cut).collect();
        let kept = log.clone();
        self.folded.extend(folded);
        self.head.base = base;
        self.head.qty = fold_qty(base.qty, kept.iter().map(|o| o.kind));
        self.head.latest = kept.last().map(|op| op.version).or(base.version);
        self.head.ops = u32::try_from(kept.len()).unwrap_or(u32::MAX);
        self.head.digest = StateDigest::of(&base, &kept);
        self.changed = true;
        Ok(())
    }

    /// Moves `held`, in the log, to `op`: the same operation (same id) under the version the
    /// merge keeps, which is the smaller one. A retry that reached replicas through different
    /// gateways leaves one operation under two versions; without this move the replicas
    /// would merge to the same answer but never hold the same state. `false` (nothing
    /// changed) when `held` is already folded into the base, or `op` would be.
    fn revise(
        &mut self,
        key: &ItemKey,
        held: Operation,
        op: Operation,
        reader: &dyn ItemReader,
    ) -> Result<bool, StoreError> {
        let base = self.head.base;
        if base
            .version
            .is_some_and(|v| held.version <= v || op.version <= v)
        {
            return Ok(false);
        }
        let log = self.log(key, reader)?;
        let Some(at) = log.iter().position(|o| *o == held) else {
            return Ok(false);
        };
        log.remove(at);
        let to = log.partition_point(|o| o.log_order() < op.log_order());
        log.insert(to, op);
        let qty = fold_qty(base.qty, log.iter().map(|o| o.kind));
        let latest = log.last().map(|o| o.version).or(base.version);
        self.head.qty = qty;
        self.head.latest = latest;
        self.head.digest = self.head.digest.with(&held).with(&op);
        // An entry added earlier in this batch was never written: drop it rather than fold it.
        if let Some(at) = self.added.iter().position(|o| *o == held) {
            self.added.remove(at);
        } else {
            self.folded.push(held);
        }
        self.added.push(op);
        self.changed = true;
        Ok(true)
    }

    fn set_meta(&mut self, meta: &ItemMeta) {
        if self.head.meta != *meta {
            self.head.meta = meta.clone();
            self.changed = true;
        }
    }
}

impl BatchPlan {
    /// An empty batch decided at `now_ms` (wall-clock milliseconds) under `timing`.
    pub fn new(timing: Timing, now_ms: u64) -> Self {
        Self {
            items: BTreeMap::new(),
            timing,
            now_ms,
        }
    }

    /// Decides `request` against the overlay, loading what it needs through `reader`, and
    /// returns the outcome to answer once the batch is durable.
    ///
    /// # Errors
    /// Whatever `reader` returns. An apply reads everything it needs before it changes the
    /// overlay, so a failed one changes nothing. A repair that fails part-way keeps the
    /// operations it added so far; that is harmless, since a repair only adds operations
    /// the merged state holds and the next read repairs the rest.
    pub fn decide(
        &mut self,
        request: &WriteRequest,
        reader: &dyn ItemReader,
    ) -> Result<Outcome, StoreError> {
        let key = request.key();
        let (timing, now_ms) = (self.timing, self.now_ms);
        let age_ms = |version: Version| now_ms.saturating_sub(version.millis());
        let slot = match self.items.entry(key.clone()) {
            std::collections::btree_map::Entry::Occupied(slot) => slot.into_mut(),
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert(Slot::load(key, request.meta(), reader)?)
            }
        };
        match request {
            WriteRequest::Apply(apply) => {
                // A retry is recognised before `require_in_cart` is checked, so a retried
                // delete that took the quantity to 0 is a duplicate, not "not in cart".
                if slot.holds(key, apply.op.id, reader)? {
                    return Ok(Outcome::Applied {
                        qty: slot.head.qty,
                        duplicate: true,
                    });
                }
                if apply.require_in_cart && slot.head.qty == 0 {
                    return Ok(Outcome::NotInCart);
                }
                if let Some(window) = timing.accept_window {
                    let window_ms = millis(window);
                    let age_ms = age_ms(apply.op.version);
                    if age_ms > window_ms {
                        return Ok(Outcome::Expired { age_ms, window_ms });
                    }
                }
                if let Some(skew) = timing.max_skew {
                    let max_skew_ms = millis(skew);
                    let ahead_ms = apply.op.version.millis().saturating_sub(now_ms);
                    if ahead_ms > max_skew_ms {
                        return Ok(Outcome::FromTheFuture {
                            ahead_ms,
                            max_skew_ms,
                        });
                    }
                }
                if !slot.add(key, apply.op, reader)? {
                    return Ok(Outcome::TooOld {
                        version: apply.op.version,
                        base: slot.head.base.version.unwrap_or(apply.op.version),
                    });
                }
                // The gateway sends the catalog's current facts; the newest ones win.
                slot.set_meta(&apply.meta);
                Ok(Outcome::Applied {
                    qty: slot.head.qty,
                    duplicate: false,
                })
            }
            WriteRequest::Repair(repair) => {
                if let Some(base) = repair.base
                    && base.version > slot.head.base.version
                {
                    slot.rebase(key, base, reader)?;
                }
                let mut added = 0u32;
                for op in &repair.ops {
                    let changed = match slot.find(key, op.id, reader)? {
                        None => slot.add(key, *op, reader)?,
                        // The merge keeps the smaller (version, kind) of one id; so does this.
                        Some(held) if (op.version, op.kind) < (held.version, held.kind) => {
                            slot.revise(key, held, *op, reader)?
                        }
                        Some(_) => false,
                    };
                    if changed {
                        added = added.saturating_add(1);
                    }
                }
                // The merged state's facts: without them a replica that differs only in its
                // facts would never agree with the others.
                slot.set_meta(&repair.meta);
                Ok(Outcome::Repaired { added })
            }
            WriteRequest::Compact(compact) => {
                let too_recent = age_ms(compact.upto) < millis(timing.grace);
                if slot.before.is_none() || slot.head.digest != compact.digest || too_recent {
                    return Ok(Outcome::Compacted { folded: 0 });
                }
                let (base_qty, base_version) = (slot.head.base.qty, slot.head.base.version);
                if base_version.is_some_and(|v| v >= compact.upto) {
                    return Ok(Outcome::Compacted { folded: 0 });
                }
                let log = slot.log(key, reader)?;
                let cut = log.partition_point(|op| op.version <= compact.upto);
                if cut == 0 {
                    return Ok(Outcome::Compacted { folded: 0 });
                }
                let base = Base {
                    qty: fold_qty(base_qty, log[..cut].iter().map(|op| op.kind)),
                    version: Some(compact.upto),
                };
                slot.rebase(key, base, reader)?;
                let retention = millis(timing.id_retention);
                let held: Vec<OpId> = slot.log(key, reader)?.iter().map(|op| op.id).collect();
                slot.forgotten = reader
                    .read_ids(key)?
                    .into_iter()
                    .filter(|op| age_ms(op.version) > retention && !held.contains(&op.id))
                    .map(|op| op.id)
                    .collect();
                Ok(Outcome::Compacted {
                    folded: u32::try_from(cut).unwrap_or(u32::MAX),
                })
            }
        }
    }

    /// The writes that make the batch's changes, one per changed item.
    pub fn into_writes(self) -> Vec<ItemWrite> {
        self.items
            .into_iter()
            .filter(|(_, slot)| slot.changed)
            .map(|(key, slot)| ItemWrite {
                index: IndexChange::between(slot.before.as_ref(), &slot.head),
                created: slot.before.is_none(),
                key,
                head: slot.head,
                added: slot.added,
                folded: slot.folded,
                forgotten: slot.forgotten,
            })
            .collect()
    }
}

/// Whole milliseconds of `d`, saturating.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

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
    fn drop_items(&self, keys: &[ItemKey]) -> Result<u32, StoreError>;
}

impl ItemReader for CartStore {
    fn read_summary(&self, key: &ItemKey) -> Result<Option<ItemSummary>, StoreError> {
        CartStore::read_summary(self, key)
    }

    fn find_op(&self, key: &ItemKey, id: OpId) -> Result<Option<Operation>, StoreError> {
        CartStore::find_op(self, key, id)
    }

    fn read_log(&self, key: &ItemKey) -> Result<Vec<Operation>, StoreError> {
        CartStore::read_log(self, key)
    }

    fn read_ids(&self, key: &ItemKey) -> Result<Vec<Operation>, StoreError> {
        CartStore::read_ids(self, key)
    }
}

impl ItemLog for CartStore {
    fn commit(&self, writes: &[ItemWrite]) -> Result<(), StoreError> {
        CartStore::commit(self, writes)
    }

    fn drop_items(&self, keys: &[ItemKey]) -> Result<u32, StoreError> {
        CartStore::drop_items(self, keys)
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
    keys: Vec<ItemKey>,
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

    /// Deletes these items (handback, see `DataRequest::DropItems`) and answers once that
    /// is durable. The writer runs it after the batch it arrives with, so it never races a
    /// write.
    pub async fn drop_items(&self, keys: Vec<ItemKey>) -> DataResponse {
        for key in &keys {
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
        self.send(Message::Drop(DropJob { keys, reply }), answer)
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
                None => match self.store.drop_items(&job.keys) {
                    Ok(items) => DataResponse::Dropped { items },
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
    use std::collections::HashMap;
    use std::sync::atomic::Ordering;

    use cartdb_core::cart::{ItemState, OpKind};

    use super::*;

    fn op(id: u128, kind: OpKind, hlc: u64) -> Operation {
        Operation {
            id: OpId(id),
            kind,
            version: Version { hlc, gateway: 1 },
        }
    }

    fn key() -> ItemKey {
        ItemKey {
            user: "u1".into(),
            product: "p1".into(),
        }
    }

    fn meta(category: &str) -> ItemMeta {
        ItemMeta {
            price: 5,
            category: category.into(),
        }
    }

    fn request(id: u128, kind: OpKind, hlc: u64, require_in_cart: bool) -> WriteRequest {
        WriteRequest::Apply(ApplyRequest {
            key: key(),
            meta: meta("c1"),
            op: op(id, kind, hlc),
            require_in_cart,
        })
    }

    fn applied(qty: u64, duplicate: bool) -> Outcome {
        Outcome::Applied { qty, duplicate }
    }

    /// An in-memory log: full item states, committed from [`ItemWrite`]s the way the store
    /// does it. Commits fail while `failing` is set.
    #[derive(Default)]
    struct MemoryLog {
        items: Mutex<HashMap<ItemKey, ItemState>>,
        /// The id entries: every operation ever added, until forgotten.
        ids: Mutex<HashMap<ItemKey, Vec<Operation>>>,
        failing: std::sync::atomic::AtomicBool,
        reads_fail: bool,
    }

    impl MemoryLog {
        fn state(&self) -> Option<ItemState> {
            self.items.lock().unwrap().get(&key()).cloned()
        }

        fn check(&self) -> Result<(), StoreError> {
            if self.reads_fail {
                return Err(StoreError::Persist {
                    source: fjall::Error::Poisoned,
                });
            }
            Ok(())
        }

        fn run(&self, requests: &[WriteRequest]) -> (Vec<Outcome>, Vec<ItemWrite>) {
            let mut plan = BatchPlan::new(Timing::ANY_AGE, 0);
            let outcomes = requests
                .iter()
                .map(|r| plan.decide(r, self).unwrap())
                .collect();
            let writes = plan.into_writes();
            self.commit(&writes).unwrap();
            (outcomes, writes)
        }
    }

    impl ItemReader for MemoryLog {
        fn read_summary(&self, key: &ItemKey) -> Result<Option<ItemSummary>, StoreError> {
            self.check()?;
            Ok(self.items.lock().unwrap().get(key).map(ItemState::summary))
        }

        fn find_op(&self, key: &ItemKey, id: OpId) -> Result<Option<Operation>, StoreError> {
            self.check()?;
            let ids = self.ids.lock().unwrap();
            Ok(ids
                .get(key)
                .and_then(|ops| ops.iter().find(|o| o.id == id).copied()))
        }

        fn read_log(&self, key: &ItemKey) -> Result<Vec<Operation>, StoreError> {
            self.check()?;
            Ok(self
                .items
                .lock()
                .unwrap()
                .get(key)
                .map(|s| s.ops.clone())
                .unwrap_or_default())
        }

        fn read_ids(&self, key: &ItemKey) -> Result<Vec<Operation>, StoreError> {
            self.check()?;
            Ok(self
                .ids
                .lock()
                .unwrap()
                .get(key)
                .cloned()
                .unwrap_or_default())
        }
    }

    impl ItemLog for MemoryLog {
        fn drop_items(&self, keys: &[ItemKey]) -> Result<u32, StoreError> {
            let mut items = self.items.lock().unwrap();
            let mut ids = self.ids.lock().unwrap();
            let dropped = keys.iter().filter(|k| items.remove(*k).is_some()).count();
            for key in keys {
                ids.remove(key);
            }
            Ok(u32::try_from(dropped).unwrap())
        }

        fn commit(&self, writes: &[ItemWrite]) -> Result<(), StoreError> {
            if self.failing.load(Ordering::SeqCst) {
                return Err(StoreError::Commit {
                    writes: writes.len(),
                    source: fjall::Error::Poisoned,
                });
            }
            let mut items = self.items.lock().unwrap();
            let mut ids = self.ids.lock().unwrap();
            for w in writes {
                // As the store: one id entry per id, the last write wins.
                let known = ids.entry(w.key.clone()).or_default();
                known.retain(|o| !w.added.iter().any(|a| a.id == o.id));
                known.extend(&w.added);
                known.retain(|o| !w.forgotten.contains(&o.id));
                let state = items
                    .entry(w.key.clone())
                    .or_insert_with(|| ItemState::new(w.head.product.clone(), w.head.meta.clone()));
                state.ops.retain(|o| !w.folded.contains(o));
                for op in w.added.iter().filter(|o| !w.folded.contains(o)) {
                    let at = state
                        .ops
                        .partition_point(|o| o.log_order() < op.log_order());
                    state.ops.insert(at, *op);
                }
                state.base = w.head.base;
                state.meta = w.head.meta.clone();
                assert_eq!(
                    state.summary(),
                    w.head,
                    "the head matches the log it summarises"
                );
            }
            Ok(())
        }
    }

    #[test]
    fn a_new_item_takes_the_request_meta() {
        let log = MemoryLog::default();
        let (outcomes, writes) = log.run(&[request(1, OpKind::Add, 1, false)]);
        assert_eq!(outcomes, [applied(1, false)]);
        assert_eq!(writes[0].head.meta.category, "c1");
        assert_eq!(writes[0].index.insert.as_deref(), Some("c1"));
    }

    #[test]
    fn meta_follows_the_newest_request() {
        let log = MemoryLog::default();
        log.run(&[request(1, OpKind::Add, 1, false)]);
        let WriteRequest::Apply(mut moved) = request(2, OpKind::Add, 2, false) else {
            unreachable!()
        };
        moved.meta.category = "c2".into();
        log.run(&[WriteRequest::Apply(moved)]);
        assert_eq!(log.state().unwrap().meta.category, "c2");
    }

    #[test]
    fn a_retry_is_a_duplicate_even_when_the_item_is_now_empty() {
        let log = MemoryLog::default();
        log.run(&[request(1, OpKind::Add, 1, false)]);
        let delete = request(2, OpKind::Delete, 2, true);
        assert_eq!(
            log.run(std::slice::from_ref(&delete)).0,
            [applied(0, false)]
        );
        let (outcomes, writes) = log.run(&[delete, request(3, OpKind::Delete, 3, true)]);
        assert_eq!(outcomes, [applied(0, true), Outcome::NotInCart]);
        assert!(writes.is_empty());
    }

    #[test]
    fn a_delete_of_an_unknown_item_is_not_in_cart_and_writes_nothing() {
        let log = MemoryLog::default();
        let (outcomes, writes) = log.run(&[request(1, OpKind::Delete, 1, true)]);
        assert_eq!(outcomes, [Outcome::NotInCart]);
        assert!(writes.is_empty());
    }

    #[test]
    fn operations_in_one_batch_compose() {
        let log = MemoryLog::default();
        let add = request(1, OpKind::Add, 1, false);
        let (outcomes, writes) = log.run(&[add.clone(), add, request(2, OpKind::Add, 2, false)]);
        assert_eq!(
            outcomes,
            [applied(1, false), applied(1, true), applied(2, false)]
        );
        assert_eq!(writes.len(), 1, "one write per item");
        assert_eq!(writes[0].added.len(), 2);
        assert_eq!(writes[0].index.insert.as_deref(), Some("c1"));
    }

    #[test]
    fn an_operation_out_of_version_order_refolds_the_log() {
        let log = MemoryLog::default();
        log.run(&[
            request(1, OpKind::Add, 10, false),
            request(2, OpKind::Delete, 30, false),
        ]);
        // add@10, delete@30 -> 0; a delete@20 in between makes add, delete, delete -> 0
        // (clamped); an add@5 before everything makes add, add, delete, delete -> 0, where
        // appending it would have given 1.
        assert_eq!(
            log.run(&[request(3, OpKind::Delete, 20, false)]).0,
            [applied(0, false)]
        );
        assert_eq!(
            log.run(&[request(4, OpKind::Add, 5, false)]).0,
            [applied(0, false)]
        );
        let state = log.state().unwrap();
        assert_eq!(state.qty(), 0);
        assert_eq!(state.ops.len(), 4);
    }

    #[test]
    fn an_item_that_ends_the_batch_as_it_started_keeps_its_index_entry() {
        let log = MemoryLog::default();
        log.run(&[request(1, OpKind::Add, 1, false)]);
        let (outcomes, writes) = log.run(&[
            request(2, OpKind::Delete, 2, true),
            request(3, OpKind::Delete, 3, true),
            request(4, OpKind::Add, 4, false),
        ]);
        assert_eq!(
            outcomes,
            [applied(0, false), Outcome::NotInCart, applied(1, false)]
        );
        assert_eq!(writes.len(), 1);
        assert!(writes[0].index.is_empty(), "qty went 1 -> 0 -> 1");
    }

    #[test]
    fn a_repair_adds_only_what_is_missing_and_adopts_a_newer_base() {
        let log = MemoryLog::default();
        log.run(&[request(1, OpKind::Add, 10, false)]);
        let base = Base {
            qty: 2,
            version: Some(Version {
                hlc: 20,
                gateway: 1,
            }),
        };
        let repair = WriteRequest::Repair(RepairRequest {
            key: key(),
            meta: meta("c1"),
            base: Some(base),
            ops: vec![op(1, OpKind::Add, 10), op(5, OpKind::Add, 30)],
        });
        assert_eq!(
            log.run(std::slice::from_ref(&repair)).0,
            [Outcome::Repaired { added: 1 }]
        );
        let state = log.state().unwrap();
        assert_eq!(state.base, base);
        assert_eq!(state.ops, [op(5, OpKind::Add, 30)]);
        assert_eq!(state.qty(), 3);
        let (outcomes, writes) = log.run(&[repair]);
        assert_eq!(outcomes, [Outcome::Repaired { added: 0 }]);
        assert!(writes.is_empty(), "a repeated repair writes nothing");
        assert!(matches!(
            log.run(&[request(9, OpKind::Add, 15, false)]).0[..],
            [Outcome::TooOld { .. }]
        ));
    }

    fn repair_with(ops: Vec<Operation>) -> WriteRequest {
        WriteRequest::Repair(RepairRequest {
            key: key(),
            meta: meta("c1"),
            base: None,
            ops,
        })
    }

    #[test]
    fn a_repair_moves_an_operation_held_under_a_larger_version_to_the_smaller() {
        let log = MemoryLog::default();
        log.run(&[
            request(1, OpKind::Add, 10, false),
            request(2, OpKind::Delete, 30, false),
        ]);
        // Operation 2 reached the other replicas through another gateway, stamped earlier
        // than operation 1: the merge keeps that version, so this replica must move it.
        let merged = vec![op(2, OpKind::Delete, 5), op(1, OpKind::Add, 10)];
        let (outcomes, writes) = log.run(&[repair_with(merged.clone())]);
        assert_eq!(outcomes, [Outcome::Repaired { added: 1 }]);
        assert_eq!(writes[0].folded, [op(2, OpKind::Delete, 30)]);
        let state = log.state().unwrap();
        assert_eq!(state.ops, merged);
        assert_eq!(
            state.qty(),
            1,
            "the delete now comes first and finds nothing"
        );
        assert_eq!(
            log.find_op(&key(), OpId(2)).unwrap(),
            Some(op(2, OpKind::Delete, 5))
        );
        let (outcomes, writes) = log.run(&[repair_with(merged)]);
        assert_eq!(outcomes, [Outcome::Repaired { added: 0 }]);
        assert!(writes.is_empty(), "a repeated repair writes nothing");
        let (outcomes, writes) = log.run(&[repair_with(vec![op(2, OpKind::Delete, 40)])]);
        assert_eq!(outcomes, [Outcome::Repaired { added: 0 }]);
        assert!(
            writes.is_empty(),
            "a larger version never replaces a smaller one"
        );
    }

    #[test]
    fn an_operation_added_and_moved_in_one_batch_is_written_once_at_the_smaller_version() {
        let log = MemoryLog::default();
        let (outcomes, writes) = log.run(&[
            request(1, OpKind::Add, 30, false),
            repair_with(vec![op(1, OpKind::Add, 5)]),
        ]);
        assert_eq!(
            outcomes,
            [applied(1, false), Outcome::Repaired { added: 1 }]
        );
        assert_eq!(writes[0].added, [op(1, OpKind::Add, 5)]);
        assert!(writes[0].folded.is_empty(), "nothing was written to remove");
        assert_eq!(log.state().unwrap().ops, [op(1, OpKind::Add, 5)]);
    }

    #[test]
    fn a_folded_operation_is_not_moved() {
        let log = MemoryLog::default();
        log.run(&[request(1, OpKind::Add, 10, false)]);
        let base = Base {
            qty: 1,
            version: Some(Version {
                hlc: 20,
                gateway: 1,
            }),
        };
        log.run(&[WriteRequest::Repair(RepairRequest {
            key: key(),
            meta: meta("c1"),
            base: Some(base),
            ops: Vec::new(),
        })]);
        let (outcomes, writes) = log.run(&[repair_with(vec![op(1, OpKind::Add, 5)])]);
        assert_eq!(outcomes, [Outcome::Repaired { added: 0 }]);
        assert!(writes.is_empty());
        assert_eq!(log.state().unwrap().qty(), 1);
    }

    fn run_at(log: &MemoryLog, timing: Timing, now_ms: u64, request: &WriteRequest) -> Outcome {
        let mut plan = BatchPlan::new(timing, now_ms);
        let outcome = plan.decide(request, log).unwrap();
        log.commit(&plan.into_writes()).unwrap();
        outcome
    }

    /// Versions whose clock reading is `ms` milliseconds.
    fn at_ms(id: u128, kind: OpKind, ms: u64) -> WriteRequest {
        request(id, kind, ms << 16, false)
    }

    #[test]
    fn compaction_folds_only_old_operations_of_the_state_the_gateway_saw() {
        let log = MemoryLog::default();
        let timing = Timing {
            accept_window: Some(Duration::from_secs(30)),
            grace: Duration::from_secs(60),
            id_retention: Duration::from_secs(3600),
            max_skew: Some(Duration::from_secs(10)),
        };
        let now = 1_000_000;
        for (id, kind, ms) in [
            (1, OpKind::Add, now - 90_000),
            (2, OpKind::Add, now - 80_000),
        ] {
            // Accepted when they were new.
            assert_eq!(
                run_at(&log, timing, ms, &at_ms(id, kind, ms)),
                applied(id as u64, false)
            );
        }
        assert_eq!(
            run_at(&log, timing, now, &at_ms(3, OpKind::Delete, now - 1_000)),
            applied(1, false)
        );
        let digest = log.state().unwrap().summary().digest;
        let compact = |upto_ms: u64, digest| {
            WriteRequest::Compact(CompactRequest {
                key: key(),
                upto: Version {
                    hlc: upto_ms << 16,
                    gateway: u32::MAX,
                },
                digest,
            })
        };
        let stale_digest = StateDigest(digest.0 ^ 1);
        assert_eq!(
            run_at(&log, timing, now, &compact(now - 61_000, stale_digest)),
            Outcome::Compacted { folded: 0 },
            "the state changed since the gateway compared replicas"
        );
        assert_eq!(
            run_at(&log, timing, now, &compact(now - 10_000, digest)),
            Outcome::Compacted { folded: 0 },
            "younger than the grace"
        );
        assert_eq!(
            run_at(&log, timing, now, &compact(now - 61_000, digest)),
            Outcome::Compacted { folded: 2 }
        );
        let state = log.state().unwrap();
        assert_eq!((state.base.qty, state.ops.len(), state.qty()), (2, 1, 1));
        // An operation at or below the base is refused; so is one outside the window.
        assert!(matches!(
            run_at(&log, timing, now, &at_ms(4, OpKind::Add, now - 70_000)),
            Outcome::Expired { .. }
        ));
        let mut no_window = timing;
        no_window.accept_window = None;
        assert!(matches!(
            run_at(&log, no_window, now, &at_ms(4, OpKind::Add, now - 70_000)),
            Outcome::TooOld { .. }
        ));
        // A retry of a folded operation is still a duplicate.
        assert_eq!(
            run_at(&log, timing, now, &at_ms(1, OpKind::Add, now - 500)),
            applied(1, true)
        );
    }

    #[test]
    fn a_failed_read_fails_only_that_request() {
        let log = MemoryLog {
            reads_fail: true,
            ..MemoryLog::default()
        };
        let mut plan = BatchPlan::new(Timing::ANY_AGE, 0);
        assert!(
            plan.decide(&request(1, OpKind::Add, 1, false), &log)
                .is_err()
        );
        assert!(plan.into_writes().is_empty());
    }

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
                duplicate: false
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

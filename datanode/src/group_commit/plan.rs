//! The pure half of the group commit: what each [`WriteRequest`] decides against an item's
//! state (an [`Outcome`]), and [`BatchPlan`], the in-batch overlay that makes a batch's
//! requests compose and writes each item's head once. No threads and no fsync: the store is
//! read through [`ItemReader`], and the tests run the plan against an in-memory log.

use std::collections::BTreeMap;
use std::time::Duration;

use cartdb_core::cart::{
    Base, DeviceId, ItemKey, ItemMeta, ItemSummary, OpId, Operation, StateDigest, fold_qty,
};
use cartdb_core::version::Version;
use cartdb_core::wire::{DataFailure, DataResponse};

use crate::store::{CartStore, IndexChange, ItemWrite, StoreError};

/// One `DataRequest::Apply`: append `op` to the item's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplyRequest {
    pub key: ItemKey,
    pub meta: ItemMeta,
    pub op: Operation,
    /// Refuse (and write nothing) when the item's quantity is 0 here.
    pub require_in_cart: bool,
    /// The gateway stamped the operation again above a newer one: if this replica holds it
    /// under an older version, move it up to `op`'s.
    pub restamped: bool,
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
///
/// And one bound that is not about clocks but lives with them because compaction is what
/// lifts it: an item whose log holds `max_log_ops` unfolded operations takes no new ones
/// ([`Outcome::Busy`]) until compaction folds the old ones, so a hot item's log (and every
/// answer that carries it) stays bounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// `None`: accept operations of any age (tests that use small synthetic versions).
    pub accept_window: Option<Duration>,
    pub grace: Duration,
    pub id_retention: Duration,
    /// `None`: accept operations from any future (tests with synthetic versions).
    pub max_skew: Option<Duration>,
    /// Most unfolded operations an item's log may hold before applies are refused; `None`:
    /// no bound (tests).
    pub max_log_ops: Option<u32>,
}

impl Timing {
    /// For tests with synthetic versions: any age is accepted and anything may be folded.
    pub const ANY_AGE: Self = Self {
        accept_window: None,
        grace: Duration::ZERO,
        id_retention: Duration::from_secs(365 * 24 * 3600),
        max_skew: None,
        max_log_ops: None,
    };
}

impl WriteRequest {
    pub(super) fn key(&self) -> &ItemKey {
        match self {
            Self::Apply(r) => &r.key,
            Self::Repair(r) => &r.key,
            Self::Compact(r) => &r.key,
        }
    }

    /// The product facts the request carries, if any.
    pub(super) fn meta(&self) -> Option<&ItemMeta> {
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
    /// The operation was added (`duplicate: false`) or was already there; `qty` afterwards,
    /// and the version the item holds the operation under.
    Applied {
        qty: u64,
        duplicate: bool,
        held: Version,
    },
    /// The item holds an operation at `newest`, at or above `version`: nothing written.
    OutOfOrder { version: Version, newest: Version },
    /// The item's log holds `ops` unfolded operations, at its cap: nothing written.
    Busy { ops: u32, cap: u32 },
    /// `require_in_cart` was set and the quantity is 0: nothing written.
    NotInCart,
    /// The operation is not newer than the folded base: nothing written.
    TooOld { version: Version, base: Version },
    /// A repair added this many operations, or moved them up to the larger version the merge
    /// keeps.
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
            Self::Applied {
                qty,
                duplicate,
                held,
            } => DataResponse::Applied {
                qty,
                duplicate,
                held,
            },
            Self::Busy { ops, cap } => {
                DataResponse::Failed(DataFailure::ItemBusy { device, ops, cap })
            }
            Self::OutOfOrder { version, newest } => DataResponse::Failed(DataFailure::OutOfOrder {
                device,
                version,
                newest,
            }),
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
    /// merge keeps, which is the larger one. A retry that reached replicas through different
    /// gateways, or an operation stamped again above a newer one (see
    /// [`ApplyRequest::restamped`]), leaves one operation under two versions; without this
    /// move the replicas would merge to the same answer but never hold the same state.
    /// `false` (nothing changed) when `held` is already folded into the base, or `op` would be.
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
                if let Some(held) = slot.find(key, apply.op.id, reader)? {
                    let moved = apply.restamped
                        && held.version < apply.op.version
                        && slot.revise(key, held, apply.op, reader)?;
                    return Ok(Outcome::Applied {
                        qty: slot.head.qty,
                        duplicate: !moved,
                        held: if moved {
                            apply.op.version
                        } else {
                            held.version
                        },
                    });
                }
                if apply.require_in_cart && slot.head.qty == 0 {
                    return Ok(Outcome::NotInCart);
                }
                if let Some(cap) = timing.max_log_ops
                    && slot.head.ops >= cap
                {
                    return Ok(Outcome::Busy {
                        ops: slot.head.ops,
                        cap,
                    });
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
                // Only ever above everything held: an operation acknowledged before this one
                // was issued is held by a replica of every write quorum.
                if let Some(newest) = slot.head.latest
                    && apply.op.version <= newest
                    && slot
                        .head
                        .base
                        .version
                        .is_none_or(|base| apply.op.version > base)
                {
                    return Ok(Outcome::OutOfOrder {
                        version: apply.op.version,
                        newest,
                    });
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
                    held: apply.op.version,
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
                        // The merge keeps the larger (version, kind) of one id; so does this.
                        Some(held) if (op.version, op.kind) > (held.version, held.kind) => {
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
                before: slot.before,
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

#[cfg(test)]
pub(crate) mod tests;

//! The store's two writers, [`CartStore::commit`] and [`CartStore::drop_items`]: each stages
//! every keyspace's entries in one fjall batch, atomic and fsync'd before it returns, which is
//! what keeps the keyspaces in step (the invariants in [`super`]'s docs).

use std::collections::BTreeMap;

use cartdb_core::cart::{ItemKey, ItemSummary, StateDigest};
use fjall::PersistMode;

use super::codec::decode_head;
use super::codec::{
    encode_head, id_entry_key, id_entry_value, index_key, item_key, key_prefix, kind_byte,
    log_entry_key, log_prefix_after, placement_entry, product_of, show_key, show_placed_key,
};
use super::pg::take_item_entries;
use super::{CartStore, DigestChange, ItemWrite, StoreError, listed_category};

/// From this many items on, [`CartStore::drop_items`] finds them with a range scan instead
/// of a read per item.
const RANGE_DROP_ITEMS: usize = 256;

/// What a drop found: the items still in the state the caller saw, with every log key to
/// delete, and how many had changed.
#[derive(Default)]
struct Drop<'a> {
    found: Vec<Found<'a>>,
    changed: u32,
}

struct Found<'a> {
    key: &'a ItemKey,
    placed: Vec<u8>,
    head: ItemSummary,
    log_keys: Vec<Vec<u8>>,
}

impl<'a> Drop<'a> {
    /// Takes the held item `key` if its digest is still `digest`, else counts it changed.
    fn consider(
        &mut self,
        placed: &[u8],
        key: &'a ItemKey,
        digest: StateDigest,
        head: ItemSummary,
        log_keys: Vec<Vec<u8>>,
    ) {
        if head.digest == digest {
            self.found.push(Found {
                key,
                placed: placed.to_vec(),
                head,
                log_keys,
            });
        } else {
            self.changed = self.changed.saturating_add(1);
        }
    }
}

impl CartStore {
    /// Deletes every trace of the `items` (head, log and id entries, category and placement
    /// entries) whose digest is still the one given, in one batch, fsync'd before it
    /// returns; items not held are skipped. Returns how many items were deleted, and how
    /// many were kept because their state changed since the caller saw it (a write that
    /// reached this replica after the handback's scan: it must be copied before it may
    /// go). Called by the group commit writer only, so it never races a write.
    ///
    /// # Errors
    /// As [`CartStore::read_summary`] for a read; [`StoreError::Commit`] when fjall fails,
    /// after which fjall refuses every write.
    pub fn drop_items(&self, items: &[(ItemKey, StateDigest)]) -> Result<(u32, u32), StoreError> {
        let mut wanted: BTreeMap<Vec<u8>, (&ItemKey, StateDigest)> = BTreeMap::new();
        for (key, digest) in items {
            wanted.insert(placement_entry(key)?, (key, *digest));
        }
        let mut drop = Drop::default();
        if wanted.len() >= RANGE_DROP_ITEMS {
            self.find_by_range(&wanted, &mut drop)?;
        } else {
            self.find_by_key(&wanted, &mut drop)?;
        }
        if drop.found.is_empty() {
            return Ok((0, drop.changed));
        }
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncData));
        let mut changes = Vec::with_capacity(drop.found.len());
        let mut dropped = Vec::with_capacity(drop.found.len());
        for found in &drop.found {
            changes.push(DigestChange::between(
                &found.placed,
                found.key,
                Some(&found.head),
                None,
            ));
            for raw in &found.log_keys {
                batch.remove(&self.log, raw.clone());
            }
            if let Some(category) = listed_category(&found.head) {
                batch.remove(&self.categories, index_key(category, found.key)?);
            }
            batch.remove(&self.placement, found.placed.clone());
            batch.remove(&self.items, item_key(found.key)?);
            dropped.push(found.key);
        }
        dropped.sort();
        for user in self.emptied_users(&dropped)? {
            batch.remove(&self.users, user.as_bytes());
        }
        batch.commit().map_err(|source| StoreError::Commit {
            writes: dropped.len(),
            source,
        })?;
        self.heads.dropped(dropped.iter().copied());
        for change in changes {
            self.digests.apply(change);
        }
        Ok((
            u32::try_from(dropped.len()).unwrap_or(u32::MAX),
            drop.changed,
        ))
    }

    /// Finds the `wanted` items (by placement entry) one at a time: a head read and a
    /// log scan each.
    fn find_by_key<'a>(
        &self,
        wanted: &BTreeMap<Vec<u8>, (&'a ItemKey, StateDigest)>,
        drop: &mut Drop<'a>,
    ) -> Result<(), StoreError> {
        for (placed, (key, digest)) in wanted {
            let Some(head) = self.read_summary(key)? else {
                continue;
            };
            let prefix = log_prefix_after(placed);
            let mut log_keys = Vec::new();
            for guard in self.log.prefix(&prefix) {
                let raw = guard.key().map_err(|source| StoreError::Read {
                    key: show_placed_key(&prefix),
                    source,
                })?;
                log_keys.push(raw.to_vec());
            }
            drop.consider(placed, key, *digest, head, log_keys);
        }
        Ok(())
    }

    /// Finds the `wanted` items with one range scan of `placement` and one of `log`, from
    /// the first wanted item to the last, in step (format 5 keeps both in placement
    /// order): a handback drops most of a PG, and a seek per item cost more than reading
    /// the few items in between that stay.
    fn find_by_range<'a>(
        &self,
        wanted: &BTreeMap<Vec<u8>, (&'a ItemKey, StateDigest)>,
        drop: &mut Drop<'a>,
    ) -> Result<(), StoreError> {
        let (Some((first, _)), Some((last, _))) =
            (wanted.first_key_value(), wanted.last_key_value())
        else {
            return Ok(());
        };
        let read_error = |source| StoreError::Read {
            key: format!(
                "placement range {} ..= {}",
                show_placed_key(first),
                show_placed_key(last)
            ),
            source,
        };
        // Past every log key of `last` (they start with `last 0x00`).
        let mut log_end = last.clone();
        log_end.push(1);
        let mut logs = self
            .log
            .range(first.clone()..log_end)
            .map(fjall::Guard::into_inner)
            .peekable();
        for guard in self.placement.range(first.clone()..=last.clone()) {
            let (raw, value) = guard.into_inner().map_err(read_error)?;
            let Some((placed, (key, digest))) = wanted.get_key_value(raw.as_ref()) else {
                continue;
            };
            let head = decode_head(&raw, &key.product, &value)?;
            let log_keys = take_item_entries(&mut logs, placed).map_err(read_error)?;
            drop.consider(placed, key, *digest, head, log_keys);
        }
        Ok(())
    }

    /// The users of `dropped` who hold no other item on this replica.
    fn emptied_users<'a>(&self, dropped: &[&'a ItemKey]) -> Result<Vec<&'a str>, StoreError> {
        let mut users: Vec<&str> = dropped.iter().map(|k| k.user.as_str()).collect();
        users.dedup(); // `dropped` is sorted by user
        let mut emptied = Vec::new();
        for user in users {
            let prefix = key_prefix("userid", user)?;
            let mut kept = false;
            for guard in self.items.prefix(&prefix) {
                let raw = guard.key().map_err(|source| StoreError::Read {
                    key: show_key(&prefix),
                    source,
                })?;
                let product = product_of(&raw[prefix.len()..], &raw)?;
                // `dropped` is sorted: a binary search, not a scan per item (a handback
                // drops thousands of items, and the scan made the drop quadratic).
                let found = dropped.binary_search_by(|k| {
                    (k.user.as_str(), k.product.as_str()).cmp(&(user, product))
                });
                if found.is_err() {
                    kept = true;
                    break;
                }
            }
            if !kept {
                emptied.push(user);
            }
        }
        Ok(emptied)
    }

    /// Writes every item state and index change in one atomic fjall batch, and returns once
    /// the journal is fsync'd (`PersistMode::SyncData`).
    ///
    /// The durability is set on the batch rather than by a `persist` after `commit`, because
    /// fjall publishes a batch to readers right after writing it to the journal: with a
    /// separate persist a reader could see a write that a crash then loses.
    ///
    /// # Errors
    /// [`StoreError::InvalidId`] or [`StoreError::Encode`] before anything is written;
    /// [`StoreError::Commit`] when fjall fails, after which fjall refuses every write.
    pub fn commit(&self, writes: &[ItemWrite]) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncData));
        let mut changes = Vec::with_capacity(writes.len());
        for write in writes {
            changes.push(self.stage(&mut batch, write)?);
        }
        batch.commit().map_err(|source| StoreError::Commit {
            writes: writes.len(),
            source,
        })?;
        // Durable now; readers must see it before the writer acknowledges anything.
        self.heads.written(writes.iter().map(|w| (&w.key, &w.head)));
        for change in changes {
            self.digests.apply(change);
        }
        Ok(())
    }

    /// Adds one item write and its index change to `batch`; returns how it changes the
    /// item's digest bucket once committed.
    fn stage(
        &self,
        batch: &mut fjall::OwnedWriteBatch,
        write: &ItemWrite,
    ) -> Result<DigestChange, StoreError> {
        let raw = item_key(&write.key)?;
        let value = encode_head(&raw, &write.head)?;
        // One placement key hash per write: the placement entry, and the log prefix after it.
        let placed = placement_entry(&write.key)?;
        let prefix = log_prefix_after(&placed);
        for op in &write.added {
            batch.insert(&self.log, id_entry_key(&prefix, op.id), id_entry_value(op));
            // An operation added and folded by the same batch needs no log entry at all.
            if !write.folded.contains(op) {
                batch.insert(
                    &self.log,
                    log_entry_key(&prefix, op),
                    vec![kind_byte(op.kind)],
                );
            }
        }
        for op in write.folded.iter().filter(|op| !write.added.contains(op)) {
            batch.remove(&self.log, log_entry_key(&prefix, op));
        }
        for id in &write.forgotten {
            batch.remove(&self.log, id_entry_key(&prefix, *id));
        }
        if let Some(category) = &write.index.remove {
            batch.remove(&self.categories, index_key(category, &write.key)?);
        }
        if let Some(category) = &write.index.insert {
            batch.insert(
                &self.categories,
                index_key(category, &write.key)?,
                Vec::new(),
            );
        }
        let change = DigestChange::between(
            &placed,
            &write.key,
            write.before.as_ref(),
            Some(&write.head),
        );
        batch.insert(&self.placement, placed, value.clone());
        batch.insert(&self.items, raw, value);
        if write.created {
            batch.insert(&self.users, write.key.user.as_bytes(), Vec::new());
        }
        Ok(change)
    }

    /// fsyncs the journal and everything before it (`SyncAll`), for an orderly shutdown.
    ///
    /// # Errors
    /// [`StoreError::Persist`] when the fsync fails.
    pub fn persist(&self) -> Result<(), StoreError> {
        self.db
            .persist(PersistMode::SyncAll)
            .map_err(|source| StoreError::Persist { source })
    }
}

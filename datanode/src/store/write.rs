//! The store's two writers, [`CartStore::commit`] and [`CartStore::drop_items`]: each stages
//! every keyspace's entries in one fjall batch, atomic and fsync'd before it returns, which is
//! what keeps the keyspaces in step (the invariants in [`super`]'s docs).

use cartdb_core::cart::{ItemKey, StateDigest};
use fjall::PersistMode;

use super::codec::{
    encode_head, id_entry_key, id_entry_value, index_key, item_key, key_prefix, kind_byte,
    log_entry_key, log_prefix_after, placement_entry, product_of, show_key, show_placed_key,
};
use super::{CartStore, DigestChange, ItemWrite, StoreError, listed_category};

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
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncData));
        let mut dropped = Vec::new();
        let mut changes = Vec::new();
        let mut changed = 0u32;
        let items: std::collections::BTreeMap<&ItemKey, StateDigest> =
            items.iter().map(|(key, digest)| (key, *digest)).collect();
        for (key, digest) in items {
            let Some(head) = self.read_summary(key)? else {
                continue;
            };
            if head.digest != digest {
                changed = changed.saturating_add(1);
                continue;
            }
            let placed = placement_entry(key)?;
            changes.push(DigestChange::between(&placed, key, Some(&head), None));
            let prefix = log_prefix_after(&placed);
            for guard in self.log.prefix(&prefix) {
                let raw = guard.key().map_err(|source| StoreError::Read {
                    key: show_placed_key(&prefix),
                    source,
                })?;
                batch.remove(&self.log, raw.to_vec());
            }
            if let Some(category) = listed_category(&head) {
                batch.remove(&self.categories, index_key(category, key)?);
            }
            batch.remove(&self.placement, placed);
            batch.remove(&self.items, item_key(key)?);
            dropped.push(key);
        }
        if dropped.is_empty() {
            return Ok((0, changed));
        }
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
        Ok((u32::try_from(dropped.len()).unwrap_or(u32::MAX), changed))
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
                if !dropped
                    .iter()
                    .any(|k| k.user == user && k.product == product)
                {
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

//! [`CartStore`]: the data node's fjall database, behind a small synchronous API.
//!
//! Five keyspaces, all written only through [`CartStore::commit`] and
//! [`CartStore::drop_items`], whose one fjall batch is atomic across them:
//!
//! ```text
//! items       user 0x00 product                           -> FORMAT_V2 ++ postcard(ItemSummary)
//! log         user 0x00 product 0x00 'l' hlc gateway id   -> kind          (the operation log)
//!             user 0x00 product 0x00 'i' id               -> hlc gateway kind   (by op id)
//! categories  category 0x00 user 0x00 product             -> (empty)
//! placement   reverse_bits(x) user 0x00 product           -> (empty)
//! users       user                                        -> (empty)
//! ```
//!
//! `users` answers "does this replica hold anything of this user?" with a point read, which
//! the tables' bloom filters settle without reading a block. A cart read is a prefix scan of
//! `items`, and fjall has no prefix filters: a scan seeks in every level's table for the
//! prefix, so its cost grows with the number of levels, and most cart reads at a million
//! shoppers are of users this replica holds nothing for (measured with
//! `cargo bench -p cartdb-datanode --bench store_growth`). An entry is written with the
//! user's first item on this replica and removed when [`CartStore::drop_items`] drops the
//! last one.
//!
//! `placement` finds the items of one placement group without a full scan: `x` is the item's
//! placement key (`cartdb_model::placement_key::placement_key`), and with its bits reversed
//! the PG's low bits become the key's high bits, so a PG's items are one or two key ranges
//! whatever `pg_num` is (`cartdb_model::pg::Pool::key_ranges`). An entry is written with the
//! item's first write on this replica and deleted only with the item.
//!
//! The data directory carries a format marker file, [`FORMAT_FILE`]: a directory written
//! before placement groups (no marker, or another format) is refused by name, not migrated.
//!
//! An item is a small head (its [`ItemSummary`]: base, folded quantity, newest version,
//! digest) plus one key per operation. A write adds one log entry, one id entry and a new
//! head, whatever the length of the log; a cart read scans heads only. An earlier layout
//! kept the whole log in one value: every write rewrote it and every read decoded it, and
//! under the cluster benchmark that decoding was most of a data node's CPU and throughput
//! fell as logs grew. Log entries sort by version, so [`CartStore::read_log`] returns a log
//! in fold order; the id entries answer "is this a retry?" with one point read. Integers are
//! big-endian so that byte order is numeric order.
//!
//! A `categories` entry exists exactly while that item's folded quantity on this replica is
//! above zero, so a user leaves a category as soon as their last item of it reaches 0.
//! Identifiers never contain 0x00 (`validate_id` refuses control characters), which makes
//! 0x00 a separator that also keeps keys sorted by user, then product: `"a\0"` sorts before
//! `"a b\0"`. Every method is blocking: call it from `spawn_blocking` or a dedicated thread.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cartdb_core::cart::{
    InputError, ItemKey, ItemState, ItemSummary, OpId, OpKind, Operation, validate_id,
};
use cartdb_core::placement_key::{is_index_entry, placement_key};
use cartdb_core::version::Version;
use cartdb_core::wire::HeldItem;
use fjall::compaction::Leveled;
use fjall::config::PinningPolicy;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use crate::head_cache::HeadCache;

/// Leading byte of every `items` value; a new encoding gets a new byte, never a reuse.
/// (1 was the whole-log layout described in the module docs.)
const FORMAT_V2: u8 = 2;
/// Tag of a log entry key, after `user 0x00 product 0x00`.
const LOG_TAG: u8 = b'l';
/// Tag of an id entry key.
const ID_TAG: u8 = b'i';
/// Separator between the parts of a key.
const SEP: u8 = 0;

/// The file in the data directory that names its layout.
pub const FORMAT_FILE: &str = "CARTDB_FORMAT";
/// What [`FORMAT_FILE`] holds for this layout: 4 added the `users` keyspace (a store
/// without it would answer every cart read as empty); 3 added placement groups (the
/// `placement` keyspace and cart-index entries); 2 was the per-operation layout without them.
pub const DATA_FORMAT: &str = "cartdb-data 4";

/// Block cache shared by both keyspaces. Small on purpose: the node must stay under
/// 200 MiB RSS, and carts are read by user prefix, mostly from recent (memtable) data.
const CACHE_BYTES: u64 = 16 * 1024 * 1024;
/// Memtable size per keyspace before it is flushed to a table (fjall's default is 64 MiB,
/// which with five keyspaces and a sealed memtable each could reach 640 MiB on its own).
/// 1 MiB was chosen when every cart read scanned the memtable (8 MiB then cost ~17 % of a
/// node's CPU); the head cache now serves hot carts, and with carts spread over a million
/// shoppers 1 MiB meant a flush (and, in fjall, a journal sync) every few hundred writes per
/// keyspace. 4 MiB, with one worker thread: 1,972 -> 2,183 ops/s and p99 132 -> 87 ms over
/// 5 minutes at 1,000,000 users (docs/benchmarks.md).
const MEMTABLE_BYTES: u64 = 4 * 1024 * 1024;
/// Target size of a table written by compaction; with fjall's L0 threshold of 4 tables it
/// also sets L1's size (4 × this), and each further level is 10 times the one above.
/// fjall's default is 64 MiB, so L1 held 256 MiB and every L0 -> L1 compaction rewrote the
/// tables it overlaps; cart keys are spread uniformly, so that was all of L1, and a node's
/// compaction cost per write grew with its data until a keyspace passed 256 MiB (over ten
/// minutes of the 1,000,000-shopper benchmark). 8 MiB caps L1 at 32 MiB: from then on a
/// compaction rewrites at most a few tables. Measured in docs/benchmarks.md (five-minute
/// runs on an empty store). fjall stores it with the keyspace when it creates it.
const TABLE_TARGET_BYTES: u64 = 8 * 1024 * 1024;
/// Open table files kept cached (fjall defaults to the process's file limit).
const MAX_CACHED_FILES: usize = 256;
/// fjall's background flush and compaction threads. Six data nodes share two cores; two
/// threads each spent more in scheduling than they gained (measured with the memtable size).
const WORKER_THREADS: usize = 1;
/// Journal bytes kept before fjall flushes the memtables that pin the oldest journal
/// (fjall's minimum; its default is 512 MiB). The `categories` keyspace changes rarely, so
/// its memtable would otherwise pin journals full of already-flushed `items` writes, which
/// costs disk and lengthens the replay after a crash.
const MAX_JOURNAL_BYTES: u64 = 64 * 1024 * 1024;

/// Why a store operation failed. Every variant about stored data names the key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database could not be opened or recovered.
    #[error("cannot open the store at {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: fjall::Error,
    },
    /// The data directory was written by a build with another layout.
    #[error(
        "the data directory {} has format {found:?}, this build reads {DATA_FORMAT:?}; it is not migrated: start the node with an empty --data-dir (and the cluster in a new ZooKeeper chroot)",
        path.display()
    )]
    Format { path: PathBuf, found: String },
    /// The format marker could not be read or written.
    #[error("cannot access the format marker {}: {source}", path.display())]
    Marker {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// fjall failed while reading.
    #[error("cannot read {key}: {source}")]
    Read {
        key: String,
        #[source]
        source: fjall::Error,
    },
    /// fjall failed to commit (or fsync) a batch. The database refuses writes afterwards.
    #[error("cannot commit a batch of {writes} item writes: {source}")]
    Commit {
        writes: usize,
        #[source]
        source: fjall::Error,
    },
    /// fjall failed to persist its journal.
    #[error("cannot persist the journal: {source}")]
    Persist {
        #[source]
        source: fjall::Error,
    },
    /// A stored value starts with a format byte this build does not know.
    #[error("item {key} has unknown format byte {format}")]
    UnknownFormat { key: String, format: u8 },
    /// A stored value is empty.
    #[error("item {key} has an empty value")]
    EmptyValue { key: String },
    /// A stored value does not decode.
    #[error("item {key} does not decode: {source}")]
    Corrupt {
        key: String,
        #[source]
        source: postcard::Error,
    },
    /// A stored value decodes to a different product than its key names.
    #[error("item {key} holds product {stored:?}")]
    ProductMismatch { key: String, stored: String },
    /// A stored key does not have the layout described in the module docs, or is not UTF-8.
    #[error("malformed key {key}")]
    MalformedKey { key: String },
    /// A stored log or id entry has a value of the wrong shape.
    #[error("log entry {key} has a malformed value of {len} bytes")]
    MalformedEntry { key: String, len: usize },
    /// An item state could not be encoded (a bug).
    #[error("cannot encode item {key}: {source}")]
    Encode {
        key: String,
        #[source]
        source: postcard::Error,
    },
    /// An identifier would not make a well-formed key.
    #[error("invalid identifier: {0}")]
    InvalidId(#[from] InputError),
}

/// The fjall keyspaces of one data node.
pub struct CartStore {
    db: Database,
    items: Keyspace,
    log: Keyspace,
    categories: Keyspace,
    placement: Keyspace,
    users: Keyspace,
    heads: HeadCache,
}

/// One item's change, written together: its new head, the operations added to and removed
/// from its log, and the category index change that goes with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ItemWrite {
    pub key: ItemKey,
    pub head: ItemSummary,
    /// New log entries (each also gets an id entry).
    pub added: Vec<Operation>,
    /// Log entries folded into the base; their id entries stay, so retries are still
    /// recognised.
    pub folded: Vec<Operation>,
    /// Id entries to drop: folded operations older than the idempotency window.
    pub forgotten: Vec<OpId>,
    pub index: IndexChange,
    /// The item is new on this replica: its `placement` entry (and its user's `users`
    /// entry) is written with it.
    pub created: bool,
}

/// How the category index changes when an item's state changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexChange {
    /// Remove the item from this category.
    pub remove: Option<String>,
    /// Add the item to this category.
    pub insert: Option<String>,
}

impl IndexChange {
    /// The change that takes the index from `before` to `after`: an item is listed under its
    /// category exactly while its quantity is above zero.
    pub fn between(before: Option<&ItemSummary>, after: &ItemSummary) -> Self {
        let was = before.and_then(listed_category);
        let is = listed_category(after);
        if was == is {
            return Self::default();
        }
        Self {
            remove: was.map(str::to_owned),
            insert: is.map(str::to_owned),
        }
    }

    /// Whether the index stays as it is.
    pub fn is_empty(&self) -> bool {
        self.remove.is_none() && self.insert.is_none()
    }
}

/// The category an item is listed under, if its quantity is above zero. Cart-index entries
/// are not products and are never listed.
fn listed_category(head: &ItemSummary) -> Option<&str> {
    (head.qty > 0 && !is_index_entry(&head.product)).then_some(head.meta.category.as_str())
}

impl CartStore {
    /// Opens (or creates) the store in `path`, recovering the journal after a crash.
    ///
    /// # Errors
    /// [`StoreError::Open`] when fjall cannot open the directory (missing permissions, another
    /// process holds it, unrecoverable data).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        check_format(path)?;
        let open_error = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        let db = Database::builder(path)
            .cache_size(CACHE_BYTES)
            .max_cached_files(Some(MAX_CACHED_FILES))
            .worker_threads(WORKER_THREADS)
            .max_journaling_size(MAX_JOURNAL_BYTES)
            .open()
            .map_err(open_error)?;
        let items = db.keyspace("items", keyspace_options).map_err(open_error)?;
        let log = db.keyspace("log", keyspace_options).map_err(open_error)?;
        let categories = db
            .keyspace("categories", keyspace_options)
            .map_err(open_error)?;
        let placement = db
            .keyspace("placement", keyspace_options)
            .map_err(open_error)?;
        let users = db.keyspace("users", keyspace_options).map_err(open_error)?;
        Ok(Self {
            db,
            items,
            log,
            categories,
            placement,
            users,
            heads: HeadCache::default(),
        })
    }

    /// The head of one item, if this replica has seen an operation on it.
    ///
    /// # Errors
    /// [`StoreError::InvalidId`] for an identifier that cannot be a key part,
    /// [`StoreError::Read`] when fjall fails, and a decoding error naming the key when the
    /// stored value is corrupt.
    pub fn read_summary(&self, key: &ItemKey) -> Result<Option<ItemSummary>, StoreError> {
        if let Some(cached) = self.heads.item(key) {
            return Ok(cached);
        }
        let raw = item_key(key)?;
        let value = self.items.get(&raw).map_err(|source| StoreError::Read {
            key: show_key(&raw),
            source,
        })?;
        value
            .map(|v| decode_head(&raw, &key.product, &v))
            .transpose()
    }

    /// The heads of every item of `user` on this replica, sorted by product id.
    ///
    /// # Errors
    /// As [`CartStore::read_summary`], for the first item that fails.
    pub fn read_user_summaries(&self, user: &str) -> Result<Vec<ItemSummary>, StoreError> {
        let prefix = key_prefix("userid", user)?;
        let mut answer = "cache";
        let heads = self.heads.user(user, || {
            if self.holds_user(user)? {
                answer = "scan";
                self.scan_heads(&prefix)
            } else {
                answer = "none_held";
                Ok(Vec::new())
            }
        })?;
        metrics::counter!("cartdb_datanode_user_reads_total", "answer" => answer).increment(1);
        Ok(heads)
    }

    /// Whether this replica holds an item of `user`, from its `users` entry.
    fn holds_user(&self, user: &str) -> Result<bool, StoreError> {
        self.users
            .contains_key(user.as_bytes())
            .map_err(|source| StoreError::Read {
                key: format!("users entry {user:?}"),
                source,
            })
    }

    /// The heads under `prefix` (`user 0x00`), from fjall.
    fn scan_heads(&self, prefix: &[u8]) -> Result<Vec<ItemSummary>, StoreError> {
        scan(&self.items, prefix, |raw, tail, value| {
            decode_head(raw, product_of(tail, raw)?, value)
        })
    }

    /// The operation with id `id` in the item's log (or folded into its base), if any.
    ///
    /// # Errors
    /// As [`CartStore::read_summary`]; [`StoreError::MalformedEntry`] for a corrupt entry.
    pub fn find_op(&self, key: &ItemKey, id: OpId) -> Result<Option<Operation>, StoreError> {
        let mut raw = log_prefix(key)?;
        raw.push(ID_TAG);
        raw.extend_from_slice(&id.0.to_be_bytes());
        let value = self.log.get(&raw).map_err(|source| StoreError::Read {
            key: show_key(&raw),
            source,
        })?;
        value.map(|v| decode_id_entry(&raw, id, &v)).transpose()
    }

    /// The item's operation log (without the folded base), in version order.
    ///
    /// # Errors
    /// As [`CartStore::find_op`].
    pub fn read_log(&self, key: &ItemKey) -> Result<Vec<Operation>, StoreError> {
        let mut prefix = log_prefix(key)?;
        prefix.push(LOG_TAG);
        scan(&self.log, &prefix, decode_log_entry)
    }

    /// Every operation id the item remembers (logged or folded), with its version and kind.
    ///
    /// # Errors
    /// As [`CartStore::find_op`].
    pub fn read_ids(&self, key: &ItemKey) -> Result<Vec<Operation>, StoreError> {
        let mut prefix = log_prefix(key)?;
        prefix.push(ID_TAG);
        scan(&self.log, &prefix, |raw, tail, value| {
            let id: &[u8; 16] = tail
                .try_into()
                .map_err(|_| StoreError::MalformedKey { key: show_key(raw) })?;
            decode_id_entry(raw, OpId(u128::from_be_bytes(*id)), value)
        })
    }

    /// The full state of the item `key` whose head is `head`.
    fn state_of(&self, key: &ItemKey, head: ItemSummary) -> Result<ItemState, StoreError> {
        Ok(ItemState {
            ops: self.read_log(key)?,
            product: head.product,
            meta: head.meta,
            base: head.base,
        })
    }

    /// The full state of one item (head and log), if this replica has seen it.
    ///
    /// # Errors
    /// As [`CartStore::read_log`].
    pub fn read_item(&self, key: &ItemKey) -> Result<Option<ItemState>, StoreError> {
        let Some(head) = self.read_summary(key)? else {
            return Ok(None);
        };
        self.state_of(key, head).map(Some)
    }

    /// The full states of `user`'s items on this replica, sorted by product id: every item,
    /// or only those named in `products`.
    ///
    /// # Errors
    /// As [`CartStore::read_item`], for the first item that fails.
    pub fn read_user(
        &self,
        user: &str,
        products: Option<&[String]>,
    ) -> Result<Vec<ItemState>, StoreError> {
        let heads = self.read_user_summaries(user)?;
        heads
            .into_iter()
            .filter(|head| products.is_none_or(|wanted| wanted.contains(&head.product)))
            .map(|head| {
                let key = ItemKey {
                    user: user.to_owned(),
                    product: head.product.clone(),
                };
                self.state_of(&key, head)
            })
            .collect()
    }

    /// The items with a quantity above zero in `category` on this replica, sorted by user,
    /// then product.
    ///
    /// # Errors
    /// [`StoreError::InvalidId`], [`StoreError::Read`], or
    /// [`StoreError::MalformedKey`] for an index key that does not parse.
    pub fn items_in_category(&self, category: &str) -> Result<Vec<ItemKey>, StoreError> {
        let prefix = key_prefix("category", category)?;
        let mut items = Vec::new();
        for guard in self.categories.prefix(&prefix) {
            let raw = guard.key().map_err(|source| StoreError::Read {
                key: show_key(&prefix),
                source,
            })?;
            items.push(item_key_of(&raw[prefix.len()..], &raw)?);
        }
        Ok(items)
    }

    /// The users of [`CartStore::items_in_category`], sorted and without duplicates.
    ///
    /// # Errors
    /// As [`CartStore::items_in_category`].
    pub fn users_in_category(&self, category: &str) -> Result<Vec<String>, StoreError> {
        let mut users: Vec<String> = self
            .items_in_category(category)?
            .into_iter()
            .map(|key| key.user)
            .collect();
        users.dedup();
        Ok(users)
    }

    /// The heads of the items whose reversed placement keys fall in `ranges` (the key ranges
    /// of one placement group), in key order, at most `limit`; `true` when more were left.
    ///
    /// # Errors
    /// [`StoreError::Read`], [`StoreError::MalformedKey`], or a decoding error of a head.
    pub fn scan_placement(
        &self,
        ranges: &[(u32, u32)],
        limit: usize,
    ) -> Result<(Vec<HeldItem>, bool), StoreError> {
        let mut held = Vec::new();
        for &(first, last) in ranges {
            let end = u64::from(last) + 1;
            let start = first.to_be_bytes().to_vec();
            let entries = match u32::try_from(end) {
                Ok(end) => self.placement.range(start..end.to_be_bytes().to_vec()),
                Err(_) => self.placement.range(start..),
            };
            for guard in entries {
                let raw = guard.key().map_err(|source| StoreError::Read {
                    key: format!("placement range {first:#010x}..={last:#010x}"),
                    source,
                })?;
                let tail = raw.get(4..).ok_or_else(|| StoreError::MalformedKey {
                    key: show_key(&raw),
                })?;
                let key = item_key_of(tail, &raw)?;
                if held.len() == limit {
                    return Ok((held, true));
                }
                if let Some(summary) = self.read_summary(&key)? {
                    held.push(HeldItem {
                        user: key.user,
                        summary,
                    });
                }
            }
        }
        Ok((held, false))
    }

    /// This replica's items in key order (user, then product) after `after`, at most
    /// `limit`; `true` when more were left.
    ///
    /// # Errors
    /// As [`CartStore::scan_placement`].
    pub fn list_items(
        &self,
        after: Option<&ItemKey>,
        limit: usize,
    ) -> Result<(Vec<HeldItem>, bool), StoreError> {
        let start = match after {
            Some(key) => {
                let mut raw = item_key(key)?;
                // The smallest key after `raw`.
                raw.push(0);
                raw
            }
            None => Vec::new(),
        };
        let mut held = Vec::new();
        for guard in self.items.range(start..) {
            let (raw, value) = guard.into_inner().map_err(|source| StoreError::Read {
                key: "items".to_owned(),
                source,
            })?;
            if held.len() == limit {
                return Ok((held, true));
            }
            let key = item_key_of(&raw, &raw)?;
            let summary = decode_head(&raw, &key.product, &value)?;
            held.push(HeldItem {
                user: key.user,
                summary,
            });
        }
        Ok((held, false))
    }

    /// Deletes every trace of `keys` (head, log and id entries, category and placement
    /// entries) in one batch, fsync'd before it returns; items not held are skipped. Returns
    /// how many items were deleted. Called by the group commit writer only, so it never
    /// races a write.
    ///
    /// # Errors
    /// As [`CartStore::read_summary`] for a read; [`StoreError::Commit`] when fjall fails,
    /// after which fjall refuses every write.
    pub fn drop_items(&self, keys: &[ItemKey]) -> Result<u32, StoreError> {
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncData));
        let mut dropped = Vec::new();
        let keys: std::collections::BTreeSet<&ItemKey> = keys.iter().collect();
        for key in keys {
            let Some(head) = self.read_summary(key)? else {
                continue;
            };
            let prefix = log_prefix(key)?;
            for guard in self.log.prefix(&prefix) {
                let raw = guard.key().map_err(|source| StoreError::Read {
                    key: show_key(&prefix),
                    source,
                })?;
                batch.remove(&self.log, raw.to_vec());
            }
            if let Some(category) = listed_category(&head) {
                batch.remove(&self.categories, index_key(category, key)?);
            }
            batch.remove(&self.placement, placement_entry(key)?);
            batch.remove(&self.items, item_key(key)?);
            dropped.push(key);
        }
        if dropped.is_empty() {
            return Ok(0);
        }
        for user in self.emptied_users(&dropped)? {
            batch.remove(&self.users, user.as_bytes());
        }
        batch.commit().map_err(|source| StoreError::Commit {
            writes: dropped.len(),
            source,
        })?;
        self.heads.dropped(dropped.iter().copied());
        Ok(u32::try_from(dropped.len()).unwrap_or(u32::MAX))
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
        for write in writes {
            self.stage(&mut batch, write)?;
        }
        batch.commit().map_err(|source| StoreError::Commit {
            writes: writes.len(),
            source,
        })?;
        // Durable now; readers must see it before the writer acknowledges anything.
        self.heads.written(writes.iter().map(|w| (&w.key, &w.head)));
        Ok(())
    }

    /// Adds one item write and its index change to `batch`.
    fn stage(
        &self,
        batch: &mut fjall::OwnedWriteBatch,
        write: &ItemWrite,
    ) -> Result<(), StoreError> {
        let raw = item_key(&write.key)?;
        let value = encode_head(&raw, &write.head)?;
        let prefix = log_prefix(&write.key)?;
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
        batch.insert(&self.items, raw, value);
        if write.created {
            batch.insert(&self.placement, placement_entry(&write.key)?, Vec::new());
            batch.insert(&self.users, write.key.user.as_bytes(), Vec::new());
        }
        Ok(())
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

/// Decodes every entry under `prefix` with `decode(key, key after the prefix, value)`.
fn scan<T>(
    keyspace: &Keyspace,
    prefix: &[u8],
    decode: impl Fn(&[u8], &[u8], &[u8]) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    keyspace
        .prefix(prefix)
        .map(|guard| {
            let (raw, value) = guard.into_inner().map_err(|source| StoreError::Read {
                key: show_key(prefix),
                source,
            })?;
            decode(&raw, &raw[prefix.len()..], &value)
        })
        .collect()
}

/// Options of every keyspace; see [`MEMTABLE_BYTES`].
///
/// Filter and index blocks are pinned in memory on every level (fjall pins only L0's
/// filters and L0-L1's indexes). Unpinned, they went through the small block cache: once
/// the tables outgrew it, nearly every point read (a write's duplicate check in `log`, an
/// item's head) loaded a whole filter block from disk and checksummed it. Profiled at
/// 1,000,000 shoppers that was 30 % of a data node's CPU, growing with the data; pinned,
/// they cost about 1.3 bytes per key of memory. fjall stores these settings with the
/// keyspace when it creates it: data directories created by earlier builds keep theirs.
fn keyspace_options() -> KeyspaceCreateOptions {
    KeyspaceCreateOptions::default()
        .max_memtable_size(MEMTABLE_BYTES)
        .compaction_strategy(Arc::new(
            Leveled::default().with_table_target_size(TABLE_TARGET_BYTES),
        ))
        .filter_block_pinning_policy(PinningPolicy::all(true))
        .index_block_pinning_policy(PinningPolicy::all(true))
}

/// `user 0x00 product`.
fn item_key(key: &ItemKey) -> Result<Vec<u8>, StoreError> {
    let mut raw = key_prefix("userid", &key.user)?;
    validate_id("productid", &key.product)?;
    raw.extend_from_slice(key.product.as_bytes());
    Ok(raw)
}

/// `category 0x00 user 0x00 product`.
fn index_key(category: &str, key: &ItemKey) -> Result<Vec<u8>, StoreError> {
    let mut raw = key_prefix("category", category)?;
    raw.extend_from_slice(&item_key(key)?);
    Ok(raw)
}

/// `id 0x00`, after checking that `id` cannot break the key layout.
fn key_prefix(field: &str, id: &str) -> Result<Vec<u8>, StoreError> {
    validate_id(field, id)?;
    let mut raw = Vec::with_capacity(id.len() + 1 + 64);
    raw.extend_from_slice(id.as_bytes());
    raw.push(SEP);
    Ok(raw)
}

/// The product part of an item key (what follows `user 0x00`).
fn product_of<'a>(rest: &'a [u8], raw: &[u8]) -> Result<&'a str, StoreError> {
    std::str::from_utf8(rest).map_err(|_| StoreError::MalformedKey { key: show_key(raw) })
}

/// The item of a `user 0x00 product` key part (`raw` is the whole key, for errors).
fn item_key_of(rest: &[u8], raw: &[u8]) -> Result<ItemKey, StoreError> {
    let malformed = || StoreError::MalformedKey { key: show_key(raw) };
    let end = rest.iter().position(|&b| b == SEP).ok_or_else(malformed)?;
    let user = std::str::from_utf8(&rest[..end]).map_err(|_| malformed())?;
    let product = std::str::from_utf8(&rest[end + 1..]).map_err(|_| malformed())?;
    if user.is_empty() || product.is_empty() {
        return Err(malformed());
    }
    Ok(ItemKey {
        user: user.to_owned(),
        product: product.to_owned(),
    })
}

/// `reverse_bits(x) user 0x00 product`: the item's `placement` entry.
fn placement_entry(key: &ItemKey) -> Result<Vec<u8>, StoreError> {
    let x = placement_key(&key.user, &key.product);
    let mut raw = x.reverse_bits().to_be_bytes().to_vec();
    raw.extend_from_slice(&item_key(key)?);
    Ok(raw)
}

/// Refuses a data directory of another layout, and marks a new (empty) one with this one.
fn check_format(path: &Path) -> Result<(), StoreError> {
    let marker = path.join(FORMAT_FILE);
    let marker_error = |source| StoreError::Marker {
        path: marker.clone(),
        source,
    };
    match std::fs::read_to_string(&marker) {
        Ok(found) if found.trim() == DATA_FORMAT => Ok(()),
        Ok(found) => Err(StoreError::Format {
            path: path.to_owned(),
            found: found.trim().to_owned(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let empty = match std::fs::read_dir(path) {
                Ok(mut entries) => entries.next().is_none(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
                Err(e) => return Err(marker_error(e)),
            };
            if !empty {
                return Err(StoreError::Format {
                    path: path.to_owned(),
                    found: "cartdb-data 2 or older (no format marker)".to_owned(),
                });
            }
            std::fs::create_dir_all(path).map_err(marker_error)?;
            write_marker(&marker).map_err(marker_error)
        }
        Err(e) => Err(marker_error(e)),
    }
}

/// Writes the format marker durably (file and directory entry).
fn write_marker(marker: &Path) -> std::io::Result<()> {
    let file = std::fs::File::create(marker)?;
    std::io::Write::write_all(&mut &file, format!("{DATA_FORMAT}\n").as_bytes())?;
    file.sync_all()?;
    if let Some(dir) = marker.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// `user 0x00 product 0x00`: the prefix of every log and id entry of the item.
fn log_prefix(key: &ItemKey) -> Result<Vec<u8>, StoreError> {
    let mut raw = item_key(key)?;
    raw.push(SEP);
    Ok(raw)
}

/// Log entry key: the prefix, `'l'`, then the version and id, so entries sort by
/// [`Operation::log_order`].
fn log_entry_key(prefix: &[u8], op: &Operation) -> Vec<u8> {
    let mut raw = Vec::with_capacity(prefix.len() + 29);
    raw.extend_from_slice(prefix);
    raw.push(LOG_TAG);
    raw.extend_from_slice(&op.version.hlc.to_be_bytes());
    raw.extend_from_slice(&op.version.gateway.to_be_bytes());
    raw.extend_from_slice(&op.id.0.to_be_bytes());
    raw
}

fn id_entry_key(prefix: &[u8], id: OpId) -> Vec<u8> {
    let mut raw = Vec::with_capacity(prefix.len() + 17);
    raw.extend_from_slice(prefix);
    raw.push(ID_TAG);
    raw.extend_from_slice(&id.0.to_be_bytes());
    raw
}

fn id_entry_value(op: &Operation) -> Vec<u8> {
    let mut value = Vec::with_capacity(13);
    value.extend_from_slice(&op.version.hlc.to_be_bytes());
    value.extend_from_slice(&op.version.gateway.to_be_bytes());
    value.push(kind_byte(op.kind));
    value
}

fn kind_byte(kind: OpKind) -> u8 {
    match kind {
        OpKind::Add => 0,
        OpKind::Delete => 1,
    }
}

fn kind_of(byte: u8) -> Option<OpKind> {
    match byte {
        0 => Some(OpKind::Add),
        1 => Some(OpKind::Delete),
        _ => None,
    }
}

/// Decodes a log entry from its key's tail after the tag (`hlc gateway id`) and its value.
fn decode_log_entry(raw: &[u8], tail: &[u8], value: &[u8]) -> Result<Operation, StoreError> {
    let malformed = || StoreError::MalformedEntry {
        key: show_key(raw),
        len: value.len(),
    };
    let (hlc, rest) = tail.split_first_chunk::<8>().ok_or_else(malformed)?;
    let (gateway, rest) = rest.split_first_chunk::<4>().ok_or_else(malformed)?;
    let id: &[u8; 16] = rest.try_into().map_err(|_| malformed())?;
    let kind = match value {
        [byte] => kind_of(*byte).ok_or_else(malformed)?,
        _ => return Err(malformed()),
    };
    Ok(Operation {
        id: OpId(u128::from_be_bytes(*id)),
        kind,
        version: Version {
            hlc: u64::from_be_bytes(*hlc),
            gateway: u32::from_be_bytes(*gateway),
        },
    })
}

fn decode_id_entry(raw: &[u8], id: OpId, value: &[u8]) -> Result<Operation, StoreError> {
    let malformed = || StoreError::MalformedEntry {
        key: show_key(raw),
        len: value.len(),
    };
    let (hlc, rest) = value.split_first_chunk::<8>().ok_or_else(malformed)?;
    let (gateway, rest) = rest.split_first_chunk::<4>().ok_or_else(malformed)?;
    let kind = match rest {
        [byte] => kind_of(*byte).ok_or_else(malformed)?,
        _ => return Err(malformed()),
    };
    Ok(Operation {
        id,
        kind,
        version: Version {
            hlc: u64::from_be_bytes(*hlc),
            gateway: u32::from_be_bytes(*gateway),
        },
    })
}

fn encode_head(raw: &[u8], head: &ItemSummary) -> Result<Vec<u8>, StoreError> {
    let mut value = vec![FORMAT_V2];
    postcard::to_io(head, &mut value).map_err(|source| StoreError::Encode {
        key: show_key(raw),
        source,
    })?;
    Ok(value)
}

/// Decodes an `items` value stored under `raw`, which names `product`.
fn decode_head(raw: &[u8], product: &str, value: &[u8]) -> Result<ItemSummary, StoreError> {
    let (&format, body) = value
        .split_first()
        .ok_or_else(|| StoreError::EmptyValue { key: show_key(raw) })?;
    if format != FORMAT_V2 {
        return Err(StoreError::UnknownFormat {
            key: show_key(raw),
            format,
        });
    }
    let head: ItemSummary = postcard::from_bytes(body).map_err(|source| StoreError::Corrupt {
        key: show_key(raw),
        source,
    })?;
    if head.product != product {
        return Err(StoreError::ProductMismatch {
            key: show_key(raw),
            stored: head.product,
        });
    }
    Ok(head)
}

/// A key for error messages: separators shown as `/` (which identifiers never contain).
fn show_key(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).replace('\0', "/")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]
mod tests {
    use cartdb_core::cart::{ItemMeta, OpId, OpKind, Operation};
    use cartdb_core::version::Version;

    use super::*;

    fn state(qty_ops: &[OpKind], category: &str) -> ItemState {
        let mut s = ItemState::new(
            "p1",
            ItemMeta {
                price: 10,
                category: category.into(),
            },
        );
        for (i, kind) in qty_ops.iter().enumerate() {
            let n = u64::try_from(i).unwrap_or(0) + 1;
            s.apply(Operation {
                id: OpId(n.into()),
                kind: *kind,
                version: Version { hlc: n, gateway: 1 },
            });
        }
        s
    }

    #[test]
    fn index_follows_quantity_and_category() {
        let zero = state(&[], "c1").summary();
        let one = state(&[OpKind::Add], "c1").summary();
        let moved = state(&[OpKind::Add], "c2").summary();
        assert_eq!(IndexChange::between(None, &zero), IndexChange::default());
        assert_eq!(
            IndexChange::between(None, &one).insert.as_deref(),
            Some("c1")
        );
        assert_eq!(
            IndexChange::between(Some(&one), &zero).remove.as_deref(),
            Some("c1")
        );
        assert!(IndexChange::between(Some(&one), &one).is_empty());
        let change = IndexChange::between(Some(&one), &moved);
        assert_eq!(change.remove.as_deref(), Some("c1"));
        assert_eq!(change.insert.as_deref(), Some("c2"));
    }

    #[test]
    fn values_round_trip_and_corruption_names_the_key() {
        let s = state(&[OpKind::Add, OpKind::Add], "c1").summary();
        let raw = b"u1\0p1";
        let value = encode_head(raw, &s).unwrap();
        assert_eq!(decode_head(raw, "p1", &value).unwrap(), s);
        let err = decode_head(raw, "p1", &[9, 1, 2]).unwrap_err();
        assert!(err.to_string().contains("u1/p1"), "{err}");
        assert!(matches!(
            decode_head(raw, "p1", &[]),
            Err(StoreError::EmptyValue { .. })
        ));
        assert!(matches!(
            decode_head(raw, "p1", &[FORMAT_V2, 0xff]),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            decode_head(raw, "other", &value),
            Err(StoreError::ProductMismatch { .. })
        ));
    }

    #[test]
    fn log_and_id_entries_round_trip_and_sort_by_version() {
        let prefix = b"u1\0p1\0".to_vec();
        let op = |id: u128, hlc| Operation {
            id: OpId(id),
            kind: OpKind::Delete,
            version: Version { hlc, gateway: 3 },
        };
        let (early, late) = (op(u128::MAX, 5), op(1, 300));
        let (k1, k2) = (
            log_entry_key(&prefix, &early),
            log_entry_key(&prefix, &late),
        );
        assert!(k1 < k2, "byte order is version order");
        let tail = &k1[prefix.len() + 1..];
        assert_eq!(decode_log_entry(&k1, tail, &[1]).unwrap(), early);
        assert!(decode_log_entry(&k1, tail, &[7]).is_err());
        assert!(decode_log_entry(&k1, &tail[1..], &[1]).is_err());
        let id_key = id_entry_key(&prefix, late.id);
        let value = id_entry_value(&late);
        assert_eq!(decode_id_entry(&id_key, late.id, &value).unwrap(), late);
        let err = decode_id_entry(&id_key, late.id, &value[1..]).unwrap_err();
        assert!(err.to_string().contains("u1/p1/i"), "{err}");
    }

    #[test]
    fn index_keys_parse_back_to_their_user() {
        let key = item_key_of(b"u1\0p1", b"").unwrap();
        assert_eq!((key.user.as_str(), key.product.as_str()), ("u1", "p1"));
        assert!(item_key_of(b"u1p1", b"").is_err());
        assert!(item_key_of(b"\0p1", b"").is_err());
        assert!(item_key_of(b"u1\0", b"").is_err());
    }

    #[test]
    fn identifiers_with_separators_are_refused() {
        let key = ItemKey {
            user: "a\0b".into(),
            product: "p".into(),
        };
        assert!(matches!(item_key(&key), Err(StoreError::InvalidId(_))));
    }
}

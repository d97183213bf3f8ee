//! [`CartStore`]: the data node's fjall database, behind a small synchronous API.
//!
//! Five keyspaces, all written only through [`CartStore::commit`] and
//! [`CartStore::drop_items`], whose one fjall batch is atomic across them:
//!
//! ```text
//! items       user 0x00 product                        -> FORMAT_V2 ++ postcard(ItemSummary)
//! placement   rx user 0x00 product                     -> the same head
//! log         rx user 0x00 product 0x00 'l' hlc gateway id -> kind     (the operation log)
//!             rx user 0x00 product 0x00 'i' id         -> hlc gateway kind   (by op id)
//! categories  category 0x00 user 0x00 product          -> (empty)
//! users       user                                     -> (empty)
//!
//! rx = reverse_bits(x), 4 bytes: x is the item's placement key
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
//! A placement group is contiguous in `placement` and `log`: `x` is the item's placement key
//! (`cartdb_model::placement_key::placement_key`), and with its bits reversed the PG's low
//! bits become the key's high bits, so a PG's items, and their logs, are one or two key
//! ranges whatever `pg_num` is (`cartdb_model::pg::Pool::key_ranges`). Backfill and
//! anti-entropy read a PG as range scans of those two keyspaces, in the same order, with no
//! point read per item. `placement` holds a copy of the item's head, written with every
//! write in the same batch as `items`: cart reads scan `items` by user, PG reads scan
//! `placement`, and neither needs the other. (Format 4 kept `log` by user and `placement`
//! as a bare index, so a PG scan cost a random head read per item and a log scan per item in
//! another part of the keyspace.)
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
//!
//! Split along those lines: this file opens the store and reads it by user and by key;
//! `pg.rs` reads a placement group (range scans of `placement` and `log` in step);
//! `codec.rs` builds and parses the keys and values above; the two writers are in
//! `write.rs`; the digest buckets anti-entropy compares are kept in `digests.rs`; the
//! format marker is checked in `format.rs`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cartdb_core::cart::{InputError, ItemKey, ItemState, ItemSummary, OpId, Operation};
use cartdb_core::placement_key::is_index_entry;
use cartdb_core::wire::{BucketDigest, HeldItem};
use fjall::compaction::Leveled;
use fjall::config::PinningPolicy;
use fjall::{Database, Keyspace, KeyspaceCreateOptions};

use crate::head_cache::HeadCache;

mod codec;
mod digests;
mod format;
mod pg;
mod write;

pub use digests::DigestError;
use digests::{DigestChange, Digests};

use codec::{
    ID_TAG, LOG_TAG, decode_head, decode_id_entry, decode_log_entry, item_key, item_key_of,
    key_prefix, log_prefix, product_of, show_key, show_placed_key,
};

/// The file in the data directory that names its layout.
pub const FORMAT_FILE: &str = "CARTDB_FORMAT";
/// What [`FORMAT_FILE`] holds for this layout: 5 keeps placement groups contiguous (`log`
/// keyed by reversed placement key, `placement` holding heads); 4 added the `users` keyspace
/// (a store without it would answer every cart read as empty); 3 added placement groups
/// (the `placement` keyspace and cart-index entries); 2 was the per-operation layout
/// without them.
pub const DATA_FORMAT: &str = "cartdb-data 5";

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
/// fjall's background flush and compaction threads. One thread each was cheaper on six
/// nodes sharing two cores, but fjall 3.1.13 can deadlock with one: writers poke the
/// workers' bounded channel (1,000 messages) each time a memtable is over its size, and the
/// worker that rotates it then blocks sending a flush on that same full channel, which only
/// it reads (fjall-rs/fjall PR #323). At a million carts a backfill's writes did exactly
/// that while the one worker compacted: the node kept acknowledging writes (its journal is
/// fsync'd) but never flushed again, and its journal and memory grew past 500 MiB and
/// 2.3 GiB. With two, one worker reading the channel frees the other. The journal count is
/// watched ([`CartStore::journal_count`]) in case both ever block.
const WORKER_THREADS: usize = 2;
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
    /// The thread that rebuilds the digest buckets could not start.
    #[error("cannot start the digest rebuild thread: {source}")]
    Spawn {
        #[source]
        source: std::io::Error,
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
    digests: Arc<Digests>,
    /// The thread rebuilding `digests`, joined when the store is dropped.
    rebuild: Option<std::thread::JoinHandle<()>>,
}

impl Drop for CartStore {
    fn drop(&mut self) {
        self.digests.stop();
        if let Some(rebuild) = self.rebuild.take() {
            // It checks `stop` between items; a panic in it was logged already.
            let _ = rebuild.join();
        }
    }
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
    /// The item is new on this replica: its user's `users` entry is written with it.
    pub created: bool,
    /// The head before this write (`None` when the item is new here), whose fingerprint
    /// leaves the item's digest bucket.
    pub before: Option<ItemSummary>,
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
        format::check_format(path)?;
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
        // Before any write: the rebuild adds this snapshot's heads, the writer every change
        // made after it.
        let snapshot = db.snapshot();
        let digests = Arc::new(Digests::new());
        let rebuild = {
            let (placement, digests) = (placement.clone(), digests.clone());
            std::thread::Builder::new()
                .name("digest-rebuild".to_owned())
                .spawn(move || digests::rebuild_digests(&snapshot, &placement, &digests))
                .map_err(|source| StoreError::Spawn { source })?
        };
        Ok(Self {
            db,
            items,
            log,
            categories,
            placement,
            users,
            heads: HeadCache::default(),
            digests,
            rebuild: Some(rebuild),
        })
    }

    /// How many journal files fjall keeps: one or two normally (a journal is flushed away
    /// past [`MAX_JOURNAL_BYTES`]); more means its workers stopped flushing.
    pub fn journal_count(&self) -> usize {
        self.db.journal_count()
    }

    /// This replica's digest of every bucket of `ranges`, in key order (see
    /// `cartdb_core::digest_bucket`).
    ///
    /// # Errors
    /// [`DigestError::NotReady`] while the buckets are being rebuilt after the store opened,
    /// [`DigestError::Buckets`] when `ranges` are not whole, disjoint buckets.
    pub fn pg_digests(&self, ranges: &[(u32, u32)]) -> Result<Vec<BucketDigest>, DigestError> {
        self.digests.answer(ranges)
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
            key: show_placed_key(&raw),
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
            let id: &[u8; 16] = tail.try_into().map_err(|_| StoreError::MalformedKey {
                key: show_placed_key(raw),
            })?;
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
        self.category_page(category, None, usize::MAX)
            .map(|(items, _)| items)
    }

    /// One page of [`CartStore::items_in_category`]: every item of the first `users` users
    /// after `after` (in user order); `true` when more users follow.
    ///
    /// # Errors
    /// As [`CartStore::items_in_category`], and [`StoreError::InvalidId`] for `after`.
    pub fn category_page(
        &self,
        category: &str,
        after: Option<&str>,
        users: usize,
    ) -> Result<(Vec<ItemKey>, bool), StoreError> {
        let prefix = key_prefix("category", category)?;
        let start = match after {
            Some(user) => {
                // Past every `category 0x00 user 0x00 ...` key: identifiers hold no control
                // characters, so 0x01 after the user sorts after its entries and before any
                // other user's.
                let mut start = prefix.clone();
                start.extend_from_slice(&key_prefix("after", user)?);
                start.pop();
                start.push(1);
                start
            }
            None => prefix.clone(),
        };
        let mut items: Vec<ItemKey> = Vec::new();
        let mut seen = 0;
        for guard in self.categories.range(start..) {
            let raw = guard.key().map_err(|source| StoreError::Read {
                key: show_key(&prefix),
                source,
            })?;
            let Some(rest) = raw.strip_prefix(prefix.as_slice()) else {
                break;
            };
            let key = item_key_of(rest, &raw)?;
            if items.last().is_none_or(|last| last.user != key.user) {
                if seen == users {
                    return Ok((items, true));
                }
                seen += 1;
            }
            items.push(key);
        }
        Ok((items, false))
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]
mod tests {
    use cartdb_core::cart::{ItemMeta, OpId, OpKind, Operation};
    use cartdb_core::version::Version;

    use super::codec::{FORMAT_V2, encode_head};
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
}

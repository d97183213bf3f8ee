//! [`CartStore`]: the data node's fjall database, behind a small synchronous API.
//!
//! Two keyspaces, both written only through [`CartStore::commit`], whose one fjall batch is
//! atomic across them:
//!
//! ```text
//! items       user 0x00 product               -> FORMAT_V1 ++ postcard(ItemState)
//! categories  category 0x00 user 0x00 product -> (empty)
//! ```
//!
//! A `categories` entry exists exactly while that item's folded quantity on this replica is
//! above zero, so a user leaves a category as soon as their last item of it reaches 0.
//! Identifiers never contain 0x00 (`validate_id` refuses control characters), which makes
//! 0x00 a separator that also keeps keys sorted by user, then product: `"a\0"` sorts before
//! `"a b\0"`. Every method is blocking: call it from `spawn_blocking` or a dedicated thread.

use std::path::{Path, PathBuf};

use cartdb_core::cart::{InputError, ItemKey, ItemState, validate_id};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

/// Leading byte of every `items` value; a new encoding gets a new byte, never a reuse.
const FORMAT_V1: u8 = 1;
/// Separator between the parts of a key.
const SEP: u8 = 0;

/// Block cache shared by both keyspaces. Small on purpose: the node must stay under
/// 200 MiB RSS, and carts are read by user prefix, mostly from recent (memtable) data.
const CACHE_BYTES: u64 = 16 * 1024 * 1024;
/// Memtable size per keyspace before it is flushed to a table (fjall's default is 64 MiB,
/// which with two keyspaces and a sealed memtable each could reach 256 MiB on its own).
/// Small on purpose: every write stores a new version of the whole item, and a cart read
/// (a prefix scan) walks every version still in the memtable. Profiled under the cluster
/// benchmark, 8 MiB spent ~17 % of a node's CPU in that walk; 1 MiB gave +13 % throughput.
const MEMTABLE_BYTES: u64 = 1024 * 1024;
/// Open table files kept cached (fjall defaults to the process's file limit).
const MAX_CACHED_FILES: usize = 256;
/// fjall's background flush and compaction threads.
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
    categories: Keyspace,
}

/// One item's new state and the category index change that goes with it, written together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ItemWrite {
    pub key: ItemKey,
    pub state: ItemState,
    pub index: IndexChange,
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
    pub fn between(before: Option<&ItemState>, after: &ItemState) -> Self {
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

/// The category an item is listed under, if its quantity is above zero.
fn listed_category(state: &ItemState) -> Option<&str> {
    (state.qty() > 0).then_some(state.meta.category.as_str())
}

impl CartStore {
    /// Opens (or creates) the store in `path`, recovering the journal after a crash.
    ///
    /// # Errors
    /// [`StoreError::Open`] when fjall cannot open the directory (missing permissions, another
    /// process holds it, unrecoverable data).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
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
        let categories = db
            .keyspace("categories", keyspace_options)
            .map_err(open_error)?;
        Ok(Self {
            db,
            items,
            categories,
        })
    }

    /// The state of one item, if this replica has seen an operation on it.
    ///
    /// # Errors
    /// [`StoreError::InvalidId`] for an identifier that cannot be a key part,
    /// [`StoreError::Read`] when fjall fails, and a decoding error naming the key when the
    /// stored value is corrupt.
    pub fn read_item(&self, key: &ItemKey) -> Result<Option<ItemState>, StoreError> {
        let raw = item_key(key)?;
        let value = self.items.get(&raw).map_err(|source| StoreError::Read {
            key: show_key(&raw),
            source,
        })?;
        value
            .map(|v| decode_item(&raw, &key.product, &v))
            .transpose()
    }

    /// Every item of `user` on this replica, sorted by product id.
    ///
    /// # Errors
    /// As [`CartStore::read_item`], for the first item that fails.
    pub fn read_user(&self, user: &str) -> Result<Vec<ItemState>, StoreError> {
        let prefix = key_prefix("userid", user)?;
        self.items
            .prefix(&prefix)
            .map(|guard| {
                let (raw, value) = guard.into_inner().map_err(|source| StoreError::Read {
                    key: show_key(&prefix),
                    source,
                })?;
                let product = product_of(&raw[prefix.len()..], &raw)?;
                decode_item(&raw, product, &value)
            })
            .collect()
    }

    /// Users holding a quantity above zero of any item in `category` on this replica,
    /// sorted and without duplicates.
    ///
    /// # Errors
    /// [`StoreError::InvalidId`], [`StoreError::Read`], or
    /// [`StoreError::MalformedKey`] for an index key that does not parse.
    pub fn users_in_category(&self, category: &str) -> Result<Vec<String>, StoreError> {
        let prefix = key_prefix("category", category)?;
        let mut users: Vec<String> = Vec::new();
        for guard in self.categories.prefix(&prefix) {
            let raw = guard.key().map_err(|source| StoreError::Read {
                key: show_key(&prefix),
                source,
            })?;
            let user = user_of_index_key(&raw[prefix.len()..], &raw)?;
            // Keys are sorted by user, so a user's products are adjacent.
            if users.last().map(String::as_str) != Some(user) {
                users.push(user.to_owned());
            }
        }
        Ok(users)
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
        })
    }

    /// Adds one item write and its index change to `batch`.
    fn stage(
        &self,
        batch: &mut fjall::OwnedWriteBatch,
        write: &ItemWrite,
    ) -> Result<(), StoreError> {
        let raw = item_key(&write.key)?;
        let value = encode_item(&raw, &write.state)?;
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

/// Options of both keyspaces; see [`MEMTABLE_BYTES`].
fn keyspace_options() -> KeyspaceCreateOptions {
    KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES)
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

/// The user part of an index key's `user 0x00 product` tail.
fn user_of_index_key<'a>(rest: &'a [u8], raw: &[u8]) -> Result<&'a str, StoreError> {
    let malformed = || StoreError::MalformedKey { key: show_key(raw) };
    let end = rest.iter().position(|&b| b == SEP).ok_or_else(malformed)?;
    let user = std::str::from_utf8(&rest[..end]).map_err(|_| malformed())?;
    if user.is_empty() {
        return Err(malformed());
    }
    Ok(user)
}

fn encode_item(raw: &[u8], state: &ItemState) -> Result<Vec<u8>, StoreError> {
    let mut value = vec![FORMAT_V1];
    postcard::to_io(state, &mut value).map_err(|source| StoreError::Encode {
        key: show_key(raw),
        source,
    })?;
    Ok(value)
}

/// Decodes an `items` value stored under `raw`, which names `product`.
fn decode_item(raw: &[u8], product: &str, value: &[u8]) -> Result<ItemState, StoreError> {
    let (&format, body) = value
        .split_first()
        .ok_or_else(|| StoreError::EmptyValue { key: show_key(raw) })?;
    if format != FORMAT_V1 {
        return Err(StoreError::UnknownFormat {
            key: show_key(raw),
            format,
        });
    }
    let state: ItemState = postcard::from_bytes(body).map_err(|source| StoreError::Corrupt {
        key: show_key(raw),
        source,
    })?;
    if state.product != product {
        return Err(StoreError::ProductMismatch {
            key: show_key(raw),
            stored: state.product,
        });
    }
    Ok(state)
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
        let zero = state(&[], "c1");
        let one = state(&[OpKind::Add], "c1");
        let moved = state(&[OpKind::Add], "c2");
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
        let s = state(&[OpKind::Add, OpKind::Add], "c1");
        let raw = b"u1\0p1";
        let value = encode_item(raw, &s).unwrap();
        assert_eq!(decode_item(raw, "p1", &value).unwrap(), s);
        let err = decode_item(raw, "p1", &[9, 1, 2]).unwrap_err();
        assert!(err.to_string().contains("u1/p1"), "{err}");
        assert!(matches!(
            decode_item(raw, "p1", &[]),
            Err(StoreError::EmptyValue { .. })
        ));
        assert!(matches!(
            decode_item(raw, "p1", &[FORMAT_V1, 0xff]),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            decode_item(raw, "other", &value),
            Err(StoreError::ProductMismatch { .. })
        ));
    }

    #[test]
    fn index_keys_parse_back_to_their_user() {
        assert_eq!(user_of_index_key(b"u1\0p1", b"").unwrap(), "u1");
        assert!(user_of_index_key(b"u1p1", b"").is_err());
        assert!(user_of_index_key(b"\0p1", b"").is_err());
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

//! [`HeadCache`]: the item heads of recently used carts, in memory.
//!
//! A cart read answers with the heads ([`ItemSummary`]) of a user's items. Served from
//! fjall that is a prefix scan, and every write leaves a new version of a head in the
//! memtable that the scan must step over: profiled under the cluster benchmark, those
//! scans were the largest cost of a data node. The cache holds the heads of the users read
//! or written lately, so a hot cart is read without touching fjall.
//!
//! Coherence: the cache has one lock, and both of its writers hold it.
//! - A read that misses scans fjall *while holding the lock* and inserts what it read.
//! - The group commit writer, after a batch is durable and before it answers, updates the
//!   users the cache holds (under the lock) with the batch's new heads.
//!
//! So a miss either scanned before the commit (the writer's update then fixes the entry) or
//! after it (the update writes the same heads again). Nothing is cached that a durable
//! write has superseded, and a write is visible to reads before it is acknowledged.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};

use cartdb_core::cart::{ItemKey, ItemSummary};

/// Users whose heads are kept; with the 256-byte id limit and a few dozen items per cart
/// this stays within a few tens of MiB.
const CAPACITY_USERS: usize = 4096;

/// user -> product -> head, for the users cached.
#[derive(Debug, Default)]
pub struct HeadCache {
    users: Mutex<HashMap<String, BTreeMap<String, ItemSummary>>>,
}

impl HeadCache {
    /// The heads of `user`'s items, sorted by product id: from the cache, or from `load`
    /// (whose answer is then cached). See the module docs for why `load` runs under the lock.
    ///
    /// # Errors
    /// Whatever `load` returns; nothing is cached then.
    pub fn user<E>(
        &self,
        user: &str,
        load: impl FnOnce() -> Result<Vec<ItemSummary>, E>,
    ) -> Result<Vec<ItemSummary>, E> {
        let mut users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(heads) = users.get(user) {
            return Ok(heads.values().cloned().collect());
        }
        let heads = load()?;
        if users.len() >= CAPACITY_USERS {
            // Any victim will do: a wrong guess costs one fjall scan later.
            if let Some(victim) = users.keys().next().cloned() {
                users.remove(&victim);
            }
        }
        let by_product = heads
            .iter()
            .map(|h| (h.product.clone(), h.clone()))
            .collect();
        users.insert(user.to_owned(), by_product);
        Ok(heads)
    }

    /// The cached head of one item: `Some(None)` when the user is cached and has no such
    /// item, `None` when the user is not cached.
    pub fn item(&self, key: &ItemKey) -> Option<Option<ItemSummary>> {
        let users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        users
            .get(&key.user)
            .map(|heads| heads.get(&key.product).cloned())
    }

    /// Forgets durably deleted items, for the users the cache holds.
    pub fn dropped<'a>(&self, keys: impl IntoIterator<Item = &'a ItemKey>) {
        let mut users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        for key in keys {
            if let Some(cached) = users.get_mut(&key.user) {
                cached.remove(&key.product);
            }
        }
    }

    /// Records durable new heads, for the users the cache holds.
    pub fn written<'a>(&self, heads: impl IntoIterator<Item = (&'a ItemKey, &'a ItemSummary)>) {
        let mut users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        for (key, head) in heads {
            if let Some(cached) = users.get_mut(&key.user) {
                cached.insert(key.product.clone(), head.clone());
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]
mod tests {
    use std::convert::Infallible;

    use cartdb_core::cart::{Base, ItemMeta, StateDigest};

    use super::*;

    fn head(product: &str, qty: u64) -> ItemSummary {
        ItemSummary {
            product: product.into(),
            meta: ItemMeta {
                price: 1,
                category: "c".into(),
            },
            base: Base::default(),
            qty,
            latest: None,
            ops: 0,
            digest: StateDigest::default(),
        }
    }

    fn key(user: &str, product: &str) -> ItemKey {
        ItemKey {
            user: user.into(),
            product: product.into(),
        }
    }

    #[test]
    fn a_miss_loads_once_and_writes_update_cached_users_only() {
        let cache = HeadCache::default();
        assert_eq!(cache.item(&key("u", "1")), None, "not cached yet");
        let loaded = cache
            .user("u", || Ok::<_, Infallible>(vec![head("1", 1)]))
            .unwrap();
        assert_eq!(loaded, [head("1", 1)]);
        cache.written([
            (&key("u", "2"), &head("2", 5)),
            (&key("v", "1"), &head("1", 9)),
        ]);
        let again = cache
            .user("u", || -> Result<Vec<ItemSummary>, &str> {
                Err("must not load")
            })
            .unwrap();
        assert_eq!(again, [head("1", 1), head("2", 5)]);
        assert_eq!(cache.item(&key("u", "3")), Some(None));
        assert_eq!(cache.item(&key("v", "1")), None, "v was never cached");
    }

    #[test]
    fn a_failed_load_caches_nothing() {
        let cache = HeadCache::default();
        assert!(
            cache
                .user("u", || Err::<Vec<ItemSummary>, _>("disk"))
                .is_err()
        );
        assert_eq!(cache.item(&key("u", "1")), None);
    }
}

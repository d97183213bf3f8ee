//! The in-memory copy of the item directory (`/users/<user>/<product>/<device>`): which
//! devices hold a replica of which cart item.
//!
//! The gateway asks it on every request, so reads only take a short read lock; the
//! coordinator's directory follower keeps it fresh from a persistent recursive watch and
//! replaces it wholesale after every (re)connect.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::cart::{DeviceId, ItemKey};

/// user -> product -> devices holding a replica.
pub(crate) type Items = BTreeMap<String, BTreeMap<String, BTreeSet<DeviceId>>>;

/// Which devices hold replicas of which items, as recorded in ZooKeeper.
#[derive(Debug, Default)]
pub struct Directory {
    items: RwLock<Items>,
    loaded: AtomicBool,
}

impl Directory {
    /// A directory holding exactly these `(item, device)` entries, for tests of code that
    /// reads a directory. It is not connected to ZooKeeper.
    pub fn from_entries(entries: impl IntoIterator<Item = (ItemKey, DeviceId)>) -> Directory {
        let directory = Directory::default();
        for (key, device) in entries {
            directory.insert(&key.user, &key.product, device);
        }
        directory.loaded.store(true, Ordering::Release);
        directory
    }

    /// Every item of `user` and the devices holding it.
    pub fn items_of(&self, user: &str) -> BTreeMap<String, BTreeSet<DeviceId>> {
        self.read().get(user).cloned().unwrap_or_default()
    }

    /// Every user with at least one item, sorted.
    pub fn users(&self) -> Vec<String> {
        self.read().keys().cloned().collect()
    }

    /// Whether `device` is recorded as holding a replica of `key`.
    pub fn has(&self, key: &ItemKey, device: DeviceId) -> bool {
        self.read()
            .get(&key.user)
            .and_then(|products| products.get(&key.product))
            .is_some_and(|devices| devices.contains(&device))
    }

    /// The devices of `devices` not yet recorded for `key`, in the given order, without
    /// duplicates.
    pub fn missing(&self, key: &ItemKey, devices: &[DeviceId]) -> Vec<DeviceId> {
        let items = self.read();
        let known = items
            .get(&key.user)
            .and_then(|products| products.get(&key.product));
        let mut missing = Vec::new();
        for &device in devices {
            if !known.is_some_and(|k| k.contains(&device)) && !missing.contains(&device) {
                missing.push(device);
            }
        }
        missing
    }

    /// Whether the directory has been read from ZooKeeper at least once.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    pub(crate) fn insert(&self, user: &str, product: &str, device: DeviceId) {
        self.write()
            .entry(user.to_owned())
            .or_default()
            .entry(product.to_owned())
            .or_default()
            .insert(device);
    }

    pub(crate) fn remove_replica(&self, user: &str, product: &str, device: DeviceId) {
        let mut items = self.write();
        if let Some(devices) = items.get_mut(user).and_then(|p| p.get_mut(product)) {
            devices.remove(&device);
        }
    }

    pub(crate) fn remove_product(&self, user: &str, product: &str) {
        if let Some(products) = self.write().get_mut(user) {
            products.remove(product);
        }
    }

    pub(crate) fn remove_user(&self, user: &str) {
        self.write().remove(user);
    }

    /// Replaces the whole directory with a fresh read (built outside the lock).
    pub(crate) fn replace(&self, items: Items) {
        *self.write() = items;
        self.loaded.store(true, Ordering::Release);
    }

    // A panic while holding the lock cannot leave the maps half-updated (every update is a
    // single map operation), so a poisoned lock is still safe to use.
    fn read(&self) -> RwLockReadGuard<'_, Items> {
        self.items.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Items> {
        self.items.write().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(user: &str, product: &str) -> ItemKey {
        ItemKey {
            user: user.into(),
            product: product.into(),
        }
    }

    #[test]
    fn lookups_reflect_inserts_and_removals() {
        let dir =
            Directory::from_entries([(key("u", "p"), 1), (key("u", "p"), 3), (key("u", "q"), 2)]);
        assert!(dir.is_loaded());
        assert!(dir.has(&key("u", "p"), 3));
        assert!(!dir.has(&key("u", "p"), 2));
        assert_eq!(dir.missing(&key("u", "p"), &[3, 4, 1, 4, 5]), vec![4, 5]);
        assert_eq!(dir.missing(&key("v", "p"), &[1]), vec![1]);
        let items = dir.items_of("u");
        assert_eq!(items["p"], BTreeSet::from([1, 3]));
        assert_eq!(items["q"], BTreeSet::from([2]));

        dir.remove_replica("u", "p", 1);
        assert!(!dir.has(&key("u", "p"), 1));
        dir.remove_product("u", "q");
        assert!(!dir.items_of("u").contains_key("q"));
        dir.remove_user("u");
        assert!(dir.items_of("u").is_empty());
    }

    #[test]
    fn replace_swaps_everything() {
        let dir = Directory::default();
        assert!(!dir.is_loaded());
        dir.insert("old", "p", 1);
        dir.replace(Items::from([(
            "new".to_owned(),
            BTreeMap::from([("p".to_owned(), BTreeSet::from([2]))]),
        )]));
        assert!(dir.is_loaded());
        assert!(dir.items_of("old").is_empty());
        assert!(dir.has(&key("new", "p"), 2));
    }
}

//! [`PolicyLibrary`]: the policy components this gateway has compiled, by sha256, and the
//! way to the others: the policy store in ZooKeeper.
//!
//! The map names the placement and merge policy every gateway must run, by sha256
//! (`cartdb_core::coord::ActivePolicies`). When it names one this gateway has not compiled,
//! the library fetches it from the store, checks its kind and hash, and compiles it on a
//! blocking thread: the cluster keeper does this when the map changes, and a deploy's
//! verification does it before the map changes, so neither happens on the request path. The
//! `--placement-policy` and `--merge-policy` files seed it at start (they are how a new
//! cluster is bootstrapped); after that, the map decides.
//!
//! A few components of each kind stay compiled ([`KEPT_PER_KIND`]): the active one, the one
//! a rollback would return to, and one being verified.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use cartdb_core::coord::CoordError;
use cartdb_core::coord::policy_store::PolicyKind;

use super::{MergePolicy, PlacementPolicy, PolicyEngine, PolicyError};
use crate::coordination::Coordination;

/// Compiled components kept per kind, most recently used first.
const KEPT_PER_KIND: usize = 4;

/// Why a component named by the map could not be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LibraryError {
    /// The store does not have it, or has something else under its name.
    #[error("{0}")]
    Store(#[from] CoordError),
    /// It is stored as a policy of the other kind.
    #[error("policy {sha256} is stored as a {stored} policy, not a {wanted} policy")]
    WrongKind {
        sha256: String,
        stored: &'static str,
        wanted: &'static str,
    },
    /// It does not load (not a component, imports something, wrong world, its `name`
    /// call fails).
    #[error("{0}")]
    Load(#[from] PolicyError),
    /// The blocking compile task panicked or was cancelled.
    #[error("compiling policy {sha256} failed: {detail}")]
    Task { sha256: String, detail: String },
}

/// The compiled policies, and the store to fetch others from.
pub struct PolicyLibrary {
    engine: PolicyEngine,
    store: Arc<dyn Coordination>,
    placement: Mutex<Vec<PlacementPolicy>>,
    merge: Mutex<Vec<Arc<MergePolicy>>>,
}

impl std::fmt::Debug for PolicyLibrary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyLibrary").finish_non_exhaustive()
    }
}

impl PolicyLibrary {
    /// A library compiling on `engine`, fetching from `store`, holding the policies loaded
    /// from the command line's files.
    pub fn new(
        engine: PolicyEngine,
        store: Arc<dyn Coordination>,
        placement: PlacementPolicy,
        merge: Option<Arc<MergePolicy>>,
    ) -> Self {
        Self {
            engine,
            store,
            placement: Mutex::new(vec![placement]),
            merge: Mutex::new(merge.into_iter().collect()),
        }
    }

    /// The engine every policy here runs on (its stats count their calls).
    pub fn engine(&self) -> &PolicyEngine {
        &self.engine
    }

    /// The placement policy stored as `sha256`, compiled.
    ///
    /// # Errors
    /// [`LibraryError`] when it is not stored, stored as a merge policy, or does not load.
    pub async fn placement(&self, sha256: &str) -> Result<PlacementPolicy, LibraryError> {
        if let Some(found) = find(&self.placement, |p| p.sha256() == sha256) {
            return Ok(found);
        }
        let (label, bytes) = self.fetch(sha256, PolicyKind::Placement).await?;
        let engine = self.engine.clone();
        let loaded = compile(sha256, move || {
            PlacementPolicy::from_bytes(&engine, label, &bytes)
        })
        .await?;
        keep(&self.placement, loaded.clone());
        Ok(loaded)
    }

    /// The merge policy stored as `sha256`, compiled; `None` (the built-in merge) for
    /// `None`.
    ///
    /// # Errors
    /// As [`PolicyLibrary::placement`].
    pub async fn merge(
        &self,
        sha256: Option<&str>,
    ) -> Result<Option<Arc<MergePolicy>>, LibraryError> {
        let Some(sha256) = sha256 else {
            return Ok(None);
        };
        if let Some(found) = find(&self.merge, |p| p.sha256() == sha256) {
            return Ok(Some(found));
        }
        let (label, bytes) = self.fetch(sha256, PolicyKind::Merge).await?;
        let engine = self.engine.clone();
        let loaded = compile(sha256, move || {
            MergePolicy::from_bytes(&engine, label, &bytes).map(Arc::new)
        })
        .await?;
        keep(&self.merge, loaded.clone());
        Ok(Some(loaded))
    }

    /// The stored bytes of `sha256`, checked to be of `kind`, and a label for errors.
    async fn fetch(
        &self,
        sha256: &str,
        kind: PolicyKind,
    ) -> Result<(PathBuf, Vec<u8>), LibraryError> {
        let stored = self.store.fetch_policy(sha256).await?;
        if stored.header.kind != kind {
            return Err(LibraryError::WrongKind {
                sha256: sha256.to_owned(),
                stored: stored.header.kind.name(),
                wanted: kind.name(),
            });
        }
        let label = PathBuf::from(format!("{} (sha256 {})", stored.header.name, short(sha256)));
        Ok((label, stored.bytes))
    }
}

/// The first 12 hex digits of a sha256, for messages.
pub fn short(sha256: &str) -> &str {
    sha256.get(..12).unwrap_or(sha256)
}

async fn compile<T: Send + 'static>(
    sha256: &str,
    load: impl FnOnce() -> Result<T, PolicyError> + Send + 'static,
) -> Result<T, LibraryError> {
    tokio::task::spawn_blocking(load)
        .await
        .map_err(|e| LibraryError::Task {
            sha256: sha256.to_owned(),
            detail: e.to_string(),
        })?
        .map_err(LibraryError::Load)
}

fn find<T: Clone>(list: &Mutex<Vec<T>>, matches: impl Fn(&T) -> bool) -> Option<T> {
    let mut list = list.lock().unwrap_or_else(PoisonError::into_inner);
    let i = list.iter().position(matches)?;
    let found = list.remove(i);
    list.insert(0, found.clone());
    Some(found)
}

fn keep<T>(list: &Mutex<Vec<T>>, item: T) {
    let mut list = list.lock().unwrap_or_else(PoisonError::into_inner);
    list.insert(0, item);
    list.truncate(KEPT_PER_KIND);
}

//! [`MergePolicy`]: a merge policy component (`cartdb:policy/merge-policy`) with one live
//! instance, called under the same defences as placement: no imports, a memory cap, an
//! epoch deadline per call, and every answer checked against the inputs before use.
//!
//! The guest sees only bases and operation logs; the product id and the product facts
//! (price, category) never cross the boundary, and the host attaches them to the result the
//! way the built-in merge does, so a policy cannot change what a product costs.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use cartdb_core::cart::{ItemMeta, ItemState};
use wasmtime::Store;

use super::bindings::merge_world::{self, MergePolicyPre};
use super::component::{self, HostState};
use super::merge_validate::validate_merge;
use super::{PolicyEngine, PolicyError};

/// The world a merge component must implement, as errors name it.
const WORLD: &str = "cartdb:policy/merge-policy@0.1.0";

/// A loaded merge policy component and its live instance.
///
/// The instance is kept between calls (instantiating costs more than a typical merge) and
/// replaced only after a trap or time-out, since the guest's state may then be corrupt.
/// Calls take `&self` and are serialised on a mutex: one instance, one call at a time.
pub struct MergePolicy {
    engine: PolicyEngine,
    path: PathBuf,
    sha256: String,
    name: String,
    pre: MergePolicyPre<HostState>,
    live: Mutex<Option<Live>>,
}

/// One instance and the store that owns it.
struct Live {
    store: Store<HostState>,
    instance: merge_world::MergePolicy,
}

impl std::fmt::Debug for MergePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MergePolicy")
            .field("path", &self.path)
            .field("name", &self.name)
            .field("sha256", &self.sha256)
            .finish_non_exhaustive()
    }
}

impl MergePolicy {
    /// Reads, hashes and compiles the component at `path`, refuses it if it imports
    /// anything or does not implement `cartdb:policy/merge-policy@0.1.0`, instantiates it
    /// and asks its name. Blocking (compilation takes tens of milliseconds): async callers
    /// should use `spawn_blocking`.
    ///
    /// # Errors
    /// [`PolicyError::Read`], [`PolicyError::TooLarge`], [`PolicyError::Compile`],
    /// [`PolicyError::Imports`], [`PolicyError::WrongWorld`], [`PolicyError::Instantiate`],
    /// or [`PolicyError::Trapped`] / [`PolicyError::TimedOut`] from the `name` call.
    pub fn load(engine: &PolicyEngine, path: &Path) -> Result<Self, PolicyError> {
        let bytes = component::read_capped(path, engine.limits().max_file_bytes)?;
        Self::from_bytes(engine, path, &bytes)
    }

    /// Like [`MergePolicy::load`], for a component already in memory; `name` stands for
    /// the file in errors (a path, or any label).
    ///
    /// # Errors
    /// As [`MergePolicy::load`], except [`PolicyError::Read`].
    pub fn from_bytes(
        engine: &PolicyEngine,
        name: impl AsRef<Path>,
        bytes: &[u8],
    ) -> Result<Self, PolicyError> {
        let path = name.as_ref();
        let compiled = component::compile(engine, path, bytes)?;
        let pre = compiled
            .linker
            .instantiate_pre(&compiled.component)
            .and_then(MergePolicyPre::new)
            .map_err(|e| PolicyError::WrongWorld {
                path: path.to_owned(),
                world: WORLD,
                detail: format!("{e:#}"),
            })?;
        let mut policy = Self {
            engine: engine.clone(),
            path: path.to_owned(),
            sha256: compiled.sha256,
            name: String::new(),
            pre,
            live: Mutex::new(None),
        };
        let mut live = policy.instantiate()?;
        let name = live.instance.call_name(&mut live.store).map_err(|e| {
            let limits = engine.limits();
            component::call_error(path, &e, limits.load_timeout, limits.load_fuel)
        })?;
        policy.name = component::truncate_name(name);
        policy.live = Mutex::new(Some(live));
        Ok(policy)
    }

    /// The name the policy reports (at most 128 bytes).
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Lower-case hex SHA-256 of the component's bytes.
    #[must_use]
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The file (or label) the policy was loaded from.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The engine it runs on (and counts its calls in).
    #[must_use]
    pub fn engine(&self) -> &PolicyEngine {
        &self.engine
    }

    /// Merges `states`, all of one product, with the policy and checks the answer.
    ///
    /// The result carries the product of the inputs and the product facts of the input that
    /// saw the newest operation (ties: the larger price, then category), exactly as the
    /// built-in merge chooses them. Blocking; the call is bounded by
    /// [`PolicyLimits::call_timeout`](super::PolicyLimits::call_timeout).
    ///
    /// # Errors
    /// [`PolicyError::NothingToMerge`], [`PolicyError::MixedProducts`];
    /// [`PolicyError::Trapped`] or [`PolicyError::TimedOut`] (the instance is replaced
    /// before the next call); [`PolicyError::Instantiate`] when replacing it fails;
    /// [`PolicyError::MergeRefused`] when the guest returns an error;
    /// [`PolicyError::InvalidMerge`] when the answer fails the checks.
    pub fn merge(&self, states: &[ItemState]) -> Result<ItemState, PolicyError> {
        let started = std::time::Instant::now();
        let result = self.merge_checked(states);
        super::record_call(&self.engine, "merge", self.sha256(), started, &result);
        result
    }

    fn merge_checked(&self, states: &[ItemState]) -> Result<ItemState, PolicyError> {
        let first = states.first().ok_or_else(|| PolicyError::NothingToMerge {
            path: self.path.clone(),
        })?;
        if let Some(other) = states.iter().find(|s| s.product != first.product) {
            return Err(PolicyError::MixedProducts {
                path: self.path.clone(),
                first: first.product.clone(),
                other: other.product.clone(),
            });
        }
        let guest_states: Vec<_> = states.iter().map(merge_world::to_guest).collect();
        let answer = self.call_merge(&guest_states)?;
        let merged = answer.map_err(|message| PolicyError::MergeRefused {
            path: self.path.clone(),
            message,
        })?;
        let (base, ops) = merge_world::from_guest(merged);
        validate_merge(states, &base, &ops).map_err(|problem| PolicyError::InvalidMerge {
            path: self.path.clone(),
            problem,
        })?;
        Ok(ItemState {
            product: first.product.clone(),
            meta: newest_meta(first, states).clone(),
            base,
            ops,
        })
    }

    /// One guest call on the live instance (made first if there is none); a trap or
    /// time-out discards the instance.
    fn call_merge(
        &self,
        states: &[merge_world::wit::ItemState],
    ) -> Result<Result<merge_world::wit::ItemState, String>, PolicyError> {
        // A panic while the lock was held can only have come from inside wasmtime; the
        // instance may be mid-call, so it is dropped rather than reused.
        let mut slot = self.live.lock().unwrap_or_else(|poisoned| {
            let mut slot = poisoned.into_inner();
            *slot = None;
            slot
        });
        let live = match &mut *slot {
            Some(live) => live,
            empty => empty.insert(self.instantiate()?),
        };
        let limits = self.engine.limits();
        let timeout = limits.call_timeout;
        live.store.set_epoch_deadline(PolicyEngine::ticks(timeout));
        component::set_fuel(&mut live.store, limits.call_fuel);
        let answer = live
            .instance
            .cartdb_policy_merge()
            .call_merge(&mut live.store, states);
        answer.map_err(|e| {
            *slot = None;
            component::call_error(&self.path, &e, timeout, limits.call_fuel)
        })
    }

    fn instantiate(&self) -> Result<Live, PolicyError> {
        let mut store = component::new_store(&self.engine);
        let instance = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| PolicyError::Instantiate {
                path: self.path.clone(),
                detail: format!("{e:#}"),
            })?;
        Ok(Live { store, instance })
    }
}

/// Product facts of the state that saw the newest operation; ties go to the larger facts,
/// so the choice does not depend on the order of `states` (as in `cartdb_core::merge`).
fn newest_meta<'a>(first: &'a ItemState, states: &'a [ItemState]) -> &'a ItemMeta {
    let key = |s: &'a ItemState| (s.latest_version(), s.meta.price, &s.meta.category);
    states
        .iter()
        .max_by(|a, b| key(a).cmp(&key(b)))
        .map_or(&first.meta, |s| &s.meta)
}

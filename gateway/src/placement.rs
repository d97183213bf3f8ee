//! Placement at one map epoch: a small pool of live policy instances that hold the parsed
//! CRUSH map.
//!
//! A [`Placer`] is a WebAssembly instance and not `Sync`, so the pool keeps several behind
//! their own mutexes and a caller takes whichever is free. A placement call takes about a
//! microsecond and never awaits, so a mutex is held only for that long. The pool is built by
//! the cluster keeper when the map epoch changes, never on a request.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, TryLockError};

use cartdb_core::cart::{DeviceId, ItemKey};
use cartdb_core::coord::ClusterMap;
use cartdb_core::placement_key::create_hash;

use crate::policy::{PlacementPolicy, Placer, PolicyError};

/// Most instances in a pool (documented on [`PlacerPool::build`]); more than the worker
/// threads only costs memory.
const MAX_POOL_SIZE: usize = 8;

/// What a placer is built from, kept to rebuild an instance that failed.
struct PlacerSource {
    policy: PlacementPolicy,
    map_json: String,
    rule: Option<String>,
    reweights: Vec<(u32, u32)>,
}

impl PlacerSource {
    fn build(&self) -> Result<Placer, PolicyError> {
        self.policy
            .placer(&self.map_json, self.rule.as_deref(), &self.reweights)
    }
}

/// Policy instances loaded with one map epoch.
pub struct PlacerPool {
    epoch: u64,
    slots: Box<[Mutex<Placer>]>,
    next: AtomicUsize,
    source: PlacerSource,
}

impl PlacerPool {
    /// Loads `map` (with its reweights) and `rule` into one instance per worker thread, up
    /// to 8. Blocking (it instantiates WebAssembly): call it off the async workers.
    ///
    /// # Errors
    /// The policy's [`PolicyError`] when it refuses the map or the rule.
    pub fn build(
        policy: PlacementPolicy,
        map: &ClusterMap,
        rule: Option<&str>,
    ) -> Result<Self, PolicyError> {
        let source = PlacerSource {
            policy,
            map_json: map.map_json.clone(),
            rule: rule.map(str::to_owned),
            reweights: map.reweight_vec(),
        };
        let size = std::thread::available_parallelism()
            .map_or(2, usize::from)
            .clamp(1, MAX_POOL_SIZE);
        let slots = (0..size)
            .map(|_| source.build().map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            epoch: map.epoch,
            slots: slots.into_boxed_slice(),
            next: AtomicUsize::new(0),
            source,
        })
    }

    /// The map epoch the instances were loaded with.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The replicas of `key`, primary first: at most `replicas` distinct devices that are in.
    ///
    /// # Errors
    /// The policy's [`PolicyError`] (a trap, a time-out, or an answer that failed
    /// validation). An instance that trapped or timed out is replaced by a fresh one.
    pub fn replicas_for(
        &self,
        key: &ItemKey,
        replicas: usize,
    ) -> Result<Vec<DeviceId>, PolicyError> {
        let x = create_hash(&key.user, &key.product);
        let replicas = u32::try_from(replicas).unwrap_or(u32::MAX);
        let mut placer = self.acquire();
        let placed = placer.place(x, replicas);
        if placer.is_poisoned() {
            // A trapped instance is never used again; keep it only if even a fresh one
            // cannot be made (the next call then fails the same way).
            match self.source.build() {
                Ok(fresh) => *placer = fresh,
                Err(e) => tracing::error!(error = %e, "cannot replace a failed placer"),
            }
        }
        placed
    }

    /// A free instance, or (all busy) the next one in turn once it is released.
    fn acquire(&self) -> MutexGuard<'_, Placer> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.slots.len();
        for i in 0..n {
            match self.slots[(start + i) % n].try_lock() {
                Ok(guard) => return guard,
                // The placer is replaced after any failed call, so a panic while it was held
                // leaves nothing half-done.
                Err(TryLockError::Poisoned(p)) => return p.into_inner(),
                Err(TryLockError::WouldBlock) => {}
            }
        }
        self.slots[start % n]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

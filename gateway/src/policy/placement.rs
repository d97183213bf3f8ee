//! [`PlacementPolicy`] (a compiled, checked placement component) and [`Placer`] (one live
//! instance holding a loaded map).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use wasmtime::Store;
use wasmtime::component::ResourceAny;

use super::bindings::{self, PlacementPolicyPre, Reweight};
use super::component::{self, HostState};
use super::validate::{DeviceView, validate_placement};
use super::{PolicyEngine, PolicyError};

/// Most replicas one `place` call may ask for (the reference guest's own cap).
pub const MAX_REPLICAS: u32 = 1024;
/// The world a placement component must implement, as errors name it.
const WORLD: &str = "cartdb:policy/placement-policy@0.1.0";

/// A loaded placement policy component: compiled once, cheap to share (`Clone` is an `Arc`).
#[derive(Clone)]
pub struct PlacementPolicy {
    inner: Arc<Loaded>,
}

struct Loaded {
    engine: PolicyEngine,
    path: PathBuf,
    sha256: String,
    name: String,
    pre: PlacementPolicyPre<HostState>,
}

impl std::fmt::Debug for PlacementPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlacementPolicy")
            .field("path", &self.inner.path)
            .field("name", &self.inner.name)
            .field("sha256", &self.inner.sha256)
            .finish_non_exhaustive()
    }
}

impl PlacementPolicy {
    /// Reads, hashes and compiles the component at `path`, refuses it if it imports
    /// anything or does not implement `cartdb:policy/placement-policy@0.1.0`, and asks it
    /// its name. Blocking (compilation takes tens of milliseconds): async callers should
    /// use `spawn_blocking`.
    ///
    /// # Errors
    /// [`PolicyError::Read`], [`PolicyError::TooLarge`], [`PolicyError::Compile`],
    /// [`PolicyError::Imports`], [`PolicyError::WrongWorld`], or an error of the `name`
    /// call ([`PolicyError::Trapped`], [`PolicyError::TimedOut`], [`PolicyError::Instantiate`]).
    pub fn load(engine: &PolicyEngine, path: &Path) -> Result<Self, PolicyError> {
        let bytes = component::read_capped(path, engine.limits().max_file_bytes)?;
        Self::from_bytes(engine, path, &bytes)
    }

    /// Like [`PlacementPolicy::load`], for a component already in memory (from the policy
    /// store); `name` stands for the file in errors (a path, or any label).
    ///
    /// # Errors
    /// As [`PlacementPolicy::load`], except [`PolicyError::Read`].
    pub fn from_bytes(
        engine: &PolicyEngine,
        name: impl AsRef<Path>,
        bytes: &[u8],
    ) -> Result<Self, PolicyError> {
        let path = name.as_ref();
        let component::Compiled {
            sha256,
            component,
            linker,
        } = component::compile(engine, path, bytes)?;
        let pre = linker
            .instantiate_pre(&component)
            .and_then(PlacementPolicyPre::new)
            .map_err(|e| PolicyError::WrongWorld {
                path: path.to_owned(),
                world: WORLD,
                detail: format!("{e:#}"),
            })?;
        let mut loaded = Loaded {
            engine: engine.clone(),
            path: path.to_owned(),
            sha256,
            name: String::new(),
            pre,
        };
        loaded.name = loaded.call_name()?;
        Ok(Self {
            inner: Arc::new(loaded),
        })
    }

    /// The name the policy reports (at most 128 bytes).
    #[must_use]
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Lower-case hex SHA-256 of the component file's bytes.
    #[must_use]
    pub fn sha256(&self) -> &str {
        &self.inner.sha256
    }

    /// The engine it runs on (and counts its calls in).
    #[must_use]
    pub fn engine(&self) -> &PolicyEngine {
        &self.inner.engine
    }

    /// The file the policy was loaded from.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// A new instance with `map_json` loaded for `rule` (`None`: the map's only rule) and
    /// `reweights` (`(device, 16.16 weight)`; unlisted devices are fully in). The instance
    /// stays alive for every later [`Placer::place`]. Blocking.
    ///
    /// # Errors
    /// [`PolicyError::InvalidMap`] (the host cannot read the map's devices),
    /// [`PolicyError::InvalidReweight`], [`PolicyError::Instantiate`], [`PolicyError::Guest`]
    /// (the guest refused the map or rule), [`PolicyError::Trapped`], [`PolicyError::TimedOut`].
    pub fn placer(
        &self,
        map_json: &str,
        rule: Option<&str>,
        reweights: &[(u32, u32)],
    ) -> Result<Placer, PolicyError> {
        let loaded = &self.inner;
        let view =
            DeviceView::new(map_json, reweights).map_err(|problem| PolicyError::InvalidMap {
                path: loaded.path.clone(),
                problem,
            })?;
        let guest_reweights = reweights
            .iter()
            .map(|&r| Reweight::try_from(r))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| PolicyError::InvalidReweight {
                path: loaded.path.clone(),
                device: e.0,
            })?;
        let (mut store, instance) = loaded.instantiate()?;
        let result = instance
            .cartdb_policy_placement()
            .call_load(&mut store, map_json, rule, &guest_reweights)
            .map_err(|e| loaded.load_error(e))?;
        let resource = result.map_err(|message| PolicyError::Guest {
            path: loaded.path.clone(),
            message,
        })?;
        Ok(Placer {
            policy: self.clone(),
            store,
            instance,
            resource,
            view,
            poisoned: false,
        })
    }
}

impl Loaded {
    /// A fresh store (memory cap, load deadline) and instance.
    fn instantiate(&self) -> Result<(Store<HostState>, bindings::PlacementPolicy), PolicyError> {
        let mut store = component::new_store(&self.engine);
        let instance = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| PolicyError::Instantiate {
                path: self.path.clone(),
                detail: format!("{e:#}"),
            })?;
        Ok((store, instance))
    }

    fn call_name(&self) -> Result<String, PolicyError> {
        let (mut store, instance) = self.instantiate()?;
        let name = instance
            .call_name(&mut store)
            .map_err(|e| self.load_error(e))?;
        Ok(component::truncate_name(name))
    }

    /// A failed instantiation, `load` or `name`: under the load limits.
    fn load_error(&self, error: wasmtime::Error) -> PolicyError {
        let limits = self.engine.limits();
        component::call_error(&self.path, &error, limits.load_timeout, limits.load_fuel)
    }
}

/// One live policy instance with a map loaded. Not `Sync`: keep one per thread or behind a
/// mutex. After a trap or timeout it is poisoned and every call fails with
/// [`PolicyError::Poisoned`]: discard it and create another with [`PlacementPolicy::placer`]
/// (the guest's state may be corrupt, so it is never reused).
pub struct Placer {
    policy: PlacementPolicy,
    store: Store<HostState>,
    instance: bindings::PlacementPolicy,
    resource: ResourceAny,
    view: DeviceView,
    poisoned: bool,
}

impl std::fmt::Debug for Placer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Placer")
            .field("policy", &self.policy)
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

impl Placer {
    /// The devices for placement key `x`, primary first: distinct devices of the map that
    /// are in, at most `replicas`, at least one when any device is in.
    ///
    /// # Errors
    /// [`PolicyError::TooManyReplicas`] above [`MAX_REPLICAS`]; [`PolicyError::Poisoned`];
    /// [`PolicyError::Trapped`] or [`PolicyError::TimedOut`] (which poison the placer);
    /// [`PolicyError::InvalidResult`] when the answer fails validation.
    pub fn place(&mut self, x: u32, replicas: u32) -> Result<Vec<u32>, PolicyError> {
        let started = std::time::Instant::now();
        let result = self.place_checked(x, replicas);
        let loaded = &self.policy.inner;
        super::record_call(
            &loaded.engine,
            "placement",
            &loaded.sha256,
            started,
            &result,
        );
        result
    }

    fn place_checked(&mut self, x: u32, replicas: u32) -> Result<Vec<u32>, PolicyError> {
        let loaded = &self.policy.inner;
        if self.poisoned {
            return Err(PolicyError::Poisoned {
                path: loaded.path.clone(),
            });
        }
        if replicas > MAX_REPLICAS {
            let path = loaded.path.clone();
            return Err(PolicyError::TooManyReplicas {
                path,
                requested: replicas,
                max: MAX_REPLICAS,
            });
        }
        let limits = loaded.engine.limits();
        let timeout = limits.call_timeout;
        self.store.set_epoch_deadline(PolicyEngine::ticks(timeout));
        component::set_fuel(&mut self.store, limits.call_fuel);
        let placed = self
            .instance
            .cartdb_policy_placement()
            .placer()
            .call_place(&mut self.store, self.resource, x, replicas)
            .map_err(|e| {
                self.poisoned = true;
                component::call_error(&loaded.path, &e, timeout, limits.call_fuel)
            })?;
        let placed = validate_placement(&self.view, &placed, replicas).map_err(|problem| {
            PolicyError::InvalidResult {
                path: loaded.path.clone(),
                problem,
            }
        })?;
        if placed.len() < replicas as usize {
            // Legitimate (too few devices in, or in distinct failure domains), never silent:
            // counted here, and the PG shows as undersized.
            metrics::counter!("cartdb_policy_short_placements_total", "sha256" => loaded.sha256.clone())
                .increment(1);
        }
        Ok(placed)
    }

    /// Whether an earlier trap or timeout made this placer unusable.
    #[must_use]
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// The policy this placer is an instance of.
    #[must_use]
    pub fn policy(&self) -> &PlacementPolicy {
        &self.policy
    }
}

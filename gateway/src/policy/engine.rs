//! [`PolicyEngine`]: the wasmtime engine all policies share, with its limits and the epoch
//! ticker that bounds every guest call in time.

use std::thread;
use std::time::Duration;

use wasmtime::{Config, Engine, EngineWeak, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::PolicyError;

/// How often the ticker advances the engine's epoch: the granularity of every timeout.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Resource limits for policy components. `Default` gives the values documented per field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyLimits {
    /// Largest component file accepted by `load` (16 MiB).
    pub max_file_bytes: u64,
    /// Linear memory cap of each instance (64 MiB). Also the pooling slot size.
    pub max_memory_bytes: usize,
    /// Deadline of one `place` or `merge` call (100 ms).
    pub call_timeout: Duration,
    /// Fuel (about one unit per WebAssembly instruction) of one call (100 million): a
    /// deterministic bound on a guest's work, whatever the machine's speed or load. CRUSH's
    /// `place` spends a few tens of thousands; the reference merge of a 64-operation log
    /// about a million.
    pub call_fuel: u64,
    /// Deadline of instantiation plus `load` (parsing the map) and of `name` (5 s).
    pub load_timeout: Duration,
    /// Fuel of instantiation plus `load` and of `name` (5 billion).
    pub load_fuel: u64,
    /// Most instances alive at once across all policies of the engine (256).
    pub max_instances: u32,
}

impl Default for PolicyLimits {
    fn default() -> Self {
        Self {
            max_file_bytes: 16 << 20,
            max_memory_bytes: 64 << 20,
            call_timeout: Duration::from_millis(100),
            call_fuel: 100_000_000,
            load_timeout: Duration::from_secs(5),
            load_fuel: 5_000_000_000,
            max_instances: 256,
        }
    }
}

/// A wasmtime engine configured for untrusted policies: fuel metering, epoch interruption
/// driven by a ticker thread every 10 ms, and a pooling allocator whose memory slots are only as large
/// as [`PolicyLimits::max_memory_bytes`] (rather than the default 4 GiB reservation each).
/// Cheap to clone; the ticker stops when the last clone and the last component are gone.
#[derive(Clone)]
pub struct PolicyEngine {
    engine: Engine,
    limits: PolicyLimits,
    stats: std::sync::Arc<super::PolicyStats>,
}

impl std::fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl PolicyEngine {
    /// An engine with the default [`PolicyLimits`].
    ///
    /// # Errors
    /// [`PolicyError::Engine`] when wasmtime cannot be configured (for example when the
    /// process may not reserve the pool's address space).
    pub fn new() -> Result<Self, PolicyError> {
        Self::with_limits(PolicyLimits::default())
    }

    /// An engine with explicit limits.
    ///
    /// # Errors
    /// [`PolicyError::Engine`] when wasmtime cannot be configured.
    pub fn with_limits(limits: PolicyLimits) -> Result<Self, PolicyError> {
        let engine = Engine::new(&config(&limits)).map_err(|e| PolicyError::Engine {
            detail: format!("{e:#}"),
        })?;
        spawn_ticker(engine.weak())?;
        Ok(Self {
            engine,
            limits,
            stats: std::sync::Arc::default(),
        })
    }

    /// The call counts of every policy run on this engine.
    #[must_use]
    pub fn stats(&self) -> &super::PolicyStats {
        &self.stats
    }

    /// The limits every policy of this engine runs under.
    #[must_use]
    pub fn limits(&self) -> &PolicyLimits {
        &self.limits
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Epoch ticks for a deadline of `timeout` from now (one extra tick because the current
    /// one may end at once).
    pub(crate) fn ticks(timeout: Duration) -> u64 {
        let ticks = timeout.as_nanos().div_ceil(EPOCH_TICK.as_nanos());
        u64::try_from(ticks)
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    }
}

fn config(limits: &PolicyLimits) -> Config {
    let instances = limits.max_instances;
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(instances)
        // wit-component adds small shim instances next to the guest's own module.
        .total_core_instances(instances.saturating_mul(4))
        .total_memories(instances)
        .total_tables(instances.saturating_mul(2))
        .max_memory_size(limits.max_memory_bytes);
    let mut config = Config::new();
    config
        .epoch_interruption(true)
        // Fuel bounds a guest's work deterministically; the epoch deadline bounds its time
        // (a guest can be slow without spending fuel, in a host-side wait it cannot make,
        // or under a machine that is simply slow).
        .consume_fuel(true)
        // Slots sized to the memory cap: bounded address space, at the price of explicit
        // bounds checks in guest code.
        .memory_reservation(limits.max_memory_bytes as u64)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config
}

/// Advances the epoch every [`EPOCH_TICK`] until the engine is dropped.
fn spawn_ticker(engine: EngineWeak) -> Result<(), PolicyError> {
    thread::Builder::new()
        .name("policy-epoch".to_owned())
        .spawn(move || {
            while let Some(engine) = engine.upgrade() {
                engine.increment_epoch();
                drop(engine);
                thread::sleep(EPOCH_TICK);
            }
        })
        .map(drop)
        .map_err(|e| PolicyError::Engine {
            detail: format!("cannot start the epoch ticker: {e}"),
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn ticks_round_up_and_add_one() {
        assert_eq!(PolicyEngine::ticks(Duration::from_millis(100)), 11);
        assert_eq!(PolicyEngine::ticks(Duration::from_millis(1)), 2);
        assert_eq!(PolicyEngine::ticks(Duration::ZERO), 1);
        assert_eq!(PolicyEngine::ticks(Duration::MAX), u64::MAX);
    }
}

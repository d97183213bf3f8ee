//! The WebAssembly policy host: loads placement and merge policy components and calls
//! them safely.
//!
//! ```text
//! PolicyEngine (one per process: wasmtime Engine, pooling allocator, epoch ticker)
//!   ├─ PlacementPolicy::load(path)   read (size cap) + sha256 + compile once + refuse
//!   │    │                           imports + type-check the world (PlacementPolicyPre)
//!   │    └─ placer(map, rule, reweights)   Store (memory cap) + instance + guest `load`
//!   │         └─ Placer::place(x, n)       epoch deadline + guest call + validation
//!   └─ MergePolicy::load(path)       the same checks, then one live instance (re-made
//!        │                           after a trap or time-out)
//!        └─ merge(states)            epoch deadline + guest call + validation against
//!                                    the inputs + product facts attached by the host
//! ```
//! Policies are untrusted: a component may import nothing (no WASI), every call runs under
//! a memory cap and a deadline, a trap or timeout poisons its [`Placer`] (or discards the
//! merge instance), and every answer is validated before the gateway sees it. The laws a
//! merge policy must keep are checked by [`merge_laws`], on any merge function.
//!
//! # Layout
//! - `bindings`: the only `bindgen!`s, plus conversions to domain types.
//! - `component`: what loading any component takes (read, hash, compile, refuse imports,
//!   stores under the limits).
//! - `engine`: [`PolicyEngine`] and [`PolicyLimits`].
//! - `placement`: [`PlacementPolicy`] and [`Placer`].
//! - `merge`: [`MergePolicy`].
//! - [`merge_laws`]: the merge-law conformance suite ([`merge_laws::check_laws`]).
//! - `validate`: pure checks of placement answers ([`InvalidPlacement`], [`MapProblem`]).
//! - `merge_validate`: pure checks of merge answers ([`InvalidMerge`]).
//! - `error`: [`PolicyError`].
//! - `library`: [`PolicyLibrary`], the compiled policies by sha256, fetched from the policy
//!   store in ZooKeeper when the map names one not compiled yet.
//! - `stats`: [`PolicyStats`], per-policy call counts for the cluster status.

mod bindings;
mod component;
mod engine;
mod error;
mod library;
mod merge;
pub mod merge_laws;
mod merge_validate;
mod placement;
mod stats;
mod validate;

pub use engine::{PolicyEngine, PolicyLimits};
pub use error::PolicyError;
pub use library::{LibraryError, PolicyLibrary, short};
pub use merge::MergePolicy;
pub use merge_validate::InvalidMerge;
pub use placement::{MAX_REPLICAS, PlacementPolicy, Placer};
pub use stats::PolicyStats;
pub use validate::{InvalidPlacement, MapProblem};

/// Counts one policy call (`cartdb_policy_calls_total`, by kind, sha256 and outcome) and
/// times it (`cartdb_policy_call_seconds`). The sha256 names the component, so a swapped
/// policy starts its own series.
fn record_call<T>(
    engine: &PolicyEngine,
    kind: &'static str,
    sha256: &str,
    started: std::time::Instant,
    result: &Result<T, PolicyError>,
) {
    let outcome = result.as_ref().map_or_else(PolicyError::outcome, |_| "ok");
    engine
        .stats()
        .record(kind, sha256, outcome, started.elapsed());
    let sha256 = sha256.to_owned();
    metrics::histogram!("cartdb_policy_call_seconds", "kind" => kind, "sha256" => sha256.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!(
        "cartdb_policy_calls_total",
        "kind" => kind,
        "sha256" => sha256,
        "outcome" => outcome,
    )
    .increment(1);
}

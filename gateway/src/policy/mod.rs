//! The WebAssembly policy host: loads placement policy components and calls them safely.
//!
//! ```text
//! PolicyEngine (one per process: wasmtime Engine, pooling allocator, epoch ticker)
//!   └─ PlacementPolicy::load(path)   read (size cap) + sha256 + compile once + refuse
//!        │                           imports + type-check the world (PlacementPolicyPre)
//!        └─ placer(map, rule, reweights)   Store (memory cap) + instance + guest `load`
//!             └─ Placer::place(x, n)       epoch deadline + guest call + validation
//! ```
//! Policies are untrusted: a component may import nothing (no WASI), every call runs under
//! a memory cap and a deadline, a trap or timeout poisons its [`Placer`], and every answer
//! is validated against the map before the gateway sees it.
//!
//! # Layout
//! - `bindings`: the only `bindgen!`, plus conversions to domain types.
//! - `engine`: [`PolicyEngine`] and [`PolicyLimits`].
//! - `placement`: [`PlacementPolicy`] and [`Placer`].
//! - `validate`: pure checks of guest answers ([`InvalidPlacement`], [`MapProblem`]).
//! - `error`: [`PolicyError`].

mod bindings;
mod engine;
mod error;
mod placement;
mod validate;

pub use engine::{PolicyEngine, PolicyLimits};
pub use error::PolicyError;
pub use placement::{MAX_REPLICAS, PlacementPolicy, Placer};
pub use validate::{InvalidPlacement, MapProblem};

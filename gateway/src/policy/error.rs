//! [`PolicyError`]: everything that can go wrong loading or calling a policy component.

use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

use super::validate::{InvalidPlacement, MapProblem};

/// Why a policy could not be loaded or called. Variants name the component file.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The wasmtime engine could not be configured (e.g. no address space for the pool).
    #[error("cannot create the WebAssembly engine: {detail}")]
    Engine { detail: String },
    /// The component file could not be read.
    #[error("cannot read policy {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The component file is larger than the limit.
    #[error("policy {} is larger than {max} bytes", path.display())]
    TooLarge { path: PathBuf, max: u64 },
    /// The bytes are not a valid WebAssembly component (garbage, a core module, ...).
    #[error("policy {} is not a valid WebAssembly component: {detail}", path.display())]
    Compile { path: PathBuf, detail: String },
    /// The component imports something: policies must be pure (no WASI, no host calls).
    #[error("policy {} imports {}; a policy must import nothing", path.display(), imports.join(", "))]
    Imports { path: PathBuf, imports: Vec<String> },
    /// The component does not export the `cartdb:policy/placement-policy` world.
    #[error("policy {} does not implement cartdb:policy/placement-policy@0.1.0: {detail}", path.display())]
    WrongWorld { path: PathBuf, detail: String },
    /// A new instance could not be created (e.g. the instance pool is exhausted).
    #[error("cannot instantiate policy {}: {detail}", path.display())]
    Instantiate { path: PathBuf, detail: String },
    /// The guest refused the input (its `load` returned an error).
    #[error("policy {} refused the map: {message}", path.display())]
    Guest { path: PathBuf, message: String },
    /// The host could not read the device ids of the map it was asked to load.
    #[error("invalid map for policy {}: {problem}", path.display())]
    InvalidMap { path: PathBuf, problem: MapProblem },
    /// A reweight names a device id that cannot exist (above `i32::MAX`).
    #[error("reweight of device {device} for policy {}: device ids are at most 2147483647", path.display())]
    InvalidReweight { path: PathBuf, device: u32 },
    /// More replicas were asked for than the host allows.
    #[error("{requested} replicas asked of policy {}; at most {max}", path.display())]
    TooManyReplicas {
        path: PathBuf,
        requested: u32,
        max: u32,
    },
    /// The guest trapped; its instance is discarded.
    #[error("policy {} trapped: {detail}", path.display())]
    Trapped { path: PathBuf, detail: String },
    /// The guest ran past its deadline; its instance is discarded.
    #[error("policy {} did not answer within {timeout:?}", path.display())]
    TimedOut { path: PathBuf, timeout: Duration },
    /// The guest answered, but the answer is not a valid placement.
    #[error("policy {} returned an invalid placement: {problem}", path.display())]
    InvalidResult {
        path: PathBuf,
        problem: InvalidPlacement,
    },
    /// The placer trapped or timed out before; create a new one.
    #[error("placer of policy {} is unusable after an earlier trap or timeout", path.display())]
    Poisoned { path: PathBuf },
}

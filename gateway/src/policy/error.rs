//! [`PolicyError`]: everything that can go wrong loading or calling a policy component
//! (placement or merge).

use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

use super::merge_validate::InvalidMerge;
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
    /// The component does not export the world it was loaded for (`world`).
    #[error("policy {} does not implement {world}: {detail}", path.display())]
    WrongWorld {
        path: PathBuf,
        world: &'static str,
        detail: String,
    },
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
    /// The guest used up the fuel of one call; its instance is discarded.
    #[error("policy {} ran out of fuel ({fuel} units) before answering", path.display())]
    OutOfFuel { path: PathBuf, fuel: u64 },
    /// The guest answered, but the answer is not a valid placement.
    #[error("policy {} returned an invalid placement: {problem}", path.display())]
    InvalidResult {
        path: PathBuf,
        problem: InvalidPlacement,
    },
    /// A merge was asked for no states at all.
    #[error("nothing to merge: merge policy {} was given no states", path.display())]
    NothingToMerge { path: PathBuf },
    /// A merge was asked for states of different products: a merge is per item.
    #[error("merge policy {} was given states of products {first:?} and {other:?}; a merge is per item", path.display())]
    MixedProducts {
        path: PathBuf,
        first: String,
        other: String,
    },
    /// The merge guest returned an error instead of a state.
    #[error("policy {} refused to merge: {message}", path.display())]
    MergeRefused { path: PathBuf, message: String },
    /// The merge guest answered, but the answer is not a merge of its inputs.
    #[error("policy {} returned an invalid merge: {problem}", path.display())]
    InvalidMerge {
        path: PathBuf,
        problem: InvalidMerge,
    },
    /// The placer trapped or timed out before; create a new one.
    #[error("placer of policy {} is unusable after an earlier trap or timeout", path.display())]
    Poisoned { path: PathBuf },
}

impl PolicyError {
    /// The `outcome` label of a failed call in the policy metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Trapped { .. } => "trap",
            Self::TimedOut { .. } => "timeout",
            Self::OutOfFuel { .. } => "fuel",
            Self::InvalidResult { .. } | Self::InvalidMerge { .. } => "invalid",
            Self::MergeRefused { .. } | Self::Guest { .. } => "refused",
            Self::Poisoned { .. } => "poisoned",
            _ => "error",
        }
    }
}

#[cfg(test)]
mod tests {
    /// Every policy call returns this error, so a fat variant costs every caller a large
    /// move; clippy's `result_large_err` draws the line at 128 bytes.
    #[test]
    fn the_error_stays_small() {
        let size = std::mem::size_of::<super::PolicyError>();
        assert!(size <= 128, "PolicyError is {size} bytes");
    }
}

//! The reference CRUSH placement policy of cartdb.
//!
//! A pure-Rust implementation of Ceph's CRUSH (straw2 buckets, rjenkins1 hash, firstn and
//! indep rules, reweights, the "optimal" tunables) that gives the same devices in the same
//! order as python-crush and `crushtool`. Built for `wasm32-unknown-unknown` it is the
//! `cartdb:policy/placement-policy` component the gateway loads; on the host it is a plain
//! library so the algorithm is unit-tested natively.
//!
//! # Layout
//! The rjenkins1 hash comes from `cartdb-model`, which the hosts share.
//! - [`ln`]: `crush_ln`, the fixed-point log2 behind straw2.
//! - [`map`]: the map model and its python-crush JSON parser.
//! - `rule`: rule steps and tunables.
//! - [`mapper`]: straw2, firstn, indep and the rule interpreter ([`Placer`]).
//! - [`error`]: the [`MapError`] type.
//! - `guest` (wasm32 only): the wit-bindgen glue exporting the component interface.

pub mod error;
pub mod ln;
pub mod map;
pub mod mapper;
mod rule;

#[cfg(target_arch = "wasm32")]
mod guest;

pub use error::MapError;
pub use map::CrushMap;
pub use mapper::{ITEM_NONE, MAX_REPLICAS, Placer};

/// The policy name the component reports.
pub const POLICY_NAME: &str = "crush-straw2";

/// Parses `map_json`, selects `rule` and applies `reweights`: the component's `load`.
///
/// # Errors
/// Any [`MapError`]: malformed map, unknown or ambiguous rule, bad reweight.
pub fn load(
    map_json: &str,
    rule: Option<&str>,
    reweights: &[(i32, u32)],
) -> Result<Placer, MapError> {
    Placer::new(CrushMap::from_json(map_json)?, rule, reweights)
}

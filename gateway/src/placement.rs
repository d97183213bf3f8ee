//! Placement at one map epoch: the up set of every placement group, computed once per epoch
//! by the placement policy, then looked up per request.
//!
//! ```text
//! map epoch e --(keeper, blocking thread)--> one policy instance loaded with the map and
//!               its reweights --> place(pps(pg), size) for pg in 0..pg_num --> PgTable
//! request    --> x = placement_key(user, product) --> pg = pool.pg_of(x) --> table.up(pg)
//! ```
//!
//! Ceph's clients map a PG, not an object, with CRUSH; so does cartdb. A request costs a
//! sha1 and a table lookup, never a WebAssembly call, and every gateway that loaded the same
//! epoch answers from the same table. The table is `pg_num` entries whatever the number of
//! carts. It is built by the cluster keeper when the map epoch changes, never on a request.

use std::sync::Arc;

use cartdb_core::cart::{DeviceId, ItemKey};
use cartdb_core::coord::ClusterMap;
use cartdb_core::pg_table::PgTable;

use crate::policy::{PlacementPolicy, PolicyError};

/// The up sets of one map epoch.
#[derive(Debug)]
pub struct EpochPlacement {
    epoch: u64,
    table: PgTable,
    /// The policy that placed it: the one the map names at this epoch.
    policy: PlacementPolicy,
}

impl EpochPlacement {
    /// Loads `map` (with `reweights`, by default its own) and `rule` into one policy
    /// instance and places every PG of the map's pool with the pool's size. Blocking (it
    /// instantiates WebAssembly and makes `pg_num` calls): call it off the async workers.
    ///
    /// # Errors
    /// The policy's [`PolicyError`] when it refuses the map or the rule, or when a
    /// placement call fails.
    pub fn build(
        policy: &PlacementPolicy,
        map: &ClusterMap,
        rule: Option<&str>,
        reweights: Option<&[(DeviceId, u32)]>,
    ) -> Result<Self, PolicyError> {
        let own = map.reweight_vec();
        let reweights = reweights.unwrap_or(&own);
        let mut placer = policy.placer(&map.map_json, rule, reweights)?;
        let up = (0..map.pool.pg_num())
            .map(|pg| placer.place(map.pool.pps(pg), map.settings.size))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            epoch: map.epoch,
            table: PgTable::new(up),
            policy: policy.clone(),
        })
    }

    /// The placement policy that computed the table.
    pub fn policy(&self) -> &PlacementPolicy {
        &self.policy
    }

    /// The map epoch the table was computed for.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Every PG's up set.
    pub fn table(&self) -> &PgTable {
        &self.table
    }
}

/// Builds an [`EpochPlacement`] on a blocking thread.
///
/// # Errors
/// [`BuildError::Policy`] when the policy fails, [`BuildError::Task`] when the blocking
/// task panicked or was cancelled.
pub async fn build_placement(
    policy: PlacementPolicy,
    map: Arc<ClusterMap>,
    rule: Option<String>,
    reweights: Option<Vec<(DeviceId, u32)>>,
) -> Result<EpochPlacement, BuildError> {
    tokio::task::spawn_blocking(move || {
        EpochPlacement::build(&policy, &map, rule.as_deref(), reweights.as_deref())
    })
    .await
    .map_err(|e| BuildError::Task(e.to_string()))?
    .map_err(BuildError::Policy)
}

/// Why a placement table could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    #[error("the placement policy refused the map: {0}")]
    Policy(#[source] PolicyError),
    #[error("building the placement table failed: {0}")]
    Task(String),
}

/// The placement group of a stored item (a cart item or a cart-index entry).
pub fn pg_of(map: &ClusterMap, key: &ItemKey) -> u32 {
    map.pg_of(key)
}

//! The gateway's part of the policy lifecycle (`cartdb policy deploy|rollback|history`):
//! storing a component, verifying one before the map names it, and saying what runs here.
//!
//! ```text
//! API server: StorePolicy ---------> one gateway: the component into the policy store
//!             VerifyPolicy --------> every gateway: fetch, load under the sandbox's limits,
//!                                    check against the current map; a verdict each
//!             ChangeMap(Policy) ---> one gateway, only if every verdict accepts: the map
//!                                    names the policy (a new epoch, PGs move as with any
//!                                    map change); every gateway's keeper switches to it
//! ```
//!
//! Verification changes nothing, so a refused policy leaves the previous one in force
//! everywhere (fail-static). A placement policy must place every PG of the pool under the
//! current map with valid answers (no unknown or repeated device), the same answers from a
//! second, fresh instance (deterministic), and no more short answers than the running
//! policy gives. A merge policy must keep the merge laws ([`merge_laws::check_laws`], the
//! suite behind `cartdb policy verify-merge`).

use std::collections::BTreeSet;

use cartdb_core::cart::{ItemMeta, ItemState, OpId, OpKind, Operation};
use cartdb_core::config::Replication;
use cartdb_core::coord::policy_store::PolicyKind;
use cartdb_core::version::Version;
use cartdb_core::wire::{GatewayFailure, PolicyInfo, PolicyStatus, PolicyVerdict, RunningPolicies};

use crate::cluster_view::ClusterView;
use crate::coordination::Coordination;
use crate::map_change::compare;
use crate::merger::Merger;
use crate::placement::build_placement;
use crate::policy::{PolicyLibrary, merge_laws};

/// Random cases per merge law in a deploy's verification (`verify-merge` defaults to more;
/// a deploy's check runs on every gateway while the operator waits).
const MERGE_LAW_CASES: u32 = 64;
/// The merge-law cases' seed: every gateway checks the same cases.
const MERGE_LAW_SEED: u64 = 0x00ca_27db;

/// What the policy lifecycle needs from its gateway.
pub struct PolicyAdmin<'a> {
    pub gateway: u32,
    pub view: &'a ClusterView,
    pub library: &'a PolicyLibrary,
    pub merger: &'a Merger,
    pub coordination: &'a dyn Coordination,
    pub rule: Option<String>,
    pub replication: Replication,
}

impl PolicyAdmin<'_> {
    /// Stores `bytes` in the policy store; the component's sha256. First removes every
    /// stored component the map neither names nor keeps in its history (an earlier upload
    /// that was refused, say), so the store holds at most one unnamed component and its size
    /// is bounded by the history's.
    ///
    /// # Errors
    /// [`GatewayFailure::InvalidInput`] for an empty or oversized component,
    /// [`GatewayFailure::CoordinationUnavailable`] when ZooKeeper fails.
    pub async fn store(
        &self,
        kind: PolicyKind,
        file_name: &str,
        bytes: &[u8],
        by: &str,
    ) -> Result<String, GatewayFailure> {
        let map = self.view.current().map.clone();
        let keep: Vec<String> = std::iter::once(&map.policies.placement)
            .chain(map.policies.merge.as_ref())
            .chain(map.policy_history.iter().filter_map(|e| e.policy.as_ref()))
            .map(|p| p.sha256.clone())
            .collect();
        match self.coordination.prune_policies(&keep).await {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(pruned, "policy components no map names removed"),
            Err(e) => tracing::warn!(error = %e, "cannot prune the policy store"),
        }
        self.coordination
            .store_policy(kind, file_name, bytes, by)
            .await
            .map_err(|e| match e {
                cartdb_core::coord::CoordError::InvalidPolicy { problem, .. } => {
                    GatewayFailure::InvalidInput {
                        field: "policy".to_owned(),
                        problem,
                    }
                }
                other => GatewayFailure::CoordinationUnavailable {
                    detail: other.to_string(),
                },
            })
    }

    /// This gateway's verdict on the stored policy `sha256` of `kind` (`None`: the
    /// built-in merge, always accepted).
    pub async fn verify(&self, kind: PolicyKind, sha256: Option<String>) -> PolicyVerdict {
        let mut verdict = PolicyVerdict {
            gateway: self.gateway,
            kind,
            sha256: sha256.clone(),
            name: String::new(),
            refused: None,
            checked: String::new(),
            preview: None,
        };
        let result = match (kind, sha256) {
            (PolicyKind::Placement, Some(sha256)) => {
                self.verify_placement(sha256, &mut verdict).await
            }
            (PolicyKind::Placement, None) => Err("a placement policy is required".to_owned()),
            (PolicyKind::Merge, Some(sha256)) => self.verify_merge(sha256, &mut verdict).await,
            (PolicyKind::Merge, None) => {
                "built-in".clone_into(&mut verdict.name);
                "the built-in merge keeps the laws by construction"
                    .clone_into(&mut verdict.checked);
                Ok(())
            }
        };
        if let Err(problem) = result {
            tracing::warn!(kind = kind.name(), sha256 = ?verdict.sha256, %problem, "policy refused");
            metrics::counter!("cartdb_policy_refusals_total", "kind" => kind.name()).increment(1);
            verdict.refused = Some(problem);
        }
        verdict
    }

    async fn verify_placement(
        &self,
        sha256: String,
        verdict: &mut PolicyVerdict,
    ) -> Result<(), String> {
        let policy = self
            .library
            .placement(&sha256)
            .await
            .map_err(|e| e.to_string())?;
        policy.name().clone_into(&mut verdict.name);
        let topology = self.view.current();
        let map = &topology.map;
        let build = || build_placement(policy.clone(), map.clone(), self.rule.clone(), None);
        // Each build makes its own instance: equal tables mean the answers do not depend on
        // an instance's history.
        let first = build().await.map_err(|e| e.to_string())?;
        let second = build().await.map_err(|e| e.to_string())?;
        if let Some((pg, _)) = first
            .table()
            .iter()
            .find(|&(pg, up)| second.table().up(pg) != up)
        {
            return Err(format!(
                "not deterministic: two instances place PG {pg} differently"
            ));
        }
        let current = topology.placement().table();
        let short = |table: &cartdb_core::pg_table::PgTable| {
            table
                .iter()
                .filter(|(_, up)| up.len() < self.replication.replicas)
                .count()
        };
        let (short_new, short_now) = (short(first.table()), short(current));
        if short_new > short_now {
            return Err(format!(
                "{short_new} of {} PGs get fewer than {} devices (the running policy: {short_now})",
                map.pool.pg_num(),
                self.replication.replicas
            ));
        }
        let devices: BTreeSet<_> = first.table().iter().flat_map(|(_, up)| up.iter()).collect();
        verdict.checked = format!(
            "{} PGs placed twice under the map at epoch {}, identical, valid, on {} devices",
            map.pool.pg_num(),
            map.epoch,
            devices.len()
        );
        verdict.preview = Some(compare(map, current, map, first.table()));
        Ok(())
    }

    async fn verify_merge(
        &self,
        sha256: String,
        verdict: &mut PolicyVerdict,
    ) -> Result<(), String> {
        let policy = self
            .library
            .merge(Some(&sha256))
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "no merge policy".to_owned())?;
        policy.name().clone_into(&mut verdict.name);
        let report = tokio::task::spawn_blocking(move || {
            // One merge first: a guest that traps or spins fails here at once, rather than
            // on every case of every law (each waiting out the call's deadline).
            policy.merge(&probe()).map_err(|e| e.to_string())?;
            Ok::<_, String>(merge_laws::check_laws(
                &|states| policy.merge(states),
                MERGE_LAW_CASES,
                MERGE_LAW_SEED,
            ))
        })
        .await
        .map_err(|e| format!("the merge-law check failed: {e}"))??;
        if !report.all_passed() {
            let broken: Vec<String> = report
                .results
                .iter()
                .filter(|r| !r.passed())
                .map(|r| r.law.to_string())
                .collect();
            return Err(format!(
                "breaks the merge laws: {} ({} passed, {} failed of {MERGE_LAW_CASES} cases each)",
                broken.join(", "),
                report.passed(),
                report.failed()
            ));
        }
        verdict.checked = format!(
            "{} merge laws kept on {MERGE_LAW_CASES} cases each",
            report.passed()
        );
        Ok(())
    }

    /// The policies as this gateway sees them.
    pub fn status(&self) -> PolicyStatus {
        let topology = self.view.current();
        let placement = topology.placement().policy();
        PolicyStatus {
            gateway: self.gateway,
            epoch: topology.placement().epoch(),
            named: topology.map.policies.clone(),
            running: RunningPolicies {
                placement: info(placement.name(), placement.sha256()),
                merge: self.merger.policy().map(|p| info(p.name(), p.sha256())),
            },
            history: topology.map.policy_history.clone(),
        }
    }
}

/// Two replicas of one item, each with an operation the other lacks.
fn probe() -> [ItemState; 2] {
    let state = |id: u128, hlc: u64| ItemState {
        ops: vec![Operation {
            id: OpId(id),
            kind: OpKind::Add,
            version: Version { hlc, gateway: 1 },
        }],
        ..ItemState::new(
            "probe",
            ItemMeta {
                price: 1,
                category: "probe".to_owned(),
            },
        )
    };
    [state(1, 10), state(2, 20)]
}

fn info(name: &str, sha256: &str) -> PolicyInfo {
    PolicyInfo {
        name: name.to_owned(),
        sha256: sha256.to_owned(),
    }
}

/// The policy info of a gateway's running placement policy, for `Cluster` answers.
pub fn running_placement(view: &ClusterView) -> PolicyInfo {
    let topology = view.current();
    let policy = topology.placement().policy();
    info(policy.name(), policy.sha256())
}

//! The policy lifecycle's endpoints (admin):
//!
//! ```text
//! POST /api/admin/policies/{kind}?name=F&by=W&dry_run=true   body: the component (.wasm)
//! POST /api/admin/policies/{kind}/rollback?by=W&dry_run=true
//! GET  /api/admin/policies
//! ```
//!
//! `kind` is `placement` or `merge`. A deploy stores the component (content-addressed by
//! sha256, through a gateway, in ZooKeeper), then asks **every** live gateway to verify it
//! against the current map. Only if all accept does one gateway make the map name it: one
//! compare-and-set, one new epoch, at which every gateway switches (a placement policy's
//! moved PGs then backfill like any map change's). If any gateway refuses, or does not
//! answer, nothing changes and the answer (409) names each refusing gateway and its reason:
//! the previous policy stays in force everywhere. A rollback does the same with the policy
//! that was active before the current one (from the map's policy history). `dry_run`
//! stores and verifies, and answers what the change would move, without making it.
//! The gateways do the work (`gateway::policy_admin`); this module orchestrates.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use cartdb_core::coord::map::previous_policy;
use cartdb_core::wire::{
    ActivePolicies, GatewayFailure, GatewayRequest, GatewayResponse, MapChange, MapPreview,
    PolicyEvent, PolicyKind, PolicyRef, PolicyStatus, PolicyVerdict,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::Admin;
use crate::error::{ApiError, ErrorBody};
use crate::extract::ApiQuery;
use crate::handlers::{ask, unexpected};
use crate::routes::AppState;

/// Largest component accepted (the policy store's and the gateways' limit).
pub const MAX_POLICY_BYTES: usize = cartdb_core::coord::policy_store::MAX_POLICY_BYTES;
/// How long a deploy waits for every gateway to run what the map now names.
const SWITCH_WAIT: Duration = Duration::from_secs(10);
/// Longest `name` or `by` accepted.
const MAX_TEXT: usize = 128;

/// Query of the deploy and rollback endpoints.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DeployQuery {
    /// The file the component came from (for the history; default `upload.wasm`).
    pub name: Option<String>,
    /// Who deploys (for the history; default `operator`).
    pub by: Option<String>,
    /// Store and verify only; change nothing.
    pub dry_run: Option<bool>,
}

/// What a deploy or rollback did (or, with `dry_run`, would do).
#[derive(Debug, Serialize, ToSchema)]
pub struct DeployReport {
    pub kind: PolicyKind,
    /// `deploy` or `rollback`.
    pub action: String,
    /// `None`: the built-in merge.
    pub sha256: Option<String>,
    pub name: String,
    pub dry_run: bool,
    /// Every live gateway's verdict (all accepted, or nothing would have been answered 200).
    pub verdicts: Vec<PolicyVerdict>,
    /// For a placement policy: the PGs and copies it moves, and each device's PGs before
    /// and after.
    pub preview: Option<MapPreview>,
    /// The map epoch it took effect at (absent for a dry run).
    pub applied_epoch: Option<u64>,
    /// The gateways seen running it before the answer.
    pub running_on: Vec<u32>,
}

/// Answer of `GET /api/admin/policies`.
#[derive(Debug, Serialize, ToSchema)]
pub struct PoliciesView {
    /// What the map names.
    pub named: ActivePolicies,
    /// The last activations, oldest first.
    pub history: Vec<PolicyEvent>,
    /// What each live gateway runs.
    pub gateways: Vec<PolicyStatus>,
    /// Every gateway runs exactly what the map names.
    pub agree: bool,
}

/// `POST /api/admin/policies/{kind}` (admin): deploy a policy component.
#[utoipa::path(post, path = "/api/admin/policies/{kind}", tag = "admin",
    params(("kind" = String, Path, description = "`placement` or `merge`"), DeployQuery),
    request_body(content = Vec<u8>, content_type = "application/wasm", description = "the WebAssembly component"),
    security(("admin_token" = [])),
    responses((status = 200, description = "verified by every gateway and active (or, dry run, what it would move)", body = DeployReport),
        (status = 400, description = "bad input, naming the field", body = ErrorBody), (status = 401, description = "the admin token is missing or wrong", body = ErrorBody), (status = 409, description = "a gateway refused it (each named with its reason); nothing changed", body = ErrorBody), (status = 413, description = "the component is over 16 MiB", body = ErrorBody), (status = 503, description = "no gateway, or ZooKeeper cannot be reached", body = ErrorBody), (status = 500, description = "a bug", body = ErrorBody)))]
pub async fn deploy(
    _admin: Admin,
    State(state): State<AppState>,
    Path(kind): Path<String>,
    ApiQuery(query): ApiQuery<DeployQuery>,
    body: Bytes,
) -> Result<Json<DeployReport>, ApiError> {
    let kind = kind_of(&kind)?;
    if body.is_empty() {
        return Err(invalid("body", "the component is empty".to_owned()));
    }
    let file_name = text("name", query.name.as_deref(), "upload.wasm")?;
    let by = text("by", query.by.as_deref(), "operator")?;
    let request = GatewayRequest::StorePolicy {
        kind,
        file_name,
        bytes: body.to_vec(),
        by: by.clone(),
    };
    let sha256 = match ask(&state, &request).await?.response {
        GatewayResponse::PolicyStored { sha256 } => sha256,
        other => return Err(unexpected("PolicyStored", other)),
    };
    let dry_run = query.dry_run.unwrap_or(false);
    activate(&state, kind, Some(sha256), "deploy", by, dry_run).await
}

/// `POST /api/admin/policies/{kind}/rollback` (admin): return to the policy of `kind` that
/// was active before the current one.
#[utoipa::path(post, path = "/api/admin/policies/{kind}/rollback", tag = "admin",
    params(("kind" = String, Path, description = "`placement` or `merge`"), DeployQuery),
    security(("admin_token" = [])),
    responses((status = 200, description = "verified by every gateway and active again", body = DeployReport),
        (status = 400, description = "bad input, naming the field", body = ErrorBody), (status = 401, description = "the admin token is missing or wrong", body = ErrorBody), (status = 409, description = "no earlier policy in the history, or a gateway refused it; nothing changed", body = ErrorBody), (status = 503, description = "no gateway, or ZooKeeper cannot be reached", body = ErrorBody), (status = 500, description = "a bug", body = ErrorBody)))]
pub async fn rollback(
    _admin: Admin,
    State(state): State<AppState>,
    Path(kind): Path<String>,
    ApiQuery(query): ApiQuery<DeployQuery>,
) -> Result<Json<DeployReport>, ApiError> {
    let kind = kind_of(&kind)?;
    let by = text("by", query.by.as_deref(), "operator")?;
    let status = match ask(&state, &GatewayRequest::Policies).await?.response {
        GatewayResponse::Policies(status) => status,
        other => return Err(unexpected("Policies", other)),
    };
    let Some(previous) = previous_policy(&status.history, kind) else {
        return Err(refused(format!(
            "no earlier {} policy in the history to roll back to",
            kind.name()
        )));
    };
    let sha256 = previous.map(|p| p.sha256);
    let dry_run = query.dry_run.unwrap_or(false);
    activate(&state, kind, sha256, "rollback", by, dry_run).await
}

/// `GET /api/admin/policies` (admin): what the map names, its history, what each gateway
/// runs.
#[utoipa::path(get, path = "/api/admin/policies", tag = "admin", security(("admin_token" = [])),
    responses((status = 200, description = "the policies", body = PoliciesView),
        (status = 401, description = "the admin token is missing or wrong", body = ErrorBody), (status = 503, description = "no gateway answered", body = ErrorBody), (status = 500, description = "a bug", body = ErrorBody)))]
pub async fn policies(
    _admin: Admin,
    State(state): State<AppState>,
) -> Result<Json<PoliciesView>, ApiError> {
    let gateways = statuses(&state).await;
    let Some(first) = gateways.iter().max_by_key(|s| s.epoch) else {
        return Err(ApiError::NoGateway);
    };
    let (named, history) = (first.named.clone(), first.history.clone());
    let agree = gateways.iter().all(|s| runs(s, &named));
    Ok(Json(PoliciesView {
        named,
        history,
        gateways,
        agree,
    }))
}

/// Verifies `sha256` on every live gateway and, unless `dry_run`, makes the map name it and
/// waits until every gateway runs it.
async fn activate(
    state: &AppState,
    kind: PolicyKind,
    sha256: Option<String>,
    action: &str,
    by: String,
    dry_run: bool,
) -> Result<Json<DeployReport>, ApiError> {
    let verdicts = verify_everywhere(state, kind, sha256.as_ref()).await?;
    let refusals: Vec<String> = verdicts
        .iter()
        .filter_map(|v| {
            v.refused
                .as_ref()
                .map(|why| format!("gateway {} refuses it: {why}", v.gateway))
        })
        .collect();
    let label = sha256
        .as_deref()
        .map_or("the built-in merge".to_owned(), |s| {
            format!("{} policy {}", kind.name(), s.get(..12).unwrap_or(s))
        });
    if !refusals.is_empty() {
        return Err(refused(format!(
            "{label} is not activated, the previous policy stays in force: {}",
            refusals.join("; ")
        )));
    }
    let name = verdicts.first().map(|v| v.name.clone()).unwrap_or_default();
    let mut report = DeployReport {
        kind,
        action: action.to_owned(),
        sha256: sha256.clone(),
        name: name.clone(),
        dry_run,
        preview: verdicts.iter().find_map(|v| v.preview.clone()),
        verdicts,
        applied_epoch: None,
        running_on: Vec::new(),
    };
    if dry_run {
        return Ok(Json(report));
    }
    let change = MapChange::Policy {
        kind,
        policy: sha256.clone().map(|sha256| PolicyRef { sha256, name }),
        action: action.to_owned(),
        by,
        at_ms: cartdb_core::version::wall_clock_millis(),
    };
    let request = GatewayRequest::ChangeMap {
        changes: vec![change],
    };
    let preview = match ask(state, &request).await?.response {
        GatewayResponse::MapPreview(preview) => *preview,
        other => return Err(unexpected("MapPreview", other)),
    };
    report.applied_epoch = preview.applied_epoch;
    if kind == PolicyKind::Placement {
        report.preview = Some(preview);
    }
    report.running_on = wait_for_switch(state, kind, sha256.as_deref()).await;
    Ok(Json(report))
}

/// Every live gateway's verdict; a gateway that does not answer refuses.
async fn verify_everywhere(
    state: &AppState,
    kind: PolicyKind,
    sha256: Option<&String>,
) -> Result<Vec<PolicyVerdict>, ApiError> {
    let gateways = state.pool().gateways();
    if gateways.is_empty() {
        return Err(ApiError::NoGateway);
    }
    let request = GatewayRequest::VerifyPolicy {
        kind,
        sha256: sha256.cloned(),
    };
    let asks = gateways.iter().map(|g| {
        let request = &request;
        async move {
            let answer = state.pool().call_on(g.id, request).await;
            match answer.map(|reply| reply.response) {
                Ok(GatewayResponse::PolicyVerified(verdict)) => *verdict,
                Ok(other) => silent(
                    g.id,
                    kind,
                    sha256,
                    &unexpected("VerifyPolicy", other).to_string(),
                ),
                Err(e) => silent(g.id, kind, sha256, &e.to_string()),
            }
        }
    });
    Ok(futures::future::join_all(asks).await)
}

/// The verdict standing for a gateway that could not verify.
fn silent(gateway: u32, kind: PolicyKind, sha256: Option<&String>, why: &str) -> PolicyVerdict {
    PolicyVerdict {
        gateway,
        kind,
        sha256: sha256.cloned(),
        name: String::new(),
        refused: Some(format!("could not verify it: {why}")),
        checked: String::new(),
        preview: None,
    }
}

/// Polls every gateway until each runs `sha256` (of `kind`) or [`SWITCH_WAIT`] passes; the
/// gateways seen running it.
async fn wait_for_switch(state: &AppState, kind: PolicyKind, sha256: Option<&str>) -> Vec<u32> {
    let deadline = tokio::time::Instant::now() + SWITCH_WAIT;
    loop {
        let statuses = statuses(state).await;
        let running: Vec<u32> = statuses
            .iter()
            .filter(|s| running_sha(s, kind) == sha256)
            .map(|s| s.gateway)
            .collect();
        if running.len() == statuses.len() || tokio::time::Instant::now() >= deadline {
            return running;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every live gateway's policy status (those that answer).
pub async fn statuses(state: &AppState) -> Vec<PolicyStatus> {
    let gateways = state.pool().gateways();
    let asks = gateways.iter().map(|g| async move {
        match state.pool().call_on(g.id, &GatewayRequest::Policies).await {
            Ok(reply) => match reply.response {
                GatewayResponse::Policies(status) => Some(*status),
                _ => None,
            },
            Err(_) => None,
        }
    });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

fn running_sha(status: &PolicyStatus, kind: PolicyKind) -> Option<&str> {
    match kind {
        PolicyKind::Placement => Some(status.running.placement.sha256.as_str()),
        PolicyKind::Merge => status.running.merge.as_ref().map(|p| p.sha256.as_str()),
    }
}

/// Whether a gateway runs exactly the policies `named`.
pub fn runs(status: &PolicyStatus, named: &ActivePolicies) -> bool {
    running_sha(status, PolicyKind::Placement) == Some(named.placement.sha256.as_str())
        && running_sha(status, PolicyKind::Merge) == named.merge.as_ref().map(|p| p.sha256.as_str())
}

fn kind_of(kind: &str) -> Result<PolicyKind, ApiError> {
    match kind {
        "placement" => Ok(PolicyKind::Placement),
        "merge" => Ok(PolicyKind::Merge),
        other => Err(invalid(
            "kind",
            format!("{other:?} is not a policy kind (placement, merge)"),
        )),
    }
}

/// A printable text of at most [`MAX_TEXT`] bytes, or `default`.
fn text(field: &str, value: Option<&str>, default: &str) -> Result<String, ApiError> {
    let value = value.unwrap_or(default);
    if value.is_empty() || value.len() > MAX_TEXT || value.chars().any(char::is_control) {
        return Err(invalid(
            field,
            format!("must be 1 to {MAX_TEXT} bytes without control characters"),
        ));
    }
    Ok(value.to_owned())
}

fn invalid(field: &str, problem: String) -> ApiError {
    ApiError::Gateway(GatewayFailure::InvalidInput {
        field: field.to_owned(),
        problem,
    })
}

fn refused(problem: String) -> ApiError {
    ApiError::Gateway(GatewayFailure::MapChangeRefused { problem })
}

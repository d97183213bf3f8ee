//! The admin endpoints that change the cluster map, and the one that shows every PG:
//!
//! ```text
//! POST /api/admin/map/preview  {"changes": [...]}  what the changes would move (nothing is changed)
//! POST /api/admin/map/change   {"changes": [...]}  makes them, in one compare-and-set of the map
//! GET  /api/admin/pgs                               every PG's up and past sets
//! ```
//!
//! A change is one of `{"change": "flag", "flag": "noout", "on": true}`,
//! `{"change": "pace", "items_per_sec": 50000}` (`null`: each gateway's own setting),
//! `{"change": "reweight", "device": 3, "weight": 0}` (0 = out, 65536 = in),
//! `{"change": "add_device", "device": 7, "name": "device_7", "host": "host6", "weight": 65536}`
//! and `{"change": "remove_device", "device": 7}`. The gateway answering does the work
//! (`gateway::map_change`); this module only translates.

use axum::Json;
use axum::extract::State;
use cartdb_core::cart::DeviceId;
use cartdb_core::coord::check_pace;
use cartdb_core::wire::{
    GatewayFailure, GatewayRequest, GatewayResponse, MapChange, MapPreview, PgEntry,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::Admin;
use crate::error::{ApiError, ErrorBody};
use crate::extract::ApiJson;
use crate::handlers::{ask, unexpected};
use crate::routes::AppState;

/// Most changes one request may carry.
const MAX_CHANGES: usize = 64;

/// Body of `POST /api/admin/map/preview` and `POST /api/admin/map/change`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MapChanges {
    /// Applied in order, as one change of the map.
    #[schema(min_items = 1, max_items = 64)]
    pub changes: Vec<MapChangeBody>,
}

/// One change of the map.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(tag = "change", rename_all = "snake_case", deny_unknown_fields)]
pub enum MapChangeBody {
    /// Sets (`on: true`) or clears a cluster flag: `noout`.
    Flag { flag: String, on: bool },
    /// Sets the anti-entropy sweep's pace in items per second for every gateway, or with
    /// `null` returns each to its own `--anti-entropy-items-per-sec`.
    Pace {
        #[schema(minimum = 1, maximum = 10_000_000)]
        items_per_sec: Option<u32>,
    },
    /// Sets a device's reweight in 16.16 fixed point: 0 marks it out, 65536 fully in.
    Reweight {
        device: DeviceId,
        #[schema(maximum = 65536)]
        weight: u32,
    },
    /// Adds a device under a host bucket (created under the map's first root if missing).
    AddDevice {
        device: DeviceId,
        #[schema(min_length = 1, max_length = 64)]
        name: String,
        #[schema(min_length = 1, max_length = 64)]
        host: String,
        /// CRUSH weight, 16.16 fixed point (65536 = 1.0).
        #[schema(minimum = 1)]
        weight: u32,
    },
    /// Removes a device that is out and holds no PG (409 until then).
    RemoveDevice { device: DeviceId },
}

/// Longest device or host name accepted.
const MAX_NAME_BYTES: usize = 64;

impl MapChangeBody {
    fn into_change(self) -> Result<MapChange, ApiError> {
        Ok(match self {
            Self::Flag { flag, on } => MapChange::Flag { flag, on },
            Self::Pace { items_per_sec } => {
                check_pace(items_per_sec).map_err(|e| invalid("items_per_sec", e.to_string()))?;
                MapChange::Pace { items_per_sec }
            }
            Self::Reweight { device, weight } => MapChange::Reweight { device, weight },
            Self::AddDevice {
                device,
                name,
                host,
                weight,
            } => {
                check_name("name", &name)?;
                check_name("host", &host)?;
                MapChange::AddDevice {
                    device,
                    name,
                    host,
                    weight,
                }
            }
            Self::RemoveDevice { device } => MapChange::RemoveDevice { device },
        })
    }
}

/// A device or bucket name: printable, without spaces, at most [`MAX_NAME_BYTES`].
fn check_name(field: &'static str, name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name.chars().all(|c| c.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!(
                "{name:?} must be 1 to {MAX_NAME_BYTES} printable ASCII characters without spaces"
            ),
        ))
    }
}

fn invalid(field: &str, problem: String) -> ApiError {
    ApiError::Gateway(GatewayFailure::InvalidInput {
        field: field.to_owned(),
        problem,
    })
}

fn changes_of(body: MapChanges) -> Result<Vec<MapChange>, ApiError> {
    if body.changes.is_empty() || body.changes.len() > MAX_CHANGES {
        return Err(invalid(
            "changes",
            format!("give 1 to {MAX_CHANGES} changes"),
        ));
    }
    body.changes
        .into_iter()
        .map(MapChangeBody::into_change)
        .collect()
}

/// Sends the changes of `body` to a gateway, to preview or (`commit`) to make them.
async fn map_request(
    state: &AppState,
    body: MapChanges,
    commit: bool,
) -> Result<Json<MapPreview>, ApiError> {
    let changes = changes_of(body)?;
    let request = if commit {
        GatewayRequest::ChangeMap { changes }
    } else {
        GatewayRequest::PreviewMap { changes }
    };
    match ask(state, &request).await?.response {
        GatewayResponse::MapPreview(preview) => Ok(Json(*preview)),
        other => Err(unexpected("MapPreview", other)),
    }
}

/// `POST /api/admin/map/preview` (admin): what the changes would do to placement.
#[utoipa::path(post, path = "/api/admin/map/preview", tag = "admin", request_body = MapChanges, security(("admin_token" = [])),
    responses((status = 200, description = "PGs and PG copies that would move, and each device's PGs before and after", body = MapPreview),
        (status = 400, description = "bad input, naming the field", body = ErrorBody), (status = 401, description = "the admin token is missing or wrong", body = ErrorBody), (status = 404, description = "a change names a device the map does not have", body = ErrorBody), (status = 409, description = "the change cannot be made now (a device to remove still holds data)", body = ErrorBody), (status = 413, description = "the body is over 64 KiB", body = ErrorBody), (status = 503, description = "no gateway, or ZooKeeper cannot be reached", body = ErrorBody), (status = 500, description = "a bug", body = ErrorBody)))]
pub async fn preview(
    _admin: Admin,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<MapChanges>,
) -> Result<Json<MapPreview>, ApiError> {
    map_request(&state, body, false).await
}

/// `POST /api/admin/map/change` (admin): makes the changes, in one compare-and-set of the
/// map; answers their preview against the map they were applied to.
#[utoipa::path(post, path = "/api/admin/map/change", tag = "admin", request_body = MapChanges, security(("admin_token" = [])),
    responses((status = 200, description = "applied: the preview, with `applied_epoch`", body = MapPreview),
        (status = 400, description = "bad input, naming the field", body = ErrorBody), (status = 401, description = "the admin token is missing or wrong", body = ErrorBody), (status = 404, description = "a change names a device the map does not have", body = ErrorBody), (status = 409, description = "the change cannot be made now (a device to remove still holds data)", body = ErrorBody), (status = 413, description = "the body is over 64 KiB", body = ErrorBody), (status = 503, description = "no gateway, or ZooKeeper cannot be reached: retry", body = ErrorBody), (status = 500, description = "a bug", body = ErrorBody)))]
pub async fn change(
    _admin: Admin,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<MapChanges>,
) -> Result<Json<MapPreview>, ApiError> {
    map_request(&state, body, true).await
}

/// Answer of `GET /api/admin/pgs`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Pgs {
    pub epoch: u64,
    pub pgs: Vec<PgEntry>,
}

/// `GET /api/admin/pgs` (admin): every PG's up set (primary first) and past set.
#[utoipa::path(get, path = "/api/admin/pgs", tag = "admin", security(("admin_token" = [])),
    responses((status = 200, description = "every PG at the answering gateway's map epoch", body = Pgs),
        (status = 401, description = "the admin token is missing or wrong", body = ErrorBody), (status = 503, description = "no gateway answered", body = ErrorBody), (status = 500, description = "a bug", body = ErrorBody)))]
pub async fn pgs(_admin: Admin, State(state): State<AppState>) -> Result<Json<Pgs>, ApiError> {
    match ask(&state, &GatewayRequest::Pgs).await?.response {
        GatewayResponse::Pgs { epoch, pgs } => Ok(Json(Pgs { epoch, pgs })),
        other => Err(unexpected("Pgs", other)),
    }
}

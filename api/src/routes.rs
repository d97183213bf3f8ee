//! The router: which handler serves which method and path, the shared [`AppState`], the body
//! limit, and JSON answers for unknown paths (404) and methods (405).

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Method, Uri};
use axum::routing::{get, post};

use crate::auth::AdminToken;
use crate::error::{ApiError, MAX_BODY_BYTES};
use crate::gateways::GatewayPool;
use crate::handlers;

/// What every handler can reach: the gateways and the admin token.
#[derive(Clone, Debug)]
pub struct AppState {
    pool: Arc<GatewayPool>,
    admin: Option<AdminToken>,
}

impl AppState {
    /// State over `pool`; `admin_token` set protects the admin endpoints.
    pub fn new(pool: Arc<GatewayPool>, admin_token: Option<&str>) -> Self {
        Self {
            pool,
            admin: admin_token.map(AdminToken::new),
        }
    }

    pub fn pool(&self) -> &GatewayPool {
        &self.pool
    }

    pub fn admin_token(&self) -> Option<&AdminToken> {
        self.admin.as_ref()
    }
}

/// The API's routes over `state`. Needs no ZooKeeper: tests fill the pool directly.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/insert", post(handlers::insert))
        .route("/api/delete", post(handlers::delete))
        .route("/api/list_all", get(handlers::list_all))
        .route("/api/list_category", get(handlers::list_category))
        .route(
            "/api/products",
            get(handlers::products).post(handlers::upsert_product),
        )
        .route("/api/cluster", get(handlers::cluster))
        .route("/api/admin/replicas", get(handlers::replicas))
        .route("/api/admin/locate", get(handlers::locate))
        .route("/api/admin/device-items", get(handlers::device_items))
        .route("/healthz", get(handlers::healthz))
        // Applies to the routes above, so it must come after them.
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::RouteNotFound {
        path: uri.path().to_owned(),
    }
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed {
        method,
        path: uri.path().to_owned(),
    }
}

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
use crate::shopper_limit::ShopperLimit;
use crate::traffic::Traffic;
use crate::{dashboard, handlers, map_admin, policy_admin};

/// Whether this process's ZooKeeper session is connected (for `/readyz`).
pub type SessionProbe = Arc<dyn Fn() -> bool + Send + Sync>;

/// What every handler can reach: the gateways, the admin token, for readiness the
/// ZooKeeper session, and the recent traffic the dashboard charts.
#[derive(Clone)]
pub struct AppState {
    pool: Arc<GatewayPool>,
    admin: Option<AdminToken>,
    zookeeper: Option<SessionProbe>,
    traffic: Arc<Traffic>,
    shopper_limit: Option<Arc<ShopperLimit>>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("pool", &self.pool)
            .field("admin", &self.admin.is_some())
            .field("zookeeper", &self.zookeeper.is_some())
            .finish()
    }
}

impl AppState {
    /// State over `pool`; `admin_token` set protects the admin endpoints.
    pub fn new(pool: Arc<GatewayPool>, admin_token: Option<&str>) -> Self {
        Self {
            pool,
            admin: admin_token.map(AdminToken::new),
            zookeeper: None,
            traffic: Arc::default(),
            shopper_limit: None,
        }
    }

    /// The same state, answering 429 to a shopper's cart requests beyond `per_sec` a
    /// second (0: no limit).
    #[must_use]
    pub fn with_shopper_limit(mut self, per_sec: u32) -> Self {
        self.shopper_limit = (per_sec > 0).then(|| Arc::new(ShopperLimit::new(per_sec)));
        self
    }

    /// Counts one cart request of `user` against the shopper rate limit, if there is one.
    ///
    /// # Errors
    /// [`ApiError::ShopperOverLimit`] when the shopper is over it.
    pub fn admit_shopper(&self, user: &str) -> Result<(), ApiError> {
        match &self.shopper_limit {
            Some(limit) => limit
                .admit(user, std::time::Instant::now())
                .map_err(ApiError::ShopperOverLimit),
            None => Ok(()),
        }
    }

    /// The same state, with `/readyz` also requiring `probe` (the ZooKeeper session) to
    /// answer `true`.
    #[must_use]
    pub fn with_session_probe(mut self, probe: SessionProbe) -> Self {
        self.zookeeper = Some(probe);
        self
    }

    /// Whether the ZooKeeper session is connected; `None` when no probe was given.
    pub fn zookeeper_connected(&self) -> Option<bool> {
        self.zookeeper.as_ref().map(|probe| probe())
    }

    pub fn pool(&self) -> &GatewayPool {
        &self.pool
    }

    pub fn admin_token(&self) -> Option<&AdminToken> {
        self.admin.as_ref()
    }

    pub fn traffic(&self) -> &Traffic {
        &self.traffic
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
        .route("/api/admin/traffic", get(handlers::traffic))
        .route("/api/admin/map/preview", post(map_admin::preview))
        .route("/api/admin/map/change", post(map_admin::change))
        .route("/api/admin/pgs", get(map_admin::pgs))
        .route(
            "/api/admin/policies/{kind}",
            // A component may be up to 16 MiB; every other body stays under 64 KiB.
            post(policy_admin::deploy).layer(DefaultBodyLimit::max(policy_admin::MAX_POLICY_BYTES)),
        )
        .route(
            "/api/admin/policies/{kind}/rollback",
            post(policy_admin::rollback),
        )
        .route("/api/admin/policies", get(policy_admin::policies))
        .route("/openapi.json", get(crate::openapi::openapi_json))
        .route("/dashboard", get(dashboard::page))
        .route("/dashboard/{file}", get(dashboard::asset))
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/metrics", get(cartdb_core::telemetry::metrics_handler))
        // Counts and times the requests of the routes above, labelled with the route's
        // pattern (never the query), so it must come after them; unmatched paths are
        // counted by `not_found`.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            track_request,
        ))
        // Applies to the routes above, so it must come after them.
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// The endpoints whose requests are cart operations, charted by the dashboard.
const CART_OPERATIONS: [&str; 4] = [
    "/api/insert",
    "/api/delete",
    "/api/list_all",
    "/api/list_category",
];

/// Records `cartdb_http_requests_total` (by endpoint, method and status) and
/// `cartdb_http_request_seconds` (by endpoint and method), and the cart operations in the
/// dashboard's [`Traffic`] window.
async fn track_request(
    axum::extract::State(state): axum::extract::State<AppState>,
    path: axum::extract::MatchedPath,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let endpoint = path.as_str().to_owned();
    let method = request.method().as_str().to_owned();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let elapsed = started.elapsed();
    if CART_OPERATIONS.contains(&endpoint.as_str()) {
        state.traffic().record(
            crate::traffic::unix_secs(),
            elapsed,
            response.status().is_server_error(),
        );
    }
    metrics::histogram!(
        "cartdb_http_request_seconds",
        "endpoint" => endpoint.clone(),
        "method" => method.clone(),
    )
    .record(elapsed.as_secs_f64());
    metrics::counter!(
        "cartdb_http_requests_total",
        "endpoint" => endpoint,
        "method" => method,
        "status" => response.status().as_u16().to_string(),
    )
    .increment(1);
    response
}

async fn not_found(uri: Uri) -> ApiError {
    metrics::counter!(
        "cartdb_http_requests_total",
        "endpoint" => "unmatched",
        "method" => "any",
        "status" => "404",
    )
    .increment(1);
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

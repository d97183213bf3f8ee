//! cartdb's API server: the shoppers' REST API.
//!
//! Every request is checked here, then forwarded to one of the live gateways, chosen at
//! random so that the load splits evenly; a gateway that cannot be reached is skipped for the
//! next. The gateways are discovered through ZooKeeper.
//!
//! ```text
//! shopper --HTTP/JSON--> router --> handler --> GatewayPool --RPC--> gateway 1 | gateway 2
//!                                                  ^
//!                      ZooKeeper members() --------+ (background task, on change)
//! ```
//!
//! # Layout
//! - [`config`]: [`ApiConfig`], the command-line and environment configuration.
//! - [`routes`]: the [`router`] and its [`AppState`].
//! - [`shopper_limit`]: the optional per-shopper request rate limit (429).
//! - [`handlers`]: one handler per endpoint.
//! - [`extract`]: extractors whose rejections are JSON errors; the idempotency key.
//! - [`auth`]: the admin bearer-token check.
//! - [`dashboard`]: the static dashboard page and its vendored chart library.
//! - [`openapi`]: the OpenAPI 3.1 document, generated from the handlers.
//! - [`traffic`]: the recent cart-operation rate and latency the dashboard charts.
//! - [`gateways`]: the gateway pool, random choice and failover.
//! - [`http`]: the server loop with its bounds: connections, head, body and request times.
//! - [`error`]: [`ApiError`] and its status table.

pub mod auth;
pub mod config;
pub mod dashboard;
pub mod error;
pub mod extract;
pub mod gateways;
pub mod handlers;
pub mod http;
pub mod map_admin;
pub mod openapi;
pub mod policy_admin;
pub mod routes;
pub mod shopper_limit;
pub mod traffic;

use std::sync::Arc;

use cartdb_core::config::ConfigError;
use cartdb_core::coord::{CoordError, Coordinator, Membership, ZkCredentials};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::ApiConfig;
pub use error::ApiError;
pub use gateways::GatewayPool;
pub use routes::{AppState, router};

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Coordination(CoordError),
    #[error("the HTTP server failed")]
    Serve(#[source] std::io::Error),
    #[error(transparent)]
    Telemetry(cartdb_core::telemetry::TelemetryError),
}

/// Serves the API on `listener` until `shutdown` is cancelled, then stops accepting, lets
/// the requests in flight finish, and returns.
///
/// # Errors
/// [`RunError::Config`] for an invalid configuration, [`RunError::Coordination`] when
/// ZooKeeper cannot be reached at start, [`RunError::Serve`] when the HTTP server fails.
pub async fn run(
    config: ApiConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    config.validate()?;
    let key = config.secret.key()?;
    // Before anything records a metric (the ZooKeeper session's state among them).
    cartdb_core::telemetry::Telemetry::install().map_err(RunError::Telemetry)?;
    // Stops the background work when the server stops, also on its own error, without
    // cancelling the caller's token.
    let stop = shutdown.child_token();
    // Kept until the server has stopped: the membership watch lives as long as it does.
    let mut coord_config = config.zk.coord_config()?;
    coord_config.credentials = Some(ZkCredentials::from_key(&key));
    let coordinator = Coordinator::connect(coord_config, stop.clone())
        .await
        .map_err(RunError::Coordination)?;
    let pool = Arc::new(GatewayPool::new(key, config.gateway_timeout()));
    let tasks = TaskTracker::new();
    tasks.spawn(gateways::follow_membership(
        pool.clone(),
        coordinator.members(),
        gateways_of,
        stop.clone(),
    ));
    if config.admin_token.is_none() {
        tracing::warn!("no admin token configured: admin endpoints are open to anyone");
    }
    let session = coordinator.clone();
    let state = AppState::new(pool, config.admin_token.as_deref())
        .with_session_probe(Arc::new(move || session.is_connected()))
        .with_shopper_limit(config.shopper_rate_limit);
    let app = router(state);
    tracing::info!(listen = ?listener.local_addr().ok(), "API server listening");
    let served = http::serve(listener, app, config.http_limits(), shutdown.clone()).await;
    stop.cancel();
    tasks.close();
    tasks.wait().await;
    served.map_err(RunError::Serve)
}

fn gateways_of(members: &Arc<Membership>) -> &std::collections::BTreeMap<u32, String> {
    &members.gateways
}

//! The API server's one configuration: command-line flags, each with a `CARTDB_*`
//! environment variable so that compose files can set it.

use std::net::SocketAddr;
use std::time::Duration;

use cartdb_core::config::{ConfigError, SecretArgs, ZkArgs};
use clap::Parser;

/// Configuration of `cartdb-api`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "cartdb-api",
    version,
    about = "cartdb API server: the shoppers' REST API"
)]
pub struct ApiConfig {
    /// Address the HTTP server listens on. Default `127.0.0.1:8080`.
    #[arg(long, env = "CARTDB_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Bearer token that admin endpoints (`/api/list_category`, `POST /api/products`,
    /// `/api/admin/...`, the internal addresses in `/api/cluster`) require. Required unless
    /// --insecure-open-admin is given.
    #[arg(long, env = "CARTDB_ADMIN_TOKEN")]
    pub admin_token: Option<String>,
    /// Serve the admin endpoints to anyone when no --admin-token is set. Only for a
    /// throw-away local cluster: anyone who reaches the port can then list every shopper
    /// of a category and change prices.
    #[arg(long, env = "CARTDB_INSECURE_OPEN_ADMIN")]
    pub insecure_open_admin: bool,
    /// How long one gateway may take to connect and answer, in milliseconds, before the
    /// request fails over to another gateway. Default 3000.
    #[arg(long, env = "CARTDB_GATEWAY_TIMEOUT_MS", default_value_t = 3000)]
    pub gateway_timeout_ms: u64,
    /// Most open HTTP connections; one more is accepted and closed at once. Default 4096.
    #[arg(long, env = "CARTDB_HTTP_MAX_CONNECTIONS", default_value_t = 4096)]
    pub http_max_connections: usize,
    /// Milliseconds a client gets to send a request's head (request line and headers);
    /// slower ones (slow-loris) are disconnected. Default 10000.
    #[arg(long, env = "CARTDB_HTTP_HEADER_TIMEOUT_MS", default_value_t = 10_000)]
    pub http_header_timeout_ms: u64,
    /// Milliseconds a client gets to send a request's body. Default 10000.
    #[arg(long, env = "CARTDB_HTTP_BODY_TIMEOUT_MS", default_value_t = 10_000)]
    pub http_body_timeout_ms: u64,
    /// Milliseconds a request may take from its head to its answer; then 503. Default
    /// 30000.
    #[arg(long, env = "CARTDB_HTTP_REQUEST_TIMEOUT_MS", default_value_t = 30_000)]
    pub http_request_timeout_ms: u64,
    /// Most cart requests (insert, delete, list_all) one shopper may make a second, and at
    /// once; more are answered 429. 0 turns the limit off. Between 0 and 1000000. Default 0.
    #[arg(long, env = "CARTDB_SHOPPER_RATE_LIMIT", default_value_t = 0)]
    pub shopper_rate_limit: u32,
    /// How to reach ZooKeeper, where the live gateways are registered.
    #[command(flatten)]
    pub zk: ZkArgs,
    /// The cluster secret proved to the gateways.
    #[command(flatten)]
    pub secret: SecretArgs,
}

impl ApiConfig {
    /// Checks the settings that clap's types alone do not.
    ///
    /// # Errors
    /// [`ConfigError`] naming the flag: an empty admin token (which would make the admin
    /// endpoints look protected while any `Bearer ` header passes), a zero gateway time-out,
    /// or bad ZooKeeper settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self
            .admin_token
            .as_deref()
            .is_some_and(|t| t.trim().is_empty())
        {
            return Err(ConfigError::new(
                "admin-token",
                "must not be empty; leave it unset to keep admin endpoints open",
            ));
        }
        if self.admin_token.is_none() && !self.insecure_open_admin {
            return Err(ConfigError::new(
                "admin-token",
                "is required (or CARTDB_ADMIN_TOKEN); pass --insecure-open-admin to leave the admin endpoints open on purpose",
            ));
        }
        if self.gateway_timeout_ms == 0 {
            return Err(ConfigError::new("gateway-timeout-ms", "must be at least 1"));
        }
        if self.shopper_rate_limit > 1_000_000 {
            return Err(ConfigError::new(
                "shopper-rate-limit",
                format!("{} is not between 0 and 1000000", self.shopper_rate_limit),
            ));
        }
        for (field, value) in [
            ("http-max-connections", self.http_max_connections as u64),
            ("http-header-timeout-ms", self.http_header_timeout_ms),
            ("http-body-timeout-ms", self.http_body_timeout_ms),
            ("http-request-timeout-ms", self.http_request_timeout_ms),
        ] {
            if value == 0 {
                return Err(ConfigError::new(field, "must be at least 1"));
            }
        }
        self.zk.coord_config().map(drop)
    }

    /// The HTTP server's bounds.
    pub fn http_limits(&self) -> crate::http::HttpLimits {
        crate::http::HttpLimits {
            max_connections: self.http_max_connections,
            header_read_timeout: Duration::from_millis(self.http_header_timeout_ms),
            body_timeout: Duration::from_millis(self.http_body_timeout_ms),
            request_timeout: Duration::from_millis(self.http_request_timeout_ms),
            ..crate::http::HttpLimits::default()
        }
    }

    /// The per-gateway time-out as a duration.
    pub fn gateway_timeout(&self) -> Duration {
        Duration::from_millis(self.gateway_timeout_ms)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> ApiConfig {
        let argv = std::iter::once("cartdb-api").chain(args.iter().copied());
        ApiConfig::try_parse_from(argv).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn defaults_with_a_token_are_valid() {
        let config = parse(&["--admin-token", "t"]);
        assert!(config.validate().is_ok());
        assert_eq!(config.gateway_timeout(), Duration::from_secs(3));
        assert!(parse(&["--insecure-open-admin"]).validate().is_ok());
    }

    #[test]
    fn admin_endpoints_are_not_open_by_default() {
        let err = parse(&[]).validate().unwrap_err();
        assert_eq!(err.field, "admin-token");
        assert!(err.problem.contains("--insecure-open-admin"), "{err}");
    }

    #[test]
    fn an_empty_admin_token_is_refused() {
        let err = parse(&["--admin-token", ""]).validate().unwrap_err();
        assert_eq!(err.field, "admin-token");
    }

    #[test]
    fn a_zero_timeout_is_refused() {
        let err = parse(&["--admin-token", "t", "--gateway-timeout-ms", "0"])
            .validate()
            .unwrap_err();
        assert_eq!(err.field, "gateway-timeout-ms");
    }
}

//! [`ApiError`]: every way a request can fail, and the one table that maps each to an HTTP
//! status. Every error body is JSON, `{"error": "<message>"}`, including axum's own
//! extractor rejections, which would otherwise be plain text (and 415/422).

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cartdb_core::cart::InputError;
use cartdb_core::rpc::RpcError;
use cartdb_core::wire::GatewayFailure;

use crate::gateways::PoolError;

/// The largest request body accepted, in bytes. Cart requests are tiny; the limit bounds
/// what one request can make the server buffer.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The body of every error answer (for the OpenAPI document; [`ApiError`] writes it).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong, naming the field or the cause.
    pub error: String,
}

/// `GET /readyz`'s answer while ready.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Ready {
    /// Always `ready`.
    pub status: &'static str,
}

/// `GET /readyz`'s answer while not ready (503): the error body plus each missing thing.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct NotReady {
    /// `not ready: ` and the missing things, joined.
    pub error: String,
    /// One entry per missing thing, e.g. `ZooKeeper: this API server's session is not
    /// connected`.
    pub missing: Vec<String>,
}

/// Why a request failed. [`ApiError::status`] is the status table.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// A field of the request is unacceptable.
    #[error(transparent)]
    InvalidInput(#[from] InputError),
    /// The body is not JSON, or not JSON of the expected shape.
    #[error("invalid JSON body: {detail}")]
    MalformedJson { detail: String },
    /// A JSON endpoint was sent another content type.
    #[error("expected a JSON body with `Content-Type: application/json`")]
    NotJson,
    /// The body could not be read (the client went away or sent broken chunking).
    #[error("cannot read the request body: {detail}")]
    UnreadableBody { detail: String },
    /// A required query parameter is missing or malformed.
    #[error("invalid query string: {detail}")]
    InvalidQuery { detail: String },
    /// A request header is malformed.
    #[error("invalid {header} header: {problem}")]
    InvalidHeader {
        header: &'static str,
        problem: String,
    },
    /// The body exceeds [`MAX_BODY_BYTES`].
    #[error("request body is larger than the {limit}-byte limit")]
    PayloadTooLarge { limit: usize },
    /// An admin endpoint was called without the right bearer token.
    #[error("this endpoint needs `Authorization: Bearer <admin token>`")]
    Unauthorized,
    /// No route matches the path.
    #[error("no endpoint {path}")]
    RouteNotFound { path: String },
    /// The path exists but not with this method.
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed { method: Method, path: String },
    /// The gateway refused or failed the request.
    #[error(transparent)]
    Gateway(GatewayFailure),
    /// No gateway is known, or every known one failed at the transport level.
    #[error("no gateway available")]
    NoGateway,
    /// The shopper made more cart requests a second than `--shopper-rate-limit` allows.
    #[error(transparent)]
    ShopperOverLimit(crate::shopper_limit::OverLimit),
    /// `?gateway=N` names no live gateway.
    #[error("no live gateway has id {id}")]
    UnknownGateway { id: u32 },
    /// A gateway answered with a reply that does not fit the request (a protocol bug).
    #[error("internal error: the gateway answered {request} with {reply}")]
    UnexpectedReply {
        request: &'static str,
        reply: &'static str,
    },
    /// The RPC layer failed in a way that is not the gateway's fault (a bug).
    #[error("internal error: {0}")]
    Rpc(RpcError),
    /// The request was not answered within the server's whole-request time limit
    /// (`--http-request-timeout-ms`); it may or may not have been applied.
    #[error("the request was not answered within {after:?}")]
    RequestTimeout { after: std::time::Duration },
}

impl ApiError {
    /// The status table: the one place that decides which status each failure gets.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidInput(_)
            | Self::MalformedJson { .. }
            | Self::NotJson
            | Self::UnreadableBody { .. }
            | Self::InvalidQuery { .. }
            | Self::InvalidHeader { .. } => StatusCode::BAD_REQUEST,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::ShopperOverLimit(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::RouteNotFound { .. } | Self::UnknownGateway { .. } => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::Gateway(failure) => gateway_failure_status(failure),
            Self::NoGateway | Self::RequestTimeout { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::UnexpectedReply { .. } | Self::Rpc(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The status of each gateway failure (part of the status table).
fn gateway_failure_status(failure: &GatewayFailure) -> StatusCode {
    match failure {
        GatewayFailure::UnknownProduct { .. }
        | GatewayFailure::NotInCart { .. }
        | GatewayFailure::UnknownDevice { .. } => StatusCode::NOT_FOUND,
        GatewayFailure::InvalidInput { .. } => StatusCode::BAD_REQUEST,
        GatewayFailure::MapChangeRefused { .. } => StatusCode::CONFLICT,
        GatewayFailure::ItemBusy { .. } => StatusCode::TOO_MANY_REQUESTS,
        GatewayFailure::QuorumNotReached { .. }
        | GatewayFailure::CoordinationUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        // `Internal`, and any failure a newer gateway adds that this build does not know.
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = self.to_string();
        if status.is_server_error() {
            tracing::warn!(%status, error = %message, "request failed");
        }
        let mut response = (status, Json(serde_json::json!({ "error": message }))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            // RFC 9110 asks a 401 to say which scheme it wants.
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<GatewayFailure> for ApiError {
    fn from(failure: GatewayFailure) -> Self {
        Self::Gateway(failure)
    }
}

impl From<PoolError> for ApiError {
    fn from(error: PoolError) -> Self {
        match error {
            PoolError::NoGateway => Self::NoGateway,
            PoolError::UnknownGateway { id } => Self::UnknownGateway { id },
            PoolError::Rpc(e) => Self::Rpc(e),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonDataError(e) => Self::MalformedJson {
                detail: source_text(&e),
            },
            JsonRejection::JsonSyntaxError(e) => Self::MalformedJson {
                detail: source_text(&e),
            },
            JsonRejection::MissingJsonContentType(_) => Self::NotJson,
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => Self::PayloadTooLarge {
                limit: MAX_BODY_BYTES,
            },
            other => Self::UnreadableBody {
                detail: other.body_text(),
            },
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        let detail = match &rejection {
            QueryRejection::FailedToDeserializeQueryString(e) => source_text(e),
            other => other.body_text(),
        };
        Self::InvalidQuery { detail }
    }
}

/// The underlying serde message of a rejection ("missing field `userid`"), without axum's
/// generic prefix ("Failed to deserialize the JSON body into the target type").
fn source_text(rejection: &dyn std::error::Error) -> String {
    rejection
        .source()
        .map_or_else(|| rejection.to_string(), ToString::to_string)
}

//! Request extractors whose rejections are [`ApiError`]s, so that a malformed body, query or
//! header gets the same JSON error shape and status table as every other failure.

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use cartdb_core::cart::validate_id;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON object body; rejections become 400 (or 413 for an oversize body).
///
/// Only an object is accepted: serde's derived structs would otherwise also accept an array
/// and fill the fields by position, so `["u1","pork"]` would be taken as an insert.
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let (parts, body) = request.into_parts();
        let bytes = Bytes::from_request(Request::from_parts(parts.clone(), body), state)
            .await
            .map_err(|e| ApiError::from(JsonRejection::from(e)))?;
        let is_array = bytes
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| *b == b'[');
        let rebuilt = Request::from_parts(parts, Body::from(bytes));
        let Json(value) = Json::<T>::from_request(rebuilt, state).await?;
        if is_array {
            return Err(ApiError::MalformedJson {
                detail: "the body must be a JSON object".to_owned(),
            });
        }
        Ok(Self(value))
    }
}

/// A query string; rejections (a missing or malformed parameter) become 400. Parameters the
/// target type does not name are ignored.
#[derive(Debug, Clone)]
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(value) = Query::<T>::from_request_parts(parts, state).await?;
        Ok(Self(value))
    }
}

/// The header a client may send so that its retries of an insert or delete are applied once.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The idempotency key of an insert or delete: the client's `Idempotency-Key` header, or a
/// random one made for this request. The same key goes with every failover attempt, so a
/// gateway that timed out but did apply the operation is not followed by a second apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(pub String);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let Some(value) = parts.headers.get(IDEMPOTENCY_KEY) else {
            return Ok(Self::random());
        };
        let key = value.to_str().map_err(|_| ApiError::InvalidHeader {
            header: "Idempotency-Key",
            problem: "must be visible ASCII".to_owned(),
        })?;
        validate_id("Idempotency-Key", key)?;
        Ok(Self(key.to_owned()))
    }
}

impl IdempotencyKey {
    /// A fresh key: 128 random bits, so two requests never share one by accident.
    pub fn random() -> Self {
        Self(format!("{:032x}", rand::random::<u128>()))
    }
}

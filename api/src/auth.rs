//! The admin check: when an admin token is configured (the API server refuses to start
//! without one unless `--insecure-open-admin`), admin endpoints need
//! `Authorization: Bearer <token>`.
//!
//! The token is compared as SHA-256 digests, byte by byte without an early exit, so neither
//! the position of the first wrong byte nor the token's length shows in the response time.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::routes::AppState;

/// The configured admin token, kept only as its digest.
#[derive(Clone)]
pub struct AdminToken {
    digest: [u8; 32],
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl AdminToken {
    pub fn new(token: &str) -> Self {
        Self {
            digest: Sha256::digest(token.as_bytes()).into(),
        }
    }

    /// Whether an `Authorization` header value presents this token as a bearer token.
    pub fn admits(&self, authorization: Option<&[u8]>) -> bool {
        let Some(presented) = authorization.and_then(bearer_token) else {
            return false;
        };
        let digest: [u8; 32] = Sha256::digest(presented).into();
        constant_time_eq(&digest, &self.digest)
    }
}

/// The credentials of `Bearer <credentials>`; the scheme is case-insensitive (RFC 9110).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| rest.trim_ascii())
        .filter(|token| !token.is_empty())
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Extractor guarding an admin endpoint: succeeds when no admin token is configured or the
/// request presents it; otherwise the request fails with 401 before its body is read.
#[derive(Debug, Clone, Copy)]
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(token) = state.admin_token() else {
            return Ok(Admin);
        };
        let header = parts.headers.get(AUTHORIZATION).map(|v| v.as_bytes());
        if token.admits(header) {
            Ok(Admin)
        } else {
            Err(ApiError::Unauthorized)
        }
    }
}

/// Extractor for endpoints that serve everyone but show admins more: whether the request
/// is an admin's (always, when no admin token is configured). Never rejects.
#[derive(Debug, Clone, Copy)]
pub struct IsAdmin(pub bool);

impl FromRequestParts<AppState> for IsAdmin {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, std::convert::Infallible> {
        Ok(Self(Admin::from_request_parts(parts, state).await.is_ok()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_right_bearer_token_is_admitted() {
        let token = AdminToken::new("s3cret");
        assert!(token.admits(Some(b"Bearer s3cret")));
        assert!(token.admits(Some(b"bearer s3cret")));
        assert!(!token.admits(Some(b"Bearer s3cret2")));
        assert!(!token.admits(Some(b"Bearer ")));
        assert!(!token.admits(Some(b"Basic s3cret")));
        assert!(!token.admits(Some(b"s3cret")));
        assert!(!token.admits(None));
    }
}

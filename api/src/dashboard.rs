//! The live cluster dashboard: `GET /dashboard` and its assets, static files compiled into
//! the binary (no build toolchain, nothing to install next to the server).
//!
//! The page holds no data. Its script reads the admin endpoints (`/api/cluster`, one
//! `/api/cluster?gateway=N` per gateway for their policy hashes, `/api/admin/traffic`,
//! `/readyz`) every two seconds with the admin token, which the operator gives in the
//! address's fragment (`/dashboard#token=...`, never sent to the server or written to its
//! logs) or in the page's form; the page keeps it in the tab's session storage. A browser
//! cannot attach a bearer token to a page navigation, so the page itself is served to
//! anyone and every piece of data on it is admin-only.
//!
//! The charts use uPlot (MIT), vendored in `api/dashboard/vendor/uplot` with its licence;
//! the version and checksum are in `api/dashboard/vendor/uplot/VERSION`.

use axum::extract::Path;
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// Only this server's own files: no inline script or style, no other origin.
const POLICY: &str = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'";

/// The files under `/dashboard/`, with their media types.
const ASSETS: [(&str, &str, &str); 4] = [
    (
        "dashboard.js",
        "text/javascript; charset=utf-8",
        include_str!("../dashboard/dashboard.js"),
    ),
    (
        "dashboard.css",
        "text/css; charset=utf-8",
        include_str!("../dashboard/dashboard.css"),
    ),
    (
        "uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_str!("../dashboard/vendor/uplot/uPlot.iife.min.js"),
    ),
    (
        "uPlot.min.css",
        "text/css; charset=utf-8",
        include_str!("../dashboard/vendor/uplot/uPlot.min.css"),
    ),
];

/// `GET /dashboard`: the page.
pub async fn page() -> Response {
    serve(
        "text/html; charset=utf-8",
        include_str!("../dashboard/index.html"),
    )
}

/// `GET /dashboard/{file}`: one of the page's scripts or style sheets.
///
/// # Errors
/// [`ApiError::RouteNotFound`] for any other name.
pub async fn asset(Path(file): Path<String>) -> Result<Response, ApiError> {
    ASSETS
        .iter()
        .find(|(name, _, _)| *name == file)
        .map(|(_, media_type, body)| serve(media_type, body))
        .ok_or_else(|| ApiError::RouteNotFound {
            path: format!("/dashboard/{file}"),
        })
}

fn serve(media_type: &'static str, body: &'static str) -> Response {
    (
        [
            (CONTENT_TYPE, media_type),
            (CONTENT_SECURITY_POLICY, POLICY),
            // The files change only with the binary; revalidating is cheap and an upgraded
            // server's page is never mixed with a cached old script.
            (CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

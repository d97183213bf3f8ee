//! Admin endpoints need the bearer token when one is configured, and are open otherwise.
#![allow(clippy::unwrap_used)]

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::{error_of, healthy_app, send};

const TOKEN: &str = "s3cret";
const PRODUCT: &str = r#"{"productid":"9","name":"tea","category":"2","price":5}"#;

fn list_category(authorization: Option<&str>) -> Request<Body> {
    let mut request = Request::get("/api/list_category?category=1");
    if let Some(value) = authorization {
        request = request.header(header::AUTHORIZATION, value);
    }
    request.body(Body::empty()).unwrap()
}

fn upsert(authorization: Option<&str>, body: &str) -> Request<Body> {
    let mut request =
        Request::post("/api/products").header(header::CONTENT_TYPE, "application/json");
    if let Some(value) = authorization {
        request = request.header(header::AUTHORIZATION, value);
    }
    request.body(Body::from(body.to_owned())).unwrap()
}

/// Without the right token, admin endpoints are 401 JSON with `WWW-Authenticate: Bearer`,
/// and nothing reaches the gateway.
#[tokio::test]
async fn admin_endpoints_refuse_a_missing_or_wrong_token() {
    let (app, gateway) = healthy_app(Some(TOKEN)).await;
    let wrong = [
        None,
        Some("Bearer nope"),
        Some("Bearer s3cret2"),
        Some("Basic s3cret"),
        Some("s3cret"),
    ];
    for authorization in wrong {
        for request in [list_category(authorization), upsert(authorization, PRODUCT)] {
            let response = tower::ServiceExt::oneshot(app.clone(), request)
                .await
                .unwrap();
            assert_eq!(
                response.headers().get(header::WWW_AUTHENTICATE).unwrap(),
                "Bearer"
            );
        }
        let (status, body) = send(&app, list_category(authorization)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{authorization:?}");
        assert!(error_of(&body).contains("Bearer"));
        // The token is checked before the body, so even a bad body gets 401.
        let (status, _) = send(&app, upsert(authorization, "{not json")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{authorization:?}");
    }
    assert!(gateway.seen().is_empty());
}

/// The right token is admitted; public endpoints need none.
#[tokio::test]
async fn the_right_token_is_admitted() {
    let (app, _gateway) = healthy_app(Some(TOKEN)).await;
    let (status, _) = send(&app, list_category(Some("Bearer s3cret"))).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = send(&app, upsert(Some("bearer s3cret"), PRODUCT)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = send(&app, common::get("/api/products")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = send(&app, common::get("/api/list_all?userid=u")).await;
    assert_eq!(status, StatusCode::OK);
}

/// With no admin token configured, admin endpoints are open.
#[tokio::test]
async fn without_a_configured_token_admin_endpoints_are_open() {
    let (app, _gateway) = healthy_app(None).await;
    let (status, _) = send(&app, list_category(None)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = send(&app, upsert(Some("Bearer anything"), PRODUCT)).await;
    assert_eq!(status, StatusCode::OK);
}

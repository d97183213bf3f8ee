//! Bad input is refused with a 4xx and a JSON message naming the problem, on every
//! endpoint, before any gateway is asked.
#![allow(clippy::unwrap_used)]

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::{error_of, get, healthy_app, post_json, send};

const JSON_ENDPOINTS: [&str; 3] = ["/api/insert", "/api/delete", "/api/products"];

async fn expect(request: Request<Body>, status: StatusCode, needle: &str) {
    let (app, gateway) = healthy_app(None).await;
    let (got, body) = send(&app, request).await;
    assert_eq!(got, status, "{body}");
    let message = error_of(&body);
    assert!(
        message.contains(needle),
        "{message:?} does not mention {needle:?}"
    );
    assert!(gateway.seen().is_empty(), "bad input reached the gateway");
}

/// Malformed JSON is 400 on every JSON endpoint.
#[tokio::test]
async fn malformed_json_is_400() {
    for uri in JSON_ENDPOINTS {
        expect(
            post_json(uri, "{\"userid\":"),
            StatusCode::BAD_REQUEST,
            "invalid JSON body",
        )
        .await;
        expect(
            post_json(uri, "[1,2]"),
            StatusCode::BAD_REQUEST,
            "invalid JSON body",
        )
        .await;
    }
}

/// An array whose items would fill the fields by position is still not an object: 400.
#[tokio::test]
async fn positional_arrays_are_400() {
    for (uri, body) in [
        ("/api/insert", r#"["u1","pork"]"#),
        ("/api/delete", r#"["u1","pork"]"#),
        ("/api/products", r#"["778","dates","4",5]"#),
    ] {
        expect(
            post_json(uri, body),
            StatusCode::BAD_REQUEST,
            "must be a JSON object",
        )
        .await;
    }
}

/// A body that is not declared as JSON is 400, not axum's 415 plain text.
#[tokio::test]
async fn wrong_content_type_is_400() {
    for uri in JSON_ENDPOINTS {
        let request = Request::post(uri)
            .header(header::CONTENT_TYPE, "text/plain")
            .body(Body::from(r#"{"userid":"u","item_name":"pork"}"#))
            .unwrap();
        expect(
            request,
            StatusCode::BAD_REQUEST,
            "Content-Type: application/json",
        )
        .await;
        let request = Request::post(uri).body(Body::empty()).unwrap();
        expect(
            request,
            StatusCode::BAD_REQUEST,
            "Content-Type: application/json",
        )
        .await;
    }
}

/// Missing, empty, wrongly typed and oversize fields are 400 naming the field.
#[tokio::test]
async fn bad_cart_fields_are_400_naming_the_field() {
    let long = "x".repeat(257);
    let cases = [
        (r#"{"item_name":"pork"}"#.to_owned(), "userid"),
        (r#"{"userid":"u"}"#.to_owned(), "item_name"),
        (
            r#"{"userid":"","item_name":"pork"}"#.to_owned(),
            "userid: must not be empty",
        ),
        (
            r#"{"userid":"u","item_name":""}"#.to_owned(),
            "item_name: must not be empty",
        ),
        (r#"{"userid":5,"item_name":"pork"}"#.to_owned(), "userid"),
        (
            r#"{"userid":"a/b","item_name":"pork"}"#.to_owned(),
            "userid: must not contain",
        ),
        (
            format!(r#"{{"userid":"{long}","item_name":"pork"}}"#),
            "userid: is 257 bytes",
        ),
        (
            format!(r#"{{"userid":"u","item_name":"{long}"}}"#),
            "item_name: is 257 bytes",
        ),
    ];
    for uri in ["/api/insert", "/api/delete"] {
        for (body, needle) in &cases {
            expect(post_json(uri, body), StatusCode::BAD_REQUEST, needle).await;
        }
    }
}

/// A product with a missing, empty or mistyped field is 400 naming the field.
#[tokio::test]
async fn bad_products_are_400_naming_the_field() {
    let cases = [
        (r#"{"name":"pork","category":"1","price":61}"#, "productid"),
        (
            r#"{"productid":"1","name":"","category":"1","price":61}"#,
            "name: must not be empty",
        ),
        (
            r#"{"productid":"1","name":"pork","category":"","price":61}"#,
            "category: must not be empty",
        ),
        (
            r#"{"productid":"1","name":"pork","category":"1","price":-1}"#,
            "price",
        ),
        (r#"{"productid":"1","name":"pork","category":"1"}"#, "price"),
    ];
    for (body, needle) in cases {
        expect(
            post_json("/api/products", body),
            StatusCode::BAD_REQUEST,
            needle,
        )
        .await;
    }
}

/// A missing or empty required query parameter is 400 naming it; unknown ones are fine.
#[tokio::test]
async fn query_parameters_are_checked() {
    expect(get("/api/list_all"), StatusCode::BAD_REQUEST, "userid").await;
    expect(
        get("/api/list_all?user=u"),
        StatusCode::BAD_REQUEST,
        "userid",
    )
    .await;
    expect(
        get("/api/list_all?userid="),
        StatusCode::BAD_REQUEST,
        "userid: must not be empty",
    )
    .await;
    let long = "x".repeat(257);
    expect(
        get(&format!("/api/list_all?userid={long}")),
        StatusCode::BAD_REQUEST,
        "257 bytes",
    )
    .await;
    expect(
        get("/api/list_category"),
        StatusCode::BAD_REQUEST,
        "category",
    )
    .await;
    expect(
        get("/api/list_category?category="),
        StatusCode::BAD_REQUEST,
        "category: must not be empty",
    )
    .await;

    let (app, _gateway) = healthy_app(None).await;
    let (status, _) = send(&app, get("/api/list_all?userid=u&page=2")).await;
    assert_eq!(status, StatusCode::OK);
}

/// A body over 64 KiB is 413 on every JSON endpoint, whether or not it declares its length.
#[tokio::test]
async fn oversize_bodies_are_413() {
    let big = format!(
        r#"{{"userid":"{}","item_name":"pork"}}"#,
        "x".repeat(70 * 1024)
    );
    for uri in JSON_ENDPOINTS {
        expect(
            post_json(uri, &big),
            StatusCode::PAYLOAD_TOO_LARGE,
            "65536-byte limit",
        )
        .await;
        let request = Request::post(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .body(chunked(big.as_bytes()))
            .unwrap();
        expect(request, StatusCode::PAYLOAD_TOO_LARGE, "65536-byte limit").await;
    }
}

/// A body without a declared length (as chunked transfer encoding sends it).
fn chunked(bytes: &[u8]) -> Body {
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        bytes.chunks(4096).map(|c| Ok(c.to_vec())).collect();
    Body::from_stream(futures::stream::iter(chunks))
}

/// An unusable Idempotency-Key header is 400.
#[tokio::test]
async fn bad_idempotency_keys_are_400() {
    let long = "k".repeat(257);
    for key in ["", long.as_str(), "a/b"] {
        let request = Request::post("/api/insert")
            .header(header::CONTENT_TYPE, "application/json")
            .header("idempotency-key", key)
            .body(Body::from(r#"{"userid":"u","item_name":"pork"}"#))
            .unwrap();
        expect(request, StatusCode::BAD_REQUEST, "Idempotency-Key").await;
    }
}

/// Unknown paths are 404 and wrong methods 405, both JSON; 405 keeps its Allow header.
#[tokio::test]
async fn unknown_routes_and_methods_are_json() {
    expect(
        get("/api/nope"),
        StatusCode::NOT_FOUND,
        "no endpoint /api/nope",
    )
    .await;
    expect(
        get("/api/insert"),
        StatusCode::METHOD_NOT_ALLOWED,
        "method GET is not allowed on /api/insert",
    )
    .await;
    expect(
        post_json("/healthz", "{}"),
        StatusCode::METHOD_NOT_ALLOWED,
        "POST",
    )
    .await;
    let (app, _gateway) = healthy_app(None).await;
    let response = tower::ServiceExt::oneshot(app, get("/api/insert"))
        .await
        .unwrap();
    assert_eq!(response.headers().get(header::ALLOW).unwrap(), "POST");
}

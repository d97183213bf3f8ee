//! Every gateway answer maps to the documented status and JSON body.
#![allow(clippy::unwrap_used)]

mod common;

use axum::http::{Request, StatusCode};
use common::{Behaviour, Failure, app, error_of, get, healthy_app, post_json, send, spawn_gateway};
use serde_json::json;

const INSERT: &str = r#"{"userid":"user1","item_name":"pork"}"#;

/// Successful answers have the seed's shapes.
#[tokio::test]
async fn successes_have_the_documented_shapes() {
    let (app, _gateway) = healthy_app(None).await;
    let (status, body) = send(&app, post_json("/api/insert", INSERT)).await;
    assert_eq!(
        (status, body),
        (
            StatusCode::OK,
            json!({"message": "inserted into cart", "qty": 2})
        )
    );
    let (status, body) = send(&app, post_json("/api/delete", INSERT)).await;
    assert_eq!(
        (status, body),
        (
            StatusCode::OK,
            json!({"message": "deleted from cart", "qty": 1})
        )
    );
    let (status, body) = send(&app, get("/api/list_all?userid=user1")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"userid": "user1", "response": [
            {"name": "pork", "productid": "1", "price": 61, "category": "1", "qty": 2}
        ]})
    );
    let (status, body) = send(&app, get("/api/list_category?category=1")).await;
    assert_eq!(
        (status, body),
        (
            StatusCode::OK,
            json!({"category": "1", "users": ["user1", "user2"], "next": null})
        )
    );
}

/// The catalog can be read and extended; the upsert answers with the product.
#[tokio::test]
async fn products_are_listed_and_upserted() {
    let (app, gateway) = healthy_app(None).await;
    let pork = json!({"productid": "1", "name": "pork", "category": "1", "price": 61});
    let (status, body) = send(&app, get("/api/products")).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"products": [pork.clone()]}))
    );
    let (status, body) = send(&app, post_json("/api/products", &pork.to_string())).await;
    assert_eq!((status, body), (StatusCode::OK, pork));
    assert!(gateway.seen().iter().any(|r| matches!(
        r,
        cartdb_core::wire::GatewayRequest::UpsertProduct { product } if *product == common::product()
    )));
}

/// Health reflects whether any gateway is known; cluster adds the API's own view.
#[tokio::test]
async fn health_and_cluster() {
    let (app, _gateway) = healthy_app(None).await;
    let (status, body) = send(&app, get("/healthz")).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"status": "ok", "gateways": 1}))
    );
    let (status, body) = send(&app, get("/api/cluster")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["map_epoch"], 7);
    assert_eq!(body["api"]["answered_by"], 1);
    assert_eq!(body["api"]["gateways"][0]["id"], 1);

    let empty = app_without_gateways();
    let (status, body) = send(&empty, get("/healthz")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_of(&body), "no gateway available");
}

fn app_without_gateways() -> axum::Router {
    app(&[], None)
}

/// With no gateway known, every gateway-backed endpoint is 503 "no gateway available".
#[tokio::test]
async fn no_gateway_is_503() {
    let app = app_without_gateways();
    for request in [
        post_json("/api/insert", INSERT),
        post_json("/api/delete", INSERT),
        get("/api/list_all?userid=u"),
        get("/api/list_category?category=c"),
        get("/api/products"),
        get("/api/cluster"),
    ] {
        let (status, body) = send(&app, request).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(error_of(&body), "no gateway available");
    }
}

/// Each gateway failure gets the status of the table, with its message.
#[tokio::test]
async fn gateway_failures_follow_the_status_table() {
    let table = [
        (
            Failure::UnknownProduct,
            StatusCode::NOT_FOUND,
            "product not available in inventory",
        ),
        (
            Failure::NotInCart,
            StatusCode::NOT_FOUND,
            "product is not available in cart",
        ),
        (
            Failure::InvalidInput,
            StatusCode::BAD_REQUEST,
            "userid: is odd",
        ),
        (
            Failure::QuorumNotReached,
            StatusCode::SERVICE_UNAVAILABLE,
            "insert reached 1 of the 2 replicas it needs: device 3 timed out",
        ),
        (
            Failure::CoordinationUnavailable,
            StatusCode::SERVICE_UNAVAILABLE,
            "coordination unavailable: session expired",
        ),
        (
            Failure::Internal,
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error: a bug",
        ),
    ];
    for (failure, expected_status, expected_message) in table {
        let (_gateway, addr) = spawn_gateway(1, Behaviour::Fail(failure)).await;
        let app = app(&[&addr], None);
        let (status, body) = send(&app, post_json("/api/insert", INSERT)).await;
        assert_eq!(status, expected_status, "{failure:?}");
        assert_eq!(error_of(&body), expected_message, "{failure:?}");
    }
}

/// A delete of an item that is not in the cart is the seed's 404.
#[tokio::test]
async fn deleting_what_is_not_in_the_cart_is_404() {
    let (_gateway, addr) = spawn_gateway(1, Behaviour::Fail(Failure::NotInCart)).await;
    let (status, body) = send(&app(&[&addr], None), post_json("/api/delete", INSERT)).await;
    assert_eq!(
        (status, body),
        (
            StatusCode::NOT_FOUND,
            json!({"error": "product is not available in cart"})
        )
    );
}

/// `/readyz` is 200 with a gateway answering and every PG writable; 503 naming what is
/// missing otherwise: no gateway, or no ZooKeeper session.
#[tokio::test]
async fn readiness_names_what_is_missing() {
    let (ready, _gateway) = healthy_app(None).await;
    let (status, body) = send(&ready, get("/readyz")).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ready"})));

    let (status, body) = send(&app_without_gateways(), get("/readyz")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        error_of(&body).contains("gateways: no gateway available"),
        "{body}"
    );

    let (gateway, addr) = common::spawn_gateway(1, common::Behaviour::Succeed).await;
    let pool = std::sync::Arc::new(cartdb_api::GatewayPool::new(
        common::cluster_key(),
        common::TIMEOUT,
    ));
    pool.set_members(&std::collections::BTreeMap::from([(1, addr)]));
    let disconnected = cartdb_api::router(
        cartdb_api::AppState::new(pool, None).with_session_probe(std::sync::Arc::new(|| false)),
    );
    let (status, body) = send(&disconnected, get("/readyz")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(error_of(&body).contains("ZooKeeper"), "{body}");
    assert_eq!(body["missing"].as_array().map(Vec::len), Some(1), "{body}");
    drop(gateway);
}

/// With an admin token, `/api/cluster` answers everyone but shows the internal addresses
/// only to admin requests.
#[tokio::test]
async fn internal_addresses_are_for_admins() {
    let (app, _gateway) = healthy_app(Some("secret")).await;
    let (status, body) = send(&app, get("/api/cluster")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["gateways"][0]["address"], "", "{body}");
    assert_eq!(body["api"]["gateways"][0]["address"], "", "{body}");
    let admin = Request::builder()
        .uri("/api/cluster")
        .header("authorization", "Bearer secret")
        .body(axum::body::Body::empty())
        .unwrap();
    let (status, body) = send(&app, admin).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["gateways"][0]["address"], "fake", "{body}");
}

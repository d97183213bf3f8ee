//! Requests go to a random live gateway and fail over to another on transport failures,
//! with one idempotency key across the attempts; the cluster status goes to the smallest-id
//! gateway first.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use cartdb_core::wire::GatewayRequest;
use common::{Behaviour, Failure, app, dead_address, error_of, post_json, send, spawn_gateway};

const INSERT: &str = r#"{"userid":"user1","item_name":"pork"}"#;

fn keys_of(requests: &[GatewayRequest]) -> Vec<String> {
    requests
        .iter()
        .filter_map(|r| match r {
            GatewayRequest::Insert {
                idempotency_key, ..
            }
            | GatewayRequest::Delete {
                idempotency_key, ..
            } => idempotency_key.clone(),
            _ => None,
        })
        .collect()
}

/// With the first gateway down (connection refused), every request is served by the other.
#[tokio::test]
async fn a_refused_gateway_fails_over_to_the_live_one() {
    let dead = dead_address().await;
    let (live, addr) = spawn_gateway(2, Behaviour::Succeed).await;
    let app = app(&[&dead, &addr], None);
    for _ in 0..20 {
        let (status, _) = send(&app, post_json("/api/insert", INSERT)).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(live.seen().len(), 20);
}

/// A hung gateway times out and the request is retried elsewhere with the same key, so the
/// gateway can recognise the retry.
#[tokio::test]
async fn a_timed_out_attempt_is_retried_with_the_same_idempotency_key() {
    let (hung, hung_addr) = spawn_gateway(1, Behaviour::Hang).await;
    let (live, live_addr) = spawn_gateway(2, Behaviour::Succeed).await;
    let app = app(&[&hung_addr, &live_addr], None);
    for _ in 0..12 {
        let (status, _) = send(&app, post_json("/api/delete", INSERT)).await;
        assert_eq!(status, StatusCode::OK);
    }
    let hung_keys = keys_of(&hung.seen());
    let live_keys: BTreeSet<String> = keys_of(&live.seen()).into_iter().collect();
    assert_eq!(live_keys.len(), 12, "every request carries its own key");
    assert!(
        !hung_keys.is_empty(),
        "the hung gateway was never chosen first"
    );
    for key in hung_keys {
        assert!(live_keys.contains(&key), "retry of {key} used another key");
    }
}

/// A client's Idempotency-Key header is passed to the gateway unchanged.
#[tokio::test]
async fn the_clients_idempotency_key_is_passed_on() {
    let (gateway, addr) = spawn_gateway(1, Behaviour::Succeed).await;
    let app = app(&[&addr], None);
    let request = Request::post("/api/insert")
        .header(header::CONTENT_TYPE, "application/json")
        .header("Idempotency-Key", "order-42")
        .body(Body::from(INSERT))
        .unwrap();
    let (status, _) = send(&app, request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(keys_of(&gateway.seen()), ["order-42"]);
}

/// When no gateway can be reached, the answer is 503 "no gateway available".
#[tokio::test]
async fn all_gateways_down_is_503() {
    let app = app(&[&dead_address().await, &dead_address().await], None);
    let (status, body) = send(&app, post_json("/api/insert", INSERT)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_of(&body), "no gateway available");
}

/// A gateway that answers with a failure has decided: the request is not repeated elsewhere.
#[tokio::test]
async fn a_gateway_failure_is_not_failed_over() {
    let (first, first_addr) = spawn_gateway(1, Behaviour::Fail(Failure::QuorumNotReached)).await;
    let (second, second_addr) = spawn_gateway(2, Behaviour::Fail(Failure::QuorumNotReached)).await;
    let app = app(&[&first_addr, &second_addr], None);
    for _ in 0..10 {
        let (status, _) = send(&app, post_json("/api/insert", INSERT)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(first.seen().len() + second.seen().len(), 10);
}

/// Both live gateways get a share of the requests (the seed's 50:50).
#[tokio::test]
async fn requests_are_spread_over_the_gateways() {
    let (first, first_addr) = spawn_gateway(1, Behaviour::Succeed).await;
    let (second, second_addr) = spawn_gateway(2, Behaviour::Succeed).await;
    let app = app(&[&first_addr, &second_addr], None);
    for _ in 0..200 {
        let (status, _) = send(&app, common::get("/api/list_all?userid=u")).await;
        assert_eq!(status, StatusCode::OK);
    }
    let (a, b) = (first.seen().len(), second.seen().len());
    assert_eq!(a + b, 200);
    // Binomial(200, 0.5): outside 60..=140 with probability below 1e-8.
    assert!((60..=140).contains(&a), "split {a}:{b}");
}

/// `GET /api/cluster` asks the smallest-id gateway (the anti-entropy leader, whose answer
/// carries the sweep's progress) every time, and the next one only when it is down.
#[tokio::test]
async fn the_cluster_status_asks_the_smallest_gateway_first() {
    let (first, first_addr) = spawn_gateway(1, Behaviour::Succeed).await;
    let (second, second_addr) = spawn_gateway(2, Behaviour::Succeed).await;
    let both = app(&[&first_addr, &second_addr], None);
    for _ in 0..10 {
        let (status, body) = send(&both, common::get("/api/cluster")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["api"]["answered_by"], 1);
    }
    // Every gateway is also asked which policies it runs; the status itself comes from 1.
    let asked = |gateway: &common::FakeGateway| {
        gateway
            .seen()
            .iter()
            .filter(|r| matches!(r, GatewayRequest::Cluster))
            .count()
    };
    assert_eq!((asked(&first), asked(&second)), (10, 0));
    assert_eq!(
        second.seen().len(),
        10,
        "second asked only for its policies"
    );

    let dead = dead_address().await;
    let (status, body) = send(&both, common::get("/api/cluster?gateway=2")).await;
    assert_eq!(
        (status, body["api"]["answered_by"].clone()),
        (StatusCode::OK, 2.into())
    );
    // No such gateway is the client's mistake, not an outage.
    let (status, body) = send(&both, common::get("/api/cluster?gateway=9")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"], "no live gateway has id 9");

    let first_down = app(&[&dead, &second_addr], None);
    let (status, body) = send(&first_down, common::get("/api/cluster")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["api"]["answered_by"], 2);
}

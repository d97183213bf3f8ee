//! Shared test fixtures: fake gateways served over the real RPC layer on loopback ports, and
//! a router over them, driven in-process through `tower::ServiceExt::oneshot`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use cartdb_api::{AppState, GatewayPool, router};
use cartdb_core::cart::{CartLine, Product};
use cartdb_core::rpc::{ClusterKey, Service, serve};
use cartdb_core::wire::{
    ClusterStatus, GatewayFailure, GatewayRequest, GatewayResponse, PolicyInfo, ReplicationInfo,
    ServiceKind,
};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// How a fake gateway answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Plausible successful answers (see [`success`]).
    Succeed,
    /// Every request fails with this gateway failure.
    Fail(Failure),
    /// Never answers (a hung gateway).
    Hang,
}

/// The gateway failures, by kind (`GatewayFailure` itself is not `Copy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    UnknownProduct,
    NotInCart,
    InvalidInput,
    QuorumNotReached,
    CoordinationUnavailable,
    Internal,
}

impl Failure {
    pub fn to_wire(self) -> GatewayFailure {
        match self {
            Failure::UnknownProduct => GatewayFailure::UnknownProduct { name: "x".into() },
            Failure::NotInCart => GatewayFailure::NotInCart { name: "x".into() },
            Failure::InvalidInput => GatewayFailure::InvalidInput {
                field: "userid".into(),
                problem: "is odd".into(),
            },
            Failure::QuorumNotReached => GatewayFailure::QuorumNotReached {
                operation: "insert".into(),
                required: 2,
                acked: 1,
                errors: "device 3 timed out".into(),
            },
            Failure::CoordinationUnavailable => GatewayFailure::CoordinationUnavailable {
                detail: "session expired".into(),
            },
            Failure::Internal => GatewayFailure::Internal {
                detail: "a bug".into(),
            },
        }
    }
}

/// A gateway that records every request it receives and answers per its behaviour.
pub struct FakeGateway {
    pub id: u32,
    pub behaviour: Behaviour,
    pub seen: Mutex<Vec<GatewayRequest>>,
}

impl FakeGateway {
    pub fn seen(&self) -> Vec<GatewayRequest> {
        self.seen.lock().unwrap().clone()
    }
}

impl Service for FakeGateway {
    type Request = GatewayRequest;
    type Response = GatewayResponse;
    const KIND: ServiceKind = ServiceKind::Gateway;

    fn request_name(request: &GatewayRequest) -> &'static str {
        request.name()
    }

    async fn call(self: Arc<Self>, request: GatewayRequest) -> GatewayResponse {
        self.seen.lock().unwrap().push(request.clone());
        match self.behaviour {
            Behaviour::Succeed => success(self.id, &request),
            Behaviour::Fail(failure) => GatewayResponse::Failed(failure.to_wire()),
            Behaviour::Hang => std::future::pending().await,
        }
    }
}

pub fn product() -> Product {
    Product {
        productid: "1".into(),
        name: "pork".into(),
        category: "1".into(),
        price: 61,
    }
}

/// A well-formed success reply to `request`.
pub fn success(gateway: u32, request: &GatewayRequest) -> GatewayResponse {
    match request {
        GatewayRequest::Insert { .. } => GatewayResponse::Updated { qty: 2 },
        GatewayRequest::Delete { .. } => GatewayResponse::Updated { qty: 1 },
        GatewayRequest::ListAll { .. } => GatewayResponse::Cart {
            items: vec![CartLine {
                name: "pork".into(),
                productid: "1".into(),
                price: 61,
                category: "1".into(),
                qty: 2,
            }],
        },
        GatewayRequest::ListCategory { .. } => GatewayResponse::CategoryUsers {
            users: vec!["user1".into(), "user2".into()],
            next: None,
        },
        GatewayRequest::Products | GatewayRequest::UpsertProduct { .. } => {
            GatewayResponse::Products {
                products: vec![product()],
            }
        }
        GatewayRequest::Cluster => GatewayResponse::Cluster(Box::new(ClusterStatus {
            devices: vec![],
            gateways: vec![cartdb_core::wire::GatewayInfo {
                id: gateway,
                address: "fake".into(),
                metrics: None,
            }],
            map_epoch: 7,
            placement_policy: PolicyInfo {
                name: "crush".into(),
                sha256: "00".into(),
            },
            replication: ReplicationInfo {
                replicas: 3,
                write_quorum: 2,
                read_quorum: 2,
            },
            maintenance: cartdb_core::wire::MaintenanceStatus::default(),
            placement_groups: cartdb_core::wire::PgStatus::default(),
            flags: vec![],
            policies: cartdb_core::wire::ActivePolicies::default(),
        })),
        GatewayRequest::Replicas { .. } => GatewayResponse::Replicas { replicas: vec![] },
        GatewayRequest::Locate { .. } => GatewayResponse::Located { items: vec![] },
        GatewayRequest::DeviceItems { .. } => GatewayResponse::DeviceItems {
            items: vec![],
            next: None,
        },
        GatewayRequest::PreviewMap { .. } | GatewayRequest::ChangeMap { .. } => {
            GatewayResponse::MapPreview(Box::default())
        }
        GatewayRequest::Pgs => GatewayResponse::Pgs {
            epoch: 7,
            pgs: vec![],
        },
        GatewayRequest::StorePolicy { .. } => GatewayResponse::PolicyStored {
            sha256: "0".repeat(64),
        },
        GatewayRequest::VerifyPolicy { kind, sha256 } => {
            GatewayResponse::PolicyVerified(Box::new(cartdb_core::wire::PolicyVerdict {
                gateway,
                kind: *kind,
                sha256: sha256.clone(),
                name: "fake".into(),
                refused: None,
                checked: "nothing".into(),
                preview: None,
            }))
        }
        GatewayRequest::Policies => {
            GatewayResponse::Policies(Box::new(cartdb_core::wire::PolicyStatus {
                gateway,
                epoch: 7,
                named: cartdb_core::wire::ActivePolicies::default(),
                running: cartdb_core::wire::RunningPolicies {
                    placement: PolicyInfo {
                        name: "crush".into(),
                        sha256: String::new(),
                    },
                    merge: None,
                },
                history: vec![],
            }))
        }
    }
}

/// The cluster secret the fake gateways and the routers' pools share.
pub fn cluster_key() -> ClusterKey {
    ClusterKey::new(b"api-test-cluster-secret", "test").unwrap()
}

/// A fake gateway served on a free loopback port until the test ends.
pub async fn spawn_gateway(id: u32, behaviour: Behaviour) -> (Arc<FakeGateway>, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let gateway = Arc::new(FakeGateway {
        id,
        behaviour,
        seen: Mutex::default(),
    });
    tokio::spawn(serve(
        listener,
        gateway.clone(),
        cluster_key(),
        CancellationToken::new(),
    ));
    (gateway, addr)
}

/// An address where nothing listens (connections are refused).
pub async fn dead_address() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().to_string()
}

/// The per-gateway time-out the test routers use: short, so time-out tests are quick.
pub const TIMEOUT: Duration = Duration::from_millis(300);

/// A router over the gateways at `addrs` (gateway ids 1, 2, ...).
pub fn app(addrs: &[&str], admin_token: Option<&str>) -> Router {
    let pool = Arc::new(GatewayPool::new(cluster_key(), TIMEOUT));
    let members: BTreeMap<u32, String> = (1..)
        .zip(addrs)
        .map(|(id, addr)| (id, (*addr).to_owned()))
        .collect();
    pool.set_members(&members);
    router(AppState::new(pool, admin_token))
}

/// A router over one succeeding fake gateway.
pub async fn healthy_app(admin_token: Option<&str>) -> (Router, Arc<FakeGateway>) {
    let (gateway, addr) = spawn_gateway(1, Behaviour::Succeed).await;
    (app(&[&addr], admin_token), gateway)
}

/// A response's status and JSON body. Panics when the body is not JSON: every answer of
/// the API, errors included, must be JSON.
pub async fn send(app: &Router, request: Request<Body>) -> (StatusCode, Value) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "{status}: body is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&bytes)
        )
    });
    assert_eq!(
        content_type.as_ref().and_then(|v| v.to_str().ok()),
        Some("application/json"),
        "{status} {body}"
    );
    (status, body)
}

pub fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

pub fn post_json(uri: &str, body: &str) -> Request<Body> {
    Request::post(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap()
}

/// The `error` message of an error body.
pub fn error_of(body: &Value) -> &str {
    body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no \"error\" string in {body}"))
}

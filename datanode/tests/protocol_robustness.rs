//! Protocol robustness: a peer that sends garbage, an oversize length prefix or an
//! undecodable request has its connection closed, and the node keeps serving proper clients.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use cartdb_core::cart::{ItemKey, OpKind};
use cartdb_core::pg::Pool;
use cartdb_core::placement_key::placement_key;
use cartdb_core::rpc::secret::Side;
use cartdb_core::rpc::{ClusterKey, Hello, RpcClient, serve};
use cartdb_core::version::Version;
use cartdb_core::wire::{DataCall, DataRequest, DataResponse, ServiceKind};
use cartdb_datanode::group_commit::{GroupCommitSettings, Timing};
use cartdb_datanode::service::DataNodeService;
use common::op;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

type Client = RpcClient<DataCall, DataResponse>;

const TIMEOUT: Duration = Duration::from_secs(10);

async fn start_node(
    dir: &std::path::Path,
) -> (
    String,
    Arc<DataNodeService>,
    CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let settings = GroupCommitSettings {
        device: common::DEVICE,
        max_batch: 64,
        timing: Timing::ANY_AGE,
    };
    let service = DataNodeService::open(dir, settings).await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn({
        let (service, shutdown) = (service.clone(), shutdown.clone());
        async move { serve(listener, service, key(), shutdown).await.unwrap() }
    });
    (addr, service, shutdown, server)
}

/// `request` as a call placed with map epoch 0: the node has no map (no ZooKeeper here),
/// and serves only that epoch.
fn fenced(request: &DataRequest) -> DataCall {
    DataCall {
        epoch: 0,
        request: request.clone(),
    }
}

fn apply(id: u128, kind: OpKind) -> DataRequest {
    let request = op("u1", "p1", "fruit", id, kind, u64::try_from(id).unwrap());
    DataRequest::Apply {
        key: request.key,
        meta: request.meta,
        op: request.op,
        require_in_cart: request.require_in_cart,
        restamped: false,
    }
}

async fn write_frame(stream: &mut TcpStream, body: &[u8]) {
    stream
        .write_u32(u32::try_from(body.len()).unwrap())
        .await
        .unwrap();
    stream.write_all(body).await.unwrap();
}

/// Connects raw and completes the hello, as a well-behaved client would.
async fn raw_after_hello(addr: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let ours = Hello::new(ServiceKind::DataNode);
    write_frame(&mut stream, &postcard::to_stdvec(&ours).unwrap()).await;
    let theirs: Hello = postcard::from_bytes(&read_frame(&mut stream).await).unwrap();
    let proof = key().proof(
        Side::Client,
        ours.service,
        ours.protocol,
        &ours.nonce,
        &theirs.nonce,
    );
    write_frame(&mut stream, &proof).await;
    let _server_proof = read_frame(&mut stream).await;
    stream
}

async fn read_frame(stream: &mut TcpStream) -> Vec<u8> {
    let len = stream.read_u32().await.unwrap();
    let mut frame = vec![0; usize::try_from(len).unwrap()];
    stream.read_exact(&mut frame).await.unwrap();
    frame
}

/// The cluster secret of the node under test and its clients.
fn key() -> ClusterKey {
    ClusterKey::new(b"datanode-test-cluster-secret", "test").unwrap()
}

/// Waits for the server to close the connection (EOF or reset), ignoring what it sends.
async fn assert_closed_by_server(mut stream: TcpStream) {
    let mut sink = Vec::new();
    let read = tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut sink)).await;
    assert!(read.is_ok(), "the server kept the connection open");
}

/// The full request set works over RPC: apply, read the user back, list the category.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proper_client_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, service, shutdown, server) = start_node(dir.path()).await;
    let client = Client::connect(&addr, ServiceKind::DataNode, &key(), TIMEOUT)
        .await
        .unwrap();
    let reply = client
        .call(&fenced(&apply(1, OpKind::Add)), TIMEOUT)
        .await
        .unwrap();
    assert_eq!(
        reply,
        DataResponse::Applied {
            qty: 1,
            duplicate: false,
            held: Version { hlc: 1, gateway: 1 },
        }
    );
    let reply = client
        .call(
            &fenced(&DataRequest::ReadUser { user: "u1".into() }),
            TIMEOUT,
        )
        .await
        .unwrap();
    let DataResponse::UserItems { items } = reply else {
        panic!("{reply:?}")
    };
    assert_eq!(items.len(), 1);
    let fruit = DataRequest::ListCategory {
        category: "fruit".into(),
        after: None,
        limit: 10,
    };
    let reply = client.call(&fenced(&fruit), TIMEOUT).await.unwrap();
    let key = ItemKey {
        user: "u1".into(),
        product: "p1".into(),
    };
    assert_eq!(
        reply,
        DataResponse::CategoryItems {
            items: vec![key.clone()],
            more: false,
        }
    );
    // The item is found in its placement group's key ranges, and only there.
    let pool = Pool::new(1, 64).unwrap();
    let pg = pool.pg_of(placement_key("u1", "p1"));
    let scan = |pg: u32| DataRequest::ScanPg {
        ranges: pool
            .key_ranges(pg)
            .iter()
            .map(|r| (r.first, r.last))
            .collect(),
        limit: 10,
    };
    let held = |reply: DataResponse| match reply {
        DataResponse::Held { items, more } => {
            assert!(!more);
            items
                .into_iter()
                .map(|h| (h.user, h.summary.product, h.summary.qty))
                .collect::<Vec<_>>()
        }
        other => panic!("{other:?}"),
    };
    let found = held(client.call(&fenced(&scan(pg)), TIMEOUT).await.unwrap());
    assert_eq!(found, [("u1".to_owned(), "p1".to_owned(), 1)]);
    let other = held(
        client
            .call(&fenced(&scan((pg + 1) % 64)), TIMEOUT)
            .await
            .unwrap(),
    );
    assert!(other.is_empty(), "{other:?}");
    let listed = DataRequest::ListItems {
        after: None,
        limit: 10,
    };
    assert_eq!(
        held(client.call(&fenced(&listed), TIMEOUT).await.unwrap()),
        found
    );
    // Handback deletes every trace of the item: head, category entry, placement entry.
    let digest = match client.call(&fenced(&scan(pg)), TIMEOUT).await.unwrap() {
        DataResponse::Held { items, .. } => items[0].summary.digest,
        other => panic!("{other:?}"),
    };
    let drop = DataRequest::DropItems {
        items: vec![(key.clone(), digest), (key.clone(), digest)],
    };
    let reply = client.call(&fenced(&drop), TIMEOUT).await.unwrap();
    assert_eq!(
        reply,
        DataResponse::Dropped {
            items: 1,
            changed: 0
        }
    );
    assert!(held(client.call(&fenced(&scan(pg)), TIMEOUT).await.unwrap()).is_empty());
    assert!(held(client.call(&fenced(&listed), TIMEOUT).await.unwrap()).is_empty());
    let reply = client.call(&fenced(&fruit), TIMEOUT).await.unwrap();
    assert_eq!(
        reply,
        DataResponse::CategoryItems {
            items: vec![],
            more: false
        }
    );
    shutdown.cancel();
    server.await.unwrap();
    service.close().await.unwrap();
}

/// Garbage instead of a hello, an oversize length prefix and an undecodable request each
/// close only their own connection; a client connected before and one connected after are
/// both served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_peers_are_disconnected_and_others_served() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, service, shutdown, server) = start_node(dir.path()).await;
    let before = Client::connect(&addr, ServiceKind::DataNode, &key(), TIMEOUT)
        .await
        .unwrap();

    let mut garbage = TcpStream::connect(&addr).await.unwrap();
    garbage
        .write_all(b"\x00\x00\x00\x05hello, not a cartdb peer")
        .await
        .unwrap();
    assert_closed_by_server(garbage).await;

    let mut oversize = raw_after_hello(&addr).await;
    oversize.write_u32(u32::MAX).await.unwrap();
    oversize.write_all(&[0; 64]).await.unwrap();
    assert_closed_by_server(oversize).await;

    let mut undecodable = raw_after_hello(&addr).await;
    write_frame(&mut undecodable, &[0xff; 16]).await;
    assert_closed_by_server(undecodable).await;

    let reply = before
        .call(&fenced(&apply(1, OpKind::Add)), TIMEOUT)
        .await
        .unwrap();
    assert_eq!(
        reply,
        DataResponse::Applied {
            qty: 1,
            duplicate: false,
            held: Version { hlc: 1, gateway: 1 },
        }
    );
    let after = Client::connect(&addr, ServiceKind::DataNode, &key(), TIMEOUT)
        .await
        .unwrap();
    let reply = after
        .call(&fenced(&apply(2, OpKind::Add)), TIMEOUT)
        .await
        .unwrap();
    assert_eq!(
        reply,
        DataResponse::Applied {
            qty: 2,
            duplicate: false,
            held: Version { hlc: 2, gateway: 1 },
        }
    );

    shutdown.cancel();
    server.await.unwrap();
    service.close().await.unwrap();
}

/// A client that expects a gateway is refused at the hello.
#[tokio::test]
async fn the_wrong_service_is_refused_at_hello() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, _service, shutdown, server) = start_node(dir.path()).await;
    let wrong =
        RpcClient::<DataCall, DataResponse>::connect(&addr, ServiceKind::Gateway, &key(), TIMEOUT)
            .await;
    assert!(wrong.is_err());
    shutdown.cancel();
    server.await.unwrap();
}

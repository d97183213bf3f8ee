//! The cluster secret guards every RPC connection: a peer with another secret, or one that
//! skips the proof and sends a request right after the hello, is refused before any request
//! reaches the service; a peer with the secret is served. Both directions: a client also
//! refuses a server that cannot prove the secret.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cartdb_core::rpc::connection::{self, FramedStream};
use cartdb_core::rpc::{ClusterKey, Hello, RpcClient, RpcError, Service, serve};
use cartdb_core::wire::ServiceKind;
use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(5);

/// Echoes, counting the requests it was given.
#[derive(Default)]
struct Counter {
    calls: AtomicUsize,
}

impl Service for Counter {
    type Request = u64;
    type Response = u64;
    const KIND: ServiceKind = ServiceKind::DataNode;

    fn request_name(_request: &u64) -> &'static str {
        "count"
    }

    async fn call(self: Arc<Self>, request: u64) -> u64 {
        self.calls.fetch_add(1, Ordering::SeqCst);
        request
    }
}

fn key(secret: &str) -> ClusterKey {
    ClusterKey::new(secret.as_bytes(), "test").unwrap()
}

async fn start(secret: &str) -> (String, Arc<Counter>, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let service = Arc::new(Counter::default());
    let shutdown = CancellationToken::new();
    tokio::spawn(serve(
        listener,
        service.clone(),
        key(secret),
        shutdown.clone(),
    ));
    (addr, service, shutdown)
}

async fn connect(addr: &str, secret: &str) -> Result<RpcClient<u64, u64>, RpcError> {
    RpcClient::connect(addr, ServiceKind::DataNode, &key(secret), T).await
}

/// Reads until the server closes the connection; panics if it answers a frame instead.
async fn assert_closed(mut framed: FramedStream) {
    match tokio::time::timeout(T, framed.next()).await.unwrap() {
        None | Some(Err(_)) => {}
        Some(Ok(frame)) => panic!("the server answered {} bytes", frame.len()),
    }
}

#[tokio::test]
async fn a_peer_with_the_secret_is_served() {
    let (addr, service, shutdown) = start("the-cluster-secret-1").await;
    let client = connect(&addr, "the-cluster-secret-1\n").await.unwrap();
    assert_eq!(client.call(&41, T).await.unwrap(), 41);
    assert_eq!(service.calls.load(Ordering::SeqCst), 1);
    shutdown.cancel();
}

#[tokio::test]
async fn a_peer_with_another_secret_is_refused_and_reaches_nothing() {
    let (addr, service, shutdown) = start("the-cluster-secret-1").await;
    let refused = connect(&addr, "another-cluster-secret").await;
    match refused {
        Err(RpcError::Handshake { problem, .. }) => {
            // The server closes without its proof, so the client sees the connection end.
            assert!(problem.contains("proof"), "{problem}");
        }
        Err(other) => panic!("expected a handshake failure, got {other}"),
        Ok(_) => panic!("a peer with another secret was admitted"),
    }
    assert_eq!(service.calls.load(Ordering::SeqCst), 0);
    shutdown.cancel();
}

#[tokio::test]
async fn a_request_sent_in_place_of_the_proof_is_not_served() {
    let (addr, service, shutdown) = start("the-cluster-secret-1").await;
    let mut framed = connection::framed(TcpStream::connect(&addr).await.unwrap());
    let hello = postcard::to_stdvec(&Hello::new(ServiceKind::DataNode)).unwrap();
    framed.send(bytes::Bytes::from(hello)).await.unwrap();
    let _their_hello = framed.next().await.unwrap().unwrap();
    // A well-formed request frame where the proof belongs, then more of them.
    for id in 1..=3 {
        framed
            .send(connection::encode(id, &7u64).unwrap())
            .await
            .unwrap();
    }
    assert_closed(framed).await;
    assert_eq!(service.calls.load(Ordering::SeqCst), 0);
    shutdown.cancel();
}

/// A listener that says hello like a data node but knows another secret: the client
/// refuses it rather than sending it requests.
#[tokio::test]
async fn a_server_without_the_secret_is_refused_by_the_client() {
    // A real server refuses the client's proof before sending its own, so the liar is
    // built by hand: it takes any proof and answers with a wrong one.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let liar = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut framed = connection::framed(stream);
        let hello = postcard::to_stdvec(&Hello::new(ServiceKind::DataNode)).unwrap();
        framed.send(bytes::Bytes::from(hello)).await.unwrap();
        let _client_hello = framed.next().await;
        let _client_proof = framed.next().await;
        framed
            .send(bytes::Bytes::from(vec![0u8; 32]))
            .await
            .unwrap();
        // Hold the connection open until the client gives up on it.
        let _ = framed.next().await;
    });
    match connect(&liar, "the-client-secret-1").await {
        Err(RpcError::Handshake { problem, .. }) => {
            assert!(problem.contains("server did not prove"), "{problem}");
        }
        Err(other) => panic!("expected a handshake failure, got {other}"),
        Ok(_) => panic!("the client accepted a server without the secret"),
    }
}

//! The framed RPC layer: concurrent requests share a connection, and a peer that sends
//! garbage loses only its own connection.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use cartdb_core::rpc::{ClusterKey, RpcClient, RpcError, Service, serve};
use cartdb_core::wire::ServiceKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Answers `n` with `n * 2`, after a delay that makes later requests finish first; never
/// answers [`STALL`].
struct Doubler;

/// A request the server never answers.
const STALL: u64 = 1000;

impl Service for Doubler {
    type Request = u64;
    type Response = u64;
    const KIND: ServiceKind = ServiceKind::DataNode;

    fn request_name(_request: &u64) -> &'static str {
        "double"
    }

    async fn call(self: Arc<Self>, request: u64) -> u64 {
        if request == STALL {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(Duration::from_millis(50 - request.min(50))).await;
        request * 2
    }
}

type Server = tokio::task::JoinHandle<std::io::Result<()>>;

/// The cluster secret both ends of these tests' connections hold.
fn key() -> ClusterKey {
    ClusterKey::new(b"core-test-cluster-secret", "test").unwrap()
}

async fn start() -> (String, CancellationToken, Server) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve(listener, Arc::new(Doubler), key(), shutdown.clone()));
    (addr, shutdown, server)
}

const T: Duration = Duration::from_secs(5);

async fn connect(addr: &str) -> RpcClient<u64, u64> {
    RpcClient::connect(addr, ServiceKind::DataNode, &key(), T)
        .await
        .unwrap()
}

/// Replies that come back out of order still reach the caller that asked.
#[tokio::test]
async fn concurrent_requests_share_one_connection() {
    let (addr, shutdown, server) = start().await;
    let client = connect(&addr).await;
    let calls = (0..50u64).map(|n| {
        let client = &client;
        async move { (n, client.call(&n, T).await.unwrap()) }
    });
    for (n, doubled) in futures::future::join_all(calls).await {
        assert_eq!(doubled, n * 2);
    }
    shutdown.cancel();
    server.await.unwrap().unwrap();
}

/// A garbage frame closes that connection only; other clients are still served.
#[tokio::test]
async fn garbage_closes_only_the_sender() {
    let (addr, _shutdown, _server) = start().await;
    let good = connect(&addr).await;

    let mut raw = TcpStream::connect(&addr).await.unwrap();
    // An oversize length prefix, then noise.
    raw.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3])
        .await
        .unwrap();
    let mut buf = vec![0u8; 64];
    let closed = tokio::time::timeout(T, async {
        loop {
            match raw.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => continue, // the server's hello
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the server kept a garbage connection open");
    assert_eq!(good.call(&21, T).await.unwrap(), 42);
}

/// A client that expects another service is refused with a clear reason.
#[tokio::test]
async fn wrong_service_is_refused_at_hello() {
    let (addr, _shutdown, _server) = start().await;
    let refused = RpcClient::<u64, u64>::connect(&addr, ServiceKind::Gateway, &key(), T).await;
    match refused {
        Err(RpcError::Handshake { problem, .. }) => {
            assert!(problem.contains("DataNode"), "{problem}")
        }
        Err(other) => panic!("expected a handshake error, got {other}"),
        Ok(_) => panic!("a client for the wrong service was accepted"),
    }
}

/// A client whose server went away fails instead of hanging.
#[tokio::test]
async fn calls_fail_once_the_server_is_gone() {
    let (addr, shutdown, server) = start().await;
    let client = connect(&addr).await;
    shutdown.cancel();
    server.await.unwrap().unwrap();
    let deadline = tokio::time::Instant::now() + T;
    loop {
        match client.call(&1, Duration::from_secs(1)).await {
            Err(RpcError::ConnectionClosed { .. }) => break,
            other => assert!(
                tokio::time::Instant::now() < deadline,
                "still answering: {other:?}"
            ),
        }
        tokio::task::yield_now().await;
    }
}

/// A time-out on a connection that heard nothing since the request was sent closes it, so
/// the next call reconnects instead of waiting on a dead connection.
#[tokio::test]
async fn a_time_out_with_nothing_heard_closes_the_connection() {
    let (addr, shutdown, server) = start().await;
    let client = connect(&addr).await;
    let short = Duration::from_millis(200);
    assert!(matches!(
        client.call(&STALL, short).await,
        Err(RpcError::Timeout { .. })
    ));
    assert!(client.is_closed(), "a silent connection is given up");
    assert!(matches!(
        client.call(&1, T).await,
        Err(RpcError::ConnectionClosed { .. })
    ));
    // The stalled request never ends, so a graceful shutdown would wait for it forever.
    shutdown.cancel();
    server.abort();
}

/// A time-out while other replies keep arriving leaves the connection open: the peer is
/// alive, only that request is slow.
#[tokio::test]
async fn a_time_out_while_replies_arrive_keeps_the_connection() {
    let (addr, shutdown, server) = start().await;
    let client = connect(&addr).await;
    let stalled = client.call(&STALL, Duration::from_millis(300));
    let answered = async {
        for n in 0..20u64 {
            assert_eq!(client.call(&50, T).await.unwrap(), 100, "call {n}");
        }
    };
    let (stalled, ()) = tokio::join!(stalled, answered);
    assert!(matches!(stalled, Err(RpcError::Timeout { .. })));
    assert!(!client.is_closed());
    assert_eq!(client.call(&7, T).await.unwrap(), 14);
    // The stalled request never ends, so a graceful shutdown would wait for it forever.
    shutdown.cancel();
    server.abort();
}

/// Answers `n` with `n` bytes, slowly for the big one so a small request is in flight with it.
struct Sizer;

impl Service for Sizer {
    type Request = u64;
    type Response = Vec<u8>;
    const KIND: ServiceKind = ServiceKind::DataNode;

    fn request_name(_request: &u64) -> &'static str {
        "size"
    }

    async fn call(self: Arc<Self>, request: u64) -> Vec<u8> {
        if request > 1000 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        vec![7; usize::try_from(request).unwrap()]
    }
}

/// An answer over the frame limit fails its own request with `ReplyTooLarge`; a request in
/// flight beside it, and the next one, are answered on the same connection.
#[tokio::test]
async fn an_oversize_reply_fails_only_its_own_request() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let shutdown = CancellationToken::new();
    tokio::spawn(serve(listener, Arc::new(Sizer), key(), shutdown.clone()));
    let client: RpcClient<u64, Vec<u8>> =
        RpcClient::connect(&addr, ServiceKind::DataNode, &key(), T)
            .await
            .unwrap();
    let oversize = cartdb_core::rpc::MAX_FRAME_BYTES as u64 + 1;
    let (big, small) = tokio::join!(client.call(&oversize, T), client.call(&3, T));
    match big {
        Err(RpcError::ReplyTooLarge { bytes, limit, .. }) => {
            assert!(bytes > limit, "{bytes} > {limit}");
        }
        other => panic!("expected ReplyTooLarge, got {other:?}"),
    }
    assert_eq!(small.unwrap(), vec![7; 3]);
    assert!(!client.is_closed());
    assert_eq!(client.call(&5, T).await.unwrap(), vec![7; 5]);
    shutdown.cancel();
}

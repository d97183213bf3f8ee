//! The RPC server's bounds hold against idle and hostile peers: a connection cap that idle
//! sockets cannot push a connected peer out of, and a bound on requests in flight per
//! connection that holds back a peer pipelining requests without reading the replies.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cartdb_core::rpc::connection::{self, exchange_hello};
use cartdb_core::rpc::secret::Side;
use cartdb_core::rpc::{ClusterKey, Hello, RpcClient, ServeLimits, Service, serve_with};
use cartdb_core::wire::ServiceKind;
use futures::SinkExt;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Never answers 0; answers anything else at once. Counts the calls running at once.
#[derive(Default)]
struct Staller {
    running: AtomicUsize,
    most: AtomicUsize,
}

impl Service for Staller {
    type Request = u64;
    type Response = u64;
    const KIND: ServiceKind = ServiceKind::DataNode;

    fn request_name(_request: &u64) -> &'static str {
        "stall"
    }

    async fn call(self: Arc<Self>, request: u64) -> u64 {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        if request == 0 {
            std::future::pending::<()>().await;
        }
        self.running.fetch_sub(1, Ordering::SeqCst);
        request
    }
}

async fn start(limits: ServeLimits) -> (String, Arc<Staller>, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let service = Arc::new(Staller::default());
    let shutdown = CancellationToken::new();
    tokio::spawn(serve_with(
        listener,
        service.clone(),
        key(),
        limits,
        shutdown.clone(),
    ));
    (addr, service, shutdown)
}

const T: Duration = Duration::from_secs(5);

/// The cluster secret both ends of these tests' connections hold.
fn key() -> ClusterKey {
    ClusterKey::new(b"core-test-cluster-secret", "test").unwrap()
}

/// Polls `done` every 10 ms until it holds or `limit` passes; whether it held.
async fn poll(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    done()
}

/// 2,000 idle sockets (no hello) meet a cap of 64 connections; the peer connected before
/// them is still served, and once the idle ones are dropped a new peer gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_hit_the_cap_while_a_peer_is_served() {
    // 2,000 client sockets plus the server's side need more than a 1,024 descriptor limit.
    rlimit::increase_nofile_limit(8192).unwrap();
    let limits = ServeLimits {
        max_connections: 64,
        ..ServeLimits::default()
    };
    let (addr, _service, shutdown) = start(limits).await;
    let peer: RpcClient<u64, u64> = RpcClient::connect(&addr, ServiceKind::DataNode, &key(), T)
        .await
        .unwrap();
    let mut idle = Vec::new();
    for _ in 0..2_000 {
        // The server accepts and closes the ones above the cap; connecting still succeeds.
        idle.push(TcpStream::connect(&addr).await.unwrap());
    }
    for n in 1..=20 {
        assert_eq!(
            peer.call(&n, T).await.unwrap(),
            n,
            "the connected peer is served"
        );
    }
    // The ones above the cap were closed at once; the others got the server's hello.
    let (mut refused, mut greeted) = (0, 0);
    for socket in &mut idle {
        let mut buf = [0u8; 64];
        match tokio::time::timeout(T, socket.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => refused += 1,
            Ok(Ok(_)) => greeted += 1,
            Err(_) => panic!("an idle socket got neither a hello nor a close"),
        }
    }
    assert_eq!(greeted, 63, "slots: 64, one held by the peer");
    assert_eq!(refused, 2_000 - 63);
    drop(idle);
    // The closed sockets free their slots as the server notices (at once, or at the hello
    // time-out for the ones that had a slot).
    let mut reconnected = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while reconnected.is_none() && Instant::now() < deadline {
        match RpcClient::<u64, u64>::connect(&addr, ServiceKind::DataNode, &key(), T).await {
            Ok(client) => reconnected = Some(client),
            // A back-off between attempts, not synchronisation.
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert!(
        reconnected.is_some(),
        "no new peer got in after the idle ones left"
    );
    let client = reconnected.unwrap();
    assert_eq!(client.call(&7, T).await.unwrap(), 7);
    shutdown.cancel();
}

/// A peer that sends 100,000 requests that never complete, and reads nothing, gets at most
/// `max_in_flight` of them served at once: the server stops reading its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_held_back_at_the_in_flight_bound() {
    let limits = ServeLimits {
        max_in_flight: 64,
        ..ServeLimits::default()
    };
    let (addr, service, shutdown) = start(limits).await;
    let stream = TcpStream::connect(&addr).await.unwrap();
    let mut framed = connection::framed(stream);
    exchange_hello(
        &mut framed,
        Hello::new(ServiceKind::DataNode),
        &key(),
        Side::Client,
    )
    .await
    .unwrap();
    let writer = tokio::spawn(async move {
        for id in 0..100_000u64 {
            let frame = connection::encode(id, &0u64).unwrap();
            if framed.send(frame).await.is_err() {
                return;
            }
        }
        // Keep the connection open: only its end would release the calls.
        std::future::pending::<()>().await;
    });
    assert!(
        poll(Duration::from_secs(10), || service
            .running
            .load(Ordering::SeqCst)
            >= 64)
        .await,
        "the first 64 requests never ran"
    );
    // Give an unbounded server the chance to read on: the writer has 99,936 more requests.
    poll(Duration::from_secs(2), || {
        service.most.load(Ordering::SeqCst) > 64
    })
    .await;
    assert_eq!(
        service.most.load(Ordering::SeqCst),
        64,
        "calls running at once"
    );
    writer.abort();
    shutdown.cancel();
}

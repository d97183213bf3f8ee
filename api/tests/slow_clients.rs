//! The HTTP server's bounds against slow and idle clients, on a real socket: a slow-loris
//! head is cut off while other requests are served, a slow body gets an error, the
//! connection cap refuses extra connections at once, and shutdown finishes in bounded time
//! with a slow client connected.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use cartdb_api::http::{HttpLimits, serve};
use common::healthy_app;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const LIMITS: HttpLimits = HttpLimits {
    max_connections: 8,
    header_read_timeout: Duration::from_millis(500),
    body_timeout: Duration::from_millis(500),
    request_timeout: Duration::from_secs(5),
    shutdown_grace: Duration::from_millis(500),
};

async fn start() -> (
    String,
    CancellationToken,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let (app, _gateway) = healthy_app(None).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve(listener, app, LIMITS, shutdown.clone()));
    (addr, shutdown, server)
}

/// One whole request on its own connection; the status line's code.
async fn status_of(addr: &str, request: &str) -> u16 {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"))
}

const HEALTH: &str = "GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";

/// Whether the server closes `stream` (EOF or reset) before `limit` passes.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // Whatever the server says first (an error page), the close comes next.
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn a_slow_loris_is_cut_off_while_others_are_served() {
    let (addr, shutdown, _server) = start().await;
    let mut loris = TcpStream::connect(&addr).await.unwrap();
    loris
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
        .await
        .unwrap();
    // The head never ends; meanwhile other clients are answered.
    for _ in 0..5 {
        assert_eq!(status_of(&addr, HEALTH).await, 200);
    }
    assert!(
        closed_within(&mut loris, Duration::from_secs(5)).await,
        "a head that never ends must be cut off"
    );
    shutdown.cancel();
}

#[tokio::test]
async fn a_body_that_never_arrives_gets_an_error() {
    let (addr, shutdown, _server) = start().await;
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    slow.write_all(
        b"POST /api/insert HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"userid\"",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 4096];
        loop {
            match slow.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    answer.extend_from_slice(&buf[..n]);
                    if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer to a body that never arrives");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    shutdown.cancel();
}

#[tokio::test]
async fn connections_above_the_cap_are_refused_until_slots_free() {
    let (addr, shutdown, _server) = start().await;
    let mut idle = Vec::new();
    for _ in 0..LIMITS.max_connections {
        idle.push(TcpStream::connect(&addr).await.unwrap());
    }
    let mut extra = TcpStream::connect(&addr).await.unwrap();
    assert!(
        closed_within(&mut extra, Duration::from_millis(400)).await,
        "a connection above the cap is closed at once, before any head time-out"
    );
    // The idle ones are cut off at the head time-out, and the server serves again.
    for socket in &mut idle {
        assert!(closed_within(socket, Duration::from_secs(5)).await);
    }
    assert_eq!(status_of(&addr, HEALTH).await, 200);
    shutdown.cancel();
}

#[tokio::test]
async fn shutdown_is_bounded_with_a_slow_client_connected() {
    let (addr, shutdown, server) = start().await;
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    assert_eq!(status_of(&addr, HEALTH).await, 200);
    shutdown.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(3), server).await;
    assert!(stopped.is_ok(), "the server did not stop within 3 s");
    drop(slow);
}

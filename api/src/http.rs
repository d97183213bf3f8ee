//! The HTTP server loop, with the bounds `axum::serve` does not keep: a connection cap, a
//! time limit on reading a request's head, one on reading its body, one on the whole
//! request, and a bounded graceful shutdown.
//!
//! ```text
//! accept ──> connection slot? ──no──> close at once (counted, logged at most once a second)
//!               │ yes
//!               v
//!          hyper http1 connection (header_read_timeout: a slow-loris head is cut off)
//!               │ each request
//!               v
//!          body time limit ──> whole-request time limit ──> the router
//! ```
//!
//! Each connection is its own task, so a slow client delays nobody else. On shutdown every
//! connection is asked to finish its request in progress and close; connections still open
//! after [`HttpLimits::shutdown_grace`] are dropped.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use cartdb_core::connection_slots::ConnectionSlots;
use hyper::body::{Frame, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::ApiError;

/// The bounds of the HTTP server (`--http-*` flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Most open connections; one more is accepted and closed at once.
    pub max_connections: usize,
    /// Time to read a request's head (request line and headers), from the connection's
    /// first byte or the end of the previous request.
    pub header_read_timeout: Duration,
    /// Time to read a request's body.
    pub body_timeout: Duration,
    /// Time to answer a request, from its head to the last byte of the answer's head.
    pub request_timeout: Duration,
    /// Time connections get to finish at shutdown before they are dropped.
    pub shutdown_grace: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            header_read_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Serves `app` on `listener` within `limits` until `shutdown`, then closes every
/// connection within [`HttpLimits::shutdown_grace`].
///
/// # Errors
/// Never at present: accept errors are logged and retried after a short back-off.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = app.layer(axum::middleware::from_fn_with_state(limits, bound_request));
    let mut slots = ConnectionSlots::new(
        limits.max_connections,
        metrics::counter!("cartdb_http_refused_connections_total"),
    );
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                // A back-off, not synchronisation: avoid spinning while descriptors run out.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(slot) = slots.admit(peer) else {
            continue;
        };
        // A reply must not wait for the client's delayed ACK.
        let _ = stream.set_nodelay(true);
        let (app, shutdown) = (app.clone(), shutdown.clone());
        connections.spawn(async move {
            serve_connection(stream, peer, app, limits, shutdown).await;
            drop(slot);
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: HttpLimits,
    shutdown: CancellationToken,
) {
    let service = TowerToHyperService::new(app);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let finished = tokio::select! {
        finished = connection.as_mut() => finished,
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            match tokio::time::timeout(limits.shutdown_grace, connection.as_mut()).await {
                Ok(finished) => finished,
                Err(_) => {
                    tracing::debug!(%peer, "connection still open after the shutdown grace; dropped");
                    return;
                }
            }
        }
    };
    if let Err(e) = finished {
        // Time-outs and clients that go away are the normal end of a connection.
        tracing::debug!(%peer, error = %e, "connection ended");
    }
}

/// The body and whole-request time limits, with the API's JSON error when one passes.
async fn bound_request(
    axum::extract::State(limits): axum::extract::State<HttpLimits>,
    request: Request,
    next: Next,
) -> Response {
    let request = request.map(|body| Body::new(TimedBody::new(body, limits.body_timeout)));
    match tokio::time::timeout(limits.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::RequestTimeout {
            after: limits.request_timeout,
        }
        .into_response(),
    }
}

/// A request body that fails once it has taken longer than its time limit to arrive.
struct TimedBody {
    inner: Body,
    deadline: Pin<Box<Sleep>>,
    limit: Duration,
}

impl TimedBody {
    fn new(inner: Body, limit: Duration) -> Self {
        Self {
            inner,
            deadline: Box::pin(tokio::time::sleep(limit)),
            limit,
        }
    }
}

/// Why a body stopped: it took too long.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
struct BodyTimedOut(Duration);

impl HttpBody for TimedBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(BodyTimedOut(self.limit).into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

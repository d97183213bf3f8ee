//! The server side: a [`Service`] answers requests; [`serve`] accepts connections and runs
//! every request in its own task, so slow requests (a write waiting for its group commit) do
//! not hold up the others on the same connection.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Hello;
use super::connection::{self, FramedStream};
use crate::wire::ServiceKind;

/// Replies queued per connection before request tasks wait for the writer.
const REPLY_QUEUE: usize = 1024;

/// A request handler for one protocol.
pub trait Service: Send + Sync + 'static {
    type Request: DeserializeOwned + Send + 'static;
    type Response: Serialize + Send + 'static;
    /// Which service this is, announced in the hello frame.
    const KIND: ServiceKind;

    /// Answers one request. Failures are expressed in `Response`.
    fn call(self: Arc<Self>, request: Self::Request)
    -> impl Future<Output = Self::Response> + Send;

    /// The request's kind, the `request` label of the server's metrics.
    fn request_name(request: &Self::Request) -> &'static str;
}

/// Accepts connections on `listener` and serves them until `shutdown` is cancelled, then
/// stops accepting, lets every request already received finish and be answered, and returns.
///
/// # Errors
/// Never at present; accept errors (such as running out of file descriptors) are logged and
/// retried, because one bad moment must not take the whole node down.
pub async fn serve<S: Service>(
    listener: TcpListener,
    service: Arc<S>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                connections.spawn(serve_connection(
                    stream,
                    peer,
                    service.clone(),
                    shutdown.clone(),
                ));
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                // A back-off, not synchronisation: avoid spinning while descriptors run out.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

async fn serve_connection<S: Service>(
    stream: TcpStream,
    peer: SocketAddr,
    service: Arc<S>,
    shutdown: CancellationToken,
) {
    let mut framed = connection::framed(stream);
    if let Err(problem) = connection::exchange_hello(&mut framed, Hello::new(S::KIND)).await {
        tracing::warn!(%peer, %problem, "refused connection: bad hello");
        return;
    }
    let open_connections =
        metrics::gauge!("cartdb_rpc_server_connections", "service" => S::KIND.name());
    open_connections.increment(1);
    let (sink, mut frames) = framed.split();
    let (replies, queue) = mpsc::channel(REPLY_QUEUE);
    let writer = tokio::spawn(write_replies(sink, queue));
    let requests = TaskTracker::new();
    loop {
        let next = tokio::select! {
            () = shutdown.cancelled() => break,
            next = frames.next() => next,
        };
        let bytes = match next {
            Some(Ok(bytes)) => bytes,
            Some(Err(e)) => {
                tracing::warn!(%peer, error = %e, "closing connection: unreadable frame");
                break;
            }
            None => break,
        };
        let frame = match connection::decode::<S::Request>(&bytes) {
            Ok(frame) => frame,
            Err(e) => {
                tracing::warn!(%peer, error = %e, len = bytes.len(), "closing connection: undecodable request");
                break;
            }
        };
        let service = service.clone();
        let replies = replies.clone();
        requests.spawn(async move {
            let request = S::request_name(&frame.body);
            let started = std::time::Instant::now();
            let response = service.call(frame.body).await;
            let labels = [("service", S::KIND.name()), ("request", request)];
            metrics::counter!("cartdb_rpc_server_requests_total", &labels).increment(1);
            metrics::histogram!("cartdb_rpc_server_request_seconds", &labels)
                .record(started.elapsed().as_secs_f64());
            match connection::encode(frame.id, &response) {
                // The writer is gone only when the connection is; the reply has nowhere to go.
                Ok(bytes) => drop(replies.send(bytes).await),
                Err(e) => tracing::error!(%peer, error = %e, "cannot encode a reply"),
            }
        });
    }
    requests.close();
    requests.wait().await;
    drop(replies);
    // The writer ends once every reply is flushed; its result only says whether the peer is
    // still there, which no longer matters.
    let _ = writer.await;
    open_connections.decrement(1);
}

async fn write_replies(
    mut sink: futures::stream::SplitSink<FramedStream, Bytes>,
    mut queue: mpsc::Receiver<Bytes>,
) {
    while let Some(first) = queue.recv().await {
        if sink.feed(first).await.is_err() {
            return;
        }
        while let Ok(more) = queue.try_recv() {
            if sink.feed(more).await.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
}

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
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::connection::{self, FramedStream};
use super::secret::{ClusterKey, Side};
use super::{Hello, MAX_FRAME_BYTES, ReplyBody};
use crate::connection_slots::ConnectionSlots;
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

/// The bounds one server keeps, whatever its peers do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServeLimits {
    /// Most open connections. One more is accepted and closed at once (counted in
    /// `cartdb_rpc_server_refused_connections_total`, logged at most once a second), so
    /// idle or hostile peers cannot use up the process's file descriptors.
    pub max_connections: usize,
    /// Most requests of one connection being served at once. At the bound the server stops
    /// reading that connection until one is answered, so a peer that pipelines requests
    /// without reading the replies is held back by TCP instead of growing the server's
    /// memory.
    pub max_in_flight: usize,
    /// A connection with nothing in flight that sends nothing for this long is closed
    /// (clients reconnect on demand).
    pub idle_timeout: Duration,
}

impl Default for ServeLimits {
    /// 1,024 connections (a cluster has a handful of peers per process), 256 requests in
    /// flight per connection (a gateway's share of a data node's group commit), 5 minutes
    /// idle.
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_in_flight: 256,
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// Accepts connections on `listener` and serves them until `shutdown` is cancelled, then
/// stops accepting, lets every request already received finish and be answered, and returns.
/// Keeps the default [`ServeLimits`].
///
/// # Errors
/// Never at present; accept errors (such as running out of file descriptors) are logged and
/// retried, because one bad moment must not take the whole node down.
pub async fn serve<S: Service>(
    listener: TcpListener,
    service: Arc<S>,
    key: ClusterKey,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_with(listener, service, key, ServeLimits::default(), shutdown).await
}

/// [`serve`] with the bounds `limits`.
///
/// # Errors
/// As [`serve`].
pub async fn serve_with<S: Service>(
    listener: TcpListener,
    service: Arc<S>,
    key: ClusterKey,
    limits: ServeLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let key = Arc::new(key);
    let connections = TaskTracker::new();
    let mut slots = ConnectionSlots::new(
        limits.max_connections,
        metrics::counter!("cartdb_rpc_server_refused_connections_total", "service" => S::KIND.name()),
    );
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let Some(slot) = slots.admit(peer) else {
                    drop(stream);
                    continue;
                };
                let (service, key, shutdown) = (service.clone(), key.clone(), shutdown.clone());
                connections.spawn(async move {
                    serve_connection(stream, peer, service, &key, limits, shutdown).await;
                    drop(slot);
                });
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
    key: &ClusterKey,
    limits: ServeLimits,
    shutdown: CancellationToken,
) {
    let mut framed = connection::framed(stream);
    if let Err(problem) =
        connection::exchange_hello(&mut framed, Hello::new(S::KIND), key, Side::Server).await
    {
        metrics::counter!("cartdb_rpc_server_refused_handshakes_total", "service" => S::KIND.name())
            .increment(1);
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
    let in_flight = Arc::new(Semaphore::new(limits.max_in_flight));
    loop {
        // Taken before reading the next request: at the bound, nothing more is read.
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = in_flight.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let next = tokio::select! {
            () = shutdown.cancelled() => break,
            next = tokio::time::timeout(limits.idle_timeout, frames.next()) => next,
        };
        let next = match next {
            Ok(next) => next,
            // Nothing received for the idle time-out: close only if nothing is in flight
            // (this loop holds one permit itself).
            Err(_) if in_flight.available_permits() + 1 >= limits.max_in_flight => {
                tracing::debug!(%peer, idle = ?limits.idle_timeout, "closing an idle connection");
                break;
            }
            Err(_) => continue,
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
            match encode_reply(frame.id, response) {
                // The writer is gone only when the connection is; the reply has nowhere to go.
                Ok(bytes) => drop(replies.send(bytes).await),
                Err(e) => tracing::error!(%peer, error = %e, "cannot encode a reply"),
            }
            // Released once the reply is queued: a peer that reads no replies fills the
            // queue, and then holds every permit of its connection.
            drop(permit);
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

/// The reply frame of `response`, or a [`ReplyBody::TooLarge`] in its place when it would
/// not fit in a frame (which the codec would refuse, closing the connection).
fn encode_reply<T: Serialize>(id: u64, response: T) -> Result<Bytes, postcard::Error> {
    let bytes = connection::encode(id, &ReplyBody::Answer(response))?;
    // The codec's limit is on the frame body; the 4-byte length prefix is not counted.
    if bytes.len() <= MAX_FRAME_BYTES {
        return Ok(bytes);
    }
    tracing::warn!(
        id,
        bytes = bytes.len(),
        limit = MAX_FRAME_BYTES,
        "a reply is larger than a frame; answering that request with an error"
    );
    metrics::counter!("cartdb_rpc_server_oversize_replies_total").increment(1);
    connection::encode(
        id,
        &ReplyBody::<T>::TooLarge {
            bytes: bytes.len() as u64,
            limit: MAX_FRAME_BYTES as u64,
        },
    )
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

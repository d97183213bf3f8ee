//! The client side: [`RpcClient`] multiplexes concurrent requests over one connection;
//! [`PeerClient`] reconnects on demand, with a short backoff after a failed attempt, and
//! suffers the [`Faults`] a test gives it.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::connection::{self, FramedStream};
use super::faults::{Fault, Faults};
use super::secret::{ClusterKey, Side};
use super::{Hello, ReplyBody, RpcError};
use crate::wire::ServiceKind;

/// Requests queued for the writer task before `call` waits; bounds memory per connection.
const OUTGOING_QUEUE: usize = 1024;

type Pending<Resp> = Arc<Mutex<HashMap<u64, oneshot::Sender<ReplyBody<Resp>>>>>;

/// One connection to a peer, shared by any number of concurrent callers.
///
/// Dropping the client closes the connection. Once the connection fails, every pending and
/// later call fails with [`RpcError::ConnectionClosed`]; make a new client (or use a
/// [`PeerClient`]).
pub struct RpcClient<Req, Resp> {
    addr: String,
    next_id: AtomicU64,
    pending: Pending<Resp>,
    /// When the last frame arrived, as microseconds since `opened`.
    heard: Arc<AtomicU64>,
    opened: Instant,
    outgoing: mpsc::Sender<Bytes>,
    closed: CancellationToken,
    _close_on_drop: DropGuard,
    _request: PhantomData<fn(Req)>,
}

impl<Req, Resp> RpcClient<Req, Resp>
where
    Req: Serialize,
    Resp: DeserializeOwned + Send + 'static,
{
    /// Connects to `addr` and checks that it is a `service` speaking our protocol version
    /// and holding the cluster secret `key` (proving ours in turn).
    ///
    /// # Errors
    /// [`RpcError::Connect`] when the TCP connection fails or times out,
    /// [`RpcError::Handshake`] when the peer is not the expected service or refuses (or
    /// fails) the proof of the cluster secret.
    pub async fn connect(
        addr: &str,
        service: ServiceKind,
        key: &ClusterKey,
        timeout: Duration,
    ) -> Result<Self, RpcError> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| RpcError::Connect {
                addr: addr.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"),
            })?
            .map_err(|source| RpcError::Connect {
                addr: addr.to_owned(),
                source,
            })?;
        let mut framed = connection::framed(stream);
        connection::exchange_hello(&mut framed, Hello::new(service), key, Side::Client)
            .await
            .map_err(|problem| RpcError::Handshake {
                addr: addr.to_owned(),
                problem,
            })?;
        Ok(Self::start(addr, framed))
    }

    fn start(addr: &str, framed: FramedStream) -> Self {
        let (sink, stream) = framed.split();
        let (outgoing, queue) = mpsc::channel(OUTGOING_QUEUE);
        let pending: Pending<Resp> = Arc::default();
        let closed = CancellationToken::new();
        let heard = Arc::new(AtomicU64::new(0));
        let opened = Instant::now();
        tokio::spawn(write_frames(sink, queue, closed.clone()));
        tokio::spawn(read_frames(
            ReadState {
                addr: addr.to_owned(),
                pending: pending.clone(),
                closed: closed.clone(),
                heard: heard.clone(),
                opened,
            },
            stream,
        ));
        Self {
            addr: addr.to_owned(),
            next_id: AtomicU64::new(1),
            pending,
            heard,
            opened,
            outgoing,
            _close_on_drop: closed.clone().drop_guard(),
            closed,
            _request: PhantomData,
        }
    }

    /// Sends `request` and waits up to `timeout` for its reply.
    ///
    /// A time-out on a connection that received nothing at all since the request was sent
    /// closes the connection: the peer is gone or unreachable (its host paused, or this
    /// host's address changed under it), and TCP alone would take many minutes to notice.
    /// A time-out while other replies keep arriving leaves it open: the peer is slow.
    ///
    /// # Errors
    /// [`RpcError::Timeout`], [`RpcError::ConnectionClosed`], [`RpcError::ReplyTooLarge`]
    /// (this request only; the connection stays), or [`RpcError::Encode`] for a request that
    /// cannot be encoded.
    pub async fn call(&self, request: &Req, timeout: Duration) -> Result<Resp, RpcError> {
        if self.closed.is_cancelled() {
            return Err(self.closed_error());
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let bytes = connection::encode(id, request).map_err(|source| RpcError::Encode {
            addr: self.addr.clone(),
            source,
        })?;
        let (reply, answer) = oneshot::channel();
        lock(&self.pending).insert(id, reply);
        // Removes the pending entry if this future is dropped or times out.
        let _forget = ForgetOnDrop {
            pending: &self.pending,
            id,
        };
        let sent = micros_since(self.opened);
        if self.outgoing.send(bytes).await.is_err() {
            return Err(self.closed_error());
        }
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(ReplyBody::Answer(response))) => Ok(response),
            Ok(Ok(ReplyBody::TooLarge { bytes, limit })) => Err(RpcError::ReplyTooLarge {
                addr: self.addr.clone(),
                bytes,
                limit,
            }),
            Ok(Err(_)) => Err(self.closed_error()),
            Err(_) => {
                if self.heard.load(Ordering::Acquire) <= sent && !self.closed.is_cancelled() {
                    tracing::warn!(
                        peer = %self.addr,
                        after = ?timeout,
                        "nothing received since the request was sent; closing the connection"
                    );
                    self.closed.cancel();
                }
                Err(RpcError::Timeout {
                    addr: self.addr.clone(),
                    after: timeout,
                })
            }
        }
    }

    /// Whether the connection has failed or been closed.
    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// The address this client is connected to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    fn closed_error(&self) -> RpcError {
        RpcError::ConnectionClosed {
            addr: self.addr.clone(),
        }
    }
}

struct ForgetOnDrop<'a, Resp> {
    pending: &'a Pending<Resp>,
    id: u64,
}

impl<Resp> Drop for ForgetOnDrop<'_, Resp> {
    fn drop(&mut self) {
        lock(self.pending).remove(&self.id);
    }
}

/// A poisoned lock only means another caller panicked mid-insert; the map is still usable.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Writes queued frames, flushing once per burst rather than once per frame.
async fn write_frames(
    mut sink: SplitSink<FramedStream, Bytes>,
    mut queue: mpsc::Receiver<Bytes>,
    closed: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            () = closed.cancelled() => break,
            next = queue.recv() => match next { Some(bytes) => bytes, None => break },
        };
        if sink.feed(first).await.is_err() {
            break;
        }
        while let Ok(more) = queue.try_recv() {
            if sink.feed(more).await.is_err() {
                closed.cancel();
                return;
            }
        }
        if sink.flush().await.is_err() {
            break;
        }
    }
    closed.cancel();
}

/// Microseconds from `since` to now, saturating.
fn micros_since(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// What the reading half of a connection shares with its client.
struct ReadState<Resp> {
    addr: String,
    pending: Pending<Resp>,
    closed: CancellationToken,
    heard: Arc<AtomicU64>,
    opened: Instant,
}

/// Routes each reply to the caller waiting for its id; on any failure, closes the client so
/// that every waiting caller learns the connection is gone.
async fn read_frames<Resp: DeserializeOwned>(
    state: ReadState<Resp>,
    mut stream: SplitStream<FramedStream>,
) {
    let ReadState {
        addr,
        pending,
        closed,
        heard,
        opened,
    } = state;
    loop {
        let next = tokio::select! {
            () = closed.cancelled() => break,
            next = stream.next() => next,
        };
        let bytes = match next {
            Some(Ok(bytes)) => bytes,
            Some(Err(e)) => {
                tracing::warn!(peer = %addr, error = %e, "connection failed");
                break;
            }
            None => break,
        };
        heard.fetch_max(micros_since(opened), Ordering::AcqRel);
        match connection::decode::<ReplyBody<Resp>>(&bytes) {
            Ok(frame) => {
                if let Some(waiter) = lock(&pending).remove(&frame.id) {
                    // The caller may have given up (time-out); nothing to do then.
                    let _ = waiter.send(frame.body);
                }
            }
            Err(e) => {
                tracing::warn!(peer = %addr, error = %e, "undecodable reply; closing the connection");
                break;
            }
        }
    }
    closed.cancel();
    // Dropping the senders wakes every waiting caller with "connection closed".
    lock(&pending).clear();
}

/// How long a peer whose connection attempt failed is not retried.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(200);

/// A peer at a fixed address, connected on first use and reconnected after failures.
///
/// After a failed connection attempt, calls fail fast with [`RpcError::Unreachable`] for a
/// short backoff, so a dead peer costs its callers nothing but an error.
pub struct PeerClient<Req, Resp> {
    addr: String,
    service: ServiceKind,
    key: ClusterKey,
    connect_timeout: Duration,
    state: tokio::sync::Mutex<PeerState<Req, Resp>>,
    /// Test-only fault injection; `None` in production.
    faults: Option<Faults>,
}

struct PeerState<Req, Resp> {
    client: Option<Arc<RpcClient<Req, Resp>>>,
    failed_at: Option<Instant>,
}

impl<Req, Resp> PeerClient<Req, Resp>
where
    Req: Serialize,
    Resp: DeserializeOwned + Send + 'static,
{
    /// A peer at `addr` that is expected to be a `service` holding the cluster secret `key`.
    /// Does not connect yet.
    pub fn new(
        addr: impl Into<String>,
        service: ServiceKind,
        key: ClusterKey,
        connect_timeout: Duration,
    ) -> Self {
        Self {
            addr: addr.into(),
            service,
            key,
            connect_timeout,
            state: tokio::sync::Mutex::new(PeerState {
                client: None,
                failed_at: None,
            }),
            faults: None,
        }
    }

    /// The same, suffering the faults `faults` names for this peer's address (tests).
    #[must_use]
    pub fn with_faults(mut self, faults: Faults) -> Self {
        self.faults = Some(faults);
        self
    }

    /// The peer's address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends `request`, connecting first if there is no live connection.
    ///
    /// # Errors
    /// Any [`RpcError`]; [`RpcError::Unreachable`] during the backoff after a failed connect.
    pub async fn call(&self, request: &Req, timeout: Duration) -> Result<Resp, RpcError> {
        let fault = self.faults.as_ref().and_then(|f| f.for_peer(&self.addr));
        let Some(fault) = fault else {
            let client = self.client().await?;
            return client.call(request, timeout).await;
        };
        let lost = RpcError::Timeout {
            addr: self.addr.clone(),
            after: timeout,
        };
        match fault {
            Fault::DropRequest => {
                tokio::time::sleep(timeout).await;
                Err(lost)
            }
            Fault::DropReply => {
                let started = tokio::time::Instant::now();
                let client = self.client().await?;
                let _lost_reply = client.call(request, timeout).await;
                tokio::time::sleep_until(started + timeout).await;
                Err(lost)
            }
            Fault::Delay(delay) if delay >= timeout => {
                tokio::time::sleep(timeout).await;
                Err(lost)
            }
            Fault::Delay(delay) => {
                tokio::time::sleep(delay).await;
                let client = self.client().await?;
                client.call(request, timeout.saturating_sub(delay)).await
            }
        }
    }

    async fn client(&self) -> Result<Arc<RpcClient<Req, Resp>>, RpcError> {
        let mut state = self.state.lock().await;
        if let Some(client) = state.client.as_ref().filter(|c| !c.is_closed()) {
            return Ok(client.clone());
        }
        if state
            .failed_at
            .is_some_and(|at| at.elapsed() < RECONNECT_BACKOFF)
        {
            return Err(RpcError::Unreachable {
                addr: self.addr.clone(),
            });
        }
        match RpcClient::connect(&self.addr, self.service, &self.key, self.connect_timeout).await {
            Ok(client) => {
                let client = Arc::new(client);
                state.client = Some(client.clone());
                state.failed_at = None;
                Ok(client)
            }
            Err(e) => {
                state.client = None;
                state.failed_at = Some(Instant::now());
                Err(e)
            }
        }
    }
}

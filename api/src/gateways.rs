//! The gateway pool: one [`PeerClient`] per live gateway, a random choice per request and
//! failover to the others when the chosen one fails at the transport level.
//!
//! ```text
//!  ZooKeeper members().gateways ──(on change)──> follow_membership ──> GatewayPool::set_members
//!                                                                           │
//!  handler ──> GatewayPool::call ──> failover_order (random permutation) ──> try each in turn
//!                                    transport failure: next gateway; any answer: done
//! ```
//!
//! Only transport failures fail over: a gateway that *answered* (even with a failure such as
//! `QuorumNotReached`) has decided, and asking another would just repeat the work. Retrying an
//! insert after a time-out could apply it twice, which is why callers send an idempotency key
//! that stays the same across the attempts.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use cartdb_core::rpc::{ClusterKey, PeerClient, RpcError};
use cartdb_core::wire::{GatewayInfo, GatewayRequest, GatewayResponse, ServiceKind};
use rand::Rng;
use rand::seq::SliceRandom;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A connection (made on demand) to one gateway.
pub type GatewayClient = PeerClient<GatewayRequest, GatewayResponse>;

type Peers = BTreeMap<u32, Arc<GatewayClient>>;

/// The live gateways, by gateway id.
///
/// Requests read a snapshot (an `Arc` clone under a short read lock), so a membership change
/// never waits for requests in flight and requests never see a half-updated map.
pub struct GatewayPool {
    timeout: Duration,
    key: ClusterKey,
    peers: RwLock<Arc<Peers>>,
}

impl std::fmt::Debug for GatewayPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayPool")
            .field("timeout", &self.timeout)
            .field("gateways", &self.gateways())
            .finish()
    }
}

/// A gateway's answer and which gateway gave it.
#[derive(Debug)]
pub struct Reply {
    pub gateway: u32,
    pub response: GatewayResponse,
}

/// Why [`GatewayPool::call`] got no answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// No gateway is known, or every one failed at the transport level.
    #[error("no gateway available")]
    NoGateway,
    /// A gateway was asked for by id, and no live gateway has it.
    #[error("no live gateway has id {id}")]
    UnknownGateway { id: u32 },
    /// A failure that another gateway would not fix (the request cannot be encoded).
    #[error(transparent)]
    Rpc(RpcError),
}

impl GatewayPool {
    /// An empty pool whose calls (connect plus answer) each get `timeout` per gateway, and
    /// whose connections prove the cluster secret `key`.
    pub fn new(key: ClusterKey, timeout: Duration) -> Self {
        Self {
            timeout,
            key,
            peers: RwLock::new(Arc::default()),
        }
    }

    /// Replaces the set of gateways with `gateways` (id -> address). A gateway whose address
    /// did not change keeps its client, and so its open connection.
    pub fn set_members(&self, gateways: &BTreeMap<u32, String>) {
        let current = self.snapshot();
        let next: Peers = gateways
            .iter()
            .map(|(&id, addr)| {
                let client = current
                    .get(&id)
                    .filter(|c| c.addr() == addr)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(self.client_for(addr)));
                (id, client)
            })
            .collect();
        tracing::info!(gateways = ?gateways, "gateway membership changed");
        *self.peers.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(next);
    }

    fn client_for(&self, addr: &str) -> GatewayClient {
        PeerClient::new(addr, ServiceKind::Gateway, self.key.clone(), self.timeout)
    }

    /// How many gateways are known.
    pub fn len(&self) -> usize {
        self.snapshot().len()
    }

    /// Whether no gateway is known.
    pub fn is_empty(&self) -> bool {
        self.snapshot().is_empty()
    }

    /// The known gateways, by id.
    pub fn gateways(&self) -> Vec<GatewayInfo> {
        self.snapshot()
            .iter()
            .map(|(&id, client)| GatewayInfo {
                id,
                address: client.addr().to_owned(),
                metrics: None,
            })
            .collect()
    }

    fn snapshot(&self) -> Arc<Peers> {
        self.peers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Sends `request` to a gateway chosen at random, and on a transport failure to each of
    /// the others in turn.
    ///
    /// # Errors
    /// [`PoolError::NoGateway`] when no gateway is known or none could be reached in time;
    /// [`PoolError::Rpc`] for a failure that is not the gateway's (an unencodable request).
    pub async fn call(&self, request: &GatewayRequest) -> Result<Reply, PoolError> {
        let peers = self.snapshot();
        let ids: Vec<u32> = peers.keys().copied().collect();
        // A statement of its own: the thread-local RNG is not `Send` and must not live across
        // the awaits below (a `for` keeps its head's temporaries alive for the whole loop).
        let order = failover_order(&ids, &mut rand::rng());
        self.call_in_order(&peers, order, request).await
    }

    /// Sends `request` to the gateway with the smallest id, and on a transport failure to
    /// each of the others by id: the smallest live gateway leads the anti-entropy sweep, and
    /// only its `Cluster` answer carries the sweep's progress.
    ///
    /// # Errors
    /// As [`GatewayPool::call`].
    pub async fn call_leader_first(&self, request: &GatewayRequest) -> Result<Reply, PoolError> {
        let peers = self.snapshot();
        let order: Vec<u32> = peers.keys().copied().collect();
        self.call_in_order(&peers, order, request).await
    }

    /// Sends `request` to gateway `id` only.
    ///
    /// # Errors
    /// [`PoolError::UnknownGateway`] when no live gateway has that id,
    /// [`PoolError::NoGateway`] when it cannot be reached; [`PoolError::Rpc`] as for
    /// [`GatewayPool::call`].
    pub async fn call_on(&self, id: u32, request: &GatewayRequest) -> Result<Reply, PoolError> {
        let peers = self.snapshot();
        if !peers.contains_key(&id) {
            return Err(PoolError::UnknownGateway { id });
        }
        self.call_in_order(&peers, vec![id], request).await
    }

    async fn call_in_order(
        &self,
        peers: &Peers,
        order: Vec<u32>,
        request: &GatewayRequest,
    ) -> Result<Reply, PoolError> {
        for id in order {
            let Some(client) = peers.get(&id) else {
                continue;
            };
            match self.call_one(client, request).await {
                Ok(response) => {
                    return Ok(Reply {
                        gateway: id,
                        response,
                    });
                }
                Err(e) if is_transport_failure(&e) => {
                    tracing::warn!(gateway = id, error = %e, "gateway failed; trying another");
                }
                Err(e) => return Err(PoolError::Rpc(e)),
            }
        }
        Err(PoolError::NoGateway)
    }

    /// One attempt, bounded as a whole: `PeerClient` bounds the connect and the answer
    /// separately, which could add up to twice the time-out.
    async fn call_one(
        &self,
        client: &GatewayClient,
        request: &GatewayRequest,
    ) -> Result<GatewayResponse, RpcError> {
        tokio::time::timeout(self.timeout, client.call(request, self.timeout))
            .await
            .unwrap_or_else(|_| {
                Err(RpcError::Timeout {
                    addr: client.addr().to_owned(),
                    after: self.timeout,
                })
            })
    }
}

/// The order in which to try the gateways `ids`: a uniformly random permutation, so that
/// every gateway is first equally often (the seed's 50:50 with two gateways) and a failed one
/// is followed by each of the others.
pub fn failover_order(ids: &[u32], rng: &mut impl Rng) -> Vec<u32> {
    let mut order = ids.to_vec();
    order.shuffle(rng);
    order
}

/// Whether another gateway might succeed where this attempt failed: the gateway could not be
/// reached, did not answer in time, dropped the connection, or is not a gateway at all.
pub fn is_transport_failure(error: &RpcError) -> bool {
    matches!(
        error,
        RpcError::Connect { .. }
            | RpcError::Unreachable { .. }
            | RpcError::Timeout { .. }
            | RpcError::ConnectionClosed { .. }
            | RpcError::Handshake { .. }
    )
}

/// Keeps `pool` equal to the gateways of the latest membership until `shutdown`, updating it
/// on every change (never per request).
pub async fn follow_membership<M>(
    pool: Arc<GatewayPool>,
    mut members: watch::Receiver<M>,
    gateways_of: fn(&M) -> &BTreeMap<u32, String>,
    shutdown: CancellationToken,
) {
    loop {
        pool.set_members(gateways_of(&members.borrow_and_update()));
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = members.changed() => {
                if changed.is_err() {
                    tracing::warn!("membership watch ended; the gateway list is frozen");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    fn test_key() -> cartdb_core::rpc::ClusterKey {
        cartdb_core::rpc::ClusterKey::new(b"unit-test-cluster-secret", "test").unwrap()
    }

    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn every_gateway_is_tried_exactly_once() {
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..100 {
            let mut order = failover_order(&[3, 1, 2], &mut rng);
            order.sort_unstable();
            assert_eq!(order, [1, 2, 3]);
        }
    }

    #[test]
    fn no_gateway_means_nothing_to_try() {
        assert!(failover_order(&[], &mut StdRng::seed_from_u64(1)).is_empty());
    }

    #[test]
    fn two_gateways_are_chosen_about_equally_often() {
        let mut rng = StdRng::seed_from_u64(42);
        let trials = 10_000;
        let firsts = (0..trials)
            .filter(|_| failover_order(&[1, 2], &mut rng)[0] == 1)
            .count();
        // 50:50 within 3 percentage points (about 6 standard deviations).
        assert!(
            (4_700..=5_300).contains(&firsts),
            "gateway 1 first {firsts} times"
        );
    }

    #[test]
    fn only_transport_failures_fail_over() {
        let addr = || "127.0.0.1:1".to_owned();
        assert!(is_transport_failure(&RpcError::Unreachable {
            addr: addr()
        }));
        assert!(is_transport_failure(&RpcError::ConnectionClosed {
            addr: addr()
        }));
        assert!(is_transport_failure(&RpcError::Timeout {
            addr: addr(),
            after: Duration::from_secs(1)
        }));
        let encode = postcard::Error::SerializeBufferFull;
        assert!(!is_transport_failure(&RpcError::Encode {
            addr: addr(),
            source: encode
        }));
    }

    #[tokio::test]
    async fn unchanged_gateways_keep_their_client() {
        let pool = GatewayPool::new(test_key(), Duration::from_secs(1));
        let first = BTreeMap::from([(1, "127.0.0.1:1".to_owned()), (2, "127.0.0.1:2".to_owned())]);
        pool.set_members(&first);
        let before = pool.snapshot();
        let second = BTreeMap::from([(1, "127.0.0.1:1".to_owned()), (2, "127.0.0.1:3".to_owned())]);
        pool.set_members(&second);
        let after = pool.snapshot();
        assert!(Arc::ptr_eq(&before[&1], &after[&1]));
        assert_eq!(after[&2].addr(), "127.0.0.1:3");
    }

    #[tokio::test]
    async fn an_empty_pool_has_no_gateway() {
        let pool = GatewayPool::new(test_key(), Duration::from_secs(1));
        let result = pool.call(&GatewayRequest::Products).await;
        assert!(matches!(result, Err(PoolError::NoGateway)));
    }

    #[tokio::test]
    async fn the_pool_follows_membership_changes() {
        let pool = Arc::new(GatewayPool::new(test_key(), Duration::from_secs(1)));
        let (members, watched) = watch::channel(BTreeMap::from([(1, "127.0.0.1:1".to_owned())]));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(follow_membership(
            pool.clone(),
            watched,
            |m| m,
            shutdown.clone(),
        ));
        wait_for(|| pool.len() == 1).await;
        members.send_modify(|m| {
            m.insert(2, "127.0.0.1:2".to_owned());
        });
        wait_for(|| pool.len() == 2).await;
        members.send_modify(BTreeMap::clear);
        wait_for(|| pool.is_empty()).await;
        shutdown.cancel();
        task.await.unwrap();
    }

    async fn wait_for(condition: impl Fn() -> bool) {
        for _ in 0..200 {
            if condition() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("condition not reached within a second");
    }
}

//! The write path: sends one insert or delete to its replicas and lets the
//! [`QuorumTracker`] decide it.
//!
//! ```text
//! gateway                                replicas (placement order)
//!   | -- Apply{require_in_cart: delete} -->  d1, d2, d3    all at once, each in its own task
//!   | <-- Applied / NotInCart / error ----   as they come  tracker.record(..)
//!   | -- Apply{require_in_cart: false} --->  stale ones    a legitimate delete only
//!   | -- Apply{restamped: true} ---------->  all again     only if the tracker says Restamp:
//!                                                       stamped above the newest version
//!                                                       a replica named
//!   answer as soon as tracker.outcome() is decided, or at the deadline
//! ```
//!
//! Every request to a replica runs in its own task, so a replica the gateway stops waiting
//! for (the quorum was reached without it) still receives the operation. A replica that
//! refuses a delete as not-in-cart only after the delete was decided is not sent it again;
//! it is merely stale, which read repair (a later step) fixes like any missed write.

use std::sync::Arc;

use cartdb_core::cart::{DeviceId, ItemKey, ItemMeta, OpKind, Operation};
use cartdb_core::config::Replication;
use cartdb_core::version::HybridClock;
use cartdb_core::wire::{DataCall, DataFailure, DataRequest, DataResponse};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::time::Instant;

use crate::replicas::{ReplicaError, Replicas, response_name};
use crate::write_quorum::{ApplyReply, QuorumTracker, WriteOutcome};

/// One operation on one cart item, as sent to every replica.
#[derive(Debug, Clone)]
pub struct ItemWrite {
    pub key: ItemKey,
    pub meta: ItemMeta,
    pub op: Operation,
}

/// Where a write goes: the devices the placement chose (primary first), and the epoch of the
/// map it chose them with, which every request carries for the data nodes' epoch fence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placed {
    pub devices: Vec<DeviceId>,
    pub epoch: u64,
}

/// Most rounds one write is sent in: the first, and the rounds stamped again above a
/// newer operation a replica named. Each round's new version is above every version the
/// rounds before were told of, so only operations issued meanwhile can refuse it again.
const MAX_ROUNDS: u32 = 4;

/// Sends `write` to `devices` (the placement's choice, primary first) and returns the
/// outcome as soon as it is decided, or when `deadline` passes. When the replicas ask for
/// it ([`WriteOutcome::Restamp`]), stamps the operation again with `clock`, above the
/// newest version they named, and sends it again: the outcome is never `Restamp`.
pub async fn replicate(
    replicas: &Replicas,
    placed: &Placed,
    write: Arc<ItemWrite>,
    replication: Replication,
    clock: &HybridClock,
    deadline: Instant,
) -> WriteOutcome {
    let mut write = write;
    let mut restamped = false;
    let mut round = 1;
    loop {
        let outcome =
            replicate_once(replicas, placed, &write, restamped, replication, deadline).await;
        let WriteOutcome::Restamp { above, failure } = outcome else {
            return outcome;
        };
        if round == MAX_ROUNDS || Instant::now() >= deadline {
            return WriteOutcome::QuorumNotReached(failure);
        }
        if let Err(refused) = clock.observe(above) {
            tracing::warn!(%refused, ?above, "not stamping a write above a version from the future");
            return WriteOutcome::QuorumNotReached(failure);
        }
        metrics::counter!("cartdb_gateway_restamped_writes_total").increment(1);
        let mut next = (*write).clone();
        next.op.version = clock.now();
        write = Arc::new(next);
        restamped = true;
        round += 1;
    }
}

/// One round of [`replicate`]: the operation as stamped, to every device.
async fn replicate_once(
    replicas: &Replicas,
    placed: &Placed,
    write: &Arc<ItemWrite>,
    restamped: bool,
    replication: Replication,
    deadline: Instant,
) -> WriteOutcome {
    let (kind, version) = (write.op.kind, write.op.version);
    let mut tracker = QuorumTracker::new(kind, version, &placed.devices, replication);
    let require_in_cart = kind == OpKind::Delete;
    let send = |device, require_in_cart| {
        let stamp = Stamp {
            epoch: placed.epoch,
            require_in_cart,
            restamped,
        };
        send(replicas, device, write.clone(), stamp, deadline)
    };
    let mut in_flight: FuturesUnordered<_> = placed
        .devices
        .iter()
        .map(|&device| send(device, require_in_cart))
        .collect();
    loop {
        for device in tracker.take_stale_replicas() {
            in_flight.push(send(device, false));
        }
        if let Some(outcome) = tracker.outcome() {
            return outcome;
        }
        match tokio::time::timeout_at(deadline, in_flight.next()).await {
            Ok(Some((device, reply))) => tracker.record(device, reply),
            // Nothing left in flight, or out of time: whoever has not answered has failed.
            Ok(None) | Err(_) => tracker.close(),
        }
    }
}

/// The map epoch and flags of one apply request.
#[derive(Clone, Copy)]
struct Stamp {
    epoch: u64,
    require_in_cart: bool,
    restamped: bool,
}

/// Starts one apply request in its own task and returns a future of its answer.
fn send(
    replicas: &Replicas,
    device: DeviceId,
    write: Arc<ItemWrite>,
    stamp: Stamp,
    deadline: Instant,
) -> impl Future<Output = (DeviceId, ApplyReply)> + use<> {
    let peer = replicas.peer(device);
    let task = peer.map(|peer| {
        tokio::spawn(async move {
            let call = DataCall {
                epoch: stamp.epoch,
                request: DataRequest::Apply {
                    key: write.key.clone(),
                    meta: write.meta.clone(),
                    op: write.op,
                    require_in_cart: stamp.require_in_cart,
                    restamped: stamp.restamped,
                },
            };
            let timeout = deadline.saturating_duration_since(Instant::now());
            apply_reply(device, peer.call(&call, timeout).await)
        })
    });
    async move {
        let reply = match task {
            None => ApplyReply::Failed(ReplicaError::Down { device }.to_string()),
            Some(task) => task
                .await
                .unwrap_or_else(|e| ApplyReply::Failed(format!("request task failed: {e}"))),
        };
        (device, reply)
    }
}

/// What the quorum makes of one replica's answer to an apply.
fn apply_reply(device: DeviceId, result: Result<DataResponse, ReplicaError>) -> ApplyReply {
    match result {
        Ok(DataResponse::Applied { qty, held, .. }) => ApplyReply::Applied { qty, held },
        Ok(DataResponse::NotInCart) => ApplyReply::NotInCart,
        Err(ReplicaError::Refused(DataFailure::OutOfOrder { newest, .. })) => {
            ApplyReply::OutOfOrder { newest }
        }
        Err(ReplicaError::Refused(busy @ DataFailure::ItemBusy { .. })) => {
            ApplyReply::Busy(busy.to_string())
        }
        Ok(other) => ApplyReply::Failed(
            ReplicaError::Unexpected {
                device,
                request: "Apply",
                response: response_name(&other),
            }
            .to_string(),
        ),
        Err(e) => ApplyReply::Failed(e.to_string()),
    }
}

//! The write path: sends one insert or delete to its replicas and lets the
//! [`QuorumTracker`] decide it.
//!
//! ```text
//! gateway                                replicas (placement order)
//!   | -- Apply{require_in_cart: delete} -->  d1, d2, d3    all at once, each in its own task
//!   | <-- Applied / NotInCart / error ----   as they come  tracker.record(..)
//!   | -- Apply{require_in_cart: false} --->  stale ones    a legitimate delete only
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
use cartdb_core::wire::{DataRequest, DataResponse};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::time::Instant;

use crate::replicas::{ReplicaError, Replicas, call_peer, response_name};
use crate::write_quorum::{ApplyReply, QuorumTracker, WriteOutcome};

/// One operation on one cart item, as sent to every replica.
#[derive(Debug, Clone)]
pub struct ItemWrite {
    pub key: ItemKey,
    pub meta: ItemMeta,
    pub op: Operation,
}

/// Sends `write` to `devices` (the placement's choice, primary first) and returns the
/// outcome as soon as it is decided, or when `deadline` passes.
pub async fn replicate(
    replicas: &Replicas,
    devices: &[DeviceId],
    write: Arc<ItemWrite>,
    replication: Replication,
    deadline: Instant,
) -> WriteOutcome {
    let mut tracker = QuorumTracker::new(write.op.kind, devices, replication);
    let require_in_cart = write.op.kind == OpKind::Delete;
    let mut in_flight: FuturesUnordered<_> = devices
        .iter()
        .map(|&device| send(replicas, device, write.clone(), require_in_cart, deadline))
        .collect();
    loop {
        for device in tracker.take_stale_replicas() {
            in_flight.push(send(replicas, device, write.clone(), false, deadline));
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

/// Starts one apply request in its own task and returns a future of its answer.
fn send(
    replicas: &Replicas,
    device: DeviceId,
    write: Arc<ItemWrite>,
    require_in_cart: bool,
    deadline: Instant,
) -> impl Future<Output = (DeviceId, ApplyReply)> + use<> {
    let peer = replicas.peer(device);
    let task = peer.map(|peer| {
        tokio::spawn(async move {
            let request = DataRequest::Apply {
                key: write.key.clone(),
                meta: write.meta.clone(),
                op: write.op,
                require_in_cart,
            };
            let timeout = deadline.saturating_duration_since(Instant::now());
            apply_reply(device, call_peer(device, &peer, &request, timeout).await)
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
        Ok(DataResponse::Applied { qty, .. }) => ApplyReply::Applied { qty },
        Ok(DataResponse::NotInCart) => ApplyReply::NotInCart,
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

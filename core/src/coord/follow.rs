//! Followers: one task per watched part of the tree and per session, keeping an in-memory
//! copy fresh.
//!
//! A follower installs its persistent watches first and reads second, so no change can fall
//! between the read and the watch. After every reconnect it installs its watches again (the
//! client library does not re-register persistent watches) and reads everything again,
//! because persistent watches lose the events of the disconnected interval (ZOOKEEPER-4698);
//! after a failed read it reads again every [`RETRY_DELAY`]. It ends when the session ends
//! or the coordinator shuts down; the supervisor starts new followers with the next session.
//!
//! Data read from ZooKeeper is untrusted: a malformed map, catalog or registration is logged
//! and refused, and the previous good value stays published.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::stream::{self, BoxStream, StreamExt};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use zookeeper_client::{AddWatchMode, EventType, PersistentWatcher, SessionState, WatchedEvent};

use crate::catalog::Catalog;

use super::error::CoordError;
use super::layout;
use super::map::ClusterMap;
use super::membership::{self, Membership};
use super::zk::{self, Zk};

/// Pause before retrying a failed read or watch installation.
pub(crate) const RETRY_DELAY: Duration = Duration::from_millis(500);

/// One watched part of the tree and the in-memory copy it keeps.
pub(crate) trait Follower: Send + 'static {
    /// For logs.
    const NAME: &'static str;
    /// The watches whose events concern this follower.
    const WATCHES: &'static [(&'static str, AddWatchMode)];

    /// Reads the whole watched state and publishes it.
    fn reload(&mut self, zk: &Zk) -> impl Future<Output = Result<(), CoordError>> + Send;

    /// Applies one node event; by default by reading everything again.
    fn apply(
        &mut self,
        zk: &Zk,
        _event: WatchedEvent,
    ) -> impl Future<Output = Result<(), CoordError>> + Send {
        self.reload(zk)
    }
}

/// Runs `follower` for the life of `zk`'s session. `ready` fires after the first full read.
pub(crate) async fn follow<F: Follower>(
    mut follower: F,
    zk: Zk,
    stop: CancellationToken,
    ready: oneshot::Sender<()>,
) {
    let Some(mut events) = install(&zk, F::WATCHES, &stop).await else {
        return;
    };
    let mut ready = Some(ready);
    let mut stale = true;
    loop {
        if stale {
            match follower.reload(&zk).await {
                Ok(()) => {
                    stale = false;
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(());
                    }
                }
                Err(CoordError::SessionExpired) => return,
                Err(e) => {
                    warn!(follower = F::NAME, error = %e, "reading ZooKeeper failed; will retry")
                }
            }
        }
        let step = tokio::select! {
            () = stop.cancelled() => Step::Stop,
            () = tokio::time::sleep(RETRY_DELAY), if stale => Step::Reload,
            event = events.next() => on_event(&mut follower, &zk, event).await,
        };
        match step {
            Step::Stop => return,
            Step::Reload => stale = true,
            Step::Reconnected => {
                // zookeeper-client 0.11.2 does not re-register persistent watches with the
                // server after a reconnect that keeps the session (`resend_watches` sends
                // them only in the SetWatches2 form, which its index bug never selects), so
                // without this no event would ever arrive again. Adding the watches anew
                // registers them; the old watchers are dropped after, and since the new ones
                // share their paths, dropping them removes nothing on the server.
                let Some(fresh) = install(&zk, F::WATCHES, &stop).await else {
                    return;
                };
                events = fresh;
                stale = true;
            }
            Step::Continue => {}
        }
    }
}

/// What a follower does after an event.
enum Step {
    Continue,
    Reload,
    /// Install the watches again, then read everything.
    Reconnected,
    Stop,
}

/// Handles one watch event: a node event is applied, a reconnect calls for new watches and a
/// full read (events of the disconnected interval may be lost), a terminal session state
/// ends the follower.
async fn on_event<F: Follower>(follower: &mut F, zk: &Zk, event: Option<WatchedEvent>) -> Step {
    let Some(event) = event else {
        return Step::Stop;
    };
    if event.event_type == EventType::Session {
        return match event.session_state {
            state if state.is_terminated() => Step::Stop,
            SessionState::SyncConnected => Step::Reconnected,
            _ => Step::Continue,
        };
    }
    match follower.apply(zk, event).await {
        Ok(()) => Step::Continue,
        Err(CoordError::SessionExpired) => Step::Stop,
        Err(e) => {
            warn!(follower = F::NAME, error = %e, "applying a ZooKeeper event failed; reading everything again");
            Step::Reload
        }
    }
}

/// Installs the watches, retrying until they are in place; `None` when the session ended or
/// the coordinator stopped first.
async fn install(
    zk: &Zk,
    watches: &[(&str, AddWatchMode)],
    stop: &CancellationToken,
) -> Option<BoxStream<'static, WatchedEvent>> {
    let mut watchers = Vec::with_capacity(watches.len());
    for &(path, mode) in watches {
        loop {
            match zk.watch(path, mode).await {
                Ok(watcher) => break watchers.push(watcher),
                Err(CoordError::SessionExpired) => return None,
                Err(e) => {
                    warn!(path, error = %e, "installing a ZooKeeper watch failed; will retry")
                }
            }
            tokio::select! {
                () = stop.cancelled() => return None,
                () = tokio::time::sleep(RETRY_DELAY) => {}
            }
        }
    }
    Some(stream::select_all(watchers.into_iter().map(events_of)).boxed())
}

/// The events of one watcher. The stream ends after a terminal session event, because
/// polling a persistent watcher after that panics.
fn events_of(watcher: PersistentWatcher) -> BoxStream<'static, WatchedEvent> {
    stream::unfold(Some(watcher), |watcher| async move {
        let mut watcher = watcher?;
        let event = watcher.changed().await;
        let terminal =
            event.event_type == EventType::Session && event.session_state.is_terminated();
        Some((event, (!terminal).then_some(watcher)))
    })
    .boxed()
}

/// A watch channel whose value only moves forward in znode generation (see
/// [`zk::generation`]), so that a slow read cannot replace what a later write already
/// published.
#[derive(Debug)]
pub(crate) struct Versioned<T> {
    sender: watch::Sender<T>,
    generation: AtomicU64,
}

impl<T> Versioned<T> {
    pub(crate) fn new(initial: T) -> Self {
        Self {
            sender: watch::Sender::new(initial),
            generation: AtomicU64::new(0),
        }
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<T> {
        self.sender.subscribe()
    }

    pub(crate) fn borrow(&self) -> watch::Ref<'_, T> {
        self.sender.borrow()
    }

    /// Publishes `value` if `generation` is newer than the last published one.
    pub(crate) fn publish(&self, generation: u64, value: T) -> bool {
        // The closure runs under the channel's write lock, so check-and-store is atomic
        // with respect to other publishers.
        self.sender.send_if_modified(|current| {
            if generation <= self.generation.load(Ordering::Acquire) {
                return false;
            }
            self.generation.store(generation, Ordering::Release);
            *current = value;
            true
        })
    }
}

/// Keeps [`Membership`] fresh from `/live` and `/gateways`.
pub(crate) struct MembersFollower {
    pub(crate) members: Arc<watch::Sender<Arc<Membership>>>,
}

impl Follower for MembersFollower {
    const NAME: &'static str = "members";
    const WATCHES: &'static [(&'static str, AddWatchMode)] = &[
        (layout::LIVE, AddWatchMode::Persistent),
        (layout::GATEWAYS, AddWatchMode::Persistent),
    ];

    async fn reload(&mut self, zk: &Zk) -> Result<(), CoordError> {
        let previous = self.members.borrow().clone();
        let devices = read_registrations(
            zk,
            layout::LIVE,
            layout::device_id,
            (&previous.devices, &previous.device_metrics),
        );
        let gateways = read_registrations(
            zk,
            layout::GATEWAYS,
            layout::gateway_id,
            (&previous.gateways, &previous.gateway_metrics),
        );
        let ((devices, device_metrics), (gateways, gateway_metrics)) =
            tokio::try_join!(devices, gateways)?;
        let next = Membership {
            devices,
            gateways,
            device_metrics,
            gateway_metrics,
        };
        self.members.send_if_modified(|current| {
            let changed = **current != next;
            if changed {
                *current = Arc::new(next);
            }
            changed
        });
        Ok(())
    }
}

/// Reads the ephemeral registrations under `parent`: the addresses, and the metrics
/// addresses of those that gave one. A child with an unexpected name is ignored; one with
/// malformed data keeps its previous addresses (or stays absent).
async fn read_registrations(
    zk: &Zk,
    parent: &str,
    id_of: fn(&str) -> Option<u32>,
    previous: (&BTreeMap<u32, String>, &BTreeMap<u32, String>),
) -> Result<(BTreeMap<u32, String>, BTreeMap<u32, String>), CoordError> {
    let children = zk.children(parent).await?;
    let reads = children.iter().filter_map(|child| {
        let Some(id) = id_of(child) else {
            debug!(parent, child, "ignoring a znode that is not a registration");
            return None;
        };
        let path = format!("{parent}/{child}");
        Some(async move { zk.get(&path).await.map(|data| (id, path, data)) })
    });
    let (mut live, mut metrics) = (BTreeMap::new(), BTreeMap::new());
    for (id, path, data) in futures::future::try_join_all(reads).await? {
        // None: the process deregistered between the listing and the read.
        let Some((data, _)) = data else { continue };
        match membership::decode(&data) {
            Ok(endpoint) => {
                live.insert(id, endpoint.address);
                if let Some(address) = endpoint.metrics {
                    metrics.insert(id, address);
                }
            }
            Err(problem) => {
                warn!(path, problem, "refusing a malformed registration");
                if let Some(address) = previous.0.get(&id) {
                    live.insert(id, address.clone());
                }
                if let Some(address) = previous.1.get(&id) {
                    metrics.insert(id, address.clone());
                }
            }
        }
    }
    Ok((live, metrics))
}

/// Keeps the [`ClusterMap`] fresh from `/map`.
pub(crate) struct MapFollower {
    pub(crate) map: Arc<Versioned<Option<Arc<ClusterMap>>>>,
}

impl Follower for MapFollower {
    const NAME: &'static str = "map";
    const WATCHES: &'static [(&'static str, AddWatchMode)] =
        &[(layout::MAP, AddWatchMode::Persistent)];

    async fn reload(&mut self, zk: &Zk) -> Result<(), CoordError> {
        let Some((data, stat)) = zk.get(layout::MAP).await? else {
            if self.map.borrow().is_some() {
                warn!("{} was deleted; keeping the last map", layout::MAP);
            }
            return Ok(());
        };
        let epoch = zk::generation(&stat);
        match ClusterMap::parse(&data, epoch) {
            Ok(map) => {
                if self.map.publish(epoch, Some(Arc::new(map))) {
                    info!(epoch, "CRUSH map loaded");
                }
            }
            Err(e) => {
                warn!(epoch, error = %e, "refusing an invalid CRUSH map; keeping the last one")
            }
        }
        Ok(())
    }
}

/// Keeps the [`Catalog`] fresh from `/catalog`.
pub(crate) struct CatalogFollower {
    pub(crate) catalog: Arc<Versioned<Arc<Catalog>>>,
}

impl Follower for CatalogFollower {
    const NAME: &'static str = "catalog";
    const WATCHES: &'static [(&'static str, AddWatchMode)] =
        &[(layout::CATALOG, AddWatchMode::Persistent)];

    async fn reload(&mut self, zk: &Zk) -> Result<(), CoordError> {
        let Some((data, stat)) = zk.get(layout::CATALOG).await? else {
            return Ok(());
        };
        match Catalog::from_json(&data) {
            Ok(catalog) => {
                self.catalog
                    .publish(zk::generation(&stat), Arc::new(catalog));
            }
            Err(e) => {
                warn!(version = stat.version, error = %e, "refusing an invalid catalog; keeping the last one")
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versioned_values_only_move_forward() {
        let cell = Versioned::new(0);
        let rx = cell.subscribe();
        assert!(!cell.publish(0, 9));
        assert!(cell.publish(1, 10));
        assert!(cell.publish(2, 12));
        assert!(!cell.publish(1, 11));
        assert!(!cell.publish(2, 13));
        assert_eq!(*rx.borrow(), 12);
    }
}

//! The session supervisor: owns the ZooKeeper client across session expiries.
//!
//! ```text
//!            connect() ──► open session ──► start_session ──► supervise (loop)
//!                                               │                 │ waits for the session to end
//!   followers (members, map, catalog)           │                 │ (Expired / Closed / AuthFailed)
//!   registrar (re-creates this process's        │                 ▼
//!   ephemerals) ◄───────────────────────────────┘   reopen with backoff ──► start_session ...
//! ```
//!
//! A ZooKeeper session that expired is dead for good: its ephemerals are gone and every call
//! fails. The supervisor then opens a new session, publishes it for API calls, re-creates the
//! ephemerals registered through this process and starts new followers, which install their
//! watches again and re-read everything.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, oneshot, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use zookeeper_client::{CreateMode, SessionState};

use crate::cart::DeviceId;
use crate::catalog::Catalog;

use super::CoordConfig;
use super::error::CoordError;
use super::follow::{
    self, CatalogFollower, Follower, MapFollower, MembersFollower, RETRY_DELAY, Versioned,
};
use super::map::ClusterMap;
use super::membership::{self, Membership};
use super::zk::{Created, OP_TIMEOUT, Zk};

/// Longest pause between attempts to open a new session.
const MAX_REOPEN_DELAY: Duration = Duration::from_secs(5);

/// How often a registration is retried when its znode keeps changing under us.
const EPHEMERAL_ATTEMPTS: u32 = 5;

/// State shared by the coordinator handles, the supervisor and the session tasks.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) config: CoordConfig,
    pub(crate) session: watch::Sender<Slot>,
    /// What this process registered, to re-create after an expiry. Held across the ZooKeeper
    /// calls that (de)register, so a restore never races a deregistration.
    pub(crate) registrations: Mutex<Registrations>,
    pub(crate) members: Arc<watch::Sender<Arc<Membership>>>,
    pub(crate) map: Arc<Versioned<Option<Arc<ClusterMap>>>>,
    pub(crate) catalog: Arc<Versioned<Arc<Catalog>>>,
}

impl Inner {
    pub(crate) fn new(config: CoordConfig) -> Self {
        Self {
            config,
            session: watch::Sender::new(Slot::Connecting),
            registrations: Mutex::default(),
            members: Arc::new(watch::Sender::new(Arc::default())),
            map: Arc::new(Versioned::new(None)),
            catalog: Arc::new(Versioned::new(Arc::default())),
        }
    }
}

/// The session API calls use.
#[derive(Clone, Debug)]
pub(crate) enum Slot {
    /// Between an expiry and the next session.
    Connecting,
    Live(Zk),
    /// After shutdown.
    Closed,
}

/// Ephemerals this process registered.
#[derive(Debug, Default)]
pub(crate) struct Registrations {
    pub(crate) devices: BTreeMap<DeviceId, String>,
    /// Gateway id and address.
    pub(crate) gateway: Option<(u32, String)>,
    /// Where this process serves `GET /metrics`, registered with each of the above.
    pub(crate) metrics: Option<String>,
}

/// Starts the tasks of one session and publishes it for API calls. Returns the tasks and one
/// signal per follower that fires after its first full read.
pub(crate) fn start_session(
    inner: &Arc<Inner>,
    zk: &Zk,
    stop: &CancellationToken,
) -> (JoinSet<()>, Vec<oneshot::Receiver<()>>) {
    let mut session = SessionTasks {
        tasks: JoinSet::new(),
        ready: Vec::new(),
        zk,
        stop,
    };
    session.follow(MembersFollower {
        members: inner.members.clone(),
    });
    session.follow(MapFollower {
        map: inner.map.clone(),
    });
    session.follow(CatalogFollower {
        catalog: inner.catalog.clone(),
    });
    // Published before the registrar takes the registrations lock: a register call holding
    // that lock may be waiting for this session.
    inner.session.send_replace(Slot::Live(zk.clone()));
    let registrar = restore_registrations(inner.clone(), zk.clone(), stop.clone());
    session.tasks.spawn(registrar);
    (session.tasks, session.ready)
}

struct SessionTasks<'a> {
    tasks: JoinSet<()>,
    ready: Vec<oneshot::Receiver<()>>,
    zk: &'a Zk,
    stop: &'a CancellationToken,
}

impl SessionTasks<'_> {
    fn follow<F: Follower>(&mut self, follower: F) {
        let (ready, ready_rx) = oneshot::channel();
        let task = follow::follow(follower, self.zk.clone(), self.stop.clone(), ready);
        self.tasks.spawn(task);
        self.ready.push(ready_rx);
    }
}

/// Owns the session until `stop`: waits for it to end, then opens the next one.
pub(crate) async fn supervise(
    inner: Arc<Inner>,
    mut zk: Zk,
    mut tasks: JoinSet<()>,
    stop: CancellationToken,
) {
    loop {
        let state = session_end(&zk, &stop).await;
        inner.session.send_replace(Slot::Connecting);
        drain(&mut tasks).await;
        if stop.is_cancelled() {
            break;
        }
        warn!(session = %zk.session_id(), %state, "ZooKeeper session ended; opening a new one");
        let Some(next) = reopen(&inner.config, &stop).await else {
            break;
        };
        zk = next;
        info!(session = %zk.session_id(), "new ZooKeeper session; re-registering and re-reading");
        (tasks, _) = start_session(&inner, &zk, &stop);
    }
    inner.session.send_replace(Slot::Closed);
    // Dropping the last client clone closes the session, which deletes this process's
    // ephemerals at once instead of after the session timeout.
    drop(zk);
    info!("ZooKeeper coordinator stopped");
}

/// Waits until the session reaches a terminal state (or `stop`), logging connection changes
/// and counting them: `cartdb_zookeeper_connected` (1 while connected),
/// `cartdb_zookeeper_sessions_total` (sessions opened: the first, and one per expiry) and
/// `cartdb_zookeeper_reconnects_total` (reconnections within a session).
async fn session_end(zk: &Zk, stop: &CancellationToken) -> SessionState {
    let connected = metrics::gauge!("cartdb_zookeeper_connected");
    metrics::counter!("cartdb_zookeeper_sessions_total").increment(1);
    let mut states = zk.state_watcher();
    let mut state = zk.state();
    connected.set(if state == SessionState::SyncConnected {
        1.0
    } else {
        0.0
    });
    while !state.is_terminated() {
        tokio::select! {
            () = stop.cancelled() => return SessionState::Closed,
            next = states.changed() => state = next,
        }
        match state {
            SessionState::Disconnected => {
                connected.set(0.0);
                warn!(session = %zk.session_id(), "disconnected from ZooKeeper")
            }
            SessionState::SyncConnected => {
                connected.set(1.0);
                metrics::counter!("cartdb_zookeeper_reconnects_total").increment(1);
                info!(session = %zk.session_id(), "reconnected to ZooKeeper")
            }
            _ => {}
        }
    }
    connected.set(0.0);
    state
}

/// Waits for the session's tasks; they end by themselves once the session is over, the bound
/// only guards against a task stuck in a call.
async fn drain(tasks: &mut JoinSet<()>) {
    let all = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(OP_TIMEOUT * 2, all).await.is_err() {
        warn!("session tasks did not stop in time; aborting them");
        tasks.abort_all();
    }
}

/// Opens a new session, retrying with backoff; `None` on `stop`.
async fn reopen(config: &CoordConfig, stop: &CancellationToken) -> Option<Zk> {
    let mut delay = RETRY_DELAY;
    loop {
        tokio::select! {
            () = stop.cancelled() => return None,
            opened = Zk::open(config) => match opened {
                Ok(zk) => return Some(zk),
                Err(e) => warn!(error = %e, "opening a ZooKeeper session failed; will retry"),
            },
        }
        tokio::select! {
            () = stop.cancelled() => return None,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(MAX_REOPEN_DELAY);
    }
}

/// Re-creates every registration of this process in a new session, retrying until done, the
/// session ends or `stop`.
async fn restore_registrations(inner: Arc<Inner>, zk: Zk, stop: CancellationToken) {
    loop {
        let restored = {
            let registrations = inner.registrations.lock().await;
            restore(&zk, &registrations).await
        };
        match restored {
            Ok(()) | Err(CoordError::SessionExpired) => return,
            Err(e) => warn!(error = %e, "re-registering failed; will retry"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(RETRY_DELAY) => {}
        }
    }
}

async fn restore(zk: &Zk, registrations: &Registrations) -> Result<(), CoordError> {
    for (&device, address) in &registrations.devices {
        let path = super::layout::device(device);
        ensure_ephemeral(
            zk,
            &path,
            &membership::encode(address, registrations.metrics.as_deref()),
        )
        .await?;
        info!(device, path, "device registration restored");
    }
    if let Some((id, address)) = &registrations.gateway {
        let path = super::layout::gateway(*id);
        ensure_ephemeral(
            zk,
            &path,
            &membership::encode(address, registrations.metrics.as_deref()),
        )
        .await?;
        info!(gateway = id, path, "gateway registration restored");
    }
    Ok(())
}

/// Makes `path` an ephemeral of this session holding `data`. A znode left at `path` by
/// another session (typically this node's previous incarnation after a kill -9 and a restart
/// within the session timeout) is deleted and replaced.
///
/// # Errors
/// A failed call, or [`CoordError::Contended`] when the znode keeps changing.
pub(crate) async fn ensure_ephemeral(zk: &Zk, path: &str, data: &[u8]) -> Result<(), CoordError> {
    for _ in 0..EPHEMERAL_ATTEMPTS {
        match zk.create(path, data, CreateMode::Ephemeral).await? {
            Created::New(_) => return Ok(()),
            Created::NoParent => zk.mkdir(parent_of(path)).await?,
            Created::Existed => {
                if take_over(zk, path, data).await? {
                    return Ok(());
                }
            }
        }
    }
    Err(CoordError::Contended {
        op: "register",
        path: path.to_owned(),
        attempts: EPHEMERAL_ATTEMPTS,
    })
}

/// Deals with an existing znode at `path`: `true` when it is already this session's (its data
/// is updated), `false` when it was removed (or changed) and the create should be retried.
async fn take_over(zk: &Zk, path: &str, data: &[u8]) -> Result<bool, CoordError> {
    let Some(stat) = zk.stat(path).await? else {
        return Ok(false);
    };
    if stat.ephemeral_owner == zk.session_id().0 {
        return Ok(zk.set(path, data, stat.version).await?.is_some());
    }
    warn!(
        path,
        owner = format_args!("{:#x}", stat.ephemeral_owner),
        "replacing a registration left by another session"
    );
    zk.delete(path, stat.version).await?;
    Ok(false)
}

/// Deletes `path` if it is an ephemeral of this session; a registration of another session is
/// left alone.
///
/// # Errors
/// A failed call.
pub(crate) async fn remove_own_ephemeral(zk: &Zk, path: &str) -> Result<(), CoordError> {
    let Some(stat) = zk.stat(path).await? else {
        return Ok(());
    };
    if stat.ephemeral_owner != zk.session_id().0 {
        warn!(path, "not deregistering a znode owned by another session");
        return Ok(());
    }
    zk.delete(path, stat.version).await?;
    Ok(())
}

fn parent_of(path: &str) -> &str {
    match path.rsplit_once('/') {
        Some(("", _)) | None => "/",
        Some((parent, _)) => parent,
    }
}

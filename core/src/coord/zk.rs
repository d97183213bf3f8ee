//! A thin wrapper over one ZooKeeper session (a chrooted [`Client`]): every call is bounded by
//! [`OP_TIMEOUT`], errors carry the operation and path, and the "expected" outcomes
//! (missing node, existing node, lost compare-and-set) are values instead of errors.

use std::future::Future;
use std::time::Duration;

use zookeeper_client::{
    Acl, Acls, AddWatchMode, Client, CreateMode, Error, Permission, PersistentWatcher, SessionId,
    SessionState, Stat, StateWatcher,
};

use super::CoordConfig;
use super::error::CoordError;
use super::layout;

/// Longest a single ZooKeeper call may take. Calls issued while the client reconnects wait in
/// its queue, so without a bound a caller could wait for as long as the outage lasts.
pub(crate) const OP_TIMEOUT: Duration = Duration::from_secs(5);

/// The ACL of every znode a session with credentials creates: anyone may read it (operators'
/// tools, `zkCli.sh ls`), only sessions authenticated as the cluster's digest identity may
/// change or delete it or create children (ZooKeeper turns the `auth` id into the creating
/// session's `digest:cartdb:<hash>`).
static CARTDB_ACLS: [Acl; 2] = [
    Acl::new_const(Permission::READ, "world", "anyone"),
    Acl::new_const(Permission::ALL, "auth", ""),
];

/// One ZooKeeper session, rooted at the configured chroot. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Zk {
    client: Client,
    acls: Acls<'static>,
}

/// What a create did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Created {
    /// Created; the sequence number for sequential znodes, -1 otherwise.
    New(i64),
    /// A znode with this path already exists.
    Existed,
    /// The parent does not exist.
    NoParent,
}

impl Zk {
    /// Opens a session and creates the chroot and the layout's parents.
    ///
    /// # Errors
    /// [`CoordError::Connect`] or a timeout when no session is established, otherwise the
    /// first failed create.
    pub(crate) async fn open(config: &CoordConfig) -> Result<Zk, CoordError> {
        let mut connector = Client::connector();
        connector = connector.with_session_timeout(config.session_timeout);
        let acls = match &config.credentials {
            Some(credentials) => {
                connector = connector.with_auth("digest", &credentials.digest_auth());
                Acls::new(&CARTDB_ACLS)
            }
            None => Acls::anyone_all(),
        };
        let connect = connector.connect(&config.servers);
        // The client retries every server until roughly the session timeout passes.
        let after = config.session_timeout.max(OP_TIMEOUT) * 2;
        let root = tokio::time::timeout(after, connect)
            .await
            .map_err(|_| CoordError::Timeout {
                op: "connect",
                path: config.servers.clone(),
                after,
            })?
            .map_err(|source| CoordError::Connect {
                servers: config.servers.clone(),
                source,
            })?;
        let unrooted = Zk {
            client: root.clone(),
            acls,
        };
        unrooted.mkdir(&config.chroot).await?;
        let client = root
            .chroot(config.chroot.as_str())
            .map_err(|_| CoordError::InvalidName {
                op: "connect",
                field: "chroot",
                value: config.chroot.clone(),
                problem: "not an absolute znode path",
            })?;
        let zk = Zk { client, acls };
        for parent in layout::PARENTS {
            zk.mkdir(parent).await?;
        }
        Ok(zk)
    }

    pub(crate) fn session_id(&self) -> SessionId {
        self.client.session_id()
    }

    pub(crate) fn state(&self) -> SessionState {
        self.client.state()
    }

    pub(crate) fn state_watcher(&self) -> StateWatcher {
        self.client.state_watcher()
    }

    /// Data and stat of a znode, `None` when it does not exist.
    pub(crate) async fn get(&self, path: &str) -> Result<Option<(Vec<u8>, Stat)>, CoordError> {
        absent_as_none(timed("get", path, self.client.get_data(path)).await)
    }

    /// Stat of a znode, `None` when it does not exist.
    pub(crate) async fn stat(&self, path: &str) -> Result<Option<Stat>, CoordError> {
        timed("stat", path, self.client.check_stat(path)).await
    }

    /// Children of a znode; none when it does not exist.
    pub(crate) async fn children(&self, path: &str) -> Result<Vec<String>, CoordError> {
        let listed = timed("list", path, self.client.list_children(path)).await;
        Ok(absent_as_none(listed)?.unwrap_or_default())
    }

    pub(crate) async fn create(
        &self,
        path: &str,
        data: &[u8],
        mode: CreateMode,
    ) -> Result<Created, CoordError> {
        let options = mode.with_acls(self.acls);
        let created = self.client.create(path, data, &options);
        match tokio::time::timeout(OP_TIMEOUT, created).await {
            Err(_) => Err(timeout("create", path)),
            Ok(Ok((_, sequence))) => Ok(Created::New(sequence.into_i64())),
            Ok(Err(Error::NodeExists)) => Ok(Created::Existed),
            Ok(Err(Error::NoNode)) => Ok(Created::NoParent),
            Ok(Err(e)) => Err(zk_error("create", path, e)),
        }
    }

    /// Creates a persistent znode and any missing parents (`mkdir -p`); an existing znode is
    /// fine.
    pub(crate) async fn mkdir(&self, path: &str) -> Result<(), CoordError> {
        let options = CreateMode::Persistent.with_acls(self.acls);
        timed("mkdir", path, self.client.mkdir(path, &options)).await
    }

    /// Compare-and-set of a znode's data: `None` when its version is no longer `version` (or
    /// it is gone), otherwise the new stat.
    pub(crate) async fn set(
        &self,
        path: &str,
        data: &[u8],
        version: i32,
    ) -> Result<Option<Stat>, CoordError> {
        let set = self.client.set_data(path, data, Some(version));
        match tokio::time::timeout(OP_TIMEOUT, set).await {
            Err(_) => Err(timeout("set", path)),
            Ok(Ok(stat)) => Ok(Some(stat)),
            Ok(Err(Error::BadVersion | Error::NoNode)) => Ok(None),
            Ok(Err(e)) => Err(zk_error("set", path, e)),
        }
    }

    /// Deletes a znode if it still has `version`; `false` when it was gone or changed.
    pub(crate) async fn delete(&self, path: &str, version: i32) -> Result<bool, CoordError> {
        let deleted = self.client.delete(path, Some(version));
        match tokio::time::timeout(OP_TIMEOUT, deleted).await {
            Err(_) => Err(timeout("delete", path)),
            Ok(Ok(())) => Ok(true),
            Ok(Err(Error::BadVersion | Error::NoNode)) => Ok(false),
            Ok(Err(e)) => Err(zk_error("delete", path, e)),
        }
    }

    /// Installs a persistent (optionally recursive) watch; the path need not exist.
    pub(crate) async fn watch(
        &self,
        path: &str,
        mode: AddWatchMode,
    ) -> Result<PersistentWatcher, CoordError> {
        timed("watch", path, self.client.watch(path, mode)).await
    }
}

/// A znode's generation: its data version + 1, so a freshly created znode is generation 1 and
/// "nothing published yet" is 0. The generation of `/map` is the map epoch.
pub(crate) fn generation(stat: &Stat) -> u64 {
    u64::try_from(stat.version).unwrap_or(0) + 1
}

async fn timed<T>(
    op: &'static str,
    path: &str,
    call: impl Future<Output = Result<T, Error>>,
) -> Result<T, CoordError> {
    match tokio::time::timeout(OP_TIMEOUT, call).await {
        Err(_) => Err(timeout(op, path)),
        Ok(result) => result.map_err(|e| zk_error(op, path, e)),
    }
}

fn absent_as_none<T>(result: Result<T, CoordError>) -> Result<Option<T>, CoordError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(CoordError::Zk {
            source: Error::NoNode,
            ..
        }) => Ok(None),
        Err(e) => Err(e),
    }
}

fn timeout(op: &'static str, path: &str) -> CoordError {
    CoordError::Timeout {
        op,
        path: path.to_owned(),
        after: OP_TIMEOUT,
    }
}

fn zk_error(op: &'static str, path: &str, source: Error) -> CoordError {
    match source {
        Error::SessionExpired => CoordError::SessionExpired,
        source => CoordError::Zk {
            op,
            path: path.to_owned(),
            source,
        },
    }
}

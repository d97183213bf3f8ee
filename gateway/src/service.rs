//! The gateway's [`rpc::Service`]: answers every [`GatewayRequest`] from an API server.
//!
//! Per request the service reads only local state (catalog, directory, the current
//! [`Topology`](crate::cluster_view::Topology)), talks to the data nodes, and reaches ZooKeeper in just two rare cases: the
//! first write of an item to a device the directory does not list yet, and catalog changes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use cartdb_core::cart::{InputError, ItemKey, ItemState, OpKind, Operation, Product, validate_id};
use cartdb_core::catalog::Catalog;
use cartdb_core::config::Replication;
use cartdb_core::coord::{CoordError, Directory};
use cartdb_core::merge::merge_states;
use cartdb_core::rpc;
use cartdb_core::version::HybridClock;
use cartdb_core::wire::{
    DataRequest, DataResponse, GatewayFailure, GatewayRequest, GatewayResponse, MaintenanceStatus,
    PolicyInfo, ReplicaDump, ServiceKind, SweepStatus,
};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::cart_lines::cart_lines;
use crate::cluster_view::ClusterView;
use crate::compaction::{CompactionSettings, Compactor};
use crate::coordination::Coordination;
use crate::op_id::{op_id, validate_idempotency_key};
use crate::policy::MergePolicy;
use crate::read::{CartQuery, CartRead, ReadError, ReadMode, read_cart, read_category};
use crate::read_repair::ReadRepair;
use crate::read_resolution::ReadShortfall;
use crate::replicas::Replicas;
use crate::write::{ItemWrite, replicate};
use crate::write_quorum::WriteOutcome;

/// Everything a [`GatewayService`] is made of.
pub struct ServiceParts {
    pub view: Arc<ClusterView>,
    pub replicas: Arc<Replicas>,
    pub coordination: Arc<dyn Coordination>,
    pub catalog: watch::Receiver<Arc<Catalog>>,
    pub directory: Arc<Directory>,
    /// This gateway's id (from ZooKeeper), which orders its versions against the others'.
    pub gateway_id: u32,
    pub replication: Replication,
    pub request_timeout: Duration,
    pub policy: PolicyInfo,
    /// The merge policy; `None`: the built-in reference merge.
    pub merge_policy: Option<Arc<MergePolicy>>,
    pub compaction: CompactionSettings,
}

/// Serves API servers' requests.
pub struct GatewayService {
    parts: ServiceParts,
    clock: HybridClock,
    read_repair: Arc<ReadRepair>,
    compactor: Arc<Compactor>,
    merge_fallbacks: AtomicU64,
    /// The anti-entropy sweep's progress, as last read from ZooKeeper.
    sweep: Mutex<Option<SweepStatus>>,
    /// This service, for background follow-up reads that outlive a request.
    me: Weak<GatewayService>,
}

type Answer = Result<GatewayResponse, GatewayFailure>;

impl GatewayService {
    pub fn new(parts: ServiceParts) -> Arc<Self> {
        let clock = HybridClock::new(parts.gateway_id);
        let read_repair = ReadRepair::new(parts.replicas.clone(), parts.request_timeout);
        let compactor = Compactor::new(
            parts.replicas.clone(),
            parts.compaction,
            parts.request_timeout,
        );
        Arc::new_cyclic(|me| Self {
            parts,
            clock,
            read_repair,
            compactor,
            merge_fallbacks: AtomicU64::new(0),
            sweep: Mutex::new(None),
            me: me.clone(),
        })
    }

    /// Answers one request.
    pub async fn handle(&self, request: GatewayRequest) -> GatewayResponse {
        let deadline = Instant::now() + self.parts.request_timeout;
        let answer = match request {
            GatewayRequest::Insert {
                user,
                item_name,
                idempotency_key,
            } => {
                self.write(OpKind::Add, user, item_name, idempotency_key, deadline)
                    .await
            }
            GatewayRequest::Delete {
                user,
                item_name,
                idempotency_key,
            } => {
                let kind = OpKind::Delete;
                self.write(kind, user, item_name, idempotency_key, deadline)
                    .await
            }
            GatewayRequest::ListAll { user } => self.list_all(&user, deadline).await,
            GatewayRequest::ListCategory { category } => {
                self.list_category(&category, deadline).await
            }
            GatewayRequest::Products => Ok(products(&self.catalog())),
            GatewayRequest::UpsertProduct { product } => self.upsert(product, deadline).await,
            GatewayRequest::Cluster => Ok(self.cluster()),
            GatewayRequest::Replicas { user } => self.replica_dump(&user, deadline).await,
        };
        answer.unwrap_or_else(|failure| {
            log_failure(&failure);
            GatewayResponse::Failed(failure)
        })
    }

    /// Insert (`Add`) or delete one of `item_name` in `user`'s cart.
    async fn write(
        &self,
        kind: OpKind,
        user: String,
        item_name: String,
        idempotency_key: Option<String>,
        deadline: Instant,
    ) -> Answer {
        let write = Arc::new(self.item_write(kind, user, &item_name, idempotency_key)?);
        let topology = self.parts.view.current();
        let devices = topology
            .replicas_for(&write.key, self.parts.replication.replicas)
            .map_err(|e| internal(format!("placement failed: {e}")))?;
        let replication = self.parts.replication;
        let outcome = replicate(
            &self.parts.replicas,
            &devices,
            write.clone(),
            replication,
            deadline,
        )
        .await;
        match outcome {
            WriteOutcome::Acknowledged { qty, .. } => {
                // Every device the write was sent to, not only those that answered in time:
                // a late one still applies it (each send runs in its own task), and a copy
                // the directory does not list would be read and repaired by nobody. A device
                // that never got it is listed too; reads then see it lacking the item, and
                // read repair fills it in.
                self.record_replicas(&write.key, &devices, deadline).await?;
                Ok(GatewayResponse::Updated { qty })
            }
            WriteOutcome::NotInCart => Err(GatewayFailure::NotInCart { name: item_name }),
            WriteOutcome::QuorumNotReached(failure) => Err(GatewayFailure::QuorumNotReached {
                operation: operation_name(kind).to_owned(),
                required: failure.required,
                acked: failure.acked,
                errors: failure.to_string(),
            }),
        }
    }

    /// Checks a cart change and makes its operation: the catalog's product, an operation id
    /// (from the idempotency key, if any) and a fresh version.
    fn item_write(
        &self,
        kind: OpKind,
        user: String,
        item_name: &str,
        idempotency_key: Option<String>,
    ) -> Result<ItemWrite, GatewayFailure> {
        validate_id("userid", &user).map_err(invalid)?;
        validate_id("item_name", item_name).map_err(invalid)?;
        if let Some(key) = &idempotency_key {
            validate_idempotency_key(key).map_err(invalid)?;
        }
        let product = self.product_named(item_name)?;
        let id = op_id(&user, &product.productid, kind, idempotency_key.as_deref());
        Ok(ItemWrite {
            meta: product.meta(),
            key: ItemKey {
                user,
                product: product.productid,
            },
            op: Operation {
                id,
                kind,
                version: self.clock.now(),
            },
        })
    }

    /// Records the `devices` the directory does not list for `key` yet; a known item
    /// makes no ZooKeeper request.
    async fn record_replicas(
        &self,
        key: &ItemKey,
        devices: &[u32],
        deadline: Instant,
    ) -> Result<(), GatewayFailure> {
        let missing = self.parts.directory.missing(key, devices);
        if missing.is_empty() {
            return Ok(());
        }
        let record = self.parts.coordination.record_replicas(key, &missing);
        match tokio::time::timeout_at(deadline, record).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(coordination_failure(&e)),
            Err(_) => Err(GatewayFailure::CoordinationUnavailable {
                detail:
                    "recording the item's replicas did not finish within the request time limit"
                        .to_owned(),
            }),
        }
    }

    /// Merges the replica states of one item with the merge policy, or with the built-in
    /// merge when there is none or it fails (logged and counted).
    fn merge_item(&self, states: &[&ItemState]) -> ItemState {
        if let Some(policy) = &self.parts.merge_policy {
            let owned: Vec<ItemState> = states.iter().map(|s| (*s).clone()).collect();
            match policy.merge(&owned) {
                Ok(merged) => return merged,
                Err(error) => {
                    self.merge_fallbacks.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%error, "merge policy failed; using the built-in merge");
                }
            }
        }
        merge_states(states).unwrap_or_else(|| states[0].clone())
    }

    /// Reads `user`'s cart in `mode`, merging divergent items.
    async fn read(
        &self,
        user: &str,
        mode: ReadMode,
        deadline: Instant,
    ) -> Result<CartRead, GatewayFailure> {
        let topology = self.parts.view.current();
        let read = read_cart(
            &self.parts.replicas,
            &topology,
            &self.parts.directory,
            CartQuery {
                user,
                replication: self.parts.replication,
                deadline,
                mode,
            },
            |states| self.merge_item(states),
        )
        .await
        .map_err(|e| match e {
            ReadError::Shortfall(shortfall) => quorum_failure("list_all", shortfall),
            other => internal(other.to_string()),
        })?;
        if let Some(newest) = read.items.iter().filter_map(|s| s.latest).max() {
            // Later writes through this gateway order after everything this read saw.
            self.clock.observe(newest);
        }
        Ok(read)
    }

    /// One anti-entropy step: reads every replica of `user`'s items, repairs the stale ones
    /// and compacts settled logs, waiting for all of it. Returns the repairs sent.
    ///
    /// # Errors
    /// The read's failure (too few replicas answered, or placement failed).
    pub async fn sweep_user(&self, user: &str) -> Result<usize, GatewayFailure> {
        let deadline = Instant::now() + self.parts.request_timeout;
        let read = self.read(user, ReadMode::Every, deadline).await?;
        let repairs = read.repairs.len();
        let sends = read
            .repairs
            .into_iter()
            .map(|repair| self.read_repair.send(user, repair));
        futures::future::join_all(sends).await;
        self.compactor.compact_due(user, read.settled).await;
        Ok(repairs)
    }

    /// Schedules a background read of every replica of `user`'s items, which repairs what a
    /// quorum read could not compare (see [`crate::read_repair`]).
    fn follow_up(&self, user: &str) {
        let (Some(at), Some(service)) =
            (self.read_repair.schedule_follow_up(user), self.me.upgrade())
        else {
            return;
        };
        let user = user.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            if let Err(e) = service.sweep_user(&user).await {
                tracing::debug!(%user, error = %e, "follow-up read failed; a later read retries");
            }
        });
    }

    /// Records the sweep's progress (from ZooKeeper) for `Cluster` answers.
    pub fn set_sweep_status(&self, status: Option<SweepStatus>) {
        *self.sweep.lock().unwrap_or_else(PoisonError::into_inner) = status;
    }

    fn maintenance(&self) -> MaintenanceStatus {
        let repairs = self.read_repair.counters();
        let (compactions, folded_ops) = self.compactor.counters();
        MaintenanceStatus {
            merge_policy: self.parts.merge_policy.as_ref().map(|p| PolicyInfo {
                name: p.name().to_owned(),
                sha256: p.sha256().to_owned(),
            }),
            repairs: repairs.repaired,
            repaired_ops: repairs.ops_added,
            repair_failures: repairs.failed,
            merge_fallbacks: self.merge_fallbacks.load(Ordering::Relaxed),
            compactions,
            folded_ops,
            anti_entropy: self
                .sweep
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }

    /// Every live device's own, unmerged state of `user`'s items.
    async fn replica_dump(&self, user: &str, deadline: Instant) -> Answer {
        validate_id("userid", user).map_err(invalid)?;
        let topology = self.parts.view.current();
        let request = DataRequest::ReadUser {
            user: user.to_owned(),
        };
        let timeout = deadline.saturating_duration_since(Instant::now());
        let calls = topology.members.devices.keys().map(|&device| {
            let request = &request;
            async move {
                let answer = self.parts.replicas.call(device, request, timeout).await;
                let (items, error) = match answer {
                    Ok(DataResponse::UserItems { items }) => (Some(items), None),
                    Ok(other) => (None, Some(format!("unexpected answer {other:?}"))),
                    Err(e) => (None, Some(e.to_string())),
                };
                ReplicaDump {
                    device,
                    items,
                    error,
                }
            }
        });
        let replicas = futures::future::join_all(calls).await;
        Ok(GatewayResponse::Replicas { replicas })
    }

    async fn list_all(&self, user: &str, deadline: Instant) -> Answer {
        validate_id("userid", user).map_err(invalid)?;
        let resolution = self.read(user, ReadMode::Quorum, deadline).await?;
        // Stale replicas are repaired by the follow-up read, not from this read's findings:
        // under load most differences a quick read sees are writes still on their way to
        // the third replica, and repairing those would only duplicate them (and their
        // fsyncs). What is still different a moment later is really stale.
        if !resolution.complete || !resolution.repairs.is_empty() {
            self.follow_up(user);
        }
        self.compactor.spawn(user, resolution.settled);
        let catalog = self.catalog();
        let items = cart_lines(&resolution.items, |id| {
            catalog.by_id(id).map(|p| p.name.as_str())
        });
        Ok(GatewayResponse::Cart { items })
    }

    async fn list_category(&self, category: &str, deadline: Instant) -> Answer {
        validate_id("category", category).map_err(invalid)?;
        let topology = self.parts.view.current();
        let users = read_category(
            &self.parts.replicas,
            &topology,
            category,
            self.parts.replication,
            deadline,
        )
        .await
        .map_err(|shortfall| quorum_failure("list_category", shortfall))?;
        Ok(GatewayResponse::CategoryUsers { users })
    }

    async fn upsert(&self, product: Product, deadline: Instant) -> Answer {
        product.validate().map_err(invalid)?;
        let upsert = self.parts.coordination.upsert_product(product);
        match tokio::time::timeout_at(deadline, upsert).await {
            Ok(Ok(catalog)) => Ok(products(&catalog)),
            Ok(Err(CoordError::InvalidCatalog(e))) => Err(GatewayFailure::InvalidInput {
                field: "product".to_owned(),
                problem: e.to_string(),
            }),
            Ok(Err(e)) => Err(coordination_failure(&e)),
            Err(_) => Err(GatewayFailure::CoordinationUnavailable {
                detail: "the catalog update did not finish within the request time limit"
                    .to_owned(),
            }),
        }
    }

    fn cluster(&self) -> GatewayResponse {
        let mut status = self
            .parts
            .view
            .current()
            .status(self.parts.policy.clone(), self.parts.replication);
        status.maintenance = self.maintenance();
        GatewayResponse::Cluster(Box::new(status))
    }

    fn catalog(&self) -> Arc<Catalog> {
        self.parts.catalog.borrow().clone()
    }

    fn product_named(&self, name: &str) -> Result<Product, GatewayFailure> {
        self.parts
            .catalog
            .borrow()
            .by_name(name)
            .cloned()
            .ok_or_else(|| GatewayFailure::UnknownProduct {
                name: name.to_owned(),
            })
    }
}

impl rpc::Service for GatewayService {
    type Request = GatewayRequest;
    type Response = GatewayResponse;
    const KIND: ServiceKind = ServiceKind::Gateway;

    async fn call(self: Arc<Self>, request: GatewayRequest) -> GatewayResponse {
        self.handle(request).await
    }
}

fn products(catalog: &Catalog) -> GatewayResponse {
    GatewayResponse::Products {
        products: catalog.products().to_vec(),
    }
}

fn operation_name(kind: OpKind) -> &'static str {
    match kind {
        OpKind::Add => "insert",
        OpKind::Delete => "delete",
    }
}

fn invalid(e: InputError) -> GatewayFailure {
    GatewayFailure::InvalidInput {
        field: e.field,
        problem: e.problem.to_string(),
    }
}

fn internal(detail: String) -> GatewayFailure {
    GatewayFailure::Internal { detail }
}

fn coordination_failure(e: &CoordError) -> GatewayFailure {
    GatewayFailure::CoordinationUnavailable {
        detail: e.to_string(),
    }
}

fn quorum_failure(operation: &str, shortfall: ReadShortfall) -> GatewayFailure {
    GatewayFailure::QuorumNotReached {
        operation: operation.to_owned(),
        required: shortfall.required,
        acked: shortfall.answered,
        errors: shortfall.to_string(),
    }
}

/// Failures the client caused are routine; the others mean part of the cluster is in
/// trouble.
fn log_failure(failure: &GatewayFailure) {
    match failure {
        GatewayFailure::QuorumNotReached { .. }
        | GatewayFailure::CoordinationUnavailable { .. } => {
            tracing::warn!(%failure, "request failed");
        }
        GatewayFailure::Internal { .. } => tracing::error!(%failure, "request failed"),
        _ => tracing::debug!(%failure, "request refused"),
    }
}

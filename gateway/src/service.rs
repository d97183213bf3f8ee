//! The gateway's [`rpc::Service`]: answers every [`GatewayRequest`] from an API server.
//!
//! Per request the service reads only local state (catalog, directory, the current
//! [`Topology`](crate::cluster_view::Topology)), talks to the data nodes, and reaches ZooKeeper in just two rare cases: the
//! first write of an item to a device the directory does not list yet, and catalog changes.

use std::sync::Arc;
use std::time::Duration;

use cartdb_core::cart::{InputError, ItemKey, OpKind, Operation, Product, validate_id};
use cartdb_core::catalog::Catalog;
use cartdb_core::config::Replication;
use cartdb_core::coord::{CoordError, Directory};
use cartdb_core::rpc;
use cartdb_core::version::HybridClock;
use cartdb_core::wire::{GatewayFailure, GatewayRequest, GatewayResponse, PolicyInfo, ServiceKind};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::cart_lines::cart_lines;
use crate::cluster_view::ClusterView;
use crate::coordination::Coordination;
use crate::op_id::{op_id, validate_idempotency_key};
use crate::read::{ReadError, read_cart, read_category};
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
}

/// Serves API servers' requests.
pub struct GatewayService {
    parts: ServiceParts,
    clock: HybridClock,
}

type Answer = Result<GatewayResponse, GatewayFailure>;

impl GatewayService {
    pub fn new(parts: ServiceParts) -> Self {
        let clock = HybridClock::new(parts.gateway_id);
        Self { parts, clock }
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
            WriteOutcome::Acknowledged { qty, acked } => {
                self.record_replicas(&write.key, &acked, deadline).await?;
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

    /// Records `acked` devices the directory does not list for `key` yet; a known item
    /// makes no ZooKeeper request.
    async fn record_replicas(
        &self,
        key: &ItemKey,
        acked: &[u32],
        deadline: Instant,
    ) -> Result<(), GatewayFailure> {
        let missing = self.parts.directory.missing(key, acked);
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

    async fn list_all(&self, user: &str, deadline: Instant) -> Answer {
        validate_id("userid", user).map_err(invalid)?;
        let topology = self.parts.view.current();
        let resolution = read_cart(
            &self.parts.replicas,
            &topology,
            &self.parts.directory,
            user,
            self.parts.replication,
            deadline,
        )
        .await
        .map_err(|e| match e {
            ReadError::Shortfall(shortfall) => quorum_failure("list_all", shortfall),
            other => internal(other.to_string()),
        })?;
        if let Some(newest) = resolution
            .merged
            .iter()
            .filter_map(|s| s.latest_version())
            .max()
        {
            // Later writes through this gateway order after everything this read saw.
            self.clock.observe(newest);
        }
        let catalog = self.catalog();
        let items = cart_lines(&resolution.merged, |id| {
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
        let status = self
            .parts
            .view
            .current()
            .status(self.parts.policy.clone(), self.parts.replication);
        GatewayResponse::Cluster(status)
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

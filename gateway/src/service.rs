//! The gateway's [`rpc::Service`]: answers every [`GatewayRequest`] from an API server.
//!
//! Per request the service reads only local state (the catalog and the current
//! [`Topology`](crate::cluster_view::Topology)) and talks to the data nodes. No cart request
//! reaches ZooKeeper: only catalog changes do.
//!
//! An insert writes two things at once, each to its own placement group's up set with the
//! same quorum rule: the cart item, and the entry `@<productid>` of the user's cart index
//! (which `list_all` reads first; see [`crate::read`]). It is acknowledged once both have W
//! durable copies, so a `list_all` through any gateway right after it finds the item. A
//! delete writes the item only: an index entry only means "look here", and the item's
//! quantity decides whether it is in the cart.
//!
//! This file holds the cart paths (writes, reads, the sweep's step); the operator's requests
//! (status, replicas, locate, device items, map changes, policies) are in `service/admin.rs`.

use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use std::collections::{BTreeMap, BTreeSet};

use cartdb_core::cart::{
    DeviceId, InputError, ItemKey, ItemMeta, ItemState, ItemSummary, OpKind, Operation, Product,
    validate_id,
};
use cartdb_core::catalog::Catalog;
use cartdb_core::config::Replication;
use cartdb_core::coord::CoordError;
use cartdb_core::placement_key::{index_entry, indexed_product, placement_key};
use cartdb_core::rpc;
use cartdb_core::version::HybridClock;
use cartdb_core::wire::{
    DataCall, DataRequest, DataResponse, GatewayFailure, GatewayRequest, GatewayResponse, HeldItem,
    ItemLocation, MaintenanceStatus, MapChange, PolicyInfo, ReplicaDump, ReplicaLocation,
    ServiceKind, SweepStatus,
};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::cart_lines::cart_lines;
use crate::cluster_view::ClusterView;
use crate::compaction::{CompactionSettings, Compactor, SettledItem};
use crate::coordination::Coordination;
use crate::map_change::MapChanger;
use crate::merger::Merger;
use crate::op_id::{keyed_op_id, op_id, validate_idempotency_key};
use crate::policy::PolicyLibrary;
use crate::policy_admin::PolicyAdmin;
use crate::read::{
    CartQuery, CartRead, CategoryQuery, ReadError, ReadMode, read_cart, read_category,
};
use crate::read_repair::ReadRepair;
use crate::read_resolution::ReadShortfall;
use crate::replicas::Replicas;
use crate::write::{ItemWrite, Placed, replicate};
use crate::write_quorum::WriteOutcome;

mod admin;

/// Everything a [`GatewayService`] is made of.
pub struct ServiceParts {
    pub view: Arc<ClusterView>,
    pub replicas: Arc<Replicas>,
    pub coordination: Arc<dyn Coordination>,
    pub catalog: watch::Receiver<Arc<Catalog>>,
    /// This gateway's id (from ZooKeeper), which orders its versions against the others'.
    pub gateway_id: u32,
    pub replication: Replication,
    pub request_timeout: Duration,
    /// The compiled policies, and the way to those the map names that are not compiled yet.
    pub library: Arc<PolicyLibrary>,
    /// Merges divergent replicas with the merge policy the map names (swapped by the
    /// cluster keeper).
    pub merger: Arc<Merger>,
    /// The map's rule, to place a changed map.
    pub rule: Option<String>,
    pub compaction: CompactionSettings,
    /// Test-only offset of this gateway's clock, in milliseconds (0 in production).
    pub clock_offset_ms: i64,
}

/// Serves API servers' requests.
pub struct GatewayService {
    parts: ServiceParts,
    clock: HybridClock,
    read_repair: Arc<ReadRepair>,
    compactor: Arc<Compactor>,
    /// The anti-entropy sweep's progress while this gateway leads it.
    sweep: Mutex<Option<SweepStatus>>,
    /// This service, for background follow-up reads that outlive a request.
    me: Weak<GatewayService>,
}

type Answer = Result<GatewayResponse, GatewayFailure>;

/// What one anti-entropy step found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SweepOutcome {
    /// Repairs sent (and waited for).
    pub repairs: usize,
    /// Every asked device that is up answered.
    pub complete: bool,
    /// Items whose merge policy dropped an operation a replica holds.
    pub dropped_by_merge: usize,
}

impl GatewayService {
    pub fn new(parts: ServiceParts) -> Arc<Self> {
        let clock = HybridClock::new(parts.gateway_id).with_offset_ms(parts.clock_offset_ms);
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
                self.placed(deadline, || {
                    let (user, item_name) = (user.clone(), item_name.clone());
                    let key = idempotency_key.clone();
                    self.write(OpKind::Add, user, item_name, key, deadline)
                })
                .await
            }
            GatewayRequest::Delete {
                user,
                item_name,
                idempotency_key,
            } => {
                self.placed(deadline, || {
                    let (user, item_name) = (user.clone(), item_name.clone());
                    let key = idempotency_key.clone();
                    self.write(OpKind::Delete, user, item_name, key, deadline)
                })
                .await
            }
            GatewayRequest::ListAll { user } => {
                self.placed(deadline, || self.list_all(&user, deadline))
                    .await
            }
            GatewayRequest::ListCategory {
                category,
                after,
                limit,
            } => {
                let query = CategoryQuery {
                    category: &category,
                    after: after.as_deref(),
                    limit,
                };
                self.placed(deadline, || self.list_category(query, deadline))
                    .await
            }
            GatewayRequest::Products => Ok(products(&self.catalog())),
            GatewayRequest::UpsertProduct { product } => self.upsert(product, deadline).await,
            GatewayRequest::Cluster => Ok(self.cluster()),
            GatewayRequest::Replicas { user } => self.replica_dump(&user, deadline).await,
            GatewayRequest::Locate { user, item } => self.locate(&user, item, deadline).await,
            GatewayRequest::DeviceItems {
                device,
                after,
                limit,
            } => self.device_items(device, after, limit, deadline).await,
            GatewayRequest::PreviewMap { changes } => self.map_change(&changes, false).await,
            GatewayRequest::ChangeMap { changes } => self.map_change(&changes, true).await,
            GatewayRequest::Pgs => {
                let topology = self.parts.view.current();
                Ok(GatewayResponse::Pgs {
                    epoch: topology.map.epoch,
                    pgs: crate::map_change::pg_dump(&topology),
                })
            }
            GatewayRequest::StorePolicy {
                kind,
                file_name,
                bytes,
                by,
            } => {
                let admin = self.policy_admin();
                let stored = admin.store(kind, &file_name, &bytes, &by).await;
                stored.map(|sha256| GatewayResponse::PolicyStored { sha256 })
            }
            GatewayRequest::VerifyPolicy { kind, sha256 } => {
                let verdict = self.policy_admin().verify(kind, sha256).await;
                Ok(GatewayResponse::PolicyVerified(Box::new(verdict)))
            }
            GatewayRequest::Policies => Ok(GatewayResponse::Policies(Box::new(
                self.policy_admin().status(),
            ))),
        };
        answer.unwrap_or_else(|failure| {
            log_failure(&failure);
            GatewayResponse::Failed(failure)
        })
    }

    /// Runs a cart request placed with the current map, and again, placed with a newer map,
    /// when data nodes refused it as placed with a stale one (`StaleEpoch`): after this
    /// gateway's view has reached the epoch they named, within the request's deadline. The
    /// client sees no error for a map change alone; a gateway that cannot learn the newer
    /// map (cut off from ZooKeeper) answers with the refusals, which name both epochs.
    async fn placed<F, Fut>(&self, deadline: Instant, mut attempt: F) -> Answer
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Answer>,
    {
        let mut placements = 1;
        loop {
            let epoch = self.parts.view.current().map.epoch;
            let answer = attempt().await;
            let heard = self.parts.replicas.epoch_heard();
            let stale = matches!(answer, Err(GatewayFailure::QuorumNotReached { .. }));
            if !stale || heard <= epoch || placements >= MAX_PLACEMENTS {
                return answer;
            }
            metrics::counter!("cartdb_gateway_placed_again_total").increment(1);
            tracing::debug!(
                epoch,
                heard,
                "refused as placed with a stale map; waiting for the newer one"
            );
            if !self.parts.view.wait_for_epoch(heard, deadline).await {
                return answer;
            }
            placements += 1;
        }
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
        let replication = self.parts.replication;
        let replicas = &self.parts.replicas;
        let epoch = topology.map.epoch;
        let placed = Placed {
            devices: topology.up_set(&write.key).to_vec(),
            epoch,
        };
        let clock = &self.clock;
        let item = replicate(
            replicas,
            &placed,
            write.clone(),
            replication,
            clock,
            deadline,
        );
        let outcome = if kind == OpKind::Add {
            let index = Arc::new(index_write(&write));
            let index_placed = Placed {
                devices: topology.up_set(&index.key).to_vec(),
                epoch,
            };
            let index = replicate(replicas, &index_placed, index, replication, clock, deadline);
            let (item, index) = tokio::join!(item, index);
            match (item, index) {
                (WriteOutcome::Acknowledged { qty, acked }, WriteOutcome::QuorumNotReached(f)) => {
                    tracing::debug!(qty, ?acked, "item written but not its cart-index entry");
                    return Err(quorum_not_reached("insert (cart index)", &f));
                }
                (item, _) => item,
            }
        } else {
            match item.await {
                WriteOutcome::NotInCart
                    if topology.map.past_of(topology.pg_of(&write.key)).is_some() =>
                {
                    self.backfill_then_retry(&write, &placed, deadline).await?
                }
                outcome => outcome,
            }
        };
        match outcome {
            WriteOutcome::Acknowledged { qty, .. } => Ok(GatewayResponse::Updated { qty }),
            WriteOutcome::NotInCart => Err(GatewayFailure::NotInCart { name: item_name }),
            WriteOutcome::QuorumNotReached(failure) | WriteOutcome::Restamp { failure, .. }
                if failure.busy > 0 =>
            {
                Err(GatewayFailure::ItemBusy {
                    name: item_name,
                    detail: failure.to_string(),
                })
            }
            WriteOutcome::QuorumNotReached(failure) | WriteOutcome::Restamp { failure, .. } => {
                Err(quorum_not_reached(operation_name(kind), &failure))
            }
        }
    }

    /// A delete the up set refused as not in cart, on a PG with a past set: the up set may
    /// not hold the item yet (its PG moved and backfill has not reached it; Ceph keeps such
    /// a PG's old devices acting until backfill ends, with `pg_temp`). Copies this one item
    /// from every replica it may be on (up and past sets) to the up set, as the sweep's
    /// repair does, then sends the delete once more.
    ///
    /// # Errors
    /// When the copy fails (too few replicas answered, or they refused the read as placed
    /// with a stale map): the item may be in the cart on the past set, so "not in cart"
    /// would be unproven; the retryable failure is answered instead (and a stale map makes
    /// [`GatewayService::placed`] place the delete again with the newer one).
    async fn backfill_then_retry(
        &self,
        write: &Arc<ItemWrite>,
        placed: &Placed,
        deadline: Instant,
    ) -> Result<WriteOutcome, GatewayFailure> {
        metrics::counter!("cartdb_gateway_backfilled_on_demand_total").increment(1);
        let only = std::slice::from_ref(&write.key.product);
        if let Err(e) = self.sweep(&write.key.user, Some(only)).await {
            tracing::debug!(error = %e, "backfill of one item before a delete failed");
            return Err(match e {
                GatewayFailure::QuorumNotReached {
                    required,
                    acked,
                    errors,
                    ..
                } => GatewayFailure::QuorumNotReached {
                    operation: "delete (copying the item to its new up set first)".to_owned(),
                    required,
                    acked,
                    errors,
                },
                other => other,
            });
        }
        let replication = self.parts.replication;
        Ok(replicate(
            &self.parts.replicas,
            placed,
            write.clone(),
            replication,
            &self.clock,
            deadline,
        )
        .await)
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

    /// Reads `user`'s cart in `mode`, merging divergent items.
    async fn read(
        &self,
        user: &str,
        mode: ReadMode,
        deadline: Instant,
    ) -> Result<CartRead, GatewayFailure> {
        self.read_items(user, mode, None, deadline).await
    }

    /// Reads `user`'s cart, or only the items `only` (and what their devices answer with),
    /// in `mode`, merging divergent items.
    async fn read_items(
        &self,
        user: &str,
        mode: ReadMode,
        only: Option<&[String]>,
        deadline: Instant,
    ) -> Result<CartRead, GatewayFailure> {
        let topology = self.parts.view.current();
        let read = read_cart(
            &self.parts.replicas,
            &topology,
            CartQuery {
                user,
                replication: self.parts.replication,
                deadline,
                mode,
                only,
            },
            &self.parts.merger,
        )
        .await
        .map_err(|e| match e {
            ReadError::Shortfall(shortfall) => quorum_failure("list_all", shortfall),
        })?;
        if let Some(newest) = read.items.iter().filter_map(|s| s.latest).max() {
            // Later writes through this gateway order after everything this read saw.
            if let Err(refused) = self.clock.observe(newest) {
                metrics::counter!("cartdb_gateway_future_versions_total").increment(1);
                tracing::warn!(%refused, ?newest, "not moving the clock to a version read from the replicas");
            }
        }
        Ok(read)
    }

    /// Merges each group (one item's states) with the active merge policy, in order; the
    /// built-in merge when there is none or it fails. The sweep's windows merge with it.
    pub async fn merge_all(&self, groups: Vec<Vec<ItemState>>) -> Vec<ItemState> {
        self.parts.merger.merge_all(groups).await
    }

    /// Compacts those of `user`'s `settled` items whose logs are due, placed with `epoch`,
    /// and waits for the replicas' answers.
    pub async fn compact_settled(&self, user: &str, settled: Vec<SettledItem>, epoch: u64) {
        self.compactor.compact_due(user, settled, epoch).await;
    }

    /// One anti-entropy step: reads every replica (up and past sets) of `user`'s items, or
    /// of the items `only`, repairs the stale up-set replicas and compacts settled logs,
    /// waiting for all of it.
    ///
    /// # Errors
    /// The read's failure (too few replicas answered).
    pub async fn sweep(
        &self,
        user: &str,
        only: Option<&[String]>,
    ) -> Result<SweepOutcome, GatewayFailure> {
        let deadline = Instant::now() + self.parts.request_timeout;
        let read = self
            .read_items(user, ReadMode::Every, only, deadline)
            .await?;
        let outcome = SweepOutcome {
            repairs: read.repairs.len(),
            complete: read.complete,
            dropped_by_merge: read.dropped_by_merge,
        };
        let sends = read
            .repairs
            .into_iter()
            .map(|repair| self.read_repair.send(user, repair, read.epoch));
        futures::future::join_all(sends).await;
        self.compactor
            .compact_due(user, read.settled, read.epoch)
            .await;
        Ok(outcome)
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
            if let Err(e) = service.sweep(&user, None).await {
                tracing::debug!(%user, error = %e, "follow-up read failed; a later read retries");
            }
        });
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
        self.compactor
            .spawn(user, resolution.settled, resolution.epoch);
        let catalog = self.catalog();
        let items = cart_lines(&resolution.items, |id| {
            catalog.by_id(id).map(|p| p.name.as_str())
        });
        Ok(GatewayResponse::Cart { items })
    }

    async fn list_category(&self, query: CategoryQuery<'_>, deadline: Instant) -> Answer {
        validate_id("category", query.category).map_err(invalid)?;
        if let Some(after) = query.after {
            validate_id("after", after).map_err(invalid)?;
        }
        let topology = self.parts.view.current();
        let page = read_category(
            &self.parts.replicas,
            &topology,
            query,
            self.parts.replication,
            deadline,
        )
        .await
        .map_err(|shortfall| quorum_failure("list_category", shortfall))?;
        Ok(GatewayResponse::CategoryUsers {
            users: page.users,
            next: page.next,
        })
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

    fn request_name(request: &GatewayRequest) -> &'static str {
        request.name()
    }

    async fn call(self: Arc<Self>, request: GatewayRequest) -> GatewayResponse {
        let name = request.name();
        let response = self.handle(request).await;
        if let GatewayResponse::Failed(GatewayFailure::QuorumNotReached { .. }) = &response {
            metrics::counter!("cartdb_gateway_quorum_failures_total", "request" => name)
                .increment(1);
        }
        response
    }
}

fn products(catalog: &Catalog) -> GatewayResponse {
    GatewayResponse::Products {
        products: catalog.products().to_vec(),
    }
}

/// Most items one `DeviceItems` page carries.
const MAX_DEVICE_ITEMS_PAGE: u32 = 1000;

/// Most times one cart request is placed: once, and again after each refusal as placed
/// with a stale map (a map change that lands while it is in flight; two in one request's
/// time are rare, three rarer still).
const MAX_PLACEMENTS: u32 = 3;

/// Category stored with cart-index entries; the data nodes never list index entries under
/// any category.
const INDEX_CATEGORY: &str = "@index";

/// The cart-index entry an insert of `write`'s item writes: an add with an id fixed by
/// (user, product), so every later insert of the item is a duplicate the replicas skip.
fn index_write(write: &ItemWrite) -> ItemWrite {
    let product = index_entry(&write.key.product);
    ItemWrite {
        op: Operation {
            // The empty key is one no client can send (idempotency keys are non-empty).
            id: keyed_op_id(&write.key.user, &product, OpKind::Add, ""),
            kind: OpKind::Add,
            version: write.op.version,
        },
        key: ItemKey {
            user: write.key.user.clone(),
            product,
        },
        meta: ItemMeta {
            price: 0,
            category: INDEX_CATEGORY.to_owned(),
        },
    }
}

fn held_key(item: &HeldItem) -> ItemKey {
    ItemKey {
        user: item.user.clone(),
        product: item.summary.product.clone(),
    }
}

fn quorum_not_reached(
    operation: &str,
    failure: &crate::write_quorum::QuorumFailure,
) -> GatewayFailure {
    GatewayFailure::QuorumNotReached {
        operation: operation.to_owned(),
        required: failure.required,
        acked: failure.acked,
        errors: failure.to_string(),
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

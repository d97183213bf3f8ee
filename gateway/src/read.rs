//! The read paths: a user's cart (`list_all`) and the users of a category (`list_category`).
//!
//! ```text
//! list_all(user)
//!   plan    = the devices (up + past set) of the PG of the user's cart index
//!                                                                  -- ReadPlan, pure
//!   ask     = ReadSummaries to every planned device at once; an answer naming an item the
//!             plan lacks (an index entry `@p`, or an item) adds the up and past sets of
//!             that item's PG (for `@p`: of product p's PG), whose new devices are asked
//!             at once
//!   stop    = when ReadPlan::is_decided (every item has its read quorum and fewer than W
//!             asked devices are silent), when all answered, or at the deadline
//!   check   = per-item read quorum; equal summaries agree         -- SummaryCheck, pure
//!   fetch   = ReadItems for the divergent items only, from the replicas holding them
//!   merge   = merged states and what each stale replica lacks     -- Repairs, pure
//! ```
//!
//! A read does not wait for the slowest replica once its answer is decided: with fewer than
//! W asked devices silent, every acknowledged write (held by W devices) has been seen, so a
//! paused data node does not hold every read up for the whole request time limit.
//!
//! The caller answers from [`CartRead::items`] and sends [`CartRead::repairs`] in the
//! background (see [`crate::read_repair`]).

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;

use cartdb_core::cart::{DeviceId, ItemKey, ItemState, ItemSummary};
use cartdb_core::config::Replication;
use cartdb_core::placement_key::{INDEX_PREFIX, indexed_product};
use cartdb_core::wire::{DataCall, DataRequest, DataResponse, MAX_CATEGORY_PAGE};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::time::Instant;

use crate::category_page::{CategoryPage, DevicePage};
use crate::cluster_view::Topology;
use crate::compaction::SettledItem;
use crate::merger::Merger;
use crate::read_resolution::{
    ReadPlan, ReadShortfall, Repair, Repairs, SummaryCheck, merge_groups,
};
use crate::replicas::{ReplicaError, Replicas, response_name};

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// Too few replicas answered.
    #[error("{0}")]
    Shortfall(ReadShortfall),
}

/// A resolved cart read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CartRead {
    /// One summary per item, sorted by product id: the agreed ones as the replicas hold
    /// them, the divergent ones merged.
    pub items: Vec<ItemSummary>,
    /// What stale replicas lack, for read repair.
    pub repairs: Vec<Repair>,
    /// Agreed items every one of whose replicas answered: candidates for compaction.
    pub settled: Vec<SettledItem>,
    /// Whether every asked device that is up answered. A quorum read stops waiting
    /// earlier, so a stale replica may not have been compared; the caller then follows up
    /// with a read of every replica (see [`crate::read_repair`]).
    pub complete: bool,
    /// The map epoch the read was placed with: its repairs and compactions carry it.
    pub epoch: u64,
    /// Divergent items whose merge dropped an operation a replica holds (merged with the
    /// built-in merge instead; see [`Repairs::dropped_by_merge`]).
    pub dropped_by_merge: usize,
}

/// Whose cart to read, and how.
#[derive(Clone, Copy, Debug)]
pub struct CartQuery<'a> {
    pub user: &'a str,
    pub replication: Replication,
    pub deadline: Instant,
    pub mode: ReadMode,
    /// Start from these items (product ids or cart-index entries) instead of the user's
    /// cart index: the anti-entropy sweep reads the items of one placement group.
    pub only: Option<&'a [String]>,
}

/// How long a cart read waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadMode {
    /// Until the answer is decided (the shopper's read; see the module docs).
    Quorum,
    /// Until every asked replica answered or the deadline (the anti-entropy sweep, which
    /// wants to compare every replica).
    Every,
}

/// Reads and merges `user`'s cart (see the module docs and [`crate::read_resolution`] for
/// the quorum rule). `merger` merges the states of divergent items. The answer holds the
/// cart-index entries too (product ids starting with `@`); [`crate::cart_lines`] leaves
/// them out of the cart.
///
/// # Errors
/// [`ReadError::Shortfall`] when an item (or the index's devices) heard from too few
/// replicas before `deadline`, or a replica that held a divergent item failed to send its
/// state.
pub async fn read_cart(
    replicas: &Replicas,
    topology: &Topology,
    query: CartQuery<'_>,
    merger: &Merger,
) -> Result<CartRead, ReadError> {
    let CartQuery {
        user,
        replication,
        deadline,
        mode,
        only,
    } = query;
    let mut plan = match only {
        Some(products) => {
            let mut plan = ReadPlan::broadcast([]);
            add_placements(&mut plan, topology, user, products.to_vec());
            plan
        }
        None => {
            let index = ItemKey {
                user: user.to_owned(),
                product: INDEX_PREFIX.to_string(),
            };
            ReadPlan::broadcast(topology.read_set(&index))
        }
    };
    let epoch = topology.map.epoch;
    let request = DataCall {
        epoch,
        request: DataRequest::ReadSummaries {
            user: user.to_owned(),
        },
    };
    let mut round = ReadRound::new(replicas, &request, deadline, user_summaries);
    round.ask(plan.devices());
    while let Some(device) = round.next().await {
        let unknown = round
            .answer(device)
            .map(|summaries| plan.unknown_products(summaries.iter().map(|s| s.product.as_str())))
            .unwrap_or_default();
        if !unknown.is_empty() {
            add_placements(&mut plan, topology, user, unknown);
            round.ask(plan.devices());
        }
        let decided = plan.is_decided(
            |d| round.answer(d).is_some(),
            round.silent(),
            replication.read_quorum,
            replication.write_quorum,
        );
        if decided && mode == ReadMode::Quorum {
            break;
        }
    }
    let complete = round.silent() == round.down();
    let (summaries, failures) = round.finish();
    let check = SummaryCheck::resolve(
        &plan,
        &summaries,
        &failures,
        replication.read_quorum,
        replication.write_quorum,
    )
    .map_err(ReadError::Shortfall)?;
    let settled = settled_items(&plan, &summaries, &check.agreed);
    let mut items = check.agreed;
    if check.divergent.is_empty() {
        return Ok(CartRead {
            items,
            repairs: Vec::new(),
            settled,
            complete,
            epoch,
            dropped_by_merge: 0,
        });
    }
    let states = fetch_states(replicas, epoch, user, &check.divergent, deadline).await?;
    let merged: BTreeMap<String, ItemState> = merger
        .merge_all(merge_groups(&states))
        .await
        .into_iter()
        .map(|state| (state.product.clone(), state))
        .collect();
    let repairs = Repairs::plan(&plan, &summaries, &states, |inputs| {
        // Every group was merged above; `plan` groups the same way.
        let product = inputs.first().map_or("", |s| s.product.as_str());
        merged.get(product).cloned().unwrap_or_else(|| {
            cartdb_core::merge::merge_states(inputs).unwrap_or_else(|| inputs[0].clone())
        })
    });
    items.extend(repairs.merged);
    items.sort_by(|a, b| a.product.cmp(&b.product));
    if repairs.dropped_by_merge > 0 {
        metrics::counter!("cartdb_gateway_merge_dropped_total")
            .increment(repairs.dropped_by_merge as u64);
        tracing::warn!(
            user,
            items = repairs.dropped_by_merge,
            "the merge policy dropped an operation a replica holds; merged with the built-in merge"
        );
    }
    Ok(CartRead {
        items,
        repairs: repairs.repairs,
        settled,
        complete,
        epoch,
        dropped_by_merge: repairs.dropped_by_merge,
    })
}

/// The agreed items all of whose planned replicas answered.
fn settled_items(
    plan: &ReadPlan,
    summaries: &BTreeMap<DeviceId, Vec<ItemSummary>>,
    agreed: &[ItemSummary],
) -> Vec<SettledItem> {
    agreed
        .iter()
        .filter_map(|summary| {
            let replicas = plan.replicas_of(&summary.product)?;
            replicas
                .iter()
                .all(|d| summaries.contains_key(d))
                .then(|| SettledItem {
                    summary: summary.clone(),
                    replicas: replicas.clone(),
                })
        })
        .collect()
}

/// Fetches the full states of the divergent items from every replica that reported holding
/// them. All must answer: one of them may hold the only copy of an acknowledged operation
/// among the replicas this read heard from.
async fn fetch_states(
    replicas: &Replicas,
    epoch: u64,
    user: &str,
    divergent: &BTreeMap<String, BTreeSet<DeviceId>>,
    deadline: Instant,
) -> Result<BTreeMap<DeviceId, Vec<ItemState>>, ReadError> {
    let mut wanted: BTreeMap<DeviceId, Vec<String>> = BTreeMap::new();
    for (product, holders) in divergent {
        for device in holders {
            wanted.entry(*device).or_default().push(product.clone());
        }
    }
    let requests: Vec<(DeviceId, DataCall)> = wanted
        .into_iter()
        .map(|(device, products)| {
            let request = DataRequest::ReadItems {
                user: user.to_owned(),
                products,
            };
            (device, DataCall { epoch, request })
        })
        .collect();
    let timeout = deadline.saturating_duration_since(Instant::now());
    let calls = requests.iter().map(|(device, request)| async move {
        let result = replicas.call(*device, request, timeout).await;
        (*device, result.and_then(|r| user_items(*device, r)))
    });
    let answers = futures::future::join_all(calls).await;
    let mut states = BTreeMap::new();
    let mut failures = Vec::new();
    for (device, result) in answers {
        match result {
            Ok(items) => {
                states.insert(device, items);
            }
            Err(e) => failures.push((device, e.to_string())),
        }
    }
    if failures.is_empty() {
        return Ok(states);
    }
    Err(ReadError::Shortfall(ReadShortfall {
        required: requests.len(),
        answered: states.len(),
        product: divergent.keys().next().cloned(),
        failures,
    }))
}

/// One page of the users holding an item of `category`: the first `limit` after `after`
/// (see [`crate::category_page`] for how the devices' pages merge).
///
/// A user acknowledged by W replicas cannot be missed while fewer than W live devices are
/// silent, so that is the quorum, and the read stops waiting as soon as it holds. An item
/// counts only from a device of its read set (its PG's up or past set): a copy left on a
/// device that no longer belongs to its PG (before handback deleted it) is not believed.
///
/// # Errors
/// [`ReadShortfall`] when W or more live devices (or all of them) did not answer before
/// `deadline`.
pub async fn read_category(
    replicas: &Replicas,
    topology: &Topology,
    query: CategoryQuery<'_>,
    replication: Replication,
    deadline: Instant,
) -> Result<CategoryPage, ReadShortfall> {
    let live: BTreeSet<DeviceId> = topology.members.devices.keys().copied().collect();
    let limit = query.limit.clamp(1, MAX_CATEGORY_PAGE);
    let request = DataCall {
        epoch: topology.map.epoch,
        request: DataRequest::ListCategory {
            category: query.category.to_owned(),
            after: query.after.map(str::to_owned),
            limit,
        },
    };
    let mut round = ReadRound::new(replicas, &request, deadline, category_items);
    round.ask(live.iter().copied());
    while round.next().await.is_some() {
        if round.silent() < replication.write_quorum && round.answered_count() > 0 {
            break;
        }
    }
    let silent = round.silent();
    let (answered, failures) = round.finish();
    if answered.is_empty() || silent >= replication.write_quorum {
        return Err(ReadShortfall {
            required: (live.len() + 1)
                .saturating_sub(replication.write_quorum)
                .max(1),
            answered: answered.len(),
            product: None,
            failures,
        });
    }
    Ok(CategoryPage::merge(
        &answered,
        limit as usize,
        |key, device| topology.read_set(key).contains(&device),
    ))
}

/// Which page of a category to read.
#[derive(Clone, Copy, Debug)]
pub struct CategoryQuery<'a> {
    pub category: &'a str,
    /// The previous page's cursor (its last user); `None` for the first page.
    pub after: Option<&'a str>,
    /// Most users in the page (clamped to 1..=[`MAX_CATEGORY_PAGE`]).
    pub limit: u32,
}

/// Adds the up and past sets of each of `products` to the plan; for a cart-index entry
/// `@p`, also those of the product p it records.
fn add_placements(plan: &mut ReadPlan, topology: &Topology, user: &str, products: Vec<String>) {
    for product in products {
        let indexed = indexed_product(&product)
            .filter(|p| plan.replicas_of(p).is_none())
            .map(str::to_owned);
        for product in std::iter::once(product).chain(indexed) {
            let key = ItemKey {
                user: user.to_owned(),
                product,
            };
            let pg = topology.pg_of(&key);
            let up = topology.up_of_pg(pg);
            let past: Vec<DeviceId> = topology
                .map
                .past_of(pg)
                .map(|past| past.iter().copied().collect())
                .unwrap_or_default();
            plan.add_item(&key.product, up, &past);
        }
    }
}

type Reply<'a, T> = Pin<Box<dyn Future<Output = (DeviceId, Result<T, ReplicaError>)> + Send + 'a>>;

/// One request sent to a growing set of devices, with the answers so far.
struct ReadRound<'a, T> {
    replicas: &'a Replicas,
    request: &'a DataCall,
    deadline: Instant,
    accept: fn(DeviceId, DataResponse) -> Result<T, ReplicaError>,
    in_flight: FuturesUnordered<Reply<'a, T>>,
    asked: BTreeSet<DeviceId>,
    answered: BTreeMap<DeviceId, T>,
    failures: Vec<(DeviceId, String)>,
    down: usize,
}

impl<'a, T: Send + 'a> ReadRound<'a, T> {
    /// A round of `request`; `accept` turns a response into the wanted value.
    fn new(
        replicas: &'a Replicas,
        request: &'a DataCall,
        deadline: Instant,
        accept: fn(DeviceId, DataResponse) -> Result<T, ReplicaError>,
    ) -> Self {
        Self {
            replicas,
            request,
            deadline,
            accept,
            in_flight: FuturesUnordered::new(),
            asked: BTreeSet::new(),
            answered: BTreeMap::new(),
            failures: Vec::new(),
            down: 0,
        }
    }

    /// Sends the request to each of `devices` not asked yet.
    fn ask(&mut self, devices: impl IntoIterator<Item = DeviceId>) {
        for device in devices {
            if !self.asked.insert(device) {
                continue;
            }
            let (replicas, request, accept) = (self.replicas, self.request, self.accept);
            let timeout = self.deadline.saturating_duration_since(Instant::now());
            self.in_flight.push(Box::pin(async move {
                let result = replicas.call(device, request, timeout).await;
                (device, result.and_then(|response| accept(device, response)))
            }));
        }
    }

    /// Waits for the next answer and records it; `None` when nothing is in flight or the
    /// deadline passed.
    async fn next(&mut self) -> Option<DeviceId> {
        let (device, result) = tokio::time::timeout_at(self.deadline, self.in_flight.next())
            .await
            .ok()??;
        match result {
            Ok(value) => {
                self.answered.insert(device, value);
            }
            Err(e) => {
                if matches!(e, ReplicaError::Down { .. }) {
                    self.down += 1;
                }
                self.failures.push((device, e.to_string()));
            }
        }
        Some(device)
    }

    /// `device`'s answer, if it gave a usable one.
    fn answer(&self, device: DeviceId) -> Option<&T> {
        self.answered.get(&device)
    }

    fn answered_count(&self) -> usize {
        self.answered.len()
    }

    /// Devices asked that have not given a usable answer (failed or still pending).
    fn silent(&self) -> usize {
        self.asked.len() - self.answered.len()
    }

    /// Devices asked that are down (no data node registered): not expected to answer.
    fn down(&self) -> usize {
        self.down
    }

    /// The usable answers, and why every other asked device has none.
    fn finish(self) -> (BTreeMap<DeviceId, T>, Vec<(DeviceId, String)>) {
        let mut failures = self.failures;
        for device in &self.asked {
            let known =
                self.answered.contains_key(device) || failures.iter().any(|(d, _)| d == device);
            if !known {
                failures.push((
                    *device,
                    "no answer within the request time limit".to_owned(),
                ));
            }
        }
        (self.answered, failures)
    }
}

fn user_items(device: DeviceId, response: DataResponse) -> Result<Vec<ItemState>, ReplicaError> {
    match response {
        DataResponse::UserItems { items } => Ok(items),
        other => Err(unexpected(device, "ReadItems", &other)),
    }
}

fn user_summaries(
    device: DeviceId,
    response: DataResponse,
) -> Result<Vec<ItemSummary>, ReplicaError> {
    match response {
        DataResponse::Summaries { items } => Ok(items),
        other => Err(unexpected(device, "ReadSummaries", &other)),
    }
}

fn category_items(device: DeviceId, response: DataResponse) -> Result<DevicePage, ReplicaError> {
    match response {
        DataResponse::CategoryItems { items, more } => Ok(DevicePage { items, more }),
        other => Err(unexpected(device, "ListCategory", &other)),
    }
}

fn unexpected(device: DeviceId, request: &'static str, response: &DataResponse) -> ReplicaError {
    ReplicaError::Unexpected {
        device,
        request,
        response: response_name(response),
    }
}

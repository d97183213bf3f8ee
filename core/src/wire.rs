//! The messages of cartdb's two internal protocols.
//!
//! - gateway -> data node: [`DataRequest`] / [`DataResponse`];
//! - API server -> gateway: [`GatewayRequest`] / [`GatewayResponse`].
//!
//! Both travel as postcard-encoded [`crate::rpc::Frame`]s. postcard is not self-describing, so
//! these enums only ever grow at the end: append variants and fields, never reorder them, and
//! bump [`PROTOCOL_VERSION`] when a change is not backwards compatible.

use serde::{Deserialize, Serialize};

pub use crate::coord::map::{ActivePolicies, PolicyEvent, PolicyRef};
pub use crate::coord::policy_store::PolicyKind;

use crate::cart::{
    Base, CartLine, DeviceId, ItemKey, ItemMeta, ItemState, ItemSummary, Operation, Product,
    StateDigest,
};

/// Sent in the hello frame of every connection; peers refuse a different version.
/// 3: placement groups (PG scans, item drops, category answers with item keys).
/// 4: the hello carries a nonce and is followed by proofs of the cluster secret; replies
/// are wrapped in `rpc::ReplyBody` (an answer, or "too large").
/// 5: PG states and backfill progress in `Cluster` answers, cluster flags, map changes.
/// 6: policies named by the map, stored and verified through gateways.
/// 7: applies carry `restamped` and are refused out of order (`OutOfOrder`); `Applied`
/// says at which version the replica holds the operation; every data node request travels
/// in a [`DataCall`] with the map epoch it was placed with (`StaleEpoch`, `MapUnknown`);
/// drops are conditional on the scanned digest.
/// 8: `list_category` is paged (`after`, `limit`; `more` / `next`); `ReadPg` streams a
/// placement group's full states and `RepairMany` repairs many items in one commit.
/// 9: `PgDigests` answers a PG's digest buckets, so anti-entropy reads only those that
/// differ.
pub const PROTOCOL_VERSION: u16 = 9;

/// Users in one `list_category` page when the client names no limit.
pub const DEFAULT_CATEGORY_PAGE: u32 = 1_000;
/// Most users one `list_category` page holds, whatever the client asks: a page of this many
/// users' items stays far below the RPC frame limit.
pub const MAX_CATEGORY_PAGE: u32 = 10_000;

/// Which service a connection expects to reach, checked in the hello exchange so that a client
/// pointed at the wrong port gets a clear error instead of undecodable frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceKind {
    DataNode,
    Gateway,
}

impl ServiceKind {
    /// `datanode` or `gateway`, for metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            Self::DataNode => "datanode",
            Self::Gateway => "gateway",
        }
    }
}

/// A request from a gateway to a data node, with the map epoch the gateway placed it with.
///
/// The data node refuses it with [`DataFailure::StaleEpoch`] when that map is older than
/// the interval of a placement group it touches (the epoch its up or past set last changed,
/// `ClusterMap::interval_of`): the gateway placed it where the PG no longer is. Requests
/// naming items are checked against their items' PGs; those that span PGs (a user's cart, a
/// category, a PG scan) against the newest interval of any PG. A data node whose own map is
/// older than `epoch` learns the newer one before it answers. See "Safety" in
/// docs/design.md.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataCall {
    pub epoch: u64,
    pub request: DataRequest,
}

/// What a gateway asks of a data node (always inside a [`DataCall`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DataRequest {
    /// Append `op` to the item's log (durably, before the reply).
    ///
    /// With `require_in_cart`, a replica whose folded quantity is 0 refuses with
    /// [`DataResponse::NotInCart`] and writes nothing: that is how a delete of an item that is
    /// not in the cart is refused without being half-applied.
    ///
    /// A replica that holds an operation of the item at or above `op`'s version refuses it
    /// with [`DataFailure::OutOfOrder`] and writes nothing, so an operation is only ever
    /// added above everything its replica holds (the real-time order rule, "Safety" in
    /// docs/design.md). The gateway then stamps it again above the newest version and sends
    /// it with `restamped`: a replica that holds the operation under an older version moves
    /// it up to the new one.
    Apply {
        key: ItemKey,
        meta: ItemMeta,
        op: Operation,
        require_in_cart: bool,
        restamped: bool,
    },
    /// Every item of `user` this replica holds.
    ReadUser { user: String },
    /// The items with qty > 0 in `category` on this replica, of the first `limit` users
    /// (at most [`MAX_CATEGORY_PAGE`]) after `after` in user order: every item of each
    /// user it names.
    ListCategory {
        category: String,
        after: Option<String>,
        limit: u32,
    },
    /// The summary of every item of `user` this replica holds: what a cart read asks first.
    ReadSummaries { user: String },
    /// The full states (with logs) of these items of `user`, for the items whose replicas'
    /// summaries disagree. Items this replica has never seen are left out of the answer.
    ReadItems { user: String, products: Vec<String> },
    /// Read repair: add what this replica lacks of an item's merged state. `ops` are
    /// operations it did not hold, or held under a smaller version than the merge kept;
    /// `base` is a newer folded base than its own, if any. Operations already held at that
    /// version (or folded) are skipped, so a repeated repair is harmless.
    Repair {
        key: ItemKey,
        meta: ItemMeta,
        base: Option<Base>,
        ops: Vec<Operation>,
    },
    /// Compaction: fold the operations up to `upto` into the item's base, provided the
    /// item's digest is still `digest` (the state the gateway saw on every replica) and
    /// `upto` is older than the node's compaction grace. Otherwise nothing changes.
    Compact {
        key: ItemKey,
        upto: crate::version::Version,
        digest: StateDigest,
    },
    /// The summary of every item this replica holds in one placement group, given as the
    /// ranges of reversed placement keys that hold exactly its items
    /// (`cartdb_model::pg::Pool::key_ranges`), at most `limit` of them.
    ScanPg { ranges: Vec<(u32, u32)>, limit: u32 },
    /// Handback: delete these items (heads, logs, category entries) from this replica,
    /// each only if its digest is still the one given (the state the sweep's scan saw and
    /// proved the up set holds). Sent only to devices that are no longer in the items' up
    /// sets, once the up set is clean. Items this replica does not hold, or holds in
    /// another state, are skipped and counted in the answer.
    DropItems { items: Vec<(ItemKey, StateDigest)> },
    /// This replica's items in key order (user, then product), after `after`, at most
    /// `limit`: the seed's DEVICEID/USERID/PRODUCTID view.
    ListItems { after: Option<ItemKey>, limit: u32 },
    /// Backfill and anti-entropy: the full states of the items this replica holds in one
    /// placement group (`ranges` as in [`DataRequest::ScanPg`]), in placement order
    /// (`cartdb_model::placement_key::placement_order`), after the item `after`, at most
    /// `limit` items and about [`PG_CHUNK_BYTES`]. No item cap: the caller pages on.
    ReadPg {
        ranges: Vec<(u32, u32)>,
        after: Option<ItemKey>,
        limit: u32,
    },
    /// Backfill: [`DataRequest::Repair`] for many items at once, applied through the same
    /// rules and committed together.
    RepairMany { items: Vec<ItemRepair> },
    /// Anti-entropy: this replica's digest of every bucket
    /// (`cartdb_model::digest_bucket`) of `ranges`, which must be whole buckets that do not
    /// overlap (a PG's ranges always are).
    PgDigests { ranges: Vec<(u32, u32)> },
}

/// Operations an item's unfolded log must hold for its digest bucket to count it in
/// [`BucketDigest::long_logs`]: the gateways' default `--compact-min-ops`.
pub const LONG_LOG_OPS: u32 = 32;

/// One digest bucket of one replica.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketDigest {
    /// The XOR of the fingerprints (`ItemSummary::fingerprint`) of the bucket's items.
    pub digest: u64,
    /// How many of its items hold at least [`LONG_LOG_OPS`] unfolded operations: the
    /// sweep reads such a bucket even when every replica agrees, to compact their logs.
    pub long_logs: u32,
}

/// Most bytes of item states one [`DataRequest::ReadPg`] answer carries (about; an answer
/// always holds at least one item).
pub const PG_CHUNK_BYTES: usize = 4 * 1024 * 1024;

/// What one replica lacks of one item: a [`DataRequest::Repair`]'s fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemRepair {
    pub key: ItemKey,
    pub meta: ItemMeta,
    pub base: Option<Base>,
    pub ops: Vec<Operation>,
}

/// One item a replica holds, with its full state (head and log) and its user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldState {
    pub user: String,
    pub state: ItemState,
}

impl DataRequest {
    /// The request's kind, for metrics labels and logs (never its contents).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Apply { .. } => "apply",
            Self::ReadUser { .. } => "read_user",
            Self::ListCategory { .. } => "list_category",
            Self::ReadSummaries { .. } => "read_summaries",
            Self::ReadItems { .. } => "read_items",
            Self::Repair { .. } => "repair",
            Self::Compact { .. } => "compact",
            Self::ScanPg { .. } => "scan_pg",
            Self::DropItems { .. } => "drop_items",
            Self::ListItems { .. } => "list_items",
            Self::ReadPg { .. } => "read_pg",
            Self::PgDigests { .. } => "pg_digests",
            Self::RepairMany { .. } => "repair_many",
        }
    }
}

/// One item a replica holds, with its user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldItem {
    pub user: String,
    pub summary: ItemSummary,
}

/// A data node's answer to one [`DataRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DataResponse {
    /// The operation is durable on this replica (or was already: `duplicate`). `qty` is this
    /// replica's folded quantity afterwards; `held` the version this replica holds the
    /// operation under (another than the request's when it already held it).
    Applied {
        qty: u64,
        duplicate: bool,
        held: crate::version::Version,
    },
    /// `require_in_cart` was set and the item's quantity is 0 here; nothing was written.
    NotInCart,
    /// The answer to [`DataRequest::ReadUser`], sorted by product id.
    UserItems { items: Vec<ItemState> },
    /// The answer to [`DataRequest::ListCategory`], sorted by user, then product; `more`
    /// when users beyond the page's last are in the category here.
    CategoryItems { items: Vec<ItemKey>, more: bool },
    /// The request could not be served.
    Failed(DataFailure),
    /// The answer to [`DataRequest::ReadSummaries`], sorted by product id.
    Summaries { items: Vec<ItemSummary> },
    /// The answer to [`DataRequest::Repair`]: the replica now holds the merged state's
    /// operations; `added` is how many it lacked, or held under a smaller version (a retry
    /// stamped by two gateways, or a write stamped again), which it moved up to the merged
    /// one.
    Repaired { added: u32 },
    /// The answer to [`DataRequest::Compact`]: how many log entries were folded (0 when
    /// the digest no longer matched, `upto` was too recent, or nothing was that old).
    Compacted { folded: u32 },
    /// The answer to [`DataRequest::ScanPg`] and [`DataRequest::ListItems`], in key order;
    /// `more` when the limit cut the answer short.
    Held { items: Vec<HeldItem>, more: bool },
    /// The answer to [`DataRequest::DropItems`]: how many items were deleted, and how many
    /// were kept because their state changed since the scan.
    Dropped { items: u32, changed: u32 },
    /// The answer to [`DataRequest::ReadPg`], in placement order; `more` when items of the
    /// PG follow the last one.
    PgStates { items: Vec<HeldState>, more: bool },
    /// The answer to [`DataRequest::PgDigests`]: one per bucket of the ranges, in key order.
    PgDigests { buckets: Vec<BucketDigest> },
}

/// Why a data node could not serve a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum DataFailure {
    /// The store failed to read or persist; `detail` is the storage error.
    #[error("storage error on device {device}: {detail}")]
    Storage { device: DeviceId, detail: String },
    /// The node is shutting down and accepts no more writes.
    #[error("device {device} is shutting down")]
    ShuttingDown { device: DeviceId },
    /// The node is still rebuilding its digest buckets after it started (seconds at a
    /// million carts); nothing was read. The sweep streams the PG instead.
    #[error("device {device} is still rebuilding its digest buckets after start-up")]
    DigestsNotReady { device: DeviceId },
    /// A field of the request cannot be stored (the gateway validates first, so this is a
    /// gateway bug or a foreign client).
    #[error("device {device} refused the request: {problem}")]
    InvalidRequest { device: DeviceId, problem: String },
    /// The operation is not newer than the item's folded base here, so it can no longer be
    /// ordered against what the base folded (see compaction in docs/design.md).
    #[error(
        "device {device} refused an operation of version {version:?}: not newer than the item's folded base {base:?}"
    )]
    TooOld {
        device: DeviceId,
        version: crate::version::Version,
        base: crate::version::Version,
    },
    /// The replica holds an operation of the item at `newest`, at or above the request's
    /// `version`: adding it would order it before an operation that may have been
    /// acknowledged already. Nothing was written; the gateway stamps it again above `newest`.
    #[error(
        "device {device} refused an operation of version {version:?}: it holds a newer one, {newest:?}"
    )]
    OutOfOrder {
        device: DeviceId,
        version: crate::version::Version,
        newest: crate::version::Version,
    },
    /// The request was placed with map `epoch`, older than `interval`, the epoch at which
    /// a placement group it touches last changed its up or past set. Nothing was read or
    /// written; the gateway must place it again with a newer map (this node has `current`).
    #[error(
        "device {device} refused a request placed with map epoch {epoch}: its placement group changed at epoch {interval} (this device has epoch {current})"
    )]
    StaleEpoch {
        device: DeviceId,
        epoch: u64,
        interval: u64,
        current: u64,
    },
    /// The request was placed with map `epoch`, newer than this node's `current`, and the
    /// node could not learn that map in time (ZooKeeper unreachable from it). Nothing was
    /// read or written.
    #[error(
        "device {device} cannot serve a request placed with map epoch {epoch}: it only knows epoch {current} and could not learn a newer one"
    )]
    MapUnknown {
        device: DeviceId,
        epoch: u64,
        current: u64,
    },
    /// The item's log holds `ops` operations not yet folded into its base, at the node's
    /// cap: nothing was written. Compaction lifts it once the item's replicas agree and the
    /// operations are older than the grace (the API answers 429).
    #[error(
        "device {device} refused an operation: the item holds {ops} unfolded operations, its cap of {cap}; it takes new ones once compaction folds old ones"
    )]
    ItemBusy {
        device: DeviceId,
        ops: u32,
        cap: u32,
    },
    /// The operation's version is older than the node's acceptance window: a write that
    /// took too long on its way (see compaction in docs/design.md). Nothing was written.
    #[error(
        "device {device} refused an operation issued {age_ms} ms ago: older than its {window_ms} ms acceptance window"
    )]
    Expired {
        device: DeviceId,
        age_ms: u64,
        window_ms: u64,
    },
    /// The operation's version is dated further ahead of the node's clock than the clock
    /// skew it allows: a gateway with a clock far ahead, or a forged version. Nothing was
    /// written.
    #[error(
        "device {device} refused an operation dated {ahead_ms} ms ahead of its clock: more than the {max_skew_ms} ms clock skew it allows"
    )]
    FromTheFuture {
        device: DeviceId,
        ahead_ms: u64,
        max_skew_ms: u64,
    },
}

/// A request from the API server to a gateway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GatewayRequest {
    /// Add one of the product named `item_name` to `user`'s cart.
    Insert {
        user: String,
        item_name: String,
        idempotency_key: Option<String>,
    },
    /// Remove one of the product named `item_name` from `user`'s cart.
    Delete {
        user: String,
        item_name: String,
        idempotency_key: Option<String>,
    },
    /// The merged cart of `user`.
    ListAll { user: String },
    /// Users holding an item of `category`: the first `limit` (at most
    /// [`MAX_CATEGORY_PAGE`]) after `after`, in order.
    ListCategory {
        category: String,
        after: Option<String>,
        limit: u32,
    },
    /// The catalog.
    Products,
    /// Add a product to the catalog or replace the one with the same product id.
    UpsertProduct { product: Product },
    /// Membership, map epoch and policy of the cluster.
    Cluster,
    /// Every live replica's own state of `user`'s items, unmerged (admin, for checking
    /// that replicas converged).
    Replicas { user: String },
    /// Where `user`'s items live: each item's PG and the devices of its up and past sets,
    /// with what each holds (admin; the seed's USERID/PRODUCTID/DEVICEID view), and the
    /// same for the cart-index entries (`@<productid>`) that record them. `item` limits the
    /// answer to the product of that name and its index entry.
    Locate { user: String, item: Option<String> },
    /// What one device holds, from its own store, in key order after `after` (admin; the
    /// seed's DEVICEID/USERID/PRODUCTID view).
    DeviceItems {
        device: DeviceId,
        after: Option<ItemKey>,
        limit: u32,
    },
    /// What `changes` would do to the placement of the PGs, without making them (admin).
    PreviewMap { changes: Vec<MapChange> },
    /// Makes `changes` in one compare-and-set of the map (admin); answered with their
    /// preview against the map they were applied to.
    ChangeMap { changes: Vec<MapChange> },
    /// Every PG's up and past sets at the current epoch (admin; Ceph's `pg dump`).
    Pgs,
    /// Stores a policy component in the policy store, content-addressed (admin; the first
    /// step of `cartdb policy deploy`). Changes nothing else.
    StorePolicy {
        kind: PolicyKind,
        /// The file it was deployed from, for people.
        file_name: String,
        bytes: Vec<u8>,
        by: String,
    },
    /// Fetches the stored policy `sha256` (`None`: the built-in merge), loads it under the
    /// sandbox's limits and checks it against the current map, changing nothing (admin; a
    /// deploy asks every gateway before the map changes).
    VerifyPolicy {
        kind: PolicyKind,
        sha256: Option<String>,
    },
    /// The policies the map names, their history, and what this gateway runs (admin).
    Policies,
}

/// One change of the cluster map an operator asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MapChange {
    /// Sets or clears a cluster flag (`noout`).
    Flag { flag: String, on: bool },
    /// Sets the anti-entropy sweep's pace in items per second (1 to `MAX_PACE`) for every
    /// gateway, or with `None` returns each to its `--anti-entropy-items-per-sec`.
    Pace { items_per_sec: Option<u32> },
    /// Sets a device's reweight, 16.16 fixed point: 0 marks it out, 0x10000 fully in.
    /// An operator's reweight is kept when the device goes down and comes back.
    Reweight { device: DeviceId, weight: u32 },
    /// Adds a device under a host bucket (created under the first root if missing).
    AddDevice {
        device: DeviceId,
        name: String,
        host: String,
        /// CRUSH weight, 16.16 fixed point.
        weight: u32,
    },
    /// Removes a device from the map. Refused until it is out and no PG's up or past set
    /// holds it (`cartdb device remove` drains it first).
    RemoveDevice { device: DeviceId },
    /// Makes `policy` the cluster's policy of `kind` (`None`: the built-in merge; a
    /// placement policy is required) and records it in the policy history as `action`
    /// (`deploy` or `rollback`) by `by` at `at_ms`. Every gateway must have verified it
    /// (`GatewayRequest::VerifyPolicy`) first: a new placement policy moves PGs like any
    /// other map change.
    Policy {
        kind: PolicyKind,
        policy: Option<PolicyRef>,
        action: String,
        by: String,
        at_ms: u64,
    },
}

impl GatewayRequest {
    /// The request's kind, for metrics labels and logs (never its contents).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Insert { .. } => "insert",
            Self::Delete { .. } => "delete",
            Self::ListAll { .. } => "list_all",
            Self::ListCategory { .. } => "list_category",
            Self::Products => "products",
            Self::UpsertProduct { .. } => "upsert_product",
            Self::Cluster => "cluster",
            Self::Replicas { .. } => "replicas",
            Self::Locate { .. } => "locate",
            Self::DeviceItems { .. } => "device_items",
            Self::PreviewMap { .. } => "preview_map",
            Self::ChangeMap { .. } => "change_map",
            Self::Pgs => "pgs",
            Self::StorePolicy { .. } => "store_policy",
            Self::VerifyPolicy { .. } => "verify_policy",
            Self::Policies => "policies",
        }
    }
}

/// A gateway's answer to one [`GatewayRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GatewayResponse {
    /// An insert or delete reached its write quorum; `qty` is the item's quantity afterwards
    /// as the acknowledging replicas reported it.
    Updated { qty: u64 },
    /// The merged cart: items with qty > 0, sorted by name.
    Cart { items: Vec<CartLine> },
    /// Users holding an item of the category, sorted: one page; `next` is the cursor of
    /// the next page (the page's last user), `None` after the last page.
    CategoryUsers {
        users: Vec<String>,
        next: Option<String>,
    },
    /// The catalog, sorted by product id.
    Products { products: Vec<Product> },
    /// The cluster as this gateway sees it.
    Cluster(Box<ClusterStatus>),
    /// The request failed.
    Failed(GatewayFailure),
    /// The answer to [`GatewayRequest::Replicas`]: one entry per live device, by device id.
    Replicas { replicas: Vec<ReplicaDump> },
    /// The answer to [`GatewayRequest::Locate`], sorted by product id.
    Located { items: Vec<ItemLocation> },
    /// The answer to [`GatewayRequest::DeviceItems`]; `next` is the `after` of the next
    /// page, `None` on the last one.
    DeviceItems {
        items: Vec<HeldItem>,
        next: Option<ItemKey>,
    },
    /// The answer to [`GatewayRequest::PreviewMap`] and [`GatewayRequest::ChangeMap`].
    MapPreview(Box<MapPreview>),
    /// The answer to [`GatewayRequest::Pgs`].
    Pgs { epoch: u64, pgs: Vec<PgEntry> },
    /// The answer to [`GatewayRequest::StorePolicy`].
    PolicyStored { sha256: String },
    /// The answer to [`GatewayRequest::VerifyPolicy`], also when the policy is refused.
    PolicyVerified(Box<PolicyVerdict>),
    /// The answer to [`GatewayRequest::Policies`].
    Policies(Box<PolicyStatus>),
}

/// One gateway's verdict on a policy a deploy or rollback would activate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PolicyVerdict {
    pub gateway: u32,
    pub kind: PolicyKind,
    /// `None`: the built-in merge.
    pub sha256: Option<String>,
    /// The name the policy reports (empty when it did not load).
    pub name: String,
    /// Why this gateway refuses it; `None` when it accepts it.
    pub refused: Option<String>,
    /// What was checked, for people.
    pub checked: String,
    /// For a placement policy this gateway accepts: what activating it would move.
    pub preview: Option<MapPreview>,
}

/// The policies as one gateway sees them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PolicyStatus {
    pub gateway: u32,
    /// The map epoch this gateway places with.
    pub epoch: u64,
    /// What the map names.
    pub named: ActivePolicies,
    /// What this gateway runs (the same, unless it could not load what the map names).
    pub running: RunningPolicies,
    /// The last activations, oldest first.
    pub history: Vec<PolicyEvent>,
}

/// The policies one gateway runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunningPolicies {
    pub placement: PolicyInfo,
    /// `None`: the built-in merge.
    pub merge: Option<PolicyInfo>,
}

/// What a map change does to placement: `crushtool --compare` for cartdb.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MapPreview {
    /// The epoch of the map the change was compared with (or applied to).
    pub epoch: u64,
    /// The epoch the change produced, when it was applied.
    pub applied_epoch: Option<u64>,
    pub pg_num: u32,
    pub size: u32,
    /// PGs whose up set changes (as a set of devices).
    pub pgs_moved: u32,
    /// Copies of PGs that land on a device that did not hold them: the backfill's work.
    pub copies_moved: u32,
    /// Copies of PGs in all (`pg_num` x `size`, less any shortfall). Items spread
    /// uniformly over the PGs (the placement key is a hash), so the share of items whose
    /// placement changes is expected to be `pgs_moved / pg_num`, and the share of item
    /// copies that move `copies_moved / copies_total`.
    pub copies_total: u32,
    /// Every device of the map before or after, by id.
    pub devices: Vec<DevicePreview>,
}

/// One device in a [`MapPreview`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DevicePreview {
    pub id: DeviceId,
    pub name: String,
    /// Reweight before and after (0 = out, 0x10000 = in); `None`: not in that map.
    pub reweight_before: Option<u32>,
    pub reweight_after: Option<u32>,
    /// PGs whose up set holds the device, before and after.
    pub pgs_before: u32,
    pub pgs_after: u32,
}

/// One PG in a [`GatewayResponse::Pgs`] answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PgEntry {
    pub pg: u32,
    /// Primary first.
    pub up: Vec<DeviceId>,
    pub past: Vec<DeviceId>,
}

/// Where one item (or cart-index entry) of a user lives (`GatewayRequest::Locate`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ItemLocation {
    /// The product id, or `@<productid>` for a cart-index entry.
    pub product: String,
    /// The product's name in the catalog, if it is still there.
    pub name: Option<String>,
    /// The seed's placement key and the item's placement group.
    pub x: u32,
    pub pg: u32,
    /// The devices of the PG's up set (primary first), then of its past set.
    pub replicas: Vec<ReplicaLocation>,
}

/// One device that holds, or should hold, an item.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReplicaLocation {
    pub device: DeviceId,
    /// In the PG's up set (`false`: in its past set).
    pub current: bool,
    /// Whether the device answered.
    pub answered: bool,
    /// The device's own quantity of the item; `None` when it does not hold it (or did not
    /// answer).
    pub qty: Option<u64>,
}

/// One device's own state of a user's items.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReplicaDump {
    pub device: DeviceId,
    /// The device's items, sorted by product id; `None` when it did not answer.
    pub items: Option<Vec<ItemState>>,
    /// Why it did not answer.
    pub error: Option<String>,
}

/// Why a gateway refused or failed a request. The API server maps each to an HTTP status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayFailure {
    /// No product of the catalog has this name (HTTP 404).
    #[error("product not available in inventory")]
    UnknownProduct { name: String },
    /// A delete of an item whose quantity is 0 (HTTP 404).
    #[error("product is not available in cart")]
    NotInCart { name: String },
    /// A field of the request is unacceptable (HTTP 400).
    #[error("{field}: {problem}")]
    InvalidInput { field: String, problem: String },
    /// Fewer replicas answered than the quorum needs (HTTP 503).
    #[error("{operation} reached {acked} of the {required} replicas it needs: {errors}")]
    QuorumNotReached {
        operation: String,
        required: usize,
        acked: usize,
        errors: String,
    },
    /// The coordination service (ZooKeeper) could not be reached or refused a change
    /// (HTTP 503).
    #[error("coordination unavailable: {detail}")]
    CoordinationUnavailable { detail: String },
    /// A bug or an unexpected state (HTTP 500).
    #[error("internal error: {detail}")]
    Internal { detail: String },
    /// A map change names a device the map does not have (HTTP 404).
    #[error("device {device} is not in the map")]
    UnknownDevice { device: DeviceId },
    /// The item's replicas refuse new operations until compaction folds the ones they hold
    /// (a hot item: many writes to one item within the compaction grace); retry later
    /// (HTTP 429).
    #[error("{name}: too many recent operations on this item, retry later ({detail})")]
    ItemBusy { name: String, detail: String },
    /// A map change cannot be made in the cluster's present state (HTTP 409).
    #[error("map change refused: {problem}")]
    MapChangeRefused { problem: String },
}

/// The cluster as one gateway sees it (`GET /api/cluster`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClusterStatus {
    /// Every device of the CRUSH map.
    pub devices: Vec<DeviceStatus>,
    /// Live gateways.
    pub gateways: Vec<GatewayInfo>,
    /// Version of the CRUSH map znode every gateway places with.
    pub map_epoch: u64,
    /// The placement policy this gateway runs.
    pub placement_policy: PolicyInfo,
    /// Replication factor and quorums.
    pub replication: ReplicationInfo,
    /// Read repair, compaction and anti-entropy as this gateway sees them.
    pub maintenance: MaintenanceStatus,
    /// The pool's placement groups at this epoch.
    pub placement_groups: PgStatus,
    /// The cluster flags that are set (`noout`).
    pub flags: Vec<String>,
    /// The policies the map names (`placement_policy` and `maintenance.merge_policy` are
    /// what this gateway runs).
    pub policies: ActivePolicies,
}

/// The pool's placement groups as one gateway sees them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PgStatus {
    pub pool: u32,
    pub pg_num: u32,
    /// PGs with `size` live devices in their up set and no past set.
    pub clean: u32,
    /// PGs whose up set has fewer live devices than the pool's size: some device of theirs
    /// is down (not yet out), or there are too few devices.
    pub degraded: u32,
    /// PGs whose past set is not empty: they may hold data off their up set, and are read
    /// from both until the anti-entropy sweep finds them clean (Ceph's "remapped").
    pub remapped: u32,
    /// Remapped PGs whose up set is all live, so the sweep can backfill them now.
    pub backfilling: u32,
    /// PGs whose up set has fewer devices than the pool's size.
    pub undersized: u32,
    /// PGs whose up set has fewer live devices than the write quorum: writes to them fail.
    pub without_write_quorum: u32,
    /// The backfill under way, if any PG is remapped.
    pub backfill: Option<BackfillProgress>,
}

/// How far the current backfill has got (see the gateway's `backfill` module).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BackfillProgress {
    /// Most PGs remapped at once since it started.
    pub pgs_total: u32,
    /// PGs still remapped.
    pub pgs_left: u32,
    /// When it started (wall-clock milliseconds, as seen by the answering gateway).
    pub started_ms: u64,
    pub elapsed_secs: u64,
    /// Estimated seconds left; `None` until a PG is done.
    pub eta_secs: Option<u64>,
}

/// Counters of the work that makes replicas converge, from the answering gateway, and the
/// anti-entropy sweep's progress if that gateway leads the sweep.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MaintenanceStatus {
    /// The merge policy this gateway runs; `None`: the built-in reference merge.
    pub merge_policy: Option<PolicyInfo>,
    /// Replica repairs confirmed (read repair and anti-entropy).
    pub repairs: u64,
    /// Operations those repairs added.
    pub repaired_ops: u64,
    /// Repairs that failed (retried by a later read or sweep).
    pub repair_failures: u64,
    /// Merges that fell back to the built-in merge because the policy failed.
    pub merge_fallbacks: u64,
    /// Compaction requests sent to replicas.
    pub compactions: u64,
    /// Log entries folded into bases by them.
    pub folded_ops: u64,
    /// The anti-entropy sweep; `None` when the answering gateway does not lead it (the API
    /// server asks the leader, the smallest-id gateway, first).
    pub anti_entropy: Option<SweepStatus>,
    /// This gateway's calls of each policy it has run, by kind and sha256.
    pub policy_calls: Vec<PolicyCallStats>,
}

/// One policy's calls on one gateway since it started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PolicyCallStats {
    /// `placement` or `merge`.
    pub kind: String,
    pub sha256: String,
    pub calls: u64,
    pub ok: u64,
    pub traps: u64,
    pub timeouts: u64,
    pub out_of_fuel: u64,
    /// Answers refused by validation.
    pub invalid: u64,
    /// Guest errors, poisoned placers and other failures.
    pub other_failures: u64,
    /// Merges that fell back to the built-in merge.
    pub fallbacks: u64,
    pub total_micros: u64,
    pub max_micros: u64,
}

/// Progress of the anti-entropy sweep, as the gateway that leads it reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SweepStatus {
    /// The gateway running the sweep (the live gateway with the smallest id).
    pub leader: u32,
    /// Full passes over every placement group finished since that gateway started leading.
    pub sweeps_completed: u64,
    /// Placement groups compared in the current pass, and how many it covers (`pg_num`).
    pub pgs_done: u64,
    pub pgs_total: u64,
    /// Item replicas repaired by the sweep since that gateway started leading.
    pub repairs: u64,
    /// PGs found clean and their past sets cleared, and items handed back (deleted from
    /// devices no longer in their up set), since that gateway started leading.
    #[serde(default)]
    pub pgs_cleaned: u64,
    #[serde(default)]
    pub handed_back: u64,
    /// Wall-clock milliseconds of the last update.
    pub updated_ms: u64,
    /// Items streamed in the sweep's PG windows (each compared across its PG's read set),
    /// and operations its repairs added to up-set devices, since that gateway started
    /// leading.
    #[serde(default)]
    pub items_streamed: u64,
    #[serde(default)]
    pub ops_repaired: u64,
    /// Rounds of PGs running now (several PGs with a past set stream at once).
    #[serde(default)]
    pub rounds_running: u64,
    /// How long the last whole pass took, in milliseconds (0 before the first).
    #[serde(default)]
    pub last_pass_ms: u64,
    /// The pace the sweep keeps now, in items per second: the map's (`cartdb pace`) or the
    /// leader's `--anti-entropy-items-per-sec`.
    #[serde(default)]
    pub items_per_sec: u64,
}

/// One device of the map and whether it is up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeviceStatus {
    pub id: DeviceId,
    pub name: String,
    pub up: bool,
    /// CRUSH reweight in 16.16 fixed point: 0 is out, 0x10000 is fully in.
    pub reweight: u32,
    /// Where the data node listens, when it is up.
    pub address: Option<String>,
    /// Placement groups whose up set includes this device.
    pub pgs: u32,
    /// Where the data node serves `GET /metrics`, when it is up.
    #[serde(default)]
    pub metrics: Option<String>,
    /// Marked out by the cluster (down past the grace): it is marked in when it returns.
    pub auto_out: bool,
    /// Placement groups whose past set includes this device: it still holds data they need.
    pub past_pgs: u32,
}

/// A live gateway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GatewayInfo {
    pub id: u32,
    pub address: String,
    /// Where the gateway serves `GET /metrics` (`None`: not registered, or not known to
    /// the one answering).
    #[serde(default)]
    pub metrics: Option<String>,
}

/// A loaded WebAssembly policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PolicyInfo {
    pub name: String,
    pub sha256: String,
}

/// Replication settings of a gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReplicationInfo {
    pub replicas: usize,
    pub write_quorum: usize,
    pub read_quorum: usize,
}

//! The endpoint handlers: check the input, ask a gateway, shape the answer.
//!
//! Each handler turns its request into one [`GatewayRequest`], and the gateway's reply into
//! the seed's JSON shape. A [`GatewayResponse::Failed`] becomes an [`ApiError::Gateway`],
//! whose status comes from the table in [`crate::error`].

use axum::Json;
use axum::extract::State;
use cartdb_core::cart::{CartLine, DeviceId, InputError, ItemKey, Product, validate_id};
use cartdb_core::wire::{
    ClusterStatus, DEFAULT_CATEGORY_PAGE, GatewayInfo, GatewayRequest, GatewayResponse, HeldItem,
    ItemLocation, MAX_CATEGORY_PAGE, ReplicaDump,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::Admin;
use crate::error::{ApiError, ErrorBody, NotReady, Ready};
use crate::extract::{ApiJson, ApiQuery, IdempotencyKey};
use crate::gateways::Reply;
use crate::routes::AppState;

/// Body of `POST /api/insert` and `POST /api/delete`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CartChange {
    /// The shopper: 1-256 bytes, no `/` and no control characters (as every identifier).
    #[schema(
        example = "user1",
        min_length = 1,
        max_length = 256,
        pattern = "^[^/\\u0000-\\u001F\\u007F-\\u009F]+$"
    )]
    pub userid: String,
    /// The product's name in the catalog.
    #[schema(
        example = "pork",
        min_length = 1,
        max_length = 256,
        pattern = "^[^/\\u0000-\\u001F\\u007F-\\u009F]+$"
    )]
    pub item_name: String,
}

impl CartChange {
    fn validate(&self) -> Result<(), InputError> {
        validate_id("userid", &self.userid)?;
        validate_id("item_name", &self.item_name)
    }
}

/// Answer of an insert or delete.
#[derive(Debug, Serialize, ToSchema)]
pub struct Changed {
    pub message: &'static str,
    pub qty: u64,
}

/// Adds one of the product named `item_name` to the user's cart.
#[utoipa::path(post, path = "/api/insert", tag = "cart", request_body = CartChange,
    params(("Idempotency-Key" = Option<String>, Header, description = "any string of at most 256 bytes; retries with the same key are applied once (within the idempotency window)")),
    responses((status = 200, description = "inserted into cart: the quantity now", body = Changed),
        (status = 400, description = "bad input, naming the field", body = ErrorBody), (status = 404, description = "`product not available in inventory`, or (delete) `product is not available in cart`", body = ErrorBody), (status = 413, description = "the body is over 64 KiB", body = ErrorBody), (status = 429, description = "the item has had too many operations within the compaction grace (its replicas' cap of unfolded operations), or the shopper is over `--shopper-rate-limit`: retry later", body = ErrorBody), (status = 503, description = "no gateway, a quorum or ZooKeeper cannot be reached, or no answer in time: retry (with the same Idempotency-Key)", body = ErrorBody), (status = 500, description = "a bug", body = ErrorBody)))]
pub async fn insert(
    State(state): State<AppState>,
    key: IdempotencyKey,
    ApiJson(change): ApiJson<CartChange>,
) -> Result<Json<Changed>, ApiError> {
    change.validate()?;
    state.admit_shopper(&change.userid)?;
    let request = GatewayRequest::Insert {
        user: change.userid,
        item_name: change.item_name,
        idempotency_key: Some(key.0),
    };
    let qty = updated_qty(&state, &request, "Insert").await?;
    Ok(Json(Changed {
        message: "inserted into cart",
        qty,
    }))
}

/// Removes one of the product named `item_name` from the user's cart.
#[utoipa::path(post, path = "/api/delete", tag = "cart", request_body = CartChange,
    params(("Idempotency-Key" = Option<String>, Header, description = "any string of at most 256 bytes; retries with the same key are applied once (within the idempotency window)")),
    responses((status = 200, description = "deleted from cart: the quantity now", body = Changed),
        (status = 400, description = "bad input, naming the field", body = ErrorBody), (status = 404, description = "`product not available in inventory`, or (delete) `product is not available in cart`", body = ErrorBody), (status = 413, description = "the body is over 64 KiB", body = ErrorBody), (status = 429, description = "the item has had too many operations within the compaction grace (its replicas' cap of unfolded operations), or the shopper is over `--shopper-rate-limit`: retry later", body = ErrorBody), (status = 503, description = "no gateway, a quorum or ZooKeeper cannot be reached, or no answer in time: retry (with the same Idempotency-Key)", body = ErrorBody), (status = 500, description = "a bug", body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    key: IdempotencyKey,
    ApiJson(change): ApiJson<CartChange>,
) -> Result<Json<Changed>, ApiError> {
    change.validate()?;
    state.admit_shopper(&change.userid)?;
    let request = GatewayRequest::Delete {
        user: change.userid,
        item_name: change.item_name,
        idempotency_key: Some(key.0),
    };
    let qty = updated_qty(&state, &request, "Delete").await?;
    Ok(Json(Changed {
        message: "deleted from cart",
        qty,
    }))
}

async fn updated_qty(
    state: &AppState,
    request: &GatewayRequest,
    name: &'static str,
) -> Result<u64, ApiError> {
    match ask(state, request).await?.response {
        GatewayResponse::Updated { qty } => Ok(qty),
        other => Err(unexpected(name, other)),
    }
}

/// Query of `GET /api/list_all`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UserQuery {
    /// The shopper.
    #[param(
        min_length = 1,
        max_length = 256,
        pattern = "^[^/\\u0000-\\u001F\\u007F-\\u009F]+$"
    )]
    pub userid: String,
}

/// A user's cart in the seed's shape.
#[derive(Debug, Serialize, ToSchema)]
pub struct Cart {
    pub userid: String,
    pub response: Vec<CartLine>,
}

/// The merged cart: the items with quantity above 0, sorted by name.
#[utoipa::path(get, path = "/api/list_all", tag = "cart", params(UserQuery),
    responses((status = 200, description = "the cart", body = Cart), (status = 400, description = "bad input, naming the field", body = ErrorBody), (status = 429, description = "the shopper is over `--shopper-rate-limit` requests a second (off by default): retry later", body = ErrorBody), (status = 503, description = "no gateway, a quorum or ZooKeeper cannot be reached, or no answer in time: retry (with the same Idempotency-Key)", body = ErrorBody), (status = 500, description = "a bug", body = ErrorBody)))]
pub async fn list_all(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<UserQuery>,
) -> Result<Json<Cart>, ApiError> {
    validate_id("userid", &query.userid)?;
    state.admit_shopper(&query.userid)?;
    let request = GatewayRequest::ListAll {
        user: query.userid.clone(),
    };
    match ask(&state, &request).await?.response {
        GatewayResponse::Cart { items } => Ok(Json(Cart {
            userid: query.userid,
            response: items,
        })),
        other => Err(unexpected("ListAll", other)),
    }
}

/// Query of `GET /api/list_category`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CategoryQuery {
    /// The category.
    #[param(
        min_length = 1,
        max_length = 256,
        pattern = "^[^/\\u0000-\\u001F\\u007F-\\u009F]+$"
    )]
    pub category: String,
    /// The previous page's `next`: list the users after this one. Absent: from the first.
    #[param(
        min_length = 1,
        max_length = 256,
        pattern = "^[^/\\u0000-\\u001F\\u007F-\\u009F]+$"
    )]
    pub after: Option<String>,
    /// Most users in the page, 1 to 10000. Default: 1000.
    #[param(minimum = 1, maximum = 10000)]
    pub limit: Option<u32>,
}

/// One page of the users holding an item of a category.
#[derive(Debug, Serialize, ToSchema)]
pub struct CategoryUsers {
    pub category: String,
    /// Sorted, each user once across all pages.
    pub users: Vec<String>,
    /// Pass as `after` for the next page; `null` on the last page.
    pub next: Option<String>,
}

/// The users holding an item of the category with quantity above 0, a page at a time in
/// user order (admin).
#[utoipa::path(get, path = "/api/list_category", tag = "cart", params(CategoryQuery), security(("admin_token" = [])),
    responses((status = 200, description = "one page of the users", body = CategoryUsers), (status = 400, description = "bad input, naming the field", body = ErrorBody), (status = 401, description = "the admin token is missing or wrong", body = ErrorBody),
        (status = 503, description = "no gateway, a quorum or ZooKeeper cannot be reached, or no answer in time: retry (with the same Idempotency-Key)", body = ErrorBody), (status = 500, description = "a bug", body = ErrorBody)))]
pub async fn list_category(
    _admin: Admin,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<CategoryQuery>,
) -> Result<Json<CategoryUsers>, ApiError> {
    validate_id("category", &query.category)?;
    if let Some(after) = &query.after {
        validate_id("after", after)?;
    }
    let limit = query.limit.unwrap_or(DEFAULT_CATEGORY_PAGE);
    if !(1..=MAX_CATEGORY_PAGE).contains(&limit) {
        return Err(ApiError::InvalidQuery {
            detail: format!("limit: {limit} is not between 1 and {MAX_CATEGORY_PAGE}"),
        });
    }
    let request = GatewayRequest::ListCategory {
        category: query.category.clone(),
        after: query.after,
        limit,
    };
    match ask(&state, &request).await?.response {
        GatewayResponse::CategoryUsers { users, next } => Ok(Json(CategoryUsers {
            category: query.category,
            users,
            next,
        })),
        other => Err(unexpected("ListCategory", other)),
    }
}

/// The catalog.
#[derive(Debug, Serialize, ToSchema)]
pub struct Catalog {
    pub products: Vec<Product>,
}

/// The catalog.
#[utoipa::path(get, path = "/api/products", tag = "catalog",
    responses((status = 200, description = "every product", body = Catalog), (status = 503, description = "no gateway, a quorum or ZooKeeper cannot be reached, or no answer in time: retry (with the same Idempotency-Key)", body = ErrorBody), (status = 500, description = "a bug", body = ErrorBody)))]
pub async fn products(State(state): State<AppState>) -> Result<Json<Catalog>, ApiError> {
    match ask(&state, &GatewayRequest::Products).await?.response {
        GatewayResponse::Products { products } => Ok(Json(Catalog { products })),
        other => Err(unexpected("Products", other)),
    }
}

/// Adds a product to the catalog, or replaces the one with its `productid` (admin).
#[utoipa::path(post, path = "/api/products", tag = "catalog", request_body = Product, security(("admin_token" = [])),
    responses((status = 200, description = "the catalog holds the product", body = Product),
        (status = 400, description = "bad input, naming the field", body = ErrorBody), (status = 401, description = "the admin token is missing or wrong", body = ErrorBody), (status = 413, description = "the body is over 64 KiB", body = ErrorBody), (status = 503, description = "no gateway, a quorum or ZooKeeper cannot be reached, or no answer in time: retry (with the same Idempotency-Key)", body = ErrorBody), (status = 500, description = "a bug", body = ErrorBody)))]
pub async fn upsert_product(
    _admin: Admin,
    State(state): State<AppState>,
    ApiJson(product): ApiJson<Product>,
) -> Result<Json<Product>, ApiError> {
    product.validate()?;
    let request = GatewayRequest::UpsertProduct {
        product: product.clone(),
    };
    match ask(&state, &request).await?.response {
        GatewayResponse::Failed(failure) => Err(failure.into()),
        // The protocol does not fix which success reply an upsert gets; any one means the
        // catalog now holds the product.
        _ => Ok(Json(product)),
    }
}

/// Answer of `GET /healthz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: &'static str,
    pub gateways: usize,
}

#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "alive", body = Health),
        (status = 503, description = "no gateway is known", body = ErrorBody)))]
/// Healthy while at least one gateway is known; it does not call one, so a health check
/// costs the cluster nothing.
pub async fn healthz(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    match state.pool().len() {
        0 => Err(ApiError::NoGateway),
        gateways => Ok(Json(Health {
            status: "ok",
            gateways,
        })),
    }
}

#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, description = "ready", body = Ready),
        (status = 503, description = "not ready: each missing thing named", body = NotReady)))]
/// `GET /readyz`: 200 while this server's ZooKeeper session is connected, a gateway
/// answers, and every placement group has a write quorum of live devices; otherwise 503
/// naming each thing missing (`/healthz` stays liveness: the process serves).
pub async fn readyz(State(state): State<AppState>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut missing = Vec::new();
    if state.zookeeper_connected() == Some(false) {
        missing.push("ZooKeeper: this API server's session is not connected".to_owned());
    }
    match state
        .pool()
        .call_leader_first(&GatewayRequest::Cluster)
        .await
    {
        Ok(Reply {
            response: GatewayResponse::Cluster(status),
            ..
        }) => {
            let pgs = &status.placement_groups;
            if pgs.without_write_quorum > 0 {
                missing.push(format!(
                    "write quorum: {} of {} placement groups have fewer than {} live devices",
                    pgs.without_write_quorum, pgs.pg_num, status.replication.write_quorum
                ));
            }
        }
        Ok(other) => missing.push(format!(
            "gateway {}: unexpected answer to a cluster status request",
            other.gateway
        )),
        Err(e) => missing.push(format!("gateways: {e}")),
    }
    if missing.is_empty() {
        return Json(Ready { status: "ready" }).into_response();
    }
    let body = NotReady {
        error: format!("not ready: {}", missing.join("; ")),
        missing,
    };
    (axum::http::StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

/// A gateway's view of the cluster, plus this API server's.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterView {
    #[serde(flatten)]
    pub status: ClusterStatus,
    pub api: ApiView,
}

/// The API server's own view: the gateways it knows and which one answered.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiView {
    pub gateways: Vec<GatewayInfo>,
    pub answered_by: u32,
    /// What each live gateway runs (those that answered).
    pub policies: Vec<cartdb_core::wire::PolicyStatus>,
    /// Every gateway that answered runs exactly the policies the map names.
    pub policies_agree: bool,
}

/// `GET /api/cluster[?gateway=N]`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ClusterQuery {
    /// Ask this gateway instead of the sweep's leader (to see what each one sees).
    pub gateway: Option<u32>,
}

#[utoipa::path(get, path = "/api/cluster", tag = "cluster", params(ClusterQuery),
    security((), ("admin_token" = [])),
    responses((status = 200, description = "the cluster; addresses empty unless admin", body = ClusterView),
(status = 400, description = "bad input, naming the field", body = ErrorBody),
        (status = 404, description = "`?gateway=N` names no live gateway", body = ErrorBody),
        (status = 503, description = "no gateway answered", body = ErrorBody),
        (status = 500, description = "a bug", body = ErrorBody)))]
/// `GET /api/cluster`: the status as the sweep's leader (or the gateway `?gateway=N`) sees
/// it. The internal addresses (data nodes', gateways' and their metrics endpoints) are shown
/// to admin requests only; others get them empty.
pub async fn cluster(
    State(state): State<AppState>,
    admin: crate::auth::IsAdmin,
    ApiQuery(query): ApiQuery<ClusterQuery>,
) -> Result<Json<ClusterView>, ApiError> {
    let reply = match query.gateway {
        Some(id) => state.pool().call_on(id, &GatewayRequest::Cluster).await?,
        None => {
            state
                .pool()
                .call_leader_first(&GatewayRequest::Cluster)
                .await?
        }
    };
    match reply.response {
        GatewayResponse::Cluster(status) => {
            let policies = crate::policy_admin::statuses(&state).await;
            let policies_agree = policies
                .iter()
                .all(|p| crate::policy_admin::runs(p, &status.policies));
            let mut view = ClusterView {
                status: *status,
                api: ApiView {
                    gateways: state.pool().gateways(),
                    answered_by: reply.gateway,
                    policies,
                    policies_agree,
                },
            };
            if !admin.0 {
                view.redact_addresses();
            }
            Ok(Json(view))
        }
        other => Err(unexpected("Cluster", other)),
    }
}

impl ClusterView {
    /// Empties every internal address: where data nodes and gateways listen is for admins.
    fn redact_addresses(&mut self) {
        for device in &mut self.status.devices {
            device.address = None;
            device.metrics = None;
        }
        for gateway in self
            .status
            .gateways
            .iter_mut()
            .chain(&mut self.api.gateways)
        {
            gateway.address.clear();
            gateway.metrics = None;
        }
    }
}

/// Every live replica's own state of a user's items.
#[derive(Debug, Serialize, ToSchema)]
pub struct Replicas {
    pub userid: String,
    pub replicas: Vec<ReplicaDump>,
}

#[utoipa::path(get, path = "/api/admin/replicas", tag = "admin", params(UserQuery), security(("admin_token" = [])),
    responses((status = 200, description = "each live replica's state", body = Replicas),
        (status = 400, description = "bad input, naming the field", body = ErrorBody), (status = 401, description = "the admin token is missing or wrong", body = ErrorBody), (status = 503, description = "no gateway, a quorum or ZooKeeper cannot be reached, or no answer in time: retry (with the same Idempotency-Key)", body = ErrorBody), (status = 500, description = "a bug", body = ErrorBody)))]
/// `GET /api/admin/replicas?userid=U` (admin): the unmerged state each live data node holds
/// of the user's items, to check that replicas converged.
pub async fn replicas(
    _admin: Admin,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<UserQuery>,
) -> Result<Json<Replicas>, ApiError> {
    validate_id("userid", &query.userid)?;
    let request = GatewayRequest::Replicas {
        user: query.userid.clone(),
    };
    match ask(&state, &request).await?.response {
        GatewayResponse::Replicas { replicas } => Ok(Json(Replicas {
            userid: query.userid,
            replicas,
        })),
        other => Err(unexpected("Replicas", other)),
    }
}

/// Query of `GET /api/admin/locate`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LocateQuery {
    /// The shopper.
    #[param(
        min_length = 1,
        max_length = 256,
        pattern = "^[^/\\u0000-\\u001F\\u007F-\\u009F]+$"
    )]
    pub userid: String,
    /// Only the item of this name.
    #[param(
        min_length = 1,
        max_length = 256,
        pattern = "^[^/\\u0000-\\u001F\\u007F-\\u009F]+$"
    )]
    pub item: Option<String>,
}

/// Where a user's items live: the seed's USERID/PRODUCTID/DEVICEID view.
#[derive(Debug, Serialize, ToSchema)]
pub struct Located {
    pub userid: String,
    /// One entry per item: its PG and the devices of its up set (`current`) and past set,
    /// whether each answered, and the quantity each holds (`null`: not held).
    pub items: Vec<ItemLocation>,
    /// `USERID/PRODUCTID/DEVICEID` for every device that holds an item.
    pub paths: Vec<String>,
}

#[utoipa::path(get, path = "/api/admin/locate", tag = "admin", params(LocateQuery), security(("admin_token" = [])),
    responses((status = 200, description = "the items' placement groups and devices", body = Located),
        (status = 400, description = "bad input, naming the field", body = ErrorBody), (status = 401, description = "the admin token is missing or wrong", body = ErrorBody), (status = 404, description = "no product of that name", body = ErrorBody),
        (status = 503, description = "no gateway, a quorum or ZooKeeper cannot be reached, or no answer in time: retry (with the same Idempotency-Key)", body = ErrorBody), (status = 500, description = "a bug", body = ErrorBody)))]
/// `GET /api/admin/locate?userid=U[&item=NAME]` (admin).
pub async fn locate(
    _admin: Admin,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<LocateQuery>,
) -> Result<Json<Located>, ApiError> {
    validate_id("userid", &query.userid)?;
    if let Some(item) = &query.item {
        validate_id("item", item)?;
    }
    let request = GatewayRequest::Locate {
        user: query.userid.clone(),
        item: query.item,
    };
    match ask(&state, &request).await?.response {
        GatewayResponse::Located { items } => {
            let paths = items
                .iter()
                .flat_map(|item| {
                    item.replicas
                        .iter()
                        .filter(|r| r.qty.is_some())
                        .map(|r| format!("{}/{}/{}", query.userid, item.product, r.device))
                })
                .collect();
            Ok(Json(Located {
                userid: query.userid,
                items,
                paths,
            }))
        }
        other => Err(unexpected("Locate", other)),
    }
}

/// Query of `GET /api/admin/device-items`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeviceItemsQuery {
    /// The device (data node) id.
    pub device: DeviceId,
    /// Start after this item (the `next` of the previous page); with `after_productid`.
    #[param(
        min_length = 1,
        max_length = 256,
        pattern = "^[^/\\u0000-\\u001F\\u007F-\\u009F]+$"
    )]
    pub after_userid: Option<String>,
    /// Start after this item; with `after_userid`.
    #[param(
        min_length = 1,
        max_length = 256,
        pattern = "^[^/\\u0000-\\u001F\\u007F-\\u009F]+$"
    )]
    pub after_productid: Option<String>,
    /// Items per page (1-1000). Default: 1000.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// What one device holds: the seed's DEVICEID/USERID/PRODUCTID view.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceItems {
    pub device: DeviceId,
    pub items: Vec<DeviceItem>,
    /// Where the next page starts; `null` on the last page.
    pub next: Option<ItemKey>,
    /// `DEVICEID/USERID/PRODUCTID` for every item of the page.
    pub paths: Vec<String>,
}

/// One item a device holds, as its own store has it.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceItem {
    pub userid: String,
    pub productid: String,
    pub qty: u64,
}

#[utoipa::path(get, path = "/api/admin/device-items", tag = "admin", params(DeviceItemsQuery), security(("admin_token" = [])),
    responses((status = 200, description = "one page of the device's items", body = DeviceItems),
        (status = 400, description = "bad input, naming the field", body = ErrorBody), (status = 401, description = "the admin token is missing or wrong", body = ErrorBody), (status = 503, description = "the device is down, or no gateway answered", body = ErrorBody), (status = 500, description = "a bug", body = ErrorBody)))]
/// `GET /api/admin/device-items?device=D[&after_userid=U&after_productid=P][&limit=N]`
/// (admin).
pub async fn device_items(
    _admin: Admin,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<DeviceItemsQuery>,
) -> Result<Json<DeviceItems>, ApiError> {
    let after = match (query.after_userid, query.after_productid) {
        (Some(user), Some(product)) => {
            validate_id("after_userid", &user)?;
            validate_id("after_productid", &product)?;
            Some(ItemKey { user, product })
        }
        (None, None) => None,
        _ => {
            return Err(ApiError::InvalidQuery {
                detail: "after_userid and after_productid go together".to_owned(),
            });
        }
    };
    let request = GatewayRequest::DeviceItems {
        device: query.device,
        after,
        limit: query.limit.unwrap_or(1000),
    };
    match ask(&state, &request).await?.response {
        GatewayResponse::DeviceItems { items, next } => {
            let items: Vec<DeviceItem> = items
                .into_iter()
                .map(|HeldItem { user, summary }| DeviceItem {
                    userid: user,
                    productid: summary.product,
                    qty: summary.qty,
                })
                .collect();
            let paths = items
                .iter()
                .map(|i| format!("{}/{}/{}", query.device, i.userid, i.productid))
                .collect();
            Ok(Json(DeviceItems {
                device: query.device,
                items,
                next,
                paths,
            }))
        }
        other => Err(unexpected("DeviceItems", other)),
    }
}

/// Answer of `GET /api/admin/traffic`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TrafficSeries {
    /// Width of each point's bucket.
    pub bucket_secs: u64,
    /// The cart operations this API server answered, oldest bucket first.
    pub points: Vec<crate::traffic::TrafficPoint>,
}

#[utoipa::path(get, path = "/api/admin/traffic", tag = "admin", security(("admin_token" = [])),
    responses((status = 200, description = "the last ten minutes in 5 s buckets", body = TrafficSeries), (status = 401, description = "the admin token is missing or wrong", body = ErrorBody)))]
/// `GET /api/admin/traffic` (admin): this API server's cart operations per second and
/// latency percentiles over the last ten minutes, for the dashboard's charts.
pub async fn traffic(_admin: Admin, State(state): State<AppState>) -> Json<TrafficSeries> {
    Json(TrafficSeries {
        bucket_secs: crate::traffic::BUCKET_SECS,
        points: state.traffic().series(crate::traffic::unix_secs()),
    })
}

pub(crate) async fn ask(state: &AppState, request: &GatewayRequest) -> Result<Reply, ApiError> {
    Ok(state.pool().call(request).await?)
}

/// The error for a reply that is not the success variant `request` expects.
pub(crate) fn unexpected(request: &'static str, response: GatewayResponse) -> ApiError {
    let reply = match response {
        GatewayResponse::Failed(failure) => return failure.into(),
        GatewayResponse::Updated { .. } => "Updated",
        GatewayResponse::Cart { .. } => "Cart",
        GatewayResponse::CategoryUsers { .. } => "CategoryUsers",
        GatewayResponse::Products { .. } => "Products",
        GatewayResponse::Cluster(_) => "Cluster",
        GatewayResponse::Replicas { .. } => "Replicas",
        GatewayResponse::Located { .. } => "Located",
        GatewayResponse::DeviceItems { .. } => "DeviceItems",
        GatewayResponse::MapPreview(_) => "MapPreview",
        GatewayResponse::Pgs { .. } => "Pgs",
        GatewayResponse::PolicyStored { .. } => "PolicyStored",
        GatewayResponse::PolicyVerified(_) => "PolicyVerified",
        GatewayResponse::Policies(_) => "Policies",
    };
    ApiError::UnexpectedReply { request, reply }
}

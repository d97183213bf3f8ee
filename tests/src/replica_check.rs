//! Checks of the replicas' own states through `GET /api/admin/replicas`: what each device
//! holds, unmerged, and whether they agree.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Result, bail, ensure};
use serde_json::Value;

use crate::ApiClient;
use crate::wait::wait_until;

/// Every device's own state of each of `user`'s items: product id -> device -> state JSON.
///
/// # Errors
/// The admin endpoint failing, or a device that did not answer.
pub async fn replica_states(
    api: &ApiClient,
    user: &str,
) -> Result<BTreeMap<String, BTreeMap<u64, Value>>> {
    let reply = api.replicas(user).await?;
    if reply.status != 200 {
        bail!("replicas of {user}: {reply:?}");
    }
    let mut items: BTreeMap<String, BTreeMap<u64, Value>> = BTreeMap::new();
    for replica in reply.json["replicas"].as_array().into_iter().flatten() {
        let device = replica["device"].as_u64().unwrap_or(u64::MAX);
        let Some(states) = replica["items"].as_array() else {
            bail!("device {device} did not answer: {}", replica["error"]);
        };
        for state in states {
            let product = state["product"].as_str().unwrap_or_default().to_owned();
            items
                .entry(product)
                .or_default()
                .insert(device, state.clone());
        }
    }
    Ok(items)
}

/// The devices holding `user`'s `product` (by product id) right now.
///
/// # Errors
/// When the replicas cannot be read.
pub async fn holders(api: &ApiClient, user: &str, product: &str) -> Result<Vec<u64>> {
    let items = replica_states(api, user).await?;
    Ok(items
        .get(product)
        .map(|d| d.keys().copied().collect())
        .unwrap_or_default())
}

/// `Some(())` once every item of `user` (and every cart-index entry) is held identically by
/// every device of its placement group's up set, by at least `replicas` of them, and by no
/// device outside its up and past sets. Copies on past devices may lag: they are read, never
/// repaired, and the anti-entropy sweep hands them back once the PG is clean.
/// The disagreement is the error, so a time-out reports what still differs.
///
/// # Errors
/// The disagreement, or an admin endpoint failing.
pub async fn converged(api: &ApiClient, user: &str, replicas: usize) -> Result<Option<()>> {
    let items = replica_states(api, user).await?;
    if items.is_empty() {
        bail!("{user} has no items on any replica");
    }
    let sets = placement_sets(api, user).await?;
    for (product, by_device) in &items {
        let Some(sets) = sets.get(product) else {
            bail!("item {product} is held ({by_device:?}) but not located: {sets:?}");
        };
        let on_up: Vec<&Value> = sets.up.iter().filter_map(|d| by_device.get(d)).collect();
        let first = on_up.first();
        if on_up.len() < replicas.min(sets.up.len()) || !on_up.iter().all(|s| Some(s) == first) {
            bail!(
                "item {product} differs on its up set {:?}: {by_device:?}",
                sets.up
            );
        }
        if let Some(orphan) = by_device
            .keys()
            .find(|d| !sets.up.contains(d) && !sets.past.contains(d))
        {
            bail!("device {orphan} holds item {product} outside its up and past sets {sets:?}");
        }
    }
    Ok(Some(()))
}

/// `Some(())` once `user`'s items are [`converged`] and settled: no item's placement group
/// has a past set any more, and no device outside an item's up set holds a copy (nothing
/// left behind by a handback).
///
/// # Errors
/// What still differs, or an admin endpoint failing.
pub async fn settled(api: &ApiClient, user: &str, replicas: usize) -> Result<Option<()>> {
    converged(api, user, replicas).await?;
    let items = replica_states(api, user).await?;
    let sets = placement_sets(api, user).await?;
    for (product, by_device) in &items {
        let Some(sets) = sets.get(product) else {
            bail!("item {product} is held ({by_device:?}) but not located");
        };
        if !sets.past.is_empty() {
            bail!("item {product}'s PG still has past devices {:?}", sets.past);
        }
        if let Some(stray) = by_device.keys().find(|d| !sets.up.contains(d)) {
            bail!(
                "device {stray} holds item {product} outside its up set {:?}",
                sets.up
            );
        }
    }
    Ok(Some(()))
}

/// Waits (up to `timeout`) until every one of `users` is [`settled`] with `replicas` copies.
///
/// # Errors
/// The first user still unsettled at the deadline, and what differs.
pub async fn wait_settled(
    api: &ApiClient,
    users: impl IntoIterator<Item = impl AsRef<str>>,
    replicas: usize,
    timeout: Duration,
) -> Result<()> {
    for user in users {
        let user = user.as_ref();
        wait_until(&format!("{user} settled"), timeout, || {
            settled(api, user, replicas)
        })
        .await?;
    }
    Ok(())
}

/// Waits (up to `timeout`) until `GET /api/cluster` shows every PG clean: no past set, no
/// remapped PG.
///
/// # Errors
/// The PG counts still unclean at the deadline.
pub async fn wait_all_clean(api: &ApiClient, timeout: Duration) -> Result<()> {
    wait_until("every PG clean", timeout, || async {
        let reply = api.cluster().await?;
        let pgs = &reply.json["placement_groups"];
        if pgs["clean"] != pgs["pg_num"] || pgs["remapped"] != 0 {
            bail!("not clean yet: {pgs}");
        }
        Ok(Some(()))
    })
    .await
}

/// The up and past sets of one item's placement group.
#[derive(Debug, Clone, Default)]
pub struct PlacementSets {
    pub up: Vec<u64>,
    pub past: Vec<u64>,
}

/// The up and past sets of each of `user`'s items and cart-index entries, by product id,
/// from `GET /api/admin/locate`.
///
/// # Errors
/// The admin endpoint failing.
pub async fn placement_sets(
    api: &ApiClient,
    user: &str,
) -> Result<BTreeMap<String, PlacementSets>> {
    let reply = api.get(&format!("/api/admin/locate?userid={user}")).await?;
    if reply.status != 200 {
        bail!("locate {user}: {reply:?}");
    }
    let mut sets = BTreeMap::new();
    for item in reply.json["items"].as_array().into_iter().flatten() {
        let product = item["product"].as_str().unwrap_or_default().to_owned();
        let entry: &mut PlacementSets = sets.entry(product).or_default();
        for replica in item["replicas"].as_array().into_iter().flatten() {
            let device = replica["device"].as_u64().unwrap_or(u64::MAX);
            if replica["current"] == Value::Bool(true) {
                entry.up.push(device);
            } else {
                entry.past.push(device);
            }
        }
    }
    Ok(sets)
}

/// Every item (user, product) data node `device` holds, paging through
/// `GET /api/admin/device-items`.
///
/// # Errors
/// The admin endpoint failing.
pub async fn device_items(api: &ApiClient, device: u64) -> Result<BTreeSet<(String, String)>> {
    let mut held = BTreeSet::new();
    let mut after: Option<(String, String)> = None;
    loop {
        let mut path = format!("/api/admin/device-items?device={device}&limit=1000");
        if let Some((user, product)) = &after {
            path += &format!("&after_userid={user}&after_productid={product}");
        }
        let reply = api.get(&path).await?;
        ensure!(reply.status == 200, "device-items {device}: {reply}");
        for item in reply.json["items"].as_array().into_iter().flatten() {
            let field = |name: &str| item[name].as_str().unwrap_or_default().to_owned();
            held.insert((field("userid"), field("productid")));
        }
        match reply.json["next"].as_object() {
            Some(next) => {
                let field = |name: &str| next[name].as_str().unwrap_or_default().to_owned();
                after = Some((field("user"), field("product")));
            }
            None => return Ok(held),
        }
    }
}

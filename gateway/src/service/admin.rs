//! The operator's requests a gateway answers besides carts: the cluster's status (with the
//! convergence work and the policies' call counts), every replica's own state of a user's
//! items, where items live (`locate`) and what a device holds (the seed's two directory
//! views), map changes and their previews, and the policy lifecycle's store, verify and
//! status ([`crate::policy_admin`]). Split from the service's cart paths; the same
//! [`GatewayService`].

use super::*;

impl GatewayService {
    /// Records the sweep's progress (this gateway's own, while it leads) for `Cluster` answers.
    pub fn set_sweep_status(&self, status: Option<SweepStatus>) {
        *self.sweep.lock().unwrap_or_else(PoisonError::into_inner) = status;
    }

    pub(super) fn maintenance(&self) -> MaintenanceStatus {
        let repairs = self.read_repair.counters();
        let (compactions, folded_ops) = self.compactor.counters();
        MaintenanceStatus {
            merge_policy: self.parts.merger.policy().map(|p| PolicyInfo {
                name: p.name().to_owned(),
                sha256: p.sha256().to_owned(),
            }),
            repairs: repairs.repaired,
            repaired_ops: repairs.ops_added,
            repair_failures: repairs.failed,
            merge_fallbacks: self.parts.merger.fallbacks(),
            compactions,
            folded_ops,
            anti_entropy: self
                .sweep
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            policy_calls: self.policy_calls(),
        }
    }

    /// The policies' call counts. A gateway runs both policies on one engine; tests may
    /// give them two.
    pub(super) fn policy_calls(&self) -> Vec<cartdb_core::wire::PolicyCallStats> {
        let placement = self.parts.library.engine().stats();
        let mut calls = placement.snapshot();
        if let Some(merge) = self.parts.merger.policy()
            && !std::ptr::eq(merge.engine().stats(), placement)
        {
            calls.extend(merge.engine().stats().snapshot());
        }
        calls
    }

    /// Every live device's own, unmerged state of `user`'s items.
    pub(super) async fn replica_dump(&self, user: &str, deadline: Instant) -> Answer {
        validate_id("userid", user).map_err(invalid)?;
        let topology = self.parts.view.current();
        let request = DataCall {
            epoch: topology.map.epoch,
            request: DataRequest::ReadUser {
                user: user.to_owned(),
            },
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

    /// Where `user`'s items (or the one named `item`) live, and their cart-index entries:
    /// each one's PG, its up and past sets, and what each of those devices holds.
    pub(super) async fn locate(
        &self,
        user: &str,
        item: Option<String>,
        deadline: Instant,
    ) -> Answer {
        validate_id("userid", user).map_err(invalid)?;
        let wanted = match &item {
            Some(name) => {
                validate_id("item", name).map_err(invalid)?;
                Some(self.product_named(name)?.productid)
            }
            None => None,
        };
        let read = self.read(user, ReadMode::Quorum, deadline).await?;
        // Items and the cart-index entries that record them (`@<productid>`).
        let products: BTreeSet<String> = read
            .items
            .iter()
            .filter(|s| {
                let product = indexed_product(&s.product).unwrap_or(&s.product);
                wanted.as_ref().is_none_or(|w| w == product)
            })
            .map(|s| s.product.clone())
            .collect();
        let topology = self.parts.view.current();
        let keys: Vec<ItemKey> = products
            .into_iter()
            .map(|product| ItemKey {
                user: user.to_owned(),
                product,
            })
            .collect();
        let devices: BTreeSet<DeviceId> = keys.iter().flat_map(|k| topology.read_set(k)).collect();
        let held = self
            .summaries_on(user, devices, topology.map.epoch, deadline)
            .await;
        let catalog = self.catalog();
        let items = keys
            .into_iter()
            .map(|key| {
                let pg = topology.pg_of(&key);
                let up = topology.up_of_pg(pg);
                let replicas = topology
                    .read_set(&key)
                    .into_iter()
                    .map(|device| ReplicaLocation {
                        device,
                        current: up.contains(&device),
                        answered: held.contains_key(&device),
                        qty: held.get(&device).and_then(|items| {
                            items
                                .iter()
                                .find(|s| s.product == key.product)
                                .map(|s| s.qty)
                        }),
                    })
                    .collect();
                ItemLocation {
                    name: catalog.by_id(&key.product).map(|p| p.name.clone()),
                    x: placement_key(&key.user, &key.product),
                    pg,
                    replicas,
                    product: key.product,
                }
            })
            .collect();
        Ok(GatewayResponse::Located { items })
    }

    /// Each answering device's summaries of `user`'s items (devices that fail are left out).
    pub(super) async fn summaries_on(
        &self,
        user: &str,
        devices: BTreeSet<DeviceId>,
        epoch: u64,
        deadline: Instant,
    ) -> BTreeMap<DeviceId, Vec<ItemSummary>> {
        let request = DataCall {
            epoch,
            request: DataRequest::ReadSummaries {
                user: user.to_owned(),
            },
        };
        let timeout = deadline.saturating_duration_since(Instant::now());
        let calls = devices.into_iter().map(|device| {
            let request = &request;
            async move {
                let answer = self.parts.replicas.call(device, request, timeout).await;
                match answer {
                    Ok(DataResponse::Summaries { items }) => Some((device, items)),
                    _ => None,
                }
            }
        });
        futures::future::join_all(calls)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// One page of what `device` holds, from its own store.
    pub(super) async fn device_items(
        &self,
        device: DeviceId,
        after: Option<ItemKey>,
        limit: u32,
        deadline: Instant,
    ) -> Answer {
        let topology = self.parts.view.current();
        if !topology.map.devices.contains_key(&device) {
            return Err(GatewayFailure::InvalidInput {
                field: "device".to_owned(),
                problem: format!("{device} is not a device of the map"),
            });
        }
        if let Some(after) = &after {
            validate_id("after.userid", &after.user).map_err(invalid)?;
            validate_id("after.productid", &after.product).map_err(invalid)?;
        }
        let request = DataCall {
            epoch: topology.map.epoch,
            request: DataRequest::ListItems {
                after,
                limit: limit.clamp(1, MAX_DEVICE_ITEMS_PAGE),
            },
        };
        let timeout = deadline.saturating_duration_since(Instant::now());
        match self.parts.replicas.call(device, &request, timeout).await {
            Ok(DataResponse::Held { items, more }) => {
                let next = more.then(|| items.last().map(held_key)).flatten();
                Ok(GatewayResponse::DeviceItems { items, next })
            }
            Ok(DataResponse::Failed(failure)) => Err(GatewayFailure::QuorumNotReached {
                operation: "device-items".to_owned(),
                required: 1,
                acked: 0,
                errors: failure.to_string(),
            }),
            Ok(other) => Err(internal(format!("device {device} answered {other:?}"))),
            Err(e) => Err(GatewayFailure::QuorumNotReached {
                operation: "device-items".to_owned(),
                required: 1,
                acked: 0,
                errors: e.to_string(),
            }),
        }
    }

    pub(super) fn cluster(&self) -> GatewayResponse {
        let view = &self.parts.view;
        let mut status = view.current().status(
            crate::policy_admin::running_placement(view),
            self.parts.replication,
            view.backfill(),
        );
        status.maintenance = self.maintenance();
        GatewayResponse::Cluster(Box::new(status))
    }

    pub(super) async fn map_change(&self, changes: &[MapChange], commit: bool) -> Answer {
        let changer = MapChanger {
            view: self.parts.view.clone(),
            library: self.parts.library.clone(),
            rule: self.parts.rule.clone(),
            coordination: self.parts.coordination.clone(),
        };
        let preview = changer.run(changes, commit).await?;
        Ok(GatewayResponse::MapPreview(Box::new(preview)))
    }

    pub(super) fn policy_admin(&self) -> PolicyAdmin<'_> {
        PolicyAdmin {
            gateway: self.parts.gateway_id,
            view: &self.parts.view,
            library: &self.parts.library,
            merger: &self.parts.merger,
            coordination: self.parts.coordination.as_ref(),
            rule: self.parts.rule.clone(),
            replication: self.parts.replication,
        }
    }
}

//! A client of one gateway's internal RPC, for tests that must choose which gateway serves a
//! request (the API server picks one at random): read-your-writes across gateways, say, or
//! one gateway's own counters.

use std::time::Duration;

use anyhow::{Context, bail};
use cartdb_core::rpc::RpcClient;
use cartdb_core::wire::{GatewayRequest, GatewayResponse, MaintenanceStatus, ServiceKind};

const TIMEOUT: Duration = Duration::from_secs(5);

/// One connection to one gateway.
pub struct GatewayClient {
    address: String,
    client: RpcClient<GatewayRequest, GatewayResponse>,
}

impl GatewayClient {
    /// Connects to the gateway at `address`.
    ///
    /// # Errors
    /// When the connection or the protocol handshake fails.
    pub async fn connect(address: &str) -> anyhow::Result<Self> {
        let key = crate::cluster::test_cluster_key();
        let client = RpcClient::connect(address, ServiceKind::Gateway, &key, TIMEOUT)
            .await
            .with_context(|| format!("connecting to the gateway at {address}"))?;
        Ok(Self {
            address: address.to_owned(),
            client,
        })
    }

    /// Inserts one `item` into `user`'s cart; returns the quantity afterwards.
    ///
    /// # Errors
    /// A transport failure or any answer but `Updated`.
    pub async fn insert(&self, user: &str, item: &str) -> anyhow::Result<u64> {
        let request = GatewayRequest::Insert {
            user: user.to_owned(),
            item_name: item.to_owned(),
            idempotency_key: None,
        };
        self.change("insert", &request).await
    }

    /// Deletes one `item` from `user`'s cart; returns the quantity afterwards.
    ///
    /// # Errors
    /// A transport failure or any answer but `Updated`.
    pub async fn delete(&self, user: &str, item: &str) -> anyhow::Result<u64> {
        let request = GatewayRequest::Delete {
            user: user.to_owned(),
            item_name: item.to_owned(),
            idempotency_key: None,
        };
        self.change("delete", &request).await
    }

    /// Inserts one `item` into `user`'s cart with the idempotency key `key`, and returns the
    /// gateway's answer whatever it is (a refusal too).
    ///
    /// # Errors
    /// A transport failure.
    pub async fn insert_keyed(
        &self,
        user: &str,
        item: &str,
        key: &str,
    ) -> anyhow::Result<GatewayResponse> {
        let request = GatewayRequest::Insert {
            user: user.to_owned(),
            item_name: item.to_owned(),
            idempotency_key: Some(key.to_owned()),
        };
        self.call(&request).await
    }

    /// Sends an insert or delete; the quantity it answers.
    async fn change(&self, what: &str, request: &GatewayRequest) -> anyhow::Result<u64> {
        match self.call(request).await? {
            GatewayResponse::Updated { qty } => Ok(qty),
            other => bail!("{what} {request:?} through {}: {other:?}", self.address),
        }
    }

    /// `user`'s cart as (item name, quantity) pairs, sorted by name.
    ///
    /// # Errors
    /// A transport failure or any answer but `Cart`.
    pub async fn cart(&self, user: &str) -> anyhow::Result<Vec<(String, u64)>> {
        let request = GatewayRequest::ListAll {
            user: user.to_owned(),
        };
        match self.call(&request).await? {
            GatewayResponse::Cart { items } => Ok(items
                .into_iter()
                .map(|line| (line.name, line.qty))
                .collect()),
            other => bail!("list_all {user} through {}: {other:?}", self.address),
        }
    }

    /// This gateway's own repair and compaction counters (`GET /api/cluster` shows only the
    /// sweep leader's).
    ///
    /// # Errors
    /// A transport failure or any answer but `Cluster`.
    pub async fn maintenance(&self) -> anyhow::Result<MaintenanceStatus> {
        match self.call(&GatewayRequest::Cluster).await? {
            GatewayResponse::Cluster(status) => Ok(status.maintenance),
            other => bail!("cluster status through {}: {other:?}", self.address),
        }
    }

    async fn call(&self, request: &GatewayRequest) -> anyhow::Result<GatewayResponse> {
        self.client
            .call(request, TIMEOUT)
            .await
            .with_context(|| format!("calling the gateway at {}", self.address))
    }
}

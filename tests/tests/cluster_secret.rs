//! The internal RPC needs the cluster secret: a peer without it cannot apply an operation on
//! a data node or insert through a gateway, whether it uses another secret or sends its
//! request where the proof belongs; the refusal is logged with the peer. The same requests
//! with the secret are applied, so the refusal is the secret's doing.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use cartdb_core::cart::{ItemKey, ItemMeta, OpId, OpKind, Operation};
use cartdb_core::rpc::connection::{self, FramedStream};
use cartdb_core::rpc::secret::Side;
use cartdb_core::rpc::{ClusterKey, Frame, Hello, ReplyBody, RpcClient, RpcError};
use cartdb_core::version::HybridClock;
use cartdb_core::wire::{DataCall, DataRequest, DataResponse, GatewayRequest, ServiceKind};
use cartdb_tests::cluster::test_cluster_key;
use cartdb_tests::{Cluster, ClusterOptions, GatewayClient, wait_until};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(5);

fn apply(user: &str) -> DataCall {
    let request = DataRequest::Apply {
        key: ItemKey {
            user: user.to_owned(),
            product: "p1".to_owned(),
        },
        meta: ItemMeta {
            price: 10,
            category: "meat".to_owned(),
        },
        op: Operation {
            id: OpId(u128::from_le_bytes(*b"intruder-op-id-1")),
            kind: OpKind::Add,
            version: HybridClock::new(9).now(),
        },
        require_in_cart: false,
        restamped: false,
    };
    // Placed with the bootstrap map: no PG of a fresh cluster has changed since.
    DataCall { epoch: 0, request }
}

/// Says hello to a `service` at `address`, then sends `proof` (if any) and `request`.
async fn raw_request<T: serde::Serialize>(
    address: &str,
    service: ServiceKind,
    proof_key: Option<&ClusterKey>,
    request: &T,
) -> Result<FramedStream> {
    let mut framed = connection::framed(TcpStream::connect(address).await?);
    let ours = Hello::new(service);
    framed
        .send(Bytes::from(postcard::to_stdvec(&ours)?))
        .await?;
    let theirs: Hello = postcard::from_bytes(&framed.next().await.context("no hello")??)?;
    if let Some(key) = proof_key {
        let proof = key.proof(
            Side::Client,
            service,
            ours.protocol,
            &ours.nonce,
            &theirs.nonce,
        );
        framed.send(Bytes::copy_from_slice(&proof)).await?;
    }
    framed.send(connection::encode(1, request)?).await?;
    Ok(framed)
}

/// Whether the server closed `framed` without answering anything.
async fn closed_without_answer(mut framed: FramedStream) -> Result<bool> {
    Ok(matches!(
        tokio::time::timeout(T, framed.next()).await?,
        None | Some(Err(_))
    ))
}

/// The devices whose own state holds any item of `user`.
async fn holders(cluster: &Cluster, user: &str) -> Result<Vec<u64>> {
    let reply = cluster
        .client()
        .get(&format!("/api/admin/replicas?userid={user}"))
        .await?;
    ensure!(reply.status == 200, "replicas: {reply:?}");
    Ok(reply.json["replicas"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["items"].as_array().is_some_and(|items| !items.is_empty()))
        .filter_map(|r| r["device"].as_u64())
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_without_the_cluster_secret_cannot_change_carts() -> Result<()> {
    let mut cluster = Cluster::start(ClusterOptions::default()).await?;
    let view = cluster.view().await?;
    let datanode = view.raw["devices"][0]["address"]
        .as_str()
        .context("device 1's address")?
        .to_owned();
    let gateway = view.raw["gateways"][0]["address"]
        .as_str()
        .context("a gateway's address")?
        .to_owned();
    let stranger = ClusterKey::new(b"not-the-cluster-secret", "test")?;

    // Another secret: refused in the handshake, before any request is sent.
    let refused = RpcClient::<DataCall, DataResponse>::connect(
        &datanode,
        ServiceKind::DataNode,
        &stranger,
        T,
    )
    .await;
    ensure!(
        matches!(refused, Err(RpcError::Handshake { .. })),
        "a data node admitted a peer with another secret"
    );
    // A request where the proof belongs, or after a wrong proof: the connection is closed.
    for key in [None, Some(&stranger)] {
        let framed = raw_request(&datanode, ServiceKind::DataNode, key, &apply("intruder")).await?;
        ensure!(
            closed_without_answer(framed).await?,
            "the data node answered"
        );
        let insert = GatewayRequest::Insert {
            user: "intruder".to_owned(),
            item_name: "pork".to_owned(),
            idempotency_key: None,
        };
        let framed = raw_request(&gateway, ServiceKind::Gateway, key, &insert).await?;
        ensure!(closed_without_answer(framed).await?, "the gateway answered");
    }
    ensure!(
        holders(&cluster, "intruder").await?.is_empty(),
        "an unauthenticated operation was applied"
    );
    let log = std::fs::read_to_string(cluster.datanode(1)?.log_path())?;
    ensure!(
        log.contains("refused connection") && log.contains("did not prove the cluster secret"),
        "the data node did not log the refusals"
    );

    // The same requests with the secret are applied.
    let key = test_cluster_key();
    let mut framed = raw_request(
        &datanode,
        ServiceKind::DataNode,
        Some(&key),
        &apply("insider"),
    )
    .await?;
    let _server_proof = framed.next().await.context("no proof")??;
    let answer = framed.next().await.context("no answer")??;
    let answer: Frame<ReplyBody<DataResponse>> = postcard::from_bytes(&answer)?;
    ensure!(
        matches!(answer.body, ReplyBody::Answer(DataResponse::Applied { .. })),
        "{answer:?}"
    );
    let insider = wait_until("the insider's item on device 1", T, || async {
        let devices = holders(&cluster, "insider").await?;
        Ok((!devices.is_empty()).then_some(devices))
    })
    .await?;
    ensure!(insider.contains(&1), "{insider:?}");
    let gateway = GatewayClient::connect(&gateway).await?;
    ensure!(gateway.insert("insider", "pork").await? == 1);
    Ok(())
}

//! ZooKeeper's znodes carry a digest ACL: anyone may read them, only a session holding the
//! cluster's digest identity (derived from the cluster secret) may change them. An
//! anonymous session can neither rewrite the map, delete the catalog, nor register a data
//! node; a session with the derived identity can create and delete.

use anyhow::{Context, Result, ensure};
use cartdb_core::coord::ZkCredentials;
use cartdb_tests::cluster::test_cluster_key;
use cartdb_tests::{Cluster, ClusterOptions};
use zookeeper_client::{Acls, Client, CreateMode, Error, Permission};

/// The chroot of every test cluster.
const CHROOT: &str = "/cartdb";

async fn session(cluster: &Cluster, credentials: Option<&ZkCredentials>) -> Result<Client> {
    let mut connector = Client::connector();
    if let Some(credentials) = credentials {
        connector = connector.with_auth("digest", &credentials.digest_auth());
    }
    let client = connector.connect(&cluster.zk_connect_string()).await?;
    client
        .chroot(CHROOT)
        .map_err(|_| anyhow::anyhow!("{CHROOT} is not a valid chroot"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_cartdb_processes_can_write_its_znodes() -> Result<()> {
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    let anonymous = session(&cluster, None).await?;

    let (map, _) = anonymous
        .get_data("/map")
        .await
        .context("reading the map")?;
    ensure!(!map.is_empty(), "the map is readable by anyone");
    let refused = anonymous.set_data("/map", b"{}", None).await;
    ensure!(
        matches!(refused, Err(Error::NoAuth)),
        "set /map: {refused:?}"
    );
    let refused = anonymous.delete("/catalog", None).await;
    ensure!(
        matches!(refused, Err(Error::NoAuth)),
        "delete /catalog: {refused:?}"
    );
    let options = CreateMode::Ephemeral.with_acls(Acls::anyone_all());
    let refused = anonymous
        .create("/live/ephemeral_99", b"127.0.0.1:1", &options)
        .await;
    ensure!(
        matches!(refused, Err(Error::NoAuth)),
        "create /live/..: {refused:?}"
    );

    let (acls, _) = anonymous.get_acl("/map").await?;
    let described: Vec<String> = acls
        .iter()
        .map(|acl| format!("{}:{}:{:?}", acl.scheme(), acl.id(), acl.permission()))
        .collect();
    ensure!(
        acls.iter()
            .any(|acl| acl.scheme() == "world" && acl.permission() == Permission::READ)
            && acls.iter().any(|acl| acl.scheme() == "digest"
                && acl.id().starts_with("cartdb:")
                && acl.permission() == Permission::ALL),
        "ACL of /map: {described:?}"
    );

    let credentials = ZkCredentials::from_key(&test_cluster_key());
    let cartdb = session(&cluster, Some(&credentials)).await?;
    let probe = "/gateway-ids/acl-probe";
    cartdb
        .create(
            probe,
            b"",
            &CreateMode::Persistent.with_acls(Acls::creator_all()),
        )
        .await
        .context("creating with the cluster's identity")?;
    cartdb
        .delete(probe, None)
        .await
        .context("deleting with the cluster's identity")?;
    Ok(())
}

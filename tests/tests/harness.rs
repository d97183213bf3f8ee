//! The harness itself, against the real ZooKeeper and without any cartdb binary: a
//! standalone server starts in its own directory, answers `imok`, and is gone once dropped.

use std::time::Duration;

use anyhow::Result;
use cartdb_tests::zookeeper::is_ok;
use cartdb_tests::{ZooKeeper, ports::free_port, wait_until};

/// `ZooKeeper::start` returns only once the server answers `ruok` with `imok`, keeps its
/// configuration, data and log in the given directory, and dropping it stops the server.
#[tokio::test]
async fn zookeeper_starts_answers_imok_and_stops_on_drop() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let zk = ZooKeeper::start(dir.path(), port, Duration::from_secs(60)).await?;
    assert!(
        is_ok(port).await,
        "ZooKeeper did not answer imok after start"
    );
    assert_eq!(zk.connect_string(), format!("127.0.0.1:{port}"));
    for file in ["zoo.cfg", "zookeeper.log", "data/version-2"] {
        assert!(
            dir.path().join(file).exists(),
            "{file} missing from the ZooKeeper directory"
        );
    }
    drop(zk);
    wait_until(
        "ZooKeeper to stop answering",
        Duration::from_secs(10),
        || async { Ok((!is_ok(port).await).then_some(())) },
    )
    .await?;
    Ok(())
}

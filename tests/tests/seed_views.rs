//! The seed's two directory views on a running cluster, through the operator CLI:
//! `cartdb locate U [NAME]` (USERID/PRODUCTID/DEVICEID, with each item's placement group and
//! which devices are current or past) and `cartdb device-items D` (DEVICEID/USERID/PRODUCTID
//! from that data node's own store).

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Result;
use cartdb_tests::cli::cartdb;
use cartdb_tests::{Cluster, ClusterOptions, wait_until};

/// Every replica of every item a user holds appears in `locate` as a current device holding
/// it, and each of those devices lists the item in `device-items`; a device outside the up
/// set does not list it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locate_and_device_items_show_the_seed_views() -> Result<()> {
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    let api = cluster.client().clone();
    let url = cluster.api_url().to_owned();
    let user = "viewer";
    for item in ["pork", "pork", "soap"] {
        api.insert(user, item).await?.expect_status(200);
    }
    // The third replica of a write may land just after the answer.
    let located = wait_until(
        "every replica to hold both items",
        Duration::from_secs(30),
        || {
            let url = url.clone();
            async move {
                let text = cartdb(&url, &["locate", user])?;
                let held = text
                    .lines()
                    .filter(|l| l.contains(" current qty "))
                    .filter(|l| l.contains("viewer/1/") || l.contains("viewer/2/"))
                    .count();
                Ok((held == 6).then_some(text))
            }
        },
    )
    .await?;
    // pork is product 1 (qty 2), soap product 2 (qty 1): a header per item with its PG,
    // and one per cart-index entry.
    assert!(located.contains("viewer pork (product 1): x="), "{located}");
    assert!(located.contains("viewer soap (product 2): x="), "{located}");
    assert!(
        located.contains("viewer cart-index entry for product 1: x="),
        "{located}"
    );
    let pork_devices: BTreeSet<String> = located
        .lines()
        .filter_map(|l| l.trim().strip_prefix("viewer/1/"))
        .filter(|rest| rest.contains("current qty 2"))
        .filter_map(|rest| rest.split_whitespace().next().map(str::to_owned))
        .collect();
    assert_eq!(pork_devices.len(), 3, "{located}");

    // One item only.
    let only_soap = cartdb(&url, &["locate", user, "soap"])?;
    assert!(!only_soap.contains("viewer/1/"), "{only_soap}");
    assert_eq!(
        only_soap
            .lines()
            .filter(|l| l.contains("viewer/2/"))
            .count(),
        3
    );

    for device in 1..=6u32 {
        let listed = cartdb(&url, &["device-items", &device.to_string()])?;
        let has_pork = listed.lines().any(|l| l == format!("{device}/viewer/1"));
        assert_eq!(
            has_pork,
            pork_devices.contains(&device.to_string()),
            "device {device}: {listed}"
        );
    }
    // Bad input is refused by name.
    let unknown = cartdb(&url, &["device-items", "42"])
        .unwrap_err()
        .to_string();
    assert!(
        unknown.contains("42 is not a device of the map"),
        "{unknown}"
    );
    Ok(())
}

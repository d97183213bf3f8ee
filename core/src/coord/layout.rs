//! Znode paths of cartdb's layout, relative to the configured chroot (see
//! `docs/zookeeper.md` for the tree, who writes each znode and why).

use crate::cart::DeviceId;

/// Parent of the data nodes' ephemeral registrations.
pub(crate) const LIVE: &str = "/live";
/// Parent of the persistent-sequential znodes that hand out gateway ids.
pub(crate) const GATEWAY_IDS: &str = "/gateway-ids";
/// Prefix of a gateway id allocation (ZooKeeper appends the sequence number).
pub(crate) const GATEWAY_ID_PREFIX: &str = "/gateway-ids/id-";
/// Parent of the gateways' ephemeral registrations.
pub(crate) const GATEWAYS: &str = "/gateways";
/// The CRUSH map document.
pub(crate) const MAP: &str = "/map";
/// The product catalog.
pub(crate) const CATALOG: &str = "/catalog";

/// Persistent parents created at connect (the map and catalog are created by bootstrap).
pub(crate) const PARENTS: [&str; 3] = [LIVE, GATEWAY_IDS, GATEWAYS];

const DEVICE_PREFIX: &str = "ephemeral_";
const GATEWAY_PREFIX: &str = "gw-";

/// `/live/ephemeral_<device>`.
pub(crate) fn device(device: DeviceId) -> String {
    format!("{LIVE}/{DEVICE_PREFIX}{device}")
}

/// The device id of a `/live` child name, if it is one.
pub(crate) fn device_id(child: &str) -> Option<DeviceId> {
    canonical_number(child.strip_prefix(DEVICE_PREFIX)?)
}

/// `/gateways/gw-<id>`.
pub(crate) fn gateway(id: u32) -> String {
    format!("{GATEWAYS}/{GATEWAY_PREFIX}{id}")
}

/// The gateway id of a `/gateways` child name, if it is one.
pub(crate) fn gateway_id(child: &str) -> Option<u32> {
    canonical_number(child.strip_prefix(GATEWAY_PREFIX)?)
}

/// Parses a decimal number written without sign or leading zeros, so that every id has
/// exactly one znode name.
fn canonical_number(s: &str) -> Option<u32> {
    let n: u32 = s.parse().ok()?;
    (n.to_string() == s).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(device(3), "/live/ephemeral_3");
        assert_eq!(device_id("ephemeral_3"), Some(3));
        assert_eq!(device_id("ephemeral_03"), None);
        assert_eq!(device_id("ephemeral_-1"), None);
        assert_eq!(device_id("other"), None);
        assert_eq!(gateway(7), "/gateways/gw-7");
        assert_eq!(gateway_id("gw-7"), Some(7));
        assert_eq!(gateway_id("gw-x"), None);
    }
}

//! Znode paths of cartdb's layout, relative to the configured chroot (see
//! `docs/zookeeper.md` for the tree, who writes each znode and why).

use crate::cart::{DeviceId, ItemKey, validate_id};

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
/// Directory by user: `/users/<user>/<productid>/<deviceID>`.
pub(crate) const USERS: &str = "/users";
/// Directory by device: `/devices/<deviceID>/<user>/<productid>`.
pub(crate) const DEVICES: &str = "/devices";
/// The anti-entropy sweep's progress (JSON `SweepStatus`), written by the gateway leading it.
pub(crate) const ANTI_ENTROPY: &str = "/anti-entropy";

/// Persistent parents created at connect (the map and catalog are created by bootstrap).
pub(crate) const PARENTS: [&str; 5] = [LIVE, GATEWAY_IDS, GATEWAYS, USERS, DEVICES];

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

/// `/users/<user>/<product>/<device>`.
pub(crate) fn user_replica(key: &ItemKey, device: DeviceId) -> String {
    format!("{USERS}/{}/{}/{device}", key.user, key.product)
}

/// `/devices/<device>/<user>/<product>`.
pub(crate) fn device_item(key: &ItemKey, device: DeviceId) -> String {
    format!("{DEVICES}/{device}/{}/{}", key.user, key.product)
}

/// `/devices/<device>/<user>`.
pub(crate) fn device_user(device: DeviceId, user: &str) -> String {
    format!("{DEVICES}/{device}/{user}")
}

/// `/users/<user>`.
pub(crate) fn user(user: &str) -> String {
    format!("{USERS}/{user}")
}

/// `/users/<user>/<product>`.
pub(crate) fn user_product(user: &str, product: &str) -> String {
    format!("{USERS}/{user}/{product}")
}

/// A znode under `/users`, as a persistent recursive watch reports it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum DirectoryNode<'a> {
    User(&'a str),
    Product(&'a str, &'a str),
    Replica(&'a str, &'a str, DeviceId),
}

/// Classifies a path under `/users`; `None` for `/users` itself, deeper paths and replica
/// names that are not device ids.
pub(crate) fn directory_node(path: &str) -> Option<DirectoryNode<'_>> {
    let rest = path.strip_prefix(USERS)?.strip_prefix('/')?;
    let mut parts = rest.split('/');
    let node = match (parts.next(), parts.next(), parts.next()) {
        (Some(u), None, None) => DirectoryNode::User(u),
        (Some(u), Some(p), None) => DirectoryNode::Product(u, p),
        (Some(u), Some(p), Some(d)) => DirectoryNode::Replica(u, p, device_child(d)?),
        _ => return None,
    };
    parts.next().is_none().then_some(node)
}

/// The device id of a replica znode's name (`/users/<user>/<product>/<device>`).
pub(crate) fn device_child(name: &str) -> Option<DeviceId> {
    canonical_number(name)
}

/// Checks that `value` can be one znode path segment. On top of the identifier rules
/// ([`validate_id`]: non-empty, bounded, no `/` or control characters) ZooKeeper refuses
/// `.`, `..` and some reserved code points.
pub(crate) fn segment_problem(field: &'static str, value: &str) -> Option<&'static str> {
    if validate_id(field, value).is_err() {
        return Some("must be 1-256 bytes without '/' or control characters");
    }
    if value == "." || value == ".." {
        return Some("'.' and '..' are not allowed");
    }
    let reserved = |c: char| matches!(c, '\u{e000}'..='\u{f8ff}' | '\u{fff0}'..='\u{ffff}');
    value
        .chars()
        .any(reserved)
        .then_some("contains a code point ZooKeeper reserves")
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

    #[test]
    fn directory_paths_are_classified() {
        let key = ItemKey {
            user: "u1".into(),
            product: "p1".into(),
        };
        assert_eq!(user_replica(&key, 4), "/users/u1/p1/4");
        assert_eq!(device_item(&key, 4), "/devices/4/u1/p1");
        assert_eq!(
            directory_node("/users/u1/p1/4"),
            Some(DirectoryNode::Replica("u1", "p1", 4))
        );
        assert_eq!(
            directory_node("/users/u1/p1"),
            Some(DirectoryNode::Product("u1", "p1"))
        );
        assert_eq!(directory_node("/users/u1"), Some(DirectoryNode::User("u1")));
        assert_eq!(directory_node("/users"), None);
        assert_eq!(directory_node("/users/u1/p1/x"), None);
        assert_eq!(directory_node("/users/u1/p1/4/5"), None);
        assert_eq!(directory_node("/devices/4/u1/p1"), None);
    }

    #[test]
    fn segments_are_checked() {
        assert_eq!(segment_problem("user", "user1"), None);
        assert!(segment_problem("user", "").is_some());
        assert!(segment_problem("user", "a/b").is_some());
        assert!(segment_problem("user", "..").is_some());
        assert!(segment_problem("user", "x\u{f000}").is_some());
    }
}

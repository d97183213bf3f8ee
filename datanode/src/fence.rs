//! The map-epoch fence: which requests a data node refuses because the gateway placed them
//! with a map older than the placement groups they touch (Ceph's OSDs refuse an op from an
//! older interval the same way). Pure; the service applies it to every request before it
//! reads or writes anything.
//!
//! ```text
//! request epoch e, node map epoch n, interval i of the PG (or the newest of any PG)
//!   e > n         Ahead: the node learns the newer map first (the service waits for it)
//!   e < i         Stale: refused with StaleEpoch { epoch: e, interval: i, current: n }
//!   otherwise     Serve
//! ```
//!
//! A request naming items (apply, repair, compact, drop) is checked against each item's PG;
//! one spanning PGs (a user's cart, a category, a PG scan) against the newest interval of
//! any PG, so a gateway that has missed any move re-reads after learning it. Listing the
//! node's own store (`ListItems`, the operator's device view) does not depend on placement
//! and is never fenced.

use std::sync::Arc;

use cartdb_core::cart::ItemKey;
use cartdb_core::coord::ClusterMap;
use cartdb_core::wire::DataRequest;

/// A cluster map as the fence uses it: the map, and the newest interval of any PG worked
/// out once per map rather than per request.
#[derive(Debug)]
pub struct FenceMap {
    map: Arc<ClusterMap>,
    newest_interval: u64,
}

impl FenceMap {
    /// `map`, ready for the fence.
    pub fn new(map: Arc<ClusterMap>) -> Self {
        let newest_interval = map.newest_interval();
        Self {
            map,
            newest_interval,
        }
    }

    /// The map's epoch.
    pub fn epoch(&self) -> u64 {
        self.map.epoch
    }
}

/// What the fence makes of one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Placed with a map at least as new as every PG it touches: serve it.
    Serve,
    /// Placed with a map older than `interval`, the epoch a PG it touches changed at.
    Stale { interval: u64 },
    /// Placed with a map newer than this node's: learn that map, then decide again.
    Ahead,
}

/// Decides `request`, placed with map `epoch`, against this node's `map` (`None` before the
/// first map is read: only epoch 0 is served then).
pub fn verdict(fence: Option<&FenceMap>, epoch: u64, request: &DataRequest) -> Verdict {
    let Some(FenceMap {
        map,
        newest_interval,
    }) = fence
    else {
        return if epoch == 0 {
            Verdict::Serve
        } else {
            Verdict::Ahead
        };
    };
    if epoch > map.epoch {
        return Verdict::Ahead;
    }
    let interval = match request {
        DataRequest::Apply { key, .. }
        | DataRequest::Repair { key, .. }
        | DataRequest::Compact { key, .. } => interval_of(map, key),
        DataRequest::DropItems { items } => items
            .iter()
            .map(|(key, _)| interval_of(map, key))
            .max()
            .unwrap_or(0),
        DataRequest::RepairMany { items } => items
            .iter()
            .map(|item| interval_of(map, &item.key))
            .max()
            .unwrap_or(0),
        DataRequest::ListItems { .. } => 0,
        DataRequest::ReadUser { .. }
        | DataRequest::ListCategory { .. }
        | DataRequest::ReadSummaries { .. }
        | DataRequest::ReadItems { .. }
        | DataRequest::ScanPg { .. }
        | DataRequest::ReadPg { .. }
        | DataRequest::PgDigests { .. } => *newest_interval,
    };
    if epoch < interval {
        Verdict::Stale { interval }
    } else {
        Verdict::Serve
    }
}

fn interval_of(map: &ClusterMap, key: &ItemKey) -> u64 {
    map.interval_of(map.pg_of(key))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]
mod tests {
    use cartdb_core::cart::{ItemMeta, OpId, OpKind, Operation, StateDigest};
    use cartdb_core::coord::{ClusterMap, Placement};
    use cartdb_core::version::Version;

    use super::*;

    /// The seed map at `epoch`, with the PGs' intervals starting as given.
    fn map(epoch: u64, intervals: &[(u32, u64)]) -> FenceMap {
        FenceMap::new(Arc::new(cluster_map(epoch, intervals)))
    }

    fn cluster_map(epoch: u64, intervals: &[(u32, u64)]) -> ClusterMap {
        let json = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../config/crush-map.json"
        ))
        .unwrap();
        let doc = format!(
            r#"{{"format":4,"map":{json},"pool":{{"id":1,"pg_num":256,"size":3}},
               "policies":{{"placement":{{"sha256":"{}","name":"crush"}},"merge":null}}}}"#,
            "a".repeat(64)
        );
        let base = ClusterMap::parse(doc.as_bytes(), epoch).unwrap();
        let placement = Placement {
            intervals: intervals.iter().copied().collect(),
            ..Placement::of(&base)
        };
        base.with_placement(&placement).unwrap()
    }

    fn key(user: &str) -> ItemKey {
        ItemKey {
            user: user.into(),
            product: "1".into(),
        }
    }

    fn apply(user: &str) -> DataRequest {
        DataRequest::Apply {
            key: key(user),
            meta: ItemMeta {
                price: 1,
                category: "1".into(),
            },
            op: Operation {
                id: OpId(1),
                kind: OpKind::Add,
                version: Version { hlc: 1, gateway: 1 },
            },
            require_in_cart: false,
            restamped: false,
        }
    }

    #[test]
    fn a_request_placed_before_its_pgs_interval_is_stale() {
        let plain = cluster_map(9, &[]);
        let pg = plain.pg_of(&key("alice"));
        let other = (pg + 1) % 256;
        let map = map(9, &[(pg, 7), (other, 9)]);
        assert_eq!(
            verdict(Some(&map), 6, &apply("alice")),
            Verdict::Stale { interval: 7 }
        );
        assert_eq!(verdict(Some(&map), 7, &apply("alice")), Verdict::Serve);
        // A read of a whole cart is held to the newest interval of any PG.
        let read = DataRequest::ReadSummaries {
            user: "alice".into(),
        };
        assert_eq!(
            verdict(Some(&map), 8, &read),
            Verdict::Stale { interval: 9 }
        );
        assert_eq!(verdict(Some(&map), 9, &read), Verdict::Serve);
        // A drop is held to the newest interval of the items it names.
        let drop = DataRequest::DropItems {
            items: vec![(key("alice"), StateDigest(0))],
        };
        assert_eq!(
            verdict(Some(&map), 6, &drop),
            Verdict::Stale { interval: 7 }
        );
        // The operator's listing of the node's own store is not about placement.
        let list = DataRequest::ListItems {
            after: None,
            limit: 10,
        };
        assert_eq!(verdict(Some(&map), 1, &list), Verdict::Serve);
    }

    #[test]
    fn a_request_from_a_newer_map_waits_for_it() {
        let map = map(9, &[]);
        assert_eq!(verdict(Some(&map), 10, &apply("bob")), Verdict::Ahead);
        assert_eq!(verdict(None, 1, &apply("bob")), Verdict::Ahead);
        assert_eq!(verdict(None, 0, &apply("bob")), Verdict::Serve);
    }
}

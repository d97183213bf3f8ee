//! Operation versions and the hybrid logical clock that issues them.
//!
//! The seed took a version from a ZooKeeper counter on every write: a ZooKeeper round trip per
//! operation, and (as built) a per-znode counter that differed between replicas. Here a version
//! is `(hlc, gateway)`: a hybrid logical clock reading taken locally by the gateway that
//! accepted the operation, and that gateway's id, which ZooKeeper hands out once at start-up.
//! Versions are totally ordered, so every replica orders the operations of one item the same
//! way, and issuing one costs no network round trip.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Bits of an HLC reading that hold the logical counter; the rest hold wall-clock milliseconds.
const LOGICAL_BITS: u32 = 16;

/// A total order over operations: clock reading first, the issuing gateway's id breaks ties.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Version {
    /// Hybrid logical clock reading: milliseconds since the Unix epoch in the high 48 bits, a
    /// counter in the low 16.
    pub hlc: u64,
    /// Id of the gateway that issued the version (unique among live gateways).
    pub gateway: u32,
}

impl Version {
    /// Wall-clock milliseconds encoded in the reading.
    pub fn millis(self) -> u64 {
        self.hlc >> LOGICAL_BITS
    }
}

/// Milliseconds since the Unix epoch by the system clock (0 before it): the physical part of
/// versions, and what acceptance windows and compaction horizons are measured against.
pub fn wall_clock_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A hybrid logical clock owned by one gateway.
///
/// Readings never go backwards, even when the wall clock does, and two readings of one clock
/// never repeat. [`HybridClock::observe`] pulls the clock past a version seen from elsewhere,
/// so an operation issued after another was observed is ordered after it.
#[derive(Debug)]
pub struct HybridClock {
    gateway: u32,
    last: AtomicU64,
}

impl HybridClock {
    /// A clock for the gateway with this id.
    pub fn new(gateway: u32) -> Self {
        Self {
            gateway,
            last: AtomicU64::new(0),
        }
    }

    /// Issues the next version, reading the system clock.
    pub fn now(&self) -> Version {
        self.tick(wall_clock_millis())
    }

    /// Issues the next version for a wall-clock reading of `now_millis`.
    pub fn tick(&self, now_millis: u64) -> Version {
        let physical = now_millis << LOGICAL_BITS;
        let previous = self
            .last
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| {
                Some(physical.max(last + 1))
            })
            .unwrap_or_else(|last| last);
        Version {
            hlc: physical.max(previous + 1),
            gateway: self.gateway,
        }
    }

    /// Moves the clock past `seen`, so later readings order after it.
    pub fn observe(&self, seen: Version) {
        self.last.fetch_max(seen.hlc, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_increase_even_when_the_wall_clock_goes_back() {
        let clock = HybridClock::new(7);
        let a = clock.tick(1_000);
        let b = clock.tick(1_000);
        let c = clock.tick(900);
        assert!(a < b && b < c);
        assert_eq!(a.millis(), 1_000);
        assert_eq!(c.gateway, 7);
    }

    #[test]
    fn observing_a_later_version_moves_the_clock_past_it() {
        let clock = HybridClock::new(1);
        let remote = Version {
            hlc: 5_000 << LOGICAL_BITS,
            gateway: 2,
        };
        clock.observe(remote);
        assert!(clock.tick(10) > remote);
    }

    #[test]
    fn gateway_id_breaks_ties() {
        let a = Version { hlc: 1, gateway: 1 };
        let b = Version { hlc: 1, gateway: 2 };
        assert!(a < b);
    }
}

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
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
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

/// How far ahead of the wall clock a version may be before [`HybridClock::observe`] refuses
/// it, unless set with [`HybridClock::with_max_skew`].
pub const DEFAULT_MAX_SKEW_MS: u64 = 10_000;

/// A hybrid logical clock owned by one gateway.
///
/// Readings never go backwards, even when the wall clock does, and two readings of one clock
/// never repeat. [`HybridClock::observe`] pulls the clock past a version seen from elsewhere,
/// so an operation issued after another was observed is ordered after it, unless that
/// version is dated more than the allowed skew ahead of this clock's wall clock: one runaway
/// (or forged) version must not drag every clock forward. Arithmetic saturates, so no
/// reading overflows.
#[derive(Debug)]
pub struct HybridClock {
    gateway: u32,
    last: AtomicU64,
    max_skew_ms: u64,
    /// Added to every wall-clock reading: 0 except in tests that skew one gateway's clock.
    offset_ms: i64,
}

/// Why [`HybridClock::observe`] did not move the clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a version dated {ahead_ms} ms ahead of the clock, more than the {max_skew_ms} ms allowed")]
pub struct TooFarAhead {
    pub ahead_ms: u64,
    pub max_skew_ms: u64,
}

impl HybridClock {
    /// A clock for the gateway with this id, refusing to observe versions more than
    /// [`DEFAULT_MAX_SKEW_MS`] ahead.
    pub fn new(gateway: u32) -> Self {
        Self {
            gateway,
            last: AtomicU64::new(0),
            max_skew_ms: DEFAULT_MAX_SKEW_MS,
            offset_ms: 0,
        }
    }

    /// The same clock reading the wall clock `offset_ms` milliseconds ahead (behind, if
    /// negative): how tests run one gateway with a skewed clock on a shared host.
    #[must_use]
    pub fn with_offset_ms(mut self, offset_ms: i64) -> Self {
        self.offset_ms = offset_ms;
        self
    }

    /// The wall clock as this clock reads it (shifted by its offset).
    fn wall_millis(&self) -> u64 {
        wall_clock_millis().saturating_add_signed(self.offset_ms)
    }

    /// The same clock with another bound on observed versions' skew.
    #[must_use]
    pub fn with_max_skew(mut self, max_skew_ms: u64) -> Self {
        self.max_skew_ms = max_skew_ms;
        self
    }

    /// Issues the next version, reading the system clock.
    pub fn now(&self) -> Version {
        self.tick(self.wall_millis())
    }

    /// Issues the next version for a wall-clock reading of `now_millis`.
    pub fn tick(&self, now_millis: u64) -> Version {
        let physical = physical(now_millis);
        let previous = self
            .last
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| {
                Some(physical.max(last.saturating_add(1)))
            })
            .unwrap_or_else(|last| last);
        Version {
            hlc: physical.max(previous.saturating_add(1)),
            gateway: self.gateway,
        }
    }

    /// Moves the clock past `seen`, so later readings order after it; reads the system
    /// clock for the skew check.
    ///
    /// # Errors
    /// [`TooFarAhead`] when `seen` is dated more than the allowed skew ahead of the wall
    /// clock; the clock is left alone.
    pub fn observe(&self, seen: Version) -> Result<(), TooFarAhead> {
        self.observe_at(seen, self.wall_millis())
    }

    /// [`HybridClock::observe`] with a wall-clock reading of `now_millis`.
    ///
    /// # Errors
    /// As [`HybridClock::observe`].
    pub fn observe_at(&self, seen: Version, now_millis: u64) -> Result<(), TooFarAhead> {
        let ahead_ms = seen.millis().saturating_sub(now_millis);
        if ahead_ms > self.max_skew_ms {
            return Err(TooFarAhead {
                ahead_ms,
                max_skew_ms: self.max_skew_ms,
            });
        }
        self.last.fetch_max(seen.hlc, Ordering::AcqRel);
        Ok(())
    }
}

/// The clock reading of `millis` with a zero counter; saturates at the largest reading.
fn physical(millis: u64) -> u64 {
    millis
        .checked_shl(LOGICAL_BITS)
        .filter(|p| p >> LOGICAL_BITS == millis)
        .unwrap_or(u64::MAX)
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
        clock.observe_at(remote, 5_000).unwrap();
        assert!(clock.tick(10) > remote);
    }

    #[test]
    fn a_version_from_the_future_is_refused_and_nothing_overflows() {
        let clock = HybridClock::new(1).with_max_skew(1_000);
        let now = 1_000_000;
        let near = Version {
            hlc: (now + 900) << LOGICAL_BITS,
            gateway: 2,
        };
        assert_eq!(clock.observe_at(near, now), Ok(()));
        let far = Version {
            hlc: (now + 60_000) << LOGICAL_BITS,
            gateway: 2,
        };
        assert_eq!(
            clock.observe_at(far, now),
            Err(TooFarAhead {
                ahead_ms: 60_000,
                max_skew_ms: 1_000
            })
        );
        assert!(
            clock.tick(now) < far,
            "the refused version did not move the clock"
        );
        let max = Version {
            hlc: u64::MAX,
            gateway: 2,
        };
        assert!(clock.observe_at(max, now).is_err());
        // Even a clock at the end of time, or a wall clock beyond it, does not overflow.
        let end = HybridClock::new(3).with_max_skew(u64::MAX);
        end.observe_at(max, 0).unwrap();
        assert_eq!(end.tick(u64::MAX).hlc, u64::MAX);
        assert_eq!(end.tick(5).hlc, u64::MAX);
    }

    #[test]
    fn gateway_id_breaks_ties() {
        let a = Version { hlc: 1, gateway: 1 };
        let b = Version { hlc: 1, gateway: 2 };
        assert!(a < b);
    }
}

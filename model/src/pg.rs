//! Placement groups, exactly as Ceph maps them: object -> PG -> CRUSH input.
//!
//! Ceph does not run CRUSH per object. An object's hash picks one of `pg_num` placement groups
//! of its pool, and CRUSH maps the PG, so per-PG state (which devices hold it now, and which
//! held it before) has a size fixed by `pg_num`, whatever the number of objects. cartdb does
//! the same with the seed's placement key as the object hash:
//!
//! ```text
//! x   = create_hash(user, product)                      (the seed's sha1 key, < 10^8)
//! pg  = ceph_stable_mod(x, pg_num, pg_num_mask)         (Pool::pg_of)
//! pps = rjenkins1(ceph_stable_mod(pg, pgp_num, pgp_num_mask), pool)   (Pool::pps, hashpspool)
//! up  = CRUSH(rule, pps, size, reweights)               (the placement policy, a full u32)
//! ```
//!
//! `pgp_num` equals `pg_num` here (cartdb never splits PGs without re-placing them).
//! `ceph_stable_mod` keeps a PG's objects together when `pg_num` grows: a PG only splits,
//! its objects never scatter.
//!
//! A data node finds the objects of one PG without knowing `pg_num` when it stores them:
//! it keys them by `x.reverse_bits()`, and [`Pool::key_ranges`] turns a PG into the one or
//! two ranges of reversed keys that hold exactly its objects (the PG's low bits become the
//! key's high bits).

use std::fmt;

use crate::rjenkins::hash2;

/// Most placement groups a pool may have (Ceph warns well below this per OSD).
pub const MAX_PG_NUM: u32 = 1 << 16;

/// A pool's placement-group settings, as stored with the map in ZooKeeper.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Pool {
    id: u32,
    pg_num: u32,
    mask: u32,
}

/// Why pool settings were refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolError {
    /// `pg_num` must be in `1..=MAX_PG_NUM`.
    PgNum { pg_num: u32 },
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolError::PgNum { pg_num } => {
                write!(f, "pg_num {pg_num} is not in 1..={MAX_PG_NUM}")
            }
        }
    }
}

impl std::error::Error for PoolError {}

/// A contiguous range of reversed placement keys (`x.reverse_bits()`), both ends included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyRange {
    pub first: u32,
    pub last: u32,
}

impl KeyRange {
    /// Whether `reversed` (a reversed placement key) lies in the range.
    pub fn contains(&self, reversed: u32) -> bool {
        (self.first..=self.last).contains(&reversed)
    }
}

impl Pool {
    /// Pool `id` with `pg_num` placement groups.
    ///
    /// # Errors
    /// [`PoolError::PgNum`] when `pg_num` is 0 or above [`MAX_PG_NUM`].
    pub fn new(id: u32, pg_num: u32) -> Result<Self, PoolError> {
        if pg_num == 0 || pg_num > MAX_PG_NUM {
            return Err(PoolError::PgNum { pg_num });
        }
        Ok(Self {
            id,
            pg_num,
            mask: pg_num_mask(pg_num),
        })
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn pg_num(&self) -> u32 {
        self.pg_num
    }

    /// The placement group of an object whose hash (placement key) is `x`.
    pub fn pg_of(&self, x: u32) -> u32 {
        stable_mod(x, self.pg_num, self.mask)
    }

    /// The CRUSH input of placement group `pg` (Ceph's `raw_pg_to_pps` with `hashpspool`):
    /// a full u32, often above 2^31.
    pub fn pps(&self, pg: u32) -> u32 {
        hash2(stable_mod(pg, self.pg_num, self.mask), self.id)
    }

    /// The ranges of reversed placement keys (`x.reverse_bits()`) whose objects belong to
    /// `pg`: one range, or two when `pg_num` is not a power of two and `pg` also takes the
    /// objects of the PG above `pg_num` that folds onto it.
    pub fn key_ranges(&self, pg: u32) -> Vec<KeyRange> {
        let bits = self.mask.count_ones();
        let mut low_patterns = vec![pg & self.mask];
        let half = (self.mask >> 1) + 1;
        if bits > 0 && pg < half && pg + half >= self.pg_num && pg + half <= self.mask {
            low_patterns.push(pg + half);
        }
        low_patterns
            .into_iter()
            .map(|low| range_of_low_bits(low, bits))
            .collect()
    }
}

/// The reversed-key range of every `x` whose low `bits` bits are `low`.
fn range_of_low_bits(low: u32, bits: u32) -> KeyRange {
    if bits == 0 {
        return KeyRange {
            first: 0,
            last: u32::MAX,
        };
    }
    let high = low.reverse_bits() >> (32 - bits);
    let shift = 32 - bits;
    let first = high.checked_shl(shift).unwrap_or(0);
    let span = u32::MAX.checked_shr(bits).unwrap_or(0);
    KeyRange {
        first,
        last: first | span,
    }
}

/// `pg_num_mask`: `(1 << bits(pg_num - 1)) - 1`, where `bits(v)` is the position of `v`'s
/// highest set bit (`bits(0) = 0`).
pub fn pg_num_mask(pg_num: u32) -> u32 {
    let v = pg_num.saturating_sub(1);
    let bits = 32 - v.leading_zeros();
    if bits >= 32 {
        u32::MAX
    } else {
        (1u32 << bits) - 1
    }
}

/// `ceph_stable_mod(x, b, mask)`: `x mod b` that moves only the objects of the PGs that
/// split when `b` grows.
pub fn stable_mod(x: u32, b: u32, mask: u32) -> u32 {
    if x & mask < b {
        x & mask
    } else {
        x & (mask >> 1)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    #[test]
    fn masks_cover_pg_num() {
        assert_eq!(pg_num_mask(1), 0);
        assert_eq!(pg_num_mask(2), 1);
        assert_eq!(pg_num_mask(64), 63);
        assert_eq!(pg_num_mask(100), 127);
        assert_eq!(pg_num_mask(256), 255);
        assert_eq!(pg_num_mask(257), 511);
    }

    #[test]
    fn stable_mod_folds_the_top_half_when_pg_num_is_not_a_power_of_two() {
        // pg_num 100, mask 127: 99 stays, 100..=127 fold onto 36..=63.
        assert_eq!(stable_mod(99, 100, 127), 99);
        assert_eq!(stable_mod(100, 100, 127), 36);
        assert_eq!(stable_mod(127, 100, 127), 63);
        assert_eq!(stable_mod(128 + 5, 100, 127), 5);
    }

    #[test]
    fn every_pg_is_below_pg_num() {
        for pg_num in [1, 2, 3, 64, 100, 224, 256] {
            let pool = Pool::new(1, pg_num).unwrap();
            for x in (0..100_000_000u32).step_by(9_973) {
                assert!(pool.pg_of(x) < pg_num, "pg_num {pg_num} x {x}");
            }
        }
    }

    #[test]
    fn pps_uses_the_pool_as_the_second_word() {
        // crush_hash32_2(stable_mod(pg), pool): the notes' hash2(1, 2) spot value.
        let pool = Pool::new(2, 64).unwrap();
        assert_eq!(pool.pps(1), 3_079_532_188);
        // A PG number is already below pg_num, so stable_mod leaves it alone.
        assert_eq!(pool.pps(1), hash2(1, 2));
    }

    #[test]
    fn pg_num_out_of_range_is_refused() {
        assert_eq!(Pool::new(1, 0), Err(PoolError::PgNum { pg_num: 0 }));
        assert!(Pool::new(1, MAX_PG_NUM + 1).is_err());
        assert_eq!(
            PoolError::PgNum { pg_num: 0 }.to_string(),
            "pg_num 0 is not in 1..=65536"
        );
    }

    /// The key ranges of a PG hold exactly the objects `pg_of` assigns to it.
    #[test]
    fn key_ranges_select_exactly_the_pgs_objects() {
        for pg_num in [1, 2, 3, 64, 100, 224, 256] {
            let pool = Pool::new(1, pg_num).unwrap();
            for x in (0..100_000_000u32)
                .step_by(99_991)
                .chain([0, 1, 99_999_999])
            {
                let pg = pool.pg_of(x);
                for candidate in 0..pg_num {
                    let inside = pool
                        .key_ranges(candidate)
                        .iter()
                        .any(|r| r.contains(x.reverse_bits()));
                    assert_eq!(
                        inside,
                        candidate == pg,
                        "pg_num {pg_num} x {x} pg {candidate}"
                    );
                }
            }
        }
    }
}

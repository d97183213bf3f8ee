//! Digest buckets: the fixed sub-ranges of the reversed placement key space over which data
//! nodes keep digests, so that an anti-entropy pass reads only the sub-ranges whose copies
//! differ (Riak's and Cassandra's hash trees, one level deep).
//!
//! A bucket is every reversed key (`x.reverse_bits()`) with the same top [`BUCKET_BITS`]
//! bits. A PG's key ranges ([`crate::pg::Pool::key_ranges`]) fix at most
//! `log2(MAX_PG_NUM)` = [`BUCKET_BITS`] top bits, so every PG is a whole number of buckets
//! and no bucket holds items of two PGs: with the default 256 PGs a PG is 256 buckets, and a
//! million carts put a few dozen items in each.
//!
//! ```text
//! reversed key   bbbbbbbb bbbbbbbb ........ ........
//!                '---- bucket ---' '- within bucket -'
//! ```

use crate::pg::{KeyRange, MAX_PG_NUM};

/// Top bits of a reversed placement key that name its bucket.
pub const BUCKET_BITS: u32 = MAX_PG_NUM.trailing_zeros();

/// How many buckets the key space holds.
pub const BUCKETS: usize = 1 << BUCKET_BITS;

const SHIFT: u32 = 32 - BUCKET_BITS;

/// The bucket of a reversed placement key.
pub fn bucket_of(reversed: u32) -> u32 {
    reversed >> SHIFT
}

/// The key range bucket `bucket` covers (`bucket` below [`BUCKETS`]).
pub fn bucket_range(bucket: u32) -> KeyRange {
    let first = bucket << SHIFT;
    KeyRange {
        first,
        last: first | (u32::MAX >> BUCKET_BITS),
    }
}

/// Why key ranges cannot be split into buckets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BucketError {
    /// A range does not start or end on a bucket boundary (or ends before it starts).
    Unaligned { first: u32, last: u32 },
    /// Two ranges overlap.
    Overlap { first: u32, last: u32 },
}

impl std::fmt::Display for BucketError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unaligned { first, last } => write!(
                f,
                "key range {first:#010x}..={last:#010x} is not a whole number of digest buckets"
            ),
            Self::Overlap { first, last } => write!(
                f,
                "key range {first:#010x}..={last:#010x} overlaps another range of the request"
            ),
        }
    }
}

impl std::error::Error for BucketError {}

/// The buckets of `ranges`, in key order: each range must be a whole number of buckets,
/// and no two may overlap (so the answer has at most [`BUCKETS`] entries).
///
/// # Errors
/// [`BucketError`] naming the first range that is unaligned or overlaps another.
pub fn buckets_of(ranges: &[(u32, u32)]) -> Result<Vec<u32>, BucketError> {
    let mut ranges = ranges.to_vec();
    ranges.sort_unstable();
    let mut buckets = Vec::new();
    let mut next_free = 0u64;
    for (first, last) in ranges {
        let range = KeyRange { first, last };
        if first > last || bucket_range(bucket_of(first)).first != first {
            return Err(BucketError::Unaligned { first, last });
        }
        if bucket_range(bucket_of(last)).last != last {
            return Err(BucketError::Unaligned { first, last });
        }
        if u64::from(range.first) < next_free {
            return Err(BucketError::Overlap { first, last });
        }
        next_free = u64::from(range.last) + 1;
        buckets.extend(bucket_of(first)..=bucket_of(last));
    }
    Ok(buckets)
}

/// The fewest key ranges covering exactly `buckets` (sorted, no repeats): runs of adjacent
/// buckets become one range, so a range scan seeks once per run.
pub fn ranges_of(buckets: &[u32]) -> Vec<(u32, u32)> {
    let mut ranges: Vec<(u32, u32)> = Vec::new();
    for &bucket in buckets {
        let range = bucket_range(bucket);
        match ranges.last_mut() {
            Some((_, last)) if u64::from(*last) + 1 == u64::from(range.first) => {
                *last = range.last;
            }
            _ => ranges.push((range.first, range.last)),
        }
    }
    ranges
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]
mod tests {
    use super::*;
    use crate::pg::Pool;

    #[test]
    fn every_pg_is_a_whole_number_of_buckets_of_its_own() {
        for pg_num in [1, 3, 100, 256, MAX_PG_NUM] {
            let pool = Pool::new(1, pg_num).expect("a valid pool");
            let mut owner = vec![None; BUCKETS];
            for pg in 0..pg_num {
                let ranges: Vec<(u32, u32)> = pool
                    .key_ranges(pg)
                    .iter()
                    .map(|r| (r.first, r.last))
                    .collect();
                let buckets = buckets_of(&ranges).expect("PG ranges are aligned");
                assert!(!buckets.is_empty());
                for bucket in buckets {
                    let slot = &mut owner[bucket as usize];
                    assert_eq!(*slot, None, "pg_num {pg_num}: bucket {bucket} in two PGs");
                    *slot = Some(pg);
                }
            }
            assert!(owner.iter().all(Option::is_some), "pg_num {pg_num}");
        }
    }

    #[test]
    fn ranges_round_trip_through_buckets() {
        let buckets = vec![0, 1, 2, 7, 9, 10, (BUCKETS - 1) as u32];
        let ranges = ranges_of(&buckets);
        assert_eq!(ranges.len(), 4);
        assert_eq!(ranges[0], (0, bucket_range(2).last));
        assert_eq!(ranges[3], (bucket_range(65_535).first, u32::MAX));
        assert_eq!(buckets_of(&ranges), Ok(buckets));
        assert_eq!(bucket_of(0x1234_5678), 0x1234);
    }

    #[test]
    fn unaligned_or_overlapping_ranges_are_refused_by_name() {
        assert_eq!(
            buckets_of(&[(1, 0xffff)]),
            Err(BucketError::Unaligned {
                first: 1,
                last: 0xffff
            })
        );
        assert!(buckets_of(&[(0x1_0000, 0xffff)]).is_err());
        assert!(buckets_of(&[(0, 0x1_fffe)]).is_err());
        let overlap = buckets_of(&[(0, 0x1_ffff), (0x1_0000, 0x1_ffff)]);
        assert_eq!(
            overlap,
            Err(BucketError::Overlap {
                first: 0x1_0000,
                last: 0x1_ffff
            })
        );
        assert_eq!(
            overlap.unwrap_err().to_string(),
            "key range 0x00010000..=0x0001ffff overlaps another range of the request"
        );
        assert_eq!(buckets_of(&[]), Ok(vec![]));
    }
}

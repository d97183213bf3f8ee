//! [`ShopperLimit`]: an optional cap on one shopper's cart requests per second at the API
//! server (`--shopper-rate-limit`, off by default), answered with 429. A token bucket per
//! shopper id: `per_sec` tokens a second, at most `per_sec` saved up, one per request.
//!
//! It spares the cluster one client hammering one cart; the data nodes' cap of unfolded
//! operations per item (docs/design.md, "Safety") bounds a hot item whatever the API does.
//! The buckets are kept in memory, bounded: when more than [`MAX_TRACKED`] shoppers have
//! one, the buckets that have refilled (shoppers idle for a second or more) are forgotten,
//! which changes nothing they would be allowed. Pure but for the lock; time is passed in.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

/// Most shoppers with a bucket before the refilled ones are forgotten.
pub const MAX_TRACKED: usize = 100_000;

/// A refused request: the shopper is over `per_sec` requests a second.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("userid: more than {per_sec} requests a second for this shopper; retry later")]
pub struct OverLimit {
    pub per_sec: u32,
}

/// Token buckets by shopper id.
#[derive(Debug)]
pub struct ShopperLimit {
    per_sec: u32,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl ShopperLimit {
    /// At most `per_sec` requests a second per shopper (and as many at once).
    pub fn new(per_sec: u32) -> Self {
        Self {
            per_sec,
            buckets: Mutex::default(),
        }
    }

    /// Takes a token from `user`'s bucket at `now`.
    ///
    /// # Errors
    /// [`OverLimit`] when the bucket is empty: the request must not be served.
    pub fn admit(&self, user: &str, now: Instant) -> Result<(), OverLimit> {
        let rate = f64::from(self.per_sec);
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() >= MAX_TRACKED && !buckets.contains_key(user) {
            buckets.retain(|_, bucket| refilled(*bucket, rate, now) < rate);
        }
        let bucket = buckets.entry(user.to_owned()).or_insert(Bucket {
            tokens: rate,
            at: now,
        });
        let tokens = refilled(*bucket, rate, now);
        if tokens < 1.0 {
            *bucket = Bucket { tokens, at: now };
            return Err(OverLimit {
                per_sec: self.per_sec,
            });
        }
        *bucket = Bucket {
            tokens: tokens - 1.0,
            at: now,
        };
        Ok(())
    }

    /// How many shoppers have a bucket now.
    pub fn tracked(&self) -> usize {
        self.buckets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// The bucket's tokens at `now`: refilled at `rate` a second since it was last used, at most
/// `rate`.
fn refilled(bucket: Bucket, rate: f64, now: Instant) -> f64 {
    let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
    (bucket.tokens + elapsed * rate).min(rate)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_shopper_gets_per_sec_requests_then_refusals_until_the_bucket_refills() {
        let limit = ShopperLimit::new(3);
        let start = Instant::now();
        for _ in 0..3 {
            assert_eq!(limit.admit("alice", start), Ok(()));
        }
        assert_eq!(limit.admit("alice", start), Err(OverLimit { per_sec: 3 }));
        // Another shopper is not held back by alice.
        assert_eq!(limit.admit("bob", start), Ok(()));
        // A third of a second refills one token.
        let later = start + Duration::from_millis(340);
        assert_eq!(limit.admit("alice", later), Ok(()));
        assert!(limit.admit("alice", later).is_err());
        // Idle for long, the bucket holds no more than per_sec.
        let much_later = start + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(limit.admit("alice", much_later), Ok(()));
        }
        assert!(limit.admit("alice", much_later).is_err());
        assert_eq!(
            OverLimit { per_sec: 3 }.to_string(),
            "userid: more than 3 requests a second for this shopper; retry later"
        );
    }

    #[test]
    fn idle_shoppers_are_forgotten_when_too_many_are_tracked() {
        let limit = ShopperLimit::new(1);
        let start = Instant::now();
        for n in 0..MAX_TRACKED {
            limit.admit(&format!("u{n}"), start).unwrap();
        }
        assert_eq!(limit.tracked(), MAX_TRACKED);
        // Two seconds on, every bucket has refilled: the newcomer's arrival forgets them.
        limit
            .admit("newcomer", start + Duration::from_secs(2))
            .unwrap();
        assert_eq!(limit.tracked(), 1);
    }
}

//! The store's digest buckets ([`cartdb_core::digest_bucket`]): per bucket, the XOR of the
//! fingerprints of the items it holds ([`ItemSummary::fingerprint`]) and how many of them
//! have a long log, kept in memory and changed as writes land.
//!
//! They live in memory only, rebuilt from `placement` when the store opens, so they always
//! describe exactly what is durable: nothing to keep in step with the batch on disk, nothing
//! to repair after a crash. The rebuild scans a snapshot taken at open, before any write, on
//! a thread of its own (4-8 s for 1.5 million items while six nodes start on two cores),
//! while the node already serves: the writer's changes since the snapshot commute with the
//! snapshot's heads, and digests are refused ([`DigestError::NotReady`]) until it is done.
//! The writer changes them after each batch is durable, before it acknowledges anything;
//! an XOR is its own inverse, so replacing an item's state is two XORs and dropping it one.
//! Readers take each bucket's value atomically; an answer read while a batch lands may mix
//! the states before and after it, which the sweep treats like any write in flight: the
//! bucket differs, so it is read and compared item by item.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use cartdb_core::cart::{ItemKey, ItemSummary};
use cartdb_core::digest_bucket::{BUCKETS, BucketError, bucket_of, buckets_of};
use cartdb_core::wire::{BucketDigest, LONG_LOG_OPS};
use fjall::Keyspace;

use super::StoreError;
use super::codec::{PLACED, decode_head, item_key_of, show_placed_key};

/// Every bucket's digest and long-log count.
pub(super) struct Digests {
    digests: Box<[AtomicU64]>,
    long_logs: Box<[AtomicU32]>,
    /// The rebuild from the stored heads has finished.
    ready: AtomicBool,
    /// The store is closing: the rebuild gives up.
    stop: AtomicBool,
}

/// Why a store cannot answer its digests.
#[derive(Debug, thiserror::Error)]
pub enum DigestError {
    /// The buckets are still being rebuilt from the stored heads (or the rebuild failed).
    #[error("the digest buckets are still being rebuilt after start-up")]
    NotReady,
    /// The request's ranges are not whole, disjoint buckets.
    #[error(transparent)]
    Buckets(#[from] BucketError),
}

/// How one item's write changes its bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct DigestChange {
    bucket: u32,
    xor: u64,
    long_logs: i32,
}

impl DigestChange {
    /// The change from the item `key`'s state `before` to `after` (`None`: not held), for
    /// the item whose placement entry is `placed` (which starts with the reversed key).
    pub(super) fn between(
        placed: &[u8],
        key: &ItemKey,
        before: Option<&ItemSummary>,
        after: Option<&ItemSummary>,
    ) -> Self {
        let mut reversed = [0u8; 4];
        for (to, from) in reversed.iter_mut().zip(placed) {
            *to = *from;
        }
        let print = |head: Option<&ItemSummary>| head.map_or(0, |h| h.fingerprint(key));
        let long =
            |head: Option<&ItemSummary>| i32::from(head.is_some_and(|h| h.ops >= LONG_LOG_OPS));
        Self {
            bucket: bucket_of(u32::from_be_bytes(reversed)),
            xor: print(before) ^ print(after),
            long_logs: long(after) - long(before),
        }
    }
}

impl Digests {
    /// Every bucket empty.
    pub(super) fn new() -> Self {
        Self {
            digests: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            long_logs: (0..BUCKETS).map(|_| AtomicU32::new(0)).collect(),
            ready: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        }
    }

    /// The rebuild has added every stored head: answers are complete from now on.
    pub(super) fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Asks the rebuild to give up (the store is closing).
    pub(super) fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Whether the rebuild should give up.
    pub(super) fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Applies `change`, from the writer or the rebuild. Both XOR and count, which commute,
    /// so the rebuild may add the heads of its snapshot while the writer applies the writes
    /// made since: a count may pass below zero meanwhile (it wraps), never once ready.
    pub(super) fn apply(&self, change: DigestChange) {
        let at = change.bucket as usize;
        if let Some(digest) = self.digests.get(at) {
            digest.fetch_xor(change.xor, Ordering::Relaxed);
        }
        if let Some(long) = self.long_logs.get(at) {
            match change.long_logs {
                1 => {
                    long.fetch_add(1, Ordering::Relaxed);
                }
                -1 => {
                    long.fetch_sub(1, Ordering::Relaxed);
                }
                _ => {}
            }
        }
    }

    /// The buckets of `ranges`, in key order.
    ///
    /// # Errors
    /// [`DigestError::NotReady`] before the rebuild has finished, [`DigestError::Buckets`]
    /// when `ranges` are not whole, disjoint buckets.
    pub(super) fn answer(&self, ranges: &[(u32, u32)]) -> Result<Vec<BucketDigest>, DigestError> {
        if !self.ready.load(Ordering::Acquire) {
            return Err(DigestError::NotReady);
        }
        Ok(buckets_of(ranges)?
            .into_iter()
            .map(|bucket| {
                let at = bucket as usize;
                BucketDigest {
                    digest: self.digests[at].load(Ordering::Relaxed),
                    long_logs: self.long_logs[at].load(Ordering::Relaxed),
                }
            })
            .collect())
    }
}

/// Fills `digests` from every head in `placement` as `snapshot` saw it, then marks them
/// ready; gives up if the store closes first, and leaves them not ready after a read error
/// (logged), so the sweep streams this device's PGs instead of trusting partial digests.
pub(super) fn rebuild_digests(snapshot: &fjall::Snapshot, placement: &Keyspace, digests: &Digests) {
    use fjall::Readable;
    let started = std::time::Instant::now();
    let mut items = 0u64;
    for guard in snapshot.iter(placement) {
        if digests.stopping() {
            return;
        }
        let entry = guard
            .into_inner()
            .map_err(|source| StoreError::Read {
                key: "placement".to_owned(),
                source,
            })
            .and_then(|(raw, value)| {
                let tail = raw.get(PLACED..).ok_or_else(|| StoreError::MalformedKey {
                    key: show_placed_key(&raw),
                })?;
                let key = item_key_of(tail, &raw)?;
                let head = decode_head(&raw, &key.product, &value)?;
                Ok(DigestChange::between(&raw, &key, None, Some(&head)))
            });
        match entry {
            Ok(change) => digests.apply(change),
            Err(error) => {
                tracing::error!(%error, "cannot rebuild the digest buckets; anti-entropy streams this device's PGs whole");
                return;
            }
        }
        items += 1;
    }
    digests.set_ready();
    let seconds = started.elapsed().as_secs_f64();
    metrics::gauge!("cartdb_datanode_digest_rebuild_seconds").set(seconds);
    tracing::info!(
        items,
        seconds,
        "digest buckets rebuilt from the stored heads"
    );
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]
mod tests {
    use cartdb_core::cart::{ItemMeta, ItemState, OpId, OpKind, Operation};
    use cartdb_core::digest_bucket::bucket_range;
    use cartdb_core::version::Version;

    use super::*;

    fn state(ops: u32) -> ItemSummary {
        let mut state = ItemState::new(
            "p",
            ItemMeta {
                price: 1,
                category: "c".into(),
            },
        );
        for id in 0..ops {
            state.apply(Operation {
                id: OpId(u128::from(id)),
                kind: OpKind::Add,
                version: Version {
                    hlc: u64::from(id) + 1,
                    gateway: 1,
                },
            });
        }
        state.summary()
    }

    #[test]
    fn replacing_and_dropping_an_item_undo_each_other() {
        let digests = Digests::new();
        assert!(matches!(digests.answer(&[]), Err(DigestError::NotReady)));
        digests.set_ready();
        let key = ItemKey {
            user: "u".into(),
            product: "p".into(),
        };
        let placed = [0x12, 0x34, 0x56, 0x78, b'u'];
        let (short, long) = (state(1), state(LONG_LOG_OPS));
        let bucket = bucket_range(0x1234);
        let read = || digests.answer(&[(bucket.first, bucket.last)]).unwrap()[0];
        digests.apply(DigestChange::between(&placed, &key, None, Some(&short)));
        assert_eq!(read().digest, short.fingerprint(&key));
        digests.apply(DigestChange::between(
            &placed,
            &key,
            Some(&short),
            Some(&long),
        ));
        assert_eq!(
            read(),
            BucketDigest {
                digest: long.fingerprint(&key),
                long_logs: 1
            }
        );
        digests.apply(DigestChange::between(&placed, &key, Some(&long), None));
        assert_eq!(read(), BucketDigest::default());
        assert!(digests.answer(&[(1, 2)]).is_err());
    }
}

//! Reading a placement group: range scans of `placement` and `log` in placement order
//! (format 5 keeps a PG's items, and their logs, in one or two key ranges; see
//! [`super`]'s docs), for the sweep's streams and scans and for handback drops.

use std::ops::Bound;

use cartdb_core::cart::{ItemKey, ItemState, ItemSummary, Operation};
use cartdb_core::wire::{HeldItem, HeldState};

use super::codec::{
    LOG_TAG, PLACED, decode_head, decode_log_entry, item_key_of, log_prefix_after, placement_entry,
    show_placed_key,
};
use super::{CartStore, StoreError};

impl CartStore {
    /// The heads of the items whose reversed placement keys fall in `ranges` (the key ranges
    /// of one placement group), in key order, at most `limit`; `true` when more were left.
    ///
    /// # Errors
    /// [`StoreError::Read`], [`StoreError::MalformedKey`], or a decoding error of a head.
    pub fn scan_placement(
        &self,
        ranges: &[(u32, u32)],
        limit: usize,
    ) -> Result<(Vec<HeldItem>, bool), StoreError> {
        let mut held = Vec::new();
        let more = self.visit_placement(ranges, None, false, |key, summary, _| {
            if held.len() == limit {
                return Ok(false);
            }
            held.push(HeldItem {
                user: key.user,
                summary,
            });
            Ok(true)
        })?;
        Ok((held, more))
    }

    /// The full states of the items whose reversed placement keys fall in `ranges` (one
    /// placement group), in placement order after the item `after`, at most `limit` items
    /// and about `max_bytes` (at least one item); `true` when more were left. A range scan
    /// of `placement` for the heads, and of each item's log right next to the last one.
    ///
    /// # Errors
    /// As [`CartStore::scan_placement`] and [`CartStore::read_log`].
    pub fn read_pg(
        &self,
        ranges: &[(u32, u32)],
        after: Option<&ItemKey>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<(Vec<HeldState>, bool), StoreError> {
        let after = after.map(placement_entry).transpose()?.map(|mut raw| {
            // The smallest key after `raw`.
            raw.push(0);
            raw
        });
        let mut held = Vec::new();
        let mut bytes = 0usize;
        let more = self.visit_placement(ranges, after.as_deref(), true, |key, head, ops| {
            if held.len() >= limit.max(1) || (bytes >= max_bytes && !held.is_empty()) {
                return Ok(false);
            }
            let state = ItemState {
                ops,
                product: head.product,
                meta: head.meta,
                base: head.base,
            };
            bytes += held_bytes(&key, &state);
            held.push(HeldState {
                user: key.user,
                state,
            });
            Ok(true)
        })?;
        Ok((held, more))
    }

    /// Calls `visit` with every item (its head, and with `logs` its operation log) whose
    /// reversed placement key falls in `ranges`, in key order, from the key `from` on if
    /// given, until `visit` answers `false`; `true` when it stopped before the end. The
    /// logs come from one range scan of `log` alongside the one of `placement` (format 5
    /// keeps both in placement order), not from a seek per item.
    fn visit_placement(
        &self,
        ranges: &[(u32, u32)],
        from: Option<&[u8]>,
        logs: bool,
        mut visit: impl FnMut(ItemKey, ItemSummary, Vec<Operation>) -> Result<bool, StoreError>,
    ) -> Result<bool, StoreError> {
        let mut ranges = ranges.to_vec();
        ranges.sort_unstable();
        for (first, last) in ranges {
            let Some(bounds) = placed_bounds(first, last, from) else {
                continue;
            };
            let read_error = |source| StoreError::Read {
                key: format!("placement range {first:#010x}..={last:#010x}"),
                source,
            };
            let mut log_entries = logs.then(|| {
                self.log
                    .range(bounds.clone())
                    .map(fjall::Guard::into_inner)
                    .peekable()
            });
            for guard in self.placement.range(bounds) {
                let (raw, value) = guard.into_inner().map_err(read_error)?;
                let tail = raw.get(PLACED..).ok_or_else(|| StoreError::MalformedKey {
                    key: show_placed_key(&raw),
                })?;
                let key = item_key_of(tail, &raw)?;
                let head = decode_head(&raw, &key.product, &value)?;
                let ops = match log_entries.as_mut() {
                    Some(entries) => take_log(entries, &raw).map_err(read_error)??,
                    None => Vec::new(),
                };
                if !visit(key, head, ops)? {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }
}

/// About how many bytes `state` takes in an answer: its identifiers, facts and operations.
fn held_bytes(key: &ItemKey, state: &ItemState) -> usize {
    const FIXED: usize = 64;
    const PER_OP: usize = 40;
    FIXED
        + key.user.len()
        + 2 * key.product.len()
        + state.meta.category.len()
        + PER_OP * state.ops.len()
}

/// The `placement` (and `log`) key bounds of the reversed placement keys `first..=last`,
/// starting at `from` if it is later; `None` when nothing is left.
fn placed_bounds(first: u32, last: u32, from: Option<&[u8]>) -> Option<PlacedBounds> {
    let mut start = first.to_be_bytes().to_vec();
    if let Some(from) = from.filter(|from| *from > start.as_slice()) {
        start = from.to_vec();
    }
    match last.checked_add(1) {
        Some(end) if start.as_slice() >= end.to_be_bytes().as_slice() => None,
        Some(end) => Some((
            Bound::Included(start),
            Bound::Excluded(end.to_be_bytes().to_vec()),
        )),
        None => Some((Bound::Included(start), Bound::Unbounded)),
    }
}

type PlacedBounds = (Bound<Vec<u8>>, Bound<Vec<u8>>);

/// Walks `entries` (a range of `log` in key order) over the entries of the item whose
/// placement entry is `placed`, calling `each` with every one (key and value), and skipping
/// any orphan before it: the item's entries start with `placed 0x00`, and no product holds
/// a 0x00, so no other item's key falls between.
fn walk_item_entries<K: AsRef<[u8]>, V: AsRef<[u8]>>(
    entries: &mut std::iter::Peekable<impl Iterator<Item = fjall::Result<(K, V)>>>,
    placed: &[u8],
    mut each: impl FnMut(&[u8], usize, &[u8]),
) -> Result<(), fjall::Error> {
    let prefix = log_prefix_after(placed);
    loop {
        // Whether the next entry is the item's (`false`: an orphan before it to skip).
        let mine = match entries.peek() {
            None => break,
            Some(Err(_)) => false,
            Some(Ok((raw, _))) => {
                let raw = raw.as_ref();
                if raw >= prefix.as_slice() && !raw.starts_with(&prefix) {
                    break;
                }
                raw.starts_with(&prefix)
            }
        };
        match entries.next() {
            Some(Err(e)) => return Err(e),
            Some(Ok((raw, value))) if mine => each(raw.as_ref(), prefix.len(), value.as_ref()),
            _ => {}
        }
    }
    Ok(())
}

/// The operation log of the item whose placement entry is `placed`, from `entries` (see
/// [`walk_item_entries`]). The outer error is fjall's, the inner one a malformed entry.
fn take_log<K: AsRef<[u8]>, V: AsRef<[u8]>>(
    entries: &mut std::iter::Peekable<impl Iterator<Item = fjall::Result<(K, V)>>>,
    placed: &[u8],
) -> Result<Result<Vec<Operation>, StoreError>, fjall::Error> {
    let mut ops = Ok(Vec::new());
    walk_item_entries(entries, placed, |raw, at, value| {
        if let Ok(list) = ops.as_mut()
            && raw.get(at) == Some(&LOG_TAG)
        {
            match decode_log_entry(raw, &raw[at + 1..], value) {
                Ok(op) => list.push(op),
                Err(e) => ops = Err(e),
            }
        }
    })?;
    Ok(ops)
}

/// Every `log` key (log and id entries) of the item whose placement entry is `placed`, from
/// `entries` (see [`walk_item_entries`]).
pub(super) fn take_item_entries<K: AsRef<[u8]>, V: AsRef<[u8]>>(
    entries: &mut std::iter::Peekable<impl Iterator<Item = fjall::Result<(K, V)>>>,
    placed: &[u8],
) -> Result<Vec<Vec<u8>>, fjall::Error> {
    let mut keys = Vec::new();
    walk_item_entries(entries, placed, |raw, _, _| keys.push(raw.to_vec()))?;
    Ok(keys)
}

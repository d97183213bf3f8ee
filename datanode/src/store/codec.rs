//! The byte layout of the store's keys and values (the table in [`super`]'s docs): building
//! keys from identifiers (refusing any that could break the layout), parsing them back, and
//! encoding and decoding item heads, log entries and id entries. Pure; every decoding error
//! names the key.

use cartdb_core::cart::{ItemKey, ItemSummary, OpId, OpKind, Operation, validate_id};
use cartdb_core::placement_key::placement_key;
use cartdb_core::version::Version;

use super::StoreError;

/// Leading byte of every `items` value; a new encoding gets a new byte, never a reuse.
/// (1 was the whole-log layout described in the module docs.)
pub(super) const FORMAT_V2: u8 = 2;
/// Tag of a log entry key, after `user 0x00 product 0x00`.
pub(super) const LOG_TAG: u8 = b'l';
/// Tag of an id entry key.
pub(super) const ID_TAG: u8 = b'i';
/// Separator between the parts of a key.
pub(super) const SEP: u8 = 0;

/// `user 0x00 product`.
pub(super) fn item_key(key: &ItemKey) -> Result<Vec<u8>, StoreError> {
    let mut raw = key_prefix("userid", &key.user)?;
    validate_id("productid", &key.product)?;
    raw.extend_from_slice(key.product.as_bytes());
    Ok(raw)
}

/// `category 0x00 user 0x00 product`.
pub(super) fn index_key(category: &str, key: &ItemKey) -> Result<Vec<u8>, StoreError> {
    let mut raw = key_prefix("category", category)?;
    raw.extend_from_slice(&item_key(key)?);
    Ok(raw)
}

/// `id 0x00`, after checking that `id` cannot break the key layout.
pub(super) fn key_prefix(field: &str, id: &str) -> Result<Vec<u8>, StoreError> {
    validate_id(field, id)?;
    let mut raw = Vec::with_capacity(id.len() + 1 + 64);
    raw.extend_from_slice(id.as_bytes());
    raw.push(SEP);
    Ok(raw)
}

/// The product part of an item key (what follows `user 0x00`).
pub(super) fn product_of<'a>(rest: &'a [u8], raw: &[u8]) -> Result<&'a str, StoreError> {
    std::str::from_utf8(rest).map_err(|_| StoreError::MalformedKey { key: show_key(raw) })
}

/// The item of a `user 0x00 product` key part (`raw` is the whole key, for errors).
pub(super) fn item_key_of(rest: &[u8], raw: &[u8]) -> Result<ItemKey, StoreError> {
    let malformed = || StoreError::MalformedKey { key: show_key(raw) };
    let end = rest.iter().position(|&b| b == SEP).ok_or_else(malformed)?;
    let user = std::str::from_utf8(&rest[..end]).map_err(|_| malformed())?;
    let product = std::str::from_utf8(&rest[end + 1..]).map_err(|_| malformed())?;
    if user.is_empty() || product.is_empty() {
        return Err(malformed());
    }
    Ok(ItemKey {
        user: user.to_owned(),
        product: product.to_owned(),
    })
}

/// `reverse_bits(x) user 0x00 product`: the item's `placement` entry.
pub(super) fn placement_entry(key: &ItemKey) -> Result<Vec<u8>, StoreError> {
    let x = placement_key(&key.user, &key.product);
    let mut raw = x.reverse_bits().to_be_bytes().to_vec();
    raw.extend_from_slice(&item_key(key)?);
    Ok(raw)
}

/// `reverse_bits(x) user 0x00 product 0x00`: the prefix of every log and id entry of the
/// item, so that a placement group's entries are one or two key ranges, like its
/// `placement` entries.
pub(super) fn log_prefix(key: &ItemKey) -> Result<Vec<u8>, StoreError> {
    Ok(log_prefix_after(&placement_entry(key)?))
}

/// The log prefix of the item whose `placement` entry key is `placed`.
pub(super) fn log_prefix_after(placed: &[u8]) -> Vec<u8> {
    let mut raw = Vec::with_capacity(placed.len() + 1);
    raw.extend_from_slice(placed);
    raw.push(SEP);
    raw
}

/// Bytes of the reversed placement key that lead `placement` and `log` keys.
pub(super) const PLACED: usize = 4;

/// A `placement` or `log` key for error messages: the reversed placement key in hex, then
/// the rest as [`show_key`] shows it.
pub(super) fn show_placed_key(raw: &[u8]) -> String {
    match raw.split_first_chunk::<PLACED>() {
        Some((placed, rest)) => {
            format!("{:#010x}/{}", u32::from_be_bytes(*placed), show_key(rest))
        }
        None => show_key(raw),
    }
}

/// Log entry key: the prefix, `'l'`, then the version and id, so entries sort by
/// [`Operation::log_order`].
pub(super) fn log_entry_key(prefix: &[u8], op: &Operation) -> Vec<u8> {
    let mut raw = Vec::with_capacity(prefix.len() + 29);
    raw.extend_from_slice(prefix);
    raw.push(LOG_TAG);
    raw.extend_from_slice(&op.version.hlc.to_be_bytes());
    raw.extend_from_slice(&op.version.gateway.to_be_bytes());
    raw.extend_from_slice(&op.id.0.to_be_bytes());
    raw
}

pub(super) fn id_entry_key(prefix: &[u8], id: OpId) -> Vec<u8> {
    let mut raw = Vec::with_capacity(prefix.len() + 17);
    raw.extend_from_slice(prefix);
    raw.push(ID_TAG);
    raw.extend_from_slice(&id.0.to_be_bytes());
    raw
}

pub(super) fn id_entry_value(op: &Operation) -> Vec<u8> {
    let mut value = Vec::with_capacity(13);
    value.extend_from_slice(&op.version.hlc.to_be_bytes());
    value.extend_from_slice(&op.version.gateway.to_be_bytes());
    value.push(kind_byte(op.kind));
    value
}

pub(super) fn kind_byte(kind: OpKind) -> u8 {
    match kind {
        OpKind::Add => 0,
        OpKind::Delete => 1,
    }
}

pub(super) fn kind_of(byte: u8) -> Option<OpKind> {
    match byte {
        0 => Some(OpKind::Add),
        1 => Some(OpKind::Delete),
        _ => None,
    }
}

/// Decodes a log entry from its key's tail after the tag (`hlc gateway id`) and its value.
pub(super) fn decode_log_entry(
    raw: &[u8],
    tail: &[u8],
    value: &[u8],
) -> Result<Operation, StoreError> {
    let malformed = || StoreError::MalformedEntry {
        key: show_placed_key(raw),
        len: value.len(),
    };
    let (hlc, rest) = tail.split_first_chunk::<8>().ok_or_else(malformed)?;
    let (gateway, rest) = rest.split_first_chunk::<4>().ok_or_else(malformed)?;
    let id: &[u8; 16] = rest.try_into().map_err(|_| malformed())?;
    let kind = match value {
        [byte] => kind_of(*byte).ok_or_else(malformed)?,
        _ => return Err(malformed()),
    };
    Ok(Operation {
        id: OpId(u128::from_be_bytes(*id)),
        kind,
        version: Version {
            hlc: u64::from_be_bytes(*hlc),
            gateway: u32::from_be_bytes(*gateway),
        },
    })
}

pub(super) fn decode_id_entry(raw: &[u8], id: OpId, value: &[u8]) -> Result<Operation, StoreError> {
    let malformed = || StoreError::MalformedEntry {
        key: show_placed_key(raw),
        len: value.len(),
    };
    let (hlc, rest) = value.split_first_chunk::<8>().ok_or_else(malformed)?;
    let (gateway, rest) = rest.split_first_chunk::<4>().ok_or_else(malformed)?;
    let kind = match rest {
        [byte] => kind_of(*byte).ok_or_else(malformed)?,
        _ => return Err(malformed()),
    };
    Ok(Operation {
        id,
        kind,
        version: Version {
            hlc: u64::from_be_bytes(*hlc),
            gateway: u32::from_be_bytes(*gateway),
        },
    })
}

pub(super) fn encode_head(raw: &[u8], head: &ItemSummary) -> Result<Vec<u8>, StoreError> {
    let mut value = vec![FORMAT_V2];
    postcard::to_io(head, &mut value).map_err(|source| StoreError::Encode {
        key: show_key(raw),
        source,
    })?;
    Ok(value)
}

/// Decodes an `items` value stored under `raw`, which names `product`.
pub(super) fn decode_head(
    raw: &[u8],
    product: &str,
    value: &[u8],
) -> Result<ItemSummary, StoreError> {
    let (&format, body) = value
        .split_first()
        .ok_or_else(|| StoreError::EmptyValue { key: show_key(raw) })?;
    if format != FORMAT_V2 {
        return Err(StoreError::UnknownFormat {
            key: show_key(raw),
            format,
        });
    }
    let head: ItemSummary = postcard::from_bytes(body).map_err(|source| StoreError::Corrupt {
        key: show_key(raw),
        source,
    })?;
    if head.product != product {
        return Err(StoreError::ProductMismatch {
            key: show_key(raw),
            stored: head.product,
        });
    }
    Ok(head)
}

/// A key for error messages: separators shown as `/` (which identifiers never contain).
pub(super) fn show_key(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).replace('\0', "/")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    #[test]
    fn log_and_id_entries_round_trip_and_sort_by_version() {
        let prefix = b"\x12\x34\x56\x78u1\0p1\0".to_vec();
        let op = |id: u128, hlc| Operation {
            id: OpId(id),
            kind: OpKind::Delete,
            version: Version { hlc, gateway: 3 },
        };
        let (early, late) = (op(u128::MAX, 5), op(1, 300));
        let (k1, k2) = (
            log_entry_key(&prefix, &early),
            log_entry_key(&prefix, &late),
        );
        assert!(k1 < k2, "byte order is version order");
        let tail = &k1[prefix.len() + 1..];
        assert_eq!(decode_log_entry(&k1, tail, &[1]).unwrap(), early);
        assert!(decode_log_entry(&k1, tail, &[7]).is_err());
        assert!(decode_log_entry(&k1, &tail[1..], &[1]).is_err());
        let id_key = id_entry_key(&prefix, late.id);
        let value = id_entry_value(&late);
        assert_eq!(decode_id_entry(&id_key, late.id, &value).unwrap(), late);
        let err = decode_id_entry(&id_key, late.id, &value[1..]).unwrap_err();
        assert!(err.to_string().contains("0x12345678/u1/p1/i"), "{err}");
    }

    #[test]
    fn index_keys_parse_back_to_their_user() {
        let key = item_key_of(b"u1\0p1", b"").unwrap();
        assert_eq!((key.user.as_str(), key.product.as_str()), ("u1", "p1"));
        assert!(item_key_of(b"u1p1", b"").is_err());
        assert!(item_key_of(b"\0p1", b"").is_err());
        assert!(item_key_of(b"u1\0", b"").is_err());
    }

    #[test]
    fn identifiers_with_separators_are_refused() {
        let key = ItemKey {
            user: "a\0b".into(),
            product: "p".into(),
        };
        assert!(matches!(item_key(&key), Err(StoreError::InvalidId(_))));
    }
}

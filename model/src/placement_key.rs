//! The seed's placement key: `int(sha1(user ++ product).hexdigest(), 16) % 10**8`.
//!
//! CRUSH takes a 32-bit input; the seed reduces the 160-bit digest modulo 10^8, which fits.
//! Keeping the exact formula keeps placements identical to the original system's.
//!
//! A user's cart index (the products the user ever added, which `list_all` reads first) is
//! stored like a cart item under reserved product ids, [`INDEX_PREFIX`] + product id, and
//! placed by the user alone: [`placement_key`] gives every index entry of a user the key
//! `create_hash(user, "")`, so one placement group holds the whole index.

use sha1::{Digest, Sha1};

const MODULUS: u64 = 100_000_000;

/// The CRUSH input `x` for a cart item (the seed's `create_hash(user_id, pid)`).
pub fn create_hash(user: &str, product: &str) -> u32 {
    let mut hasher = Sha1::new();
    hasher.update(user.as_bytes());
    hasher.update(product.as_bytes());
    let digest = hasher.finalize();
    // The digest read as one big-endian integer, reduced byte by byte (Horner's rule).
    let reduced = digest
        .iter()
        .fold(0u64, |acc, byte| (acc * 256 + u64::from(*byte)) % MODULUS);
    // `reduced < 10^8 < 2^32`, so the conversion cannot fail.
    u32::try_from(reduced).unwrap_or(u32::MAX)
}

/// First character of the product id of a cart-index entry. Catalog product ids may not
/// start with it, so an index entry never collides with a cart item.
pub const INDEX_PREFIX: char = '@';

/// Whether `product` names a cart-index entry rather than a product.
pub fn is_index_entry(product: &str) -> bool {
    product.starts_with(INDEX_PREFIX)
}

/// The product id of the index entry that records `product` in a user's cart index.
pub fn index_entry(product: &str) -> String {
    format!("{INDEX_PREFIX}{product}")
}

/// The product an index entry records, or `None` when `product` is not an index entry.
pub fn indexed_product(product: &str) -> Option<&str> {
    product.strip_prefix(INDEX_PREFIX)
}

/// The placement key of a stored cart item: the seed's `create_hash(user, product)`, or for
/// an index entry the user's index key `create_hash(user, "")`.
pub fn placement_key(user: &str, product: &str) -> u32 {
    if is_index_entry(product) {
        create_hash(user, "")
    } else {
        create_hash(user, product)
    }
}

/// The order in which data nodes keep and stream a placement group's items: by reversed
/// placement key, then user, then product. It is the byte order of their `placement` and
/// `log` keys (`reverse_bits(x) user 0x00 product`), because identifiers hold no 0x00.
pub fn placement_order<'a>(user: &'a str, product: &'a str) -> (u32, &'a str, &'a str) {
    (placement_key(user, product).reverse_bits(), user, product)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_order_is_the_byte_order_of_the_stored_keys() {
        let stored = |user: &str, product: &str| {
            let mut raw = placement_key(user, product)
                .reverse_bits()
                .to_be_bytes()
                .to_vec();
            raw.extend_from_slice(user.as_bytes());
            raw.push(0);
            raw.extend_from_slice(product.as_bytes());
            raw
        };
        let mut keys: Vec<(String, String)> = Vec::new();
        for user in ["a", "a b", "ab", "b", "u1"] {
            for product in ["1", "10", "2", "@1"] {
                keys.push((user.to_owned(), product.to_owned()));
            }
        }
        let mut by_order = keys.clone();
        by_order.sort_by(|a, b| placement_order(&a.0, &a.1).cmp(&placement_order(&b.0, &b.1)));
        let mut by_bytes = keys;
        by_bytes.sort_by_key(|(u, p)| stored(u, p));
        assert_eq!(by_order, by_bytes);
    }

    #[test]
    fn matches_the_seed_example() {
        assert_eq!(create_hash("user1", "pork"), 72_916_709);
    }

    #[test]
    fn user_and_product_are_concatenated_without_separator() {
        assert_eq!(create_hash("user1", "pork"), create_hash("user1p", "ork"));
    }

    #[test]
    fn index_entries_of_a_user_share_one_key() {
        let key = placement_key("user1", &index_entry("1"));
        assert_eq!(key, placement_key("user1", &index_entry("26")));
        assert_eq!(key, create_hash("user1", ""));
        assert_eq!(placement_key("user1", "pork"), 72_916_709);
        assert_eq!(indexed_product("@7"), Some("7"));
        assert_eq!(indexed_product("7"), None);
    }
}

//! The seed's placement key: `int(sha1(user ++ product).hexdigest(), 16) % 10**8`.
//!
//! CRUSH takes a 32-bit input; the seed reduces the 160-bit digest modulo 10^8, which fits.
//! Keeping the exact formula keeps placements identical to the original system's.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_seed_example() {
        assert_eq!(create_hash("user1", "pork"), 72_916_709);
    }

    #[test]
    fn user_and_product_are_concatenated_without_separator() {
        assert_eq!(create_hash("user1", "pork"), create_hash("user1p", "ork"));
    }
}

//! Bob Jenkins' rjenkins1 hash as CRUSH uses it (`CRUSH_HASH_RJENKINS1`): straw2 draws
//! and the reweight test in the CRUSH guest, and the placement seed of a PG ([`crate::pg`]).
//!
//! All arithmetic is wrapping `u32`; negative ids and inputs enter as their raw 32-bit
//! patterns (callers cast with `as u32`), exactly like the C `__u32` parameters.

/// CRUSH's fixed hash seed.
const SEED: u32 = 1_315_423_911;

/// Bob Jenkins' 96-bit mix of three words; `c` carries the result.
#[inline(always)]
fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    // One round per line, as in the original: subtract the other two, xor a shifted word.
    *a = a.wrapping_sub(*b).wrapping_sub(*c) ^ (*c >> 13);
    *b = b.wrapping_sub(*c).wrapping_sub(*a) ^ (*a << 8);
    *c = c.wrapping_sub(*a).wrapping_sub(*b) ^ (*b >> 13);
    *a = a.wrapping_sub(*b).wrapping_sub(*c) ^ (*c >> 12);
    *b = b.wrapping_sub(*c).wrapping_sub(*a) ^ (*a << 16);
    *c = c.wrapping_sub(*a).wrapping_sub(*b) ^ (*b >> 5);
    *a = a.wrapping_sub(*b).wrapping_sub(*c) ^ (*c >> 3);
    *b = b.wrapping_sub(*c).wrapping_sub(*a) ^ (*a << 10);
    *c = c.wrapping_sub(*a).wrapping_sub(*b) ^ (*b >> 15);
}

/// `crush_hash32_rjenkins1_2`: used by the reweight ("is out") test.
#[must_use]
pub fn hash2(a: u32, b: u32) -> u32 {
    let (mut a, mut b) = (a, b);
    let mut h = SEED ^ a ^ b;
    let (mut x, mut y) = (231_232_u32, 1_232_u32);
    mix(&mut a, &mut b, &mut h);
    mix(&mut x, &mut a, &mut h);
    mix(&mut b, &mut y, &mut h);
    h
}

/// `crush_hash32_rjenkins1_3`: used by straw2 draws.
#[must_use]
pub fn hash3(a: u32, b: u32, c: u32) -> u32 {
    let (mut a, mut b, mut c) = (a, b, c);
    let mut h = SEED ^ a ^ b ^ c;
    let (mut x, mut y) = (231_232_u32, 1_232_u32);
    mix(&mut a, &mut b, &mut h);
    mix(&mut c, &mut x, &mut h);
    mix(&mut y, &mut a, &mut h);
    mix(&mut b, &mut x, &mut h);
    mix(&mut y, &mut c, &mut h);
    h
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn spot_values_from_the_notes() {
        assert_eq!(hash2(1, 2), 3_079_532_188);
        assert_eq!(hash3(1, 2, 3), 1_935_332_395);
    }
}

//! Operation ids: deterministic for a request that carries an `Idempotency-Key`, random
//! otherwise.
//!
//! A client that retries a request with the same key gets the same [`OpId`] whichever gateway
//! the retry reaches, so replicas that already hold the operation do not apply it twice.

use cartdb_core::cart::{InputError, InputProblem, MAX_ID_BYTES, OpId, OpKind};
use sha2::{Digest, Sha256};

/// Separates these hashes from any other use of SHA-256 over the same fields; bump the
/// suffix if the derivation ever changes.
const DOMAIN: &[u8] = b"cartdb/op-id/v1";

/// The operation id of a request: derived from `idempotency_key` when there is one, random
/// otherwise.
pub fn op_id(user: &str, productid: &str, kind: OpKind, idempotency_key: Option<&str>) -> OpId {
    match idempotency_key {
        Some(key) => keyed_op_id(user, productid, kind, key),
        None => OpId(rand::random()),
    }
}

/// The first 128 bits of SHA-256 over the length-prefixed fields, so that no two distinct
/// field tuples hash the same input bytes.
pub fn keyed_op_id(user: &str, productid: &str, kind: OpKind, key: &str) -> OpId {
    let mut hasher = Sha256::new();
    hasher.update(DOMAIN);
    for field in [user, productid, kind_tag(kind), key] {
        hasher.update((field.len() as u64).to_be_bytes());
        hasher.update(field.as_bytes());
    }
    let digest = hasher.finalize();
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    OpId(u128::from_be_bytes(first))
}

fn kind_tag(kind: OpKind) -> &'static str {
    match kind {
        OpKind::Add => "add",
        OpKind::Delete => "delete",
    }
}

/// Checks a client's idempotency key: non-empty, at most [`MAX_ID_BYTES`], no control
/// characters. It is only hashed, so unlike identifiers it may contain `/`.
///
/// # Errors
/// [`InputError`] for the field `idempotency_key`.
pub fn validate_idempotency_key(key: &str) -> Result<(), InputError> {
    let problem = if key.is_empty() {
        Some(InputProblem::Empty)
    } else if key.len() > MAX_ID_BYTES {
        Some(InputProblem::TooLong {
            len: key.len(),
            max: MAX_ID_BYTES,
        })
    } else if key.chars().any(char::is_control) {
        Some(InputProblem::ForbiddenCharacter)
    } else {
        None
    };
    match problem {
        Some(problem) => Err(InputError {
            field: "idempotency_key".to_owned(),
            problem,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    #[test]
    fn the_same_key_gives_the_same_id() {
        let a = op_id("user1", "1", OpKind::Add, Some("k-1"));
        let b = op_id("user1", "1", OpKind::Add, Some("k-1"));
        assert_eq!(a, b);
    }

    #[test]
    fn every_field_changes_the_id() {
        let base = keyed_op_id("user1", "1", OpKind::Add, "k");
        assert_ne!(base, keyed_op_id("user2", "1", OpKind::Add, "k"));
        assert_ne!(base, keyed_op_id("user1", "2", OpKind::Add, "k"));
        assert_ne!(base, keyed_op_id("user1", "1", OpKind::Delete, "k"));
        assert_ne!(base, keyed_op_id("user1", "1", OpKind::Add, "k2"));
    }

    #[test]
    fn field_boundaries_matter() {
        assert_ne!(
            keyed_op_id("user1", "1", OpKind::Add, "k"),
            keyed_op_id("user", "11", OpKind::Add, "k")
        );
    }

    #[test]
    fn the_derivation_is_stable_across_builds() {
        // Both gateways (and future versions) must derive the same id from the same request.
        assert_eq!(
            keyed_op_id("user1", "1", OpKind::Add, "k").to_string(),
            "7dd326743083acc6c1416c91a9c3d0fe"
        );
    }

    #[test]
    fn requests_without_a_key_get_distinct_ids() {
        assert_ne!(
            op_id("user1", "1", OpKind::Add, None),
            op_id("user1", "1", OpKind::Add, None)
        );
    }

    #[test]
    fn keys_are_checked() {
        assert!(validate_idempotency_key("0d7c/abc").is_ok());
        assert!(validate_idempotency_key("").is_err());
        assert!(validate_idempotency_key("a\nb").is_err());
        assert!(validate_idempotency_key(&"k".repeat(MAX_ID_BYTES + 1)).is_err());
    }
}

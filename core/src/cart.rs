//! Cart items, their operation logs, products and the catalog.
//!
//! A cart item is one (user, product) pair. Its state on a replica is a versioned operation
//! log: every insert or delete is an [`Operation`] with a globally unique [`OpId`] and a
//! [`Version`] that orders it against every other operation on the same item. The quantity is
//! not stored as a counter but *folded* from the log in version order, clamping at zero, so
//! every replica that holds the same set of operations reports the same quantity no matter in
//! which order the operations arrived.

use serde::{Deserialize, Serialize};

use crate::placement_key::{INDEX_PREFIX, is_index_entry};
use crate::version::Version;

/// A CRUSH device id (`device_<id>` in the map). Data node `device_3` has id 3.
pub type DeviceId = u32;

/// Longest user id, product name or category accepted anywhere, in bytes: the longest key
/// part a store accepts.
pub const MAX_ID_BYTES: usize = 256;

/// Longest product id accepted, in bytes: one less than [`MAX_ID_BYTES`], because every
/// insert also writes the user's cart-index entry under the product id [`INDEX_PREFIX`] +
/// product id, and that key part must fit the store's limit too.
pub const MAX_PRODUCT_ID_BYTES: usize = MAX_ID_BYTES - INDEX_PREFIX.len_utf8();

/// A globally unique operation id. Retries of one client request carry the same id, so a
/// replica that already holds it does not apply it twice.
///
/// Binary formats (postcard, on the wire and on disk) carry it as a `u128`; human-readable
/// ones (JSON, in `GET /api/admin/replicas`) as 32 lowercase hex digits, because a JSON
/// number above 2^53 loses digits in most parsers (JavaScript's, and serde_json's `Value`),
/// and two ids must never compare equal by rounding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, utoipa::ToSchema)]
#[schema(value_type = String, pattern = "^[0-9a-f]{32}$")]
pub struct OpId(pub u128);

impl Serialize for OpId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            serializer.serialize_u128(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for OpId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if !deserializer.is_human_readable() {
            return u128::deserialize(deserializer).map(OpId);
        }
        let hex = String::deserialize(deserializer)?;
        if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(serde::de::Error::custom(format!(
                "operation id {hex:?} is not 32 hex digits"
            )));
        }
        u128::from_str_radix(&hex, 16)
            .map(OpId)
            .map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for OpId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// What an operation does to an item's quantity.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
pub enum OpKind {
    /// The seed's ADD: quantity + 1.
    Add,
    /// The seed's DELETE: quantity - 1, never below zero.
    Delete,
}

/// One entry of an item's operation log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Operation {
    pub id: OpId,
    pub kind: OpKind,
    pub version: Version,
}

impl Operation {
    /// The position of the operation in a log: by version, then by id, so that the order is
    /// total even for (invalid) inputs that repeat a version.
    pub fn log_order(&self) -> (Version, OpId) {
        (self.version, self.id)
    }
}

/// Identifies a cart item: whose cart and which product.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
pub struct ItemKey {
    pub user: String,
    pub product: String,
}

/// Product facts copied into every replica of an item, so a replica can answer a cart or a
/// category query without the catalog.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ItemMeta {
    pub price: u64,
    pub category: String,
}

/// The folded prefix of an operation log: the quantity after every operation up to and
/// including `version`. A fresh item has quantity 0 and no version.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
pub struct Base {
    pub qty: u64,
    pub version: Option<Version>,
}

/// One replica's state of one cart item.
///
/// Invariant: `ops` is sorted by [`Operation::log_order`], has no two entries with the same id, and holds
/// only operations newer than `base.version`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ItemState {
    pub product: String,
    pub meta: ItemMeta,
    pub base: Base,
    pub ops: Vec<Operation>,
}

impl ItemState {
    /// An item that has never seen an operation.
    pub fn new(product: impl Into<String>, meta: ItemMeta) -> Self {
        Self {
            product: product.into(),
            meta,
            base: Base::default(),
            ops: Vec::new(),
        }
    }

    /// The quantity: the base folded with every logged operation in version order.
    pub fn qty(&self) -> u64 {
        fold_qty(self.base.qty, self.ops.iter().map(|op| op.kind))
    }

    /// The newest version this replica has seen for the item.
    pub fn latest_version(&self) -> Option<Version> {
        self.ops.last().map(|op| op.version).or(self.base.version)
    }

    /// Whether the log already holds an operation with this id.
    pub fn contains(&self, id: OpId) -> bool {
        self.ops.iter().any(|op| op.id == id)
    }

    /// Whether the log holds exactly `op`: this id at this version.
    pub fn holds(&self, op: &Operation) -> bool {
        self.ops
            .binary_search_by_key(&op.log_order(), Operation::log_order)
            .is_ok_and(|at| self.ops[at] == *op)
    }

    /// Adds `op` at its version's place in the log.
    ///
    /// Returns `false`, and changes nothing, when the log already holds an operation with the
    /// same id (a retried request) or when `op` is not newer than the folded base.
    pub fn apply(&mut self, op: Operation) -> bool {
        if self.contains(op.id) || self.base.version.is_some_and(|v| op.version <= v) {
            return false;
        }
        let at = self.ops.partition_point(|o| o.log_order() < op.log_order());
        self.ops.insert(at, op);
        true
    }
}

impl ItemState {
    /// The state in brief: what a replica answers to a cart read, and what replicas compare
    /// to find out whether they agree without shipping their logs.
    pub fn summary(&self) -> ItemSummary {
        ItemSummary {
            product: self.product.clone(),
            meta: self.meta.clone(),
            base: self.base,
            qty: self.qty(),
            latest: self.latest_version(),
            ops: u32::try_from(self.ops.len()).unwrap_or(u32::MAX),
            digest: StateDigest::of(&self.base, &self.ops),
        }
    }
}

/// One replica's state of one item without its operation log.
///
/// Two replicas whose summaries are equal hold the same base and (up to a 64-bit hash
/// collision) the same operations, so a cart read that finds its replicas' summaries equal
/// needs no logs and no merge. Data nodes keep the summary up to date on every write, so
/// answering with it costs one small value per item however long the log is.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ItemSummary {
    pub product: String,
    pub meta: ItemMeta,
    pub base: Base,
    /// The folded quantity ([`ItemState::qty`]).
    pub qty: u64,
    /// [`ItemState::latest_version`].
    pub latest: Option<Version>,
    /// Operations in the log (not counting those folded into the base).
    pub ops: u32,
    pub digest: StateDigest,
}

/// An order-independent hash of a base and a set of operations: the XOR of one 64-bit hash
/// per operation and one of the base. XOR makes it incremental (adding an operation is one
/// XOR), and a log never holds an operation id twice, so no pair of entries can cancel out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StateDigest(pub u64);

impl StateDigest {
    /// The digest of `base` and `ops`, in any order.
    pub fn of<'a>(base: &Base, ops: impl IntoIterator<Item = &'a Operation>) -> Self {
        ops.into_iter()
            .fold(Self::of_base(base), |digest, op| digest.with(op))
    }

    /// The digest with `op` added (or, since XOR is its own inverse, removed).
    #[must_use]
    pub fn with(self, op: &Operation) -> Self {
        let kind = match op.kind {
            OpKind::Add => 1,
            OpKind::Delete => 2,
        };
        let words = [
            op.id.0 as u64,
            (op.id.0 >> 64) as u64,
            op.version.hlc,
            u64::from(op.version.gateway) << 8 | kind,
        ];
        Self(self.0 ^ mix_words(&words))
    }

    /// The digest with the base `from` replaced by `to`.
    #[must_use]
    pub fn rebased(self, from: &Base, to: &Base) -> Self {
        Self(self.0 ^ Self::of_base(from).0 ^ Self::of_base(to).0)
    }

    fn of_base(base: &Base) -> Self {
        let (hlc, gateway) = base
            .version
            .map_or((0, 0), |v| (v.hlc, u64::from(v.gateway) + 1));
        Self(mix_words(&[0xba5e, base.qty, hlc, gateway]))
    }
}

impl ItemSummary {
    /// This state of the item `key` as one 64-bit hash: its operations and base (the
    /// [`StateDigest`]) and its metadata. Data nodes XOR these into their digest buckets
    /// (`cartdb_model::digest_bucket`), so two replicas' buckets are equal exactly when
    /// (up to a collision) they hold the same items in the same states.
    pub fn fingerprint(&self, key: &ItemKey) -> u64 {
        mix_words(&[
            mix_bytes(key.user.as_bytes()),
            mix_bytes(key.product.as_bytes()),
            self.digest.0,
            self.meta.price,
            mix_bytes(self.meta.category.as_bytes()),
        ])
    }
}

/// [`mix_words`] over bytes, eight at a time (the last word zero-padded), and the length.
fn mix_bytes(bytes: &[u8]) -> u64 {
    let words = bytes.chunks(8).map(|chunk| {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        u64::from_le_bytes(word)
    });
    mix_iter(words.chain([bytes.len() as u64]))
}

/// A fixed 64-bit hash of a few words (splitmix64 finalisers chained). It must never change:
/// replicas built from different releases compare digests.
fn mix_words(words: &[u64]) -> u64 {
    mix_iter(words.iter().copied())
}

/// [`mix_words`] over any sequence of words, without collecting them first.
fn mix_iter(words: impl Iterator<Item = u64>) -> u64 {
    words.fold(0x9e37_79b9_7f4a_7c15_u64, |acc, w| {
        let mut z = (acc ^ w).wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

/// Folds operation kinds onto a starting quantity, clamping at zero.
pub fn fold_qty(start: u64, kinds: impl IntoIterator<Item = OpKind>) -> u64 {
    kinds.into_iter().fold(start, |qty, kind| match kind {
        OpKind::Add => qty.saturating_add(1),
        OpKind::Delete => qty.saturating_sub(1),
    })
}

/// A product of the catalog (the seed's inventory).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Product {
    /// 1-255 bytes, no `/`, no control characters, not starting with `@` (the cart-index
    /// entry `@<productid>` must fit the 256-byte key-part limit).
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = "^[^/\\u0000-\\u001F\\u007F-\\u009F]+$"
    )]
    pub productid: String,
    /// The name shoppers add to carts by.
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = "^[^/\\u0000-\\u001F\\u007F-\\u009F]+$"
    )]
    pub name: String,
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = "^[^/\\u0000-\\u001F\\u007F-\\u009F]+$"
    )]
    pub category: String,
    pub price: u64,
}

impl Product {
    /// The facts every replica of an item of this product keeps.
    pub fn meta(&self) -> ItemMeta {
        ItemMeta {
            price: self.price,
            category: self.category.clone(),
        }
    }

    /// Checks every field against the identifier rules, and the product id against every
    /// key an insert of it creates (see [`validate_product_id`]).
    ///
    /// # Errors
    /// [`InputError`] naming the first field that is empty or too long.
    pub fn validate(&self) -> Result<(), InputError> {
        validate_product_id("productid", &self.productid)?;
        validate_id("name", &self.name)?;
        validate_id("category", &self.category)
    }
}

/// One line of a shopper's cart, in the seed's cart shape.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CartLine {
    pub name: String,
    pub productid: String,
    pub price: u64,
    pub category: String,
    pub qty: u64,
}

/// A refused piece of client input: which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct InputError {
    pub field: String,
    pub problem: InputProblem,
}

/// What is wrong with a field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum InputProblem {
    #[error("must not be empty")]
    Empty,
    #[error("is {len} bytes, longer than the {max}-byte limit")]
    TooLong { len: usize, max: usize },
    #[error("must not contain '/' or control characters")]
    ForbiddenCharacter,
    /// Product ids starting with [`INDEX_PREFIX`] name cart-index entries.
    #[error(
        "must not start with '{}' (reserved for cart-index entries)",
        INDEX_PREFIX
    )]
    ReservedPrefix,
}

/// Checks an identifier (user id, product id or name, category): non-empty, at most
/// [`MAX_ID_BYTES`], and free of `/` and control characters, because identifiers become
/// storage key parts (0x00 separates them) and file-system-safe names in tools' output.
///
/// # Errors
/// [`InputError`] naming `field` and the problem.
pub fn validate_id(field: &str, value: &str) -> Result<(), InputError> {
    let problem = if value.is_empty() {
        Some(InputProblem::Empty)
    } else if value.len() > MAX_ID_BYTES {
        Some(InputProblem::TooLong {
            len: value.len(),
            max: MAX_ID_BYTES,
        })
    } else if value.chars().any(|c| c == '/' || c.is_control()) {
        Some(InputProblem::ForbiddenCharacter)
    } else {
        None
    };
    match problem {
        Some(problem) => Err(InputError {
            field: field.to_owned(),
            problem,
        }),
        None => Ok(()),
    }
}

/// Checks a catalog product id: an identifier of at most [`MAX_PRODUCT_ID_BYTES`] that does
/// not start with [`INDEX_PREFIX`]. Every key an insert creates is then within the limits
/// the stores check: the item `(user, productid)`, its category entry, and the user's
/// cart-index entry `(user, @productid)`. Checked once, before anything is written.
///
/// # Errors
/// [`InputError`] naming `field` and the problem.
pub fn validate_product_id(field: &str, value: &str) -> Result<(), InputError> {
    validate_id(field, value)?;
    let problem = if value.len() > MAX_PRODUCT_ID_BYTES {
        InputProblem::TooLong {
            len: value.len(),
            max: MAX_PRODUCT_ID_BYTES,
        }
    } else if is_index_entry(value) {
        InputProblem::ReservedPrefix
    } else {
        return Ok(());
    };
    Err(InputError {
        field: field.to_owned(),
        problem,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_product_id_leaves_room_for_its_cart_index_key() {
        let longest = "p".repeat(MAX_PRODUCT_ID_BYTES);
        assert!(validate_product_id("productid", &longest).is_ok());
        let index_key = crate::placement_key::index_entry(&longest);
        assert!(validate_id("productid", &index_key).is_ok());
        let refused = validate_product_id("productid", &format!("{longest}p")).unwrap_err();
        assert_eq!(refused.field, "productid");
        assert_eq!(
            refused.problem,
            InputProblem::TooLong {
                len: MAX_PRODUCT_ID_BYTES + 1,
                max: MAX_PRODUCT_ID_BYTES
            }
        );
        assert!(validate_product_id("productid", "@1").is_err());
    }

    #[test]
    fn op_ids_are_hex_in_json_and_integers_in_postcard() {
        let id = OpId(u128::MAX - 5);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"fffffffffffffffffffffffffffffffa\"");
        assert_eq!(serde_json::from_str::<OpId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<OpId>("\"xyz\"").is_err());
        assert!(serde_json::from_str::<OpId>("7").is_err());
        let bytes = postcard::to_stdvec(&id).unwrap();
        assert_eq!(postcard::from_bytes::<OpId>(&bytes).unwrap(), id);
        assert_eq!(bytes, postcard::to_stdvec(&id.0).unwrap());
    }

    fn op(id: u128, kind: OpKind, hlc: u64) -> Operation {
        Operation {
            id: OpId(id),
            kind,
            version: Version { hlc, gateway: 1 },
        }
    }

    fn item() -> ItemState {
        ItemState::new(
            "1",
            ItemMeta {
                price: 61,
                category: "1".into(),
            },
        )
    }

    #[test]
    fn a_fingerprint_tells_states_keys_and_metadata_apart() {
        let key = |user: &str, product: &str| ItemKey {
            user: user.into(),
            product: product.into(),
        };
        let mut a = item();
        a.apply(op(1, OpKind::Add, 10));
        let mut b = item();
        b.apply(op(1, OpKind::Add, 10));
        let print = |state: &ItemState, k: &ItemKey| state.summary().fingerprint(k);
        assert_eq!(print(&a, &key("u", "1")), print(&b, &key("u", "1")));
        b.apply(op(2, OpKind::Add, 20));
        assert_ne!(print(&a, &key("u", "1")), print(&b, &key("u", "1")));
        assert_ne!(print(&a, &key("u", "1")), print(&a, &key("v", "1")));
        // The split between user and product counts.
        assert_ne!(print(&a, &key("ab", "c")), print(&a, &key("a", "bc")));
        let mut priced = a.clone();
        priced.meta.price += 1;
        assert_ne!(print(&a, &key("u", "1")), print(&priced, &key("u", "1")));
    }

    #[test]
    fn quantity_folds_in_version_order_whatever_the_arrival_order() {
        let mut a = item();
        let mut b = item();
        let ops = [
            op(1, OpKind::Add, 10),
            op(2, OpKind::Delete, 20),
            op(3, OpKind::Delete, 30),
            op(4, OpKind::Add, 40),
        ];
        for o in ops {
            assert!(a.apply(o));
        }
        for o in ops.iter().rev() {
            assert!(b.apply(*o));
        }
        assert_eq!(a, b);
        // add, delete, delete (clamped at 0), add
        assert_eq!(a.qty(), 1);
    }

    #[test]
    fn a_retried_operation_is_not_applied_twice() {
        let mut a = item();
        assert!(a.apply(op(7, OpKind::Add, 10)));
        assert!(!a.apply(op(7, OpKind::Add, 99)));
        assert_eq!(a.qty(), 1);
        assert_eq!(a.ops.len(), 1);
    }

    #[test]
    fn operations_older_than_the_base_are_refused() {
        let mut a = item();
        a.base = Base {
            qty: 2,
            version: Some(Version {
                hlc: 50,
                gateway: 1,
            }),
        };
        assert!(!a.apply(op(1, OpKind::Delete, 40)));
        assert!(a.apply(op(2, OpKind::Delete, 60)));
        assert_eq!(a.qty(), 1);
    }

    #[test]
    fn digests_ignore_arrival_order_and_follow_every_change() {
        let mut a = item();
        let mut b = item();
        let ops = [op(1, OpKind::Add, 10), op(2, OpKind::Delete, 20)];
        for o in ops {
            a.apply(o);
        }
        for o in ops.iter().rev() {
            b.apply(*o);
        }
        assert_eq!(a.summary(), b.summary());
        let before = a.summary().digest;
        let third = op(3, OpKind::Add, 30);
        a.apply(third);
        assert_eq!(a.summary().digest, before.with(&third), "incremental");
        assert_ne!(a.summary().digest, before);
        let mut other_kind = b.clone();
        other_kind.apply(op(3, OpKind::Delete, 30));
        assert_ne!(other_kind.summary().digest, a.summary().digest);
        let rebased = Base {
            qty: 1,
            version: Some(Version {
                hlc: 20,
                gateway: 1,
            }),
        };
        let mut folded = a.clone();
        folded.base = rebased;
        folded.ops.retain(|o| o.version.hlc > 20);
        let expected = a.summary().digest.with(&ops[0]).with(&ops[1]);
        assert_eq!(
            folded.summary().digest,
            expected.rebased(&Base::default(), &rebased)
        );
    }

    #[test]
    fn identifiers_are_checked() {
        assert!(validate_id("userid", "user1").is_ok());
        assert_eq!(
            validate_id("userid", "").unwrap_err().problem,
            InputProblem::Empty
        );
        assert!(matches!(
            validate_id("userid", &"x".repeat(257)).unwrap_err().problem,
            InputProblem::TooLong { len: 257, .. }
        ));
        assert_eq!(
            validate_id("item_name", "a/b").unwrap_err().problem,
            InputProblem::ForbiddenCharacter
        );
    }
}

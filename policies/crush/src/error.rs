//! Errors for maps, rules and reweights: a map is untrusted input, so every problem is a
//! typed, located error instead of a panic.
//!
//! `at` fields are JSON locators such as `trees[0].children[2]` or `rule "data" step 1`.

use thiserror::Error;

/// Why a map, a rule selection or a reweight list was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum MapError {
    /// The text is not JSON at all.
    #[error("map is not valid JSON: {detail}")]
    Json { detail: String },
    /// A value has the wrong JSON type.
    #[error("{at} must be {expected}")]
    WrongType { at: String, expected: &'static str },
    /// A mandatory field is absent.
    #[error("{at} lacks the mandatory field \"{field}\"")]
    MissingField { at: String, field: &'static str },
    /// A field this format does not know (refused so typos do not silently change placement).
    #[error("{at} has an unknown field \"{field}\"")]
    UnknownField { at: String, field: String },
    /// A python-crush feature this policy does not implement.
    #[error("{at}: {feature} is not supported by this policy")]
    Unsupported { at: String, feature: &'static str },
    /// A bucket uses another algorithm than straw2.
    #[error("{at}: bucket algorithm \"{algorithm}\" is not supported (only straw2)")]
    UnsupportedAlgorithm { at: String, algorithm: String },
    /// An id outside the allowed range (devices `0..0x7ffffffe`, buckets negative).
    #[error("{at}: id {id} is out of range ({expected})")]
    BadId {
        at: String,
        id: i64,
        expected: &'static str,
    },
    /// Two buckets share an id.
    #[error("{at}: bucket id {id} is already used by bucket \"{other}\"")]
    DuplicateBucketId { at: String, id: i32, other: String },
    /// One device id appears with two different names.
    #[error("{at}: device id {id} is named both \"{first}\" and \"{second}\"")]
    DeviceNameConflict {
        at: String,
        id: i32,
        first: String,
        second: String,
    },
    /// Two different items share a name.
    #[error("{at}: name \"{name}\" is already used by another item")]
    DuplicateName { at: String, name: String },
    /// A device (id >= 0) has children.
    #[error("{at}: device {id} cannot have children")]
    DeviceWithChildren { at: String, id: i32 },
    /// A weight is not a 16.16 fixed-point integer in `0..=u32::MAX`.
    #[error(
        "{at}: weight {value} is not an integer in 0..=4294967295 (16.16 fixed point, 65536 = 1.0)"
    )]
    BadWeight { at: String, value: String },
    /// The children of a bucket weigh more than `u32::MAX` in total.
    #[error("{at}: the sum of the children's weights overflows 32 bits")]
    WeightOverflow { at: String },
    /// An integer argument or tunable outside its range.
    #[error("{at}: {value} is out of range ({expected})")]
    OutOfRange {
        at: String,
        value: String,
        expected: &'static str,
    },
    /// A rule step with an unknown operation.
    #[error("{at}: unknown step \"{op}\"")]
    UnknownStep { at: String, op: String },
    /// A rule step whose shape is wrong.
    #[error("{at}: expected {expected}")]
    BadStep { at: String, expected: &'static str },
    /// `take` names no bucket or device of the map.
    #[error("{at}: no bucket or device is named \"{name}\"")]
    UnknownItem { at: String, name: String },
    /// A choose step names a type no bucket has.
    #[error("{at}: no bucket has type \"{name}\" (known types: {known}; use 0 for devices)")]
    UnknownType {
        at: String,
        name: String,
        known: String,
    },
    /// An unknown tunable.
    #[error("tunables has an unknown tunable \"{name}\"")]
    UnknownTunable { name: String },
    /// The requested rule does not exist.
    #[error("the map has no rule \"{name}\" (rules: {available})")]
    RuleNotFound { name: String, available: String },
    /// No rule was named and the map does not have exactly one.
    #[error("no rule given and the map has {count} rules ({available}); name one")]
    AmbiguousRule { count: usize, available: String },
    /// A reweight names a bucket (negative id) instead of a device.
    #[error("reweight of item {device}: only devices (id >= 0) can be reweighted")]
    ReweightNotDevice { device: i32 },
}

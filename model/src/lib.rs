//! cartdb's pure model: arithmetic every role must compute identically, with no IO, no async
//! runtime and no ZooKeeper, so that the gateway, the data nodes, the CLI and the WebAssembly
//! guests share one definition instead of restating it.
//!
//! # Layout
//! - [`placement_key`]: the seed's sha1 placement key (`create_hash`) and the key of a
//!   user's cart index.
//! - [`rjenkins`]: Bob Jenkins' rjenkins1 hash as CRUSH and Ceph use it.
//! - [`pg`]: Ceph's object -> placement group -> CRUSH input arithmetic.
//! - [`digest_bucket`]: the fixed sub-ranges of a PG that anti-entropy compares by digest.
//! - [`pg_table`]: the up and past sets of every placement group, and how past sets change.

pub mod digest_bucket;
pub mod pg;
pub mod pg_table;
pub mod placement_key;
pub mod rjenkins;

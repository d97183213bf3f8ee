//! Paths of cartdb's WebAssembly policy components, built by this crate's build script.
//!
//! The build script compiles each guest crate for `wasm32-unknown-unknown` (a nested
//! `cargo build` with its own target directory, so it never waits on the outer build's
//! lock), turns the core module into a component with `wit-component`, checks that the
//! component imports nothing, and writes it to `<target>/policies/<name>.wasm` (`<target>`
//! is `$CARGO_TARGET_DIR` or `<workspace>/target`): a stable path for scripts.
//!
//! # Layout
//! - [`CRUSH_POLICY_WASM`]: the reference CRUSH placement policy.
//! - [`MERGE_POLICY_WASM`]: the reference merge policy (the gateway's built-in merge).
//! - [`MERGE_LWW_POLICY_WASM`]: an example merge policy that breaks the merge laws.
//! - [`test_guests`]: deliberately misbehaving components for host tests.

include!(concat!(env!("OUT_DIR"), "/policies.rs"));

/// Deliberately misbehaving components, for tests of the host's defences.
///
/// All are tiny hand-written core modules (WAT) given a world's component metadata: the
/// placement ones (whose `load` succeeds unless said otherwise) `placement-policy`, the
/// `MERGE_*` ones `merge-policy`.
pub mod test_guests {
    include!(concat!(env!("OUT_DIR"), "/test_guests.rs"));
}

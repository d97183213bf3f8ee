//! What the request path asks of the coordination service, behind a narrow trait.
//!
//! ZooKeeper (through [`Coordinator`]) is the real implementation. No cart request reaches
//! it: only catalog changes, and, from the anti-entropy sweep's leader, clearing the past
//! sets of clean placement groups (a few times a minute at most, and only while some PG has
//! one). Everything a request needs
//! (catalog, membership, map) is read from local copies that the coordinator keeps fresh.

use std::sync::Arc;

use cartdb_core::cart::Product;
use cartdb_core::catalog::Catalog;
use cartdb_core::coord::policy_store::{PolicyKind, StoredPolicy};
use cartdb_core::coord::{CoordError, Coordinator, Placement};
use futures::FutureExt;
use futures::future::BoxFuture;

/// The coordination calls made while serving requests.
pub trait Coordination: Send + Sync + 'static {
    /// Whether the ZooKeeper session is established and connected: the sweep leads only
    /// while it is (see [`Coordinator::is_connected`]).
    fn is_connected(&self) -> bool;

    /// See [`Coordinator::set_placement`].
    ///
    /// # Errors
    /// [`CoordError`] when the map could not be changed.
    fn set_placement(
        &self,
        expected_epoch: u64,
        placement: Placement,
    ) -> BoxFuture<'_, Result<bool, CoordError>>;

    /// Adds `product` to the catalog or replaces the product with its id; returns the new
    /// catalog.
    ///
    /// # Errors
    /// [`CoordError::InvalidCatalog`] when the product does not fit the catalog (its name
    /// belongs to another product), other [`CoordError`]s when the catalog is unreachable.
    fn upsert_product(&self, product: Product) -> BoxFuture<'_, Result<Arc<Catalog>, CoordError>>;

    /// See [`Coordinator::store_policy`] (a deploy's upload).
    ///
    /// # Errors
    /// As [`Coordinator::store_policy`].
    fn store_policy<'a>(
        &'a self,
        kind: PolicyKind,
        name: &'a str,
        bytes: &'a [u8],
        deployed_by: &'a str,
    ) -> BoxFuture<'a, Result<String, CoordError>>;

    /// See [`Coordinator::prune_policies`] (the uploads no map names, before a new one).
    ///
    /// # Errors
    /// As [`Coordinator::prune_policies`].
    fn prune_policies<'a>(&'a self, keep: &'a [String])
    -> BoxFuture<'a, Result<usize, CoordError>>;

    /// See [`Coordinator::fetch_policy`] (a policy the map names, not yet compiled here).
    ///
    /// # Errors
    /// As [`Coordinator::fetch_policy`].
    fn fetch_policy<'a>(
        &'a self,
        sha256: &'a str,
    ) -> BoxFuture<'a, Result<StoredPolicy, CoordError>>;
}

impl Coordination for Coordinator {
    fn is_connected(&self) -> bool {
        Coordinator::is_connected(self)
    }

    fn set_placement(
        &self,
        expected_epoch: u64,
        placement: Placement,
    ) -> BoxFuture<'_, Result<bool, CoordError>> {
        Coordinator::set_placement(self, expected_epoch, placement).boxed()
    }

    fn upsert_product(&self, product: Product) -> BoxFuture<'_, Result<Arc<Catalog>, CoordError>> {
        Coordinator::upsert_product(self, product).boxed()
    }

    fn store_policy<'a>(
        &'a self,
        kind: PolicyKind,
        name: &'a str,
        bytes: &'a [u8],
        deployed_by: &'a str,
    ) -> BoxFuture<'a, Result<String, CoordError>> {
        let now = cartdb_core::version::wall_clock_millis();
        Coordinator::store_policy(self, kind, name, bytes, deployed_by, now).boxed()
    }

    fn fetch_policy<'a>(
        &'a self,
        sha256: &'a str,
    ) -> BoxFuture<'a, Result<StoredPolicy, CoordError>> {
        Coordinator::fetch_policy(self, sha256).boxed()
    }

    fn prune_policies<'a>(
        &'a self,
        keep: &'a [String],
    ) -> BoxFuture<'a, Result<usize, CoordError>> {
        Coordinator::prune_policies(self, keep).boxed()
    }
}

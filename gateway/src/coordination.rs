//! What the request path asks of the coordination service, behind a narrow trait.
//!
//! ZooKeeper (through [`Coordinator`]) is the real implementation. Only two requests ever
//! reach it, both rare: recording the replicas of an item the directory does not know yet,
//! and changing the catalog. Everything else a request needs (catalog, directory,
//! membership, map) is read from local copies that the coordinator keeps fresh.

use std::sync::Arc;

use cartdb_core::cart::{DeviceId, ItemKey, Product};
use cartdb_core::catalog::Catalog;
use cartdb_core::coord::{CoordError, Coordinator};
use cartdb_core::wire::SweepStatus;
use futures::FutureExt;
use futures::future::BoxFuture;

/// The coordination calls made while serving requests.
pub trait Coordination: Send + Sync + 'static {
    /// Records in the directory that `devices` hold replicas of `key`.
    ///
    /// # Errors
    /// [`CoordError`] when the record could not be made.
    fn record_replicas<'a>(
        &'a self,
        key: &'a ItemKey,
        devices: &'a [DeviceId],
    ) -> BoxFuture<'a, Result<(), CoordError>>;

    /// Adds `product` to the catalog or replaces the product with its id; returns the new
    /// catalog.
    ///
    /// # Errors
    /// [`CoordError::InvalidCatalog`] when the product does not fit the catalog (its name
    /// belongs to another product), other [`CoordError`]s when the catalog is unreachable.
    fn upsert_product(&self, product: Product) -> BoxFuture<'_, Result<Arc<Catalog>, CoordError>>;

    /// See [`Coordinator::publish_sweep`].
    fn publish_sweep<'a>(
        &'a self,
        status: &'a SweepStatus,
    ) -> BoxFuture<'a, Result<(), CoordError>>;

    /// See [`Coordinator::read_sweep`].
    fn read_sweep(&self) -> BoxFuture<'_, Result<Option<SweepStatus>, CoordError>>;
}

impl Coordination for Coordinator {
    fn record_replicas<'a>(
        &'a self,
        key: &'a ItemKey,
        devices: &'a [DeviceId],
    ) -> BoxFuture<'a, Result<(), CoordError>> {
        Coordinator::record_replicas(self, key, devices).boxed()
    }

    fn upsert_product(&self, product: Product) -> BoxFuture<'_, Result<Arc<Catalog>, CoordError>> {
        Coordinator::upsert_product(self, product).boxed()
    }

    fn publish_sweep<'a>(
        &'a self,
        status: &'a SweepStatus,
    ) -> BoxFuture<'a, Result<(), CoordError>> {
        Coordinator::publish_sweep(self, status).boxed()
    }

    fn read_sweep(&self) -> BoxFuture<'_, Result<Option<SweepStatus>, CoordError>> {
        Coordinator::read_sweep(self).boxed()
    }
}

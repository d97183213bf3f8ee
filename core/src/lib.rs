//! Shared core of cartdb: what every process role (data node, gateway, API server, CLI) agrees on.
//!
//! # Layout
//! - [`cart`]: cart items, operations, products and the catalog.
//! - [`catalog`]: the validated product catalog and its JSON form.
//! - [`version`]: operation versions and the hybrid logical clock that issues them.
//! - [`placement_key`], [`pg`]: re-exported from `cartdb-model` (the seed's sha1 placement key,
//!   placement groups).
//! - [`merge`]: the built-in merge of replica states of one cart item.
//! - [`wire`]: the request/response enums of the gateway and data node protocols.
//! - [`rpc`]: length-delimited framing with request ids, a multiplexed client and a server loop.
//! - [`coord`]: ZooKeeper coordination: membership, the cluster map (PGs included) and the catalog.
//! - [`config`]: configuration pieces shared by several binaries.
//! - [`connection_slots`]: the connection cap of every server (RPC and HTTP).
//! - [`telemetry`]: the Prometheus recorder and the `/metrics` endpoint every process serves.

pub mod cart;
pub mod catalog;
pub mod config;
pub mod connection_slots;
pub mod coord;
pub mod merge;
pub use cartdb_model::{digest_bucket, pg, pg_table, placement_key};
pub mod rpc;
pub mod telemetry;
pub mod version;
pub mod wire;

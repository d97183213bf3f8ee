//! `cartdb`: the operator CLI.
//!
//! # Layout
//! - `policy`: `cartdb policy place|verify|verify-merge`, running policy components.
//! - `policy_deploy`: `cartdb policy deploy|rollback|history`, the running cluster's policies.
//! - `bench`: `cartdb bench`, load and latency measurement of a running API server.
//! - `footprint`: the RSS of the cluster's processes and ZooKeeper's znode count, after a
//!   bench run.
//! - `status`: `cartdb status`, the cluster as the API server reports it.
//! - `directory`: `cartdb locate` and `cartdb device-items`, the seed's two directory views.
//! - `category`, `product`, `replicas`, `traffic`: the other admin endpoints, one command
//!   each (`cartdb category`, `cartdb product list|set`, `cartdb replicas`, `cartdb traffic`).
//! - `api_client`: the GET or POST every command that asks the API server makes.
//!
//! Every command that asks the API server takes `--api` (`CARTDB_API`) and `--admin-token`
//! (`CARTDB_ADMIN_TOKEN`), and `--json` to print the API's document instead of text.
//!
//! Adding a subcommand: one [`Command`] variant and one arm in [`run`].

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod api_client;
mod bench;
mod category;
mod device;
mod directory;
mod footprint;
mod map;
mod policy;
mod policy_deploy;
mod product;
mod replicas;
mod status;
mod traffic;

/// The cartdb operator CLI.
#[derive(Debug, Parser)]
#[command(name = "cartdb", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run policy components (place keys, verify placement against conformance vectors,
    /// check a merge policy against the merge laws), and deploy, roll back and list the
    /// running cluster's policies.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Drive a running API server with a cart-like load and report throughput and latency.
    Bench(bench::BenchArgs),
    /// Show devices, gateways, placement groups, policies, read repair, compaction and
    /// anti-entropy progress.
    Status(status::StatusArgs),
    /// Show where a user's items live: USERID/PRODUCTID/DEVICEID, with each item's
    /// placement group and which devices are in its up set (current) or past set (admin).
    Locate(directory::LocateArgs),
    /// List what one device holds, from its data node's own store:
    /// DEVICEID/USERID/PRODUCTID (admin).
    DeviceItems(directory::DeviceItemsArgs),
    /// List the users holding an item of a category (admin).
    Category(category::CategoryArgs),
    /// List the catalog, or add or replace a product (admin).
    #[command(subcommand)]
    Product(product::ProductCommand),
    /// Show every live replica's own state of a user's items, to check they agree (admin).
    Replicas(replicas::ReplicasArgs),
    /// Show the API server's cart operations per second and latency over the last ten
    /// minutes (admin).
    Traffic(traffic::TrafficArgs),
    /// Change the devices of the map: add, remove (drain first), out, in, reweight (admin).
    #[command(subcommand)]
    Device(device::DeviceCommand),
    /// Set or clear cluster flags: noout, nobackfill, norebalance (admin).
    #[command(subcommand)]
    Flags(device::FlagsCommand),
    /// Set or unset the anti-entropy sweep's pace (backfill, handback, repair) for every
    /// gateway, at runtime (admin).
    #[command(subcommand)]
    Pace(device::PaceCommand),
    /// Preview map changes before making them (admin).
    #[command(subcommand)]
    Map(MapCommand),
}

/// `cartdb map ...`.
#[derive(Debug, Subcommand)]
enum MapCommand {
    /// What a change would move: share of PGs and items, PGs per device before and after.
    Preview(map::PreviewArgs),
    /// Every placement group's up set (primary first) and past set.
    Pgs(map::PgsArgs),
}

/// Runs one command; `Ok` carries the exit code of a command that ran to its end.
fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Policy(command) => policy::run(command),
        Command::Bench(args) => bench::run(args),
        Command::Status(args) => status::run(args),
        Command::Locate(args) => directory::locate(args),
        Command::DeviceItems(args) => directory::device_items(args),
        Command::Category(args) => category::run(args).map(|()| ExitCode::SUCCESS),
        Command::Product(command) => product::run(command).map(|()| ExitCode::SUCCESS),
        Command::Replicas(args) => replicas::run(args).map(|()| ExitCode::SUCCESS),
        Command::Traffic(args) => traffic::run(args).map(|()| ExitCode::SUCCESS),
        Command::Device(command) => device::run(command).map(|()| ExitCode::SUCCESS),
        Command::Flags(command) => device::run_flags(command).map(|()| ExitCode::SUCCESS),
        Command::Pace(command) => device::run_pace(command).map(|()| ExitCode::SUCCESS),
        Command::Map(MapCommand::Preview(args)) => map::preview(args).map(|()| ExitCode::SUCCESS),
        Command::Map(MapCommand::Pgs(args)) => map::pgs(args).map(|()| ExitCode::SUCCESS),
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

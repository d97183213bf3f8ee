//! `cartdb`: the operator CLI.
//!
//! # Layout
//! - `policy`: `cartdb policy place|verify|verify-merge`, running policy components.
//! - `bench`: `cartdb bench`, load and latency measurement of a running API server.
//! - `footprint`: the RSS of the cluster's processes and ZooKeeper's znode count, after a
//!   bench run.
//! - `status`: `cartdb status`, the cluster as the API server reports it.
//! - `directory`: `cartdb locate` and `cartdb device-items`, the seed's two directory views.
//! - `api_client`: the GET every command that reads the API server makes.
//!
//! Adding a subcommand: one [`Command`] variant and one arm in [`run`].

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod api_client;
mod bench;
mod directory;
mod footprint;
mod policy;
mod status;

/// The cartdb operator CLI.
#[derive(Debug, Parser)]
#[command(name = "cartdb", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run policy components: place keys, verify placement against conformance vectors, or
    /// check a merge policy against the merge laws.
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
}

/// Runs one command; `Ok` carries the exit code of a command that ran to its end.
fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Policy(command) => policy::run(command),
        Command::Bench(args) => bench::run(args),
        Command::Status(args) => status::run(args),
        Command::Locate(args) => directory::locate(args),
        Command::DeviceItems(args) => directory::device_items(args),
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

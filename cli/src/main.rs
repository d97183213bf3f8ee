//! `cartdb`: the operator CLI.
//!
//! # Layout
//! - `policy`: `cartdb policy place|verify|verify-merge`, running policy components.
//! - `bench`: `cartdb bench`, load and latency measurement of a running API server.
//! - `status`: `cartdb status`, the cluster as the API server reports it.
//!
//! Adding a subcommand: one [`Command`] variant and one arm in [`run`].

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
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
    /// Show devices, gateways, policies, read repair, compaction and anti-entropy progress.
    Status(status::StatusArgs),
}

/// Runs one command; `Ok` carries the exit code of a command that ran to its end.
fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Policy(command) => policy::run(command),
        Command::Bench(args) => bench::run(args),
        Command::Status(args) => status::run(args),
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

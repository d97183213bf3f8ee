//! `cartdb device add|remove|out|in|reweight`, `cartdb flags set|unset` and `cartdb pace
//! set|unset`: operator changes of the cluster map (admin), each printed with what it moves
//! (see [`crate::map`]).
//!
//! `device remove` is the long one, Cassandra's `nodetool decommission`: it marks the device
//! out, waits while backfill copies its placement groups to their new devices and hands its
//! copies back, printing progress, and removes it from the map only once no PG's up or past
//! set names it.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cartdb_core::cart::DeviceId;
use cartdb_core::coord::FULL_WEIGHT;
use cartdb_core::wire::{ClusterStatus, DeviceStatus};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::api_client::{ApiArgs, get_json};
use crate::map::{add_device, fixed_point, print_answer, reweight, send};

/// `cartdb device ...`.
#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Add a device to the map under a host (start its data node with the same --device-id).
    Add(AddArgs),
    /// Drain a device (mark it out, wait for backfill and handback), then remove it from
    /// the map.
    Remove(RemoveArgs),
    /// Mark a device out (reweight 0): its PGs move to other devices. It stays out until
    /// marked in, even if it is up.
    Out(OneDevice),
    /// Mark a device in (reweight 1).
    In(OneDevice),
    /// Set a device's reweight between 0 (out) and 1 (fully in).
    Reweight(ReweightArgs),
}

/// Arguments naming one device.
#[derive(Debug, Args)]
pub struct OneDevice {
    /// The device id.
    device: DeviceId,
    #[command(flatten)]
    api: ApiArgs,
    /// Print the API's JSON answer.
    #[arg(long)]
    json: bool,
}

/// Arguments of `cartdb device add`.
#[derive(Debug, Args)]
pub struct AddArgs {
    /// The new device's id (unused in the map).
    #[arg(long)]
    id: DeviceId,
    /// Its name (default `device_<id>`).
    #[arg(long)]
    name: Option<String>,
    /// The host bucket it goes under; created under the map's first root if missing.
    #[arg(long)]
    host: String,
    /// Its CRUSH weight, as a decimal (1.0 = one standard device).
    #[arg(long, default_value = "1.0")]
    weight: String,
    #[command(flatten)]
    api: ApiArgs,
    /// Print the API's JSON answer.
    #[arg(long)]
    json: bool,
}

/// Arguments of `cartdb device reweight`.
#[derive(Debug, Args)]
pub struct ReweightArgs {
    /// The device id.
    device: DeviceId,
    /// Between 0 (out) and 1 (fully in).
    weight: String,
    #[command(flatten)]
    api: ApiArgs,
    /// Print the API's JSON answer.
    #[arg(long)]
    json: bool,
}

/// Arguments of `cartdb device remove`.
#[derive(Debug, Args)]
pub struct RemoveArgs {
    /// The device id.
    device: DeviceId,
    /// How long to wait for the drain: `90s`, `30m`.
    #[arg(long, default_value = "30m", value_parser = crate::bench::parse_duration)]
    timeout: Duration,
    #[command(flatten)]
    api: ApiArgs,
}

/// `cartdb flags ...`: cluster flags (Ceph's `ceph osd set|unset`).
#[derive(Debug, Subcommand)]
pub enum FlagsCommand {
    /// Set a flag: `noout` (devices that go down are not marked out), `nobackfill` (the
    /// sweep moves no data), `norebalance` (it moves only PGs that lack a copy).
    Set(FlagArgs),
    /// Clear a flag.
    Unset(FlagArgs),
}

/// Arguments naming one flag.
#[derive(Debug, Args)]
pub struct FlagArgs {
    /// The flag: `noout`, `nobackfill` or `norebalance`.
    flag: String,
    #[command(flatten)]
    api: ApiArgs,
}

/// `cartdb pace ...`: the anti-entropy sweep's pace for every gateway, at runtime (Ceph's
/// `osd_recovery_max_active`-style knob, kept in the cluster map).
#[derive(Debug, Subcommand)]
pub enum PaceCommand {
    /// Stream at most this many items per second (1 to 10,000,000), on whichever gateway
    /// leads the sweep, until unset.
    Set(PaceArgs),
    /// Return every gateway to its own `--anti-entropy-items-per-sec`.
    Unset(ApiOnly),
}

/// Arguments of `cartdb pace set`.
#[derive(Debug, Args)]
pub struct PaceArgs {
    /// Items streamed per second.
    items_per_sec: u32,
    #[command(flatten)]
    api: ApiArgs,
}

/// Only the API server to talk to.
#[derive(Debug, Args)]
pub struct ApiOnly {
    #[command(flatten)]
    api: ApiArgs,
}

/// Runs a `pace` subcommand.
///
/// # Errors
/// The API refusing the change (naming the field and why).
pub fn run_pace(command: PaceCommand) -> anyhow::Result<()> {
    let (api, items_per_sec) = match &command {
        PaceCommand::Set(args) => (&args.api, Some(args.items_per_sec)),
        PaceCommand::Unset(args) => (&args.api, None),
    };
    send(
        api,
        true,
        vec![json!({"change": "pace", "items_per_sec": items_per_sec})],
    )?;
    match items_per_sec {
        Some(pace) => println!("anti-entropy pace set to {pace} items/s"),
        None => println!("anti-entropy pace unset: each gateway's --anti-entropy-items-per-sec"),
    }
    Ok(())
}

/// How often `device remove` looks at the drain.
const POLL_EVERY: Duration = Duration::from_secs(1);

/// Runs a `device` subcommand.
///
/// # Errors
/// A bad weight, the API refusing the change (naming why), or a drain that did not finish
/// within `--timeout`.
pub fn run(command: DeviceCommand) -> anyhow::Result<()> {
    match command {
        DeviceCommand::Add(args) => {
            let weight = fixed_point(&args.weight, 65_535.0).map_err(anyhow::Error::msg)?;
            if weight == 0 {
                bail!("--weight must be above 0");
            }
            let name = args.name.unwrap_or_else(|| format!("device_{}", args.id));
            let change = add_device(args.id, &name, &args.host, weight);
            let answer = send(&args.api, true, vec![change])?;
            print_answer(&answer, args.json, "added")
        }
        DeviceCommand::Out(d) => change(&d.api, d.json, reweight(d.device, 0)),
        DeviceCommand::In(d) => change(&d.api, d.json, reweight(d.device, FULL_WEIGHT)),
        DeviceCommand::Reweight(args) => {
            let weight = fixed_point(&args.weight, 1.0).map_err(anyhow::Error::msg)?;
            change(&args.api, args.json, reweight(args.device, weight))
        }
        DeviceCommand::Remove(args) => remove(&args),
    }
}

/// Runs a `flags` subcommand.
///
/// # Errors
/// The API refusing the flag (an unknown one is named).
pub fn run_flags(command: FlagsCommand) -> anyhow::Result<()> {
    let (args, on) = match command {
        FlagsCommand::Set(args) => (args, true),
        FlagsCommand::Unset(args) => (args, false),
    };
    send(
        &args.api,
        true,
        vec![json!({"change": "flag", "flag": args.flag, "on": on})],
    )?;
    let verb = if on { "set" } else { "unset" };
    println!("{} {verb}", args.flag);
    Ok(())
}

fn change(api: &ApiArgs, json: bool, change: Value) -> anyhow::Result<()> {
    let answer = send(api, true, vec![change])?;
    print_answer(&answer, json, "changed")
}

fn status(api: &ApiArgs) -> anyhow::Result<ClusterStatus> {
    let document = get_json(api, "/api/cluster", &[])?;
    serde_json::from_value(document)
        .context("GET /api/cluster answered a document this cartdb does not understand")
}

fn device_of(status: &ClusterStatus, id: DeviceId) -> Option<&DeviceStatus> {
    status.devices.iter().find(|d| d.id == id)
}

/// Marks the device out, waits until nothing depends on it, and removes it.
fn remove(args: &RemoveArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let id = args.device;
    let first = status(&args.api)?;
    let Some(device) = device_of(&first, id) else {
        bail!("device {id} is not in the map");
    };
    let mut out_epoch = first.map_epoch;
    if device.reweight != 0 {
        let answer = send(&args.api, true, vec![reweight(id, 0)])?;
        print_answer(&answer, false, "marked out")?;
        out_epoch = answer["applied_epoch"].as_u64().unwrap_or(out_epoch);
    }
    loop {
        let now = status(&args.api)?;
        let Some(device) = device_of(&now, id) else {
            bail!("device {id} left the map while it drained (another operator removed it?)");
        };
        // The gateway answering may not have seen the change yet.
        let caught_up = now.map_epoch >= out_epoch;
        if caught_up && device.reweight != 0 {
            bail!("device {id} was marked in again while it drained; not removed");
        }
        if caught_up && device.pgs == 0 && device.past_pgs == 0 {
            match send(
                &args.api,
                true,
                vec![json!({"change": "remove_device", "device": id})],
            ) {
                Ok(answer) => return print_answer(&answer, false, "removed"),
                // The map moved between the status and the removal: look again.
                Err(e) if e.to_string().contains("409") => {}
                Err(e) => return Err(e),
            }
        }
        let backfill = now.placement_groups.backfill.as_ref().map_or_else(
            || "no backfill reported".to_owned(),
            |b| {
                let eta = b
                    .eta_secs
                    .map_or_else(|| "unknown".to_owned(), |s| format!("~{s}s"));
                format!(
                    "backfill {}/{} PGs, time left {eta}",
                    b.pgs_total - b.pgs_left,
                    b.pgs_total
                )
            },
        );
        eprintln!(
            "[{:>5}s] draining {}: still in the past set of {} PGs; {backfill}",
            started.elapsed().as_secs(),
            device.name,
            device.past_pgs
        );
        if started.elapsed() > args.timeout {
            bail!(
                "device {id} still holds data for {} PGs after {:?}; it stays out. Is the anti-entropy sweep running (--anti-entropy-items-per-sec above 0)?",
                device.past_pgs,
                args.timeout
            );
        }
        std::thread::sleep(POLL_EVERY);
    }
}

//! `cartdb map pgs` (every PG's up and past sets, `GET /api/admin/pgs`), and
//! `cartdb map preview` and the map changes behind `cartdb device` and `cartdb flags`: a
//! change is sent to `POST /api/admin/map/preview` (nothing changes) or
//! `POST /api/admin/map/change` (one compare-and-set of the map), and the answer, a
//! [`MapPreview`], is printed the way `crushtool --compare` prints a comparison: the share of
//! PGs (and so of items) whose placement changes, then each device's PGs and expected share
//! of the data before and after, with a small text chart.

use std::fmt::Write as _;

use anyhow::{Context, bail};
use cartdb_core::cart::DeviceId;
use cartdb_core::coord::FULL_WEIGHT;
use cartdb_core::wire::MapPreview;
use clap::Args;
use serde_json::{Value, json};

use crate::api_client::{ApiArgs, get_json, post_json, print_document};

/// Arguments of `cartdb map pgs`.
#[derive(Debug, Args)]
pub struct PgsArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Print the API's JSON document.
    #[arg(long)]
    json: bool,
}

/// Prints every PG's up set (primary first) and past set.
///
/// # Errors
/// The API unreachable or refusing (401 without the admin token).
pub fn pgs(args: PgsArgs) -> anyhow::Result<()> {
    let document = get_json(&args.api, "/api/admin/pgs", &[])?;
    print_document(&document, args.json, pgs_text);
    Ok(())
}

fn pgs_text(document: &Value) -> String {
    let list = |v: &Value| {
        let ids: Vec<String> = v
            .as_array()
            .into_iter()
            .flatten()
            .map(Value::to_string)
            .collect();
        if ids.is_empty() {
            "-".to_owned()
        } else {
            ids.join(" ")
        }
    };
    let mut out = format!("map epoch {}\n", document["epoch"]);
    for pg in document["pgs"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "pg {:>5}  up {:<12} past {}",
            pg["pg"].as_u64().unwrap_or(u64::MAX),
            list(&pg["up"]),
            list(&pg["past"])
        );
    }
    out
}

/// Arguments of `cartdb map preview`.
#[derive(Debug, Args)]
pub struct PreviewArgs {
    /// Add a device: `ID:NAME:HOST[:WEIGHT]` (weight as a decimal, 1.0 by default; the host
    /// bucket is created under the map's first root if it does not exist).
    #[arg(long, value_parser = parse_new_device)]
    add: Vec<Value>,
    /// Remove a device (it must be out and drained; `cartdb device remove` does both).
    #[arg(long)]
    remove: Vec<DeviceId>,
    /// Reweight a device: `ID=WEIGHT`, WEIGHT between 0 (out) and 1 (fully in).
    #[arg(long, value_parser = parse_reweight)]
    reweight: Vec<Value>,
    /// Mark a device out (reweight 0).
    #[arg(long)]
    out: Vec<DeviceId>,
    /// Mark a device in (reweight 1).
    #[arg(long = "in")]
    in_: Vec<DeviceId>,
    #[command(flatten)]
    api: ApiArgs,
    /// Print the API's JSON answer.
    #[arg(long)]
    json: bool,
}

/// Previews the changes the arguments describe, in the order reweights, outs, ins, adds,
/// removes.
///
/// # Errors
/// No change given, or the API refusing the preview (naming the problem).
pub fn preview(args: PreviewArgs) -> anyhow::Result<()> {
    let mut changes = args.reweight;
    changes.extend(args.out.iter().map(|&d| reweight(d, 0)));
    changes.extend(args.in_.iter().map(|&d| reweight(d, FULL_WEIGHT)));
    changes.extend(args.add);
    changes.extend(
        args.remove
            .iter()
            .map(|&d| json!({"change": "remove_device", "device": d})),
    );
    if changes.is_empty() {
        bail!("nothing to preview: give --add, --remove, --reweight, --out or --in");
    }
    let answer = send(&args.api, false, changes)?;
    print_answer(&answer, args.json, "if applied")
}

/// A reweight change.
pub fn reweight(device: DeviceId, weight: u32) -> Value {
    json!({"change": "reweight", "device": device, "weight": weight})
}

/// Sends `changes` to the preview endpoint, or makes them when `commit`; answers the API's
/// JSON document.
///
/// # Errors
/// The API unreachable or refusing the change.
pub fn send(api: &ApiArgs, commit: bool, changes: Vec<Value>) -> anyhow::Result<Value> {
    let path = if commit {
        "/api/admin/map/change"
    } else {
        "/api/admin/map/preview"
    };
    post_json(api, path, &json!({ "changes": changes }))
}

/// Prints a preview answer: JSON as given with `json`, otherwise [`preview_text`].
///
/// # Errors
/// An answer that is not a preview.
pub fn print_answer(answer: &Value, json: bool, heading: &str) -> anyhow::Result<()> {
    if json {
        println!("{answer:#}");
        return Ok(());
    }
    let preview: MapPreview = serde_json::from_value(answer.clone())
        .context("the API answered a document that is not a map preview")?;
    print!("{}", preview_text(&preview, heading));
    Ok(())
}

/// The human-readable comparison.
pub fn preview_text(preview: &MapPreview, heading: &str) -> String {
    let mut out = String::new();
    let pct = |part: u32, whole: u32| {
        if whole == 0 {
            0.0
        } else {
            100.0 * f64::from(part) / f64::from(whole)
        }
    };
    let epoch = match preview.applied_epoch {
        Some(applied) => format!(
            "{heading}: applied to map epoch {}, now epoch {applied}",
            preview.epoch
        ),
        None => format!("{heading}, against map epoch {}", preview.epoch),
    };
    let _ = writeln!(out, "{epoch}:");
    let _ = writeln!(
        out,
        "  {} of {} PGs change placement ({:.1} %), so about {:.1} % of the items",
        preview.pgs_moved,
        preview.pg_num,
        pct(preview.pgs_moved, preview.pg_num),
        pct(preview.pgs_moved, preview.pg_num),
    );
    let _ = writeln!(
        out,
        "  {} of {} PG copies land on a device that does not hold them ({:.1} % of the data to backfill)",
        preview.copies_moved,
        preview.copies_total,
        pct(preview.copies_moved, preview.copies_total),
    );
    let total_before: u32 = preview.devices.iter().map(|d| d.pgs_before).sum();
    let total_after: u32 = preview.devices.iter().map(|d| d.pgs_after).sum();
    let widest = preview
        .devices
        .iter()
        .map(|d| d.pgs_before.max(d.pgs_after))
        .max()
        .unwrap_or(0)
        .max(1);
    let _ = writeln!(
        out,
        "  {:<12} {:>8} {:>8} {:>7} {:>7}  PGs before (-) / after (#)",
        "device", "weight", "PGs", "share", "after"
    );
    for d in &preview.devices {
        let weight = |w: Option<u32>| {
            w.map_or_else(
                || "-".to_owned(),
                |w| format!("{:.2}", f64::from(w) / f64::from(FULL_WEIGHT)),
            )
        };
        let bar = |n: u32, c: char| c.to_string().repeat((n * 30 / widest) as usize);
        let _ = writeln!(
            out,
            "  {:<12} {:>8} {:>8} {:>6.1}% {:>6.1}%  {}\n  {:<12} {:>8} {:>8} {:>7} {:>7}  {}",
            d.name,
            weight(d.reweight_before),
            d.pgs_before,
            pct(d.pgs_before, total_before),
            pct(d.pgs_after, total_after),
            bar(d.pgs_before, '-'),
            "",
            weight(d.reweight_after),
            d.pgs_after,
            "",
            "",
            bar(d.pgs_after, '#'),
        );
    }
    out
}

/// A decimal weight (`0.5`) in 16.16 fixed point, within `0..=max`.
///
/// # Errors
/// Not a number, or out of range.
pub fn fixed_point(text: &str, max: f64) -> Result<u32, String> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a decimal number"))?;
    if !(0.0..=max).contains(&value) {
        return Err(format!("{value} is not between 0 and {max}"));
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "checked to be within 0..=max, and max * 65536 fits a u32"
    )]
    Ok((value * f64::from(FULL_WEIGHT)).round() as u32)
}

/// `ID=WEIGHT` into a reweight change.
fn parse_reweight(text: &str) -> Result<Value, String> {
    let (id, weight) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not ID=WEIGHT"))?;
    let id: DeviceId = id
        .trim()
        .parse()
        .map_err(|_| format!("{id:?} is not a device id"))?;
    Ok(reweight(id, fixed_point(weight, 1.0)?))
}

/// `ID:NAME:HOST[:WEIGHT]` into an add-device change.
fn parse_new_device(text: &str) -> Result<Value, String> {
    let parts: Vec<&str> = text.split(':').collect();
    let (id, name, host, weight) = match parts.as_slice() {
        [id, name, host] => (id, name, host, "1.0"),
        [id, name, host, weight] => (id, name, host, *weight),
        _ => return Err(format!("{text:?} is not ID:NAME:HOST[:WEIGHT]")),
    };
    let id: DeviceId = id
        .parse()
        .map_err(|_| format!("{id:?} is not a device id"))?;
    Ok(add_device(id, name, host, fixed_point(weight, 65_535.0)?))
}

/// An add-device change.
pub fn add_device(id: DeviceId, name: &str, host: &str, weight: u32) -> Value {
    json!({"change": "add_device", "device": id, "name": name, "host": host, "weight": weight})
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]
mod tests {
    use cartdb_core::wire::DevicePreview;

    use super::*;

    #[test]
    fn the_pg_table_prints_up_and_past_sets() {
        let text = pgs_text(&json!({"epoch": 4, "pgs": [
            {"pg": 0, "up": [1, 4, 2], "past": []},
            {"pg": 1, "up": [3, 5, 6], "past": [2]}
        ]}));
        assert!(text.starts_with("map epoch 4\n"), "{text}");
        assert!(text.contains("pg     0  up 1 4 2        past -"), "{text}");
        assert!(text.contains("pg     1  up 3 5 6        past 2"), "{text}");
    }

    #[test]
    fn weights_and_changes_parse_or_say_why_not() {
        assert_eq!(fixed_point("0.5", 1.0), Ok(0x8000));
        assert_eq!(fixed_point("1", 1.0), Ok(FULL_WEIGHT));
        assert!(
            fixed_point("1.5", 1.0)
                .unwrap_err()
                .contains("not between 0 and 1")
        );
        assert!(fixed_point("x", 1.0).unwrap_err().contains("not a decimal"));
        assert_eq!(parse_reweight("3=0").unwrap(), reweight(3, 0));
        assert!(parse_reweight("3").unwrap_err().contains("ID=WEIGHT"));
        assert_eq!(
            parse_new_device("7:device_7:host6").unwrap(),
            add_device(7, "device_7", "host6", FULL_WEIGHT)
        );
        assert_eq!(
            parse_new_device("7:d:h:2").unwrap()["weight"],
            2 * FULL_WEIGHT
        );
        assert!(parse_new_device("7:d").is_err());
    }

    #[test]
    fn the_preview_text_gives_shares_and_a_chart() {
        let preview = MapPreview {
            epoch: 4,
            applied_epoch: None,
            pg_num: 256,
            size: 3,
            pgs_moved: 96,
            copies_moved: 110,
            copies_total: 768,
            devices: vec![
                DevicePreview {
                    id: 1,
                    name: "device_1".into(),
                    reweight_before: Some(FULL_WEIGHT),
                    reweight_after: Some(FULL_WEIGHT),
                    pgs_before: 128,
                    pgs_after: 110,
                },
                DevicePreview {
                    id: 7,
                    name: "device_7".into(),
                    reweight_before: None,
                    reweight_after: Some(FULL_WEIGHT),
                    pgs_before: 0,
                    pgs_after: 110,
                },
            ],
        };
        let text = preview_text(&preview, "if applied");
        assert!(text.contains("if applied, against map epoch 4"), "{text}");
        assert!(
            text.contains("96 of 256 PGs change placement (37.5 %)"),
            "{text}"
        );
        assert!(text.contains("110 of 768 PG copies"), "{text}");
        assert!(text.contains("device_7            -        0"), "{text}");
        assert!(text.contains(&"#".repeat(25)), "{text}");
    }
}

//! The cluster as the API server reports it on `GET /api/cluster`, parsed leniently: devices
//! with their up/down state and CRUSH reweight, the registered gateways and the map epoch.

use anyhow::{Context, bail};
use serde_json::Value;

/// One data node (CRUSH device) as `/api/cluster` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceView {
    /// The device id (`device_<id>` in the CRUSH map).
    pub id: u32,
    /// Whether the device's ephemeral znode exists.
    pub up: bool,
    /// The device's CRUSH reweight: 0 when it is marked out, if the API reports it.
    pub reweight: Option<f64>,
}

impl DeviceView {
    /// Up, and not reweighted to 0 (an absent reweight counts as in).
    pub fn is_up_and_in(&self) -> bool {
        self.up && self.reweight.is_none_or(|w| w > 0.0)
    }

    /// Down, and reweighted to 0.
    pub fn is_down_and_out(&self) -> bool {
        !self.up && self.reweight == Some(0.0)
    }
}

/// The parsed `/api/cluster` document.
#[derive(Debug, Clone)]
pub struct ClusterView {
    /// Every device of the CRUSH map.
    pub devices: Vec<DeviceView>,
    /// How many gateways are registered.
    pub gateways: usize,
    /// The CRUSH map's epoch, if reported.
    pub map_epoch: Option<u64>,
    /// The whole document, for messages.
    pub raw: Value,
}

impl ClusterView {
    /// Parses the document.
    ///
    /// # Errors
    /// When `devices` or `gateways` is missing or a device has no recognisable id.
    pub fn parse(raw: &Value) -> anyhow::Result<Self> {
        let devices = raw
            .get("devices")
            .and_then(Value::as_array)
            .with_context(|| format!("no \"devices\" array in /api/cluster: {raw}"))?
            .iter()
            .map(parse_device)
            .collect::<anyhow::Result<Vec<_>>>()?;
        let gateways = raw
            .get("gateways")
            .and_then(Value::as_array)
            .with_context(|| format!("no \"gateways\" array in /api/cluster: {raw}"))?
            .len();
        Ok(Self {
            devices,
            gateways,
            map_epoch: raw.get("map_epoch").and_then(Value::as_u64),
            raw: raw.clone(),
        })
    }

    /// The device with this id.
    pub fn device(&self, id: u32) -> Option<&DeviceView> {
        self.devices.iter().find(|d| d.id == id)
    }

    /// How many devices are up and in.
    pub fn devices_up_and_in(&self) -> usize {
        self.devices.iter().filter(|d| d.is_up_and_in()).count()
    }
}

fn parse_device(device: &Value) -> anyhow::Result<DeviceView> {
    let id = match device.get("id").and_then(Value::as_u64) {
        Some(id) => u32::try_from(id)?,
        None => match device
            .get("name")
            .and_then(Value::as_str)
            .and_then(|n| n.strip_prefix("device_"))
        {
            Some(n) => n.parse()?,
            None => bail!("device without an id in /api/cluster: {device}"),
        },
    };
    let up = match device.get("up") {
        Some(Value::Bool(up)) => *up,
        _ => device.get("status").and_then(Value::as_str) == Some("up"),
    };
    Ok(DeviceView {
        id,
        up,
        reweight: device.get("reweight").and_then(Value::as_f64),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn parses_devices_gateways_and_epoch() {
        let view = ClusterView::parse(&json!({
            "devices": [
                {"id": 1, "name": "device_1", "up": true, "reweight": 1.0, "address": "127.0.0.1:1"},
                {"name": "device_2", "up": false, "reweight": 0},
                {"id": 3, "status": "up"}
            ],
            "gateways": [{"id": 1, "address": "x"}],
            "map_epoch": 7
        }))
        .unwrap();
        assert_eq!(view.devices.len(), 3);
        assert!(view.device(1).unwrap().is_up_and_in());
        assert!(view.device(2).unwrap().is_down_and_out());
        assert!(view.device(3).unwrap().is_up_and_in());
        assert_eq!(view.devices_up_and_in(), 2);
        assert_eq!(view.gateways, 1);
        assert_eq!(view.map_epoch, Some(7));
    }

    #[test]
    fn a_document_without_devices_is_an_error() {
        assert!(ClusterView::parse(&json!({"gateways": []})).is_err());
    }
}

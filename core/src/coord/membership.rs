//! Who is up: the live data nodes and gateways, and the registration data they publish.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::cart::DeviceId;

/// Longest registration address accepted, in bytes.
const MAX_ADDRESS_BYTES: usize = 256;

/// The live processes, as their ephemeral znodes say.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    /// Registered data nodes: device id -> `host:port` they serve on.
    pub devices: BTreeMap<DeviceId, String>,
    /// Registered gateways: gateway id -> `host:port` they serve on.
    pub gateways: BTreeMap<u32, String>,
    /// Where the registered data nodes serve `GET /metrics` (`host:port`), if they said.
    pub device_metrics: BTreeMap<DeviceId, String>,
    /// Where the registered gateways serve `GET /metrics`, if they said.
    pub gateway_metrics: BTreeMap<u32, String>,
}

impl Membership {
    /// Whether a data node has registered this device.
    pub fn is_live(&self, device: DeviceId) -> bool {
        self.devices.contains_key(&device)
    }
}

/// The data of a registration znode.
#[derive(Serialize, Deserialize)]
struct Registration<'a> {
    address: &'a str,
    /// Absent in registrations of processes that serve no metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    metrics: Option<&'a str>,
}

/// What a process registers: where it serves, and where it serves `GET /metrics`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub(crate) address: String,
    pub(crate) metrics: Option<String>,
}

/// The znode data that registers `address` and `metrics` (already checked by
/// [`check_address`]).
pub(crate) fn encode(address: &str, metrics: Option<&str>) -> Vec<u8> {
    // Writing `{"address": ...}` by hand would need escaping; a borrowed struct cannot fail.
    serde_json::to_vec(&Registration { address, metrics }).unwrap_or_default()
}

/// The endpoint in a registration znode's data (untrusted).
///
/// # Errors
/// What is wrong with the data.
pub(crate) fn decode(data: &[u8]) -> Result<Endpoint, &'static str> {
    let registration: Registration<'_> = serde_json::from_slice(data).map_err(
        |_| "not JSON of the form {\"address\": \"host:port\", \"metrics\": \"host:port\"}",
    )?;
    check_address(registration.address)?;
    if let Some(metrics) = registration.metrics {
        check_address(metrics).map_err(|_| "its metrics address is not host:port")?;
    }
    Ok(Endpoint {
        address: registration.address.to_owned(),
        metrics: registration.metrics.map(str::to_owned),
    })
}

/// Checks that an address looks like `host:port`.
///
/// # Errors
/// What is wrong with it.
pub(crate) fn check_address(address: &str) -> Result<(), &'static str> {
    if address.len() > MAX_ADDRESS_BYTES {
        return Err("longer than 256 bytes");
    }
    if address.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("contains whitespace or control characters");
    }
    let (host, port) = address.rsplit_once(':').ok_or("must be host:port")?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err("must be host:port with a port number");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrations_round_trip() {
        let data = encode("127.0.0.1:7001", None);
        assert_eq!(data, br#"{"address":"127.0.0.1:7001"}"#);
        assert_eq!(decode(&data).unwrap().address, "127.0.0.1:7001");
        assert_eq!(
            decode(br#"{"address":"[::1]:80"}"#).unwrap().address,
            "[::1]:80"
        );
        let data = encode("127.0.0.1:7001", Some("127.0.0.1:9101"));
        assert_eq!(
            data,
            br#"{"address":"127.0.0.1:7001","metrics":"127.0.0.1:9101"}"#
        );
        assert_eq!(
            decode(&data).unwrap().metrics.as_deref(),
            Some("127.0.0.1:9101")
        );
        assert!(decode(br#"{"address":"h:1","metrics":"no port"}"#).is_err());
    }

    #[test]
    fn malformed_registrations_are_refused() {
        assert!(decode(b"").is_err());
        assert!(decode(b"garbage").is_err());
        assert!(decode(br#"{"addr":"x:1"}"#).is_err());
        assert!(decode(br#"{"address":"no-port"}"#).is_err());
        assert!(decode(br#"{"address":"host:99999"}"#).is_err());
        assert!(decode(br#"{"address":":80"}"#).is_err());
        assert!(decode(br#"{"address":"a b:80"}"#).is_err());
    }

    #[test]
    fn liveness_is_registration() {
        let mut m = Membership::default();
        m.devices.insert(2, "h:1".into());
        assert!(m.is_live(2));
        assert!(!m.is_live(3));
    }
}

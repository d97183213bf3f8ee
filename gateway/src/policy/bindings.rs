//! The one place `wasmtime::component::bindgen!` runs for the policy worlds; everything
//! else in the gateway sees domain types. Conversions from and to the generated types live
//! here too.

wasmtime::component::bindgen!({
    world: "placement-policy",
    path: "../wit",
});

pub(crate) use exports::cartdb::policy::placement::Reweight;

/// A device id the host cannot express as a WIT `device-id` (`s32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceOutOfRange(pub u32);

impl TryFrom<(u32, u32)> for Reweight {
    type Error = DeviceOutOfRange;

    /// `(device, 16.16 weight)` as the guest sees it.
    fn try_from((device, weight): (u32, u32)) -> Result<Self, Self::Error> {
        let device = i32::try_from(device).map_err(|_| DeviceOutOfRange(device))?;
        Ok(Self { device, weight })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn reweights_convert_when_in_range() {
        let r = Reweight::try_from((3, 0x8000)).unwrap();
        assert_eq!((r.device, r.weight), (3, 0x8000));
        assert_eq!(
            Reweight::try_from((u32::MAX, 0)).unwrap_err(),
            DeviceOutOfRange(u32::MAX)
        );
    }
}

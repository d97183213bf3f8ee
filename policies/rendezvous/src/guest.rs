//! The component glue (wasm32 only): exports `cartdb:policy/placement-policy` by wrapping
//! [`crate::Placer`] in the `placer` resource, so the parsed map stays inside the guest.

// wit-bindgen's generated code and `export!` need unsafe (ABI entry points); it stays
// confined to this private module.
#[allow(unsafe_code)]
mod bindings {
    wit_bindgen::generate!({
        world: "placement-policy",
        path: "../../wit",
    });

    use super::Component;
    export!(Component);
}

use bindings::exports::cartdb::policy::placement::{self, DeviceId, GuestPlacer, Reweight};

/// The exported component.
struct Component;

impl bindings::Guest for Component {
    fn name() -> String {
        crate::POLICY_NAME.to_owned()
    }
}

impl placement::Guest for Component {
    type Placer = crate::Placer;

    fn load(
        map_json: String,
        rule: Option<String>,
        reweights: Vec<Reweight>,
    ) -> Result<placement::Placer, String> {
        let reweights: Vec<(i32, u32)> = reweights.iter().map(|r| (r.device, r.weight)).collect();
        crate::load(&map_json, rule.as_deref(), &reweights)
            .map(placement::Placer::new)
            .map_err(|e| e.to_string())
    }
}

impl GuestPlacer for crate::Placer {
    fn place(&self, x: u32, replicas: u32) -> Vec<DeviceId> {
        // Device ids above i32::MAX are not WIT device ids; the host would refuse them.
        crate::Placer::place(self, x, replicas)
            .into_iter()
            .filter_map(|d| DeviceId::try_from(d).ok())
            .collect()
    }
}

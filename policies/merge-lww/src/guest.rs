//! The component glue (wasm32 only): exports `cartdb:policy/merge-policy`, answering with
//! the input state [`crate::last_writer`] picks.

// wit-bindgen's generated code and `export!` need unsafe (ABI entry points); it stays
// confined to this private module.
#[allow(unsafe_code)]
mod bindings {
    wit_bindgen::generate!({
        world: "merge-policy",
        path: "../../wit",
    });

    use super::Component;
    export!(Component);
}

use bindings::exports::cartdb::policy::merge as wit;

/// The exported component.
struct Component;

impl bindings::Guest for Component {
    fn name() -> String {
        crate::POLICY_NAME.to_owned()
    }
}

impl wit::Guest for Component {
    fn merge(mut states: Vec<wit::ItemState>) -> Result<wit::ItemState, String> {
        let index = crate::last_writer(states.iter().map(newest))
            .ok_or_else(|| "no states to merge".to_owned())?;
        Ok(states.swap_remove(index))
    }
}

/// The newest version a state saw, as `(hlc, gateway)` so it orders like a version.
fn newest(state: &wit::ItemState) -> Option<(u64, u32)> {
    let key = |v: &wit::Version| (v.hlc, v.gateway);
    let newest_op = state.ops.iter().map(|op| key(&op.version)).max();
    newest_op.max(state.base.version.as_ref().map(key))
}

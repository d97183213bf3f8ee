//! The component glue (wasm32 only): exports `cartdb:policy/merge-policy` by converting
//! between the WIT records and [`crate::ItemState`].

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
    fn merge(states: Vec<wit::ItemState>) -> Result<wit::ItemState, String> {
        let states: Vec<crate::ItemState> = states.into_iter().map(from_wit).collect();
        crate::merge(&states).map(to_wit).map_err(|e| e.to_string())
    }
}

fn from_wit(state: wit::ItemState) -> crate::ItemState {
    let version = |v: wit::Version| crate::Version {
        hlc: v.hlc,
        gateway: v.gateway,
    };
    crate::ItemState {
        base: crate::Base {
            qty: state.base.qty,
            version: state.base.version.map(version),
        },
        ops: state
            .ops
            .into_iter()
            .map(|op| crate::Operation {
                id: (u128::from(op.id.high) << 64) | u128::from(op.id.low),
                kind: match op.kind {
                    wit::OpKind::Add => crate::OpKind::Add,
                    wit::OpKind::Delete => crate::OpKind::Delete,
                },
                version: version(op.version),
            })
            .collect(),
    }
}

fn to_wit(state: crate::ItemState) -> wit::ItemState {
    let version = |v: crate::Version| wit::Version {
        hlc: v.hlc,
        gateway: v.gateway,
    };
    wit::ItemState {
        base: wit::Base {
            qty: state.base.qty,
            version: state.base.version.map(version),
        },
        ops: state
            .ops
            .into_iter()
            .map(|op| wit::Operation {
                // The two halves of the 128-bit id; truncation is the point.
                id: wit::OpId {
                    high: (op.id >> 64) as u64,
                    low: op.id as u64,
                },
                kind: match op.kind {
                    crate::OpKind::Add => wit::OpKind::Add,
                    crate::OpKind::Delete => wit::OpKind::Delete,
                },
                version: version(op.version),
            })
            .collect(),
    }
}

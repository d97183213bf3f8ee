//! The one place `wasmtime::component::bindgen!` runs for the policy worlds; everything
//! else in the gateway sees domain types. Conversions from and to the generated types live
//! here too.

wasmtime::component::bindgen!({
    world: "placement-policy",
    path: "../wit",
});

pub(crate) use exports::cartdb::policy::placement::Reweight;

/// The `merge-policy` world. A module of its own, because the generated names (`exports`,
/// the world's types) would otherwise collide with the placement world's.
pub(crate) mod merge_world {
    wasmtime::component::bindgen!({
        world: "merge-policy",
        path: "../wit",
    });

    use cartdb_core::cart::{Base, ItemState, OpId, OpKind, Operation};
    use cartdb_core::version::Version;

    pub(crate) use exports::cartdb::policy::merge as wit;

    /// What the guest sees of a state: the base and the log (product and facts stay here).
    pub(crate) fn to_guest(state: &ItemState) -> wit::ItemState {
        wit::ItemState {
            base: wit::Base {
                qty: state.base.qty,
                version: state.base.version.map(version_to_guest),
            },
            ops: state
                .ops
                .iter()
                .map(|op| wit::Operation {
                    // The two halves of the 128-bit id; truncation is the point.
                    id: wit::OpId {
                        high: (op.id.0 >> 64) as u64,
                        low: op.id.0 as u64,
                    },
                    kind: match op.kind {
                        OpKind::Add => wit::OpKind::Add,
                        OpKind::Delete => wit::OpKind::Delete,
                    },
                    version: version_to_guest(op.version),
                })
                .collect(),
        }
    }

    /// The guest's answer as domain values, unchecked.
    pub(crate) fn from_guest(state: wit::ItemState) -> (Base, Vec<Operation>) {
        let base = Base {
            qty: state.base.qty,
            version: state.base.version.map(version_from_guest),
        };
        let ops = state
            .ops
            .into_iter()
            .map(|op| Operation {
                id: OpId((u128::from(op.id.high) << 64) | u128::from(op.id.low)),
                kind: match op.kind {
                    wit::OpKind::Add => OpKind::Add,
                    wit::OpKind::Delete => OpKind::Delete,
                },
                version: version_from_guest(op.version),
            })
            .collect();
        (base, ops)
    }

    fn version_to_guest(v: Version) -> wit::Version {
        wit::Version {
            hlc: v.hlc,
            gateway: v.gateway,
        }
    }

    fn version_from_guest(v: wit::Version) -> Version {
        Version {
            hlc: v.hlc,
            gateway: v.gateway,
        }
    }
}

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
    fn states_survive_the_round_trip_through_the_guest_types() {
        use cartdb_core::cart::{Base, ItemMeta, ItemState, OpId, OpKind, Operation};
        use cartdb_core::version::Version;

        let version = Version {
            hlc: u64::MAX,
            gateway: 7,
        };
        let state = ItemState {
            product: "1".into(),
            meta: ItemMeta {
                price: 61,
                category: "1".into(),
            },
            base: Base {
                qty: 3,
                version: Some(Version { hlc: 5, gateway: 0 }),
            },
            ops: vec![
                Operation {
                    id: OpId(u128::MAX - 1),
                    kind: OpKind::Delete,
                    version,
                },
                Operation {
                    id: OpId(1 << 64),
                    kind: OpKind::Add,
                    version,
                },
            ],
        };
        let guest = merge_world::to_guest(&state);
        assert_eq!((guest.ops[1].id.high, guest.ops[1].id.low), (1, 0));
        assert_eq!(
            merge_world::from_guest(guest),
            (state.base, state.ops.clone())
        );
    }

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

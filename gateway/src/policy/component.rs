//! Loading a policy component, whatever its world: the size-capped read, the sha256,
//! compilation, the refusal of imports, fresh stores under the engine's limits, and the
//! reading of a failed call. Placement and merge policies share all of it, so both defend
//! against a hostile `.wasm` in the same way.

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, Linker};
use wasmtime::{Store, StoreLimits, StoreLimitsBuilder, Trap};

use super::{PolicyEngine, PolicyError};

/// Longest policy name kept; a longer one is truncated.
const MAX_NAME_BYTES: usize = 128;

/// Per-store host state: only the resource limiter.
pub(super) struct HostState {
    limits: StoreLimits,
}

/// A compiled component that imports nothing, and the (empty) linker to instantiate it.
pub(super) struct Compiled {
    /// Lower-case hex SHA-256 of the component's bytes.
    pub(super) sha256: String,
    pub(super) component: Component,
    pub(super) linker: Linker<HostState>,
}

/// Reads at most `max` bytes of `path`; a larger file is refused without reading it all.
pub(super) fn read_capped(path: &Path, max: u64) -> Result<Vec<u8>, PolicyError> {
    let read_error = |source| PolicyError::Read {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    file.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    refuse_too_large(path, &bytes, max)?;
    Ok(bytes)
}

fn refuse_too_large(path: &Path, bytes: &[u8], max: u64) -> Result<(), PolicyError> {
    if bytes.len() as u64 > max {
        return Err(PolicyError::TooLarge {
            path: path.to_owned(),
            max,
        });
    }
    Ok(())
}

/// Hashes and compiles `bytes` (named `path` in errors) and refuses a component that
/// imports anything with functions.
pub(super) fn compile(
    engine: &PolicyEngine,
    path: &Path,
    bytes: &[u8],
) -> Result<Compiled, PolicyError> {
    // `read_capped` already checked files; bytes handed over directly are checked here.
    refuse_too_large(path, bytes, engine.limits().max_file_bytes)?;
    let sha256 = hex::encode(Sha256::digest(bytes));
    let component = Component::new(engine.engine(), bytes).map_err(|e| PolicyError::Compile {
        path: path.to_owned(),
        detail: format!("{e:#}"),
    })?;
    let linker = linker_for(engine, &component, path)?;
    Ok(Compiled {
        sha256,
        component,
        linker,
    })
}

/// A fresh store with the memory cap, its deadline set for instantiation and `name`.
pub(super) fn new_store(engine: &PolicyEngine) -> Store<HostState> {
    let limits = engine.limits();
    let state = HostState {
        limits: StoreLimitsBuilder::new()
            .memory_size(limits.max_memory_bytes)
            .instances(8)
            // Growing past the cap traps at once (a clear failure, counted as a trap)
            // rather than handing the guest -1 to ignore.
            .trap_on_grow_failure(true)
            .build(),
    };
    let mut store = Store::new(engine.engine(), state);
    store.limiter(|state| &mut state.limits);
    store.set_epoch_deadline(PolicyEngine::ticks(limits.load_timeout));
    set_fuel(&mut store, limits.load_fuel);
    store
}

/// Gives the store `fuel` for what it runs next. The engine always meters fuel
/// (`consume_fuel` in `engine::config`), the only case in which wasmtime refuses this.
pub(super) fn set_fuel(store: &mut Store<HostState>, fuel: u64) {
    if let Err(e) = store.set_fuel(fuel) {
        tracing::error!(error = %e, "the policy engine does not meter fuel; calls are bounded by time only");
    }
}

/// A failed guest call: a timeout when the epoch deadline fired, fuel exhaustion when its
/// fuel ran out, else a trap.
pub(super) fn call_error(
    path: &Path,
    error: &wasmtime::Error,
    timeout: Duration,
    fuel: u64,
) -> PolicyError {
    let path = path.to_owned();
    if error.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        PolicyError::TimedOut { path, timeout }
    } else if error.downcast_ref::<Trap>() == Some(&Trap::OutOfFuel) {
        PolicyError::OutOfFuel { path, fuel }
    } else {
        PolicyError::Trapped {
            path,
            detail: format!("{error:#}"),
        }
    }
}

/// Cuts a guest-chosen name to [`MAX_NAME_BYTES`] at a character boundary: names end up in
/// logs and cluster status, which a guest must not flood.
pub(super) fn truncate_name(mut name: String) -> String {
    if name.len() > MAX_NAME_BYTES {
        let end = (0..=MAX_NAME_BYTES)
            .rev()
            .find(|&i| name.is_char_boundary(i))
            .unwrap_or(0);
        name.truncate(end);
    }
    name
}

/// An empty linker, except for type-only interfaces (such as `cartdb:policy/types`, which
/// the world pulls in for its records): they carry no functions, hence no capability.
/// Anything else the component imports is refused, naming every such import.
fn linker_for(
    engine: &PolicyEngine,
    component: &Component,
    path: &Path,
) -> Result<Linker<HostState>, PolicyError> {
    let engine = engine.engine();
    let mut linker = Linker::new(engine);
    let mut refused = Vec::new();
    for (name, item) in component.component_type().imports(engine) {
        let type_only = match &item.ty {
            ComponentItem::ComponentInstance(instance) => instance
                .exports(engine)
                .all(|(_, export)| matches!(export.ty, ComponentItem::Type(_))),
            ComponentItem::Type(_) => true,
            _ => false,
        };
        if !type_only {
            refused.push(name.to_owned());
        } else if matches!(item.ty, ComponentItem::ComponentInstance(_)) {
            linker
                .instance(name)
                .map_err(|e| PolicyError::Instantiate {
                    path: path.to_owned(),
                    detail: format!("{e:#}"),
                })?;
        }
    }
    if refused.is_empty() {
        Ok(linker)
    } else {
        Err(PolicyError::Imports {
            path: path.to_owned(),
            imports: refused,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_are_cut_at_a_character_boundary() {
        assert_eq!(truncate_name("crush".to_owned()), "crush");
        let long = "é".repeat(100);
        let cut = truncate_name(long);
        assert_eq!(cut.len(), 128);
        assert!(cut.chars().all(|c| c == 'é'));
    }
}

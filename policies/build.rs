//! Builds cartdb's policy components and writes `OUT_DIR/policies.rs` (their paths).
//!
//! ```text
//! GUESTS (Rust crates) --nested cargo build, wasm32-unknown-unknown--> core modules
//!        --wit-component--> components --check: no imports--> <target>/policies/*.wasm
//! TEST_GUESTS (WAT)    --wat + component metadata + wit-component--> same directory
//! ```
//! To add a policy guest, add a workspace member crate and one entry to [`GUESTS`].

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::{env, fs};

use anyhow::{Context, Result, bail};
use wit_component::{ComponentEncoder, DecodedWasm, StringEncoding};
use wit_parser::Resolve;

/// A Rust guest crate of the workspace that becomes one policy component.
struct Guest {
    /// Cargo package name.
    package: &'static str,
    /// Crate directory under `policies/` (watched for changes).
    dir: &'static str,
    /// Stem of the core module cargo writes (the lib name: dashes become underscores).
    core_module: &'static str,
    /// File name under `<target>/policies/`.
    artifact: &'static str,
    /// Name of the generated `pub const` holding the artifact's absolute path.
    constant: &'static str,
    /// Doc comment of that constant.
    doc: &'static str,
}

const GUESTS: &[Guest] = &[
    Guest {
        package: "cartdb-policy-crush",
        dir: "crush",
        core_module: "cartdb_policy_crush",
        artifact: "crush.wasm",
        constant: "CRUSH_POLICY_WASM",
        doc: "The reference CRUSH (straw2) placement policy component.",
    },
    Guest {
        package: "cartdb-policy-rendezvous",
        dir: "rendezvous",
        core_module: "cartdb_policy_rendezvous",
        artifact: "rendezvous.wasm",
        constant: "RENDEZVOUS_POLICY_WASM",
        doc: "A second placement policy component: weighted rendezvous hashing, one replica per failure domain.",
    },
    Guest {
        package: "cartdb-policy-merge",
        dir: "merge",
        core_module: "cartdb_policy_merge",
        artifact: "merge.wasm",
        constant: "MERGE_POLICY_WASM",
        doc: "The reference merge policy component: the gateway's built-in merge.",
    },
    Guest {
        package: "cartdb-policy-merge-lww",
        dir: "merge-lww",
        core_module: "cartdb_policy_merge_lww",
        artifact: "merge-lww.wasm",
        constant: "MERGE_LWW_POLICY_WASM",
        doc: "An example merge policy component, last writer wins: it drops acknowledged operations.",
    },
];

/// A hand-written guest that misbehaves in one way, for host tests.
struct TestGuest {
    artifact: &'static str,
    constant: &'static str,
    doc: &'static str,
    /// World whose metadata the module carries (`evil-imports` adds an import).
    world: &'static str,
    /// Extra WAT imports.
    imports: &'static str,
    /// The exported functions' bodies, which also decide the template.
    exports: Exports,
}

/// WAT bodies of a test guest's functions; each leaves its return-area pointer on the stack.
enum Exports {
    /// `placement-policy`: `load` and `placer.place`.
    Placement {
        load: &'static str,
        place: &'static str,
    },
    /// `merge-policy`: `merge`, whose parameters are `$states` (pointer to the list of
    /// item states, 40 bytes each) and `$len`.
    Merge { merge: &'static str },
}

const LOAD_OK: &str = "(i32.store8 (i32.const 64) (i32.const 0))
     (i32.store (i32.const 68) (call $resource_new (i32.const 1)))
     (i32.const 64)";
/// `place` returning the one-element list `[99]` (stored at 128).
const PLACE_99: &str = "(i32.store (i32.const 128) (i32.const 99))
     (i32.store (i32.const 96) (i32.const 128))
     (i32.store (i32.const 100) (i32.const 1))
     (i32.const 96)";

const TEST_GUESTS: &[TestGuest] = &[
    TestGuest {
        artifact: "test-bad-device.wasm",
        constant: "BAD_DEVICE_WASM",
        doc: "`place` always returns device 99, which no test map has.",
        world: "placement-policy",
        imports: "",
        exports: Exports::Placement {
            load: LOAD_OK,
            place: PLACE_99,
        },
    },
    TestGuest {
        artifact: "test-trap.wasm",
        constant: "TRAP_WASM",
        doc: "`place` traps (`unreachable`).",
        world: "placement-policy",
        imports: "",
        exports: Exports::Placement {
            load: LOAD_OK,
            place: "unreachable",
        },
    },
    TestGuest {
        artifact: "test-spin.wasm",
        constant: "SPIN_WASM",
        doc: "`place` loops forever.",
        world: "placement-policy",
        imports: "",
        exports: Exports::Placement {
            load: LOAD_OK,
            place: "(loop $forever (br $forever)) unreachable",
        },
    },
    TestGuest {
        artifact: "test-load-error.wasm",
        constant: "LOAD_ERROR_WASM",
        doc: "`load` returns the error \"evil says no\".",
        world: "placement-policy",
        imports: "",
        exports: Exports::Placement {
            load: "(i32.store8 (i32.const 64) (i32.const 1))
     (i32.store (i32.const 68) (i32.const 16))
     (i32.store (i32.const 72) (i32.const 12))
     (i32.const 64)",
            place: PLACE_99,
        },
    },
    TestGuest {
        artifact: "test-imports.wasm",
        constant: "IMPORTS_WASM",
        doc: "Imports a host function `host-log` (policies must import nothing).",
        world: "evil-imports",
        imports: r#"(import "$root" "host-log" (func (param i32 i32)))"#,
        exports: Exports::Placement {
            load: LOAD_OK,
            place: PLACE_99,
        },
    },
    TestGuest {
        artifact: "test-wasi.wasm",
        constant: "WASI_WASM",
        doc: "Imports WASI's `wasi:random/random@0.2.0` (policies must import nothing).",
        world: "evil-wasi",
        imports: r#"(import "wasi:random/random@0.2.0" "get-random-u64" (func (result i64)))"#,
        exports: Exports::Placement {
            load: LOAD_OK,
            place: PLACE_99,
        },
    },
    TestGuest {
        artifact: "test-dup-device.wasm",
        constant: "DUP_DEVICE_WASM",
        doc: "`place` returns `[1, 1]`: the same device twice.",
        world: "placement-policy",
        imports: "",
        exports: Exports::Placement {
            load: LOAD_OK,
            place: "(i32.store (i32.const 128) (i32.const 1))
     (i32.store (i32.const 132) (i32.const 1))
     (i32.store (i32.const 96) (i32.const 128))
     (i32.store (i32.const 100) (i32.const 2))
     (i32.const 96)",
        },
    },
    TestGuest {
        artifact: "test-grow.wasm",
        constant: "GROW_WASM",
        doc: "`place` grows its memory by 1 GiB at once, then returns `[99]` if that worked.",
        world: "placement-policy",
        imports: "",
        exports: Exports::Placement {
            load: LOAD_OK,
            place: "(drop (memory.grow (i32.const 16384)))
     (i32.store (i32.const 128) (i32.const 99))
     (i32.store (i32.const 96) (i32.const 128))
     (i32.store (i32.const 100) (i32.const 1))
     (i32.const 96)",
        },
    },
    TestGuest {
        artifact: "test-merge-grow.wasm",
        constant: "MERGE_GROW_WASM",
        doc: "`merge` grows its memory by 1 GiB when given more than one state; returns a lone state unchanged.",
        world: "merge-policy",
        imports: "",
        exports: Exports::Merge {
            merge: "(if (i32.gt_u (local.get $len) (i32.const 1))
       (then (drop (memory.grow (i32.const 16384)))))
     (i32.store8 (i32.const 256) (i32.const 0))
     (memory.copy (i32.const 264) (local.get $states) (i32.const 40))
     (i32.const 256)",
        },
    },
    TestGuest {
        artifact: "test-merge-trap.wasm",
        constant: "MERGE_TRAP_WASM",
        doc: "`merge` traps (`unreachable`) when given more than one state; returns a lone state unchanged.",
        world: "merge-policy",
        imports: "",
        exports: Exports::Merge {
            merge: "(if (i32.gt_u (local.get $len) (i32.const 1)) (then unreachable))
     (i32.store8 (i32.const 256) (i32.const 0))
     (memory.copy (i32.const 264) (local.get $states) (i32.const 40))
     (i32.const 256)",
        },
    },
    TestGuest {
        artifact: "test-merge-spin.wasm",
        constant: "MERGE_SPIN_WASM",
        doc: "`merge` loops forever when given more than one state; returns a lone state unchanged.",
        world: "merge-policy",
        imports: "",
        exports: Exports::Merge {
            merge:
                "(if (i32.gt_u (local.get $len) (i32.const 1)) (then (loop $forever (br $forever))))
     (i32.store8 (i32.const 256) (i32.const 0))
     (memory.copy (i32.const 264) (local.get $states) (i32.const 40))
     (i32.const 256)",
        },
    },
    TestGuest {
        artifact: "test-merge-unknown-op.wasm",
        constant: "MERGE_UNKNOWN_OP_WASM",
        doc: "`merge` returns the base of `states[0]` and an operation no input has: id 0xdead << 64 | 0xbeef, add, version (1, 0).",
        world: "merge-policy",
        imports: "",
        exports: Exports::Merge {
            merge: "(i32.store8 (i32.const 256) (i32.const 0))
     (memory.copy (i32.const 264) (local.get $states) (i32.const 32))
     (i64.store (i32.const 512) (i64.const 0xdead))
     (i64.store (i32.const 520) (i64.const 0xbeef))
     (i32.store8 (i32.const 528) (i32.const 0))
     (i64.store (i32.const 536) (i64.const 1))
     (i32.store (i32.const 544) (i32.const 0))
     (i32.store (i32.const 296) (i32.const 512))
     (i32.store (i32.const 300) (i32.const 1))
     (i32.const 256)",
        },
    },
    TestGuest {
        artifact: "test-merge-bad-base.wasm",
        constant: "MERGE_BAD_BASE_WASM",
        doc: "`merge` returns a base no input has: quantity 2^63, no version, no operations.",
        world: "merge-policy",
        imports: "",
        exports: Exports::Merge {
            merge: "(i32.store8 (i32.const 256) (i32.const 0))
     (i64.store (i32.const 264) (i64.const 0x8000000000000000))
     (i32.store8 (i32.const 272) (i32.const 0))
     (i32.store (i32.const 296) (i32.const 0))
     (i32.store (i32.const 300) (i32.const 0))
     (i32.const 256)",
        },
    },
    TestGuest {
        artifact: "test-merge-refuses.wasm",
        constant: "MERGE_REFUSES_WASM",
        doc: "`merge` returns the error \"evil says no\".",
        world: "merge-policy",
        imports: "",
        exports: Exports::Merge {
            merge: "(i32.store8 (i32.const 256) (i32.const 1))
     (i32.store (i32.const 264) (i32.const 16))
     (i32.store (i32.const 268) (i32.const 12))
     (i32.const 256)",
        },
    },
];

/// WIT of the test-only worlds (not part of the public `cartdb:policy` package).
const TEST_WIT: &str = "package cartdb:test-guests;

world evil-imports {
    import host-log: func(msg: string);
    include cartdb:policy/placement-policy@0.1.0;
}

world evil-wasi {
    import wasi:random/random@0.2.0;
    include cartdb:policy/placement-policy@0.1.0;
}

package wasi:random@0.2.0 {
    interface random {
        get-random-u64: func() -> u64;
    }
}
";

const WASM_TARGET: &str = "wasm32-unknown-unknown";

fn main() {
    if let Err(e) = run() {
        // Cargo prints a failing build script's stderr: make that one readable message.
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR is unset")?);
    let workspace = manifest_dir
        .parent()
        .context("policies/ must sit in the workspace root")?;
    // A relative CARGO_TARGET_DIR is taken relative to the workspace root (where CI and the
    // scripts run cargo); an absolute one replaces it.
    let target_root = env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace.join("target"), |dir| workspace.join(dir));
    let artifacts = target_root.join("policies");
    fs::create_dir_all(&artifacts).with_context(|| format!("creating {}", artifacts.display()))?;
    emit_rerun_if_changed(workspace);

    ensure_wasm_target()?;
    let wasm_dir = target_root.join("wasm-policies");
    build_guests(workspace, &wasm_dir)?;
    let mut consts = String::new();
    for guest in GUESTS {
        let core = wasm_dir
            .join(WASM_TARGET)
            .join("release")
            .join(format!("{}.wasm", guest.core_module));
        let path = artifacts.join(guest.artifact);
        encode_guest(&core, &path)?;
        push_const(&mut consts, guest.doc, guest.constant, &path)?;
    }
    write_generated("policies.rs", &consts)?;

    let mut test_consts = String::new();
    for guest in TEST_GUESTS {
        let path = artifacts.join(guest.artifact);
        build_test_guest(workspace, guest, &path)?;
        push_const(&mut test_consts, guest.doc, guest.constant, &path)?;
    }
    write_generated("test_guests.rs", &test_consts)
}

fn emit_rerun_if_changed(workspace: &Path) {
    println!("cargo::rerun-if-changed=build.rs");
    println!(
        "cargo::rerun-if-changed={}",
        workspace.join("wit").display()
    );
    println!(
        "cargo::rerun-if-changed={}",
        workspace.join("Cargo.lock").display()
    );
    // The pure model crate is compiled into guests (the CRUSH guest's rjenkins hash).
    println!(
        "cargo::rerun-if-changed={}",
        workspace.join("model").display()
    );
    for guest in GUESTS {
        let dir = workspace.join("policies").join(guest.dir);
        println!("cargo::rerun-if-changed={}", dir.join("src").display());
        println!(
            "cargo::rerun-if-changed={}",
            dir.join("Cargo.toml").display()
        );
    }
    println!("cargo::rerun-if-env-changed=CARGO_TARGET_DIR");
}

/// Fails with the fix when the wasm target's standard library is not installed.
fn ensure_wasm_target() -> Result<()> {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let output = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .with_context(|| format!("running {} --print sysroot", Path::new(&rustc).display()))?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    if !sysroot
        .join("lib/rustlib")
        .join(WASM_TARGET)
        .join("lib")
        .is_dir()
    {
        bail!(
            "the {WASM_TARGET} target is not installed (needed to build the policy components): \
             run `rustup target add {WASM_TARGET}`"
        );
    }
    Ok(())
}

/// One nested `cargo build` for every guest, in its own target directory: sharing the outer
/// build's directory would deadlock on its lock.
fn build_guests(workspace: &Path, target_dir: &Path) -> Result<()> {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args(["build", "--release", "--target", WASM_TARGET])
        .arg("--target-dir")
        .arg(target_dir);
    for guest in GUESTS {
        cmd.args(["-p", guest.package]);
    }
    // Flags meant for the outer (host) build must not leak into the wasm build; clippy's
    // wrapper would lint the guests a second time.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WORKSPACE_WRAPPER",
        "CLIPPY_ARGS",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        cmd.env_remove(var);
    }
    // Small, fast guests: no debug info, whole-program optimisation.
    cmd.env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_LTO", "true")
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1")
        .env("CARGO_PROFILE_RELEASE_PANIC", "abort");
    let output = cmd
        .output()
        .context("running the nested cargo build of the policy guests")?;
    if !output.status.success() {
        bail!(
            "building the policy guests for {WASM_TARGET} failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// Core module -> validated component without imports, written atomically to `out`.
fn encode_guest(core: &Path, out: &Path) -> Result<()> {
    let module = fs::read(core).with_context(|| format!("reading {}", core.display()))?;
    let component = ComponentEncoder::default()
        .module(&module)
        .and_then(|encoder| encoder.validate(true).encode())
        .with_context(|| format!("encoding {} as a component", core.display()))?;
    let imports = component_imports(&component)?;
    if !imports.is_empty() {
        bail!(
            "{} imports {imports:?}; a policy must import nothing",
            core.display()
        );
    }
    write_if_changed(out, &component)
}

/// The names of a component's imported functions and interfaces that have functions
/// (type-only interfaces, such as `cartdb:policy/types`, carry no capability).
fn component_imports(component: &[u8]) -> Result<BTreeSet<String>> {
    let decoded = wit_component::decode(component).context("decoding the component")?;
    let DecodedWasm::Component(resolve, world) = decoded else {
        bail!("the encoder produced a WIT package, not a component");
    };
    let mut names = BTreeSet::new();
    for (key, item) in &resolve.worlds[world].imports {
        let has_functions = match item {
            wit_parser::WorldItem::Function(_) => true,
            wit_parser::WorldItem::Interface { id, .. } => {
                !resolve.interfaces[*id].functions.is_empty()
            }
            wit_parser::WorldItem::Type { .. } => false,
        };
        if has_functions {
            names.insert(resolve.name_world_key(key));
        }
    }
    Ok(names)
}

/// Assembles one test guest from the WAT template and the test WIT.
fn build_test_guest(workspace: &Path, guest: &TestGuest, out: &Path) -> Result<()> {
    let mut resolve = Resolve::default();
    let (policy_pkg, _) = resolve
        .push_dir(workspace.join("wit"))
        .context("parsing wit/")?;
    let test_pkg = resolve
        .push_str("test-guests.wit", TEST_WIT)
        .context("parsing the test WIT")?;
    let pkg = if matches!(guest.world, "placement-policy" | "merge-policy") {
        policy_pkg
    } else {
        test_pkg
    };
    let world = resolve.select_world(&[pkg], Some(guest.world))?;
    let mut module = wat::parse_str(test_guest_wat(guest))
        .with_context(|| format!("assembling {}", guest.artifact))?;
    wit_component::embed_component_metadata(
        &mut module,
        &resolve,
        world,
        StringEncoding::UTF8,
        false,
    )?;
    let component = ComponentEncoder::default()
        .module(&module)
        .and_then(|encoder| encoder.validate(true).encode())
        .with_context(|| format!("encoding {}", guest.artifact))?;
    write_if_changed(out, &component)
}

/// A minimal canonical-ABI implementation of the guest's world with a bump allocator that
/// never frees (the tests make few calls). Memory map: 0 name's return area, 16 strings,
/// 64 load's return area, 96 place's return area, 128 the returned list, 256 merge's return
/// area (`result<item-state, string>`: tag at 256, payload at 264: base quantity, version
/// tag at 272, hlc at 280, gateway at 288, ops pointer at 296 and length at 300), 512 the
/// returned operations (40 bytes each), 1024.. the heap for arguments the host passes in.
fn test_guest_wat(guest: &TestGuest) -> String {
    let TestGuest {
        imports, exports, ..
    } = guest;
    let (resource_import, functions) = match exports {
        Exports::Placement { load, place } => (
            r#"(import "[export]cartdb:policy/placement@0.1.0" "[resource-new]placer"
    (func $resource_new (param i32) (result i32)))"#,
            format!(
                r#"(func (export "cartdb:policy/placement@0.1.0#load")
    (param i32 i32 i32 i32 i32 i32 i32) (result i32)
    {load})
  (func (export "cartdb:policy/placement@0.1.0#[method]placer.place")
    (param i32 i32 i32) (result i32)
    {place})
  (func (export "cartdb:policy/placement@0.1.0#[dtor]placer") (param i32))"#
            ),
        ),
        Exports::Merge { merge } => (
            "",
            format!(
                r#"(func (export "cartdb:policy/merge@0.1.0#merge")
    (param $states i32) (param $len i32) (result i32)
    {merge})"#
            ),
        ),
    };
    format!(
        r#"(module
  {resource_import}
  {imports}
  (memory (export "memory") 4)
  (global $heap (mut i32) (i32.const 1024))
  (data (i32.const 16) "evil says no")
  (func (export "cabi_realloc") (param $old i32) (param $old_size i32) (param $align i32) (param $size i32) (result i32)
    (local $p i32)
    (local.set $p (i32.and
      (i32.add (global.get $heap) (i32.sub (local.get $align) (i32.const 1)))
      (i32.sub (i32.const 0) (local.get $align))))
    (global.set $heap (i32.add (local.get $p) (local.get $size)))
    (local.get $p))
  (func (export "name") (result i32)
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 4))
    (i32.const 0))
  {functions}
)"#
    )
}

fn push_const(out: &mut String, doc: &str, name: &str, path: &Path) -> Result<()> {
    let path = path
        .to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))?;
    writeln!(
        out,
        "/// {doc}\n///\n/// Absolute path of the component file.\npub const {name}: &str = {path:?};"
    )?;
    Ok(())
}

fn write_generated(file: &str, contents: &str) -> Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR is unset")?);
    write_if_changed(&out_dir.join(file), contents.as_bytes())
}

/// Writes via a temporary file and a rename, so a concurrently running test never reads
/// a half-written component; leaves an identical file (and its mtime) alone.
fn write_if_changed(path: &Path, contents: &[u8]) -> Result<()> {
    if fs::read(path).is_ok_and(|old| old == contents) {
        return Ok(());
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(OsStr::new(".tmp"));
    fs::write(&tmp, contents).with_context(|| format!("writing {}", Path::new(&tmp).display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}
